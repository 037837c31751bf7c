"""FLOPs of one forward pass of every variant (models/variants.py), counted three ways side by side.

    analytic     the formulas below, one function per component, written out beside the code.
    fvcore       fvcore.nn.FlopCountAnalysis (a jit trace). Its unit is ONE MULTIPLY-ADD, so we report 2× its
                 total. Ops it counts as zero get handles here: aten::scaled_dot_product_attention, our Triton
                 attention (prim::PythonOp.FlashAttentionFunction), mamba_ssm's fused kernels
                 (prim::PythonOp.MambaInnerFn, prim::PythonOp.SelectiveScanFn, prim::PythonOp.CausalConv1dFn)
                 and the reference scan (sparse_bench::selective_scan, see below). While tracing, tensor
                 sizes are traced 0-dim tensors, which kernel launchers cannot take: the Triton attention and
                 mamba_ssm's entry points are therefore called with tracing paused, each recorded as one
                 prim::PythonOp.Traced<name> op with the same inputs and the same handle. Should tracing
                 through mamba_ssm.Mamba still fail, each mixer is counted as one op (TracedMambaMixer, the
                 analytic mixer formula) and the note says so.
    flopcounter  torch.utils.flop_counter.FlopCounterMode (2 FLOPs per multiply-add already). Formulas are
                 registered (register_flop_formula) where the op is a dispatcher op: the reference scan and
                 CPU flash attention. Kernels it cannot see at all — mamba_ssm's selective_scan_cuda /
                 causal_conv1d_cuda and our Triton kernel — get the analytic term added, said so in `note`.

Unit everywhere: FLOPs = 2 × multiply-adds (a GEMM (m×k)·(k×n) is 2·m·k·n).
What is counted: GEMMs (projections, FFN, decoder, Fourier matmul), the depthwise conv, the attention core
(QKᵀ and PV), the selective scan (Mamba-1) and the chunked SSD's four GEMMs (Mamba-2: `mamba2_ssd_flops`).
Not counted by any of the three: norms, softmax, activations, residual
adds, sin/cos, dropout — O(N·D) elementwise work (fvcore's layer_norm handle is switched off to match).

The reference scan (models.mamba.selective_scan_ref) is a chunked doubling scan made of ~40 small elementwise
ops per chunk; while counting it is swapped for ONE custom op, `sparse_bench::selective_scan` (same signature
and output shape, zeros as values: a count needs shapes only), counted with the algorithm's cost
9·B·L·d_inner·d_state (Mamba's own count; the doubling scan executes more elementwise work than that, which is
an implementation detail, not the model's cost).

While counting, nn.MultiheadAttention's fused inference fast path is switched off so both tools see its
GEMMs (seed backend); counting runs under no_grad, in eval mode, in fp32, with B = 1 (FLOPs are linear in B).
Attention on the seed / sdpa / flex backends is counted on the meta device (no compute, any N; flex is counted as
SDPA, the same QKᵀ and PV); the reference Mamba on the run's device (jit-tracing its conv on meta fails); mamba_ssm
and triton need their CUDA kernels (GPU).

Which components make up a model is its record's FlopParts (models/variants.py): names of COMPONENTS below.
"""

from __future__ import annotations

import math
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

import models.common as common
import models.mamba as mamba_mod
from models.common import Attention, ConfigError
from models.data import token_split
from models.variants import get_variant

AGREE_TOL = 0.10  # the three counts must agree within 10 %


# ----------------------------------------------------------------------------------------------
# Analytic formulas, one per component (FLOPs = 2 × multiply-adds)
# ----------------------------------------------------------------------------------------------


def linear_flops(rows: int, d_in: int, d_out: int) -> int:
    # y = x Wᵀ (+ b): rows·d_in·d_out multiply-adds (the bias add is elementwise, not counted)
    return 2 * rows * d_in * d_out


def fourier_flops(B: int, n: int, num_fourier: int) -> int:
    # coords (B, n, 2) @ B_fourier (2, F): 2·B·n·2·F; then sin/cos (elementwise, not counted)
    return 2 * B * n * 2 * num_fourier


def token_proj_flops(B: int, n: int, num_fourier: int, channels: int, d_model: int) -> int:
    # [sin, cos, value] (B, n, 2F + C) → Linear → (B, n, D): 2·B·n·(2F + C)·D
    return linear_flops(B * n, 2 * num_fourier + channels, d_model)


def time_mlp_flops(B: int, d_model: int) -> int:
    # sinusoid(1000 t) (B, D) → Linear(D, D) → SiLU → Linear(D, D): 2 · 2·B·D²
    return 2 * linear_flops(B, d_model, d_model)


