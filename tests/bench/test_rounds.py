"""The round and interleave logic of bench.rounds on a fake timer (no GPU, no real time)."""

import pytest

from bench.rounds import PointTimes, RoundsConfig, event_timer, reps_per_round, run_rounds


class FakeClock:
    """Timers that log every call (who, how many reps) and return fixed per-point times, drifting per round."""

    def __init__(self, base: dict, drift: float = 0.0, fail: dict | None = None):
        self.base, self.drift, self.fail = base, drift, fail or {}
        self.log: list[tuple] = []
        self.calls = {k: 0 for k in base}

    def timer(self, key):
        def f(n):
            self.calls[key] += 1
            self.log.append((key, n))
            if self.fail.get(key) == self.calls[key]:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return [self.base[key] * (1 + self.drift * (self.calls[key] - 1))] * n

        return f


def test_rounds_are_interleaved_and_rotated():
    clock = FakeClock({"a": 1.0, "b": 2.0, "c": 3.0})
    res = run_rounds({k: clock.timer(k) for k in "abc"}, {"a": 7, "b": 7, "c": 7}, rounds=3)
    assert [k for k, _ in clock.log] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(n == 7 for _, n in clock.log)
    for k in "abc":
        assert len(res[k].rounds) == 3 and len(res[k].times) == 21
    assert res["a"].order == [0, 2, 1]  # no point is always first or last


def test_summary_median_and_spread_across_rounds():
    clock = FakeClock({"a": 10.0}, drift=0.01)  # 10, 10.1, 10.2 ms in rounds 1..3
    s = run_rounds({"a": clock.timer("a")}, {"a": 7}, rounds=3)["a"].summary()
    assert s["n_reps"] == 21 and s["n_rounds"] == 3
    assert s["median_ms"] == pytest.approx(10.1)
    assert s["round_spread_pct"] == pytest.approx(100 * 0.2 / 10.1)
    assert s["round_medians_ms"] == "10,10.1,10.2"
    assert s["min_ms"] == pytest.approx(10.0) and s["iqr_ms"] >= 0


def test_probe_is_read_after_each_round_and_summarised():
    readings = iter(
        [
            {"sm_clock_mhz": 1980, "power_w": 400.0},
            {"sm_clock_mhz": 1965, "power_w": 420.0},
            {"sm_clock_mhz": 1755, "power_w": 690.0},
        ]
    )
    clock = FakeClock({"a": 1.0})
    s = run_rounds({"a": clock.timer("a")}, {"a": 2}, rounds=3, probe=lambda: next(readings))["a"].summary()
    assert s["sm_clock_mhz"] == 1965 and s["power_w"] == 420.0 and s["temperature_c"] is None


def test_a_failing_point_leaves_the_rounds_and_the_others_go_on():
    clock = FakeClock({"a": 1.0, "b": 2.0}, fail={"b": 2})
    res = run_rounds({k: clock.timer(k) for k in "ab"}, {"a": 3, "b": 3}, rounds=3)
    assert "out of memory" in str(res["b"].error) and len(res["b"].rounds) == 1
    assert res["a"].error is None and len(res["a"].rounds) == 3
    assert [k for k, _ in clock.log] == ["a", "b", "b", "a", "a"]  # round 3 has only a left


def test_gc_is_off_inside_each_timer_call_and_restored_after_even_on_failure():
    import gc

    seen = []

    def timer(n):
        seen.append(gc.isenabled())
        if len(seen) == 2:
            raise RuntimeError("CUDA out of memory")
        return [1.0] * n

    assert gc.isenabled()
    res = run_rounds({"a": timer, "b": timer}, {"a": 1, "b": 1}, rounds=2)
    assert seen == [False, False, False] and gc.isenabled() and res["b"].error is not None
    gc.disable()  # a caller that turned GC off keeps it off
    try:
        run_rounds({"a": timer}, {"a": 1}, rounds=1)
        assert not gc.isenabled()
    finally:
        gc.enable()
    seen.clear()
    run_rounds({"a": lambda n: seen.append(gc.isenabled()) or [1.0] * n}, {"a": 1}, rounds=1, gc=False)
    assert seen == [True]


def test_reps_per_round_reaches_the_minimum_unless_the_point_is_slow():
    cfg = RoundsConfig(rounds=3, min_reps=20, max_point_s=2.0)
    assert reps_per_round(1.0, cfg) == 7  # 3 × 7 = 21 ≥ 20
    assert reps_per_round(50.0, cfg) == 7  # 21 × 50 ms = 1.05 s, affordable
    assert reps_per_round(200.0, cfg) == 3  # 2 s / (3 rounds × 200 ms)
    assert reps_per_round(5000.0, cfg) == 1  # at least one per round
    assert reps_per_round(float("nan"), cfg) == 7
    assert reps_per_round(1e6, RoundsConfig(rounds=3, min_reps=20, max_point_s=0)) == 7  # 0: no cap


def test_empty_point_summary():
    assert PointTimes().summary() == {"n_reps": 0, "n_rounds": 0}


def test_event_timer_on_cpu_counts_calls():
    import torch

    calls = []
    times = event_timer(lambda: calls.append(1), torch.device("cpu"))(5)
    assert len(times) == 5 and len(calls) == 5 and all(t >= 0 for t in times)
