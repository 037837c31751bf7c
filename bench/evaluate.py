"""Quality of any list of models (V1 Mamba, V4 Transformer, ...) on held-out images, against a non-learned
interpolation floor, each model paired with a baseline.

    python -m bench.evaluate --v1_checkpoint checkpoints_mamba/mamba_best.pth \
        --v4_checkpoint checkpoints_transformer_v4/transformer_v4_best.pth --num_samples 20   # the spec's flags
    python -m bench.evaluate --checkpoint v1=checkpoints_mamba/mamba_best.pth \
        --checkpoint v4=checkpoints_transformer_v4/transformer_v4_best.pth --models v1 v4 --baseline v1

Held-out crops (the validation photographs, never trained on) are observed at the checkpoints' training
resolution r and fraction (20%); every method fills in the rest:

  nearest / linear  the interpolation floor (bench/interp.py), no learning at all
  model    sample   the configured ODE sampler (default Heun, 20 steps): ONE draw from the posterior. A draw
                    carries the posterior's spread, so its MSE is ~2x the posterior mean's (~3 dB PSNR lower)
  model    mean     the posterior-mean (MMSE) estimate: one Euler step from t = 0, x0 + v(x0, 0) ≈ E[x1 | ctx],
                    averaged over --mean-draws noise draws x0 (cancels what the net leaves of x0)

At r the observed pixels are kept and only the others are queried (the training task). At every other
--resolutions R (zero-shot super-resolution) the same context pixels stay where they are in the continuous
frame [0, 1]² and ALL pixel centres of the R×R grid are queried; the truth is the same crop rendered at R.
PSNR / SSIM / MSE are over the whole image, values in [-1, 1] (data range 2), mean ± std over the images.

Writes <out>/<prefix>.csv (summary), <prefix>_per_image.csv, <prefix>.md and sample grids
<prefix>_samples_res<r>.png / <prefix>_samples_sr<R>.png (observed / floor / each model / truth).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from tqdm.auto import tqdm

from bench.interp import INTERP_METHODS, interpolate
from bench.measure import sync
from models.checkpoint import model_from_checkpoint
from models.common import ConfigError
from models.data import SparseFieldDataset, check_resolution, load_images, pixel_coords, split_pixels
from models.sample import METHODS, sample, sparse_display, to_display
from models.train import config_overrides
from models.utils import ArgParser, atomic_savefig, atomic_to_csv, atomic_write_text, cli_main, pick_device
from models.validate import (
    check_memory,
    existing_dir,
    existing_file,
    fit_batch,
    guard_committed_results,
    model_checkpoint,
    model_name,
    nonneg_int,
    positive_int,
    run_bytes,
    writable_dir,
)
from models.variants import get_variant, variant_names

FLOOR_LABELS = {"nearest": "nearest interp", "linear": "linear interp"}
SPEC_NAMES = {"v1": "MAMBA", "v4": "Transformer"}  # what the spec's scenarios call V1 and V4; the others: "V2"
DATA_RANGE = 2.0  # values in [-1, 1]
PSNR_CAP = 100.0  # dB, for a perfect reconstruction (MSE = 0)


@dataclass
class EvalConfig:
    resolutions: tuple[int, ...] = (64, 96, 128)  # zero-shot SR grids; the training resolution is always added
    num_samples: int = 20  # held-out images
    steps: int = 20  # ODE steps of the configured sampler
    method: str = "heun"  # euler | heun
    mean_draws: int = 16  # noise draws averaged by the posterior-mean estimate (1-step Euler each)
    batch: int = 32  # images per forward pass
    seed: int = 0
    data: str | None = None  # folder of images (default: scikit-image's photographs, validation split)
    amp: bool = True  # bf16 autocast on CUDA
    show: int = 4  # images in the sample grids
    progress: bool = True


# ----------------------------------------------------------------------------------------------
# The models: names, labels, colours, backends (from models.variants' table)
# ----------------------------------------------------------------------------------------------


def model_names() -> tuple[str, ...]:
    """Every model key that models.build_model knows, in table order."""
    return variant_names()


def label(method: str) -> str:
    """Display label of a model ('V1 (Mamba)'; a model without one: 'V2 (ClassName)') or a floor ('linear interp')."""
    if method in FLOOR_LABELS:
        return FLOOR_LABELS[method]
    return get_variant(method).label


def spec_name(key: str) -> str:
    """The name the spec's scenarios give a model ("Transformer wins", "MAMBA wins on efficiency")."""
    return SPEC_NAMES.get(key, key.upper())


