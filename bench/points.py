"""One group of timed points: eager wall time in interleaved rounds, then each point's device time.

    fields = measure_group({key: factory}, device, RoundsConfig(), DeviceTimeConfig())
    fields[key]  # {"status": "ok" | error, "median_ms": ..., "device_ms": ..., "kernel_ms": ..., ...}

A point is a step factory: factory(capturable) → a fresh zero-argument step (forward, or training step whose
AdamW is built with capturable=True when asked). For each point of the group, in this order:
    1. on CUDA a first call (compilation, autotuning, allocator growth); one call under the memory probe
       (bench.measure.measure_memory), timed to size the loops; warm-up calls up to `warmup_ms`;
    2. the eager wall time: all points in RoundsConfig.rounds interleaved rounds (bench.rounds), with NVML SM clock
       and power read after each round;
    3. per point, one after the other (so only one graph pool is alive): torch.profiler over `profile_steps`
       eager steps → kernel_ms (summed GPU kernel time per step), host_ms = median_ms − kernel_ms and the
       per-component breakdown (bench.breakdown); then a fresh capturable step captured in one CUDA graph and
       replayed in the same number of rounds → graph_ms, the device-bound time.
device_ms is graph_ms where the capture worked, else kernel_ms (device_source says which); a capture that fails
leaves graph_note with the reason and the row keeps everything else. An exception in steps 1–2 is the point's
`error` (the sweep maps it to oom / unavailable / error); in step 3 it only costs that measurement (its note).
A factory may have a `release()` method: called when its point is done (or failed), so that the point's module,
optimizer and inputs are freed before the next point's graph is captured.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench import breakdown as bd
from bench import device_time as dt
from bench.rounds import RoundsConfig, clock_probe, event_timer, reps_per_round, run_rounds


@dataclass
class DeviceTimeConfig:
    graph: bool = True  # capture each step in a CUDA graph and time its replays (CUDA only)
    profile_steps: int = 3  # eager steps under torch.profiler per point (0: no kernel time / breakdown)
    slow_ms: float = 100.0  # a slower step is profiled once and gets 1 capture warm-up call
    graph_warmup: int = 3  # calls on a side stream before the capture
    graph_max_ms: float = 1000.0  # slower steps are not captured (device-bound: the kernel sum is their device time)
    memory: bool = True  # one call under bench.measure.measure_memory
    warmup_ms: float = 25.0  # eager warm-up per point after the first and the memory call (at most 50 calls)
    trace_dir: str | None = None  # keep each point's Chrome trace there (recorded traces for the breakdown tests)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_call(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return 1e3 * (time.perf_counter() - t0)


def _bare(e: BaseException) -> BaseException:
    """The exception without its traceback (whose frames would keep the failed step's tensors alive)."""
    e.__traceback__ = e.__context__ = e.__cause__ = None
    return e


def _release(factory) -> None:
    """Let the point's module, optimizer and inputs go (a factory may offer `release`)."""
    release = getattr(factory, "release", None)
    if release is not None:
        release()


def _note(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def measure_group(
    factories: dict[object, Callable[[bool], Callable]],
    device: torch.device,
    rounds: RoundsConfig,
    cfg: DeviceTimeConfig,
    trace_names: dict | None = None,
) -> dict[object, dict]:
    """{key: fields} for every point; fields["error"] holds the exception of a point that could not be timed."""
    from bench.measure import MiB, free_memory, is_oom, measure_memory, rss_bytes

    out: dict[object, dict] = {k: {} for k in factories}
    steps: dict[object, Callable] = {}
    est: dict[object, float] = {}
    for k, factory in factories.items():  # 1. build, first call, memory, warm-up
        try:
            # what the process holds before this point is built (the unit's points built before it, and caches):
            # its memory peak counts from here, so a point's memory does not depend on its place in the unit
            resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else rss_bytes()
            step = factory(False)
            # CUDA: a first call (compilation, autotuning, allocator growth) before the memory call; CPU has none of
            # that, and its first call is the one whose peak RSS counts (the allocator's pages are then resident)
            t_first = _timed_call(step, device) if device.type == "cuda" else math.nan
            t0 = time.perf_counter()
            if cfg.memory:
                out[k].update(measure_memory(step, device), mem_resident_mb=resident / MiB)
            t_mem = 1e3 * (time.perf_counter() - t0)
            t_first = t_mem if math.isnan(t_first) else t_first
            est[k] = t_mem if cfg.memory else _timed_call(step, device)  # the memory call is a plain step too
            out[k]["first_call_ms"] = t_first
            n_warm = min(50, int(cfg.warmup_ms / max(est[k], 1e-3)))
            for _ in range(n_warm):
                step()
            steps[k] = step
        except Exception as e:
            out[k]["error"] = _bare(e)
            steps.pop(k, None)
            step = None
            _release(factory)
            free_memory(device)
    # 2. eager wall time, interleaved rounds
    reps = {k: reps_per_round(est[k], rounds) for k in steps}
    probe = clock_probe(device)
    times = run_rounds({k: event_timer(s, device) for k, s in steps.items()}, reps, rounds.rounds, probe)
    for k, pt in times.items():
        if pt.error is not None:
            out[k]["error"] = _bare(pt.error)
            steps.pop(k)
            _release(factories[k])
            free_memory(device)
            continue
        out[k].update(pt.summary())
        out[k]["timer"] = "cuda-events" if device.type == "cuda" else "perf_counter"
    # 3. device time, one point at a time
    for k in list(steps):
        f = out[k]
        f.update(device_ms=math.nan, device_source="", graph_note="", profile_note="")
        if cfg.profile_steps > 0:
            n = 1 if est[k] > cfg.slow_ms else cfg.profile_steps
            trace = None
            if cfg.trace_dir and trace_names and k in trace_names:
                trace = f"{cfg.trace_dir}/{trace_names[k]}.json"
            try:
                kernels = dt.profile_kernels(steps[k], device, n, trace)
                if kernels:
                    f["kernel_ms"] = dt.kernel_ms(kernels) / n
                    f["kernel_count"] = len(kernels) / n
                    f["host_ms"] = f["median_ms"] - f["kernel_ms"]
                    f["host_frac"] = f["host_ms"] / f["median_ms"] if f["median_ms"] > 0 else math.nan
                    f.update(bd.breakdown_columns(bd.breakdown(kernels, n)))
                    f["top_kernels"] = bd.top_kernels(kernels, steps=n)
                    f["profile_steps"] = n
                else:
                    f["profile_note"] = "no device kernels recorded" + (" (CPU)" if device.type != "cuda" else "")
            except Exception as e:
                f["profile_note"] = f"profiler failed: {_note(e)}"
        if cfg.graph and device.type != "cuda":
            f["graph_note"] = "CUDA graphs need CUDA"
        elif cfg.graph and est[k] > cfg.graph_max_ms:
            f["graph_note"] = (f"not captured: a {est[k]:.0f} ms step is device-bound (> {cfg.graph_max_ms:.0f} ms, "
                               "--graph-max-ms); its kernel sum is the device time")  # fmt: skip
        elif cfg.graph:
            warm = 1 if est[k] > cfg.slow_ms else cfg.graph_warmup
            f.update(_graph_time(factories[k], device, rounds, reps[k], warm, is_oom))
        if math.isfinite(f.get("graph_ms", math.nan)):
            f["device_ms"], f["device_source"] = f["graph_ms"], "cuda-graph replay"
        elif math.isfinite(f.get("kernel_ms", math.nan)):
            f["device_ms"], f["device_source"] = f["kernel_ms"], "profiler kernel sum"
        steps.pop(k)
        _release(factories[k])
        free_memory(device)
    return out


def _graph_time(factory, device, rounds: RoundsConfig, reps: int, warmup: int, is_oom) -> dict:
    """graph_ms & co. of a fresh capturable step, or graph_note with the reason it has none."""
    from bench.measure import free_memory

    g = None
    try:
        g = dt.capture(factory(True), device, warmup)
        pt = run_rounds({0: lambda n: dt.time_replay(g, device, n)}, {0: reps}, rounds.rounds)[0]
        if pt.error is not None:
            raise pt.error
        s = pt.summary()
        return {
            "graph_ms": s["median_ms"], "graph_q1_ms": s["q1_ms"], "graph_q3_ms": s["q3_ms"],
            "graph_n_reps": s["n_reps"], "graph_round_spread_pct": s["round_spread_pct"], "graph_pool_mb": g.pool_mb,
        }  # fmt: skip
    except dt.GraphUnavailable as e:
        return {"graph_note": str(e)}
    except Exception as e:
        return {"graph_note": ("OOM in capture: " if is_oom(e) else "graph failed: ") + _note(e)}
    finally:
        if g is not None:
            g.release()
        free_memory(device)
