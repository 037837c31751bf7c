"""Where the time goes: the profiler's GPU kernels of one step, grouped by what they are.

    comps = breakdown(kernels, steps=3)      # {"attn": ms, "scan": ms, ...} per step, from bench.device_time
    row.update(breakdown_columns(comps))     # bd_<key>_ms columns of a sweep row
    breakdown_table(rows)                    # one line per series and r: ms and share of each component
    component_exponents(rows)                # each component's own N^k over r ≥ 128: which term sets the slope
    plot_breakdown(rows, out, tag)           # one stacked plot per model and backend (from saved rows only)

Components, first match wins (kernel names as CUDA 12–13 / torch 2.x / mamba_ssm 2.x / Triton print them):
    attn         attention core: FlashAttention (pytorch_flash::flash_*), cuDNN SDPA (*sdpa*flash_fprop/bprop*),
                 memory-efficient (fmha_cutlass*), our Triton kernels (_attn_fwd_kernel, _attn_bwd_*), softmax
                 (the seed backend's materialised weights; its QKᵀ and PV bmm are GEMMs by name), and cuDNN
                 SDPA's backward helpers (cudnn::fusion::convert_dq_to_16bits, compute_dot_do_o) and dropout seed
                 unpacking (philox::unpack_cudnn)
    scan         mamba_ssm's selective_scan_fwd/bwd_kernel, and its Mamba-2 SSD Triton kernels (_chunk_cumsum_*,
                 _chunk_state_*, _state_passing_*, _bmm_chunk_*, _chunk_scan_*)
    conv         causal_conv1d_*_kernel, and a depthwise conv1d of the reference backend
    optimizer    AdamW and gradient clipping: multi_tensor_apply_kernel (foreach / fused Adam, LpNorm), lpnorm_cleanup
    gemm         projections and FFN: cuBLAS / cuBLASLt (nvjet_*, sm90_xmma_gemm_*, ampere_*gemm*, cutlass::Kernel2,
                 splitKreduce, gemv), cutlass GEMMs
    elementwise  norms (layer_norm, rms_norm, GammaBeta) and element-wise / reduction / copy / index kernels
    other        everything else, memcpy and memset included
The reference Mamba's scan is hundreds of small element-wise kernels: it lands in `elementwise`, not `scan`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from bench.fit import loglog_slope

COMPONENTS = {  # key → (title, pattern); order = classification order and stacking order
    "attn": ("attention core", r"flash|fmha|sdpa|_attn_|attention|softmax|convert_dq_to_16bits|compute_dot_do_o"
                               r"|unpack_cudnn"),
    "scan": ("selective scan / SSD", r"selective_scan|_chunk_cumsum_|_chunk_state_|_state_passing_|_bmm_chunk_"
                                     r"|_chunk_scan_"),
    "conv": ("causal conv", r"causal_conv1d|conv_depthwise|depthwise_conv|conv1d|convolve|_fprop_|_dgrad|_wgrad"),
    "optimizer": ("optimizer (AdamW, clipping)", r"multi_tensor_apply|adam|lpnorm|foreach"),
    "gemm": ("GEMMs (projections, FFN)", r"gemm|gemv|nvjet|cutlass|cublas|xmma|s16816|s1688|splitkreduce|dot_kernel"),
    "elementwise": ("norms and elementwise",
                    r"norm|elementwise|reduce|copy|catarray|index|dropout|fill|gather|scatter|at::native|triton_"),
    "other": ("other", r""),
}  # fmt: skip
_RULES = [(k, re.compile(p, re.IGNORECASE)) for k, (_, p) in COMPONENTS.items() if p]


def classify(name: str, cat: str = "kernel") -> str:
    """The component key of one device event (memcpy / memset: other)."""
    if cat != "kernel":
        return "other"
    return next((k for k, rule in _RULES if rule.search(name)), "other")


def breakdown(kernels, steps: int = 1) -> dict[str, float]:
    """ms per step of each component (every key present), from bench.device_time.Kernel-like objects."""
    out = dict.fromkeys(COMPONENTS, 0.0)
    for k in kernels:
        out[classify(k.name, getattr(k, "cat", "kernel"))] += k.dur_us / 1e3
    return {key: v / max(steps, 1) for key, v in out.items()}


def breakdown_columns(comps: dict[str, float]) -> dict:
    return {f"bd_{k}_ms": comps.get(k, 0.0) for k in COMPONENTS}


def top_kernels(kernels, n: int = 8, steps: int = 1) -> str:
    """The n most expensive kernel names (ms per step, component), JSON: the row's check on the grouping."""
    total: dict[str, list] = {}
    for k in kernels:
        t = total.setdefault(k.name, [0.0, classify(k.name, getattr(k, "cat", "kernel"))])
        t[0] += k.dur_us / 1e3 / max(steps, 1)
    top = sorted(total.items(), key=lambda kv: -kv[1][0])[:n]
    return json.dumps([[name[:120], round(ms, 4), comp] for name, (ms, comp) in top])


# ----------------------------------------------------------------------------------------------
# Table and plot (from saved rows)
# ----------------------------------------------------------------------------------------------


