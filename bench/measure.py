"""What one benchmark point runs, and how it is timed and weighed.

workloads    the three levels at which the models are compared, each a module + random inputs:
               mixer    one sequence mixer on (B, N, D): `model.layer0_mixer()` (V1 one Mamba mixer, V4 one layer's
                        self-attention)
               encoder  the encoder stack, `model.encode(seq)` on (B, N, D), `model.encoder_named_parameters()`
                        trained
               model    the whole model: N = Nin + Nq tokens, Nin = round(0.2·N)
steps        forward (eval, no_grad, bf16 autocast on CUDA) and training step (train mode, forward +
             backward + AdamW step); an optional CUDA-graph replay of the forward.
timing       CUDA events around every repetition after warm-up (or triton.testing.do_bench), median and IQR;
             time.perf_counter on CPU.
memory       torch.cuda.max_memory_allocated / max_memory_reserved after reset_peak_memory_stats, and the
             device-level used memory from NVML sampled by a thread during the step; on CPU the process RSS.
max batch    doubling, then bisection on powers-of-two-ish candidates, each probe one training step;
             OOM → torch.OutOfMemoryError (or a RuntimeError saying "out of memory") → memory freed.
"""

from __future__ import annotations

import gc
import os
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn as nn

import models.mamba as mamba_mod
from bench.env import nvml_handle, try_call
from models import count_parameters
from models.common import ConfigError
from models.data import token_split
from models.train import autocast_for, flow_matching_loss, train_step
from models.variants import LEVELS, VARIANTS, get_variant

MiB = 2**20
# Backends that run on one device type only; any other runs wherever its config builds.
DEVICE_ONLY = {"mamba_ssm": "cuda", "mamba2": "cuda", "triton": "cuda", "flex": "cuda", "cpu_fused": "cpu"}
WHY_DEVICE = {  # why, where it is not obvious
    "triton": "the CPU interpreter is for tests",
    "flex": "torch runs FlexAttention uncompiled and forward-only on CPU: a check, not a benchmark",
}
# Pure-PyTorch mixers: launch-bound on a GPU, so the sweep measures them up to --ref-max-res only.
REFERENCE_BACKENDS = ("reference", "mamba2_ref")
# Config fields a backend forces in the benchmark, and why (said in every row's note).
BACKEND_FORCES = {
    "flex": ({"dropout": 0.0}, "flex runs at dropout 0: FlexAttention has no attention-probability dropout"),
}


def all_backends() -> tuple[str, ...]:
    """Every backend of every variant in the table, in table order (each once)."""
    return tuple(dict.fromkeys(b for v in VARIANTS.values() for b in v.backends))


def primary_backends(device_type: str) -> dict[str, str]:
    """Variant → the backend its headline and ratios use on `device_type` (cuda | cpu)."""
    return {k: v.primary["cuda" if device_type == "cuda" else "cpu"] for k, v in VARIANTS.items()}


# ----------------------------------------------------------------------------------------------
# Backends and OOM
# ----------------------------------------------------------------------------------------------


def backend_problem(model: str, backend: str, device: torch.device) -> str | None:
    """None when `backend` can run `model` on `device`, else the reason (the row is marked unavailable)."""
    v = get_variant(model)
    if backend not in v.backends:
        return f"{backend} is not a {model} backend"
    need = DEVICE_ONLY.get(backend)
    if need is not None and device.type != need:
        why = WHY_DEVICE.get(backend)
        return f"{backend} needs {'CUDA' if need == 'cuda' else 'the CPU'}" + (f" ({why})" if why else "")
    if backend == "mamba_ssm" and mamba_mod.MambaCUDA is None:
        return "mamba_ssm not importable (" + mamba_mod.INSTALL_HINT + ")"
    if backend == "cpu_fused" and not mamba_mod.cpu_scan.available():
        scan = mamba_mod.cpu_scan
        return f"fused CPU scan did not build ({scan.build_error()}); it {scan.INSTALL_HINT}"
    if backend == "triton":
        try:
            from kernels.flash_attention import attention  # noqa: F401
        except Exception as e:
            return f"kernels.flash_attention not importable: {type(e).__name__}: {e}"
    try:  # the model's own checks: a backend whose package is missing is refused by its config
        v.config("tiny", v.backend_overrides(backend), env={})
    except ConfigError as e:
        return str(e)
    return None


