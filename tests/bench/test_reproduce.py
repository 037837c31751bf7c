"""bench.reproduce: two runs' rows matched on the key, the worst deviation per class, --tol and bad input."""

import json

import pandas as pd
import pytest

from bench import reproduce


def _run(tmp_path, name, scale_small=1.0, scale_large=1.0, device_scale=1.0, extra=(), runs=()):
    rows = []
    for model, backend in (("v1", "mamba_ssm"), ("v4", "sdpa")):
        for r in (32, 64, 96, 128):
            for kind in ("fwd", "train"):
                wall = (10.0 if r < 96 else 100.0) * (scale_small if r < 96 else scale_large)
                rows.append(
                    {
                        "model": model,
                        "backend": backend,
                        "level": "model",
                        "res": r,
                        "batch": 8,
                        "dtype": "bf16",
                        "kind": kind,
                        "status": "ok",
                        "median_ms": wall,
                        "device_ms": 5.0 * device_scale,
                    }
                )
    rows.append(
        {
            "model": "v4",
            "backend": "seed",
            "level": "model",
            "res": 128,
            "batch": 8,
            "dtype": "bf16",
            "kind": "train",
            "status": "oom",
        }
    )
    rows += list(extra)
    path = tmp_path / name / "raw" / "sweep_B8_bf16.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"runs": list(runs), "rows": rows}))
    return tmp_path / name


def test_worst_deviation_per_class(tmp_path, capsys):
    a = _run(tmp_path, "a")
    b = _run(tmp_path, "b", scale_small=1.6, scale_large=1.01, device_scale=1.03)
    assert reproduce.main([str(a), str(b), "--tol", "5", "--out", str(tmp_path / "rep.md")]) == 0
    text = capsys.readouterr().out
    assert "device time (all rows): 3.00 %" in text and "within 5 %" in text
    assert "wall time at r >= 96: 1.00 %" in text
    assert "wall time (all rows): 60.00 %" in text  # small rows: reported, not held to the bar
    assert (tmp_path / "rep.md").read_text() == text


def test_tol_exceeded_exits_1(tmp_path, capsys):
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b", device_scale=1.2)
    assert reproduce.main([str(a / "raw" / "sweep_B8_bf16.json"), str(b), "--tol", "5"]) == 1
    assert "OUTSIDE 5 %" in capsys.readouterr().out


def test_unmatched_and_failed_rows_are_ignored(tmp_path):
    extra = [
        {
            "model": "v1",
            "backend": "reference",
            "level": "model",
            "res": 32,
            "batch": 8,
            "dtype": "bf16",
            "kind": "train",
            "status": "ok",
            "median_ms": 500.0,
        }
    ]
    a, b = _run(tmp_path, "a", extra=extra), _run(tmp_path, "b")
    cmp = reproduce.compare(reproduce.load_rows(a), reproduce.load_rows(b))
    assert len(cmp) == 2 * 4 * 2 * 2  # series × r × kinds × metrics; the reference row is in A only


