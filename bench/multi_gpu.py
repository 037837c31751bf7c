"""The sweep on every GPU of one host: one process per GPU (torch.multiprocessing), a deterministic share of the plan.

    make bench                       # on a host with N > 1 GPUs: N processes, rows spread over the GPUs
    make bench ARGS="--gpus 1"       # one GPU (cuda:0), exactly the single-GPU sweep

How: bench.sweep builds its plan (units in priority order: a unit is one row, or the series timed together in
interleaved rounds, which stay on one GPU). `share_plan` deals the units out greedily by their estimated cost:
each, in plan order, to the GPU with the least estimated work so far (ties: the lower index). Every GPU's share
keeps the plan's priority order, so a time-budget cut still keeps each GPU's headline rows. Worker i runs pinned to
cuda:i (torch.cuda.set_device) and writes its rows to its own resumable part file, raw/sweep_<tag>.gpu<i>.{json,csv}
(after every row, atomically), having read the rows already done in the merged file and in every part file (a
rerun, with any number of GPUs, continues where any of them stopped). When all are done the parent merges the
parts into raw/sweep_<tag>.{json,csv} (the file bench.report reads) and removes them. Every row records its
device (device_index, device_name) and the report lists the devices its rows ran on.

Caveat: a series' resolutions may land on different GPUs, so a point above one that ran out of memory is tried (and
is an OOM row) instead of being skipped as on one GPU: a few seconds more, the same table.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

PART = re.compile(r"^sweep_(?P<tag>.+)\.gpu(?P<index>\d+)\.json$")


def share_plan(units: Sequence, world: int, cost: Callable[[object], float]) -> list[list]:
    """Deal `units` out to `world` workers: each unit, in order, to the worker with the least estimated cost so far
    (ties: the lowest index). Deterministic; the shares are disjoint, complete and each in plan order."""
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    shares: list[list] = [[] for _ in range(world)]
    load = [0.0] * world
    for unit in units:
        i = min(range(world), key=lambda k: (load[k], k))
        shares[i].append(unit)
        load[i] += max(float(cost(unit)), 1e-9)  # a free unit still counts: zero-cost units spread too
    return shares


def part_paths(raw: Path, tag: str) -> list[Path]:
    """The part files of one sweep tag, by GPU index."""
    found = []
    for p in raw.glob(f"sweep_{tag}.gpu*.json"):
        m = PART.match(p.name)
        if m and m["tag"] == tag:
            found.append((int(m["index"]), p))
    return [p for _, p in sorted(found)]


def read_rows(path: Path) -> tuple[list[dict], list[dict]]:
    data = json.loads(path.read_text())
    return data.get("runs", []), data.get("rows", [])


def merge_into(store, parts: Sequence[Path], key: Callable[[dict], tuple]) -> int:
    """Add the rows and run records of `parts` to a RowStore (a part's row replaces the store's row of the same key
    unless the store's is done and the part's is not); returns the number of rows taken. Does not flush."""
    taken = 0
    for path in parts:
        runs, rows = read_rows(path)
        for run in runs:
            if run not in store.runs:
                store.runs.append(run)
        for row in rows:
            k = key(row)
            old = store.rows.get(k)
            if old is not None and old.get("status") in ("ok", "oom") and row.get("status") not in ("ok", "oom"):
                continue  # a part that skipped a row another GPU (or an earlier call) measured does not undo it
            if old != row:
                store.rows[k] = row
                taken += 1
    return taken


def pick_gpus(flag: int | None, device_flag: str, available: int) -> int:
    """--gpus → the number of worker processes (default: every visible GPU, unless --device names one)."""
    from models.common import ConfigError

    spread = device_flag in ("auto", "cuda")
    if flag is None:
        return available if spread and available > 1 else 1
    if flag > 1 and available == 0:
        raise ConfigError(f"--gpus {flag} needs CUDA GPUs, and this machine has none; drop --gpus")
    if flag > max(available, 1):
        raise ConfigError(f"--gpus {flag}: this host has {available} GPU{'s' if available != 1 else ''}")
    if flag > 1 and not spread:
        raise ConfigError(f"--gpus {flag} with --device {device_flag}: the workers take cuda:0 .. cuda:{flag - 1}; "
                          "pass --device auto or cuda")  # fmt: skip
    return flag


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _worker(index: int, settings, world: int) -> None:
    """One GPU's share of the sweep: pinned to cuda:index, its rows into its part file."""
    import torch

    from bench import sweep

    torch.cuda.set_device(index)
    s = replace(settings, device=f"cuda:{index}", shard=(index, world), render=False)
    sweep._run_sweep(s)


def run_parallel(settings, world: int, spawn=None) -> None:
    """The sweep on `world` GPUs: one spawned process each (torch.multiprocessing), then the merge and the report.

    A worker that fails (its rows so far are on disk) fails the run after the others finish; the merge still
    happens, and a rerun continues."""
    from bench import sweep

    if spawn is None:
        import torch.multiprocessing as mp

        def spawn(fn, args, nprocs):
            mp.start_processes(fn, args=args, nprocs=nprocs, start_method="spawn", join=True)

    out = Path(settings.out)
    print(f"multi-GPU sweep: {world} processes, one per GPU (cuda:0 .. cuda:{world - 1}), each a share of the plan; "
          f"part files under {out / 'raw'}", flush=True)  # fmt: skip
    sweep.merge_parts(out, settings.tag, fresh=settings.fresh)  # leftovers of an interrupted run first
    try:
        run_id = settings.run_id or time.strftime("%Y%m%dT%H%M%S")  # one call: one run_id on every GPU
        spawn(_worker, (replace(settings, run_id=run_id), world), world)
    finally:
        n = sweep.merge_parts(out, settings.tag, fresh=False)
        print(f"merged {n} rows from {world} GPUs into {out / 'raw' / f'sweep_{settings.tag}.json'}", flush=True)
    sweep.render_report(settings)
