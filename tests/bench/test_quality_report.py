"""bench.quality_report: the scenario decision (a pure function), the verdict's rules on synthetic numbers for
two and three models, and the committed report re-rendered byte for byte from its saved data (an environment
record of the old schema, `date_utc`)."""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.quality_report import EFF_RATIO, TIE_DB, WIN_DB, commits, decide_scenario, verdict, write_report

RESULTS = Path(__file__).resolve().parents[2] / "results"


# ----------------------------------------------------------------------------------------------
# The decision
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "d_train,d_high,ratio,want",
    [
        (WIN_DB, WIN_DB, 1.0, ("1", "wins")),
        (3.0, None, 1.0, ("1", "wins")),  # no zero-shot resolution: the training one decides
        (3.0, WIN_DB - 0.01, 1.0, ("3", "mixed")),
        (0.5, -5.0, EFF_RATIO, ("2", "efficient")),
        (-0.99, 0.0, 1.0, ("2", "same cost")),
        (0.0, 0.0, 1 / EFF_RATIO, ("2", "not efficient")),
        (TIE_DB, 0.0, 1.0, ("1/2", "between")),
        (-TIE_DB, 0.0, 1.0, ("none", "baseline better")),
        (float("nan"), None, 1.0, ("none", "baseline better")),
    ],
)
def test_decide_scenario(d_train, d_high, ratio, want):
    assert decide_scenario(d_train, d_high, ratio) == want


# ----------------------------------------------------------------------------------------------
# The verdict, from synthetic numbers
# ----------------------------------------------------------------------------------------------


def _frames(delta_by_res: dict, v1_psnr=28.0, floor=24.0, ms=(10.0, 20.0), n=8, noise=0.0, extra=None):
    """Synthetic per-image / summary / runs frames: V4 − V1 = delta_by_res[res] dB (± noise) on every image.
    extra: {model: (delta_by_res, ms)} for more models, each delta against V1."""
    deltas = {"v1": ({r: 0.0 for r in delta_by_res}, ms[0]), "v4": (delta_by_res, ms[1]), **(extra or {})}
    rows = []
    for budget in ("equal_steps", "equal_time"):
        for res in delta_by_res:
            for i in range(n):
                wiggle, sign = 0.1 * ((i % 3) - 1), 2 * (i % 2) - 1
                methods = [("linear", "interp", floor), ("nearest", "interp", floor - 1)]
                for k, (d, _) in deltas.items():
                    dk = d[res] + (noise * sign if k != "v1" else 0.0)
                    methods += [(k, "mean", v1_psnr + dk), (k, "sample", v1_psnr - 3 + dk)]
                for method, est, psnr in methods:
                    rows.append({"budget": budget, "method": method, "estimator": est, "resolution": res,
                                 "image": i, "source": i % 2, "psnr": psnr + wiggle, "ssim": 0.8,
                                 "mse": 0.01})  # fmt: skip
    per_image = pd.DataFrame(rows)
    g = per_image.groupby(["budget", "method", "estimator", "resolution"])
    summary = g["psnr"].agg(psnr_mean="mean", psnr_std="std").reset_index()
    summary["n"] = n
    summary["sampler"] = summary["estimator"].map({"mean": "euler 1 step, mean of 4", "sample": "heun 20 steps",
                                                   "interp": "griddata"})  # fmt: skip
    summary["sec_per_image"] = summary["method"].map(lambda m: 0.001 if m in ("linear", "nearest") else 0.01)
    runs = pd.DataFrame([
        {"budget": b, "model": k, "steps": 100, "target_steps": 100, "ms_per_step": m, "peak_mem_mb": 1000.0 * (j + 1),
         "time_budget_s": 60.0}
        for b in ("equal_steps", "equal_time") for j, (k, (_, m)) in enumerate(deltas.items())
    ])  # fmt: skip
    return summary, per_image, runs