def color(key: str) -> str:
    """A model's plot colour (the table's)."""
    return get_variant(key).color


def check_models(models, baseline: str | None, flag: str = "--models") -> tuple[list[str], str]:
    """The models to compare, and the baseline every other one is paired with (default: v1 if listed, else the
    first). Each must be a model build_model knows; the baseline one of them."""
    known = model_names()
    models = list(models)
    for key in models:
        if key not in known:
            raise ConfigError(f"{flag}: unknown model {key!r}; choose from {', '.join(known)}")
    twice = sorted({k for k in models if models.count(k) > 1})
    if twice:
        raise ConfigError(f"{flag}: {', '.join(twice)} listed twice")
    if baseline is None:
        baseline = "v1" if "v1" in models else models[0]
    if baseline not in models:
        raise ConfigError(f"--baseline {baseline!r} is not one of {flag} {' '.join(models)}")
    return models, baseline


def backend_overrides(key: str, attn_backend: str | None = None, mixer_backend: str | None = None) -> dict:
    """The backends a model exposes (attn_backend, mixer_backend: whichever its config has)."""
    return config_overrides(key, {"attn_backend": attn_backend, "mixer_backend": mixer_backend})


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def _hwc(img) -> np.ndarray:
    img = img.detach().cpu().float().numpy() if torch.is_tensor(img) else np.asarray(img, dtype=np.float32)
    return np.clip(np.moveaxis(img, 0, -1), -1.0, 1.0).astype(np.float64)  # (C, H, W) → (H, W, C)


def ssim_window(side: int) -> int:
    """skimage's default 7×7 window, shrunk to the largest odd size that fits a small image."""
    return min(7, side if side % 2 else side - 1)


def image_metrics(truth, pred) -> dict:
    """PSNR (dB, capped at PSNR_CAP), SSIM (RGB, channel_axis) and MSE of (C, H, W) images in [-1, 1]."""
    t, p = _hwc(truth), _hwc(pred)
    if t.shape != p.shape:
        raise ValueError(f"shape mismatch: truth {t.shape} vs prediction {p.shape}")
    mse = float(np.mean((t - p) ** 2))
    psnr = PSNR_CAP if mse == 0 else min(PSNR_CAP, float(peak_signal_noise_ratio(t, p, data_range=DATA_RANGE)))
    ssim = float(
        structural_similarity(t, p, channel_axis=-1, data_range=DATA_RANGE, win_size=ssim_window(min(t.shape[:2])))
    )
    return {"psnr": psnr, "ssim": ssim, "mse": mse}


# ----------------------------------------------------------------------------------------------
# Inputs: checkpoints, the held-out set, resolutions
# ----------------------------------------------------------------------------------------------


def parse_resolutions(values) -> tuple[int, ...]:
    """'64,96,128' or ['64', '96'] or [64] → (64, 96, 128); each checked."""
    if values is None:
        return ()
    if isinstance(values, str | int):
        values = [values]
    out = []
    for v in values:
        for part in str(v).replace(",", " ").split():
            try:
                r = int(part)
            except ValueError:
                raise ConfigError(f"resolution must be an integer, got {part!r}") from None
            out.append(check_resolution(r))
    return tuple(out)


