"""Bad input, across every CLI: a non-zero exit, one line naming the problem, no traceback, nothing written.

The table CASES is the list of refused inputs (PRINT_BAD_INPUT_TABLE=1 prints it); most run in-process
through each CLI's main(argv); a few go through a real process and `make`, where the message must be the last
line before make's own "Error 2".
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import attention_kernel, compare, evaluate, sweep
from models import sample, train
from models.utils import atomic_write_text, remove_stale_temps
from models.validate import (
    check,
    env_value,
    fraction,
    guard_committed_results,
    image_file,
    integer,
    largest_fitting,
    memory_check,
    number,
    positive_float,
    positive_int,
    writable_dir,
)

REPO = Path(__file__).resolve().parents[2]
TINY = ["--preset", "tiny", "--resolution", "16", "--batch-size", "4", "--train-samples", "8",
        "--val-samples", "4", "--quiet", "--save-every", "1"]  # fmt: skip
MAINS = {"models.train": train.main, "models.sample": sample.main, "bench.evaluate": evaluate.main,
         "bench.compare": compare.main, "bench.sweep": sweep.main,
         "bench.attention_kernel": attention_kernel.main}  # fmt: skip


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny trained V1 checkpoint (16², 2 steps) for the sample / evaluate cases."""
    d = tmp_path_factory.mktemp("ckpt")
    assert train.main(["--model", "v1", "--out-dir", str(d), *TINY, "--epochs", "1"]) == 0
    return d / "checkpoints_mamba" / "mamba_best.pth"


@pytest.fixture
def places(tmp_path, ckpt):
    """{file}: a plain file; {dir}: a folder named like an image; {out}: a fresh folder; {ckpt}: a checkpoint."""
    f = tmp_path / "a_file.txt"
    f.write_text("x")
    (tmp_path / "a_dir.png").mkdir()
    return {"file": str(f), "dir": str(tmp_path / "a_dir.png"), "out": str(tmp_path / "out"), "ckpt": str(ckpt)}


T = ["--model", "v4", *TINY, "--out-dir", "{out}"]  # models.train on a tiny V4, writing under {out}
S = ["--checkpoint", "{ckpt}", "--out", "{out}/s.png", "--num", "1", "--steps", "1", "--quiet"]
E = ["--v1_checkpoint", "{ckpt}", "--out", "{out}", "--num_samples", "1", "--quiet", "--resolutions", "16"]
C = ["--quick", "--out", "{out}", "--device", "cpu"]
W = ["--out", "{out}", "--quick"]