def is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "cublas_status_alloc_failed" in msg)


def free_memory(device: torch.device | None = None) -> None:
    """Best effort (never raises: after a CUDA error even empty_cache can fail)."""
    gc.collect()
    try:
        if torch.cuda.is_available() and (device is None or device.type == "cuda"):
            torch.cuda.empty_cache()
    except Exception:
        pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------
# Workloads: the three levels
# ----------------------------------------------------------------------------------------------


class MixerLevel(nn.Module):
    """One sequence mixer on (B, N, D): `model.layer0_mixer()` (its own module, so the FLOP counters trace one root)."""

    def __init__(self, mixer: nn.Module):
        super().__init__()
        self.mixer = mixer

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        return self.mixer(x)


class EncoderLevel(nn.Module):
    """The encoder stack of a model: model.encode(seq), (B, N, D) -> (B, N, D)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.model.encode(seq)


def backend_overrides(model: str, backend: str) -> dict:
    """The config overrides that put `model` on `backend` (ConfigError if it is not one of its backends)."""
    return get_variant(model).backend_overrides(backend)


@dataclass
class Workload:
    model: str  # a variant name (models/variants.py)
    backend: str  # one of its backends: mamba_ssm | reference | seed | sdpa | triton | flex | ...
    level: str  # mixer | encoder | model
    cfg: object
    module: nn.Module
    params: int  # parameters of this level
    note: str = ""  # what the benchmark changed for this backend (e.g. flex: dropout 0)

    def inputs(self, B: int, N: int, device, dtype=torch.float32) -> dict:
        """Random inputs (benchmarking does not need real data). Coordinates in [0, 1]."""
        if self.level != "model":
            return {"x": torch.randn(B, N, self.cfg.d_model, device=device, dtype=dtype)}  # (B, N, D)
        n_in, n_q = token_split(N)
        C = self.cfg.value_channels
        return {
            "query_values": torch.randn(B, n_q, C, device=device, dtype=dtype),  # (B, Nq, C) noisy values
            "query_coords": torch.rand(B, n_q, 2, device=device, dtype=dtype),  # (B, Nq, 2)
            "t": torch.rand(B, device=device, dtype=dtype),  # (B,)
            "input_coords": torch.rand(B, n_in, 2, device=device, dtype=dtype),  # (B, Nin, 2)
            "input_values": torch.randn(B, n_in, C, device=device, dtype=dtype),  # (B, Nin, C)
        }

    def forward_args(self, inputs: dict) -> tuple:
        if self.level != "model":
            return (inputs["x"],)
        keys = ("query_values", "query_coords", "t", "input_coords", "input_values")
        return tuple(inputs[k] for k in keys)

    def loss(self, inputs: dict) -> torch.Tensor:
        if self.level == "model":
            return flow_matching_loss(self.module, inputs)
        return self.module(inputs["x"]).float().square().mean()

    def trainable(self) -> list:
        return [p for p in self.module.parameters() if p.requires_grad]


def build_workload(
    model: str, backend: str, level: str, preset: str = "default", device="cpu", overrides: dict | None = None
) -> Workload:
    """Build `level` of `model` on `backend`. ConfigError when the backend cannot be built."""
    if level not in LEVELS:
        raise ConfigError(f"unknown level {level!r}; choose one of {', '.join(LEVELS)}")
    v = get_variant(model)
    forced, note = BACKEND_FORCES.get(backend, ({}, ""))
    # env={}: the spec's D_MODEL / NUM_HEADS ... environment variables do not resize the benchmark models
    full = v.build(preset, {**(overrides or {}), **v.backend_overrides(backend)}, env={})
    if forced and any(getattr(full.cfg, k, None) not in (None, val) for k, val in forced.items()):
        full = v.build(preset, {**(overrides or {}), **forced, **v.backend_overrides(backend)}, env={})
    else:
        note = ""
    cfg = full.cfg
    if level == "model":
        module, params = full, count_parameters(full)
    elif level == "encoder":
        for p in full.parameters():
            p.requires_grad_(False)  # the shell stays frozen (and out of AdamW)
        params = 0
        for _name, p in full.encoder_named_parameters():
            p.requires_grad_(True)
            params += p.numel()
        module = EncoderLevel(full)
    else:
        module = MixerLevel(full.layer0_mixer())
        params = count_parameters(module)
        del full
    return Workload(v.key, backend, level, cfg, module.to(device), params, note)


# ----------------------------------------------------------------------------------------------
# The steps that are timed
# ----------------------------------------------------------------------------------------------


def make_forward(wl: Workload, inputs: dict, device: torch.device, amp: bool = True) -> Callable:
    """Inference forward: eval mode, no_grad, bf16 autocast on CUDA."""
    wl.module.eval()
    args = wl.forward_args(inputs)

    def forward():
        with torch.no_grad(), autocast_for(device, amp):
            return wl.module(*args)

    return forward


def make_train_step(wl: Workload, inputs: dict, device: torch.device, amp: bool = True) -> Callable:
    """One training step, models.train's own (train_step: forward under bf16 autocast on CUDA, backward,
    gradient clipping, AdamW step), in train mode on the workload's trainable parameters."""
    wl.module.train()
    opt = torch.optim.AdamW(wl.trainable(), lr=1e-4, weight_decay=0.01)
    loss_fn = partial(wl.loss, inputs)

    def step():
        train_step(loss_fn, opt, device, amp)

    step.optimizer = opt  # so callers can drop its state
    return step


