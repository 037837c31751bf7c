"""Attention kernel benchmark: our Triton FlashAttention vs torch SDPA backends and the naive math path.

    python -m bench.attention_kernel --batch 64 --heads 8 --dims 32 64 --res 32 48 64 96 128 \\
        --dtype bf16 --out results/
    python -m bench.attention_kernel --quick --out /tmp/ak          # tiny sizes (CPU: Triton interpreter)
    python -m bench.attention_kernel --replot results/attention_kernel_B64_H8_bf16.csv   # MD + PNG from data

For every head dim D and resolution r (N = r*r, Nq = Nk = N, non-causal, no dropout) it times the forward
and forward+backward of: ``triton`` (kernels.flash_attention), ``sdpa_flash``, ``sdpa_cudnn``,
``sdpa_efficient`` (torch SDPA pinned to one backend with ``torch.nn.attention.sdpa_kernel``) and ``naive``
(explicit softmax(QK^T)V in PyTorch, run until it runs out of memory). FLOPs: forward = 4*B*H*Nq*Nk*D,
forward+backward = 3.5 x forward. Times are medians (with 20th/80th percentiles) from
``triton.testing.do_bench``. Before timing, every backend's output (and, for fwd+bwd, its gradients) is
compared with a reference (SDPA flash, else the first SDPA backend available) and the relative-norm error
and max abs error are stored in the row. An unavailable backend or an OOM becomes a row with NaN and status
"unavailable"/"oom", and the sweep goes on.

Outputs (written atomically) in --out: ``attention_kernel_B{B}_H{H}_{dtype}.csv`` (one row per
backend x D x N x pass), ``.json`` (environment), ``.md`` (tables + whether the bar is met) and ``.png``
(TFLOP/s vs N, facets D x pass). The MD and PNG are rendered from the CSV (``--replot``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from bench.env import git_commit, nvml_info, try_call
from models.utils import ArgParser, atomic_savefig, atomic_to_csv, atomic_write_text
from models.validate import existing_file, writable_dir

BACKENDS = ["triton", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "naive"]
SDPA_BACKENDS = ["sdpa_flash", "sdpa_cudnn", "sdpa_efficient"]
PASSES = ["fwd", "fwd+bwd"]
BWD_FACTOR = 3.5  # forward + backward FLOPs = 3.5 x forward (backward = 2.5 x forward)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
HEAD_DIMS = (16, 32, 64, 128)
# the performance bar for "triton / fastest SDPA" (speed ratio)
BAR_FWD_LARGE = 1.0  # forward, N >= 4096
BAR_FWD_SMALL = 0.9  # forward, N < 4096
BAR_FWD_BWD = 0.8  # forward + backward, every N
BAR_LARGE_N = 4096
COLUMNS = [
    "backend", "D", "r", "N", "pass", "B", "H", "dtype", "status", "ms", "p20_ms", "p80_ms", "tflops",
    "ratio_to_fastest_sdpa", "rel_err", "max_err", "ref", "config", "note",
]  # fmt: skip
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _head_dim(text: str) -> int:
    value = _positive_int(text)
    if value not in HEAD_DIMS:
        raise argparse.ArgumentTypeError(f"head dim must be one of {HEAD_DIMS}, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(
        prog="bench.attention_kernel",
        description="Benchmark the Triton FlashAttention kernel against torch SDPA backends.",
    )
    p.add_argument("--batch", type=_positive_int, default=64, help="batch size B (default 64)")
    p.add_argument("--heads", type=_positive_int, default=8, help="heads H (default 8)")
    p.add_argument("--dims", type=_head_dim, nargs="+", default=[32, 64], help="head dims D (default 32 64)")
    p.add_argument("--res", type=_positive_int, nargs="+", default=[32, 48, 64, 96, 128], help="resolutions r, N = r*r")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="input dtype (default bf16)")
    p.add_argument("--out", type=lambda t: Path(writable_dir(t)), default=None,
                   help="output directory (default results/ on a GPU, results/cpu/ otherwise)")  # fmt: skip
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=BACKENDS, help="backends to run")
    p.add_argument("--passes", nargs="+", choices=PASSES, default=PASSES, help="passes to time")
    p.add_argument("--warmup", type=_positive_int, default=25, help="do_bench warm-up time in ms (default 25)")
    p.add_argument("--rep", type=_positive_int, default=100, help="do_bench timing budget in ms (default 100)")
    p.add_argument("--min-reps", type=_positive_int, default=10, help="at least this many timed runs")
    p.add_argument("--quick", action="store_true", help="tiny sizes, just checks the code path runs")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--replot", type=existing_file, metavar="CSV", help="only re-render the MD and PNG from a saved CSV")
    return p


# ----------------------------------------------------------------------------------------------------
# atomic writes (models.utils; the rows in this benchmark's column order)
# ----------------------------------------------------------------------------------------------------


def write_csv_atomic(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    atomic_to_csv(pd.DataFrame(rows, columns=COLUMNS), path)


# ----------------------------------------------------------------------------------------------------
# environment
# ----------------------------------------------------------------------------------------------------


def environment(args, device: torch.device, dtype_name: str) -> dict:
    import triton

    cuda = device.type == "cuda"
    env = {
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "gpu_name": try_call(lambda: torch.cuda.get_device_name(device)) if cuda else None,
        "capability": try_call(lambda: list(torch.cuda.get_device_capability(device))) if cuda else None,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "cudnn": try_call(lambda: torch.backends.cudnn.version()),
        "python": sys.version.split()[0],
        "git_commit": git_commit(),
        "dtype": dtype_name,
        "B": args.batch,
        "H": args.heads,
        "dims": list(args.dims),
        "res": list(args.res),
        "backends": list(args.backends),
        "passes": list(args.passes),
        "quick": bool(args.quick),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
        "flash_attn_autotune": os.environ.get("FLASH_ATTN_AUTOTUNE", "1"),
        "timing": {"warmup_ms": args.warmup, "rep_ms": args.rep, "min_reps": args.min_reps, "stat": "median"},
        "flops": "fwd = 4*B*H*Nq*Nk*D; fwd+bwd = 3.5 * fwd",
    }
    if device.type == "cuda":
        env.update(nvml_info(device.index or 0))
    return env


# ----------------------------------------------------------------------------------------------------
# backends and timing
# ----------------------------------------------------------------------------------------------------


class Unavailable(Exception):
    """The backend cannot run this configuration."""


def naive_attention(q, k, v):
    """Explicit softmax(QK^T * scale) V: materialises the (B, H, Nq, Nk) scores; softmax in fp32."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = torch.matmul(q, k.transpose(-2, -1)) * scale
    p = torch.softmax(s.float(), dim=-1).to(q.dtype)
    return torch.matmul(p, v)


