"""V3's token orders: bijections inverted exactly, the known curves at 4×4, and V3(identity) == V1."""

import pytest
import torch

from models import build_model
from models.data import pixel_coords
from models.v3_morton import hilbert_key, permute, quantize, token_order, unpermute
from tests.models.test_models import _batch


@pytest.mark.parametrize("ordering", ["morton", "hilbert"])
def test_permutation_is_a_bijection_and_inverts_exactly(ordering):
    g = torch.Generator().manual_seed(0)
    coords = torch.rand(3, 257, 2, generator=g)
    coords[:, 10] = coords[:, 11]  # a repeated point: ties still give a permutation
    order = token_order(coords, ordering)  # (B, N)
    assert order.shape == (3, 257)
    for row in order:
        assert torch.equal(row.sort().values, torch.arange(257))
    x = torch.randn(3, 257, 5, generator=g)
    torch.testing.assert_close(unpermute(permute(x, order), order), x, atol=0, rtol=0)
    torch.testing.assert_close(permute(unpermute(x, order), order), x, atol=0, rtol=0)


def test_morton_order_at_4x4_is_the_z_curve():
    order = token_order(pixel_coords(4)[None], "morton")[0]  # row-major indices, in curve order
    assert order.tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    order8 = token_order(pixel_coords(8)[None], "morton")[0]  # any resolution: 8×8 refines 4×4's quadrants
    assert order8[:4].tolist() == [0, 1, 8, 9]


@pytest.mark.parametrize("r", [2, 4, 8, 16])
def test_hilbert_order_steps_to_a_neighbour(r):
    c = pixel_coords(r)
    order = token_order(c[None], "hilbert")[0]
    cells = (c[order] * r).floor()  # (N, 2) grid cells in curve order
    steps = (cells[1:] - cells[:-1]).abs().sum(-1)
    assert torch.equal(steps, torch.ones(r * r - 1))  # every step moves to an edge neighbour
    qx, qy = quantize(c)
    assert len(set(hilbert_key(qx, qy).tolist())) == r * r


def test_v3_identity_equals_v1_on_the_same_weights():
    torch.manual_seed(0)
    v1 = build_model("v1", "tiny").eval()
    v3 = build_model("v3", "tiny", {"ordering": "identity"}).eval()
    v3.load_state_dict(v1.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(v3(*_batch()), v1(*_batch()), atol=0, rtol=0)


def test_v3_is_v1_on_sorted_points_and_returns_the_callers_order():
    """V3(x) = unsort(V1(sort(x))): the permutation is applied inside and undone on the output."""
    torch.manual_seed(0)
    v1 = build_model("v1", "tiny").eval()
    v3 = build_model("v3", "tiny").eval()
    v3.load_state_dict(v1.state_dict())
    xt, qc, t, ic, iv = _batch()
    pi, pq = token_order(ic, "morton"), token_order(qc, "morton")
    with torch.no_grad():
        want = unpermute(v1(permute(xt, pq), permute(qc, pq), t, permute(ic, pi), permute(iv, pi)), pq)
        got = v3(xt, qc, t, ic, iv)
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        # shuffling the caller's points does not change any point's prediction (order comes from coordinates)
        s = torch.randperm(qc.shape[1])
        torch.testing.assert_close(v3(xt[:, s], qc[:, s], t, ic, iv), got[:, s], atol=1e-6, rtol=1e-5)
        assert not torch.allclose(got, v1(xt, qc, t, ic, iv), atol=1e-4)  # the order matters to the scan
