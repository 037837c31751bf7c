"""bench.compare's verdict and its report, from the saved data: quality.md and quality_loss.png.

    python -m bench.compare --report-only --out results     # re-renders results/quality.md from its CSV / JSON

Every model is paired with the baseline (V1 by default), on the same crops and the same held-out photographs.
The spec's three scenarios are decided per (model, baseline) pair by decide_scenario, a pure function of three
numbers; everything else here renders: the pair's headline and lines, the caveats, the tables and the figure.
The saved data are those bench/compare.py writes: quality.csv, quality_per_image.csv, quality_runs.csv,
quality_train.csv and quality_env.json (bench.env's record; records written before it had `date_utc` for `date`
and no `models` / `baseline` settings: V1 and V4, baseline V1).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.evaluate import (
    color,
    floor_margin,
    label,
    paired_delta,
    paired_differences,
    quality_table,
    spec_name,
)
from models.common import ConfigError
from models.data import image_paths
from models.utils import atomic_savefig, atomic_write_text

BUDGETS = ("equal_steps", "equal_time")
BUDGET_LABELS = {"equal_steps": "equal steps", "equal_time": "equal wall-clock"}
WIN_DB = 2.0  # Scenario 1: "Transformer wins", the spec's +2–4 dB (its lower end)
TIE_DB = 1.0  # Scenario 2: "similar PSNR", the spec's < ~1 dB (its example: +0.5 dB)
EFF_RATIO = 1.2  # Scenario 2's "MAMBA wins on efficiency": V4 needs >= 1.2x V1's time per step (spec: 5-10x)
DEFAULT_MODELS, DEFAULT_BASELINE = ("v1", "v4"), "v1"  # records written before --models / --baseline existed


# ----------------------------------------------------------------------------------------------
# The scenario: a pure function of three numbers
# ----------------------------------------------------------------------------------------------


def decide_scenario(d_train: float, d_high: float | None, step_ratio: float) -> tuple[str, str]:
    """The spec's scenario for a model against the baseline → (scenario, case).

    d_train: model − baseline PSNR (dB) at the training resolution; d_high: the same at the highest zero-shot
    resolution (None: none evaluated); step_ratio: model / baseline time per training step. Scenario 1: ≥ WIN_DB
    at both; 3: ≥ WIN_DB at the training resolution only; 2: |d| < TIE_DB (case: the efficiency half holds, the
    costs are the same, or the model is the cheaper one); 1/2: in between; none: the baseline is ahead.
    """
    if d_train >= WIN_DB:
        return ("1", "wins") if d_high is None or d_high >= WIN_DB else ("3", "mixed")
    if abs(d_train) < TIE_DB:
        if step_ratio >= EFF_RATIO:
            return "2", "efficient"
        return ("2", "same cost") if step_ratio > 1 / EFF_RATIO else ("2", "not efficient")
    if d_train >= TIE_DB:
        return "1/2", "between"
    return "none", "baseline better"


def headline(case: str, model: str, baseline: str, d_train: float, trend: str, step_ratio: float, res: int) -> str:
    """The verdict's one sentence for a decided case. The spec's pair (V4 vs V1) is named as the spec names it
    ("Transformer wins", "MAMBA wins on efficiency"); any other pair by its keys ("V2 wins", "V1 wins ...")."""
    M, B, d = model.upper(), baseline.upper(), f"{d_train:+.2f}"
    spec_pair = spec_name(model) != M and spec_name(baseline) != B
    Mn, Bn = (spec_name(model), spec_name(baseline)) if spec_pair else (M, B)
    return {
        "wins": f"Scenario 1 — {Mn} wins on quality ({M} − {B} = {trend}).",
        "mixed": f"Scenario 3 — mixed: {M}'s quality lead shrinks at higher resolution ({trend}).",
        "efficient": f"Scenario 2 — {Bn} wins on efficiency: similar quality ({M} − {B} = {d} dB) "
        f"while {M} costs {step_ratio:.2f}× {B}'s time per training step.",
        "same cost": f"Scenario 2 on quality ({M} − {B} = {d} dB), but no efficiency win for {Bn} "
        f"at this scale: both cost about the same per training step ({M} {step_ratio:.2f}× {B}).",
        "not efficient": f"Scenario 2 on quality only ({M} − {B} = {d} dB), but {Bn} does NOT win "
        f"on efficiency at this scale: {M} takes {step_ratio:.2f}× {B}'s time per training step.",
        "between": f"Between Scenarios 1 and 2: {M} is ahead by {d} dB at {res}², more than the ~1 dB of 'similar "
        "quality' but short of the spec's 2–4 dB.",
        "baseline better": f"None of the three: {label(baseline)} is better on quality ({M} − {B} = {d} dB at "
        f"{res}²); the spec's hypotheses all assume {M} ≥ {B}.",
    }[case]


# ----------------------------------------------------------------------------------------------
# The verdict (computed from the saved numbers)
# ----------------------------------------------------------------------------------------------


def _get(df, **where):
    for k, v in where.items():
        df = df[df[k] == v]
    return df.iloc[0] if len(df) else None


def _floor_facts(summary, per_image, runs, train_res, models, photo_names, budget, est) -> dict:
    """Per model, against the linear-interpolation floor at the training resolution: the margin per crop, the
    margin per held-out photograph, the runs below the floor, the photographs behind it."""
    at_budget = per_image[per_image["budget"] == budget]
    margins, by_photo = {}, {}  # per crop (summary); per held-out photograph (its crops averaged, one per source)
    for k in models:
        fm = floor_margin(at_budget, k, est).set_index("resolution")
        if train_res in fm.index:
            margins[k] = fm.loc[train_res]
        fp = paired_differences(at_budget, k, "linear", est, b_estimator="interp", unit="source", resolution=train_res)
        if len(fp):
            by_photo[k] = fp.droplevel("resolution")
    below = []  # (budget, model, text)
    for b in BUDGETS:
        floor = _get(summary, budget=b, method="linear", estimator="interp", resolution=train_res)
        for k in models:
            m = _get(summary, budget=b, method=k, estimator=est, resolution=train_res)
            if m is not None and floor is not None and m["psnr_mean"] <= floor["psnr_mean"]:
                below.append((b, k, f"{k.upper()} {BUDGET_LABELS[b]} {m['psnr_mean']:.2f} dB"))
    # "Clearly" above the floor: a margin beyond 2 standard errors over the crops. Crops of one photograph are
    # correlated, so the margin per held-out photograph is checked too and any photograph behind is named.
    unclear = [k for k, m in margins.items() if 0 < m["delta"] < 2 * m["sem"]]
    behind = {}  # model -> [(photograph, margin over its crops, crops)]
    if by_photo:
        crops = at_budget[at_budget["resolution"] == train_res].groupby("source")["image"].nunique()
        for k in (k for k, m in margins.items() if m["delta"] > 0 and k in by_photo):
            for src, d in by_photo[k][by_photo[k] <= 0].items():
                name = photo_names[int(src)] if photo_names and int(src) < len(photo_names) else f"#{int(src)}"
                behind.setdefault(k, []).append((name, d, int(crops[src])))
    return {"margins": margins, "by_photo": by_photo, "below": below, "unclear": unclear, "behind": behind}


def _pair(summary, per_image, runs, train_res, model, baseline, models, facts, budget, est) -> tuple[dict, list]:
    """One model against the baseline: its scenario, headline and lines, and the caveat on its difference."""
    B, M = baseline.upper(), model.upper()
    delta = paired_delta(per_image[per_image["budget"] == budget], model, baseline, estimator=est)
    delta = delta.set_index("resolution")
    if train_res not in delta.index:
        return {"model": model, "scenario": "n/a", "headline": f"Needs both {B} and {M} results.", "lines": []}, []
    res = sorted(delta.index)
    hi = res[-1]
    d0, s0, n = float(delta.loc[train_res, "delta"]), float(delta.loc[train_res, "sem"]), int(delta.loc[train_res, "n"])
    dh = float(delta.loc[hi, "delta"])
    run = {k: _get(runs, budget=budget, model=k) for k in (baseline, model)}
    step_ratio = run[model]["ms_per_step"] / run[baseline]["ms_per_step"]
    mem_ratio = run[model]["peak_mem_mb"] / run[baseline]["peak_mem_mb"]
    trend = f"{d0:+.2f} dB at {train_res}² → {dh:+.2f} dB at {hi}²"
    scenario, case = decide_scenario(d0, None if hi == train_res else dh, step_ratio)
    head = headline(case, model, baseline, d0, trend, step_ratio, train_res)

    lines = [
        f"Quality, equal steps ({int(run[baseline]['steps'])} {B} / {int(run[model]['steps'])} {M} steps), posterior "
        f"mean, paired over {n} held-out crops: {M} − {B} PSNR = "
        + ", ".join(f"{delta.loc[r, 'delta']:+.2f} ± {delta.loc[r, 'sem']:.2f} dB at {r}²" for r in res)
        + ".",
        f"Cost: {M} takes {step_ratio:.2f}× {B}'s time per training step ({run[model]['ms_per_step']:.1f} vs "
        f"{run[baseline]['ms_per_step']:.1f} ms) and {mem_ratio:.2f}× its peak training memory "
        f"({run[model]['peak_mem_mb']:.0f} vs {run[baseline]['peak_mem_mb']:.0f} MB).",
    ]
    floor = _get(summary, budget=budget, method="linear", estimator="interp", resolution=train_res)
    pair = [k for k in models if k in (baseline, model)]
    margins, by_photo = facts["margins"], facts["by_photo"]
    if floor is not None and all(k in margins for k in pair):
        lines.append(f"Against the floor (linear interpolation, {floor['psnr_mean']:.2f} dB at {train_res}²), paired "
                     "over the same crops: " + ", ".join(
                         f"{k.upper()} {margins[k]['delta']:+.2f} ± {margins[k]['sem']:.2f} dB (better on "
                         f"{int(margins[k]['wins'])} of {int(margins[k]['n'])} crops"
                         + (f"; ahead on {int((by_photo[k] > 0).sum())} of {len(by_photo[k])} held-out photographs"
                            if k in by_photo else "") + ")"
                         for k in pair) + ".")  # fmt: skip
    at_budget = per_image[per_image["budget"] == budget]
    sample_delta = paired_delta(at_budget, model, baseline, estimator="sample").set_index("resolution")
    if train_res in sample_delta.index:
        lines.append(f"With one sampler draw instead of the posterior mean: {M} − {B} = "
                     f"{sample_delta.loc[train_res, 'delta']:+.2f} ± {sample_delta.loc[train_res, 'sem']:.2f} dB "
                     f"at {train_res}².")  # fmt: skip
    for r in dict.fromkeys((train_res, hi)):  # one line when the training resolution is the highest
        inf = {k: _get(summary, budget=budget, method=k, estimator="sample", resolution=r) for k in (baseline, model)}
        if inf[baseline] is not None and inf[model] is not None:
            ratio = inf[model]["sec_per_image"] / inf[baseline]["sec_per_image"]
            lines.append(
                f"Inference at {r}² ({inf[baseline]['sampler']}): {M} takes {ratio:.2f}× {B}'s time per image."
            )
    at_time = per_image[per_image["budget"] == "equal_time"]
    time_delta = paired_delta(at_time, model, baseline, estimator=est).set_index("resolution")
    if train_res in time_delta.index:
        t_run = {k: _get(runs, budget="equal_time", model=k) for k in (baseline, model)}
        lines.append(f"Equal wall-clock ({t_run[baseline]['time_budget_s']:.0f} s each: "
                     f"{int(t_run[baseline]['steps'])} {B} / {int(t_run[model]['steps'])} {M} steps): {M} − {B} = "
                     f"{time_delta.loc[train_res, 'delta']:+.2f} ± {time_delta.loc[train_res, 'sem']:.2f} dB at "
                     f"{train_res}²" + (f", {time_delta.loc[hi, 'delta']:+.2f} dB at {hi}²" if hi != train_res else "")
                     + ".")  # fmt: skip

    # The headline's caveat: the first of (a model of this pair below the floor at this budget; not clearly above
    # it; behind it on some held-out photograph) that holds.
    below = [x for x in facts["below"] if x[1] in pair]
    unclear = [k for k in facts["unclear"] if k in pair]
    behind = {k: v for k, v in facts["behind"].items() if k in pair}
    if any(b == budget for b, _, _ in below):
        head += " (Caveat: not both models beat the interpolation floor — see below.)"
    elif unclear and not below:
        head += " (Caveat: not clearly above the interpolation floor — see below.)"
    elif behind and not below and not unclear:
        worst, n_photos = max(len(v) for v in behind.values()), per_image["source"].nunique()
        head += f" (Caveat: behind the interpolation floor on {worst} of {n_photos} held-out photographs — see below.)"

    caveats = []
    if abs(d0) < 2 * s0:
        what = "difference" if len(models) == 2 else f"{M} − {B} difference"
        caveats.append(f"The {train_res}² {what} ({d0:+.2f} dB) is within 2 standard errors ({s0:.2f} dB) of zero "
                       f"over {n} crops: not resolved at this sample size.")  # fmt: skip
    return {"model": model, "scenario": scenario, "headline": head, "lines": lines}, caveats


def verdict(
    summary: pd.DataFrame,
    per_image: pd.DataFrame,
    runs: pd.DataFrame,
    train_res: int,
    photo_names: list[str] | None = None,
    models=DEFAULT_MODELS,
    baseline: str = DEFAULT_BASELINE,
) -> dict:
    """Which of the spec's scenarios the numbers support, for each model against the baseline. Quality: equal
    steps, posterior mean (see the report's method paragraph). Returns {"pairs": [{model, scenario, headline,
    lines}, ...] (one per model other than the baseline, in `models` order), "caveats": [...]}."""
    budget, est = "equal_steps", "mean"
    models = list(models)
    facts = _floor_facts(summary, per_image, runs, train_res, models, photo_names, budget, est)
    pairs, caveats = [], []
    for model in (k for k in models if k != baseline):
        pair, pair_caveats = _pair(summary, per_image, runs, train_res, model, baseline, models, facts, budget, est)
        pairs.append(pair)
        caveats += pair_caveats

    if facts["below"]:
        floor = _get(summary, budget=budget, method="linear", estimator="interp", resolution=train_res)
        caveats.append(f"Below the linear-interpolation floor ({floor['psnr_mean']:.2f} dB) at {train_res}² with the "
                       f"posterior mean: {', '.join(x[2] for x in facts['below'])}. Under-trained at this budget: the "
                       "comparison then says which model learns faster, not which architecture is better.")  # fmt: skip
    margins = facts["margins"]
    if facts["unclear"]:
        n = max(int(margins[k]["n"]) for k in facts["unclear"])  # the crops scored (paired with the floor)
        caveats.append("Above the linear-interpolation floor on average but not clearly: "
                       + ", ".join(f"{k.upper()}'s margin ({margins[k]['delta']:+.2f} dB) is within 2 standard errors "
                                   f"({margins[k]['sem']:.2f} dB)" for k in facts["unclear"])
                       + f" over {n} crops. At this budget the learned models only match a non-learned "
                       "interpolator; their ranking against each other is what the comparison can say.")  # fmt: skip
    if facts["behind"]:
        n_photos = per_image["source"].nunique()
        caveats.append(f"Not ahead of the linear-interpolation floor on every held-out photograph ({n_photos} of "
                       "them; crops of one photograph are correlated, so the crop-level standard error overstates how "
                       "general the margin is): " + "; ".join(
                           f"{k.upper()} " + ", ".join(f"{d:+.2f} dB on {name} ({c} crops)" for name, d, c in v)
                           for k, v in facts["behind"].items()) + ".")  # fmt: skip
    for k in models:
        r = _get(runs, budget="equal_time", model=k)
        if r is not None and r["steps"] < 0.9 * r["target_steps"]:
            caveats.append(f"{label(k)}'s equal-time run reached the time limit at step {int(r['steps'])} of the "
                           f"{int(r['target_steps'])} its schedule was sized for (the calibration overestimated its "
                           "speed), so its learning rate had not fully decayed.")  # fmt: skip
    return {"pairs": pairs, "caveats": caveats}


# ----------------------------------------------------------------------------------------------
# Figures and tables, from the saved data
# ----------------------------------------------------------------------------------------------


def plot_loss_curves(train_csv, out_png) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.read_csv(train_csv)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    styles = {"equal_steps": "-", "equal_time": "--"}
    doubled = set(df.loc[df["reused"], "model"])  # models whose one run serves both budgets
    for (budget, model), g in df.groupby(["budget", "model"], sort=False):
        if g["reused"].any():  # the same run as the other budget's: drawn once
            continue
        name = f"{label(model)}, " + ("both budgets" if model in doubled else BUDGET_LABELS[budget])
        for ax, x in zip(axes, ("step", "train_time_s")):
            ax.plot(g[x], g["val_loss"], linestyle=styles[budget], color=color(model), marker=".", label=name)
    axes[0].set(xlabel="optimizer step", ylabel="validation flow-matching MSE", yscale="log")
    axes[1].set(xlabel="training time (s)", yscale="log")
    axes[0].legend(fontsize=7)
    fig.suptitle("Validation loss (fixed noise and times, held-out photos)", fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, out_png, dpi=120)
    plt.close(fig)
    return Path(out_png)


def delta_table(per_image: pd.DataFrame, model: str, baseline: str) -> str:
    """Markdown: model − baseline PSNR per budget × estimator (rows) and resolution (columns)."""
    lines = []
    for budget in BUDGETS:
        for est in ("mean", "sample"):
            d = paired_delta(per_image[per_image["budget"] == budget], model, baseline, estimator=est)
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
        lines.append(f"| {BUDGET_LABELS[r.budget]}{note} | {label(r.model)} | {r.params / 1e6:.2f}M | {r.steps} "
                     f"| {r.train_time_s:.1f} | {r.ms_per_step:.1f} | {r.epoch_time_s:.2f} ({r.steps_per_epoch}) "
                     f"| {r.peak_mem_mb:.0f} | {r.best_val:.4f} |")  # fmt: skip
    return "\n".join(lines)


def inference_table(summary: pd.DataFrame) -> str:
    df = summary[(summary["budget"] == "equal_steps") & (summary["estimator"] != "interp")]
    lines = ["| resolution | model | sampler | s / image | peak memory (MB) |", "|---|---|---|---:|---:|"]
    for r in df.sort_values(["resolution", "method", "estimator"]).itertuples():
        mem = "–" if pd.isna(r.infer_peak_mem_mb) else f"{r.infer_peak_mem_mb:.0f}"
        lines.append(f"| {r.resolution}² | {label(r.method)} | {r.sampler} (batch {r.batch}) | {r.sec_per_image:.4f} "
                     f"| {mem} |")  # fmt: skip
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


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


def data_source(data: str | None) -> str:
    """The data set in words: a manifest folder (make data) with its split by source, any other folder, or
    scikit-image's photographs."""
    from models.sources import MANIFEST, read_manifest, summary

    if not data:
        return "scikit-image's bundled photographs: 16 train, 3 held out"
    if (Path(data) / MANIFEST).is_file():
        try:
            man = read_manifest(data, verify=False)
            return f"the photographs in `{data}` ({summary(man)}; split by source, from its manifest)"
        except ConfigError:
            pass
    return f"the images in `{data}`"


