"""The attention-kernel benchmark CLI: --quick runs end to end (CPU: under the Triton interpreter)."""

import os

os.environ.setdefault("FLASH_ATTN_AUTOTUNE", "0")  # before kernels.flash_attention is imported

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from bench import attention_kernel as ak  # noqa: E402


def test_quick_writes_csv_md_json_png(tmp_path):
    assert ak.main(["--quick", "--out", str(tmp_path)]) == 0
    csvs = list(tmp_path.glob("attention_kernel_B*_H*_*.csv"))
    assert len(csvs) == 1
    stem = csvs[0].with_suffix("")
    for ext in (".md", ".json", ".png"):
        assert stem.with_suffix(ext).is_file(), ext
    assert not list(tmp_path.glob(".*"))  # no temp files left behind
    df = pd.read_csv(csvs[0])
    assert set(ak.COLUMNS) <= set(df.columns)
    host = df[df["case"] == "host"]
    assert set(host["backend"]) == {"triton", "sdpa"} and (host["ms"] > 0).all()
    tri = df[(df["backend"] == "triton") & (df["case"] != "host")]
    assert set(tri["pass"]) == {"fwd", "fwd+bwd"}
    assert (tri["status"] == "ok").all()
    assert (tri["tflops"] > 0).all()
    assert (tri["rel_err"] < 2e-2).all()
    assert (tri["p20_ms"] <= tri["p80_ms"]).all()
    md = stem.with_suffix(".md").read_text()
    assert "| N |" in md and "triton / fastest SDPA" in md and "Bar:" in md
    assert "Host time per call" in md


def test_quick_covers_the_model_calls_with_dropout(tmp_path):
    argv = ["--quick", "--cases", "packed", "cross", "--dropout", "0", "0.1", "--passes", "fwd+bwd", "--no-host"]
    assert ak.main([*argv, "--backends", "triton", "sdpa_flash", "--no-plot", "--out", str(tmp_path)]) == 0
    (csv,) = tmp_path.glob("attention_kernel_*.csv")
    df = pd.read_csv(csv)
    tri = df[df["backend"] == "triton"]
    assert set(tri["case"]) == {"packed", "cross"} and set(tri["p"]) == {0.0, 0.1}
    assert (tri["status"] == "ok").all()
    cross = tri[tri["case"] == "cross"].iloc[0]
    assert cross["Nq"] > cross["Nk"]  # 0.8 N queries onto 0.2 N inputs
    assert (tri[tri["p"] == 0.0]["rel_err"] < 2e-2).all()
    md = csv.with_suffix(".md").read_text()
    assert "packed, dropout 0.1" in md and "cross" in md


def test_replot_of_a_csv_without_case_columns(tmp_path):
    """Result files written before the case / p / Nq / Nk columns still render (the committed H200 run)."""
    rows = [ak._row(b, 32, 32, 1024, "fwd", 64, 8, "bf16", "ok") for b in ("triton", "sdpa_flash")]
    for row, ms in zip(rows, (1.0, 1.2)):
        row.update(ms=ms, p20_ms=ms, p80_ms=ms, tflops=100.0 / ms, rel_err=1e-3)
    ak._fill_ratios(rows)
    old = [c for c in ak.COLUMNS if c not in ("case", "p", "Nq", "Nk")]
    csv = tmp_path / "attention_kernel_B64_H8_bf16.csv"
    pd.DataFrame(rows)[old].to_csv(csv, index=False)
    assert ak.main(["--replot", str(csv)]) == 0
    md = csv.with_suffix(".md").read_text()
    assert "## D = 32, self, fwd" in md and "N=1024: met (1.20 vs ≥0.9)" in md


def test_model_step_quick(tmp_path):
    argv = ["--model-step", "--quick", "--res", "4", "--dropout", "0.1", "--batch", "1", "--out", str(tmp_path)]
    assert ak.main(argv) == 0
    df = pd.read_csv(tmp_path / "attention_kernel_v4step_B1_fp32.csv")
    assert set(df["backend"]) == {"sdpa", "triton"} and (df["status"] == "ok").all() and (df["median_ms"] > 0).all()
    md = (tmp_path / "attention_kernel_v4step_B1_fp32.md").read_text()
    assert "| 4 | 16 |" in md and "| regime |" in md and "| – | – | – |" in md  # no kernel time on a CPU
    assert (df["graph_note"] == "CUDA graphs need CUDA").all() and df["graph_ms"].isna().all()
    assert "– (sdpa: CUDA graphs need CUDA; triton: CUDA graphs need CUDA)" in md


