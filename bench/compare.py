"""Models (default V1 Mamba vs V4 Transformer) under equal budgets → results/quality.md, with a computed verdict.

    python -m bench.compare                          # the committed run: one H200, ~13 min in all
    python -m bench.compare --quick --out /tmp/q     # CI smoke: tiny models on the CPU, < 1 min
    python -m bench.compare --models v1 v2 v3 v4 --baseline v1     # any list of models, each paired with V1
    NUM_HEADS=4 python -m bench.compare --out results/heads4     # the spec's ablations pass through
    python -m bench.compare --phase time             # the same run in two processes (two GPU calls of
    python -m bench.compare --phase steps            #   < 10 min): the state goes via quality_state.pt
    python -m bench.compare --report-only            # quality.md again, from the saved data in --out

Every model sees the same data (crops, masks, order), seed, batch and learning-rate schedule shape, under two
budgets:

  equal time   T seconds of training each (--seconds, default 180). Each model's cosine schedule is sized to
               the steps it makes in T, from a short calibration (a few timed steps of each model); T is
               also a hard stop.
  equal steps  S optimizer steps each. Default: S = the steps the SLOWEST model made in T, so that model's
               equal-time run IS its equal-steps run (reused) and only the faster ones train again, for S
               steps. Two models thus cost at most 3T, whatever the GPU's speed. --steps S: all fresh.

Then both budgets are evaluated on held-out crops (bench/evaluate.py: the training resolution plus zero-shot
64/96/128, posterior mean and one sampler draw, the interpolation floors), and the spec's three scenarios are
decided from the numbers for every model against --baseline (bench/quality_report.py). Data first (CSV/JSON),
then the report and figures from the saved data:

  quality.csv (summary rows), quality_per_image.csv, quality_runs.csv (training cost), quality_train.csv
  (loss logs), quality_env.json (bench.env's record), quality.md, quality_samples_res<r>.png / _sr<R>.png
  (equal steps; quality_equal_time_samples_*.png: equal time), quality_loss.png
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.env import environment, git_commit
from bench.evaluate import (
    EvalConfig,
    EvalResult,
    backend_overrides,
    check_models,
    load_models,
    order_panels,
    parse_resolutions,
    run_evaluation,
    summarize,
    write_grids,
)
from bench.measure import sync
from bench.quality_report import BUDGET_LABELS, BUDGETS, write_report
from models import build_model
from models.common import ConfigError
from models.data import DeviceBatches, SparseFieldDataset, check_fraction, check_resolution, load_images
from models.sample import METHODS
from models.train import MODEL_FLAGS, TrainConfig, config_overrides, env_number, flow_matching_loss, train, train_step
from models.utils import ArgParser, atomic_to_csv, atomic_torch_save, atomic_write_text, cli_main, pick_device
from models.validate import (
    check_memory,
    dropout_rate,
    existing_dir,
    fit_batch,
    fraction,
    guard_committed_results,
    model_name,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    resolution,
    run_bytes,
    writable_dir,
)

ENV_OVERRIDES = ("NUM_HEADS", "DIM_FEEDFORWARD", "NUM_LAYERS", "D_MODEL", "DROPOUT", "BATCH_SIZE", "LR")

# --quick: the CI smoke (tiny models, 16², two held-out images); any flag given explicitly still wins.
QUICK = dict(
    preset="tiny", resolution=16, seconds=4.0, calib_steps=2, batch_size=16, train_samples=128, val_samples=16,
    num_samples=2, eval_steps=4, mean_draws=2, eval_batch=2, resolutions="24",
)  # fmt: skip
SAFETY = 0.97  # equal-time schedules are sized to 97% of T / (calibrated s/step): they end just before T


# ----------------------------------------------------------------------------------------------
# Training under the two budgets
# ----------------------------------------------------------------------------------------------


def model_overrides(a, key: str) -> dict:
    """The ablation flags (None: preset / the spec's env vars) and backends a model's config has, as
    models.build_model takes them (V1 has no FFN: no dim_feedforward)."""
    over = config_overrides(key, {f: getattr(a, f) for f in MODEL_FLAGS})
    return {**over, **backend_overrides(key, a.attn_backend, a.mixer_backend)}


def train_config(a, key: str, out_dir: Path, max_steps: int, time_budget: float | None) -> TrainConfig:
    """models.train's config for one run; everything but the budget is the same for every model."""
    progress = getattr(a, "progress", None)
    return TrainConfig(
        pause_after=progress.left() if progress and progress.deadline else None,
        curve_every=getattr(a, "curve_every", 0), curve_samples=getattr(a, "curve_samples", 32),
        model=key, preset=a.preset, resolution=a.resolution, observed_frac=a.observed_frac, data=a.data or None,
        batch_size=a.batch_size, lr=a.lr, epochs=10**9, max_steps=max_steps, time_budget=time_budget or None,
        train_samples=a.train_samples, val_samples=a.val_samples, seed=a.seed, device=a.device,
        steps_per_epoch=getattr(a, "steps_per_epoch", None),
        attn_backend=a.attn_backend, mixer_backend=a.mixer_backend, out_dir=str(out_dir), save_every=0,
        overwrite=True, quiet=not a.verbose, **config_overrides(key, {f: getattr(a, f) for f in MODEL_FLAGS}),
    )  # fmt: skip


class Paused(Exception):
    """The call's --time-budget is spent: the state is saved; the same command run again continues."""


class Progress:
    """--time-budget across calls: what is done (calibration, each run, each evaluation) is kept in <out>/STATE
    after every unit, a training run pauses at an epoch end past the call's deadline (its latest checkpoint is
    kept), and an evaluation starts only if its estimate fits in what is left."""

    def __init__(self, out: Path, a, state: dict | None):
        self.out, self.a = out, a
        self.state = state or {"settings": settings_of(a), "phases": [], "runs": {}, "eval_s": {}}
        self.state.setdefault("runs", {})
        self.state.setdefault("eval_s", {})
        self.state.setdefault("evals", {})
        self.deadline = time.time() + a.time_budget if a.time_budget else None
        self.t0 = time.perf_counter()

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.time()

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self.state, self.out / STATE)

    def pause(self, what: str):
        self.state["phases"].append({"phase": "part", **phase_record(self.t0)})
        self.save()
        print(f"[compare] time budget ({self.a.time_budget:g} s) spent before {what}; state in {self.out / STATE}: "
              "run the same command again to continue", flush=True)  # fmt: skip
        raise Paused(what)

    def need(self, seconds: float, what: str) -> None:
        """Pause now unless `seconds` (an estimate) fit in what is left of the call."""
        if self.left() < seconds:
            self.pause(what)


