"""The table of variants: every record builds, its model-side methods agree with it, lookups fail in one line,
and the analytic FLOPs computed from the records are the formulas' values."""

import pytest
import torch

from bench import flops
from models import build_model, count_parameters
from models.common import ConfigError
from models.mamba import MIXER_BACKENDS
from models.variants import VARIANTS, FlopParts, Variant, get_variant, register, variant_names, variant_of_checkpoint


def _batch(B=2, n_in=7, n_q=20, C=3):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(B, n_q, C, generator=g), torch.rand(B, n_q, 2, generator=g), torch.rand(B, generator=g),
            torch.rand(B, n_in, 2, generator=g), torch.randn(B, n_in, C, generator=g))  # fmt: skip


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_record_builds_and_runs(name):
    v = get_variant(name)
    model = v.build("tiny", env={})
    assert isinstance(model, v.cls) and v.label.startswith(v.short)
    assert model(*_batch()).shape == (2, 20, 3)
    for key, value in v.overrides.items():
        assert getattr(model.cfg, key) == value  # the record's own config fields are applied
    assert getattr(model.cfg, v.backend_field) in (*v.backends, "auto")
    assert set(v.primary) == {"cuda", "cpu"} and set(v.primary.values()) <= set(v.backends)
    assert set(v.fallback) <= set(v.backends)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_model_side_methods_agree_with_the_record(name):
    v = get_variant(name)
    model = v.build("tiny", {"dropout": 0.0}, env={})
    enc = {n for n, _ in model.encoder_named_parameters()}
    assert enc and enc == {n for n, _ in model.named_parameters() if n.startswith(v.encoder_prefixes)}
    mixer = model.layer0_mixer()
    x = torch.randn(2, 11, model.cfg.d_model)
    assert mixer(x).shape == x.shape  # (B, N, D) -> (B, N, D)
    own = {id(p) for p in model.parameters()}
    assert all(id(p) in own for p in mixer.parameters())  # a view of layer 0, not a copy
    assert 0 < count_parameters(mixer) < count_parameters(model)


def test_mamba_backends_come_from_models_mamba():
    mamba_variants = [v for v in VARIANTS.values() if v.backend_field == "mixer_backend"]
    assert mamba_variants
    for v in mamba_variants:
        assert v.backends == tuple(b for b in MIXER_BACKENDS if b != "auto")


def test_unknown_names_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown model 'v9'; choose one of v1, v2, v3, v4, v4_nopos") as e:
        get_variant("v9")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("v9")
    with pytest.raises(ConfigError, match="is not a v1 backend"):
        get_variant("v1").backend_overrides("sdpa")
    with pytest.raises(ConfigError, match="already registered"):
        register(get_variant("v1"))
    assert variant_names() == ("v1", "v2", "v3", "v4", "v4_nopos")
    assert variant_of_checkpoint("mamba").key == "v1" and variant_of_checkpoint("transformer_v4").key == "v4"


def test_flops_are_computed_from_the_record():
    """The record-driven formula gives the values the per-model formulas gave (numbers from before the table)."""
    c1, c4 = get_variant("v1").config("default", env={}), get_variant("v4").config("default", env={})
    assert flops.analytic_flops("v1", c1, "model", 1, 1024) == 6297128448
    assert flops.analytic_flops("v4", c4, "model", 1, 1024) == 16684322304
    assert flops.analytic_flops("v1", c1, "mixer", 1, 1024) == 953155584
    assert flops.analytic_flops("v4", c4, "encoder", 3, 4096) == 425201762304
    # two of the same component in a layer count twice (a bidirectional block: two mixers)
    twice = Variant(**{**get_variant("v1").__dict__, "key": "v1x2", "flops": FlopParts(("mamba",), ("mamba", "mamba"))})
    assert flops.analytic_flops(twice, c1, "encoder", 1, 256) == 2 * flops.analytic_flops("v1", c1, "encoder", 1, 256)
    bad = Variant(**{**get_variant("v1").__dict__, "key": "vbad", "flops": FlopParts(("warp_drive",), ())})
    with pytest.raises(ConfigError, match="unknown FLOP component 'warp_drive'"):
        flops.analytic_flops(bad, c1, "mixer", 1, 64)
    with pytest.raises(ConfigError, match="unknown model"):
        flops.analytic_flops("v9", c1, "mixer", 1, 64)


def test_a_checkpoint_found_by_name_is_its_first_record(tmp_path):
    """A V4 checkpoint loads as V4 (its own config), not as the v4_nopos ablation that shares its class."""
    from models.checkpoint import model_from_checkpoint, save_checkpoint

    path = save_checkpoint(tmp_path / "v4.pth", build_model("v4", "tiny", env={}))
    net, _ = model_from_checkpoint(path)
    assert net.cfg.pos_encoding == "index"
    nopos = save_checkpoint(tmp_path / "nopos.pth", build_model("v4_nopos", "tiny", env={}))
    assert model_from_checkpoint(nopos)[0].cfg.pos_encoding == "none"  # its config travels with it
    with pytest.raises(ConfigError, match="unknown model 'v9'"):
        model_from_checkpoint(path, "v9")
