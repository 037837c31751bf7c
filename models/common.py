"""Parts shared by V1 (Mamba) and V4 (Transformer).

Both models read a sparse field the same way:

    input pixels  (coords, values)  ─┐
                                     ├─ Fourier features + value → tokens (+ time embedding)
    query pixels  (coords, x_t)     ─┘
    tokens = [inputs ; queries]  (row-major within each part)
          → encoder (V1: Mamba blocks, V4: positional encoding + Transformer layers)
          → split → queries cross-attend to inputs → linear decoder → x̂1 (or velocity) at the queries

Only the encoder differs; everything here is common, so any difference measured between the models
is the encoder's.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTN_BACKENDS = ("seed", "sdpa", "triton", "flex")
PREDICTIONS = ("x1", "velocity")
T_GAP_MIN = 1e-3  # x1-prediction: v = (x̂1 − x_t) / max(1 − t, T_GAP_MIN); samplers never evaluate t = 1


class ConfigError(ValueError):
    """Bad user input (config, CLI, data, checkpoint). CLIs print its message on one line and exit 2."""


# ----------------------------------------------------------------------------------------------
# Coordinates, time and position
# ----------------------------------------------------------------------------------------------


class FourierFeatures(nn.Module):
    """Random Fourier features of 2-D coordinates in [0, 1]² (Tancik et al. 2020): [sin 2πxB, cos 2πxB].

    B is a fixed Gaussian matrix (a buffer, saved in checkpoints) drawn from its own seed, so two models
    built with the same config see the same features whatever the global RNG state.
    """

    def __init__(self, in_dim: int = 2, num_features: int = 128, scale: float = 10.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("B", torch.randn(in_dim, num_features, generator=g) * scale)
        self.out_dim = 2 * num_features

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        proj = 2 * math.pi * coords.float() @ self.B  # (B, N, F)
        return torch.cat([proj.sin(), proj.cos()], dim=-1)  # (B, N, 2F)


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoids of (any) real positions: (...,) -> (..., dim), fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device) / half)
    angles = positions.float()[..., None] * freqs  # (..., half)
    out = torch.zeros(*positions.shape, dim, device=positions.device)
    out[..., 0 : 2 * half : 2] = angles.sin()  # even channels: sin, odd: cos (the spec's layout)
    out[..., 1 : 2 * half : 2] = angles.cos()
    return out


class SinusoidalTimeEmbedding(nn.Module):
    """Flow time t ∈ [0, 1] → sinusoid of 1000·t → 2-layer MLP. (B,) -> (B, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoid(1000.0 * t, self.dim))


class PositionalEncoding(nn.Module):
    """Sinusoidal sequence-position encoding that works at ANY length.

    The spec's version precomputes max_len=5000 rows and fails at 128×128 (N = 16,384). Here the table is a
    non-persistent cache that grows on demand, so nothing about length is baked into checkpoints.
    """

    def __init__(self, d_model: int, dropout: float = 0.1):
        super().__init__()
        self.d_model = d_model
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe", torch.zeros(0, d_model), persistent=False)

    def table(self, n: int, device: torch.device) -> torch.Tensor:
        if self.pe.shape[0] < n or self.pe.device != device:
            self.pe = sinusoid(torch.arange(n, device=device), self.d_model)  # (n, d_model)
        return self.pe[:n]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, N, D)
        return self.dropout(x + self.table(x.shape[1], x.device).to(x.dtype))


# ----------------------------------------------------------------------------------------------
# Attention with selectable backend
# ----------------------------------------------------------------------------------------------


def check_attn_backend(backend: str) -> str:
    if backend not in ATTN_BACKENDS:
        raise ConfigError(f"unknown attention backend {backend!r}; choose one of {', '.join(ATTN_BACKENDS)}")
    return backend


FLEX_RECOMPILE_LIMIT = 64  # graphs torch keeps per compiled function: one per (shape, grad mode, autocast state)