# (cli, argv, environment, what the one line must contain)
CASES = [
    ("models.train", [*T, "--lr", "nan"], {}, "argument --lr: must be a finite number > 0, got 'nan'"),
    ("models.train", [*T, "--lr", "inf"], {}, "argument --lr: must be a finite number > 0, got 'inf'"),
    ("models.train", [*T, "--lr", "0"], {}, "argument --lr: must be a finite number > 0, got 0"),
    ("models.train", [*T, "--grad-clip", "-1"], {}, "argument --grad-clip: must be a finite number > 0 (or inf)"),
    ("models.train", [*T, "--steps-per-epoch", "-1"], {}, "argument --steps-per-epoch: must be an integer >= 1"),
    ("models.train", [*T, "--batch-size", "-4"], {}, "argument --batch-size: must be an integer >= 1, got -4"),
    ("models.train", [*T, "--epochs", "0"], {}, "argument --epochs: must be an integer >= 1, got 0"),
    ("models.train", [*T, "--time-budget", "-5"], {}, "argument --time-budget: must be a finite number > 0"),
    ("models.train", [*T, "--observed-frac", "0"], {}, "argument --observed-frac: must be a finite number > 0 and < 1"),
    ("models.train", [*T, "--dropout", "1"], {}, "argument --dropout: must be a finite number >= 0 and < 1, got 1"),
    ("models.train", [*T, "--seed", "-1"], {}, "argument --seed: must be an integer >= 0, got -1"),
    ("models.train", [*T, "--resolution", "20000"], {}, "--resolution 20000 with --batch-size 4: a v4 training step"),
    ("models.train", [*T, "--out-dir", "{file}"], {}, "argument --out-dir: {file} exists and is not a folder"),
    ("models.train", [*T, "--data", "{file}"], {}, "argument --data: {file} does not exist or is not a folder"),
    ("models.train", [*T, "--resume"], {}, "--resume latest: no checkpoint"),
    ("models.train", [*T, "--resume", "epoch_0099"], {}, "--resume epoch_0099: no checkpoint"),
    ("models.train", [*T, "--nan-policy", "ignore"], {}, "argument --nan-policy: invalid choice: 'ignore'"),
    ("models.train", [*T, "--num-heads", "3"], {}, "d_model=32 is not divisible by num_heads=3"),
    ("models.train", [*T, "--preset", "huge"], {}, "unknown preset 'huge'"),
    ("models.train", T, {"DIM_FEEDFORWARD": "-5"}, "dim_feedforward=-5 (from $DIM_FEEDFORWARD) must be a positive"),
    ("models.train", T, {"DIM_FEEDFORWARD": "0"}, "dim_feedforward=0 (from $DIM_FEEDFORWARD) must be a positive"),
    ("models.train", T, {"DROPOUT": "nan"}, "dropout=nan (from $DROPOUT) must be a number in [0, 1)"),
    ("models.train", T, {"LR": "nan"}, "environment variable LR='nan': must be a finite number > 0"),
    (
        "models.train",
        ["--model", "v4", "--out-dir", "{out}"],
        {"BATCH_SIZE": "0"},
        "environment variable BATCH_SIZE='0'",
    ),
    ("models.train", ["--model", "v4", "--out-dir", "{out}"], {"MEM_BUDGET_GB": "-1"}, "MEM_BUDGET_GB='-1'"),
    ("models.sample", [*S, "--resolution", "-1"], {}, "argument --resolution: must be an integer >= 8, got -1"),
    ("models.sample", [*S, "--resolution", "0"], {}, "argument --resolution: must be an integer >= 8, got 0"),
    ("models.sample", [*S, "--resolution", "20000"], {}, "--resolution 20000: sampling v1 on cpu needs ~"),
    ("models.sample", [*S, "--out", "{dir}"], {}, "argument --out: {dir} is a folder, not a file"),
    ("models.sample", [*S, "--out", "{out}/x.gif"], {}, "unknown file extension '.gif' in {out}/x.gif; use one of"),
    ("models.sample", [*S, "--out", "{out}/x"], {}, "unknown file extension none in {out}/x"),
    (
        "models.sample",
        [*S, "--out", "{file}/x.png"],
        {},
        "cannot write {file}/x.png: {file} exists and is not a folder",
    ),
    ("models.sample", [*S, "--checkpoint", "{out}/none.pth"], {}, "argument --checkpoint: {out}/none.pth does not"),
    ("models.sample", [*S, "--checkpoint", "{file}"], {}, "is corrupt or unreadable"),
    ("models.sample", [*S, "--steps", "0"], {}, "argument --steps: must be an integer >= 1, got 0"),
    ("models.sample", [*S, "--num", "0"], {}, "argument --num: must be an integer >= 1, got 0"),
    ("bench.evaluate", [*E, "--batch", "0"], {}, "argument --batch: must be an integer >= 1, got 0"),
    ("bench.evaluate", [*E, "--mean-draws", "-2"], {}, "argument --mean-draws/--mean_draws: must be an integer >= 1"),
    ("bench.evaluate", [*E, "--show", "-1"], {}, "argument --show: must be an integer >= 0, got -1"),
    ("bench.evaluate", [*E, "--out", "{file}"], {}, "argument --out: {file} exists and is not a folder"),
    ("bench.evaluate", [*E, "--resolutions", "20000"], {}, "--resolutions 20000 with --batch 1: evaluation on cpu"),
    ("bench.evaluate", [*E, "--checkpoint", "{ckpt}"], {}, "argument --checkpoint: must be MODEL=PATH"),
    ("bench.evaluate", [*E, "--checkpoint", "v9={ckpt}"], {}, "argument --checkpoint: unknown model 'v9'; choose"),
    ("bench.evaluate", [*E, "--checkpoint", "v4={out}/none.pth"], {}, "argument --checkpoint: {out}/none.pth does"),
    ("bench.evaluate", [*E, "--models", "v1", "v9"], {}, "argument --models: unknown model 'v9'; choose from v1"),
    ("bench.evaluate", [*E, "--baseline", "v4"], {}, "--baseline 'v4' is not one of --models v1"),
    ("bench.compare", [*C, "--batch-size", "0"], {}, "argument --batch-size: must be an integer >= 1, got 0"),
    ("bench.compare", [*C, "--lr", "0"], {}, "argument --lr: must be a finite number > 0, got 0"),
    ("bench.compare", [*C, "--lr", "nan"], {}, "argument --lr: must be a finite number > 0, got 'nan'"),
    ("bench.compare", [*C, "--seconds", "inf"], {}, "argument --seconds: must be a finite number > 0, got 'inf'"),
    (
        "bench.compare",
        [*C, "--resolution", "20000", "--resolutions", "20000"],
        {},
        "--resolution 20000 with --batch-size 16: a v1 training",
    ),
    ("bench.compare", [*C, "--data", "{out}/none"], {}, "argument --data: {out}/none does not exist"),
    ("bench.compare", C, {"LR": "-1"}, "environment variable LR='-1': must be a finite number > 0"),
    ("bench.compare", [*C, "--models", "v1", "v9"], {}, "argument --models: unknown model 'v9'; choose from v1"),
    ("bench.compare", [*C, "--baseline", "w1"], {}, "argument --baseline: unknown model 'w1'"),
    ("bench.compare", [*C, "--models", "v4"], {}, "--models needs a baseline and at least one model"),
    ("bench.compare", [*C, "--models", "v1", "v4", "v1"], {}, "--models: v1 listed twice"),
    ("bench.sweep", [*W, "--res", "20000"], {}, "--res 20000 with --batch 2: the sweep's largest training step"),
    ("bench.sweep", [*W, "--time-per-point", "nan"], {}, "argument --time-per-point: must be a finite number >= 0"),
    ("bench.sweep", [*W, "--threads", "0"], {}, "argument --threads: must be an integer >= 1, got 0"),
    ("bench.sweep", [*W, "--out", "{file}"], {}, "argument --out: {file} exists and is not a folder"),
    ("bench.attention_kernel", ["--replot", "{out}/none.csv"], {}, "argument --replot: {out}/none.csv does not exist"),
    ("bench.attention_kernel", ["--quick", "--batch", "0"], {}, "argument --batch: expected a positive integer"),
    ("bench.attention_kernel", ["--quick", "--out", "{file}"], {}, "argument --out: {file} exists and is not a folder"),
]


