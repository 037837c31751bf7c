"""A 2-step training run, checkpoints, resume, sampling; every bad input exits 2 with one line."""

import subprocess
import sys

import pytest
import torch

from models.checkpoint import model_from_checkpoint, read_checkpoint
from models.sample import sample
from models.train import main, parse_args, train

TINY = ["--preset", "tiny", "--resolution", "16", "--batch-size", "4", "--train-samples", "8",
        "--val-samples", "4", "--quiet", "--save-every", "1"]  # fmt: skip


def _train(tmp_path, model, *extra):
    return train(parse_args(["--model", model, "--out-dir", str(tmp_path), *TINY, *extra]))


@pytest.mark.parametrize("model,name", [("v1", "mamba"), ("v4", "transformer_v4")])
def test_two_steps_write_checkpoints_log_and_curve(tmp_path, model, name):
    out = _train(tmp_path, model, "--epochs", "1")
    assert out["steps"] == 2
    d = tmp_path / f"checkpoints_{name}"
    for f in (f"{name}_best.pth", f"{name}_latest.pth", f"{name}_epoch_0000.pth", f"{name}_log.csv",
              f"{name}_loss.png"):  # fmt: skip
        assert (d / f).is_file(), f
    ckpt = read_checkpoint(d / f"{name}_latest.pth", name)
    assert ckpt["step"] == 2 and ckpt["epoch"] == 0 and "optimizer" in ckpt and "rng" in ckpt


def test_resume_continues_exactly(tmp_path):
    straight = tmp_path / "a"
    _train(straight, "v4", "--epochs", "2", "--max-steps", "4")
    resumed = tmp_path / "b"
    _train(resumed, "v4", "--epochs", "1", "--max-steps", "4")  # same schedule, stopped after epoch 0
    out = _train(resumed, "v4", "--epochs", "2", "--max-steps", "4", "--resume")
    assert out["steps"] == 4
    a = read_checkpoint(straight / "checkpoints_transformer_v4/transformer_v4_latest.pth")
    b = read_checkpoint(resumed / "checkpoints_transformer_v4/transformer_v4_latest.pth")
    assert b["step"] == a["step"] == 4
    for k in a["model"]:  # same data order, noise and dropout after the resume: the same weights
        torch.testing.assert_close(b["model"][k], a["model"][k], atol=1e-6, rtol=1e-5)


def test_sampler_runs_at_denser_grid(tmp_path):
    _train(tmp_path, "v1", "--epochs", "1")
    model, ckpt = model_from_checkpoint(tmp_path / "checkpoints_mamba/mamba_best.pth", "v1")
    assert ckpt["resolution"] == 16
    q = torch.rand(1, 64 * 64, 2)
    ic, iv = torch.rand(1, 50, 2), torch.rand(1, 50, 3)
    for method in ("euler", "heun"):
        x = sample(model, q, ic, iv, steps=2, method=method)
        assert x.shape == (1, 4096, 3) and torch.isfinite(x).all()


class _Field(torch.nn.Module):
    """A known velocity field v(x, t) = a·x + b (counts its evaluations): the sampler's arithmetic, checkable."""

    def __init__(self, a=-0.5, b=0.25):
        super().__init__()
        self.a, self.b, self.calls = a, b, []

    def forward(self, x, qc, t, ic, iv):
        self.calls.append(float(t[0]))
        return self.a * x + self.b


@pytest.mark.parametrize("steps", [1, 4])
def test_samplers_integrate_and_heun_ends_with_an_euler_step(steps):
    q, ic, iv = torch.rand(1, 5, 2), torch.rand(1, 3, 2), torch.rand(1, 3, 3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 5, 3, generator=torch.Generator().manual_seed(0))
    f = _Field()
    x = sample(f, q, ic, iv, steps=steps, method="heun", generator=g, amp=False)
    assert len(f.calls) == 2 * steps - 1 and max(f.calls) < 1  # never evaluated at t = 1
    want, h = x0.clone(), 1 / steps
    for i in range(steps):  # the same recursion by hand
        v = f.a * want + f.b
        if i < steps - 1:
            v = 0.5 * (v + f.a * (want + h * v) + f.b)
        want = want + h * v
    torch.testing.assert_close(x, want)


