"""The sweep CLI on CPU: a --quick run writes every kind of file, a rerun skips what is done, OOM becomes a
row, bad arguments exit 2 with one line; plus the max-batch search and the timing summary."""

import json
import time
from collections import Counter

import pandas as pd
import pytest
import torch

from bench import measure, report, sweep
from bench.measure import MaxBatch, Timing, nice_mid, primary_backends, search_max_batch
from models.common import ConfigError
from models.variants import VARIANTS

QUICK = ["--quick", "--models", "v1", "v4", "--backends", "reference", "sdpa", "--res", "8", "12"]


def rows(out):
    (path,) = list((out / "raw").glob("sweep_*.json"))
    return pd.DataFrame(json.loads(path.read_text())["rows"])


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    assert sweep.main([*QUICK, "--out", str(out)]) == 0
    return out


def test_quick_sweep_writes_csv_json_md_png(quick_run):
    out = quick_run
    for name in ("raw/sweep_B2_fp32.csv", "raw/sweep_B2_fp32.json", "README.md", "model_bench_B2_fp32.csv",
                 "flops_per_sample.csv", "fits_B2_fp32.csv", "crossover_B2_fp32.csv",
                 "spec_vs_measured_B2_fp32.csv", "scaling_latency_B2_fp32.png", "scaling_memory_B2_fp32.png",
                 "scaling_flops_per_sample.png", "throughput_B2_fp32.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert list((out / "tables").glob("*.md"))
    df = rows(out)
    # 2 models × 1 backend × 3 levels × 2 resolutions × (flops, fwd, train)
    assert len(df) == 36 and set(df["status"]) == {"ok"}, df[df["status"] != "ok"][["kind", "note"]]
    assert set(df["kind"]) == {"flops", "fwd", "train"} and set(df["level"]) == {"mixer", "encoder", "model"}
    fl = df[df["kind"] == "flops"]
    assert fl["agree"].all(), fl[["model", "level", "res", "note"]]
    timed = df[df["kind"] != "flops"]
    assert (timed["median_ms"] > 0).all() and (timed["tflops"] > 0).all()
    assert (timed[timed["kind"] == "train"]["epoch_min"] > 0).all()
    # memory counts from what the process held before the point's model was built (its unit's earlier points)
    assert (timed["mem_resident_mb"] > 0).all() and (timed["rss_peak_mb"] >= timed["rss_before_mb"]).all()
    prepared = report.prepare(timed)
    expect = (timed["rss_peak_mb"] - timed["mem_resident_mb"]) / 1024
    assert (prepared["peak_mem_gb"] - expect).abs().max() < 1e-9
    act = (timed["rss_peak_mb"] - timed["rss_before_mb"]) / 1024  # the fits' memory: above the step's own baseline
    assert (prepared["act_mem_gb"] - act).abs().max() < 1e-9
    env = json.loads((out / "raw" / "sweep_B2_fp32.json").read_text())["runs"][0]
    for key in ("git_commit", "torch", "hostname", "date", "reduced", "settings", "triton"):
        assert key in env
    text = (out / "README.md").read_text()
    assert "QUICK" in text or "REDUCED" in text
    assert "spec" in text.lower() and "exponent" in text.lower() and ".png" in text


def test_rerun_skips_rows_already_done(quick_run, monkeypatch):
    before = rows(quick_run)

    def boom(*a, **k):
        raise AssertionError("a done row was measured again")

    monkeypatch.setattr(sweep, "measure_group", boom)
    monkeypatch.setattr(sweep, "count_flops", boom)
    assert sweep.main([*QUICK, "--out", str(quick_run)]) == 0
    after = rows(quick_run)
    assert (after["status"] == "ok").all()
    assert list(after["run_id"]) == list(before["run_id"])
    runs = json.loads((quick_run / "raw" / "sweep_B2_fp32.json").read_text())["runs"]
    assert len(runs) == 2  # each invocation's environment is kept


def test_report_rerenders_from_saved_data(quick_run):
    png = quick_run / "scaling_latency_B2_fp32.png"
    png.unlink()
    (quick_run / "README.md").unlink()
    assert report.main(["--out", str(quick_run)]) == 0
    assert png.is_file() and (quick_run / "README.md").is_file()


def test_oom_becomes_a_row_and_larger_r_is_skipped(tmp_path, monkeypatch):
    calls = []

    def oom(*a, **k):
        calls.append(1)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB")

    monkeypatch.setattr(measure, "measure_memory", oom)  # the first measured call after the compile call
    args = ["--quick", "--models", "v4", "--backends", "sdpa", "--levels", "mixer", "--res", "8", "12", "16",
            "--no-flops", "--out", str(tmp_path)]  # fmt: skip
    assert sweep.main(args) == 0
    df = rows(tmp_path).set_index(["res", "kind"])
    assert (df["status"] == "oom").all()
    assert "OutOfMemoryError" in df.loc[(8, "fwd"), "note"]
    assert df.loc[(8, "train"), "note"] == "oom (skipped: the forward OOMed at r=8)"
    assert df.loc[(12, "train"), "note"] == "oom (skipped: r=8 OOMed)"
    assert len(calls) == 1  # only the forward at r=8 ran
    assert "OOM" in (tmp_path / "README.md").read_text()
    # a rerun does not retry OOM rows
    assert sweep.main(args) == 0 and len(calls) == 1


def test_unavailable_backend_becomes_a_row(tmp_path):
    args = ["--quick", "--models", "v1", "--backends", "mamba_ssm", "--levels", "mixer", "--res", "8", "--out",
            str(tmp_path)]  # fmt: skip
    assert sweep.main(args) == 0
    df = rows(tmp_path)
    assert set(df["status"]) == {"unavailable"} and df["note"].str.contains("CUDA").all()


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--res", "4"], "too small"),
        (["--res", "32", "abc"], "not an integer"),
        (["--models", "v9"], "unknown value 'v9'"),
        (["--backends", "flash"], "unknown value 'flash'"),
        (["--levels", "layer"], "unknown value 'layer'"),
        (["--batch", "0"], "--batch: must be an integer >= 1, got 0"),
        (["--models", "v1", "--backends", "sdpa"], "none of sdpa is a v1 backend"),
        (["--timer", "stopwatch"], "unknown timer"),
        (["--models", "v4", "--redo", "v9/sdpa"], "--redo v9/sdpa: unknown model 'v9'"),
        (["--models", "v4", "--backends", "sdpa", "--redo", "v4/nope"], "unknown backend 'nope'"),
        (["--redo", "/"], "give model/backend"),
        (["--redo", "//fwd/x"], "give model/backend"),
        (["--redo", "//maxbatch"], "unknown kind 'maxbatch'"),
        (["--render", "sometimes"], "--render: unknown value 'sometimes'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, words, capsys, tmp_path):
    assert sweep.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bench.sweep: error:") and words in err, err
    assert not (tmp_path / "raw").exists()


def test_unknown_flag_exits_2(capsys):
    assert sweep.main(["--bogus"]) == 2 and capsys.readouterr().err.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 7, 100, 1000, 5000])