def make_backend(name: str):
    """A function (q, k, v) -> out for one backend (the SDPA ones pinned with sdpa_kernel)."""
    import torch.nn.functional as F

    if name == "triton":
        from kernels.flash_attention import attention

        return attention
    if name == "naive":
        return naive_attention
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "sdpa_flash": SDPBackend.FLASH_ATTENTION,
        "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
        "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
    }[name]

    def fn(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    return fn


def _is_unavailable(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, RuntimeError) and (
        "No available kernel" in text or "not supported" in text.lower() or "not available" in text.lower()
    )


def time_ms(fn, device: torch.device, args, grad_to_none=None) -> tuple[float, float, float]:
    """(median, p20, p80) in ms: triton.testing.do_bench on CUDA, a perf_counter loop on CPU."""
    if device.type == "cuda":
        import triton.testing

        # size the budget so that at least --min-reps runs are timed even for slow configs
        fn()
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        est = (time.perf_counter() - t0) * 1e3
        rep = max(args.rep, args.min_reps * est)
        warmup = max(args.warmup, 2 * est)
        med, p20, p80 = triton.testing.do_bench(
            fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8], return_mode="median"
        )
        return float(med), float(p20), float(p80)
    times = []
    fn()
    for _ in range(max(3, min(args.min_reps, 5))):
        if grad_to_none:
            for x in grad_to_none:
                x.grad = None
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    t = torch.tensor(times, dtype=torch.float64)
    return float(t.median()), float(t.quantile(0.2)), float(t.quantile(0.8))


