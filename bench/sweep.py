"""The benchmark sweep over the table of variants (models/variants.py): V1 (Mamba, O(N)) vs V4 (Transformer, O(N²)), ...

    python -m bench.sweep                 # = make bench: the full sweep on a GPU (calls of ≤ 9 min, see below)
    python -m bench.sweep --quick         # tiny smoke run (CI), into runs/bench_quick/
    python -m bench.sweep --res 32 64 --models v4 --backends sdpa triton --levels mixer

For each variant × backend × level (mixer | encoder | model) × resolution r (N = r² tokens) it measures
    flops      FLOPs of one forward pass, three ways (analytic, fvcore, FlopCounterMode), at B = 1
    fwd        forward (no grad, bf16 autocast) + peak memory
    train      training step (forward + backward + AdamW) + peak memory, epoch time
    max_batch  the largest batch whose training step fits (every backend but the reference scans; --max-batch)
Every fwd / train point keeps its eager wall time (median of ≥ 20 repetitions in 3 rounds interleaved across the
models and backends of its (level, r, batch), NVML SM clock and power per row) and its device time: the same step
captured in one CUDA graph and replayed, the summed GPU kernel time of torch.profiler, host overhead = eager −
kernel time, and the kernel time per component (bench.points, bench.breakdown). Two regimes: latency (batch 8)
and throughput (--tokens per batch, default 2^19: batch 512 at 32², 32 at 128², 8 at 256²). Before the first row:
≥ 2 s of GEMMs (clocks up) and the bf16 matmul peak, recorded in the run's environment.
Rows are written as they complete (results/raw/sweep_B<batch>_<dtype>.{csv,json}, atomically); a rerun skips
rows already done (same model, backend, level, resolution, batch, dtype, kind) unless --fresh. OOM or a
missing backend becomes a row (oom / unavailable) and the sweep goes on. At the end bench.report renders
the tables, plots and results/README.md. On a host with several GPUs the rows are spread over them, one process
per GPU, each a deterministic share of the plan (bench.multi_gpu; --gpus 1 keeps to one GPU).

Time: the GPU plan is ≈ 10 min of estimated work on one H200 (the plan line prints it); measured, 1,124 s of rows in
three resumable calls (README, "Time limit").
--time-budget (default 420 s of measuring) stops starting rows after it, or before a unit that would end past it
(its estimate scaled by how the call's units ran against theirs), so one call stays under 9 min; the rows left are
"skipped" and the same command run again continues from there. A timed unit holds the series of one level, r,
batch and kind, timed in the same interleaved rounds. --backend-order interleaved (the GPU default): up to r = 128
at the model level, every variant's primary backend, V1 without padding, seed, reference, mamba2, then the Triton
kernel and flex (LAST); beyond 128 and at the encoder level the primary ones; in priority order the model level,
the encoder level, the throughput regime, the spec point. primary-first (the CPU default, where one call's budget
cuts the plan): the primary backends at every level and regime, then the other backends in units of their own,
LAST at the end. A variant whose cost
repeats another's (its record's sweep_scaling off: V3, V4-nopos) has no r > 128 or throughput rows. Knobs that
trade coverage for time: --models, --levels, --backends, --res, --secondary-max-res, --tokens 0 (no throughput
regime), --throughput-kinds, --min-reps / --rounds / --max-point-s, --profile-steps, --graph-max-ms,
--no-device-time, --max-batch (off by default: ≈ 1.5 min on the primary backends, ≈ 8 min on all).
--autotune-cache (default on CUDA: <out>/raw/autotune_<gpu>.json; off: none) loads mamba_ssm's Triton autotune
choices from the file before each row runs a kernel and adds what the process tuned after it (bench.autotune):
every call and run of one results folder runs the same kernel configs.

Without CUDA this is a clearly announced REDUCED sweep (small preset, batch 1, r = 32, 48 and 64, the CPU
backends — the Mamba variants first on the fused C++ scan (cpu_fused), then the reference — one CPU thread, 3
repetitions in 3 rounds after a warm-up call, wall time only) into results/cpu/, so it never overwrites the GPU
results; ≈ 7–8 min on 2 cores (a 420 s time budget, which the primary backends' units fit: a rerun continues).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from bench import measure
from bench.env import cpu_name, environment, nvml_info, summary_line
from bench.flops import analytic_flops, count_flops, counting_device
from bench.measure import LEVELS, REFERENCE_BACKENDS, all_backends, primary_backends
from bench.multi_gpu import gpu_count, pick_gpus
from bench.points import DeviceTimeConfig, measure_group
from bench.rounds import RoundsConfig
from models.common import ConfigError
from models.mamba import padded_length
from models.utils import ArgParser, atomic_to_csv, atomic_write_text, cli_main, pick_device
from models.validate import check_memory, nonneg_float, nonneg_int, positive_int, run_bytes, writable_dir
from models.variants import BASELINE, get_variant, variant_names

REPO = Path(__file__).resolve().parents[1]
FULL_RES = (32, 48, 64, 96, 128, 192, 256)
EXTENDED_RES = (160, 224, 320)
TOKENS = 2**19  # the throughput regime's tokens per batch
KEY = ("model", "backend", "level", "res", "batch", "dtype", "kind", "variant")
CONFIG_VARIANTS = {  # row label → (model, config overrides): extra series beside a model's default config
    "pad=off": ("v1", {"pad_multiple": "off"}),  # no padding: mamba_ssm's scan on its slow path when L % 2048 ≠ 0
}
SCALING_RES = 128  # above it (and in the throughput regime) only variants with sweep_scaling are planned
LAST = ("triton", "flex")  # built last in their unit: our kernel and torch.compile'd code (a CUDA context either
# broke skips the rest of the call, and a rerun continues)
KINDS = ("flops", "fwd", "train", "max_batch")  # what a row measures
DONE = ("ok", "oom")  # statuses a rerun does not repeat (unavailable / error / skipped are retried)
RERUN = "rerun to continue"  # ends the note of a row skipped for a reason the next call removes (rows_left)
SCHEMA = 2  # rows of an older sweep (1: no rounds, no device time) are dropped when a file is loaded

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
    warmup_ms: float  # eager warm-up per point, after its first and its memory call
    min_reps: int  # timed repetitions per point over all rounds
    rounds: int  # interleaved rounds per point (bench.rounds)
    max_point_s: float  # timed seconds per point at most (a slower point gets fewer reps, ≥ 1 per round; 0: no cap)
    timer: str
    device_time: bool  # CUDA graph replay + profiler kernel time of every timed point (CUDA only)
    profile_steps: int  # eager steps under torch.profiler per point (0: no kernel time, no breakdown)
    graph_max_ms: float  # steps slower than this are not captured: device-bound, their kernel sum is the device time
    tokens: int  # throughput regime: tokens per batch (0: off)
    throughput_kinds: list[str]  # kinds measured in the throughput regime
    global_warmup_s: float  # seconds of GEMMs before the first row (CUDA)
    trace_dir: str | None  # keep each timed point's Chrome trace here (fixtures for bench.breakdown)
    flops: bool
    max_batch: bool
    max_batch_cap: int
    max_batch_probes: int
    spec_batch: int  # 0: no spec point (batch 64 at 32×32, the spec's training batch)
    ref_max_res: int  # reference (pure-PyTorch) Mamba is launch-bound: measured up to this r
    pad_compare_res: list[int]  # r at which V1 (primary backend) is also measured without padding (pad=off)
    secondary_levels: list[str]  # levels the non-primary backends (seed, reference, triton) run at
    secondary_max_res: int  # ... and up to this r
    backend_order: str  # interleaved: every backend in its primary's units (GPU) | primary-first (CPU): make_plan
    time_budget_s: float
    epoch_samples: int
    out: str
    fresh: bool
    redo: list[str]  # "model/backend/kind" selectors (empty part: any): rows measured again on a rerun
    triton_autotune: bool
    threads: int | None  # torch.set_num_threads for the run (None: leave as is)
    notes: list[str] = field(default_factory=list)
    gpus: int = 1  # GPUs the sweep spreads its rows over (bench.multi_gpu: one process each); 1: as always
    shard: tuple[int, int] = (0, 1)  # (this worker's GPU, workers): its share of the plan (bench.multi_gpu)
    render: bool = True  # render the report at the end (the multi-GPU workers leave it to the parent)
    render_when: str = "auto"  # --render: auto (on a GPU only once no row is left for a later call), always, never
    autotune_cache: str | None = None  # --autotune-cache: Triton autotune choices to share (bench.autotune); "auto":
    # resolved by Sweep (CUDA: <out>/raw/autotune_<gpu>.json, CPU: none)
    run_id: str | None = None  # the call's id (None: its start time; the multi-GPU workers get their parent's)
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
    p.add_argument(
        "--reps", type=positive_int, default=None, help="timed repetitions per point, all of them (no time cap)"
    )
    p.add_argument(
        "--min-reps", type=positive_int, default=None, help="timed repetitions per point over all rounds (GPU 20)"
    )
    p.add_argument("--rounds", type=positive_int, default=None, help="interleaved rounds per point (default 3)")
    p.add_argument(
        "--max-point-s",
        type=nonneg_float,
        default=None,
        help="timed seconds per point at most; slower points get fewer reps, >= 1 per round (GPU 2)",
    )
    p.add_argument("--time-per-point", type=nonneg_float, default=None, help="the same in ms (older spelling)")
    p.add_argument("--warmup", type=nonneg_float, default=None, help="ms of warm-up per point (after the first call)")
    p.add_argument("--timer", default="events", help="events (CUDA events; the only timer of the rounds)")
    p.add_argument("--no-device-time", action="store_true", help="no CUDA graph / profiler per point")
    p.add_argument(
        "--profile-steps", type=positive_int, default=None, help="eager steps under torch.profiler per point (3)"
    )
    p.add_argument(
        "--graph-max-ms",
        type=nonneg_float,
        default=None,
        help="steps slower than this are not captured in a CUDA graph (default 1000)",
    )
    p.add_argument(
        "--tokens", type=nonneg_int, default=None, help=f"throughput regime: tokens per batch (GPU {TOKENS}; 0 off)"
    )
    p.add_argument("--throughput-kinds", nargs="+", default=None, help="fwd train (default: train)")
    p.add_argument("--global-warmup", type=nonneg_float, default=None, help="seconds of GEMMs before the first row (2)")
    p.add_argument("--trace-dir", default=None, help="keep each timed point's profiler trace (Chrome JSON) here")
    p.add_argument("--cuda-graph", action="store_true", help="(kept for old command lines: device time is default)")
    p.add_argument("--max-batch", action="store_true", help="also search the largest batch that fits (≈ 2 min)")
    p.add_argument("--no-max-batch", action="store_true", help="skip the largest-batch search (the default)")
    p.add_argument("--max-batch-cap", type=positive_int, default=4096)
    p.add_argument("--max-batch-probes", type=positive_int, default=7, help="training steps per max-batch search")
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    p.add_argument("--spec-batch", type=nonneg_int, default=None, help="batch of the spec point at 32×32 (0: off)")
    p.add_argument("--ref-max-res", type=int, default=None, help="largest r for the reference Mamba (GPU 48)")
    p.add_argument("--pad-compare-res", nargs="+", default=None,
                   help="r at which V1 also runs without padding, pad_multiple=off (GPU 48 96; 0: none)")  # fmt: skip
    p.add_argument(
        "--secondary-max-res",
        type=positive_int,
        default=None,
        help="largest r for seed / reference / triton (GPU 128; they run at the model level unless --levels is given)",
    )
    p.add_argument("--backend-order", choices=("interleaved", "primary-first"), default=None,
                   help="interleaved (GPU default): every backend timed in the same rounds as its variant's "
                        "primary one; primary-first (CPU default): the primary backends first")  # fmt: skip
    p.add_argument("--time-budget", type=nonneg_float, default=None, help="seconds; later rows are skipped")
    p.add_argument("--epoch-samples", type=positive_int, default=50_000, help="samples per epoch (CIFAR-10: 50,000)")
    p.add_argument("--preset", default=None, help="model size preset: default | small | tiny")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--gpus", type=positive_int, default=None, help="spread the rows over this many GPUs of the host, "
                   "one process each (default: all visible GPUs; 1: one GPU, as always)")  # fmt: skip
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (CPU runs default to 1)")
    p.add_argument("--triton-autotune", action="store_true", help="autotune the Triton kernel (slower start)")
    p.add_argument("--autotune-cache", type=str, default="auto", metavar="JSON",
                   help="mamba_ssm's Triton autotune choices: start from this file's, add this run's (bench.autotune; "
                        "calls and runs that share one file run the same configs). auto (default): on CUDA, "
                        "<out>/raw/autotune_<gpu>.json; off: none")  # fmt: skip
    p.add_argument("--render", default="auto", metavar="WHEN",
                   help="render tables and plots at the end: auto (default: on a GPU only when no row is left for "
                        "a later call, so a resumed GPU run renders once; on a CPU always), always, never")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="tiny smoke sweep (CI)")
    p.add_argument("--fresh", action="store_true", help="ignore rows already done")
    p.add_argument(
        "--redo",
        nargs="+",
        default=[],
        metavar="MODEL/BACKEND[/KIND]",
        help="measure these rows again, keep the others: v4/flex, v4 (every backend), /flex (every model), "
        "//max_batch (every largest-batch row)",
    )
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
    res = _int_list(args.res, "--res") if args.res else None
    for r in res or []:
        if r < 8:
            raise ConfigError(f"--res: resolution {r} is too small (minimum 8)")
    if args.timer not in ("events", "do_bench"):
        raise ConfigError(f"--timer: unknown timer {args.timer!r}; choose events or do_bench")
    tkinds = _choices(args.throughput_kinds or ["train"], ("fwd", "train"), "--throughput-kinds")
    for flag, v, lo in (("--batch", args.batch, 1), ("--reps", args.reps, 1), ("--min-reps", args.min_reps, 1),
                        ("--rounds", args.rounds, 1), ("--profile-steps", args.profile_steps, 0),
                        ("--tokens", args.tokens, 0), ("--secondary-max-res", args.secondary_max_res, 8),
                        ("--max-batch-cap", args.max_batch_cap, 1), ("--max-batch-probes", args.max_batch_probes, 1),
                        ("--epoch-samples", args.epoch_samples, 1),
                        ("--spec-batch", args.spec_batch, 0), ("--ref-max-res", args.ref_max_res, 8),
                        ("--threads", args.threads, 1)):  # fmt: skip
        if v is not None and v < lo:
            raise ConfigError(f"{flag} must be >= {lo}, got {v}")
    for flag, v in (("--time-per-point", args.time_per_point), ("--warmup", args.warmup),
                    ("--time-budget", args.time_budget), ("--max-point-s", args.max_point_s),
                    ("--graph-max-ms", args.graph_max_ms), ("--global-warmup", args.global_warmup)):  # fmt: skip
        if v is not None and not v >= 0:
            raise ConfigError(f"{flag} must be >= 0, got {v}")
    if args.render not in ("auto", "always", "never"):
        raise ConfigError(f"--render: unknown value {args.render!r}; choose auto, always or never")
    if args.autotune_cache not in ("auto", "off"):  # a bad or foreign file is refused before any measurement
        from bench import autotune

        try:
            writable_dir(str(Path(args.autotune_cache).resolve().parent))
        except argparse.ArgumentTypeError as e:
            raise ConfigError(f"--autotune-cache: {e}") from None
        autotune.load(args.autotune_cache)  # its format (the GPU it was tuned on: Sweep, without a CUDA context here)
    if args.preset is not None and args.preset not in ("default", "small", "tiny"):
        raise ConfigError(f"--preset: unknown preset {args.preset!r}; choose default, small or tiny")

    cuda = device.type == "cuda"
    if mode == "full":
        d = dict(res=list(FULL_RES), batch=8, preset="default", warmup=25.0, min_reps=20, max_point_s=2.0,
                 levels=["model", "encoder"], tokens=TOKENS, spec=64, ref_max=48, budget=420.0,
                 out=REPO / "results", all_backends=True)  # fmt: skip
    elif mode == "reduced":
        d = dict(res=[32, 48, 64], batch=1, preset="small", warmup=0.0, min_reps=3, max_point_s=1.0,
                 levels=list(LEVELS), tokens=0, spec=0, ref_max=10**6, budget=420.0, out=REPO / "results" / "cpu",
                 all_backends=False)  # fmt: skip
    else:  # quick
        d = dict(res=[8, 12], batch=2, preset="tiny", warmup=0.0, min_reps=3, max_point_s=0.5,
                 levels=list(LEVELS), tokens=0, spec=0, ref_max=10**6, budget=120.0, out=REPO / "runs" / "bench_quick",
                 all_backends=cuda)  # fmt: skip
    levels = _choices(args.levels, LEVELS, "--levels") if args.levels else d["levels"]
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
    max_point_s = d["max_point_s"]
    if args.time_per_point is not None:
        max_point_s = args.time_per_point / 1e3
    if args.max_point_s is not None:
        max_point_s = args.max_point_s
    if args.reps:
        max_point_s = 0.0  # a fixed count: no time cap
    s = Settings(
        device=str(device), mode=mode, res=res, batch=args.batch or d["batch"], models=models, levels=levels,
        backends=backends, preset=args.preset or d["preset"], dtype="bf16" if cuda else "fp32",
        warmup_ms=d["warmup"] if args.warmup is None else args.warmup,
        min_reps=args.reps or args.min_reps or d["min_reps"], rounds=args.rounds or 3, max_point_s=max_point_s,
        timer=args.timer, device_time=cuda and not args.no_device_time,
        profile_steps=3 if args.profile_steps is None else args.profile_steps,
        graph_max_ms=1000.0 if args.graph_max_ms is None else args.graph_max_ms,
        tokens=(d["tokens"] if args.tokens is None else args.tokens), throughput_kinds=tkinds,
        global_warmup_s=(2.0 if args.global_warmup is None else args.global_warmup) if cuda else 0.0,
        trace_dir=args.trace_dir, flops=not args.no_flops,
        max_batch=cuda and args.max_batch and not args.no_max_batch, max_batch_cap=args.max_batch_cap,
        max_batch_probes=args.max_batch_probes,
        spec_batch=(d["spec"] if args.spec_batch is None else args.spec_batch) if cuda else 0,
        ref_max_res=args.ref_max_res or d["ref_max"],
        pad_compare_res=[r for r in _int_list(args.pad_compare_res, "--pad-compare-res") if r > 0]
        if args.pad_compare_res else ([48, 96] if mode == "full" else []),
        secondary_levels=levels if args.levels or mode != "full" else ["model"],
        secondary_max_res=args.secondary_max_res or (128 if mode == "full" else 10**6),
        backend_order=args.backend_order or ("interleaved" if mode == "full" else "primary-first"),
        time_budget_s=d["budget"] if args.time_budget is None else args.time_budget,
        epoch_samples=args.epoch_samples, out=str(args.out or d["out"]), fresh=args.fresh,
        redo=_redo_specs(args.redo, models, sorted({b for bs in backends.values() for b in bs})),
        triton_autotune=args.triton_autotune,
        autotune_cache=None if args.autotune_cache == "off" else args.autotune_cache,
        render_when=args.render,
        threads=args.threads or (None if cuda else 1),
        model_levels=model_levels, gpus=pick_gpus(args.gpus, args.device, gpu_count()),
    )  # fmt: skip
    if args.cuda_graph:
        s.notes.append("--cuda-graph is the default now: every timed row has its CUDA-graph device time")
    if not cuda and args.max_batch:
        s.notes.append("largest-batch search skipped: CPU has no device-memory limit to find")
    if not cuda:
        s.notes.append("no CUDA: wall time only (no CUDA graph, no GPU kernels to profile)")
    if s.rounds < 3:
        s.notes.append(f"--rounds {s.rounds}: fewer than 3 rounds, the spread across rounds means little")
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
    return tuple((row.get(k) or "") if k == "variant" else row[k] for k in KEY)


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _redo_parts(spec: str) -> tuple[str, str, str]:
    """ "model/backend/kind" → its three parts ("" where a part is left out)."""
    model, backend, kind = (spec.split("/") + ["", ""])[:3]
    return model, backend, kind


def _redo_specs(specs: list[str], models: list[str], backends: list[str]) -> list[str]:
    """--redo's "model/backend[/kind]" selectors, checked against the plan's models, backends and kinds (a typo
    is an error, not a rerun that silently redoes nothing)."""
    out = []
    for spec in specs:
        model, backend, kind = _redo_parts(spec)
        if spec.count("/") > 2 or not (model or backend or kind):
            raise ConfigError(f"--redo {spec!r}: give model/backend[/kind]")
        if model and model not in models:
            raise ConfigError(f"--redo {spec}: unknown model {model!r}; the sweep's models are {', '.join(models)}")
        if backend and backend not in backends:
            raise ConfigError(f"--redo {spec}: unknown backend {backend!r}; choose from {', '.join(backends)}")
        if kind and kind not in KINDS:
            raise ConfigError(f"--redo {spec}: unknown kind {kind!r}; choose from {', '.join(KINDS)}")
        out.append(f"{model}/{backend}/{kind}")
    return out


def redo_matches(row: dict, redo: list[str]) -> bool:
    """Whether a saved row falls under one of --redo's "model/backend/kind" selectors (an empty part matches all)."""
    for spec in redo:
        wanted = zip(("model", "backend", "kind"), _redo_parts(spec), strict=True)
        if all(not want or row.get(col) == want for col, want in wanted):
            return True
    return False


