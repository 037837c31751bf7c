"""Flow-matching training of V1 (Mamba) or V4 (Transformer) on sparse neural fields.

Flow matching (Lipman et al. 2023), rectified path: x_t = (1 − t)·x0 + t·x1 with x0 ~ N(0, I) and x1 the true
query values; the model gives the velocity x1 − x0 at the query points, given the observed pixels. By default its
decoder predicts x1 itself (velocity = (x̂1 − x_t)/(1 − t), loss MSE(x̂1, x1)); `prediction="velocity"` in the
config trains the velocity head directly (Lipman et al.'s loss). See models/common.py:SparseFieldModel.

    python -m models.train --model v4 --resolution 32 --epochs 10
    BATCH_SIZE=32 NUM_HEADS=4 python -m models.train --model v4      # the spec's environment variables
    python -m models.train --model v4 --resume                        # continue from *_latest.pth

Writes checkpoints_<name>/<name>_{best,latest,epoch_XXXX}.pth (atomically), <name>_log.csv and
<name>_loss.png, where <name> is `mamba` (V1) or `transformer_v4` (V4), as the spec names them.
"""

from __future__ import annotations

import math
import os
import random
import resource
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models import MODELS, build_model, count_parameters
from models.checkpoint import model_from_checkpoint, save_checkpoint
from models.common import ENV_TRAIN, ConfigError, check_trainable
from models.data import DeviceBatches, SparseFieldDataset, check_fraction, check_resolution, load_images
from models.utils import ArgParser, atomic_savefig, atomic_to_csv, cli_main, pick_device

# ----------------------------------------------------------------------------------------------
# The objective
# ----------------------------------------------------------------------------------------------


