"""The sign-off report's plots: PNG images as ``data:`` URIs, drawn from summary.json series.

matplotlib's Agg canvas on a bare `Figure` (no pyplot, so no global state and no display): every
function takes the plain series of `perfdata.performance_section()["plots"]` and returns a `Plot`
(title, caption, data URI) or None when there is nothing to draw. The images are embedded in the
HTML, so the report renders offline.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "Plot",
    "latency_curves",
    "memory_plot",
    "performance_plots",
    "throughput_plot",
    "ws_latency_plot",
]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")
_DPI = 96


@dataclass(frozen=True)
class Plot:
    """One embedded image."""

    key: str
    title: str
    caption: str
    data_uri: str


def _figure(width: float = 7.2, height: float = 3.4) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _tail_x(q: float) -> float:
    """Position of a quantile on a tail axis: p50 -> 0.3, p90 -> 1, p99 -> 2, p99.9 -> 3."""
    return -math.log10(1.0 - q / 100.0)


def _curve_axes(fig: Figure, series: Sequence[Mapping[str, Any]], title: str) -> bool:
    ax = fig.add_subplot()
    drawn = False
    quantiles: list[float] = []
    for index, entry in enumerate(series):
        color = _COLORS[index % len(_COLORS)]
        quantiles = [float(q) for q in entry["quantiles"]]
        xs = [_tail_x(q) for q in quantiles]
        current = entry.get("current_ms") or []
        points = [(x, y) for x, y in zip(xs, current, strict=False) if y is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", color=color, label=entry["metric"])
            drawn = True
        baseline = entry.get("baseline_ms") or []
        bpoints = [(x, y) for x, y in zip(xs, baseline, strict=False) if y is not None]
        if bpoints:
            ax.plot(
                *zip(*bpoints, strict=True),
                linestyle="--",
                marker="x",
                color=color,
                alpha=0.7,
                label=f"{entry['metric']} (baseline)",
            )
    if not drawn:
        return False
    ax.set_xticks([_tail_x(q) for q in quantiles], [f"p{q:g}" for q in quantiles])
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return True


def latency_curves(series: Sequence[Mapping[str, Any]]) -> Plot | None:
    """Latency percentile curves, current (solid) vs baseline (dashed), one colour per route."""
    if not series:
        return None
    fig = _figure(10.0, 4.2)
    if not _curve_axes(fig, series, "Latency percentiles: this run vs baseline"):
        return None
    return Plot(
        "latency",
        "Latency percentile curves",
        "Each route's latency at p50...p99.9 over all trial windows: solid this run, dashed the "
        "baseline. A curve above its dashed twin is slower.",
        _png(fig),
    )


def ws_latency_plot(series: Sequence[Mapping[str, Any]]) -> Plot | None:
    """WebSocket push latency: percentile curve and p95 per trial window, current vs baseline."""
    if not series:
        return None
    fig = _figure(10.0, 3.4)
    if not _curve_axes(fig, series, "WebSocket push latency: this run vs baseline"):
        return None
    return Plot(
        "ws_latency",
        "WebSocket push latency",
        "Time from a job's state change to its push reaching the subscribers, by percentile: "
        "solid this run, dashed the baseline.",
        _png(fig),
    )


def throughput_plot(series: Sequence[Mapping[str, Any]]) -> Plot | None:
    """Successful requests per second per trial window, with the baseline's mean as a line."""
    usable = [s for s in series if s.get("rps")]
    if not usable:
        return None
    fig = _figure(10.0, 3.6)
    ax = fig.add_subplot()
    for index, entry in enumerate(usable):
        color = _COLORS[index % len(_COLORS)]
        windows = list(range(1, len(entry["rps"]) + 1))
        ax.plot(windows, entry["rps"], marker="o", color=color, label=entry["metric"])
        if entry.get("baseline_rps") is not None:
            ax.axhline(float(entry["baseline_rps"]), color=color, linestyle="--", alpha=0.5)
    ax.set_xlabel("trial window (in run order)")
    ax.set_ylabel("successful requests / s")
    ax.set_title("Throughput over the run (dashed: baseline mean)", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return Plot(
        "throughput",
        "Throughput over the run",
        "Successful requests per second in each trial window of each measured load; the dashed "
        "line of the same colour is the baseline's mean.",
        _png(fig),
    )


def memory_plot(server: Mapping[str, Any] | None) -> Plot | None:
    """Server memory (MB) and CPU (%) over the run, from /api/health/metrics samples."""
    if not server or not (server.get("memory_mb") or server.get("cpu_percent")):
        return None
    fig = _figure(10.0, 3.2)
    ax = fig.add_subplot()
    if server.get("memory_mb"):
        ax.plot(server["memory_t_s"], server["memory_mb"], color=_COLORS[0], label="memory (MB)")
    ax.set_xlabel("seconds into the measured load")
    ax.set_ylabel("resident memory (MB)", color=_COLORS[0])
    ax.grid(True, alpha=0.3)
    if server.get("cpu_percent"):
        ax2 = ax.twinx()
        ax2.plot(
            server["cpu_t_s"], server["cpu_percent"], color=_COLORS[1], alpha=0.6, label="CPU (%)"
        )
        ax2.set_ylabel("CPU (%)", color=_COLORS[1])
        ax2.set_ylim(bottom=0)
    ax.set_title("Server memory and CPU over the run", fontsize=11)
    return Plot(
        "memory",
        "Memory and CPU over the run",
        "Resident memory of the server process (left axis) and its CPU use (right axis), sampled "
        f"every {server.get('interval_s', '?')} s during the measured load.",
        _png(fig),
    )


def performance_plots(plots: Mapping[str, Any] | None) -> list[Plot]:
    """Every plot the series allow, in report order."""
    if not plots:
        return []
    candidates = (
        latency_curves(plots.get("latency") or []),
        throughput_plot(plots.get("throughput") or []),
        memory_plot(plots.get("server")),
        ws_latency_plot(plots.get("ws_latency") or []),
    )
    return [p for p in candidates if p is not None]
