"""Every variant at several training resolutions under equal budgets: learning curves, the quality-for-cost
frontier, zero-shot super-resolution and the verdict per resolution → <out>/frontier.md.

    python -m models.sources                                   # make data: data/sources/ (35 photographs)
    python -m bench.frontier --time-budget 480                 # one call of < 9 min; the same command continues
    python -m bench.frontier --report-only                     # frontier.md and the plots again, from the CSVs
    python -m bench.frontier --quick --data DIR --out /tmp/f   # CPU smoke: tiny models, 16² and 24², seconds

One bench.compare run per training resolution (--res, default 32 64), each in <out>/r<res>/ with its own
quality.md (both budgets, every model paired with --baseline, the computed verdict), all of them under ONE
--time-budget: the first unfinished resolution continues (training pauses at an epoch end, what is done is kept in
<out>/r<res>/quality_state.pt), and what is left of the call goes to the next (a run and its evaluation start only
if both fit); when it is spent the call ends and the same command run again goes on.
The lowest resolution is also evaluated zero-shot at --sr (default 64 96 128, the interpolation floors beside).
Flags this script does not know are passed to every bench.compare run (e.g. --num-samples, --eval-steps, --lr).
Every model comes from models.variants' table (default: all of them); nothing here branches on a model's name.

From the saved CSVs only (bench.compare's quality_curve.csv, quality.csv, quality_per_image.csv, quality_runs.csv):
frontier_curve_r<res>.png (held-out PSNR vs seconds of training, one line per variant, the linear floor dashed:
the quality-for-cost frontier), frontier_inference.png (final PSNR vs inference ms per image), frontier.csv and
frontier.md (per resolution: each variant − baseline and − linear interpolation, paired per crop and per source
image, the scenario; the zero-shot table; the sweep's device time per training step where results/ has it).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.compare import STATE, Paused, new_call, prepare, run_compare, stale_state
from bench.evaluate import color, label, paired_delta
from bench.quality_report import BUDGET_LABELS, commits, data_source, verdict
from models.common import ConfigError
from models.utils import ArgParser, atomic_savefig, atomic_to_csv, atomic_write_text, cli_main, pick_device
from models.validate import guard_committed_results, model_name, nonneg_float, positive_float, positive_int, resolution
from models.variants import get_variant, variant_names

QUICK = {"res": [16, 24], "sr": [32], "seconds": [3.0], "curve_every": 2}  # with compare's --quick
TARGET_DB = 1.0  # issue 15's bar: the posterior mean beats linear interpolation by >= 1 dB (paired over crops)
SWEEP_CSV = Path("results/model_bench_B8_bf16.csv")  # make bench's rows: device time per training step


def per_res(values: list, res: list[int], flag: str) -> dict[int, object]:
    """One value for every resolution, or one per resolution in --res order."""
    if len(values) == 1:
        return {r: values[0] for r in res}
    if len(values) != len(res):
        raise ConfigError(f"{flag}: give one value or one per --res ({len(res)}), got {len(values)}")
    return dict(zip(res, values, strict=True))


def res_dir(out: Path, r: int) -> Path:
    return out / f"r{r}"


def finished(d: Path) -> bool:
    """quality.md written and no state left, or a state the finished report already holds (a stale copy)."""
    return (d / "quality.md").is_file() and (not (d / STATE).is_file() or stale(d))


def stale(d: Path) -> bool:
    """d's state file is an old copy of what its finished report already holds (bench.compare.stale_state)."""
    try:
        state = torch.load(d / STATE, weights_only=False)
    except Exception:  # noqa: BLE001 - unreadable: not a stale copy; bench.compare says what is wrong with it
        return False
    return stale_state(d, state)


