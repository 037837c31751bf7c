"""bench.report on rows shaped like the new GPU sweep's: device time beside wall time, the throughput regime,
the per-component breakdown, the per-token plot; fits / crossovers / spec table on device time."""

import json

import pandas as pd

from bench import breakdown as bd
from bench import report


def _rows() -> list[dict]:
    out = []
    for m, b in (("v1", "mamba_ssm"), ("v4", "sdpa")):
        for res in (32, 64, 128, 192, 256):
            N = res * res
            for batch, regime in ((8, "latency"), (max(1, round(2**19 / N)), "throughput")):
                if regime == "throughput" and batch == 8:
                    continue
                regime = "latency+throughput" if res == 256 and regime == "latency" else regime
                for level in ("model", "encoder"):
                    for kind, k in (("fwd", 1.0), ("train", 3.0)):
                        dev = k * batch / 8 * (1e-3 * N if m == "v1" else 2e-7 * N**2) + 0.1
                        wall = max(dev, 20.0)  # small rows are host-bound
                        kernel = 0.95 * dev
                        comps = {
                            "attn": 0.5 * kernel if m == "v4" else 0.05 * kernel,
                            "scan": 0.3 * kernel if m == "v1" else 0.0,
                            "conv": 0.0,
                            "gemm": 0.3 * kernel,
                            "elementwise": 0.1 * kernel,
                            "optimizer": 0.05 * kernel if kind == "train" else 0.0,
                        }
                        comps["other"] = kernel - sum(comps.values())
                        out.append({
                            "model": m, "backend": b, "level": level, "res": res, "N": N, "batch": batch,
                            "dtype": "bf16", "kind": kind, "status": "ok", "regime": regime, "median_ms": wall,
                            "iqr_ms": 0.1, "n_reps": 21, "n_rounds": 3, "round_spread_pct": 0.5, "device_ms": dev,
                            "graph_ms": dev, "device_source": "cuda-graph replay", "kernel_ms": kernel,
                            "host_ms": wall - kernel, "host_frac": (wall - kernel) / wall,
                            "tokens_per_s": batch * N / wall * 1e3, "tokens_per_s_device": batch * N / dev * 1e3,
                            "tflops_device": 100.0, "pct_peak_device": 12.5, "peak_tflops": 800.0,
                            "us_per_token": 1e3 * wall / (batch * N), "us_per_token_device": 1e3 * dev / (batch * N),
                            "sm_clock_mhz": 1980, "power_w": 500.0, "mem_alloc_peak_mb": 1000.0,
                            "mem_alloc_before_mb": 100.0, "samples_per_s": batch / wall * 1e3,
                            "epoch_min": 1.0, "params": 3_000_000, **bd.breakdown_columns(comps),
                        })  # fmt: skip
    return out


def test_report_uses_device_time_and_shows_both(tmp_path):
    env = {"gpu": "NVIDIA H200", "reduced": False, "matmul_peak_tflops": 800.0, "matmul_peak_shape": "8192x8192x8192",
           "settings": {"mode": "full", "preset": "default", "dtype": "bf16", "rounds": 3, "min_reps": 20,
                        "max_point_s": 2.0, "tokens": 2**19}}  # fmt: skip
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "sweep_B8_bf16.json").write_text(json.dumps({"runs": [env], "rows": _rows()}))
    names = {p.name for p in report.render(tmp_path)}
    for name in ("scaling_device_B8_bf16.png", "per_token_B8_bf16.png", "throughput_regime_B8_bf16.csv",
                 "breakdown_B8_bf16.csv", "breakdown_train_V1_mamba_ssm_B8_bf16.png",
                 "breakdown_train_V4_sdpa_B8_bf16.png", "tables/train_device_model_B8_bf16.md",
                 "tables/train_host_model_B8_bf16.md"):  # fmt: skip
        assert name.split("/")[-1] in names, name
    text = (tmp_path / "README.md").read_text()
    assert (
        "Throughput regime" in text
        and "Where the time goes" in text
        and "peak measured in the run: 800.0 TFLOP/s" in text
    )
    fits = pd.read_csv(tmp_path / "fits_B8_bf16.csv")
    dev = fits[(fits["metric"] == "training-step device time") & (fits["level"] == "encoder")].set_index("series")
    assert abs(dev.loc["V1 mamba_ssm", "exponent (r ≥ 128)"] - 1) < 0.05
    assert abs(dev.loc["V4 sdpa", "exponent (r ≥ 128)"] - 2) < 0.05
    spec = pd.read_csv(tmp_path / "spec_vs_measured_B8_bf16.csv").set_index("claim")
    assert "V1 encoder training-step device time ∝ N^k" in spec.index
    assert spec.loc["V1 encoder training-step device time ∝ N^k", "measured"] == "k = 1.00 (r ≥ 128)"
    wall = spec.loc["training slowdown V4/V1 (32×32, batch 8, eager wall time)"]
    assert "HOST-BOUND" in wall["how"]
    assert "training slowdown V4/V1 (32×32, batch 8, device time)" in spec.index
    assert not spec.index.str.contains("batch 512").any()  # throughput rows are not spec claims
    thr = pd.read_csv(tmp_path / "throughput_regime_B8_bf16.csv")
    assert set(thr["batch"]) >= {512, 32, 8} and (thr["tokens/batch"] >= 2**19 * 0.9).all()
    assert thr["vs V1 (device time)"].str.endswith("×").any()
    cross = pd.read_csv(tmp_path / "crossover_B8_bf16.csv")
    assert (cross["metric"] == "training-step device time").any()