def test_max_batch_search_finds_the_limit(limit):
    probes = []

    def fits(b):
        probes.append(b)
        return b <= limit

    mb = search_max_batch(fits, start=8, cap=4096, max_probes=20)
    if limit >= 4096:
        assert mb.capped and mb.max_ok == 4096 and mb.describe() == ">= 4096 (cap)"
    else:
        assert mb.max_ok <= limit < mb.min_fail
        assert mb.min_fail - mb.max_ok <= max(1, mb.max_ok // 8)
    assert len(set(probes)) == len(probes)  # no probe repeated


def test_max_batch_search_respects_the_probe_budget():
    mb = search_max_batch(lambda b: b <= 1000, start=8, cap=4096, max_probes=4)
    assert len(mb.probes) == 4 and mb.max_ok == 64 and mb.min_fail is None
    assert "probes exhausted" in mb.describe()


def test_nothing_fits():
    mb = search_max_batch(lambda b: False, start=8)
    assert mb.max_ok == 0 and mb.min_fail == 1 and "does not fit" in mb.describe()


def test_nice_mid_is_powers_of_two_ish():
    assert nice_mid(512, 1024) == 768 and nice_mid(768, 1024) == 896 and nice_mid(3, 5) == 4
    assert nice_mid(8, 9) == 8


def test_predicted_start_from_measured_memory():
    # 1 GiB static + 1 GiB per sample at batch 8, 100 GiB capacity → 99 fit; 80 % → 79 → first probe 64
    assert measure.predicted_start(1024 + 8 * 1024, 8, 1024, 100 * 1024, cap=4096) == 64
    assert measure.predicted_start(0, 8, 0, 100, cap=4096) == 8  # nonsense measurements: start at the batch


def test_timing_summary():
    t = Timing([4.0, 1.0, 3.0, 2.0], "perf_counter")
    s = t.summary()
    assert s["median_ms"] == 2.5 and s["q1_ms"] == 1.75 and s["q3_ms"] == 3.25 and s["iqr_ms"] == 1.5
    assert s["n_reps"] == 4 and s["min_ms"] == 1.0


def test_time_fn_on_cpu_counts_reps():
    n = []
    t = measure.time_fn(lambda: n.append(1), torch.device("cpu"), warmup_ms=0, rep_ms=0, min_reps=3, max_reps=3)
    assert len(t.times_ms) == 3 == len(n)


def test_is_oom():
    assert measure.is_oom(torch.OutOfMemoryError("x"))
    assert measure.is_oom(RuntimeError("CUDA error: out of memory"))
    assert not measure.is_oom(RuntimeError("shape mismatch")) and not measure.is_oom(ValueError("out of memory"))


def test_max_batch_type():
    assert MaxBatch(10, 12, 4096, [(8, True)]).probes_str() == "8:ok"


# ----------------------------------------------------------------------------------------------
# The report on GPU-shaped data (what the H200 sweep writes), and the GPU plan
# ----------------------------------------------------------------------------------------------


def _synthetic_gpu_rows() -> list[dict]:
    """Rows shaped like a GPU sweep's: V1 ∝ N, V4 ∝ N², with OOM / unavailable / skipped cells."""
    from bench.flops import analytic_flops
    from models.v1_mamba import v1_config
    from models.v4_transformer import v4_config

    cfgs = {"v1": v1_config("default", env={}), "v4": v4_config("default", env={})}
    out = []
    series = [("v1", "mamba_ssm"), ("v1", "reference"), ("v4", "seed"), ("v4", "sdpa"), ("v4", "triton")]
    for level in ("mixer", "encoder", "model"):
        for res in (32, 64, 128):
            N = res * res
            for m, b in series:
                base = {"model": m, "backend": b, "level": level, "res": res, "N": N, "preset": "default",
                        "run_id": "x", "mode": "full", "params": 3_000_000}  # fmt: skip
                fl = analytic_flops(m, cfgs[m], level, 1, N) / 1e9
                out.append({**base, "batch": 1, "dtype": "fp32", "kind": "flops", "status": "ok", "gflop_analytic": fl,
                            "gflop_fvcore": fl, "gflop_flopcounter": fl * 1.01, "agree": True, "note": ""})  # fmt: skip
                for kind, k in (("fwd", 1.0), ("train", 3.0)):
                    row = {**base, "batch": 8, "dtype": "bf16", "kind": kind}
                    if b == "seed" and kind == "train" and res == 128:
                        row.update(status="oom", note="OutOfMemoryError: CUDA out of memory")
                    elif b == "reference" and res > 64:
                        row.update(status="skipped", note="--ref-max-res")
                    elif b == "triton" and res == 32:
                        row.update(status="unavailable", note="ImportError")
                    else:
                        ms = k * (1e-3 * N if m == "v1" else 1e-6 * N**2) + 0.5
                        row.update(status="ok", median_ms=ms, iqr_ms=0.01 * ms, n_reps=10, timer="cuda-events",
                                   samples_per_s=8e3 / ms, tokens_per_s=8e3 * N / ms, tflops=1.0,
                                   mem_alloc_peak_mb=100 + (N / 10 if m == "v1" else N**2 / 1e5),
                                   mem_alloc_before_mb=100.0, mem_reserved_peak_mb=200.0, nvml_used_peak_mb=900.0,
                                   epoch_min=6250 * ms / 6e4 if kind == "train" else None)  # fmt: skip
                    out.append(row)
    for m, b in (("v1", "mamba_ssm"), ("v4", "sdpa")):
        for kind in ("fwd", "train"):
            out.append({"model": m, "backend": b, "level": "model", "res": 32, "N": 1024, "batch": 64, "dtype": "bf16",
                        "kind": kind, "status": "ok", "median_ms": 50.0 if m == "v1" else 90.0, "n_reps": 5,
                        "mem_alloc_peak_mb": 6000.0, "mem_alloc_before_mb": 100.0, "epoch_samples": 50000,
                        "epoch_min": 0.65, "samples_per_s": 1000.0, "run_id": "x"})  # fmt: skip
        for res in (32, 64, 128):
            out.append({"model": m, "backend": b, "level": "model", "res": res, "N": res * res, "batch": 8,
                        "dtype": "bf16", "kind": "max_batch", "status": "ok", "max_batch": 4096 // (res // 32) ** 2,
                        "max_batch_desc": f"{4096 // (res // 32) ** 2} (fails at 9999)", "probes": "8:ok 16:ok",
                        "tokens_at_max": 4096 * 1024, "note": "training step", "run_id": "x"})  # fmt: skip
    return out


def test_report_on_gpu_shaped_rows(tmp_path):
    env = {"gpu": "NVIDIA H200", "driver": "570.00", "sm_clock_mhz": 1980, "sm_clock_max_mhz": 1980,
           "power_draw_w": 120.0, "power_limit_w": 700.0, "torch": "2.11.0+cu130", "cuda": "13.0",
           "git_commit": "abc", "date": "2026-01-01", "hostname": "h200", "reduced": False,
           "settings": {"mode": "full", "preset": "default", "dtype": "bf16", "threads": None}}  # fmt: skip
    (tmp_path / "raw").mkdir()
    data = {"runs": [env], "rows": _synthetic_gpu_rows()}
    (tmp_path / "raw" / "sweep_B8_bf16.json").write_text(json.dumps(data))
    written = report.render(tmp_path)
    names = {p.name for p in written}
    assert {"max_batch_B8_bf16.csv", "max_batch_bf16.png", "scaling_latency_B8_bf16.png", "README.md"} <= names
    text = (tmp_path / "README.md").read_text()
    assert "REDUCED" not in text and "NVIDIA H200" in text
    for needle in ("Largest batch", "batch 64", "| OOM |", "| n/a |", "| skipped |", "V4/V1", "mamba_ssm"):
        assert needle in text, needle
    fits = pd.read_csv(tmp_path / "fits_B8_bf16.csv")
    enc = fits[(fits["level"] == "encoder") & (fits["metric"] == "FLOPs (analytic, forward)")].set_index("series")
    assert abs(enc.loc["V1 mamba_ssm", "exponent (last two r)"] - 1) < 0.05
    assert abs(enc.loc["V4 sdpa", "exponent (last two r)"] - 2) < 0.2
    lat = fits[(fits["level"] == "mixer") & (fits["metric"] == "training-step latency")].set_index("series")
    assert abs(lat.loc["V4 sdpa", "exponent (last two r)"] - 2) < 0.05
    spec = pd.read_csv(tmp_path / "spec_vs_measured_B8_bf16.csv")
    slow = spec[spec["claim"] == "training slowdown V4/V1 (32×32, batch 64, wall time)"]
    assert slow["measured"].iloc[0] == "1.80×"
    cross = pd.read_csv(tmp_path / "crossover_B8_bf16.csv")
    assert len(cross) and cross["V4 starts to cost more than V1"].notna().all()


def test_gpu_plan_order_and_settings(monkeypatch):
    monkeypatch.setattr(sweep, "pick_device", lambda name: torch.device("cuda"))
    s = sweep.settings_from_args(sweep.build_parser().parse_args([]))
    assert s.mode == "full" and s.batch == 8 and s.dtype == "bf16" and s.res == [32, 48, 64, 96, 128, 192, 256]
    assert s.levels == ["model", "encoder"] and s.tokens == 2**19 and s.device_time and s.global_warmup_s >= 2
    assert s.min_reps >= 20 and s.rounds >= 3
    assert not s.max_batch and s.spec_batch == 64 and s.out.endswith("results") and s.threads is None
    plan = sweep.make_plan(s, torch.device("cuda"))
    timed = [u for u in plan if u.kind in ("fwd", "train")]
    # every timed unit holds the series of one level, r and batch (timed in interleaved rounds)
    for u in timed:
        assert len({(c.level, c.res, c.batch) for c in u.combos}) == 1
    primary = primary_backends("cuda")
    # models and backends in the same rounds: at the model level up to r = 128, a unit holds every backend of every
    # variant (primary first, then the others, the Triton kernel and flex last); beyond it, the primary ones only
    rank = [[0 if c.backend == primary[c.model] else 2 if c.backend in sweep.LAST else 1 for c in u.combos]
            for u in timed]  # fmt: skip
    assert all(r == sorted(r) for r in rank)
    every = {(m, b) for m in VARIANTS for b in s.backends[m] if "model" in s.model_levels.get(m, s.levels)}
    for u in timed:
        c0 = u.combos[0]
        pairs = {(c.model, c.backend) for c in u.combos}
        if c0.level == "model" and c0.batch == 8 and c0.res <= 128:
            assert pairs == every
        else:
            assert all(b == primary[m] for m, b in pairs)
    assert any(c.backend == "triton" and c.res == 48 for u in timed for c in u.combos)
    # --backend-order primary-first (the CPU default): the primary backends everywhere first, LAST at the very end
    pf = sweep.settings_from_args(sweep.build_parser().parse_args(["--backend-order", "primary-first"]))
    pf_plan = sweep.make_plan(pf, torch.device("cuda"))
    order = [c.backend for u in pf_plan for c in u.combos]
    first_secondary = next(i for i, b in enumerate(order) if b != primary["v1"] and b not in primary.values())
    assert all(b in primary.values() for b in order[:first_secondary]) and order[-1] in sweep.LAST
    rows_of = lambda p: Counter((u.kind, c) for u in p for c in u.combos)  # noqa: E731
    assert rows_of(pf_plan) == rows_of(plan)  # the same rows, in another order
    monkeypatch.setattr(sweep, "pick_device", lambda name: torch.device("cpu"))
    cpu = sweep.settings_from_args(sweep.build_parser().parse_args([]))
    assert cpu.mode == "reduced" and cpu.backend_order == "primary-first" and s.backend_order == "interleaved"
    monkeypatch.setattr(sweep, "pick_device", lambda name: torch.device("cuda"))
    lat = [u for u in timed if u.combos[0].batch == 8 and u.combos[0].level == "model" and u.combos[0].res == 32]
    assert {c.model for u in lat for c in u.combos} == set(VARIANTS)  # every variant interleaved with the others
    # the throughput regime: 2^19 tokens per batch, training step, whole model; r = 256 is the latency row
    thr = {c.res: c.batch for u in timed for c in u.combos if c.batch not in (8, 64) and c.model == "v1"}
    assert thr == {32: 512, 48: 228, 64: 128, 96: 57, 128: 32, 192: 14}
    assert all(u.kind == "train" and u.combos[0].level == "model" for u in timed if u.combos[0].batch not in (8, 64))
    assert sweep.regime(8, 256, s) == "latency+throughput" and sweep.regime(32, 128, s) == "throughput"
    spec = [c for u in plan for c in u.combos if c.batch == 64]
    assert {c.model for c in spec} == set(VARIANTS) and all(c.res == 32 for c in spec)
    assert not [u for u in plan if u.kind == "max_batch"]
    # V1 without padding, in the same rounds as the padded V1 and the others, at 48² and 96² (both regimes)
    pad = {(c.level, c.res, c.batch, u.kind) for u in timed for c in u.combos if c.variant == "pad=off"}
    latency = {(lv, r, 8, k) for lv in ("model", "encoder") for r in (48, 96) for k in ("fwd", "train")}
    assert pad == latency | {("model", 48, 228, "train"), ("model", 96, 57, "train")}
    for u in timed:
        if any(c.variant for c in u.combos):
            assert ("v1", "") in {(c.model, c.variant) for c in u.combos}
    est = sum(sweep.estimate_seconds(c, u.kind, s, torch.device("cuda")) for u in plan for c in u.combos)
    assert 120 < est < s.time_budget_s + 240  # a budget cut skips the rest; a rerun continues
    mb = sweep.settings_from_args(sweep.build_parser().parse_args(["--max-batch", "--res", "32", "64"]))
    units = [u for u in sweep.make_plan(mb, torch.device("cuda")) if u.kind == "max_batch"]
    assert {u.combos[0].model for u in units} == {k for k, v in VARIANTS.items() if v.max_batch}
    searched = [(u.combos[0].model, u.combos[0].backend) for u in units]
    assert {b for _, b in searched} == {"mamba_ssm", "mamba2", "sdpa", "seed", "triton", "flex"}  # not the references
    first = [b for m, b in searched if m == "v4"]  # the primary backend first, ours and compiled code last
    assert first[:2] == ["sdpa", "sdpa"] and set(first[-4:]) == {"triton", "flex"}
    mb = sweep.settings_from_args(sweep.build_parser().parse_args(["--max-batch", "--res", "32", "256"]))
    units = [u.combos[0] for u in sweep.make_plan(mb, torch.device("cuda")) if u.kind == "max_batch"]
    assert {c.res for c in units if c.backend in ("sdpa", "mamba_ssm")} == {32, 256}
    assert {c.res for c in units if c.backend not in ("sdpa", "mamba_ssm")} == {32}  # to --secondary-max-res
    ext = sweep.settings_from_args(sweep.build_parser().parse_args(["--extended", "--tokens", "0"]))
    assert ext.res[-3:] == [224, 256, 320] and ext.tokens == 0
    assert not any(c.batch not in (8, 64) for u in sweep.make_plan(ext, torch.device("cuda")) for c in u.combos)


def test_time_budget_skips_rows_that_a_rerun_then_measures(tmp_path):
    args = ["--quick", "--models", "v4", "--backends", "sdpa", "--levels", "mixer", "--res", "8", "--no-flops",
            "--out", str(tmp_path)]  # fmt: skip
    assert sweep.main([*args, "--time-budget", "1e-6"]) == 0
    df = rows(tmp_path)
    assert set(df["status"]) == {"skipped"} and df["note"].str.contains("time budget").all()
    assert sweep.main(args) == 0
    assert set(rows(tmp_path)["status"]) == {"ok"}


def test_a_gpu_call_that_leaves_rows_does_not_render_unless_asked():
    """--render auto: a GPU call that the time budget cut short leaves the rendering to the call that finishes the
    plan (GPU time not spent on plots that the next call redraws); a CPU call renders anyway (the reduced sweep is
    usually run once); always / never override it."""
    assert not sweep.should_render("auto", 3, "cuda") and sweep.should_render("auto", 0, "cuda")
    assert sweep.should_render("auto", 3, "cpu") and sweep.should_render("auto", 0, "cpu")
    assert sweep.should_render("always", 3, "cuda") and not sweep.should_render("never", 0, "cpu")


def test_render_flag_on_a_cpu_run_and_rows_left(tmp_path, capsys):
    args = ["--quick", "--models", "v4", "--backends", "sdpa", "--levels", "mixer", "--res", "8", "--no-flops",
            "--out", str(tmp_path)]  # fmt: skip
    assert sweep.main([*args, "--time-budget", "1e-6", "--render", "never"]) == 0
    out = capsys.readouterr().out
    assert "rows left for the next call" in out and "not rendered" in out
    assert not (tmp_path / "README.md").exists()
    assert sweep.rows_left(sweep.RowStore(tmp_path, sweep.settings_from_args(sweep.build_parser().parse_args(
        args)).tag).rows.values()) == len(rows(tmp_path))  # fmt: skip
    assert sweep.main([*args, "--time-budget", "1e-6"]) == 0  # auto on a CPU: rendered although rows are left
    assert (tmp_path / "README.md").exists()
    (tmp_path / "README.md").unlink()
    assert sweep.main([*args, "--render", "never"]) == 0
    assert set(rows(tmp_path)["status"]) == {"ok"} and not (tmp_path / "README.md").exists()
    assert "--render never" in capsys.readouterr().out
    assert sweep.main(args) == 0 and (tmp_path / "README.md").exists()  # nothing left: auto renders


def test_time_budget_closes_before_a_unit_that_would_end_past_it(tmp_path):
    s = sweep.settings_from_args(sweep.build_parser().parse_args(["--quick", "--out", str(tmp_path)]))
    s.time_budget_s = 100.0
    sw = sweep.Sweep(s)
    sw.t0 = time.perf_counter() - 50  # 50 s into the call
    assert not sw.over_budget(1e6)  # the call's first unit always runs: nothing to scale its estimate by yet
    sw.spent(10.0, time.perf_counter() - 20)  # a unit estimated at 10 s took 20 s: later estimates count double
    assert not sw.over_budget(20.0)  # 50 + 2 × 20 = 90 s ≤ 100
    assert sw.over_budget(30.0)  # 50 + 2 × 30 = 110 s > 100: closed ...
    assert "the next unit (≈ 60 s) would end past it" in sw.budget_closed
    assert sw.over_budget(0.0) and sw.pre_status(sweep.make_plan(s, sw.device)[0].combos[0], "fwd")[0] == "skipped"
    sw2 = sweep.Sweep(s)
    sw2.spent(10.0, time.perf_counter() - 5)  # faster than estimated: the estimate stands (at least 1×)
    sw2.t0 = time.perf_counter() - 50
    assert not sw2.over_budget(45.0) and sw2.over_budget(55.0)


def test_redo_measures_only_the_named_rows_again(tmp_path, capsys):
    args = ["--quick", "--models", "v1", "v4", "--backends", "reference", "sdpa", "--levels", "mixer", "--res", "8",
            "--no-flops", "--out", str(tmp_path)]  # fmt: skip
    assert sweep.main(args) == 0
    before = rows(tmp_path).set_index(["model", "kind"])["run_id"]
    assert sweep.main([*args, "--redo", "v4/sdpa"]) == 0
    assert "--redo v4/sdpa/: 2 saved rows are measured again" in capsys.readouterr().out
    after = rows(tmp_path).set_index(["model", "kind"])["run_id"]
    assert (after.loc["v1"] == before.loc["v1"]).all()  # kept
    assert (after.loc["v4"] != before.loc["v4"]).all()  # measured again
    assert sweep.redo_matches({"model": "v2", "backend": "flex"}, ["/flex"])
    assert not sweep.redo_matches({"model": "v2", "backend": "sdpa"}, ["v4//", "/flex/"])
    assert sweep.redo_matches({"model": "v1", "backend": "mamba_ssm", "kind": "max_batch"}, ["//max_batch"])
    assert not sweep.redo_matches({"model": "v1", "backend": "mamba_ssm", "kind": "train"}, ["//max_batch"])


def test_max_batch_search_finds_its_points_training_row(quick_run):
    # the search's first probe comes from the point's measured training peak; the lookup once used a key without
    # the variant field, found nothing and started every search at the sweep's batch (the H200 run at 4f6ab756)
    s = sweep.settings_from_args(sweep.build_parser().parse_args([*QUICK, "--out", str(quick_run)]))
    sw = sweep.Sweep(s)
    row = sw.timed_train_row(sweep.Combo("v1", "reference", "model", 8, s.batch))
    assert row["kind"] == "train" and row["status"] == "ok" and row["res"] == 8 and row["median_ms"] > 0


def test_max_batch_search_warms_up_at_the_points_batch_then_probes(quick_run, monkeypatch):
    """run_max_batch on the CPU, its CUDA memory queries faked: one warm-up step at the point's own batch (where
    compiles and autotuning happen), not listed, then the probes from the measured training peak up to the cap."""
    s = sweep.settings_from_args(sweep.build_parser().parse_args([*QUICK, "--out", str(quick_run)]))
    s.max_batch_cap, s.max_batch_probes = 6, 3
    sw = sweep.Sweep(s)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**34, 2**34))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    batches = []
    make_step = sweep.measure.make_train_step

    def counting_step(wl, inputs, device, amp):
        batches.append(next(iter(inputs.values())).shape[0] if isinstance(inputs, dict) else inputs[0].shape[0])
        return make_step(wl, inputs, device, amp)

    monkeypatch.setattr(sweep.measure, "make_train_step", counting_step)
    row = {}
    sw.run_max_batch(sweep.Combo("v1", "reference", "model", 8, s.batch), row)
    assert batches[0] == s.batch  # the warm-up
    assert row["n_probes"] == len(batches) - 1 and 1 <= row["max_batch"] <= 6 and row["probes"]


