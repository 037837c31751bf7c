"""bench.frontier on the CPU: the whole path (two training resolutions, learning curves, zero-shot SR, the plots and
frontier.md from the saved CSVs) on a synthetic source folder with a manifest, in calls of a few seconds that each
continue the last (the GPU plan's 9-minute calls, shrunk), and its bad inputs (exit 2, one line, nothing trained)."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.frontier import main
from models.sources import MANIFEST, sha256_file

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/bench/conftest.py


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Six smooth synthetic 'photographs' (four train, two held out) and their manifest, as make data writes it."""
    d = tmp_path_factory.mktemp("sources")
    y, x = np.mgrid[0:72, 0:96] / 72.0
    entries = []
    for i in range(6):
        img = np.stack([np.sin(x * (i + 1) * 3 + c) * 0.4 + 0.5 + 0.1 * np.cos(y * (i + 2) * 4) for c in range(3)], -1)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(d / f"s{i}.png")
        entries.append({"name": f"s{i}", "file": f"s{i}.png", "split": "val" if i >= 4 else "train",
                        "sha256": sha256_file(d / f"s{i}.png"), "license": "synthetic"})  # fmt: skip
    (d / MANIFEST).write_text(json.dumps({"format": 1, "split_rule": "test", "sources": entries}))
    return d


SMOKE = ["--quick", "--models", "v1", "v4", "--seconds", "1", "--curve-every", "3", "--curve-samples", "4",
         "--calib-steps", "1", "--eval-estimate", "1", "--steps-per-epoch", "4"]  # fmt: skip


@pytest.fixture(scope="module")
def frontier(sources, tmp_path_factory):
    """The plan in calls of --time-budget 8 s, each one the same command, until frontier.md is written. Before the
    third call every checkpoint is deleted, as on a fresh GPU machine that got only <out> back: finished runs were
    evaluated already (their numbers are in the state), a paused one starts again."""
    out = tmp_path_factory.mktemp("frontier")
    calls = 0
    while not (out / "frontier.md").exists():
        calls += 1
        assert calls <= 16, "the plan does not finish"
        if calls == 3:
            for ckpt in out.rglob("*.pth"):
                ckpt.unlink()
        assert main([*SMOKE, "--data", str(sources), "--out", str(out), "--time-budget", "8"]) == 0
    return out, calls


def test_the_plan_continues_across_calls_and_writes_everything(frontier):
    out, calls = frontier
    assert calls >= 2  # the time budget cut it and the same command went on
    for f in ("frontier.md", "frontier.csv", "frontier_curve_r16.png", "frontier_curve_r24.png",
              "frontier_inference.png", "r16/quality.md", "r24/quality.md", "r16/quality_curve.csv"):  # fmt: skip
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert not list(out.rglob("quality_state.pt"))  # consumed
    finals = pd.read_csv(out / "frontier.csv")
    assert set(finals["resolution"]) == {16, 24} and set(finals["model"]) == {"v1", "v4"}
    assert set(finals["budget"]) == {"equal_steps", "equal_time"} and (finals["infer_ms_mean"] > 0).all()
    curve = pd.read_csv(out / "r16" / "quality_curve.csv")
    first = curve[(curve["budget"] == "equal_time") & (curve["model"] == "v1")]
    assert first["step"].iloc[0] == 0 and first["step"].is_monotonic_increasing and len(first) >= 2
    assert first["train_time_s"].is_monotonic_increasing and curve["psnr_linear"].nunique() == 1
    s16 = pd.read_csv(out / "r16" / "quality.csv")
    assert set(s16["resolution"]) == {16, 32}  # zero-shot SR of the lowest resolution's models
    assert set(pd.read_csv(out / "r24" / "quality.csv")["resolution"]) == {24}
    envs = [json.loads((out / f"r{r}" / "quality_env.json").read_text()) for r in (16, 24)]
    assert envs[0]["settings"]["models"] == ["v1", "v4"]
    # every call left a phase record in the resolution it worked on (how the calls fell is the machine's speed)
    assert sum(len(env["phases"]) for env in envs) >= calls


