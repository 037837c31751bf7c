"""FlashAttention-2 style fused attention in Triton: forward, fused backward, in-kernel dropout.

Public API
----------
``attention(q, k, v, *, sm_scale=None, dropout_p=0.0, causal=False, seed=None) -> Tensor``
    ``q`` is (B, H, Nq, D), ``k`` and ``v`` are (B, H, Nk, D); the result is (B, H, Nq, D) in ``q``'s
    dtype, laid out like ``q`` (``torch.empty_like``), so a ``q`` that is a ``(B, N, H, D).transpose(1, 2)``
    view gives an output whose ``.transpose(1, 2).reshape(B, N, H * D)`` is free.

    * Any lengths: ``Nq != Nk`` (cross-attention) and lengths that are not multiples of the block size
      (77, 130, 1, ...) are handled with masked tail blocks. ``D`` in {16, 32, 64, 128}.
    * Any strides: inputs are addressed through their four strides, so transposed / sliced views need
      no copy. Batch/head base offsets are computed in int64 (B*H*N*D may exceed 2**31), as are the LSE /
      delta row offsets (B*H*Nq); offsets inside one (batch, head) slab, N*D, and the dropout counter
      Nq*ceil(Nk/4) must fit in int32 (checked, ValueError otherwise).
    * dtypes: float16 and bfloat16 use tensor cores with fp32 accumulation (P and dS are rounded to the
      input dtype before their matmuls, as in FlashAttention-2). float32 inputs are computed with
      IEEE-fp32 dot products (``input_precision="ieee"``, no TF32 and no rounding of P), so they match
      an fp64 reference to ~1e-6 relative error; this is correct but slow (one small tile, no
      autotuning), and meant for checking. Under CUDA autocast, fp32 inputs are cast to the autocast
      dtype first, as torch SDPA does.
    * ``sm_scale`` defaults to ``1/sqrt(D)`` and must be a finite positive number.
    * ``causal=True`` is top-left aligned, exactly like ``torch.nn.functional.scaled_dot_product_attention``
      with ``is_causal=True``: key ``j`` is visible to query ``i`` iff ``j <= i`` (also when Nq != Nk).
      Key blocks entirely above the diagonal are skipped.
    * Dropout (``0 <= dropout_p < 1``) is applied to the softmax probabilities with an in-kernel
      counter-based RNG (Philox-4x32, 7 rounds). The keep decision for element ``(b, h, i, j)`` depends
      only on ``(seed, b*H + h, i, j)``: the Philox key is ``(seed, b*H + h)``, and one Philox call (16
      random bytes) serves 16 elements, one byte each (see ``_dropout_bytes`` for the counter layout). An
      element is kept iff its byte is ``>= round(256 p)``, so the drop probability is
      ``effective_dropout_p(p) = round(256 p) / 256`` (p = 0.1 drops 0.1015625); kept elements are scaled
      by ``256 / (256 - round(256 p))``. The softmax normalisation and the saved log-sum-exp use the
      *undropped* scores, so the backward regenerates the identical mask from the same counters.
      ``seed=None`` draws a seed from torch's default CPU generator (``torch.randint``), so
      ``torch.manual_seed`` makes runs reproducible; an explicit integer seed is used modulo 2**31.
      ``seed`` may also be a one-element int32/int64 tensor on the inputs' device, which the kernels read
      at run time (modulo 2**31): the same mask as that int. Under CUDA-graph capture, ``seed=None``
      draws that tensor on the device from torch's CUDA generator, which the graph advances on every
      replay, so every replay drops a fresh mask (an int seed would be baked into the graph).
      ``dropout_mask(seed, B, H, Nq, Nk, p, device)`` returns the kernel's keep-mask (same RNG code path).
      Dropout is a compile-time switch: ``dropout_p == 0`` compiles it away.
    * Gradients for q, k and v (a ``torch.autograd.Function``): the forward saves the log-sum-exp per row;
      the backward runs a preprocess kernel (``delta = rowsum(dO * O)``), a dK/dV kernel (one program per
      key block, looping over query blocks) and a dQ kernel (one program per query block, looping over key
      blocks). No atomics, so results are deterministic. For 16-bit inputs that need a gradient, the forward
      also saves the rounding residual ``O_fp32 - O`` (O's shape and dtype) so that ``delta`` uses the
      unrounded output: ``dS = P * (dP - delta)`` cancels to ~0 where the softmax is one-hot (a causal row
      with one visible key, Nk = 1), and a delta from the rounded O (inexact as soon as dropout scales it)
      left an error of eps(dtype) * |dO| * |O| in dQ and dK there.
    * Bad inputs raise a one-line ``ValueError``.

``attention_ref(q, k, v, *, sm_scale=None, dropout_p=0.0, causal=False, dropout_mask=None)``
    Plain PyTorch reference (explicit softmax, computed in fp32, or fp64 for fp64 inputs); returns q's dtype.

CPU: with ``TRITON_INTERPRET=1`` set before triton is imported, the kernels run under Triton's interpreter
(one small block configuration, no autotuning). The interpreter cannot run bfloat16 (triton 3.6), so bf16
is refused there with a ValueError; fp16 and fp32 work.

GPU: each kernel is autotuned over a handful of configurations (pruned by a shared-memory estimate), keyed
on (power-of-two bucket of Nq, of Nk, HEAD_DIM, causal, dropout, and the tensors' dtypes).
``FLASH_ATTN_AUTOTUNE=0`` in the environment (read at import) skips tuning and takes the first config that
fits, which the test-suite uses to save GPU time; ``FLASH_ATTN_TUNE_TOP=k`` tunes over the first k only.
After the first call of a shape, a launch reuses the compiled kernel, its config and grid from a cache
keyed on shapes, strides, dtypes, flags and pointer alignment (``FLASH_ATTN_FAST_LAUNCH=0`` turns it off),
so the host work per call is the argument checks (also cached per signature), the allocations and the
C launch.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from numbers import Integral, Real

import torch
import triton
import triton.language as tl
from triton.knobs import HookChain
from triton.runtime import Autotuner

__all__ = [
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "FlashAttentionFunction",
    "FlashAttentionQKVFunction",
    "attention",
    "attention_ref",
    "attention_qkv",
    "dropout_mask",
    "dropout_mask_ref",
    "effective_dropout_p",
    "interpreter_active",
]

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Read once: triton.jit decides at decoration time whether kernels are interpreted.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# FLASH_ATTN_AUTOTUNE=0: first fitting config, no autotuning (the tests set it to save GPU time).
_AUTOTUNE = os.environ.get("FLASH_ATTN_AUTOTUNE", "1") != "0"
# FLASH_ATTN_TUNE_TOP=k: autotune over the first k fitting configs of each list only (0 or unset: all).
_TUNE_TOP = int(os.environ.get("FLASH_ATTN_TUNE_TOP", "0") or 0)
# FLASH_ATTN_FWD picks how the forward reads K and V: "tma" through TMA tensor descriptors
# (tl.make_tensor_descriptor, Hopper's bulk copies; needs unit D-stride and 16-byte aligned row strides and
# bases, else that call takes the pointer path), "ptr" through pointers, unset or "auto": TMA at head dim >= 64 on
# an sm_90 GPU (measured faster there on the H200: +4-6 % at D = 64; equal at D = 32, so the pointer path stays;
# kernels/NOTES.md), pointers elsewhere and under the interpreter. A module flag read per call (launch plans,
# replays and the autotuner are keyed on the choice), so a test can switch it. "ws" (a warp-specialised key
# loop, tl.range(..., warp_specialize=True)) was tried and removed: triton 3.6's NVGPUWarpSpecialization pass
# fails on this kernel (H200, every config); the error names it.
_FWD_VARIANTS = ("tma", "ptr", "auto")
_REMOVED_VARIANTS = {"ws": "warp_specialize was removed: triton 3.6 fails to compile this kernel's key loop with "
                           "it (NVGPUWarpSpecialization); see kernels/NOTES.md"}  # fmt: skip


def _parse_fwd_variant(text: str) -> frozenset:
    parts = frozenset(x.strip() for x in text.split(",") if x.strip())
    gone = sorted(parts & set(_REMOVED_VARIANTS))
    if gone:
        raise ValueError(f"FLASH_ATTN_FWD={gone[0]}: {_REMOVED_VARIANTS[gone[0]]}")
    bad = sorted(parts - set(_FWD_VARIANTS))
    if bad:
        raise ValueError(f"FLASH_ATTN_FWD: unknown {bad}; use a comma list of {list(_FWD_VARIANTS)} or leave it unset")
    if "tma" in parts and "ptr" in parts:
        raise ValueError("FLASH_ATTN_FWD: 'tma' and 'ptr' exclude each other")
    if not parts:
        return frozenset({"auto"})
    return parts - {"ptr"}  # "ptr": the empty set, the pointer path everywhere


_FWD_VARIANT = _parse_fwd_variant(os.environ.get("FLASH_ATTN_FWD", "auto"))
_LOG2E = 1.4426950408889634
_PHILOX_ROUNDS = 7
_INT32_MAX = 2**31 - 1
_MAX_GRID_Y = 65535


def interpreter_active() -> bool:
    """True when the kernels were built for Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return _INTERPRET