@pytest.mark.parametrize(
    "deltas,ms,scenario,needle",
    [
        ({32: 3.0, 64: 2.8, 128: 2.5}, (10, 20), "1", "Scenario 1 — Transformer wins on quality (V4 − V1"),
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
    (pair,) = v["pairs"]
    assert pair["model"] == "v4" and pair["scenario"] == scenario and needle in pair["headline"], pair["headline"]
    assert not any("floor" in c for c in v["caveats"])  # both models beat the floor here


def test_verdict_flags_models_below_the_floor_and_unresolved_differences():
    summary, per_image, runs = _frames({32: 0.01, 128: 0.0}, v1_psnr=20.0, floor=24.0, noise=0.5)
    v = verdict(summary, per_image, runs, train_res=32)
    assert "interpolation floor" in v["pairs"][0]["headline"]
    assert any("Below the linear-interpolation floor" in c for c in v["caveats"])
    assert any(c.startswith("The 32² difference") and "within 2 standard errors" in c for c in v["caveats"])


def test_verdict_says_when_a_model_is_above_the_floor_but_not_clearly():
    summary, per_image, runs = _frames({32: 0.0, 128: 0.0}, v1_psnr=24.05, floor=24.0, noise=0.5)
    v = verdict(summary, per_image, runs, train_res=32)
    floor_line = next(line for line in v["pairs"][0]["lines"] if line.startswith("Against the floor"))
    assert "V1 +0.05 ± 0.00 dB (better on 8 of 8 crops; ahead on 2 of 2 held-out photographs)" in floor_line
    unclear = [c for c in v["caveats"] if c.startswith("Above the linear-interpolation floor on average")]
    assert len(unclear) == 1 and "V4's margin" in unclear[0] and "V1's margin" not in unclear[0], unclear
    assert "over 8 crops" in unclear[0]
    assert "not clearly above the interpolation floor" in v["pairs"][0]["headline"]


def test_verdict_names_a_held_out_photograph_the_models_are_behind_on():
    summary, per_image, runs = _frames({32: 0.0, 128: 0.0}, v1_psnr=25.0, floor=24.0, n=40)
    # V1 (and V4, equal to it) falls below the floor on photograph 0's crops only: +1 dB on 20 crops, −0.1 on 20
    # is a clear margin over 40 crops, but not on every photograph.
    low = (per_image["source"] == 0) & per_image["method"].isin(["v1", "v4"]) & (per_image["estimator"] == "mean")
    per_image.loc[low, "psnr"] = 23.9
    v = verdict(summary, per_image, runs, train_res=32, photo_names=["coffee.png", "chelsea.png"])
    floor_line = next(line for line in v["pairs"][0]["lines"] if line.startswith("Against the floor"))
    assert "better on 20 of 40 crops; ahead on 1 of 2 held-out photographs" in floor_line, floor_line
    assert not any(c.startswith("Above the linear-interpolation floor on average") for c in v["caveats"])
    behind = next(c for c in v["caveats"] if c.startswith("Not ahead of the linear-interpolation floor on every"))
    assert "V1 -0.10 dB on coffee.png (20 crops)" in behind and "chelsea" not in behind, behind
    assert "behind the interpolation floor on 1 of 2 held-out photographs" in v["pairs"][0]["headline"]


def test_verdict_pairs_every_model_with_the_baseline():
    """Three models: V4 and V2 each against V1 (their own scenario, lines and caveat); then V1 against V4."""
    extra = {"v2": ({32: 0.3, 128: 0.2}, 30.0)}
    summary, per_image, runs = _frames({32: 3.0, 128: 2.5}, ms=(10, 20), extra=extra, noise=0.5)
    v = verdict(summary, per_image, runs, 32, models=["v1", "v4", "v2"], baseline="v1")
    by = {p["model"]: p for p in v["pairs"]}
    assert list(by) == ["v4", "v2"]
    assert by["v4"]["scenario"] == "1" and "(V4 − V1 = +3.00 dB at 32²" in by["v4"]["headline"]
    assert by["v2"]["scenario"] == "2" and by["v2"]["headline"].startswith("Scenario 2 — V1 wins on efficiency")
    assert "V2 costs 3.00× V1's time per training step" in by["v2"]["headline"]
    assert by["v2"]["lines"][0].startswith("Quality, equal steps (100 V1 / 100 V2 steps)")
    floor_line = next(line for line in by["v2"]["lines"] if line.startswith("Against the floor"))
    assert floor_line.index("V1 +") < floor_line.index("V2 +") and "V4 +" not in floor_line  # the pair only
    assert any(c.startswith("The 32² V2 − V1 difference") for c in v["caveats"])  # +0.3 ± 0.5: unresolved
    v = verdict(summary, per_image, runs, 32, models=["v1", "v4", "v2"], baseline="v4")
    by = {p["model"]: p for p in v["pairs"]}
    assert list(by) == ["v1", "v2"] and by["v1"]["scenario"] == "none"
    assert "V4 (Transformer) is better on quality (V1 − V4 = -3.00 dB" in by["v1"]["headline"]


# ----------------------------------------------------------------------------------------------
# The committed report, from its saved data
# ----------------------------------------------------------------------------------------------


def test_committed_report_renders_byte_for_byte(tmp_path):
    """results/quality.md from results/quality_*.csv and the environment record of the old schema (date_utc, no
    models / baseline settings): the same bytes. (The loss figure is redrawn too; its bytes depend on the
    matplotlib / FreeType build, so `git diff results` after --report-only checks it, not this test.)"""
    files = ("quality_env.json", "quality.csv", "quality_per_image.csv", "quality_runs.csv", "quality_train.csv")
    for f in files:
        shutil.copy(RESULTS / f, tmp_path / f)
    for png in RESULTS.glob("quality_samples_*.png"):
        shutil.copy(png, tmp_path / png.name)
    write_report(tmp_path)
    assert (tmp_path / "quality.md").read_text() == (RESULTS / "quality.md").read_text()


def test_a_run_at_one_resolution_states_each_fact_once():
    """Trained and evaluated at 64² only (the frontier's 64² run): one inference line and one equal-time line,
    not the same fact for "the training" and "the highest" resolution twice."""
    summary, per_image, runs = _frames({64: 0.2})
    (pair,) = verdict(summary, per_image, runs, train_res=64)["pairs"]
    assert sum(x.startswith("Inference at 64²") for x in pair["lines"]) == 1, pair["lines"]
    (line,) = [x for x in pair["lines"] if x.startswith("Equal wall-clock")]
    assert line.count("at 64²") == 1, line


def test_commits_names_every_commit_a_resumed_run_ran_at():
    one = {"git_commit": "a" * 40, "phases": [{"git_commit": "a" * 40}, {"git_commit": "a" * 40}]}
    assert commits([one]) == f"commit `{'a' * 40}`"
    mixed = {"git_commit": "c" * 40, "phases": [{"git_commit": "b" * 40}, {"git_commit": "c" * 40}, {}]}
    assert commits([mixed]) == f"parts at commits `{'b' * 12}` (1), `{'c' * 12}` (2)"  # a part without one: the run's
    assert commits([{"git_commit": "d" * 40}]) == f"commit `{'d' * 40}`"  # an old record without phases
    assert commits([one, mixed]).startswith(f"parts at commits `{'a' * 12}` (2), `{'b' * 12}` (1)")
