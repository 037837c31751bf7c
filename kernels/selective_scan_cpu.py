"""Fused CPU selective scan for Mamba: `selective_scan_cpu`, beside the references in models/mamba.py.

    y = selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)

Same signature and result as models.mamba.selective_scan_ref (and mamba_ssm's selective_scan_fn without
return_last_state): u, delta, z: (b, d, L); A: (d, n); B, C: (b, n, L); D, delta_bias: (d,); any strides.
The C++ kernel (selective_scan_cpu.cpp) loops over time per (batch row, block of 16 channels), the channels in
SIMD lanes and the state in registers; its backward recomputes the states chunk by chunk (`chunk_size` steps)
and runs the reverse recurrence, so autograd keeps only the inputs. bf16 / fp16 inputs are computed in fp32
(the output is cast back to the input's dtype, as the reference does); fp64 inputs in fp64.

The extension is compiled by torch.utils.cpp_extension on first use (`load()`; ~30 s with g++ and ninja
from pip) and cached under $TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions), so later processes only
load it. `available()` says whether it builds here; `build_error()` why not.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("selective_scan_cpu.cpp")
NAME = "selective_scan_cpu"
INSTALL_HINT = "needs a C++ compiler and ninja: `pip install ninja` and g++ (Debian/Ubuntu: apt-get install g++)"
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno"]  # -fopenmp: at::parallel_for is OpenMP inline

_lock = threading.Lock()
_state: dict = {}  # "ops" → torch.ops namespace once built, "error" → why the build failed


def _ninja_on_path() -> None:
    """torch's loader runs `ninja`: put pip's ninja (the `ninja` package) on PATH when the shell has none."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def load(verbose: bool = False):
    """Compile (first time) and load the extension; returns torch.ops.selective_scan_cpu. Raises on failure."""
    with _lock:
        if "ops" in _state:
            return _state["ops"]
        if "error" in _state:
            raise RuntimeError(_state["error"])
        try:
            from torch.utils.cpp_extension import load as cpp_load

            _ninja_on_path()
            cpp_load(
                NAME,
                [str(SOURCE)],
                extra_cflags=CFLAGS,
                extra_ldflags=["-fopenmp"],
                is_python_module=False,
                verbose=verbose,
            )
            _state["ops"] = getattr(torch.ops, NAME)
        except Exception as e:  # no compiler, no ninja, a compile error: one line for the caller's message
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            first = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else "")
            _state["error"] = f"{type(e).__name__}: {first}"[:300]
            raise RuntimeError(_state["error"]) from e
        return _state["ops"]


def available() -> bool:
    """Whether the extension builds (compiles it on the first call)."""
    try:
        load()
        return True
    except RuntimeError:
        return False


def build_error() -> str | None:
    return _state.get("error")


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _time_major(b: int, d: int, L: int, dtype) -> torch.Tensor:
    """An empty (b, d, L) tensor laid out as (b, L, d) in memory: the mixer's next step wants (b, L, d)."""
    return torch.empty(b, L, d, dtype=dtype).transpose(1, 2)  # (b, d, L) view


def _grad_like(t: torch.Tensor, dtype) -> torch.Tensor:
    """An empty gradient for the (b, d, L) input t in t's memory order (time-major when t's channels are the
    fastest dimension, as for the mixer's Δ and z), so autograd's next ops see matching strides, not a copy."""
    b, d, L = t.shape
    return _time_major(b, d, L, dtype) if t.stride(1) < t.stride(2) else torch.empty(b, d, L, dtype=dtype)


def _groups(b: int, d: int) -> int:
    """How many tasks share one batch row's channels in the backward (each adds its share of dB, dC)."""
    blocks = -(-d // 16)
    return max(1, min(blocks, -(-2 * torch.get_num_threads() // b)))


class SelectiveScanCpuFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
        T = _compute_dtype(u)
        args = [t if t is None else t.to(T) for t in (u, delta, A, B, C, D, z, delta_bias)]
        b, d, L = u.shape
        y = _time_major(b, d, L, T)
        load().fwd(*args, bool(delta_softplus), y)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.delta_softplus, ctx.chunk_size = bool(delta_softplus), int(chunk_size)
        return y.to(u.dtype)

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        T = _compute_dtype(u)
        args = [t if t is None else t.to(T) for t in (u, delta, A, B, C, D, z, delta_bias)]
        b, d, L = u.shape
        n = A.shape[1]
        G = _groups(b, d)
        du, ddelta = _grad_like(u, T), _grad_like(delta, T)
        dz = _grad_like(z, T) if z is not None else du.new_empty(0)
        dA_part = torch.empty(b, d, n, dtype=T)  # per batch row, summed below
        dD_part, dbias_part = torch.empty(b, d, dtype=T), torch.empty(b, d, dtype=T)
        dB_part, dC_part = torch.zeros(G, b, n, L, dtype=T), torch.zeros(G, b, n, L, dtype=T)
        load().bwd(
            *args, ctx.delta_softplus, dy.to(T), ctx.chunk_size,
            du, ddelta, dz, dA_part, dD_part, dbias_part, dB_part, dC_part,
        )  # fmt: skip
        dB, dC = dB_part.sum(0), dC_part.sum(0)  # (b, n, L)

        def cast(g, like):
            return None if like is None else g.to(like.dtype)

        return (
            cast(du, u), cast(ddelta, delta), cast(dA_part.sum(0), A), cast(dB, B), cast(dC, C),
            cast(dD_part.sum(0), D), cast(dz, z), cast(dbias_part.sum(0), delta_bias), None, None,
        )  # fmt: skip


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, chunk_size: int = 64):
    """The fused scan; same signature and result as models.mamba.selective_scan_ref. CPU tensors only;
    `chunk_size` is the backward's recompute chunk (memory, not the result)."""
    if u.device.type != "cpu":
        raise ValueError(f"selective_scan_cpu needs CPU tensors, got {u.device}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    with torch.autocast("cpu", enabled=False):
        return SelectiveScanCpuFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
