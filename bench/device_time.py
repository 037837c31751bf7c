"""Device time beside wall time: one step captured in a CUDA graph, and the GPU kernel time of the profiler.

    graph = capture(step, device)          # warm-up on a side stream, then one call of `step` captured
    t = time_replay(graph, device, n)      # ms per replay: the device-bound time (no Python, no launches)
    k = profile_kernels(step, device, 3)   # the kernels of 3 eager steps: [Kernel(name, dur_us)]
    kernel_ms(k) / 3                       # summed GPU time per step; host overhead = eager − this

What a step may do inside a capture (the caller builds it so): no host synchronisation (.item(), printing a
tensor, a data-dependent shape), static input tensors (the same storage every replay), an optimizer built with
`capturable=True` (AdamW keeps its step count on the device). autocast's weight-cast cache is switched off for
the warm-up and the capture (the cached casts would otherwise be made outside the graph and read inside it).
Random numbers (torch.rand in the loss, dropout) are fine: the CUDA generator registers its offsets with the
graph, so every replay draws new ones. The Triton kernel's dropout does too: under capture it draws its seed on
the device from that generator and reads it at run time (kernels.flash_attention), where eagerly it draws it on
the host; a seed drawn on the host would be baked into the graph. Anything else that fails makes capture() raise
GraphUnavailable with a one-line reason, which the row records; the eager time is kept.

kernels_from_trace() reads the Chrome trace that torch.profiler exports (events with "ph": "X" and "cat"
"kernel", "gpu_memcpy" or "gpu_memset"); bench.breakdown groups the same list by component.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch

DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")  # Chrome-trace categories of work done on the GPU


class GraphUnavailable(RuntimeError):
    """The step cannot be captured in a CUDA graph; str(e) is the one-line reason for the row."""


def _one_line(e: BaseException, limit: int = 160) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:limit] if text else ''}".rstrip(": ")


@contextmanager
def no_autocast_cache():
    """autocast contexts entered inside take cache_enabled=False (they read the global default)."""
    before = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)
    try:
        yield
    finally:
        torch.set_autocast_cache_enabled(before)


# ----------------------------------------------------------------------------------------------
# CUDA graphs
# ----------------------------------------------------------------------------------------------


@dataclass
class Graph:
    graph: object  # torch.cuda.CUDAGraph
    output: object  # what the captured call returned (static tensors, refreshed by every replay)
    pool_mb: float  # memory the capture took from the allocator (its private pool), MiB
    # the captured callable, kept alive with the graph: what it holds that was allocated outside the graph's pool
    # (an optimizer's state, made in the warm-up) is read and written by every replay, and must not be freed first
    step: object = None

    def replay(self):
        self.graph.replay()
        return self.output

    def release(self) -> None:
        self.graph.reset()
        self.output = self.step = None


def capture(step: Callable, device: torch.device, warmup: int = 3) -> Graph:
    """`step` run `warmup` times on a side stream (autotuning, lazy state, allocator growth), then one call
    captured into a CUDA graph. GraphUnavailable (one-line reason) when that is impossible; an OOM propagates."""
    if device.type != "cuda":
        raise GraphUnavailable("CUDA graphs need CUDA")
    from bench.measure import is_oom  # lazy: bench.measure imports the models

    try:
        with no_autocast_cache():
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    step()
            torch.cuda.current_stream(device).wait_stream(side)
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_reserved(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = step()
            torch.cuda.synchronize(device)
            g = Graph(graph, out, (torch.cuda.memory_reserved(device) - before) / 2**20, step)
            g.replay()  # a first replay: a graph that captured but cannot run fails here, not in the timing
            torch.cuda.synchronize(device)
            return g
    except Exception as e:
        if is_oom(e):
            raise
        _end_broken_capture(device)
        raise GraphUnavailable(f"capture failed: {_one_line(e)}") from e


def _end_broken_capture(device: torch.device) -> None:
    """After an exception inside torch.cuda.graph (whose exit ends the capture): wait for the device, best
    effort, so the next row starts clean."""
    try:
        torch.cuda.synchronize(device)
    except Exception:
        pass


def time_replay(g: Graph, device: torch.device, n: int) -> list[float]:
    """ms of each of `n` replays (CUDA events around each one)."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends):
        s.record()
        g.graph.replay()
        e.record()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


# ----------------------------------------------------------------------------------------------
# Profiler: the kernels of a few eager steps
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kernel:
    name: str
    dur_us: float
    cat: str = "kernel"  # kernel | gpu_memcpy | gpu_memset


def kernels_from_trace(trace: dict) -> list[Kernel]:
    """The device-side events of a torch.profiler Chrome trace (the dict export_chrome_trace writes)."""
    out = []
    for ev in trace.get("traceEvents", []):
        cat = str(ev.get("cat", "")).lower()
        if ev.get("ph") == "X" and cat in DEVICE_CATS:
            out.append(Kernel(str(ev.get("name", "")), float(ev.get("dur", 0.0)), cat))
    return out


def kernel_ms(kernels: list[Kernel]) -> float:
    """Summed GPU time (ms) of the kernels, memcpy and memset included."""
    return sum(k.dur_us for k in kernels) / 1e3


def profile_kernels(step: Callable, device: torch.device, steps: int = 1, trace_path: str | None = None) -> list:
    """Run `step` `steps` times under torch.profiler (CPU + CUDA activities) and return the device events.
    `trace_path`: also keep the Chrome trace there (for bench.breakdown's fixtures)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    fd, tmp = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(tmp)
        with open(tmp) as f:
            trace = json.load(f)
    finally:
        os.unlink(tmp)
    if trace_path:
        from models.utils import atomic_write_text

        atomic_write_text(trace_path, json.dumps(trace))
    return kernels_from_trace(trace)


# ----------------------------------------------------------------------------------------------
# The GPU before the first row: warm-up and the matmul peak
# ----------------------------------------------------------------------------------------------


def warm_up(device: torch.device, seconds: float = 2.0, n: int = 8192) -> dict:
    """At least `seconds` of bf16 GEMMs (clocks and power up, cuBLAS loaded) before anything is timed."""
    if device.type != "cuda" or seconds <= 0:
        return {"warmup_s": 0.0, "warmup_gemms": 0}
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    t0, count = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ b
        torch.cuda.synchronize(device)
        count += 10
    del a, b
    return {"warmup_s": time.perf_counter() - t0, "warmup_gemms": count}


def matmul_peak(device: torch.device, n: int = 8192, reps: int = 30, dtype=torch.bfloat16) -> dict:
    """The measured dense matmul peak: the median TFLOP/s of `reps` (n×n)·(n×n) torch.matmul calls.
    The reference for "% of peak" in the throughput table (measured in the same run, not the datasheet)."""
    if device.type != "cuda":
        return {}
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends):
        s.record()
        torch.matmul(a, b)
        e.record()
    torch.cuda.synchronize(device)
    ms = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    med = ms[len(ms) // 2]
    del a, b
    return {
        "matmul_peak_tflops": 2 * n**3 / (med / 1e3) / 1e12, "matmul_peak_shape": f"{n}x{n}x{n}",
        "matmul_peak_dtype": str(dtype).removeprefix("torch."), "matmul_peak_reps": reps, "matmul_peak_ms": med,
    }  # fmt: skip