def test_step_graph_cells_pair_the_replays_and_judge_the_bar():
    def point(sdpa, triton, meds=("10,11", "9,10.5"), notes=("", "")):
        rows = [dict(backend=b, status="ok", graph_ms=ms, graph_round_medians_ms=m, graph_note=n)
                for b, ms, m, n in zip(("sdpa", "triton"), (sdpa, triton), meds, notes)]  # fmt: skip
        return pd.DataFrame(rows).set_index("backend")

    assert ak._graph_cells(point(10.0, 9.5), 48) == ["10, 9.5", "0.950", "0.927 [0.900–0.955], 2/2 faster", "met"]
    assert ak._graph_cells(point(10.0, 10.5), 64)[-1] == "NOT met"
    assert ak._graph_cells(point(10.0, 9.5), 32)[-1] == "-"  # below the bar's range
    failed = point(10.0, float("nan"), notes=("", "OOM in capture: CUDA out of memory"))
    assert ak._graph_cells(failed, 64) == ["– (triton: OOM in capture: CUDA out of memory)", "–", "–", "–"]
    old = pd.DataFrame([dict(backend=b, status="ok") for b in ("sdpa", "triton")]).set_index("backend")
    assert ak._graph_cells(old, 64) == ["–"] * 4  # a CSV from before the graph columns


@pytest.mark.gpu
def test_gpu_model_step_captures_both_backends(tmp_path):
    """On CUDA each backend's step is also captured in a CUDA graph and the replays timed in rounds."""
    argv = ["--model-step", "--quick", "--res", "8", "--dropout", "0.1", "--batch", "2", "--rounds", "2",
            "--out", str(tmp_path)]  # fmt: skip
    assert ak.main(argv) == 0
    df = pd.read_csv(next(tmp_path.glob("attention_kernel_v4step_B2_*.csv")))
    assert (df["graph_ms"] > 0).all() and (df["graph_round_medians_ms"].astype(str).str.count(",") == 1).all()


def test_model_step_times_both_backends_in_the_same_rounds(tmp_path, monkeypatch):
    """sdpa and triton are timed in one bench.rounds.run_rounds group per point (interleaved, rotated), not one
    after the other; the rows keep the rounds and their spread."""
    import bench.rounds as rounds

    groups = []
    real = rounds.run_rounds

    def spy(timers, reps, n, probe=None):
        groups.append((tuple(timers), n))
        return real(timers, reps, n, probe)

    monkeypatch.setattr(rounds, "run_rounds", spy)
    argv = ["--model-step", "--quick", "--res", "4", "--dropout", "0.1", "0", "--batch", "1", "--rounds", "3",
            "--out", str(tmp_path)]  # fmt: skip
    assert ak.main(argv) == 0
    assert groups == [(("sdpa", "triton"), 3)] * 2  # one group per (dropout, r)
    df = pd.read_csv(tmp_path / "attention_kernel_v4step_B1_fp32.csv")
    assert (df["n_rounds"] == 3).all() and (df["n_reps"] >= 3).all() and df["round_spread_pct"].notna().all()
    assert (df["round_medians_ms"].str.count(",") == 2).all()  # three round medians per row, read back from the CSV
    md = (tmp_path / "attention_kernel_v4step_B1_fp32.md").read_text()
    assert md.count("/3 faster |") == 2  # the paired per-round cell of each (dropout, r)
    assert ak.main(["--replot", str(tmp_path / "attention_kernel_v4step_B1_fp32.csv")]) == 0  # MD from the CSV alone
    assert (tmp_path / "attention_kernel_v4step_B1_fp32.md").read_text() == md


