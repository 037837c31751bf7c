"""The variants: one record per model the harness knows, and the only place that names them.

    from models.variants import get_variant, variant_names
    v = get_variant("v4")              # unknown name → ConfigError, one line
    model = v.build("tiny", {"attn_backend": "flex"}, env={})

A record (gpt-fast's `transformer_configs`, as data) holds what the harness needs to know about a model without
branching on its name: its class and config factory (a preset, plus the record's own overrides, so "v4_nopos"
is V4's class with pos_encoding="none"), the config field that picks its backend and the backends it has, the
primary backend per device, the FLOP formula as a list of named components (bench.flops.COMPONENTS), plot
colours, and the spec's expectations that bench.report checks. Facts that need a built model are its methods
(`layer0_mixer()`, `encoder_named_parameters()`).

Adding a model: write its file (a SparseFieldModel with those two methods) and register one Variant below; a FLOP
component in bench/flops.py only if it brings a new kind of operation. bench/ (sweep, measure, flops, report,
pytest-benchmark) and models.build_model / checkpoints pick it up from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from models.common import ATTN_BACKENDS, ConfigError
from models.mamba import MIXER_BACKENDS
from models.v1_mamba import MambaDiffusion, v1_config
from models.v2_bidirectional import BiMambaPerceiverDiffusion, v2_config
from models.v3_morton import MortonMambaDiffusion, v3_config
from models.v4_transformer import TransformerDiffusion, v4_config

BASELINE = "v1"  # the variant every ratio in the reports is taken against
# Backends of every Mamba variant: models.mamba's one tuple (less "auto", which resolves to one of them), so a
# mixer backend added there appears in every Mamba variant's sweep without an edit here.
MAMBA_BACKENDS = tuple(b for b in MIXER_BACKENDS if b != "auto")
LEVELS = ("mixer", "encoder", "model")


@dataclass(frozen=True)
class FlopParts:
    """The analytic FLOP formula of a variant, as names of bench.flops.COMPONENTS (each: (cfg, B, N) → parts)."""

    mixer: tuple[str, ...]  # layer0_mixer() on (B, N, D)
    layer: tuple[str, ...]  # one encoder layer on (B, N, D); the encoder is cfg.num_layers of them
    encoder_extra: tuple[str, ...] = ()  # once per encoder stack, after the layers
    readout: tuple[str, ...] = ("query_cross_attn",)  # between the encoder and the decoder (model level)


@dataclass(frozen=True)
class Expect:
    """The spec's numbers for one variant (shared/spec/v4-transformer-baseline.md): hypotheses bench.report puts
    next to the measurements. None: the spec says nothing."""

    layers: int | None = None  # encoder layers ("All Architectures" table)
    params_m: float | None = None  # parameters, millions
    compute: dict[int, float] | None = None  # resolution r → FLOPs of this variant / the baseline's
    slowdown: tuple[float, float] | None = None  # training-step time / the baseline's (lo, hi)
    epoch_min: tuple[float, float] | None = None  # minutes per training epoch (lo, hi)
    mem_gb: tuple[float, float] | None = None  # training memory, GB (lo, hi)
    mem_ratio: tuple[float, float] | None = None  # training memory / the baseline's (lo, hi)
    exponent: int | None = None  # encoder cost ∝ N^k (1: O(N), 2: O(N²))
    cost: str | None = None  # the "Compute Cost" cell of the spec's All Architectures table (vs V1)


@dataclass(frozen=True)
class Variant:
    key: str  # CLI / file name: --models v1 v4
    short: str  # series prefix in tables and plots: "V1" → "V1 mamba_ssm"
    family: str  # what the encoder is, for labels: "Mamba"
    complexity: str  # the encoder's cost in N, for titles: "O(N)"
    cls: type  # the nn.Module (a models.common.SparseFieldModel)
    make_config: Callable  # (preset, overrides, env) → config dataclass
    backend_field: str  # the config field the benchmark varies: mixer_backend | attn_backend
    backends: tuple[str, ...]  # the values of backend_field the benchmark runs, in plot / table order
    primary: dict[str, str]  # device type (cuda | cpu) → the backend its ratios and headline use
    fallback: tuple[str, ...]  # backends the report's ratios fall back to, in order, when the primary has no rows
    encoder_prefixes: tuple[str, ...]  # parameter-name prefixes of the encoder (= encoder_named_parameters())
    flops: FlopParts  # the analytic FLOP formula
    mixer_desc: str  # what the mixer level measures: "one Mamba mixer"
    color: str  # the variant's colour (plots with one line per model: compare's loss curves)
    backend_colors: dict[str, str] = field(default_factory=dict)  # backend → colour of its series in the sweep
    overrides: dict = field(default_factory=dict)  # config fields fixed by this variant (on top of the preset)
    expect: Expect = field(default_factory=Expect)  # the spec's expectations
    sweep_levels: tuple[str, ...] = LEVELS  # levels the default sweep measures (skip those identical to another's)
    max_batch: bool = True  # the sweep's largest-batch search (off where it would repeat another variant's)

    @property
    def label(self) -> str:
        return f"{self.short} ({self.family})"

    def config(self, preset: str = "default", overrides: dict | None = None, env=None):
        """The config: preset, then the spec's environment variables, then the record's and the caller's overrides."""
        return self.make_config(preset, {**self.overrides, **(overrides or {})}, env)

    def build(self, preset: str = "default", overrides: dict | None = None, env=None):
        return self.cls(self.config(preset, overrides, env))

    def backend_overrides(self, backend: str) -> dict:
        """The config overrides that put this variant on `backend`."""
        if backend not in self.backends:
            raise ConfigError(f"{backend!r} is not a {self.key} backend; choose one of {', '.join(self.backends)}")
        return {self.backend_field: backend}


