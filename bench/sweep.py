"""The benchmark sweep over the table of variants (models/variants.py): V1 (Mamba, O(N)) vs V4 (Transformer, O(N²)), ...

    python -m bench.sweep                 # = make bench: the full sweep on a GPU (≈ 8 min on one H200: rows
                                          # capped by --time-budget 450 s; a rerun resumes what was skipped)
    python -m bench.sweep --quick         # tiny smoke run (CI), into runs/bench_quick/
    python -m bench.sweep --res 32 64 --models v4 --backends sdpa triton --levels mixer

For each variant × backend × level (mixer | encoder | model) × resolution r (N = r² tokens) it measures
    flops      FLOPs of one forward pass, three ways (analytic, fvcore, FlopCounterMode), at B = 1
    fwd        forward latency (no grad, bf16 autocast) + peak memory
    train      training-step latency (forward + backward + AdamW) + peak memory, epoch time
    fwd_graph  CUDA-graph replay of the forward (--cuda-graph)
    max_batch  the largest batch whose training step fits (primary backends, whole model)
Rows are written as they complete (results/raw/sweep_B<batch>_<dtype>.{csv,json}, atomically); a rerun skips
rows already done (same model, backend, level, resolution, batch, dtype, kind) unless --fresh. OOM or a
missing backend becomes a row (oom / unavailable) and the sweep goes on. At the end bench.report renders
the tables, plots and results/README.md.

Without CUDA this is a clearly announced REDUCED sweep (small preset, batch 1, r = 32, 48 and 64, the CPU
backends — the Mamba variants first on the fused C++ scan (cpu_fused), then the reference — one CPU thread, 1–3
repetitions after a warm-up call) into results/cpu/, so it never overwrites the GPU results; ≈ 3 minutes on 2 cores.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from bench import measure
from bench.env import environment, nvml_info, summary_line
from bench.flops import analytic_flops, count_flops, counting_device
from bench.measure import LEVELS, REFERENCE_BACKENDS, all_backends, primary_backends
from models.common import ConfigError
from models.utils import ArgParser, atomic_to_csv, atomic_write_text, cli_main, pick_device
from models.validate import check_memory, nonneg_float, nonneg_int, positive_int, run_bytes, writable_dir
from models.variants import BASELINE, get_variant, variant_names

REPO = Path(__file__).resolve().parents[1]
FULL_RES = (32, 48, 64, 96, 128)
EXTENDED_RES = (160, 192, 256)
KEY = ("model", "backend", "level", "res", "batch", "dtype", "kind")
LAST = ("triton", "flex")  # backends planned last: our kernel and torch.compile'd code (if either broke the CUDA
# context, everything else is already on disk)
DONE = ("ok", "oom")  # statuses a rerun does not repeat (unavailable / error / skipped are retried)

# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------


@dataclass
class Settings:
    device: str
    mode: str  # "full" (GPU) | "reduced" (CPU) | "quick" (smoke)
    res: list[int]
    batch: int
    models: list[str]
    levels: list[str]
    backends: dict[str, list[str]]  # model → backends to run
    preset: str
    dtype: str  # "bf16" (autocast on CUDA) | "fp32"
    warmup_ms: float
    rep_ms: float
    min_reps: int
    max_reps: int
    timer: str
    cuda_graph: bool
    flops: bool
    max_batch: bool
    max_batch_cap: int
    max_batch_probes: int
    spec_batch: int  # 0: no spec point (batch 64 at 32×32, the spec's training batch)
    ref_max_res: int  # reference (pure-PyTorch) Mamba is launch-bound: measured up to this r
    time_budget_s: float
    epoch_samples: int
    out: str
    fresh: bool
    triton_autotune: bool
    threads: int | None  # torch.set_num_threads for the run (None: leave as is)
    notes: list[str] = field(default_factory=list)
    model_levels: dict[str, list[str]] = field(default_factory=dict)  # model → its levels (default: all of levels)

    @property
    def amp(self) -> bool:
        return self.dtype == "bf16"

    @property
    def tag(self) -> str:
        return f"B{self.batch}_{self.dtype}"


def build_parser() -> ArgParser:
    p = ArgParser(prog="bench.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--res", nargs="+", default=None, help="resolutions r (N = r²), e.g. 32 48 64 or 32,64")
    p.add_argument("--extended", action="store_true", help=f"add r = {EXTENDED_RES} (find where each OOMs)")
    p.add_argument("--batch", type=positive_int, default=None, help="benchmark batch (GPU 8, CPU 2)")
    p.add_argument("--models", nargs="+", default=None,
                   help=f"subset of {' '.join(variant_names())} (models/variants.py)")  # fmt: skip
    p.add_argument("--levels", nargs="+", default=None, help="mixer encoder model")
    p.add_argument("--backends", nargs="+", default=None, help=f"subset of {' '.join(all_backends())}")
    p.add_argument("--out", type=writable_dir, default=None, help="results folder (GPU: results/, CPU: results/cpu/)")
    p.add_argument("--reps", type=positive_int, default=None, help="fixed number of timed repetitions per point")
    p.add_argument("--time-per-point", type=nonneg_float, default=None, help="ms of timed repetitions per point")
    p.add_argument("--warmup", type=nonneg_float, default=None, help="ms of warm-up per point (after the first call)")
    p.add_argument("--timer", default="events", help="events (CUDA events) | do_bench (triton.testing)")
    p.add_argument("--cuda-graph", action="store_true", help="also time a CUDA-graph replay of the forward")
    p.add_argument("--no-max-batch", action="store_true", help="skip the largest-batch search")
    p.add_argument("--max-batch-cap", type=positive_int, default=4096)
    p.add_argument("--max-batch-probes", type=positive_int, default=7, help="training steps per max-batch search")
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    p.add_argument("--spec-batch", type=nonneg_int, default=None, help="batch of the spec point at 32×32 (0: off)")
    p.add_argument("--ref-max-res", type=int, default=None, help="largest r for the reference Mamba (GPU 64)")
    p.add_argument("--time-budget", type=nonneg_float, default=None, help="seconds; later rows are skipped")
    p.add_argument("--epoch-samples", type=positive_int, default=50_000, help="samples per epoch (CIFAR-10: 50,000)")
    p.add_argument("--preset", default=None, help="model size preset: default | small | tiny")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (CPU runs default to 1)")
    p.add_argument("--triton-autotune", action="store_true", help="autotune the Triton kernel (slower start)")
    p.add_argument("--quick", action="store_true", help="tiny smoke sweep (CI)")
    p.add_argument("--fresh", action="store_true", help="ignore rows already done")
    return p


def _int_list(values, flag: str) -> list[int]:
    out = []
    for v in values:
        for part in str(v).replace(",", " ").split():
            try:
                out.append(int(part))
            except ValueError:
                raise ConfigError(f"{flag}: {part!r} is not an integer") from None
    return out


def _choices(values, allowed, flag: str) -> list[str]:
    out = []
    for v in values:
        for part in str(v).replace(",", " ").split():
            if part not in allowed:
                raise ConfigError(f"{flag}: unknown value {part!r}; choose from {', '.join(allowed)}")
            if part not in out:
                out.append(part)
    return out


def settings_from_args(args) -> Settings:
    """CLI → Settings, with per-mode defaults. Every value is checked here (ConfigError → exit 2)."""
    device = pick_device(args.device)
    mode = "quick" if args.quick else ("full" if device.type == "cuda" else "reduced")
    models = _choices(args.models or variant_names(), variant_names(), "--models")
    levels = _choices(args.levels or LEVELS, LEVELS, "--levels")
    res = _int_list(args.res, "--res") if args.res else None
    for r in res or []:
        if r < 8:
            raise ConfigError(f"--res: resolution {r} is too small (minimum 8)")
    if args.timer not in ("events", "do_bench"):
        raise ConfigError(f"--timer: unknown timer {args.timer!r}; choose events or do_bench")
    for flag, v, lo in (("--batch", args.batch, 1), ("--reps", args.reps, 1),
                        ("--max-batch-cap", args.max_batch_cap, 1), ("--max-batch-probes", args.max_batch_probes, 1),
                        ("--epoch-samples", args.epoch_samples, 1),
                        ("--spec-batch", args.spec_batch, 0), ("--ref-max-res", args.ref_max_res, 8),
                        ("--threads", args.threads, 1)):  # fmt: skip
        if v is not None and v < lo:
            raise ConfigError(f"{flag} must be >= {lo}, got {v}")
    for flag, v in (("--time-per-point", args.time_per_point), ("--warmup", args.warmup),
                    ("--time-budget", args.time_budget)):  # fmt: skip
        if v is not None and not v >= 0:
            raise ConfigError(f"{flag} must be >= 0, got {v}")
    if args.preset is not None and args.preset not in ("default", "small", "tiny"):
        raise ConfigError(f"--preset: unknown preset {args.preset!r}; choose default, small or tiny")

    cuda = device.type == "cuda"
    if mode == "full":
        d = dict(res=list(FULL_RES), batch=8, preset="default", warmup=25.0, rep=100.0, min_reps=3,
                 max_reps=100, max_batch=True, spec=64, ref_max=64, budget=450.0, out=REPO / "results",
                 all_backends=True)  # fmt: skip
    elif mode == "reduced":
        d = dict(res=[32, 48, 64], batch=1, preset="small", warmup=0.0, rep=200.0, min_reps=1, max_reps=3,
                 max_batch=False, spec=0, ref_max=10**6, budget=170.0, out=REPO / "results" / "cpu",
                 all_backends=False)  # fmt: skip
    else:  # quick
        d = dict(res=[8, 12], batch=2, preset="tiny", warmup=0.0, rep=0.0, min_reps=1, max_reps=1,
                 max_batch=cuda, spec=0, ref_max=10**6, budget=120.0, out=REPO / "runs" / "bench_quick",
                 all_backends=cuda)  # fmt: skip
    res = res or list(d["res"])
    if args.extended:
        res += [r for r in EXTENDED_RES if r not in res]
    res = sorted(set(res))

    if args.backends:
        wanted = _choices(args.backends, all_backends(), "--backends")
        backends = {m: [b for b in get_variant(m).backends if b in wanted] for m in models}
    elif d["all_backends"]:  # every backend, but of the pure-PyTorch mixers (launch-bound on a GPU) only the
        # baseline's CPU one: what the fused kernels buy
        gpu_ok = lambda b: b not in REFERENCE_BACKENDS and measure.DEVICE_ONLY.get(b, "cuda") == "cuda"  # noqa: E731
        keep = {m: [b for b in get_variant(m).backends if gpu_ok(b)] for m in models}  # (cpu_fused: CPU only)
        if BASELINE in keep:
            keep[BASELINE] = [b for b in get_variant(BASELINE).backends
                              if b in keep[BASELINE] or b == "reference"]  # fmt: skip
        backends = keep
    else:  # the backends that run here (on CPU: the pure-PyTorch ones)
        problem = measure.backend_problem
        backends = {m: [b for b in get_variant(m).backends if not problem(m, b, device)] for m in models}
    for m in models:
        if not backends[m]:
            have = ", ".join(get_variant(m).backends)
            raise ConfigError(f"--backends: none of {', '.join(args.backends or ['those'])} is a {m} backend ({have})")
    # a record's sweep_levels trims the default plan (levels it would measure twice); --levels overrides it
    model_levels = {m: [lv for lv in levels if args.levels or lv in get_variant(m).sweep_levels] for m in models}
    reps = args.reps
    s = Settings(
        device=str(device), mode=mode, res=res, batch=args.batch or d["batch"], models=models, levels=levels,
        backends=backends, preset=args.preset or d["preset"], dtype="bf16" if cuda else "fp32",
        warmup_ms=d["warmup"] if args.warmup is None else args.warmup,
        rep_ms=d["rep"] if args.time_per_point is None else args.time_per_point,
        min_reps=reps or d["min_reps"], max_reps=reps or max(d["max_reps"], d["min_reps"]), timer=args.timer,
        cuda_graph=args.cuda_graph and cuda, flops=not args.no_flops,
        max_batch=d["max_batch"] and cuda and not args.no_max_batch, max_batch_cap=args.max_batch_cap,
        max_batch_probes=args.max_batch_probes,
        spec_batch=(d["spec"] if args.spec_batch is None else args.spec_batch) if cuda else 0,
        ref_max_res=args.ref_max_res or d["ref_max"],
        time_budget_s=d["budget"] if args.time_budget is None else args.time_budget,
        epoch_samples=args.epoch_samples, out=str(args.out or d["out"]), fresh=args.fresh,
        triton_autotune=args.triton_autotune, threads=args.threads or (None if cuda else 1),
        model_levels=model_levels,
    )  # fmt: skip
    if args.cuda_graph and not cuda:
        s.notes.append("--cuda-graph ignored: no CUDA")
    if not cuda and not args.no_max_batch and mode != "quick":
        s.notes.append("largest-batch search skipped: CPU has no device-memory limit to find")
    if not cuda:  # a CPU OOM is the kernel's kill, not a row: refuse what cannot fit, before the first row
        check_memory(lambda b, r: cpu_step_bytes(s, b, r), s.batch, max(s.res), device, "the sweep's largest "
                     "training step on cpu", "--batch", "--res")  # fmt: skip
    return s


def cpu_step_bytes(s: Settings, batch: int, res: int) -> int:
    """The hungriest training step of the sweep's variants and backends at (batch, res), as models.validate
    estimates it (the seed backend materialises V4's attention weights)."""
    need = 0
    for m in s.models:
        v = get_variant(m)
        for backend in s.backends.get(m, []):
            try:
                cfg = v.config(s.preset, v.backend_overrides(backend), {})
            except ConfigError:  # a backend missing here: it becomes an "unavailable" row, it allocates nothing
                continue
            need = max(need, run_bytes(v.cls, cfg, res, batch, True, "cpu", 6_000_000))
    return need


# ----------------------------------------------------------------------------------------------
# Rows: an atomically rewritten CSV + JSON, keyed, so a rerun resumes
# ----------------------------------------------------------------------------------------------


def row_key(row: dict) -> tuple:
    return tuple(row[k] for k in KEY)


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class RowStore:
    """All rows of one sweep file (results/raw/sweep_<tag>.{csv,json}); rewritten after every row."""

    def __init__(self, out: Path, tag: str, fresh: bool = False):
        self.csv = out / "raw" / f"sweep_{tag}.csv"
        self.json = out / "raw" / f"sweep_{tag}.json"
        self.rows: dict[tuple, dict] = {}
        self.runs: list[dict] = []
        if not fresh and self.json.exists():
            data = json.loads(self.json.read_text())
            self.runs = data.get("runs", [])
            for row in data.get("rows", []):
                self.rows[row_key(row)] = row

    def done(self, key: tuple) -> bool:
        row = self.rows.get(key)
        return row is not None and row.get("status") in DONE

    def get(self, key: tuple) -> dict | None:
        return self.rows.get(key)

    def add(self, row: dict) -> None:
        self.rows[row_key(row)] = {k: _clean(v) for k, v in row.items()}
        self.flush()

    def flush(self) -> None:
        rows = list(self.rows.values())
        text = json.dumps({"runs": self.runs, "rows": rows}, indent=1, default=str)
        atomic_write_text(self.json, text)
        atomic_to_csv(pd.DataFrame(rows), self.csv)


# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Combo:
    model: str
    backend: str
    level: str
    res: int
    batch: int

    @property
    def N(self) -> int:
        return self.res * self.res


def make_plan(s: Settings, device: torch.device) -> list[tuple[Combo, list[str]]]:
    """(combo, kinds) in priority order, so that a time-budget cut keeps the headline: the primary backends,
    the spec point, seed and reference, the largest-batch searches, and last the Triton kernel and FlexAttention
    (LAST: new or compiled code; if it ever broke the CUDA context, everything else is already on disk)."""
    primary = primary_backends(device.type)
    kinds = (["flops"] if s.flops else []) + ["fwd"] + (["fwd_graph"] if s.cuda_graph else []) + ["train"]
    level_order = [lv for lv in ("model", "mixer", "encoder") if lv in s.levels]

    def combos(which):
        out = []
        for level in level_order:
            for m in s.models:
                if level not in s.model_levels.get(m, s.levels):
                    continue
                for b in s.backends[m]:
                    if which(m, b):
                        out += [(Combo(m, b, level, r, s.batch), kinds) for r in s.res]
        return out

    plan = combos(lambda m, b: b == primary[m])
    if s.spec_batch and "model" in s.levels:
        r0 = 32 if 32 in s.res else s.res[0]
        for m in s.models:
            if primary[m] in s.backends[m] and s.spec_batch != s.batch:
                plan.append((Combo(m, primary[m], "model", r0, s.spec_batch), ["fwd", "train"]))
    plan += combos(lambda m, b: b != primary[m] and b not in LAST)
    if s.max_batch and "model" in s.levels:
        for m in s.models:
            if primary[m] in s.backends[m] and "model" in s.model_levels.get(m, s.levels) and get_variant(m).max_batch:
                plan += [(Combo(m, primary[m], "model", r, s.batch), ["max_batch"]) for r in s.res]
    plan += combos(lambda m, b: b != primary[m] and b in LAST)
    return plan


def estimate_seconds(combo: Combo, kind: str, s: Settings, device: torch.device) -> float:
    """A rough cost model for the progress bar and the up-front estimate (not a measurement). Its constants are
    fitted to the rows' elapsed_s of the committed H200 run (results/raw/sweep_B8_bf16.json: V1 and V4, 244 s of
    rows): a max-batch probe ~1.5 s, the reference Mamba's training step ~16× its forward GEMM time."""
    if kind != "flops" and combo.backend in REFERENCE_BACKENDS and combo.res > s.ref_max_res:
        return 0.0  # skipped
    cfg = get_variant(combo.model).config(s.preset, env={})
    fl = analytic_flops(combo.model, cfg, combo.level, combo.batch, combo.N)
    layers = 1 if combo.level == "mixer" else cfg.num_layers
    if device.type == "cuda":
        t = fl / 150e12 + 2e-4 * layers
        if combo.backend == "seed":  # materialised (B·H·N²) weights, ~8 passes over them per layer
            t += combo.batch * cfg.num_heads * combo.N**2 * 2 * 8 * layers / 15e12
        if combo.backend in REFERENCE_BACKENDS:  # ~50 small kernels per 64-step chunk
            t += combo.N / 64 * 50 * layers * 8e-6
        overhead = 0.3
        first_level = next(lv for lv in ("model", "mixer", "encoder") if lv in s.levels)
        if combo.backend == "flex" and combo.level == first_level and combo.res == s.res[0] and kind != "flops":
            # torch.compile, once per process: a static then a dynamic-shape graph (self- and cross-attention shapes
            # differ), forward-only for fwd and forward + backward for train; later shapes reuse the dynamic graph
            overhead += 40.0 if kind == "train" else 20.0
    else:
        t, overhead = fl / 20e9, 0.05
    if kind == "flops":
        return 0.3 if device.type == "cuda" and combo.backend in ("mamba_ssm", "triton") else 0.15
    if kind == "max_batch":
        return s.max_batch_probes * (1.2 + 3.5 * t * 8) if device.type == "cuda" else s.max_batch_probes * t * 8
    if kind == "train":
        t *= 16 if combo.backend in REFERENCE_BACKENDS else 3.5
    calls = 2 + max(s.min_reps, min(s.max_reps, s.rep_ms / 1e3 / max(t, 1e-6))) if device.type == "cuda" else 1
    calls += s.min_reps if device.type != "cuda" else 0
    return overhead + calls * t


# ----------------------------------------------------------------------------------------------
# Running one point
# ----------------------------------------------------------------------------------------------


def sticky_cuda_error(e: BaseException) -> bool:
    """Errors after which the CUDA context cannot be used any more (every later call would fail)."""
    msg = str(e).lower()
    return any(k in msg for k in ("illegal memory access", "device-side assert", "unspecified launch failure",
                                  "illegal instruction", "misaligned address", "cuda error: an illegal"))  # fmt: skip


class Sweep:
    def __init__(self, s: Settings):
        self.s = s
        self.device = torch.device(s.device)
        self.out = Path(s.out)
        self.store = RowStore(self.out, s.tag, s.fresh)
        self.t0 = time.perf_counter()
        self.run_id = time.strftime("%Y%m%dT%H%M%S")
        self.oom_at: dict[tuple, int] = {}  # (model, backend, level, batch, kind) → smallest r that OOMed
        self.broken: str | None = None  # set when a CUDA error poisoned the context
        for row in self.store.rows.values():
            self._note_oom(row)

    def _note_oom(self, row: dict) -> None:
        """Remember the smallest r at which a (model, backend, level, batch, kind) ran out of memory."""
        if row.get("status") == "oom" and row["kind"] != "flops":
            k = (row["model"], row["backend"], row["level"], row["batch"], row["kind"])
            self.oom_at[k] = min(self.oom_at.get(k, 10**9), row["res"])

    # -- bookkeeping ---------------------------------------------------------------------------

    def base(self, c: Combo, kind: str) -> dict:
        flops_row = kind == "flops"
        return {
            "model": c.model, "backend": c.backend, "level": c.level, "res": c.res,
            "batch": 1 if flops_row else c.batch, "dtype": "fp32" if flops_row else self.s.dtype, "kind": kind,
            "N": c.N, "preset": self.s.preset, "run_id": self.run_id, "mode": self.s.mode,
        }  # fmt: skip

    def over_budget(self) -> bool:
        return self.s.time_budget_s > 0 and time.perf_counter() - self.t0 > self.s.time_budget_s

    def pre_status(self, c: Combo, kind: str) -> tuple[str, str] | None:
        """(status, note) when the row is decided without running it."""
        if self.over_budget():
            return "skipped", f"time budget ({self.s.time_budget_s:.0f} s) exhausted; rerun to continue"
        if self.broken:
            return "skipped", f"CUDA context unusable after {self.broken}; rerun to continue"
        problem = measure.backend_problem(c.model, c.backend, self.device)
        if problem:
            return "unavailable", problem
        if kind != "flops" and c.backend in REFERENCE_BACKENDS and c.res > self.s.ref_max_res:
            return "skipped", f"reference Mamba is launch-bound: measured up to r={self.s.ref_max_res} (--ref-max-res)"
        if kind == "flops":
            return None
        oom_r = self.oom_at.get((c.model, c.backend, c.level, c.batch, kind))
        if oom_r is not None and c.res > oom_r:
            return "oom", f"oom (skipped: r={oom_r} OOMed)"
        fwd_oom = self.oom_at.get((c.model, c.backend, c.level, c.batch, "fwd"))
        if kind in ("train", "fwd_graph") and fwd_oom is not None and c.res >= fwd_oom:
            return "oom", f"oom (skipped: the forward OOMed at r={fwd_oom})"
        return None

    # -- the kinds -----------------------------------------------------------------------------

    def run_flops(self, c: Combo, row: dict) -> None:
        # V4 seed/sdpa on the meta device (no compute at any N), the others on the run's device (see
        # bench.flops). B = 1: FLOPs are linear in the batch.
        count_dev = counting_device(c.backend, self.device)
        wl = measure.build_workload(c.model, c.backend, c.level, self.s.preset, count_dev)
        args = wl.forward_args(wl.inputs(1, c.N, count_dev))
        fc = count_flops(c.model, wl.cfg, c.level, wl.module, args, c.N)
        row.update(
            params=wl.params, count_device=count_dev.type, gflop_analytic=fc.analytic / 1e9,
            gflop_fvcore=None if fc.fvcore is None else fc.fvcore / 1e9,
            gflop_flopcounter=None if fc.flopcounter is None else fc.flopcounter / 1e9,
            agree=fc.agree, max_rel_diff=fc.max_rel_diff, note=fc.note,
            analytic_parts=json.dumps({k: v / 1e9 for k, v in fc.parts.items()}),
        )  # fmt: skip

    def run_timed(self, c: Combo, kind: str, wl: measure.Workload, row: dict) -> None:
        s, dev = self.s, self.device
        inputs = wl.inputs(c.batch, c.N, dev)
        if kind == "train":
            fn = measure.make_train_step(wl, inputs, dev, s.amp)
        elif kind == "fwd_graph":
            fn = measure.make_graph_forward(wl, inputs, dev, s.amp)
        else:
            fn = measure.make_forward(wl, inputs, dev, s.amp)
        if dev.type == "cuda":
            fn()  # first call: kernel compilation / autotuning / allocator growth
            measure.sync(dev)
            mem = measure.measure_memory(fn, dev) if kind != "fwd_graph" else {}
        else:
            mem = measure.measure_memory(fn, dev)  # CPU: the first call, its RSS
        timing = measure.time_fn(fn, dev, s.warmup_ms, s.rep_ms, s.min_reps, s.max_reps, s.timer)
        fwd_flops = analytic_flops(c.model, wl.cfg, c.level, c.batch, c.N)
        flops = 3 * fwd_flops if kind == "train" else fwd_flops  # training step ≈ 3 × forward
        sec = timing.median / 1e3
        row.update(mem)
        row.update(timing.summary())
        row.update(
            params=wl.params, gflop_analytic=flops / 1e9, tflops=flops / sec / 1e12,
            samples_per_s=c.batch / sec, tokens_per_s=c.batch * c.N / sec,
        )  # fmt: skip
        if kind == "train":
            row["epoch_samples"] = s.epoch_samples
            row["epoch_min"] = math.ceil(s.epoch_samples / c.batch) * sec / 60
        del fn, inputs

    def run_max_batch(self, c: Combo, row: dict) -> None:
        s, dev = self.s, self.device
        wl = measure.build_workload(c.model, c.backend, "model", s.preset, dev)
        measure.free_memory(dev)
        free, _total = torch.cuda.mem_get_info(dev)
        capacity_mb = (free + torch.cuda.memory_reserved(dev)) / measure.MiB
        ref = self.store.get((c.model, c.backend, "model", c.res, c.batch, s.dtype, "train")) or {}
        start = c.batch
        if ref.get("status") == "ok" and ref.get("mem_alloc_peak_mb"):
            start = measure.predicted_start(
                ref["mem_alloc_peak_mb"], c.batch, ref.get("mem_alloc_before_mb") or 0.0, capacity_mb, s.max_batch_cap
            )

        def fits(b: int) -> bool:
            inputs = wl.inputs(b, c.N, dev)
            step = measure.make_train_step(wl, inputs, dev, s.amp)
            ok = True
            try:
                step()
                measure.sync(dev)
            except Exception as e:
                if not measure.is_oom(e):
                    raise
                ok = False
            del step, inputs
            wl.module.zero_grad(set_to_none=True)
            measure.free_memory(dev)
            return ok

        cap, note = s.max_batch_cap, f"training step, first probe {start}"
        if c.backend == "mamba_ssm":  # its CUDA kernels offset pointers with uint32: B·2·d_inner·L < 2^32
            index_cap = (2**32 - 1) // (2 * wl.cfg.expand * wl.cfg.d_model * c.N)
            if index_cap < cap:
                cap = max(1, index_cap)
                note += f"; cap {cap} = mamba_ssm's uint32 offsets (B·2·d_inner·N < 2^32)"
        start = min(start, cap)
        mb = measure.search_max_batch(fits, start, cap, s.max_batch_probes)
        row.update(
            params=wl.params, max_batch=mb.max_ok, max_batch_fail=mb.min_fail, max_batch_desc=mb.describe(),
            max_batch_capped=mb.capped, probes=mb.probes_str(), n_probes=len(mb.probes),
            tokens_at_max=mb.max_ok * c.N, note=note,
        )  # fmt: skip
        if mb.max_ok == 0:
            row["status"] = "oom"

    # -- the loop ------------------------------------------------------------------------------

    def run_combo(self, c: Combo, kinds: list[str], bar) -> None:
        s, dev = self.s, self.device
        todo = [k for k in kinds if s.fresh or not self.store.done(row_key(self.base(c, k)))]
        for k in kinds:
            if k not in todo:
                bar.update(estimate_seconds(c, k, s, dev))
        wl = None
        for kind in todo:
            t_row = time.perf_counter()
            row = self.base(c, kind)
            bar.set_postfix_str(f"{c.model}/{c.backend}/{c.level} r={c.res} B={row['batch']} {kind}")
            decided = self.pre_status(c, kind)
            if decided:
                row["status"], row["note"] = decided
            else:
                row["status"] = "ok"
                try:
                    if kind == "flops":
                        self.run_flops(c, row)
                    elif kind == "max_batch":
                        self.run_max_batch(c, row)
                    else:
                        if wl is None:
                            wl = measure.build_workload(c.model, c.backend, c.level, s.preset, dev)
                        self.run_timed(c, kind, wl, row)
                        if wl.note:
                            row["note"] = wl.note
                except Exception as e:
                    # ConfigError / ImportError: backend missing; ValueError / NotImplementedError: the backend
                    # refuses this configuration (e.g. the Triton kernel's head dims) — the note says which
                    unavailable = (ConfigError, ImportError, ValueError, NotImplementedError)
                    row["status"] = "oom" if measure.is_oom(e) else (
                        "unavailable" if isinstance(e, unavailable) else "error")  # fmt: skip
                    row["note"] = (
                        f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
                    )
                    if row["status"] == "error":
                        tqdm.write(f"  error in {row_key(row)}: {row['note']}")
                        if dev.type == "cuda" and sticky_cuda_error(e):
                            self.broken = f"{c.model}/{c.backend}/{c.level} r={c.res} {kind} ({row['note'][:80]})"
                    wl = None  # rebuild: a failed step can leave the module mid-state
                    measure.free_memory(dev)
            self._note_oom(row)
            row["elapsed_s"] = time.perf_counter() - t_row
            self.store.add(row)
            bar.update(estimate_seconds(c, kind, s, dev))
        del wl
        measure.free_memory(dev)

    def run(self) -> None:
        s = self.s
        plan = make_plan(s, self.device)
        est = sum(estimate_seconds(c, k, s, self.device) for c, kinds in plan for k in kinds)
        n_rows = sum(len(k) for _, k in plan)
        n_done = sum(self.store.done(row_key(self.base(c, k))) for c, kinds in plan for k in kinds)
        print(f"plan: {n_rows} rows ({n_done} already done), rough estimate {est / 60:.1f} min "
              f"(time budget {s.time_budget_s:.0f} s); writing {self.store.csv}", flush=True)  # fmt: skip
        fmt = "{l_bar}{bar}| {n:.0f}/{total:.0f} est-s [{elapsed}<{remaining}{postfix}]"
        with tqdm(total=est, desc="sweep", bar_format=fmt, file=sys.stdout) as bar:
            for combo, kinds in plan:
                self.run_combo(combo, kinds, bar)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def banner(s: Settings) -> str:
    if s.mode == "full":
        return f"FULL sweep on {s.device}: preset {s.preset!r}, batch {s.batch}, {s.dtype} autocast, r = {s.res}"
    what = "QUICK smoke sweep (tiny models) — not a benchmark" if s.mode == "quick" else (
        "REDUCED CPU sweep — no CUDA here, so this is NOT the GPU benchmark")  # fmt: skip
    timer = "CUDA events" if s.device.startswith("cuda") else "time.perf_counter"
    threads = f"{s.threads} CPU thread{'s' if s.threads != 1 else ''}" if s.threads else "default threads"
    memory = "torch.cuda peak + NVML" if s.device.startswith("cuda") else "process RSS"
    return "\n".join([
        "=" * 100,
        what,
        f"  preset {s.preset!r}, batch {s.batch}, r = {s.res}, levels {s.levels}, {threads}"
        + (" (one thread: immune to a shared, oversubscribed CPU; --threads N to change)" if s.threads == 1 else ""),
        f"  backends {s.backends}",
        f"  {s.min_reps}–{s.max_reps} timed repetitions ({timer}), memory = {memory},"
        f" max-batch search {'on' if s.max_batch else 'off'}; results → {s.out}",
        "=" * 100,
    ])  # fmt: skip


def run(argv=None) -> None:
    args = build_parser().parse_args(argv)
    s = settings_from_args(args)
    # The Triton kernel reads FLASH_ATTN_AUTOTUNE when first imported: off by default here (its first
    # fitting config), since autotuning every shape bucket would eat a large part of the GPU budget.
    saved_env = os.environ.get("FLASH_ATTN_AUTOTUNE")
    os.environ["FLASH_ATTN_AUTOTUNE"] = "1" if s.triton_autotune else (saved_env or "0")
    if "kernels.flash_attention" in sys.modules:
        s.notes.append("kernels.flash_attention was imported before FLASH_ATTN_AUTOTUNE was set")
    print(banner(s), flush=True)
    for note in s.notes:
        print(f"note: {note}")
    threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        _run_sweep(s)
    finally:
        torch.set_num_threads(threads)
        if saved_env is None:
            os.environ.pop("FLASH_ATTN_AUTOTUNE", None)
        else:
            os.environ["FLASH_ATTN_AUTOTUNE"] = saved_env


def _run_sweep(s: Settings) -> None:
    sweep = Sweep(s)
    env = environment(sweep.device, run_id=sweep.run_id, reduced=s.mode != "full", settings=asdict(s))
    print(summary_line(env), flush=True)
    sweep.store.runs.append(env)
    sweep.store.flush()
    try:
        sweep.run()
    finally:
        nv = nvml_info(sweep.device.index or 0) if sweep.device.type == "cuda" else {}
        env["end"] = {"date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                      **{k: nv.get(k) for k in ("sm_clock_mhz", "power_draw_w", "temperature_c")}}  # fmt: skip
        env["wall_s"] = time.perf_counter() - sweep.t0
        sweep.store.flush()
    print(f"sweep done in {env['wall_s']:.0f} s; rendering tables and plots", flush=True)
    from bench.report import render

    try:
        written = render(Path(s.out))
    except Exception:  # the measurements are safe on disk whatever happens here
        traceback.print_exc()
        print(f"REPORT FAILED — the raw data is complete in {sweep.store.json}; re-render with "
              f"`python -m bench.report --out {s.out}`", flush=True)  # fmt: skip
        return
    print(f"wrote {len(written)} files under {s.out} (see {Path(s.out) / 'README.md'})")


def main(argv=None) -> int:
    return cli_main(run, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