def _run(cli, argv, env, places, monkeypatch, capsys):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    argv = [a.format(**places) for a in argv]
    try:
        rc = MAINS[cli](argv)
    except SystemExit as e:  # a CLI that does not go through models.utils.cli_main
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("cli,argv,env,needle", CASES, ids=[f"{c[0]}:{' '.join(c[1][-2:])}" for c in CASES])
def test_bad_input_is_one_line_nonzero_and_writes_nothing(cli, argv, env, needle, places, monkeypatch, capsys):
    rc, err = _run(cli, argv, env, places, monkeypatch, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc not in (0, None), err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert cli.split(".")[-1] in lines[0].split(":")[0], err  # the CLI's name, then the message
    assert needle.format(**places) in lines[0], err
    out = Path(places["out"])
    assert not out.exists() or not any(p.suffix in (".pth", ".png", ".csv", ".md") for p in out.rglob("*")), err


def test_the_table_has_at_least_30_cases_over_every_cli():
    assert len(CASES) >= 30 and {c[0] for c in CASES} == set(MAINS)


@pytest.mark.skipif(os.environ.get("PRINT_BAD_INPUT_TABLE") != "1", reason="set PRINT_BAD_INPUT_TABLE=1 to print it")
def test_print_the_table(places, monkeypatch, capsys):
    """`PRINT_BAD_INPUT_TABLE=1 pytest -k print_the_table` lists every case with its message (the issue's closing
    note); skipped otherwise, so that a plain pytest run prints nothing."""
    rows = []
    for cli, argv, env, _ in CASES:
        with monkeypatch.context() as m:
            rc, err = _run(cli, argv, env, places, m, capsys)
        shown = " ".join(a.format(**places) for a in argv[-2:])
        rows.append(f"| {cli} | {' '.join(f'{k}={v}' for k, v in env.items())} `{shown}` | {rc} | {err.strip()} |")
    with capsys.disabled():
        print("\n" + "\n".join(rows).replace(places["out"], "OUT").replace(places["file"], "FILE"))


# ----------------------------------------------------------------------------------------------
# Through a real process and make: the exit code, and the message last before make's "Error 2"
# ----------------------------------------------------------------------------------------------


def _proc(cmd, env=None, cwd=REPO):
    e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=e, timeout=300)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["-m", "models.train", "--model", "v4", "--lr", "inf"], "argument --lr: must be a finite number > 0"),
        (["-m", "models.sample", "--checkpoint", "/nonexistent.pth"], "/nonexistent.pth does not exist"),
        (["-m", "bench.compare", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
    ],
)
def test_a_real_process_exits_2_with_one_line(argv, needle):
    r = _proc([sys.executable, *argv])
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(
    "target,args,needle",
    [
        ("train", ["MODEL=v4", "ARGS=--lr nan"], "models.train: error: argument --lr: must be a finite number > 0"),
        ("train", ["MODEL=v9"], "models.train: error: unknown model 'v9'"),
        ("sample", ["ARGS=--checkpoint /nonexistent.pth"], "models.sample: error: argument --checkpoint"),
        ("eval", [], "bench.evaluate: error: give a checkpoint per model: --checkpoint MODEL=PATH"),
    ],
)
def test_under_make_the_message_is_the_last_line_before_makes_error(target, args, needle):
    # a user's make is the top-level one: drop the variables of a make we may be running under (make test, CI)
    top = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    e = {**top, "PYTHONPATH": str(REPO)}
    cmd = ["make", "--no-print-directory", target, f"PY={sys.executable}", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=e, timeout=300)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert r.returncode == 2, lines
    assert re.match(r"make(\[\d+\])?: \*\*\* ", lines[-1]) and lines[-1].endswith("Error 2"), lines
    assert lines[-2].startswith(needle), lines
    assert not any("Traceback" in ln for ln in lines), lines