def test_the_report_is_built_from_the_saved_files(frontier):
    out, _ = frontier
    md = (out / "frontier.md").read_text()
    for needle in ("## 16²", "## 24²", "− linear, per source", "− V1, per crop", "Zero-shot super-resolution",
                   "frontier_curve_r16.png", "frontier_inference.png", "4 train sources, 2 held out",
                   "dB per doubling of the steps", "Rules: steps = ",
                   "Each model − V1 at every resolution"):  # fmt: skip
        assert needle in md, needle
    (out / "frontier.md").unlink()
    assert main(["--report-only", "--out", str(out)]) == 0
    assert (out / "frontier.md").read_text() == md


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--seconds", "1", "2", "3"], "--seconds: give one value or one per --res (2), got 3"),
        (["--res", "24", "16"], "--res must be increasing"),
        (["--res", "4"], "--res: must be an integer >= 8"),
        (["--models", "v1", "v9"], "unknown model 'v9'"),
        (["--lr", "0"], "bench.compare: error: argument --lr"),  # passed through to bench.compare, checked there
    ],
)
def test_bad_inputs_exit_2_before_training(sources, tmp_path, capsys, args, needle):
    out = tmp_path / "out"
    code = main(["--quick", "--data", str(sources), "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (out / "r16").exists()


def test_default_data_needs_make_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--quick", "--out", str(tmp_path / "o")]) == 2
    assert "run `make data`" in capsys.readouterr().err


def test_an_old_state_copied_over_a_finished_resolution_is_not_run_again(frontier, sources, tmp_path, capsys):
    """A finished resolution has quality.md and no state; an old archive extracted over it brings a state back.
    The same command sees that the report already holds the state's parts: it says so and trains nothing."""
    import shutil

    import torch

    out = tmp_path / "f"
    shutil.copytree(frontier[0], out)
    env = json.loads((out / "r16" / "quality_env.json").read_text())
    torch.save({"phases": env["phases"][:-1], "settings": env["settings"]}, out / "r16" / "quality_state.pt")
    capsys.readouterr()
    assert main([*SMOKE, "--data", str(sources), "--out", str(out), "--time-budget", "8"]) == 0
    said = capsys.readouterr().out
    assert "16²: done" in said and "old copy, ignored" in said and "[compare]" not in said, said
    assert json.loads((out / "r16" / "quality_env.json").read_text()) == env  # nothing re-run
    torch.save({"phases": [{"date": "x", "git_commit": "y"}]}, out / "r16" / "quality_state.pt")  # another run's
    from bench.frontier import finished

    assert not finished(out / "r16")


def test_a_paused_resolution_hands_the_rest_of_the_call_to_the_next(sources, tmp_path, monkeypatch, capsys):
    """The resolutions are independent bench.compare runs: when 16² pauses, 24² gets what is left of the call,
    and the call ends paused (no frontier.md) with both states kept for the same command run again."""
    import bench.frontier as fr
    from bench.compare import Paused

    seen = []

    def fake_run(ca, cout, cdev):
        seen.append((ca.resolution, ca.time_budget))
        if ca.resolution == 16:
            raise Paused("the rest of V1's run")

    monkeypatch.setattr(fr, "run_compare", fake_run)
    assert main([*SMOKE, "--data", str(sources), "--out", str(tmp_path / "f"), "--time-budget", "30"]) == 0
    assert [r for r, _ in seen] == [16, 24] and 0 < seen[1][1] <= seen[0][1] <= 30
    assert "paused: run the same command again" in capsys.readouterr().out
    assert not (tmp_path / "f" / "frontier.md").exists()


def _run(psnr_at, train_at, val_ratio: float, steps: int = 4096, linear: float = 25.0):
    """A learning curve (every 256 steps) and per-epoch losses from closed forms of the step."""
    s = np.arange(0, steps + 1, 256)
    curve = pd.DataFrame({"step": s, "psnr": [psnr_at(max(x, 1)) for x in s], "psnr_linear": linear})
    train = pd.DataFrame({"step": s[1:], "train_loss": [train_at(x) for x in s[1:]]})
    train["val_loss"] = train["train_loss"] * val_ratio
    return curve, train


@pytest.mark.parametrize(
    "psnr_at,train_at,val_ratio,limits",
    [
        (lambda x: 24.0 + 0.3 * np.log2(x / 256), lambda x: 0.02 * (256 / x) ** 0.2, 1.0, "steps"),  # still rising
        (lambda x: 25.4, lambda x: 0.02 * (256 / x) ** 0.2, 1.5, "data"),  # flat held-out, train keeps falling
        (lambda x: 25.4, lambda x: 0.02, 1.0, "capacity"),  # flat held-out and flat train loss, no gap
        (lambda x: 24.0 + 0.3 * np.log2(x / 256), lambda x: 0.02, 1.3, "steps, data, capacity"),
        (lambda x: 26.5, lambda x: 0.02 * (256 / x) ** 0.2, 1.0, "curve ≥ +1 dB"),  # +1.5 dB over linear
    ],
)
def test_diagnose_names_the_limit_by_its_stated_rules(psnr_at, train_at, val_ratio, limits):
    from bench.frontier import diagnose

    x = diagnose(*_run(psnr_at, train_at, val_ratio))
    assert x["limits"] == limits
    assert x["steps"] == 4096 and x["val_over_train"] == pytest.approx(val_ratio)


def test_diagnose_extrapolates_the_steps_to_the_bar_at_the_measured_rate():
    from bench.frontier import diagnose

    # 0.3 dB per doubling, 24.0 + 0.3·4 = 25.2 at 4096 steps: +0.2 over linear, 0.8 dB (8/3 doublings) to go
    x = diagnose(*_run(lambda s: 24.0 + 0.3 * np.log2(s / 256), lambda s: 0.02, 1.0))
    assert x["slope_db_per_doubling"] == pytest.approx(0.3)
    assert x["margin_db"] == pytest.approx(0.2)
    assert x["to_target_steps"] == pytest.approx(4096 * 2 ** (0.8 / 0.3))
    flat = diagnose(*_run(lambda s: 25.4, lambda s: 0.02, 1.0))
    assert np.isnan(flat["to_target_steps"])  # not rising: no extrapolation


def test_diagnose_too_few_points_and_far_targets_do_not_crash():
    from bench.frontier import diagnose

    one_epoch = _run(lambda s: 24.0 + 0.3 * np.log2(s / 256), lambda s: 0.02, 1.0, steps=256)
    assert diagnose(*one_epoch)["limits"] == "too few points"  # one epoch: no fall of the train loss to judge
    empty = diagnose(pd.DataFrame({"step": [0], "psnr": [10.0], "psnr_linear": [25.0]}), one_epoch[1])
    assert empty["limits"] == "too few points" and np.isnan(empty["margin_db"])
    far = diagnose(*_run(lambda s: 11.0 + 0.011 * np.log2(s / 256), lambda s: 0.02 * (256 / s) ** 0.2, 1.0))
    assert far["to_target_steps"] == float("inf")  # 14 dB under linear at 0.011 dB per doubling
