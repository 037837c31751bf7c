"""The Mamba mixer (Gu & Dao 2023) with its backends, side by side.

  mamba_ssm  — `mamba_ssm.Mamba` with its fused CUDA kernels (causal-conv1d + selective scan).
  cpu_fused  — `MambaRef` below with the fused C++ CPU scan (kernels/selective_scan_cpu.py, compiled on first
               use); on non-CPU tensors it runs the reference scan. `auto` picks it when there is no CUDA.
  reference  — `MambaRef` below: pure PyTorch, runs anywhere, same parameter names and shapes as
               `mamba_ssm.Mamba` (in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj), so one checkpoint
               loads into any Mamba-1 backend (mamba_ssm, cpu_fused, reference).
  mamba2     — `mamba_ssm.Mamba2` (Mamba-2 / SSD, Dao & Gu 2024; d_state 64, head dim 64), fused kernels.
  mamba2_ref — `models.mamba2.Mamba2Ref`: pure PyTorch, mamba_ssm.Mamba2's parameters. Mamba-2 and Mamba-1
               parameters differ, so a checkpoint moves within a family only (mamba_ssm ↔ cpu_fused ↔
               reference, mamba2 ↔ mamba2_ref).

Padding (`pad_multiple`, the length pathology of issue 10): mamba_ssm's selective scan takes 16-byte vector
loads only when L is a multiple of its chunk (2048 for L > 1024) and guarded per-element loads otherwise
(~1.5× the cost per token at L = 9,216). A causal scan's first N outputs do not depend on what follows
them, so padding the sequence at the END of its scan order and dropping the padded outputs changes nothing
for the real tokens (on CPU to fp32 round-off: elementwise kernels round a row's SIMD body and scalar tail apart).
`padded_length` decides the length, `scan_padded` runs a mixer that way.

The selective scan h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t, y_t = C_t·h_t + D u_t is computed by
`selective_scan_ref` in chunks: inside a chunk a Hillis–Steele doubling scan (log2 T vectorised steps, no
Python loop over time), across chunks the state is carried. Each chunk runs under activation checkpointing,
so training memory is O(B·d_inner·d_state·L/T) for the carried states instead of O(B·d_inner·d_state·L).
`selective_scan_naive` is the slow, obviously-correct loop the tests compare against.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from kernels import selective_scan_cpu as cpu_scan
from models.common import ConfigError
from models.mamba2 import MAMBA2_CHUNK, Mamba2Ref

try:  # optional compiled dependency
    from mamba_ssm import Mamba as MambaCUDA
except Exception:  # ImportError, or a CUDA/ABI mismatch raised at import
    MambaCUDA = None
try:
    from mamba_ssm import Mamba2 as Mamba2CUDA
except Exception:
    Mamba2CUDA = None

MIXER_BACKENDS = ("auto", "mamba_ssm", "cpu_fused", "reference", "mamba2", "mamba2_ref")
MAMBA2_BACKENDS = ("mamba2", "mamba2_ref")  # the Mamba-2 family; every other backend is Mamba-1
MAMBA2_D_STATE, MAMBA2_HEADDIM = 64, 64  # Mamba-2 mixers (the config's d_state is Mamba-1's)
INSTALL_HINT = "pip install mamba-ssm causal-conv1d --no-build-isolation (needs a CUDA GPU and toolchain)"
SCAN_CHUNK = 2048  # mamba_ssm's selective-scan chunk (128 threads × 16 items) for L > 1024
PAD_CHOICES = "auto, off or a positive integer k"
_NOTED: set = set()


def _note_once(msg: str) -> None:
    if msg not in _NOTED:
        _NOTED.add(msg)
        sys.stderr.write(f"note: {msg}\n")


def resolve_mixer_backend(backend: str) -> str:
    """'auto' → mamba_ssm when it is importable and CUDA is present; without CUDA the fused CPU scan when its
    extension builds (compiled on the first call), else the reference (with a one-line note)."""
    if backend not in MIXER_BACKENDS:
        raise ConfigError(f"unknown mixer backend {backend!r}; choose one of {', '.join(MIXER_BACKENDS)}")
    if backend == "auto":
        if MambaCUDA is not None and torch.cuda.is_available():
            return "mamba_ssm"
        if torch.cuda.is_available():
            return "reference"
        if cpu_scan.available():
            return "cpu_fused"
        _note_once(f"mixer backend auto → reference: the fused CPU scan did not build ({cpu_scan.build_error()}); "
                   f"it {cpu_scan.INSTALL_HINT}")  # fmt: skip
        return "reference"
    for name, cls in (("mamba_ssm", MambaCUDA), ("mamba2", Mamba2CUDA)):
        if backend == name and cls is None:
            raise ConfigError(f"mixer backend {name!r} needs the mamba-ssm package: {INSTALL_HINT}")
    if backend == "cpu_fused" and not cpu_scan.available():
        raise ConfigError(
            f"mixer backend 'cpu_fused' could not build its C++ extension ({cpu_scan.build_error()}); "
            f"it {cpu_scan.INSTALL_HINT}"
        )
    return backend


def mixer_family(backend: str) -> str:
    """'Mamba-2' for mamba2 / mamba2_ref, else 'Mamba-1' (auto resolves to a Mamba-1 backend)."""
    return "Mamba-2" if backend in MAMBA2_BACKENDS else "Mamba-1"


def check_pad_multiple(value) -> str:
    """The config field pad_multiple: 'auto' | 'off' | a positive integer (as a string)."""
    v = str(value).strip().lower()
    if v in ("auto", "off") or (v.isdigit() and int(v) > 0):
        return v
    raise ConfigError(f"pad_multiple={value!r} is not allowed; choose {PAD_CHOICES}")


def padded_length(n: int, pad_multiple, backend: str) -> int:
    """Length to pad an n-token sequence to for a mixer on `backend`.

    auto: a multiple of 2048 on mamba_ssm when n > 1024 (there the kernel's chunk is 2048; at n ≤ 1024 it runs
    one block sized to the length's own power of two, and padding to 2048 would only add work); unpadded on
    every other backend. off: n. k: the next multiple of k.
    """
    v = check_pad_multiple(pad_multiple)
    if v == "off":
        return n
    if v == "auto":
        k = SCAN_CHUNK if (backend == "mamba_ssm" and n > 1024) else 1
    else:
        k = int(v)
    return -(-n // k) * k


def scan_padded(mixer: nn.Module, x: torch.Tensor, length: int) -> torch.Tensor:
    """mixer(x) with x zero-padded at its end to `length` tokens, padded outputs dropped. (B, N, D) → (B, N, D)."""
    n = x.shape[1]
    if length == n:
        return mixer(x)
    x = F.pad(x, (0, 0, 0, length - n))  # (B, length, D)
    return mixer(x)[:, :n]  # (B, N, D)


class PaddedMixer(nn.Module):
    """A mixer that pads its input per `padded_length` (a view for benchmarks: holds the mixer, adds nothing)."""

    def __init__(self, mixer: nn.Module, pad_multiple, backend: str):
        super().__init__()
        self.mixer, self.pad_multiple, self.backend = mixer, check_pad_multiple(pad_multiple), backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        return scan_padded(self.mixer, x, padded_length(x.shape[1], self.pad_multiple, self.backend))


# ----------------------------------------------------------------------------------------------
# Selective scan: slow loop, and the chunked reference
# ----------------------------------------------------------------------------------------------


def _prepare(u, delta, A, delta_bias, delta_softplus):
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return u.float(), delta, A.float()


def _finish(y, u, D, z, dtype):
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def selective_scan_naive(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """One time step at a time. u, delta, z: (b, d, L); A: (d, n); B, C: (b, n, L); D: (d,)."""
    dtype = u.dtype
    u, delta, A = _prepare(u, delta, A, delta_bias, delta_softplus)
    b, d, L = u.shape
    h = u.new_zeros(b, d, A.shape[1])  # (b, d, n)
    ys = []
    for t in range(L):
        decay = torch.exp(delta[:, :, t, None] * A)  # (b, d, n)
        h = decay * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t].float()
        ys.append((h * C[:, None, :, t].float()).sum(-1))  # (b, d)
    return _finish(torch.stack(ys, dim=-1), u, D, z, dtype)


def _scan_chunk(h0, u, delta, A, B, C):
    """Scan one chunk of T steps from state h0 (b, d, n). Returns y (b, d, T) and the final state."""
    T = u.shape[-1]
    a = torch.exp(delta.unsqueeze(-1) * A[:, None, :])  # (b, d, T, n) per-step decay
    x = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1).float()  # (b, d, T, n) per-step input
    k = 1
    while k < T:  # inclusive doubling scan of (a, x) under (a1, x1)∘(a2, x2) = (a1·a2, a2·x1 + x2)
        x = torch.cat([x[:, :, :k], x[:, :, k:] + a[:, :, k:] * x[:, :, :-k]], dim=2)
        a = torch.cat([a[:, :, :k], a[:, :, k:] * a[:, :, :-k]], dim=2)
        k *= 2
    h = x + a * h0.unsqueeze(2)  # (b, d, T, n): a is now the decay accumulated since the chunk start
    y = torch.einsum("bdtn,bnt->bdt", h, C.float())  # (b, d, T)
    return y, h[:, :, -1]


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, chunk_size: int = 64):
    """Same signature and result as mamba_ssm's selective_scan_fn (no return_last_state), in fp32."""
    dtype = u.dtype
    with torch.autocast(u.device.type, enabled=False):
        u, delta, A = _prepare(u, delta, A, delta_bias, delta_softplus)
        b, d, L = u.shape
        h = u.new_zeros(b, d, A.shape[1])  # (b, d, n)
        ys = []
        for s in range(0, L, chunk_size):
            args = (h, u[..., s : s + chunk_size], delta[..., s : s + chunk_size], A)
            args += (B[..., s : s + chunk_size], C[..., s : s + chunk_size])
            if torch.is_grad_enabled():
                y, h = checkpoint(_scan_chunk, *args, use_reentrant=False)
            else:
                y, h = _scan_chunk(*args)
            ys.append(y)
        return _finish(torch.cat(ys, dim=-1), u, D, z, dtype)


# ----------------------------------------------------------------------------------------------
# The mixer module
# ----------------------------------------------------------------------------------------------


def selective_scan_fused(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, chunk_size=64):
    """The fused C++ scan on CPU tensors (kernels/selective_scan_cpu.py), the reference elsewhere. One signature."""
    scan = cpu_scan.selective_scan_cpu if u.device.type == "cpu" else selective_scan_ref
    return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size=chunk_size)


