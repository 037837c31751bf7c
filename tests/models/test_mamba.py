"""The pure-PyTorch Mamba against a slow sequential scan, the fused CPU backend against it, and (GPU) against
mamba_ssm's fused kernels."""

import pytest
import torch

from kernels import selective_scan_cpu as cpu_scan
from models.common import ConfigError
from models.mamba import MambaRef, resolve_mixer_backend, selective_scan_naive, selective_scan_ref
from tests.models.mixer_check import assert_mixers_match


def _scan_inputs(b=2, d=6, n=4, L=37, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, L, generator=g, dtype=dtype)
    delta = torch.randn(b, d, L, generator=g, dtype=dtype) * 0.5
    A = -torch.rand(d, n, generator=g, dtype=dtype) * 4 - 0.1
    B = torch.randn(b, n, L, generator=g, dtype=dtype)
    C = torch.randn(b, n, L, generator=g, dtype=dtype)
    D = torch.randn(d, generator=g, dtype=dtype)
    z = torch.randn(b, d, L, generator=g, dtype=dtype)
    bias = torch.randn(d, generator=g, dtype=dtype) * 0.1
    return u, delta, A, B, C, D, z, bias


@pytest.mark.parametrize("L,chunk", [(1, 64), (37, 8), (64, 64), (100, 16), (129, 64)])
def test_chunked_scan_matches_sequential(L, chunk):
    u, delta, A, B, C, D, z, bias = _scan_inputs(L=L)
    want = selective_scan_naive(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    got = selective_scan_ref(u, delta, A, B, C, D, z, bias, delta_softplus=True, chunk_size=chunk)
    # the reference computes in fp32: compare with fp32 tolerances against the fp64 loop
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)


def test_chunked_scan_gradients_match_sequential():
    inputs = [t.float().requires_grad_() for t in _scan_inputs(L=45)]
    want = selective_scan_naive(*inputs, delta_softplus=True)
    grads_want = torch.autograd.grad(want.square().sum(), inputs)
    got = selective_scan_ref(*inputs, delta_softplus=True, chunk_size=16)
    grads_got = torch.autograd.grad(got.square().sum(), inputs)
    for gw, gg in zip(grads_want, grads_got):
        torch.testing.assert_close(gg, gw, atol=1e-4, rtol=1e-3)


def test_mamba_ref_is_causal_and_shaped():
    torch.manual_seed(0)
    m = MambaRef(16, d_state=4)
    x = torch.randn(2, 20, 16)
    y = m(x)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[:, 10:] += 1.0  # change the future: the past must not move
    torch.testing.assert_close(m(x2)[:, :10], y[:, :10])


def test_mamba_ref_parameter_names_match_mamba_ssm():
    names = {n: tuple(p.shape) for n, p in MambaRef(256).named_parameters()}
    assert names == {
        "in_proj.weight": (1024, 256),
        "conv1d.weight": (512, 1, 4),
        "conv1d.bias": (512,),
        "x_proj.weight": (48, 512),
        "dt_proj.weight": (512, 16),
        "dt_proj.bias": (512,),
        "A_log": (512, 16),
        "D": (512,),
        "out_proj.weight": (256, 512),
    }


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-3), (torch.bfloat16, 3e-2)])
def test_reference_matches_mamba_ssm_on_gpu(dtype, tol):
    from models.mamba import MambaCUDA

    if MambaCUDA is None:
        pytest.skip("mamba_ssm not installed")
    torch.manual_seed(0)
    ref = MambaRef(256).cuda()
    fast = MambaCUDA(d_model=256, d_state=16, d_conv=4, expand=2).cuda()
    assert_mixers_match(ref, fast, dtype, tol)


@pytest.mark.gpu
def test_v1_uses_fused_kernels_on_gpu():
    from models import build_model
    from models.mamba import MambaCUDA

    if MambaCUDA is None:
        pytest.skip("mamba_ssm not installed")
    model = build_model("v1").cuda()
    assert model.mixer_backend == "mamba_ssm"
    assert isinstance(model.layers[0].mixer, MambaCUDA)
    ref = build_model("v1", overrides={"mixer_backend": "reference"}).cuda()
    ref.load_state_dict(model.state_dict())
    B, nin, nq = 2, 205, 819
    args = (
        torch.randn(B, nq, 3),
        torch.rand(B, nq, 2),
        torch.rand(B),
        torch.rand(B, nin, 2),
        torch.randn(B, nin, 3),
    )
    args = [a.cuda() for a in args]
    with torch.no_grad():
        a, b = model(*args), ref(*args)
    assert ((a - b).norm() / b.norm()).item() < 2e-3


# ----------------------------------------------------------------------------------------------
# The cpu_fused backend: MambaRef with the fused C++ scan
# ----------------------------------------------------------------------------------------------

needs_cpu_scan = pytest.mark.skipif(not cpu_scan.available(), reason=f"no extension: {cpu_scan.build_error()}")


@needs_cpu_scan
@pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks mamba_ssm / reference with CUDA")
def test_auto_picks_the_fused_cpu_backend():
    from models import build_model

    assert resolve_mixer_backend("auto") == "cpu_fused"
    model = build_model("v1", "tiny")
    assert model.mixer_backend == "cpu_fused"
    assert all(layer.mixer.fused for layer in model.layers)


@needs_cpu_scan
def test_fused_layer_matches_reference_layer_forward_and_backward():
    torch.manual_seed(0)
    ref = MambaRef(32, d_state=16)
    fused = MambaRef(32, d_state=16, fused=True)
    fused.load_state_dict(ref.state_dict())  # same names: checkpoints move between backends
    x = torch.randn(2, 75, 32)
    outs, grads = [], []
    for m in (ref, fused):
        xi = x.clone().requires_grad_()
        y = m(xi)
        (y * torch.cos(x)).sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    for g_fused, g_ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_fused, g_ref, rtol=1e-3, atol=1e-4)


def test_forced_cpu_fused_without_a_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cpu_scan, "available", lambda: False)
    monkeypatch.setattr(cpu_scan, "build_error", lambda: "RuntimeError: c++: not found")
    with pytest.raises(ConfigError, match="cpu_fused.*ninja.*g\\+\\+"):
        resolve_mixer_backend("cpu_fused")
    if not torch.cuda.is_available():  # auto falls back to the reference, with a one-line note
        assert resolve_mixer_backend("auto") == "reference"


@pytest.mark.parametrize("L", [1, 2, 37])
def test_time_major_causal_conv_matches_conv1d(L):
    from models.mamba import causal_conv_time_major

    torch.manual_seed(L)
    conv = torch.nn.Conv1d(12, 12, 4, groups=12, padding=3, bias=True).double()
    x = torch.randn(3, L, 12, dtype=torch.float64, requires_grad=True)
    want = conv(x.transpose(1, 2))[..., :L].transpose(1, 2)
    got = causal_conv_time_major(x, conv.weight, conv.bias)
    torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(causal_conv_time_major, (x, conv.weight, conv.bias))


@pytest.mark.gpu
def test_cpu_fused_mixer_on_cuda_runs_the_reference_scan():
    """A cpu_fused model moved to CUDA keeps working: its scan dispatches to selective_scan_ref there."""
    torch.manual_seed(0)
    ref = MambaRef(64, d_state=16).cuda()
    fused = MambaRef(64, d_state=16, fused=True).cuda()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 300, 64, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(fused(x), ref(x), rtol=1e-4, atol=1e-5)
