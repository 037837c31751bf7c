"""The pure-PyTorch Mamba-2 (SSD) against a sequential recurrence, and (GPU) against mamba_ssm.Mamba2."""

import pytest
import torch

from models.mamba2 import Mamba2Ref, ssd_naive, ssd_ref
from tests.models.mixer_check import assert_mixers_match


def _ssd_inputs(b=2, l=37, h=3, p=4, g=1, n=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, h, p, generator=gen, dtype=torch.float64)
    dt = torch.rand(b, l, h, generator=gen, dtype=torch.float64) * 0.5  # after softplus: positive
    A = -torch.rand(h, generator=gen, dtype=torch.float64) * 4 - 0.1
    B = torch.randn(b, l, g, n, generator=gen, dtype=torch.float64)
    C = torch.randn(b, l, g, n, generator=gen, dtype=torch.float64)
    return x, dt, A, B, C


@pytest.mark.parametrize("l,chunk", [(1, 64), (37, 8), (64, 64), (100, 16), (129, 64)])
def test_chunked_ssd_matches_sequential(l, chunk):
    inputs = _ssd_inputs(l=l)
    want = ssd_naive(*inputs)
    got = ssd_ref(*inputs, chunk_size=chunk)
    torch.testing.assert_close(got.double(), want.double(), atol=1e-5, rtol=1e-4)  # fp32 compute


def test_chunked_ssd_gradients_match_sequential():
    inputs = [t.float().requires_grad_() for t in _ssd_inputs(l=45, h=4, g=2)]  # 2 groups of B/C for 4 heads
    w = torch.randn(2, 45, 4, 4)
    grads_want = torch.autograd.grad((ssd_naive(*inputs) * w).sum(), inputs)
    grads_got = torch.autograd.grad((ssd_ref(*inputs, chunk_size=16) * w).sum(), inputs)
    for gw, gg in zip(grads_want, grads_got, strict=True):
        torch.testing.assert_close(gg, gw, atol=1e-4, rtol=1e-3)


def test_mamba2_ref_is_causal_and_shaped():
    torch.manual_seed(0)
    m = Mamba2Ref(32, d_state=8, headdim=16, chunk_size=8)
    x = torch.randn(2, 20, 32)
    y = m(x)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[:, 10:] += torch.randn(2, 10, 32)  # change the future: the past must not move
    torch.testing.assert_close(m(x2)[:, :10], y[:, :10])


def test_mamba2_ref_parameter_names_match_mamba_ssm():
    names = {n: tuple(p.shape) for n, p in Mamba2Ref(256, d_state=64, headdim=64).named_parameters()}
    assert names == {
        "in_proj.weight": (2 * 512 + 2 * 64 + 8, 256),  # [z, x, B, C, dt]
        "conv1d.weight": (640, 1, 4),
        "conv1d.bias": (640,),
        "dt_bias": (8,),
        "A_log": (8,),
        "D": (8,),
        "norm.weight": (512,),
        "out_proj.weight": (256, 512),
    }


def test_mamba2_backend_without_package_names_install_command():
    from models import ConfigError, build_model, mamba

    if mamba.Mamba2CUDA is not None:
        pytest.skip("mamba_ssm is installed here")
    with pytest.raises(ConfigError, match="'mamba2' needs the mamba-ssm package: pip install mamba-ssm"):
        build_model("v1", "tiny", {"mixer_backend": "mamba2"})


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-3), (torch.bfloat16, 3e-2)])
def test_mamba2_reference_matches_mamba_ssm_on_gpu(dtype, tol):
    from models.mamba import Mamba2CUDA

    if Mamba2CUDA is None:
        pytest.skip("mamba_ssm not installed")
    torch.manual_seed(0)
    ref = Mamba2Ref(256, d_state=64, headdim=64).cuda()
    fast = Mamba2CUDA(d_model=256, d_state=64, d_conv=4, expand=2, headdim=64).cuda()
    assert_mixers_match(ref, fast, dtype, tol)


@pytest.mark.gpu
def test_v1_on_mamba2_uses_the_fused_module_on_gpu():
    from models import build_model
    from models.mamba import Mamba2CUDA

    if Mamba2CUDA is None:
        pytest.skip("mamba_ssm not installed")
    model = build_model("v1", overrides={"mixer_backend": "mamba2"}).cuda()
    assert isinstance(model.layers[0].mixer, Mamba2CUDA)
    ref = build_model("v1", overrides={"mixer_backend": "mamba2_ref"}).cuda()
    ref.load_state_dict(model.state_dict())
    args = [torch.randn(2, 819, 3), torch.rand(2, 819, 2), torch.rand(2), torch.rand(2, 205, 2), torch.randn(2, 205, 3)]
    args = [a.cuda() for a in args]
    with torch.no_grad():
        a, b = model(*args), ref(*args)
    assert ((a - b).norm() / b.norm()).item() < 2e-3