CALL = {"started": 0}  # training runs started in this call (one process), across bench.frontier's resolutions


def new_call() -> None:
    """A new call begins (bench.compare's and bench.frontier's main): nothing has started in it yet."""
    CALL["started"] = 0


def unit_seconds(a, key: str, max_steps: int, time_budget: float | None) -> float:
    """Seconds a fresh run and its evaluation will take: its time budget, or its steps at the calibrated rate,
    with 15% + 10 s for model set-up and validation, plus the longest evaluation so far (--eval-estimate first)."""
    progress = a.progress
    train_s = time_budget if time_budget else max_steps * progress.state.get("calib", {}).get(key, 0.0)
    return 1.15 * train_s + 10.0 + progress.state["eval_s"].get("per_model", a.eval_estimate)


def may_start(progress, need: float) -> bool:
    """Start a fresh run now? Its checkpoint stays on this machine (a later call on a fresh one has the state
    only), so a run starts when it and its evaluation fit in what is left of the call. The first run of a call
    starts whatever it needs: a later call would look the same (it could never start), and it makes progress,
    pausing at an epoch end if it needs more than a whole call (its evaluation then runs past the budget)."""
    return CALL["started"] == 0 or need <= progress.left()


def run_training(a, key: str, budget: str, max_steps: int, time_budget: float | None) -> dict:
    """Train one model; returns a row for quality_runs.csv (with the log rows under 'log' and the learning
    curve under 'curve'). Under --time-budget: a finished run is taken from the state, a paused one resumed."""
    progress, unit = getattr(a, "progress", None), f"{budget}/{key}"
    done = progress.state["runs"].get(unit) if progress else None
    if done is not None and not done.get("paused"):
        if unit in progress.state["evals"] or Path(done["checkpoint"]).is_file():
            evaluate_run(a, done)
            return done
        print(f"[compare] {done['checkpoint']} is gone (another machine?): {key.upper()} trains again", flush=True)
        done = None
    if done is not None and not Path(done["latest"]).is_file():
        print(f"[compare] {done['latest']} is gone (another machine?): {key.upper()}'s {BUDGET_LABELS[budget]} run "
              "starts again", flush=True)  # fmt: skip
        done = None
    out_dir = Path(a.work_dir) / budget / key  # per model: V4 and V4-nopos share a class (and checkpoint name)
    if progress:
        what = f"training {key.upper()} ({BUDGET_LABELS[budget]})"
        if not done and not may_start(progress, unit_seconds(a, key, max_steps, time_budget)):
            progress.pause(what)
        progress.need(1.0, what)
        CALL["started"] += 1
    print(f"[compare] {BUDGET_LABELS[budget]}: {'resuming' if done else 'training'} {key.upper()} for {max_steps} "
          "steps" + (f" or {time_budget:.1f} s" if time_budget else ""), flush=True)  # fmt: skip
    cfg = train_config(a, key, out_dir, max_steps, time_budget)
    if done:
        cfg.resume = "latest"
    s = train(cfg, curve=getattr(a, "curve", None))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if s["paused"]:
        latest = str(Path(s["checkpoint_dir"]) / f"{s['name']}_latest.pth")
        progress.state["runs"][unit] = {"paused": True, "steps": s["steps"], "latest": latest}
        progress.pause(f"the rest of {key.upper()}'s {BUDGET_LABELS[budget]} run (step {s['steps']})")
    log = pd.DataFrame(s["log"])
    per_step = log["time_per_step_s"].iloc[1:] if len(log) > 2 else log["time_per_step_s"]  # skip warm-up epoch
    row = {
        "budget": budget, "model": key, "params": s["params"], "steps": s["steps"], "target_steps": max_steps,
        "time_budget_s": time_budget or float("nan"), "train_time_s": s["train_time_s"],
        "ms_per_step": 1e3 * float(per_step.median()), "mean_ms_per_step": 1e3 * s["train_time_s"] / max(s["steps"], 1),
        "epoch_time_s": float(log["epoch_time_s"].mean()), "steps_per_epoch": int(log["steps"].max()),
        "peak_mem_mb": float(log["peak_mem_mb"].max()), "best_val": s["best_val"],
        "final_val": float(log["val_loss"].iloc[-1]),
        "checkpoint": str(Path(s["checkpoint_dir"]) / f"{s['name']}_best.pth"), "reused": False, "log": s["log"],
    }  # fmt: skip
    row["info"] = {"class": s["model_version"], "config": s["config"]}  # for the environment record
    row["curve"] = s["curve"]
    print(f"[compare] {key.upper()} {BUDGET_LABELS[budget]}: {row['steps']} steps in {row['train_time_s']:.1f} s "
          f"({row['mean_ms_per_step']:.1f} ms/step), peak {row['peak_mem_mb']:.0f} MB, best val {row['best_val']:.4f}",
          flush=True)  # fmt: skip
    if progress:
        progress.state["runs"][unit] = row
        progress.save()
        evaluate_run(a, row, now=True)  # trained in this call: its checkpoint need not outlive it
    return row