def test_sticky_cuda_errors_are_recognised():
    assert sweep.sticky_cuda_error(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert sweep.sticky_cuda_error(RuntimeError("CUDA error: device-side assert triggered"))
    assert not sweep.sticky_cuda_error(RuntimeError("CUDA out of memory"))


def test_git_commit_prefers_the_callers_commit(monkeypatch, tmp_path):
    from bench.env import git_commit

    monkeypatch.setenv("GIT_COMMIT", "74973f0")
    assert git_commit() == "74973f0"  # a GPU machine's copy may carry a stale .git: the caller's word wins
    monkeypatch.delenv("GIT_COMMIT")
    assert git_commit(tmp_path) == "unknown"  # no repository, nothing passed


def test_rows_of_an_older_sweep_are_measured_again(tmp_path, capsys):
    args = ["--quick", "--models", "v4", "--backends", "sdpa", "--levels", "mixer", "--res", "8", "--no-flops",
            "--out", str(tmp_path)]  # fmt: skip
    old = [{"model": "v4", "backend": "sdpa", "level": "mixer", "res": 8, "batch": 2, "dtype": "fp32", "kind": k,
            "status": "ok", "median_ms": 1.0, "run_id": "old"} for k in ("fwd", "train")]  # fmt: skip
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "sweep_B2_fp32.json").write_text(json.dumps({"runs": [], "rows": old}))
    assert sweep.main(args) == 0
    assert "2 rows of an older sweep" in capsys.readouterr().out
    df = rows(tmp_path)
    assert len(df) == 2 and (df["run_id"] != "old").all() and (df["schema"] == sweep.SCHEMA).all()
    assert (df["n_rounds"] == 3).all() and (df["regime"] == "latency").all()


