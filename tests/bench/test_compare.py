"""bench.compare on the CPU: the --quick smoke end to end (two models, and three with a throwaway variant),
the budgets' bookkeeping for any list of models, the ablation pass-through into the TrainConfig, and bad inputs
(exit 2, one line, nothing trained). The verdict and the report: test_quality_report.py."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bench.compare import build_parser, main, train_config

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
    for key in ("date", "hostname", "torch", "git_commit", "budgets", "settings", "models", "mixer_backend"):
        assert key in env, key  # bench.env's record, plus the run's own fields
    assert "date_utc" not in env and all("date" in ph for ph in env["phases"])  # one schema
    assert env["budgets"]["equal_steps"] == steps["v1"]
    assert env["settings"]["models"] == ["v1", "v4"] and env["settings"]["baseline"] == "v1"
    md = (quick / "quality.md").read_text()
    for needle in ("## Verdict\n\n**", "linear interp", "posterior mean", "## Cost", "quality_samples_res16.png",
                   "quality_loss.png", "## V4 − V1 PSNR", env["date"]):  # fmt: skip
        assert needle in md, needle
    assert len(list((quick / "runs").rglob("*_best.pth"))) == 3  # 4 runs, one of them reused


def test_two_phases_give_the_same_files_as_one(quick, tmp_path, capsys):
    """--phase time then --phase steps (two processes: two GPU calls) write what one run writes."""
    assert main(["--quick", "--phase", "time", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "quality_state.pt").is_file() and not (tmp_path / "quality.md").exists()
    assert main(["--quick", "--phase", "steps", "--out", str(tmp_path), "--seconds", "9"]) == 2  # other settings
    assert "--seconds 4.0 vs 9.0" in capsys.readouterr().err
    stale = (tmp_path / "quality_state.pt").read_bytes()
    assert main(["--quick", "--phase", "steps", "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "quality_state.pt").exists()  # consumed
    assert sorted(p.name for p in tmp_path.glob("quality*")) == sorted(p.name for p in quick.glob("quality*"))
    # an old copy of the state carried back over the finished folder: refused, not trained again
    (tmp_path / "quality_state.pt").write_bytes(stale)
    before = (tmp_path / "quality.md").read_text()
    assert main(["--quick", "--phase", "steps", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is older than the finished report" in err, err
    assert (tmp_path / "quality.md").read_text() == before
    (tmp_path / "quality_state.pt").unlink()
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
# Flags
# ----------------------------------------------------------------------------------------------


def test_ablation_flags_pass_through_to_v4_and_where_meaningful_v1(tmp_path):
    a = build_parser().parse_args(["--num-heads", "4", "--dim-feedforward", "512", "--num-layers", "3"])
    a = SimpleNamespace(**{**vars(a), "batch_size": 64, "lr": 3e-4, "device": "cpu"})
    v4 = train_config(a, "v4", tmp_path, 10, 5.0)
    v1 = train_config(a, "v1", tmp_path, 10, None)
    assert (v4.model, v4.num_heads, v4.dim_feedforward, v4.batch_size, v4.lr) == ("v4", 4, 512, 64, 3e-4)
    assert v1.num_layers == 3 and v1.dim_feedforward is None  # V1 has no FFN
    assert v4.time_budget == 5.0 and v1.time_budget is None and v1.max_steps == v4.max_steps == 10
    assert v1.out_dir == str(tmp_path) and v1.overwrite and v1.save_every == 0


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
        (["--batch-size", "0"], {}, "--batch-size: must be an integer >= 1, got 0"),  # never replaced by the default
        (["--lr", "0"], {}, "--lr: must be a finite number > 0, got 0"),
        (["--models", "v1", "v9"], {}, "--models: unknown model 'v9'"),
        (["--models", "v4"], {}, "--models needs a baseline and at least one model"),
        (["--models", "v1", "v4", "v1"], {}, "v1 listed twice"),
        (["--baseline", "v3"], {}, "--baseline 'v3' is not one of --models v1 v4"),
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
        ({"v1": 0.010, "v2": 0.030, "v4": 0.020}, 0, ["v1", "v4"], 32),  # the slowest (V2) sets S; the rest retrain
        ({"v4": 0.020, "v1": 0.010, "v3": 0.020}, 0, ["v1"], 48),  # two as slow as each other: both reused
    ],
)
def test_budget_bookkeeping(monkeypatch, ms, steps_flag, retrained, S):
    calls = []

    def fake_run(a, key, budget, max_steps, time_budget):
        calls.append((key, budget, max_steps, time_budget))
        return {"budget": budget, "model": key, "steps": max_steps, "target_steps": max_steps, "reused": False}

    monkeypatch.setattr("bench.compare.run_training", fake_run)
    from bench.compare import train_equal_steps, train_equal_time

    a = SimpleNamespace(seconds=1.0, steps=steps_flag, models=list(ms))
    runs, s, _ = train_equal_steps(a, train_equal_time(a, ms))
    assert s == S
    assert sorted(c[0] for c in calls if c[1] == "equal_steps") == sorted(retrained)
    assert all(c[3] == 1.0 for c in calls if c[1] == "equal_time")  # T is a hard stop for every model
    by = {(r["model"], r["budget"]): r for r in runs}
    assert {by[k, "equal_steps"]["steps"] for k in ms} == {S}
    assert sum(r["reused"] for r in runs) == len(ms) - len(retrained)
    assert [(r["budget"], r["model"]) for r in runs] == [(b, k) for b in ("equal_steps", "equal_time") for k in ms]


# ----------------------------------------------------------------------------------------------
# Any list of models: a throwaway variant that only build_model knows
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def throwaway(monkeypatch):
    """'w1': a V4 under another name, one record in the table of variants (no branch for it anywhere)."""
    import dataclasses

    from models.v4_transformer import TransformerDiffusion
    from models.variants import VARIANTS

    class Throwaway(TransformerDiffusion):
        name, version = "throwaway", "w1"

    record = dataclasses.replace(VARIANTS["v4"], key="w1", short="W1", family="Throwaway", cls=Throwaway)
    monkeypatch.setitem(VARIANTS, "w1", record)
    return "w1"


def test_three_models_with_a_throwaway_variant_and_another_baseline(throwaway, tmp_path):
    out = tmp_path / "q"
    args = ["--quick", "--seconds", "1", "--calib-steps", "1", "--models", "v4", throwaway, "v1", "--baseline", "v4"]
    assert main([*args, "--out", str(out)]) == 0
    runs = pd.read_csv(out / "quality_runs.csv")
    assert list(runs["model"]) == ["v4", "w1", "v1"] * 2
    steps = runs[runs["budget"] == "equal_steps"]["steps"]
    assert steps.nunique() == 1 and steps.iloc[0] == runs[runs["budget"] == "equal_time"]["steps"].min()
    summary = pd.read_csv(out / "quality.csv")
    assert set(summary["method"]) == {"nearest", "linear", "v4", "w1", "v1"}
    md = (out / "quality.md").read_text()
    assert md.startswith("# V4 (Transformer) vs W1 (Throwaway) vs V1 (Mamba): quality under equal budgets")
    assert "## W1 − V4 PSNR" in md and "## V1 − V4 PSNR" in md and "## V4 − V4" not in md  # each vs the baseline
    verdict = md.split("## Verdict")[1].split("The verdict is computed")[0]
    assert verdict.count("\n**") == 2 and "W1 − V4" in verdict and "V1 − V4" in verdict  # one headline per model
    assert "Rules: Vk − V4" in md
    env = json.loads((out / "quality_env.json").read_text())
    assert env["settings"]["models"] == ["v4", "w1", "v1"] and env["settings"]["baseline"] == "v4"
    assert set(env["models"]["equal_steps"]) == {"v4", "w1", "v1"}
    before = md
    (out / "quality.md").unlink()
    assert main(["--report-only", "--out", str(out)]) == 0 and (out / "quality.md").read_text() == before


def test_a_run_starts_when_it_and_its_evaluation_fit_or_as_the_calls_first_run(monkeypatch):
    """unit_seconds: a fresh run's training (its T, or its steps at the calibrated rate) + 15 % + 10 s + the
    longest evaluation so far. may_start: it starts if that fits in what is left of the call (its checkpoint need
    not outlive the call), or as the call's first run whatever it needs, so that no call ends having done nothing
    (a later call would look the same)."""
    from types import SimpleNamespace

    from bench import compare

    state = {"calib": {"v1": 0.03}, "eval_s": {}}
    left = {"s": 250.0}
    progress = SimpleNamespace(state=state, left=lambda: left["s"])
    a = SimpleNamespace(progress=progress, eval_estimate=120.0)
    assert compare.unit_seconds(a, "v1", 1000, 150.0) == pytest.approx(1.15 * 150 + 10 + 120)  # equal time: its T
    assert compare.unit_seconds(a, "v1", 1000, None) == pytest.approx(1.15 * 30 + 10 + 120)  # equal steps
    state["eval_s"]["per_model"] = 40.0  # once an evaluation was timed, its time replaces the estimate
    need = compare.unit_seconds(a, "v1", 1000, 150.0)
    assert need == pytest.approx(1.15 * 150 + 10 + 40)
    compare.new_call()
    assert compare.may_start(progress, 10_000.0)  # the call's first run: whatever it needs
    monkeypatch.setitem(compare.CALL, "started", 1)
    assert compare.may_start(progress, need)  # 222.5 s fit in 250
    left["s"] = 150.0
    assert not compare.may_start(progress, need)  # waits for the next call
    compare.new_call()
    assert compare.may_start(progress, need) and compare.CALL["started"] == 0


def test_the_state_keeps_text_columns_as_plain_objects():
    """compact() (what the state keeps of an evaluation) stores pandas' string columns as objects: a state saved
    on a machine whose pandas backs strings with pyarrow must load on one without it."""
    from bench.compare import compact
    from bench.evaluate import EvalResult

    per_image = pd.DataFrame({"method": pd.array(["v1", "linear"], dtype="string"), "psnr": [25.0, 24.0]})
    timing = pd.DataFrame({"method": pd.array(["v1"], dtype="string"), "ms": [1.0]})
    panel = {32: {"v1": [np.zeros((2, 2, 3), np.float32)]}}
    out = compact(EvalResult(per_image, timing, panel, 32, 0.2))
    for df in (out.per_image, out.timing):
        assert not any(isinstance(t, pd.StringDtype) for t in df.dtypes)
        assert df.columns.dtype == object and df.index.dtype != "str"  # the labels too (pandas 3: str by default)
    assert out.per_image["method"].tolist() == ["v1", "linear"] and out.per_image["psnr"].dtype == np.float64