def _bd_rows(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    cols = [f"bd_{k}_ms" for k in COMPONENTS]
    if df.empty or not set(cols) <= set(df.columns):
        return pd.DataFrame()
    sub = df[(df["kind"] == kind) & (df["status"] == "ok")].copy()
    for c in cols:
        sub[c] = pd.to_numeric(sub[c], errors="coerce")
    sub = sub.dropna(subset=cols, how="all")
    if "series" not in sub:
        sub["series"] = sub["model"].str.upper() + " " + sub["backend"]
    return sub


def breakdown_table(df: pd.DataFrame, kind: str = "train") -> pd.DataFrame:
    """One line per series, batch and r: kernel ms per step of each component, its share, and the total."""
    sub = _bd_rows(df, kind)
    if sub.empty:
        return pd.DataFrame()
    out = []
    for _, row in sub.sort_values(["series", "batch", "res"]).iterrows():
        vals = {k: float(row[f"bd_{k}_ms"] or 0.0) for k in COMPONENTS}
        total = sum(vals.values())
        line = {"series": row["series"], "batch": int(row["batch"]), "r": int(row["res"]), "N": int(row["res"]) ** 2,
                "kernel ms": round(total, 3)}  # fmt: skip
        for k, v in vals.items():
            line[COMPONENTS[k][0]] = f"{v:.3g} ({100 * v / total:.0f}%)" if total > 0 else "—"
        out.append(line)
    return pd.DataFrame(out)


def _exponent(n, y) -> float:
    """A component's exponent, 2 decimals: NaN where it is absent (0 ms) at one of the r."""
    return round(loglog_slope(n, y, skip_missing=False), 2)


def component_exponents(df: pd.DataFrame, kind: str = "train", min_res: int = 128) -> pd.DataFrame:
    """Which term sets a fitted slope: per series, level and batch, over the rows at r ≥ min_res, each component's
    own exponent k (its kernel ms per step ∝ N^k, least squares) and its share of the kernel time at the smallest
    and the largest of those r; the first line of each group is the total. A component absent at one of the r
    has no exponent (NaN)."""
    sub = _bd_rows(df, kind)
    if sub.empty:
        return pd.DataFrame()
    sub = sub[pd.to_numeric(sub["res"], errors="coerce") >= min_res]
    if "level" not in sub:
        sub["level"] = ""
    out = []
    for (series, level, batch), g in sub.groupby(["series", "level", "batch"]):
        g = g.sort_values("res").drop_duplicates("res", keep="last")
        if len(g) < 2:
            continue
        n = g["res"].astype(float).to_numpy() ** 2
        ms = {k: g[f"bd_{k}_ms"].fillna(0.0).to_numpy(float) for k in COMPONENTS}  # (r,) per component
        total = sum(ms.values())
        rng = f"{int(g['res'].iloc[0])}–{int(g['res'].iloc[-1])}"
        base = {"series": series, "level": level, "batch": int(batch), "r range": rng}
        out.append({**base, "component": "total kernel time", "exponent": _exponent(n, total),
                    "share at first r": 1.0, "share at last r": 1.0})  # fmt: skip
        for k, v in ms.items():
            if not (v > 0).any():
                continue
            first = round(float(v[0] / total[0]), 3) if total[0] > 0 else float("nan")
            last = round(float(v[-1] / total[-1]), 3) if total[-1] > 0 else float("nan")
            out.append({**base, "component": COMPONENTS[k][0], "exponent": _exponent(n, v),
                        "share at first r": first, "share at last r": last})  # fmt: skip
    return pd.DataFrame(out)


def plot_breakdown(df: pd.DataFrame, out: Path, tag: str, kind: str = "train", batch: int | None = None) -> list:
    """One stacked-bar figure per series: the share of each component at each r, total kernel ms on top."""
    from bench.report import _plt  # one matplotlib/seaborn setup for every plot
    from models.utils import atomic_savefig

    sub = _bd_rows(df, kind)
    if batch is not None and not sub.empty:
        sub = sub[sub["batch"] == batch]
    if sub.empty:
        return []
    plt, sns = _plt()
    colors = dict(zip(COMPONENTS, sns.color_palette("tab10", len(COMPONENTS))))
    written = []
    for series, g in sub.groupby("series"):
        g = g.sort_values("res")
        ms = np.array([[float(v or 0.0) for v in g[f"bd_{k}_ms"]] for k in COMPONENTS])  # (components, r)
        total = ms.sum(axis=0)
        share = np.divide(ms, total, out=np.zeros_like(ms), where=total > 0)
        x = np.arange(len(g))
        fig, ax = plt.subplots(figsize=(1.2 * len(g) + 3.5, 4))
        bottom = np.zeros(len(g))
        for i, k in enumerate(COMPONENTS):
            ax.bar(x, 100 * share[i], bottom=100 * bottom, color=colors[k], label=COMPONENTS[k][0], width=0.7)
            bottom += share[i]
        for xi, t in zip(x, total):
            ax.text(xi, 101, f"{t:.3g} ms", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, [f"{int(r)}²" for r in g["res"]])
        ax.set(
            xlabel="resolution r (N = r² tokens)",
            ylabel="% of GPU kernel time",
            ylim=(0, 112),
            title=f"{series}: where a {'training step' if kind == 'train' else 'forward'}'s kernel time goes",
        )
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        name = f"breakdown_{kind}_{series.replace(' ', '_')}_{tag}.png"
        written.append(atomic_savefig(fig, Path(out) / name, dpi=110))
        plt.close(fig)
    return written