class RowStore:
    """All rows of one sweep file (results/raw/sweep_<tag>.{csv,json}); rewritten after every row.

    part=i (a worker of the multi-GPU sweep, bench.multi_gpu): reads the merged file, writes sweep_<tag>.gpu<i>.*."""

    def __init__(self, out: Path, tag: str, fresh: bool = False, redo: list[str] = (), part: int | None = None):
        name = f"sweep_{tag}" if part is None else f"sweep_{tag}.gpu{part}"
        self.csv = out / "raw" / f"{name}.csv"
        self.json = out / "raw" / f"{name}.json"
        source = out / "raw" / f"sweep_{tag}.json"
        self.rows: dict[tuple, dict] = {}
        self.runs: list[dict] = []
        self.dropped = 0  # rows of an older schema, not kept
        self.redone = 0  # rows of --redo's model/backend pairs, measured again
        if not fresh and source.exists():
            data = json.loads(source.read_text())
            self.runs = data.get("runs", [])
            for row in data.get("rows", []):
                if (row.get("schema") or 1) < SCHEMA:
                    self.dropped += 1
                    continue
                if redo_matches(row, redo):
                    self.redone += 1
                    continue
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


def merge_parts(out: Path, tag: str, fresh: bool = False) -> int:
    """Fold the multi-GPU workers' part files into raw/sweep_<tag>.{json,csv} and remove them (fresh: drop them and
    start the merged file empty). Returns the number of rows taken from the parts."""
    from bench.multi_gpu import merge_into, part_paths

    parts = part_paths(out / "raw", tag)
    store = RowStore(out, tag, fresh)
    n = 0 if fresh else merge_into(store, parts, row_key)
    if parts or fresh or n:
        store.flush()
    for p in parts:
        p.unlink(missing_ok=True)
        p.with_suffix(".csv").unlink(missing_ok=True)
    return n


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
    variant: str = ""  # a key of CONFIG_VARIANTS ("" = the model's default config)

    @property
    def N(self) -> int:
        return self.res * self.res

    @property
    def overrides(self) -> dict:
        return dict(CONFIG_VARIANTS[self.variant][1]) if self.variant else {}


