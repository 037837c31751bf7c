"""Mamba-2 (Dao & Gu 2024, "Transformers are SSMs": state-space duality, SSD) in pure PyTorch.

`Mamba2Ref` has `mamba_ssm.Mamba2`'s parameters, names, shapes and init (in_proj, conv1d, dt_bias, A_log, D,
norm.weight, out_proj; ngroups 1, no bias, gated RMSNorm after the scan), so one state_dict loads into either.
Per head h the SSM is a scalar-decay recurrence on a (headdim × d_state) state:

    H_t = exp(Δ_t A_h) H_{t-1} + Δ_t x_t ⊗ B_t,    y_t = H_t C_t + D_h x_t

`ssd_naive` runs it one step at a time (the tests' ground truth). `ssd_ref` is the chunked SSD form: inside a
chunk of T steps the output is a masked (T × T) "attention" (C_t·B_s)·exp(Σ_{s<r≤t} Δ_r A) — the quadratic
dual — and across chunks only the (headdim × d_state) states are carried, sequentially over L/T chunks.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MAMBA2_CHUNK = 256  # SSD chunk length T of both Mamba-2 backends (mamba_ssm.Mamba2's default; bench.flops uses it)


def ssd_naive(x, dt, A, B, C):
    """Sequential SSD. x (b, l, h, p); dt (b, l, h) after softplus; A (h,); B, C (b, l, g, n) → y (b, l, h, p)."""
    b, l, h, p = x.shape
    rep = h // B.shape[2]
    B, C = B.repeat_interleave(rep, dim=2).float(), C.repeat_interleave(rep, dim=2).float()  # (b, l, h, n)
    x, dt, A = x.float(), dt.float(), A.float()
    state = x.new_zeros(b, h, p, B.shape[-1])  # (b, h, p, n)
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]  # (b, h, 1, 1)
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append((state * C[:, t, :, None, :]).sum(-1))  # (b, h, p)
    return torch.stack(ys, dim=1)  # (b, l, h, p)


def ssd_ref(x, dt, A, B, C, chunk_size: int = MAMBA2_CHUNK):
    """Chunked SSD, same signature and result as `ssd_naive` (fp32). As mamba_ssm's kernels do, C·B is formed once
    per group (not per head) and every product is a two-operand einsum (a GEMM: what bench.flops counts)."""
    b, l, h, p = x.shape
    g = B.shape[2]
    rep = h // g
    B, C = B.float(), C.float()  # (b, l, g, n)
    x, dt, A = x.float(), dt.float(), A.float()
    T = chunk_size
    pad = (-l) % T  # Δ = 0 on the padding: decay 1, no input, so the carried state passes through unchanged
    if pad:
        x, B, C = (F.pad(v, (0, 0, 0, 0, 0, pad)) for v in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    c, n = (l + pad) // T, B.shape[-1]
    x = x.view(b, c, T, h, p)  # (b, c, T, h, p)
    B, C = B.view(b, c, T, g, n), C.view(b, c, T, g, n)  # (b, c, T, g, n)
    dt = dt.view(b, c, T, h)  # (b, c, T, h)
    S = torch.cumsum(dt * A, dim=2)  # (b, c, T, h) log-decay accumulated from the chunk start
    # intra-chunk (the quadratic dual): y_t = Σ_{s≤t} (C_t·B_s) exp(S_t − S_s) Δ_s x_s
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (t, s)
    seg = (S[:, :, :, None] - S[:, :, None, :]).masked_fill(~causal[:, :, None], float("-inf"))  # (b, c, t, s, h)
    cb = torch.einsum("bctgn,bcsgn->bctsg", C, B).repeat_interleave(rep, dim=-1)  # (b, c, t, s, h)
    y = torch.einsum("bctsh,bcshp->bcthp", cb * torch.exp(seg), dt[..., None] * x)  # (b, c, T, h, p)
    # each chunk's end state from a zero start: Σ_s exp(S_T − S_s) Δ_s x_s ⊗ B_s
    wx = (torch.exp(S[:, :, -1:] - S) * dt)[..., None] * x  # (b, c, T, h, p)
    Bh = B.repeat_interleave(rep, dim=3)  # (b, c, T, h, n)
    chunk_states = torch.einsum("bcshp,bcshn->bchpn", wx, Bh)  # (b, c, h, p, n)
    # carry the states across chunks (sequential over c = L/T chunks)
    chunk_decay = torch.exp(S[:, :, -1])  # (b, c, h)
    state = x.new_zeros(b, h, p, n)
    starts = []
    for i in range(c):
        starts.append(state)
        state = chunk_decay[:, i, :, None, None] * state + chunk_states[:, i]
    starts = torch.stack(starts, dim=1)  # (b, c, h, p, n) state entering each chunk
    Ch = C.repeat_interleave(rep, dim=3)  # (b, c, T, h, n)
    y = y + torch.einsum("bcthn,bchpn->bcthp", Ch, starts) * torch.exp(S)[..., None]  # (b, c, T, h, p)
    return y.reshape(b, c * T, h, p)[:, :l]  # (b, l, h, p)


class GatedRMSNorm(nn.Module):
    """mamba_ssm's RMSNormGated with norm_before_gate=False: RMSNorm(y · SiLU(z)) · weight."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = y.float() * F.silu(z.float())
        return y * torch.rsqrt(y.square().mean(-1, keepdim=True) + self.eps) * self.weight.float()


