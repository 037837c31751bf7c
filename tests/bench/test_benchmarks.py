"""pytest-benchmark benchmarks of the forward pass and the training step, per variant (models/variants.py),
backend and resolution.

    pytest tests/bench --benchmark-only                      # (a plain `pytest` skips these)
    pytest tests/bench --benchmark-only --benchmark-group-by=group --benchmark-save=h200

On a GPU: the spec's model sizes, batch 8, r = 32, 64, 128, bf16 autocast, CUDA synchronised inside the timed
call. Without CUDA: the tiny preset at r = 8 and 16, one thread (a smoke run of seconds). Analytic FLOPs and peak
memory go to benchmark.extra_info; GPU details to the machine info (conftest.py).

CPU only (issue 16), the default preset at batch 8, 32² (1,024 tokens), fp32, peak RSS in extra_info:

    pytest tests/bench -k cpu_ --benchmark-only --benchmark-group-by=group   # ≈ 3 min on 2 quiet cores

    test_cpu_scan        selective scan fwd+bwd (b 8, d_inner 512, d_state 16, L 1024): fused vs reference, 2 threads
    test_cpu_layer       one Mamba mixer fwd+bwd on (8, 1024, 256): cpu_fused vs reference, 2 threads
    test_cpu_train_step  the whole training step (AdamW), V1 cpu_fused and V4 sdpa, on 1 and on 2 threads
"""

import os
import statistics
import time

import pytest
import torch

from bench import measure
from bench.flops import analytic_flops
from models.variants import VARIANTS

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
PRESET = "default" if CUDA else "tiny"
BATCH = 8 if CUDA else 2
RESOLUTIONS = (32, 64, 128) if CUDA else (8, 16)
ROUNDS = 10 if CUDA else 3
CASES = [(k, b) for k, v in VARIANTS.items() for b in v.backends]  # every variant × backend of the table


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """On CPU: one thread (two threads on a shared 2-core machine spin-wait and time nothing useful)."""
    threads = torch.get_num_threads()
    if not CUDA:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("res", RESOLUTIONS)
