"""bench.compare on the CPU: the --quick smoke end to end, the verdict rules on synthetic numbers, the
ablation pass-through, and bad inputs (exit 2, one line, nothing trained)."""

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from bench.compare import build_parser, main, train_argv, verdict

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/bench/conftest.py


# ----------------------------------------------------------------------------------------------
# --quick end to end
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    assert main(["--quick", "--out", str(out)]) == 0
    return out


def test_quick_writes_everything(quick):
    for f in ("quality.md", "quality.csv", "quality_per_image.csv", "quality_runs.csv", "quality_train.csv",
              "quality_env.json", "quality_loss.png", "quality_samples_res16.png", "quality_samples_sr24.png",
              "quality_equal_time_samples_res16.png"):  # fmt: skip
        assert (quick / f).is_file() and (quick / f).stat().st_size > 0, f
    summary = pd.read_csv(quick / "quality.csv")
    assert set(summary["budget"]) == {"equal_steps", "equal_time"}
    assert set(summary["resolution"]) == {16, 24}
    assert set(zip(summary["method"], summary["estimator"])) == {
        ("nearest", "interp"), ("linear", "interp"), ("v1", "mean"), ("v1", "sample"), ("v4", "mean"), ("v4", "sample")
    }  # fmt: skip
    assert len(summary) == 2 * 2 * 6 and (summary["n"] == 2).all()
    runs = pd.read_csv(quick / "quality_runs.csv")
    steps = runs[runs["budget"] == "equal_steps"].set_index("model")["steps"]
    assert steps["v1"] == steps["v4"] >= 1  # equal steps really are equal
    assert runs["reused"].sum() >= 1  # the slower model's equal-time run doubles as its equal-steps run
    env = json.loads((quick / "quality_env.json").read_text())
    for key in ("torch", "git_commit", "budgets", "settings", "models", "mixer_backend", "gpu"):
        assert key in env, key
    assert env["budgets"]["equal_steps"] == steps["v1"]
    md = (quick / "quality.md").read_text()
    for needle in ("## Verdict\n\n**", "linear interp", "posterior mean", "## Cost", "quality_samples_res16.png",
                   "quality_loss.png"):  # fmt: skip
        assert needle in md, needle
    assert len(list((quick / "runs").rglob("*_best.pth"))) == 3  # 4 runs, one of them reused


