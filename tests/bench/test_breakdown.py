"""The per-component grouping of profiler kernels, on a recorded-format trace (tests/bench/data), and its table
and stacked plot from saved rows."""

import json
from pathlib import Path

import pandas as pd
import pytest

from bench import breakdown as bd
from bench.device_time import Kernel, kernel_ms, kernels_from_trace

TRACE = Path(__file__).parent / "data" / "trace_synthetic_train_step.json"


@pytest.fixture(scope="module")
def trace():
    return json.loads(TRACE.read_text())


def test_trace_reader_keeps_only_device_events(trace):
    kernels = kernels_from_trace(trace)
    cats = ("kernel", "gpu_memcpy", "gpu_memset")
    device = [e for e in trace["traceEvents"] if e.get("ph") == "X" and e["cat"] in cats]
    assert len(kernels) == len(device) > 30
    assert {k.cat for k in kernels} == {"kernel", "gpu_memcpy", "gpu_memset"}
    assert kernel_ms(kernels) == pytest.approx(sum(e["dur"] for e in device) / 1e3)


def test_every_kernel_lands_in_its_component(trace):
    for ev in trace["traceEvents"]:
        if ev.get("ph") == "X" and "expected_component" in ev.get("args", {}):
            assert bd.classify(ev["name"], ev["cat"]) == ev["args"]["expected_component"], ev["name"][:100]


def test_breakdown_sums_to_the_kernel_time_and_divides_by_steps(trace):
    kernels = kernels_from_trace(trace)
    comps = bd.breakdown(kernels, steps=2)
    assert set(comps) == set(bd.COMPONENTS)
    assert sum(comps.values()) == pytest.approx(kernel_ms(kernels) / 2)
    for key in ("attn", "scan", "conv", "gemm", "elementwise", "optimizer", "other"):
        assert comps[key] > 0, key
    cols = bd.breakdown_columns(comps)
    assert set(cols) == {f"bd_{k}_ms" for k in bd.COMPONENTS}
    top = json.loads(bd.top_kernels(kernels, n=3, steps=2))
    assert len(top) == 3 and top[0][2] == "scan"  # selective_scan_bwd is the longest kernel of the fixture


def test_unknown_names_are_other_and_memcpy_is_not_elementwise():
    assert bd.classify("some_new_kernel_v2") == "other"
    assert bd.classify("Memcpy DtoD (Device -> Device)", "gpu_memcpy") == "other"


def _rows():
    rows = []
    for series, (model, backend) in {"V1 mamba_ssm": ("v1", "mamba_ssm"), "V4 sdpa": ("v4", "sdpa")}.items():
        for r, scale in ((32, 1.0), (64, 4.0), (128, 16.0)):
            attn = 0.2 * scale**2 if model == "v4" else 0.1 * scale
            comps = {
                "attn": attn,
                "scan": 0.5 * scale if model == "v1" else 0.0,
                "conv": 0.05 * scale,
                "gemm": 1.0 * scale,
                "elementwise": 0.4 * scale,
                "optimizer": 0.3,
                "other": 0.01,
            }
            rows.append(
                {
                    "model": model,
                    "backend": backend,
                    "series": series,
                    "res": r,
                    "batch": 8,
                    "kind": "train",
                    "status": "ok",
                    **bd.breakdown_columns(comps),
                }
            )
    rows.append(
        {
            "model": "v4",
            "backend": "seed",
            "series": "V4 seed",
            "res": 128,
            "batch": 8,
            "kind": "train",
            "status": "oom",
        }
    )
    return pd.DataFrame(rows)


