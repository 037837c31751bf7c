"""bench.fit: the log-log slope both the fits table and the per-component exponents use."""

import math

import numpy as np

from bench.fit import loglog_slope


def test_slope_of_a_power_law_is_its_exponent():
    n = np.array([1024, 4096, 16384, 65536])
    assert math.isclose(loglog_slope(n, 3.0 * n**1.5), 1.5, rel_tol=1e-9)


def test_missing_points_are_skipped_or_make_the_slope_nan():
    n = [1024, 4096, 16384]
    y = [1.0, float("nan"), 16.0]  # an OOM point
    assert math.isclose(loglog_slope(n, y), 1.0, rel_tol=1e-9)  # fitted on the two measured points
    assert math.isnan(loglog_slope(n, y, skip_missing=False))
    assert math.isnan(loglog_slope(n, [1.0, 0.0, 16.0], skip_missing=False))  # a component absent at one r
    assert math.isnan(loglog_slope([1024], [1.0]))  # one point: no slope
