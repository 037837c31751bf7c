"""The sweep's device-time path end to end on a GPU (marked gpu; `make gpu-test` on the H200): a tiny sweep whose
rows carry CUDA-graph device time, profiler kernel time, host overhead, the breakdown, NVML clock and power, and the
run's matmul peak; then bench.reproduce on two such runs."""

import json

import pandas as pd
import pytest

from bench import reproduce, sweep


def _rows(out):
    return pd.DataFrame(json.loads((out / "raw" / "sweep_B2_bf16.json").read_text())["rows"])


@pytest.mark.gpu
def test_tiny_gpu_sweep_has_device_time_on_every_timed_row(tmp_path):
    args = ["--quick", "--levels", "model", "--res", "16", "32", "--backends", "mamba_ssm", "sdpa", "triton",
            "--no-flops", "--global-warmup", "0.5", "--trace-dir", str(tmp_path / "traces")]  # fmt: skip
    assert sweep.main([*args, "--out", str(tmp_path / "a")]) == 0
    df = _rows(tmp_path / "a")
    ok = df[df["status"] == "ok"]
    assert len(ok) >= 8, df[["backend", "kind", "status", "note"]]
    for _, row in ok.iterrows():
        assert row["device_source"] == "cuda-graph replay", (row["backend"], row["kind"], row["graph_note"])
        assert 0 < row["graph_ms"] <= row["median_ms"] * 1.5
        assert row["kernel_ms"] > 0 and row["host_ms"] == pytest.approx(row["median_ms"] - row["kernel_ms"])
        assert row["n_rounds"] == 3 and row["sm_clock_mhz"] > 0 and row["power_w"] > 0
        assert row["bd_gemm_ms"] > 0 and row["tflops_device"] > 0
    train = ok[ok["kind"] == "train"]
    assert (train["bd_optimizer_ms"] > 0).all()
    assert (train[train["backend"] == "mamba_ssm"]["bd_scan_ms"] > 0).all()
    assert list((tmp_path / "traces").glob("*.json"))
    env = json.loads((tmp_path / "a" / "raw" / "sweep_B2_bf16.json").read_text())["runs"][-1]
    assert env["matmul_peak_tflops"] > 100 and env["global_warmup"]["warmup_s"] >= 0.5
    assert sweep.main([*args, "--out", str(tmp_path / "b")]) == 0
    text, _ = reproduce.report(tmp_path / "a", tmp_path / "b", min_res=16)  # a tiny sweep has no r >= 96 rows
    device_line = next(line for line in text.splitlines() if line.startswith("- worst deviation, device time"))
    assert "no matched rows" not in device_line, device_line  # tiny rows are host-bound: the wall lines may be empty