def load_models(paths: dict, device, attn_backend="sdpa", mixer_backend="auto") -> dict:
    """{'v1': path, 'v4': path, ...} → {'v1': (model, ckpt), ...} in the order given (None paths skipped)."""
    models = {}
    for key, path in paths.items():
        if path is not None:
            backends = backend_overrides(key, attn_backend, mixer_backend)
            models[key] = model_from_checkpoint(path, key, device, **backends)
    if not models:
        raise ConfigError(NO_CHECKPOINT)
    setups = {k: (ckpt.get("resolution", 32), ckpt.get("observed_frac", 0.2)) for k, (_, ckpt) in models.items()}
    if len(set(setups.values())) > 1:
        raise ConfigError(
            "the checkpoints were trained on different setups (resolution, observed fraction): "
            + ", ".join(f"{k} {v}" for k, v in setups.items())
            + "; evaluate them separately"
        )
    return models


def train_setup(models: dict) -> tuple[int, float]:
    ckpt = next(iter(models.values()))[1]
    return int(ckpt.get("resolution", 32)), float(ckpt.get("observed_frac", 0.2))


def eval_resolutions(train_res: int, extra) -> list[int]:
    res = sorted({train_res, *extra})
    if res[0] < train_res:
        raise ConfigError(f"resolutions must be >= the training resolution {train_res}, got {res[0]}")
    return res


def held_out_set(cfg: EvalConfig, train_res: int, observed_frac: float):
    """The held-out crops at the training resolution, and each one's observed pixel indices (fixed by seed)."""
    if cfg.num_samples < 1:
        raise ConfigError(f"--num_samples must be >= 1, got {cfg.num_samples}")
    ds = SparseFieldDataset(
        load_images(cfg.data, "val"), train_res, cfg.num_samples, observed_frac, seed=cfg.seed, augment=False
    )
    n_pix = train_res * train_res
    observed = [
        split_pixels(n_pix, observed_frac, torch.Generator().manual_seed(cfg.seed * 100_003 + i))[0]
        for i in range(cfg.num_samples)
    ]
    return ds, observed


# ----------------------------------------------------------------------------------------------
# Predictions
# ----------------------------------------------------------------------------------------------


def _queries(train_res: int, out_res: int, observed: torch.Tensor) -> torch.Tensor:
    """Flat indices of the pixels to query: the unobserved ones at the training res, all of them above it."""
    if out_res != train_res:
        return torch.arange(out_res * out_res)
    mask = torch.ones(train_res * train_res, dtype=torch.bool)
    mask[observed] = False
    return mask.nonzero().squeeze(1)


def _fill(flat: torch.Tensor, query: torch.Tensor, values: torch.Tensor, out_res: int) -> torch.Tensor:
    """(C, R, R) image with `values` at the queried pixels. At the training resolution (flat is (r², C), r = R) the
    other, observed pixels keep their values; above it every pixel is a query."""
    full = flat.clone() if flat.shape[0] == out_res * out_res else torch.zeros(out_res * out_res, flat.shape[1])
    full[query] = values
    return full.t().reshape(-1, out_res, out_res)


def predict_model(model, ds, observed, out_res, estimator, cfg: EvalConfig, device, count=None):
    """The first `count` (all) images through one model → (n, 3, R, R) in [-1, 1] on the CPU, sampling seconds."""
    r, n = ds.resolution, len(ds) if count is None else min(count, len(ds))
    coords_lr, coords_hr = pixel_coords(r), pixel_coords(out_res)
    preds, seconds = [], 0.0
    for b0 in range(0, n, cfg.batch):
        idx = range(b0, min(b0 + cfg.batch, n))
        flat = [ds.dense[i].flatten(1).t() for i in idx]  # (r², 3) each
        in_c = torch.stack([coords_lr[observed[i]] for i in idx]).to(device)  # (b, Nin, 2)
        in_v = torch.stack([f[observed[i]] for f, i in zip(flat, idx)]).to(device)  # (b, Nin, 3)
        qry = [_queries(r, out_res, observed[i]) for i in idx]
        q_c = torch.stack([coords_hr[q] for q in qry]).to(device)  # (b, Nq, 2)
        g = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + b0)
        sync(device)
        t0 = time.perf_counter()
        if estimator == "sample":
            x = sample(model, q_c, in_c, in_v, cfg.steps, cfg.method, g, amp=cfg.amp)
        else:  # posterior mean: average of 1-step Euler estimates x0 + v(x0, 0)
            x = sum(sample(model, q_c, in_c, in_v, 1, "euler", g, amp=cfg.amp) for _ in range(cfg.mean_draws))
            x = x / cfg.mean_draws
        sync(device)
        seconds += time.perf_counter() - t0
        x = x.float().cpu().clamp(-1, 1)  # (b, Nq, 3)
        for j, q in enumerate(qry):
            preds.append(_fill(flat[j], q, x[j], out_res))
    return torch.stack(preds), seconds