def test_two_phases_give_the_same_files_as_one(quick, tmp_path, capsys):
    """--phase time then --phase steps (two processes: two GPU calls) write what one run writes."""
    assert main(["--quick", "--phase", "time", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "quality_state.pt").is_file() and not (tmp_path / "quality.md").exists()
    assert main(["--quick", "--phase", "steps", "--out", str(tmp_path), "--seconds", "9"]) == 2  # other settings
    assert "--seconds 4.0 vs 9.0" in capsys.readouterr().err
    assert main(["--quick", "--phase", "steps", "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "quality_state.pt").exists()  # consumed
    assert sorted(p.name for p in tmp_path.glob("quality*")) == sorted(p.name for p in quick.glob("quality*"))
    env = json.loads((tmp_path / "quality_env.json").read_text())
    assert [ph["phase"] for ph in env["phases"]] == ["time", "steps"]
    assert env["wall_clock_s"] == pytest.approx(sum(ph["wall_clock_s"] for ph in env["phases"]))
    for f in ("quality_per_image.csv", "quality_runs.csv"):  # the same rows and columns
        a, b = pd.read_csv(quick / f), pd.read_csv(tmp_path / f)
        assert list(a.columns) == list(b.columns) and len(a) == len(b), f


def test_phase_steps_without_phase_time_is_a_clean_error(tmp_path, capsys):
    assert main(["--quick", "--phase", "steps", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "run python -m bench.compare --phase time" in err and len(err.splitlines()) == 1


def test_report_only_rebuilds_the_markdown_from_the_data(quick):
    md = quick / "quality.md"
    before = md.read_text()
    md.unlink()
    assert main(["--report-only", "--out", str(quick)]) == 0
    assert md.read_text() == before


# ----------------------------------------------------------------------------------------------
# The verdict, from synthetic numbers
# ----------------------------------------------------------------------------------------------


def _frames(delta_by_res: dict, v1_psnr=28.0, floor=24.0, ms=(10.0, 20.0), n=8, noise=0.0):
    """Synthetic per-image / summary / runs frames: V4 − V1 = delta_by_res[res] dB (± noise) on every image."""
    rows = []
    for budget in ("equal_steps", "equal_time"):
        for res, delta in delta_by_res.items():
            for i in range(n):
                wiggle, d = 0.1 * ((i % 3) - 1), delta + noise * (2 * (i % 2) - 1)
                for method, est, psnr in (("v1", "mean", v1_psnr), ("v4", "mean", v1_psnr + d),
                                          ("v1", "sample", v1_psnr - 3), ("v4", "sample", v1_psnr - 3 + d),
                                          ("linear", "interp", floor), ("nearest", "interp", floor - 1)):  # fmt: skip
                    rows.append({"budget": budget, "method": method, "estimator": est, "resolution": res,
                                 "image": i, "source": i % 2, "psnr": psnr + wiggle, "ssim": 0.8,
                                 "mse": 0.01})  # fmt: skip
    per_image = pd.DataFrame(rows)
    g = per_image.groupby(["budget", "method", "estimator", "resolution"])
    summary = g["psnr"].agg(psnr_mean="mean", psnr_std="std").reset_index()
    summary["n"] = n
    summary["sampler"] = summary["estimator"].map({"mean": "euler 1 step, mean of 4", "sample": "heun 20 steps",
                                                   "interp": "griddata"})  # fmt: skip
    summary["sec_per_image"] = summary["method"].map({"v1": 0.01, "v4": 0.03, "linear": 0.001, "nearest": 0.001})
    runs = pd.DataFrame([
        {"budget": b, "model": k, "steps": 100, "target_steps": 100, "ms_per_step": m, "peak_mem_mb": 1000.0 * (j + 1),
         "time_budget_s": 60.0}
        for b in ("equal_steps", "equal_time") for j, (k, m) in enumerate(zip(("v1", "v4"), ms))
    ])  # fmt: skip
    return summary, per_image, runs


@pytest.mark.parametrize(
    "deltas,ms,scenario,needle",
    [
        ({32: 3.0, 64: 2.8, 128: 2.5}, (10, 20), "1", "Scenario 1"),
        ({32: 3.0, 64: 1.5, 128: 0.8}, (10, 20), "3", "Scenario 3"),
        ({32: 0.4, 64: 0.2, 128: 0.1}, (10, 20), "2", "MAMBA wins on efficiency"),
        ({32: 0.4, 64: 0.2, 128: 0.1}, (20, 10), "2", "does NOT win on efficiency"),
        ({32: -0.4, 128: 0.1}, (10, 11), "2", "both cost about the same"),
        ({32: 1.5, 128: 1.0}, (10, 20), "1/2", "Between Scenarios 1 and 2"),
        ({32: -2.0, 128: -1.0}, (10, 20), "none", "V1 (Mamba) is better"),
    ],
)
def test_verdict_rules(deltas, ms, scenario, needle):
    summary, per_image, runs = _frames(deltas, ms=ms)
    v = verdict(summary, per_image, runs, train_res=32)
    assert v["scenario"] == scenario and needle in v["headline"], v["headline"]
    assert not any("floor" in c for c in v["caveats"])  # both models beat the floor here


def test_verdict_flags_models_below_the_floor_and_unresolved_differences():
    summary, per_image, runs = _frames({32: 0.01, 128: 0.0}, v1_psnr=20.0, floor=24.0, noise=0.5)
    v = verdict(summary, per_image, runs, train_res=32)
    assert "interpolation floor" in v["headline"]
    assert any("Below the linear-interpolation floor" in c for c in v["caveats"])
    assert any("within 2 standard errors" in c for c in v["caveats"])


def test_verdict_says_when_a_model_is_above_the_floor_but_not_clearly():
    summary, per_image, runs = _frames({32: 0.0, 128: 0.0}, v1_psnr=24.05, floor=24.0, noise=0.5)
    v = verdict(summary, per_image, runs, train_res=32)
    floor_line = next(line for line in v["lines"] if line.startswith("Against the floor"))
    assert "V1 +0.05 ± 0.00 dB (better on 8 of 8 crops; ahead on 2 of 2 held-out photographs)" in floor_line
    unclear = [c for c in v["caveats"] if c.startswith("Above the linear-interpolation floor on average")]
    assert len(unclear) == 1 and "V4's margin" in unclear[0] and "V1's margin" not in unclear[0], unclear
    assert "not clearly above the interpolation floor" in v["headline"]


def test_verdict_names_a_held_out_photograph_the_models_are_behind_on():
    summary, per_image, runs = _frames({32: 0.0, 128: 0.0}, v1_psnr=25.0, floor=24.0, n=40)
    # V1 (and V4, equal to it) falls below the floor on photograph 0's crops only: +1 dB on 20 crops, −0.1 on 20
    # is a clear margin over 40 crops, but not on every photograph.
    low = (per_image["source"] == 0) & per_image["method"].isin(["v1", "v4"]) & (per_image["estimator"] == "mean")
    per_image.loc[low, "psnr"] = 23.9
    v = verdict(summary, per_image, runs, train_res=32, photo_names=["coffee.png", "chelsea.png"])
    floor_line = next(line for line in v["lines"] if line.startswith("Against the floor"))
    assert "better on 20 of 40 crops; ahead on 1 of 2 held-out photographs" in floor_line, floor_line
    assert not any(c.startswith("Above the linear-interpolation floor on average") for c in v["caveats"])
    behind = next(c for c in v["caveats"] if c.startswith("Not ahead of the linear-interpolation floor on every"))
    assert "V1 -0.10 dB on coffee.png (20 crops)" in behind and "chelsea" not in behind, behind
    assert "behind the interpolation floor on 1 of 2 held-out photographs" in v["headline"]


# ----------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------


def test_ablation_flags_pass_through_to_v4_and_where_meaningful_v1(tmp_path):
    a = build_parser().parse_args(["--num-heads", "4", "--dim-feedforward", "512", "--num-layers", "3"])
    a = SimpleNamespace(**{**vars(a), "batch_size": 64, "lr": 3e-4, "device": "cpu"})
    v4 = train_argv(a, "v4", tmp_path, 10, 5.0)
    v1 = train_argv(a, "v1", tmp_path, 10, None)
    assert v4[v4.index("--num-heads") + 1] == "4" and v4[v4.index("--dim-feedforward") + 1] == "512"
    assert v1[v1.index("--num-layers") + 1] == "3" and "--dim-feedforward" not in v1  # V1 has no FFN
    assert v4[v4.index("--time-budget") + 1] == "5.000" and "--time-budget" not in v1


@pytest.mark.parametrize(
    "args,env,needle",
    [
        (["--seconds", "0"], {}, "--seconds: must be a finite number > 0, got 0"),
        (["--resolutions", "8"], {}, ">= the training resolution 32"),
        (["--resolutions", "x"], {}, "resolution must be an integer"),
        (["--resolution", "4"], {}, "--resolution: must be an integer >= 8, got 4"),
        (["--num_samples", "0"], {}, "--num-samples/--num_samples: must be an integer >= 1, got 0"),
        (["--observed-frac", "1.5"], {}, "--observed-frac: must be a finite number > 0 and < 1"),
        ([], {"NUM_HEADS": "7"}, "not divisible by num_heads=7"),
        ([], {"NUM_LAYERS": "two"}, "NUM_LAYERS"),
        (["--preset", "huge"], {}, "unknown preset"),
        ([], {"BATCH_SIZE": "many"}, "BATCH_SIZE"),
    ],
)
def test_bad_inputs_exit_2_before_training(tmp_path, capsys, monkeypatch, args, env, needle):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out, work = tmp_path / "out", tmp_path / "work"
    assert main([*args, "--out", str(out), "--work-dir", str(work), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bench.compare: error:") and needle in err, err
    assert not out.exists() and not work.exists()


def test_report_only_on_an_empty_folder_is_a_clean_error(tmp_path, capsys):
    assert main(["--report-only", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "quality_env.json is missing" in err, err


@pytest.mark.parametrize(
    "ms,steps_flag,retrained,S",
    [
        ({"v1": 0.010, "v4": 0.020}, 0, ["v1"], 48),  # V4 slower: its equal-time run is reused, V1 trains 48 steps
        ({"v1": 0.020, "v4": 0.010}, 0, ["v4"], 48),
        ({"v1": 0.010, "v4": 0.010}, 0, [], 97),  # as fast as each other: both equal-time runs are reused
        ({"v1": 0.010, "v4": 0.020}, 30, ["v1", "v4"], 30),  # --steps: both trained afresh
    ],
)
def test_budget_bookkeeping(monkeypatch, ms, steps_flag, retrained, S):
    calls = []

    def fake_run(a, key, budget, max_steps, time_budget):
        calls.append((key, budget, max_steps, time_budget))
        return {"budget": budget, "model": key, "steps": max_steps, "target_steps": max_steps, "reused": False}

    monkeypatch.setattr("bench.compare.run_training", fake_run)
    from bench.compare import train_equal_steps, train_equal_time

    a = SimpleNamespace(seconds=1.0, steps=steps_flag)
    runs, s, _ = train_equal_steps(a, train_equal_time(a, ms))
    assert s == S
    assert [c[0] for c in calls if c[1] == "equal_steps"] == retrained
    assert all(c[3] == 1.0 for c in calls if c[1] == "equal_time")  # T is a hard stop for both
    by = {(r["model"], r["budget"]): r for r in runs}
    assert by["v1", "equal_steps"]["steps"] == by["v4", "equal_steps"]["steps"] == S
    assert sum(r["reused"] for r in runs) == 2 - len(retrained)