VARIANTS: dict[str, Variant] = {}


def register(v: Variant) -> Variant:
    """Add a record (tests register throwaway ones with monkeypatch.setitem(VARIANTS, key, record))."""
    if v.key in VARIANTS:
        raise ConfigError(f"variant {v.key!r} is already registered")
    unknown = [lv for lv in v.sweep_levels if lv not in LEVELS]
    if (
        unknown
        or v.backend_field not in ("mixer_backend", "attn_backend")
        or not set(v.primary.values()) <= set(v.backends)
    ):
        raise ConfigError(f"variant {v.key!r}: bad record (sweep_levels, backend_field or primary)")
    VARIANTS[v.key] = v
    return v


def variant_names() -> tuple[str, ...]:
    return tuple(VARIANTS)


def get_variant(name) -> Variant:
    """The record of `name` ('v1', 'v4', ...); a Variant is returned as is. Unknown → ConfigError, one line."""
    if isinstance(name, Variant):
        return name
    if name not in VARIANTS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def variant_of_checkpoint(model_name: str) -> Variant | None:
    """The first record whose class writes checkpoints named `model_name` (its config comes from the checkpoint)."""
    return next((v for v in VARIANTS.values() if v.cls.name == model_name), None)


def series_name(model: str, backend: str) -> str:
    """'v1', 'mamba_ssm' → 'V1 mamba_ssm' (a model no longer in the table keeps its upper-cased key)."""
    v = VARIANTS.get(model)
    return f"{v.short if v else str(model).upper()} {backend}"


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------

register(Variant(
    key="v1", short="V1", family="Mamba", complexity="O(N)", cls=MambaDiffusion, make_config=v1_config,
    backend_field="mixer_backend", backends=MAMBA_BACKENDS,
    primary={"cuda": "mamba_ssm", "cpu": "cpu_fused"}, fallback=("mamba_ssm", "cpu_fused", "reference"),
    encoder_prefixes=MambaDiffusion.encoder_prefixes,
    flops=FlopParts(mixer=("mamba",), layer=("mamba",)),
    mixer_desc="one Mamba mixer", color="tab:blue",
    backend_colors={"mamba_ssm": "tab:blue", "reference": "tab:orange"},
    expect=Expect(layers=6, params_m=4.0, epoch_min=(2, 2), mem_gb=(8, 8), exponent=1, cost="1.0x"),
))  # fmt: skip

