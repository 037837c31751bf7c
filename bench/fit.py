"""The one log-log fit every table uses: the exponent k of y ∝ N^k (bench.report's fits, bench.breakdown's
per-component exponents)."""

from __future__ import annotations

import numpy as np


def loglog_slope(n, y, skip_missing: bool = True) -> float:
    """Least-squares slope of log y vs log n. skip_missing: fit the points with n > 0 and a finite y > 0 (a series
    with an OOM point); else any such point makes the slope NaN (a component absent at one r has no exponent).
    NaN with fewer than 2 points."""
    n, y = np.asarray(n, float), np.asarray(y, float)
    keep = (n > 0) & np.isfinite(y) & (y > 0)
    if not skip_missing and not keep.all():
        return float("nan")
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(n[keep]), np.log(y[keep]), 1)[0])