class Mamba2Ref(nn.Module):
    """Pure-PyTorch Mamba-2 mixer with mamba_ssm.Mamba2's parameters and init. (B, L, D) -> (B, L, D)."""

    def __init__(self, d_model, d_state=64, d_conv=4, expand=2, headdim=64, A_init_range=(1, 16),
                 dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4, chunk_size=MAMBA2_CHUNK):  # fmt: skip
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.headdim = d_model, d_state, d_conv, headdim
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            raise ValueError(f"d_inner={self.d_inner} is not divisible by headdim={headdim}")
        self.nheads = self.d_inner // headdim
        self.chunk_size = chunk_size
        # in_proj's output order, as mamba_ssm's: [z, x, B, C, dt]
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * d_state + self.nheads, bias=False)
        conv_dim = self.d_inner + 2 * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1, bias=True)
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = GatedRMSNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        Bsz, L, _ = u.shape
        h, p, n = self.nheads, self.headdim, self.d_state
        zxbcdt = self.in_proj(u)  # (B, L, 2·d_inner + 2n + h)
        z, xBC, dt = zxbcdt.split([self.d_inner, self.d_inner + 2 * n, h], dim=-1)
        w, bias = self.conv1d.weight, self.conv1d.bias  # causal depthwise: left-padded, exactly L outputs
        xBC = F.conv1d(F.pad(xBC.transpose(1, 2), (self.d_conv - 1, 0)), w, bias, groups=w.shape[0])
        xBC = F.silu(xBC).transpose(1, 2)  # (B, L, d_inner + 2n)
        x, Bm, Cm = xBC.split([self.d_inner, n, n], dim=-1)
        with torch.autocast(u.device.type, enabled=False):
            dt = F.softplus(dt.float() + self.dt_bias.float())  # (B, L, h)
            A = -torch.exp(self.A_log.float())  # (h,)
            xh = x.float().reshape(Bsz, L, h, p)  # (B, L, h, p)
            y = ssd_ref(xh, dt, A, Bm[:, :, None], Cm[:, :, None], self.chunk_size)  # (B, L, h, p), ngroups 1
            y = y + xh * self.D.float()[:, None]  # skip
            y = self.norm(y.reshape(Bsz, L, self.d_inner), z)  # (B, L, d_inner)
        return self.out_proj(y.to(u.dtype))  # (B, L, D)
