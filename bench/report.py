"""Tables, fits, plots and results/README.md — rendered only from saved sweep data.

    python -m bench.report                 # = make plots: re-render results/ (and results/cpu/ if present)
    python -m bench.report --out runs/bench_quick

Reads <out>/raw/sweep_<tag>.json (tag = B<batch>_<dtype>, written by bench.sweep) and writes, per tag:
    model_bench_<tag>.csv          the measured rows, one line per model/backend/level/resolution/kind
    flops_per_sample.csv           FLOPs of one forward pass per sample, analytic / fvcore / FlopCounterMode
    fits_<tag>.csv                 log-log exponent of each metric against N
    crossover_<tag>.csv            where V4 starts to cost more than V1, per metric
    spec_vs_measured_<tag>.csv     the spec's expectations next to the measurements
    max_batch_<tag>.csv            the largest batch whose training step fits
    tables/<metric>_<level>_<tag>.md   the scaling tables (rows: r and N; columns: model × backend; Vk/V1)
    scaling_latency_<tag>.png, scaling_memory_<tag>.png, scaling_flops_per_sample.png,
    throughput_<tag>.png, max_batch_<dtype>.png (the largest batch does not depend on the timed batch)
    scaling_device_<tag>.png       device time (CUDA-graph replay) and host overhead vs N
    per_token_<tag>.png            per-token cost vs N, one line per model and backend (latency and throughput)
    throughput_regime_<tag>.csv    the throughput regime (constant tokens per batch): tokens/s, TFLOP/s, % of peak
    breakdown_<tag>.csv, breakdown_train_<series>_<tag>.png   GPU kernel time per component (bench.breakdown)
    README.md                      all of the above on one page
Fits, crossovers and the spec table use the device time where the run has one (CUDA), else the wall time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.breakdown import COMPONENTS, breakdown_table, component_exponents, plot_breakdown
from bench.env import summary_line
from bench.fit import loglog_slope
from models.utils import ArgParser, atomic_savefig, atomic_to_csv, atomic_write_text, cli_main
from models.variants import BASELINE, VARIANTS, get_variant, series_name

REPO = Path(__file__).resolve().parents[1]
LEVEL_TITLES = {
    "model": "Whole model",
    "encoder": "Encoder stack (model.encode)",
    "mixer": "Sequence mixer alone ({mixers} on (B, N, d_model))",
}
# Series colours no record names (a backend added to a variant without a colour) are taken from here, in order.
SPARE_COLORS = ("tab:gray", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#9edae5",
                "tab:pink", "tab:olive", "tab:cyan", "#f7b6d2", "#dbdb8d", "#7f7f7f")  # fmt: skip


def series_order() -> list[str]:
    """Every variant × backend series, in table order: the column order of the tables and the legend order."""
    return [series_name(k, b) for k, v in VARIANTS.items() for b in v.backends]


def series_colors() -> dict[str, str]:
    """One fixed colour per series in every plot: the record's, else the next spare one."""
    named = {series_name(k, b): c for k, v in VARIANTS.items() for b, c in v.backend_colors.items()}
    spare = iter(c for c in SPARE_COLORS if c not in set(named.values()))
    return {s: named.get(s) or next(spare, "0.5") for s in series_order()}


def _present(df: pd.DataFrame) -> list[str]:
    """Variants of the table that have rows in df, baseline first, then table order."""
    have = set(df["model"]) if len(df) else set()
    return [k for k in VARIANTS if k in have]


def _compared(df: pd.DataFrame) -> list[str]:
    """The variants compared with the baseline: those with rows, other than the baseline."""
    return [k for k in _present(df) if k != BASELINE]


def _short(model: str) -> str:
    return get_variant(model).short


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_sweeps(out: Path) -> list[tuple[str, list, pd.DataFrame]]:
    """[(tag, runs, rows)] for every raw/sweep_<tag>.json under `out`."""
    found = []
    for path in sorted((out / "raw").glob("sweep_*.json")):
        data = json.loads(path.read_text())
        df = pd.DataFrame(data.get("rows", []))
        if df.empty:
            continue
        found.append((path.stem.removeprefix("sweep_"), data.get("runs", []), df))
    return found


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df else pd.Series([np.nan] * len(df), index=df.index)


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    variant = _col(df, "variant").map(lambda v: f" {v}" if isinstance(v, str) and v else "")
    df["series"] = [series_name(m, b) + v for m, b, v in zip(df["model"], df["backend"], variant)]
    for c in ("median_ms", "iqr_ms", "mem_alloc_peak_mb", "mem_alloc_before_mb", "rss_peak_mb", "rss_before_mb",
              "gflop_analytic", "gflop_fvcore", "gflop_flopcounter", "tflops", "samples_per_s", "tokens_per_s",
              "epoch_min", "max_batch", "params", "nvml_used_peak_mb", "mem_reserved_peak_mb", "device_ms", "kernel_ms",
              "host_ms", "host_frac", "graph_ms", "tflops_device", "tokens_per_s_device", "samples_per_s_device",
              "pct_peak_device", "us_per_token", "us_per_token_device", "sm_clock_mhz", "power_w", "round_spread_pct",
              "epoch_min_device", "n_rounds", "peak_tflops"):  # fmt: skip
        df[c] = pd.to_numeric(_col(df, c), errors="coerce")
    df["note"] = _col(df, "note").fillna("").astype(str)
    gpu = df["mem_alloc_peak_mb"].notna()
    # the step's peak above what the process held before its model was built (mem_resident_mb: the other points of
    # its unit, caches); rows of older runs have no such column and keep the process's absolute peak
    peak = np.where(gpu, df["mem_alloc_peak_mb"], df["rss_peak_mb"])  # the process's absolute peak
    resident = pd.to_numeric(_col(df, "mem_resident_mb"), errors="coerce").fillna(0.0)
    df["peak_mem_gb"] = (peak - resident) / 1024
    base = np.where(gpu, df["mem_alloc_before_mb"], df["rss_before_mb"])
    df["act_mem_gb"] = (peak - base) / 1024  # above the allocation just before the step (both absolute)
    df["host_pct"] = 100 * df["host_frac"]
    df["regime"] = _col(df, "regime").map(lambda v: v if isinstance(v, str) else "")
    # rows of older runs: the per-token wall cost from the median
    per_token = 1e3 * df["median_ms"] / (pd.to_numeric(df["batch"], errors="coerce") * df["N"])
    df["us_per_token"] = df["us_per_token"].fillna(per_token)
    return df


def has_device_time(df: pd.DataFrame) -> bool:
    """Whether the run measured device time (a CUDA run): then fits, crossovers and the spec table use it."""
    return bool((df["device_ms"] > 0).any())


def time_col(df: pd.DataFrame) -> tuple[str, str]:
    """(column, words) of the time the fits and ratios use: device time on CUDA, wall time otherwise."""
    if has_device_time(df):
        return "device_ms", "device time (CUDA-graph replay)"
    return "median_ms", "wall time (no device time in this run)"


def primary_of(runs: list, df: pd.DataFrame | None = None) -> dict:
    """Variant → the backend its ratios use: the record's primary for the run's device (V1 mamba_ssm and V4 sdpa on
    GPU, reference and sdpa on CPU); when that one has no successful row (e.g. mamba_ssm not installed), the first of
    the record's fallbacks that has."""
    gpu = any(r.get("gpu") for r in runs)
    out = {k: v.primary["cuda" if gpu else "cpu"] for k, v in VARIANTS.items()}
    if df is not None and len(df):
        ok = df[(df["status"] == "ok") & (df["kind"].isin(["fwd", "train"]))]
        for m, v in VARIANTS.items():
            order = [out[m]] + [b for b in v.fallback if b != out[m]]
            have = set(ok[ok["model"] == m]["backend"])
            out[m] = next((b for b in order if b in have), out[m])
    return out


def primary_series(runs: list, df: pd.DataFrame | None = None) -> dict[str, str]:
    """Variant → its primary series name ('v1' → 'V1 mamba_ssm')."""
    return {m: series_name(m, b) for m, b in primary_of(runs, df).items()}


def _ordered(series) -> list[str]:
    order = series_order()
    known = [s for s in order if s in set(series)]
    return known + sorted(set(series) - set(known))