def test_step_bar_says_how_a_host_bound_miss_compares_with_the_round_spread():
    def point(sdpa_ms, triton_ms, kernel_ms, spread):
        rows = [dict(backend=b, status="ok", median_ms=ms, kernel_ms=kernel_ms, round_spread_pct=spread)
                for b, ms in (("sdpa", sdpa_ms), ("triton", triton_ms))]  # fmt: skip
        return pd.DataFrame(rows).set_index("backend")

    assert ak._step_bar(point(10, 9, 9, 1), 32, 0.9) == "-"
    assert ak._step_bar(point(10, 9, 9, 1), 64, 0.9) == "met"
    assert ak._step_bar(point(10, 11, 10, 1), 64, 1.1) == "NOT met"  # device-bound: no excuse line
    assert ak._step_bar(point(20, 21, 10, 25), 48, 1.05) == "NOT met (host-bound: +5.0 %, within the round spread 25 %)"
    outside = "NOT met (host-bound: +50.0 %, outside the round spread 25 %)"
    assert ak._step_bar(point(20, 30, 10, 25), 48, 1.5) == outside
    assert ak._step_bar(point(20, 21, 10, float("nan")), 48, 1.05) == "NOT met (host-bound: +5.0 %)"
    assert ak._step_bar(point(20, 21, 10, 1), 48, float("nan")) == "unknown"


def test_step_paired_compares_the_two_backends_round_by_round():
    def point(sdpa, triton, status="ok"):
        rows = [dict(backend="sdpa", status="ok", round_medians_ms=sdpa),
                dict(backend="triton", status=status, round_medians_ms=triton)]  # fmt: skip
        return pd.DataFrame(rows).set_index("backend")

    # the host drifts 20 -> 30 ms across rounds; triton is 2 % faster within every round but one
    cell = ak._step_paired(point("20,25,30,22", "19.6,24.5,30.3,21.56"))
    assert cell == "0.980 [0.980–1.010], 3/4 faster"
    assert ak._step_paired(point(20.0, 19.0)) == "0.950 [0.950–0.950], 1/1 faster"  # one round: pandas reads a float
    assert ak._step_paired(point("20,25", "19,24", status="oom")) == "–"
    assert ak._step_paired(point("20,25", "19")) == "–"  # a backend that left the rounds early
    assert ak._step_paired(point(float("nan"), "19")) == "–"
    old = pd.DataFrame([dict(backend=b, status="ok") for b in ("sdpa", "triton")]).set_index("backend")
    assert ak._step_paired(old) == "–"  # a CSV from before round_medians_ms


def test_model_step_rejects_bad_rounds_and_point_budget(capsys):
    for argv in (["--model-step", "--rounds", "0"], ["--model-step", "--point-s", "nan"]):
        with pytest.raises(SystemExit) as e:
            ak.main(argv)
        assert e.value.code != 0
    err = capsys.readouterr().err
    assert "expected a positive integer" in err and "must be a finite number > 0, got 'nan'" in err


def test_replot_from_csv(tmp_path):
    rows = []
    for backend, ms in (("triton", 1.0), ("sdpa_flash", 1.1), ("sdpa_cudnn", 0.9), ("naive", None)):
        for pass_name in ak.PASSES:
            row = ak._row(backend, 32, 32, 1024, pass_name, 64, 8, "bf16", "ok" if ms else "oom")
            if ms:
                row.update(ms=ms, p20_ms=ms, p80_ms=ms, tflops=100.0 / ms, rel_err=1e-3, max_err=1e-2)
            rows.append(row)
    ak._fill_ratios(rows)
    csv = tmp_path / "attention_kernel_B64_H8_bf16.csv"
    ak.write_csv_atomic(csv, rows)
    assert ak.main(["--replot", str(csv)]) == 0
    md = csv.with_suffix(".md").read_text()
    assert "OOM" in md
    assert "N=1024: met (0.90 vs ≥0.9)" in md  # fwd: 0.9 / 1.0
    assert "N=1024: met (0.90 vs ≥0.8)" in md  # fwd+bwd
    assert csv.with_suffix(".png").is_file()


def test_default_head_dims_cover_the_issue_12_dims():
    assert ak.build_parser().parse_args([]).dims == [32, 64, 128]  # the model's D = 32, then D = 64 and 128


