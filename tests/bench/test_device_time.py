"""bench.device_time and bench.points: what runs on CPU (the reasons a row gives, the trace reader on a real
torch.profiler export, a timed group end to end), and the CUDA-graph paths on a GPU (marked gpu)."""

import math

import pytest
import torch

from bench import device_time as dt
from bench import measure
from bench.points import DeviceTimeConfig, measure_group
from bench.rounds import RoundsConfig

CPU = torch.device("cpu")


def test_capture_on_cpu_says_why():
    with pytest.raises(dt.GraphUnavailable, match="CUDA graphs need CUDA"):
        dt.capture(lambda: None, CPU)


def test_profile_kernels_reads_a_real_cpu_trace():
    # A real torch.profiler Chrome trace: on CPU it has cpu_op events and no device events.
    x = torch.randn(64, 64)
    assert dt.profile_kernels(lambda: x @ x, CPU, steps=2) == []


def test_kernels_from_trace_ignores_cpu_events_and_flows():
    trace = {"traceEvents": [
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "dur": 50},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "dur": 5},
        {"ph": "f", "cat": "ac2g", "name": "ac2g"},
        {"ph": "X", "cat": "Kernel", "name": "nvjet_tst_x", "dur": 12.5},
        {"ph": "X", "cat": "gpu_memset", "name": "Memset (Device)", "dur": 1.5},
    ]}  # fmt: skip
    ks = dt.kernels_from_trace(trace)
    assert [(k.name, k.cat) for k in ks] == [("nvjet_tst_x", "kernel"), ("Memset (Device)", "gpu_memset")]
    assert dt.kernel_ms(ks) == pytest.approx(0.014)


def test_warm_up_and_peak_are_gpu_only():
    assert dt.warm_up(CPU, 2.0) == {"warmup_s": 0.0, "warmup_gemms": 0}
    assert dt.matmul_peak(CPU) == {}


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


def test_capturable_train_step_only_on_cuda():
    wl = measure.build_workload("v4", "sdpa", "model", "tiny", CPU)
    step = measure.make_train_step(wl, wl.inputs(2, 64, CPU), CPU, False, capturable=True)
    assert step.optimizer.defaults["capturable"] is False
    step()


# ----------------------------------------------------------------------------------------------
# GPU
# ----------------------------------------------------------------------------------------------

GPU = torch.device("cuda") if torch.cuda.is_available() else None


@pytest.mark.gpu
def test_graph_forward_matches_eager():
    wl = measure.build_workload("v4", "sdpa", "model", "tiny", GPU)
    inputs = wl.inputs(2, 256, GPU)
    fwd = measure.make_forward(wl, inputs, GPU, True)
    ref = fwd().float().clone()
    g = dt.capture(fwd, GPU)
    out = g.replay().float()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)  # bf16 autocast, uncached weight casts
    assert min(dt.time_replay(g, GPU, 5)) > 0
    g.release()


@pytest.mark.gpu
@pytest.mark.parametrize("model,backend", [("v4", "sdpa"), ("v4", "triton"), ("v1", "mamba_ssm"), ("v1", "reference")])
def test_graph_training_step_updates_the_parameters(model, backend):
    if measure.backend_problem(model, backend, GPU):
        pytest.skip(measure.backend_problem(model, backend, GPU))
    wl = measure.build_workload(model, backend, "model", "tiny", GPU)
    step = measure.make_train_step(wl, wl.inputs(2, 256, GPU), GPU, True, capturable=True)
    g = dt.capture(step, GPU)
    before = [p.detach().clone() for p in wl.trainable()]
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    after = list(wl.trainable())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    g.release()


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


@pytest.mark.gpu
def test_peak_probe_and_warm_up_on_gpu():
    w = dt.warm_up(GPU, 0.3, n=2048)
    assert w["warmup_s"] >= 0.3 and w["warmup_gemms"] > 0
    p = dt.matmul_peak(GPU, n=2048, reps=5)
    assert p["matmul_peak_tflops"] > 10
