"""One fwd+bwd comparison of a pure-PyTorch mixer against its fused CUDA twin (GPU tests of Mamba-1 and Mamba-2)."""

import torch


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def assert_mixers_match(ref, fast, dtype, tol: float, shape=(4, 1024, 256)) -> None:
    """ref and fast hold the same weights: outputs within tol, input and parameter gradients within 3·tol."""
    fast.load_state_dict(ref.state_dict())  # same names and shapes: one checkpoint fits both
    x = torch.randn(*shape, device="cuda")  # (B, L, D)
    outs, grads = [], []
    for m in (ref, fast):
        xi = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = m(xi)
        y.float().square().mean().backward()
        outs.append(y.float())
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
        m.zero_grad()
    assert rel(outs[1], outs[0]) < tol
    for g_fast, g_ref in zip(grads[1], grads[0], strict=True):
        assert torch.isfinite(g_fast).all()
        assert rel(g_fast, g_ref) < 3 * tol
