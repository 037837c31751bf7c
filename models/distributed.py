"""Data-parallel training on several processes: torch.distributed, launched by torchrun (no launcher of our own).

    torchrun --nproc_per_node=2 -m models.train --model v4 --batch-size 64     # 2 GPUs, 32 crops per rank
    torchrun --nproc_per_node=2 -m models.train --model v1 --dist-backend gloo --device cpu ...   # CPU, gloo

torchrun sets WORLD_SIZE / RANK / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; `setup` reads them. A process without
WORLD_SIZE (or with WORLD_SIZE=1) is a plain single-process run: no process group, no DDP wrapper, the training
loop exactly as before. With WORLD_SIZE > 1 every rank builds the same model (same seed), wraps the objective in
DistributedDataParallel, and takes rows [shard(B, rank, world)] of each global batch (models.data.DeviceBatches),
so the W ranks together see the single-process batch: the same crops, masks, noise and times (see
models.train.flow_matching_loss), and the averaged gradient is the single-process gradient.

Bad launches fail in one line before any heavy compute (a ConfigError, exit 2): a global batch not divisible by
the world size, NCCL without CUDA, more ranks per node than GPUs, an explicit --device that pins every rank to one
device, an unknown backend.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from models.common import ConfigError
from models.validate import env_value, positive_float

BACKENDS = ("auto", "nccl", "gloo")  # --dist-backend / $DIST_BACKEND; auto: nccl on CUDA, gloo on CPU
# NVLink multicast off unless the caller says otherwise: the models' gradients are a few MB, where NVLS gains
# nothing, and on shared hosts (the 2-GPU H200 machine's notes) a program using it can take the GPUs down.
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
TIMEOUT_S = 600.0  # a collective that waits longer than this fails instead of hanging ($DIST_TIMEOUT_S)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a data-parallel run (world 1: a plain single-process run)."""

    rank: int = 0  # global rank, 0 .. world - 1 (rank 0 writes checkpoints, logs and prints)
    world: int = 1  # number of processes (torchrun's WORLD_SIZE)
    local_rank: int = 0  # rank on this host: the CUDA device index of this rank
    backend: str | None = None  # nccl | gloo (None: single process)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def _env_int(name: str, environ) -> int | None:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r}: must be an integer (torchrun sets it)") from None


def launch_info(environ=None) -> DistInfo:
    """torchrun's environment → DistInfo (nothing initialised yet). WORLD_SIZE unset or 1: SINGLE."""
    environ = os.environ if environ is None else environ
    world = _env_int("WORLD_SIZE", environ)
    if world is None or world == 1:
        return SINGLE
    rank, local = _env_int("RANK", environ), _env_int("LOCAL_RANK", environ)
    if world < 1 or rank is None or not 0 <= rank < world:
        raise ConfigError(f"WORLD_SIZE={world} RANK={rank}: not a torchrun launch (RANK must be in [0, WORLD_SIZE))")
    return DistInfo(rank=rank, world=world, local_rank=rank if local is None else local)


