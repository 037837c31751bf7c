"""The `flex` attention backend (torch FlexAttention) against SDPA, forward and backward, and its dropout rule.

On CPU torch runs FlexAttention eagerly (a dense reference) and refuses its backward; the backward test lifts that
refusal (torch's device check only) to compare the math. The compiled CUDA kernel is checked by the gpu test."""

import pytest
import torch
import torch.nn.attention.flex_attention as torch_flex

from models import build_model
from models.common import Attention, ConfigError, check_trainable

TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def _pair(E=64, H=4, device="cpu"):
    torch.manual_seed(0)
    ref = Attention(E, H, dropout=0.0, backend="sdpa").to(device)
    flex = Attention(E, H, dropout=0.0, backend="flex").to(device)
    flex.load_state_dict(ref.state_dict())
    return ref, flex


def _grads(module, q, kv, g):
    module.zero_grad(set_to_none=True)
    q, kv = q.detach().requires_grad_(), kv.detach().requires_grad_()
    out = module(q, kv, kv) if kv.shape[1] != q.shape[1] else module(q, q, q)
    out.backward(g)
    grads = [q.grad, kv.grad] + [p.grad for p in module.parameters()]
    return out, [x for x in grads if x is not None]


@pytest.mark.parametrize("nk", [9, 23])  # self-attention (Nk = Nq) and cross-attention
def test_flex_matches_sdpa_forward_cpu(nk):
    ref, flex = _pair()
    q, kv = torch.randn(2, 9, 64), torch.randn(2, nk, 64)
    args = (q, q, q) if nk == 9 else (q, kv, kv)
    with torch.no_grad():
        torch.testing.assert_close(flex.eval()(*args), ref.eval()(*args), **TOL[torch.float32])


@pytest.mark.parametrize("nk", [9, 23])
def test_flex_matches_sdpa_backward_cpu(monkeypatch, nk):
    monkeypatch.setattr(torch_flex, "_validate_device", lambda *a: None)  # torch: "no backward on CPU"
    ref, flex = _pair()
    q, kv = torch.randn(2, 9, 64), torch.randn(2, nk, 64)
    g = torch.randn(2, 9, 64)
    out_r, grads_r = _grads(ref.train(), q, kv, g)
    out_f, grads_f = _grads(flex.train(), q, kv, g)
    torch.testing.assert_close(out_f, out_r, **TOL[torch.float32])
    for a, b in zip(grads_f, grads_r):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


def test_flex_backward_on_cpu_is_a_one_line_error():
    _, flex = _pair()
    q = torch.randn(1, 5, 64, requires_grad=True)
    with pytest.raises(ConfigError, match="attention backend 'flex'.*backward on CPU") as e:
        flex.train()(q, q, q)
    assert "\n" not in str(e.value)


def test_training_with_dropout_on_flex_is_refused():
    model = build_model("v4", "tiny", {"attn_backend": "flex"}, env={})  # V4's default dropout 0.1
    with pytest.raises(ConfigError, match="no attention dropout: train with dropout=0 \\(got 0.1\\)"):
        check_trainable(model)
    q = torch.randn(1, 5, 32)
    with pytest.raises(ConfigError, match="no attention dropout"):
        model.transformer_encoder.layers[0].self_attn.train()(q, q, q)
    check_trainable(build_model("v4", "tiny", {"attn_backend": "flex", "dropout": 0.0}, env={}))  # fine
    with torch.no_grad():  # inference of a dropout-trained model on flex is fine: eval has no dropout
        out = model.eval()(torch.randn(1, 8, 3), torch.rand(1, 8, 2), torch.rand(1), torch.rand(1, 3, 2),
                           torch.randn(1, 3, 3))  # fmt: skip
    assert out.shape == (1, 8, 3)


def test_flex_sweep_workload_runs_at_dropout_zero_and_says_so():
    from bench import measure

    wl = measure.build_workload("v4", "flex", "model", "tiny", "cpu")
    assert wl.cfg.dropout == 0.0 and "dropout 0" in wl.note
    assert measure.build_workload("v4", "sdpa", "model", "tiny", "cpu").note == ""
    assert "needs CUDA" in measure.backend_problem("v4", "flex", torch.device("cpu"))
    fwd = measure.make_forward(wl, wl.inputs(1, 64, "cpu"), torch.device("cpu"), amp=False)
    assert torch.isfinite(fwd()).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,nk", [(1024, 1024), (819, 205), (4096, 4096)])  # V4's self- and cross-attention shapes
def test_compiled_flex_matches_sdpa_gpu(dtype, n, nk):
    ref, flex = _pair(256, 8, "cuda")  # head dim 32, as in the model
    q = torch.randn(8, n, 256, device="cuda")
    kv = q if nk == n else torch.randn(8, nk, 256, device="cuda")
    g = torch.randn(8, n, 256, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out_r, grads_r = _grads(ref.train(), q, kv, g)
        out_f, grads_f = _grads(flex.train(), q, kv, g)
    torch.testing.assert_close(out_f.float(), out_r.float(), **TOL[dtype])
    for a, b in zip(grads_f, grads_r):
        scale = b.abs().max().clamp_min(1e-6)
        torch.testing.assert_close(a.float() / scale, b.float() / scale, **TOL[dtype])


def test_flex_compiled_fails_loudly_instead_of_falling_back():
    # torch's default of 8 graphs per function is reached by one sweep (shapes x grad mode x autocast), after
    # which it silently ran the unfused, score-materialising flex_attention; now the limit is raised and a hit
    # is an error (torch.compile is lazy: nothing compiles here)
    import torch._dynamo.config as dynamo_config

    from models.common import FLEX_RECOMPILE_LIMIT, flex_compiled

    assert callable(flex_compiled())
    assert dynamo_config.recompile_limit >= FLEX_RECOMPILE_LIMIT and dynamo_config.fail_on_recompile_limit_hit