def evaluate_run(a, row: dict, now: bool = False) -> None:
    """Evaluate one run's best checkpoint right after its training (its EvalResult goes to the state), so that
    no checkpoint has to outlive the call that trained it: a later call on a fresh machine needs the state only.
    `now`: the run was trained in this call, so it is evaluated whatever is left of the budget (may_start let
    it start only if both fit, or as the call's first run)."""
    progress = a.progress
    unit, key = f"{row['budget']}/{row['model']}", row["model"]
    if unit in progress.state["evals"]:
        return
    if not now:
        progress.need(progress.state["eval_s"].get("per_model", a.eval_estimate), f"evaluating {unit}")
    print(f"[compare] evaluating {key.upper()}'s {BUDGET_LABELS[row['budget']]} checkpoint", flush=True)
    t0 = time.perf_counter()
    models = load_models({key: row["checkpoint"]}, a.device_obj, a.attn_backend, a.mixer_backend)
    progress.state["evals"][unit] = compact(run_evaluation(models, a.ecfg, a.device_obj))
    took = time.perf_counter() - t0
    progress.state["eval_s"]["per_model"] = max(took, progress.state["eval_s"].get("per_model", 0.0))
    if a.device_obj.type == "cuda":
        torch.cuda.empty_cache()
    progress.save()


def calibrate(a, device) -> dict:
    """Seconds per training step of each model: a few real steps (models.train's train_step: forward, backward,
    clip, AdamW; synced) on a real batch, plus the data loading of one batch. Sizes the equal-time schedules."""
    images = load_images(a.data, "train")
    ds = SparseFieldDataset(images, a.resolution, 4 * a.batch_size, a.observed_frac, a.seed)
    loader = DeviceBatches(ds, a.batch_size, device)  # the training loop's data path
    batches = list(loader.epoch(0))  # first pass: allocations and lazy init, not timed
    sync(device)
    t0 = time.perf_counter()
    batches = list(loader.epoch(1))
    sync(device)
    data_s = (time.perf_counter() - t0) / len(batches)
    out = {}
    for key in a.models:
        torch.manual_seed(a.seed)
        model = build_model(key, a.preset, model_overrides(a, key)).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=a.lr)
        for i in range(a.calib_steps + 2):  # 2 warm-up steps
            if i == 2:
                sync(device)
                t0 = time.perf_counter()
            loss, _ = train_step(partial(flow_matching_loss, model, batches[i % len(batches)]), opt, device)
            loss.item()
        sync(device)
        out[key] = (time.perf_counter() - t0) / a.calib_steps + data_s
        print(f"[compare] calibration: {key.upper()} {1e3 * out[key]:.1f} ms/step "
              f"(data loading {1e3 * data_s:.1f} ms)", flush=True)  # fmt: skip
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def train_equal_time(a, sec_per_step: dict) -> list[dict]:
    """T seconds each; each model's cosine schedule is sized to the steps it should make in T
    (SAFETY · T / calibrated s/step), and T is also a hard stop."""
    T = float(a.seconds)
    runs = []
    for key in a.models:
        planned = max(1, math.floor(SAFETY * T / sec_per_step[key]))
        runs.append(run_training(a, key, "equal_time", planned, T))
    return runs