@pytest.mark.parametrize(
    "argv",
    [["--dims", "48"], ["--batch", "0"], ["--res", "x"], ["--dtype", "fp64"], ["--backends", "nope"]],
)
def test_bad_arguments_exit(argv):
    with pytest.raises(SystemExit) as info:
        ak.main(argv)
    assert info.value.code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_cpu_without_quick_exits_with_message():
    with pytest.raises(SystemExit) as info:
        ak.main(["--out", "/nonexistent-dir-not-created"])
    assert "CUDA GPU" in str(info.value.code)


def _timed_rows(tri_ms, tri_kernel, sdpa_ms, sdpa_kernel):
    rows = []
    for backend, ms, kms in (("triton", tri_ms, tri_kernel), ("sdpa_flash", sdpa_ms, sdpa_kernel)):
        row = ak._row(backend, 32, 32, 1024, "fwd+bwd", 64, 8, "bf16", "ok", case="cross", p=0.1, Nq=819, Nk=205)
        row.update(ms=ms, p20_ms=ms, p80_ms=ms, tflops=100.0 / ms, kernel_ms=kms)
        rows.append(row)
    ak._fill_ratios(rows)
    return rows


def test_a_point_whose_wall_time_is_mostly_host_is_marked_host_bound(tmp_path):
    """Wall 1.0 ms for 0.3 ms of kernels (triton) vs 0.8 for 0.5 (SDPA): the bar (0.80, not met) is judged on wall
    time, and the row says it is host-bound with the kernels' own ratio, 0.5 / 0.3."""
    csv = tmp_path / "attention_kernel_B64_H8_bf16.csv"
    ak.write_csv_atomic(csv, _timed_rows(1.0, 0.3, 0.8, 0.5))
    assert ak.main(["--replot", str(csv)]) == 0
    md = csv.with_suffix(".md").read_text()
    assert "| regime |" in md and "Regime: a point is host-bound" in md
    assert "N=1024: NOT met (0.80 vs ≥1.0; host-bound (triton, sdpa_flash), kernel time 1.67)" in md


def test_a_point_near_its_kernel_time_is_device_bound():
    md = ak.render_markdown(pd.DataFrame(_timed_rows(1.0, 0.9, 1.1, 1.0)))
    assert "| device-bound |" in md and "N=1024: met (1.10 vs ≥1.0)." in md


def test_no_kernel_time_no_regime_column():
    """CPU runs and CSVs from before the column: the tables are as they were."""
    rows = _timed_rows(1.0, float("nan"), 0.8, float("nan"))
    md = ak.render_markdown(pd.DataFrame(rows))
    assert "regime" not in md and "Regime" not in md
    cpu = torch.device("cpu")
    assert ak.kernel_time_ms(lambda: None, cpu, 1.0) != ak.kernel_time_ms(lambda: None, cpu, 1.0)  # NaN


def test_kernel_time_is_the_median_session_per_call(monkeypatch):
    """A fake profiler: 5 calls' budget, 3 sessions of 2 calls; one session preempted (5× its kernel time)."""
    totals = iter([2.0, 10.0, 3.0])
    seen = []

    def fake_session(call, device, m):
        seen.append(m)
        return next(totals), 20.0

    monkeypatch.setattr(ak, "_profiled_session", fake_session)
    st = ak.kernel_time_stats(lambda: None, torch.device("cuda"), per_call_ms=10.0, cold_l2=False)
    assert seen == [2, 2, 2] and st["sessions_ms"] == [1.0, 5.0, 1.5] and st["ms"] == 1.5
    assert st["total_ms"] == [2.0, 10.0, 3.0] and st["span_ms"] == [20.0] * 3