def flow_matching_loss(model, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
    """The flow-matching regression at a random time t ~ U[0, 1) on the straight noise→data path.

    prediction = velocity: MSE(v̂, x1 − x0), Lipman et al.'s loss. prediction = x1: MSE(x̂1, x1), the same
    regression in the x1 parameterisation, i.e. the velocity MSE weighted by (1 − t)²: it does not blow up as
    t → 1, where v = (x1 − x_t)/(1 − t) is ill-conditioned, and weights every t's denoising alike.
    """
    x1 = batch["query_values"]  # (B, Nq, C)
    B = x1.shape[0]
    x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
    t = torch.rand(B, generator=generator, device=x1.device)
    xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
    args = (xt, batch["query_coords"], t, batch["input_coords"], batch["input_values"])
    if model.cfg.prediction == "x1":
        return F.mse_loss(model.predict_x1(*args).float(), x1)
    return F.mse_loss(model(*args).float(), x1 - x0)


def autocast_for(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; nothing on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


GRAD_CLIP = 1.0  # max global gradient norm of every training step (models.train, compare's calibration, bench)


def train_step(
    loss_fn: Callable[[], torch.Tensor],
    opt: torch.optim.Optimizer,
    device: torch.device,
    amp: bool = True,
    grad_clip: float = GRAD_CLIP,
    skip_nonfinite: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """THE training step, shared by models.train, bench.compare's calibration and the benchmark (bench.measure):
    zero the grads, loss_fn() under bf16 autocast on CUDA, backward, clip the global gradient norm of the
    optimizer's parameters to grad_clip (inf: measured, not clipped), optimizer step. A learning-rate scheduler,
    if any, is stepped by the caller.

    Returns (loss, grad_norm before clipping), tensors, not synced. skip_nonfinite: check both (one sync) and, when
    either is not finite, drop the grads and leave the weights and the optimizer's state alone."""
    opt.zero_grad(set_to_none=True)
    with autocast_for(device, amp):
        loss = loss_fn()
    loss.backward()
    params = [p for group in opt.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if skip_nonfinite and not bool(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)):
        opt.zero_grad(set_to_none=True)
        return loss, grad_norm
    opt.step()
    return loss, grad_norm


@torch.no_grad()
def validation_loss(model, batches: DeviceBatches, device, amp=True, seed=1234) -> float:
    """Mean loss over the validation set with fixed masks, noise and times (comparable across epochs and models)."""
    model.eval()
    g = torch.Generator(device=device).manual_seed(seed)
    total, n = 0.0, 0
    for batch in batches.epoch(0):
        with autocast_for(device, amp):
            loss = flow_matching_loss(model, batch, g)
        bs = batch["query_values"].shape[0]
        total, n = total + loss.item() * bs, n + bs
    model.train()
    return total / max(n, 1)


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def _rng_state():
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(s):
    torch.set_rng_state(s["torch"])
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def plot_loss_curve(log_csv, out_png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.read_csv(log_csv)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(df["step"], df["train_loss"], marker="o", label="train")
    ax.plot(df["step"], df["val_loss"], marker="s", label="validation")
    ax.set(xlabel="step", ylabel="flow-matching MSE", yscale="log", title=Path(log_csv).stem)
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, out_png, dpi=120)
    plt.close(fig)


MODEL_FLAGS = ("d_model", "num_layers", "num_heads", "dim_feedforward", "dropout")  # flags that override the config
BACKEND_FLAGS = ("attn_backend", "mixer_backend")  # flags that pick a backend (the weights stay the same)


def config_fields(model: str) -> set[str]:
    """The fields of a model's config."""
    return {f.name for f in fields(MODELS[model][1]("default", env={}))}


def config_overrides(model: str, values: dict) -> dict:
    """The entries of `values` that are fields of `model`'s config: a flag a model does not have (V1: no
    dim_feedforward; V4: no mixer_backend) is not passed to it. None values are left to the preset / env vars."""
    names = config_fields(model)
    return {k: v for k, v in values.items() if k in names}


@dataclass
class TrainConfig:
    """One training run: what models.train's flags set (parse_args builds one) and bench.compare passes in."""

    model: str  # a key of models.MODELS: v1 (Mamba), v2, v3, v4 (Transformer), ...
    preset: str = "default"  # model size preset: default | small | tiny
    resolution: int = 32  # image side in pixels (N = side²)
    observed_frac: float = 0.2  # fraction of pixels observed, in (0, 1)
    data: str | None = None  # folder of PNG/JPEG images (None: scikit-image's photographs)
    batch_size: int = 64  # crops per optimizer step (the CLI: --batch-size, else $BATCH_SIZE, else this)
    lr: float = 1e-4  # AdamW peak learning rate (the CLI: --lr, else $LR, else this)
    epochs: int = 1000  # passes over --train-samples crops (the CLI: --epochs, else $EPOCHS, else this)
    steps_per_epoch: int | None = None  # cap on optimizer steps per epoch (None: all batches)
    max_steps: int | None = None  # total optimizer steps = the cosine schedule's length (None: epochs × steps/epoch)
    time_budget: float | None = None  # stop after this many seconds of training (None: no limit)
    train_samples: int = 4096  # crops per training epoch
    val_samples: int = 256  # crops in the validation set
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 200  # linear warm-up steps (at most a tenth of the schedule)
    grad_clip: float = GRAD_CLIP  # max global gradient norm
    seed: int = 0  # weights, data order, masks and noise
    device: str = "auto"  # auto | cpu | cuda[:i]
    no_amp: bool = False  # disable bf16 autocast on CUDA
    mixer_backend: str = "auto"  # Mamba models: auto | mamba_ssm | reference | ...
    attn_backend: str = "sdpa"  # seed | sdpa | triton
    d_model: int | None = None  # model overrides (None: the preset, or the spec's env vars) ...
    num_layers: int | None = None
    num_heads: int | None = None
    dim_feedforward: int | None = None  # ... (each passed to the models whose config has the field)
    dropout: float | None = None
    out_dir: str = "."  # where checkpoints_<name>/ goes
    save_every: int = 50  # keep an _epoch_XXXX.pth every N epochs (0: never)
    resume: bool = False  # continue from <name>_latest.pth
    overwrite: bool = False  # start fresh even if checkpoints exist
    quiet: bool = False  # no progress bar


def train(args: TrainConfig) -> dict:
    """Train one model; returns a summary dict. Every input is checked before anything is written."""
    device = pick_device(args.device)
    check_resolution(args.resolution)
    check_fraction(args.observed_frac)
    for name in ("batch_size", "epochs", "train_samples", "val_samples"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.lr <= 0:
        raise ConfigError(f"--lr must be > 0, got {args.lr}")
    cls = MODELS[args.model][0] if args.model in MODELS else None
    if cls is None:
        raise ConfigError(f"unknown model {args.model!r}; choose v1 (Mamba) or v4 (Transformer)")
    ckpt_dir = Path(args.out_dir) / f"checkpoints_{cls.name}"
    latest = ckpt_dir / f"{cls.name}_latest.pth"
    backends = config_overrides(args.model, {k: getattr(args, k) for k in BACKEND_FLAGS})

    # Model, resumed or fresh (seeded first, so the initial weights are reproducible too).
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    if args.resume:
        model, ckpt = model_from_checkpoint(latest, args.model, device, **backends)
    else:
        if ckpt_dir.exists() and any(ckpt_dir.glob("*.pth")) and not args.overwrite:
            raise ConfigError(f"{ckpt_dir} already holds checkpoints; pass --resume to continue or --overwrite")
        overrides = config_overrides(args.model, {k: getattr(args, k) for k in MODEL_FLAGS})
        model = build_model(args.model, args.preset, {**overrides, **backends}).to(device)
        ckpt = None
    check_trainable(model)  # e.g. flex attention with dropout > 0: one line, before any data or output

    # Data (checked before anything is written).
    train_ds = SparseFieldDataset(
        load_images(args.data, "train"), args.resolution, args.train_samples, args.observed_frac, args.seed
    )
    val_ds = SparseFieldDataset(
        load_images(args.data, "val"), args.resolution, args.val_samples, args.observed_frac,
        args.seed + 1, augment=False,
    )  # fmt: skip
    if args.batch_size > len(train_ds):
        raise ConfigError(f"--batch-size {args.batch_size} is larger than --train-samples {len(train_ds)}")
    train_batches = DeviceBatches(train_ds, args.batch_size, device)
    val_batches = DeviceBatches(val_ds, args.batch_size, device, shuffle=False, drop_last=False)
    steps_per_epoch = len(train_batches)
    if args.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, args.steps_per_epoch)
    total_steps = args.max_steps or steps_per_epoch * args.epochs

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    warmup = min(args.warmup_steps, max(total_steps // 10, 1))

    def lr_lambda(step):  # linear warm-up, then cosine to 10% of lr
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    start_epoch, step, best, log_rows, train_time = 0, 0, float("inf"), [], 0.0
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch, step, best = ckpt["epoch"] + 1, ckpt["step"], ckpt["best_val"]
        log_rows, train_time = ckpt.get("log", []), ckpt.get("train_time_s", 0.0)
        _set_rng_state(ckpt["rng"])

    n_params = count_parameters(model)
    print(
        f"{cls.__name__} ({args.model}): {n_params / 1e6:.2f}M parameters | device {device} | "
        f"res {args.resolution} | batch {args.batch_size} | {steps_per_epoch} steps/epoch | "
        f"backends: {getattr(model, 'mixer_backend', '-')}/{model.cfg.attn_backend}"
    )
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    log_csv, loss_png = ckpt_dir / f"{cls.name}_log.csv", ckpt_dir / f"{cls.name}_loss.png"
    model.train()
    stop = False
    for epoch in range(start_epoch, args.epochs):
        if stop or step >= total_steps:
            break
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0, losses = time.perf_counter(), []
        batches = train_batches.epoch(epoch)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch}", leave=False, disable=args.quiet)
        for i, batch in enumerate(bar):
            if i >= steps_per_epoch or step >= total_steps:
                break
            step_loss = partial(flow_matching_loss, model, batch)
            loss, _ = train_step(step_loss, opt, device, not args.no_amp, args.grad_clip)
            sched.step()
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if args.time_budget and train_time + time.perf_counter() - t0 >= args.time_budget:
                stop = True
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_time = time.perf_counter() - t0
        train_time += epoch_time
        val = validation_loss(model, val_batches, device, not args.no_amp)
        row = {
            "epoch": epoch, "step": step, "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_loss": val, "epoch_time_s": epoch_time, "steps": len(losses),
            "time_per_step_s": epoch_time / max(len(losses), 1), "peak_mem_mb": peak_memory_mb(device),
            "lr": sched.get_last_lr()[0], "train_time_s": train_time,
        }  # fmt: skip
        log_rows.append(row)
        print(
            f"epoch {epoch:4d} | step {step:6d} | train {row['train_loss']:.4f} | val {val:.4f} | "
            f"{epoch_time:6.1f}s | peak {row['peak_mem_mb']:.0f} MB"
        )
        state = {
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch, "step": step,
            "best_val": min(best, val), "rng": _rng_state(), "log": log_rows, "train_time_s": train_time,
            "args": asdict(args), "resolution": args.resolution, "observed_frac": args.observed_frac,
        }  # fmt: skip
        if val < best:
            best = val
            save_checkpoint(ckpt_dir / f"{cls.name}_best.pth", model, **state)
        if args.save_every and (epoch + 1) % args.save_every == 0:
            save_checkpoint(ckpt_dir / f"{cls.name}_epoch_{epoch:04d}.pth", model, **state)
        save_checkpoint(latest, model, **state)
        atomic_to_csv(pd.DataFrame(log_rows), log_csv)
        plot_loss_curve(log_csv, loss_png)
    return {
        "model": args.model, "name": cls.name, "model_version": model.version, "config": asdict(model.cfg),
        "params": n_params, "steps": step, "best_val": best,
        "train_time_s": train_time, "checkpoint_dir": str(ckpt_dir), "log": log_rows,
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def env_number(name, cast, default):
    """A number from the environment (the spec's BATCH_SIZE, LR, ...), or the default; bad text → ConfigError."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return cast(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not a valid {cast.__name__}") from None


def build_parser() -> ArgParser:
    p = ArgParser(prog="models.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="v1 (Mamba) or v4 (Transformer)")
    p.add_argument("--preset", default="default", help="model size preset: default | small | tiny")
    p.add_argument("--resolution", type=int, default=32, help="image side in pixels (N = side²)")
    p.add_argument("--observed-frac", type=float, default=0.2, help="fraction of pixels observed, in (0, 1)")
    p.add_argument("--data", default=None, help="folder of PNG/JPEG images (default: scikit-image photos)")
    p.add_argument("--batch-size", type=int, default=None, help="default: $BATCH_SIZE or 64")
    p.add_argument("--lr", type=float, default=None, help="default: $LR or 1e-4")
    p.add_argument("--epochs", type=int, default=None, help="default: $EPOCHS or 1000")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="cap on optimizer steps per epoch")
    p.add_argument("--max-steps", type=int, default=None, help="total optimizer steps (schedule length)")
    p.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds of training")
    p.add_argument("--train-samples", type=int, default=4096, help="crops per training epoch")
    p.add_argument("--val-samples", type=int, default=256, help="crops in the validation set")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    p.add_argument("--mixer-backend", default="auto", help="V1: auto | mamba_ssm | cpu_fused | reference")
    p.add_argument("--attn-backend", default="sdpa", help="seed | sdpa | triton | flex (flex: --dropout 0)")
    for flag, cast in (("--d-model", int), ("--num-layers", int), ("--num-heads", int),
                       ("--dim-feedforward", int), ("--dropout", float)):  # fmt: skip
        p.add_argument(flag, type=cast, default=None, help="override (also via the spec's env vars)")
    p.add_argument("--out-dir", default=".", help="where checkpoints_<name>/ goes")
    p.add_argument("--save-every", type=int, default=50, help="keep an _epoch_XXXX.pth every N epochs (0: never)")
    p.add_argument("--resume", action="store_true", help="continue from <name>_latest.pth")
    p.add_argument("--overwrite", action="store_true", help="start fresh even if checkpoints exist")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def parse_args(argv=None) -> TrainConfig:
    """The CLI's flags → TrainConfig; --batch-size / --lr / --epochs not given: the spec's env vars, then the
    dataclass's defaults."""
    args = build_parser().parse_args(argv)
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for env_name, field in ENV_TRAIN.items():
        if getattr(args, field) is None:
            setattr(args, field, env_number(env_name, type(defaults[field]), defaults[field]))
    return TrainConfig(**vars(args))


def main(argv=None) -> int:
    return cli_main(lambda a: train(parse_args(a)), argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