def _patch_interpreter_index() -> None:
    """Make the interpreter's scalar ``__index__`` work with NumPy >= 2.4.

    Triton 3.6's interpreter keeps scalars as shape-(1,) arrays and converts them with ``int(array)``,
    which NumPy 2.4 rejects, so every ``range(lo, hi)`` with runtime bounds fails. We re-register
    ``__index__`` with ``.item()`` (identical result for size-1 arrays). Interpreter-only, idempotent.
    """
    try:
        from triton.runtime import interpreter as _interp
    except ImportError:  # pragma: no cover
        return
    original = getattr(_interp, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_fa_index_patched", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0].item()))

    patched._fa_index_patched = True
    _interp._patch_lang_tensor = patched


if _INTERPRET:
    _patch_interpreter_index()


# ----------------------------------------------------------------------------------------------------
# Autotune configurations
# ----------------------------------------------------------------------------------------------------


def _cfg(block_m, block_n, warps, stages):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


# GPU configs. Forward: BLOCK_M % BLOCK_N == 0 (needed by the causal split). 8 warps only for >= 128x128 tiles.
_GPU_FWD_CONFIGS = [
    _cfg(64, 64, 4, 3),  # first: what FLASH_ATTN_AUTOTUNE=0 runs; the autotuner's pick at D = 32 on the H200
    _cfg(128, 64, 4, 3),
    _cfg(128, 64, 4, 4),
    _cfg(128, 128, 8, 3),
    _cfg(128, 128, 8, 2),
    _cfg(128, 32, 4, 4),
    _cfg(256, 64, 8, 3),  # halves K/V re-reads per FLOP (exp-bound small D)
    _cfg(64, 32, 4, 3),  # small fallback (fp32 at D=128)
]
# dK/dV: BLOCK_N % BLOCK_M == 0.
_GPU_BWD_KV_CONFIGS = [
    _cfg(32, 128, 4, 3),
    _cfg(64, 128, 8, 3),
    _cfg(32, 128, 8, 2),
    _cfg(32, 128, 4, 4),
    _cfg(32, 64, 4, 3),
    _cfg(64, 64, 4, 2),
    # small key blocks for short key sets (cross-attention: Nk = 0.2·N, 205 keys at N = 1024, where 128-key blocks
    # leave the second block 60 % masked); past the first three, so only a full autotune (FLASH_ATTN_TUNE_TOP=0)
    # tries them: kernels/NOTES.md, "Next candidate"
    _cfg(32, 64, 4, 4),
    _cfg(16, 64, 4, 3),
    _cfg(16, 32, 4, 3),
]
# dQ: BLOCK_M % BLOCK_N == 0.
_GPU_BWD_Q_CONFIGS = [
    _cfg(128, 32, 4, 3),
    _cfg(128, 64, 8, 3),
    _cfg(128, 32, 8, 2),
    _cfg(128, 32, 4, 4),
    _cfg(64, 32, 4, 3),
    _cfg(64, 64, 4, 2),
    _cfg(64, 32, 4, 4),  # small query blocks for short query sets (as above)
    _cfg(32, 32, 4, 3),
]
if _INTERPRET:
    # One small config: autotuning under the interpreter is far too slow. Small blocks also make the
    # CPU tests exercise the full-block loops, the diagonal blocks and the masked tails.
    # The dropout RNG groups 16 rows x 32 columns, so BLOCK_M >= 16 and BLOCK_N >= 32 (key rows) everywhere.
    _FWD_CONFIGS = [_cfg(32, 32, 4, 1)]
    _BWD_KV_CONFIGS = [_cfg(16, 32, 4, 1)]  # BLOCK_N key rows per program, BLOCK_M query rows per step
    _BWD_Q_CONFIGS = [_cfg(32, 32, 4, 1)]  # BLOCK_M query rows per program, BLOCK_N key rows per step
    _PRE_BLOCK_M = 32
else:
    _FWD_CONFIGS, _BWD_KV_CONFIGS, _BWD_Q_CONFIGS = _GPU_FWD_CONFIGS, _GPU_BWD_KV_CONFIGS, _GPU_BWD_Q_CONFIGS
    _PRE_BLOCK_M = 64
_MASK_BLOCK = (64, 64)

_AUTOTUNE_KEY = ["NQ_BUCKET", "NK_BUCKET", "HEAD_DIM", "CAUSAL", "DROPOUT"]

# Short key sets: the config a full autotune (FLASH_ATTN_TUNE_TOP=0) picked on the H200 for the model's
# cross-attention at B = 64, N = 1024 (Nq = 819 queries onto Nk = 205 keys; kernels/NOTES.md) goes to the front
# of its list when every bucket of the rule holds: kind -> ({bucket argument: largest bucket}, config). So
# FLASH_ATTN_AUTOTUNE=0 runs it and FLASH_ATTN_TUNE_TOP=3 weighs it against the two long-sequence defaults.
# Keyed on the key set: dQ's 64-query blocks also measured faster on 205 keys (cross, B = 8: all three
# kernels 0.066 -> 0.057 ms) but 2 % slower on 1,024 (self-attention, Nq = Nk = 1024, same query bucket).
# FLASH_ATTN_SHORT_BLOCKS=0 keeps the lists' own order (to measure the rule).
_SHORT_BLOCKS = os.environ.get("FLASH_ATTN_SHORT_BLOCKS", "1") != "0"
_SHORT_RULES = {
    "fwd": ({"NK_BUCKET": 256}, _cfg(64, 32, 4, 3)),  # key blocks of 32: 224 of 205 keys computed, not 256
    "dkdv": ({"NK_BUCKET": 256}, _cfg(32, 64, 4, 3)),  # 64-key programs: 4 per (batch, head), not 2
    "dq": ({"NK_BUCKET": 256, "NQ_BUCKET": 1024}, _cfg(64, 32, 4, 4)),  # 64-query programs: twice as many
}


def _same(a: triton.Config, b: triton.Config) -> bool:
    return (a.kwargs, a.num_warps, a.num_stages) == (b.kwargs, b.num_warps, b.num_stages)


def _order_for_length(kind: str, configs: list, named_args: dict) -> list:
    """``configs`` with the short-key-set config of ``kind`` first when every bucket of its rule holds."""
    rule = _SHORT_RULES.get(kind)
    if not _SHORT_BLOCKS or rule is None:
        return configs
    limits, short = rule
    for arg, largest in limits.items():
        n = named_args.get(arg)
        if not isinstance(n, int) or n > largest:
            return configs
    hit = [c for c in configs if _same(c, short)]
    return hit + [c for c in configs if not _same(c, short)] if hit else configs


def _autotune_bench(kernel_call, quantiles):
    # Shorter than triton's default (25 ms warm-up, 100 ms timing): GPU time is scarce.
    return triton.testing.do_bench(kernel_call, warmup=5, rep=25, quantiles=quantiles)


_SMEM_BUDGET = 200 * 1024  # bytes; H100/H200 allow 227 KiB per block, keep headroom for scratch


def _smem_estimate(kind: str, cfg: triton.Config, head_dim: int, elsize: int) -> int:
    """Rough shared-memory bytes of the pipelined tiles (streamed operands x num_stages + resident ones)."""
    bm, bn, st = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], max(cfg.num_stages, 1)
    if kind == "fwd":  # K, V streamed; Q resident
        return (st * 2 * bn + bm) * head_dim * elsize
    if kind == "dkdv":  # Q, dO streamed; K, V resident
        return (st * 2 * bm + 2 * bn) * head_dim * elsize
    return (st * 2 * bn + 2 * bm) * head_dim * elsize  # dq: K, V streamed; Q, dO resident


# fp32 (IEEE dots on the FMA pipe) is register-hungry: one small tile per kernel, no autotuning.
_FP32_CONFIG = {"fwd": (64, 32, 4, 2), "dkdv": (32, 64, 4, 2), "dq": (64, 32, 4, 2)}


def _make_prune(kind: str):
    def prune(configs, named_args, **kwargs):
        head_dim = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM", 128))
        q = named_args.get("Q")
        elsize = q.element_size() if q is not None else 4
        if elsize == 4:
            return [_cfg(*_FP32_CONFIG[kind])]
        fits = [c for c in configs if _smem_estimate(kind, c, head_dim, elsize) <= _SMEM_BUDGET]
        fits = _order_for_length(kind, fits or [configs[-1]], named_args)
        return (fits[:_TUNE_TOP] if _TUNE_TOP > 0 else fits) if _AUTOTUNE else fits[:1]

    return prune


def _autotune(configs, kind: str):
    return triton.autotune(
        configs=configs,
        key=_AUTOTUNE_KEY + (["TMA"] if kind == "fwd" else []),  # the forward's variant is tuned on its own
        prune_configs_by={"early_config_prune": _make_prune(kind)},
        do_bench=_autotune_bench,
    )


# ----------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _tile(ptr, off_b, off_h, offs_r, offs_d, stride_b, stride_h, stride_r, stride_d):
    """Pointers to rows ``offs_r`` x columns ``offs_d`` of the (off_b, off_h) slab (int64 slab offset)."""
    return ptr + off_b * stride_b + off_h * stride_h + offs_r[:, None] * stride_r + offs_d[None, :] * stride_d