def _rel(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    a, b = a.detach().float(), b.detach().float()
    if not torch.isfinite(a).all():
        return float("nan"), float("nan")
    rel = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    return rel, (a - b).abs().max().item()


def run_pass(fn, q, k, v, dout, ref, pass_name: str, device, args):
    """Check fn against ref (out, or out + grads), then time it. Returns (timing, rel_err, max_err)."""
    if pass_name == "fwd":
        with torch.no_grad():
            out = fn(q, k, v)
            rel, mx = _rel(out, ref[0])
            del out

            def step():
                fn(q, k, v)

            timing = time_ms(step, device, args)
        return timing, rel, mx
    qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
    out = fn(qg, kg, vg)
    out.backward(dout)
    errs = [_rel(out, ref[0])] + [_rel(g, r) for g, r in zip((qg.grad, kg.grad, vg.grad), ref[1:])]
    del out
    rel = max(e[0] for e in errs)
    mx = max(e[1] for e in errs)

    def step():
        fn(qg, kg, vg).backward(dout)

    timing = time_ms(step, device, args, grad_to_none=[qg, kg, vg])
    return timing, rel, mx


def reference(q, k, v, dout, pass_name, device, available_sdpa):
    """Reference output (and grads) from SDPA flash, else the first SDPA backend that runs."""
    from bench.measure import free_memory  # imports triton: only after main() has set TRITON_INTERPRET

    order = ["sdpa_flash", "sdpa_efficient", "sdpa_cudnn"]
    for name in [b for b in order if b in available_sdpa] + [b for b in order if b not in available_sdpa]:
        fn = make_backend(name)
        try:
            if pass_name == "fwd":
                with torch.no_grad():
                    return name, (fn(q, k, v),)
            qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
            out = fn(qg, kg, vg)
            out.backward(dout)
            return name, (out.detach(), qg.grad, kg.grad, vg.grad)
        except Exception:  # noqa: BLE001 - any failure: try the next backend
            pass
        free_memory(device)
    return None, None


def triton_configs(pass_name: str) -> str:
    """The configs the autotuner picked for the last call (best effort)."""
    import kernels.flash_attention as fa

    kernels = [("fwd", fa._attn_fwd_kernel)]
    if pass_name != "fwd":
        kernels += [("dkdv", fa._attn_bwd_dkdv_kernel), ("dq", fa._attn_bwd_dq_kernel)]
    parts = []
    for label, kern in kernels:
        cfg = getattr(kern, "best_config", None)
        if cfg is not None:
            kw = cfg.kwargs
            parts.append(f"{label}:{kw['BLOCK_M']}x{kw['BLOCK_N']}/w{cfg.num_warps}/s{cfg.num_stages}")
    return " ".join(parts)


def sweep(args, device: torch.device, dtype: torch.dtype, dtype_name: str, paths: dict) -> list[dict]:
    import pandas as pd

    from bench.measure import free_memory, is_oom  # imports triton: only after main() has set TRITON_INTERPRET

    rows: list[dict] = []
    naive_oom: set[tuple[int, str]] = set()  # (D, pass) where the naive path already ran out of memory
    unavailable: set[tuple[str, int, str]] = set()
    B, H = args.batch, args.heads
    for D in args.dims:
        for r in args.res:
            N = r * r
            g = torch.Generator(device=device).manual_seed(1000 * D + r)
            try:
                q, k, v, dout = (
                    torch.randn(B, H, N, D, generator=g, device=device, dtype=torch.float32).to(dtype) for _ in range(4)
                )
            except torch.OutOfMemoryError:
                free_memory(device)
                for name in args.backends:
                    for pass_name in args.passes:
                        rows.append(_row(name, D, r, N, pass_name, B, H, dtype_name, "oom", note="inputs"))
                continue
            for pass_name in args.passes:
                flops = 4.0 * B * H * N * N * D * (BWD_FACTOR if pass_name == "fwd+bwd" else 1.0)
                ref_name, ref = reference(q, k, v, dout, pass_name, device, args.backends)
                step_rows = []
                for name in args.backends:
                    row = _row(name, D, r, N, pass_name, B, H, dtype_name, "ok", ref=ref_name or "")
                    if name == "naive" and (D, pass_name) in naive_oom:
                        row.update(status="oom", note="skipped: OOM at a smaller N")
                    elif (name, D, pass_name) in unavailable:
                        row.update(status="unavailable", note="unavailable at a smaller N")
                    else:
                        try:
                            if ref is None:
                                raise Unavailable("no SDPA reference available")
                            fn = make_backend(name)
                            (ms, p20, p80), rel, mx = run_pass(fn, q, k, v, dout, ref, pass_name, device, args)
                            row.update(ms=ms, p20_ms=p20, p80_ms=p80, tflops=flops / (ms * 1e-3) / 1e12)
                            row.update(rel_err=rel, max_err=mx)
                            if name == "triton":
                                row["config"] = triton_configs(pass_name)
                        except Exception as e:  # noqa: BLE001 - one backend failing must not stop the sweep
                            if is_oom(e):
                                row.update(status="oom", note=str(e).splitlines()[0][:160])
                                if name == "naive":
                                    naive_oom.add((D, pass_name))
                            elif isinstance(e, Unavailable):  # no reference: this N only
                                row.update(status="unavailable", note=str(e))
                            elif _is_unavailable(e):  # the backend itself: skip it at larger N too
                                row.update(status="unavailable", note=str(e).splitlines()[0][:160])
                                unavailable.add((name, D, pass_name))
                            else:
                                row.update(status="error", note=f"{type(e).__name__}: {e}".splitlines()[0][:160])
                        if row["status"] != "ok":
                            free_memory(device)  # outside the except block: the traceback is gone by now
                    step_rows.append(row)
                    _progress(row)
                _fill_ratios(step_rows)
                rows.extend(step_rows)
                del ref
                free_memory(device)
                write_csv_atomic(paths["csv"], rows)
                atomic_write_text(paths["md"], render_markdown(pd.DataFrame(rows, columns=COLUMNS), args_line(args)))
            del q, k, v, dout
            free_memory(device)
    return rows


def _row(backend, D, r, N, pass_name, B, H, dtype_name, status, ref="", note=""):
    nan = float("nan")
    return dict(
        backend=backend, D=D, r=r, N=N, B=B, H=H, dtype=dtype_name, status=status, ms=nan, p20_ms=nan,
        p80_ms=nan, tflops=nan, ratio_to_fastest_sdpa=nan, rel_err=nan, max_err=nan, ref=ref, config="",
        note=note, **{"pass": pass_name},
    )  # fmt: skip


def _fill_ratios(rows: list[dict]) -> None:
    sdpa_ms = [r["ms"] for r in rows if r["backend"] in SDPA_BACKENDS and r["status"] == "ok"]
    if not sdpa_ms:
        return
    fastest = min(sdpa_ms)
    for r in rows:
        if r["status"] == "ok":
            r["ratio_to_fastest_sdpa"] = fastest / r["ms"]


def _progress(row: dict) -> None:
    if row["status"] == "ok":
        msg = f"{row['tflops']:8.1f} TFLOP/s {row['ms']:9.3f} ms  rel_err {row['rel_err']:.2e}  {row['config']}"
    else:
        msg = f"{row['status']}: {row['note']}"
    print(f"D={row['D']:<3} N={row['N']:<6} {row['pass']:<8} {row['backend']:<15} {msg}", flush=True)


# ----------------------------------------------------------------------------------------------------
# rendering (from the CSV)
# ----------------------------------------------------------------------------------------------------


def args_line(args) -> str:
    return (
        f"B={args.batch}, H={args.heads}, dtype={args.dtype}, D in {list(args.dims)}, "
        f"r in {list(args.res)} (N = r^2, Nq = Nk = N, non-causal, no dropout)"
    )


def bar_for(pass_name: str, N: int) -> float:
    if pass_name == "fwd":
        return BAR_FWD_LARGE if N >= BAR_LARGE_N else BAR_FWD_SMALL
    return BAR_FWD_BWD


def _cell(row) -> str:
    if row is None:
        return "-"
    if row["status"] == "ok":
        return f"{row['tflops']:.1f}"
    return {"oom": "OOM", "unavailable": "n/a"}.get(row["status"], row["status"])


def render_markdown(df, header: str = "") -> str:
    """Markdown tables (rows = N, columns = backends, TFLOP/s) per D and pass, with the bar verdicts."""
    lines = ["# Attention kernel benchmark", ""]
    if header:
        lines += [header, ""]
    lines += [
        "TFLOP/s (forward = 4·B·H·Nq·Nk·D FLOPs, forward+backward = 3.5× that); median of do_bench. "
        f"Bar: triton / fastest SDPA ≥ {BAR_FWD_LARGE} (fwd, N ≥ {BAR_LARGE_N}), ≥ {BAR_FWD_SMALL} "
        f"(fwd, smaller N), ≥ {BAR_FWD_BWD} (fwd+bwd).",
        "",
    ]
    if df.empty:
        return "\n".join(lines + ["(no rows)", ""])
    backends = [b for b in BACKENDS if b in set(df["backend"])]
    for D in sorted(set(df["D"])):
        for pass_name in [p for p in PASSES if p in set(df["pass"])]:
            sub = df[(df["D"] == D) & (df["pass"] == pass_name)]
            if sub.empty:
                continue
            lines += [f"## D = {D}, {pass_name}", ""]
            head = ["N"] + backends + ["triton / fastest SDPA", "bar", "triton rel_err"]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            verdicts = []
            for N in sorted(set(sub["N"])):
                at = sub[sub["N"] == N]
                cells = [str(N)]
                for b in backends:
                    m = at[at["backend"] == b]
                    cells.append(_cell(m.iloc[0] if len(m) else None))
                tri = at[(at["backend"] == "triton") & (at["status"] == "ok")]
                ratio = float(tri["ratio_to_fastest_sdpa"].iloc[0]) if len(tri) else float("nan")
                need = bar_for(pass_name, N)
                if math.isnan(ratio):
                    verdict = "unknown"
                else:
                    verdict = "met" if ratio >= need else "NOT met"
                verdicts.append(f"N={N}: {verdict} ({ratio:.2f} vs ≥{need})")
                err = float(tri["rel_err"].iloc[0]) if len(tri) else float("nan")
                cells += [f"{ratio:.2f}", f"{verdict} (≥{need})", f"{err:.1e}"]
                lines.append("| " + " | ".join(cells) + " |")
            lines += ["", "Bar: " + "; ".join(verdicts) + ".", ""]
    return "\n".join(lines)


def plot_from_csv(csv_path: Path, png_path: Path | None = None) -> Path:
    """TFLOP/s vs N, one line per backend, facets D (rows) x pass (columns); reads the saved CSV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    csv_path = Path(csv_path)
    png_path = Path(png_path) if png_path else csv_path.with_suffix(".png")
    df = pd.read_csv(csv_path)
    ok = df[df["status"] == "ok"].copy()
    if ok.empty:
        ok = df.assign(tflops=0.0).head(1)
    order = [b for b in BACKENDS if b in set(df["backend"])]
    g = sns.relplot(
        data=ok, x="N", y="tflops", hue="backend", hue_order=order, style="backend", style_order=order,
        row="D", col="pass", col_order=[p for p in PASSES if p in set(df["pass"])], kind="line",
        markers=True, dashes=False, height=3.2, aspect=1.4, facet_kws={"sharey": False},
    )  # fmt: skip
    g.set(xscale="log")
    ns = sorted(set(int(n) for n in df["N"]))
    for ax in g.axes.flat:
        ax.set_xticks(ns)
        ax.set_xticklabels([str(n) for n in ns], rotation=45)
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
    g.set_axis_labels("N = Nq = Nk (tokens)", "TFLOP/s")
    meta = df.iloc[0]
    g.figure.suptitle(f"Attention: B={meta['B']}, H={meta['H']}, {meta['dtype']}", y=1.02)
    atomic_savefig(g.figure, png_path, dpi=120, bbox_inches="tight")
    plt.close(g.figure)
    return png_path


def render_from_csv(csv_path: Path, plot: bool = True) -> tuple[Path, Path | None]:
    import pandas as pd

    csv_path = Path(csv_path)
    df = pd.read_csv(csv_path, keep_default_na=True)
    df["config"] = df["config"].fillna("")
    md = csv_path.with_suffix(".md")
    header = ""
    if len(df):
        header = f"B={df['B'].iloc[0]}, H={df['H'].iloc[0]}, dtype={df['dtype'].iloc[0]} (from {csv_path.name})"
    atomic_write_text(md, render_markdown(df, header))
    png = plot_from_csv(csv_path) if plot else None
    return md, png


# ----------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------


def _fail(msg: str) -> None:
    raise SystemExit(f"attention_kernel: {msg}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.replot is not None:
        if not args.replot.is_file():
            _fail(f"--replot: no such CSV file: {args.replot}")
        md, png = render_from_csv(args.replot, plot=not args.no_plot)
        print(f"wrote {md}" + (f" and {png}" if png else ""))
        return 0

    cuda = torch.cuda.is_available()
    if not cuda:
        if not args.quick:
            _fail("needs a CUDA GPU; on CPU only --quick runs (under the Triton interpreter, TRITON_INTERPRET=1)")
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before kernels/triton are imported
        if os.environ["TRITON_INTERPRET"] != "1":
            _fail("--quick on CPU needs TRITON_INTERPRET=1 (the Triton CPU interpreter)")
    import kernels.flash_attention as fa

    if not cuda and not fa.interpreter_active():
        _fail("--quick on CPU needs TRITON_INTERPRET=1 set before triton is imported")

    device = torch.device("cuda" if cuda else "cpu")
    args.out = args.out or Path("results" if cuda else "results/cpu")  # a CPU run never writes the GPU report
    dtype_name = args.dtype
    if args.quick:
        args.batch, args.heads = min(args.batch, 2), min(args.heads, 2)
        args.dims = args.dims[:1] if cuda else [16]
        args.res = [8, 12] if cuda else [4, 6]
        args.min_reps = 3
        args.rep, args.warmup = min(args.rep, 20), min(args.warmup, 5)
        if not cuda and dtype_name == "bf16":
            dtype_name = args.dtype = "fp32"  # the interpreter cannot run bf16
            print("attention_kernel: --quick on CPU uses fp32 (the Triton interpreter has no bf16)")
    dtype = DTYPES[dtype_name]
    if not cuda:  # only what runs on CPU
        args.backends = [b for b in args.backends if b in ("triton", "sdpa_flash", "naive")]

    stem = f"attention_kernel_B{args.batch}_H{args.heads}_{dtype_name}"
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _fail(f"cannot create output directory {args.out}: {e}")
    paths = {ext: args.out / f"{stem}.{ext}" for ext in ("csv", "json", "md", "png")}
    env = environment(args, device, dtype_name)
    atomic_write_text(paths["json"], json.dumps(env, indent=2, default=str) + "\n")
    print(f"attention_kernel: {args_line(args)} on {env.get('gpu_name') or device}", flush=True)

    rows = sweep(args, device, dtype, dtype_name, paths)
    write_csv_atomic(paths["csv"], rows)
    env["finished"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    env["autotune_cache"] = _autotune_cache()
    atomic_write_text(paths["json"], json.dumps(env, indent=2, default=str) + "\n")
    render_from_csv(paths["csv"], plot=not args.no_plot)
    print("wrote " + ", ".join(str(p) for k, p in paths.items() if k != "png" or not args.no_plot))
    return 0


def _autotune_cache() -> dict:
    """Autotuner decisions {kernel: {key: config}} (best effort; empty under the interpreter)."""
    import kernels.flash_attention as fa

    out = {}
    for name in ("_attn_fwd_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel"):
        cache = getattr(getattr(fa, name), "cache", {}) or {}
        out[name] = {str(k): str(v) for k, v in cache.items()}
    return out


if __name__ == "__main__":
    sys.exit(main())