def mamba_in_proj_flops(B: int, L: int, d_model: int, d_inner: int) -> int:
    # in_proj: (B, L, D) → (B, L, 2·d_inner) = [x ; z]: 2·B·L·D·2·d_inner
    return linear_flops(B * L, d_model, 2 * d_inner)


def mamba_conv_flops(B: int, L: int, d_inner: int, d_conv: int) -> int:
    # causal depthwise conv1d, d_conv taps per channel and step: 2·B·L·d_inner·d_conv
    return 2 * B * L * d_inner * d_conv


def mamba_x_proj_flops(B: int, L: int, d_inner: int, dt_rank: int, d_state: int) -> int:
    # x_proj: (B, L, d_inner) → (B, L, dt_rank + 2·d_state) = [Δ_low-rank ; B ; C]
    return linear_flops(B * L, d_inner, dt_rank + 2 * d_state)


def mamba_dt_proj_flops(B: int, L: int, dt_rank: int, d_inner: int) -> int:
    # dt_proj: (B, L, dt_rank) → (B, L, d_inner): 2·B·L·dt_rank·d_inner
    return linear_flops(B * L, dt_rank, d_inner)


def selective_scan_flops(B: int, L: int, d_inner: int, d_state: int) -> int:
    # h_t = exp(Δ_t A)·h_{t-1} + Δ_t B_t u_t ;  y_t = C_t·h_t, per (batch, step, channel, state):
    # Δ·A (1) + exp (1) + ·h (1) + add (1) + Δ·B·u (2) + C·h multiply-add (2) + ~1 ≈ 9
    # (the count mamba_ssm itself uses: 9·B·L·D·N, github.com/state-spaces/mamba/issues/110)
    return 9 * B * L * d_inner * d_state


def mamba_skip_gate_flops(B: int, L: int, d_inner: int) -> int:
    # y + D·u (skip, 1 per element) and y · silu(z) (gating, 1 per element): 2·B·L·d_inner
    return 2 * B * L * d_inner


def mamba_out_proj_flops(B: int, L: int, d_inner: int, d_model: int) -> int:
    # out_proj: (B, L, d_inner) → (B, L, D)
    return linear_flops(B * L, d_inner, d_model)