@pytest.mark.parametrize(
    "argv,words",
    [(["/nonexistent/x", "/nonexistent/y"], "no sweep data"), (["{a}", "{a}", "--tol", "-1"], "--tol must be >= 0")],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, words):
    a = _run(tmp_path, "a")
    assert reproduce.main([x.format(a=a) for x in argv]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


def _host_rows(wall_a_scale):
    """Two r = 96 rows: one device-bound (wall = 1.01 × device), one host-affected (wall = 1.5 × device)."""
    rows = []
    for model, wall in (("v1", 101.0), ("v2", 150.0)):
        rows.append({"model": model, "backend": "mamba_ssm", "level": "model", "res": 96, "batch": 8, "dtype": "bf16",
                     "kind": "train", "status": "ok", "median_ms": wall * (wall_a_scale if model == "v2" else 1.0),
                     "device_ms": 100.0, "round_spread_pct": 30.0})  # fmt: skip
    return rows


def _write(tmp_path, name, rows):
    path = tmp_path / name / "raw" / "sweep_B8_bf16.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"runs": [], "rows": rows}))
    return tmp_path / name


def test_host_affected_rows_are_split_out_and_listed(tmp_path, capsys):
    a = _write(tmp_path, "a", _host_rows(1.0))
    b = _write(tmp_path, "b", _host_rows(1.2))  # the host-bound row moves 20 %, the device-bound one not at all
    assert reproduce.main([str(a), str(b), "--tol", "5"]) == 1  # strict: issue 10's bar as stated
    text = capsys.readouterr().out
    assert "wall time at r >= 96: 20.00 %" in text and "OUTSIDE 5 %" in text
    assert "device-bound in both runs: 0.00 %" in text
    assert "host-affected: 20.00 %" in text and "(part of the held class above)" in text
    assert "Host-affected wall-time rows at r ≥ 96 (1)" in text and "1 of 1 deviate by no more than" in text
    assert "| v2 | mamba_ssm | model | 96 |" in text and "all of them (issue 10's bar)" in text
    assert reproduce.main([str(a), str(b), "--tol", "5", "--exempt-host-bound"]) == 0
    text = capsys.readouterr().out
    assert "the device-bound ones (--exempt-host-bound)" in text and "not held: the host's speed" in text


def test_host_margin_decides_the_regime_and_a_row_without_device_time_is_host_affected(tmp_path):
    rows = _host_rows(1.0)
    cmp = reproduce.compare(pd.DataFrame(rows), pd.DataFrame(rows), host_margin=60.0)
    assert not cmp[cmp.metric == "median_ms"].host_affected.any()  # 1.5× is within a 60 % margin
    cmp = reproduce.compare(pd.DataFrame(rows), pd.DataFrame(rows))
    assert list(cmp[cmp.metric == "median_ms"].host_affected) == [False, True]
    bare = [{k: v for k, v in r.items() if k != "device_ms"} for r in rows]
    cmp = reproduce.compare(pd.DataFrame(bare), pd.DataFrame(bare))
    assert cmp.host_affected.all()


def test_bad_host_margin_is_one_line(tmp_path, capsys):
    a = _write(tmp_path, "a", _host_rows(1.0))
    assert reproduce.main([str(a), str(a), "--host-margin", "-1"]) == 2
    assert "--host-margin must be >= 0" in capsys.readouterr().err


def test_host_pace_is_the_host_time_ratio_of_rows_host_bound_in_both_runs():
    def rows(scale, run_id):
        out = []
        for r, frac in ((32, 0.8), (48, 0.7), (64, 0.6), (128, 0.01)):  # the r = 128 row is device-bound
            out.append({"model": "v1", "backend": "mamba_ssm", "level": "model", "res": r, "batch": 8,
                        "dtype": "bf16", "kind": "train", "status": "ok", "median_ms": 10.0 * r * scale,
                        "device_ms": 2.0 * r, "host_frac": frac, "host_ms": 10.0 * r * scale * frac,
                        "run_id": run_id})  # fmt: skip
        return pd.DataFrame(out)

    pace = reproduce.host_pace(reproduce.compare(rows(1.0, "A1"), rows(1.25, "B1")))
    assert list(pace.columns) == ["run_id_a", "run_id_b", "rows", "B/A", "q1", "q3"]
    assert pace.iloc[0][["run_id_a", "run_id_b", "rows"]].tolist() == ["A1", "B1", 3]
    assert pace.iloc[0]["B/A"] == pytest.approx(1.25)
    assert reproduce.host_pace(reproduce.compare(rows(1.0, "A1").drop(columns="host_frac"), rows(1.0, "B1"))).empty


def test_runs_without_wall_times_have_empty_wall_classes(tmp_path, capsys):
    rows = [{k: v for k, v in r.items() if k != "median_ms"} for r in _host_rows(1.0)]
    a, b = _write(tmp_path, "a", rows), _write(tmp_path, "b", rows)
    assert reproduce.main([str(a), str(b), "--tol", "5"]) == 1  # the held wall class is empty: not shown to hold
    text = capsys.readouterr().out
    assert "device time (all rows): 0.00 %" in text and "host-affected: no matched rows" in text
    assert "NOTHING TO HOLD" in text


def test_exempt_mode_with_no_device_time_in_one_run_fails_instead_of_passing(tmp_path, capsys):
    a = _write(tmp_path, "a", _host_rows(1.0))
    b = _write(tmp_path, "b", [{k: v for k, v in r.items() if k != "device_ms"} for r in _host_rows(1.2)])
    assert reproduce.main([str(a), str(b), "--tol", "5", "--exempt-host-bound"]) == 1
    assert "NOTHING TO HOLD" in capsys.readouterr().out


def test_host_affected_in_either_run_not_only_both(tmp_path):
    rows_a = _host_rows(1.0)
    rows_b = [dict(r, median_ms=150.0) if r["model"] == "v1" else r for r in _host_rows(1.0)]  # v1: 1.01× then 1.5×
    cmp = reproduce.compare(pd.DataFrame(rows_a), pd.DataFrame(rows_b))
    assert cmp[(cmp.metric == "median_ms") & (cmp.model == "v1")].host_affected.all()


def _dev_rows(backend, kind, device_ms, spread):
    return [{"model": "v1", "backend": backend, "level": "model", "res": r, "batch": 8, "dtype": "bf16", "kind": kind,
             "status": "ok", "median_ms": 2 * device_ms, "device_ms": device_ms, "graph_round_spread_pct": spread}
            for r in (32, 64)]  # fmt: skip


def test_device_shifts_tell_a_shift_between_runs_from_scatter_and_list_only_series_outside(tmp_path, capsys):
    a = _write(tmp_path, "a", _dev_rows("mamba2", "train", 10.0, 0.2) + _dev_rows("mamba_ssm", "train", 10.0, 10.0)
               + _dev_rows("mamba_ssm", "fwd", 10.0, 0.2))  # fmt: skip
    b = _write(tmp_path, "b", _dev_rows("mamba2", "train", 9.3, 0.3) + _dev_rows("mamba_ssm", "train", 10.8, 12.0)
               + _dev_rows("mamba_ssm", "fwd", 10.1, 0.2))  # fmt: skip
    shifts = reproduce.device_shifts(reproduce.compare(reproduce.load_rows(a), reproduce.load_rows(b)), tol=5.0)
    by = {(r.backend, r.kind): r for r in shifts.itertuples()}
    assert by[("mamba2", "train")].verdict.startswith("shift between the runs")  # 7 % off, rounds steady to 0.3 %
    assert by[("mamba2", "train")].shifted == 2 and by[("mamba2", "train")].outside == 2
    assert by[("mamba_ssm", "train")].verdict.startswith("scatter")  # 8 % off, but its rounds spread 12 %
    assert by[("mamba_ssm", "fwd")].verdict == "within 5 %"
    assert reproduce.main([str(a), str(b), "--tol", "5"]) == 1
    text = capsys.readouterr().out
    assert "1 of 3 have every row within 5 %" in text
    assert "| v1 | mamba2 |  | model | train | 2 | 2 | 2 |" in text
    assert "| v1 | mamba_ssm |  | model | fwd |" not in text  # every row within: not listed


def test_device_shifts_without_recorded_spread_say_so(tmp_path):
    rows_a = [dict(r, graph_round_spread_pct=None) for r in _dev_rows("mamba2", "train", 10.0, 0.0)]
    rows_b = [dict(r, graph_round_spread_pct=None) for r in _dev_rows("mamba2", "train", 12.0, 0.0)]
    cmp = reproduce.compare(reproduce.load_rows(_write(tmp_path, "a", rows_a)),
                            reproduce.load_rows(_write(tmp_path, "b", rows_b)))  # fmt: skip
    (line,) = reproduce.device_shifts(cmp, tol=5.0).itertuples()
    assert line.verdict == "outside: 0 shifted, 2 without a comparable spread" and line.shifted == 0


def test_device_shifts_ignore_the_spread_when_the_two_runs_device_times_come_from_different_sources(tmp_path):
    rows_a = [dict(r, device_source="cuda-graph replay") for r in _dev_rows("mamba2", "train", 10.0, 0.1)]
    rows_b = [dict(r, device_source="profiler kernel sum") for r in _dev_rows("mamba2", "train", 12.0, 0.1)]
    cmp = reproduce.compare(reproduce.load_rows(_write(tmp_path, "a", rows_a)),
                            reproduce.load_rows(_write(tmp_path, "b", rows_b)))  # fmt: skip
    (line,) = reproduce.device_shifts(cmp, tol=5.0).itertuples()
    assert line.shifted == 0 and "2 without a comparable spread" in line.verdict


def test_the_bar_needs_two_full_runs_at_one_commit(tmp_path, capsys):
    call = lambda rid, commit: {"run_id": rid, "git_commit": commit, "device_name": "NVIDIA H200"}  # noqa: E731
    left = {"model": "v4", "backend": "sdpa", "level": "encoder", "res": 32, "batch": 8, "dtype": "bf16",
            "kind": "fwd", "status": "skipped", "note": "time budget (400 s) exhausted; rerun to continue"}  # fmt: skip
    by_design = {**left, "res": 48, "note": "reference scan past --ref-max-res 48"}
    a = _run(tmp_path, "a", runs=[call("t1", "a" * 40), call("t2", "a" * 40)], extra=[by_design])
    b = _run(tmp_path, "b", runs=[call("t3", "a" * 40)], extra=[by_design])
    assert reproduce.main([str(a), str(b), "--tol", "5"]) == 0
    text = capsys.readouterr().out
    assert (
        "2 calls (t1, t2) at commit aaaaaaa on NVIDIA H200" in text and "one commit: yes; both runs full: yes" in text
    )
    c = _run(tmp_path, "c", runs=[call("t4", "b" * 40)])
    assert reproduce.main([str(a), str(c), "--tol", "5"]) == 1  # every row agrees, but not at one commit
    assert "one commit: NO" in capsys.readouterr().out
    d = _run(tmp_path, "d", runs=[call("t5", "a" * 40)], extra=[left])
    assert reproduce.main([str(a), str(d), "--tol", "5"]) == 1
    assert "**1 still to do** (not a full run)" in capsys.readouterr().out
    assert reproduce.main([str(a), str(d)]) == 0  # without --tol it only reports
    capsys.readouterr()
    assert reproduce.main([str(_run(tmp_path, "e")), str(_run(tmp_path, "f")), "--tol", "5"]) == 0
    assert "one commit: unknown (no commit recorded)" in capsys.readouterr().out  # neither run has call records