def test_padding_variant_rows_and_table(tmp_path):
    b1 = primary_backends("cpu")["v1"]  # the pad=off series goes beside V1's primary backend
    args = ["--quick", "--models", "v1", "v4", "--backends", b1, "sdpa", "--levels", "model", "--res", "8",
            "--no-flops", "--pad-compare-res", "8", "--out", str(tmp_path)]  # fmt: skip
    assert sweep.main(args) == 0
    df = rows(tmp_path)
    off = df[df["variant"] == "pad=off"]
    assert len(off) == 2 and set(off["model"]) == {"v1"} and (off["status"] == "ok").all()
    assert (off["pad_multiple"] == "off").all() and (off["scan_len"] == 64).all()
    assert len(df[df["variant"] == ""]) == 4  # V1 and V4, fwd and train
    pad = pd.read_csv(tmp_path / "padding_B2_fp32.csv")
    assert len(pad) == 2 and pad["unpadded / padded (wall)"].str.endswith("×").all()
    assert f"V1 {b1} pad=off" in (tmp_path / "README.md").read_text()


def test_a_throwaway_variant_runs_through_the_table(tmp_path, monkeypatch):
    """A variant that exists only as a record (V1's class, one layer) is swept, counted and reported on CPU."""
    from models.variants import VARIANTS, FlopParts, Variant, get_variant

    v1 = get_variant("v1")
    vx = Variant(
        key="vx", short="VX", family="Mamba-1L", complexity="O(N)", cls=v1.cls, make_config=v1.make_config,
        backend_field="mixer_backend", backends=("reference",), primary={"cuda": "reference", "cpu": "reference"},
        fallback=("reference",), encoder_prefixes=v1.encoder_prefixes, flops=FlopParts(("mamba",), ("mamba",)),
        mixer_desc="one Mamba mixer", color="tab:green", overrides={"num_layers": 1},
    )  # fmt: skip
    monkeypatch.setitem(VARIANTS, "vx", vx)
    args = ["--quick", "--models", "v1", "vx", "--backends", "reference", "--res", "8", "--out", str(tmp_path)]
    assert sweep.main(args) == 0
    df = rows(tmp_path)
    mine = df[df["model"] == "vx"]
    assert len(mine) == 9 and set(mine["status"]) == {"ok"}, mine[["kind", "level", "note"]]
    assert mine[mine["kind"] == "flops"]["agree"].all()
    enc = df[(df["kind"] == "flops") & (df["level"] == "encoder")].set_index("model")["gflop_analytic"]
    assert enc["vx"] == pytest.approx(enc["v1"] / 2)  # tiny V1 has 2 layers, vx 1
    text = (tmp_path / "README.md").read_text()
    assert "VX reference" in text and "VX/V1" in text and "VX (Mamba-1L, O(N))" in text


