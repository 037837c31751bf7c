"""Sparse-neural-field flow-matching models: V1 (Mamba), V2 (bidirectional Mamba + Perceiver),
V3 (Morton-ordered Mamba), V4 (Transformer)."""

from models.common import ConfigError, count_parameters
from models.v1_mamba import MambaDiffusion, V1Config, v1_config
from models.v2_bidirectional import BiMambaPerceiverDiffusion, V2Config, v2_config
from models.v3_morton import MortonMambaDiffusion, V3Config, v3_config
from models.v4_transformer import TransformerDiffusion, V4Config, v4_config

MODELS = {
    "v1": (MambaDiffusion, v1_config),
    "v2": (BiMambaPerceiverDiffusion, v2_config),
    "v3": (MortonMambaDiffusion, v3_config),
    "v4": (TransformerDiffusion, v4_config),
}


def build_model(model: str, preset: str = "default", overrides: dict | None = None, env=None):
    """A key of MODELS ('v1', 'v3', 'v4', ...) → model, from a preset + the spec's env vars + overrides."""
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    cls, make_cfg = MODELS[model]
    return cls(make_cfg(preset, overrides, env))


__all__ = [
    "BiMambaPerceiverDiffusion",
    "ConfigError",
    "MambaDiffusion",
    "MortonMambaDiffusion",
    "TransformerDiffusion",
    "V1Config",
    "V2Config",
    "V3Config",
    "V4Config",
    "build_model",
    "count_parameters",
    "v1_config",
    "v2_config",
    "v3_config",
    "v4_config",
]