# ----------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------


def fmt_num(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    x = float(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))}f}"


def md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(no data)_\n"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in row) + " |")
    return "\n".join(lines) + "\n"


def _text(value) -> str:
    """A saved text cell, or "" where the row has none (NaN in rows that never measured it)."""
    return value if isinstance(value, str) else ""


def _status_cell(row) -> str:
    status = row.get("status")
    if status == "oom":
        return "OOM"
    if status == "unavailable":
        return "n/a"
    if status == "skipped":
        return "skipped"
    if status == "error":
        return "error"
    return "—"


# ----------------------------------------------------------------------------------------------
# Scaling tables
# ----------------------------------------------------------------------------------------------

METRICS = {  # name → (kind, value column, title, unit)
    "fwd_latency": ("fwd", "median_ms", "Forward latency", "ms, median [IQR]"),
    "train_latency": ("train", "median_ms", "Training step latency", "ms, median [IQR]"),
    "fwd_device": ("fwd", "device_ms", "Forward device time (CUDA-graph replay; else profiler kernel sum)", "ms"),
    "train_device": ("train", "device_ms", "Training step device time (CUDA-graph replay incl. AdamW; else kernel sum)",
                     "ms"),
    "train_host": ("train", "host_pct", "Training step host overhead: (eager − kernel time) / eager", "%"),
    "fwd_host": ("fwd", "host_pct", "Forward host overhead: (eager − kernel time) / eager", "%"),
    "fwd_memory": ("fwd", "peak_mem_gb", "Peak memory, inference", "GiB"),
    "train_memory": ("train", "peak_mem_gb", "Peak memory, training step", "GiB"),
    "train_throughput": ("train", "samples_per_s", "Training throughput", "samples/s"),
    "fwd_throughput": ("fwd", "samples_per_s", "Inference throughput", "samples/s"),
    "train_tflops": ("train", "tflops", "Achieved TFLOP/s, training step (3 × analytic forward FLOPs / time)",
                     "TFLOP/s"),
    "fwd_tflops": ("fwd", "tflops", "Achieved TFLOP/s, forward (analytic FLOPs / time)", "TFLOP/s"),
    "epoch_time": ("train", "epoch_min", "Training time per epoch", "min"),
}  # fmt: skip


def scaling_table(df: pd.DataFrame, runs: list, level: str, kind: str, col: str, batch: int) -> pd.DataFrame:
    """Rows: r and N; columns: series; plus Vk/V1 (primary backends, each variant vs the baseline) where measured."""
    sub = df[(df["level"] == level) & (df["kind"] == kind) & (df["batch"] == batch)]
    if sub.empty:
        return pd.DataFrame()
    prim = primary_series(runs, df)
    base = prim[BASELINE]
    out = []
    for r in sorted(sub["res"].unique()):
        at = sub[sub["res"] == r]
        line = {"r": int(r), "N": int(r) ** 2}
        vals = {}
        for series in _ordered(sub["series"]):
            rows = at[at["series"] == series]
            if rows.empty:
                line[series] = ""
                continue
            row = rows.iloc[-1]
            if row["status"] == "ok" and pd.notna(row[col]):
                vals[series] = row[col]
                cell = fmt_num(row[col])
                if col == "median_ms" and pd.notna(row.get("iqr_ms")) and (row.get("n_reps") or 0) >= 2:
                    cell += f" [{fmt_num(row['iqr_ms'], 2)}]"
                line[series] = cell
            else:
                line[series] = _status_cell(row)
        for m in _compared(sub):
            sk = prim[m]
            line[f"{_short(m)}/{_short(BASELINE)}"] = (
                fmt_num(vals[sk] / vals[base]) + "×" if base in vals and sk in vals and vals[base] > 0 else "—"
            )
        out.append(line)
    return pd.DataFrame(out)


def flops_per_sample_table(df: pd.DataFrame, runs: list, level: str) -> pd.DataFrame:
    """Analytic GFLOP per sample (one forward pass) by resolution, per variant, with Vk/V1."""
    sub = df[(df["kind"] == "flops") & (df["level"] == level) & (df["status"] == "ok")]
    if sub.empty:
        return pd.DataFrame()
    out = []
    for r in sorted(sub["res"].unique()):
        at = sub[sub["res"] == r]
        line = {"r": int(r), "N": int(r) ** 2}
        vals = {}
        for m in _present(sub):
            v = at[at["model"] == m]["gflop_analytic"]
            if not v.empty:
                vals[m] = float(v.iloc[0])
                line[f"{_short(m)} GFLOP"] = fmt_num(vals[m])
        for m in _compared(sub):
            ratio = fmt_num(vals[m] / vals[BASELINE]) + "×" if m in vals and BASELINE in vals else "—"
            line[f"{_short(m)}/{_short(BASELINE)}"] = ratio
        out.append(line)
    return pd.DataFrame(out)


def flops_three_way(df: pd.DataFrame) -> pd.DataFrame:
    sub = df[df["kind"] == "flops"].sort_values(["level", "model", "backend", "res"])
    out = []
    for _, row in sub.iterrows():
        ok = row["status"] == "ok"
        out.append({
            "model": row["model"], "backend": row["backend"], "level": row["level"], "r": int(row["res"]),
            "N": int(row["N"]), "params": int(row["params"]) if pd.notna(row.get("params")) else "",
            "analytic GFLOP": fmt_num(row["gflop_analytic"]) if ok else _status_cell(row),
            "fvcore×2 GFLOP": fmt_num(row["gflop_fvcore"]) if ok else "",
            "FlopCounterMode GFLOP": fmt_num(row["gflop_flopcounter"]) if ok else "",
            "agree": ("yes" if row.get("agree") else "NO") if ok else "",
            "note": row["note"],
        })  # fmt: skip
    return pd.DataFrame(out)


def max_batch_table(df: pd.DataFrame) -> pd.DataFrame:
    sub = df[df["kind"] == "max_batch"].sort_values(["res", "model"])
    out = []
    for _, row in sub.iterrows():
        out.append({
            "model": row["series"], "r": int(row["res"]), "N": int(row["N"]),
            "max batch (training step)": _text(row.get("max_batch_desc")) or _status_cell(row),
            "tokens at max": fmt_num(row.get("tokens_at_max")) if row["status"] == "ok" else "",
            "probes": _text(row.get("probes")), "note": row["note"],
        })  # fmt: skip
    return pd.DataFrame(out)


def throughput_table(df: pd.DataFrame, runs: list, kind: str = "train") -> pd.DataFrame:
    """The throughput regime (constant tokens per batch, whole model): per r and series the batch, tokens/s in
    device and wall time, achieved TFLOP/s (device time) and its % of the run's measured bf16 matmul peak."""
    sub = df[(df["level"] == "model") & (df["kind"] == kind) & df["regime"].str.contains("throughput")]
    if sub.empty:
        return pd.DataFrame()
    base = primary_series(runs, df).get(BASELINE)
    col = f"vs {_short(BASELINE)} (device time)"
    out = []
    for r in sorted(sub["res"].unique()):
        at = sub[sub["res"] == r]
        lines, dev = [], {}
        for series in _ordered(at["series"]):
            row = at[at["series"] == series].iloc[-1]
            ok = row["status"] == "ok"
            if ok and pd.notna(row.get("device_ms")):
                dev[series] = row["device_ms"]
            lines.append({
                "r": int(r), "N": int(r) ** 2, "series": series, "batch": int(row["batch"]),
                "tokens/batch": int(row["batch"]) * int(r) ** 2,
                "tokens/s (device)": fmt_num(row.get("tokens_per_s_device")) if ok else _status_cell(row),
                "tokens/s (wall)": fmt_num(row.get("tokens_per_s")) if ok else "",
                "TFLOP/s (device)": fmt_num(row.get("tflops_device")) if ok else "",
                "% of bf16 matmul peak": fmt_num(row.get("pct_peak_device")) if ok else "",
                "host overhead %": fmt_num(row.get("host_pct")) if ok else "",
                "SM clock MHz": fmt_num(row.get("sm_clock_mhz"), 4) if ok else "",
            })  # fmt: skip
        for line in lines:  # device time per step / the baseline's (same tokens per batch)
            ok = base in dev and dev[base] > 0 and line["series"] in dev and line["series"] != base
            line[col] = fmt_num(dev[line["series"]] / dev[base]) + "×" if ok else ""
        out += lines
    return pd.DataFrame(out)