def describe(key: str, cfg: dict, params: str) -> str:
    """One model's size in words, from its saved config."""
    size = f"{key.upper()} d_model {cfg['d_model']} × {cfg['num_layers']}"
    if "d_state" in cfg:
        return f"{size} Mamba blocks (d_state {cfg['d_state']}), {params} parameters"
    if "dim_feedforward" in cfg:
        return (f"{size} Transformer layers, {cfg['num_heads']} heads, FFN {cfg['dim_feedforward']}, {params} "
                "parameters")  # fmt: skip
    return f"{size} layers, {params} parameters"


def commits(envs: list[dict]) -> str:
    """The commit(s) a run's parts ran at, in order, with their part counts: "commit `abc`", or "parts at commits
    `abc` (3), `def` (2)" for a run resumed across commits. From each environment record's phases (its own commit
    where it has none)."""
    parts = [ph.get("git_commit") or e["git_commit"] for e in envs for ph in e.get("phases") or [{}]]
    n = {c: parts.count(c) for c in dict.fromkeys(parts)}
    if len(n) == 1:
        return f"commit `{parts[0]}`"
    return "parts at commits " + ", ".join(f"`{c[:12]}` ({k})" for c, k in n.items())


def _where(env: dict) -> str:
    """The GPU for a CUDA run, else the CPU (bench.env records the GPU even when the run was on the CPU)."""
    gpu = env.get("gpu") if str(env.get("device", "")).startswith("cuda") else None
    return gpu or env.get("cpu") or env["device"]


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
    models, baseline = list(st.get("models") or DEFAULT_MODELS), st.get("baseline") or DEFAULT_BASELINE
    others = [k for k in models if k != baseline]
    train_res, bud = int(st["resolution"]), env["budgets"]
    v = verdict(summary, per_image, runs, train_res, _photo_names(env), models, baseline)
    grids = sorted(out.glob("quality_samples_*.png"))
    params = {r.model: f"{r.params / 1e6:.2f}M" for r in runs.itertuples()}
    cfg = {k: env["models"]["equal_steps"][k]["config"] for k in models}
    source = data_source(st["data"])
    mamba = f"mamba_ssm {env['mamba_ssm']}" if env["mamba_ssm"] else "no mamba_ssm"
    both = "both" if len(models) == 2 else "all"
    predicts = list(dict.fromkeys(_prediction(cfg[k]) for k in models))
    predicts = (f"{predicts[0]} ({both} models)" if len(predicts) == 1
                else "; ".join(f"{k.upper()}: {_prediction(cfg[k])}" for k in models))  # fmt: skip
    B = baseline.upper()
    M = others[0].upper() if len(others) == 1 else "Vk"  # the rules' model: the one compared, or each of them
    lines = [
        f"# {' vs '.join(label(k) for k in models)}: quality under equal budgets",
        "",
        f"Run on {_where(env)} ({env['device']}), torch {env['torch']}, {mamba} (V1 mixer: {env['mixer_backend']}), "
        f"{commits([env])}, {env.get('date') or env.get('date_utc')}, "
        f"{env['wall_clock_s'] / 60:.1f} min in all. Command: `{env['command']}`"
        + (f"; overrides from the environment: {env['env_overrides']}" if env["env_overrides"] else "")
        + ".",
        "",
        f"**Setup.** {train_res}×{train_res} crops of {source} (evaluation on {int(summary['n'].max())} crops of the "
        f"held-out images), {st['observed_frac']:.0%} of the "
        f"pixels observed, batch {st['batch_size']}, AdamW lr {st['lr']:g} (warm-up, cosine), bf16 autocast on CUDA, "
        f"seed {st['seed']}; the decoder predicts {predicts}, dropout "
        + " / ".join(f"{k.upper()} {cfg[k]['dropout']:g}" for k in models)
        + f". Models ({st['preset']} preset): "
        + "; ".join(describe(k, cfg[k], params[k]) for k in models)
        + ".",
        "",
        f"**Budgets.** Equal wall-clock: {bud['equal_time_s']:g} s of training each (validation and checkpoints "
        "not counted); each model's cosine schedule was sized to the steps a short calibration said it makes in that "
        "time ("
        + ", ".join(f"{k.upper()} {ms:.1f} ms/step" for k, ms in bud["calibrated_ms_per_step"].items())
        + f"), and the time was also a hard stop. Equal steps: {bud['equal_steps']} optimizer steps each — "
        f"{bud['equal_steps_rule']}.",
        "",
        "## Verdict",
        "",
    ]
    for pair in v["pairs"]:
        lines += [f"**{pair['headline']}**", "", *[f"- {line}" for line in pair["lines"]], ""]
    lines += [
        "The verdict is computed, not written: it uses the **equal-steps** budget (the architectures at the same "
        f"training) and the **posterior-mean** estimate ({_sampler(summary, 'mean')}), the "
        "MMSE-optimal reconstruction, which is what PSNR/MSE reward; a single sampler draw carries the posterior's "
        f"spread (~2× its MSE) and is reported alongside. Rules: {M} − {B} ≥ {WIN_DB:g} dB at the training "
        f"resolution and at the highest zero-shot resolution → Scenario 1; ≥ {WIN_DB:g} dB at the training "
        f"resolution but < {WIN_DB:g} dB at the highest → Scenario 3; |{M} − {B}| < {TIE_DB:g} dB → Scenario 2, "
        f"whose efficiency half needs {M} ≥ {EFF_RATIO:g}× {B}'s measured time per training step; in between or {B} "
        "ahead → said so.",
        "",
        "**Caveats.**",
        "",
        *[f"- {c}" for c in v["caveats"]],
        f"- This is a tiny budget (minutes, not the spec's 1,000 epochs) on a small data set ({source}): the "
        "numbers say which model learns faster at this scale, not which one is better when trained to "
        f"convergence. One seed, one learning rate for {both} models (no per-model tuning). Zero-shot "
        "super-resolution is scored against the crop rendered at the higher resolution, which holds detail the "
        f"{train_res}² context never saw, so every method (the floors included) loses PSNR there.",
        "",
    ]
    for budget in BUDGETS:
        lines += [f"## Quality — {BUDGET_LABELS[budget]}", "",
                  quality_table(summary[summary["budget"] == budget], train_res, models), ""]  # fmt: skip
    lines += [
        "PSNR (dB, data range 2 for values in [-1, 1]), SSIM (RGB, 7×7 window) and MSE over the whole image, mean ± "
        f"std over the crops. At {train_res}² the observed pixels are kept and the others are predicted; at the "
        "zero-shot resolutions every pixel centre of the denser grid is queried, from the same "
        f"{train_res}² context.",
        "",
    ]
    for k in others:
        lines += [f"## {k.upper()} − {B} PSNR (dB), paired over the same crops, ± standard error", "",
                  delta_table(per_image, k, baseline), ""]  # fmt: skip
    lines += [
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