def predict_interp(ds, observed, out_res, method):
    """The interpolation floor for every image → (n, 3, R, R), seconds (CPU)."""
    r = ds.resolution
    coords_lr, coords_hr = pixel_coords(r).numpy(), pixel_coords(out_res)
    preds, t0 = [], time.perf_counter()
    for i in range(len(ds)):
        flat = ds.dense[i].flatten(1).t()  # (r², 3)
        q = _queries(r, out_res, observed[i])
        obs = observed[i].numpy()
        values = torch.from_numpy(interpolate(coords_lr[obs], flat[observed[i]].numpy(), coords_hr[q].numpy(), method))
        preds.append(_fill(flat, q, values, out_res).clamp(-1, 1))
    return torch.stack(preds), time.perf_counter() - t0


def order_panels(cols: dict, models) -> dict:
    """One resolution's grid columns in order: observed, the floors, each model (in `models` order), truth."""

    def rank(title: str):
        key = title.split()[0].lower()
        if title.startswith("observed"):
            return (0, 0)
        if title.startswith("truth"):
            return (3, 0)
        return (2, list(models).index(key)) if key in models else (1, 0)

    return {t: cols[t] for t in sorted(cols, key=rank)}  # stable: floors and a model's estimators keep their order


def _warm_up(model, ds, observed, out_res, cfg, device) -> None:
    """One untimed forward of one batch at this size: CUDA context, cuBLAS / kernel selection, allocator."""
    one = EvalConfig(**{**cfg.__dict__, "steps": 1, "method": "euler"})
    predict_model(model, ds, observed, out_res, "sample", one, device, count=cfg.batch)


def estimator_name(estimator: str, cfg: EvalConfig) -> str:
    if estimator == "sample":
        return f"{cfg.method} {cfg.steps} steps (1 draw)"
    if estimator == "mean":
        return f"euler 1 step, mean of {cfg.mean_draws}"
    return "griddata"


# ----------------------------------------------------------------------------------------------
# The evaluation
# ----------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    per_image: pd.DataFrame  # one row per (method, estimator, resolution, image)
    timing: pd.DataFrame  # one row per (method, estimator, resolution)
    panels: dict  # resolution → {column title: [(H, W, 3) display arrays for the first `show` images]}
    train_res: int
    observed_frac: float