@functools.cache
def flex_compiled():
    """torch.compile'd FlexAttention, once per process (static shapes: each new (B, H, Nq, Nk, D), grad mode or
    autocast state compiles its own graph).

    torch's default recompile limit (8 graphs per function) is reached by one sweep: 5 resolutions x (self,
    cross) shapes x (grad, no grad). Past it, torch silently falls back to the unfused flex_attention that
    materialises the whole score matrix (the H200 sweep at 312d327 timed that fallback as "flex" at r = 48: 61 ms
    eager against 6.7 ms for triton). So the limit is raised, and hitting it is made an error, never a slow path.
    """
    import torch._dynamo.config as dynamo_config
    from torch.nn.attention.flex_attention import flex_attention

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, FLEX_RECOMPILE_LIMIT)
    dynamo_config.fail_on_recompile_limit_hit = True
    return torch.compile(flex_attention, dynamic=False)


def _flex_attention():
    """torch FlexAttention (torch.nn.attention.flex_attention): torch.compile'd on CUDA (its fused Triton kernels),
    eager elsewhere (torch's dense reference, which it allows forward-only on CPU: a check, not a fast path)."""
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError as e:  # torch < 2.5
        raise ConfigError(f"attention backend 'flex' is unavailable ({e}); it needs torch >= 2.5") from e

    def flex(q, k, v):  # (B, H, Nq, Dh), (B, H, Nk, Dh), (B, H, Nk, Dh) -> (B, H, Nq, Dh)
        if q.is_cuda:
            return flex_compiled()(q, k, v)
        with warnings.catch_warnings():  # "called without torch.compile()": intended off CUDA
            warnings.filterwarnings("ignore", message=".*torch.compile", category=UserWarning)
            try:
                return flex_attention(q, k, v)
            except NotImplementedError as e:  # torch: "FlexAttention does not support backward on CPU"
                raise ConfigError(f"attention backend 'flex': {str(e).splitlines()[0]}") from None

    return flex


def flex_dropout_message(dropout: float) -> str:
    return (
        f"attention backend 'flex' has no attention dropout: train with dropout=0 (got {dropout:g}) "
        "or pick another attn_backend (sdpa, triton)"
    )


def _triton_kernels():
    """kernels.flash_attention (imported once): its attention and packed attention_qkv entry points."""
    try:
        import kernels.flash_attention as fa
    except ImportError as e:  # triton missing or broken
        raise ConfigError(f"attention backend 'triton' is unavailable ({e}); pip install triton") from e
    except ValueError as e:  # its environment switches, checked at import (FLASH_ATTN_FWD=...)
        raise ConfigError(str(e)) from None
    return fa


def _triton_attention():
    return _triton_kernels().attention


_TRITON_ATTENTION = _triton_attention  # bench.flops' counting mode swaps _triton_attention for a traced one


