"""Checkpoint round-trips for every variant, and the checkpoints that must not load (one-line errors)."""

import pytest
import torch

from models import ConfigError, build_model
from models.checkpoint import model_from_checkpoint, save_checkpoint
from tests.models.test_models import ALL, _batch


@pytest.mark.parametrize("name", ALL)
def test_checkpoint_round_trip(tmp_path, name):
    torch.manual_seed(0)
    model = build_model(name, "tiny", {"dropout": 0.0}).eval()
    path = save_checkpoint(tmp_path / f"{name}.pth", model, step=3)
    loaded, ckpt = model_from_checkpoint(path, name)
    assert type(loaded) is type(model) and loaded.cfg == model.cfg and ckpt["step"] == 3
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(*_batch()), model(*_batch()), atol=0, rtol=0)
    again, _ = model_from_checkpoint(path)  # the checkpoint names its own model
    assert type(again) is type(model)


def test_v1_checkpoint_loads_into_v3(tmp_path):
    v1 = build_model("v1", "tiny").eval()
    v3, _ = model_from_checkpoint(save_checkpoint(tmp_path / "v1.pth", v1), "v3")
    assert v3.version == "v3" and v3.cfg.ordering == "morton"
    for (n1, p1), (n3, p3) in zip(v1.state_dict().items(), v3.state_dict().items(), strict=True):
        assert n1 == n3 and torch.equal(p1, p3)


def _one_line_error(call, match):
    with pytest.raises(ConfigError, match=match) as e:
        call()
    assert len(str(e.value).splitlines()) == 1, str(e.value)


def test_v2_checkpoint_given_to_v3_is_a_one_line_error(tmp_path):
    path = save_checkpoint(tmp_path / "v2.pth", build_model("v2", "tiny"))
    want = r"holds v2 \(mamba_v2\) weights, not mamba_v3 weights; v3 loads v1 or v3"
    _one_line_error(lambda: model_from_checkpoint(path, "v3"), want)
    v4 = save_checkpoint(tmp_path / "v4.pth", build_model("v4", "tiny"))
    want = r"holds v4 \(transformer_v4\) weights, not mamba weights; v1 loads v1"
    _one_line_error(lambda: model_from_checkpoint(v4, "v1"), want)
    _one_line_error(lambda: model_from_checkpoint(v4, "v7"), "unknown model 'v7'")


def test_mamba1_and_mamba2_checkpoints_do_not_cross(tmp_path):
    m2 = build_model("v1", "tiny", {"d_model": 64, "num_heads": 2, "mixer_backend": "mamba2_ref"})
    p2 = save_checkpoint(tmp_path / "m2.pth", m2)
    _one_line_error(
        lambda: model_from_checkpoint(p2, "v1", mixer_backend="reference"),
        "holds Mamba-2 mixers .*Mamba-1 parameters differ, so it cannot load on mixer backend 'reference'",
    )
    back, _ = model_from_checkpoint(p2, "v1", mixer_backend="auto")  # auto stays within the family
    assert back.mixer_backend in ("mamba2", "mamba2_ref")
    p1 = save_checkpoint(tmp_path / "m1.pth", build_model("v1", "tiny", {"d_model": 64, "num_heads": 2}))
    _one_line_error(
        lambda: model_from_checkpoint(p1, "v3", mixer_backend="mamba2_ref"),
        "holds Mamba-1 mixers .*Mamba-2 parameters differ",
    )
