"""V1 (Mamba) vs V4 (Transformer) under equal budgets → results/quality.md, with a computed verdict.

    python -m bench.compare                          # the committed run: one H200, ~13 min in all
    python -m bench.compare --quick --out /tmp/q     # CI smoke: tiny models on the CPU, < 1 min
    NUM_HEADS=4 python -m bench.compare --out results/heads4     # the spec's ablations pass through
    python -m bench.compare --phase time             # the same run in two processes (two GPU calls of
    python -m bench.compare --phase steps            #   < 10 min): the state goes via quality_state.pt

Both models see the same data (crops, masks, order), seed, batch and learning-rate schedule shape, under two
budgets:

  equal time   T seconds of training each (--seconds, default 180). Each model's cosine schedule is sized to
               the steps it makes in T, from a short calibration (a few timed steps of each model); T is
               also a hard stop.
  equal steps  S optimizer steps each. Default: S = the steps the SLOWER model made in T, so that model's
               equal-time run IS its equal-steps run (reused) and only the faster model trains again, for S
               steps. The whole training thus costs at most 3T, whatever the GPU's speed. --steps S: both fresh.

Then both budgets are evaluated on held-out crops (bench/evaluate.py: the training resolution plus zero-shot
64/96/128, posterior mean and one sampler draw, the interpolation floors), and the spec's three scenarios are
decided from the numbers. Data first (CSV/JSON), then the report and figures from the saved data:

  quality.csv (summary rows), quality_per_image.csv, quality_runs.csv (training cost), quality_train.csv
  (loss logs), quality_env.json, quality.md, quality_samples_res<r>.png / _sr<R>.png (equal steps;
  quality_equal_time_samples_*.png: equal time), quality_loss.png
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import torch

from bench.env import git_commit, package_version
from bench.evaluate import (
    LABELS,
    EvalConfig,
    EvalResult,
    floor_margin,
    load_models,
    paired_delta,
    paired_differences,
    parse_resolutions,
    quality_table,
    run_evaluation,
    summarize,
    write_grids,
)
from bench.measure import sync
from models import MODELS, VARIANTS, build_model
from models.common import ConfigError
from models.data import DeviceBatches, SparseFieldDataset, check_fraction, check_resolution, image_paths, load_images
from models.sample import METHODS
from models.train import autocast_for, env_number, flow_matching_loss, train
from models.train import parse_args as train_parse_args
from models.utils import (
    ArgParser,
    atomic_savefig,
    atomic_to_csv,
    atomic_torch_save,
    atomic_write_text,
    cli_main,
    pick_device,
)
from models.validate import (
    check_memory,
    dropout_rate,
    existing_dir,
    fit_batch,
    fraction,
    guard_committed_results,
    nonneg_int,
    positive_float,
    positive_int,
    resolution,
    run_bytes,
    writable_dir,
)

MODEL_KEYS = ("v1", "v4")
CKPT = {"v1": "checkpoints_mamba/mamba_best.pth", "v4": "checkpoints_transformer_v4/transformer_v4_best.pth"}
BUDGETS = ("equal_steps", "equal_time")
BUDGET_LABELS = {"equal_steps": "equal steps", "equal_time": "equal wall-clock"}
WIN_DB = 2.0  # Scenario 1: "Transformer wins", the spec's +2–4 dB (its lower end)
TIE_DB = 1.0  # Scenario 2: "similar PSNR", the spec's < ~1 dB (its example: +0.5 dB)
EFF_RATIO = 1.2  # Scenario 2's "MAMBA wins on efficiency": V4 needs >= 1.2x V1's time per step (spec: 5-10x)
MODEL_FLAGS = ("d_model", "num_layers", "num_heads", "dim_feedforward", "dropout")  # ablation overrides

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
    """The ablation flags (None: preset / the spec's env vars) and backends, as models.build_model takes them."""
    over = {f: getattr(a, f) for f in MODEL_FLAGS if not (key == "v1" and f == "dim_feedforward")}  # V1: no FFN
    over["attn_backend"] = a.attn_backend
    if key == "v1":
        over["mixer_backend"] = a.mixer_backend
    return over


def train_argv(a, key: str, out_dir: Path, max_steps: int, time_budget: float | None) -> list[str]:
    """models.train flags for one run; everything but the budget is the same for both models."""
    argv = ["--model", key, "--preset", a.preset, "--resolution", str(a.resolution),
            "--observed-frac", str(a.observed_frac), "--batch-size", str(a.batch_size), "--lr", str(a.lr),
            "--epochs", str(10**9), "--max-steps", str(max_steps), "--train-samples", str(a.train_samples),
            "--val-samples", str(a.val_samples), "--seed", str(a.seed), "--device", a.device,
            "--attn-backend", a.attn_backend, "--mixer-backend", a.mixer_backend, "--out-dir", str(out_dir),
            "--save-every", "0", "--overwrite"]  # fmt: skip
    if time_budget:
        argv += ["--time-budget", f"{time_budget:.3f}"]
    if a.data:
        argv += ["--data", a.data]
    if not a.verbose:
        argv.append("--quiet")
    for field in MODEL_FLAGS:
        value = getattr(a, field)
        if value is not None and not (key == "v1" and field == "dim_feedforward"):  # V1 has no FFN
            argv += [f"--{field.replace('_', '-')}", str(value)]
    return argv


def run_training(a, key: str, budget: str, max_steps: int, time_budget: float | None) -> dict:
    """Train one model; returns a row for quality_runs.csv (with the log rows under 'log')."""
    out_dir = Path(a.work_dir) / budget
    print(f"[compare] {BUDGET_LABELS[budget]}: training {key.upper()} for {max_steps} steps"
          + (f" or {time_budget:.1f} s" if time_budget else ""), flush=True)  # fmt: skip
    s = train(train_parse_args(train_argv(a, key, out_dir, max_steps, time_budget)))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    log = pd.DataFrame(s["log"])
    per_step = log["time_per_step_s"].iloc[1:] if len(log) > 2 else log["time_per_step_s"]  # skip warm-up epoch
    row = {
        "budget": budget, "model": key, "params": s["params"], "steps": s["steps"], "target_steps": max_steps,
        "time_budget_s": time_budget or float("nan"), "train_time_s": s["train_time_s"],
        "ms_per_step": 1e3 * float(per_step.median()), "mean_ms_per_step": 1e3 * s["train_time_s"] / max(s["steps"], 1),
        "epoch_time_s": float(log["epoch_time_s"].mean()), "steps_per_epoch": int(log["steps"].max()),
        "peak_mem_mb": float(log["peak_mem_mb"].max()), "best_val": s["best_val"],
        "final_val": float(log["val_loss"].iloc[-1]), "checkpoint": str(out_dir / CKPT[key]), "reused": False,
        "log": s["log"],
    }  # fmt: skip
    row["info"] = {"class": s["model_version"], "config": s["config"]}  # for the environment record
    print(f"[compare] {key.upper()} {BUDGET_LABELS[budget]}: {row['steps']} steps in {row['train_time_s']:.1f} s "
          f"({row['mean_ms_per_step']:.1f} ms/step), peak {row['peak_mem_mb']:.0f} MB, best val {row['best_val']:.4f}",
          flush=True)  # fmt: skip
    return row


def calibrate(a, device) -> dict:
    """Seconds per training step of each model: a few real steps (forward, backward, clip, AdamW, synced)
    on a real batch, plus the data loading of one batch. Sizes the equal-time schedules."""
    images = load_images(a.data, "train")
    ds = SparseFieldDataset(images, a.resolution, 4 * a.batch_size, a.observed_frac, a.seed)
    loader = DeviceBatches(ds, a.batch_size, device)  # the training loop's data path
    batches = list(loader.epoch(0))  # first pass: allocations and lazy init, not timed
    sync(device)
    t0 = time.perf_counter()
    batches = list(loader.epoch(1))
    sync(device)
    data_s = (time.perf_counter() - t0) / len(batches)
    amp = device.type == "cuda"
    out = {}
    for key in MODEL_KEYS:
        torch.manual_seed(a.seed)
        model = build_model(key, a.preset, model_overrides(a, key)).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=a.lr)
        for i in range(a.calib_steps + 2):  # 2 warm-up steps
            if i == 2:
                sync(device)
                t0 = time.perf_counter()
            with autocast_for(device, amp):
                loss = flow_matching_loss(model, batches[i % len(batches)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
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
    for key in MODEL_KEYS:
        planned = max(1, math.floor(SAFETY * T / sec_per_step[key]))
        runs.append(run_training(a, key, "equal_time", planned, T))
    return runs


def train_equal_steps(a, time_runs: list[dict]) -> tuple[list[dict], int, str]:
    """Equal steps after equal time. Returns all four run rows, S, and how S was chosen.

    Default: S = the steps the slower model made in T; that run is reused, and only the faster model is trained
    again, for S steps. So the whole training costs at most 3T, whatever the hardware's speed.
    """
    runs = {(r["model"], "equal_time"): r for r in time_runs}
    steps = {key: runs[key, "equal_time"]["steps"] for key in MODEL_KEYS}
    if a.steps:
        S, todo = a.steps, list(MODEL_KEYS)
        rule = f"given: --steps {S}"
    else:
        slower = min(MODEL_KEYS, key=lambda k: steps[k])
        S = steps[slower]
        todo = [k for k in MODEL_KEYS if steps[k] != S]
        rule = (f"the steps the slower model ({slower.upper()}) made in the equal-time run, whose run is reused as "
                "its equal-steps run")  # fmt: skip
    for key in MODEL_KEYS:
        if key in todo:
            runs[key, "equal_steps"] = run_training(a, key, "equal_steps", S, None)
        else:
            runs[key, "equal_steps"] = {**runs[key, "equal_time"], "budget": "equal_steps", "reused": True}
    return [runs[k, b] for b in BUDGETS for k in MODEL_KEYS], S, rule


def merge_results(result: EvalResult, earlier: EvalResult | None, keys: list[str]) -> EvalResult:
    """Add the rows, timings and grid panels of models `keys` from an earlier evaluation (same checkpoint)."""
    if not keys:
        return result
    take = lambda df: df[df["method"].isin(keys)]
    panels = {res: {**cols, **{t: v for t, v in earlier.panels[res].items() if t.split()[0].lower() in keys}}
              for res, cols in result.panels.items()}  # fmt: skip
    return EvalResult(
        pd.concat([result.per_image, take(earlier.per_image)], ignore_index=True),
        pd.concat([result.timing, take(earlier.timing)], ignore_index=True),
        panels, result.train_res, result.observed_frac,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# The verdict (computed from the saved numbers)
# ----------------------------------------------------------------------------------------------


def _get(df, **where):
    for k, v in where.items():
        df = df[df[k] == v]
    return df.iloc[0] if len(df) else None


def verdict(
    summary: pd.DataFrame,
    per_image: pd.DataFrame,
    runs: pd.DataFrame,
    train_res: int,
    photo_names: list[str] | None = None,
) -> dict:
    """Which of the spec's scenarios the numbers support. Quality: equal steps, posterior mean (see Method)."""
    budget, est = "equal_steps", "mean"
    delta = paired_delta(per_image[per_image["budget"] == budget], estimator=est).set_index("resolution")
    if train_res not in delta.index:
        return {"scenario": "n/a", "headline": "Needs both V1 and V4 results.", "lines": [], "caveats": []}
    res = sorted(delta.index)
    hi = res[-1]
    d0, s0, n = float(delta.loc[train_res, "delta"]), float(delta.loc[train_res, "sem"]), int(delta.loc[train_res, "n"])
    dh = float(delta.loc[hi, "delta"])
    run = {k: _get(runs, budget=budget, model=k) for k in MODEL_KEYS}
    step_ratio = run["v4"]["ms_per_step"] / run["v1"]["ms_per_step"]
    mem_ratio = run["v4"]["peak_mem_mb"] / run["v1"]["peak_mem_mb"]
    trend = f"{d0:+.2f} dB at {train_res}² → {dh:+.2f} dB at {hi}²"

    if d0 >= WIN_DB and (hi == train_res or dh >= WIN_DB):
        scenario, headline = "1", f"Scenario 1 — Transformer wins on quality (V4 − V1 = {trend})."
    elif d0 >= WIN_DB:
        scenario = "3"
        headline = f"Scenario 3 — mixed: V4's quality lead shrinks at higher resolution ({trend})."
    elif abs(d0) < TIE_DB:
        scenario = "2"
        if step_ratio >= EFF_RATIO:
            headline = (f"Scenario 2 — MAMBA wins on efficiency: similar quality (V4 − V1 = {d0:+.2f} dB) while "
                        f"V4 costs {step_ratio:.2f}× V1's time per training step.")  # fmt: skip
        elif step_ratio > 1 / EFF_RATIO:
            headline = (f"Scenario 2 on quality (V4 − V1 = {d0:+.2f} dB), but no efficiency win for MAMBA at this "
                        f"scale: both cost about the same per training step (V4 {step_ratio:.2f}× V1).")  # fmt: skip
        else:
            headline = (f"Scenario 2 on quality only (V4 − V1 = {d0:+.2f} dB), but MAMBA does NOT win on efficiency "
                        f"at this scale: V4 takes {step_ratio:.2f}× V1's time per training step.")  # fmt: skip
    elif d0 >= TIE_DB:
        scenario = "1/2"
        headline = (f"Between Scenarios 1 and 2: V4 is ahead by {d0:+.2f} dB at {train_res}², more than the "
                    f"~1 dB of 'similar quality' but short of the spec's 2–4 dB.")  # fmt: skip
    else:
        scenario = "none"
        headline = (f"None of the three: V1 (Mamba) is better on quality (V4 − V1 = {d0:+.2f} dB at "
                    f"{train_res}²); the spec's hypotheses all assume V4 ≥ V1.")  # fmt: skip

    lines = [
        f"Quality, equal steps ({int(run['v1']['steps'])} V1 / {int(run['v4']['steps'])} V4 steps), posterior mean, "
        f"paired over {n} held-out crops: V4 − V1 PSNR = "
        + ", ".join(f"{delta.loc[r, 'delta']:+.2f} ± {delta.loc[r, 'sem']:.2f} dB at {r}²" for r in res)
        + ".",
        f"Cost: V4 takes {step_ratio:.2f}× V1's time per training step ({run['v4']['ms_per_step']:.1f} vs "
        f"{run['v1']['ms_per_step']:.1f} ms) and {mem_ratio:.2f}× its peak training memory "
        f"({run['v4']['peak_mem_mb']:.0f} vs {run['v1']['peak_mem_mb']:.0f} MB).",
    ]
    floor = _get(summary, budget=budget, method="linear", estimator="interp", resolution=train_res)
    margins, by_photo = {}, {}  # per crop (summary); per held-out photograph (its crops averaged, one per source)
    at_budget = per_image[per_image["budget"] == budget]
    for k in MODEL_KEYS:
        fm = floor_margin(at_budget, k, est).set_index("resolution")
        if train_res in fm.index:
            margins[k] = fm.loc[train_res]
        fp = paired_differences(at_budget, k, "linear", est, b_estimator="interp", unit="source", resolution=train_res)
        if len(fp):
            by_photo[k] = fp.droplevel("resolution")
    if floor is not None and len(margins) == len(MODEL_KEYS):
        lines.append(f"Against the floor (linear interpolation, {floor['psnr_mean']:.2f} dB at {train_res}²), paired "
                     "over the same crops: " + ", ".join(
                         f"{k.upper()} {m['delta']:+.2f} ± {m['sem']:.2f} dB (better on {int(m['wins'])} of "
                         f"{int(m['n'])} crops" + (f"; ahead on {int((by_photo[k] > 0).sum())} of {len(by_photo[k])} "
                                                   "held-out photographs" if k in by_photo else "") + ")"
                         for k, m in margins.items()) + ".")  # fmt: skip
    sample_delta = paired_delta(per_image[per_image["budget"] == budget], estimator="sample").set_index("resolution")
    if train_res in sample_delta.index:
        lines.append(f"With one sampler draw instead of the posterior mean: V4 − V1 = "
                     f"{sample_delta.loc[train_res, 'delta']:+.2f} ± {sample_delta.loc[train_res, 'sem']:.2f} dB "
                     f"at {train_res}².")  # fmt: skip
    for r in (train_res, hi):
        inf = {k: _get(summary, budget=budget, method=k, estimator="sample", resolution=r) for k in MODEL_KEYS}
        if inf["v1"] is not None and inf["v4"] is not None:
            ratio = inf["v4"]["sec_per_image"] / inf["v1"]["sec_per_image"]
            lines.append(f"Inference at {r}² ({inf['v1']['sampler']}): V4 takes {ratio:.2f}× V1's time per image.")
    time_delta = paired_delta(per_image[per_image["budget"] == "equal_time"], estimator=est).set_index("resolution")
    if train_res in time_delta.index:
        t_run = {k: _get(runs, budget="equal_time", model=k) for k in MODEL_KEYS}
        lines.append(f"Equal wall-clock ({t_run['v1']['time_budget_s']:.0f} s each: {int(t_run['v1']['steps'])} V1 / "
                     f"{int(t_run['v4']['steps'])} V4 steps): V4 − V1 = {time_delta.loc[train_res, 'delta']:+.2f} ± "
                     f"{time_delta.loc[train_res, 'sem']:.2f} dB at {train_res}², "
                     f"{time_delta.loc[hi, 'delta']:+.2f} dB at {hi}².")  # fmt: skip

    caveats = []
    if abs(d0) < 2 * s0:
        caveats.append(f"The {train_res}² difference ({d0:+.2f} dB) is within 2 standard errors ({s0:.2f} dB) of zero "
                       f"over {n} crops: not resolved at this sample size.")  # fmt: skip
    below = []
    for b in BUDGETS:
        floor = _get(summary, budget=b, method="linear", estimator="interp", resolution=train_res)
        for k in MODEL_KEYS:
            m = _get(summary, budget=b, method=k, estimator=est, resolution=train_res)
            if m is not None and floor is not None and m["psnr_mean"] <= floor["psnr_mean"]:
                below.append((b, k, f"{k.upper()} {BUDGET_LABELS[b]} {m['psnr_mean']:.2f} dB"))
    if below:
        floor = _get(summary, budget=budget, method="linear", estimator="interp", resolution=train_res)
        caveats.append(f"Below the linear-interpolation floor ({floor['psnr_mean']:.2f} dB) at {train_res}² with the "
                       f"posterior mean: {', '.join(x[2] for x in below)}. Under-trained at this budget: the "
                       "comparison then says which model learns faster, not which architecture is better.")  # fmt: skip
        if any(b == budget for b, _, _ in below):
            headline += " (Caveat: not both models beat the interpolation floor — see below.)"
    # "Clearly" above the floor: a margin beyond 2 standard errors over the crops. Crops of one photograph are
    # correlated, so the margin per held-out photograph is checked too and any photograph behind is named.
    unclear = [k for k, m in margins.items() if 0 < m["delta"] < 2 * m["sem"]]
    if unclear:
        caveats.append("Above the linear-interpolation floor on average but not clearly: "
                       + ", ".join(f"{k.upper()}'s margin ({margins[k]['delta']:+.2f} dB) is within 2 standard errors "
                                   f"({margins[k]['sem']:.2f} dB)" for k in unclear)
                       + f" over {n} crops. At this budget the learned models only match a non-learned "
                       "interpolator; their ranking against each other is what the comparison can say.")  # fmt: skip
        if not below:
            headline += " (Caveat: not clearly above the interpolation floor — see below.)"
    behind = {}  # model -> [(photograph, margin over its crops, crops)]
    if by_photo:
        crops = at_budget[at_budget["resolution"] == train_res].groupby("source")["image"].nunique()
        for k in (k for k, m in margins.items() if m["delta"] > 0 and k in by_photo):
            for src, d in by_photo[k][by_photo[k] <= 0].items():
                name = photo_names[int(src)] if photo_names and int(src) < len(photo_names) else f"#{int(src)}"
                behind.setdefault(k, []).append((name, d, int(crops[src])))
    if behind:
        n_photos = per_image["source"].nunique()
        caveats.append(f"Not ahead of the linear-interpolation floor on every held-out photograph ({n_photos} of "
                       "them; crops of one photograph are correlated, so the crop-level standard error overstates how "
                       "general the margin is): " + "; ".join(
                           f"{k.upper()} " + ", ".join(f"{d:+.2f} dB on {name} ({c} crops)" for name, d, c in v)
                           for k, v in behind.items()) + ".")  # fmt: skip
        if not below and not unclear:
            worst = max(len(v) for v in behind.values())
            headline += (
                f" (Caveat: behind the interpolation floor on {worst} of {n_photos} held-out photographs — see below.)"
            )
    for k in MODEL_KEYS:
        r = _get(runs, budget="equal_time", model=k)
        if r is not None and r["steps"] < 0.9 * r["target_steps"]:
            caveats.append(f"{LABELS[k]}'s equal-time run reached the time limit at step {int(r['steps'])} of the "
                           f"{int(r['target_steps'])} its schedule was sized for (the calibration overestimated its "
                           "speed), so its learning rate had not fully decayed.")  # fmt: skip
    return {"scenario": scenario, "headline": headline, "lines": lines, "caveats": caveats}


# ----------------------------------------------------------------------------------------------
# Environment record
# ----------------------------------------------------------------------------------------------


def environment(a, device, runs: list[dict], S: int, rule: str, calib: dict, wall_s: float, phases: list) -> dict:
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
    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench.compare", *sys.argv[1:]]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "mamba_ssm": package_version("mamba-ssm") or package_version("mamba_ssm"),
        "causal_conv1d": package_version("causal-conv1d") or package_version("causal_conv1d"),
        "triton": package_version("triton"),
        "mixer_backend": mixer,
        "git_commit": git_commit(),  # "+dirty" if tracked files were modified; $GIT_COMMIT in a copy without .git
        "env_overrides": {
            k: os.environ[k]
            for k in ("NUM_HEADS", "DIM_FEEDFORWARD", "NUM_LAYERS", "D_MODEL", "DROPOUT", "BATCH_SIZE", "LR")
            if os.environ.get(k)
        },  # fmt: skip
        "budgets": {
            "equal_time_s": a.seconds,
            "equal_steps": S,
            "equal_steps_rule": rule,
            "calibrated_ms_per_step": {k: 1e3 * v for k, v in calib.items()},
        },  # fmt: skip
        "settings": {k: v for k, v in vars(a).items()},
        "models": models,
        "wall_clock_s": wall_s,
        "phases": phases,  # one entry per process: the whole run, or --phase time then --phase steps
    }


# ----------------------------------------------------------------------------------------------
# Figures and the report, from the saved data
# ----------------------------------------------------------------------------------------------


def plot_loss_curves(train_csv, out_png) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.read_csv(train_csv)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    colors, styles = {k: v.color for k, v in VARIANTS.items()}, {"equal_steps": "-", "equal_time": "--"}
    doubled = set(df.loc[df["reused"], "model"])  # models whose one run serves both budgets
    for (budget, model), g in df.groupby(["budget", "model"], sort=False):
        if g["reused"].any():  # the same run as the other budget's: drawn once
            continue
        label = f"{LABELS[model]}, " + ("both budgets" if model in doubled else BUDGET_LABELS[budget])
        for ax, x in zip(axes, ("step", "train_time_s")):
            ax.plot(g[x], g["val_loss"], linestyle=styles[budget], color=colors[model], marker=".", label=label)
    axes[0].set(xlabel="optimizer step", ylabel="validation flow-matching MSE", yscale="log")
    axes[1].set(xlabel="training time (s)", yscale="log")
    axes[0].legend(fontsize=7)
    fig.suptitle("Validation loss (fixed noise and times, held-out photos)", fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, out_png, dpi=120)
    plt.close(fig)
    return Path(out_png)


def delta_table(per_image: pd.DataFrame) -> str:
    lines = []
    for budget in BUDGETS:
        for est in ("mean", "sample"):
            d = paired_delta(per_image[per_image["budget"] == budget], estimator=est)
            if not len(d):
                continue
            if not lines:
                lines = ["| budget | estimator | " + " | ".join(f"{int(r)}²" for r in d["resolution"]) + " |",
                         "|---|---|" + "---:|" * len(d)]  # fmt: skip
            cells = " | ".join(f"{r.delta:+.2f} ± {r.sem:.2f}" for r in d.itertuples())
            name = "posterior mean" if est == "mean" else "one sample"
            lines.append(f"| {BUDGET_LABELS[budget]} | {name} | {cells} |")
    return "\n".join(lines) if lines else "(needs both models)"


def cost_table(runs: pd.DataFrame) -> str:
    lines = ["| budget | model | params | steps | training time (s) | ms / step (median) | s / epoch (steps) "
             "| peak memory (MB) | best val loss |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in runs.itertuples():
        note = " (= equal-time run)" if r.reused else ""
        lines.append(f"| {BUDGET_LABELS[r.budget]}{note} | {LABELS[r.model]} | {r.params / 1e6:.2f}M | {r.steps} "
                     f"| {r.train_time_s:.1f} | {r.ms_per_step:.1f} | {r.epoch_time_s:.2f} ({r.steps_per_epoch}) "
                     f"| {r.peak_mem_mb:.0f} | {r.best_val:.4f} |")  # fmt: skip
    return "\n".join(lines)


def inference_table(summary: pd.DataFrame) -> str:
    df = summary[(summary["budget"] == "equal_steps") & (summary["estimator"] != "interp")]
    lines = ["| resolution | model | sampler | s / image | peak memory (MB) |", "|---|---|---|---:|---:|"]
    for r in df.sort_values(["resolution", "method", "estimator"]).itertuples():
        mem = "–" if pd.isna(r.infer_peak_mem_mb) else f"{r.infer_peak_mem_mb:.0f}"
        lines.append(f"| {r.resolution}² | {LABELS[r.method]} | {r.sampler} (batch {r.batch}) | {r.sec_per_image:.4f} "
                     f"| {mem} |")  # fmt: skip
    return "\n".join(lines)


def _sampler(summary: pd.DataFrame, estimator: str) -> str:
    rows = summary.loc[summary["estimator"] == estimator, "sampler"]
    return str(rows.iloc[0]) if len(rows) else "–"


def _prediction(cfg: dict) -> str:
    if cfg.get("prediction", "velocity") == "x1":
        return "the clean values x1 (velocity = (x̂1 − x_t)/(1 − t))"
    return "the velocity x1 − x0"


def _photo_names(env: dict) -> list[str] | None:
    """The held-out photographs' file names, in the order of per_image's `source` column."""
    try:
        return [p.name for p in image_paths(env.get("settings", {}).get("data"), "val")]
    except (ConfigError, OSError):  # the --data folder is not on this machine
        return None


def write_report(out_dir) -> Path:
    """quality.md (and quality_loss.png) from the saved CSV / JSON files in out_dir."""
    out = Path(out_dir)
    for f in ("quality_env.json", "quality.csv", "quality_per_image.csv", "quality_runs.csv", "quality_train.csv"):
        if not (out / f).is_file():
            raise ConfigError(f"{out / f} is missing: run python -m bench.compare --out {out} first")
    env = json.loads((out / "quality_env.json").read_text())
    summary = pd.read_csv(out / "quality.csv")
    per_image = pd.read_csv(out / "quality_per_image.csv")
    runs = pd.read_csv(out / "quality_runs.csv")
    loss_png = plot_loss_curves(out / "quality_train.csv", out / "quality_loss.png")
    st = env["settings"]
    train_res, bud = int(st["resolution"]), env["budgets"]
    v = verdict(summary, per_image, runs, train_res, _photo_names(env))
    grids = sorted(out.glob("quality_samples_*.png"))
    params = {r.model: f"{r.params / 1e6:.2f}M" for r in runs.itertuples()}
    cfg = {k: env["models"]["equal_steps"][k]["config"] for k in MODEL_KEYS}
    where = env["gpu"] or env["cpu"] or env["device"]
    source = (
        f"the images in `{st['data']}`" if st["data"] else "scikit-image's bundled photographs: 16 train, 3 held out"
    )
    mamba = f"mamba_ssm {env['mamba_ssm']}" if env["mamba_ssm"] else "no mamba_ssm"
    lines = [
        "# V1 (Mamba) vs V4 (Transformer): quality under equal budgets",
        "",
        f"Run on {where} ({env['device']}), torch {env['torch']}, {mamba} (V1 mixer: {env['mixer_backend']}), "
        f"commit `{env['git_commit']}`, {env['date_utc']}, "
        f"{env['wall_clock_s'] / 60:.1f} min in all. Command: `{env['command']}`"
        + (f"; overrides from the environment: {env['env_overrides']}" if env["env_overrides"] else "")
        + ".",
        "",
        f"**Setup.** {train_res}×{train_res} crops of {source} (evaluation on {int(summary['n'].max())} crops of the "
        f"held-out images), {st['observed_frac']:.0%} of the "
        f"pixels observed, batch {st['batch_size']}, AdamW lr {st['lr']:g} (warm-up, cosine), bf16 autocast on CUDA, "
        f"seed {st['seed']}; the decoder predicts {_prediction(cfg['v1'])} (both models), dropout V1 "
        f"{cfg['v1']['dropout']:g} / V4 {cfg['v4']['dropout']:g}. Models ({st['preset']} preset): "
        f"V1 d_model {cfg['v1']['d_model']} × "
        f"{cfg['v1']['num_layers']} Mamba blocks (d_state {cfg['v1']['d_state']}), {params['v1']} parameters; "
        f"V4 d_model {cfg['v4']['d_model']} × {cfg['v4']['num_layers']} Transformer layers, "
        f"{cfg['v4']['num_heads']} heads, FFN {cfg['v4']['dim_feedforward']}, {params['v4']} parameters.",
        "",
        f"**Budgets.** Equal wall-clock: {bud['equal_time_s']:g} s of training each (validation and checkpoints "
        "not counted); each model's cosine schedule was sized to the steps a short calibration said it makes in that "
        "time ("
        + ", ".join(f"{k.upper()} {v:.1f} ms/step" for k, v in bud["calibrated_ms_per_step"].items())
        + f"), and the time was also a hard stop. Equal steps: {bud['equal_steps']} optimizer steps each — "
        f"{bud['equal_steps_rule']}.",
        "",
        "## Verdict",
        "",
        f"**{v['headline']}**",
        "",
        *[f"- {line}" for line in v["lines"]],
        "",
        "The verdict is computed, not written: it uses the **equal-steps** budget (the architectures at the same "
        f"training) and the **posterior-mean** estimate ({_sampler(summary, 'mean')}), the "
        "MMSE-optimal reconstruction, which is what PSNR/MSE reward; a single sampler draw carries the posterior's "
        f"spread (~2× its MSE) and is reported alongside. Rules: V4 − V1 ≥ {WIN_DB:g} dB at the training "
        f"resolution and at the highest zero-shot resolution → Scenario 1; ≥ {WIN_DB:g} dB at the training "
        f"resolution but < {WIN_DB:g} dB at the highest → Scenario 3; |V4 − V1| < {TIE_DB:g} dB → Scenario 2, "
        f"whose efficiency half needs V4 ≥ {EFF_RATIO:g}× V1's measured time per training step; in between or V1 "
        "ahead → said so.",
        "",
        "**Caveats.**",
        "",
        *[f"- {c}" for c in v["caveats"]],
        f"- This is a tiny budget (minutes, not the spec's 1,000 epochs) on a small data set ({source}): the "
        "numbers say which model learns faster at this scale, not which one is better when trained to "
        "convergence. One seed, one learning rate for both models (no per-model tuning). Zero-shot "
        "super-resolution is scored against the crop rendered at the higher resolution, which holds detail the "
        f"{train_res}² context never saw, so every method (the floors included) loses PSNR there.",
        "",
    ]
    for budget in BUDGETS:
        lines += [f"## Quality — {BUDGET_LABELS[budget]}", "",
                  quality_table(summary[summary["budget"] == budget], train_res), ""]  # fmt: skip
    lines += [
        "PSNR (dB, data range 2 for values in [-1, 1]), SSIM (RGB, 7×7 window) and MSE over the whole image, mean ± "
        f"std over the crops. At {train_res}² the observed pixels are kept and the others are predicted; at the "
        "zero-shot resolutions every pixel centre of the denser grid is queried, from the same "
        f"{train_res}² context.",
        "",
        "## V4 − V1 PSNR (dB), paired over the same crops, ± standard error",
        "",
        delta_table(per_image),
        "",
        "## Cost",
        "",
        cost_table(runs),
        "",
        "Time per step is the median over epochs (the first, warm-up epoch excluded); peak memory is "
        + (
            "torch.cuda.max_memory_allocated."
            if env["device"].startswith("cuda")
            else "the process's peak RSS on the CPU (cumulative over the whole run, not per model)."
        )  # fmt: skip
        + "",
        "",
        "Inference (equal-steps checkpoints, synchronized wall-clock per image):",
        "",
        inference_table(summary),
        "",
        "## Figures",
        "",
        f"![validation loss]({loss_png.name})",
        "",
        *[f"![{p.stem}]({p.name})" for p in grids],
        "",
        "Files: quality.csv (summary), quality_per_image.csv, quality_runs.csv, quality_train.csv, quality_env.json.",
        "",
    ]
    return atomic_write_text(out / "quality.md", "\n".join(lines))


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
    for key in MODEL_KEYS:  # the training flags, and the model configs (flags + the spec's env vars)
        train_parse_args(train_argv(a, key, Path(a.work_dir), 1, None))
        MODELS[key][1](a.preset, model_overrides(a, key))  # ConfigError on a bad combination (d_model % heads)
    device = pick_device(a.device)
    for key, estimate in memory_estimates(a, device).items():
        check_memory(estimate, a.batch_size, a.resolution, device, f"a {key} training step on {device.type}")


def memory_estimates(a, device) -> dict:
    """{model: estimate(batch, resolution) → bytes} of one training step, as models.train checks it."""
    out = {}
    for key in MODEL_KEYS:
        model = build_model(key, a.preset, model_overrides(a, key))
        params, samples = sum(p.numel() for p in model.parameters()), a.train_samples + a.val_samples
        out[key] = functools.partial(_step_bytes, type(model), model.cfg, device.type, params, samples)
    return out


def _step_bytes(cls, cfg, device_type, params, samples, batch, res) -> int:
    return run_bytes(cls, cfg, res, batch, True, device_type, params, samples)


def default_batch_size(a, device) -> int:
    """$BATCH_SIZE, else 64 on a GPU; on a CPU the largest power of two <= models.train's CPU_BATCH that fits
    both models (announced)."""
    from models.train import CPU_BATCH

    env = env_number("BATCH_SIZE", int, None)
    if env is not None or device.type == "cuda" or a.quick:
        return env or 64
    fits = [fit_batch(est, a.resolution, device, CPU_BATCH) or 1 for est in memory_estimates(a, device).values()]
    print(f"[compare] CPU run: --batch-size {min(fits)} (the GPU default 64 is for GPUs; pass --batch-size to "
          "choose)", flush=True)  # fmt: skip
    return min(fits)


STATE = "quality_state.pt"  # --phase time → --phase steps: everything the second process needs (no checkpoints)
SAME_SETTINGS = ("seconds", "steps", "calib_steps", "preset", "resolution", "observed_frac", "batch_size", "lr",
                 "train_samples", "val_samples", "seed", "data", "attn_backend", "mixer_backend", *MODEL_FLAGS,
                 "num_samples", "eval_steps", "method", "mean_draws", "eval_batch", "resolutions", "show")  # fmt: skip


def phase_record(t0: float) -> dict:
    return {"date_utc": datetime.now(UTC).isoformat(timespec="seconds"), "git_commit": git_commit(),
            "wall_clock_s": time.perf_counter() - t0}  # fmt: skip


def evaluate_budget(a, device, ecfg, runs, budget, earlier, out, S, t0) -> EvalResult:
    """Evaluate one budget's checkpoints (reusing `earlier` rows for a reused run) and draw its sample grids."""
    todo = {r["model"]: r["checkpoint"] for r in runs if r["budget"] == budget and not r["reused"]}
    reused = [r["model"] for r in runs if r["budget"] == budget and r["reused"]]
    print(f"[compare] evaluating the {BUDGET_LABELS[budget]} checkpoints of {', '.join(todo).upper() or '-'} "
          f"({time.perf_counter() - t0:.0f} s so far)", flush=True)  # fmt: skip
    if todo:
        result = run_evaluation(load_models(todo, device, a.attn_backend, a.mixer_backend), ecfg, device)
        result = merge_results(result, earlier, reused)
    else:  # both equal-time runs made the same number of steps: they are the equal-steps runs too
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
        raise ConfigError("--phase steps must run with the settings of --phase time: " + "; ".join(diff))
    return state


def main_compare(argv=None) -> None:
    p = build_parser()
    first = p.parse_args(argv)
    if first.report_only:
        print(f"wrote {write_report(first.out or 'results')}")
        return
    on_gpu = pick_device(first.device).type == "cuda"
    out = Path(first.out or ("runs/quick" if first.quick else "results" if on_gpu else "results/cpu"))
    if first.quick:
        p.set_defaults(**QUICK)
    p.set_defaults(out=str(out), work_dir=str(out / "runs") if first.quick else "runs/compare")
    a = p.parse_args(argv)
    a.device = str(pick_device(a.device)) if a.device == "auto" else a.device
    guard_committed_results(out, pick_device(a.device), ["quality.md", "quality.csv"])
    if a.dropout is None and not os.environ.get("DROPOUT"):
        a.dropout = 0.0  # minutes of training: no dropout for either model (the spec's V4 uses 0.1 for 1,000 epochs)
    a.lr = env_number("LR", float, 1e-3) if a.lr is None else a.lr
    a.batch_size = default_batch_size(a, pick_device(a.device)) if a.batch_size is None else a.batch_size
    a.verbose = a.verbose or (not a.quick and not on_gpu)  # CPU runs are long: show their progress
    check_args(a)
    state = load_state(out, a) if a.phase == "steps" else None  # checked before anything is trained
    device = pick_device(a.device)
    if a.quick and device.type == "cpu":
        torch.set_num_threads(1)  # tiny models: one thread is as fast, and immune to oversubscribed CI cores
    ecfg = eval_config(a)
    t0 = time.perf_counter()

    if state is None:  # phase 1: calibration, the equal-time runs and their evaluation
        calib = calibrate(a, device)
        time_runs = train_equal_time(a, calib)
        result = evaluate_budget(a, device, ecfg, time_runs, "equal_time", None, out, None, t0)
        state = {"settings": vars(a), "calib": calib, "time_runs": time_runs, "equal_time": result,
                 "phases": [{"phase": "time", **phase_record(t0)}]}  # fmt: skip
        if a.phase == "time":
            out.mkdir(parents=True, exist_ok=True)
            atomic_torch_save(state, out / STATE)
            print(f"[compare] phase 'time' done in {time.perf_counter() - t0:.0f} s; state in {out / STATE}: "
                  f"run --phase steps --out {out} (same settings) to finish", flush=True)  # fmt: skip
            return
        t0 = time.perf_counter()
    else:
        print(f"[compare] phase 'steps': continuing from {out / STATE}", flush=True)

    # phase 2: the equal-steps runs, their evaluation, the data files and the report
    calib, results = state["calib"], {"equal_time": state["equal_time"]}
    runs, S, rule = train_equal_steps(a, state["time_runs"])
    results["equal_steps"] = evaluate_budget(a, device, ecfg, runs, "equal_steps", results["equal_time"], out, S, t0)
    phases = [*state["phases"], {"phase": "steps" if a.phase == "steps" else "all", **phase_record(t0)}]
    per_image = [results[b].per_image.assign(budget=b) for b in ("equal_time", "equal_steps")]
    summaries = [
        summarize(results[b].per_image, results[b].timing).assign(budget=b) for b in ("equal_time", "equal_steps")
    ]
    train_rows = [{"budget": r["budget"], "model": r["model"], "reused": r["reused"], **row}
                  for r in runs for row in r["log"]]  # fmt: skip

    first_cols = ["budget", "method", "estimator", "resolution"]
    summary = pd.concat(summaries, ignore_index=True)
    atomic_to_csv(summary[first_cols + [c for c in summary.columns if c not in first_cols]], out / "quality.csv")
    atomic_to_csv(pd.concat(per_image, ignore_index=True), out / "quality_per_image.csv")
    skip = ("log", "info")
    atomic_to_csv(pd.DataFrame([{k: v for k, v in r.items() if k not in skip} for r in runs]), out / "quality_runs.csv")
    atomic_to_csv(pd.DataFrame(train_rows), out / "quality_train.csv")
    wall = sum(ph["wall_clock_s"] for ph in phases)
    env = environment(a, device, runs, S, rule, calib, wall, phases)
    atomic_write_text(out / "quality_env.json", json.dumps(env, indent=2, default=str) + "\n")
    report = write_report(out)
    (out / STATE).unlink(missing_ok=True)  # consumed
    print(f"[compare] done in {wall:.0f} s: {report}")
    print(report.read_text().split("## Verdict")[1].split("The verdict is computed")[0].strip())


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
        help="equal-steps budget (0: the steps the slower model made in --seconds; its run is reused)",
    )
    g.add_argument("--calib-steps", type=positive_int, default=10, help="timed steps per model that size the schedules")
    g = p.add_argument_group("training (the same for both models)")
    g.add_argument("--preset", default="default", help="model sizes: default (the spec) | small | tiny")
    g.add_argument("--resolution", type=resolution, default=32)
    g.add_argument("--observed-frac", type=fraction, default=0.2)
    g.add_argument("--batch-size", type=positive_int, default=None, help="default: $BATCH_SIZE, or 64 on a GPU "
                   "and what fits (<= 8) on a CPU")  # fmt: skip
    g.add_argument("--lr", type=positive_float, default=None, help="default: $LR or 1e-3 (short budget; the "
                   "spec's is 1e-4)")  # fmt: skip
    g.add_argument("--train-samples", type=positive_int, default=16384, help="crops per training epoch")
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
