"""pytest-benchmark benchmarks of the forward pass and the training step, per variant (models/variants.py),
backend and resolution.

    pytest tests/bench --benchmark-only                      # (a plain `pytest` skips these)
    pytest tests/bench --benchmark-only --benchmark-group-by=group --benchmark-save=h200

On a GPU: the spec's model sizes, batch 8, r = 32, 64, 128, bf16 autocast, CUDA synchronised inside the timed
call. Without CUDA: the tiny preset at r = 8 and 16, one thread (a smoke run of seconds). Analytic FLOPs and peak
memory go to benchmark.extra_info; GPU details to the machine info (conftest.py).
"""

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