def padding_table(df: pd.DataFrame) -> pd.DataFrame:
    """V1 with its default padding (pad_multiple auto: to a multiple of 2048 on mamba_ssm) against pad=off, per
    level, r, batch and kind: device and wall time of both and unpadded / padded."""
    var = _col(df, "variant").fillna("")
    off = df[(var == "pad=off") & (df["status"] == "ok")]
    out = []
    for _, row in off.sort_values(["level", "kind", "batch", "res"]).iterrows():
        same = (var == "") & (df["status"] == "ok")
        for k in ("model", "backend", "level", "res", "batch", "kind"):
            same &= df[k] == row[k]
        base = df[same]
        if base.empty:
            continue
        b = base.iloc[-1]
        line = {"level": row["level"], "kind": row["kind"], "r": int(row["res"]), "N": int(row["N"]),
                "batch": int(row["batch"]), "scan length (padded)": b.get("scan_len", "")}  # fmt: skip
        for col, name in (("device_ms", "device"), ("median_ms", "wall")):
            if pd.notna(b.get(col)) and pd.notna(row.get(col)) and b[col] > 0:
                line[f"{name} ms padded"] = fmt_num(b[col])
                line[f"{name} ms unpadded"] = fmt_num(row[col])
                line[f"unpadded / padded ({name})"] = fmt_num(row[col] / b[col]) + "×"
        out.append(line)
    return pd.DataFrame(out)


def peak_of(runs: list) -> str:
    peaks = [r.get("matmul_peak_tflops") for r in runs if r.get("matmul_peak_tflops")]
    if not peaks:
        return "no matmul peak measured in this run"
    shape = next((r.get("matmul_peak_shape") for r in runs if r.get("matmul_peak_shape")), "")
    return f"bf16 torch.matmul peak measured in the run: {', '.join(fmt_num(p, 4) for p in peaks)} TFLOP/s ({shape})"


# ----------------------------------------------------------------------------------------------
# Fits and crossovers
# ----------------------------------------------------------------------------------------------

FIT_METRICS = {  # name → (kind, column, label)
    "flops": ("flops", "gflop_analytic", "FLOPs (analytic, forward)"),
    "fwd_device": ("fwd", "device_ms", "forward device time"),
    "train_device": ("train", "device_ms", "training-step device time"),
    "fwd_latency": ("fwd", "median_ms", "forward latency"),
    "train_latency": ("train", "median_ms", "training-step latency"),
    "fwd_memory": ("fwd", "act_mem_gb", "inference memory above baseline"),
    "train_memory": ("train", "act_mem_gb", "training memory above baseline"),
}


def fits_table(df: pd.DataFrame, batch: int) -> pd.DataFrame:
    """Least-squares slope of log(metric) vs log(N) over the points that did not OOM (all, and the last two)."""
    out = []
    for kind, col, label in FIT_METRICS.values():
        sub = df[(df["kind"] == kind) & (df["status"] == "ok")]
        if kind != "flops":
            sub = sub[sub["batch"] == batch]
        for (series, level), g in sub.groupby(["series", "level"]):
            g = g.sort_values("N")
            g = g[g[col] > 0]
            if len(g) < 2:
                continue
            big = g[g["res"] >= 128]
            out.append({
                "metric": label, "level": level, "series": series, "exponent": round(loglog_slope(g["N"], g[col]), 2),
                "exponent (last two r)": round(loglog_slope(g["N"].iloc[-2:], g[col].iloc[-2:]), 2),
                "exponent (r ≥ 128)": round(loglog_slope(big["N"], big[col]), 2) if len(big) >= 2 else float("nan"),
                "points": len(g), "r range": f"{int(g['res'].min())}–{int(g['res'].max())}",
            })  # fmt: skip
    return pd.DataFrame(out)


SLOPE_TOL = {1: 0.10, 2: 0.15}  # issue 10: V1's device-time exponent within 1.0 ± 0.1, V4's within 2.0 ± 0.15


def slope_explanations(df: pd.DataFrame, fits: pd.DataFrame, comps: pd.DataFrame) -> list[str]:
    """One sentence per series and level of the training-step device-time fit over r ≥ 128: its exponent against
    the variant's (models.variants: expect.exponent, the encoder's N^k), and, where it is off by more than SLOPE_TOL,
    the components of the breakdown (component_exponents) that make it so: those whose own exponent is off by
    more than the tolerance and that hold ≥ 5 % of the kernel time at the largest r."""
    if fits.empty or comps.empty:
        return []
    f = fits[(fits["metric"] == FIT_METRICS["train_device"][2]) & fits["exponent (r ≥ 128)"].notna()]
    model_of = dict(zip(df["series"], df["model"]))
    out = []
    for _, row in f.iterrows():
        v = VARIANTS.get(model_of.get(row["series"]))
        k0 = getattr(getattr(v, "expect", None), "exponent", None)
        if k0 not in SLOPE_TOL:
            continue
        tol, k = SLOPE_TOL[k0], float(row["exponent (r ≥ 128)"])
        head = (f"**{row['series']}, {row['level']} level**: training-step device time ∝ N^{k:.2f} over r ≥ 128, "
                f"against N^{k0} ± {tol:g} for an {v.complexity} encoder")  # fmt: skip
        if abs(k - k0) <= tol:
            out.append(head + ": within.")
            continue
        g = comps[(comps["series"] == row["series"]) & (comps["level"] == row["level"])]
        if g.empty:
            out.append(head + f": off by {k - k0:+.2f}; this level has no breakdown to explain it.")
            continue
        sign = 1 if k > k0 else -1
        parts = g[(g["component"] != "total kernel time") & (g["share at last r"] >= 0.05)]
        fitted = parts[parts["exponent"].notna()]
        drivers = fitted[(sign * (fitted["exponent"] - k0)) > tol]  # pull the slope the way it is off
        against = fitted[(-sign * (fitted["exponent"] - k0)) > tol]  # pull it the other way
        rest = fitted[~fitted.index.isin(drivers.index) & ~fitted.index.isin(against.index)]
        absent = parts[parts["exponent"].isna()]  # zero at some r: no exponent, but it can still set the slope
        enc = set(comps[(comps["series"] == row["series"]) & (comps["level"] == "encoder")]["component"])
        r0, r1 = (str(g["r range"].iloc[0]).split("–") + [""])[:2]
        outside = row["level"] == "model" and bool(enc)  # a model-level component the encoder lacks is outside it

        why = [f"{c['component']} ∝ N^{c['exponent']:.2f}, from {100 * c['share at first r']:.0f} % of the kernel time "
               f"at {r0}² to {100 * c['share at last r']:.0f} % at {r1}²"
               + (" (none at the encoder level: outside the encoder)" if outside and c["component"] not in enc else "")
               for _, c in drivers.iterrows()]  # fmt: skip
        why += [f"{c['component']}, absent at some r ≥ 128 and {100 * c['share at last r']:.0f} % of the kernel "
                f"time at {r1}²" for _, c in absent.iterrows()]  # fmt: skip
        text = head + f": off by {k - k0:+.2f}. From the breakdown: " + ("; ".join(why) or "no component alone")
        if len(against):
            text += "; partly offset by " + ", ".join(
                f"{c['component']} N^{c['exponent']:.2f}" for _, c in against.iterrows()
            )
        if len(rest):
            text += (
                "; the rest as expected ("
                + ", ".join(f"{c['component']} N^{c['exponent']:.2f}" for _, c in rest.iterrows())
                + ")"
            )
        total = g[g["component"] == "total kernel time"]["exponent"]
        if len(total) and pd.notna(total.iloc[0]) and abs(float(total.iloc[0]) - k) > tol:
            t = float(total.iloc[0])
            text += (f". Caveat: the breakdown's kernel-time total grows ∝ N^{t:.2f}, not N^{k:.2f}: its components "
                     "explain a different slope")  # fmt: skip
        out.append(text + ".")
    return out


