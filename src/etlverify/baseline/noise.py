"""How much a measurement scatters from window to window: the noise every relative rule needs.

The 10% rule (`baseline.compare`, its ``+Nsd`` floors) and the response-time rollback trigger
(`baseline.triggers`) both take their noise floor from here, so a change the size of the
machine's own window-to-window noise is neither a FAIL nor a fired trigger, and both agree on what
noise is. Also the per-window sample guard of a percentile (`tail_needed`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats as sps

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["STALL_SDS", "robust_sd", "spread", "tail_needed"]

#: a window further than this many robust sds from the median window is a stall, not noise
STALL_SDS = 5.0


def robust_sd(values: Sequence[float]) -> float:
    """1.4826 x the median absolute deviation: the sd of normal data; outliers barely move it."""
    if len(values) < 2:
        return 0.0
    return float(sps.median_abs_deviation(values, scale="normal"))


def spread(values: Sequence[float]) -> float:
    """Window-to-window scatter: the standard deviation of the windows, leaving out stalls (a
    window more than `STALL_SDS` robust sds from the median one: the host paused for a second).

    A stall must neither make a whole baseline "too noisy" for every later run nor widen a `+2sd`
    floor to seconds (which would let any regression through): a CI run recorded a baseline with
    one 1.3 s window among ten of 6 ms, and its plain sd (390 ms) did both. Without a stall this
    is the plain sd, as measured before: a spread that is robust to *every* outlier (the MAD)
    made the floors narrower than this machine's run-to-run drift, and `pytest -m post_deploy`
    on the unchanged reference read +15% as a regression. Stalls are judged where they belong,
    by the median-window rule of `baseline.compare`."""
    if len(values) < 2:
        return 0.0
    robust = robust_sd(values)
    if robust > 0:
        mid = float(np.median(values))
        kept = [v for v in values if abs(v - mid) <= STALL_SDS * robust]
        values = kept if len(kept) >= 2 else values
    return float(np.std(values, ddof=1))


def tail_needed(stat: str, min_tail: int) -> int | None:
    """Samples a window needs for percentile `stat` to rest on `min_tail` beyond it (None for a
    statistic that is not a percentile)."""
    if not stat.startswith("p"):
        return None
    q = float(stat[1:])
    if q >= 100.0:
        return None
    # p50 looks at both halves; a high percentile needs `min_tail` samples above it.
    return math.ceil(min_tail / (1.0 - q / 100.0))