# ----------------------------------------------------------------------------------------------
# The helpers themselves
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn,text,ok",
    [
        (positive_int, "3", 3), (positive_int, "0", None), (positive_int, "2.5", None), (positive_int, "x", None),
        (integer(8, 16), "16", 16), (integer(8, 16), "17", None), (positive_float, "1e-3", 1e-3),
        (positive_float, "-0.0", None), (positive_float, "nan", None), (positive_float, "inf", None),
        (number(0, lo_open=True, allow_inf=True), "inf", float("inf")), (number(allow_inf=True), "-inf", None),
        (fraction, "0.5", 0.5), (fraction, "1", None), (fraction, "0", None),
    ],
)  # fmt: skip
def test_type_functions(fn, text, ok):
    if ok is None:
        with pytest.raises(argparse.ArgumentTypeError, match="must be"):
            fn(text)
    else:
        assert fn(text) == ok


def test_check_and_env_value_name_their_source(monkeypatch):
    from models.common import ConfigError

    with pytest.raises(ConfigError, match="^steps: must be an integer >= 1, got 0$"):
        check(positive_int, 0, "steps")
    monkeypatch.setenv("X_TEST", " 12 ")
    assert env_value("X_TEST", positive_int) == 12
    monkeypatch.setenv("X_TEST", "")
    assert env_value("X_TEST", positive_int, 5) == 5
    monkeypatch.setenv("X_TEST", "1.5")
    with pytest.raises(ConfigError, match=r"environment variable X_TEST='1.5': must be an integer >= 1"):
        env_value("X_TEST", positive_int)