def mamba2_ssd_flops(B: int, L: int, nheads: int, headdim: int, d_state: int, ngroups: int, chunk: int) -> dict:
    """The chunked SSD of Mamba-2 (Dao & Gu 2024) as mamba_ssm's kernels and models.mamba2.ssd_ref run it, on
    c = ⌈L/T⌉ chunks of T steps (the last chunk padded), in GEMMs only (decays, exp, cumsum: elementwise):
      C·Bᵀ per chunk and group (T × T × n)                    2·B·c·T·T·g·n
      (C·Bᵀ ∘ decay)·(Δx) per chunk and head (T × T × p)        2·B·c·T·T·h·p   (dense: the causal half is masked)
      chunk end states Σ_s (w_s x_s) ⊗ B_s per head (p × n × T)  2·B·c·T·h·p·n
      C_t · (state entering the chunk) per head (T × n × p)      2·B·c·T·h·n·p"""
    Lp = -(-L // chunk) * chunk  # c·T
    return {
        "mamba2.ssd_cb": 2 * B * Lp * chunk * ngroups * d_state,
        "mamba2.ssd_intra": 2 * B * Lp * chunk * nheads * headdim,
        "mamba2.ssd_states": 2 * B * Lp * nheads * headdim * d_state,
        "mamba2.ssd_inter": 2 * B * Lp * nheads * d_state * headdim,
    }


def attention_qkv_flops(B: int, Nq: int, Nk: int, d_model: int) -> int:
    # Q = x_q W_q (2·B·Nq·D²);  K, V = x_k [W_k ; W_v] (2·B·Nk·D·2D)
    return linear_flops(B * Nq, d_model, d_model) + linear_flops(B * Nk, d_model, 2 * d_model)


def attention_core_flops(B: int, H: int, Nq: int, Nk: int, Dh: int) -> int:
    # QKᵀ: (Nq×Dh)·(Dh×Nk) per head = 2·B·H·Nq·Nk·Dh;  P·V: (Nq×Nk)·(Nk×Dh) = 2·B·H·Nq·Nk·Dh
    # total 4·B·H·Nq·Nk·Dh — the O(N²) term (softmax and scaling are elementwise, not counted)
    return 4 * B * H * Nq * Nk * Dh


def attention_out_flops(B: int, Nq: int, d_model: int) -> int:
    # out_proj: (B, Nq, D) → (B, Nq, D)
    return linear_flops(B * Nq, d_model, d_model)


def ffn_flops(B: int, N: int, d_model: int, d_ff: int) -> int:
    # Linear(D, Dff) → GELU → Linear(Dff, D): 2·B·N·D·Dff · 2
    return linear_flops(B * N, d_model, d_ff) + linear_flops(B * N, d_ff, d_model)


def decoder_flops(B: int, Nq: int, d_model: int, channels: int) -> int:
    # decoder: (B, Nq, D) → (B, Nq, C)
    return linear_flops(B * Nq, d_model, channels)


# ----------------------------------------------------------------------------------------------
# Per level: the components of the mixer, the encoder stack and the whole model
# ----------------------------------------------------------------------------------------------


def mamba_dims(cfg) -> dict:
    d_inner = cfg.expand * cfg.d_model
    return {"d_inner": d_inner, "dt_rank": math.ceil(cfg.d_model / 16), "d_state": cfg.d_state, "d_conv": cfg.d_conv}


def mamba2_dims(cfg) -> dict:
    """A Mamba-2 mixer's sizes (models.mamba builds both Mamba-2 backends with these; ngroups 1)."""
    d_inner = cfg.expand * cfg.d_model
    return {"d_inner": d_inner, "nheads": d_inner // mamba_mod.MAMBA2_HEADDIM, "headdim": mamba_mod.MAMBA2_HEADDIM,
            "d_state": mamba_mod.MAMBA2_D_STATE, "ngroups": 1, "d_conv": cfg.d_conv,
            "chunk": mamba_mod.MAMBA2_CHUNK}  # fmt: skip


def mamba2_mixer_parts(cfg, B: int, L: int) -> dict[str, int]:
    """One Mamba-2 mixer on (B, L, D): in_proj to [z, x, B, C, Δ], the causal depthwise conv over [x, B, C], the
    chunked SSD, out_proj (the D skip, gate and RMSNorm are elementwise)."""
    m, D = mamba2_dims(cfg), cfg.d_model
    h, n, g = m["nheads"], m["d_state"], m["ngroups"]
    parts = {
        "mamba2.in_proj": linear_flops(B * L, D, 2 * m["d_inner"] + 2 * g * n + h),
        "mamba2.conv1d": mamba_conv_flops(B, L, m["d_inner"] + 2 * g * n, m["d_conv"]),
    }
    parts.update(mamba2_ssd_flops(B, L, h, m["headdim"], n, g, m["chunk"]))
    parts["mamba2.out_proj"] = linear_flops(B * L, m["d_inner"], D)
    return parts


def mamba_mixer_parts(cfg, B: int, L: int) -> dict[str, int]:
    """One Mamba mixer on (B, L, D): Mamba-1's (selective scan), or Mamba-2's where the config's mixer backend is
    a Mamba-2 one (the variant's record names "mamba" either way: the backend picks the mixer)."""
    if mamba_mod.mixer_family(str(getattr(cfg, "mixer_backend", ""))) == "Mamba-2":
        return mamba2_mixer_parts(cfg, B, L)
    m, D = mamba_dims(cfg), cfg.d_model
    return {
        "mamba.in_proj": mamba_in_proj_flops(B, L, D, m["d_inner"]),
        "mamba.conv1d": mamba_conv_flops(B, L, m["d_inner"], m["d_conv"]),
        "mamba.x_proj": mamba_x_proj_flops(B, L, m["d_inner"], m["dt_rank"], m["d_state"]),
        "mamba.dt_proj": mamba_dt_proj_flops(B, L, m["dt_rank"], m["d_inner"]),
        "mamba.selective_scan": selective_scan_flops(B, L, m["d_inner"], m["d_state"]),
        "mamba.skip_gate": mamba_skip_gate_flops(B, L, m["d_inner"]),
        "mamba.out_proj": mamba_out_proj_flops(B, L, m["d_inner"], D),
    }


def attention_parts(cfg, B: int, Nq: int, Nk: int, prefix: str = "attn") -> dict[str, int]:
    """One multi-head attention: Nq queries attend to Nk keys."""
    D, H = cfg.d_model, cfg.num_heads
    return {
        f"{prefix}.qkv_proj": attention_qkv_flops(B, Nq, Nk, D),
        f"{prefix}.core": attention_core_flops(B, H, Nq, Nk, D // H),
        f"{prefix}.out_proj": attention_out_flops(B, Nq, D),
    }


def _scaled(parts: dict[str, int], k: int) -> dict[str, int]:
    return {name: k * v for name, v in parts.items()}


def _add(total: dict[str, int], parts: dict[str, int]) -> dict[str, int]:
    """Merge `parts` into `total`, summing components of the same name (two mixers in one layer: twice the FLOPs)."""
    for name, v in parts.items():
        total[name] = total.get(name, 0) + v
    return total


def _query_cross_attn(cfg, B: int, N: int) -> dict[str, int]:
    # the shared readout: the Nq query tokens cross-attend to the Nin encoded input tokens
    n_in, n_q = token_split(N)
    return attention_parts(cfg, B, n_q, n_in, "cross_attn")


# The kinds of operation a variant's formula is made of (models.variants.FlopParts names them): (cfg, B, N) →
# {component: FLOPs} on B sequences of N tokens. A new kind of operation is one entry here.
COMPONENTS = {
    "mamba": mamba_mixer_parts,  # one Mamba mixer on (B, N, D)
    "self_attn": lambda cfg, B, N: attention_parts(cfg, B, N, N, "self_attn"),  # N tokens attend to N tokens
    "ffn": lambda cfg, B, N: {"ffn": ffn_flops(B, N, cfg.d_model, cfg.dim_feedforward)},
    "query_cross_attn": _query_cross_attn,
    # a bidirectional block (V2): two "mamba" entries, then the directions combined, ½ (forward + flipped backward):
    # one add and one scale per element (the flips move data, no FLOPs)
    "bidir_combine": lambda cfg, B, N: {"bidir.combine": 2 * B * N * cfg.d_model},
    # a Perceiver IO bottleneck (V2): M = cfg.num_latents latents cross-attend to the N encoded tokens, then an MLP
    # on the latents; the queries then read the field from the latents instead of the encoded inputs
    "latent_cross_attn": lambda cfg, B, N: attention_parts(cfg, B, cfg.num_latents, N, "latent.cross_attn"),
    "latent_mlp": lambda cfg, B, N: {
        "latent.mlp": ffn_flops(B, cfg.num_latents, cfg.d_model, cfg.latent_mlp_ratio * cfg.d_model)
    },
    "latent_query_attn": lambda cfg, B, N: attention_parts(cfg, B, token_split(N)[1], cfg.num_latents, "cross_attn"),
}


def _components(names, cfg, B: int, N: int, what: str) -> dict[str, int]:
    parts: dict[str, int] = {}
    for name in names:
        if name not in COMPONENTS:
            have = ", ".join(COMPONENTS)
            raise ConfigError(f"{what}: unknown FLOP component {name!r}; bench.flops.COMPONENTS has {have}")
        _add(parts, COMPONENTS[name](cfg, B, N))
    return parts


def mixer_parts(model, cfg, B: int, N: int) -> dict[str, int]:
    """layer0_mixer() of `model` (a variant name or record) on (B, N, D)."""
    v = get_variant(model)
    return _components(v.flops.mixer, cfg, B, N, v.key)


def encoder_parts(model, cfg, B: int, N: int) -> dict[str, int]:
    """The encoder stack on (B, N, D): num_layers × the record's layer components, then its encoder extras."""
    v = get_variant(model)
    parts = _scaled(_components(v.flops.layer, cfg, B, N, v.key), cfg.num_layers)
    return _add(parts, _components(v.flops.encoder_extra, cfg, B, N, v.key))


def model_parts(model, cfg, B: int, N: int) -> dict[str, int]:
    """The whole model: N = Nin + Nq tokens (Nin = round(0.2·N)): the shared embedding, the encoder, the record's
    readout and the shared decoder."""
    v = get_variant(model)
    n_in, n_q = token_split(N)
    D, F, C = cfg.d_model, cfg.num_fourier, cfg.value_channels
    parts = {
        "fourier": fourier_flops(B, n_in, F) + fourier_flops(B, n_q, F),
        "token_proj": token_proj_flops(B, n_in, F, C, D) + token_proj_flops(B, n_q, F, C, D),
        "time_mlp": time_mlp_flops(B, D),
    }
    _add(parts, encoder_parts(v, cfg, B, N))
    _add(parts, _components(v.flops.readout, cfg, B, N, v.key))
    parts["decoder"] = decoder_flops(B, n_q, D, C)
    return parts


def analytic_parts(model, cfg, level: str, B: int, N: int) -> dict[str, int]:
    """Component → FLOPs of one forward pass of `model` (a variant name or record) at `level`: mixer | encoder |
    model."""
    if level == "mixer":
        return mixer_parts(model, cfg, B, N)
    if level == "encoder":
        return encoder_parts(model, cfg, B, N)
    if level == "model":
        return model_parts(model, cfg, B, N)
    raise ConfigError(f"unknown level {level!r}; choose one of mixer, encoder, model")


def analytic_flops(model, cfg, level: str, B: int, N: int) -> int:
    return sum(analytic_parts(model, cfg, level, B, N).values())


# ----------------------------------------------------------------------------------------------
# The reference scan as one countable op
# ----------------------------------------------------------------------------------------------

_REAL_SCAN = mamba_mod.selective_scan_ref


def counting_device(backend: str, run_device: torch.device) -> torch.device:
    """Where a backend is counted: meta when possible (no compute), else the run's device."""
    return torch.device("meta") if backend in ("seed", "sdpa", "flex") else run_device


@torch.library.custom_op("sparse_bench::selective_scan", mutates_args=())
def selective_scan_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],  # noqa: UP045 (torch.library parses typing.Optional)
    z: Optional[torch.Tensor],  # noqa: UP045
    delta_bias: Optional[torch.Tensor],  # noqa: UP045
    delta_softplus: bool,
) -> torch.Tensor:
    """Stands in for models.mamba.selective_scan_ref while counting: one dispatcher op with the scan's
    signature and output shape. u, delta, z: (b, d, L); A: (d, n); B, C: (b, n, L) → (b, d, L).
    Only shapes matter to a FLOP count, so it returns zeros instead of scanning (a real scan would cost seconds
    per count on CPU, and jit tracing on the meta device fails on the reference's conv)."""
    return torch.zeros_like(u)


@selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return torch.empty_like(u)  # (b, d, L), u's dtype


def _counted_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, chunk_size=64):
    return selective_scan_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def _scan_op_flops(u_shape, A_shape, has_D: bool, has_z: bool) -> int:
    b, d, L = u_shape
    n = A_shape[-1]
    return selective_scan_flops(b, L, d, n) + (b * L * d if has_D else 0) + (b * L * d if has_z else 0)


@register_flop_formula(torch.ops.sparse_bench.selective_scan)
def _scan_formula(u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape=None, z_shape=None, *args, **kwargs):
    return _scan_op_flops(u_shape, A_shape, D_shape is not None, z_shape is not None)


def _sdpa_formula(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    *batch, nq, dh = query_shape  # (B, H, Nq, Dh)
    return attention_core_flops(math.prod(batch), 1, nq, key_shape[-2], dh)


# FlopCounterMode knows the CUDA SDPA kernels but not the CPU flash kernel: register it (forward only).
_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
if _CPU_FLASH is not None and _CPU_FLASH not in flop_registry:
    register_flop_formula(_CPU_FLASH)(_sdpa_formula)


class _PausedTraceFn(torch.autograd.Function):
    """Runs a call with jit tracing paused; the trace records one prim::PythonOp.<subclass name> whose inputs
    are the call's tensors. Needed for kernels that take sizes as ints: while tracing, tensor sizes are traced
    0-dim tensors (a Triton launcher would receive them as pointers). Forward only (counting)."""

    @staticmethod
    def forward(ctx, call, *tensors):
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            return call()
        finally:
            torch._C._set_tracing_state(state)


_PAUSED = {}  # Function name → subclass


def paused_trace(fn, name: str):
    """`fn` as one fvcore-visible op named prim::PythonOp.<name>, run untraced."""
    if name not in _PAUSED:
        _PAUSED[name] = type(name, (_PausedTraceFn,), {})
    cls = _PAUSED[name]

    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if torch.is_tensor(a)]
        return cls.apply(lambda: fn(*args, **kwargs), *tensors)

    wrapper.__wrapped__ = fn
    return wrapper


