"""Data-parallel scaling efficiency of the training step: 1 GPU vs N GPUs (torchrun, DDP, NCCL).

    make ddp-scaling NPROC=2                   # python -m bench.ddp_scaling --nproc 2 → results/ddp_scaling.*
    python -m bench.ddp_scaling --nproc 2 --cases v4:128:16 --steps 20

Each case MODEL:RES:BATCH is one model at RES² with BATCH crops per GPU (weak scaling: the global batch grows with
the GPUs). Defaults, from issue 14: V1 and V4 at 64² with 64 per GPU, V4 at 128² with 16 per GPU. For each case and
world size W in (1, N) it launches `torchrun --standalone --nproc_per_node=W -m bench.ddp_scaling --worker ...`:
every rank runs the training loop's own step (models.train.train_step: bf16 autocast, DDP's gradient all-reduce,
the loss averaged over ranks, clipping, AdamW) on batches drawn on its GPU by models.data.DeviceBatches, --warmup
steps, then --steps timed steps between two barriers (the slowest rank's wall time). W = 1 is a plain process
(no process group, no DDP wrapper): the baseline a user has without torchrun.

    steps/s = steps / time,  samples/s = W · BATCH · steps/s,  efficiency = samples/s(W) / (W · samples/s(1))

Writes <out>/ddp_scaling.{csv,md,json}: the table, the environment record (bench.env) and the commands. On a CUDA
host <out> defaults to results/; without CUDA (gloo, CPU processes: checks the pipeline, measures nothing a GPU
user needs) to results/cpu/, and a CPU run never writes into results/. NCCL_NVLS_ENABLE=0 is set for the workers
unless the caller set it (NVLink multicast off, as the 2-GPU machine's notes require).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from bench.env import environment, summary_line
from models.common import ConfigError
from models.distributed import NO_MULTICAST, torchrun
from models.utils import ArgParser, atomic_to_csv, atomic_write_text, cli_main, pick_device
from models.validate import guard_committed_results, model_name, positive_int, resolution, writable_dir

REPO = Path(__file__).resolve().parents[1]
CASES = ("v1:64:64", "v4:64:64", "v4:128:16")  # MODEL:RES:BATCH per GPU (issue 14)
LAUNCH_TIMEOUT_S = 600  # one torchrun launch (a case at one world size) at most this long


@dataclass(frozen=True)
class Case:
    model: str  # a key of models.variants (v1, v4, ...)
    res: int  # image side: N = res² tokens
    batch: int  # crops per GPU (per rank)

    def __str__(self) -> str:
        return f"{self.model}:{self.res}:{self.batch}"


def case(text) -> Case:
    """An argparse type: MODEL:RES:BATCH (batch per GPU)."""
    parts = str(text).split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"must be MODEL:RES:BATCH (batch per GPU, e.g. v4:128:16), got {text!r}")
    m, r, b = parts
    return Case(model_name(m), resolution(r), positive_int(b))


# ----------------------------------------------------------------------------------------------
# The worker: one rank of one launch
# ----------------------------------------------------------------------------------------------


def run_worker(a) -> dict:
    """Time --steps training steps of one case on this rank (inside torchrun); rank 0 returns the record."""
    from models import build_model
    from models import distributed as ddp
    from models.data import DeviceBatches, SparseFieldDataset, load_images
    from models.train import FlowMatchingObjective, config_overrides, flow_matching_loss, peak_memory_mb, train_step

    c = a.worker
    info, device_flag = ddp.setup(a.dist_backend, a.device)
    try:
        device = pick_device(device_flag)
        torch.manual_seed(0)
        model = build_model(c.model, a.preset, config_overrides(c.model, {"mixer_backend": a.mixer_backend}))
        model = model.to(device)
        global_batch = c.batch * info.world
        ds = SparseFieldDataset(load_images(None, "train"), c.res, 2 * global_batch, seed=0)
        batches = DeviceBatches(ds, global_batch, device, rank=info.rank, world=info.world)
        objective = None
        if info.enabled:
            kw = {"device_ids": [device.index]} if device.type == "cuda" else {}
            objective = torch.nn.parallel.DistributedDataParallel(FlowMatchingObjective(model), **kw)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        amp = device.type == "cuda"

        def stream():
            epoch = 0
            while True:
                yield from batches.epoch(epoch)
                epoch += 1

        it = stream()

        def step():
            batch = next(it)
            loss_fn = partial(objective, batch) if objective is not None else partial(flow_matching_loss, model, batch)
            return train_step(loss_fn, opt, device, amp)

        for _ in range(a.warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        ddp.barrier(info)
        t0 = time.perf_counter()
        for _ in range(a.steps):
            loss, _ = step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ddp.barrier(info)
        elapsed = ddp.reduce_scalars(info, [time.perf_counter() - t0], "max", device)[0]
        peak = ddp.reduce_scalars(info, [peak_memory_mb(device)], "max", device)[0]
        return {
            "model": c.model, "res": c.res, "N": c.res * c.res, "batch_per_gpu": c.batch, "world": info.world,
            "global_batch": global_batch, "backend": info.backend or "-", "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "preset": a.preset, "amp": "bf16" if amp else "fp32", "warmup": a.warmup, "steps": a.steps,
            "time_s": elapsed, "step_ms": 1e3 * elapsed / a.steps, "steps_per_s": a.steps / elapsed,
            "samples_per_s": global_batch * a.steps / elapsed, "peak_mem_mb": peak, "final_loss": float(loss),
            "mixer_backend": getattr(model, "mixer_backend", "-"), "attn_backend": model.cfg.attn_backend,
        }  # fmt: skip
    finally:
        ddp.teardown(info)


# ----------------------------------------------------------------------------------------------
# The parent: one torchrun launch per (case, world size), then the table
# ----------------------------------------------------------------------------------------------


def launch(c: Case, world: int, a, timeout: float = LAUNCH_TIMEOUT_S) -> dict:
    """torchrun --standalone --nproc_per_node=world ... --worker c; the record, or a failed row saying why."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    for name, value in NO_MULTICAST.items():  # NVLink multicast off (the 2-GPU machine's notes), unless set
        env.setdefault(name, value)
    env.pop("WORLD_SIZE", None)
    with tempfile.TemporaryDirectory(prefix="ddp_scaling_") as tmp:
        result = Path(tmp) / "result.json"
        args = ["--worker", str(c), "--result", str(result), "--preset", a.preset, "--steps", str(a.steps),
                "--warmup", str(a.warmup), "--device", a.device, "--mixer-backend", a.mixer_backend]  # fmt: skip
        args += ["--dist-backend", a.dist_backend] if a.dist_backend else []
        base = {"model": c.model, "res": c.res, "N": c.res * c.res, "batch_per_gpu": c.batch, "world": world,
                "global_batch": c.batch * world}  # fmt: skip
        print(f"ddp_scaling: {c} on {world} process{'es' if world > 1 else ''} ...", flush=True)
        proc, timed_out = torchrun(world, "bench.ddp_scaling", args, REPO, env, timeout)
        if timed_out:
            return {**base, "status": "timeout", "note": f"no result in {timeout:.0f} s"}
        err = proc.stderr
        if proc.returncode != 0 or not result.is_file():
            lines = [ln for ln in err.strip().splitlines() if ln.strip()]
            why = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
            status = "oom" if "out of memory" in err.lower() else "error"
            return {**base, "status": status, "note": why.strip()[:300]}
        return {**json.loads(result.read_text()), "status": "ok", "note": ""}