def make_graph_forward(wl: Workload, inputs: dict, device: torch.device, amp: bool = True) -> Callable:
    """The forward captured once in a CUDA graph; the returned callable replays it (static inputs)."""
    if device.type != "cuda":
        raise ConfigError("CUDA graphs need CUDA")
    wl.module.eval()
    args = wl.forward_args(inputs)
    # autocast's weight-cast cache must be off inside a capture (the casts become part of the graph)
    amp_ctx = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if amp else nullcontext()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), torch.no_grad(), amp_ctx:
        for _ in range(3):  # warm-up on a side stream (autotuning, lazy tables) before capture
            wl.module(*args)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad(), amp_ctx:
        out = wl.module(*args)

    def replay():
        graph.replay()
        return out

    replay.graph = graph
    return replay


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


@dataclass
class Timing:
    times_ms: list[float]
    timer: str

    def _quartiles(self) -> list[float]:
        """[q1, median, q3], linear interpolation between order statistics (numpy's default)."""
        xs = self.times_ms
        return [xs[0]] * 3 if len(xs) == 1 else statistics.quantiles(xs, n=4, method="inclusive")

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def q1(self) -> float:
        return self._quartiles()[0]

    @property
    def q3(self) -> float:
        return self._quartiles()[2]

    def summary(self) -> dict:
        return {
            "median_ms": self.median, "q1_ms": self.q1, "q3_ms": self.q3, "iqr_ms": self.q3 - self.q1,
            "mean_ms": statistics.fmean(self.times_ms), "min_ms": min(self.times_ms),
            "n_reps": len(self.times_ms), "timer": self.timer,
        }  # fmt: skip


def _reps(est_ms: float, rep_ms: float, min_reps: int, max_reps: int) -> int:
    return max(min_reps, min(max_reps, int(rep_ms / max(est_ms, 1e-3))))