def pick_backend(backend: str | None, device_flag: str, cuda: bool | None = None) -> str:
    """--dist-backend (or $DIST_BACKEND) → nccl | gloo, checked against the device (one line on a bad pair)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    backend = (backend or os.environ.get("DIST_BACKEND") or "auto").strip().lower()
    if backend not in BACKENDS:
        raise ConfigError(f"--dist-backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    on_cpu = device_flag == "cpu" or not cuda
    if backend == "auto":
        return "gloo" if on_cpu else "nccl"
    if backend == "nccl" and not cuda:
        raise ConfigError("--dist-backend nccl needs CUDA GPUs, and this machine has none; use --dist-backend gloo")
    if backend == "nccl" and device_flag == "cpu":
        raise ConfigError("--dist-backend nccl with --device cpu: NCCL reduces CUDA tensors only; use gloo on CPU")
    return backend


def rank_device(info: DistInfo, device_flag: str, cuda_count: int | None = None) -> str:
    """The device flag of this rank: cuda:LOCAL_RANK on CUDA (checked against the GPUs there), cpu on CPU."""
    if not info.enabled:
        return device_flag
    cuda_count = torch.cuda.device_count() if cuda_count is None else cuda_count
    if device_flag not in ("auto", "cuda", "cpu"):
        raise ConfigError(
            f"--device {device_flag} under torchrun: each rank takes cuda:LOCAL_RANK; pass --device auto, cuda or cpu"
        )
    if device_flag == "cpu" or (device_flag == "auto" and cuda_count == 0):
        return "cpu"
    if cuda_count == 0:
        raise ConfigError("--device cuda under torchrun, but this machine has no CUDA GPU")
    if info.local_rank >= cuda_count:
        raise ConfigError(
            f"torchrun started more processes per node than there are GPUs (LOCAL_RANK {info.local_rank}, "
            f"{cuda_count} GPU{'s' if cuda_count != 1 else ''}); pass --nproc_per_node={cuda_count} or fewer"
        )
    return f"cuda:{info.local_rank}"


def check_batch(global_batch: int, world: int, flag: str = "--batch-size") -> int:
    """The per-rank batch of a global batch (one line when it does not divide evenly)."""
    if global_batch % world:
        lo, hi = global_batch // world * world, -(-global_batch // world) * world
        fits = ", ".join(str(b) for b in dict.fromkeys(b for b in (lo, hi) if b > 0))
        raise ConfigError(
            f"{flag} {global_batch} is the global batch and must be divisible by the world size {world} "
            f"(torchrun --nproc_per_node); use {fits}"
        )
    return global_batch // world


def setup(backend_flag: str | None, device_flag: str, environ=None) -> tuple[DistInfo, str]:
    """Read torchrun's environment, check the launch, init the process group. Returns (info, this rank's device
    flag). Single process (WORLD_SIZE unset / 1): (SINGLE, device_flag), nothing initialised."""
    info = launch_info(environ)
    if not info.enabled:
        if backend_flag not in (None, "auto") and backend_flag not in BACKENDS:
            raise ConfigError(f"--dist-backend must be one of {', '.join(BACKENDS)}, got {backend_flag!r}")
        return SINGLE, device_flag
    backend = pick_backend(backend_flag, device_flag)
    device = rank_device(info, device_flag)
    if device.startswith("cuda"):
        torch.cuda.set_device(int(device.split(":")[1]))
    timeout = env_value("DIST_TIMEOUT_S", positive_float, TIMEOUT_S)
    for name, value in NO_MULTICAST.items():  # before NCCL reads them; an explicit setting is kept
        os.environ.setdefault(name, value)
    if not dist.is_initialized():
        kw = {"device_id": torch.device(device)} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout), **kw)
    return DistInfo(info.rank, info.world, info.local_rank, backend), device


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """A process group of more than one rank is up (train_step reduces its loss then)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of n that rank takes: contiguous, in rank order, sizes differing by at most one."""
    return n * rank // world, n * (rank + 1) // world


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def reduce_scalars(info: DistInfo, values, op: str = "sum", device="cpu") -> list[float]:
    """All-reduce a few floats (sum | max | min) across ranks; world 1: the values as they are."""
    values = [float(v) for v in values]
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return t.tolist()


def any_rank(info: DistInfo, flag: bool, device="cpu") -> bool:
    """True on every rank when it is True on any (a stop decision all ranks must share)."""
    return bool(reduce_scalars(info, [float(flag)], "max", device)[0]) if info.enabled else bool(flag)


def mean_loss(loss: torch.Tensor) -> torch.Tensor:
    """The loss averaged over the ranks (detached; the global batch's loss when shards are equal)."""
    out = loss.detach().float().clone()
    dist.all_reduce(out, dist.ReduceOp.SUM)
    return out / dist.get_world_size()


# ----------------------------------------------------------------------------------------------
# Preflight: `make train-ddp` checks the launch once, in one line, before torchrun starts N processes
# ----------------------------------------------------------------------------------------------


def preflight(nproc: int, train_argv: list[str], environ=None, cuda_count: int | None = None) -> None:
    """What every rank would refuse, checked once for a launch of `nproc` processes: models.train's flags, the
    backend against the devices, the GPUs against nproc, the global batch against nproc. ConfigError on failure."""
    from models.common import ENV_TRAIN
    from models.train import build_parser
    from models.validate import positive_int

    environ = os.environ if environ is None else environ
    if nproc < 1:
        raise ConfigError(f"NPROC must be >= 1, got {nproc}")
    args = build_parser().parse_args(train_argv)  # a bad flag: argparse's one line, exit 2
    if nproc == 1:
        return
    cuda_count = torch.cuda.device_count() if cuda_count is None else cuda_count
    pick_backend(args.dist_backend, args.device, cuda=cuda_count > 0)
    rank_device(DistInfo(rank=nproc - 1, world=nproc, local_rank=nproc - 1), args.device, cuda_count)
    batch, flag = args.batch_size, "--batch-size"
    if batch is None:
        flag = next(k for k, v in ENV_TRAIN.items() if v == "batch_size")  # the spec's $BATCH_SIZE
        batch = env_value(flag, positive_int, None, environ)
    if batch is not None:
        check_batch(batch, nproc, flag)


def _preflight_main(argv=None) -> int:
    """python -m models.distributed --nproc N -- <models.train flags>: exit 2 with one line on a bad launch."""
    import sys

    from models.utils import cli_main

    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) < 2 or argv[0] != "--nproc":
        sys.stderr.write("models.distributed: error: usage: python -m models.distributed --nproc N -- TRAIN_FLAGS\n")
        return 2
    try:
        nproc = int(argv[1])
    except ValueError:
        sys.stderr.write(f"models.train: error: NPROC must be an integer, got {argv[1]!r}\n")
        return 2
    rest = argv[2:][1:] if argv[2:3] == ["--"] else argv[2:]
    from models.train import build_parser

    return cli_main(lambda a: preflight(nproc, a), rest, build_parser())


if __name__ == "__main__":
    raise SystemExit(_preflight_main())


def torchrun(nproc: int, module: str, args: list[str], cwd, env: dict, timeout: float):
    """`torchrun --standalone --nproc_per_node=N -m MODULE ARGS` (torch's own launcher, a free port), in a session
    of its own so that a hang past `timeout` seconds kills every rank. Returns (CompletedProcess, timed_out)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", module, *args]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        timed_out = True
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), timed_out