def scaling_table(rows: list[dict]) -> pd.DataFrame:
    """Rows of every (case, world) + speed-up and parallel efficiency against the case's world-1 row."""
    df = pd.DataFrame(rows)
    for col in ("samples_per_s", "steps_per_s", "step_ms", "peak_mem_mb"):
        if col not in df:
            df[col] = math.nan
    df["speedup"], df["efficiency"] = math.nan, math.nan
    for _, g in df.groupby(["model", "res", "batch_per_gpu"], sort=False):
        one = g[(g["world"] == 1) & (g["status"] == "ok")]
        if one.empty:
            continue
        base = float(one["samples_per_s"].iloc[0])
        df.loc[g.index, "speedup"] = g["samples_per_s"] / base
        df.loc[g.index, "efficiency"] = g["samples_per_s"] / (g["world"] * base)
    return df


def _f(x, fmt: str) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def markdown(df: pd.DataFrame, env: dict, command: str) -> str:
    on_gpu = bool(env.get("gpu"))
    lines = [
        "# Data-parallel scaling of the training step (DDP)",
        "",
        "> Generated by `python -m bench.ddp_scaling`; do not edit by hand.",
        "",
    ]
    if not on_gpu:
        lines += ["> **CPU RUN** (gloo, CPU processes): a check of the pipeline, not a GPU measurement.", ""]
    lines += [
        f"**Environment.** {summary_line(env)}; {env.get('gpu_count') or 0} GPUs visible.",
        "",
        f"**Command.** `{command}`",
        "",
        "Weak scaling: BATCH crops per GPU, so the global batch is W × BATCH. W = 1 is one plain process (no DDP); "
        "W > 1 is torchrun + DistributedDataParallel (the gradient all-reduce in backward, the loss averaged). "
        f"{int(df['warmup'].dropna().iloc[0]) if 'warmup' in df and df['warmup'].notna().any() else '?'} warm-up "
        f"steps, then {int(df['steps'].dropna().iloc[0]) if 'steps' in df and df['steps'].notna().any() else '?'} "
        "timed steps between two barriers (the slowest rank). efficiency = samples/s(W) / (W · samples/s(1)).",
        "",
        "| model | r | N | batch / GPU | GPUs | global batch | step (ms) | steps/s | samples/s | speed-up | "
        "efficiency | peak mem / GPU (MB) | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in df.iterrows():
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('note', '')}"
        lines.append(
            f"| {r['model']} | {r['res']} | {r['N']:,} | {r['batch_per_gpu']} | {r['world']} | {r['global_batch']} | "
            f"{_f(r['step_ms'], '.1f')} | {_f(r['steps_per_s'], '.2f')} | {_f(r['samples_per_s'], '.1f')} | "
            f"{_f(r['speedup'], '.2f')}× | {_f(r['efficiency'], '.1%')} | {_f(r['peak_mem_mb'], '.0f')} | {status} |"
        )
    return "\n".join(lines) + "\n"