def time_fn(
    fn: Callable,
    device: torch.device,
    warmup_ms: float = 25,
    rep_ms: float = 100,
    min_reps: int = 3,
    max_reps: int = 100,
    timer: str = "events",
) -> Timing:
    """Time `fn` (already called once: compiled, autotuned, allocated). CUDA: events around each repetition,
    one synchronize at the end; `timer="do_bench"` uses triton.testing.do_bench. CPU: time.perf_counter."""
    if device.type == "cuda" and timer == "do_bench":
        import triton.testing

        times = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
        return Timing([float(t) for t in times], "triton.do_bench")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()  # one more warm-up call, timed to size the loops
        end.record()
        torch.cuda.synchronize(device)
        est = start.elapsed_time(end)
        for _ in range(min(100, int(warmup_ms / max(est, 1e-3)))):
            fn()
        n = _reps(est, rep_ms, min_reps, max_reps)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(device)
        return Timing([s.elapsed_time(e) for s, e in zip(starts, ends)], "cuda-events")
    times = []
    t0 = time.perf_counter()
    fn()
    times.append(1e3 * (time.perf_counter() - t0))
    deadline = time.perf_counter() + max(0.0, warmup_ms / 1e3)
    while time.perf_counter() < deadline:  # optional extra warm-up on CPU (default none)
        fn()
    for _ in range(_reps(times[0], rep_ms, min_reps, max_reps) - 1):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return Timing(times, "perf_counter")


# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------


class PeakSampler:
    """Polls `read()` (bytes) from a thread every `interval` s while active; keeps the first and the max."""

    def __init__(self, read: Callable[[], int], interval: float = 0.002):
        self.read, self.interval = read, interval
        self.first = self.peak = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        v = self.read()
        self.first = v if self.first is None else self.first
        self.peak = v if self.peak is None else max(self.peak, v)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        return False


_NVML = {}


def nvml_reader(device: torch.device) -> Callable[[], int] | None:
    """Device-level used memory (bytes) from NVML (nvmlDeviceGetMemoryInfo.used), or None."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _NVML:
        got = nvml_handle(index)
        _NVML[index] = None
        if got is not None and try_call(lambda: got[0].nvmlDeviceGetMemoryInfo(got[1])) is not None:
            pynvml, handle = got
            _NVML[index] = lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    return _NVML[index]


try:
    _PAGE = os.sysconf("SC_PAGE_SIZE")
except (ValueError, OSError, AttributeError):
    _PAGE = 4096


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) — Linux: write 5 to /proc/self/clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _peak_rss_bytes() > 0
    except OSError:
        return False


def _malloc_trim() -> None:
    """Return freed heap memory to the OS (glibc), so RSS before a step is the memory actually in use."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure_memory(fn: Callable, device: torch.device) -> dict:
    """Run `fn` once and return its memory footprint in MiB (NaN where not measurable).
    CUDA: allocator peaks after reset_peak_memory_stats, NVML used memory sampled by a thread every 2 ms.
    CPU: the process's peak RSS over the call (VmHWM reset before it; a 10 ms sampler where that fails)."""
    nan = float("nan")
    out = dict.fromkeys(
        ("mem_alloc_peak_mb", "mem_reserved_peak_mb", "mem_alloc_before_mb", "nvml_used_before_mb",
         "nvml_used_peak_mb", "rss_before_mb", "rss_peak_mb"), nan,
    )  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        out["mem_alloc_before_mb"] = torch.cuda.memory_allocated(device) / MiB
        reader = nvml_reader(device)
        with PeakSampler(reader) if reader else nullcontext() as sampler:
            fn()
            torch.cuda.synchronize(device)
        out["mem_alloc_peak_mb"] = torch.cuda.max_memory_allocated(device) / MiB
        out["mem_reserved_peak_mb"] = torch.cuda.max_memory_reserved(device) / MiB
        if sampler is not None:
            out["nvml_used_before_mb"], out["nvml_used_peak_mb"] = sampler.first / MiB, sampler.peak / MiB
        return out
    gc.collect()
    _malloc_trim()
    out["rss_before_mb"] = rss_bytes() / MiB
    if _reset_peak_rss():
        fn()
        out["rss_peak_mb"] = _peak_rss_bytes() / MiB
    else:
        with PeakSampler(rss_bytes, interval=0.01) as sampler:
            fn()
        out["rss_peak_mb"] = sampler.peak / MiB
    return out