# (module, attribute, traced name): mamba_ssm's entry points called by mamba_ssm.Mamba.forward.
PAUSED_TRACE_TARGETS = [
    ("mamba_ssm.modules.mamba_simple", "mamba_inner_fn", "TracedMambaInnerFn"),
    ("mamba_ssm.modules.mamba_simple", "selective_scan_fn", "TracedSelectiveScanFn"),
    ("mamba_ssm.modules.mamba_simple", "causal_conv1d_fn", "TracedCausalConv1dFn"),
]


@contextmanager
def counting_mode():
    """Patches in effect while counting: MHA's fused fast path off, the reference scan → one custom op, the
    Triton attention and mamba_ssm's fused functions → untraced calls seen by fvcore as one op each, FlexAttention
    → SDPA (the same QKᵀ and PV; neither tool can trace a compiled flex kernel)."""
    import importlib

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    restore = [(mamba_mod, "selective_scan_ref", _REAL_SCAN), (common, "_triton_attention", common._triton_attention),
               (common, "_flex_attention", common._flex_attention)]  # fmt: skip
    restore.append((mamba_mod, "selective_scan_fused", mamba_mod.selective_scan_fused))  # the cpu_fused backend
    mamba_mod.selective_scan_ref = mamba_mod.selective_scan_fused = _counted_scan
    common._flex_attention = lambda: torch.nn.functional.scaled_dot_product_attention  # same QKᵀ and PV
    triton_getter = common._triton_attention
    common._triton_attention = lambda: paused_trace(triton_getter(), "TracedTritonAttention")
    for module_name, attr, name in PAUSED_TRACE_TARGETS:
        try:
            module = importlib.import_module(module_name)
        except Exception:  # mamba_ssm not installed (CPU)
            continue
        fn = getattr(module, attr, None)
        if fn is not None:
            restore.append((module, attr, fn))
            setattr(module, attr, paused_trace(fn, name))
    try:
        yield
    finally:
        for module, attr, fn in reversed(restore):
            setattr(module, attr, fn)
        torch.backends.mha.set_fastpath_enabled(fastpath)


