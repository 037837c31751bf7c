"""models.train's learning-curve hook and its pause at a deadline: the points' steps and training seconds (the
curve's own time not counted), the CSV, and a paused run resumed to the weights of a straight one."""

import time

import pandas as pd
import pytest
import torch

from models.checkpoint import read_checkpoint
from models.train import parse_args, train

TINY = ["--preset", "tiny", "--resolution", "16", "--batch-size", "4", "--train-samples", "8",
        "--val-samples", "4", "--quiet", "--save-every", "0", "--model", "v4"]  # fmt: skip


def _cfg(out, *extra, **fields):
    cfg = parse_args([*TINY, "--out-dir", str(out), *extra])
    for k, v in fields.items():
        setattr(cfg, k, v)
    return cfg


class SlowCurve:
    """A curve callback that takes 50 ms: none of it may show up as training time."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model):
        assert not model.training  # evaluated in eval mode, trained in train mode
        self.calls += 1
        time.sleep(0.05)
        return {"psnr": float(self.calls)}


def test_curve_points_every_k_steps_with_training_seconds(tmp_path):
    curve = SlowCurve()
    out = train(_cfg(tmp_path, "--epochs", "3", curve_every=2), curve=curve)
    rows = pd.DataFrame(out["curve"])
    assert list(rows["step"]) == [0, 2, 4, 6] and curve.calls == 4  # step 0, every 2, the last (= 6) once
    assert rows["train_time_s"].is_monotonic_increasing and rows["train_time_s"].iloc[0] == 0
    assert rows["train_time_s"].iloc[-1] == pytest.approx(out["train_time_s"])
    assert out["train_time_s"] < 0.05 * 3 + sum(r["epoch_time_s"] for r in out["log"])  # sleeps not counted
    assert sum(r["epoch_time_s"] for r in out["log"]) == pytest.approx(out["train_time_s"])
    csv = pd.read_csv(tmp_path / "checkpoints_transformer_v4" / "transformer_v4_curve.csv")
    assert list(csv.columns) == ["step", "train_time_s", "psnr"] and len(csv) == 4


def test_no_curve_without_callback_or_period(tmp_path):
    out = train(_cfg(tmp_path, "--epochs", "1", curve_every=2))  # no callback: nothing
    assert out["curve"] == [] and not (tmp_path / "checkpoints_transformer_v4" / "transformer_v4_curve.csv").exists()


def test_deadline_pauses_and_resume_matches_a_straight_run(tmp_path):
    straight = train(_cfg(tmp_path / "a", "--epochs", "3", curve_every=2), curve=SlowCurve())
    first = train(_cfg(tmp_path / "b", "--epochs", "3", pause_after=1e-9, curve_every=2), curve=SlowCurve())
    assert first["paused"] and first["steps"] == 2  # one epoch, then the deadline
    resumed = train(_cfg(tmp_path / "b", "--epochs", "3", "--resume", curve_every=2), curve=SlowCurve())
    assert not resumed["paused"] and resumed["steps"] == straight["steps"] == 6
    assert [r["step"] for r in resumed["curve"]] == [0, 2, 4, 6]  # the curve continues, not restarts
    a = read_checkpoint(tmp_path / "a/checkpoints_transformer_v4/transformer_v4_latest.pth")
    b = read_checkpoint(tmp_path / "b/checkpoints_transformer_v4/transformer_v4_latest.pth")
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], atol=1e-6, rtol=1e-5)


def test_cli_curve_is_the_held_out_psnr(tmp_path):
    from models.train import main

    assert main([*TINY, "--out-dir", str(tmp_path), "--epochs", "2", "--curve-every", "2", "--curve-samples", "2"]) == 0
    csv = pd.read_csv(tmp_path / "checkpoints_transformer_v4" / "transformer_v4_curve.csv")
    assert list(csv["step"]) == [0, 2, 4] and (csv["curve_crops"] == 2).all()
    assert csv["psnr"].between(0, 100).all() and csv["psnr_linear"].nunique() == 1  # the floor: computed once