def test_unknown_variant_is_a_one_line_error(capsys):
    assert sweep.main(["--quick", "--models", "v9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown value 'v9'" in err and "v1" in err
    with pytest.raises(ConfigError, match="unknown model 'v9'"):
        measure.build_workload("v9", "sdpa", "model", "tiny", "cpu")
    with pytest.raises(ConfigError, match="unknown model 'v9'"):
        measure.backend_problem("v9", "sdpa", torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flex_rows_on_gpu_run_compiled_at_dropout_zero(tmp_path):
    args = ["--quick", "--models", "v4", "--backends", "flex", "sdpa", "--res", "16", "32", "--no-max-batch",
            "--out", str(tmp_path)]  # fmt: skip
    assert sweep.main(args) == 0
    df = rows(tmp_path)
    flex = df[df["backend"] == "flex"]
    assert len(flex) == 18 and set(flex["status"]) == {"ok"}, flex[["kind", "level", "note"]]
    timed = flex[flex["kind"] != "flops"]
    assert timed["note"].str.contains("dropout 0").all() and flex[flex["kind"] == "flops"]["agree"].all()
    assert "flex" in (tmp_path / "README.md").read_text()


def test_report_of_three_variants_has_ratio_columns_and_the_architectures_table(tmp_path):
    """GPU-shaped rows for V1, V4 and a V2 that costs what V1 costs: a Vk/V1 column each, the spec's table."""
    rows_ = _synthetic_gpu_rows()
    rows_ += [{**r, "model": "v2"} for r in rows_ if r["model"] == "v1"]
    env = {"gpu": "NVIDIA H200", "reduced": False, "settings": {"mode": "full", "preset": "default", "batch": 8,
                                                                "dtype": "bf16", "threads": None}}  # fmt: skip
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "sweep_B8_bf16.json").write_text(json.dumps({"runs": [env], "rows": rows_}))
    assert report.main(["--out", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    assert "Rendering problems" not in text
    assert "| V2/V1 | V4/V1 |" in text and "## Where V2, V4 start to cost more than V1" in text
    arch = pd.read_csv(tmp_path / "architectures_B8_bf16.csv").set_index("variant")
    assert arch.loc["V2 (bidirectional Mamba + Perceiver)", "compute vs V1 (spec)"] == "1.7x"
    assert arch.loc["V2 (bidirectional Mamba + Perceiver)", "training step vs V1 (32², batch 8)"].startswith("1.00×")
    assert arch.loc["V4 (Transformer)", "layers (spec)"] == 6


def test_architectures_table_reads_the_primary_backends_rows():
    """A secondary backend's rows come later in a resumed sweep (here V1 on mamba2, another parameter count): the
    spec's table must still read the primary backend's (it once took the last row of the model)."""
    rows_ = _synthetic_gpu_rows()
    rows_ += [{**r, "model": "v2"} for r in rows_ if r["model"] == "v1"]
    rows_ += [{**r, "backend": "mamba2", "params": 1, "gflop_analytic": 1e-6} for r in rows_ if r["model"] == "v1"]
    df = pd.DataFrame(rows_)
    arch = report.architectures_table(df, [{"gpu": "NVIDIA H200"}], 8).set_index("variant")
    want = df[(df["model"] == "v1") & (df["backend"] == "mamba_ssm") & (df["kind"] == "flops")]["params"].iloc[-1]
    assert arch.loc["V1 (Mamba)", "parameters"] == f"{report.fmt_num(want / 1e6)}M"
    assert arch.loc["V2 (bidirectional Mamba + Perceiver)", "FLOPs vs V1 (32², model, analytic)"] == "1.00×"