def compare_argv(a, r: int, extra: list[str], left: float | None) -> list[str]:
    seconds, batch = per_res(a.seconds, a.res, "--seconds"), per_res(a.batch_size, a.res, "--batch-size")
    sr = [s for s in a.sr if s > r] if r == min(a.res) else []
    argv = [*extra, "--resolution", str(r), "--out", str(res_dir(Path(a.out), r)), "--models", *a.models,
            "--baseline", a.baseline, "--seconds", str(seconds[r]), "--resolutions", ",".join(map(str, sr)),
            "--curve-every", str(a.curve_every), "--curve-samples", str(a.curve_samples), "--data", a.data]  # fmt: skip
    if batch[r] is not None:
        argv += ["--batch-size", str(batch[r])]
    if a.work_dir:
        argv += ["--work-dir", str(res_dir(Path(a.work_dir), r))]
    if a.quick:
        argv.append("--quick")
    if left is not None:
        argv += ["--time-budget", f"{max(left, 1.0):.1f}"]
    return argv


# ----------------------------------------------------------------------------------------------
# The tables and figures, from the saved CSVs
# ----------------------------------------------------------------------------------------------


def load_runs(out: Path) -> dict[int, dict]:
    """r → {env, summary, per_image, runs, curve} of every finished resolution folder."""
    found = {}
    for d in sorted(out.glob("r*"), key=lambda p: int(p.name[1:]) if p.name[1:].isdigit() else 0):
        if not (d.name[1:].isdigit() and finished(d)):
            continue
        curve = d / "quality_curve.csv"
        found[int(d.name[1:])] = {
            "env": json.loads((d / "quality_env.json").read_text()),
            "summary": pd.read_csv(d / "quality.csv"),
            "per_image": pd.read_csv(d / "quality_per_image.csv"),
            "runs": pd.read_csv(d / "quality_runs.csv"),
            "curve": pd.read_csv(curve) if curve.is_file() else pd.DataFrame(),
            "train": pd.read_csv(d / "quality_train.csv"),
        }
    if not found:
        raise ConfigError(f"{out} holds no finished r<res>/ folder: run python -m bench.frontier --out {out} first")
    return found


def plot_curves(r: int, d: dict, path: Path) -> Path:
    """Held-out PSNR (posterior mean) vs seconds of training, one line per variant: solid = the equal-time run,
    dotted = an equal-steps rerun; the linear-interpolation floor of the same crops dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, models = d["curve"], d["env"]["settings"]["models"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k in models:
        for budget, style in (("equal_time", "-"), ("equal_steps", ":")):
            g = c[(c["model"] == k) & (c["budget"] == budget) & ~c["reused"].astype(bool)]
            if len(g):
                name = label(k) + ("" if budget == "equal_time" else f" ({BUDGET_LABELS[budget]})")
                ax.plot(g["train_time_s"], g["psnr"], style, color=color(k), marker=".", ms=3, label=name)
    if len(c):
        ax.axhline(float(c["psnr_linear"].iloc[0]), color="gray", ls="--", lw=1, label="linear interp (same crops)")
    device = "GPU" if str(d["env"]["device"]).startswith("cuda") else "CPU"
    crops = int(c["curve_crops"].iloc[0]) if len(c) else 0
    ax.set(xlabel=f"{device}-seconds of training", ylabel=f"held-out PSNR (dB), posterior mean, {crops} crops",
           title=f"{r}²: quality for cost")  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=130)
    plt.close(fig)
    return path


def final_rows(r: int, d: dict) -> list[dict]:
    """One row per (budget, model) at training resolution r: PSNR, margins, inference ms, training cost."""
    st = d["env"]["settings"]
    s, runs, rows = d["summary"], d["runs"], []
    for budget in ("equal_steps", "equal_time"):
        at = s[(s["budget"] == budget) & (s["resolution"] == r)]
        for k in st["models"]:
            m = at[(at["method"] == k) & (at["estimator"] == "mean")]
            run = runs[(runs["budget"] == budget) & (runs["model"] == k)]
            if not len(m) or not len(run):
                continue
            rows.append({
                "resolution": r, "budget": budget, "model": k, "psnr": float(m["psnr_mean"].iloc[0]),
                "infer_ms_mean": 1e3 * float(m["sec_per_image"].iloc[0]),
                "infer_ms_sample": 1e3 * float(at[(at["method"] == k) & (at["estimator"] == "sample")]
                                               ["sec_per_image"].iloc[0]),
                "steps": int(run["steps"].iloc[0]), "train_time_s": float(run["train_time_s"].iloc[0]),
                "ms_per_step": float(run["ms_per_step"].iloc[0]), "peak_mem_mb": float(run["peak_mem_mb"].iloc[0]),
            })  # fmt: skip
    return rows


def plot_inference(finals: pd.DataFrame, path: Path) -> Path:
    """Final PSNR (equal steps, posterior mean, training resolution) vs inference ms per image, per resolution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    df = finals[finals["budget"] == "equal_steps"]
    res = sorted(df["resolution"].unique())
    fig, axes = plt.subplots(1, len(res), figsize=(4.6 * len(res), 3.8), squeeze=False)
    for ax, r in zip(axes[0], res):
        for i, row in enumerate(df[df["resolution"] == r].sort_values("infer_ms_mean").itertuples()):
            ax.scatter(row.infer_ms_mean, row.psnr, color=color(row.model), s=30)
            ax.annotate(
                get_variant(row.model).short,
                (row.infer_ms_mean, row.psnr),
                fontsize=7,
                xytext=(3, 3 if i % 2 == 0 else -9),
                textcoords="offset points",
            )  # neighbours: above/below
        ax.set(xscale="log", xlabel="inference ms / image (posterior mean)", ylabel="held-out PSNR (dB)",
               title=f"{r}² (equal steps)")  # fmt: skip
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=130)
    plt.close(fig)
    return path