@pytest.mark.parametrize("kind", ["fwd", "train"])
@pytest.mark.parametrize("model,backend", CASES, ids=[f"{m}-{b}" for m, b in CASES])
def test_model(benchmark, model, backend, kind, res):
    problem = measure.backend_problem(model, backend, DEVICE)
    if problem:
        pytest.skip(problem)
    if backend in measure.REFERENCE_BACKENDS and CUDA and res > 64:
        pytest.skip("reference Mamba is launch-bound on GPU: r <= 64 only")
    N = res * res
    wl = measure.build_workload(model, backend, "model", PRESET, DEVICE)
    inputs = wl.inputs(BATCH, N, DEVICE)
    make = measure.make_train_step if kind == "train" else measure.make_forward
    step = make(wl, inputs, DEVICE, amp=True)

    def timed():
        step()
        measure.sync(DEVICE)  # the timed call includes the GPU work

    try:
        timed()  # compile / autotune / allocate
        mem = measure.measure_memory(step, DEVICE)
    except Exception as e:
        measure.free_memory(DEVICE)
        if measure.is_oom(e):
            pytest.skip(f"out of memory at batch {BATCH}, r={res}")
        raise
    fwd = analytic_flops(model, wl.cfg, "model", BATCH, N)
    benchmark.group = f"res{res}"
    benchmark.extra_info.update(
        model=model, backend=backend, kind=kind, res=res, N=N, batch=BATCH, preset=PRESET, note=wl.note,
        dtype="bf16" if CUDA else "fp32", params=wl.params,
        gflop_analytic=(3 if kind == "train" else 1) * fwd / 1e9,
        **{k: v for k, v in mem.items() if v == v},  # drop NaN (not measured here)
    )  # fmt: skip
    benchmark.pedantic(timed, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    measure.free_memory(DEVICE)


# ----------------------------------------------------------------------------------------------
# CPU: the fused selective scan (issue 16) at the default preset, batch 8, 32²
# ----------------------------------------------------------------------------------------------

cpu_only = pytest.mark.skipif(CUDA, reason="CPU benchmarks (issue 16)")


@pytest.fixture
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _rss_extra(benchmark, fn):
    mem = measure.measure_memory(fn, torch.device("cpu"))
    benchmark.extra_info.update(rss_before_mb=mem["rss_before_mb"], rss_peak_mb=mem["rss_peak_mb"])


def _pedantic_cpu(benchmark, fn, rounds):
    """benchmark.pedantic, plus the process CPU time per call (time.process_time, all threads) and the load
    average in extra_info: on a shared machine wall time and CPU time part ways, and the load says by how much."""
    cpu = []

    def timed():
        t0 = time.process_time()
        fn()
        cpu.append(time.process_time() - t0)

    load_before = os.getloadavg()[0]
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(
        cpu_s_median=statistics.median(cpu), loadavg_1min_before=load_before, loadavg_1min_after=os.getloadavg()[0]
    )


@cpu_only
@pytest.mark.parametrize("threads", [2], indirect=True, ids=["2threads"])
@pytest.mark.parametrize("impl", ["cpu_fused", "reference"])
def test_cpu_scan(benchmark, impl, threads):
    import models.mamba as mamba_mod

    problem = measure.backend_problem("v1", impl, DEVICE)
    if problem:
        pytest.skip(problem)
    g = torch.Generator().manual_seed(0)
    b, d, n, L = 8, 512, 16, 1024
    leaves = [
        torch.randn(b, d, L, generator=g),  # u
        torch.randn(b, d, L, generator=g) * 0.5,  # delta
        -torch.rand(d, n, generator=g) * 4 - 0.1,  # A
        torch.randn(b, n, L, generator=g),  # B
        torch.randn(b, n, L, generator=g),  # C
        torch.randn(d, generator=g),  # D
        torch.randn(b, d, L, generator=g),  # z
        torch.randn(d, generator=g) * 0.1,  # delta_bias
    ]
    leaves = [t.requires_grad_() for t in leaves]
    scan = mamba_mod.selective_scan_fused if impl == "cpu_fused" else mamba_mod.selective_scan_ref

    def fwd_bwd():
        y = scan(*leaves, delta_softplus=True)
        torch.autograd.grad(y.sum(), leaves)

    fwd_bwd()
    _rss_extra(benchmark, fwd_bwd)
    benchmark.group = "cpu scan fwd+bwd (8, 512, 16, 1024)"
    benchmark.extra_info.update(impl=impl, threads=threads, shape="b8 d512 n16 L1024")
    _pedantic_cpu(benchmark, fwd_bwd, rounds=5 if impl == "cpu_fused" else 3)


@cpu_only
@pytest.mark.parametrize("threads", [2], indirect=True, ids=["2threads"])
@pytest.mark.parametrize("backend", ["cpu_fused", "reference"])
def test_cpu_layer(benchmark, backend, threads):
    problem = measure.backend_problem("v1", backend, DEVICE)
    if problem:
        pytest.skip(problem)
    wl = measure.build_workload("v1", backend, "mixer", "default", DEVICE)
    inputs = wl.inputs(8, 1024, DEVICE)
    inputs["x"].requires_grad_()

    def fwd_bwd():
        wl.module.zero_grad(set_to_none=True)
        wl.loss(inputs).backward()

    fwd_bwd()
    _rss_extra(benchmark, fwd_bwd)
    benchmark.group = "cpu one Mamba layer fwd+bwd (8, 1024, 256)"
    benchmark.extra_info.update(backend=backend, threads=threads)
    _pedantic_cpu(benchmark, fwd_bwd, rounds=5 if backend == "cpu_fused" else 3)


@cpu_only
@pytest.mark.parametrize("threads", [1, 2], indirect=True, ids=["1thread", "2threads"])
@pytest.mark.parametrize("model,backend", [("v1", "cpu_fused"), ("v4", "sdpa")], ids=["v1-cpu_fused", "v4-sdpa"])
def test_cpu_train_step(benchmark, model, backend, threads):
    problem = measure.backend_problem(model, backend, DEVICE)
    if problem:
        pytest.skip(problem)
    wl = measure.build_workload(model, backend, "model", "default", DEVICE)
    step = measure.make_train_step(wl, wl.inputs(8, 1024, DEVICE), DEVICE, amp=True)
    step()  # AdamW state, allocator warm-up
    _rss_extra(benchmark, step)
    benchmark.group = f"cpu training step, batch 8, 32², default preset, {threads} thread(s)"
    benchmark.extra_info.update(model=model, backend=backend, threads=threads, params=wl.params)
    _pedantic_cpu(benchmark, step, rounds=5)
    measure.free_memory(DEVICE)