# ----------------------------------------------------------------------------------------------
# Largest batch that fits
# ----------------------------------------------------------------------------------------------


def nice_mid(lo: int, hi: int) -> int:
    """A 'powers-of-two-ish' candidate strictly between lo and hi: the midpoint rounded down to a multiple
    of the largest power of two ≤ (hi − lo)/4 (512, 1024 → 768; 768, 1024 → 896)."""
    gap = hi - lo
    if gap <= 1:
        return lo
    g = 1
    while g * 2 <= gap / 4:
        g *= 2
    mid = (lo + hi) // 2 // g * g
    return mid if lo < mid < hi else (lo + hi) // 2


@dataclass
class MaxBatch:
    max_ok: int  # largest batch that fitted (0: not even `1` fitted, or none probed)
    min_fail: int | None  # smallest batch that did not fit (None: none failed)
    cap: int
    probes: list = field(default_factory=list)  # [(batch, fitted)]

    @property
    def capped(self) -> bool:
        return self.min_fail is None and self.max_ok >= self.cap

    def describe(self) -> str:
        if self.capped:
            return f">= {self.cap} (cap)"
        if self.min_fail is None:
            return f">= {self.max_ok} (probes exhausted)"
        if self.max_ok == 0:
            return "0 (batch 1 does not fit)" if self.min_fail == 1 else f"< {self.min_fail} (probes exhausted)"
        return f"{self.max_ok} (fails at {self.min_fail})"

    def probes_str(self) -> str:
        return " ".join(f"{b}:{'ok' if ok else 'oom'}" for b, ok in self.probes)


def search_max_batch(
    fits: Callable[[int], bool], start: int, cap: int = 4096, max_probes: int = 7, rel_tol: float = 0.125
) -> MaxBatch:
    """Largest b ≤ cap with fits(b): double from `start` until a failure, then bisect (nice_mid) until
    (fail − ok) ≤ rel_tol·ok, at most `max_probes` probes. fits() returns False on OOM."""
    res = MaxBatch(0, None, cap)
    b = max(1, min(start, cap))
    while len(res.probes) < max_probes:
        ok = fits(b)
        res.probes.append((b, ok))
        if ok:
            res.max_ok = max(res.max_ok, b)
        else:
            res.min_fail = b if res.min_fail is None else min(res.min_fail, b)
        if res.min_fail is None:  # still doubling
            if b >= cap:
                break
            b = min(2 * b, cap)
        elif res.max_ok == 0:  # nothing fitted yet: halve
            if res.min_fail == 1:
                break
            b = max(1, res.min_fail // 2)
        else:  # bisect
            if res.min_fail - res.max_ok <= max(1, int(rel_tol * res.max_ok)):
                break
            b = nice_mid(res.max_ok, res.min_fail)
    return res


def predicted_start(peak_mb: float, batch: int, static_mb: float, capacity_mb: float, cap: int) -> int:
    """First probe: the largest power of two below 80 % of the batch that linear extrapolation of the
    measured peak (peak = static + batch · per_sample) says would fit; at least `batch`."""
    per_sample = (peak_mb - static_mb) / max(batch, 1)
    if not per_sample > 0:
        return batch
    guess = 0.8 * (capacity_mb - static_mb) / per_sample
    b = batch
    while 2 * b <= min(guess, cap):
        b *= 2
    return b
