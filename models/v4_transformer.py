"""V4: TransformerDiffusion — the spec's Transformer baseline (self-attention, O(N²)).

tokens (inputs then queries, row-major) → sinusoidal positional encoding → num_layers post-norm
Transformer encoder layers (8 heads, FFN 1024 with GELU, dropout 0.1) → split → queries cross-attend
to inputs → linear decoder. Exactly the spec, except that the positional encoding works at any length.

Ablation `pos_encoding="none"`: no sequence-index encoding (the input dropout stays). The tokens already
carry Fourier features of their coordinates, so this asks whether the index encoding — which puts every token
of a denser zero-shot grid at an index it never saw in training — is why V4 falls behind in super-resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from models.common import (
    Attention,
    ConfigError,
    PositionalEncoding,
    SelfAttention,
    SparseFieldModel,
    build_config,
    validate_common,
)

POS_ENCODINGS = ("index", "none")


@dataclass(frozen=True)
class V4Config:
    d_model: int = 256  # token width, all layers
    num_layers: int = 6  # Transformer encoder layers
    num_heads: int = 8  # attention heads (self- and cross-attention); head dim = d_model / num_heads
    dim_feedforward: int = 1024  # FFN hidden width (4× d_model)
    dropout: float = 0.1  # attention-weight, FFN and positional-encoding dropout
    num_fourier: int = 128  # random Fourier frequencies per coordinate embedding (features = 2×)
    fourier_scale: float = 4.0  # std of the Fourier frequencies, cycles per unit of [0, 1] (32² Nyquist: 16)
    prediction: str = "x1"  # what the decoder outputs: x1 (clean values; v = (x̂1 − x_t)/(1 − t)) | velocity
    value_channels: int = 3  # channels of the field (RGB)
    attn_backend: str = "sdpa"  # seed (nn.MultiheadAttention, weights materialised) | sdpa | triton | flex
    pos_encoding: str = "index"  # index (sinusoid of the sequence position, the spec) | none (coordinates only)

    def validate(self) -> None:
        validate_common(self)
        if self.pos_encoding not in POS_ENCODINGS:
            raise ConfigError(f"unknown pos_encoding {self.pos_encoding!r}; choose one of {', '.join(POS_ENCODINGS)}")


PRESETS = {
    "default": {},  # the spec: d_model 256, 6 layers, 8 heads, FFN 1024, ~5.0M parameters
    "small": {"d_model": 128, "num_layers": 4, "dim_feedforward": 512},
    "tiny": {"d_model": 32, "num_layers": 2, "num_heads": 2, "dim_feedforward": 64, "num_fourier": 16},
}


def v4_config(preset: str = "default", overrides: dict | None = None, env=None) -> V4Config:
    return build_config(V4Config, PRESETS, preset, overrides, env)


class TransformerEncoderLayer(nn.Module):
    """The spec's post-norm layer: x = LN(x + SelfAttn(x)); x = LN(x + FFN(x))."""

    def __init__(self, d_model, num_heads=8, dim_feedforward=1024, dropout=0.1, attn_backend="sdpa"):
        super().__init__()
        self.self_attn = Attention(d_model, num_heads, dropout=dropout, backend=attn_backend)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, dim_feedforward),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(dim_feedforward, d_model),
            nn.Dropout(dropout),
        )
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D)
        x = self.norm1(x + self.self_attn(x, x, x))
        return self.norm2(x + self.ffn(x))


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: V4Config):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(cfg.d_model, cfg.num_heads, cfg.dim_feedforward, cfg.dropout, cfg.attn_backend)
            for _ in range(cfg.num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class TransformerDiffusion(SparseFieldModel):
    name = "transformer_v4"
    version = "v4"
    encoder_prefixes = ("transformer_encoder.", "pos_encoder.")  # parameters of encode()

    def __init__(self, cfg: V4Config | None = None):
        cfg = cfg or V4Config()
        cfg.validate()
        super().__init__(cfg)
        if cfg.pos_encoding == "index":
            self.pos_encoder = PositionalEncoding(cfg.d_model, dropout=cfg.dropout)
        else:  # "none": the input dropout only (no parameters either way, so checkpoints cross)
            self.pos_encoder = nn.Dropout(cfg.dropout)
        self.transformer_encoder = TransformerEncoder(cfg)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        return self.transformer_encoder(self.pos_encoder(seq))

    def layer0_mixer(self) -> nn.Module:
        """Layer 0's sequence mixer, its self-attention, as (B, N, D) -> (B, N, D)."""
        return SelfAttention(self.transformer_encoder.layers[0].self_attn)

    def encoder_named_parameters(self):
        """(name, parameter) of the encoder: what encode() trains."""
        return [(n, p) for n, p in self.named_parameters() if n.startswith(self.encoder_prefixes)]

    @classmethod
    def memory_bytes(cls, cfg, n_tokens, batch, train=True, device_type="cpu") -> int:
        out = super().memory_bytes(cfg, n_tokens, batch, train, device_type)
        if cfg.attn_backend == "seed" and not train:  # nn.MultiheadAttention materialises (H, N, N) weights
            out += batch * cfg.num_heads * n_tokens**2 * 8
        return out

    @classmethod
    def layer_bytes(cls, cfg, n_tokens, train, device_type) -> int:
        # Linear part: ~18 (N, D) and 3 (N, FFN) fp32 tensors saved per layer (CPU peak RSS, default preset).
        linear = n_tokens * (18 * cfg.d_model + 3 * cfg.dim_feedforward) * 4
        # The (H, N, N) attention weights (+ dropout mask, softmax grad) are kept when they are materialised:
        # the seed backend, or SDPA with dropout on CPU (its flash kernel has no dropout); ~12 bytes / element.
        dense = cfg.attn_backend == "seed" or (device_type == "cpu" and cfg.dropout > 0)
        return linear + (cfg.num_heads * n_tokens**2 * 12 if dense else 0)
