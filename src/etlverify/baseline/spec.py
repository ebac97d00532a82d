"""Tolerance specs: how much worse than the baseline a statistic may get.

Grammar (whitespace around tokens is ignored; statistic names are case-insensitive)::

    specs      := spec { ";" spec }
    spec       := stat [ "@" scope ] ":" bound [ "," bound ]
    stat       := "p" NUMBER            percentile, 0 < NUMBER <= 100 (p50, p95, p99.9)
                | "mean" | "max" | "min"  latency statistics, milliseconds
                | "throughput"          successful requests per second (lower is worse)
                | "error_rate"          failed requests, percent of attempts
    scope      := a shell pattern over metric names (fnmatch), e.g. "GET /api/jobs*";
                  without a scope the spec applies to every metric
    bound      := relative | absolute   (at most one of each)
    relative   := [ sign ] NUMBER "%"   change relative to the baseline value
    absolute   := [ sign ] NUMBER unit  us | ms | s  for latency statistics
                                        rps          for throughput
                                        pp           (percentage points) for error_rate
                                        sd           any statistic: NUMBER times the baseline's
                                                     window-to-window standard deviation
    sign       := "+" | "-"             optional; when given it must point the worse way:
                                        "+" for latency and error_rate, "-" for throughput

Meaning: the allowed worsening is the relative bound times the baseline value, raised to the
absolute bound when that is larger (the absolute bound is a floor, so that a 0.3 ms p50 may move by
the floor and not only by 10% of 0.3 ms). With only one bound, that bound is the allowance.
`ToleranceSpec.fails(baseline, current)` is true when the current value is worse than the baseline
by more than the allowance. Examples::

    p95:10%                 p95 may rise by 10%
    p99:15%,+2ms            p99 may rise by 15% or 2 ms, whichever is more
    p95@GET /api/health*:25%,+1ms
    throughput:-10%         throughput may drop by 10%
    error_rate:+1pp         the error rate may rise by one percentage point
    p50:10%,+2sd            p50 may rise by 10% or twice the baseline windows' spread

*Noise-derived floors* (`sd`): the floor is a multiple of the standard deviation of the statistic
over the baseline's trial windows (leaving out stalled windows, so that one does not widen the
floor), so it is derived from the measured noise of the
machine and target the baseline was recorded on, not from a constant chosen elsewhere. A fixed
`+2ms` floor on a 5 ms route hides a 25% slowdown (1.25 ms); `+2sd` there is a few tenths of a
millisecond.

When several specs match the same metric and statistic, the last one wins, so a scoped spec placed
after a general one overrides it. Bad specs raise ValueError with a one-line message and, where the
intent is obvious, a "did you mean" suggestion.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "DEFAULT_SPECS",
    "SpecError",
    "ToleranceSpec",
    "parse_spec",
    "parse_specs",
    "resolve_spec",
]

#: Used when no spec is given: "within 10% of baseline" (deployment checklist) with a floor for
#: latency so that sub-millisecond jitter is not a regression, throughput lower-is-worse, and a
#: one-percentage-point allowance on the error rate.
DEFAULT_SPEC_TEXT = "p50:10%,+1ms; p95:10%,+1ms; p99:10%,+2ms; throughput:-10%; error_rate:+1pp"

_NAMED = ("mean", "max", "min", "throughput", "error_rate")
_SUGGESTABLE = ("p50", "p90", "p95", "p99", "p99.9", *_NAMED)
_ALIASES = {
    "avg": "mean",
    "average": "mean",
    "median": "p50",
    "errors": "error_rate",
    "error": "error_rate",
    "errorrate": "error_rate",
    "error-rate": "error_rate",
    "err": "error_rate",
    "rps": "throughput",
    "qps": "throughput",
    "tps": "throughput",
    "latency": "p95",
}
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
#: The unit of a noise-derived floor: multiples of the baseline's window-to-window sd.
NOISE_UNIT = "sd"
_PCT = re.compile(r"^p(\d+(?:\.\d+)?)$")
_BOUND = re.compile(r"^([+-]?)(\d+(?:\.\d*)?|\.\d+)(%|[a-z/]+)?$")


def _num(value: float) -> str:
    """Shortest positional decimal that reads back as the same float (no exponent)."""
    return str(np.format_float_positional(value, trim="-"))


class SpecError(ValueError):
    """A tolerance spec could not be parsed; the message is one line."""


def _fail(text: str, problem: str, suggestion: str | None = None) -> SpecError:
    hint = f"; did you mean {suggestion!r}?" if suggestion else ""
    return SpecError(f"invalid tolerance spec {text!r}: {problem}{hint}")


@dataclass(frozen=True)
class ToleranceSpec:
    """A parsed spec: a statistic, an optional metric scope, and its allowance.

    `relative_pct` is a magnitude in percent; `absolute` a magnitude in `unit` as written (so that
    the spec text round-trips exactly); `absolute_value` converts it to the statistic's unit
    (ms for latency, rps, percentage points).
    """

    stat: str
    relative_pct: float | None = None
    absolute: float | None = None
    unit: str | None = None
    scope: str | None = None

    @property
    def absolute_value(self) -> float | None:
        """The absolute bound in the statistic's unit (ms, rps or pp); None for an `sd` floor."""
        if self.absolute is None or self.noise_floor:
            return None
        return self.absolute * _UNITS_MS.get(self.unit or "", 1.0)

    @property
    def noise_floor(self) -> bool:
        """True when the floor is a multiple of the baseline's window-to-window sd."""
        return self.unit == NOISE_UNIT

    @property
    def higher_is_worse(self) -> bool:
        """Throughput gets worse downwards; every other statistic upwards."""
        return self.stat != "throughput"

    def matches(self, metric: str) -> bool:
        """Whether this spec applies to `metric`."""
        return self.scope is None or fnmatch.fnmatchcase(metric, self.scope)

    def floor(self, noise_sd: float | None = None) -> float | None:
        """The absolute floor in the statistic's unit: the fixed bound, or `absolute` times
        `noise_sd` (the baseline's window-to-window sd) for an `sd` floor (0 when not known)."""
        if self.absolute is None:
            return None
        if self.noise_floor:
            return self.absolute * (noise_sd or 0.0)
        return self.absolute_value

    def allowed_change(self, baseline: float, noise_sd: float | None = None) -> float:
        """The largest tolerated worsening from `baseline`, in the statistic's unit."""
        rel = abs(baseline) * self.relative_pct / 100.0 if self.relative_pct is not None else None
        floor = self.floor(noise_sd)
        if rel is None:
            return floor or 0.0
        if floor is None:
            return rel
        return max(rel, floor)

    def worsening(self, baseline: float, current: float) -> float:
        """How much worse `current` is than `baseline` (negative: better)."""
        return current - baseline if self.higher_is_worse else baseline - current

    def fails(self, baseline: float, current: float, noise_sd: float | None = None) -> bool:
        """True when `current` is worse than `baseline` by more than the allowance."""
        # A relative epsilon keeps float noise (10% of 8.1 ms) from flipping an exact-limit case.
        allowed = self.allowed_change(baseline, noise_sd)
        return self.worsening(baseline, current) > allowed + 1e-9 * max(1.0, abs(baseline))

    def describe(self) -> str:
        """The allowance for people, e.g. ``10% +1 ms``."""
        sign = "+" if self.higher_is_worse else "-"
        parts = []
        if self.relative_pct is not None:
            rel_sign = "" if self.higher_is_worse else "-"
            parts.append(f"{rel_sign}{_num(self.relative_pct)}%")
        if self.absolute is not None:
            parts.append(f"{sign}{_num(self.absolute)} {self.unit}")
        return " ".join(parts)

    def __str__(self) -> str:
        """The canonical spec text; `parse_spec(str(spec)) == spec`."""
        sign = "+" if self.higher_is_worse else "-"
        bounds = []
        if self.relative_pct is not None:
            bounds.append(f"{sign if not self.higher_is_worse else ''}{_num(self.relative_pct)}%")
        if self.absolute is not None:
            bounds.append(f"{sign}{_num(self.absolute)}{self.unit}")
        scope = f"@{self.scope}" if self.scope is not None else ""
        return f"{self.stat}{scope}:{','.join(bounds)}"