def _crossover(ratios: dict) -> str:
    """The smallest r from which the variant costs more than the baseline at every larger r measured."""
    rs = sorted(ratios)
    first = next((r for i, r in enumerate(rs) if all(ratios[x] > 1 for x in rs[i:])), None)
    if first is None:
        return "never in range"
    if first == rs[0]:
        return f"always (from r={rs[0]})"
    where = f"r={first}"
    if any(ratios[x] > 1 for x in rs if x < first):
        where += " (also above 1 at some smaller r)"
    return where


def crossover_table(df: pd.DataFrame, runs: list, batch: int) -> pd.DataFrame:
    """Per metric and level: Vk/V1 (primary backends) at each r, and the first r where it exceeds 1 (two columns
    per compared variant)."""
    prim = primary_series(runs, df)
    base, b0 = prim[BASELINE], _short(BASELINE)
    out = []
    for kind, col, label in FIT_METRICS.values():
        for level in ("mixer", "encoder", "model"):
            sub = df[(df["kind"] == kind) & (df["level"] == level) & (df["status"] == "ok")]
            if kind != "flops":
                sub = sub[sub["batch"] == batch]
            line = {"metric": label, "level": level}
            for m in _compared(df):
                if kind == "flops":  # backend-independent: take either model's first counted row per r
                    a = sub[sub["model"] == BASELINE].groupby("res")[col].first()
                    b = sub[sub["model"] == m].groupby("res")[col].first()
                else:
                    a = sub[sub["series"] == base].set_index("res")[col]
                    b = sub[sub["series"] == prim[m]].set_index("res")[col]
                common = sorted(set(a.index) & set(b.index))
                ratios = {r: float(b[r] / a[r]) for r in common if a[r] > 0}
                if ratios:
                    line[f"{_short(m)} starts to cost more than {b0}"] = _crossover(ratios)
                    line[f"ratios {_short(m)}/{b0}"] = ", ".join(f"r{r}: {fmt_num(ratios[r])}" for r in sorted(ratios))
            if len(line) > 2:
                out.append(line)
    return pd.DataFrame(out).fillna("")


# ----------------------------------------------------------------------------------------------
# The spec's expectations vs the measurements
# ----------------------------------------------------------------------------------------------


def analytic_ratio(model: str, preset: str, level: str, r: int) -> float | None:
    """Analytic FLOPs of `model` / the baseline's at resolution r (one forward pass), from the formulas alone."""
    from bench.flops import analytic_flops

    try:
        ck, cb = get_variant(model).config(preset, env={}), get_variant(BASELINE).config(preset, env={})
    except Exception:
        return None
    return analytic_flops(model, ck, level, 1, r * r) / analytic_flops(BASELINE, cb, level, 1, r * r)


def _get(df, **kw) -> pd.Series | None:
    sub = df
    if "variant" in df and "variant" not in kw:  # the models' default configs
        sub = sub[sub["variant"].fillna("") == ""]
    for k, v in kw.items():
        sub = sub[sub[k] == v]
    sub = sub[sub["status"] == "ok"]
    return None if sub.empty else sub.iloc[-1]


GIB = 2**30  # bytes in a GiB (the tables' memory unit)


def _verdict(measured: float | None, lo: float, hi: float) -> str:
    if measured is None or not math.isfinite(measured):
        return "not measured"
    if lo * 0.8 <= measured <= hi * 1.25:
        return "consistent"
    if measured < lo:
        return f"spec overstates by {fmt_num(lo / measured)}×"
    return f"spec understates by {fmt_num(measured / hi)}×"


def _host_words(row) -> str:
    """'; HOST-BOUND ...' / '; device-bound ...' for a timed row with a measured host share, else ''."""
    if row is None or pd.isna(row.get("host_frac")):
        return ""
    h = float(row["host_frac"])
    if h > 0.5:
        return f"; HOST-BOUND: {100 * h:.0f}% of the eager step is host overhead"
    return f"; device-bound (host overhead {100 * h:.0f}%)"


def _range(lo: float, hi: float, unit: str) -> str:
    """The spec's value as it writes it: "~2 min" (one value) or "~10–20 min"."""
    return f"~{lo}–{hi} {unit}".replace(f"~{lo}–{lo} ", f"~{lo} ")


def _params_row(df: pd.DataFrame, model: str, backend: str) -> pd.Series | None:
    """The row whose `params` a spec table quotes: the variant's FLOP row on its primary backend (another backend
    can have another mixer, e.g. mamba2), else any of its model-level rows on that backend."""
    row = _get(df, kind="flops", level="model", model=model, backend=backend)
    return row if row is not None else _get(df, level="model", model=model, backend=backend)


def architectures_table(df: pd.DataFrame, runs: list, batch: int) -> pd.DataFrame:
    """The spec's "All Architectures" table (layers, parameters, compute vs V1) next to this sweep's values, for a
    sweep of three or more variants (with two, the headline table is the comparison)."""
    present = _present(df)
    if len(present) < 3:
        return pd.DataFrame()
    p = primary_of(runs, df)
    preset = ((runs[-1].get("settings") if runs else None) or {}).get("preset") or "default"
    r0 = 32 if (df["res"] == 32).any() else int(df["res"].min())
    base_t = _get(df, kind="train", level="model", res=r0, batch=batch, model=BASELINE, backend=p[BASELINE])
    b0, out = _short(BASELINE), []
    for m in present:
        v = get_variant(m)
        pr = _params_row(df, m, p[m])
        a = _get(df, kind="flops", level="model", res=r0, model=BASELINE, backend=p[BASELINE])
        b = _get(df, kind="flops", level="model", res=r0, model=m, backend=p[m])
        flops = b["gflop_analytic"] / a["gflop_analytic"] if a is not None and b is not None else None
        t = _get(df, kind="train", level="model", res=r0, batch=batch, model=m, backend=p[m])
        step = t["median_ms"] / base_t["median_ms"] if t is not None and base_t is not None else None
        out.append({
            "variant": v.label, "layers (spec)": v.expect.layers or "—",
            "layers": getattr(v.config(preset, env={}), "num_layers", "—"),
            "parameters (spec)": f"{v.expect.params_m:g}M" if v.expect.params_m else "—",
            "parameters": f"{fmt_num(pr['params'] / 1e6)}M" if pr is not None and pd.notna(pr.get("params")) else "—",
            f"compute vs {b0} (spec)": v.expect.cost or "—",
            f"FLOPs vs {b0} ({r0}², model, analytic)": fmt_num(flops) + "×" if flops else "—",
            f"training step vs {b0} ({r0}², batch {batch})": f"{fmt_num(step)}× ({p[m]} / {p[BASELINE]})"
            if step
            else "—",
        })  # fmt: skip
    return pd.DataFrame(out)


def _times(lo: float, hi: float) -> str:
    """A ratio as the spec writes it: "5–10×", or "1×" for one value."""
    return f"{lo:g}×" if lo == hi else f"{lo:g}–{hi:g}×"