def test_checkpoint_without_prediction_field_loads_as_velocity(tmp_path):
    _train(tmp_path, "v4", "--epochs", "1")
    path = tmp_path / "checkpoints_transformer_v4/transformer_v4_latest.pth"
    ckpt = torch.load(path, weights_only=False)
    del ckpt["config"]["prediction"]  # as written before x1-prediction existed
    torch.save(ckpt, path)
    model, _ = model_from_checkpoint(path, "v4")
    assert model.cfg.prediction == "velocity"


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "models.train", *args], capture_output=True, text=True)
    return r.returncode, r.stderr.strip()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model", "v9"], "unknown model"),
        (["--model", "v4", "--attn-backend", "nope"], "unknown attention backend"),
        (["--model", "v1", "--mixer-backend", "nope"], "unknown mixer backend"),
        (["--model", "v4", "--resolution", "4"], "--resolution: must be an integer >= 8"),
        (["--model", "v4", "--resolution", "32.5"], "must be an integer >= 8, got '32.5'"),
        (["--model", "v4", "--observed-frac", "1.5"], "--observed-frac: must be a finite number > 0 and < 1"),
        (["--model", "v4", "--data", "/nonexistent/folder"], "does not exist"),
    ],
)
def test_bad_cli_input_is_one_line_and_exit_2(tmp_path, args, needle):
    rc, err = _cli(*args, "--out-dir", str(tmp_path), *TINY[:2])
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and needle in err, err


def test_empty_data_folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    rc, err = _cli("--model", "v4", "--data", str(tmp_path / "imgs"), "--out-dir", str(tmp_path))
    assert rc == 2 and "need at least 2" in err and len(err.splitlines()) == 1


def test_corrupt_checkpoint_and_wrong_model(tmp_path):
    _train(tmp_path, "v1", "--epochs", "1")
    d = tmp_path / "checkpoints_mamba"
    good = (d / "mamba_latest.pth").read_bytes()
    from models.common import ConfigError

    with pytest.raises(ConfigError, match="v1 \\(mamba\\) weights, not transformer_v4"):
        model_from_checkpoint(d / "mamba_best.pth", "v4")  # V1 weights given to V4
    (d / "mamba_latest.pth").write_bytes(good[: len(good) // 2])
    rc = main(["--model", "v1", "--out-dir", str(tmp_path), *TINY, "--epochs", "2", "--resume"])
    assert rc == 2
    with pytest.raises(ConfigError, match="corrupt"):
        read_checkpoint(d / "mamba_latest.pth")
    assert (d / "mamba_best.pth").read_bytes()  # untouched


def test_fresh_run_never_overwrites_existing_checkpoints(tmp_path):
    _train(tmp_path, "v4", "--epochs", "1")
    best = tmp_path / "checkpoints_transformer_v4/transformer_v4_best.pth"
    before = best.read_bytes()
    rc = main(["--model", "v4", "--out-dir", str(tmp_path), *TINY, "--epochs", "1"])
    assert rc == 2 and best.read_bytes() == before


def test_failed_run_leaves_good_checkpoint(tmp_path):
    _train(tmp_path, "v4", "--epochs", "1")
    best = tmp_path / "checkpoints_transformer_v4/transformer_v4_best.pth"
    before = best.read_bytes()
    rc = main(["--model", "v4", "--out-dir", str(tmp_path), *TINY, "--epochs", "3", "--resume",
               "--data", str(tmp_path / "nope")])  # fmt: skip
    assert rc == 2 and best.read_bytes() == before
