"""Attention kernel benchmark: our Triton FlashAttention vs torch SDPA backends, FlexAttention and naive math.

    python -m bench.attention_kernel --points 64x32 64x64 8x128 --dims 32 64 128 --dropout 0 0.1 --out results/
    python -m bench.attention_kernel --batch 64 --res 32 64 128 --dims 32      # points = batch x res
    python -m bench.attention_kernel --quick --out /tmp/ak          # tiny sizes (CPU: Triton interpreter)
    python -m bench.attention_kernel --replot results/attention_kernel_B64_H8_bf16.csv   # MD + PNG from data
    python -m bench.attention_kernel --model-step --res 32 48 64 96 128 --dropout 0.1 0 --out /tmp/v4
        # the V4 training step (bench.measure's workload) with attention sdpa vs triton

For every point (B, r) (N = r*r tokens), head dim D, case and dropout p it times the forward and
forward+backward of ``triton`` (kernels.flash_attention), ``sdpa_flash``, ``sdpa_cudnn``, ``sdpa_efficient``
(torch SDPA pinned with ``torch.nn.attention.sdpa_kernel``), ``flex`` (torch.compile'd FlexAttention, no
dropout; self case only, since every shape and layout recompiles) and ``naive`` (explicit softmax(QK^T)V,
N <= 4096). Cases are the model's calls:
  self    q, k, v contiguous (B, H, N, D), Nq = Nk = N
  packed  self-attention on q, k, v = strided views of one (B, N, 3, H, D) projection, as V4's layers call it
          (triton: ``attention_qkv``, which also writes the gradient packed; the others: the views)
  cross   the decoder: Nq = 0.8 N queries onto Nk = 0.2 N inputs (models.data.token_split), q a
          (B, N, H, D) view and k, v views of one (B, Nk, 2, H, D) projection
Cases other than ``self`` and dropout > 0 run at the model's head dim only (D = 32); p > 0 runs the three
SDPA backends and triton (triton drops with probability round(256 p)/256, see kernels.flash_attention).
FLOPs: forward = 4*B*H*Nq*Nk*D, forward+backward = 3.5 x forward. Times come from bench.measure.time_fn
(triton.testing.do_bench; median with 20th/80th percentiles); on CUDA ``kernel_ms`` beside it is the summed GPU
kernel time per call (torch.profiler over a few eager calls, split over 3 profiler sessions: the median session's
per-call sum, so one preempted kernel does not move it), and a point whose wall time is > 1.25x that is
marked host-bound. Before timing, every backend's output and
gradients are compared with SDPA flash (p = 0); with dropout the masks differ between backends, so the
row only checks that the output is finite (the test-suite checks the kernel exactly against attention_ref
with its own mask). ``host`` rows: host time per call (wall clock per call of a tiny problem, many calls
in a row, one synchronize), triton vs SDPA, forward and forward+backward, in the model's packed layout.
Unavailable backends and OOMs become rows with NaN and status "unavailable"/"oom"; the sweep goes on.

Outputs (written atomically) in --out: ``attention_kernel_{B}_H{H}_{dtype}.csv`` (B: ``B64`` for one batch
size, ``B64-8`` for several), ``.json`` (bench.env.environment), ``.md`` (tables and whether each bar is
met) and ``.png``; ``--model-step`` writes ``attention_kernel_v4step_B{B}_{dtype}.{csv,md,json}``.
The MD and PNG are rendered from the CSV (``--replot``), also for CSVs written before the case / p columns.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.env import environment
from models.utils import ArgParser, atomic_savefig, atomic_to_csv, atomic_write_text
from models.validate import existing_file, positive_float, writable_dir

BACKENDS = ["triton", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "flex", "naive"]
SDPA_BACKENDS = ["sdpa_flash", "sdpa_cudnn", "sdpa_efficient"]
PASSES = ["fwd", "fwd+bwd"]
CASES = ["self", "packed", "cross"]
BWD_FACTOR = 3.5  # forward + backward FLOPs = 3.5 x forward (backward = 2.5 x forward)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
HEAD_DIMS = (16, 32, 64, 128)
MODEL_HEAD_DIM = 32  # V4: d_model 256 / 8 heads
NAIVE_MAX_N = 4096  # the naive path materialises B*H*Nq*Nk scores
# the performance bar for "triton / fastest SDPA" (speed ratio)
BAR_FWD_LARGE = 1.0  # forward, N >= 4096, no dropout
BAR_FWD_SMALL = 0.9  # forward, N < 4096, no dropout
BAR_FWD_BWD = 0.8  # forward + backward, every N, no dropout
BAR_DROPOUT = 1.0  # with dropout: fastest SDPA with the same p, forward and forward+backward
BAR_OTHER_D = 1.0  # D != 32 (the D = 64 moonshot): fastest SDPA (cuDNN), forward and forward+backward
BAR_HOST_US = 20.0  # host time per call: triton within this many microseconds of SDPA
BAR_LARGE_N = 4096
COLUMNS = [
    "backend", "D", "r", "N", "pass", "B", "H", "dtype", "status", "ms", "p20_ms", "p80_ms", "tflops",
    "ratio_to_fastest_sdpa", "rel_err", "max_err", "ref", "config", "note", "case", "p", "Nq", "Nk", "kernel_ms",
]  # fmt: skip
HOST_BOUND = 1.25  # a row is host-bound when its median wall time is > this × its summed GPU kernel time
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _head_dim(text: str) -> int:
    value = _positive_int(text)
    if value not in HEAD_DIMS:
        raise argparse.ArgumentTypeError(f"head dim must be one of {HEAD_DIMS}, got {value}")
    return value


def _point(text: str) -> tuple[int, int]:
    b, sep, r = text.partition("x")
    if not sep:
        raise argparse.ArgumentTypeError(f"a point is BxR (batch x resolution, e.g. 64x32), got {text!r}")
    return _positive_int(b), _positive_int(r)


def _dropout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a dropout probability, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"dropout must be in [0, 1), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(
        prog="bench.attention_kernel",
        description="Benchmark the Triton FlashAttention kernel against torch SDPA backends.",
    )
    p.add_argument("--batch", type=_positive_int, default=64, help="batch size B (default 64)")
    p.add_argument("--heads", type=_positive_int, default=8, help="heads H (default 8)")
    p.add_argument(
        "--dims",
        type=_head_dim,
        nargs="+",
        default=[32, 64, 128],
        help="head dims D (default 32 64 128; with several, D != 32 runs self-attention without dropout only)",
    )
    p.add_argument("--res", type=_positive_int, nargs="+", default=[32, 48, 64, 96, 128], help="resolutions r, N = r*r")
    p.add_argument("--points", type=_point, nargs="+", default=None, help="BxR points (override --batch x --res)")
    p.add_argument("--cases", nargs="+", choices=CASES, default=["self"], help="model calls (default self)")
    p.add_argument("--dropout", type=_dropout, nargs="+", default=[0.0], help="dropout probabilities (default 0)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="input dtype (default bf16)")
    p.add_argument("--out", type=lambda t: Path(writable_dir(t)), default=None,
                   help="output directory (default results/ on a GPU, results/cpu/ otherwise)")  # fmt: skip
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=BACKENDS, help="backends to run")
    p.add_argument("--passes", nargs="+", choices=PASSES, default=PASSES, help="passes to time")
    p.add_argument("--warmup", type=_positive_int, default=25, help="do_bench warm-up time in ms (default 25)")
    p.add_argument("--rep", type=_positive_int, default=100, help="do_bench timing budget in ms (default 100)")
    p.add_argument("--min-reps", type=_positive_int, default=10, help="at least this many timed runs")
    p.add_argument("--no-host", action="store_true", help="skip the host-time-per-call rows")
    p.add_argument("--model-step", action="store_true", help="time V4's training step, sdpa vs triton, instead")
    p.add_argument("--rounds", type=_positive_int, default=5, help="--model-step: interleaved rounds (default 5)")
    p.add_argument("--point-s", type=positive_float, default=2.0,
                   help="--model-step: timed seconds per backend and point at most (default 2)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="tiny sizes, just checks the code path runs")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--replot", type=existing_file, metavar="CSV", help="only re-render the MD and PNG from a saved CSV")
    return p


# ----------------------------------------------------------------------------------------------------
# atomic writes (models.utils; the rows in this benchmark's column order)
# ----------------------------------------------------------------------------------------------------


def write_csv_atomic(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    import pandas as pd

    atomic_to_csv(pd.DataFrame(rows, columns=columns or COLUMNS), path)


# ----------------------------------------------------------------------------------------------------
# backends
# ----------------------------------------------------------------------------------------------------


class Unavailable(Exception):
    """The backend cannot run this configuration."""


def naive_attention(q, k, v, dropout_p=0.0):
    """Explicit softmax(QK^T * scale) V: materialises the (B, H, Nq, Nk) scores; softmax in fp32."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = torch.matmul(q, k.transpose(-2, -1)) * scale
    p = torch.softmax(s.float(), dim=-1).to(q.dtype)
    if dropout_p > 0.0:
        p = torch.nn.functional.dropout(p, dropout_p)
    return torch.matmul(p, v)


