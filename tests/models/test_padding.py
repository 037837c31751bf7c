"""Sequence padding (issue 10 §6): padding the scan at its end leaves the real tokens' outputs and gradients alone.

CPU, reference backend: outputs, input gradients and parameter gradients agree to fp32 round-off (max abs
difference ≤ 1e-6), not bit for bit. The padded tokens come after every real one in the causal scan, so no real
output reads them; but CPU elementwise kernels (SiLU, exp) take their SIMD or their scalar-tail path depending
on a row's length, so at the real positions a 70- and a 96-token row can round 1 ulp apart (measured: F.silu on
a 70-wide slice vs the same values in a 96-wide row differ by 3e-8), and the parameter gradients' sums gain
exact zeros from the dropped positions in another accumulation order. V2 pads each direction at the end of its
own order. GPU: the same with mamba_ssm's kernels, within bf16 tolerance.
"""

import pytest
import torch

from models import build_model
from models.mamba import PaddedMixer, padded_length


def test_padded_length_rules():
    assert padded_length(9216, "auto", "mamba_ssm") == 10240  # 96²: the 53.0 → 40.9 ms case
    assert padded_length(16384, "auto", "mamba_ssm") == 16384  # already a multiple
    assert padded_length(1024, "auto", "mamba_ssm") == 1024  # ≤ 1024: the kernel's chunk is the length's own
    assert padded_length(9216, "auto", "reference") == 9216  # off on the reference
    assert padded_length(9216, "off", "mamba_ssm") == 9216
    assert padded_length(100, "64", "reference") == 128 and padded_length(100, 64, "reference") == 128


def _encode_with_grads(model, seq):
    seq = seq.clone().requires_grad_()
    out = model.encode(seq)
    (out * torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)).sum().backward()
    return out.detach(), seq.grad, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["v1", "v3", "v2"])
def test_padding_keeps_real_tokens_outputs_and_gradients(name):
    torch.manual_seed(0)
    plain = build_model(name, "tiny", {"mixer_backend": "reference", "pad_multiple": "off"})
    padded = build_model(name, "tiny", {"mixer_backend": "reference", "pad_multiple": "48"})  # 70 → 96 tokens
    padded.load_state_dict(plain.state_dict())
    seq = torch.randn(2, 70, plain.cfg.d_model)
    out_a, gx_a, gp_a = _encode_with_grads(plain, seq)
    out_b, gx_b, gp_b = _encode_with_grads(padded, seq)
    assert padded.encode(seq).shape == seq.shape
    assert (out_b - out_a).abs().max() <= 1e-6 and (gx_b - gx_a).abs().max() <= 1e-6
    assert gp_a.keys() == gp_b.keys()
    for n in gp_a:
        torch.testing.assert_close(gp_b[n], gp_a[n], atol=1e-6, rtol=1e-5, msg=n)


def test_v2_pads_each_direction_at_the_end_of_its_own_order():
    """Padding the reverse scan at the far end (where it reads first) would change the outputs: it must not."""
    torch.manual_seed(0)
    mixer = build_model("v2", "tiny", {"mixer_backend": "reference", "pad_multiple": "32"}).layers[0].mixer
    x = torch.randn(2, 40, 32)
    want = 0.5 * (mixer.forward_mixer(x) + mixer.backward_mixer(x.flip(1)).flip(1))
    torch.testing.assert_close(mixer(x), want, atol=1e-6, rtol=1e-5)
    wrong = mixer.backward_mixer(torch.cat([x, torch.zeros(2, 24, 32)], 1).flip(1)).flip(1)[:, :40]
    assert (wrong - mixer.backward_mixer(x.flip(1)).flip(1)).abs().max() > 1e-5  # far above fp32 round-off


def test_padded_mixer_view_adds_no_parameters():
    m = build_model("v1", "tiny", {"pad_multiple": "16"})
    view = m.layer0_mixer()
    assert isinstance(view, PaddedMixer) and view.mixer is m.layers[0].mixer
    assert view(torch.randn(1, 21, 32)).shape == (1, 21, 32)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["v1", "v3", "v2"])
def test_padding_on_mamba_ssm_within_bf16_tolerance(name):
    from models.mamba import MambaCUDA

    if MambaCUDA is None:
        pytest.skip("mamba_ssm not installed")
    torch.manual_seed(0)
    plain = build_model(name, overrides={"mixer_backend": "mamba_ssm", "pad_multiple": "off"}).cuda()
    padded = build_model(name, overrides={"mixer_backend": "mamba_ssm", "pad_multiple": "auto"}).cuda()
    padded.load_state_dict(plain.state_dict())
    seq = torch.randn(4, 2304, 256, device="cuda")  # 48²: auto pads to 4096
    res = []
    for m in (plain, padded):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            res.append(_encode_with_grads(m, seq))
        m.zero_grad()

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    (oa, ga, pa), (ob, gb, pb) = res
    assert rel(ob, oa) < 1e-2 and rel(gb, ga) < 2e-2
    for n in pa:
        assert rel(pb[n], pa[n]) < 5e-2, n