# ----------------------------------------------------------------------------------------------
# fvcore handles (fvcore's unit is one multiply-add: every handle returns FLOPs / 2)
# ----------------------------------------------------------------------------------------------


def _shapes(values) -> list:
    from fvcore.nn.jit_handles import get_shape

    out = []
    for v in values:
        try:
            out.append(get_shape(v))
        except Exception:  # non-tensor input
            out.append(None)
    return out


def _ranked(shapes, rank: int) -> list:
    return [s for s in shapes if s is not None and len(s) == rank]


def _zero(inputs, outputs) -> int:
    return 0


def _sdpa_handle(inputs, outputs) -> float:
    q, k = _ranked(_shapes(inputs), 4)[:2]  # (B, H, Nq, Dh), (B, H, Nk, Dh)
    return _sdpa_formula(q, k, None) / 2


def _scan_handle(inputs, outputs) -> float:
    """sparse_bench::selective_scan and mamba_ssm's SelectiveScanFn: u (b, d, L) first, A (d, n) the 1st 2-D."""
    shapes = _shapes(inputs)
    u, A = _ranked(shapes, 3)[0], _ranked(shapes, 2)[0]
    return _scan_op_flops(u, A, has_D=True, has_z=True) / 2


def _causal_conv_handle(inputs, outputs) -> float:
    shapes = _shapes(inputs)
    b, d, L = _ranked(shapes, 3)[0]  # x (b, d, L)
    w = _ranked(shapes, 2)[0]  # weight (d, width)
    return mamba_conv_flops(b, L, d, w[-1]) / 2


def make_mamba_inner_handle(cfg):
    """mamba_ssm's fused MambaInnerFn: conv1d + x_proj + dt_proj + scan + skip/gate + out_proj (in_proj is
    a matmul outside it). Tensor inputs, in order: xz (b, 2·d_inner, L), conv1d_weight (d_inner, 1, K),
    conv1d_bias, x_proj_weight (R + 2n, d_inner), delta_proj_weight (d_inner, R), out_proj_weight (D, d_inner),
    A (d_inner, n), D, delta_bias. Dimensions not readable from the trace fall back to the config."""
    dims = mamba_dims(cfg)

    def handle(inputs, outputs) -> float:
        shapes = _shapes(inputs)
        b, two_d, L = _ranked(shapes, 3)[0]
        d_inner = two_d // 2
        mats = _ranked(shapes, 2)
        if len(mats) >= 4:
            (_, _), (_, R), (D, _), (_, n) = mats[0], mats[1], mats[2], mats[3]
        else:
            R, D, n = dims["dt_rank"], cfg.d_model, dims["d_state"]
        convs = _ranked(shapes, 3)
        K = convs[1][-1] if len(convs) > 1 else dims["d_conv"]
        flops = (
            mamba_conv_flops(b, L, d_inner, K)
            + mamba_x_proj_flops(b, L, d_inner, R, n)
            + mamba_dt_proj_flops(b, L, R, d_inner)
            + selective_scan_flops(b, L, d_inner, n)
            + mamba_skip_gate_flops(b, L, d_inner)
            + mamba_out_proj_flops(b, L, d_inner, D)
        )
        return flops / 2

    return handle


def triton_function_name() -> str | None:
    """Class name of the Triton attention's autograd Function (fvcore sees prim::PythonOp.<name>)."""
    try:
        from kernels import flash_attention

        return flash_attention.FlashAttentionFunction.__name__
    except Exception:
        return None