def spec_table(df: pd.DataFrame, runs: list, batch: int, fits: pd.DataFrame) -> pd.DataFrame:
    """The spec's claims (each record's Expect) against the measurements; `fits` is fits_table(df, batch)."""
    p = primary_of(runs, df)
    settings = runs[-1].get("settings", {}) if runs else {}
    preset = settings.get("preset") or "default"
    epoch_samples = int(settings.get("epoch_samples") or 50000)
    base, B0 = BASELINE, _short(BASELINE)
    compared = _compared(df)
    everyone = [base, *compared]
    exp = {m: get_variant(m).expect for m in everyone}
    rows = []
    for k in compared:
        for r, spec_ratio in (exp[k].compute or {}).items():
            for level in ("mixer", "encoder", "model"):
                a = _get(df, kind="flops", level=level, res=r, model=base, backend=p[base])
                b = _get(df, kind="flops", level=level, res=r, model=k, backend=p[k])
                if a is not None and b is not None:
                    m = b["gflop_analytic"] / a["gflop_analytic"]
                    agree = (
                        "counted three ways" if a.get("agree") and b.get("agree") else "counts disagree: see FLOP table"
                    )
                    how = f"analytic FLOPs of one forward pass ({agree})"
                else:  # resolution not in this sweep: the formula alone
                    m = analytic_ratio(k, preset, level, r)
                    how = f"analytic formula only (r={r} not counted in this run; preset {preset})"
                rows.append({
                    "claim": f"compute {_short(k)}/{B0} at {r}×{r} ({level})", "spec": f"{spec_ratio:g}×",
                    "measured": fmt_num(m) + "×" if m else "—", "verdict": _verdict(m, spec_ratio, spec_ratio),
                    "how": how,
                })  # fmt: skip
    r0 = 32 if (df["res"] == 32).any() else int(df["res"].min())
    at_r0 = df[(df["kind"] == "train") & (df["level"] == "model") & (df["res"] == r0)]
    at_r0 = at_r0[~at_r0["regime"].str.contains("throughput")]  # the throughput regime has its own table
    spec_b = [b for b in sorted(at_r0["batch"].unique()) if b != batch and b > 1]
    tcol, twords = time_col(df)
    at_r0 = df[(df["kind"] == "train") & (df["level"] == "model") & (df["res"] == r0)]
    at_r0 = at_r0[~at_r0["regime"].str.contains("throughput")]  # the throughput regime has its own table
    spec_b = [b for b in sorted(at_r0["batch"].unique()) if b != batch and b > 1]
    tcol, twords = time_col(df)
    for b in [batch, *spec_b]:
        t = {m: _get(df, kind="train", level="model", res=r0, batch=b, model=m, backend=p[m]) for m in everyone}
        for k in compared:
            if exp[k].slowdown is None:
                continue
            lo, hi = exp[k].slowdown
            t1, tk = t[base], t[k]
            for col, words in [(tcol, twords)] + ([("median_ms", "eager wall time")] if tcol != "median_ms" else []):
                ok = t1 is not None and tk is not None and pd.notna(t1.get(col)) and pd.notna(tk.get(col))
                ratio = tk[col] / t1[col] if ok and t1[col] > 0 else None
                host = ""
                if col == "median_ms" and ok:  # the more host-bound of the two
                    host = _host_words(
                        max((t1, tk), key=lambda x: -1 if pd.isna(x.get("host_frac")) else x["host_frac"])
                    )
                rows.append({
                    "claim": f"training slowdown {_short(k)}/{B0} ({r0}×{r0}, batch {b}, {words.split(' (')[0]})",
                    "spec": _times(lo, hi), "measured": fmt_num(ratio) + "×" if ratio else "—",
                    "verdict": _verdict(ratio, lo, hi),
                    "how": f"median training step, {words}, {p[k]} vs {p[base]}{host}",
                })  # fmt: skip
        for m in everyone:
            if exp[m].epoch_min is not None:
                lo_e, hi_e = exp[m].epoch_min
                e = t[m]["epoch_min"] if t[m] is not None else None
                rows.append({
                    "claim": f"{_short(m)} time per epoch ({r0}×{r0}, batch {b})", "spec": _range(lo_e, hi_e, "min"),
                    "measured": f"{fmt_num(e)} min" if e is not None else "—", "verdict": _verdict(e, lo_e, hi_e),
                    "how": f"eager step time × ceil({epoch_samples:,}/batch): the spec gives no dataset size or GPU, "
                           f"an epoch of {epoch_samples:,} samples is assumed"
                           + (" (CIFAR-10)" if epoch_samples == 50000 else "") + _host_words(t[m]),
                })  # fmt: skip
            if exp[m].mem_gb is not None:
                lo_m, hi_m = exp[m].mem_gb
                mem = t[m]["peak_mem_gb"] if t[m] is not None else None
                rows.append({
                    "claim": f"{_short(m)} training memory ({r0}×{r0}, batch {b})", "spec": _range(lo_m, hi_m, "GB"),
                    # the spec writes GB (10^9 bytes); the measurement is in GiB: the verdict compares like with like
                    "measured": f"{fmt_num(mem)} GiB ({fmt_num(mem * GIB / 1e9)} GB)" if mem is not None else "—",
                    "verdict": _verdict(mem * GIB / 1e9 if mem is not None else None, lo_m, hi_m),
                    "how": "torch.cuda.max_memory_allocated over one training step" if any(x.get("gpu") for x in runs)
                           else "process RSS peak (CPU run)",
                })  # fmt: skip
        for k in compared:
            if exp[k].mem_ratio is not None and t[base] is not None and t[k] is not None:
                lo, hi = exp[k].mem_ratio
                mr = t[k]["peak_mem_gb"] / t[base]["peak_mem_gb"]
                rows.append({
                    "claim": f"training memory {_short(k)}/{B0} ({r0}×{r0}, batch {b})", "spec": _times(lo, hi),
                    "measured": f"{fmt_num(mr)}×", "verdict": _verdict(mr, lo, hi),
                    "how": "ratio of the two rows above",
                })  # fmt: skip
    for m in everyone:
        if exp[m].params_m is None:
            continue
        pr = _params_row(df, m, p[m])
        n = pr["params"] / 1e6 if pr is not None and pd.notna(pr.get("params")) else None
        want = exp[m].params_m
        rows.append({
            "claim": f"{_short(m)} parameters", "spec": f"~{want:g}M", "measured": f"{fmt_num(n)}M" if n else "—",
            "verdict": _verdict(n, 0.8 * want, 1.2 * want), "how": "models.count_parameters",
        })  # fmt: skip
    time_metric = "training-step device time" if tcol == "device_ms" else "training-step latency"
    for metric in ("FLOPs (analytic, forward)", time_metric):
        for m in everyone:
            want = exp[m].exponent
            if want is None:
                continue
            s = series_name(m, p[m])
            f = (
                fits[(fits["metric"] == metric) & (fits["level"] == "encoder") & (fits["series"] == s)]
                if len(fits)
                else fits
            )
            e, over = None, "last two r"
            if len(f):
                big = f["exponent (r ≥ 128)"].iloc[0] if "exponent (r ≥ 128)" in f else float("nan")
                e, over = (float(big), "r ≥ 128") if pd.notna(big) else (float(f["exponent (last two r)"].iloc[0]),
                                                                         "last two r")  # fmt: skip
            rows.append({
                "claim": f"{_short(m)} encoder {metric} ∝ N^k", "spec": f"k = {want} (O(N{'²' if want == 2 else ''}))",
                "measured": f"k = {e:.2f} ({over})" if e is not None else "—",
                "verdict": "not measured" if e is None else ("consistent" if abs(e - want) <= 0.25 else
                                                             f"k differs from {want}"),
                "how": "least-squares slope of log metric vs log N (fits table)",
            })  # fmt: skip
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return plt, sns