def _parse_stat(text: str, raw: str) -> str:
    stat = raw.strip().lower()
    match = _PCT.match(stat)
    if match:
        q = float(match.group(1))
        if not 0.0 < q <= 100.0:
            raise _fail(text, f"percentile {raw.strip()!r} is outside (0, 100]")
        return f"p{_num(q)}"
    if stat in _NAMED:
        return stat
    if stat in _ALIASES:
        suggestion = _ALIASES[stat]
    else:
        close = difflib.get_close_matches(stat, _SUGGESTABLE, n=1, cutoff=0.6)
        suggestion = close[0] if close else ""
    rest = text.split(":", 1)[1].strip() if ":" in text else ""
    hint = f"{suggestion}:{rest}" if suggestion and rest else suggestion or None
    known = "p<percentile>, mean, max, min, throughput, error_rate"
    raise _fail(text, f"unknown statistic {raw.strip()!r} (known: {known})", hint)


def _bound_units(stat: str) -> dict[str, float]:
    if stat == "throughput":
        return {"rps": 1.0, "/s": 1.0, NOISE_UNIT: 1.0}
    if stat == "error_rate":
        return {"pp": 1.0, NOISE_UNIT: 1.0}
    return {**_UNITS_MS, NOISE_UNIT: 1.0}


