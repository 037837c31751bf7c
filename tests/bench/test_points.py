"""bench.points: a timed group end to end — on CPU the wall time and the reasons there is no device time, an OOM
point beside good ones; on a GPU (marked gpu) device time, kernel time and the breakdown."""

import math

import pytest
import torch

from bench import measure
from bench.points import DeviceTimeConfig, measure_group
from bench.rounds import RoundsConfig

CPU = torch.device("cpu")
GPU = torch.device("cuda") if torch.cuda.is_available() else None


def _factory(model="v4", backend="sdpa", device=CPU, res=8, batch=2, kind="train"):
    wl = measure.build_workload(model, backend, "model", "tiny", device)
    inputs = wl.inputs(batch, res * res, device)
    if kind == "fwd":
        return lambda capturable: measure.make_forward(wl, inputs, device, device.type == "cuda")
    return lambda capturable: measure.make_train_step(wl, inputs, device, device.type == "cuda", capturable)


def test_measure_group_on_cpu_keeps_wall_time_and_says_why_there_is_no_device_time(one_thread):
    def oom(capturable):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    factories = {"v4": _factory("v4", "sdpa"), "v1": _factory("v1", "reference"), "big": oom}
    out = measure_group(factories, CPU, RoundsConfig(rounds=3, min_reps=3), DeviceTimeConfig(profile_steps=1))
    assert measure.is_oom(out["big"]["error"])
    for k in ("v4", "v1"):
        f = out[k]
        assert "error" not in f
        assert f["n_rounds"] == 3 and f["n_reps"] == 3 and f["median_ms"] > 0 and f["round_spread_pct"] >= 0
        assert f["rss_peak_mb"] > 0 and f["timer"] == "perf_counter"
        assert f["graph_note"] == "CUDA graphs need CUDA"
        assert "no device kernels" in f["profile_note"]
        assert math.isnan(f["device_ms"]) and f["device_source"] == ""


@pytest.mark.gpu
def test_measure_group_on_gpu_gives_device_time_kernel_time_and_breakdown():
    from bench import breakdown as bd

    factories = {"v4": _factory("v4", "sdpa", GPU, 16, 4), "v4f": _factory("v4", "sdpa", GPU, 16, 4, "fwd")}
    out = measure_group(factories, GPU, RoundsConfig(rounds=3, min_reps=6), DeviceTimeConfig(profile_steps=2))
    for f in out.values():
        assert "error" not in f, f.get("error")
        assert f["graph_ms"] > 0 and f["device_source"] == "cuda-graph replay", f.get("graph_note")
        assert f["kernel_ms"] > 0 and f["kernel_count"] > 0
        assert f["host_ms"] == pytest.approx(f["median_ms"] - f["kernel_ms"])
        assert sum(f[f"bd_{k}_ms"] for k in bd.COMPONENTS) == pytest.approx(f["kernel_ms"], rel=1e-6)
        assert f["bd_attn_ms"] > 0 and f["bd_gemm_ms"] > 0
    assert out["v4"]["bd_optimizer_ms"] > 0 and out["v4f"]["bd_optimizer_ms"] == 0