def train_equal_steps(a, time_runs: list[dict]) -> tuple[list[dict], int, str]:
    """Equal steps after equal time. Returns every run row (equal steps first), S, and how S was chosen.

    Default: S = the steps the slowest model made in T; its run is reused (so are those of the models that made
    exactly S steps), and only the faster models are trained again, for S steps.
    """
    runs = {(r["model"], "equal_time"): r for r in time_runs}
    steps = {key: runs[key, "equal_time"]["steps"] for key in a.models}
    if a.steps:
        S, todo = a.steps, list(a.models)
        rule = f"given: --steps {S}"
    else:
        slowest = min(a.models, key=lambda k: steps[k])
        S = steps[slowest]
        todo = [k for k in a.models if steps[k] != S]
        which = "slower" if len(a.models) == 2 else "slowest"
        rule = (f"the steps the {which} model ({slowest.upper()}) made in the equal-time run, whose run is reused as "
                "its equal-steps run")  # fmt: skip
    for key in a.models:
        if key in todo:
            runs[key, "equal_steps"] = run_training(a, key, "equal_steps", S, None)
        else:
            runs[key, "equal_steps"] = {**runs[key, "equal_time"], "budget": "equal_steps", "reused": True}
    return [runs[k, b] for b in BUDGETS for k in a.models], S, rule