def _guides(ax, xs, ys) -> None:
    """O(N) and O(N²) guide lines through the geometric mean of the smallest-N points."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    keep = (xs > 0) & (ys > 0) & np.isfinite(ys)
    if keep.sum() == 0:
        return
    xs, ys = xs[keep], ys[keep]
    x0 = xs.min()
    y0 = float(np.exp(np.mean(np.log(ys[xs == x0]))))
    grid = np.geomspace(x0, xs.max(), 20)
    ax.plot(grid, y0 * grid / x0, ls="--", lw=1, color="0.45", label="O(N)")
    ax.plot(grid, y0 * (grid / x0) ** 2, ls=":", lw=1.3, color="0.2", label="O(N²)")


def _palette(sns, series=()) -> dict:
    """One fixed colour per series in every plot (series_colors); a series outside the table gets a spare one."""
    colors = series_colors()
    extra = [x for x in series if x not in colors]
    return {**colors, **dict(zip(extra, sns.color_palette("tab20", max(len(extra), 1))))}


def _facet_plot(df, rows, cols, ycol, ylabel, title, path, row_key, col_key):
    plt, sns = _plt()
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(4.6 * len(cols), 3.6 * len(rows)), squeeze=False)
    order = _ordered(df["series"])
    palette = {**dict(zip(order, sns.color_palette("tab10", len(order)))), **_palette(sns)}
    for i, rv in enumerate(rows):
        for j, cv in enumerate(cols):
            ax = axes[i][j]
            sub = df[(df[row_key] == rv) & (df[col_key] == cv) & (df["status"] == "ok")].dropna(subset=[ycol])
            sub = sub[sub[ycol] > 0]
            if not sub.empty:
                hue_order = [s for s in order if s in set(sub["series"])]
                sns.lineplot(data=sub, x="N", y=ycol, hue="series", hue_order=hue_order, palette=palette, marker="o",
                             ax=ax, legend=True)  # fmt: skip
                _guides(ax, sub["N"], sub[ycol])
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"{rv} · {cv}", fontsize=10)
            ax.set_xlabel("N = r² tokens")
            ax.set_ylabel(ylabel)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_all(df: pd.DataFrame, out: Path, tag: str, batch: int, dtype: str) -> list[Path]:
    written = []
    levels = [lv for lv in ("mixer", "encoder", "model") if (df["level"] == lv).any()]
    timed = df[(df["kind"].isin(["fwd", "train"])) & (df["batch"] == batch)]
    if not timed.empty and levels:
        written.append(_facet_plot(
            timed, ["fwd", "train"], levels, "median_ms", "ms (median)",
            f"Latency vs N (batch {batch}, {dtype}) — forward / training step",
            out / f"scaling_latency_{tag}.png", "kind", "level",
        ))  # fmt: skip
        written.append(_facet_plot(
            timed, ["fwd", "train"], levels, "peak_mem_gb", "GiB (peak)",
            f"Peak memory vs N (batch {batch}) — inference / training step", out / f"scaling_memory_{tag}.png",
            "kind", "level",
        ))  # fmt: skip
    if not timed.empty and levels and has_device_time(df):
        written.append(_facet_plot(
            timed, ["fwd", "train"], levels, "device_ms", "ms (device time)",
            f"Device time vs N (batch {batch}): CUDA-graph replay (else profiler kernel sum); wall time in "
            f"scaling_latency_{tag}.png", out / f"scaling_device_{tag}.png", "kind", "level",
        ))  # fmt: skip
    written += plot_per_token(df, out, tag, batch)
    fl = df[df["kind"] == "flops"]
    if not fl.empty:
        fl = fl.copy()
        fl["kind"] = "analytic"
        written.append(_facet_plot(
            fl, ["analytic"], levels, "gflop_analytic", "GFLOP per sample",
            "FLOPs of one forward pass per sample vs N (analytic; fvcore and FlopCounterMode: see the FLOP table)",
            out / "scaling_flops_per_sample.png", "kind", "level",
        ))  # fmt: skip
    plt, sns = _plt()
    model_rows = df[(df["level"] == "model") & (df["batch"] == batch) & (df["status"] == "ok")]
    model_rows = model_rows[model_rows["kind"].isin(["fwd", "train"])].dropna(subset=["samples_per_s"])
    if not model_rows.empty:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4), squeeze=False)
        for ax, kind in zip(axes[0], ("fwd", "train")):
            sub = model_rows[model_rows["kind"] == kind]
            if not sub.empty:
                sns.barplot(data=sub, x="res", y="samples_per_s", hue="series", hue_order=_ordered(sub["series"]),
                            palette=_palette(sns, sub["series"]), ax=ax)  # fmt: skip
                ax.set_yscale("log")
            ax.set_title(f"{'inference' if kind == 'fwd' else 'training'} throughput, whole model, batch {batch}")
            ax.set_xlabel("resolution r (N = r²)")
            ax.set_ylabel("samples / s")
        fig.tight_layout()
        written.append(atomic_savefig(fig, out / f"throughput_{tag}.png", dpi=110))
        plt.close(fig)
    mb = df[(df["kind"] == "max_batch") & (df["status"].isin(["ok", "oom"]))].copy()
    if not mb.empty:
        mb["max_batch"] = mb["max_batch"].fillna(0)
        fig, ax = plt.subplots(figsize=(6.5, 4))
        sns.barplot(data=mb, x="res", y="max_batch", hue="series", hue_order=_ordered(mb["series"]),
                    palette=_palette(sns, mb["series"]), ax=ax)  # fmt: skip
        ax.set_yscale("log")
        ax.set(xlabel="resolution r (N = r²)", ylabel="largest batch (training step)",
               title="Largest batch that fits (0 = OOM at batch 1)")  # fmt: skip
        fig.tight_layout()
        written.append(atomic_savefig(fig, out / f"max_batch_{dtype}.png", dpi=110))
        plt.close(fig)
    return written


def plot_per_token(df: pd.DataFrame, out: Path, tag: str, batch: int) -> list[Path]:
    """µs per token of the training step vs N, one line per model and backend: device time solid, wall time
    dashed; left the latency batch, right the throughput regime (where measured)."""
    sub = df[(df["level"] == "model") & (df["kind"] == "train") & (df["status"] == "ok")]
    panels = [("latency", sub[sub["batch"] == batch], f"latency regime (batch {batch})")]
    thr = sub[sub["regime"].str.contains("throughput")]
    if not thr.empty:
        panels.append(("throughput", thr, "throughput regime (constant tokens per batch)"))
    panels = [p for p in panels if not p[1].empty]
    if not panels:
        return []
    plt, sns = _plt()
    order = _ordered(sub["series"])
    palette = {**dict(zip(order, sns.color_palette("tab10", len(order)))), **_palette(sns)}
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.2), squeeze=False)
    for ax, (_, data, title) in zip(axes[0], panels):
        for series in [x for x in order if x in set(data["series"])]:
            g = data[data["series"] == series].sort_values("N")
            for col, ls, label in (("us_per_token_device", "-", "device"), ("us_per_token", "--", "wall")):
                gg = g[g[col] > 0] if col in g else g.iloc[:0]
                if not gg.empty:
                    ax.plot(gg["N"], gg[col], ls=ls, marker="o", ms=4, color=palette.get(series),
                            label=f"{series} ({label})")  # fmt: skip
        ax.set(xscale="log", yscale="log", xlabel="N = r² tokens", ylabel="µs per token (training step)", title=title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("Per-token cost vs N (flat: O(N), rising: O(N²), a bump: a slow path)")
    fig.tight_layout()
    path = atomic_savefig(fig, out / f"per_token_{tag}.png", dpi=110)
    plt.close(fig)
    return [path]


# ----------------------------------------------------------------------------------------------
# README
# ----------------------------------------------------------------------------------------------

NOTES = """\
- **Units.** FLOPs = 2 × multiply-adds. fvcore counts one per multiply-add, so its total is doubled; FlopCounterMode
  already counts 2. Counted: GEMMs, the depthwise conv, attention QKᵀ and PV (4·B·H·N²·Dh), the selective scan
  (9·B·L·d_inner·d_state, Mamba's own count); not counted by any method: norms, softmax, activations, residual adds.
  FLOPs are counted once per sample (B = 1) in eval mode; a training step is taken as 3 × the forward FLOPs.
- **Counting.** fvcore gets handles for ops it would count as zero (aten::scaled_dot_product_attention, the
  Triton kernel's prim::PythonOp.FlashAttentionFunction, mamba_ssm's prim::PythonOp.MambaInnerFn /
  SelectiveScanFn). FlopCounterMode cannot see Triton or mamba_ssm's CUDA kernels; their analytic terms are added
  and the FLOP table's note says so. The reference scan is counted as one op with the algorithm's cost.
- **Timing.** Before the first row ≥ 2 s of bf16 GEMMs (clocks up) and a torch.matmul peak probe. Per point: a
  compile call, a memory call, ≥ the warm-up time, then ≥ 20 repetitions (fewer for a step over ~100 ms: at most
  `max_point_s` of timing, ≥ 1 per round) in 3 rounds interleaved across the series of one unit of the plan (since
  the sweep after `aae9f0a`: every model and backend of one level, r, batch and kind; up to `aae9f0a`, the primary
  backends in one unit and the other backends in units of their own); CUDA events around each repetition; median,
  IQR and the spread of the round medians; NVML SM clock and power after each round (row: medians). Forward: eval
  mode, no_grad, bf16 autocast. Training step: train mode
  (dropout on), forward + backward + AdamW step, bf16 autocast, fp32 master weights.
- **Device time.** The same step captured in one CUDA graph (static inputs, AdamW(capturable=True), warm-up on a side
  stream) and replayed: no Python, no launches, the device-bound time. Steps over `--graph-max-ms` are not captured
  (device-bound: their profiler kernel sum is the device time); a capture that fails says why in `graph_note`.
  Kernel time = summed GPU kernel durations (memcpy/memset included) of torch.profiler over 1–3 eager steps; host
  overhead = eager − kernel time (a share > 50 % means the row measures Python and launches, not the model).
  Fits, crossovers and the spec table use device time; the tables give both.
- **Memory.** Peak = torch.cuda.max_memory_allocated after reset_peak_memory_stats around one step, less what the
  process held before the point's model was built (`mem_resident_mb`: the points built before it in its unit,
  caches), i.e. its own parameters, gradients, AdamW state, inputs and activations; rows without that column (runs
  up to `aae9f0a`) give the process's absolute peak. NVML device-level used memory and max_memory_reserved are in
  the CSV. Fits use the peak minus the allocation before the step. On CPU: process RSS, the same way.
