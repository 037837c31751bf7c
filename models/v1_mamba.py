"""V1: MambaDiffusion — sparse-field flow matching with a Mamba (state-space, O(N)) encoder.

tokens (inputs then queries, row-major) → num_layers residual pre-norm Mamba blocks → final LayerNorm
→ split → queries cross-attend to inputs → linear decoder. The mixer is mamba_ssm's fused CUDA Mamba, the
fused C++ CPU scan (cpu_fused) or the pure-PyTorch reference (models/mamba.py); all share parameter names, so
checkpoints move freely (and the Mamba-2 pair mamba2 / mamba2_ref, whose parameters are Mamba-2's). `pad_multiple`
pads the token sequence at its end before the blocks and drops the padded outputs (a causal scan: the real tokens'
outputs do not change), for mamba_ssm's length pathology (models/mamba.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.common import SparseFieldModel, build_config, validate_common
from models.mamba import PaddedMixer, check_pad_multiple, make_mixer, padded_length, resolve_mixer_backend


@dataclass(frozen=True)
class V1Config:
    d_model: int = 256  # token width, all layers
    num_layers: int = 6  # Mamba blocks in the encoder
    d_state: int = 16  # SSM state size per channel (N in the Mamba paper)
    d_conv: int = 4  # width of the causal depthwise convolution
    expand: int = 2  # d_inner = expand · d_model
    num_heads: int = 8  # heads of the query → input cross-attention
    dropout: float = 0.0  # cross-attention dropout (the Mamba blocks have none)
    num_fourier: int = 128  # random Fourier frequencies per coordinate embedding (features = 2×)
    fourier_scale: float = 4.0  # std of the Fourier frequencies, cycles per unit of [0, 1] (32² Nyquist: 16)
    prediction: str = "x1"  # what the decoder outputs: x1 (clean values; v = (x̂1 − x_t)/(1 − t)) | velocity
    value_channels: int = 3  # channels of the field (RGB)
    mixer_backend: str = "auto"  # auto | mamba_ssm (CUDA) | cpu_fused (C++ CPU scan) | reference | mamba2 | mamba2_ref
    attn_backend: str = "sdpa"  # cross-attention core: seed | sdpa | triton | flex
    pad_multiple: str = "auto"  # pad tokens to a multiple of k: auto (2048 on mamba_ssm past 1024 tokens) | off | k

    def validate(self) -> None:
        validate_common(self)
        resolve_mixer_backend(self.mixer_backend)
        check_pad_multiple(self.pad_multiple)


PRESETS = {
    "default": {},  # the spec: d_model 256, 6 layers, d_state 16, ~3.3M parameters
    "small": {"d_model": 128, "num_layers": 4},
    "tiny": {"d_model": 32, "num_layers": 2, "num_heads": 2, "num_fourier": 16},  # tests
}


def v1_config(preset: str = "default", overrides: dict | None = None, env=None) -> V1Config:
    return build_config(V1Config, PRESETS, preset, overrides, env)


class MambaBlock(nn.Module):
    """x + Mamba(LayerNorm(x))."""

    def __init__(self, cfg: V1Config, backend: str):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model)
        self.mixer = make_mixer(backend, cfg.d_model, cfg.d_state, cfg.d_conv, cfg.expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D)
        return x + self.mixer(self.norm(x))


class MambaDiffusion(SparseFieldModel):
    name = "mamba"
    version = "v1"
    encoder_prefixes = ("layers.", "norm_f.")  # parameters of encode()

    def __init__(self, cfg: V1Config | None = None):
        cfg = cfg or V1Config()
        cfg.validate()
        super().__init__(cfg)
        self.mixer_backend = resolve_mixer_backend(cfg.mixer_backend)
        self.layers = nn.ModuleList(MambaBlock(cfg, self.mixer_backend) for _ in range(cfg.num_layers))
        self.norm_f = nn.LayerNorm(cfg.d_model)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        n = seq.shape[1]
        length = padded_length(n, self.cfg.pad_multiple, self.mixer_backend)
        if length != n:  # zeros at the end of the scan order; the causal blocks never read them for token < n
            seq = F.pad(seq, (0, 0, 0, length - n))  # (B, length, D)
        for layer in self.layers:
            seq = layer(seq)
        return self.norm_f(seq[:, :n])  # (B, N, D)

    def layer0_mixer(self) -> nn.Module:
        """Layer 0's sequence mixer, (B, N, D) -> (B, N, D), padded as encode() pads."""
        return PaddedMixer(self.layers[0].mixer, self.cfg.pad_multiple, self.mixer_backend)

    def encoder_named_parameters(self):
        """(name, parameter) of the encoder: what encode() trains."""
        return [(n, p) for n, p in self.named_parameters() if n.startswith(self.encoder_prefixes)]

    @classmethod
    def layer_bytes(cls, cfg, n_tokens, train, device_type) -> int:
        # ~(2·d_state + 8) (N, d_inner) fp32 tensors per block: projections, conv, Δ/B/C and the scan's saved
        # chunk states (CPU peak RSS of the reference scan, default preset: this is ~20% over).
        return n_tokens * cfg.expand * cfg.d_model * (2 * cfg.d_state + 8) * 4