def run_evaluation(models: dict, cfg: EvalConfig, device) -> EvalResult:
    """Every method × estimator × resolution on the held-out set. Returns data; writes nothing."""
    train_res, frac = train_setup(models)
    resolutions = eval_resolutions(train_res, cfg.resolutions)
    for name, val in (("--steps", cfg.steps), ("--mean-draws", cfg.mean_draws), ("--batch", cfg.batch)):
        if val < 1:
            raise ConfigError(f"{name} must be >= 1, got {val}")
    if cfg.method not in METHODS:
        raise ConfigError(f"unknown sampler {cfg.method!r}; choose one of {', '.join(METHODS)}")
    ds, observed = held_out_set(cfg, train_res, frac)
    show = min(cfg.show, len(ds))
    rows, timing, panels = [], [], {}
    jobs = [(m, "interp") for m in INTERP_METHODS] + [(k, e) for k in models for e in ("mean", "sample")]
    bar = tqdm(total=len(jobs) * len(resolutions), desc="evaluate", disable=not cfg.progress)
    for res in resolutions:
        truth = ds.dense if res == train_res else torch.stack([ds.render(i, res) for i in range(len(ds))])
        panels[res] = {f"observed ({train_res}²)": [sparse_display(ds.dense[i], observed[i]) for i in range(show)]}
        for method, estimator in jobs:
            bar.set_postfix_str(f"{method} {estimator} {res}²")
            peak = float("nan")
            if estimator == "interp":
                preds, secs = predict_interp(ds, observed, res, method)
            else:
                model = models[method][0]
                _warm_up(model, ds, observed, res, cfg, device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                preds, secs = predict_model(model, ds, observed, res, estimator, cfg, device)
                if device.type == "cuda":
                    peak = torch.cuda.max_memory_allocated(device) / 2**20
            for i in range(len(ds)):
                rows.append({"method": method, "estimator": estimator, "resolution": res, "image": i,
                             "source": ds.crops[i].image, **image_metrics(truth[i], preds[i])})  # fmt: skip
            timing.append({
                "method": method, "estimator": estimator, "resolution": res,
                "sampler": estimator_name(estimator, cfg), "sec_per_image": secs / len(ds),
                "infer_peak_mem_mb": peak, "batch": 1 if estimator == "interp" else cfg.batch,
            })  # fmt: skip
            title = label(method) if estimator == "interp" else f"{method.upper()} {estimator}"
            panels[res][title] = [to_display(preds[i]) for i in range(show)]
            bar.update()
        panels[res][f"truth ({res}²)"] = [to_display(truth[i]) for i in range(show)]
    bar.close()
    return EvalResult(pd.DataFrame(rows), pd.DataFrame(timing), panels, train_res, frac)


def summarize(per_image: pd.DataFrame, timing: pd.DataFrame, keys=("method", "estimator", "resolution")):
    """Mean ± std over images of each metric, joined with the timing. One row per keys."""
    keys = list(keys)
    g = per_image.groupby(keys, sort=False)
    out = g.size().rename("n").reset_index()
    for m in ("psnr", "ssim", "mse"):
        stats = g[m].agg(["mean", "std"]).reset_index()
        stats.columns = keys + [f"{m}_mean", f"{m}_std"]
        out = out.merge(stats, on=keys)
    return out.merge(timing, on=[k for k in keys if k in timing.columns], how="left")


def paired_differences(
    per_image: pd.DataFrame, a: str, b: str, estimator="mean", metric="psnr", b_estimator=None, unit="image", **filters
) -> pd.Series:
    """metric(a) − metric(b) for each (resolution, unit) both were scored on. b_estimator: b's estimator when it
    differs from a's (the floors' is "interp"). unit="source" first averages the metric over each held-out
    photograph's crops and pairs those averages: crops of one photograph are not independent, so this is the
    coarser, more conservative count. Empty when the rows or the unit column are missing."""
    b_estimator = b_estimator or estimator
    df = per_image[((per_image["method"] == a) & (per_image["estimator"] == estimator))
                   | ((per_image["method"] == b) & (per_image["estimator"] == b_estimator))]  # fmt: skip
    for k, v in filters.items():
        df = df[df[k] == v]
    if unit not in df:
        return pd.Series(dtype=float)
    wide = df.pivot_table(index=["resolution", unit], columns="method", values=metric)  # mean over a unit's crops
    if a not in wide or b not in wide:
        return pd.Series(dtype=float)
    return (wide[a] - wide[b]).dropna()


def paired_delta(
    per_image: pd.DataFrame, a: str, b: str, estimator="mean", metric="psnr", b_estimator=None, unit="image", **filters
):
    """paired_differences summarised per resolution: mean, standard error, n, and on how many units a is better."""
    d = paired_differences(per_image, a, b, estimator, metric, b_estimator, unit, **filters)
    if d.empty:
        return pd.DataFrame(columns=["resolution", "delta", "sem", "n", "wins"])
    d = d.groupby(level="resolution")
    out = pd.DataFrame({"delta": d.mean(), "sem": d.std() / np.sqrt(d.count()), "n": d.count(),
                        "wins": d.apply(lambda x: int((x > 0).sum()))})  # fmt: skip
    return out.reset_index()


def floor_margin(per_image: pd.DataFrame, model: str, estimator="mean", floor="linear", metric="psnr", unit="image"):
    """paired_delta of one model's estimate against an interpolation floor."""
    return paired_delta(per_image, model, floor, estimator, metric, b_estimator="interp", unit=unit)


# ----------------------------------------------------------------------------------------------
# Tables and figures (from the saved data)
# ----------------------------------------------------------------------------------------------


def _pm(mean, std, fmt) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    s = "" if std is None or (isinstance(std, float) and math.isnan(std)) else f" ± {std:{fmt}}"
    return f"{mean:{fmt}}{s}"


def method_label(method: str, estimator: str) -> str:
    if estimator == "interp":
        return label(method)
    return f"{label(method)}, {'posterior mean' if estimator == 'mean' else 'sample'}"


def quality_table(summary: pd.DataFrame, train_res: int, models=None) -> str:
    """Markdown: one row per resolution × method: the floors, every model's posterior mean, every model's sample
    (models: their order; default: as they first appear in summary)."""
    if models is None:
        models = list(dict.fromkeys(summary.loc[summary["estimator"] != "interp", "method"]))
    order = {("nearest", "interp"): 0, ("linear", "interp"): 1}
    for i, est in enumerate(("mean", "sample")):
        order.update({(k, est): 2 + i * len(models) + j for j, k in enumerate(models)})
    lines = ["| resolution | method | sampler | PSNR (dB) | SSIM | MSE | s / image |",
             "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
    df = summary.assign(_o=[order.get((m, e), len(order)) for m, e in zip(summary["method"], summary["estimator"])])
    for _, r in df.sort_values(["resolution", "_o"]).iterrows():
        res = int(r["resolution"])
        where = f"{res}² (train)" if res == train_res else f"{res}² (zero-shot SR)"
        lines.append(
            f"| {where} | {method_label(r['method'], r['estimator'])} | {r['sampler']} "
            f"| {_pm(r['psnr_mean'], r['psnr_std'], '.2f')} | {_pm(r['ssim_mean'], r['ssim_std'], '.3f')} "
            f"| {_pm(r['mse_mean'], r['mse_std'], '.4f')} | {r['sec_per_image']:.4f} |"
        )
    return "\n".join(lines)


def save_grid(panels: dict, path, title: str = "") -> Path:
    """Rows: images; columns: the panels in their order (order_panels: observed, floors, models, truth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = list(panels)
    n = len(panels[cols[0]])
    fig, axes = plt.subplots(n, len(cols), figsize=(1.45 * len(cols), 1.55 * n + 0.4), squeeze=False)
    for j, name in enumerate(cols):
        for i in range(n):
            ax = axes[i][j]
            ax.imshow(panels[name][i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=130)
    plt.close(fig)
    return Path(path)


def grid_paths(result: EvalResult, out_dir, prefix: str) -> dict:
    """res → PNG path: one at the training resolution, one at the highest SR resolution."""
    out_dir = Path(out_dir)
    res = sorted(result.panels)
    paths = {result.train_res: out_dir / f"{prefix}_samples_res{result.train_res}.png"}
    if res[-1] != result.train_res:
        paths[res[-1]] = out_dir / f"{prefix}_samples_sr{res[-1]}.png"
    return paths


def write_grids(result: EvalResult, out_dir, prefix: str, note: str = "") -> list[Path]:
    written = []
    for res, path in grid_paths(result, out_dir, prefix).items():
        kind = "training resolution" if res == result.train_res else "zero-shot super-resolution"
        title = f"{res}×{res}, {kind}; context {result.train_res}² at {result.observed_frac:.0%}{note}"
        written.append(save_grid(result.panels[res], path, title))
    return written


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def config_from_args(a) -> EvalConfig:
    return EvalConfig(
        resolutions=parse_resolutions(a.resolutions), num_samples=a.num_samples, steps=a.steps, method=a.method,
        mean_draws=a.mean_draws, batch=a.batch, seed=a.seed, data=a.data, amp=not a.no_amp, show=a.show,
        progress=not a.quiet,
    )  # fmt: skip


def default_out(device) -> str:
    """results/ on a GPU (the committed report), results/cpu/ (git-ignored) elsewhere."""
    return "results" if device.type == "cuda" else "results/cpu"


def fit_eval_batch(a, models: dict, device, resolutions) -> int:
    """--batch (None: the default, on CPU shrunk to what fits) checked against memory at the largest resolution."""
    res = max(resolutions)

    def estimate(batch, r):  # the hungriest of the models
        return max(
            run_bytes(
                type(m), m.cfg, r, batch, False, device.type, sum(p.numel() for p in m.parameters()), 2 * a.num_samples
            )  # fmt: skip
            for m, _ in models.values()
        )

    batch = a.batch
    if batch is None:
        batch = EvalConfig.batch
        if device.type == "cpu":
            batch = fit_batch(estimate, res, device, EvalConfig.batch) or 1
            if batch < EvalConfig.batch:
                print(f"bench.evaluate: CPU run: --batch {batch} ({EvalConfig.batch} images do not fit at {res}²)")
    check_memory(estimate, batch, res, device, f"evaluation on {device.type}", "--batch", "--resolutions")
    return batch


NO_CHECKPOINT = "give a checkpoint per model: --checkpoint MODEL=PATH (or the spec's --v1_checkpoint / --v4_checkpoint)"


def checkpoint_paths(a) -> tuple[dict, str]:
    """--checkpoint MODEL=PATH (one per model), the spec's --v1_checkpoint / --v4_checkpoint, --models and
    --baseline → ({model: path} in --models order, baseline). Every mistake is a one-line ConfigError."""
    paths = {}
    for item in a.checkpoint or []:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise ConfigError(
                f"--checkpoint must be MODEL=PATH (e.g. v1=checkpoints_mamba/mamba_best.pth), got {item!r}"
            )
        if key in paths:
            raise ConfigError(f"--checkpoint {key}=... given twice")
        paths[key] = path
    for key, flag in (("v1", "--v1_checkpoint"), ("v4", "--v4_checkpoint")):
        path = getattr(a, f"{key}_checkpoint")
        if path is not None and key in paths:
            raise ConfigError(f"{key.upper()}'s checkpoint given twice: {flag} and --checkpoint {key}=...")
        if path is not None:
            paths[key] = path
    if not paths:
        raise ConfigError(NO_CHECKPOINT)
    check_models(paths, None, "--checkpoint")  # known model names
    listed = a.models if a.models is not None else [k for k in model_names() if k in paths]
    models, baseline = check_models(listed, a.baseline)
    missing = [k for k in models if k not in paths]
    if missing:
        raise ConfigError(f"--models {' '.join(missing)}: no checkpoint; give --checkpoint {missing[0]}=PATH")
    extra = [k for k in paths if k not in models]
    if extra:
        raise ConfigError(f"a checkpoint for {', '.join(extra)}, which is not in --models {' '.join(models)}")
    return {k: paths[k] for k in models}, baseline


def main_evaluate(argv=None) -> None:
    a = build_parser().parse_args(argv)
    extra = parse_resolutions(a.resolutions)  # checked before any checkpoint is read
    paths, baseline = checkpoint_paths(a)
    device = pick_device(a.device)
    a.out = a.out or default_out(device)
    guard_committed_results(a.out, device, [f"{a.prefix}.md", f"{a.prefix}.csv"])
    models = load_models(paths, device, a.attn_backend, a.mixer_backend)
    a.batch = fit_eval_batch(a, models, device, eval_resolutions(train_setup(models)[0], extra))
    cfg = config_from_args(a)
    result = run_evaluation(models, cfg, device)
    summary = summarize(result.per_image, result.timing)
    out = Path(a.out)
    atomic_to_csv(result.per_image, out / f"{a.prefix}_per_image.csv")
    atomic_to_csv(summary, out / f"{a.prefix}.csv")
    grids = write_grids(result, out, a.prefix)
    lines = [
        f"# Evaluation: {', '.join(label(k) for k in models)}",
        "",
        f"{cfg.num_samples} held-out crops, context: {result.observed_frac:.0%} of the {result.train_res}² pixels; "
        f"device {device}. Checkpoints: "
        + ", ".join(f"{k.upper()} `{p}` (step {models[k][1].get('step', '?')})" for k, p in paths.items())
        + ".",
        "",
        "Posterior mean = "
        + estimator_name("mean", cfg)
        + " (the MMSE estimate); sample = "
        + estimator_name("sample", cfg)
        + ", one posterior draw (MSE ≈ 2× the mean's).",
        "",
        quality_table(summary, result.train_res, list(models)),
    ]
    for k in (k for k in models if k != baseline):
        delta = paired_delta(result.per_image, k, baseline)
        lines += ["", f"{k.upper()} − {baseline.upper()} PSNR (posterior mean, paired over the same images, ± "
                  "standard error):", ""]  # fmt: skip
        lines += [f"- {int(r.resolution)}²: {r.delta:+.2f} ± {r.sem:.2f} dB" for r in delta.itertuples()]
    lines += ["", *[f"![{p.stem}]({p.name})" for p in grids], ""]
    atomic_write_text(out / f"{a.prefix}.md", "\n".join(lines))
    print(f"wrote {out / (a.prefix + '.csv')}, {out / (a.prefix + '.md')}, " + ", ".join(str(p) for p in grids))


def build_parser() -> ArgParser:
    p = ArgParser(prog="bench.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", action="append", type=model_checkpoint, metavar="MODEL=PATH",
                   help="a model's *.pth, once per model (e.g. --checkpoint v4=transformer_v4_best.pth)")  # fmt: skip
    p.add_argument("--v1_checkpoint", "--v1-checkpoint", dest="v1_checkpoint", type=existing_file, default=None,
                   help="V1 *.pth")  # fmt: skip
    p.add_argument("--v4_checkpoint", "--v4-checkpoint", dest="v4_checkpoint", type=existing_file, default=None,
                   help="V4 *.pth")  # fmt: skip
    p.add_argument("--models", nargs="+", type=model_name, default=None, metavar="MODEL",
                   help="the models to evaluate, in this order (default: those given a checkpoint)")  # fmt: skip
    p.add_argument("--baseline", type=model_name, default=None, help="the model every other one is paired with "
                   "(default: v1 if evaluated, else the first)")  # fmt: skip
    p.add_argument("--num_samples", "--num-samples", dest="num_samples", type=positive_int,
                   default=EvalConfig.num_samples, help="held-out images")  # fmt: skip
    p.add_argument("--steps", type=positive_int, default=EvalConfig.steps, help="ODE steps of the sampler")
    p.add_argument("--method", default=EvalConfig.method, choices=METHODS, help="ODE sampler")
    p.add_argument("--mean-draws", "--mean_draws", dest="mean_draws", type=positive_int,
                   default=EvalConfig.mean_draws, help="noise draws averaged by the posterior-mean (1-step Euler) "
                   "estimate")  # fmt: skip
    p.add_argument("--resolutions", nargs="+", default=["64,96,128"],
                   help="zero-shot SR resolutions (the training resolution is always evaluated)")  # fmt: skip
    p.add_argument("--batch", type=positive_int, default=None, help=f"images per forward pass (default "
                   f"{EvalConfig.batch}; on CPU at most what fits)")  # fmt: skip
    p.add_argument("--data", type=existing_dir, default=None, help="folder of images (default: scikit-image photos)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--attn-backend", default="sdpa", help="seed | sdpa | triton (weights unchanged)")
    p.add_argument("--mixer-backend", default="auto", help="V1: auto | mamba_ssm | reference")
    p.add_argument("--no-amp", action="store_true", help="fp32 on CUDA (default: bf16 autocast)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--show", type=nonneg_int, default=EvalConfig.show, help="images in the sample grids")
    p.add_argument("--out", type=writable_dir, default=None, help="output folder (default: results/ on a GPU, "
                   "results/cpu/ otherwise)")  # fmt: skip
    p.add_argument("--prefix", default="eval", help="output file prefix")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    return cli_main(main_evaluate, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