class Attention(nn.MultiheadAttention):
    """nn.MultiheadAttention (batch_first) whose core can run on four backends.

    Parameters and their names are nn.MultiheadAttention's, so one checkpoint loads under any backend.
      seed   — nn.MultiheadAttention called as the spec calls it (need_weights left on): the faithful baseline
               that materialises the (Nq × Nk) attention weights.
      sdpa   — torch scaled_dot_product_attention (flash / cuDNN / memory-efficient, chosen by torch).
      triton — our fused FlashAttention-2 kernel (kernels/flash_attention.py).
      flex   — torch FlexAttention, compiled on CUDA. It has no attention-probability dropout (a score_mod acts
               before the softmax, dropout after it), so training with dropout > 0 on flex is a ConfigError rather
               than a silently different model: train it with dropout=0 (the sweep's flex rows do, and say so).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, backend: str = "sdpa"):
        super().__init__(embed_dim, num_heads, dropout=dropout, batch_first=True)
        self.backend = check_attn_backend(backend)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        if self.backend == "seed":
            out, _weights = super().forward(query, key, value)  # need_weights=True, as in the spec
            return out
        B, Nq, E = query.shape
        Nk, H = key.shape[1], self.num_heads
        if self.backend == "triton" and query is key and key is value and _triton_attention is _TRITON_ATTENTION:
            # the kernel reads q, k, v through strides of the packed projection and writes its gradient whole
            # (the unpacked path below pays a gather for the output and a cat of dq, dk, dv per call)
            qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)  # (B, N, 3E)
            p = self.dropout if self.training else 0.0
            return self.out_proj(_triton_kernels().attention_qkv(qkv, H, dropout_p=p))  # (B, N, E)
        if query is key and key is value:  # self-attention: one projection GEMM
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            w_q, w_kv = self.in_proj_weight.split([E, 2 * E])
            b_q, b_kv = self.in_proj_bias.split([E, 2 * E])
            q = F.linear(query, w_q, b_q)  # (B, Nq, E)
            if key is value:
                k, v = F.linear(key, w_kv, b_kv).chunk(2, dim=-1)  # (B, Nk, E) each
            else:
                k = F.linear(key, w_kv[:E], b_kv[:E])
                v = F.linear(value, w_kv[E:], b_kv[E:])
        q = q.view(B, Nq, H, E // H).transpose(1, 2)  # (B, H, Nq, Dh)
        k = k.view(B, Nk, H, E // H).transpose(1, 2)  # (B, H, Nk, Dh)
        v = v.view(B, Nk, H, E // H).transpose(1, 2)  # (B, H, Nk, Dh)
        p = self.dropout if self.training else 0.0
        if self.backend == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        elif self.backend == "flex":
            if p > 0:
                raise ConfigError(flex_dropout_message(self.dropout))
            o = _flex_attention()(q, k, v)
        else:
            o = _triton_attention()(q, k, v, dropout_p=p)
        o = o.transpose(1, 2).reshape(B, Nq, E)  # (B, Nq, E)
        return self.out_proj(o)


class SelfAttention(nn.Module):
    """An Attention used as a sequence mixer: (B, N, D) -> (B, N, D), called as attn(x, x, x). Holds no parameters
    of its own (the wrapped module's are the model's), so it can be handed out as a view of a layer."""

    def __init__(self, attn: Attention):
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D)
        return self.attn(x, x, x)


def check_trainable(model: nn.Module) -> None:
    """ConfigError (one line) when `model` cannot be trained as configured: flex attention with dropout > 0."""
    for m in model.modules():
        if isinstance(m, Attention) and m.backend == "flex" and m.dropout > 0:
            raise ConfigError(flex_dropout_message(m.dropout))


# ----------------------------------------------------------------------------------------------
# The shared shell of both models
# ----------------------------------------------------------------------------------------------


class SparseFieldModel(nn.Module):
    """Embedding of the sparse field, and the cross-attention decoder. Subclasses define `encode(seq)`.

    forward(noisy_values, query_coords, t, input_coords, input_values) → velocity at the query points:
      noisy_values (B, Nq, C), query_coords (B, Nq, 2), t (B,), input_coords (B, Nin, 2), input_values (B, Nin, C)
    predict_x1(same arguments) → the estimate of the clean values x̂1 = E[x1 | x_t, context].

    The two are one field in two parameterisations: on the path x_t = (1 − t)·x0 + t·x1 the velocity is
    v = x1 − x0 = (x1 − x_t)/(1 − t). With cfg.prediction = "x1" (default) the decoder outputs x̂1 and forward
    divides; with "velocity" it outputs v and predict_x1 multiplies. x1-prediction spares the network from
    carrying the noise x0 through every layer to subtract it at the end (at t = 0, v = E[x1] − x0 needs x0
    reproduced exactly; x̂1 does not), which is what the posterior-mean reconstruction x̂1(x0, t = 0) rewards.
    """

    name = "base"  # checkpoint prefix, set by subclasses
    version = "v0"

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.fourier_features = FourierFeatures(2, cfg.num_fourier, cfg.fourier_scale)
        f = self.fourier_features.out_dim
        self.query_proj = nn.Linear(f + cfg.value_channels, d)
        self.input_proj = nn.Linear(f + cfg.value_channels, d)
        self.time_embed = SinusoidalTimeEmbedding(d)
        # Queries read the encoded inputs. A residual + LayerNorm around it keeps each query's own (noisy)
        # value in reach of the decoder; without it the velocity x1 − x0 cannot be formed from x_t.
        self.query_cross_attn = Attention(d, cfg.num_heads, dropout=cfg.dropout, backend=cfg.attn_backend)
        self.cross_norm = nn.LayerNorm(d)
        self.decoder = nn.Linear(d, cfg.value_channels)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        raise NotImplementedError

    # Model-side facts the benchmark needs (bench.measure's mixer and encoder levels), defined by each model.
    def layer0_mixer(self) -> nn.Module:
        """Layer 0's sequence mixer as a (B, N, D) -> (B, N, D) module (a view: its parameters are the model's)."""
        raise NotImplementedError

    def encoder_named_parameters(self):
        """(name, parameter) of the encoder stack, names as in self.named_parameters()."""
        raise NotImplementedError

    def encode_tokens(self, noisy_values, query_coords, t, input_coords, input_values) -> tuple[torch.Tensor, int]:
        """Embed the inputs and the queries (Fourier features + values + time), encode them in one sequence.
        Returns the encoded (B, Nin + Nq, D) sequence, inputs first, and Nin."""
        query_tokens = self.query_proj(torch.cat([self.fourier_features(query_coords), noisy_values], -1))
        input_tokens = self.input_proj(torch.cat([self.fourier_features(input_coords), input_values], -1))
        t_embed = self.time_embed(t).unsqueeze(1)  # (B, 1, D)
        seq = torch.cat([input_tokens + t_embed, query_tokens + t_embed], dim=1)  # (B, Nin + Nq, D)
        return self.encode(seq), input_tokens.shape[1]

    def head(self, noisy_values, query_coords, t, input_coords, input_values) -> torch.Tensor:
        """The decoder's raw output (B, Nq, C): x̂1 or v, per cfg.prediction."""
        seq, n_in = self.encode_tokens(noisy_values, query_coords, t, input_coords, input_values)
        input_seq, query_seq = seq[:, :n_in], seq[:, n_in:]  # (B, Nin, D), (B, Nq, D)
        out = self.query_cross_attn(query_seq, input_seq, input_seq)  # (B, Nq, D)
        return self.decoder(self.cross_norm(query_seq + out))  # (B, Nq, C)

    def forward(self, noisy_values, query_coords, t, input_coords, input_values) -> torch.Tensor:
        out = self.head(noisy_values, query_coords, t, input_coords, input_values)  # (B, Nq, C)
        if self.cfg.prediction == "velocity":
            return out
        gap = (1 - t).clamp_min(T_GAP_MIN)[:, None, None].to(out.dtype)  # (B, 1, 1)
        return (out - noisy_values.to(out.dtype)) / gap

    def predict_x1(self, noisy_values, query_coords, t, input_coords, input_values) -> torch.Tensor:
        out = self.head(noisy_values, query_coords, t, input_coords, input_values)  # (B, Nq, C)
        if self.cfg.prediction == "x1":
            return out
        return noisy_values.to(out.dtype) + (1 - t)[:, None, None].to(out.dtype) * out

    @classmethod
    def memory_bytes(cls, cfg, n_tokens: int, batch: int, train: bool = True, device_type: str = "cpu") -> int:
        """Estimated peak bytes of one training step (train) or one no-grad forward, activations only, fp32.

        The shared shell and, per encoder layer, `layer_bytes` (subclasses refine it; this default is a generic
        token-linear layer). Calibrated on CPU against peak RSS (V4 default at 16²–32²: within 10%, V1 default:
        ~20% over); an upper bound for bf16 on CUDA. Parameters, gradients, optimizer state and data are the
        caller's (models.validate).
        """
        per_token = 32 * cfg.d_model * 4 if not train else 0  # no-grad forward: a few live (N, D) buffers
        layers = cfg.num_layers * cls.layer_bytes(cfg, n_tokens, train, device_type) if train else 0
        return int(batch * (n_tokens * per_token + layers))

    @classmethod
    def layer_bytes(cls, cfg, n_tokens: int, train: bool, device_type: str) -> int:
        """Saved activations of one encoder layer for one sample in a training step (generic: 24 (N, D) tensors)."""
        return n_tokens * 24 * cfg.d_model * 4

    def set_attn_backend(self, backend: str) -> None:
        check_attn_backend(backend)
        for m in self.modules():
            if isinstance(m, Attention):
                m.backend = backend
        self.cfg = replace(self.cfg, attn_backend=backend)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# Configs: presets, environment variables (the spec's), CLI flags