def merge_results(result: EvalResult, earlier: EvalResult | None, keys: list[str], models) -> EvalResult:
    """Add the rows, timings and grid panels of models `keys` from an earlier evaluation (same checkpoint);
    the grid columns in `models` order."""
    if not keys:
        return result
    take = lambda df: df[df["method"].isin(keys)]
    panels = {res: order_panels({**cols, **{t: v for t, v in earlier.panels[res].items()
                                             if t.split()[0].lower() in keys}}, models)
              for res, cols in result.panels.items()}  # fmt: skip
    return EvalResult(
        pd.concat([result.per_image, take(earlier.per_image)], ignore_index=True),
        pd.concat([result.timing, take(earlier.timing)], ignore_index=True),
        panels, result.train_res, result.observed_frac,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Environment record
# ----------------------------------------------------------------------------------------------


def environment_record(a, device, runs: list[dict], S: int, rule: str, calib: dict, wall_s: float, phases) -> dict:
    """bench.env's record (hardware, software, commit, `date`) plus this run's budgets, settings and models."""
    models = {}
    for r in runs:
        models.setdefault(r["budget"], {})[r["model"]] = {
            **r["info"], "params": r["params"], "steps": r["steps"], "checkpoint": r["checkpoint"],
        }  # fmt: skip
    try:
        from models.mamba import resolve_mixer_backend

        mixer = resolve_mixer_backend(a.mixer_backend)
    except ConfigError as e:
        mixer = f"unavailable ({e})"
    return environment(
        device,
        command=" ".join([Path(sys.executable).name, "-m", "bench.compare", *sys.argv[1:]]),
        mixer_backend=mixer,
        env_overrides={k: os.environ[k] for k in ENV_OVERRIDES if os.environ.get(k)},
        budgets={
            "equal_time_s": a.seconds,
            "equal_steps": S,
            "equal_steps_rule": rule,
            "calibrated_ms_per_step": {k: 1e3 * v for k, v in calib.items()},
        },
        settings=settings_of(a),
        models=models,
        wall_clock_s=wall_s,
        phases=phases,  # one entry per process: the whole run, or --phase time then --phase steps
    )


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def eval_config(a) -> EvalConfig:
    return EvalConfig(
        resolutions=parse_resolutions(a.resolutions), num_samples=a.num_samples, steps=a.eval_steps,
        method=a.method, mean_draws=a.mean_draws, batch=a.eval_batch, seed=a.seed, data=a.data,
        show=a.show, progress=a.verbose,
    )  # fmt: skip


def check_args(a) -> None:
    """Every input is checked before anything is trained or written."""
    check_resolution(a.resolution)
    check_fraction(a.observed_frac)
    names = ("num_samples", "eval_steps", "mean_draws", "eval_batch", "train_samples", "val_samples", "calib_steps")
    for name in names:
        if getattr(a, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.steps < 0:
        raise ConfigError(f"--steps must be >= 0 (0: automatic), got {a.steps}")
    if not a.seconds > 0:
        raise ConfigError(f"--seconds must be > 0, got {a.seconds}")
    if a.train_samples < a.batch_size:
        raise ConfigError(f"--train-samples ({a.train_samples}) must be >= --batch-size ({a.batch_size})")
    res = parse_resolutions(a.resolutions)
    if res and min(res) < a.resolution:
        raise ConfigError(f"resolutions must be >= the training resolution {a.resolution}, got {min(res)}")
    if a.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {a.batch_size}")
    if not a.lr > 0:
        raise ConfigError(f"--lr must be > 0, got {a.lr}")
    check_model_list(a)
    for key in a.models:  # the model configs (flags + the spec's env vars): ConfigError on a bad combination
        build_model(key, a.preset, model_overrides(a, key))
    device = pick_device(a.device)
    for key, estimate in memory_estimates(a, device).items():
        check_memory(estimate, a.batch_size, a.resolution, device, f"a {key} training step on {device.type}")


def check_model_list(a) -> None:
    """--models (known, each once, at least two) and --baseline (one of them; default: v1 if listed, else the
    first), filled in on `a`."""
    a.models, a.baseline = check_models(a.models, a.baseline)
    if len(a.models) < 2:
        raise ConfigError(f"--models needs a baseline and at least one model to compare with it, got {a.models}")


def memory_estimates(a, device) -> dict:
    """{model: estimate(batch, resolution) → bytes} of one training step of each of --models, as models.train
    checks it."""
    out = {}
    for key in a.models:
        model = build_model(key, a.preset, model_overrides(a, key))
        params, samples = sum(p.numel() for p in model.parameters()), a.train_samples + a.val_samples
        out[key] = functools.partial(_step_bytes, type(model), model.cfg, device.type, params, samples)
    return out


def _step_bytes(cls, cfg, device_type, params, samples, batch, res) -> int:
    return run_bytes(cls, cfg, res, batch, True, device_type, params, samples)


def default_batch_size(a, device) -> int:
    """$BATCH_SIZE, else 64 on a GPU; on a CPU the largest power of two <= models.train's CPU_BATCH that fits
    every one of --models (announced)."""
    from models.train import CPU_BATCH

    env = env_number("BATCH_SIZE", int, None)
    if env is not None or device.type == "cuda" or a.quick:
        return env or 64
    fits = [fit_batch(est, a.resolution, device, CPU_BATCH) or 1 for est in memory_estimates(a, device).values()]
    print(f"[compare] CPU run: --batch-size {min(fits)} (the GPU default 64 is for GPUs; pass --batch-size to "
          "choose)", flush=True)  # fmt: skip
    return min(fits)


STATE = "quality_state.pt"  # --phase time → --phase steps: everything the second process needs (no checkpoints)
SAME_SETTINGS = ("models", "baseline", "seconds", "steps", "calib_steps", "preset", "resolution", "observed_frac",
                 "batch_size", "lr", "train_samples", "val_samples", "seed", "data", "attn_backend", "mixer_backend",
                 *MODEL_FLAGS,
                 "num_samples", "eval_steps", "method", "mean_draws", "eval_batch", "resolutions", "show",
                 "curve_every", "curve_samples", "steps_per_epoch")  # fmt: skip


def phase_record(t0: float) -> dict:
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "git_commit": git_commit(),
            "wall_clock_s": time.perf_counter() - t0}  # fmt: skip


def compact(result: EvalResult) -> EvalResult:
    """The grid panels the report draws (the training and the highest resolution) as uint8: what the state keeps
    of a run's evaluation stays small enough to carry between GPU calls (~1 MB per model at 128²)."""
    keep = {result.train_res, max(result.panels)}
    panels = {res: {t: [np.clip(np.round(255 * np.asarray(x, dtype=np.float32)), 0, 255).astype(np.uint8) for x in v]
                    for t, v in cols.items()} for res, cols in result.panels.items() if res in keep}  # fmt: skip
    return EvalResult(portable(result.per_image), portable(result.timing), panels, result.train_res,
                      result.observed_frac)  # fmt: skip


def portable(df: pd.DataFrame) -> pd.DataFrame:
    """Text as plain Python objects (values, column labels and the index): pandas 3 pickles its string dtypes
    with their storage (pyarrow on the GPU machine), and a state saved there would not load where pyarrow is
    absent (this CPU, a user's laptop)."""

    def text(t) -> bool:
        return isinstance(t, pd.StringDtype) or (isinstance(t, pd.ArrowDtype) and pd.api.types.is_string_dtype(t))

    out = df.astype({c: object for c, t in df.dtypes.items() if text(t)})
    if text(out.columns.dtype):
        out.columns = pd.Index(list(out.columns), dtype=object)
    if text(out.index.dtype):
        out.index = pd.Index(list(out.index), dtype=object, name=out.index.name)
    return out


def combine_results(parts: list[EvalResult], keys: list[str], models) -> EvalResult:
    """One evaluation per model (each with the floors: the same crops, so the same numbers) → one EvalResult:
    the floors of the first, every model's own rows, timings and grid columns (in `models` order)."""
    first = parts[0]
    rows = [first.per_image] + [p.per_image[p.per_image["method"] == k] for p, k in zip(parts[1:], keys[1:])]
    timing = [first.timing] + [p.timing[p.timing["method"] == k] for p, k in zip(parts[1:], keys[1:])]
    panels = {}
    for res, cols in first.panels.items():
        cols = dict(cols)
        for p, k in zip(parts[1:], keys[1:]):
            cols.update({t: v for t, v in p.panels[res].items() if t.split()[0].lower() == k})
        panels[res] = order_panels(cols, models)
    return EvalResult(pd.concat(rows, ignore_index=True), pd.concat(timing, ignore_index=True), panels,
                      first.train_res, first.observed_frac)  # fmt: skip


def evaluate_budget(a, device, ecfg, runs, budget, earlier, out, S, t0) -> EvalResult:
    """One budget's evaluation (each trained model's, from evaluate_run; `earlier` rows for a reused run) and its
    sample grids."""
    todo = [r for r in runs if r["budget"] == budget and not r["reused"]]
    reused = [r["model"] for r in runs if r["budget"] == budget and r["reused"]]
    print(f"[compare] the {BUDGET_LABELS[budget]} evaluation of {', '.join(r['model'] for r in todo).upper() or '-'} "
          f"({time.perf_counter() - t0:.0f} s so far)", flush=True)  # fmt: skip
    if todo:
        for r in todo:
            evaluate_run(a, r)  # done already, unless its training ended the call
        evals = a.progress.state["evals"]
        keys = [r["model"] for r in todo]
        result = combine_results([evals[f"{budget}/{k}"] for k in keys], keys, a.models)
        result = merge_results(result, earlier, reused, a.models)
    else:  # every equal-time run made the same number of steps: they are the equal-steps runs too
        result = earlier
    note = f"; {BUDGET_LABELS[budget]}" + (f" ({S} steps)" if budget == "equal_steps" else f" ({a.seconds:g} s)")
    write_grids(result, out, "quality" if budget == "equal_steps" else "quality_equal_time", note)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def load_state(out: Path, a) -> dict:
    path = out / STATE
    if not path.is_file():
        raise ConfigError(f"{path} is missing: run python -m bench.compare --phase time --out {out} first")
    try:
        state = torch.load(path, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same one-line error
        raise ConfigError(f"{path} is unreadable ({type(e).__name__}): run --phase time again") from None
    saved = state["settings"]
    diff = [f"--{k.replace('_', '-')} {saved.get(k)!r} vs {getattr(a, k)!r}" for k in SAME_SETTINGS
            if saved.get(k) != getattr(a, k)]  # fmt: skip
    if diff:
        raise ConfigError(f"--phase steps (or a continued --time-budget run) must use the settings of the run in "
                          f"{path}: " + "; ".join(diff))  # fmt: skip
    return state


def stale_state(out: Path, state: dict) -> bool:
    """True when <out>'s finished report already holds everything in this state: quality_env.json's parts start
    with the state's parts and add the last one. A finished run deletes its state, so a stale one is a copy carried
    back in (e.g. an old archive extracted over the folder), and continuing from it would redo the last part."""
    env = out / "quality_env.json"
    if not ((out / "quality.md").is_file() and env.is_file()):
        return False
    try:
        done = json.loads(env.read_text()).get("phases") or []
    except (OSError, ValueError):
        return False

    def key(ph):
        return ph.get("date"), ph.get("git_commit")

    held = [key(ph) for ph in state.get("phases", [])]
    return len(done) > len(held) and [key(ph) for ph in done[: len(held)]] == held


def settings_of(a) -> dict:
    """The run's settings (the flags), without the live objects bench.compare hangs on `a`."""
    return {k: v for k, v in vars(a).items() if k not in ("progress", "curve", "ecfg", "device_obj")}


def prepare(argv=None):
    """Parse and check every flag (nothing trained or written yet) → (a, out, device), or None for --report-only."""
    p = build_parser()
    first = p.parse_args(argv)
    if first.report_only:
        print(f"wrote {write_report(first.out or 'results')}")
        return None
    on_gpu = pick_device(first.device).type == "cuda"
    out = Path(first.out or ("runs/quick" if first.quick else "results" if on_gpu else "results/cpu"))
    if first.quick:
        p.set_defaults(**QUICK)
    p.set_defaults(out=str(out), work_dir=str(out / "runs") if first.quick else "runs/compare")
    a = p.parse_args(argv)
    a.device = str(pick_device(a.device)) if a.device == "auto" else a.device
    guard_committed_results(out, pick_device(a.device), ["quality.md", "quality.csv"])
    check_model_list(a)  # before the CPU batch is fitted to each model
    if a.dropout is None and not os.environ.get("DROPOUT"):
        a.dropout = 0.0  # minutes of training: no dropout for either model (the spec's V4 uses 0.1 for 1,000 epochs)
    a.lr = env_number("LR", float, 1e-3) if a.lr is None else a.lr
    a.batch_size = default_batch_size(a, pick_device(a.device)) if a.batch_size is None else a.batch_size
    a.verbose = a.verbose or (not a.quick and not on_gpu)  # CPU runs are long: show their progress
    check_args(a)
    return a, out, pick_device(a.device)


def main_compare(argv=None) -> None:
    new_call()
    prepared = prepare(argv)
    if prepared is not None:
        try:
            run_compare(*prepared)
        except Paused:
            pass  # said, and saved: the same command continues


def run_compare(a, out: Path, device) -> Path | None:
    """The whole comparison (or what is left of it under --time-budget / --phase). Returns quality.md when done."""
    resumable = a.phase == "steps" or a.time_budget
    state = load_state(out, a) if a.phase == "steps" or (resumable and (out / STATE).is_file()) else None
    if state is not None and stale_state(out, state):
        raise ConfigError(f"{out / STATE} is older than the finished report in {out} (quality_env.json holds its "
                          f"parts and a later one): the run is done; --report-only re-renders it, or delete the state "
                          f"file to train again")  # fmt: skip
    if state is not None:
        print(f"[compare] continuing from {out / STATE}", flush=True)
    if a.quick and device.type == "cpu":
        torch.set_num_threads(1)  # tiny models: one thread is as fast, and immune to oversubscribed CI cores
    a.ecfg = ecfg = eval_config(a)
    a.device_obj = device
    a.progress = progress = Progress(out, a, state)
    state = progress.state
    a.curve = None
    if a.curve_every:
        from bench.curves import HeldOutCurve

        a.curve = HeldOutCurve(a.data, a.resolution, a.observed_frac, a.curve_samples, min(4, a.mean_draws),
                               a.eval_batch, a.seed, device)  # fmt: skip

    # phase 1: calibration, the equal-time runs and their evaluation
    if "calib" not in state:
        state["calib"] = calibrate(a, device)
        progress.save()
    calib = state["calib"]
    if "time_runs" not in state:
        state["time_runs"] = train_equal_time(a, calib)
        progress.save()
    results = {}
    if "equal_time" not in state:
        state["equal_time"] = evaluate_budget(a, device, ecfg, state["time_runs"], "equal_time", None, out, None,
                                              progress.t0)  # fmt: skip
        if a.phase == "time":
            state["phases"].append({"phase": "time", **phase_record(progress.t0)})
            progress.save()
            print(f"[compare] phase 'time' done in {time.perf_counter() - progress.t0:.0f} s; state in "
                  f"{out / STATE}: run --phase steps --out {out} (same settings) to finish", flush=True)  # fmt: skip
            return None
        progress.save()
    results["equal_time"] = state["equal_time"]

    # phase 2: the equal-steps runs, their evaluation, the data files and the report
    runs, S, rule = train_equal_steps(a, state["time_runs"])
    results["equal_steps"] = evaluate_budget(a, device, ecfg, runs, "equal_steps", results["equal_time"], out, S,
                                             progress.t0)  # fmt: skip
    last = "steps" if a.phase == "steps" else "part" if state["phases"] else "all"
    phases = [*state["phases"], {"phase": last, **phase_record(progress.t0)}]
    return write_outputs(a, out, device, runs, results, calib, S, rule, phases)


def write_outputs(a, out, device, runs, results, calib, S, rule, phases) -> Path:
    per_image = [results[b].per_image.assign(budget=b) for b in ("equal_time", "equal_steps")]
    summaries = [
        summarize(results[b].per_image, results[b].timing).assign(budget=b) for b in ("equal_time", "equal_steps")
    ]
    train_rows = [{"budget": r["budget"], "model": r["model"], "reused": r["reused"], **row}
                  for r in runs for row in r["log"]]  # fmt: skip
    curve_rows = [{"budget": r["budget"], "model": r["model"], "reused": r["reused"], "resolution": a.resolution,
                   **row} for r in runs for row in r.get("curve") or []]  # fmt: skip

    first_cols = ["budget", "method", "estimator", "resolution"]
    summary = pd.concat(summaries, ignore_index=True)
    atomic_to_csv(summary[first_cols + [c for c in summary.columns if c not in first_cols]], out / "quality.csv")
    atomic_to_csv(pd.concat(per_image, ignore_index=True), out / "quality_per_image.csv")
    skip = ("log", "info", "curve")
    atomic_to_csv(pd.DataFrame([{k: v for k, v in r.items() if k not in skip} for r in runs]), out / "quality_runs.csv")
    atomic_to_csv(pd.DataFrame(train_rows), out / "quality_train.csv")
    if curve_rows:
        atomic_to_csv(pd.DataFrame(curve_rows), out / "quality_curve.csv")
    wall = sum(ph["wall_clock_s"] for ph in phases)
    env = environment_record(a, device, runs, S, rule, calib, wall, phases)
    atomic_write_text(out / "quality_env.json", json.dumps(env, indent=2, default=str) + "\n")
    report = write_report(out)
    (out / STATE).unlink(missing_ok=True)  # consumed
    print(f"[compare] done in {wall:.0f} s: {report}")
    print(report.read_text().split("## Verdict")[1].split("The verdict is computed")[0].strip())
    return report


def build_parser() -> ArgParser:
    p = ArgParser(prog="bench.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=writable_dir, default=None, help="where quality.md and its data go (default: "
                   "results/ on a GPU, results/cpu/ on a CPU; --quick: runs/quick/)")  # fmt: skip
    p.add_argument("--work-dir", type=writable_dir, default=None, help="checkpoints (default: runs/compare/, "
                   "git-ignored)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="CI smoke: tiny models, 16², 2 images, < 1 min on a CPU")
    p.add_argument("--report-only", action="store_true", help="rebuild quality.md from the saved data in --out")
    p.add_argument("--phase", default="all", choices=("all", "time", "steps"),
                   help="all: the whole run; time: calibration + equal-time runs + their evaluation, saved to "
                   f"<out>/{STATE}; steps: the rest, from that file (two processes, e.g. two GPU calls)")  # fmt: skip
    g = p.add_argument_group("budgets")
    g.add_argument(
        "--seconds",
        type=positive_float,
        default=180.0,
        help="equal-time budget: seconds of training per model (default 180)",
    )
    g.add_argument(
        "--steps",
        type=nonneg_int,
        default=0,
        help="equal-steps budget (0: the steps the slowest model made in --seconds; its run is reused)",
    )
    g.add_argument("--calib-steps", type=positive_int, default=10, help="timed steps per model that size the schedules")
    g.add_argument("--time-budget", type=nonneg_float, default=0.0, help="seconds of this call (0: no limit): "
                   f"training pauses at an epoch end past it, the progress is kept in <out>/{STATE} and the same "
                   "command run again continues (e.g. GPU calls of < 10 min)")  # fmt: skip
    g.add_argument("--eval-estimate", type=positive_float, default=120.0, help="seconds one model's evaluation "
                   "is assumed to take until one has been timed (then the longest so far): under --time-budget an "
                   "evaluation starts only if it fits")  # fmt: skip
    g = p.add_argument_group("learning curves")
    g.add_argument("--curve-every", type=nonneg_int, default=0, help="held-out PSNR (posterior mean) every this "
                   "many steps, to quality_curve.csv (0: none)")  # fmt: skip
    g.add_argument("--curve-samples", type=positive_int, default=32, help="held-out crops of each curve point (the "
                   "first ones of the evaluation's)")  # fmt: skip
    g = p.add_argument_group("models")
    g.add_argument("--models", nargs="+", type=model_name, default=["v1", "v4"], metavar="MODEL",
                   help="the models to train and compare, in this order (default: v1 v4)")  # fmt: skip
    g.add_argument("--baseline", type=model_name, default=None, help="the model every other one is paired with "
                   "(default: v1 if listed, else the first)")  # fmt: skip
    g = p.add_argument_group("training (the same for every model)")
    g.add_argument("--preset", default="default", help="model sizes: default (the spec) | small | tiny")
    g.add_argument("--resolution", type=resolution, default=32)
    g.add_argument("--observed-frac", type=fraction, default=0.2)
    g.add_argument("--batch-size", type=positive_int, default=None, help="default: $BATCH_SIZE, or 64 on a GPU "
                   "and what fits (<= 8) on a CPU")  # fmt: skip
    g.add_argument("--lr", type=positive_float, default=None, help="default: $LR or 1e-3 (short budget; the "
                   "spec's is 1e-4)")  # fmt: skip
    g.add_argument("--train-samples", type=positive_int, default=16384, help="crops per training epoch")
    g.add_argument("--steps-per-epoch", type=positive_int, default=None, help="cap on steps per epoch (each epoch "
                   "a fresh random subset of the crops): the granularity of validation, checkpoints and "
                   "--time-budget pauses (default: every crop once)")  # fmt: skip
    g.add_argument("--val-samples", type=positive_int, default=256)
    g.add_argument("--seed", type=nonneg_int, default=0)
    g.add_argument("--data", type=existing_dir, default=None, help="folder of images (default: scikit-image photos)")
    g.add_argument("--attn-backend", default="sdpa", help="seed | sdpa | triton")
    g.add_argument("--mixer-backend", default="auto", help="V1: auto | mamba_ssm | reference")
    for flag, cast in (("--d-model", positive_int), ("--num-layers", positive_int), ("--num-heads", positive_int),
                       ("--dim-feedforward", positive_int), ("--dropout", dropout_rate)):  # fmt: skip
        g.add_argument(flag, type=cast, default=None, help="ablation override (also the spec's env vars)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--num-samples", "--num_samples", dest="num_samples", type=positive_int, default=96,
                   help="held-out crops")  # fmt: skip
    g.add_argument("--eval-steps", type=positive_int, default=EvalConfig.steps, help="ODE steps of the sampler")
    g.add_argument("--method", default=EvalConfig.method, choices=METHODS)
    g.add_argument(
        "--mean-draws",
        type=positive_int,
        default=EvalConfig.mean_draws,
        help="noise draws of the posterior-mean estimate",
    )
    g.add_argument("--eval-batch", type=positive_int, default=EvalConfig.batch, help="images per forward pass")
    g.add_argument("--resolutions", default="64,96,128", help="zero-shot SR resolutions")
    g.add_argument("--show", type=nonneg_int, default=EvalConfig.show, help="images in the sample grids")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--verbose", action="store_true", help="progress bars (always on for CPU runs but --quick)")
    return p


def main(argv=None) -> int:
    return cli_main(main_compare, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
