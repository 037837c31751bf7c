"""bench.ddp_scaling on CPU: gloo, world sizes 1 and 2, a tiny case; the table is well formed and lands in the
folder asked for, never in results/; efficiency arithmetic; one-line errors."""

import json
from pathlib import Path

import pandas as pd
import pytest

from bench import ddp_scaling

REPO = Path(__file__).resolve().parents[2]


def test_cpu_run_writes_a_well_formed_table(tmp_path):
    args = ["--nproc", "2", "--cases", "v4:8:2", "--preset", "tiny", "--steps", "2", "--warmup", "1",
            "--device", "cpu", "--out", str(tmp_path)]  # fmt: skip
    assert ddp_scaling.main(args) == 0
    df = pd.read_csv(tmp_path / "ddp_scaling.csv")
    assert list(df["world"]) == [1, 2] and set(df["status"]) == {"ok"}
    assert list(df["global_batch"]) == [2, 4] and list(df["backend"]) == ["-", "gloo"]
    assert df.loc[0, "efficiency"] == pytest.approx(1.0) and df["efficiency"].between(0, 10).all()
    for col in ("steps_per_s", "samples_per_s", "step_ms", "peak_mem_mb"):
        assert (df[col] > 0).all(), col
    assert df.loc[1, "samples_per_s"] == pytest.approx(4 * df.loc[1, "steps_per_s"])
    md = (tmp_path / "ddp_scaling.md").read_text()
    assert "CPU RUN" in md and "| v4 | 8 | 64 | 2 | 2 | 4 |" in md and "**Environment.**" in md
    rec = json.loads((tmp_path / "ddp_scaling.json").read_text())
    assert rec["env"]["nproc"] == 2 and rec["env"]["git_commit"] and len(rec["rows"]) == 2


def test_efficiency_against_the_world_one_row():
    rows = [
        {"model": "v4", "res": 64, "batch_per_gpu": 64, "world": 1, "status": "ok", "samples_per_s": 100.0},
        {"model": "v4", "res": 64, "batch_per_gpu": 64, "world": 2, "status": "ok", "samples_per_s": 180.0},
        {"model": "v1", "res": 64, "batch_per_gpu": 64, "world": 1, "status": "oom", "note": "x"},
        {"model": "v1", "res": 64, "batch_per_gpu": 64, "world": 2, "status": "ok", "samples_per_s": 50.0},
    ]
    df = ddp_scaling.scaling_table(rows)
    assert df.loc[1, "speedup"] == pytest.approx(1.8) and df.loc[1, "efficiency"] == pytest.approx(0.9)
    assert df.loc[3, ["speedup", "efficiency"]].isna().all()  # no baseline: no efficiency


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--cases", "v4:128"], "must be MODEL:RES:BATCH"),
        (["--cases", "v9:64:64"], "unknown model 'v9'"),
        (["--cases", "v4:4:8"], "must be an integer >= 8"),
        (["--device", "cpu", "--out", str(REPO / "results")], "a CPU run never writes into results/"),
        (["--cases", "v4:64:64", "--out", "/tmp"], "v4 training step on cpu × 2 processes needs ~"),  # before a launch
    ],
)
def test_bad_input_is_one_line(argv, words, capsys, monkeypatch):
    monkeypatch.setenv("MEM_BUDGET_GB", "4")
    assert ddp_scaling.main(["--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
