"""V3: MortonMambaDiffusion — V1 with its tokens in Morton (Z-order) order of their coordinates.

A Mamba scan reads tokens one after another, so the order decides which pixels are neighbours in the scan.
Row-major order (V1) puts a pixel's vertical neighbours a whole row apart; a space-filling curve keeps 2-D
neighbourhoods close in 1-D. V3 sorts the input tokens by their coordinates' curve index and the query tokens
likewise (the sequence stays [inputs ; queries]), runs V1's shell and encoder unchanged, and puts the query
outputs back in the caller's order. The permutation is computed from the coordinates themselves (quantised to
16 bits per axis), so it works at any resolution and for zero-shot super-resolution, and for any point set.

Everything else is V1: the same parameters (a V1 checkpoint loads into V3 and back), the same cost (two
argsorts and gathers per call). The shell around the encoder is permutation-equivariant over the queries and
invariant over the inputs (set cross-attention), so sorting the raw points equals sorting the tokens.

Orders (`ordering`): morton (Z-order: interleaved coordinate bits, as octree/Z-order point-cloud Mambas such
as Point Mamba (Liu et al. 2024) serialise points), hilbert (the Hilbert curve, as PointMamba (Liang et al.
2024) does, whose consecutive cells are always adjacent: an ablation), identity (V1's order: V3 == V1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.common import ConfigError, build_config
from models.v1_mamba import PRESETS, MambaDiffusion, V1Config

ORDERINGS = ("morton", "hilbert", "identity")
ORDER_BITS = 16  # quantisation of each coordinate: distinct curve cells for grids up to 65,536²


@dataclass(frozen=True)
class V3Config(V1Config):
    ordering: str = "morton"  # token order within inputs and within queries: morton | hilbert | identity (= V1)

    def validate(self) -> None:
        super().validate()
        if self.ordering not in ORDERINGS:
            raise ConfigError(f"unknown ordering {self.ordering!r}; choose one of {', '.join(ORDERINGS)}")


def v3_config(preset: str = "default", overrides: dict | None = None, env=None) -> V3Config:
    return build_config(V3Config, PRESETS, preset, overrides, env)


def quantize(coords: torch.Tensor, bits: int = ORDER_BITS) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 2) coordinates (x, y) in [0, 1] → integer cells (qx, qy) in [0, 2^bits), int64 each."""
    q = (coords.float().clamp(0, 1) * (1 << bits)).long().clamp_max((1 << bits) - 1)  # (..., 2)
    return q[..., 0], q[..., 1]


def _spread_bits(v: torch.Tensor) -> torch.Tensor:
    """16-bit integers → their bits at the even positions of a 32-bit integer."""
    v = (v | (v << 8)) & 0x00FF00FF
    v = (v | (v << 4)) & 0x0F0F0F0F
    v = (v | (v << 2)) & 0x33333333
    return (v | (v << 1)) & 0x55555555


def morton_key(qx: torch.Tensor, qy: torch.Tensor) -> torch.Tensor:
    """Z-order index: bits of x and y interleaved, x in the low bit of each pair."""
    return _spread_bits(qx) | (_spread_bits(qy) << 1)


def hilbert_key(qx: torch.Tensor, qy: torch.Tensor, bits: int = ORDER_BITS) -> torch.Tensor:
    """Hilbert-curve index of integer cells (the classic xy → d conversion, vectorised over points)."""
    x, y, d = qx.clone(), qy.clone(), torch.zeros_like(qx)
    full = (1 << bits) - 1
    s = 1 << (bits - 1)
    while s > 0:
        rx, ry = (x & s) > 0, (y & s) > 0
        d += s * s * ((3 * rx.long()) ^ ry.long())
        flip = ~ry & rx  # rotate the quadrant so the sub-curve starts where the last one ended
        x, y = torch.where(flip, full - x, x), torch.where(flip, full - y, y)
        x, y = torch.where(~ry, y, x), torch.where(~ry, x, y)
        s >>= 1
    return d


def token_order(coords: torch.Tensor, ordering: str) -> torch.Tensor | None:
    """(B, N, 2) coordinates → (B, N) permutation that sorts each row by its curve index (None: identity).

    Ties (repeated coordinates) keep their original order (stable sort), so the permutation is a bijection.
    """
    if ordering == "identity":
        return None
    qx, qy = quantize(coords)
    key = morton_key(qx, qy) if ordering == "morton" else hilbert_key(qx, qy)  # (B, N)
    return torch.argsort(key, dim=1, stable=True)


def permute(x: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """x (B, N, C) in the order `order` (B, N): out[:, i] = x[:, order[:, i]]."""
    if order is None:
        return x
    return x.gather(1, order[..., None].expand(-1, -1, x.shape[-1]))  # (B, N, C)


def unpermute(x: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """The inverse of `permute`: out[:, order[:, i]] = x[:, i]."""
    if order is None:
        return x
    return torch.empty_like(x).scatter(1, order[..., None].expand(-1, -1, x.shape[-1]), x)  # (B, N, C)


class MortonMambaDiffusion(MambaDiffusion):
    name = "mamba_v3"
    version = "v3"
    loads_checkpoints_of = ("mamba", "mamba_v3")  # V1's parameters are V3's

    def __init__(self, cfg: V3Config | None = None):
        super().__init__(cfg or V3Config())

    def head(self, noisy_values, query_coords, t, input_coords, input_values) -> torch.Tensor:
        order_in = token_order(input_coords, self.cfg.ordering)  # (B, Nin)
        order_q = token_order(query_coords, self.cfg.ordering)  # (B, Nq)
        out = super().head(
            permute(noisy_values, order_q),
            permute(query_coords, order_q),
            t,
            permute(input_coords, order_in),
            permute(input_values, order_in),
        )  # (B, Nq, C) in curve order
        return unpermute(out, order_q)  # (B, Nq, C) in the caller's order