# ----------------------------------------------------------------------------------------------

# The spec's environment variables → config fields (model) or training-argument names.
ENV_MODEL = {"D_MODEL": "d_model", "NUM_LAYERS": "num_layers", "NUM_HEADS": "num_heads",
             "DIM_FEEDFORWARD": "dim_feedforward", "DROPOUT": "dropout"}  # fmt: skip
ENV_TRAIN = {"BATCH_SIZE": "batch_size", "LR": "lr", "EPOCHS": "epochs"}


def _cast(field_type, raw, name):
    type_name = field_type if isinstance(field_type, str) else field_type.__name__
    kind = {"int": int, "float": float, "str": str, "bool": bool}.get(type_name, str)
    try:
        if kind is bool:
            return str(raw).lower() in ("1", "true", "yes", "on")
        if kind is int and isinstance(raw, float) and raw.is_integer():
            return int(raw)
        return kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None


# Allowed values of the numeric config fields (any model that has the field): (test, what is allowed).
FIELD_RULES = {
    "d_model": (lambda v: v >= 1, "a positive integer"),
    "num_layers": (lambda v: v >= 1, "a positive integer"),
    "num_heads": (lambda v: v >= 1, "a positive integer"),
    "dim_feedforward": (lambda v: v >= 1, "a positive integer"),
    "d_state": (lambda v: v >= 1, "a positive integer"),
    "d_conv": (lambda v: v >= 1, "a positive integer"),
    "expand": (lambda v: v >= 1, "a positive integer"),
    "num_fourier": (lambda v: v >= 1, "a positive integer"),
    "value_channels": (lambda v: v >= 1, "a positive integer"),
    "fourier_scale": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "dropout": (lambda v: math.isfinite(v) and 0.0 <= v < 1.0, "a number in [0, 1)"),
}


