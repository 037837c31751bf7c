"""V2: BiMambaPerceiverDiffusion — bidirectional Mamba blocks and a Perceiver IO latent bottleneck.

tokens (inputs then queries, row-major) → num_layers bidirectional blocks → final LayerNorm
→ a learned latent array cross-attends to all encoded tokens (+ MLP) → the queries read the field from the
latents (the shell's query cross-attention, with the latents as keys) → linear decoder.

Bidirectional blocks as in Vision Mamba (Vim, Zhu et al. 2024): each block runs one Mamba mixer over the
tokens in order and a second one over them reversed, and averages the two directions (Vim's `if_devide_out`):
    x = x + ½ (Mamba_f(LN x) + flip(Mamba_b(flip(LN x)))).
Each token thus sees the whole sequence, where V1's causal scan lets early tokens see nothing after them.
Vim shares one in/out projection between its directions inside a fused kernel; here each direction is a whole
mixer from `make_mixer`, so V2 runs on every mixer backend (mamba_ssm, reference, mamba2, ...). To keep V2 at
the spec's ~5M parameters each direction has expand 1: the two together have V1's inner width (2·d_model).
Default: d_model 256, 8 blocks, 256 latents → 4.89M parameters (4,891,651).

The Perceiver IO bottleneck (Jaegle et al. 2021): M latents read the N tokens once (O(N·M)), so the decoder's
queries attend to M latents instead of N_in encoded inputs.

Padding (`pad_multiple`): each direction pads at the END of its own scan order — the backward scan's padding
goes before the first token in the forward order — since padding it at the far end would be read first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from models.common import Attention, ConfigError, SparseFieldModel, build_config, validate_common
from models.mamba import check_pad_multiple, make_mixer, padded_length, resolve_mixer_backend, scan_padded


@dataclass(frozen=True)
class V2Config:
    d_model: int = 256  # token width, all layers
    num_layers: int = 8  # bidirectional Mamba blocks in the encoder (the spec: 8)
    d_state: int = 16  # SSM state size per channel (Mamba-1; Mamba-2 backends use 64)
    d_conv: int = 4  # width of the causal depthwise convolution
    expand: int = 1  # d_inner = expand · d_model, per direction (two directions: V1's total width)
    num_latents: int = 256  # Perceiver latent array length M
    latent_mlp_ratio: int = 4  # hidden width of the latent MLP, × d_model
    num_heads: int = 8  # heads of the latent and query cross-attentions
    dropout: float = 0.0  # cross-attention dropout (the Mamba blocks have none)
    num_fourier: int = 128  # random Fourier frequencies per coordinate embedding (features = 2×)
    fourier_scale: float = 4.0  # std of the Fourier frequencies, cycles per unit of [0, 1] (32² Nyquist: 16)
    prediction: str = "x1"  # what the decoder outputs: x1 (clean values; v = (x̂1 − x_t)/(1 − t)) | velocity
    value_channels: int = 3  # channels of the field (RGB)
    mixer_backend: str = "auto"  # auto | mamba_ssm (fused CUDA) | reference (pure PyTorch) | mamba2 | mamba2_ref
    attn_backend: str = "sdpa"  # cross-attention core: seed | sdpa | triton
    pad_multiple: str = "auto"  # pad each scan to a multiple of k: auto (2048 on mamba_ssm past 1024) | off | k

    def validate(self) -> None:
        validate_common(self)
        resolve_mixer_backend(self.mixer_backend)
        check_pad_multiple(self.pad_multiple)
        if self.num_latents <= 0 or self.latent_mlp_ratio <= 0 or self.expand <= 0:
            raise ConfigError("num_latents, latent_mlp_ratio and expand must be positive")


PRESETS = {
    "default": {},  # d_model 256, 8 bidirectional blocks, 256 latents, 4.89M parameters
    "small": {"d_model": 128, "num_layers": 4, "num_latents": 128},
    "tiny": {"d_model": 32, "num_layers": 2, "num_heads": 2, "num_fourier": 16, "num_latents": 8},  # tests
}


def v2_config(preset: str = "default", overrides: dict | None = None, env=None) -> V2Config:
    return build_config(V2Config, PRESETS, preset, overrides, env)


class BidirectionalMixer(nn.Module):
    """½ (forward scan + reversed backward scan), each padded at the end of its own order. (B, N, D) → (B, N, D)."""

    def __init__(self, cfg: V2Config, backend: str):
        super().__init__()
        self.backend, self.pad_multiple = backend, cfg.pad_multiple
        self.forward_mixer = make_mixer(backend, cfg.d_model, cfg.d_state, cfg.d_conv, cfg.expand)
        self.backward_mixer = make_mixer(backend, cfg.d_model, cfg.d_state, cfg.d_conv, cfg.expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D)
        length = padded_length(x.shape[1], self.pad_multiple, self.backend)
        fwd = scan_padded(self.forward_mixer, x, length)  # (B, N, D)
        bwd = scan_padded(self.backward_mixer, x.flip(1), length).flip(1)  # (B, N, D), token order again
        return 0.5 * (fwd + bwd)


class BidirectionalBlock(nn.Module):
    """x + BidirectionalMixer(LayerNorm(x))."""

    def __init__(self, cfg: V2Config, backend: str):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model)
        self.mixer = BidirectionalMixer(cfg, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D)
        return x + self.mixer(self.norm(x))


class LatentBottleneck(nn.Module):
    """Perceiver IO encode step: M learned latents cross-attend to the N tokens, then an MLP. (B, N, D) → (B, M, D)."""

    def __init__(self, cfg: V2Config):
        super().__init__()
        d = cfg.d_model
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, d) * 0.02)  # (M, D)
        self.norm_latents = nn.LayerNorm(d)
        self.norm_tokens = nn.LayerNorm(d)
        self.cross_attn = Attention(d, cfg.num_heads, dropout=cfg.dropout, backend=cfg.attn_backend)
        self.norm_mlp = nn.LayerNorm(d)
        hidden = cfg.latent_mlp_ratio * d
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # (B, M, D): a copy, not an expand — under no_grad an expanded parameter is a grad-requiring leaf view,
        # which torch.utils.flop_counter's module tracker cannot hook
        lat = self.latents.repeat(tokens.shape[0], 1, 1)
        kv = self.norm_tokens(tokens)  # (B, N, D)
        lat = lat + self.cross_attn(self.norm_latents(lat), kv, kv)  # (B, M, D)
        return lat + self.mlp(self.norm_mlp(lat))  # (B, M, D)


class BiMambaPerceiverDiffusion(SparseFieldModel):
    name = "mamba_v2"
    version = "v2"
    encoder_prefixes = ("layers.", "norm_f.")  # parameters of encode() (the bottleneck is the decoder's)

    def __init__(self, cfg: V2Config | None = None):
        cfg = cfg or V2Config()
        cfg.validate()
        super().__init__(cfg)
        self.mixer_backend = resolve_mixer_backend(cfg.mixer_backend)
        self.layers = nn.ModuleList(BidirectionalBlock(cfg, self.mixer_backend) for _ in range(cfg.num_layers))
        self.norm_f = nn.LayerNorm(cfg.d_model)
        self.bottleneck = LatentBottleneck(cfg)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        for layer in self.layers:
            seq = layer(seq)
        return self.norm_f(seq)

    def head(self, noisy_values, query_coords, t, input_coords, input_values) -> torch.Tensor:
        """The shell's head, with the queries reading the latents instead of the encoded inputs. (B, Nq, C)."""
        seq, n_in = self.encode_tokens(noisy_values, query_coords, t, input_coords, input_values)
        query_seq = seq[:, n_in:]  # (B, Nq, D)
        latents = self.bottleneck(seq)  # (B, M, D)
        out = self.query_cross_attn(query_seq, latents, latents)  # (B, Nq, D)
        return self.decoder(self.cross_norm(query_seq + out))  # (B, Nq, C)

    def layer0_mixer(self) -> nn.Module:
        """Layer 0's sequence mixer (both directions, padded), (B, N, D) -> (B, N, D)."""
        return self.layers[0].mixer

    def encoder_named_parameters(self):
        """(name, parameter) of the encoder: what encode() trains."""
        return [(n, p) for n, p in self.named_parameters() if n.startswith(self.encoder_prefixes)]
