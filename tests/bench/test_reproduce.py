"""bench.reproduce: two runs' rows matched on the key, the worst deviation per class, --tol and bad input."""

import json

import pytest

from bench import reproduce


def _run(tmp_path, name, scale_small=1.0, scale_large=1.0, device_scale=1.0, extra=()):
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
    path.write_text(json.dumps({"runs": [], "rows": rows}))
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