def check_fields(cfg, sources: dict | None = None) -> None:
    """Each numeric field against FIELD_RULES; the message names the field and where its value came from."""
    for f in fields(cfg):
        rule = FIELD_RULES.get(f.name)
        if rule is None:
            continue
        value = getattr(cfg, f.name)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and rule[0](value)
        if not ok:
            src = (sources or {}).get(f.name)
            where = f" (from {src})" if src else ""
            raise ConfigError(f"{f.name}={value!r}{where} must be {rule[1]}")


def build_config(cls, presets: dict, preset: str = "default", overrides: dict | None = None, env=None):
    """Preset, then the spec's environment variables, then explicit overrides (CLI flags) — last wins."""
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(presets)}")
    cfg = replace(cls(), **presets[preset])
    types = {f.name: f.type for f in fields(cls)}
    env = os.environ if env is None else env
    updates, sources = {}, {}
    for var, field in ENV_MODEL.items():
        if field in types and env.get(var, "").strip():
            updates[field] = _cast(types[field], env[var].strip(), f"environment variable {var}")
            sources[field] = f"${var}"
    for key, val in (overrides or {}).items():
        if val is None:
            continue
        if key not in types:
            raise ConfigError(f"unknown config field {key!r} for {cls.__name__}")
        updates[key] = _cast(types[key], val, key)
        sources[key] = f"--{key.replace('_', '-')}" if not key.endswith("_backend") else None
    cfg = replace(cfg, **updates)
    check_fields(cfg, sources)
    cfg.validate()
    return cfg


def validate_common(cfg) -> None:
    check_fields(cfg)
    if cfg.d_model % cfg.num_heads:
        raise ConfigError(f"d_model={cfg.d_model} is not divisible by num_heads={cfg.num_heads}")
    check_attn_backend(cfg.attn_backend)
    if cfg.prediction not in PREDICTIONS:
        raise ConfigError(f"unknown prediction {cfg.prediction!r}; choose one of {', '.join(PREDICTIONS)}")
