"""Sampling: integrate the learned velocity field from noise (t = 0) to data (t = 1) at ANY query coordinates.

Queries on a denser grid than the training resolution give zero-shot super-resolution: the observed pixels
stay where they were in the continuous frame [0, 1]², only the query grid changes.

    python -m models.sample --checkpoint checkpoints_mamba/mamba_best.pth --resolution 64 --out sr64.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.checkpoint import model_from_checkpoint
from models.common import ConfigError
from models.data import load_images, pixel_coords, split_pixels
from models.train import autocast_for
from models.utils import ArgParser, atomic_savefig, cli_main, pick_device
from models.validate import (
    check_memory,
    existing_dir,
    existing_file,
    image_file,
    nonneg_int,
    positive_int,
    resolution,
    run_bytes,
)

METHODS = ("euler", "heun")


@torch.no_grad()
def sample(
    model,
    query_coords: torch.Tensor,  # (B, Nq, 2)
    input_coords: torch.Tensor,  # (B, Nin, 2)
    input_values: torch.Tensor,  # (B, Nin, C)
    steps: int = 50,
    method: str = "euler",
    generator: torch.Generator | None = None,
    amp: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """ODE integration dx/dt = v(x, t) from x0 ~ N(0, I); returns x1 (B, Nq, C) in fp32.

    Heun takes 2·steps − 1 network evaluations: its last step, into t = 1, is an Euler step (as in EDM, Karras et
    al. 2022), because an x1-predicting model's velocity (x̂1 − x_t)/(1 − t) is singular there.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown sampler {method!r}; choose one of {', '.join(METHODS)}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    model.eval()
    device = query_coords.device
    B, Nq = query_coords.shape[:2]
    x = torch.randn(B, Nq, input_values.shape[-1], generator=generator, device=device)
    ts = torch.linspace(0.0, 1.0, steps + 1, device=device)

    def velocity(x, t):
        with autocast_for(device, amp):
            v = model(x, query_coords, t.expand(B), input_coords, input_values)
        return v.float()

    from tqdm.auto import tqdm

    for i in tqdm(range(steps), desc=f"{method} {B}×{Nq}", leave=False, disable=not progress):
        t, dt = ts[i], ts[i + 1] - ts[i]
        v = velocity(x, t)
        if method == "heun" and i < steps - 1:  # trapezoid: average the slope at both ends
            v = 0.5 * (v + velocity(x + dt * v, ts[i + 1]))
        x = x + dt * v  # the last step, into t = 1, is an Euler step (as EDM's Heun): v is singular at t = 1
    return x


def sparse_context(image: torch.Tensor, observed_frac: float, generator: torch.Generator):
    """A (3, r, r) image → observed (coords, values, flat index) in the [0, 1]² frame."""
    r = image.shape[-1]
    values = image.flatten(1).t()  # (r², 3)
    inp, _ = split_pixels(values.shape[0], observed_frac, generator)
    return pixel_coords(r)[inp], values[inp], inp


def reconstruct(
    model, image_lr, observed_frac, out_res, steps=50, method="euler", seed=0, device="cpu", progress=False
):
    """Observe a fraction of a low-res image, sample every pixel of an out_res grid. -> (3, R, R), context idx."""
    g = torch.Generator().manual_seed(seed)
    coords, values, idx = sparse_context(image_lr, observed_frac, g)
    q = pixel_coords(out_res).to(device)[None]  # (1, R², 2)
    gd = torch.Generator(device=device).manual_seed(seed)
    x = sample(model, q, coords.to(device)[None], values.to(device)[None], steps, method, gd, progress=progress)
    return x[0].t().reshape(3, out_res, out_res).clamp(-1, 1).cpu(), idx  # (3, R, R)


def to_display(img: torch.Tensor) -> np.ndarray:
    return ((img.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def sparse_display(image_lr: torch.Tensor, idx: torch.Tensor) -> np.ndarray:
    """The observed pixels on a grey background."""
    flat = torch.zeros_like(image_lr.flatten(1))
    flat[:, idx] = image_lr.flatten(1)[:, idx]
    return to_display(flat.reshape(image_lr.shape))


def main_sample(argv=None) -> None:
    p = build_parser()
    a = p.parse_args(argv)
    device = pick_device(a.device)
    model, ckpt = model_from_checkpoint(a.checkpoint, None, device, attn_backend=a.attn_backend)
    train_res = ckpt.get("resolution", 32)
    out_res = train_res if a.resolution is None else a.resolution
    frac = ckpt.get("observed_frac", 0.2)

    def estimate(batch, res):  # one image at a time; the data set renders a.num crops at train_res
        return run_bytes(type(model), model.cfg, res, batch, False, device.type, sum(p.numel() for p in
                         model.parameters()), 0) + a.num * 3 * train_res**2 * 4  # fmt: skip

    check_memory(estimate, 1, out_res, device, f"sampling {model.version} on {device.type}", None)
    from models.data import SparseFieldDataset

    ds = SparseFieldDataset(load_images(a.data, "val"), train_res, a.num, frac, seed=a.seed, augment=False)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(a.num, 3, figsize=(7.5, 2.5 * a.num), squeeze=False)
    from tqdm.auto import tqdm

    for i in tqdm(range(a.num), desc=f"sampling {model.version} at {out_res}²", disable=a.quiet):
        lr = ds.dense[i]
        rec, idx = reconstruct(model, lr, frac, out_res, a.steps, a.method, a.seed + i, device, not a.quiet)
        panels = [(sparse_display(lr, idx), f"observed ({train_res}²)"),
                  (to_display(rec), f"{model.version} {a.method} ({out_res}²)"),
                  (to_display(ds.render(i, out_res)), f"truth ({out_res}²)")]  # fmt: skip
        for ax, (img, title) in zip(axes[i], panels):
            ax.imshow(img, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    atomic_savefig(fig, a.out, dpi=120)
    print(f"wrote {a.out}")


def build_parser() -> ArgParser:
    p = ArgParser(prog="models.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, type=existing_file, help="a *_best.pth / *_latest.pth file")
    p.add_argument("--resolution", type=resolution, default=None, help="query grid side (default: training res)")
    p.add_argument("--num", type=positive_int, default=4, help="validation images to reconstruct")
    p.add_argument("--steps", type=positive_int, default=50)
    p.add_argument("--method", default="heun", choices=METHODS)
    p.add_argument("--data", type=existing_dir, default=None, help="folder of images (default: scikit-image photos)")
    p.add_argument("--attn-backend", default=None, help="seed | sdpa | triton (weights unchanged)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--out", default=Path("samples.png"), type=image_file, help="image file (.png .jpg .pdf .svg)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    return cli_main(main_sample, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