def check_case_memory(c: Case, a, device: torch.device, world: int) -> None:
    """Refuse, in one line and before any launch, a case whose training step cannot fit: per GPU on CUDA; on a CPU
    all `world` processes share the RAM (models.validate's estimate, as models.train uses it)."""
    from models import count_parameters
    from models.train import config_overrides
    from models.validate import available_memory, check_memory, memory_check, run_bytes
    from models.variants import get_variant

    v = get_variant(c.model)
    cfg = v.config(a.preset, config_overrides(c.model, {"mixer_backend": a.mixer_backend}), {})
    params = count_parameters(v.cls(cfg))

    def estimate(batch, res):  # one rank: its batch, its copy of the crops (2 global batches)
        return run_bytes(v.cls, cfg, res, batch, True, device.type, params, 2 * batch * world)

    what = f"case {c}: a {c.model} training step on {device.type}"
    if device.type == "cuda":
        check_memory(estimate, c.batch, c.res, device, what, None, "--cases RES")
        return
    avail, src = available_memory(device)
    memory_check(lambda b, r: world * estimate(b, r), c.batch, c.res, avail, src, f"{what} × {world} processes",
                 "--cases BATCH", "--cases RES")  # fmt: skip


def run_parent(a) -> list[Path]:
    device = pick_device(a.device)
    cuda = device.type == "cuda"
    if cuda and a.nproc > torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise ConfigError(f"--nproc {a.nproc}: this host has {n} GPU{'s' if n != 1 else ''}")
    out = Path(a.out or (REPO / "results" if cuda else REPO / "results" / "cpu"))
    names = ["ddp_scaling.csv", "ddp_scaling.md", "ddp_scaling.json"]
    guard_committed_results(out, device, names)
    if not cuda and (out.resolve() == (REPO / "results").resolve()):
        raise ConfigError(f"--out {out}: a CPU run never writes into results/; use results/cpu or another folder")
    worlds = sorted({1, a.nproc})
    for c in a.cases:
        check_case_memory(c, a, device, max(worlds))
    rows = [launch(c, w, a) for c in a.cases for w in worlds]
    df = scaling_table(rows)
    command = "python -m bench.ddp_scaling " + " ".join(a.argv)
    env = environment(device, command=command, nproc=a.nproc, cases=[str(c) for c in a.cases],
                      nccl_nvls_enable=os.environ.get("NCCL_NVLS_ENABLE", "0 (set for the workers)"))  # fmt: skip
    written = [
        atomic_to_csv(df, out / "ddp_scaling.csv"),
        atomic_write_text(out / "ddp_scaling.md", markdown(df, env, command)),
        atomic_write_text(
            out / "ddp_scaling.json", json.dumps({"env": env, "rows": df.to_dict("records")}, indent=1, default=str)
        ),  # fmt: skip
    ]
    for _, r in df.iterrows():
        print(f"  {r['model']} r={r['res']} B/GPU={r['batch_per_gpu']} W={r['world']}: {r['status']} "
              f"{_f(r['samples_per_s'], '.1f')} samples/s, efficiency {_f(r['efficiency'], '.1%')}")  # fmt: skip
    print(f"wrote {', '.join(str(p) for p in written)}")
    return written


def build_parser() -> ArgParser:
    p = ArgParser(prog="bench.ddp_scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc", type=positive_int, default=2, help="GPUs of the scaled run (compared with 1)")
    p.add_argument("--cases", type=case, nargs="+", default=[case(c) for c in CASES], help="MODEL:RES:BATCH per GPU")
    p.add_argument("--steps", type=positive_int, default=20, help="timed training steps per launch")
    p.add_argument("--warmup", type=positive_int, default=5, help="untimed steps first (cuDNN / allocator warm-up)")
    p.add_argument("--preset", default="default", choices=("default", "small", "tiny"))
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="cpu: gloo CPU processes")
    p.add_argument("--dist-backend", default=None, choices=("auto", "nccl", "gloo"), help="default: nccl on CUDA")
    p.add_argument("--mixer-backend", default="auto", help="Mamba variants: auto | mamba_ssm | cpu_fused | reference")
    p.add_argument("--out", type=writable_dir, default=None, help="folder (CUDA: results/, CPU: results/cpu/)")
    p.add_argument("--worker", type=case, default=None, help=argparse.SUPPRESS)  # one rank of a launch
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)  # where rank 0 writes its record
    return p


def run(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_args(argv)
    a.argv = argv
    if a.worker is None:
        run_parent(a)
        return
    rec = run_worker(a)
    if int(os.environ.get("RANK", "0")) == 0 and a.result:
        atomic_write_text(a.result, json.dumps({**rec, "config": asdict(a.worker)}))


def main(argv=None) -> int:
    return cli_main(run, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