def parse_spec(text: str) -> ToleranceSpec:
    """Parse one spec such as ``p99:15%,+2ms``; SpecError (a ValueError) when it is malformed."""
    if not isinstance(text, str) or not text.strip():
        raise _fail(str(text), "empty spec (expected '<stat>:<tolerance>', e.g. 'p95:10%')")
    if ":" not in text:
        guess = None
        if re.match(r"^\s*[a-z_]+[\d.]*\s*$", text.lower()):
            guess = f"{text.strip().lower()}:10%"
        elif re.match(r"^\s*p[\d.]+\s+\d", text):
            parts = re.match(r"^\s*(p[\d.]+)\s+(.*)$", text)
            guess = f"{parts.group(1)}:{parts.group(2).strip()}" if parts else None
        elif "=" in text:
            guess = text.replace("=", ":", 1).strip()
        raise _fail(text, "expected '<stat>:<tolerance>', e.g. 'p95:10%'", guess)
    head, _, tail = text.partition(":")
    stat_text, at, scope_text = head.partition("@")
    stat = _parse_stat(text, stat_text)
    scope = scope_text.strip() if at else None
    if at and not scope:
        raise _fail(text, "empty metric scope after '@'", f"{stat}:{tail.strip()}")
    higher_is_worse = stat != "throughput"
    worse_sign = "+" if higher_is_worse else "-"
    units = _bound_units(stat)
    relative: float | None = None
    absolute: float | None = None
    unit: str | None = None
    bounds = list(tail.split(","))
    if not tail.strip():
        raise _fail(text, "no tolerance after ':'", f"{stat}:10%")
    for raw in bounds:
        bound = re.sub(r"\s+", "", raw)
        match = _BOUND.match(bound)
        if not bound or not match:
            raise _fail(text, f"cannot read bound {raw.strip()!r} (expected e.g. '10%' or '+2ms')")
        sign, number, suffix = match.group(1), float(match.group(2)), match.group(3)
        if suffix is None:
            default_unit = "%"
            raise _fail(
                text,
                f"bound {bound!r} has no unit",
                str(text).replace(raw, raw.replace(bound, bound + default_unit)),
            )
        if sign and sign != worse_sign:
            fixed = bound.replace(
                sign, worse_sign if suffix != "%" or not higher_is_worse else "", 1
            )
            way = "an increase" if higher_is_worse else "a drop"
            raise _fail(
                text,
                f"{stat} tolerates {way}, so bound {bound!r} points the wrong way",
                text.replace(raw.strip(), fixed),
            )
        if suffix == "%":
            if relative is not None:
                raise _fail(text, "more than one relative bound")
            relative = number
            continue
        if suffix not in units:
            ok = ", ".join(units)
            # the noise unit is never the likely intent of a mistyped unit
            plain = [u for u in units if u != NOISE_UNIT]
            close = (
                plain
                if len(plain) == 1
                else difflib.get_close_matches(suffix, plain, n=1, cutoff=0.5)
            )
            hint = text.replace(raw.strip(), f"{sign}{match.group(2)}{close[0]}") if close else None
            raise _fail(text, f"unit {suffix!r} does not apply to {stat} (use {ok})", hint)
        if absolute is not None:
            raise _fail(text, "more than one absolute bound")
        absolute = number
        unit = suffix
    return ToleranceSpec(
        stat=stat, relative_pct=relative, absolute=absolute, unit=unit, scope=scope
    )


def parse_specs(specs: str | Iterable[str | ToleranceSpec] | None) -> tuple[ToleranceSpec, ...]:
    """Parse `;`-separated text or a list of specs; None gives `DEFAULT_SPECS`."""
    if specs is None:
        return DEFAULT_SPECS
    items: Iterable[str | ToleranceSpec] = specs.split(";") if isinstance(specs, str) else specs
    out = []
    for item in items:
        if isinstance(item, ToleranceSpec):
            out.append(item)
        elif item.strip():
            out.append(parse_spec(item))
    if not out:
        raise SpecError(f"no tolerance spec in {specs!r}")
    return tuple(out)


def resolve_spec(specs: Sequence[ToleranceSpec], metric: str, stat: str) -> ToleranceSpec | None:
    """The spec that governs (`metric`, `stat`): the last matching one."""
    found = None
    for spec in specs:
        if spec.stat == stat and spec.matches(metric):
            found = spec
    return found


DEFAULT_SPECS: tuple[ToleranceSpec, ...] = tuple(
    parse_spec(s) for s in DEFAULT_SPEC_TEXT.split(";")
)