- **Levels.** mixer = one Mamba mixer vs one self-attention on (B, N, d_model); encoder = `model.encode` (all
  num_layers layers); model = the whole flow-matching network with N = Nin + Nq tokens (Nin = 20 %).
- **Backends.** V1: mamba_ssm (fused CUDA kernels), reference (pure PyTorch, launch-bound on GPU). V4: seed
  (nn.MultiheadAttention with need_weights, materialises the N×N weights), sdpa (torch SDPA), triton (ours).
  V4/V1 compares the primary backends: V4 sdpa vs V1 mamba_ssm on GPU, V4 sdpa vs V1 reference on CPU.
- **Cells.** OOM = out of memory (or skipped because a smaller r already ran out); n/a = backend unavailable;
  skipped = not run (time budget or --ref-max-res).
"""


BACKEND_NOTES = {  # said only when the sweep has rows of the backend (NOTES above covers the original five)
    "flex": "- **flex.** torch FlexAttention (torch.nn.attention.flex_attention), torch.compile'd once per process (a "
    "static, then a dynamic-shape graph; its compile time falls on the first flex row of each kind). FlexAttention "
    "has no attention-probability dropout, so its rows run the model at dropout 0 (every row's note says so); the "
    "other backends run the spec's dropout.",
}


def _img(path: Path, out: Path) -> str:
    return f"![{path.stem}]({path.relative_to(out).as_posix()})\n"


def env_settings(runs: list, raw: pd.DataFrame) -> dict:
    """The sweep's saved settings (batch, dtype, ...) of its last run; rows fill in what an old record lacks."""
    st = dict((runs[-1] if runs else {}).get("settings") or {})
    timed = raw[raw["kind"] != "flops"] if "kind" in raw else raw
    for key in ("batch", "dtype"):
        if st.get(key) is None and key in timed and len(timed):
            st[key] = timed[key].mode().iloc[0]
    if st.get("batch") is None or st.get("dtype") is None:
        raise ValueError("the sweep file holds neither settings nor timed rows with batch and dtype")
    return st


def devices_line(raw: pd.DataFrame) -> str:
    """Which devices the rows ran on (rows record device_index / device_name; rows of older sweeps do not, and are
    counted apart, never as a device of their own). "" when no row records its device."""
    if "device_name" not in raw or raw["device_name"].isna().all():
        return ""
    rows = raw[raw["status"].isin(["ok", "oom"])] if "status" in raw else raw
    known = rows[rows["device_name"].notna()]
    idx = known["device_index"] if "device_index" in known else pd.Series([None] * len(known), index=known.index)
    names = [
        ("cpu" if pd.isna(i) else f"cuda:{int(i)}", str(n)) for i, n in zip(idx, known["device_name"], strict=True)
    ]
    counts = pd.Series(names, dtype=object).value_counts(sort=False) if names else pd.Series(dtype=int)
    parts = [f"{dev} {name} ({n} rows)" for (dev, name), n in sorted(counts.items())]
    if not parts:
        return ""
    older = len(rows) - len(known)
    tail = f"; {older} rows of earlier calls predate the device columns" if older else ""
    if len(parts) == 1:
        return f"**Devices.** every row that records its device ran on {parts[0]}{tail}."
    return (f"**Devices.** the rows ran on {len(parts)} devices, one process each (`bench.multi_gpu`: a deterministic "
            f"share of the plan per GPU, merged here): {', '.join(parts)}{tail}.")  # fmt: skip


def runs_provenance(runs: list, raw: pd.DataFrame) -> str:
    """One line naming every invocation whose rows the tables hold (a resumed sweep mixes calls): its start,
    commit and row count. Empty when all rows come from one call."""
    counts = raw["run_id"].value_counts() if "run_id" in raw else pd.Series(dtype=int)
    # one call on several GPUs is one run_id with a record per GPU (bench.multi_gpu): counted once
    used = list({r.get("run_id"): r for r in runs if counts.get(r.get("run_id"), 0)}.values())
    if len(used) < 2:
        return ""
    parts = [f"{r.get('date', '?')[:16]} at `{str(r.get('git_commit', '?'))[:12]}`: {counts[r['run_id']]} rows"
             for r in used]  # fmt: skip
    return (
        f"**Rows from {len(used)} calls** (a resumed sweep; each row's `run_id` names its call, and the "
        "environment above is the last call's): " + "; ".join(parts) + "."
    )


