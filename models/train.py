"""Flow-matching training of V1 (Mamba) or V4 (Transformer) on sparse neural fields.

Flow matching (Lipman et al. 2023), rectified path: x_t = (1 − t)·x0 + t·x1 with x0 ~ N(0, I) and x1 the true
query values; the model gives the velocity x1 − x0 at the query points, given the observed pixels. By default its
decoder predicts x1 itself (velocity = (x̂1 − x_t)/(1 − t), loss MSE(x̂1, x1)); `prediction="velocity"` in the
config trains the velocity head directly (Lipman et al.'s loss). See models/common.py:SparseFieldModel.

    python -m models.train --model v4 --resolution 32 --epochs 10
    BATCH_SIZE=32 NUM_HEADS=4 python -m models.train --model v4      # the spec's environment variables
    python -m models.train --model v4 --resume                        # continue from *_latest.pth
    torchrun --nproc_per_node=2 -m models.train --model v4            # data-parallel (models/distributed.py)

Writes checkpoints_<name>/<name>_{best,latest,epoch_XXXX}.pth (atomically), <name>_log.csv and
<name>_loss.png, where <name> is `mamba` (V1) or `transformer_v4` (V4), as the spec names them.
"""

from __future__ import annotations

import math
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
from models import distributed as ddp
from models.checkpoint import model_from_checkpoint, save_checkpoint
from models.common import ENV_TRAIN, ConfigError, check_trainable
from models.data import DeviceBatches, cached_dataset, check_fraction, check_resolution
from models.utils import ArgParser, atomic_savefig, atomic_to_csv, cli_main, pick_device
from models.validate import (
    check_memory,
    dropout_rate,
    env_value,
    existing_dir,
    fit_batch,
    fraction,
    nonneg_float,
    nonneg_int,
    number,
    positive_float,
    positive_int,
    resolution,
    run_bytes,
    writable_dir,
)

NAN_POLICIES = ("stop", "skip")
MAX_SKIPS = 20  # --nan-policy skip: this many non-finite steps in a row stop the run anyway
CPU_BATCH = 8  # CPU runs without an explicit batch size: at most this (a V1 reference step at 8 takes ~1 min)
DEFAULTS = {"batch_size": 64, "lr": 1e-4, "epochs": 1000}  # GPU defaults ($BATCH_SIZE, $LR, $EPOCHS override)
# Settings a --resume must share with the run it continues (the others may change: --lr, --epochs, budgets, ...)
RESUME_SAME = ("preset", "resolution", "observed_frac", "data", "batch_size", "train_samples", "val_samples", "seed")
RESUME_LOGGED = ("lr", "epochs", "max_steps", "grad_clip", "weight_decay")


class Diverged(ConfigError):
    """Training produced a non-finite loss, gradient or weight: one line, exit 1."""

    exit_code = 1


# ----------------------------------------------------------------------------------------------
# The objective
# ----------------------------------------------------------------------------------------------


def flow_noise(x1: torch.Tensor, generator: torch.Generator | None = None, shard=None):
    """The noise x0 (B, Nq, C) and times t (B,) of a batch. shard = (lo, hi, B_global) (a data-parallel rank's
    rows, models.data.DeviceBatches): the global batch's noise is drawn and rows lo:hi kept, so the ranks together
    use the single-process noise. None or the whole batch: the same two draws as always."""
    B = x1.shape[0]
    lo, hi, total = shard if shard is not None else (0, B, B)
    if (lo, hi, total) == (0, B, B):
        return torch.randn(x1.shape, generator=generator, device=x1.device), torch.rand(B, generator=generator,
                                                                                         device=x1.device)  # fmt: skip
    x0 = torch.randn((total, *x1.shape[1:]), generator=generator, device=x1.device)[lo:hi]  # (B, Nq, C)
    t = torch.rand(total, generator=generator, device=x1.device)[lo:hi]  # (B,)
    return x0, t