def slug(name: str) -> str:
    """A device name as a file-name part: "NVIDIA H200" → "nvidia-h200"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def throughput_batch(res: int, tokens: int) -> int:
    """The batch of the throughput regime at r: round(tokens / r²), at least 1 (2^19: 512 at 32², 8 at 256²)."""
    return max(1, round(tokens / (res * res)))


def regime(batch: int, res: int, s: Settings) -> str:
    """latency (the sweep's batch), throughput (tokens per batch), both when they coincide, or spec (batch 64)."""
    lat, thr = batch == s.batch, bool(s.tokens) and batch == throughput_batch(res, s.tokens)
    return "latency+throughput" if lat and thr else "latency" if lat else "throughput" if thr else "spec"


@dataclass
class Unit:
    """What the loop runs at once: one flops / max_batch row, or one fwd / train group (its combos are timed in
    interleaved rounds: the series of one level, r and batch)."""

    kind: str
    combos: list[Combo]


def make_plan(s: Settings, device: torch.device) -> list[Unit]:
    """Units in priority order, so that a time-budget cut keeps the headline. A timed unit is timed in interleaved
    rounds: the series of one level, r, batch and kind. Two orders (--backend-order):
      interleaved (GPU default: a run there takes several calls anyway): at the levels and r of the secondary
        backends, a unit holds each variant's primary backend, V1 without padding, then seed, reference and mamba2,
        then the Triton kernel and FlexAttention, all in the same rounds of one process (issue 10); the model
        level first, then the encoder, the throughput regime, the spec point, the largest-batch searches;
      primary-first (CPU default: a one-call budget keeps the primaries' scaling): the primary backends at every
        level and regime, then the others in units of their own.
    LAST (the Triton kernel and FlexAttention: new or compiled code) is built last in its unit, or planned last;
    a CUDA context it broke skips the rest of the call, and a rerun continues."""
    primary = primary_backends(device.type)
    timed = ["fwd", "train"]
    level_order = [lv for lv in ("model", "encoder", "mixer") if lv in s.levels]
    sec_levels = [lv for lv in level_order if lv in s.secondary_levels]
    plan: list[Unit] = []

    def rank(b: str, m: str) -> int:  # a unit's combos: primary, then the other backends, then LAST
        return 0 if b == primary[m] else 2 if b in LAST else 1

    def secondary(level: str, r: int) -> bool:  # where the non-primary backends run
        return level in sec_levels and r <= s.secondary_max_res

    def section(pick, batch_of=None, kinds=timed, flops=True, levels=level_order):
        """Units of the (model, backend) pairs that pick(m, b, level, r) keeps, per level, r and kind."""
        for level in levels:
            here = [m for m in s.models if level in s.model_levels.get(m, s.levels)]
            for r in s.res:
                batch = batch_of(r) if batch_of else s.batch
                if batch is None:
                    continue
                every = [(m, b) for m in here for b in s.backends[m] if pick(m, b, level, r)]
                # a record whose cost repeats another's (sweep_scaling off) has no long-sequence or throughput rows
                scaling = batch_of is not None or r > SCALING_RES
                series = [(m, b) for m, b in every if not scaling or get_variant(m).sweep_scaling]
                series.sort(key=lambda mb: rank(mb[1], mb[0]))  # stable: the models keep their order within a rank
                if flops and s.flops:
                    plan.extend(Unit("flops", [Combo(m, b, level, r, batch)]) for m, b in series)
                combos = [Combo(m, b, level, r, batch) for m, b in series]
                if r in s.pad_compare_res and level != "mixer":  # V1 without padding, in the same rounds (issue 10)
                    at = next((i for i, c in enumerate(combos) if rank(c.backend, c.model)), len(combos))
                    combos[at:at] = [Combo(m, b, level, r, batch, "pad=off") for m, b in series
                                     if m == CONFIG_VARIANTS["pad=off"][0] and b == primary[m]]  # fmt: skip
                for kind in kinds:
                    if combos:
                        plan.append(Unit(kind, list(combos)))

    interleaved = s.backend_order == "interleaved"
    if interleaved:
        section(lambda m, b, lv, r: b == primary[m] or secondary(lv, r))
    else:
        section(lambda m, b, lv, r: b == primary[m])
    if s.tokens and "model" in s.levels:  # the throughput regime: whole model, primary backends
        section(lambda m, b, lv, r: b == primary[m],
                lambda r: throughput_batch(r, s.tokens) if throughput_batch(r, s.tokens) != s.batch else None,
                s.throughput_kinds, False, ["model"])  # fmt: skip
    if s.spec_batch and "model" in s.levels and s.spec_batch != s.batch:
        r0 = 32 if 32 in s.res else s.res[0]
        series = [m for m in s.models if primary[m] in s.backends[m] and "model" in s.model_levels.get(m, s.levels)]
        if series:
            plan += [Unit(k, [Combo(m, primary[m], "model", r0, s.spec_batch) for m in series]) for k in timed]
    if not interleaved:
        section(lambda m, b, lv, r: b != primary[m] and b not in LAST and secondary(lv, r), levels=sec_levels)

    def max_batch(pick) -> None:  # the largest-batch search: whole model, every backend but the reference scans
        for m in s.models if s.max_batch and "model" in s.levels else ():  # (secondary ones up to their max r)
            if "model" in s.model_levels.get(m, s.levels) and get_variant(m).max_batch:
                for b in s.backends[m]:
                    if pick(m, b) and b not in REFERENCE_BACKENDS:
                        rs = [r for r in s.res if b == primary[m] or r <= s.secondary_max_res]
                        plan.extend(Unit("max_batch", [Combo(m, b, "model", r, s.batch)]) for r in rs)

    max_batch(lambda m, b: b == primary[m])
    max_batch(lambda m, b: b != primary[m] and b not in LAST)
    if not interleaved:
        section(lambda m, b, lv, r: b != primary[m] and b in LAST and secondary(lv, r), levels=sec_levels)
    max_batch(lambda m, b: b != primary[m] and b in LAST)
    return plan


def unit_seconds(unit: Unit, s: Settings, device: torch.device) -> float:
    """The estimated seconds of one unit of the plan (what bench.multi_gpu balances)."""
    return sum(estimate_seconds(c, unit.kind, s, device) for c in unit.combos)


def estimate_seconds(combo: Combo, kind: str, s: Settings, device: torch.device) -> float:
    """A rough cost model for the progress bar and the up-front estimate (not a measurement). Per timed point:
    build + first + memory call, warm-up, min_reps (capped by max_point_s), the profiled steps, the capture
    (warm-up, capture, first replay) and as many replays as eager repetitions."""
    if kind != "flops" and combo.backend in REFERENCE_BACKENDS and combo.res > s.ref_max_res:
        return 0.0  # skipped
    cfg = get_variant(combo.model).config(s.preset, env={})
    fl = analytic_flops(combo.model, cfg, combo.level, combo.batch, combo.N)
    layers = 1 if combo.level == "mixer" else cfg.num_layers
    if device.type == "cuda":
        t = fl / 150e12 + 2e-4 * layers
        if combo.backend == "seed":  # materialised (B·H·N²) weights, ~8 passes over them per layer
            weights = combo.batch * cfg.num_heads * combo.N**2 * 4  # bytes of one layer's fp32 weights
            if weights * (layers if kind == "train" else 2) > 120e9:
                return 1.0  # out of memory at once (or skipped after a smaller r did)
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
    from bench.rounds import RoundsConfig, reps_per_round

    n = s.rounds * reps_per_round(1e3 * t, RoundsConfig(s.rounds, s.min_reps, s.max_point_s))
    slow = t > 0.1
    calls = 2 + (0 if slow else min(50, s.warmup_ms / 1e3 / max(t, 1e-6))) + n
    if s.device_time:
        calls += 1.3 * (1 if slow else s.profile_steps) + (overhead if s.profile_steps else 0)
        if 1e3 * t <= s.graph_max_ms:
            calls += (1 if slow else 3) + 2 + n
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
        self.store = RowStore(self.out, s.tag, s.fresh, s.redo, part=s.shard[0] if s.shard[1] > 1 else None)
        cuda = self.device.type == "cuda"
        self.device_index = (self.device.index or 0) if cuda else None
        self.device_name = torch.cuda.get_device_name(self.device_index) if cuda else (cpu_name() or "cpu")
        self.t0 = time.perf_counter()
        self.budget_closed = ""  # why this call starts no more rows ("" while it may)
        self.est_s = self.spent_s = 0.0  # this call's measured units: estimated and actual seconds
        self.run_id = s.run_id or time.strftime("%Y%m%dT%H%M%S")  # the multi-GPU workers share their call's
        self.oom_at: dict[tuple, int] = {}  # (model, backend, variant, level, batch, kind) → smallest r that OOMed
        self.broken: str | None = None  # set when a CUDA error poisoned the context
        self.peak_tflops: float | None = None  # this run's measured bf16 matmul peak (CUDA)
        for row in self.store.rows.values():
            self._note_oom(row)
        if s.autotune_cache == "auto":  # one file per GPU name beside the rows: every call and run of this folder
            s.autotune_cache = str(self.out / "raw" / f"autotune_{slug(self.device_name)}.json") if cuda else None
        self.autotune_stats = {"path": s.autotune_cache, "preloaded": 0, "skipped": 0, "keys": 0, "differ": 0}
        if s.autotune_cache:  # a file of another GPU: one line, exit 2, before the first row
            from bench import autotune

            saved = autotune.load(s.autotune_cache, gpu=self.device_name)
            self.autotune_stats["keys"] = sum(len(v) for v in saved.values())

    def _note_oom(self, row: dict) -> None:
        """Remember the smallest r at which a (model, backend, level, batch, kind) ran out of memory."""
        if row.get("status") == "oom" and row["kind"] != "flops":
            k = (row["model"], row["backend"], row.get("variant") or "", row["level"], row["batch"], row["kind"])
            self.oom_at[k] = min(self.oom_at.get(k, 10**9), row["res"])

    # -- Triton autotune choices (--autotune-cache) ----------------------------------------------

    def autotune_preload(self) -> None:
        """Start every loaded mamba_ssm Triton kernel from the file's choices (keys tuned here keep their own)."""
        if not self.s.autotune_cache:
            return
        from bench import autotune

        saved = autotune.load(self.s.autotune_cache, gpu=self.device_name)  # re-read: other workers' keys
        applied, skipped = autotune.preload(autotune.autotuners(), saved)
        self.autotune_stats["preloaded"] += applied
        self.autotune_stats["skipped"] = max(self.autotune_stats["skipped"], skipped)

    def autotune_save(self) -> None:
        """Add what this process has tuned to the file (the file's earlier choices stand)."""
        if not self.s.autotune_cache:
            return
        from bench import autotune

        mine = autotune.choices(autotune.autotuners())
        saved, differ = autotune.update(self.s.autotune_cache, mine, gpu=self.device_name)
        self.autotune_stats["keys"] = sum(len(v) for v in saved.values())
        self.autotune_stats["differ"] = max(self.autotune_stats["differ"], differ)  # tuned here ≠ the file's

    # -- bookkeeping ---------------------------------------------------------------------------

    def base(self, c: Combo, kind: str) -> dict:
        flops_row = kind == "flops"
        return {
            "model": c.model, "backend": c.backend, "level": c.level, "res": c.res,
            "batch": 1 if flops_row else c.batch, "dtype": "fp32" if flops_row else self.s.dtype, "kind": kind,
            "variant": c.variant, "N": c.N, "preset": self.s.preset, "run_id": self.run_id, "mode": self.s.mode,
            "schema": SCHEMA, "device_index": self.device_index, "device_name": self.device_name,
            **({} if flops_row or kind == "max_batch" else {"regime": regime(c.batch, c.res, self.s)}),
        }  # fmt: skip

    def over_budget(self, upcoming_s: float = 0.0) -> bool:
        """True once the time budget is spent, or once the next unit (estimated at `upcoming_s`, scaled by how this
        call's measured units ran against their estimates, at least 1×) would end past it; then it stays True, so
        the rows left keep the plan's order for the next call. The first unit of a call always runs."""
        budget = self.s.time_budget_s
        if budget <= 0 or self.budget_closed:
            return bool(self.budget_closed)
        elapsed = time.perf_counter() - self.t0
        if elapsed > budget:
            self.budget_closed = f"time budget ({budget:.0f} s) exhausted; {RERUN}"
        elif upcoming_s > 0 and self.est_s > 0:
            need = upcoming_s * max(1.0, self.spent_s / self.est_s)
            if elapsed + need > budget:
                self.budget_closed = (f"time budget ({budget:.0f} s): the next unit (≈ {need:.0f} s) would end "
                                      f"past it at {elapsed:.0f} s; {RERUN}")  # fmt: skip
        return bool(self.budget_closed)

    def spent(self, est_s: float, t_start: float) -> None:
        """Count one measured unit (its estimate and its actual seconds) for over_budget's scaling."""
        self.est_s += est_s
        self.spent_s += time.perf_counter() - t_start

    def pre_status(self, c: Combo, kind: str) -> tuple[str, str] | None:
        """(status, note) when the row is decided without running it."""
        if self.over_budget():
            return "skipped", self.budget_closed
        if self.broken:
            return "skipped", f"CUDA context unusable after {self.broken}; {RERUN}"
        problem = measure.backend_problem(c.model, c.backend, self.device)
        if problem:
            return "unavailable", problem
        if kind != "flops" and c.backend in REFERENCE_BACKENDS and c.res > self.s.ref_max_res:
            return "skipped", f"reference Mamba is launch-bound: measured up to r={self.s.ref_max_res} (--ref-max-res)"
        if kind == "flops":
            return None
        oom_r = self.oom_at.get((c.model, c.backend, c.variant, c.level, c.batch, kind))
        if oom_r is not None and c.res > oom_r:
            return "oom", f"oom (skipped: r={oom_r} OOMed)"
        fwd_oom = self.oom_at.get((c.model, c.backend, c.variant, c.level, c.batch, "fwd"))
        if kind == "train" and fwd_oom is not None and c.res >= fwd_oom:
            return "oom", f"oom (skipped: the forward OOMed at r={fwd_oom})"
        return None

    # -- the kinds -----------------------------------------------------------------------------

    def run_flops(self, c: Combo, row: dict) -> None:
        # V4 seed/sdpa on the meta device (no compute at any N), the others on the run's device (see
        # bench.flops). B = 1: FLOPs are linear in the batch.
        count_dev = counting_device(c.backend, self.device)
        wl = measure.build_workload(c.model, c.backend, c.level, self.s.preset, count_dev)
        self.autotune_preload()  # (the backend's modules are imported now)
        args = wl.forward_args(wl.inputs(1, c.N, count_dev))
        fc = count_flops(c.model, wl.cfg, c.level, wl.module, args, c.N)
        row.update(
            params=wl.params, count_device=count_dev.type, gflop_analytic=fc.analytic / 1e9,
            gflop_fvcore=None if fc.fvcore is None else fc.fvcore / 1e9,
            gflop_flopcounter=None if fc.flopcounter is None else fc.flopcounter / 1e9,
            agree=fc.agree, max_rel_diff=fc.max_rel_diff, note=fc.note,
            analytic_parts=json.dumps({k: v / 1e9 for k, v in fc.parts.items()}),
        )  # fmt: skip

    def factory(self, c: Combo, kind: str):
        """factory(capturable) → a fresh step of this point; the workload and its static inputs are built once."""
        s, dev, built = self.s, self.device, {}

        def make(capturable: bool):
            if "wl" not in built:
                wl = measure.build_workload(c.model, c.backend, c.level, s.preset, dev, c.overrides)
                self.autotune_preload()  # (the backend's modules are imported now)
                built.update(wl=wl, inputs=wl.inputs(c.batch, c.N, dev), params=wl.params, cfg=wl.cfg, note=wl.note)
            wl, inputs = built["wl"], built["inputs"]
            if kind == "train":
                return measure.make_train_step(wl, inputs, dev, s.amp, capturable)
            return measure.make_forward(wl, inputs, dev, s.amp)

        def release():
            built.pop("wl", None)
            built.pop("inputs", None)

        make.built, make.release = built, release
        return make

    def derived(self, c: Combo, kind: str, f: dict, built: dict) -> dict:
        """Throughput, achieved TFLOP/s (wall and device time), per-token cost, % of the run's matmul peak; for V1
        the length its scan runs at (padding)."""
        cfg = built.get("cfg") or get_variant(c.model).config(self.s.preset, env={})
        fwd_flops = analytic_flops(c.model, cfg, c.level, c.batch, c.N)
        flops = 3 * fwd_flops if kind == "train" else fwd_flops  # training step ≈ 3 × forward (real tokens only)
        out = {"params": built.get("params"), "gflop_analytic": flops / 1e9, "peak_tflops": self.peak_tflops}
        run_cfg = built.get("cfg")
        if run_cfg is not None and hasattr(run_cfg, "pad_multiple") and c.level != "mixer":
            out["pad_multiple"] = run_cfg.pad_multiple
            out["scan_len"] = padded_length(c.N, run_cfg.pad_multiple, c.backend)
        for suffix, col in (("", "median_ms"), ("_device", "device_ms")):
            ms = f.get(col)
            ok = ms is not None and math.isfinite(ms) and ms > 0
            out[f"tflops{suffix}"] = flops / (ms / 1e3) / 1e12 if ok else None
            out[f"samples_per_s{suffix}"] = c.batch / (ms / 1e3) if ok else None
            out[f"tokens_per_s{suffix}"] = c.batch * c.N / (ms / 1e3) if ok else None
            out[f"us_per_token{suffix}"] = 1e3 * ms / (c.batch * c.N) if ok else None
        if out["tflops_device"] and self.peak_tflops:
            out["pct_peak_device"] = 100 * out["tflops_device"] / self.peak_tflops
        if kind == "train":
            sec = f["median_ms"] / 1e3
            out["epoch_samples"] = self.s.epoch_samples
            out["epoch_min"] = math.ceil(self.s.epoch_samples / c.batch) * sec / 60
            if out["samples_per_s_device"]:
                out["epoch_min_device"] = math.ceil(self.s.epoch_samples / c.batch) * f["device_ms"] / 1e3 / 60
        return out

    def run_group(self, unit: Unit, bar) -> None:
        """The combos of one fwd / train unit: decided rows first, the rest timed together (bench.points)."""
        s, dev, kind = self.s, self.device, unit.kind
        todo = [c for c in unit.combos if s.fresh or not self.store.done(row_key(self.base(c, kind)))]
        est = {c: estimate_seconds(c, kind, s, dev) for c in unit.combos}  # the bar, the budget and its scaling
        for c in unit.combos:
            if c not in todo:
                bar.update(est[c])
        self.over_budget(sum(est[c] for c in todo))  # closes it if this unit won't fit
        rows, factories = {}, {}
        for c in todo:
            rows[c] = row = self.base(c, kind)
            decided = self.pre_status(c, kind)
            if decided:
                row["status"], row["note"] = decided
            else:
                factories[c] = self.factory(c, kind)
        if factories:
            names = ", ".join(f"{c.model}/{c.backend}" for c in factories)
            c0 = next(iter(factories))
            bar.set_postfix_str(f"{names} {c0.level} r={c0.res} B={c0.batch} {kind}")
            t0 = time.perf_counter()
            rcfg = RoundsConfig(s.rounds, s.min_reps, s.max_point_s)
            dcfg = DeviceTimeConfig(
                graph=s.device_time,
                profile_steps=s.profile_steps if s.device_time else 0,
                graph_max_ms=s.graph_max_ms,
                warmup_ms=s.warmup_ms,
                trace_dir=s.trace_dir,
            )
            traces = {c: "_".join(map(str, (c.model, c.backend, c.level, c.res, c.batch, kind))) for c in factories}
            if s.trace_dir:
                Path(s.trace_dir).mkdir(parents=True, exist_ok=True)
            fields = measure_group(factories, dev, rcfg, dcfg, traces)
            group_s = time.perf_counter() - t0
            self.spent(sum(est[c] for c in factories), t0)
            self.autotune_save()
            for c, f in fields.items():
                row = rows[c]
                err = f.pop("error", None)
                if err is None:
                    row["status"] = "ok"
                    row.update(f)
                    row.update(self.derived(c, kind, f, factories[c].built))
                    if factories[c].built.get("note"):  # what the backend forces (e.g. flex: dropout 0)
                        row["note"] = factories[c].built["note"]
                else:
                    self.fail(row, err, c, kind)
                row["elapsed_s"] = group_s / len(fields)
            del factories, fields
            measure.free_memory(dev)
        for c in todo:
            self._note_oom(rows[c])
            rows[c].setdefault("elapsed_s", 0.0)
            self.store.add(rows[c])
            bar.update(est[c])

    def fail(self, row: dict, e: BaseException, c: Combo, kind: str) -> None:
        """The row of a point that raised: oom, unavailable (ConfigError / ImportError: backend missing;
        ValueError / NotImplementedError: the backend refuses this configuration, e.g. the Triton kernel's head
        dims — the note says which) or error; a sticky CUDA error marks the context unusable."""
        unavailable = (ConfigError, ImportError, ValueError, NotImplementedError)
        row["status"] = "oom" if measure.is_oom(e) else ("unavailable" if isinstance(e, unavailable) else "error")
        row["note"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
        if row["status"] == "error":
            tqdm.write(f"  error in {row_key(row)}: {row['note']}")
            if self.device.type == "cuda" and sticky_cuda_error(e):
                self.broken = f"{c.model}/{c.backend}/{c.level} r={c.res} {kind} ({row['note'][:80]})"
        measure.free_memory(self.device)

    def timed_train_row(self, c: Combo) -> dict:
        """This point's saved training-step row (its measured peak memory seeds the largest-batch search)."""
        return self.store.get(row_key(self.base(c, "train"))) or {}

    def run_max_batch(self, c: Combo, row: dict) -> None:
        s, dev = self.s, self.device
        wl = measure.build_workload(c.model, c.backend, "model", s.preset, dev)
        self.autotune_preload()  # (the backend's modules are imported now)
        measure.free_memory(dev)
        free, _total = torch.cuda.mem_get_info(dev)
        capacity_mb = (free + torch.cuda.memory_reserved(dev)) / measure.MiB
        ref = self.timed_train_row(c)
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
        index_cap, why = cap, ""
        if c.backend == "mamba_ssm":  # its CUDA kernels offset pointers with uint32: B·2·d_inner·L < 2^32
            L = padded_length(c.N, getattr(wl.cfg, "pad_multiple", "off"), c.backend)  # what the scan runs on
            index_cap = (2**32 - 1) // (2 * wl.cfg.expand * wl.cfg.d_model * L)
            why = f"mamba_ssm's uint32 offsets (B·2·d_inner·L < 2^32, L = {L}" + (" padded)" if L != c.N else ")")
        elif c.backend == "mamba2":  # its Triton SSD kernels offset the in_proj output with int32 arithmetic
            width = max(m.in_proj.out_features for m in wl.module.modules() if hasattr(m, "chunk_size"))
            index_cap = (2**31 - 1) // (width * c.N)
            why = f"Mamba-2's int32 offsets (B·{width}·N < 2^31, {width} = in_proj width)"
        if index_cap < cap:
            cap = max(1, index_cap)
            note += f"; cap {cap} = {why}"
        start = min(start, cap)
        fits(min(c.batch, cap))  # warm-up at the point's own batch: compiles and autotunes (mamba_ssm's Mamba-2
        # Triton kernels tune per process) run at a small shape, not at the first probe (≈ 110 s at batch 1807)
        mb = measure.search_max_batch(fits, start, cap, s.max_batch_probes)
        row.update(
            params=wl.params, max_batch=mb.max_ok, max_batch_fail=mb.min_fail, max_batch_desc=mb.describe(),
            max_batch_capped=mb.capped, probes=mb.probes_str(), n_probes=len(mb.probes),
            tokens_at_max=mb.max_ok * c.N, note=note,
        )  # fmt: skip
        if mb.max_ok == 0:
            row["status"] = "oom"

    # -- the loop ------------------------------------------------------------------------------

    def run_single(self, c: Combo, kind: str, bar) -> None:
        """One flops or max_batch row."""
        s, dev = self.s, self.device
        if not s.fresh and self.store.done(row_key(self.base(c, kind))):
            bar.update(estimate_seconds(c, kind, s, dev))
            return
        t_row = time.perf_counter()
        row = self.base(c, kind)
        bar.set_postfix_str(f"{c.model}/{c.backend}/{c.level} r={c.res} B={row['batch']} {kind}")
        self.over_budget(estimate_seconds(c, kind, s, dev))  # (not counted in the scaling: compiles dominate them)
        decided = self.pre_status(c, kind)
        if decided:
            row["status"], row["note"] = decided
        else:
            row["status"] = "ok"
            try:
                (self.run_flops if kind == "flops" else self.run_max_batch)(c, row)
            except Exception as e:
                self.fail(row, e, c, kind)
            self.autotune_save()
        self._note_oom(row)
        row["elapsed_s"] = time.perf_counter() - t_row
        self.store.add(row)
        bar.update(estimate_seconds(c, kind, s, dev))

    def run(self) -> None:
        s = self.s
        plan = make_plan(s, self.device)
        rank, world = s.shard
        if world > 1:  # this GPU's share (bench.multi_gpu): deterministic, by estimated cost, in priority order
            from bench.multi_gpu import share_plan

            cost = partial(unit_seconds, s=s, device=self.device)
            plan = share_plan(plan, world, cost)[rank]
        pairs = [(c, u.kind) for u in plan for c in u.combos]
        est = sum(estimate_seconds(c, k, s, self.device) for c, k in pairs)
        n_done = sum(self.store.done(row_key(self.base(c, k))) for c, k in pairs)
        if self.store.redone:
            print(f"--redo {' '.join(s.redo)}: {self.store.redone} saved rows are measured again", flush=True)
        if self.store.dropped:
            print(f"note: {self.store.dropped} rows of an older sweep (schema < {SCHEMA}) in {self.store.json} are "
                  "dropped: they are measured again", flush=True)  # fmt: skip
        print(f"plan: {len(pairs)} rows ({n_done} already done), rough estimate {est / 60:.1f} min "
              f"(time budget {s.time_budget_s:.0f} s); writing {self.store.csv}", flush=True)  # fmt: skip
        fmt = "{l_bar}{bar}| {n:.0f}/{total:.0f} est-s [{elapsed}<{remaining}{postfix}]"
        with tqdm(total=est, desc="sweep", bar_format=fmt, file=sys.stdout) as bar:
            for unit in plan:
                if unit.kind in ("fwd", "train"):
                    self.run_group(unit, bar)
                else:
                    for c in unit.combos:
                        self.run_single(c, unit.kind, bar)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def banner(s: Settings) -> str:
    timing = (f"≥ {s.min_reps} repetitions in {s.rounds} interleaved rounds (≤ {s.max_point_s:g} s per point)"
              + (", CUDA-graph + profiler device time" if s.device_time else ""))  # fmt: skip
    if s.mode == "full":
        thr = f"throughput regime {s.tokens:,} tokens/batch" if s.tokens else "no throughput regime"
        where = f"{s.gpus} GPUs (one process each, a share of the plan per GPU)" if s.gpus > 1 else s.device
        return (f"FULL sweep on {where}: preset {s.preset!r}, latency batch {s.batch}, {thr}, {s.dtype} autocast,"
                f" levels {s.levels}, r = {s.res}; {timing}")  # fmt: skip
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
        f"  {timing} ({timer}), memory = {memory},"
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
        if s.gpus > 1:
            from bench.multi_gpu import run_parallel

            run_parallel(s, s.gpus)
        else:
            _run_sweep(s)
    finally:
        torch.set_num_threads(threads)
        if saved_env is None:
            os.environ.pop("FLASH_ATTN_AUTOTUNE", None)
        else:
            os.environ["FLASH_ATTN_AUTOTUNE"] = saved_env


def _run_sweep(s: Settings) -> None:
    sweep = Sweep(s)
    env = environment(sweep.device, run_id=sweep.run_id, reduced=s.mode != "full", settings=asdict(s),
                      device_index=sweep.device_index, device_name=sweep.device_name, shard=list(s.shard))  # fmt: skip
    print(summary_line(env), flush=True)
    sweep.store.runs.append(env)
    sweep.store.flush()
    if sweep.device.type == "cuda":  # clocks up before the first row, and the peak the throughput table divides by
        from bench import device_time

        env["global_warmup"] = device_time.warm_up(sweep.device, s.global_warmup_s)
        env.update(device_time.matmul_peak(sweep.device))
        sweep.peak_tflops = env.get("matmul_peak_tflops")
        print(
            f"warm-up {env['global_warmup']['warmup_s']:.1f} s; bf16 matmul peak "
            f"{sweep.peak_tflops or float('nan'):.0f} TFLOP/s ({env.get('matmul_peak_shape')})",
            flush=True,
        )
        sweep.store.flush()
    try:
        sweep.run()
    finally:
        nv = nvml_info(sweep.device.index or 0) if sweep.device.type == "cuda" else {}
        env["end"] = {"date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                      **{k: nv.get(k) for k in ("sm_clock_mhz", "power_draw_w", "temperature_c")}}  # fmt: skip
        env["wall_s"] = time.perf_counter() - sweep.t0
        if s.autotune_cache:
            env["autotune_cache"] = dict(sweep.autotune_stats)
        sweep.store.flush()
    if not s.render:
        print(f"sweep share {s.shard[0] + 1}/{s.shard[1]} on {s.device} done in {env['wall_s']:.0f} s", flush=True)
        return
    left = rows_left(sweep.store.rows.values())
    if not should_render(s.render_when, left, sweep.device.type):
        why = f"{left} rows left for the next call (the same command continues)" if left else "--render never"
        print(f"sweep done in {env['wall_s']:.0f} s; {why}; not rendered (--render {s.render_when}): "
              f"`python -m bench.report --out {s.out}` renders what is there", flush=True)  # fmt: skip
        return
    print(f"sweep done in {env['wall_s']:.0f} s; rendering tables and plots", flush=True)
    render_report(s)


def should_render(when: str, left: int, device_type: str) -> bool:
    """--render: always / never; auto renders unless a GPU call leaves rows for the next call (that call redraws
    every plot, and GPU time is the scarce part). A CPU call renders even when its budget cut the plan: the
    reduced sweep is usually run once, and its tables are what it is for."""
    return when == "always" or (when == "auto" and not (left and device_type == "cuda"))


def rows_left(rows) -> int:
    """Of `rows` (dicts), those a rerun of the same command would still measure: skipped by the time budget or a
    broken CUDA context (RERUN), not skipped by design (e.g. the reference scan past --ref-max-res)."""
    return sum(r.get("status") == "skipped" and RERUN in str(r.get("note") or "") for r in rows)


def render_report(s: Settings) -> None:
    """bench.report over the run's folder (a failure leaves the raw rows, and says how to re-render)."""
    from bench.report import render

    try:
        written = render(Path(s.out))
    except Exception:  # the measurements are safe on disk whatever happens here
        traceback.print_exc()
        raw = Path(s.out) / "raw" / f"sweep_{s.tag}.json"
        print(f"REPORT FAILED — the raw data is complete in {raw}; re-render with "
              f"`python -m bench.report --out {s.out}`", flush=True)  # fmt: skip
        return
    print(f"wrote {len(written)} files under {s.out} (see {Path(s.out) / 'README.md'})")


def main(argv=None) -> int:
    return cli_main(run, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