register(Variant(
    key="v2", short="V2", family="bidirectional Mamba + Perceiver", complexity="O(N)",
    cls=BiMambaPerceiverDiffusion, make_config=v2_config,
    backend_field="mixer_backend", backends=MAMBA_BACKENDS,
    primary={"cuda": "mamba_ssm", "cpu": "cpu_fused"}, fallback=("mamba_ssm", "cpu_fused", "reference"),
    encoder_prefixes=BiMambaPerceiverDiffusion.encoder_prefixes,
    # per block: a forward and a backward Mamba mixer and their combination; after the encoder, M latents read the
    # N tokens (+ MLP) and the queries read the latents (instead of the encoded inputs)
    flops=FlopParts(mixer=("mamba", "mamba", "bidir_combine"), layer=("mamba", "mamba", "bidir_combine"),
                    readout=("latent_cross_attn", "latent_mlp", "latent_query_attn")),
    mixer_desc="one bidirectional Mamba block (two mixers)", color="tab:green",
    backend_colors={"mamba_ssm": "tab:pink", "reference": "#f7b6d2"},
    expect=Expect(layers=8, params_m=5.0, compute={32: 1.7, 64: 1.7, 128: 1.7}, exponent=1, cost="1.7x"),
))  # fmt: skip

register(Variant(
    key="v3", short="V3", family="Morton-ordered Mamba", complexity="O(N)",
    cls=MortonMambaDiffusion, make_config=v3_config,
    backend_field="mixer_backend", backends=MAMBA_BACKENDS,
    primary={"cuda": "mamba_ssm", "cpu": "cpu_fused"}, fallback=("mamba_ssm", "cpu_fused", "reference"),
    encoder_prefixes=MortonMambaDiffusion.encoder_prefixes,
    flops=FlopParts(mixer=("mamba",), layer=("mamba",)),  # V1's (the ordering is two argsorts and gathers)
    mixer_desc="one Mamba mixer", color="tab:purple",
    backend_colors={"mamba_ssm": "tab:olive", "reference": "#dbdb8d"},
    expect=Expect(layers=6, params_m=4.0, compute={32: 1.0, 64: 1.0, 128: 1.0}, slowdown=(1.0, 1.0), exponent=1,
                  cost="1.0x"),
    sweep_levels=("model",),  # its mixer and encoder are V1's: only the whole model (with the ordering) differs
    max_batch=False,  # V1's activations plus two index vectors: V1's largest batch
))  # fmt: skip

register(Variant(
    key="v4", short="V4", family="Transformer", complexity="O(N²)", cls=TransformerDiffusion, make_config=v4_config,
    backend_field="attn_backend", backends=ATTN_BACKENDS,
    primary={"cuda": "sdpa", "cpu": "sdpa"}, fallback=("sdpa", "triton", "seed"),
    encoder_prefixes=TransformerDiffusion.encoder_prefixes,
    flops=FlopParts(mixer=("self_attn",), layer=("self_attn", "ffn")),
    mixer_desc="one self-attention", color="tab:orange",
    backend_colors={"seed": "tab:green", "sdpa": "tab:red", "triton": "tab:purple", "flex": "tab:brown"},
    expect=Expect(layers=6, params_m=4.0, compute={32: 1024, 64: 4096, 128: 16384}, slowdown=(5, 10),
                  epoch_min=(10, 20), mem_gb=(12, 16), mem_ratio=(1.5, 2.0), exponent=2, cost="10-20x"),
))  # fmt: skip

register(Variant(
    key="v4_nopos", short="V4-nopos", family="Transformer, no index positions", complexity="O(N²)",
    cls=TransformerDiffusion, make_config=v4_config, overrides={"pos_encoding": "none"},
    backend_field="attn_backend", backends=("sdpa",),  # an ablation of V4's model, not of its kernels
    primary={"cuda": "sdpa", "cpu": "sdpa"}, fallback=("sdpa",),
    encoder_prefixes=TransformerDiffusion.encoder_prefixes,
    flops=FlopParts(mixer=("self_attn",), layer=("self_attn", "ffn")),
    mixer_desc="one self-attention", color="tab:red",
    backend_colors={"sdpa": "tab:cyan"},
    sweep_levels=("model",),  # its mixer and encoder layers are V4's
    max_batch=False,  # V4's activations less one (N, D) table: V4's largest batch
))  # fmt: skip