def test_table_and_one_plot_per_series_from_saved_rows(tmp_path):
    df = _rows()
    csv = tmp_path / "rows.csv"
    df.to_csv(csv, index=False)
    saved = pd.read_csv(csv)  # the plot reads saved data only
    t = bd.breakdown_table(saved)
    assert len(t) == 6 and set(t["series"]) == {"V1 mamba_ssm", "V4 sdpa"}
    v4_128 = t[(t["series"] == "V4 sdpa") & (t["r"] == 128)].iloc[0]
    assert v4_128["attention core"].endswith("%)") and v4_128["kernel ms"] > 0
    written = bd.plot_breakdown(saved, tmp_path, "B8_bf16")
    assert sorted(p.name for p in written) == [
        "breakdown_train_V1_mamba_ssm_B8_bf16.png",
        "breakdown_train_V4_sdpa_B8_bf16.png",
    ]
    assert all(p.stat().st_size > 1000 for p in written)


def test_rows_without_breakdown_columns_give_nothing(tmp_path):
    df = pd.DataFrame([{"model": "v1", "backend": "reference", "res": 8, "batch": 2, "kind": "train", "status": "ok"}])
    assert bd.breakdown_table(df).empty
    assert bd.plot_breakdown(df, tmp_path, "B2_fp32") == []


def test_kernel_objects_duck_type():
    comps = bd.breakdown([Kernel("nvjet_tst_64x8_64x16_4x1_v_bz_TNN", 1000.0)])
    assert comps["gemm"] == pytest.approx(1.0)


TRACES = sorted((Path(__file__).parent / "data").glob("trace_*.json"))


@pytest.mark.parametrize("path", TRACES, ids=[p.stem for p in TRACES])
def test_recorded_traces_leave_little_unclassified(path):
    """Every trace in tests/bench/data (the synthetic one, and any recorded on the H200 with bench.sweep
    --trace-dir): at most 5 % of the kernel time lands in "other"; the message names what did."""
    kernels = kernels_from_trace(json.loads(path.read_text()))
    assert kernels, f"{path.name}: no device events (a CPU-only trace?)"
    comps = bd.breakdown(kernels)
    total = sum(comps.values())
    other = [k for k in kernels if bd.classify(k.name, k.cat) == "other" and k.cat == "kernel"]
    share = sum(k.dur_us for k in other) / 1e3 / total
    assert share <= 0.05, (
        f"{path.name}: {100 * share:.1f}% unclassified, e.g. {sorted({k.name[:80] for k in other})[:5]}"
    )


def _scaling_rows():
    """V1 at r = 128, 192, 256: a scan ∝ N at both levels, and at the model level an attention term ∝ N²."""
    rows = []
    for level in ("encoder", "model"):
        for r in (128, 192, 256):
            n = r * r / 16384
            row = {"model": "v1", "backend": "mamba_ssm", "series": "V1 mamba_ssm", "level": level, "res": r,
                   "batch": 8, "kind": "train", "status": "ok"}  # fmt: skip
            row.update({f"bd_{k}_ms": 0.0 for k in bd.COMPONENTS})
            row.update(bd_scan_ms=40.0 * n, bd_gemm_ms=10.0 * n, bd_attn_ms=(6.0 * n * n if level == "model" else 0.0))
            rows.append(row)
    rows.append({**rows[0], "res": 96})  # below min_res: not fitted
    return pd.DataFrame(rows)


def test_component_exponents_name_the_term_that_sets_the_slope():
    t = bd.component_exponents(_scaling_rows())
    enc = t[t["level"] == "encoder"].set_index("component")
    mod = t[t["level"] == "model"].set_index("component")
    assert set(enc.index) == {"total kernel time", "selective scan / SSD", "GEMMs (projections, FFN)"}
    assert enc.loc["total kernel time", "exponent"] == pytest.approx(1.0)
    assert mod.loc["attention core", "exponent"] == pytest.approx(2.0)
    assert mod.loc["selective scan / SSD", "exponent"] == pytest.approx(1.0)
    assert 1.0 < mod.loc["total kernel time", "exponent"] < 2.0
    assert mod.loc["attention core", "share at first r"] == pytest.approx(6 / 56, abs=1e-3)
    assert mod.loc["attention core", "share at last r"] == pytest.approx(96 / (96 + 200), abs=1e-3)
    assert set(t["r range"]) == {"128–256"}
    assert bd.component_exponents(_scaling_rows()[lambda d: d["res"] == 128]).empty  # one r: nothing to fit
