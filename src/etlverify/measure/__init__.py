"""Measurement: HDR latency histograms, load generators, WebSocket push timing, server sampling.

Layers: `histogram` (recording) <- `results` (frozen JSON-able results) <- `load`, `wspush`;
`sampler` stands alone. Nothing here imports pytest or locust.
"""

from __future__ import annotations

from etlverify.measure.histogram import LatencyHistogram, LatencyRecorder, decode_histogram
from etlverify.measure.load import (
    ClosedLoad,
    OpenLoad,
    RequestSpec,
    identity_address,
    run_closed,
    run_load,
    run_open,
)
from etlverify.measure.results import (
    LoadParameters,
    MetricResult,
    RunResult,
    WindowStats,
    merge_windows,
    stat_value,
)
from etlverify.measure.sampler import ServerSample, ServerSampler, ServerTrace, Trend, trend
from etlverify.measure.wspush import WsPushResult, measure_ws_push

__all__ = [
    "ClosedLoad",
    "LatencyHistogram",
    "LatencyRecorder",
    "LoadParameters",
    "MetricResult",
    "OpenLoad",
    "RequestSpec",
    "RunResult",
    "ServerSample",
    "ServerSampler",
    "ServerTrace",
    "Trend",
    "WindowStats",
    "WsPushResult",
    "decode_histogram",
    "identity_address",
    "measure_ws_push",
    "merge_windows",
    "run_closed",
    "run_load",
    "run_open",
    "stat_value",
    "trend",
]
