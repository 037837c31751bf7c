"""Dataset invariants: disjoint, complete, row-major, deterministic; folder loading and bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from models import ConfigError
from models.data import DeviceBatches, SparseFieldDataset, load_images, pixel_coords


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


@pytest.mark.parametrize("res,frac,batch", [(16, 0.2, 4), (9, 0.5, 3), (8, 0.05, 5)])
def test_device_batches_have_the_dataset_invariants(images, res, frac, batch):
    ds = SparseFieldDataset(images, res, num_samples=10, observed_frac=frac, seed=3)
    batches = list(DeviceBatches(ds, batch, "cpu").epoch(0))
    assert len(batches) == 10 // batch  # drop_last
    N, grid = res * res, pixel_coords(res)
    seen = torch.cat([b["index"] for b in batches])
    assert len(set(seen.tolist())) == len(seen)  # each sample at most once per epoch
    for b in batches:
        inp, qry = b["input_index"], b["query_index"]  # (B, N_in), (B, N_q)
        assert inp.shape[1] == min(max(1, round(frac * N)), N - 1) and inp.shape[1] + qry.shape[1] == N
        for i in range(len(b["index"])):
            assert torch.equal(torch.cat([inp[i], qry[i]]).sort().values, torch.arange(N))  # disjoint, complete
            assert torch.all(inp[i, 1:] > inp[i, :-1]) and torch.all(qry[i, 1:] > qry[i, :-1])  # row-major
            dense = ds.dense[b["index"][i]].flatten(1).t()  # (N, C)
            torch.testing.assert_close(b["input_values"][i], dense[inp[i]])
            torch.testing.assert_close(b["query_values"][i], dense[qry[i]])
            torch.testing.assert_close(b["input_coords"][i], grid[inp[i]])
            torch.testing.assert_close(b["query_coords"][i], grid[qry[i]])


def test_device_batches_are_deterministic_per_epoch(images):
    ds = SparseFieldDataset(images, 8, num_samples=6, seed=1)
    a, b = DeviceBatches(ds, 2, "cpu"), DeviceBatches(ds, 2, "cpu")
    for x, y in zip(a.epoch(3), b.epoch(3), strict=True):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["input_index"], y["input_index"])
    first, other = next(a.epoch(0)), next(a.epoch(1))
    assert not torch.equal(first["input_index"], other["input_index"])  # new masks each epoch
    val = DeviceBatches(ds, 4, "cpu", shuffle=False, drop_last=False)
    assert [len(x["index"]) for x in val.epoch(0)] == [4, 2]
    assert torch.equal(torch.cat([x["index"] for x in val.epoch(0)]), torch.arange(6))  # dataset order
    with pytest.raises(ConfigError, match="larger than"):
        DeviceBatches(ds, 7, "cpu")


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