def fvcore_handles(cfg) -> dict:
    handles = {
        "aten::scaled_dot_product_attention": _sdpa_handle,
        "sparse_bench::selective_scan": _scan_handle,
        "prim::PythonOp.SelectiveScanFn": _scan_handle,
        "prim::PythonOp.CausalConv1dFn": _causal_conv_handle,
        # norms are not counted (see the module docstring): a zero handle (None would keep fvcore's own)
        **dict.fromkeys(("aten::layer_norm", "aten::group_norm", "aten::batch_norm", "aten::instance_norm"), _zero),
    }
    if hasattr(cfg, "d_state"):
        handles["prim::PythonOp.MambaInnerFn"] = make_mamba_inner_handle(cfg)
        handles["prim::PythonOp.TracedMambaMixer"] = make_mamba_mixer_handle(cfg)
    name = triton_function_name() or "FlashAttentionFunction"
    handles[f"prim::PythonOp.{name}"] = _sdpa_handle
    handles["prim::PythonOp.TracedTritonAttention"] = _sdpa_handle
    handles["prim::PythonOp.TracedSelectiveScanFn"] = _scan_handle
    handles["prim::PythonOp.TracedCausalConv1dFn"] = _causal_conv_handle
    if "prim::PythonOp.MambaInnerFn" in handles:
        handles["prim::PythonOp.TracedMambaInnerFn"] = handles["prim::PythonOp.MambaInnerFn"]
    return handles


# Ops whose absence from fvcore's count is intended (elementwise / shape ops).
_ELEMENTWISE = (
    "mul", "add", "sub", "div", "neg", "exp", "sin", "cos", "silu", "gelu", "softplus", "softmax", "sigmoid",
    "dropout", "unflatten", "mean", "sum", "pow", "rsqrt", "sqrt", "tanh", "relu", "log", "clone", "copy",
    "expm1", "scatter", "fill", "zeros", "ones", "empty", "arange", "linspace", "where", "masked_fill",
    "cumsum", "repeat_interleave", "constant_pad_nd", "pad", "tril", "stack", "masked_fill_", "square",
)  # fmt: skip


def _significant(op: str) -> bool:
    base = op.split("::")[-1].split(".")[0].rstrip("_")
    return op.startswith("prim::PythonOp") or base not in _ELEMENTWISE


def count_fvcore(module: nn.Module, args: tuple, cfg) -> tuple[float, list[str]]:
    """FLOPs (= 2 × fvcore's multiply-adds) and the significant ops fvcore skipped."""
    from fvcore.nn import FlopCountAnalysis

    fa = FlopCountAnalysis(module, args)
    fa.set_op_handle(**fvcore_handles(cfg))
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    fa.tracer_warnings("none")
    total = 2 * float(fa.total())
    skipped = [f"{op}×{n}" for op, n in fa.unsupported_ops().items() if _significant(op)]
    return total, skipped


