"""Learning curves: held-out PSNR of the posterior mean during training, on a fixed subset of the held-out set.

    curve = HeldOutCurve(data="data/sources", resolution=32, observed_frac=0.2, samples=32, device=device)
    summary = models.train.train(TrainConfig(..., curve_every=200), curve=curve)   # summary["curve"]: the rows

The subset is the first `samples` crops of bench.evaluate's held-out set (same crops, same observed pixels as the
final evaluation's first crops, fixed by the seed), so a curve's last point and the final table measure the same
thing on fewer crops. Each point: the posterior mean (one Euler step from t = 0, averaged over `mean_draws` fixed
noise draws: the same draws at every point), PSNR over the whole image (the observed pixels kept) averaged over the
crops, and the linear-interpolation floor of the same crops (computed once). bench.compare writes the rows of every
run to quality_curve.csv; bench.frontier plots them against the seconds of training (the curve's own time is not
counted: models.train subtracts it).
"""

from __future__ import annotations

import numpy as np
import torch

from bench.evaluate import EvalConfig, held_out_set, predict_interp, predict_model

DATA_RANGE = 2.0  # values in [-1, 1]


def psnr_per_image(truth: torch.Tensor, pred: torch.Tensor) -> np.ndarray:
    """(n, C, H, W) × 2 → (n,) PSNR in dB (data range 2, capped at 100 dB for an exact image)."""
    mse = ((truth.float() - pred.float()) ** 2).flatten(1).mean(1).double()  # (n,)
    return (10 * torch.log10(DATA_RANGE**2 / mse.clamp_min(1e-10))).clamp(max=100.0).numpy()


class HeldOutCurve:
    """A callable model → {"psnr": mean PSNR, "psnr_linear": the floor's, "curve_crops": n} on fixed crops."""

    def __init__(self, data, resolution: int, observed_frac: float, samples: int = 32, mean_draws: int = 4,
                 batch: int = 32, seed: int = 0, device="cpu", amp: bool = True):  # fmt: skip
        self.cfg = EvalConfig(num_samples=samples, mean_draws=mean_draws, batch=min(batch, samples), seed=seed,
                              data=data, amp=amp, progress=False)  # fmt: skip
        self.ds, self.observed = held_out_set(self.cfg, resolution, observed_frac)
        self.device = torch.device(device)
        floor, _ = predict_interp(self.ds, self.observed, resolution, "linear")
        self.floor = float(psnr_per_image(self.ds.dense, floor).mean())

    @torch.no_grad()
    def __call__(self, model) -> dict:
        preds, _ = predict_model(model, self.ds, self.observed, self.ds.resolution, "mean", self.cfg, self.device)
        psnr = float(psnr_per_image(self.ds.dense, preds).mean())
        return {"psnr": psnr, "psnr_linear": self.floor, "curve_crops": len(self.ds)}
