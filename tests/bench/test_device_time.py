"""bench.device_time: what runs on CPU (the reason a row gives, the trace reader on a real torch.profiler export),
and the CUDA-graph paths on a GPU (marked gpu)."""

import pytest
import torch

from bench import device_time as dt
from bench import measure

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
def test_graph_keeps_the_captured_step_alive_until_released():
    """A captured training step's optimizer state is allocated in the warm-up, outside the graph's pool, and every
    replay writes it: the Graph holds the step (and so that state) until release(), even when the caller drops it
    (a step left to the garbage collector let the next capture reuse that memory: an illegal access on replay)."""
    import gc
    import weakref

    wl = measure.build_workload("v4", "triton", "model", "tiny", GPU)
    step = measure.make_train_step(wl, wl.inputs(2, 256, GPU), GPU, True, capturable=True)
    alive = weakref.ref(step.optimizer)
    g = dt.capture(step, GPU)
    del step
    gc.collect()
    assert alive() is not None and len(alive().state) > 0
    g.replay()
    torch.cuda.synchronize()
    g.release()
    assert g.step is None


@pytest.mark.gpu
def test_peak_probe_and_warm_up_on_gpu():
    w = dt.warm_up(GPU, 0.3, n=2048)
    assert w["warmup_s"] >= 0.3 and w["warmup_gemms"] > 0
    p = dt.matmul_peak(GPU, n=2048, reps=5)
    assert p["matmul_peak_tflops"] > 10