def _flex_fn():
    """torch.compile'd FlexAttention: the model's own (models.common.flex_compiled, recompile limit raised)."""
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError as e:
        raise Unavailable(f"FlexAttention not in this torch: {e}") from None
    from models.common import flex_compiled

    return flex_compiled()


def make_backend(name: str, dropout_p: float = 0.0):
    """A function (q, k, v) -> out (B, H, Nq, D) for one backend (the SDPA ones pinned with sdpa_kernel)."""
    import torch.nn.functional as F

    if name == "triton":
        from kernels.flash_attention import attention

        return lambda q, k, v: attention(q, k, v, dropout_p=dropout_p)
    if name == "naive":
        return lambda q, k, v: naive_attention(q, k, v, dropout_p)
    if name == "flex":
        if dropout_p > 0.0:
            raise Unavailable("FlexAttention has no dropout")
        if not torch.cuda.is_available():
            raise Unavailable("FlexAttention (compiled) needs CUDA here")
        flex = _flex_fn()
        return lambda q, k, v: flex(q, k, v)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "sdpa_flash": SDPBackend.FLASH_ATTENTION,
        "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
        "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
    }[name]

    def fn(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)

    return fn


def _is_unavailable(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, Unavailable) or (
        isinstance(e, RuntimeError)
        and ("No available kernel" in text or "not supported" in text.lower() or "not available" in text.lower())
    )


# ----------------------------------------------------------------------------------------------------
# cases: the leaves (what gets a gradient) and how each backend is called on them
# ----------------------------------------------------------------------------------------------------


def case_lengths(case: str, N: int) -> tuple[int, int]:
    """(Nq, Nk) of a case at N tokens."""
    if case == "cross":
        from models.data import token_split

        n_in, n_q = token_split(N)
        return n_q, n_in
    return N, N


class Case:
    """Inputs of one model call and a runner per backend: run(name, p)(*leaves) -> output tensor."""

    def __init__(self, case: str, B: int, H: int, N: int, D: int, dtype, device, seed: int):
        self.case, self.B, self.H, self.D = case, B, H, D
        self.Nq, self.Nk = case_lengths(case, N)
        g = torch.Generator(device=device).manual_seed(seed)

        def randn(*shape):
            return torch.randn(*shape, generator=g, device=device, dtype=torch.float32).to(dtype)

        E = H * D
        if case == "self":
            self.leaves = [randn(B, H, N, D) for _ in range(3)]  # q, k, v (B, H, N, D)
        elif case == "packed":
            self.leaves = [randn(B, N, 3 * E)]  # the in-projection's output (B, N, 3E)
        else:
            self.leaves = [randn(B, self.Nq, E), randn(B, self.Nk, 2 * E)]  # q (B, Nq, E), kv (B, Nk, 2E)
        out_shape = (B, self.Nq, E) if case == "packed" else (B, H, self.Nq, D)
        self.dout = randn(*out_shape)

    def heads(self, leaves):
        """(q, k, v) as (B, H, N, D) views of the leaves."""
        B, H, D = self.B, self.H, self.D
        if self.case == "self":
            return tuple(leaves)
        if self.case == "packed":
            (qkv,) = leaves
            return qkv.view(B, -1, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, D)
        q, kv = leaves
        k, v = kv.view(B, -1, 2, H, D).permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, H, Nk, D)
        return q.view(B, -1, H, D).transpose(1, 2), k, v  # (B, H, Nq, D), ...

    def runner(self, name: str, dropout_p: float):
        if self.case == "packed" and name == "triton":
            from kernels.flash_attention import attention_qkv

            return lambda qkv: attention_qkv(qkv, self.H, dropout_p=dropout_p)  # (B, N, E)
        fn = make_backend(name, dropout_p)
        if self.case == "packed":
            B, H, D = self.B, self.H, self.D
            return lambda qkv: fn(*self.heads([qkv])).transpose(1, 2).reshape(B, -1, H * D)  # (B, N, E)
        return lambda *leaves: fn(*self.heads(leaves))


# ----------------------------------------------------------------------------------------------------
# timing (bench.measure.time_fn) and checks
# ----------------------------------------------------------------------------------------------------


def time_ms(fn, device: torch.device, args) -> tuple[float, float, float]:
    """(median, p20, p80) in ms via bench.measure.time_fn (do_bench on CUDA, perf_counter on CPU); the
    budget is sized so that at least --min-reps runs are timed even for slow configs."""
    from bench.measure import sync, time_fn

    t0 = time.perf_counter()
    fn()
    sync(device)
    est = (time.perf_counter() - t0) * 1e3
    if device.type == "cuda":
        timing = time_fn(fn, device, warmup_ms=max(args.warmup, 2 * est), rep_ms=max(args.rep, args.min_reps * est),
                         timer="do_bench")  # fmt: skip
    else:
        timing = time_fn(fn, device, warmup_ms=0, rep_ms=0, min_reps=max(3, min(args.min_reps, 5)), max_reps=5)
    xs = timing.times_ms
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    deciles = statistics.quantiles(xs, n=10, method="inclusive")
    return timing.median, deciles[1], deciles[7]