def test_paths(tmp_path):
    (tmp_path / "f").write_text("x")
    assert writable_dir(str(tmp_path / "new" / "deeper")) == str(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert image_file(str(tmp_path / "a.PNG")).name == "a.PNG"
    for bad, msg in ((tmp_path / "f", "not a folder"), (tmp_path / "f" / "sub", "is a file")):
        with pytest.raises(argparse.ArgumentTypeError, match=msg):
            writable_dir(str(bad))
    with pytest.raises(argparse.ArgumentTypeError, match="unknown file extension '.webp'"):
        image_file(str(tmp_path / "a.webp"))


def test_memory_check_says_what_fits():
    from models.common import ConfigError

    def est(b, r):
        return b * r * r * 1000

    assert largest_fitting(lambda b: est(b, 32), 1, 64, 32 * 32 * 1000 * 10) == 10
    memory_check(est, 4, 32, 10**9, "RAM", "x")  # fits: nothing happens
    with pytest.raises(ConfigError, match="--batch-size 9 fits$"):
        memory_check(est, 64, 32, 32 * 32 * 1000 * 9, "RAM", "x")
    with pytest.raises(ConfigError, match="--resolution 100 fits at --batch-size 1$"):
        memory_check(est, 1, 20000, 10**7, "RAM", "x")


def test_cpu_runs_never_write_over_the_committed_results(tmp_path):
    from models.common import ConfigError

    (tmp_path / "results" / "cpu").mkdir(parents=True)
    (tmp_path / "results" / "quality.md").write_text("GPU")
    with pytest.raises(ConfigError, match="would replace the committed GPU results"):
        guard_committed_results(tmp_path / "results", "cpu", ["quality.md"], repo=tmp_path)
    guard_committed_results(tmp_path / "results" / "cpu", "cpu", ["quality.md"], repo=tmp_path)
    guard_committed_results(tmp_path / "results", "cuda", ["quality.md"], repo=tmp_path)
    guard_committed_results(tmp_path / "results", "cpu", ["eval.md"], repo=tmp_path)  # a new file: fine


# ----------------------------------------------------------------------------------------------
# Temp files of the atomic writers after a kill
# ----------------------------------------------------------------------------------------------


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path):
    code = (
        "import time, sys; from models.utils import _atomic\n"
        f"_atomic({str(tmp_path / 'big.pth')!r}, lambda tmp: (open(tmp, 'w').write('half'), time.sleep(60)))\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)})
    for _ in range(200):
        if list(tmp_path.glob(".big.pth.*.tmp")):
            break
        subprocess.run(["sleep", "0.05"])
    p.kill()  # kill -9: nothing of the writer runs
    p.wait()
    assert len(list(tmp_path.glob(".big.pth.*.tmp"))) == 1 and not (tmp_path / "big.pth").exists()
    alive = tmp_path / f".other.csv.{os.getpid()}.abc.tmp"  # a live writer's temp file is left alone
    alive.write_text("in progress")
    atomic_write_text(tmp_path / "log.csv", "a,b\n")
    assert not list(tmp_path.glob(".big.pth.*.tmp")) and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "log.csv"]
    assert remove_stale_temps(tmp_path) == []


def test_an_interrupted_write_removes_its_temp_file(tmp_path):
    def write(tmp):
        Path(tmp).write_text("half")
        raise KeyboardInterrupt  # what SIGTERM becomes under cli_main

    from models.utils import _atomic

    with pytest.raises(KeyboardInterrupt):
        _atomic(tmp_path / "x.csv", write)
    assert list(tmp_path.iterdir()) == []


def test_sigterm_under_cli_main_unwinds_and_exits_130(tmp_path):
    code = (
        "import os, signal, time; from models.utils import cli_main, _atomic\n"
        "def run(argv):\n"
        f"    _atomic({str(tmp_path / 'x.pth')!r}, lambda tmp: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(5)))\n"
        "raise SystemExit(cli_main(run, []))\n"
    )
    r = _proc([sys.executable, "-c", code])
    assert r.returncode == 130 and "interrupted" in r.stderr and list(tmp_path.iterdir()) == [], r.stderr


def test_out_of_memory_is_one_line_and_exit_1(capsys):
    import torch

    from models.utils import ArgParser, cli_main

    def run(argv):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nGPU 0 has ...")

    assert cli_main(run, [], ArgParser(prog="x")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("x: error: out of memory (CUDA out of memory. Tried"), err


@pytest.mark.gpu
def test_cuda_refuses_only_gross_overshoots(tmp_path, capsys):
    """On CUDA an OOM is a clean exception, so the estimate (an fp32 upper bound) refuses only what is far out
    of reach: a 20000² grid is refused in one line, the README's GPU settings pass."""
    argv = ["--model", "v4", "--device", "cuda", "--quiet", "--epochs", "1", "--max-steps", "2"]
    assert train.main([*argv, "--resolution", "20000", "--out-dir", str(tmp_path / "a")]) == 2
    assert "a v4 training step on cuda needs" in capsys.readouterr().err
    ok = ["--batch-size", "64", "--resolution", "64", "--train-samples", "128", "--val-samples", "8"]
    assert train.main([*argv, *ok, "--out-dir", str(tmp_path / "b")]) == 0
    ok = ["--batch-size", "8", "--resolution", "128", "--train-samples", "16", "--val-samples", "8"]
    assert train.main([*argv, *ok, "--out-dir", str(tmp_path / "c")]) == 0