@triton.jit
def _dropout_bytes(seed_bh, start_m, start_n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, N_ROUNDS: tl.constexpr):
    """8-bit random tile (BLOCK_M, BLOCK_N), values 0..255 (uint32), of rows start_m.. and columns start_n...

    ``start_m`` must be a multiple of 16 and ``start_n`` of 32. Row i = 16*a + 8*h + l (h < 2, l < 8) and
    column j = 32*b + 16*x1 + 8*x0 + 2*t + d (x1, x0, d < 2, t < 4) take byte x1 + 2*x0 of word h + 2*d of
    the Philox-4x32 call with key seed_bh and counter (4*b + t, 8*a + l, 0, 0): one call (16 bytes) serves 16
    elements. That grouping (rows r, r + 8; column pairs 8 apart) is the register layout of a Hopper wgmma
    accumulator, so the forward and dQ build the tile in registers with no shared-memory layout conversion
    (checked in the TTGIR). An element is kept iff its byte is >= the 8-bit threshold round(256 p).
    ``dropout_mask_ref`` is the same function in plain PyTorch.
    """
    RG: tl.constexpr = BLOCK_M // 16
    CG: tl.constexpr = BLOCK_N // 32
    rows = (start_m // 16 + tl.arange(0, RG))[:, None] * 8 + tl.arange(0, 8)[None, :]  # (RG, 8)
    cols = (start_n // 32 + tl.arange(0, CG))[:, None] * 4 + tl.arange(0, 4)[None, :]  # (CG, 4)
    c0 = tl.broadcast_to(cols[None, None, :, :], (RG, 8, CG, 4))
    c1 = tl.broadcast_to(rows[:, :, None, None], (RG, 8, CG, 4))
    zero = c0 * 0
    r0, r1, r2, r3 = tl.philox(seed_bh, c0, c1, zero, zero, N_ROUNDS)
    # join(join(a, b), join(c, d))[..., u, v] is element u + 2*v of [a, b, c, d]; this assignment of the
    # (u, v) bits to (h, d) and (x1, x0) compiles to ~6% fewer instructions than the transposed one
    w = tl.join(tl.join(r0, r1), tl.join(r2, r3))  # (RG, 8, CG, 4, h, d): word h + 2*d
    y = tl.join(tl.join(w & 255, (w >> 8) & 255), tl.join((w >> 16) & 255, w >> 24))  # (..., x1, x0)
    y = tl.permute(y, (0, 4, 1, 2, 6, 7, 3, 5))  # (RG, h, 8, CG, x1, x0, 4, d): byte x1 + 2*x0
    return tl.reshape(y, (BLOCK_M, BLOCK_N))


@triton.jit
def _philox_key(off_bh, seed, SEED_PTR, SEED_FROM_PTR: tl.constexpr):
    """The Philox key (lo, hi) = (seed, b*H + h) of slab ``off_bh`` as one int64. SEED_FROM_PTR: the seed is
    read from device memory at ``SEED_PTR`` (one int32/int64 element, taken modulo 2**31), so a CUDA graph
    that refreshes that element replays with a new mask; else the ``seed`` argument, fixed at launch."""
    if SEED_FROM_PTR:
        key_lo = tl.load(SEED_PTR).to(tl.int64) & 2147483647
    else:
        key_lo = seed
    return off_bh.to(tl.int64) * 4294967296 + key_lo


@triton.jit
def _attn_fwd_inner(
    acc,
    l_i,
    m_i,
    q,
    k_ptrs,
    v_ptrs,
    stride_kn,
    stride_vn,
    offs_m,
    offs_n,
    lo,
    hi,
    N_K,
    qk_scale,
    seed_bh,
    M0,
    DROP_THRESH,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    N_ROUNDS: tl.constexpr,
    TMA: tl.constexpr,
):
    """Online softmax over key blocks [lo, hi). MASKED=False: full blocks, no masking at all.
    TMA: k_ptrs / v_ptrs are tensor descriptors of this slab's (N_K, HEAD_DIM) keys and values, whose loads
    zero-fill rows past N_K (the masked tail needs no load mask)."""
    for start_n in tl.range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        if TMA:
            k = k_ptrs.load([start_n, 0])
        elif MASKED:
            k = tl.load(k_ptrs + start_n * stride_kn, mask=(cols < N_K)[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs + start_n * stride_kn)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if MASKED:
            valid = (cols < N_K)[None, :]
            if CAUSAL:
                valid = valid & (cols[None, :] <= offs_m[:, None])
            qk = tl.where(valid, qk, float("-inf"))
        # scores in log2 units: s * sm_scale * log2(e); one FMA per element below
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if DROPOUT:
            keep = _dropout_bytes(seed_bh, M0, start_n, offs_m.shape[0], BLOCK_N, N_ROUNDS) >= DROP_THRESH
            p = tl.where(keep, p, 0.0)
        if TMA:
            v = v_ptrs.load([start_n, 0])
        elif MASKED:
            v = tl.load(v_ptrs + start_n * stride_vn, mask=(cols < N_K)[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs + start_n * stride_vn)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@_autotune(_FWD_CONFIGS, "fwd")
@triton.jit(do_not_specialize=["seed", "DROP_THRESH"])
def _attn_fwd_kernel(
    Q,
    K,
    V,
    O,
    RES,
    LSE,
    qk_scale,
    drop_scale,
    seed,
    SEED_PTR,
    DROP_THRESH,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    stride_rb,
    stride_rh,
    stride_rm,
    stride_rd,
    H,
    N_Q,
    N_K,
    NQ_BUCKET,
    NK_BUCKET,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    DROPOUT: tl.constexpr,
    SEED_FROM_PTR: tl.constexpr,
    STORE_RES: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    N_ROUNDS: tl.constexpr,
    TMA: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    tl.static_assert(BLOCK_M % BLOCK_N == 0)
    pid_m = tl.program_id(0)
    if CAUSAL:  # longest rows first
        pid_m = tl.num_programs(0) - 1 - pid_m
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    o_base = O + off_b * stride_ob + off_h * stride_oh

    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_Q

    q_ptrs = q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    if TMA:  # the host checked: unit D-stride, 16-byte aligned bases and row strides
        k_ptrs = tl.make_tensor_descriptor(k_base, [N_K, HEAD_DIM], [stride_kn, 1], [BLOCK_N, HEAD_DIM])
        v_ptrs = tl.make_tensor_descriptor(v_base, [N_K, HEAD_DIM], [stride_vn, 1], [BLOCK_N, HEAD_DIM])
    else:
        k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd

    seed_bh = _philox_key(off_bh, seed, SEED_PTR, SEED_FROM_PTR)

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    n_full = (N_K // BLOCK_N) * BLOCK_N
    if CAUSAL:
        # blocks ending at or before row m0 are fully visible to every row of this block
        hi_free = tl.minimum(m0, n_full)
        hi = tl.minimum(m0 + BLOCK_M, N_K)
    else:
        hi_free = n_full
        hi = N_K
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n, 0, hi_free, N_K, qk_scale,
        seed_bh, m0, DROP_THRESH, BLOCK_N, False, CAUSAL, DROPOUT, DOT_PRECISION, N_ROUNDS, TMA,
    )  # fmt: skip
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n, hi_free, hi, N_K, qk_scale,
        seed_bh, m0, DROP_THRESH, BLOCK_N, True, CAUSAL, DROPOUT, DOT_PRECISION, N_ROUNDS, TMA,
    )  # fmt: skip

    # deferred normalisation; LSE kept in log2 units of the scaled scores
    lse = m_i + tl.math.log2(l_i)
    out = acc * (drop_scale / l_i)[:, None]
    tl.store(LSE + off_bh.to(tl.int64) * N_Q + offs_m, lse, mask=row_ok)
    o_ptrs = o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    out_lp = out.to(O.dtype.element_ty)
    tl.store(o_ptrs, out_lp, mask=row_ok[:, None])
    if STORE_RES:
        # rounding residual of the 16-bit output (exact in fp32): the backward's delta = rowsum(dO * O) must
        # use the unrounded O, else dS = P * (dP - delta) inherits O's rounding error (see _attn_bwd_preprocess)
        res_ptrs = _tile(RES, off_b, off_h, offs_m, offs_d, stride_rb, stride_rh, stride_rm, stride_rd)
        tl.store(res_ptrs, (out - out_lp.to(tl.float32)).to(RES.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _attn_bwd_preprocess(
    O,
    RES,
    DO,
    DELTA,
    delta_scale,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    stride_rb,
    stride_rh,
    stride_rm,
    stride_rd,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_dod,
    H,
    N_Q,
    HAS_RES: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """delta = rowsum(dO * O) with O the forward's fp32 output (16-bit O + its rounding residual RES).

    dS = P * (dP - delta) cancels to ~0 where the softmax is (nearly) one-hot, e.g. a causal row with one
    visible key; computing delta from the rounded O would leave an error of size eps(dtype) * |dO| * |O| in
    every such dS (with dropout, O = V / (1 - p) is not exact in 16 bits even for one key).
    """
    pid_m = tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_Q
    o_ptrs = _tile(O, off_b, off_h, offs_m, offs_d, stride_ob, stride_oh, stride_om, stride_od)
    do_ptrs = _tile(DO, off_b, off_h, offs_m, offs_d, stride_dob, stride_doh, stride_dom, stride_dod)
    o = tl.load(o_ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    if HAS_RES:
        res_ptrs = _tile(RES, off_b, off_h, offs_m, offs_d, stride_rb, stride_rh, stride_rm, stride_rd)
        o += tl.load(res_ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(do_ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    # stored times (1 - p): the kernels use dP without its 1/(1-p) and apply it to dS at the end
    tl.store(DELTA + off_bh.to(tl.int64) * N_Q + offs_m, tl.sum(o * do, 1) * delta_scale, mask=row_ok)


@triton.jit
def _attn_bwd_dkdv_inner(
    dk,
    dv,
    k,
    v,
    q_ptrs,
    do_ptrs,
    lse_ptr,
    delta_ptr,
    stride_qm,
    stride_dom,
    offs_n,
    offs_mb,
    n0,
    lo,
    hi,
    N_Q,
    qk_scale,
    seed_bh,
    DROP_THRESH,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    N_ROUNDS: tl.constexpr,
):
    """Accumulate dK, dV (BLOCK_N, D) of one key block over query blocks [lo, hi)."""
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + offs_mb
        if MASKED:
            row_ok = offs_m < N_Q
            q = tl.load(q_ptrs + start_m * stride_qm, mask=row_ok[:, None], other=0.0)
            lse = tl.load(lse_ptr + offs_m, mask=row_ok, other=0.0)
        else:
            q = tl.load(q_ptrs + start_m * stride_qm)
            lse = tl.load(lse_ptr + offs_m)
        qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        sT = qkT * qk_scale - lse[None, :]
        if MASKED:  # mask before exp2: no overflow to inf in masked-out entries
            valid = row_ok[None, :]
            if CAUSAL:
                valid = valid & (offs_m[None, :] >= offs_n[:, None])
            sT = tl.where(valid, sT, float("-inf"))
        pT = tl.math.exp2(sT)
        if MASKED:
            do = tl.load(do_ptrs + start_m * stride_dom, mask=row_ok[:, None], other=0.0)
            delta = tl.load(delta_ptr + offs_m, mask=row_ok, other=0.0)
        else:
            do = tl.load(do_ptrs + start_m * stride_dom)
            delta = tl.load(delta_ptr + offs_m)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        if DROPOUT:
            # transpose the int32 tile (not the i1 mask), then threshold
            # transpose the byte tile (not the i1 mask), then threshold; the 1/(1-p) of dP is in delta
            keepT = tl.trans(_dropout_bytes(seed_bh, start_m, n0, BLOCK_M, BLOCK_N, N_ROUNDS)) >= DROP_THRESH
            dv = tl.dot(tl.where(keepT, pT, 0.0).to(do.dtype), do, dv, input_precision=DOT_PRECISION)
            dpT = tl.where(keepT, dpT, 0.0)
        else:
            dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@_autotune(_BWD_KV_CONFIGS, "dkdv")
@triton.jit(do_not_specialize=["seed", "DROP_THRESH"])
def _attn_bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    DK,
    DV,
    LSE,
    DELTA,
    ds_scale,
    qk_scale,
    drop_scale,
    seed,
    SEED_PTR,
    DROP_THRESH,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_dod,
    stride_dkb,
    stride_dkh,
    stride_dkn,
    stride_dkd,
    stride_dvb,
    stride_dvh,
    stride_dvn,
    stride_dvd,
    H,
    N_Q,
    N_K,
    NQ_BUCKET,
    NK_BUCKET,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    DROPOUT: tl.constexpr,
    SEED_FROM_PTR: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    N_ROUNDS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    tl.static_assert(BLOCK_N % BLOCK_M == 0)
    pid_n = tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)

    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_mb = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < N_K

    k_ptrs = _tile(K, off_b, off_h, offs_n, offs_d, stride_kb, stride_kh, stride_kn, stride_kd)
    v_ptrs = _tile(V, off_b, off_h, offs_n, offs_d, stride_vb, stride_vh, stride_vn, stride_vd)
    k = tl.load(k_ptrs, mask=col_ok[:, None], other=0.0)
    v = tl.load(v_ptrs, mask=col_ok[:, None], other=0.0)

    q_ptrs = _tile(Q, off_b, off_h, offs_mb, offs_d, stride_qb, stride_qh, stride_qm, stride_qd)
    do_ptrs = _tile(DO, off_b, off_h, offs_mb, offs_d, stride_dob, stride_doh, stride_dom, stride_dod)
    lse_ptr = LSE + off_bh.to(tl.int64) * N_Q
    delta_ptr = DELTA + off_bh.to(tl.int64) * N_Q
    seed_bh = _philox_key(off_bh, seed, SEED_PTR, SEED_FROM_PTR)

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    m_full = (N_Q // BLOCK_M) * BLOCK_M
    if CAUSAL:
        # query blocks [n0, n0 + BLOCK_N) straddle the diagonal; later full blocks see the whole key
        # block; the partial last query block (if any, and if it reaches row n0) is masked.
        diag_hi = tl.minimum(n0 + BLOCK_N, m_full)
        dk, dv = _attn_bwd_dkdv_inner(
            dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, stride_qm, stride_dom, offs_n, offs_mb, n0,
            n0, diag_hi, N_Q, qk_scale, seed_bh, DROP_THRESH,
            BLOCK_M, BLOCK_N, True, CAUSAL, DROPOUT, DOT_PRECISION, N_ROUNDS,
        )  # fmt: skip
        free_lo = n0 + BLOCK_N
        tail_lo = tl.maximum(m_full, n0)
    else:
        free_lo = 0
        tail_lo = m_full
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, stride_qm, stride_dom, offs_n, offs_mb, n0,
        free_lo, m_full, N_Q, qk_scale, seed_bh, DROP_THRESH,
        BLOCK_M, BLOCK_N, False, CAUSAL, DROPOUT, DOT_PRECISION, N_ROUNDS,
    )  # fmt: skip
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, stride_qm, stride_dom, offs_n, offs_mb, n0,
        tail_lo, N_Q, N_Q, qk_scale, seed_bh, DROP_THRESH,
        BLOCK_M, BLOCK_N, True, CAUSAL, DROPOUT, DOT_PRECISION, N_ROUNDS,
    )  # fmt: skip

    if DROPOUT:
        dv = dv * drop_scale
    dk = dk * ds_scale  # sm_scale / (1 - p)
    dk_ptrs = _tile(DK, off_b, off_h, offs_n, offs_d, stride_dkb, stride_dkh, stride_dkn, stride_dkd)
    dv_ptrs = _tile(DV, off_b, off_h, offs_n, offs_d, stride_dvb, stride_dvh, stride_dvn, stride_dvd)
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _attn_bwd_dq_inner(
    dq,
    q,
    do,
    lse,
    delta,
    k_ptrs,
    v_ptrs,
    stride_kn,
    stride_vn,
    offs_m,
    offs_nb,
    lo,
    hi,
    N_K,
    qk_scale,
    seed_bh,
    M0,
    DROP_THRESH,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    N_ROUNDS: tl.constexpr,
):
    """Accumulate dQ (BLOCK_M, D) of one query block over key blocks [lo, hi)."""
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_nb
        if MASKED:
            k = tl.load(k_ptrs + start_n * stride_kn, mask=(cols < N_K)[:, None], other=0.0)
            v = tl.load(v_ptrs + start_n * stride_vn, mask=(cols < N_K)[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs + start_n * stride_kn)
            v = tl.load(v_ptrs + start_n * stride_vn)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        s = qk * qk_scale - lse[:, None]
        if MASKED:  # mask before exp2: no overflow to inf in masked-out entries
            valid = (cols < N_K)[None, :]
            if CAUSAL:
                valid = valid & (cols[None, :] <= offs_m[:, None])
            s = tl.where(valid, s, float("-inf"))
        p = tl.math.exp2(s)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        if DROPOUT:
            keep = _dropout_bytes(seed_bh, M0, start_n, offs_m.shape[0], BLOCK_N, N_ROUNDS) >= DROP_THRESH
            dp = tl.where(keep, dp, 0.0)  # the 1/(1-p) of dP is folded into delta and the epilogue
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@_autotune(_BWD_Q_CONFIGS, "dq")
@triton.jit(do_not_specialize=["seed", "DROP_THRESH"])
def _attn_bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    DQ,
    LSE,
    DELTA,
    ds_scale,
    qk_scale,
    seed,
    SEED_PTR,
    DROP_THRESH,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_dod,
    stride_dqb,
    stride_dqh,
    stride_dqm,
    stride_dqd,
    H,
    N_Q,
    N_K,
    NQ_BUCKET,
    NK_BUCKET,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    DROPOUT: tl.constexpr,
    SEED_FROM_PTR: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    N_ROUNDS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    tl.static_assert(BLOCK_M % BLOCK_N == 0)
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.num_programs(0) - 1 - pid_m
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)

    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_nb = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_Q

    q_ptrs = _tile(Q, off_b, off_h, offs_m, offs_d, stride_qb, stride_qh, stride_qm, stride_qd)
    do_ptrs = _tile(DO, off_b, off_h, offs_m, offs_d, stride_dob, stride_doh, stride_dom, stride_dod)
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    do = tl.load(do_ptrs, mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + off_bh.to(tl.int64) * N_Q + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + off_bh.to(tl.int64) * N_Q + offs_m, mask=row_ok, other=0.0)

    k_ptrs = _tile(K, off_b, off_h, offs_nb, offs_d, stride_kb, stride_kh, stride_kn, stride_kd)
    v_ptrs = _tile(V, off_b, off_h, offs_nb, offs_d, stride_vb, stride_vh, stride_vn, stride_vd)
    seed_bh = _philox_key(off_bh, seed, SEED_PTR, SEED_FROM_PTR)

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    n_full = (N_K // BLOCK_N) * BLOCK_N
    if CAUSAL:
        hi_free = tl.minimum(m0, n_full)
        hi = tl.minimum(m0 + BLOCK_M, N_K)
    else:
        hi_free = n_full
        hi = N_K
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_nb, 0, hi_free, N_K,
        qk_scale, seed_bh, m0, DROP_THRESH,
        BLOCK_N, False, CAUSAL, DROPOUT, DOT_PRECISION, N_ROUNDS,
    )  # fmt: skip
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_nb, hi_free, hi, N_K,
        qk_scale, seed_bh, m0, DROP_THRESH,
        BLOCK_N, True, CAUSAL, DROPOUT, DOT_PRECISION, N_ROUNDS,
    )  # fmt: skip

    dq = dq * ds_scale  # sm_scale / (1 - p)
    dq_ptrs = _tile(DQ, off_b, off_h, offs_m, offs_d, stride_dqb, stride_dqh, stride_dqm, stride_dqd)
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit(do_not_specialize=["seed", "DROP_THRESH"])
def _dropout_mask_kernel(
    OUT,
    seed,
    DROP_THRESH,
    N_Q,
    N_K,
    N_ROUNDS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    off_bh = tl.program_id(2)
    m0 = pid_m * BLOCK_M
    start_n = pid_n * BLOCK_N
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    seed_bh = off_bh.to(tl.int64) * 4294967296 + seed
    keep = _dropout_bytes(seed_bh, m0, start_n, BLOCK_M, BLOCK_N, N_ROUNDS) >= DROP_THRESH
    ptrs = OUT + off_bh.to(tl.int64) * N_Q * N_K + offs_m[:, None].to(tl.int64) * N_K + offs_n[None, :]
    tl.store(ptrs, keep.to(tl.int8), mask=(offs_m < N_Q)[:, None] & (offs_n < N_K)[None, :])


# ----------------------------------------------------------------------------------------------------
# Host-side launchers
# ----------------------------------------------------------------------------------------------------


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)  # triton.cdiv is a @jit function: ~16 us per call from Python


def _bucket(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())  # triton.next_power_of_2 (a constexpr_function: ~4 us per call)


def _drop_thresh(p: float) -> int:
    """8-bit threshold: an element is dropped iff its random byte is < round(256 p) (0 for p = 0)."""
    return 0 if p <= 0.0 else min(max(int(round(p * 256)), 1), 255)


def effective_dropout_p(p: float) -> float:
    """The drop probability the kernel applies for ``dropout_p=p``: round(256 p) / 256 (p = 0.1 -> 0.1015625)."""
    return _drop_thresh(float(p)) / 256


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # "tf32" is ignored for 16-bit inputs


def _device_ctx(t: torch.Tensor):
    if t.is_cuda and t.get_device() != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return nullcontext()


class _Pinned:
    """Launch the autotuned kernel's underlying JITFunction with one fixed config (tests, tuning)."""

    def __init__(self, kernel, config: triton.Config):
        self.fn, self.config = kernel.fn, config

    def __getitem__(self, grid):
        meta = self.config.all_kwargs()
        launcher = self.fn[grid if not callable(grid) else grid(meta)]
        return lambda *args, **kwargs: launcher(*args, **kwargs, **meta)


def _select(kernel, config):
    return kernel if config is None else _Pinned(kernel, config)


# ----------------------------------------------------------------------------------------------------
# Launch plans: the per-call host work after the first call of a shape is one dict lookup and the C launch
# ----------------------------------------------------------------------------------------------------

# FLASH_ATTN_FAST_LAUNCH=0: every launch goes through triton's autotuner and JIT dispatch (slower host side).
_FAST_LAUNCH = not _INTERPRET and os.environ.get("FLASH_ATTN_FAST_LAUNCH", "1") != "0"
_PLANS: dict = {}
_PLAN_STATS = {"hits": 0, "misses": 0, "replays": 0}


class _Plan:
    """A compiled kernel with its grid and trailing constexpr arguments, for one launch key; ``ptrs``: the
    positions of the tensor arguments, passed to the C launcher as raw device addresses (ints)."""

    __slots__ = ("kernel", "grid", "tail", "ptrs")

    def __init__(self, kernel, grid, tail, ptrs=()):
        self.kernel, self.grid, self.tail, self.ptrs = kernel, grid, tail, ptrs


def _make_plan(kernel, compiled, args: tuple, consts: dict, grid, config):
    """Plan from the first (dispatched) launch; None when the compiled kernel cannot be reused safely."""
    tuned = isinstance(kernel, Autotuner)
    jit = kernel.fn if tuned else kernel
    if tuned:
        config = kernel.best_config
    meta = {**consts, **(config.kwargs if config is not None else {})}
    names = jit.arg_names[len(args) :]
    if compiled is None or not hasattr(compiled, "run") or any(n not in meta for n in names):
        return None
    g = grid(config.all_kwargs() if config is not None else meta) if callable(grid) else grid
    g = tuple(g) + (1,) * (3 - len(g))
    ptrs = tuple(i for i, x in enumerate(args) if isinstance(x, torch.Tensor))
    return _Plan(compiled, g, tuple(meta[n] for n in names), ptrs)


def _launch(kernel, key, grid, args: tuple, consts: dict, config=None, record=None, seed_at=()) -> None:
    """Launch ``kernel[grid](*args, **consts)``; ``key`` must determine everything triton specialises on.

    ``key`` holds the shapes, strides, dtypes, flags and pointer alignments the arguments derive from, so a
    hit reuses the compiled kernel, its (autotuned) config and grid as they are: no argument binding, no
    autotuner lookup, and tensors passed as their device addresses (ints), which triton's C launcher takes as
    they are: for a tensor it calls ``data_ptr()`` and asks the driver whether the address is a device pointer
    (cuPointerGetAttribute, one driver call per pointer argument, ~25 per fwd+bwd), which the public functions'
    own checks (CUDA tensors, one device) already answer. A miss (first call of a shape) takes triton's normal
    path and records the plan. A pinned ``config`` (tests, tuning) always takes the normal path.
    ``record``: a list that gets ``(plan, args, seed_at)`` (``seed_at``: the positions of the dropout seed in
    ``args``) when the launch has a plan, for a :class:`_Replay` of the whole call.
    """
    plan = _PLANS.get(key) if _FAST_LAUNCH and config is None else None
    if plan is None:
        compiled = _select(kernel, config)[grid](*args, **consts)
        if _FAST_LAUNCH and config is None:
            _PLAN_STATS["misses"] += 1
            plan = _make_plan(kernel, compiled, args, consts, grid, config)
            if plan is not None:
                _PLANS[key] = plan
                if record is not None:
                    record.append((plan, args, seed_at))
        return
    _PLAN_STATS["hits"] += 1
    if record is not None:
        record.append((plan, args, seed_at))
    full = [*args, *plan.tail]
    for i in plan.ptrs:
        full[i] = full[i].data_ptr()
    _run(plan, full)


def _run(plan: _Plan, full: list) -> None:
    """The C launch of a plan with its whole argument list (tensors as device addresses)."""
    ck, (g0, g1, g2) = plan.kernel, plan.grid
    stream = _current_stream(torch.cuda.current_device())
    enter, exit_hook = _hook(_RUNTIME.launch_enter_hook), _hook(_RUNTIME.launch_exit_hook)
    hooked = enter is not None or exit_hook is not None  # (profilers)
    meta = ck.launch_metadata(plan.grid, stream, *full) if hooked else None
    ck.run(g0, g1, g2, stream, ck.function, ck.packed_metadata, meta, enter, exit_hook, *full)


_RUNTIME = triton.knobs.runtime


def _hook(h):
    """A launch hook, or None when it is triton's default empty HookChain (nothing to call: no launch metadata
    to build, no Python call from the C launcher before and after each launch)."""
    return None if h is None or (isinstance(h, HookChain) and not h.calls) else h


class _Replay:
    """The launches of one packed self-attention call (forward: 1, backward: 3), recorded from a regular call of
    the same signature: each launch's plan and whole argument list, with every tensor argument as (source,
    byte offset) into the call's few tensors (qkv, o, res, lse, ...) and the seed's positions. A replay fills
    in this call's addresses and seed and launches: no views, strides, keys or argument binding per kernel.

    An argument is the source with its address if there is one, else a view inside exactly one source's
    storage (q, k, v of qkv; dq, dk, dv of dqkv); otherwise no replay is built. Sources must have distinct
    addresses (a gradient aliasing the output, say): such calls neither build nor use a replay. The caller's
    signature holds every source's strides and alignment, so the recorded offsets hold for the calls it
    matches."""

    __slots__ = ("launches",)

    def __init__(self, launches):
        self.launches = launches

    @classmethod
    def build(cls, records: list, sources: tuple):
        if not _distinct(sources):
            return None
        spans = [(t.untyped_storage().data_ptr(), t.data_ptr(), t.data_ptr() + _extent(t)) for t in sources]
        launches = []
        for plan, args, seed_at in records:
            slots = []
            for i in plan.ptrs:
                p = args[i].data_ptr()
                exact = [j for j, (_, start, _) in enumerate(spans) if start == p]
                storage = args[i].untyped_storage().data_ptr()
                inside = [j for j, (st, start, end) in enumerate(spans) if st == storage and start <= p < end]
                found = exact or inside
                if len(found) != 1:
                    return None
                slots.append((i, found[0], p - spans[found[0]][1]))
            template = [*args, *plan.tail]
            for i in plan.ptrs:
                template[i] = 0
            launches.append((plan, template, tuple(slots), tuple(seed_at)))
        return cls(launches)

    def __call__(self, ptr: list, seed: int) -> None:
        """Launch with this call's source addresses ``ptr`` (in the recorded sources' order) and seed."""
        _PLAN_STATS["replays"] += 1
        for plan, template, slots, seed_at in self.launches:
            full = template.copy()
            for i, j, off in slots:
                full[i] = ptr[j] + off
            for i in seed_at:
                full[i] = seed
            _run(plan, full)


def _distinct(sources: tuple) -> bool:
    return len({t.data_ptr() for t in sources}) == len(sources)


def _extent(t: torch.Tensor) -> int:
    """Bytes from t's first element to just past its last (a strided view's span)."""
    return (1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))) * t.element_size()


def _layouts(*ts) -> tuple:
    """Strides and 16-byte alignment of each tensor (None for a missing one): part of a replay's signature."""
    return tuple(None if t is None else (t.stride(), t.data_ptr() % 16) for t in ts)


def reset_launch_caches() -> None:
    """Forget every launch plan and replay (tests, or after changing triton knobs that plans baked in)."""
    _PLANS.clear()
    _REPLAYS.clear()


_REPLAYS: dict = {}  # packed call signature -> _Replay


def _current_stream(device: int) -> int:
    return torch._C._cuda_getCurrentRawStream(device)


def _aligned(*ts) -> int:
    """Bit i: is tensor i's data pointer 16-byte aligned (triton specialises pointers on it)."""
    bits = 0
    for i, t in enumerate(ts):
        if t.data_ptr() % 16 == 0:
            bits |= 1 << i
    return bits


def _layout(t: torch.Tensor) -> tuple:
    return (t.shape, t.stride())


def _seed_args(seed, lse: torch.Tensor) -> tuple:
    """(seed argument, SEED_PTR argument, SEED_FROM_PTR) of a launch: an int seed is passed by value, with the
    call's ``lse`` seen as int32 standing in for the unused SEED_PTR; a one-element int32 device tensor is read
    by the kernels at run time (its address as SEED_PTR, the seed argument 0). SEED_PTR is int32 either way:
    triton's autotuner keys on the arguments' dtypes, so both share one tuned config (a seed tensor under CUDA-
    graph capture then reuses the config the eager warm-up tuned, where tuning could not run)."""
    if isinstance(seed, torch.Tensor):
        return 0, seed, True
    return seed, lse.view(torch.int32), False


def _fwd(q, k, v, sm_scale, dropout_p, causal, seed, config=None, residual=True, out=None, record=None):
    """Forward launch; returns ``(o, lse, res)``. ``record``: see :func:`_launch`.

    ``res`` (o's shape and dtype, or None) is the rounding residual ``O_fp32 - O`` for the backward's
    ``delta``; it is stored when ``residual`` is true and the inputs are 16-bit (fp32 O is exact).
    ``out``: preallocated ``(o, res, lse)`` (res None: not stored), e.g. from :func:`_bnhd_outputs` for the
    packed self-attention call; else :func:`_fwd_outputs`.
    """
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    o, res, lse = _fwd_outputs(q, residual and q.dtype != torch.float32) if out is None else out
    dropout = dropout_p > 0.0
    thresh = _drop_thresh(dropout_p)
    r = o if res is None else res
    seed, seed_ptr, from_ptr = _seed_args(seed, lse)
    tma = _want_tma(q) and _tma_ok(k) and _tma_ok(v)
    key = ("fwd", q.dtype, q.device, _layout(q), _layout(k), _layout(v), o.stride(), r.stride(),
           _aligned(q, k, v, seed_ptr), causal, dropout, res is not None, tma, from_ptr)  # fmt: skip
    if tma:
        _ensure_allocator()

    def grid(meta):
        return (_cdiv(Nq, meta["BLOCK_M"]), B * H)

    with _device_ctx(q):
        _launch(_attn_fwd_kernel, key, grid, (
            q, k, v, o, r, lse,
            sm_scale * _LOG2E, 256.0 / (256 - thresh), seed, seed_ptr, thresh,
            *q.stride(), *k.stride(), *v.stride(), *o.stride(), *r.stride(),
            H, Nq, Nk, _bucket(Nq), _bucket(Nk),
        ), dict(
            HEAD_DIM=D, CAUSAL=causal, DROPOUT=dropout, SEED_FROM_PTR=from_ptr, STORE_RES=res is not None,
            DOT_PRECISION=_dot_precision(q.dtype), N_ROUNDS=_PHILOX_ROUNDS, TMA=tma,
        ), config, record, seed_at=(8,))  # fmt: skip
    return o, lse, res


_SM90: dict = {}  # device index -> is an sm_90 GPU


def _want_tma(q: torch.Tensor) -> bool:
    """Does this call's forward read K and V by TMA (FLASH_ATTN_FWD, above), before the operand check?"""
    if "tma" in _FWD_VARIANT:
        return True
    if "auto" not in _FWD_VARIANT or _INTERPRET or not q.is_cuda or q.shape[-1] < 64:
        return False
    index = q.device.index if q.device.index is not None else torch.cuda.current_device()
    if index not in _SM90:
        _SM90[index] = torch.cuda.get_device_capability(index)[0] == 9
    return _SM90[index]


def _tma_ok(t: torch.Tensor) -> bool:
    """Can a (B, H, N, D) operand be read by TMA: unit D-stride, 16-byte aligned base and row stride. (The
    per-slab bases add b·stride_b + h·stride_h elements, so those strides must keep the alignment too.)"""
    es = t.element_size()
    return t.stride(3) == 1 and t.data_ptr() % 16 == 0 and all((t.stride(i) * es) % 16 == 0 for i in range(3))


def _scratch(size: int, align: int, stream):
    """Global scratch for device-side tensor descriptors: torch's caching allocator on the current GPU (or the
    CPU under the interpreter); its blocks are 512-byte aligned, and inside a CUDA-graph capture they come from
    the graph's pool."""
    if align > 512:
        raise ValueError(f"flash attention: triton asked for {align}-byte aligned scratch (torch gives 512)")
    return torch.empty(size, dtype=torch.int8, device="cpu" if _INTERPRET else "cuda")


def _ensure_allocator() -> None:
    """Device-side tensor descriptors need global scratch memory, which triton asks its allocator for. triton
    keeps the allocator in a ContextVar (per thread and context: autograd's worker threads start without one),
    so it is checked on every TMA call and set where missing; a user's own allocator is left alone."""
    from triton.runtime import _allocation

    if _allocation._allocator.get() is _allocation._NULL_ALLOCATOR:
        triton.set_allocator(_scratch)


def _fwd_outputs(q: torch.Tensor, with_res: bool) -> tuple:
    """The forward's (o, res or None, lse) for queries q (B, H, Nq, D): o and res in _out_like's layout."""
    o = _out_like(q)
    return o, _out_like(o) if with_res else None, _new_buffer((q.shape[0] * q.shape[1], q.shape[2]), q.device)


def _bnhd_outputs(B, H, N, D, dtype, device, with_res: bool):
    """The packed call's (o, res or None, lse): o and res as (B, H, N, D) views of (B, N, H, D) memory, from
    one allocation."""
    buf = torch.empty((1 + with_res) * B * N * H * D, dtype=dtype, device=device)
    shape, stride = (B, H, N, D), (N * H * D, D, H * D, 1)
    o = buf.as_strided(shape, stride, 0)
    return o, buf.as_strided(shape, stride, B * N * H * D) if with_res else None, _new_buffer((B * H, N), device)


def _bwd(
    do, q, k, v, o, lse, sm_scale, dropout_p, causal, seed, need_dq=True, need_dkdv=True, configs=None, res=None,
    out=None, delta=None, record=None,
):  # fmt: skip
    """Backward launch; ``res`` is the forward's rounding residual of ``o`` (None: use ``o`` as is).

    ``out``: optional preallocated ``(dq, dk, dv)`` (e.g. strided views of one packed gradient buffer);
    ``delta``: optional (B*H, Nq) fp32 scratch; ``record``: see :func:`_launch`.
    """
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    dropout = dropout_p > 0.0
    thresh = _drop_thresh(dropout_p)
    drop_scale = 256.0 / (256 - thresh)
    prec = _dot_precision(q.dtype)
    dq = dk = dv = None
    seed, seed_ptr, from_ptr = _seed_args(seed, lse)
    consts = dict(HEAD_DIM=D, CAUSAL=causal, DROPOUT=dropout, SEED_FROM_PTR=from_ptr, DOT_PRECISION=prec,
                  N_ROUNDS=_PHILOX_ROUNDS)  # fmt: skip
    base = (q.dtype, q.device, _layout(q), _layout(k), _layout(v), do.stride(), _aligned(q, k, v, do, seed_ptr), causal,
            dropout, from_ptr)  # fmt: skip
    r = o if res is None else res
    with _device_ctx(q):
        delta = _new_buffer((B * H, Nq), q.device) if delta is None else delta
        _launch(_attn_bwd_preprocess, ("pre", *base, o.stride(), r.stride(), res is not None),
            lambda meta: (_cdiv(Nq, _PRE_BLOCK_M), B * H), (
            o, r, do, delta, 1.0 / drop_scale,
            *o.stride(), *r.stride(), *do.stride(), H, Nq,
        ), dict(HAS_RES=res is not None, HEAD_DIM=D, BLOCK_M=_PRE_BLOCK_M), None, record)  # fmt: skip
        if need_dkdv:
            dk, dv = (out[1], out[2]) if out is not None else (_out_like(k), _out_like(v))

            def grid_kv(meta):
                return (_cdiv(Nk, meta["BLOCK_N"]), B * H)

            cfg = configs and configs[0]
            _launch(_attn_bwd_dkdv_kernel, ("dkdv", *base, dk.stride(), dv.stride()), grid_kv, (
                q, k, v, do, dk, dv, lse, delta,
                sm_scale * drop_scale, sm_scale * _LOG2E, drop_scale, seed, seed_ptr, thresh,
                *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
                H, Nq, Nk, _bucket(Nq), _bucket(Nk),
            ), consts, cfg, record, seed_at=(11,))  # fmt: skip
        if need_dq:
            dq = out[0] if out is not None else _out_like(q)

            def grid_q(meta):
                return (_cdiv(Nq, meta["BLOCK_M"]), B * H)

            cfg = configs and configs[1]
            _launch(_attn_bwd_dq_kernel, ("dq", *base, dq.stride()), grid_q, (
                q, k, v, do, dq, lse, delta,
                sm_scale * drop_scale, sm_scale * _LOG2E, seed, seed_ptr, thresh,
                *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
                H, Nq, Nk, _bucket(Nq), _bucket(Nk),
            ), consts, cfg, record, seed_at=(9,))  # fmt: skip
    return dq, dk, dv


def _new_buffer(shape, device) -> torch.Tensor:
    """fp32 scratch (LSE, delta); every element is written by the kernels."""
    return torch.empty(shape, dtype=torch.float32, device=device)


def _grad_buffer(shape, dtype, device) -> torch.Tensor:
    """A gradient every element of which the kernels write (the packed call's dqkv)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _out_like(t: torch.Tensor) -> torch.Tensor:
    """An output shaped like ``t`` (B, H, N, D): ``t``'s own layout when it is dense with unit last stride,
    else (B, N, H, D) memory seen as (B, H, N, D), the layout whose ``.transpose(1, 2).reshape(B, N, H*D)``
    is free (e.g. for q, k, v read as strided views of one packed (B, N, 3, H, D) projection)."""
    out = torch.empty_like(t)  # keeps t's strides iff t is non-overlapping and dense
    if out.stride() == t.stride() and out.stride(-1) == 1:
        return out
    B, H, N, D = t.shape
    return torch.empty((B, N, H, D), dtype=t.dtype, device=t.device).transpose(1, 2)


# ----------------------------------------------------------------------------------------------------
# Autograd Function and public API
# ----------------------------------------------------------------------------------------------------


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper; call through :func:`attention`, which validates the inputs. From the second call of a
    signature on, the forward's and the backward's launches are replayed (:class:`_Replay`)."""

    @staticmethod
    def forward(ctx, q, k, v, sm_scale, dropout_p, causal, seed, needs_grad=True):
        # the rounding residual of O is only needed by the backward (not stored under no_grad)
        with_res = needs_grad and q.dtype != torch.float32
        seed_t = _seed_tensor(seed)
        sig = ("attn", q.shape, k.shape, q.dtype, q.device, _layouts(q, k, v, seed_t), sm_scale, dropout_p, causal,
               with_res, _FWD_VARIANT)  # fmt: skip
        o, res, lse = _fwd_outputs(q, with_res)
        if _want_tma(q):  # a replay launches without _fwd, which sets the descriptors' allocator
            _ensure_allocator()
        _replay_or_run(sig, _sources(q, k, v, o, lse, seed_t, res=res), _seed_value(seed), q, 1, lambda record: _fwd(
            q, k, v, sm_scale, dropout_p, causal, seed, out=(o, res, lse), record=record))  # fmt: skip
        ctx.save_for_backward(q, k, v, o, lse, res)
        ctx.sm_scale = sm_scale
        ctx.dropout_p = dropout_p
        ctx.causal = causal
        ctx.seed = seed
        ctx.sig = sig
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, res = ctx.saved_tensors
        need_dq = ctx.needs_input_grad[0]
        need_dkdv = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        if do.dtype != q.dtype:
            do = do.to(q.dtype)
        if (do.stride(-1) != 1 and do.size(-1) > 1) or _slab_span(do) > _INT32_MAX:
            do = do.contiguous()
        grads = (_out_like(q) if need_dq else None, *((_out_like(k), _out_like(v)) if need_dkdv else (None, None)))
        delta = _new_buffer((q.shape[0] * q.shape[1], q.shape[2]), q.device)
        # the saved tensors' own layouts: saved-tensor hooks (e.g. save_on_cpu) may hand back copies
        sig = (ctx.sig, _layouts(q, k, v, o, res, lse, do), need_dq, need_dkdv)
        sources = _sources(q, k, v, o, lse, do, delta, *grads, _seed_tensor(ctx.seed), res=res)
        _replay_or_run(sig, sources, _seed_value(ctx.seed), q, 1 + need_dq + need_dkdv, lambda record: _bwd(
            do, q, k, v, o, lse, ctx.sm_scale, ctx.dropout_p, ctx.causal, ctx.seed, need_dq, need_dkdv, res=res,
            out=grads, delta=delta, record=record))  # fmt: skip
        return *grads, None, None, None, None, None


class FlashAttentionQKVFunction(torch.autograd.Function):
    """Self-attention on one packed projection: qkv (B, N, 3*H*D) -> (B, N, H*D); call through attention_qkv.

    q, k, v are strided (B, H, N, D) views of qkv's (B, N, 3, H, D) memory, the output is (B, N, H, D)
    memory, and the backward writes dq, dk, dv straight into one (B, N, 3, H, D) gradient: no copies
    either way (the chunk/view/transpose chain of the unpacked call costs a gather and a cat per call).
    """

    @staticmethod
    def forward(ctx, qkv, num_heads, sm_scale, dropout_p, causal, seed, needs_grad=True):
        B, N, W = qkv.shape
        H, D = num_heads, W // (3 * num_heads)
        with_res = needs_grad and qkv.dtype != torch.float32
        seed_t = _seed_tensor(seed)
        sig = ("qkv", qkv.shape, qkv.stride(), qkv.dtype, qkv.device, qkv.data_ptr() % 16, H, sm_scale, dropout_p,
               causal, with_res, _FWD_VARIANT, _layouts(seed_t))  # fmt: skip
        o, res, lse = _bnhd_outputs(B, H, N, D, qkv.dtype, qkv.device, with_res)
        if _want_tma(o):  # as in FlashAttentionFunction
            _ensure_allocator()
        _replay_or_run(sig, _sources(qkv, o, lse, seed_t, res=res), _seed_value(seed), qkv, 1, lambda record: _fwd(
            *_unpack_qkv(qkv, H), sm_scale, dropout_p, causal, seed, out=(o, res, lse), record=record))  # fmt: skip
        ctx.save_for_backward(qkv, o, lse, res)
        ctx.num_heads, ctx.sm_scale, ctx.dropout_p, ctx.causal, ctx.seed = num_heads, sm_scale, dropout_p, causal, seed
        ctx.sig = sig
        return o.transpose(1, 2).reshape(B, N, H * D)  # (B, N, H*D), a view of o's (B, N, H, D) memory

    @staticmethod
    def backward(ctx, do):
        qkv, o, lse, res = ctx.saved_tensors
        B, N, W = qkv.shape
        H = ctx.num_heads
        D = W // (3 * H)
        if do.dtype != qkv.dtype:
            do = do.to(qkv.dtype)
        if do.stride(-1) != 1:
            do = do.contiguous()
        do = do.view(B, N, H, D).transpose(1, 2)  # (B, H, N, D)
        if _slab_span(do) > _INT32_MAX:
            do = do.contiguous()
        dqkv = _grad_buffer((B, N, 3 * H * D), qkv.dtype, qkv.device)
        delta = _new_buffer((B * H, N), qkv.device)
        # the saved tensors' own layouts: saved-tensor hooks (e.g. save_on_cpu) may hand back copies
        sig = (ctx.sig, _layouts(qkv, o, res, lse, do))
        sources = _sources(qkv, o, lse, do, delta, dqkv, _seed_tensor(ctx.seed), res=res)
        _replay_or_run(sig, sources, _seed_value(ctx.seed), qkv, 3, lambda record: _bwd(
            do, *_unpack_qkv(qkv, H), o, lse, ctx.sm_scale, ctx.dropout_p, ctx.causal, ctx.seed, res=res,
            out=_head_views(dqkv, H, 3), delta=delta, record=record))  # fmt: skip
        return dqkv, None, None, None, None, None, None


def _seed_tensor(seed):
    """The seed tensor of a call (read by the kernels at run time), or None for an int seed."""
    return seed if isinstance(seed, torch.Tensor) else None


def _seed_value(seed) -> int:
    """The seed argument a replay writes: the int seed, or 0 when the kernels read a seed tensor."""
    return 0 if isinstance(seed, torch.Tensor) else seed


def _sources(*ts, res=None) -> tuple:
    """A call's tensors for its _Replay: the given ones that exist, then the residual if there is one."""
    return tuple(t for t in (*ts, res) if t is not None)


def _replay_or_run(sig, sources: tuple, seed: int, device_of: torch.Tensor, launches: int, run) -> None:
    """Replay the launches recorded for ``sig`` with this call's ``sources`` and ``seed``; without a replay,
    ``run(record)`` (the call's regular path, its outputs already among the sources) and keep a replay of what
    it launched when it recorded all ``launches`` of them. Sources with equal addresses never replay."""
    if _FAST_LAUNCH:
        ptr = [t.data_ptr() for t in sources]  # once per call: the distinctness check and the replay's addresses
        replay = _REPLAYS.get(sig) if len(set(ptr)) == len(ptr) else None
        if replay is not None:
            with _device_ctx(device_of):
                replay(ptr, seed)
            return
    record = [] if _FAST_LAUNCH else None
    run(record)
    if record is not None and len(record) == launches:
        _remember(sig, record, sources)


def _remember(sig, record: list, sources: tuple) -> None:
    replay = _Replay.build(record, sources)
    if replay is not None:
        if len(_REPLAYS) >= _CHECKED_MAX:
            _REPLAYS.clear()
        _REPLAYS[sig] = replay


def _unpack_qkv(qkv: torch.Tensor, num_heads: int):
    """q, k, v: (B, H, N, D) views of qkv (B, N, 3*H*D) (unit last stride), i.e. of its (B, N, 3, H, D) memory."""
    return _head_views(qkv, num_heads, 3)


def _head_views(x: torch.Tensor, num_heads: int, parts: int):
    B, N, W = x.shape
    D = W // (parts * num_heads)
    sb, sn = x.stride(0), x.stride(1)
    off = x.storage_offset()
    shape, stride = (B, num_heads, N, D), (sb, D, sn, 1)
    return tuple(x.as_strided(shape, stride, off + i * num_heads * D) for i in range(parts))  # (B, H, N, D) each


def _fail(msg: str):
    raise ValueError(msg)


def _slab_span(t: torch.Tensor) -> int:
    """Largest element offset inside one (batch, head) slab of a (B, H, N, D) tensor."""
    return (t.shape[2] - 1) * t.stride(2) + (t.shape[3] - 1) * t.stride(3)


def _check_slab_int32(name: str, t: torch.Tensor):
    # offsets inside one (batch, head) slab are computed in int32 (batch/head base offsets in int64); outputs
    # and gradients of a non-dense input (e.g. stride-0 expanded) are allocated contiguous: N*D elements
    n, d = t.shape[2], t.shape[3]
    if _slab_span(t) > _INT32_MAX or n * d - 1 > _INT32_MAX:
        _fail(
            f"attention: {name} shape {tuple(t.shape)} / strides {tuple(t.stride())} give per-(batch, head) "
            "offsets beyond int32"
        )


def _validate(q, k, v, sm_scale, dropout_p, causal, seed) -> tuple[float, float, bool, int]:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            _fail(f"attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            _fail(f"attention: {name} must have rank 4 (B, H, N, D), got shape {tuple(t.shape)}")
    if not (q.device == k.device == v.device):
        _fail(f"attention: q, k, v must be on the same device, got {q.device}, {k.device}, {v.device}")
    if q.dtype not in SUPPORTED_DTYPES:
        _fail(f"attention: unsupported dtype {q.dtype}; use float16, bfloat16 or float32")
    if not (q.dtype == k.dtype == v.dtype):
        _fail(f"attention: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, H, Nq, D = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        _fail(f"attention: batch sizes differ: q {B}, k {k.shape[0]}, v {v.shape[0]}")
    if k.shape[1] != H or v.shape[1] != H:
        _fail(f"attention: head counts differ: q {H}, k {k.shape[1]}, v {v.shape[1]}")
    if k.shape[3] != D or v.shape[3] != D:
        _fail(f"attention: head dims differ: q {D}, k {k.shape[3]}, v {v.shape[3]}")
    if k.shape[2] != v.shape[2]:
        _fail(f"attention: k and v lengths differ: {k.shape[2]} vs {v.shape[2]}")
    Nk = k.shape[2]
    if D not in SUPPORTED_HEAD_DIMS:
        _fail(f"attention: head dim D={D} is not supported; use one of {SUPPORTED_HEAD_DIMS}")
    if min(B, H, Nq, Nk) == 0:
        _fail(f"attention: empty input (q {tuple(q.shape)}, k {tuple(k.shape)})")
    if B * H > _MAX_GRID_Y:
        _fail(f"attention: B*H={B * H} exceeds the launch-grid limit {_MAX_GRID_Y}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, Real) or not (0.0 <= float(dropout_p) < 1.0):
        _fail(f"attention: dropout_p must be a number in [0, 1), got {dropout_p!r}")
    dropout_p = float(dropout_p)
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(D)
    elif isinstance(sm_scale, bool) or not isinstance(sm_scale, Real) or not 0.0 < float(sm_scale) < math.inf:
        _fail(f"attention: sm_scale must be a finite positive number, got {sm_scale!r}")
    if not isinstance(causal, bool):
        _fail(f"attention: causal must be a bool, got {causal!r}")
    if q.device.type == "cpu":
        if not _INTERPRET:
            _fail(
                "attention: CPU tensors: needs a CUDA GPU, or TRITON_INTERPRET=1 (set before importing "
                "triton) for the CPU interpreter"
            )
    elif q.device.type != "cuda":
        _fail(f"attention: unsupported device {q.device}; needs a CUDA GPU (or TRITON_INTERPRET=1 on CPU)")
    if _INTERPRET and q.dtype == torch.bfloat16:
        _fail(
            "attention: bfloat16 is not supported by the Triton CPU interpreter (TRITON_INTERPRET=1, "
            "triton 3.6 lacks bf16 there); use float16 or float32 on CPU"
        )
    if dropout_p > 0.0 and not 1 / 512 <= dropout_p < 511 / 512:
        _fail(
            f"attention: dropout_p={dropout_p} is outside the kernel's 8-bit range: it drops with probability "
            "round(256*p)/256, so use 0 or a p in [1/512, 511/512)"
        )
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_slab_int32(name, t)
    return float(sm_scale), dropout_p, causal, _seed(seed, dropout_p, q)


def _autocast_inputs(*tensors):
    """Cast fp32 CUDA inputs to the autocast dtype when CUDA autocast is on (else unchanged)."""
    if not torch.is_autocast_enabled("cuda"):
        return tensors
    if not all(isinstance(t, torch.Tensor) and t.is_cuda for t in tensors):
        return tensors
    dt = torch.get_autocast_dtype("cuda")
    return tuple(t.to(dt) if t.dtype == torch.float32 else t for t in tensors)


_CHECKED: dict = {}  # validated argument signatures -> (sm_scale, dropout_p, causal)
_CHECKED_MAX = 4096


def _checked(q, k, v, sm_scale, dropout_p, causal, seed) -> tuple[float, float, bool, int]:
    """_validate, with the shape/stride/dtype part remembered per signature (a dict lookup after the first call)."""
    try:
        key = (q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype, k.dtype, v.dtype,
               q.device, k.device, v.device, type(sm_scale), sm_scale, type(dropout_p), dropout_p, causal)  # fmt: skip
        hit = _CHECKED.get(key)
    except (AttributeError, TypeError):  # not tensors, unhashable: the full check names the problem
        key, hit = None, None
    if hit is None:
        sm_scale, dropout_p, causal, seed = _validate(q, k, v, sm_scale, dropout_p, causal, seed)
        if key is not None:
            if len(_CHECKED) >= _CHECKED_MAX:
                _CHECKED.clear()
            _CHECKED[key] = (sm_scale, dropout_p, causal)
        return sm_scale, dropout_p, causal, seed
    sm_scale, dropout_p, causal = hit
    return sm_scale, dropout_p, causal, _seed(seed, dropout_p, q)


def _seed(seed, dropout_p: float, like: torch.Tensor):
    """The call's seed: an int in [0, 2**31), or a one-element int32 tensor on ``like``'s device, which the
    kernels read at run time (modulo 2**31; an int64 tensor is converted per call, a copy kernel that a CUDA graph
    captures with the call). ``seed=None`` with dropout draws one from torch's CPU generator;
    while a CUDA graph is being captured, on the device from torch's CUDA generator instead, which the graph
    advances on every replay, so each replay drops a new mask (a seed drawn on the host would be baked into the
    graph). Without dropout the seed is checked and ignored (0)."""
    if seed is None:
        if dropout_p <= 0.0:
            return 0
        if like.is_cuda and torch.cuda.is_current_stream_capturing():
            return torch.randint(0, 2**31 - 1, (1,), device=like.device, dtype=torch.int32)
        return int(torch.randint(0, 2**31 - 1, (1,)).item())
    if isinstance(seed, torch.Tensor):
        if seed.numel() != 1 or seed.dtype not in (torch.int32, torch.int64) or seed.device != like.device:
            _fail(
                f"attention: a seed tensor must hold one int32 or int64 element on {like.device}, got shape "
                f"{tuple(seed.shape)}, {seed.dtype} on {seed.device}"
            )
        if dropout_p <= 0.0:
            return 0
        return seed if seed.dtype == torch.int32 else seed.to(torch.int32)  # (int64: wraps, same value mod 2**31)
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        _fail(f"attention: seed must be an int, a one-element integer tensor or None, got {seed!r}")
    return int(seed) % 2**31


def attention_qkv(qkv, num_heads, *, sm_scale=None, dropout_p=0.0, causal=False, seed=None):
    """Self-attention of one packed projection: ``qkv`` (B, N, 3*H*D), as ``[q | k | v]`` along the last dim
    (``nn.MultiheadAttention``'s in_proj output), ``num_heads`` = H; returns (B, N, H*D) in qkv's dtype.

    The same function as ``attention(q, k, v).transpose(1, 2).reshape(B, N, H*D)`` with q, k, v the
    (B, H, N, D) head views of the three chunks, with the same dropout mask for a given seed, but the
    kernels read q, k, v and write dq, dk, dv through strides of the packed tensor: no copies.
    """
    if not isinstance(qkv, torch.Tensor) or qkv.dim() != 3:
        _fail(f"attention_qkv: qkv must be a (B, N, 3*H*D) tensor, got {getattr(qkv, 'shape', type(qkv).__name__)}")
    if isinstance(num_heads, bool) or not isinstance(num_heads, Integral) or num_heads < 1:
        _fail(f"attention_qkv: num_heads must be a positive int, got {num_heads!r}")
    if qkv.shape[-1] % (3 * num_heads):
        _fail(f"attention_qkv: last dim {qkv.shape[-1]} is not divisible by 3 * num_heads = {3 * num_heads}")
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    (qkv,) = _autocast_inputs(qkv)
    key = (qkv.shape, qkv.stride(), qkv.dtype, qkv.device, num_heads, type(sm_scale), sm_scale, type(dropout_p),
           dropout_p, causal)  # fmt: skip
    hit = _CHECKED.get(key)
    if hit is None:  # first call of this signature: the full check on the (B, H, N, D) head views
        sm_scale, dropout_p, causal, seed = _checked(*_unpack_qkv(qkv, num_heads), sm_scale, dropout_p, causal, seed)
        _CHECKED[key] = (sm_scale, dropout_p, causal)
    else:
        sm_scale, dropout_p, causal = hit
        seed = _seed(seed, dropout_p, qkv)
    needs_grad = torch.is_grad_enabled() and qkv.requires_grad
    return FlashAttentionQKVFunction.apply(qkv, num_heads, sm_scale, dropout_p, causal, seed, needs_grad)


def attention(q, k, v, *, sm_scale=None, dropout_p=0.0, causal=False, seed=None):
    """Fused scaled-dot-product attention softmax(q k^T * sm_scale) v with optional dropout and causal mask.

    q: (B, H, Nq, D); k, v: (B, H, Nk, D); returns (B, H, Nq, D) in q's dtype. Differentiable in q, k, v.
    See the module docstring for the exact semantics (fp32 handling, causal alignment, dropout RNG).
    Under CUDA autocast, fp32 inputs are first cast to the autocast dtype (as torch SDPA does).
    """
    q, k, v = _autocast_inputs(q, k, v)
    sm_scale, dropout_p, causal, seed = _checked(q, k, v, sm_scale, dropout_p, causal, seed)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    return FlashAttentionFunction.apply(q, k, v, sm_scale, dropout_p, causal, seed, needs_grad)


def attention_ref(q, k, v, *, sm_scale=None, dropout_p=0.0, causal=False, dropout_mask=None):
    """Reference attention in plain PyTorch (explicit softmax), computed in fp32 (fp64 for fp64 inputs).

    ``dropout_mask`` (bool, broadcastable to (B, H, Nq, Nk)) selects kept probabilities, scaled by
    1/(1-dropout_p); without a mask and with dropout_p > 0, torch's own (different) RNG is used.
    Causal masking is top-left aligned (key j visible to query i iff j <= i). Returns q's dtype.
    """
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = q.to(ct), k.to(ct), v.to(ct)
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(q.shape[-1])
    s = torch.matmul(qf, kf.transpose(-2, -1)) * sm_scale
    if causal:
        nq, nk = s.shape[-2], s.shape[-1]
        visible = torch.ones(nq, nk, dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~visible, float("-inf"))
    s = s - s.amax(dim=-1, keepdim=True)
    p = torch.exp(s)
    p = p / p.sum(dim=-1, keepdim=True)
    if dropout_p > 0.0:
        if dropout_mask is not None:
            p = p * dropout_mask.to(p.device) / (1.0 - dropout_p)
        else:
            p = torch.nn.functional.dropout(p, dropout_p)
    return torch.matmul(p, vf).to(q.dtype)


_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
_U32 = 0xFFFFFFFF


def _mul32(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * m for int64 tensors a < 2**32 and a 32-bit constant m (no overflow)."""
    t1, t2 = a * (m & 0xFFFF), a * (m >> 16)  # each < 2**48
    return (t2 + (t1 >> 16)) >> 16, ((t2 << 16) + t1) & _U32  # the << wraps mod 2**64: low 32 bits exact


def _philox_ref(c0, c1, c2, c3, k0, k1, rounds: int = _PHILOX_ROUNDS):
    """Philox-4x32 (Salmon et al. 2011) on int64 tensors holding uint32 values: triton's tl.philox."""
    for _ in range(rounds):
        hi_b, lo_b = _mul32(c2, _PHILOX_ROUND_B)
        hi_a, lo_a = _mul32(c0, _PHILOX_ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _PHILOX_KEY_A) & _U32, (k1 + _PHILOX_KEY_B) & _U32
    return c0, c1, c2, c3


def dropout_mask_ref(seed: int, B: int, H: int, Nq: int, Nk: int, p: float, device=None) -> torch.Tensor:
    """``dropout_mask`` in plain PyTorch (int64 Philox on ``device``, default CPU): the kernels' keep-mask.

    Element (b, h, i, j) with i = 16*a + 8*hh + l and j = 32*c + 16*x1 + 8*x0 + 2*t + d is kept iff byte
    x1 + 2*x0 of word hh + 2*d of Philox-4x32-7(key = (seed mod 2**31, b*H + h), counter = (4*c + t,
    8*a + l, 0, 0)) is >= round(256 p).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    i = torch.arange(Nq, device=device)
    j = torch.arange(Nk, device=device)
    row_group = (i // 16 * 8 + i % 8)[:, None]  # (Nq, 1)
    col_group = (j // 32 * 4 + (j // 2) % 4)[None, :]  # (1, Nk)
    word = ((i // 8) % 2)[:, None] + 2 * (j % 2)[None, :]  # (Nq, Nk)
    shift = (8 * ((j // 16) % 2 + 2 * ((j // 8) % 2)))[None, :]  # (1, Nk)
    bh = torch.arange(B * H, device=device).view(B * H, 1, 1)  # (BH, 1, 1)
    c0 = col_group.expand(Nq, Nk)[None].expand(B * H, Nq, Nk)
    c1 = row_group.expand(Nq, Nk)[None].expand(B * H, Nq, Nk)
    zero = torch.zeros_like(c0)
    k0 = torch.full_like(c0, int(seed) % 2**31)
    r = torch.stack(_philox_ref(c0, c1, zero, zero, k0, bh.expand_as(c0)), dim=-1)  # (BH, Nq, Nk, 4)
    byte = (r.gather(-1, word[None, :, :, None].expand(B * H, Nq, Nk, 1)).squeeze(-1) >> shift) & 255
    return (byte >= _drop_thresh(float(p))).view(B, H, Nq, Nk)


def dropout_mask(seed: int, B: int, H: int, Nq: int, Nk: int, p: float, device=None) -> torch.Tensor:
    """The keep-mask (bool, (B, H, Nq, Nk)) that ``attention(..., dropout_p=p, seed=seed)`` applies.

    Generated by a small Triton kernel through the same RNG code path (``_dropout_bytes``) as the attention
    kernels. Its drop rate is ``effective_dropout_p(p)`` = round(256 p) / 256.
    """
    device = torch.device(device) if device is not None else torch.device("cuda" if not _INTERPRET else "cpu")
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        _fail(f"dropout_mask: seed must be an int, got {seed!r}")
    if isinstance(p, bool) or not isinstance(p, Real) or not (0.0 <= float(p) < 1.0):
        _fail(f"dropout_mask: p must be a number in [0, 1), got {p!r}")
    if min(B, H, Nq, Nk) <= 0 or B * H > _MAX_GRID_Y:
        _fail(f"dropout_mask: unsupported sizes B={B}, H={H}, Nq={Nq}, Nk={Nk}")
    if device.type == "cpu" and not _INTERPRET:
        _fail("dropout_mask: needs a CUDA GPU, or TRITON_INTERPRET=1 for the CPU interpreter")
    out = torch.empty((B, H, Nq, Nk), dtype=torch.int8, device=device)
    bm, bn = _MASK_BLOCK
    grid = (_cdiv(Nq, bm), _cdiv(Nk, bn), B * H)
    with _device_ctx(out):
        _dropout_mask_kernel[grid](
            out, int(seed) % 2**31, _drop_thresh(float(p)), Nq, Nk, N_ROUNDS=_PHILOX_ROUNDS, BLOCK_M=bm, BLOCK_N=bn,
        )  # fmt: skip
    return out.bool()