def _rel(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    a, b = a.detach().float(), b.detach().float()
    if not torch.isfinite(a).all():
        return float("nan"), float("nan")
    rel = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    return rel, (a - b).abs().max().item()


def _outputs(run, leaves, dout, pass_name):
    """(out,) or (out, *grads of the leaves); grads via autograd.grad (nothing accumulates into .grad)."""
    if pass_name == "fwd":
        with torch.no_grad():
            return (run(*leaves),)
    xs = [x.detach().requires_grad_() for x in leaves]
    out = run(*xs)
    return (out.detach(), *torch.autograd.grad(out, xs, dout))


def run_pass(run, case: Case, ref, pass_name: str, device, args):
    """Check the backend against ref (p = 0; finite output for p > 0), then time it."""
    got = _outputs(run, case.leaves, case.dout, pass_name)
    if ref is not None:
        errs = [_rel(a, b) for a, b in zip(got, ref)]
        rel, mx = max(e[0] for e in errs), max(e[1] for e in errs)
    else:
        rel = mx = float("nan")
        if not all(torch.isfinite(t).all() for t in got):
            raise RuntimeError("non-finite output")
    del got
    if pass_name == "fwd":

        def step():
            with torch.no_grad():
                run(*case.leaves)
    else:
        xs = [x.detach().requires_grad_() for x in case.leaves]

        def step():
            torch.autograd.grad(run(*xs), xs, case.dout)

    timing = time_ms(step, device, args)
    return timing, rel, mx, kernel_time_ms(step, device, timing[0])


def _profiled_session(call, device: torch.device, m: int) -> tuple[float, float]:
    """m calls under one profiler session: (their summed kernel ms, the ms from the first call's start to the
    last call's end, CUDA events)."""
    from bench import device_time as dt

    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    done = [0]

    def body():
        if done[0] == 0:
            ev[0].record()
        call()
        done[0] += 1
        if done[0] == m:
            ev[1].record()

    total = dt.kernel_ms(dt.profile_kernels(body, device, m))  # synchronizes before it returns
    return total, ev[0].elapsed_time(ev[1])


def kernel_time_stats(step, device: torch.device, per_call_ms: float, budget_ms: float = 50.0,
                      cold_l2: bool = True, sessions: int = 3) -> dict:  # fmt: skip
    """Summed GPU kernel time per call (torch.profiler, bench.device_time) of a few eager calls, beside do_bench's
    wall time: where the wall time is much longer, the row measures the host (Python, autograd, launches), not
    the kernels. The calls are split over `sessions` profiler sessions and the median session's per-call time
    is returned, so one preempted kernel (another process on the GPU, a context switch) does not move the number.
    cold_l2: like do_bench, clear the L2 cache (triton's 256 MB buffer) before each call, and subtract the
    clears' own kernel time (profiled alone, the same number of times, in each session), so both times see the
    same cold cache.
    per_call_ms (the measured wall time) sizes the number of calls to about budget_ms.
    Returns {"ms": median per-call kernel time, "sessions_ms": each session's, "total_ms": each session's kernel
    sum with the clears, "span_ms": each session's elapsed time (CUDA events around its calls)}: a session's
    kernels run one after another on one stream, so total ≤ span always holds (the GPU test checks it). NaN
    off CUDA."""
    nan = float("nan")
    if device.type != "cuda":
        return {"ms": nan, "sessions_ms": [], "total_ms": [], "span_ms": []}
    from triton import runtime

    from bench import device_time as dt

    drv = runtime.driver.active if cold_l2 else None
    cache = drv.get_empty_cache_for_benchmark() if cold_l2 else None
    n = max(2, min(20, int(budget_ms / max(per_call_ms, 1e-3))))
    sessions = max(1, sessions)  # always this many (a slow call: one call per session), so the median means one
    m = max(1, math.ceil(n / sessions))  # calls per session

    def cleared():
        if cache is not None:
            drv.clear_cache(cache)
        step()

    per, totals, spans = [], [], []
    for _ in range(sessions):  # each session subtracts its own clears' time, so one slow clears profile moves one
        clears = (
            dt.kernel_ms(dt.profile_kernels(lambda: drv.clear_cache(cache), device, m)) if cache is not None else 0.0
        )
        total, span = _profiled_session(cleared, device, m)
        totals.append(total)
        spans.append(span)
        per.append(max(total - clears, 0.0) / m)
    return {"ms": statistics.median(per), "sessions_ms": per, "total_ms": totals, "span_ms": spans}


def kernel_time_ms(step, device: torch.device, per_call_ms: float, budget_ms: float = 50.0,
                   cold_l2: bool = True) -> float:  # fmt: skip
    """kernel_time_stats(...)["ms"]: the median session's summed GPU kernel time per call (NaN off CUDA)."""
    return kernel_time_stats(step, device, per_call_ms, budget_ms, cold_l2)["ms"]


def reference(case: Case, pass_name, device, available):
    """Reference output (and grads) from SDPA flash, else the first SDPA backend that runs (p = 0 only)."""
    from bench.measure import free_memory  # imports triton: only after main() has set TRITON_INTERPRET

    order = ["sdpa_flash", "sdpa_efficient", "sdpa_cudnn"]
    for name in [b for b in order if b in available] + [b for b in order if b not in available]:
        try:
            return name, _outputs(case.runner(name, 0.0), case.leaves, case.dout, pass_name)
        except Exception:  # noqa: BLE001 - any failure: try the next backend
            pass
        free_memory(device)
    return None, None


def triton_configs(pass_name: str) -> str:
    """The configs the autotuner picked for the last call (best effort)."""
    import kernels.flash_attention as fa

    kernels = [("fwd", fa._attn_fwd_kernel)]
    if pass_name != "fwd":
        kernels += [("dkdv", fa._attn_bwd_dkdv_kernel), ("dq", fa._attn_bwd_dq_kernel)]
    parts = []
    for label, kern in kernels:
        cfg = getattr(kern, "best_config", None)
        if cfg is not None:
            kw = cfg.kwargs
            parts.append(f"{label}:{kw['BLOCK_M']}x{kw['BLOCK_N']}/w{cfg.num_warps}/s{cfg.num_stages}")
    return " ".join(parts)


def points_of(args) -> list[tuple[int, int]]:
    return list(args.points) if args.points else [(args.batch, r) for r in args.res]


def sweep(args, device: torch.device, dtype: torch.dtype, dtype_name: str, paths: dict) -> list[dict]:
    import pandas as pd

    from bench.measure import free_memory  # imports triton: only after main() has set TRITON_INTERPRET

    rows: list[dict] = []
    skip: set[tuple] = set()  # (backend, D, case, p, pass) that failed as unavailable at a smaller size
    H = args.heads
    for D in args.dims:
        for case_name in args.cases:
            for p in args.dropout:
                if D != MODEL_HEAD_DIM and (case_name != "self" or p > 0.0) and len(args.dims) > 1:
                    continue  # other head dims: the kernel's own shape only (self, no dropout)
                for B, r in points_of(args):
                    N = r * r
                    try:
                        case = Case(case_name, B, H, N, D, dtype, device, seed=1000 * D + r)
                    except torch.OutOfMemoryError:
                        free_memory(device)
                        rows += [_row(b, D, r, N, ps, B, H, dtype_name, "oom", note="inputs", case=case_name, p=p)
                                 for b in args.backends for ps in args.passes]  # fmt: skip
                        continue
                    for pass_name in args.passes:
                        rows += _measure_point(args, case, D, r, N, B, p, pass_name, device, dtype_name, skip)
                        free_memory(device)
                        write_csv_atomic(paths["csv"], rows)
                        atomic_write_text(
                            paths["md"], render_markdown(pd.DataFrame(rows, columns=COLUMNS), args_line(args))
                        )
                    del case
                    free_memory(device)
    if not args.no_host and "triton" in args.backends:
        rows += host_rows(args, device, dtype, dtype_name)
    return rows


def _measure_point(args, case, D, r, N, B, p, pass_name, device, dtype_name, skip) -> list[dict]:
    from bench.measure import free_memory, is_oom

    H = args.heads
    flops = 4.0 * B * H * case.Nq * case.Nk * D * (BWD_FACTOR if pass_name == "fwd+bwd" else 1.0)
    ref_name, ref = (None, None) if p > 0.0 else reference(case, pass_name, device, args.backends)
    out = []
    for name in args.backends:
        row = _row(name, D, r, N, pass_name, B, H, dtype_name, "ok", ref=ref_name or "", case=case.case, p=p,
                   Nq=case.Nq, Nk=case.Nk)  # fmt: skip
        key = (name, D, case.case, p, pass_name)
        if name == "naive" and case.Nq * case.Nk > NAIVE_MAX_N**2:
            row.update(status="skipped", note=f"naive only up to N = {NAIVE_MAX_N}")
        elif key in skip:
            row.update(status="unavailable", note="unavailable at a smaller N")
        else:
            try:
                if p == 0.0 and ref is None:
                    raise Unavailable("no SDPA reference available")
                if p > 0.0 and name not in ("triton", *SDPA_BACKENDS):
                    raise Unavailable(f"{name}: not timed with dropout")
                if name == "flex" and case.case != "self":
                    raise Unavailable("flex: timed on the self case only (each shape and layout recompiles)")
                (ms, p20, p80), rel, mx, kms = run_pass(case.runner(name, p), case, ref, pass_name, device, args)
                row.update(ms=ms, p20_ms=p20, p80_ms=p80, tflops=flops / (ms * 1e-3) / 1e12, rel_err=rel, max_err=mx,
                           kernel_ms=kms)  # fmt: skip
                if name == "triton":
                    row["config"] = triton_configs(pass_name)
                if p > 0.0:
                    row["note"] = "dropout: output checked finite (masks differ between backends)"
            except Exception as e:  # noqa: BLE001 - one backend failing must not stop the sweep
                if is_oom(e):
                    row.update(status="oom", note=str(e).splitlines()[0][:160])
                elif _is_unavailable(e):
                    row.update(status="unavailable", note=str(e).splitlines()[0][:160])
                    skip.add(key)
                else:
                    row.update(status="error", note=f"{type(e).__name__}: {e}".splitlines()[0][:160])
            if row["status"] != "ok":
                free_memory(device)  # outside the except block: the traceback is gone by now
        out.append(row)
        _progress(row)
    _fill_ratios(out)
    return out


def host_rows(args, device, dtype, dtype_name) -> list[dict]:
    """Host time per call: wall clock per call of a tiny problem (the GPU idles), triton vs SDPA.

    The model's self-attention call (packed (B, N, 3E) projection, dropout 0.1 when --dropout has a p > 0)
    at B = 1, H = --heads, N = 128, D = 32: ``n`` calls in a row, then one synchronize; per call = wall / n.
    """
    from bench.measure import sync

    H, D, N = args.heads, MODEL_HEAD_DIM, 128
    p = max(args.dropout)
    case = Case("packed", 1, H, N, D, dtype, device, seed=5)
    n, warm, repeats = (2, 1, 1) if args.quick else (300, 5, 3)
    rows = []
    for pass_name in args.passes:
        for name in ("triton", "sdpa"):
            run = case.runner("triton", p) if name == "triton" else _sdpa_default(case, p)
            call = _host_call(run, case, pass_name)
            for _ in range(warm):  # warm-up: compile, autotune, launch plans
                call()
            times = []
            for _ in range(repeats):
                sync(device)
                t0 = time.perf_counter()
                for _ in range(n):
                    call()
                sync(device)
                times.append((time.perf_counter() - t0) / n * 1e3)
            row = _row(name, D, int(math.isqrt(N)), N, pass_name, 1, H, dtype_name, "ok", case="host", p=p, Nq=N, Nk=N)
            row.update(ms=min(times), p20_ms=min(times), p80_ms=max(times),
                       note=f"host time per call: min of {repeats} x {n} calls, packed (B, N, 3E) input")  # fmt: skip
            rows.append(row)
            _progress(row)
    return rows


def _host_call(run, case: Case, pass_name: str):
    xs = [x.detach().requires_grad_(pass_name != "fwd") for x in case.leaves]

    def call():
        if pass_name == "fwd":
            with torch.no_grad():
                run(*xs)
        else:
            torch.autograd.grad(run(*xs), xs, case.dout)

    return call


def _sdpa_default(case: Case, p: float):
    """SDPA as the model calls it (torch picks the backend), on the packed views."""
    import torch.nn.functional as F

    B, H, D = case.B, case.H, case.D
    return lambda qkv: (
        F.scaled_dot_product_attention(*case.heads([qkv]), dropout_p=p).transpose(1, 2).reshape(B, -1, H * D)
    )


def _row(backend, D, r, N, pass_name, B, H, dtype_name, status, ref="", note="", case="self", p=0.0, Nq=None, Nk=None):
    nan = float("nan")
    return dict(
        backend=backend, D=D, r=r, N=N, B=B, H=H, dtype=dtype_name, status=status, ms=nan, p20_ms=nan,
        p80_ms=nan, tflops=nan, ratio_to_fastest_sdpa=nan, rel_err=nan, max_err=nan, ref=ref, config="",
        note=note, case=case, p=p, Nq=N if Nq is None else Nq, Nk=N if Nk is None else Nk, kernel_ms=nan,
        **{"pass": pass_name},
    )  # fmt: skip


def _fill_ratios(rows: list[dict]) -> None:
    sdpa_ms = [r["ms"] for r in rows if r["backend"] in SDPA_BACKENDS and r["status"] == "ok"]
    if not sdpa_ms:
        return
    fastest = min(sdpa_ms)
    for r in rows:
        if r["status"] == "ok":
            r["ratio_to_fastest_sdpa"] = fastest / r["ms"]


def _progress(row: dict) -> None:
    if row["status"] == "ok" and row["case"] == "host":
        msg = f"{row['ms'] * 1e3:8.1f} us per call (host)"
    elif row["status"] == "ok":
        msg = f"{row['tflops']:8.1f} TFLOP/s {row['ms']:9.3f} ms  rel_err {row['rel_err']:.2e}  {row['config']}"
    else:
        msg = f"{row['status']}: {row['note']}"
    print(f"D={row['D']:<3} B={row['B']:<3} N={row['N']:<6} {row['case']:<6} p={row['p']:<4} {row['pass']:<8} "
          f"{row['backend']:<15} {msg}", flush=True)  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# rendering (from the CSV)
# ----------------------------------------------------------------------------------------------------


def args_line(args) -> str:
    pts = ", ".join(f"B={b} r={r}" for b, r in points_of(args))
    return (
        f"H={args.heads}, dtype={args.dtype}, D in {list(args.dims)}, points {pts} (N = r^2), cases "
        f"{list(args.cases)}, dropout {list(args.dropout)}, non-causal"
    )


def bar_for(pass_name: str, N: int, p: float = 0.0, D: int = MODEL_HEAD_DIM) -> float:
    if D != MODEL_HEAD_DIM:
        return BAR_OTHER_D
    if p > 0.0:
        return BAR_DROPOUT
    if pass_name == "fwd":
        return BAR_FWD_LARGE if N >= BAR_LARGE_N else BAR_FWD_SMALL
    return BAR_FWD_BWD


def _cell(row) -> str:
    if row is None:
        return "-"
    if row["status"] == "ok":
        return f"{row['tflops']:.1f}"
    return {"oom": "OOM", "unavailable": "n/a", "skipped": "-"}.get(row["status"], row["status"])


def normalise(df):
    """Old CSVs (before the case / p / Nq / Nk columns): one self-attention case without dropout."""
    defaults = {"case": "self", "p": 0.0, "config": "", "note": ""}
    for col, val in defaults.items():
        if col not in df.columns:
            df[col] = val
        df[col] = df[col].fillna(val)
    for col in ("Nq", "Nk"):
        if col not in df.columns:
            df[col] = df["N"]
    return df


def render_markdown(df, header: str = "") -> str:
    """Markdown tables (rows = B x N, columns = backends, TFLOP/s) per D, case, p and pass, with bar verdicts."""
    df = normalise(df.copy())
    lines = ["# Attention kernel benchmark", ""]
    if header:
        lines += [header, ""]
    lines += [
        "TFLOP/s (forward = 4·B·H·Nq·Nk·D FLOPs, forward+backward = 3.5× that); median of do_bench. "
        f"Bars (triton / fastest SDPA with the same dropout): no dropout ≥ {BAR_FWD_LARGE} (fwd, N ≥ "
        f"{BAR_LARGE_N}), ≥ {BAR_FWD_SMALL} (fwd, smaller N), ≥ {BAR_FWD_BWD} (fwd+bwd); dropout > 0: ≥ "
        f"{BAR_DROPOUT} (fwd and fwd+bwd); D ≠ {MODEL_HEAD_DIM}: ≥ {BAR_OTHER_D}. Triton's dropout drops with "
        "probability round(256·p)/256 (p = 0.1 → 0.1016).",
        "",
    ]
    if "kernel_ms" in df.columns and df["kernel_ms"].notna().any():
        lines += [f"Regime: a point is host-bound when triton's or the fastest SDPA backend's median wall time is > "
                  f"{HOST_BOUND:g}× its summed GPU kernel time per call (torch.profiler, `kernel_ms`: the median of 3 "
                  "profiler sessions); its bar is "
                  "still judged on wall time, and the kernel-time ratio (that SDPA backend / triton) says how the "
                  "kernels themselves compare (both times with a cold L2: do_bench clears it before each call).",
                  ""]  # fmt: skip
    if df.empty:
        return "\n".join(lines + ["(no rows)", ""])
    backends = [b for b in BACKENDS if b in set(df["backend"])]
    kernel = df[df["case"] != "host"]
    for D in sorted(set(kernel["D"])):
        for case in [c for c in CASES if c in set(kernel["case"])]:
            for p in sorted(set(kernel["p"])):
                for pass_name in [x for x in PASSES if x in set(kernel["pass"])]:
                    sub = kernel[(kernel["D"] == D) & (kernel["case"] == case) & (kernel["p"] == p)
                                 & (kernel["pass"] == pass_name)]  # fmt: skip
                    if not sub.empty:
                        lines += _table(sub, D, case, p, pass_name, backends)
    host = df[df["case"] == "host"]
    if not host.empty:
        lines += _host_table(host)
    return "\n".join(lines)


def _table(sub, D, case, p, pass_name, backends) -> list[str]:
    drop = f", dropout {p:g}" if p > 0 else ""
    first = sub.iloc[0]
    shape = f" (Nq = {first['Nq']}, Nk = {first['Nk']} at N = {first['N']})" if case == "cross" else ""
    lines = [f"## D = {D}, {case}{drop}, {pass_name}{shape}", ""]
    cols = [b for b in backends if b in set(sub["backend"])]
    timed = "kernel_ms" in sub.columns and sub["kernel_ms"].notna().any()  # older CSVs and CPU runs: no regime
    head = ["B", "N"] + cols + ["triton / fastest SDPA", "bar", "triton rel_err"] + (["regime"] if timed else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    verdicts = []
    for (B, N), at in sub.groupby(["B", "N"], sort=False):
        cells = [str(B), str(N)]
        for b in cols:
            m = at[at["backend"] == b]
            cells.append(_cell(m.iloc[0] if len(m) else None))
        tri = at[(at["backend"] == "triton") & (at["status"] == "ok")]
        ratio = float(tri["ratio_to_fastest_sdpa"].iloc[0]) if len(tri) else float("nan")
        need = bar_for(pass_name, int(N), float(p), int(D))
        verdict = "unknown" if math.isnan(ratio) else ("met" if ratio >= need else "NOT met")
        verdicts.append(f"B={B} N={N}: {verdict} ({ratio:.2f} vs ≥{need})")
        err = float(tri["rel_err"].iloc[0]) if len(tri) else float("nan")
        cells += [f"{ratio:.2f}", f"{verdict} (≥{need})", "-" if math.isnan(err) else f"{err:.1e}"]
        if timed:
            regime = regime_of(at)
            cells.append(regime)
            if regime.startswith("host-bound"):
                verdicts[-1] = verdicts[-1][:-1] + f"; {regime})"
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", "Bar: " + "; ".join(verdicts) + ".", ""]


def host_bound(wall_ms: float, kernel_ms: float) -> bool:
    """The rule of every regime label here: the wall time is > HOST_BOUND × the summed kernel time."""
    return wall_ms > HOST_BOUND * kernel_ms


def regime_of(at) -> str:
    """'device-bound', or 'host-bound (which of triton and the fastest SDPA backend), kernel time X.XX' (that
    SDPA backend's kernel time / triton's), from the rows of one (B, N) point; '–' when a kernel time is missing."""
    ok = at[(at["status"] == "ok") & at["backend"].isin(["triton", *SDPA_BACKENDS])]
    tri, sdpa = ok[ok["backend"] == "triton"], ok[ok["backend"].isin(SDPA_BACKENDS)]
    if not len(tri) or not len(sdpa) or ok["kernel_ms"].isna().any():
        return "–"
    pair = [tri.iloc[0], sdpa.loc[sdpa["ms"].idxmin()]]
    host = [x["backend"] for x in pair if host_bound(x["ms"], x["kernel_ms"])]
    if not host:
        return "device-bound"
    return f"host-bound ({', '.join(host)}), kernel time {pair[1]['kernel_ms'] / pair[0]['kernel_ms']:.2f}"


def _host_table(host) -> list[str]:
    first = host.iloc[0]
    lines = [
        f"## Host time per call (µs; B = {first['B']}, H = {first['H']}, N = {first['N']}, D = {first['D']}, "
        f"packed (B, N, 3E) input, dropout {first['p']:g})",
        "",
        "| pass | triton | sdpa | triton − sdpa | bar |",
        "|---|---|---|---|---|",
    ]
    verdicts = []
    for pass_name in [x for x in PASSES if x in set(host["pass"])]:
        at = host[host["pass"] == pass_name]
        us = {
            b: float(at[at["backend"] == b]["ms"].iloc[0]) * 1e3
            for b in ("triton", "sdpa")
            if (at["backend"] == b).any()
        }
        if len(us) < 2:
            continue
        diff = us["triton"] - us["sdpa"]
        verdict = "met" if diff <= BAR_HOST_US else "NOT met"
        verdicts.append(f"{pass_name}: {verdict} ({diff:+.1f} µs vs ≤ {BAR_HOST_US:g})")
        lines.append(
            f"| {pass_name} | {us['triton']:.1f} | {us['sdpa']:.1f} | {diff:+.1f} | {verdict} (≤ {BAR_HOST_US:g}) |"
        )
    return lines + ["", "Bar: " + "; ".join(verdicts) + ".", ""]


def plot_from_csv(csv_path: Path, png_path: Path | None = None) -> Path:
    """TFLOP/s vs N, one line per backend, facets (D, case, p) rows x pass columns; reads the saved CSV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    csv_path = Path(csv_path)
    png_path = Path(png_path) if png_path else csv_path.with_suffix(".png")
    df = normalise(pd.read_csv(csv_path))
    df = df[df["case"] != "host"]
    df["facet"] = [f"D={d} {c}" + (f" p={p:g}" if p > 0 else "") for d, c, p in zip(df["D"], df["case"], df["p"])]
    ok = df[df["status"] == "ok"].copy()
    if ok.empty:
        ok = df.assign(tflops=0.0).head(1)
    order = [b for b in BACKENDS if b in set(df["backend"])]
    g = sns.relplot(
        data=ok, x="N", y="tflops", hue="backend", hue_order=order, style="backend", style_order=order,
        row="facet", row_order=list(dict.fromkeys(df["facet"])), col="pass",
        col_order=[x for x in PASSES if x in set(df["pass"])], kind="line", markers=True, dashes=False,
        height=3.0, aspect=1.4, facet_kws={"sharey": False},
    )  # fmt: skip
    g.set(xscale="log")
    ns = sorted(set(int(n) for n in df["N"]))
    for ax in g.axes.flat:
        ax.set_xticks(ns)
        ax.set_xticklabels([str(n) for n in ns], rotation=45)
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
    g.set_axis_labels("N tokens", "TFLOP/s")
    meta = df.iloc[0]
    g.figure.suptitle(f"Attention: B={sorted(set(df['B']))}, H={meta['H']}, {meta['dtype']}", y=1.01)
    atomic_savefig(g.figure, png_path, dpi=110, bbox_inches="tight")
    plt.close(g.figure)
    return png_path


def render_from_csv(csv_path: Path, plot: bool = True) -> tuple[Path, Path | None]:
    import pandas as pd

    csv_path = Path(csv_path)
    df = pd.read_csv(csv_path, keep_default_na=True)
    md = csv_path.with_suffix(".md")
    if set(STEP_COLUMNS) - {"round_medians_ms", *GRAPH_COLUMNS} <= set(df.columns):  # a --model-step table: no PNG
        atomic_write_text(md, render_step_markdown(df))
        return md, None
    header = ""
    if len(df):
        header = f"B={sorted(set(df['B']))}, H={df['H'].iloc[0]}, dtype={df['dtype'].iloc[0]} (from {csv_path.name})"
    atomic_write_text(md, render_markdown(df, header))
    png = plot_from_csv(csv_path) if plot else None
    return md, png


# ----------------------------------------------------------------------------------------------------
# V4's training step, sdpa vs triton (bench.measure's workload and timer)
# ----------------------------------------------------------------------------------------------------

GRAPH_COLUMNS = ["graph_ms", "graph_q1_ms", "graph_q3_ms", "graph_round_medians_ms", "graph_note"]
STEP_COLUMNS = ["backend", "res", "N", "batch", "dropout", "status", "median_ms", "q1_ms", "q3_ms", "n_reps", "note",
                "kernel_ms", "n_rounds", "round_spread_pct", "round_medians_ms", "sm_clock_mhz",
                *GRAPH_COLUMNS]  # fmt: skip
STEP_BACKENDS = ("sdpa", "triton")


def _first_line(e: BaseException) -> str:
    """An exception's first line (160 characters at most), or its type's name when its message is empty."""
    lines = str(e).splitlines()
    return lines[0][:160] if lines else type(e).__name__


def _failed(e: BaseException, measure) -> dict:
    """A step's row fields for an exception: oom or error, with its first line."""
    return dict(status="oom" if measure.is_oom(e) else "error", note=_first_line(e))


def model_step(args, device: torch.device, paths: dict) -> list[dict]:
    """V4 (default preset) training step, bf16 autocast, attention on sdpa and on triton, per dropout and r.

    Both backends' steps are built side by side and timed in --rounds interleaved rounds (bench.rounds, the order
    rotated each round), so a drift of the host (these steps are host-bound at r <= 48) lands on both alike; at
    least --min-reps steps each, fewer where a point would pass --point-s seconds (at least one per round).

    Then the same training step captured in one CUDA graph per backend (bench.device_time: static inputs,
    AdamW(capturable=True)) and both graphs replayed in the same interleaved rounds: the step without the host.
    It is a real training step, not a timing proxy: SDPA's dropout and the Triton kernel's (its seed drawn on the
    device under capture, kernels.flash_attention) draw a fresh mask on every replay."""
    import pandas as pd

    from bench import measure
    from bench.rounds import RoundsConfig, clock_probe, event_timer, reps_per_round, run_rounds

    rows = []
    B = args.batch
    cfg = RoundsConfig(rounds=args.rounds, min_reps=args.min_reps, max_point_s=args.point_s)
    probe = clock_probe(device)
    for p in args.dropout:
        for r in args.res:
            N = r * r
            point = {b: dict(backend=b, res=r, N=N, batch=B, dropout=p, status="ok", note="") for b in STEP_BACKENDS}
            steps, wls = {}, {}
            try:
                for b in STEP_BACKENDS:
                    try:
                        wl = measure.build_workload("v4", b, "model", "tiny" if args.quick else "default", device,
                                                    overrides={"dropout": p})  # fmt: skip
                        wls[b] = (wl, wl.inputs(B, N, device))
                        steps[b] = measure.make_train_step(*wls[b], device, amp=device.type == "cuda")
                        steps[b]()  # compile, autotune, launch plans
                    except Exception as e:  # noqa: BLE001
                        steps.pop(b, None)
                        point[b].update(_failed(e, measure))
                        measure.free_memory(device)
                est = {}
                for b, step in steps.items():  # warm-up, then one timed step: the estimate that sizes the rounds
                    measure.time_fn(step, device, warmup_ms=args.warmup, rep_ms=0, min_reps=1, max_reps=1)
                    est[b] = measure.time_fn(step, device, warmup_ms=0, rep_ms=0, min_reps=1, max_reps=1).median
                timers = {b: event_timer(steps[b], device) for b in steps}
                res = run_rounds(timers, {b: reps_per_round(est[b], cfg) for b in steps}, cfg.rounds, probe=probe)
                for b in steps:
                    if res[b].error is not None:
                        point[b].update(_failed(res[b].error, measure))
                        continue
                    sm = res[b].summary()
                    point[b].update({k: sm[k] for k in ("median_ms", "q1_ms", "q3_ms", "n_reps", "n_rounds",
                                                        "round_spread_pct", "round_medians_ms",
                                                        "sm_clock_mhz")})  # fmt: skip
                    point[b]["kernel_ms"] = kernel_time_ms(steps[b], device, sm["median_ms"], budget_ms=200.0,
                                                           cold_l2=False)  # fmt: skip
                ok = [b for b in steps if point[b]["status"] == "ok"]
                steps = None
                measure.free_memory(device)
                for b, fields in _graph_rounds({b: wls[b] for b in ok}, device, cfg, {b: est[b] for b in ok}).items():
                    point[b].update(fields)
            finally:
                steps = wls = None
                measure.free_memory(device)
            for b in STEP_BACKENDS:
                row = point[b]
                rows.append(row)
                print(f"v4 step B={B} r={r} p={p} {b:<7} {row.get('median_ms', float('nan')):9.2f} ms "
                      f"{row['status']} {row['note']}", flush=True)  # fmt: skip
            write_csv_atomic(paths["csv"], rows, STEP_COLUMNS)
    atomic_write_text(paths["md"], render_step_markdown(pd.DataFrame(rows, columns=STEP_COLUMNS)))
    return rows


def _graph_rounds(wls: dict, device: torch.device, cfg, est: dict) -> dict:
    """{backend: graph_ms, graph_q1_ms, graph_q3_ms, graph_round_medians_ms} of each backend's training step
    captured in a CUDA graph (a fresh AdamW(capturable=True) on the same workload and inputs), all graphs replayed
    in the same interleaved rounds; {backend: graph_note} where there is no graph (CPU, a failed capture, OOM)."""
    from bench import device_time as dt
    from bench import measure
    from bench.rounds import reps_per_round, run_rounds

    if device.type != "cuda":
        return {b: {"graph_note": "CUDA graphs need CUDA"} for b in wls}
    out, graphs = {}, {}
    try:
        for b, (wl, inputs) in wls.items():
            try:
                graphs[b] = dt.capture(measure.make_train_step(wl, inputs, device, amp=True, capturable=True), device)
            except Exception as e:  # noqa: BLE001 (GraphUnavailable, OOM: the row says why)
                out[b] = {"graph_note": ("OOM in capture: " if measure.is_oom(e) else "") + _first_line(e)}
                measure.free_memory(device)
        if graphs:
            timers = {b: (lambda n, g=g: dt.time_replay(g, device, n)) for b, g in graphs.items()}
            res = run_rounds(timers, {b: reps_per_round(est[b], cfg) for b in graphs}, cfg.rounds)
            for b in graphs:
                if res[b].error is not None:
                    out[b] = {"graph_note": f"replay failed: {_first_line(res[b].error)}"}
                    continue
                sm = res[b].summary()
                out[b] = {"graph_ms": sm["median_ms"], "graph_q1_ms": sm["q1_ms"], "graph_q3_ms": sm["q3_ms"],
                          "graph_round_medians_ms": sm["round_medians_ms"], "graph_note": ""}  # fmt: skip
    finally:
        for g in graphs.values():
            g.release()
        graphs = None
        measure.free_memory(device)
    return out


def _step_host_bound(at) -> list[str] | None:
    """Which of sdpa and triton are host-bound at one r (host_bound on the median and kernel time); None where
    either row failed or has no kernel time."""
    if "kernel_ms" not in at.columns or not {"sdpa", "triton"} <= set(at.index):
        return None
    ok = at[at["status"] == "ok"]
    if len(ok) < 2 or ok["kernel_ms"].isna().any():
        return None
    return [b for b in ("sdpa", "triton") if host_bound(ok.loc[b, "median_ms"], ok.loc[b, "kernel_ms"])]


def _step_kernel_cells(at) -> list[str]:
    """[kernel ms of sdpa and triton, their ratio, the regime] of one r (– where a kernel time is missing)."""
    host = _step_host_bound(at)
    if host is None:
        return ["–", "–", "–"]
    k = at["kernel_ms"]
    regime = f"host-bound ({', '.join(host)})" if host else "device-bound"
    return [f"{k['sdpa']:.3g}, {k['triton']:.3g}", f"{k['triton'] / k['sdpa']:.3f}", regime]


def _step_paired(at, column: str = "round_medians_ms") -> str:
    """The paired comparison of one r: triton / sdpa of each round's medians (the two backends ran back to back in
    that round, so a drift of the host between rounds cancels), as 'median [min–max], k/n faster' (k: rounds where
    triton's median is the lower); '–' where a row failed or the CSV predates the column. ``column``: the eager
    steps' round medians, or graph_round_medians_ms (the CUDA-graph replays')."""
    if column not in at.columns or not {"sdpa", "triton"} <= set(at.index):
        return "–"
    meds = {}
    for b in ("sdpa", "triton"):
        cell = at.loc[b, column]  # "m1,m2,..." (pandas reads a single round as a float)
        if at.loc[b, "status"] != "ok" or cell is None or cell != cell or cell == "":
            return "–"
        meds[b] = [float(t) for t in str(cell).split(",")]
    if len(meds["sdpa"]) != len(meds["triton"]) or not all(t > 0 for t in meds["sdpa"]):
        return "–"
    ratios = [t / s for t, s in zip(meds["triton"], meds["sdpa"])]  # round j: the same j on both
    faster = sum(x < 1.0 for x in ratios)
    return f"{statistics.median(ratios):.3f} [{min(ratios):.3f}–{max(ratios):.3f}], {faster}/{len(ratios)} faster"


def _step_bar(at, r: int, ratio: float) -> str:
    """The bar cell of one r: '-' below 48, met / NOT met on the wall-time ratio; a host-bound miss also says by how
    much, next to the larger of the two rows' spreads across rounds (what the host varies within one run)."""
    if r < 48:
        return "-"
    if ratio != ratio:
        return "unknown"
    if ratio <= 1.0:
        return "met"
    if not _step_host_bound(at):  # device-bound, or no kernel time to tell
        return "NOT met"
    spread = at["round_spread_pct"].max() if "round_spread_pct" in at.columns else float("nan")
    within = "within" if (ratio - 1) * 100 <= spread else "outside"
    cell = f"NOT met (host-bound: +{(ratio - 1) * 100:.1f} %"
    return cell + (f", {within} the round spread {spread:.0f} %)" if spread == spread else ")")


def _graph_cells(at, r: int) -> list[str]:
    """[CUDA-graph ms of sdpa and triton, their ratio, its per-round pairing, the bar on it] of one r."""
    if "graph_ms" not in at.columns or not {"sdpa", "triton"} <= set(at.index):
        return ["–"] * 4
    g = at["graph_ms"]
    if g.isna().any():
        notes = at["graph_note"].fillna("") if "graph_note" in at.columns else None
        why = "; ".join(f"{b}: {notes[b]}" for b in ("sdpa", "triton") if notes is not None and notes[b])
        return [f"– ({why})" if why else "–", "–", "–", "–"]
    ratio = g["triton"] / g["sdpa"]
    bar = "-" if r < 48 else ("met" if ratio <= 1.0 else "NOT met")
    return [f"{g['sdpa']:.3g}, {g['triton']:.3g}", f"{ratio:.3f}", _step_paired(at, "graph_round_medians_ms"), bar]


def render_step_markdown(df) -> str:
    lines = ["# V4 training step: attention on sdpa vs triton", "",
             "Median ms [IQR] of one training step (forward + backward + AdamW, bf16 autocast), "
             "bench.measure's V4 workload, both backends timed in the same interleaved rounds (the order rotated "
             "each round); bar: triton ≤ sdpa at every r ≥ 48. Kernel ms: the summed GPU kernel "
             f"time per step (torch.profiler); a step whose median is > {HOST_BOUND:g}× it is host-bound, and a "
             "host-bound miss of the bar says by how much, beside the larger of the two rows' spreads across rounds. "
             "Per round: triton / sdpa of the two round medians of each round (run back to back, so a drift of the "
             "host between rounds cancels): median [range], and in how many rounds triton was the faster.",
             "",
             "CUDA graph: the same training step captured in one CUDA graph per backend (static inputs, "
             "AdamW(capturable=True)) and the two graphs replayed in interleaved rounds: median ms per step without "
             "the host (no Python, no launches), with its own per-round pairing and bar. It trains as the eager step "
             "does: both backends draw a fresh dropout mask on every replay (the Triton kernel reads its seed from "
             "a device tensor that torch's CUDA generator refills per replay).",
             ""]  # fmt: skip
    for p in sorted(set(df["dropout"]), reverse=True):
        sub = df[df["dropout"] == p]
        lines += [
            f"## dropout {p:g}",
            "",
            "| r | N | sdpa | triton | triton / sdpa (time) | per round | bar | kernel ms: sdpa, triton "
            "| triton / sdpa (kernels) | regime | CUDA graph ms: sdpa, triton | triton / sdpa (graph) "
            "| per round (graph) | bar (graph) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(set(sub["res"])):
            at = sub[sub["res"] == r].set_index("backend")
            cell = {}
            for b in ("sdpa", "triton"):
                x = at.loc[b] if b in at.index else None
                if x is None:
                    cell[b] = "-"
                elif x["status"] == "ok":
                    cell[b] = f"{x['median_ms']:.3g} [{x['q3_ms'] - x['q1_ms']:.2g}]"
                else:
                    cell[b] = x["status"]
            try:
                ratio = at.loc["triton", "median_ms"] / at.loc["sdpa", "median_ms"]
            except KeyError:
                ratio = float("nan")
            bar = _step_bar(at, r, ratio)
            lines.append(
                f"| {r} | {r * r} | {cell['sdpa']} | {cell['triton']} | {ratio:.3f} | {_step_paired(at)} | {bar} | "
                + " | ".join(_step_kernel_cells(at) + _graph_cells(at, r))
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------


def _fail(msg: str) -> None:
    raise SystemExit(f"attention_kernel: {msg}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.replot is not None:
        if not args.replot.is_file():
            _fail(f"--replot: no such CSV file: {args.replot}")
        md, png = render_from_csv(args.replot, plot=not args.no_plot)
        print(f"wrote {md}" + (f" and {png}" if png else ""))
        return 0

    cuda = torch.cuda.is_available()
    if not cuda:
        if not args.quick:
            _fail("needs a CUDA GPU; on CPU only --quick runs (under the Triton interpreter, TRITON_INTERPRET=1)")
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before kernels/triton are imported
        if os.environ["TRITON_INTERPRET"] != "1":
            _fail("--quick on CPU needs TRITON_INTERPRET=1 (the Triton CPU interpreter)")
    try:
        import kernels.flash_attention as fa
    except ValueError as e:  # its environment switches, checked at import (FLASH_ATTN_FWD=...)
        _fail(str(e))

    if not cuda and not fa.interpreter_active():
        _fail("--quick on CPU needs TRITON_INTERPRET=1 set before triton is imported")

    device = torch.device("cuda" if cuda else "cpu")
    args.out = args.out or Path("results" if cuda else "results/cpu")  # a CPU run never writes the GPU report
    dtype_name = args.dtype
    if args.quick:
        args.heads = min(args.heads, 2)
        args.points = [(min(args.batch, 2), r) for r in ([8, 12] if cuda else [4, 6])]
        args.res = [4] if args.model_step else [r for _, r in args.points]
        args.batch = min(args.batch, 2)
        args.dims = args.dims[:1] if cuda else [16]
        args.min_reps = 3
        args.rep, args.warmup = min(args.rep, 20), min(args.warmup, 5)
        if not cuda and dtype_name == "bf16":
            dtype_name = args.dtype = "fp32"  # the interpreter cannot run bf16
            print("attention_kernel: --quick on CPU uses fp32 (the Triton interpreter has no bf16)")
    dtype = DTYPES[dtype_name]
    if not cuda:  # only what runs on CPU
        args.backends = [b for b in args.backends if b in ("triton", "sdpa_flash", "naive")]
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _fail(f"cannot create output directory {args.out}: {e}")

    if args.model_step:
        stem = f"attention_kernel_v4step_B{args.batch}_{dtype_name}"
        paths = {ext: args.out / f"{stem}.{ext}" for ext in ("csv", "json", "md")}
        env = environment(
            device, benchmark="v4 training step, sdpa vs triton", batch=args.batch, res=list(args.res),
            dropout=list(args.dropout), warmup_ms=args.warmup, min_reps=args.min_reps, rounds=args.rounds,
            point_s=args.point_s, timer="bench.rounds.run_rounds (CUDA events, interleaved across backends)",
        )  # fmt: skip
        atomic_write_text(paths["json"], json.dumps(env, indent=2, default=str) + "\n")
        model_step(args, device, paths)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return 0

    batches = sorted({b for b, _ in points_of(args)}, reverse=True)
    stem = f"attention_kernel_B{'-'.join(map(str, batches))}_H{args.heads}_{dtype_name}"
    paths = {ext: args.out / f"{stem}.{ext}" for ext in ("csv", "json", "md", "png")}
    env = environment(
        device, benchmark="attention kernel", dtype=dtype_name, H=args.heads, dims=list(args.dims),
        points=[list(x) for x in points_of(args)], cases=list(args.cases), dropout=list(args.dropout),
        backends=list(args.backends), passes=list(args.passes), quick=bool(args.quick),
        triton_interpret=os.environ.get("TRITON_INTERPRET", "0"),
        timing={"warmup_ms": args.warmup, "rep_ms": args.rep, "min_reps": args.min_reps, "stat": "median",
                "timer": "bench.measure.time_fn (do_bench)"},
        flops="fwd = 4*B*H*Nq*Nk*D; fwd+bwd = 3.5 * fwd",
    )  # fmt: skip
    atomic_write_text(paths["json"], json.dumps(env, indent=2, default=str) + "\n")
    print(f"attention_kernel: {args_line(args)} on {env.get('gpu') or device}", flush=True)

    rows = sweep(args, device, dtype, dtype_name, paths)
    write_csv_atomic(paths["csv"], rows)
    env["finished"] = environment(device)["date"]
    env["autotune_cache"] = _autotune_cache()
    atomic_write_text(paths["json"], json.dumps(env, indent=2, default=str) + "\n")
    render_from_csv(paths["csv"], plot=not args.no_plot)
    print("wrote " + ", ".join(str(p) for k, p in paths.items() if k != "png" or not args.no_plot))
    return 0


def _autotune_cache() -> dict:
    """Autotuner decisions {kernel: {key: config}} (best effort; empty under the interpreter)."""
    import kernels.flash_attention as fa

    out = {}
    for name in ("_attn_fwd_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel"):
        cache = getattr(getattr(fa, name), "cache", {}) or {}
        out[name] = {str(k): str(v) for k, v in cache.items()}
    return out


if __name__ == "__main__":
    sys.exit(main())