def flow_matching_loss(model, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
    """The flow-matching regression at a random time t ~ U[0, 1) on the straight noise→data path.

    prediction = velocity: MSE(v̂, x1 − x0), Lipman et al.'s loss. prediction = x1: MSE(x̂1, x1), the same
    regression in the x1 parameterisation, i.e. the velocity MSE weighted by (1 − t)²: it does not blow up as
    t → 1, where v = (x1 − x_t)/(1 − t) is ill-conditioned, and weights every t's denoising alike.
    """
    x1 = batch["query_values"]  # (B, Nq, C)
    x0, t = flow_noise(x1, generator, batch.get("shard"))
    xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
    args = (xt, batch["query_coords"], t, batch["input_coords"], batch["input_values"])
    if model.cfg.prediction == "x1":
        return F.mse_loss(model.predict_x1(*args).float(), x1)
    return F.mse_loss(model(*args).float(), x1 - x0)


class FlowMatchingObjective(torch.nn.Module):
    """flow_matching_loss as a module's forward: what DistributedDataParallel wraps (DDP hooks the gradient
    all-reduce into a forward call, and the loss calls the model's predict_x1, not its forward)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        return flow_matching_loss(self.model, batch, generator)


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
    either is not finite, drop the grads and leave the weights and the optimizer's state alone.

    Data-parallel (a process group of > 1 rank, models.distributed; loss_fn a DDP forward): the gradients are
    all-reduced by DDP inside backward, and the returned loss is the mean over the ranks, so the loss, the gradient
    norm and the skip decision are the same on every rank."""
    opt.zero_grad(set_to_none=True)
    with autocast_for(device, amp):
        loss = loss_fn()
    loss.backward()
    if ddp.active():
        loss = ddp.mean_loss(loss)
    params = [p for group in opt.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if skip_nonfinite and not bool(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)):
        opt.zero_grad(set_to_none=True)
        return loss, grad_norm
    opt.step()
    return loss, grad_norm


@torch.no_grad()
def validation_loss(model, batches: DeviceBatches, device, amp=True, seed=1234, info=ddp.SINGLE) -> float:
    """Mean loss over the validation set with fixed masks, noise and times (comparable across epochs and models).
    Data-parallel: each rank scores its rows of every batch and the sums are reduced (the single-process value)."""
    model.eval()
    g = torch.Generator(device=device).manual_seed(seed)
    total, n = 0.0, 0
    for batch in batches.epoch(0):
        bs = batch["query_values"].shape[0]
        if bs == 0:  # a last batch smaller than the world: no rows here, but the noise stream moves on
            flow_noise(batch["query_values"], g, batch["shard"])
            continue
        with autocast_for(device, amp):
            loss = flow_matching_loss(model, batch, g)
        total, n = total + loss.item() * bs, n + bs
    total, n = ddp.reduce_scalars(info, [total, n], "sum", device)
    model.train()
    return total / max(n, 1)


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def _rng_state(noise: torch.Generator | None = None, device=None):
    """The RNG states a checkpoint keeps. Data-parallel runs draw their noise from `noise` (the stream a single
    process draws from its global RNG): it is saved in the global RNG's place, so any world size continues it."""
    s = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if noise is not None and device.type == "cuda":
        s["cuda"][device.index or 0] = noise.get_state()
    elif noise is not None:
        s["torch"] = noise.get_state()
    return s


def _noise_generator(device) -> torch.Generator:
    """A generator in the state of the global RNG of `device` (what a single process would draw next)."""
    g = torch.Generator(device=device)
    g.set_state(torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state())
    return g


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


def resume_path(ckpt_dir: Path, name: str, which) -> Path:
    """--resume [latest | best | epoch_XXXX | PATH] → the checkpoint file (checked to exist)."""
    which = "latest" if which in (True, None) else str(which)
    if which in ("latest", "best") or which.startswith("epoch_"):
        path = ckpt_dir / f"{name}_{which}.pth"
    else:
        path = Path(which)
    if not path.is_file():
        found = sorted(p.name for p in ckpt_dir.glob(f"{name}_*.pth")) if ckpt_dir.is_dir() else []
        have = f"; {ckpt_dir} holds {', '.join(found)}" if found else f"; {ckpt_dir} holds no checkpoints"
        raise ConfigError(f"--resume {which}: no checkpoint {path}{have}")
    return path


def _data_id(data) -> str | None:
    return None if data is None else str(Path(data).resolve())


def check_resume(args, ckpt: dict, path: Path, cfg) -> None:
    """Refuse a --resume whose model, config or data differ from the checkpoint's run (one line). Settings left
    unset take the run's values; an explicit new --lr / --epochs / ... is applied and said."""
    rec = ckpt.get("args", {})
    for key in ("lr", "epochs", "batch_size"):
        if getattr(args, key) is None and key in rec:
            setattr(args, key, rec[key])
    recorded = {**rec, "resolution": ckpt.get("resolution", rec.get("resolution")),
                "observed_frac": ckpt.get("observed_frac", rec.get("observed_frac"))}  # fmt: skip
    for key in RESUME_SAME:
        if key not in recorded or (recorded[key] is None and key != "data"):
            continue
        mine, theirs = getattr(args, key), recorded[key]
        if key == "data":
            mine, theirs = _data_id(mine), _data_id(theirs)
        if mine != theirs:
            flag = "--" + key.replace("_", "-")
            shown = "the bundled photographs" if theirs is None else theirs
            raise ConfigError(
                f"--resume: {flag} is {mine if mine is not None else 'unset'} but the run in {path} used "
                f"{shown}; resume with the run's setting, or start a fresh run with --overwrite"
            )
    saved = {k: v for k, v in ckpt["config"].items() if not k.endswith("_backend")}
    mine = {k: v for k, v in asdict(cfg).items() if not k.endswith("_backend")}
    diff = [f"{k} {mine.get(k)} vs {saved.get(k)}" for k in sorted(saved) if k in mine and mine[k] != saved[k]]
    if diff:
        raise ConfigError(
            f"--resume: the model config differs from the run in {path} (now vs then: {', '.join(diff)}); "
            "drop the overriding flags / environment variables, or start a fresh run with --overwrite"
        )
    for key in RESUME_LOGGED:
        if key in rec and rec[key] != getattr(args, key):
            print(f"models.train: resume: --{key.replace('_', '-')} changes from {rec[key]} to {getattr(args, key)}")


def choose_batch_size(args, cls, model, device, world: int = 1, verbose: bool = True) -> None:
    """Fill in the batch size (CPU: the largest power of two <= CPU_BATCH that fits, announced) and refuse, in one
    line, a batch size or resolution whose training step does not fit in memory (say what fits instead).
    world > 1: the batch is global, each rank holds batch / world of it (the estimate is per rank)."""
    params, samples = count_parameters(model), args.train_samples + args.val_samples

    def estimate(batch, res):
        return run_bytes(cls, model.cfg, res, -(-batch // world), True, device.type, params, samples)

    if args.batch_size is None:
        if device.type == "cpu":
            fits = fit_batch(estimate, args.resolution, device, CPU_BATCH)
            args.batch_size = min(fits or 1, CPU_BATCH)
            if verbose:
                print(f"models.train: CPU run: --batch-size {args.batch_size} (the GPU default "
                      f"{DEFAULTS['batch_size']} is for GPUs; pass --batch-size to choose)")  # fmt: skip
        else:
            args.batch_size = DEFAULTS["batch_size"]
    check_memory(estimate, args.batch_size, args.resolution, device, f"a {args.model} training step on {device.type}")


def divergence_message(args, step, epoch, loss, grad_norm, latest: Path, skips, what="loss") -> str:
    loss = float(loss.detach() if torch.is_tensor(loss) else loss)
    gn = "" if grad_norm is None else f", gradient norm {float(grad_norm):.4g}"
    if latest.is_file():
        kept = f"the last good checkpoint {latest} is kept"
    else:
        kept = "no checkpoint was written"
    why = f" ({skips} non-finite steps in a row)" if skips > 1 else ""
    skip = " or pass --nan-policy skip" if args.nan_policy == "stop" else ""
    return (f"training diverged at step {step} (epoch {epoch}): {what} {loss:.4g}{gn}{why}; {kept}; "
            f"lower --lr (now {args.lr:g}){skip}")  # fmt: skip


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
    # batch_size / lr / epochs: the CLI's flag, else the spec's $BATCH_SIZE / $LR / $EPOCHS; None: train() fills
    # them in (a resumed run's own values, else DEFAULTS; a CPU run's batch: the largest that fits, <= CPU_BATCH)
    batch_size: int | None = None  # crops per optimizer step
    lr: float | None = None  # AdamW peak learning rate
    epochs: int | None = None  # passes over --train-samples crops
    steps_per_epoch: int | None = None  # cap on optimizer steps per epoch (None: all batches)
    max_steps: int | None = None  # total optimizer steps = the cosine schedule's length (None: epochs × steps/epoch)
    time_budget: float | None = None  # stop after this many seconds of training (None: no limit)
    pause_after: float | None = None  # wall-clock seconds after which the run pauses at an epoch end (--resume goes on)
    curve_every: int = 0  # held-out PSNR (train()'s `curve` callback; the CLI: bench.curves) every this many steps
    curve_samples: int = 32  # held-out crops per learning-curve point (the CLI's callback)
    train_samples: int = 4096  # crops per training epoch
    val_samples: int = 256  # crops in the validation set
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 200  # linear warm-up steps (at most a tenth of the schedule)
    grad_clip: float = GRAD_CLIP  # max global gradient norm
    nan_policy: str = "stop"  # a non-finite loss / gradient norm: stop (one line, exit 1) | skip the step
    seed: int = 0  # weights, data order, masks and noise
    device: str = "auto"  # auto | cpu | cuda[:i] (under torchrun: auto | cpu | cuda, each rank on cuda:LOCAL_RANK)
    dist_backend: str | None = None  # torchrun: auto (nccl on CUDA, gloo on CPU) | nccl | gloo; None: $DIST_BACKEND
    no_amp: bool = False  # disable bf16 autocast on CUDA
    mixer_backend: str = "auto"  # Mamba models: auto | mamba_ssm | reference | ...
    attn_backend: str = "sdpa"  # seed | sdpa | triton | flex
    d_model: int | None = None  # model overrides (None: the preset, or the spec's env vars) ...
    num_layers: int | None = None
    num_heads: int | None = None
    dim_feedforward: int | None = None  # ... (each passed to the models whose config has the field)
    dropout: float | None = None
    out_dir: str = "."  # where checkpoints_<name>/ goes
    save_every: int = 50  # keep an _epoch_XXXX.pth every N epochs (0: never)
    resume: str | None = None  # continue a run: latest | best | epoch_XXXX | a .pth path (None: a fresh run)
    overwrite: bool = False  # start fresh even if checkpoints exist
    quiet: bool = False  # no progress bar


def train(args: TrainConfig, curve: Callable[[torch.nn.Module], dict] | None = None) -> dict:
    """Train one model; returns a summary dict. Every input is checked before anything is written.

    Under torchrun (WORLD_SIZE > 1) every rank runs this: --batch-size is the global batch, each rank trains on its
    rows of it inside DistributedDataParallel, rank 0 writes the checkpoints and the log (the others wait at a
    barrier), and the log's losses, epoch time and peak memory are reduced over the ranks (models/distributed.py).

    curve(model) → {column: value} (e.g. bench.curves.HeldOutCurve: held-out PSNR of the posterior mean) runs at
    step 0 and every args.curve_every steps (on every rank, the same work); its rows, with the step and the seconds
    of training so far (the curve's own time is not counted), go to <name>_curve.csv and the summary's "curve".
    args.pause_after (seconds from now) pauses the run at the first epoch end past it (summary "paused": True);
    --resume continues it.
    """
    launch = ddp.launch_info()
    if launch.enabled and args.batch_size is not None:
        ddp.check_batch(args.batch_size, launch.world)  # one line, before the process group or any data
    info, device_flag = ddp.setup(args.dist_backend, args.device)
    try:
        return _train(args, info, pick_device(device_flag), curve)
    finally:
        ddp.teardown(info)


def _train(args: TrainConfig, info: ddp.DistInfo, device: torch.device, curve=None) -> dict:
    deadline = time.time() + args.pause_after if args.pause_after else None
    check_resolution(args.resolution)
    check_fraction(args.observed_frac)
    for name in ("batch_size", "epochs", "train_samples", "val_samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ConfigError(f"--lr must be a finite number > 0, got {args.lr}")
    if args.nan_policy not in NAN_POLICIES:
        raise ConfigError(f"--nan-policy must be one of {', '.join(NAN_POLICIES)}, got {args.nan_policy!r}")
    cls = MODELS[args.model][0] if args.model in MODELS else None
    if cls is None:
        raise ConfigError(f"unknown model {args.model!r}; choose one of {', '.join(MODELS)}")
    ckpt_dir = Path(args.out_dir) / f"checkpoints_{cls.name}"
    latest = ckpt_dir / f"{cls.name}_latest.pth"
    backends = config_overrides(args.model, {k: getattr(args, k) for k in BACKEND_FLAGS})

    # Model, resumed or fresh (seeded first, so the initial weights are reproducible too).
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    overrides = config_overrides(args.model, {k: getattr(args, k) for k in MODEL_FLAGS})
    if args.resume:
        resume_from = resume_path(ckpt_dir, cls.name, args.resume)
        model, ckpt = model_from_checkpoint(resume_from, args.model, device, **backends)
        check_resume(args, ckpt, resume_from, MODELS[args.model][1](args.preset, {**overrides, **backends}))
    else:
        if ckpt_dir.exists() and any(ckpt_dir.glob("*.pth")) and not args.overwrite:
            raise ConfigError(f"{ckpt_dir} already holds checkpoints; pass --resume to continue or --overwrite")
        model = build_model(args.model, args.preset, {**overrides, **backends}).to(device)
        ckpt = None
    check_trainable(model)  # e.g. flex attention with dropout > 0: one line, before any data or output
    args.lr = DEFAULTS["lr"] if args.lr is None else args.lr
    args.epochs = DEFAULTS["epochs"] if args.epochs is None else args.epochs
    choose_batch_size(args, cls, model, device, info.world, verbose=info.main)
    ddp.check_batch(args.batch_size, info.world)  # a resumed run's batch too
    quiet = args.quiet or not info.main

    # Data (checked before anything is written).
    if not quiet:
        print(f"models.train: rendering {args.train_samples} training and {args.val_samples} validation crops at "
              f"{args.resolution}²", flush=True)  # fmt: skip
    train_ds = cached_dataset(args.data, "train", args.resolution, args.train_samples, args.observed_frac, args.seed,
                              True)  # fmt: skip
    val_ds = cached_dataset(args.data, "val", args.resolution, args.val_samples, args.observed_frac, args.seed + 1,
                            False)  # fmt: skip
    if args.batch_size > len(train_ds):
        raise ConfigError(f"--batch-size {args.batch_size} is larger than --train-samples {len(train_ds)}")
    train_batches = DeviceBatches(train_ds, args.batch_size, device, rank=info.rank, world=info.world)
    val_batches = DeviceBatches(val_ds, args.batch_size, device, shuffle=False, drop_last=False, rank=info.rank,
                                world=info.world)  # fmt: skip
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
    start_epoch, step, best, log_rows, train_time, curve_rows = 0, 0, float("inf"), [], 0.0, []
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch, step, best = ckpt["epoch"] + 1, ckpt["step"], ckpt["best_val"]
        log_rows, train_time = ckpt.get("log", []), ckpt.get("train_time_s", 0.0)
        curve_rows = ckpt.get("curve", [])
        _set_rng_state(ckpt["rng"])
        if args.lr != ckpt.get("args", {}).get("lr", args.lr):  # an explicit new --lr: the schedule's new peak
            sched.base_lrs = [args.lr for _ in opt.param_groups]
            for g, lam in zip(opt.param_groups, sched.lr_lambdas, strict=True):
                g["initial_lr"], g["lr"] = args.lr, args.lr * lam(sched.last_epoch)
        if (start_epoch >= args.epochs or step >= total_steps) and info.main:
            print(f"models.train: the run in {ckpt_dir} is finished (epoch {start_epoch} of {args.epochs}, step "
                  f"{step} of {total_steps}); pass a larger --epochs or --max-steps to continue it")  # fmt: skip

    # Data-parallel: the objective inside DDP (gradients all-reduced in backward), the noise from a generator
    # every rank keeps in the single-process global RNG's state, the global RNG (dropout) seeded per rank and step.
    objective, noise = None, None
    if info.enabled:
        kw = {"device_ids": [device.index]} if device.type == "cuda" else {}
        objective = torch.nn.parallel.DistributedDataParallel(FlowMatchingObjective(model), **kw)
        noise = _noise_generator(device)
        torch.manual_seed(args.seed + 1_000_003 * (info.rank + 1) + step)

    n_params = count_parameters(model)
    if info.main:
        per_rank = f"{info.world} ranks ({info.backend}), {args.batch_size // info.world} per rank"
        world = f" | {per_rank}" if info.enabled else ""
        print(
            f"{cls.__name__} ({args.model}): {n_params / 1e6:.2f}M parameters | device {device} | "
            f"res {args.resolution} | batch {args.batch_size}{world} | {steps_per_epoch} steps/epoch | "
            f"backends: {getattr(model, 'mixer_backend', '-')}/{model.cfg.attn_backend}"
        )
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    log_csv, loss_png = ckpt_dir / f"{cls.name}_log.csv", ckpt_dir / f"{cls.name}_loss.png"
    curve_csv = ckpt_dir / f"{cls.name}_curve.csv"
    every = args.curve_every if curve is not None else 0

    def curve_point(elapsed: float) -> float:
        """One learning-curve row (the model in eval mode); returns the seconds it took (not training time)."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tc = time.perf_counter()
        model.eval()
        curve_rows.append({"step": step, "train_time_s": train_time + elapsed, **curve(model)})
        model.train()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - tc

    model.train()
    if every and not curve_rows:
        curve_point(0.0)
    stop, skips, paused = False, 0, False
    for epoch in range(start_epoch, args.epochs):
        if stop or paused or step >= total_steps:
            break
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0, losses, curve_s = time.perf_counter(), [], 0.0
        batches = train_batches.epoch(epoch)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch}", leave=False, disable=quiet)
        for i, batch in enumerate(bar):
            if i >= steps_per_epoch or step >= total_steps:
                break
            step_loss = (
                partial(objective, batch, noise) if objective is not None else partial(flow_matching_loss, model, batch)
            )
            loss, grad_norm = train_step(step_loss, opt, device, not args.no_amp, args.grad_clip, skip_nonfinite=True)
            if not (math.isfinite(loss.item()) and math.isfinite(grad_norm.item())):  # diverged: never applied
                skips += 1
                if args.nan_policy == "stop" or skips > MAX_SKIPS:
                    raise Diverged(divergence_message(args, step + 1, epoch, loss, grad_norm, latest, skips))
                continue  # --nan-policy skip: the batch is dropped (train_step left weights and optimizer alone)
            skips = 0
            sched.step()
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if args.time_budget and ddp.any_rank(
                info, train_time + time.perf_counter() - t0 - curve_s >= args.time_budget, device
            ):  # every rank stops at the same step
                stop = True
                break
            if every and step % every == 0 and step < total_steps:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                curve_s += curve_point(time.perf_counter() - t0 - curve_s)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_time = ddp.reduce_scalars(info, [time.perf_counter() - t0 - curve_s], "max", device)[0]  # slowest rank
        last = stop or step >= total_steps or epoch == args.epochs - 1
        if every and last and curve_rows[-1]["step"] != step:
            curve_point(epoch_time)  # the run's last point: the final model
        train_time += epoch_time
        past = deadline is not None and time.time() >= deadline and not (stop or step >= total_steps)
        paused = ddp.any_rank(info, past, device)  # every rank pauses at the same epoch end
        val = validation_loss(model, val_batches, device, not args.no_amp, info=info)
        if not math.isfinite(val):  # finite steps, non-finite weights (an overflowing update): nothing is saved
            raise Diverged(divergence_message(args, step, epoch, val, None, latest, 0, "validation loss"))
        row = {
            "epoch": epoch, "step": step, "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_loss": val, "epoch_time_s": epoch_time, "steps": len(losses),
            "time_per_step_s": epoch_time / max(len(losses), 1),
            "peak_mem_mb": ddp.reduce_scalars(info, [peak_memory_mb(device)], "max", device)[0],  # the largest rank
            "lr": sched.get_last_lr()[0], "train_time_s": train_time, "world_size": info.world,
        }  # fmt: skip
        log_rows.append(row)
        if info.main:
            print(
                f"epoch {epoch:4d} | step {step:6d} | train {row['train_loss']:.4f} | val {val:.4f} | "
                f"{epoch_time:6.1f}s | peak {row['peak_mem_mb']:.0f} MB"
            )
        state = {
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch, "step": step,
            "best_val": min(best, val), "rng": _rng_state(noise, device), "log": log_rows,
            "train_time_s": train_time, "args": asdict(args), "resolution": args.resolution,
            "observed_frac": args.observed_frac, "world_size": info.world, "curve": curve_rows,
        }  # fmt: skip
        if info.main:  # rank 0 writes (atomically); the others wait below, so no rank runs ahead of a checkpoint
            if val < best:
                save_checkpoint(ckpt_dir / f"{cls.name}_best.pth", model, **state)
            if args.save_every and (epoch + 1) % args.save_every == 0:
                save_checkpoint(ckpt_dir / f"{cls.name}_epoch_{epoch:04d}.pth", model, **state)
            save_checkpoint(latest, model, **state)
            atomic_to_csv(pd.DataFrame(log_rows), log_csv)
            if curve_rows:
                atomic_to_csv(pd.DataFrame(curve_rows), curve_csv)
            plot_loss_curve(log_csv, loss_png)
        best = min(best, val)
        ddp.barrier(info)
    if paused and info.main:
        print(f"models.train: paused at step {step} (epoch {epoch}, deadline reached); --resume continues the run")
    return {
        "model": args.model, "name": cls.name, "model_version": model.version, "config": asdict(model.cfg),
        "params": n_params, "steps": step, "best_val": best, "world_size": info.world,
        "train_time_s": train_time, "checkpoint_dir": str(ckpt_dir), "log": log_rows, "curve": curve_rows,
        "paused": paused,
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def env_number(name, cast, default):
    """A positive number from the environment (the spec's BATCH_SIZE, LR, EPOCHS), or the default."""
    return env_value(name, positive_int if cast is int else positive_float, default)


def build_parser() -> ArgParser:
    p = ArgParser(prog="models.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help=f"one of {', '.join(MODELS)}")
    p.add_argument("--preset", default="default", help="model size preset: default | small | tiny")
    p.add_argument("--resolution", type=resolution, default=32, help="image side in pixels (N = side²)")
    p.add_argument("--observed-frac", type=fraction, default=0.2, help="fraction of pixels observed, in (0, 1)")
    p.add_argument("--data", type=existing_dir, default=None, help="folder of PNG/JPEG images (default: "
                   "scikit-image photos)")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=None, help="default: $BATCH_SIZE, or 64 on a GPU "
                   f"and the largest power of two <= {CPU_BATCH} that fits on a CPU")  # fmt: skip
    p.add_argument("--lr", type=positive_float, default=None, help="default: $LR or 1e-4")
    p.add_argument("--epochs", type=positive_int, default=None, help="default: $EPOCHS or 1000")
    p.add_argument("--steps-per-epoch", type=positive_int, default=None, help="cap on optimizer steps per epoch")
    p.add_argument("--max-steps", type=positive_int, default=None, help="total optimizer steps (schedule length)")
    p.add_argument("--time-budget", type=positive_float, default=None, help="stop after this many seconds")
    p.add_argument("--pause-after", type=positive_float, default=None, help="wall-clock seconds, then pause at an "
                   "epoch end (the latest checkpoint kept; --resume continues): runs longer than one call")  # fmt: skip
    p.add_argument("--curve-every", type=nonneg_int, default=0, help="held-out PSNR of the posterior mean every this "
                   "many steps → <name>_curve.csv (bench.curves; 0: none)")  # fmt: skip
    p.add_argument("--curve-samples", type=positive_int, default=32, help="held-out crops per curve point")
    p.add_argument("--train-samples", type=positive_int, default=4096, help="crops per training epoch")
    p.add_argument("--val-samples", type=positive_int, default=256, help="crops in the validation set")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.01)
    p.add_argument("--warmup-steps", type=nonneg_int, default=200)
    p.add_argument("--grad-clip", type=number(0, lo_open=True, allow_inf=True), default=1.0,
                   help="max gradient norm, > 0 (inf: no clipping)")  # fmt: skip
    p.add_argument(
        "--nan-policy",
        default="stop",
        choices=NAN_POLICIES,
        help="a non-finite loss or gradient: "
        f"stop (one-line error, the last good checkpoint kept) or skip that step (stop after {MAX_SKIPS})",
    )
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i] (torchrun: each rank on cuda:LOCAL_RANK)")
    p.add_argument("--dist-backend", default=None, choices=ddp.BACKENDS, help="under torchrun: auto (nccl on "
                   "CUDA, gloo on CPU; default, or $DIST_BACKEND) | nccl | gloo")  # fmt: skip
    p.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    p.add_argument("--mixer-backend", default="auto", help="V1: auto | mamba_ssm | cpu_fused | reference")
    p.add_argument("--attn-backend", default="sdpa", help="seed | sdpa | triton | flex (flex: --dropout 0)")
    for flag, cast in (("--d-model", positive_int), ("--num-layers", positive_int), ("--num-heads", positive_int),
                       ("--dim-feedforward", positive_int), ("--dropout", dropout_rate)):  # fmt: skip
        p.add_argument(flag, type=cast, default=None, help="override (also via the spec's env vars)")
    p.add_argument("--out-dir", type=writable_dir, default=".", help="where checkpoints_<name>/ goes")
    p.add_argument("--save-every", type=nonneg_int, default=50, help="keep an _epoch_XXXX.pth every N epochs "
                   "(0: never)")  # fmt: skip
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CKPT",
                   help="continue a run: latest (default) | best | epoch_XXXX | a .pth path")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="start fresh even if checkpoints exist")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def parse_args(argv=None) -> TrainConfig:
    """The CLI's flags → TrainConfig; --batch-size / --lr / --epochs not given: the spec's env vars, else None
    (train() fills them in: a resumed run's own values, else the defaults)."""
    args = build_parser().parse_args(argv)
    for env_name, field in ENV_TRAIN.items():
        if getattr(args, field) is None:
            setattr(args, field, env_number(env_name, int if field != "lr" else float, None))
    return TrainConfig(**vars(args))


def curve_for(args: TrainConfig):
    """The CLI's learning-curve callback (bench.curves.HeldOutCurve on the run's held-out images), or None."""
    if not args.curve_every:
        return None
    from bench.curves import HeldOutCurve

    return HeldOutCurve(args.data, args.resolution, args.observed_frac, args.curve_samples, seed=args.seed,
                        device=pick_device(args.device), amp=not args.no_amp)  # fmt: skip


def main_train(argv=None) -> dict:
    args = parse_args(argv)
    return train(args, curve=curve_for(args))


def main(argv=None) -> int:
    return cli_main(main_train, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