def count_flopcounter(module: nn.Module, args: tuple, cfg) -> tuple[float, list[str]]:
    """FLOPs from FlopCounterMode, plus analytic terms for kernels it cannot see (listed in the note)."""
    calls: dict[str, list] = {"scan": [], "ssd": [], "attn": []}
    hooks = []
    mamba_cuda, mamba2_cuda = mamba_mod.MambaCUDA, mamba_mod.Mamba2CUDA
    for m in module.modules():
        if mamba_cuda is not None and isinstance(m, mamba_cuda):
            hooks.append(m.register_forward_hook(lambda mod, a, out: calls["scan"].append((mod, a[0].shape))))
        elif mamba2_cuda is not None and isinstance(m, mamba2_cuda):
            hooks.append(m.register_forward_hook(lambda mod, a, out: calls["ssd"].append((mod, a[0].shape))))
        elif isinstance(m, Attention):
            hooks.append(m.register_forward_hook(lambda mod, a, out: calls["attn"].append((mod, a[0], a[1]))))
    try:
        with FlopCounterMode(display=False) as fc:
            module(*args)
    finally:
        for h in hooks:
            h.remove()
    counts = fc.get_flop_counts().get("Global", {})
    total, notes = float(fc.get_total_flops()), []
    conv_seen = any("convolution" in str(op) for op in counts)
    extra = Counter()
    for mod, (b, L, _) in calls["scan"]:  # mamba_ssm mixer: selective_scan_cuda is opaque
        d_inner, n = mod.d_inner, mod.d_state
        extra["selective scan (selective_scan_cuda)"] += selective_scan_flops(b, L, d_inner, n)
        extra["selective scan (selective_scan_cuda)"] += mamba_skip_gate_flops(b, L, d_inner)
        if not conv_seen:
            extra["conv1d (causal_conv1d_cuda)"] += mamba_conv_flops(b, L, d_inner, mod.d_conv)
    for mod, (b, L, _) in calls["ssd"]:  # mamba_ssm.Mamba2: its SSD (Triton) and causal_conv1d_cuda are opaque
        extra["SSD (mamba_ssm Triton kernels)"] += sum(
            mamba2_ssd_flops(b, L, mod.nheads, mod.headdim, mod.d_state, mod.ngroups, mod.chunk_size).values()
        )
        if not conv_seen:
            conv_dim = mod.d_ssm + 2 * mod.ngroups * mod.d_state
            extra["conv1d (causal_conv1d_cuda)"] += mamba_conv_flops(b, L, conv_dim, mod.d_conv)
    for mod, q, k in calls["attn"]:
        if mod.backend == "triton":  # Triton launches are not dispatcher ops
            b, nq, e = q.shape
            h = mod.num_heads
            extra["attention core (Triton kernel)"] += attention_core_flops(b, h, nq, k.shape[1], e // h)
    for what, flops in extra.items():
        total += flops
        notes.append(f"flopcounter +analytic {what}")
    return total, notes


def _fvcore_with_fallback(module: nn.Module, args: tuple, cfg, notes: list) -> tuple[float, list[str]]:
    """fvcore; if tracing through mamba_ssm.Mamba fails, retry with each mamba_ssm mixer as ONE untraced op
    (prim::PythonOp.TracedMambaMixer, counted with the analytic mixer formula)."""
    try:
        return count_fvcore(module, args, cfg)
    except Exception as e:
        fused = tuple(c for c in (mamba_mod.MambaCUDA, mamba_mod.Mamba2CUDA) if c is not None)
        mixers = [m for m in module.modules() if fused and isinstance(m, fused)]
        if not mixers:
            raise
        first_error = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
    for m in mixers:
        m.forward = paused_trace(m.forward, "TracedMambaMixer")  # instance attribute, removed below
    try:
        total, skipped = count_fvcore(module, args, cfg)
    finally:
        for m in mixers:
            del m.forward
    notes.append(f"fvcore: mamba_ssm mixers counted as one op each (tracing them failed: {first_error})")
    return total, skipped


def make_mamba_mixer_handle(cfg):
    def handle(inputs, outputs) -> float:
        b, L, _ = _ranked(_shapes(inputs), 3)[0]  # hidden (b, L, D)
        return sum(mamba_mixer_parts(cfg, b, L).values()) / 2

    return handle


@dataclass
class FlopCount:
    """One row of the three-way table (FLOPs of one forward pass at the given batch)."""

    analytic: float
    fvcore: float | None = None
    flopcounter: float | None = None
    parts: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @property
    def max_rel_diff(self) -> float:
        vals = [v for v in (self.analytic, self.fvcore, self.flopcounter) if v is not None]
        if len(vals) < 3 or min(vals) <= 0:
            return float("nan")
        return max(vals) / min(vals) - 1.0

    @property
    def agree(self) -> bool:
        return bool(self.max_rel_diff <= AGREE_TOL)  # NaN → False

    @property
    def note(self) -> str:
        notes = list(self.notes)
        if not self.agree and not math.isnan(self.max_rel_diff):
            notes.insert(0, f"counts differ by {100 * self.max_rel_diff:.1f}%")
        return "; ".join(notes)


def count_flops(model, cfg, level: str, module: nn.Module, args: tuple, N: int) -> FlopCount:
    """Count one forward pass of `module(*args)` three ways. Batch = args' batch (use B = 1)."""
    B = args[0].shape[0]
    parts = analytic_parts(model, cfg, level, B, N)
    result = FlopCount(analytic=float(sum(parts.values())), parts=parts)
    module.eval()
    with counting_mode(), torch.no_grad():
        try:
            result.fvcore, skipped = _fvcore_with_fallback(module, args, cfg, result.notes)
            if skipped:
                result.notes.append("fvcore skipped " + ", ".join(skipped))
        except Exception as e:  # a trace failure must not stop the sweep
            result.notes.append(f"fvcore failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        try:
            result.flopcounter, notes = count_flopcounter(module, args, cfg)
            result.notes.extend(notes)
        except Exception as e:
            result.notes.append(f"flopcounter failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    if any(isinstance(m, mamba_mod.MambaRef) for m in module.modules()):
        result.notes.append("reference scan counted as one op (9·B·L·d_inner·d_state)")
    return result