class CausalConvTimeMajor(torch.autograd.Function):
    """Causal depthwise conv on x (B, L, C) in x's own layout: y_t = bias + sum_k w_k · x_{t-(K-1)+k}.
    The same function as nn.Conv1d(C, C, K, groups=C, padding=K-1) on x.transpose(1, 2), first L outputs, with
    no (B, L, C) <-> (B, C, L) copies; the backward is K shifted multiply-adds and K reductions."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # x (B, L, C), weight (C, 1, K), bias (C,)
        K, L = weight.shape[-1], x.shape[1]
        w = weight[:, 0, :]  # (C, K)
        y = torch.addcmul(bias, x, w[:, K - 1])  # (B, L, C), the tap on x_t itself
        for k in range(K - 1):
            m = K - 1 - k  # this tap reads x_{t-m}
            if m < L:
                y[:, m:].addcmul_(x[:, : L - m], w[:, k])
        ctx.save_for_backward(x, weight)
        return y

    @staticmethod
    def backward(ctx, g):  # g (B, L, C)
        x, weight = ctx.saved_tensors
        K, L = weight.shape[-1], x.shape[1]
        w = weight[:, 0, :]  # (C, K)
        dx = g * w[:, K - 1]  # (B, L, C)
        dw = torch.zeros_like(w)  # (C, K)
        dw[:, K - 1] = (g * x).sum((0, 1))
        for k in range(K - 1):
            m = K - 1 - k
            if m < L:
                dx[:, : L - m].addcmul_(g[:, m:], w[:, k])
                dw[:, k] = (g[:, m:] * x[:, : L - m]).sum((0, 1))
        return dx, dw.unsqueeze(1), g.sum((0, 1))


def causal_conv_time_major(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """nn.Conv1d(C, C, K, groups=C, padding=K-1)(x.transpose(1, 2))[..., :L].transpose(1, 2) on x (B, L, C)."""
    return CausalConvTimeMajor.apply(x, weight, bias)


class MambaRef(nn.Module):
    """Pure-PyTorch Mamba mixer, mamba_ssm.Mamba's parameters and init. (B, L, D) -> (B, L, D).
    fused=True: the scan is selective_scan_fused (the `cpu_fused` backend); the function is the same."""

    def __init__(
        self, d_model, d_state=16, d_conv=4, expand=2, dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4, fused=False
    ):
        super().__init__()
        self.fused = fused
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        # Initialisation as in mamba_ssm: dt_proj so that softplus(bias) is log-uniform in [dt_min, dt_max].
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)  # (d_inner, n)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        L = hidden.shape[1]
        xz = self.in_proj(hidden)  # (B, L, 2·d_inner)
        x, z = xz.chunk(2, dim=-1)  # (B, L, d_inner) each
        if self.fused:  # time-major throughout: no (B, L, d) <-> (B, d, L) copies; the fused scan takes any strides
            x = F.silu(causal_conv_time_major(x, self.conv1d.weight, self.conv1d.bias))  # (B, L, d_inner)
            x_dbl = self.x_proj(x)  # (B, L, dt_rank + 2n)
            x = x.transpose(1, 2)  # (B, d_inner, L) view
        else:
            x = F.silu(self.conv1d(x.transpose(1, 2))[..., :L])  # (B, d_inner, L), causal depthwise conv
            x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, dt_rank + 2n)
        dt, Bm, Cm = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # (B, d_inner, L), bias is added in the scan
        A = -torch.exp(self.A_log.float())  # (d_inner, n)
        scan = selective_scan_fused if self.fused else selective_scan_ref  # module globals: bench.flops patches them
        y = scan(
            x,
            dt,
            A,
            Bm.transpose(1, 2),  # (B, n, L)
            Cm.transpose(1, 2),  # (B, n, L)
            self.D,
            z=z.transpose(1, 2),  # (B, d_inner, L)
            delta_bias=self.dt_proj.bias,
            delta_softplus=True,
        )  # (B, d_inner, L)
        return self.out_proj(y.transpose(1, 2).to(hidden.dtype))  # (B, L, D)


def make_mixer(backend: str, d_model: int, d_state: int, d_conv: int, expand: int) -> nn.Module:
    """A Mamba mixer on the resolved backend. Mamba-2 backends use d_state 64 / head dim 64, not d_state."""
    if backend in MAMBA2_BACKENDS:
        if (expand * d_model) % MAMBA2_HEADDIM:
            raise ConfigError(
                f"mixer backend {backend!r} needs expand·d_model ({expand}·{d_model}) divisible by its head dim "
                f"{MAMBA2_HEADDIM}"
            )
        kw = dict(d_model=d_model, d_state=MAMBA2_D_STATE, d_conv=d_conv, expand=expand, headdim=MAMBA2_HEADDIM,
                  chunk_size=MAMBA2_CHUNK)  # fmt: skip
        if backend == "mamba2":
            resolve_mixer_backend(backend)
            return Mamba2CUDA(**kw)
        return Mamba2Ref(**kw)
    if backend == "mamba_ssm":
        if MambaCUDA is None:
            raise ConfigError(f"mixer backend 'mamba_ssm' needs the mamba-ssm package: {INSTALL_HINT}")
        return MambaCUDA(d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand)
    return MambaRef(d_model, d_state=d_state, d_conv=d_conv, expand=expand, fused=backend == "cpu_fused")