def render_tag(out: Path, tag: str, runs: list, raw: pd.DataFrame) -> tuple[list[Path], str]:
    df = prepare(raw)
    settings = env_settings(runs, raw)
    batch, dtype = int(settings["batch"]), str(settings["dtype"])
    env = runs[-1] if runs else {}
    reduced = any(r.get("reduced") for r in runs) or not any(r.get("gpu") for r in runs)
    written: list[Path] = []
    prim = primary_series(runs, df)
    present, compared = _present(df), _compared(df)
    b0 = _short(BASELINE)

    cols = ["model", "backend", "level", "res", "N", "batch", "regime", "dtype", "kind", "status", "median_ms",
            "iqr_ms", "n_reps", "n_rounds", "round_spread_pct", "device_ms", "device_source", "graph_ms", "kernel_ms",
            "host_ms", "host_pct", "us_per_token", "us_per_token_device", "samples_per_s", "tokens_per_s",
            "tokens_per_s_device", "gflop_analytic", "tflops", "tflops_device", "pct_peak_device", "epoch_min",
            "peak_mem_gb", "mem_alloc_peak_mb", "mem_reserved_peak_mb", "nvml_used_peak_mb", "rss_peak_mb",
            "sm_clock_mhz", "power_w", "params", "device_index", "device_name", "graph_note", "profile_note",
            "note"]  # fmt: skip
    bench = df[df["kind"].isin(["fwd", "train", "fwd_graph"])]
    written.append(atomic_to_csv(bench.sort_values(["level", "kind", "series", "res"])[[c for c in cols if c in bench]],
                                 out / f"model_bench_{tag}.csv"))  # fmt: skip
    failures: list[str] = []

    def safe(fn, *args):  # one broken table must not cost the others
        try:
            return fn(*args)
        except Exception as e:
            failures.append(f"{fn.__name__}: {type(e).__name__}: {e}")
            return pd.DataFrame()

    three = safe(flops_three_way, df)
    if not three.empty:
        written.append(atomic_to_csv(three, out / "flops_per_sample.csv"))
    fits = safe(fits_table, df, batch)
    cross = safe(crossover_table, df, runs, batch)
    spec = safe(spec_table, df, runs, batch, fits)
    arch = safe(architectures_table, df, runs, batch)
    mbt = safe(max_batch_table, df)
    thr = safe(throughput_table, df, runs)
    bdt = safe(breakdown_table, df[df["batch"] == batch])
    cexp = safe(component_exponents, df[df["batch"] == batch])
    slopes = slope_explanations(df, fits, cexp) if not cexp.empty else []
    pad = safe(padding_table, df)
    for name, t in (("fits", fits), ("crossover", cross), ("spec_vs_measured", spec), ("max_batch", mbt),
                    ("architectures", arch), ("throughput_regime", thr), ("breakdown", bdt),
                    ("component_exponents", cexp), ("padding", pad)):  # fmt: skip
        if not t.empty:
            written.append(atomic_to_csv(t, out / f"{name}_{tag}.csv"))

    sections: dict[str, list[str]] = {}
    for level in ("model", "encoder", "mixer"):
        parts = []
        ft = safe(flops_per_sample_table, df, runs, level)
        if not ft.empty:
            text = f"**FLOPs per sample, one forward pass** (analytic; GFLOP)\n\n{md_table(ft)}"
            written.append(atomic_write_text(out / "tables" / f"flops_{level}.md", text))
            parts.append(text)
        for metric, (kind, col, title, unit) in METRICS.items():
            if level != "model" and metric in ("epoch_time", "fwd_throughput", "fwd_tflops", "fwd_graph_latency"):
                continue
            t = safe(scaling_table, df, runs, level, kind, col, batch)
            if t.empty:
                continue
            if metric == "epoch_time":
                n_ep = int((env.get("settings") or {}).get("epoch_samples") or 50000)
                title = f"{title} of {n_ep:,} samples{' (CIFAR-10-sized)' if n_ep == 50000 else ''}, from the step time"
            text = f"**{title}** ({unit}; batch {batch})\n\n{md_table(t)}"
            written.append(atomic_write_text(out / "tables" / f"{metric}_{level}_{tag}.md", text))
            parts.append(text)
        if parts:
            sections[level] = parts
    try:
        written += plot_all(df, out, tag, batch, dtype)
    except Exception as e:
        failures.append(f"plots: {type(e).__name__}: {e}")
    try:
        written += plot_breakdown(df[df["level"] == "model"], out, tag, batch=batch)
    except Exception as e:
        failures.append(f"breakdown plots: {type(e).__name__}: {e}")

    title = "# Benchmark: " + " vs ".join(f"{v.short} ({v.family}, {v.complexity})" for v in map(get_variant, present))
    lines = [title, ""]
    lines.append(f"> Generated by `python -m bench.report` from `raw/sweep_{tag}.json`; do not edit by hand.\n")
    if reduced:
        lines.append("> **REDUCED CPU RUN** — pure-PyTorch backends, small sizes, few repetitions. It shows that "
                     "the pipeline works; the GPU numbers are in `results/README.md`.\n")  # fmt: skip
    lines.append(f"**Environment.** {summary_line(env)}\n")
    if devices := devices_line(raw):
        lines.append(f"{devices}\n")
    if provenance := runs_provenance(runs, raw):
        lines.append(f"{provenance}\n")
    st = env.get("settings", {})
    timers = ", ".join(sorted(str(t) for t in _col(df, "timer").dropna().unique())) or "—"
    tcol, twords = time_col(df)
    reps = (
        f"≥ {st.get('min_reps')} timed repetitions in {st.get('rounds')} interleaved rounds "
        f"(≤ {st.get('max_point_s')} s per point)"
        if st.get("rounds")
        else f"{st.get('rep_ms')} ms of timed repetitions per point ({st.get('min_reps')}–{st.get('max_reps')})"
    )
    thr_words = f", throughput regime {int(st['tokens']):,} tokens per batch" if st.get("tokens") else ""
    pairs = "; ".join(f"{_short(m)}/{b0} = {prim[m]} / {prim[BASELINE]}" for m in compared)
    lines.append(
        f"**Settings.** mode {st.get('mode')}, preset `{st.get('preset')}`, batch {batch}{thr_words}, "
        f"{st.get('dtype')}, a first (compile/allocate) call, then warm-up {st.get('warmup_ms')} ms and {reps}, "
        f"timer {timers}, {st.get('threads') or 'default'} CPU thread(s), epoch = {st.get('epoch_samples')} samples. "
        + (f"{pairs}. " if pairs else "")
        + f"Fits, crossovers and ratios use the {twords}. {peak_of(runs)}.\n"
    )  # fmt: skip
    lines += ["## Headline: the spec's expectation vs what was measured", "", md_table(spec)]
    if not arch.empty:
        lines += ["## All architectures: the spec's table vs this sweep", "", md_table(arch)]
    lines += ["## Scaling exponents (least-squares slope of log metric vs log N, non-OOM points)", "",
              md_table(fits)]  # fmt: skip
    if slopes:
        shown = cexp[(cexp["component"] == "total kernel time") | (cexp["share at last r"] >= 0.01)]
        lines += ["## Which term sets each slope (training step, r ≥ 128)", "",
                  "Each component's own exponent (its kernel ms per step ∝ N^k over r ≥ 128, from the breakdown "
                  "below) and its share of the kernel time at the first and the last r; components under 1 % at "
                  "the last r are left out (all are in `component_exponents_*.csv`).", ""]  # fmt: skip
        lines += [f"- {t}" for t in slopes] + ["", md_table(shown)]
    who = ", ".join(_short(m) for m in compared) or "—"
    lines += [f"## Where {who} start{'s' if len(compared) == 1 else ''} to cost more than {b0}", "", md_table(cross)]
    for level, parts in sections.items():
        mixers = " vs ".join(dict.fromkeys(get_variant(m).mixer_desc for m in present))
        lines += [f"## {LEVEL_TITLES[level].format(mixers=mixers)}", ""]
        for p in parts:
            lines += [p]
        if level == "model" and not mbt.empty:
            lines += ["**Largest batch that fits** (one training step per probe; doubling then bisection)", "",
                      md_table(mbt)]  # fmt: skip
    if not thr.empty:
        lines += ["## Throughput regime (constant tokens per batch, whole model, training step)", "",
                  f"{peak_of(runs)}; TFLOP/s = 3 × analytic forward FLOPs / device time.", "",
                  md_table(thr)]  # fmt: skip
    if not pad.empty:
        lines += ["## The length pathology: V1 with and without padding", "",
                  "mamba_ssm's selective scan loads 16-byte vectors only when L % 2048 = 0 (for L > 1024) and guarded "
                  "per-element loads otherwise; V1 pads its token sequence at the end to a multiple of 2048 by "
                  "default (pad_multiple auto) and drops the padded outputs (a causal scan: the real tokens are "
                  "unchanged). pad=off is the same model unpadded.", "", md_table(pad)]  # fmt: skip
    if not bdt.empty:
        lines += ["## Where the time goes (GPU kernel time per component, training step, batch " f"{batch})", "",
                  "From torch.profiler's kernels grouped by name (bench.breakdown): "
                  + ", ".join(title for title, _ in COMPONENTS.values()) + ".", "",
                  md_table(bdt)]  # fmt: skip
    lines += ["## FLOPs three ways (per sample, one forward pass)", "", md_table(three)]
    lines += ["## Plots", ""]
    for p in written:
        if p.suffix == ".png":
            lines.append(_img(p, out))
    lines += ["## Notes", "", NOTES]
    extra = [text for b, text in BACKEND_NOTES.items() if (df["backend"] == b).any()]
    if extra:
        lines += ["\n".join(extra), ""]
    if failures:
        lines += ["## Rendering problems", ""] + [f"- {f}" for f in failures]
        print("report: " + "; ".join(failures))
    return written, "\n".join(lines)


def render(out: Path) -> list[Path]:
    """Render every sweep found under `out` (and write `out`/README.md)."""
    out = Path(out)
    written, pages = [], []
    for tag, runs, raw in load_sweeps(out):
        w, page = render_tag(out, tag, runs, raw)
        written += w
        pages.append(page)
    if pages:
        others = sorted(p.name for p in out.glob("*.md") if p.name != "README.md")
        if others:  # reports of the other tools that write here (bench.compare, bench.attention_kernel, ...)
            pages.append("## Other reports in this folder\n\n" + "\n".join(f"- [{n}]({n})" for n in others) + "\n")
        written.append(atomic_write_text(out / "README.md", "\n\n---\n\n".join(pages)))
    return written


def run(argv=None) -> None:
    p = ArgParser(prog="bench.report", description="Re-render tables, plots and README from saved sweep data.")
    p.add_argument("--out", nargs="+", default=None, help="results folders (default: results/ and results/cpu/)")
    args = p.parse_args(argv)
    outs = [Path(o) for o in args.out] if args.out else [REPO / "results", REPO / "results" / "cpu"]
    total = 0
    for out in outs:
        if not (out / "raw").is_dir():
            continue
        written = render(out)
        total += len(written)
        print(f"{out}: {len(written)} files")
    if total == 0:
        print("no sweep data found (run `python -m bench.sweep` first)")


def main(argv=None) -> int:
    return cli_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