def _pm(d: pd.DataFrame, r: int) -> str:
    d = d.set_index("resolution")
    if r not in d.index:
        return "–"
    x = d.loc[r]
    sem = "" if pd.isna(x["sem"]) else f" ± {x['sem']:.2f}"
    return f"{x['delta']:+.2f}{sem} ({int(x['wins'])}/{int(x['n'])})"


def margin_table(r: int, d: dict) -> list[str]:
    """Markdown: per model (equal steps, posterior mean, at r): PSNR; − linear and − baseline paired per crop and
    per source image (± standard error, units ahead / units)."""
    st, pi = d["env"]["settings"], d["per_image"]
    pi = pi[pi["budget"] == "equal_steps"]
    B = st["baseline"].upper()
    lines = [f"| model | PSNR (dB) | − linear, per crop | − linear, per source | − {B}, per crop | − {B}, per source "
             f"| ≥ {TARGET_DB:g} dB over linear and ahead on every source |",
             "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    s = d["summary"]
    for k in st["models"]:
        m = s[(s["budget"] == "equal_steps") & (s["method"] == k) & (s["estimator"] == "mean") & (s["resolution"] == r)]
        cells = [f"{float(m['psnr_mean'].iloc[0]):.2f}" if len(m) else "–"]
        for b, be in (("linear", "interp"), (st["baseline"], "mean")):
            for unit in ("image", "source"):
                cells.append("–" if k == b else _pm(paired_delta(pi, k, b, "mean", b_estimator=be, unit=unit), r))
        crop = paired_delta(pi, k, "linear", "mean", b_estimator="interp").set_index("resolution")
        src = paired_delta(pi, k, "linear", "mean", b_estimator="interp", unit="source").set_index("resolution")
        if r in crop.index and r in src.index:
            ok = crop.loc[r, "delta"] >= TARGET_DB and src.loc[r, "wins"] == src.loc[r, "n"]
            cells.append("yes" if ok else "no")
        else:
            cells.append("–")
        lines.append(f"| {label(k)} | " + " | ".join(cells) + " |")
    return lines


def sr_table(r: int, d: dict) -> list[str]:
    """Markdown: zero-shot super-resolution of the r² models (equal steps, posterior mean): PSNR and − linear per
    crop at every evaluated resolution above r, the floors' PSNR first."""
    s, pi = d["summary"], d["per_image"]
    s, pi = s[s["budget"] == "equal_steps"], pi[pi["budget"] == "equal_steps"]
    res = sorted(x for x in s["resolution"].unique() if x > r)
    if not res:
        return []
    lines = ["| method | " + " | ".join(f"{x}²: PSNR, − linear" for x in res) + " |", "|---|" + "---:|" * len(res)]
    methods = [("nearest", "interp"), ("linear", "interp"), *[(k, "mean") for k in d["env"]["settings"]["models"]]]
    for method, est in methods:
        cells = []
        for x in res:
            m = s[(s["method"] == method) & (s["estimator"] == est) & (s["resolution"] == x)]
            psnr = f"{float(m['psnr_mean'].iloc[0]):.2f}" if len(m) else "–"
            if est == "interp":
                cells.append(psnr)
                continue
            delta = paired_delta(pi, method, "linear", "mean", b_estimator="interp")
            cells.append(f"{psnr}, {_pm(delta, x)}")
        lines.append(f"| {label(method)} | " + " | ".join(cells) + " |")
    return lines


STEPS_DB = 0.1  # "steps" limit: the held-out PSNR still gains >= this many dB per doubling of the steps
GAP = 1.2  # "data" limit: the last epoch's validation loss >= GAP × its train loss (the model fits its crops better)
CAPACITY_DROP = 0.05  # "capacity" limit: the train loss fell by < 5% over the second half of the steps


def diagnose(curve: pd.DataFrame, train: pd.DataFrame, target: float = TARGET_DB) -> dict:
    """What limits one run, from its learning curve (held-out PSNR vs step, with the linear floor of the same
    crops) and its per-epoch losses. Pure: the rules are the three constants above, stated in the report.

    slope: dB per doubling of the steps, least squares of PSNR on log2(step) over the second half of the steps;
    to_target: the steps at which that rate reaches `target` dB over linear (NaN when it is met or gains < 0.01 dB;
    inf past 2^30 × the steps); train_drop: the train loss's fall since the epoch nearest half the steps;
    limits: "steps", "data", "capacity" (any that hold), "curve ≥ +1 dB", or "too few points" (fewer than 3
    curve points in the second half, fewer than 2 epochs, or a non-finite PSNR)."""
    nan = math.nan
    g = curve[curve["step"] > 0].sort_values("step")
    e = train.sort_values("step")
    end = int(g["step"].iloc[-1]) if len(g) else 0
    margin = float(g["psnr"].iloc[-1] - g["psnr_linear"].iloc[-1]) if len(g) else nan
    half = g[g["step"] >= end / 2]
    out = {"steps": end, "margin_db": margin, "slope_db_per_doubling": nan, "to_target_steps": nan,
           "train_loss": nan, "val_loss": nan, "val_over_train": nan, "train_drop": nan}  # fmt: skip
    if len(e):
        last = e.iloc[-1]
        out.update(train_loss=float(last["train_loss"]), val_loss=float(last["val_loss"]),
                   val_over_train=float(last["val_loss"] / last["train_loss"]))  # fmt: skip
    if len(half) < 3 or len(e) < 2 or not np.isfinite(half["psnr"]).all() or not math.isfinite(margin):
        return {**out, "limits": "too few points"}
    slope = float(np.polyfit(np.log2(half["step"].to_numpy(float)), half["psnr"].to_numpy(float), 1)[0])
    mid = e.iloc[(e["step"] - end / 2).abs().argmin()]
    drop = float(1.0 - out["train_loss"] / mid["train_loss"])
    met = margin >= target
    if not met and slope >= 0.01:
        doublings = (target - margin) / slope
        out["to_target_steps"] = end * 2.0**doublings if doublings <= 30 else math.inf
    limits = [name for name, holds in (("steps", slope >= STEPS_DB), ("data", out["val_over_train"] >= GAP),
                                       ("capacity", drop < CAPACITY_DROP)) if holds]  # fmt: skip
    label = f"curve ≥ +{target:g} dB" if met else (", ".join(limits) or "none of the three")
    return {**out, "slope_db_per_doubling": slope, "train_drop": drop, "limits": label}


def limit_table(d: dict) -> list[str]:
    """Markdown: what limits each equal-time run, by diagnose()'s rules: still rising (steps), a train/validation
    gap (data), a train loss that stopped falling (capacity)."""
    c, t = d["curve"], d["train"]
    if not len(c):
        return []
    lines = [f"| model | steps | − linear at the end (dB) | dB per doubling of the steps (second half) | steps to "
             f"+{TARGET_DB:g} dB at that rate | train loss (fall since half the steps) | validation loss | val / train "
             f"| limit |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for k in d["env"]["settings"]["models"]:
        g = c[(c["model"] == k) & (c["budget"] == "equal_time")]
        e = t[(t["model"] == k) & (t["budget"] == "equal_time")]
        if len(g) < 2 or not len(e):
            continue
        x = diagnose(g, e)
        n = x["to_target_steps"]
        to = "–" if math.isnan(n) else "> 1e9×" if math.isinf(n) else f"{n:,.0f} ({n / x['steps']:.0f}×)"
        slope = "–" if math.isnan(x["slope_db_per_doubling"]) else f"{x['slope_db_per_doubling']:+.2f}"
        lines.append(f"| {label(k)} | {x['steps']:,} | {x['margin_db']:+.2f} | {slope} | {to} | "
                     f"{x['train_loss']:.4f} ({x['train_drop']:.0%}) | {x['val_loss']:.4f} | "
                     f"{x['val_over_train']:.2f} | {x['limits']} |")  # fmt: skip
    lines += ["", f"Rules: steps = still gaining ≥ {STEPS_DB:g} dB per doubling of the steps; data = validation loss ≥ "
              f"{GAP:g}× the train loss; capacity = the train loss fell by < {CAPACITY_DROP:.0%} since half the steps "
              f"(curve ≥ +{TARGET_DB:g} dB: the curve's last point, on its held-out subset, already beats linear by "
              "the bar; the paired bar itself is in the table above)."]  # fmt: skip
    return lines


def baseline_sr_table(r: int, d: dict) -> list[str]:
    """Markdown: each model − the baseline (equal steps, posterior mean) at the training resolution and every
    zero-shot one, paired per crop and per source image: whether a variant's deficit at super-resolution (V4's
    index positions) goes away without them."""
    st, pi = d["env"]["settings"], d["per_image"]
    pi = pi[pi["budget"] == "equal_steps"]
    res = sorted(pi["resolution"].unique())
    if len(res) < 2:
        return []
    B = st["baseline"].upper()
    lines = ["| model | " + " | ".join(f"{x}²: − {B} per crop; per source" for x in res) + " |",
             "|---|" + "---:|" * len(res)]  # fmt: skip
    for k in (k for k in st["models"] if k != st["baseline"]):
        crop = paired_delta(pi, k, st["baseline"], "mean")
        src = paired_delta(pi, k, st["baseline"], "mean", unit="source")
        lines.append(f"| {label(k)} | " + " | ".join(f"{_pm(crop, x)}; {_pm(src, x)}" for x in res) + " |")
    return lines


def sweep_table(res: list[int], models: list[str], path: Path = SWEEP_CSV) -> list[str]:
    """Device time per training step (batch 8, make bench's latency regime, each variant's primary CUDA backend)
    at the training resolutions, and its ratio to the first model's."""
    if not path.is_file():
        return []
    df = pd.read_csv(path)
    df = df[(df["level"] == "model") & (df["kind"] == "train") & (df["regime"] == "latency") & (df["status"] == "ok")]
    lines = ["| model | " + " | ".join(f"{r}²: device ms / step (× {models[0].upper()})" for r in res) + " |",
             "|---|" + "---:|" * len(res)]  # fmt: skip
    base = {}
    for k in models:
        backend = get_variant(k).primary.get("cuda")
        cells = []
        for r in res:
            x = df[(df["model"] == k) & (df["backend"] == backend) & (df["res"] == r)]
            ms = float(x["device_ms"].iloc[0]) if len(x) else math.nan
            base.setdefault(r, ms)
            cells.append("–" if math.isnan(ms) else f"{ms:.1f} ({ms / base[r]:.2f}×)")
        lines.append(f"| {label(k)} ({backend}) | " + " | ".join(cells) + " |")
    return lines if any(not math.isnan(v) for v in base.values()) else []


def write_report(out) -> Path:
    out = Path(out)
    found = load_runs(out)
    finals, lines, figures = [], [], []
    first = next(iter(found.values()))["env"]
    ran_at = commits([d["env"] for d in found.values()])
    lines += ["# Every variant under equal budgets: learning curves, the quality-for-cost frontier, zero-shot SR", "",
              f"Run on {first.get('gpu') or first.get('cpu')} ({first['device']}), torch {first['torch']}, "
              f"{ran_at}. Data: {data_source(first['settings'].get('data'))}.", ""]  # fmt: skip
    for r, d in found.items():
        st, env = d["env"]["settings"], d["env"]
        finals += final_rows(r, d)
        lines += [f"## {r}² (`{r_dir(r)}/quality.md`)", "",
                  f"Equal wall-clock {env['budgets']['equal_time_s']:g} s per model; equal steps "
                  f"{env['budgets']['equal_steps']} ({env['budgets']['equal_steps_rule']}); batch {st['batch_size']}, "
                  f"{int(d['summary']['n'].max())} held-out crops; {env['wall_clock_s'] / 60:.1f} min in "
                  f"{len(env.get('phases', []))} part(s).", ""]  # fmt: skip
        v = verdict(d["summary"], d["per_image"], d["runs"], r, None, st["models"], st["baseline"])
        lines += [f"- **{p['headline']}**" for p in v["pairs"]] + [""]
        lines += ["Equal steps, posterior mean, at the training resolution; differences paired over the same crops "
                  "(or over the held-out source images, each image's crops averaged), ± standard error "
                  "(units ahead / units):", "", *margin_table(r, d), ""]  # fmt: skip
        sr = sr_table(r, d)
        if sr:
            lines += [f"Zero-shot super-resolution of the {r}² models (equal steps, posterior mean, − linear per "
                      "crop):", "", *sr, "", f"Each model − {st['baseline'].upper()} at every resolution (equal "
                      "steps, posterior mean):", "", *baseline_sr_table(r, d), ""]  # fmt: skip
        if len(d["curve"]):
            p = plot_curves(r, d, out / f"frontier_curve_r{r}.png")
            figures.append(p)
            lines += [f"![learning curves {r}²]({p.name})", "", "What limits each equal-time run (from its learning "
                      "curve and its last epoch's losses):", "", *limit_table(d), ""]  # fmt: skip
    finals = pd.DataFrame(finals)
    atomic_to_csv(finals, out / "frontier.csv")
    if len(finals):
        p = plot_inference(finals, out / "frontier_inference.png")
        lines += ["## Final PSNR vs inference cost", "", f"![PSNR vs inference]({p.name})", ""]
    models = list(next(iter(found.values()))["env"]["settings"]["models"])
    sweep = sweep_table(list(found), models)
    if sweep:
        lines += ["## Efficiency: device time per training step (make bench, batch 8)", "", *sweep, "",
                  f"From `{SWEEP_CSV}` (CUDA-graph replay or kernel sum; see results/README.md).", ""]  # fmt: skip
    lines += ["Files: frontier.csv, r<res>/quality*.csv (quality_curve.csv: the learning curves).", ""]
    return atomic_write_text(out / "frontier.md", "\n".join(lines))


def r_dir(r: int) -> str:
    return f"r{r}"


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def main_frontier(argv=None) -> None:
    start = time.time()  # the call's budget counts from here (a GPU call's limit is wall-clock)
    new_call()
    p = build_parser()
    a, extra = p.parse_known_args(argv)
    device = pick_device(a.device)
    a.out = a.out or ("results/frontier" if device.type == "cuda" else "results/cpu/frontier")
    out = Path(a.out)
    if a.report_only:
        print(f"wrote {write_report(out)}")
        return
    if a.quick:
        for k, v in QUICK.items():
            if getattr(a, k) == p.get_default(k):
                setattr(a, k, v)
    if a.device != "auto":
        extra += ["--device", a.device]
    a.models = a.models or list(variant_names())
    a.baseline = a.baseline or ("v1" if "v1" in a.models else a.models[0])
    if a.data is None:
        from models.sources import DEFAULT_OUT, MANIFEST

        if not (Path(DEFAULT_OUT) / MANIFEST).is_file():
            raise ConfigError(f"--data: {DEFAULT_OUT}/ is not built: run `make data` (or pass --data DIR)")
        a.data = DEFAULT_OUT
    guard_committed_results(out, device, ["frontier.md", "frontier.csv"])
    per_res(a.seconds, a.res, "--seconds")
    per_res(a.batch_size, a.res, "--batch-size")
    if sorted(set(a.res)) != a.res:
        raise ConfigError(f"--res must be increasing and distinct, got {' '.join(map(str, a.res))}")
    # every resolution's flags are checked before anything is trained (bench.compare's own checks)
    prepared = {r: prepare(compare_argv(a, r, extra, None)) for r in a.res if not finished(res_dir(out, r))}
    deadline = start + a.time_budget if a.time_budget else None
    paused = False
    for r in a.res:
        if r not in prepared:
            old = " (its state file is an old copy, ignored: delete it)" if (res_dir(out, r) / STATE).is_file() else ""
            print(f"[frontier] {r}²: done ({res_dir(out, r)}/quality.md){old}", flush=True)
            continue
        left = None if deadline is None else deadline - time.time()
        if left is not None and left < 1:
            print(f"[frontier] time budget spent before {r}²", flush=True)
            paused = True
            break
        print(f"[frontier] {r}²" + ("" if left is None else f" ({left:.0f} s left in this call)"), flush=True)
        ca, cout, cdev = prepared[r]
        ca.time_budget = left or 0.0
        try:
            run_compare(ca, cout, cdev)
        except Paused:  # the resolutions are independent runs: what is left of the call goes to the next one
            print(f"[frontier] {r}² paused", flush=True)
            paused = True
    if paused:
        print("[frontier] paused: run the same command again to continue", flush=True)
        return
    print(f"[frontier] all resolutions done: wrote {write_report(out)}", flush=True)


def build_parser() -> ArgParser:
    p = ArgParser(prog="bench.frontier", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="default: results/frontier on a GPU, results/cpu/frontier on a CPU")
    p.add_argument("--work-dir", default=None, help="checkpoints (default: bench.compare's, per resolution)")
    p.add_argument("--res", nargs="+", type=resolution, default=[32, 64], help="training resolutions (default 32 64)")
    p.add_argument("--sr", nargs="+", type=resolution, default=[64, 96, 128],
                   help="zero-shot resolutions of the lowest --res's models (default 64 96 128)")  # fmt: skip
    p.add_argument("--models", nargs="+", type=model_name, default=None, help="default: every variant in the table")
    p.add_argument("--baseline", type=model_name, default=None, help="default: v1 if listed, else the first")
    p.add_argument("--seconds", nargs="+", type=positive_float, default=[120.0],
                   help="equal-time budget per model: one value, or one per --res (default 120)")  # fmt: skip
    p.add_argument("--batch-size", nargs="+", type=positive_int, default=[None],
                   help="one value, or one per --res (default: bench.compare's)")  # fmt: skip
    p.add_argument("--curve-every", type=positive_int, default=250, help="steps between learning-curve points")
    p.add_argument("--curve-samples", type=positive_int, default=32, help="held-out crops per curve point")
    p.add_argument("--data", default=None, help="image folder (default data/sources/, built by make data)")
    p.add_argument("--time-budget", type=nonneg_float, default=0.0, help="seconds of this call (0: no limit); "
                   "the same command run again continues")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="CPU smoke: bench.compare --quick at 16² and 24²")
    p.add_argument("--report-only", action="store_true", help="frontier.md and the plots from the saved CSVs")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    return p


def main(argv=None) -> int:
    return cli_main(main_frontier, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