def test_kernel_time_subtracts_each_sessions_own_clears_and_a_slow_call_still_gets_3_sessions(monkeypatch):
    """cold_l2: a fake triton driver and profiler. The clears-only profile of one session is 3× slow; only that
    session's number moves, and the median does not. A 40 ms call (budget 50 ms) still gets 3 sessions of 1."""
    from bench import device_time as dt

    class Drv:
        def get_empty_cache_for_benchmark(self):
            return "cache"

        def clear_cache(self, cache):
            pass

    import triton.runtime as rt

    monkeypatch.setattr(rt, "driver", type("D", (), {"active": Drv()})())
    clears = iter([0.10, 0.30, 0.10])  # ms per session's clears-only profile (m = 2 clears of 0.05)
    monkeypatch.setattr(
        dt, "profile_kernels", lambda fn, device, steps: [dt.Kernel("memset", 1e3 * next(clears), "kernel")]
    )
    monkeypatch.setattr(ak, "_profiled_session", lambda call, device, m: (0.12, 1.0))  # 2 × (clear 0.05 + step 0.01)
    st = ak.kernel_time_stats(lambda: None, torch.device("cuda"), per_call_ms=10.0)
    assert st["sessions_ms"] == pytest.approx([0.01, 0.0, 0.01]) and st["ms"] == pytest.approx(0.01)
    seen = []
    monkeypatch.setattr(ak, "_profiled_session", lambda call, device, m: seen.append(m) or (0.06, 1.0))
    clears = iter([0.05] * 3)
    ak.kernel_time_stats(lambda: None, torch.device("cuda"), per_call_ms=40.0)
    assert seen == [1, 1, 1]


@pytest.mark.gpu
def test_gpu_kernel_time_is_positive_and_never_more_than_the_time_its_calls_took():
    """A session's kernels run one after another on one stream, so their sum cannot exceed the elapsed time of
    the same calls (CUDA events around them). Unlike a comparison with a do_bench time taken earlier, this holds
    when other processes share the GPU (pytest -n, whose workers preempt each other's kernels)."""
    q, k, v = (torch.randn(8, 8, 1024, 32, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    f = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)  # noqa: E731
    from bench.measure import time_fn

    wall = time_fn(f, torch.device("cuda"), warmup_ms=10, rep_ms=50, timer="do_bench").median
    st = ak.kernel_time_stats(f, torch.device("cuda"), wall)
    assert st["ms"] > 0 and len(st["sessions_ms"]) == 3 and st["ms"] == sorted(st["sessions_ms"])[1]
    for total, span in zip(st["total_ms"], st["span_ms"]):
        assert 0 < total <= 1.01 * span + 0.005, (total, span)
    assert ak.kernel_time_ms(f, torch.device("cuda"), wall) > 0


def test_model_step_kernel_cells_name_the_host_bound_backend():
    at = pd.DataFrame({"backend": ["sdpa", "triton"], "status": ["ok", "ok"], "median_ms": [15.0, 18.0],
                       "kernel_ms": [5.0, 16.0]}).set_index("backend")  # fmt: skip
    assert ak._step_kernel_cells(at) == ["5, 16", "3.200", "host-bound (sdpa)"]


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "bench.attention_kernel", "--quick", "--no-plot"],
        ["-c", "from models.common import _triton_kernels; from models.utils import cli_main; import sys; "
               "sys.exit(cli_main(lambda argv: _triton_kernels()))"],
    ],
    ids=["kernel-bench", "model-backend"],
)  # fmt: skip
def test_bad_fwd_variant_is_a_one_line_error(tmp_path, argv):
    """FLASH_ATTN_FWD is checked when the kernel module is imported: the benchmark and the models' triton backend
    turn it into one line and a non-zero exit, before anything is computed or written."""
    import subprocess
    import sys

    env = {**os.environ, "FLASH_ATTN_FWD": "tmaa", "TRITON_INTERPRET": "1"}
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, *argv, *(["--out", str(out)] if argv[0] == "-m" else [])], env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    err = p.stderr.strip()
    assert p.returncode != 0 and len(err.splitlines()) == 1 and "FLASH_ATTN_FWD: unknown ['tmaa']" in err, err
    assert not out.exists()


def test_step_failure_note_is_the_first_line_or_the_type():
    from bench import measure

    assert ak._failed(RuntimeError("boom\nmore"), measure) == {"status": "error", "note": "boom"}
    assert ak._failed(RuntimeError(""), measure)["note"] == "RuntimeError"  # an empty message names its type
