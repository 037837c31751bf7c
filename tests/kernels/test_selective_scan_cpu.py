"""The fused C++ CPU selective scan against the slow sequential loop (models.mamba.selective_scan_naive),
forward and backward, on fresh random inputs; plus a float64 gradcheck. No interpreter: the extension is
compiled once per machine (cached) and loaded once per test session."""

import pytest
import torch

from kernels import selective_scan_cpu as cpu_scan
from models.mamba import selective_scan_naive, selective_scan_ref

pytestmark = pytest.mark.skipif(not cpu_scan.available(), reason=f"extension did not build: {cpu_scan.build_error()}")

# input dtype → (elementwise rtol on y, relative-norm tolerance on y; gradients get 4× it): the kernel computes in
# fp32 for fp32 and bf16 inputs; bf16 outputs and gradients are rounded to bf16 (8 bits of mantissa, 2^-9 = 2e-3
# relative) on the way out, by both the kernel and the reference.
TOLS = {torch.float32: (1e-4, 2e-5), torch.bfloat16: (1.6e-2, 4e-3)}


def _inputs(b, d, n, L, seed, dtype=torch.float32, delta_scale=0.5, softplus=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    delta = r(b, d, L) * delta_scale
    if not softplus:  # without softplus Δ must be positive (a negative Δ makes the scan grow)
        delta = delta.abs() + 0.01
    return {
        "u": r(b, d, L).to(dtype),
        "delta": delta.to(dtype),
        "A": (-torch.rand(d, n, generator=g) * 4 - 0.1),
        "B": r(b, n, L).to(dtype),
        "C": r(b, n, L).to(dtype),
        "D": r(d),
        "z": r(b, d, L).to(dtype),
        "delta_bias": r(d) * 0.1,
    }


NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _run(fn, inputs, softplus, weight, **kw):
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    y = fn(**leaves, delta_softplus=softplus, **kw)
    grads = torch.autograd.grad((y.float() * weight).sum(), [v for v in leaves.values() if v is not None])
    return y, dict(zip([k for k, v in leaves.items() if v is not None], grads))


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


CASES = [
    # (b, d, n, L, chunk): L not a multiple of the 64-step tile or the chunk; d not a multiple of 16 lanes
    (2, 6, 4, 37, 16),
    (1, 33, 1, 5, 64),
    (2, 20, 16, 130, 64),
    (3, 17, 64, 70, 32),
    (2, 16, 7, 65, 8),
    (1, 40, 16, 1, 64),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("b,d,n,L,chunk", CASES)
def test_matches_naive_forward_and_backward(b, d, n, L, chunk, dtype):
    for seed, (softplus, with_D, with_z, with_bias) in enumerate(
        [(True, True, True, True), (False, False, False, False), (True, False, True, False), (False, True, False, True)]
    ):
        inputs = _inputs(b, d, n, L, seed, dtype, softplus=softplus)
        inputs.update(D=inputs["D"] if with_D else None, z=inputs["z"] if with_z else None)
        inputs.update(delta_bias=inputs["delta_bias"] if with_bias else None)
        weight = torch.randn(b, d, L, generator=torch.Generator().manual_seed(100 + seed))
        got, g_got = _run(cpu_scan.selective_scan_cpu, inputs, softplus, weight, chunk_size=chunk)
        # the truth: the sequential loop on the same inputs (fp32: in fp64; bf16: bf16 in and out, fp32 inside,
        # so both see the same bf16-rounded upstream gradient)
        ref_in = {k: (v.double() if v is not None and dtype == torch.float32 else v) for k, v in inputs.items()}
        want, g_want = _run(selective_scan_naive, ref_in, softplus, weight.to(ref_in["u"].dtype))
        assert got.dtype == dtype and got.shape == (b, d, L)
        rtol, rel_tol = TOLS[dtype]
        assert _rel(got, want) < rel_tol, ("y", seed)
        torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=rel_tol * want.abs().max().item())
        assert set(g_got) == set(g_want)
        for k in g_want:
            assert g_got[k].dtype == inputs[k].dtype and g_got[k].shape == inputs[k].shape, k
            assert _rel(g_got[k], g_want[k]) < 4 * rel_tol, (k, seed, _rel(g_got[k], g_want[k]))


@pytest.mark.parametrize("n", [1, 4, 16, 64])
def test_large_delta_and_every_state_size(n):
    """Δ up to ~50 (decays underflow to exactly 0) and d_state 1, 4, 16, 64 (compiled and generic paths)."""
    inputs = _inputs(2, 24, n, 100, seed=n, delta_scale=20.0)
    weight = torch.randn(2, 24, 100)
    got, g_got = _run(cpu_scan.selective_scan_cpu, inputs, True, weight)
    want, g_want = _run(selective_scan_naive, {k: v.double() for k, v in inputs.items()}, True, weight.double())
    assert torch.isfinite(got).all()
    assert _rel(got, want) < 2e-5
    for k in g_want:
        assert torch.isfinite(g_got[k]).all(), k
        assert _rel(g_got[k], g_want[k]) < 1e-4, (k, _rel(g_got[k], g_want[k]))


def test_generic_state_size_path():
    """A d_state with no compiled specialisation (the runtime-n loop)."""
    inputs = _inputs(2, 18, 5, 50, seed=3)
    weight = torch.randn(2, 18, 50)
    got, g_got = _run(cpu_scan.selective_scan_cpu, inputs, True, weight)
    want, g_want = _run(selective_scan_naive, {k: v.double() for k, v in inputs.items()}, True, weight.double())
    assert _rel(got, want) < 2e-5
    for k in g_want:
        assert _rel(g_got[k], g_want[k]) < 1e-4, k


def test_matches_chunked_reference_and_any_strides():
    """Same result as selective_scan_ref; inputs as the mixer passes them ((b, L, d) memory seen as (b, d, L))."""
    b, d, n, L = 2, 32, 16, 90
    inputs = _inputs(b, d, n, L, seed=7)
    for k in ("u", "delta", "z"):
        inputs[k] = inputs[k].transpose(1, 2).contiguous().transpose(1, 2)  # (b, d, L) view of (b, L, d)
    inputs["B"] = inputs["B"].transpose(1, 2).contiguous().transpose(1, 2)
    weight = torch.randn(b, d, L)
    got, g_got = _run(cpu_scan.selective_scan_cpu, inputs, True, weight)
    want, g_want = _run(selective_scan_ref, inputs, True, weight, chunk_size=32)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for k in g_want:
        torch.testing.assert_close(g_got[k], g_want[k], rtol=1e-3, atol=1e-4)


def test_gradcheck_float64():
    """float64 inputs are computed in float64: torch.autograd.gradcheck on a tiny shape, all eight inputs."""
    inputs = _inputs(1, 3, 2, 7, seed=11)
    args = [inputs[k].double().requires_grad_() for k in NAMES]
    fn = lambda *a: cpu_scan.selective_scan_cpu(*a, delta_softplus=True, chunk_size=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_no_grad_forward_and_threads_agree():
    inputs = _inputs(3, 48, 16, 80, seed=5)
    with torch.no_grad():
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = cpu_scan.selective_scan_cpu(**inputs, delta_softplus=True)
            torch.set_num_threads(2)
            two = cpu_scan.selective_scan_cpu(**inputs, delta_softplus=True)
        finally:
            torch.set_num_threads(before)
    torch.testing.assert_close(one, two, rtol=0, atol=0)  # one task per (row, block): same arithmetic


def test_nan_propagates_and_bad_input_is_refused():
    inputs = _inputs(1, 16, 4, 10, seed=2)
    inputs["u"][0, 3, 4] = float("nan")
    with torch.no_grad():
        y = cpu_scan.selective_scan_cpu(**inputs, delta_softplus=True)
    assert torch.isnan(y[0, 3, 4:]).all() and torch.isfinite(y[0, 3, :4]).all()
    with pytest.raises(ValueError, match="chunk_size"):
        cpu_scan.selective_scan_cpu(**inputs, chunk_size=0)
    bad = dict(inputs, A=inputs["A"][:, :3])  # A (d, 3) but B, C (b, 4, L)
    with pytest.raises(RuntimeError, match="B must be"):
        cpu_scan.selective_scan_cpu(**bad)
