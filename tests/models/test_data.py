"""Dataset invariants: disjoint, complete, row-major, deterministic; folder loading and bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from models import ConfigError
from models.data import SparseFieldDataset, load_images, pixel_coords


@pytest.fixture(scope="module")
def images():
    return load_images(None, "train")[:3]


def test_default_source_is_bundled_photographs():
    train, val = load_images(None, "train"), load_images(None, "val")
    assert len(train) >= 10 and len(val) >= 2
    assert all(im.shape[0] == 3 and im.min() >= -1 and im.max() <= 1 for im in train + val)


@pytest.mark.parametrize("res,frac", [(32, 0.2), (17, 0.5), (8, 0.05)])
def test_pixels_split_into_disjoint_inputs_and_queries(images, res, frac):
    ds = SparseFieldDataset(images, res, num_samples=4, observed_frac=frac, seed=3)
    s = ds[1]
    N = res * res
    inp, qry = s["input_index"], s["query_index"]
    assert len(inp) + len(qry) == N
    assert len(inp) == min(max(1, round(frac * N)), N - 1)
    assert set(inp.tolist()).isdisjoint(qry.tolist())
    assert torch.equal(torch.cat([inp, qry]).sort().values, torch.arange(N))
    assert torch.all(inp[1:] > inp[:-1]) and torch.all(qry[1:] > qry[:-1])  # row-major order
    grid = pixel_coords(res)
    torch.testing.assert_close(s["input_coords"], grid[inp])
    torch.testing.assert_close(s["query_values"], ds.dense[1].flatten(1).t()[qry])
    assert s["input_coords"].min() > 0 and s["input_coords"].max() < 1


def test_spec_token_count_at_32(images):
    s = SparseFieldDataset(images, 32, num_samples=1)[0]
    assert s["input_coords"].shape[0] + s["query_coords"].shape[0] == 1024


def test_deterministic_under_seed_and_new_masks_per_epoch(images):
    a, b = SparseFieldDataset(images, 16, 3, seed=7), SparseFieldDataset(images, 16, 3, seed=7)
    assert torch.equal(a.dense, b.dense) and torch.equal(a[2]["input_index"], b[2]["input_index"])
    c = SparseFieldDataset(images, 16, 3, seed=8)
    assert not torch.equal(a.dense, c.dense)
    before = a[0]["input_index"]
    a.set_epoch(1)
    assert not torch.equal(before, a[0]["input_index"])


def test_render_at_other_resolution_is_the_same_crop(images):
    ds = SparseFieldDataset(images, 16, 2, seed=0, augment=False)
    hi = ds.render(0, 64)
    assert hi.shape == (3, 64, 64)
    down = torch.nn.functional.avg_pool2d(hi[None], 4)[0]
    assert (down - ds.dense[0]).abs().mean() < 0.05


def test_folder_source(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    train, val = load_images(str(tmp_path), "train"), load_images(str(tmp_path), "val")
    assert len(train) + len(val) == 5 and len(val) >= 1


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: load_images(str(tmp / "missing"), "train"),
        lambda tmp: load_images(str(tmp), "train"),  # empty folder
        lambda tmp: SparseFieldDataset(load_images(None, "val"), 7, 2),
        lambda tmp: SparseFieldDataset(load_images(None, "val"), 16.5, 2),
        lambda tmp: SparseFieldDataset(load_images(None, "val"), 16, 2, observed_frac=1.0),
        lambda tmp: SparseFieldDataset(load_images(None, "val"), 16, 2, observed_frac=0),
    ],
)
def test_bad_data_input(tmp_path, make):
    with pytest.raises(ConfigError):
        make(tmp_path)


def test_unreadable_image_is_named(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not a png")
    (tmp_path / "b.png").write_bytes(b"nor this")
    with pytest.raises(ConfigError, match="cannot read image"):
        load_images(str(tmp_path), "train")
