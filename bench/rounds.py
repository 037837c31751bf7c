"""Reproducible timing: each point timed in several rounds, interleaved across the points of a group.

    reps = reps_per_round(est_ms, cfg)                    # ≥ cfg.min_reps in all, unless the point is slow
    res = run_rounds({key: timer}, {key: reps}, cfg.rounds, probe=clock_probe(device))
    res[key].summary()                                     # median, IQR, spread across rounds, clock, power

A group is the points that differ only by model / backend / variant (same level, r, batch, kind): round 1 times
every point once, then round 2, ... with the order rotated each round, so a slow drift of the GPU (clocks,
temperature, another process) spreads over all points instead of landing on whichever ran last. The summary's
`round_spread_pct` = (largest − smallest round median) / median: the number to compare with a rerun's deviation.
`probe` (NVML SM clock and power) is read after each point's share of a round; the row gets the medians.

A timer is any `f(n) -> list[ms]` (CUDA events or perf_counter; tests use a fake clock). A timer that raises
is dropped from the later rounds and its exception kept (the caller turns it into the row's status).
Python's cyclic garbage collector is off while the rounds run, as `timeit` does: a host-bound step allocates many
objects, and a full pass (0.13 s with the harness imported, on a CPU machine) landing in one round moves that
round's median. No collection is forced per round either (e4b6675 collected before every point's share of a
round: ~0.1 s each, untimed, in run 3); the caller frees a point's garbage after it (bench.measure.free_memory).
Re-enabled after, also when a timer raises; `gc=False` leaves it alone.
"""

from __future__ import annotations

import gc as _gc
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class RoundsConfig:
    rounds: int = 3  # interleaved rounds per point (≥ 3 for the spread across rounds to mean something)
    min_reps: int = 20  # timed repetitions per point over all rounds
    max_point_s: float = 2.0  # timed seconds per point at most: a slower point gets fewer reps (≥ 1 per round)


def reps_per_round(est_ms: float, cfg: RoundsConfig) -> int:
    """ceil(min_reps / rounds), cut so that rounds × reps × est_ms ≤ max_point_s; at least 1."""
    want = math.ceil(cfg.min_reps / max(cfg.rounds, 1))
    if cfg.max_point_s <= 0 or not est_ms > 0:
        return max(1, want)
    afford = int(cfg.max_point_s * 1e3 / (est_ms * max(cfg.rounds, 1)))
    return max(1, min(want, afford))


@dataclass
class PointTimes:
    rounds: list[list[float]] = field(default_factory=list)  # ms of each repetition, per round
    probes: list[dict] = field(default_factory=list)  # NVML readings after each of its rounds
    order: list[int] = field(default_factory=list)  # position of the point in each round (0 = first)
    error: BaseException | None = None

    @property
    def times(self) -> list[float]:
        return [t for r in self.rounds for t in r]

    def summary(self) -> dict:
        """Median / IQR / min over all repetitions, the round medians and their spread, NVML medians."""
        xs = self.times
        if not xs:
            return {"n_reps": 0, "n_rounds": 0}
        q1, med, q3 = (xs[0],) * 3 if len(xs) == 1 else statistics.quantiles(xs, n=4, method="inclusive")
        med = statistics.median(xs)
        round_meds = [statistics.median(r) for r in self.rounds if r]
        out = {
            "median_ms": med, "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1, "mean_ms": statistics.fmean(xs),
            "min_ms": min(xs), "n_reps": len(xs), "n_rounds": len(round_meds),
            "round_medians_ms": ",".join(f"{m:.4g}" for m in round_meds),
            "round_spread_pct": 100 * (max(round_meds) - min(round_meds)) / med if med > 0 else float("nan"),
        }  # fmt: skip
        for k in ("sm_clock_mhz", "power_w", "temperature_c"):
            vals = [p[k] for p in self.probes if p.get(k) is not None]
            out[k] = statistics.median(vals) if vals else None
        return out


def run_rounds(
    timers: dict, reps: dict, rounds: int, probe: Callable[[], dict] | None = None, gc: bool = True
) -> dict[object, PointTimes]:
    """Time every point `rounds` times, interleaved: round j runs the points in order rotated by j, each for
    reps[key] repetitions. Returns {key: PointTimes}; a timer that raises keeps its error and leaves the rounds.
    gc: keep the cyclic GC off for the whole call (restored to its prior state after, also on an error)."""
    was_on = _gc.isenabled()
    if gc:
        _gc.disable()
    try:
        return _rounds(timers, reps, rounds, probe)
    finally:
        if gc and was_on:
            _gc.enable()


def _rounds(timers: dict, reps: dict, rounds: int, probe: Callable[[], dict] | None) -> dict[object, PointTimes]:
    keys = list(timers)
    res = {k: PointTimes() for k in keys}
    for j in range(rounds):
        live = [k for k in keys if res[k].error is None]
        if not live:
            break
        shift = j % len(live)
        for pos, k in enumerate(live[shift:] + live[:shift]):
            try:
                times = [float(t) for t in timers[k](reps[k])]
            except Exception as e:  # recorded; the caller decides (oom / error)
                res[k].error = e
                continue
            res[k].rounds.append(times)
            res[k].order.append(pos)
            if probe is not None:
                res[k].probes.append(probe() or {})
    return res


# ----------------------------------------------------------------------------------------------
# Timers and the NVML probe
# ----------------------------------------------------------------------------------------------


def event_timer(fn: Callable, device: torch.device) -> Callable[[int], list[float]]:
    """f(n): ms of each of n calls of fn — CUDA events around each call (one synchronize at the end) on CUDA,
    time.perf_counter on CPU."""
    import time

    def timer(n: int) -> list[float]:
        if device.type != "cuda":
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                out.append(1e3 * (time.perf_counter() - t0))
            return out
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        torch.cuda.synchronize(device)
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in zip(starts, ends)]

    return timer


def clock_probe(device: torch.device) -> Callable[[], dict] | None:
    """() -> {sm_clock_mhz, power_w, temperature_c} from NVML for `device`, or None (CPU, no NVML)."""
    if device.type != "cuda":
        return None
    from bench.env import nvml_handle, try_call

    got = nvml_handle(device.index if device.index is not None else torch.cuda.current_device())
    if got is None:
        return None
    pynvml, h = got

    def probe() -> dict:
        return {
            "sm_clock_mhz": try_call(lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)),
            "power_w": try_call(lambda: pynvml.nvmlDeviceGetPowerUsage(h) / 1000),
            "temperature_c": try_call(lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)),
        }

    return probe
