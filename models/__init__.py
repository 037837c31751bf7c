"""Sparse-neural-field flow-matching models: V1 (Mamba), V2 (bidirectional Mamba + Perceiver), V3 (Morton-ordered
Mamba), V4 (Transformer) — one record each in the table of variants, models/variants.py.

Importing this package pins glibc's mmap threshold (models.utils.tame_cpu_allocator), process-wide, so that a
notebook or a library caller gets the same bounded CPU memory as the CLIs. SPARSE_KEEP_MALLOC=1 skips it.
"""

from collections.abc import Mapping

from models.common import ConfigError, count_parameters
from models.utils import tame_cpu_allocator
from models.v1_mamba import MambaDiffusion, V1Config, v1_config
from models.v2_bidirectional import BiMambaPerceiverDiffusion, V2Config, v2_config
from models.v3_morton import MortonMambaDiffusion, V3Config, v3_config
from models.v4_transformer import TransformerDiffusion, V4Config, v4_config
from models.variants import VARIANTS, get_variant, variant_names


class _Models(Mapping):
    """key → (class, config factory), read from the table at lookup time (for callers of the old MODELS dict)."""

    def __getitem__(self, key):
        v = VARIANTS[key]
        return v.cls, v.config

    def __iter__(self):
        return iter(VARIANTS)

    def __len__(self):
        return len(VARIANTS)


MODELS = _Models()
tame_cpu_allocator()  # process-wide: glibc's mmap threshold pinned (see the docstring)


def build_model(model: str, preset: str = "default", overrides: dict | None = None, env=None):
    """A variant name ('v1', 'v4', ...: models.variants) → model, from a preset + the spec's env vars + overrides."""
    return get_variant(model).build(preset, overrides, env)


__all__ = [
    "MODELS",
    "VARIANTS",
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
    "get_variant",
    "v1_config",
    "v2_config",
    "v3_config",
    "v4_config",
    "variant_names",
]
