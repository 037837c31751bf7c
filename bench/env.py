"""The environment a benchmark ran in: hardware, clocks, power, software versions, git commit.

Every field is best-effort: what cannot be read is None (or "unknown" for the commit), never an error.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def try_call(fn, default=None):
    try:
        return fn()
    except Exception:
        return default


def package_version(dist: str) -> str | None:
    return try_call(lambda: importlib.metadata.version(dist))


def git_commit(repo: Path = REPO) -> str:
    """The commit the caller names in $GIT_COMMIT (a copy on the GPU machine, whose .git may be absent or stale),
    else `git rev-parse HEAD` (+dirty when tracked files are modified), else "unknown"."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]

    def run(*args):
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    commit = try_call(lambda: run("rev-parse", "HEAD"))
    if not commit:
        return "unknown"
    dirty = try_call(lambda: run("status", "--porcelain", "--untracked-files=no"))
    return commit + ("+dirty" if dirty else "")


def cpu_name() -> str | None:
    def read():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
        return platform.processor() or None

    return try_call(read)


def nvml_handle(index: int = 0):
    """(pynvml, handle) of CUDA device `index` (CUDA_VISIBLE_DEVICES honoured), or None without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    nvml_index = try_call(lambda: torch.cuda._get_nvml_device_index(index), index)
    h = try_call(lambda: pynvml.nvmlDeviceGetHandleByIndex(nvml_index))
    return None if h is None else (pynvml, h)


def nvml_info(index: int = 0) -> dict:
    """Driver, SM clock (current + max), power (draw / limit), memory, from pynvml. {} without a GPU."""
    got = nvml_handle(index)
    if got is None:
        return {}
    pynvml, h = got

    def s(x):
        return x.decode() if isinstance(x, bytes) else x

    mem = try_call(lambda: pynvml.nvmlDeviceGetMemoryInfo(h))
    return {
        "nvml_name": try_call(lambda: s(pynvml.nvmlDeviceGetName(h))),
        "driver": try_call(lambda: s(pynvml.nvmlSystemGetDriverVersion())),
        "cuda_driver_version": try_call(lambda: pynvml.nvmlSystemGetCudaDriverVersion()),
        "sm_clock_mhz": try_call(lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)),
        "sm_clock_max_mhz": try_call(lambda: pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)),
        "mem_clock_mhz": try_call(lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)),
        "power_draw_w": try_call(lambda: pynvml.nvmlDeviceGetPowerUsage(h) / 1000),
        "power_limit_w": try_call(lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000),
        "temperature_c": try_call(lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)),
        "nvml_mem_total_mb": mem.total / 2**20 if mem else None,
        "nvml_mem_used_mb": mem.used / 2**20 if mem else None,
        "mig_mode": try_call(lambda: pynvml.nvmlDeviceGetMigMode(h)[0]),
        "persistence_mode": try_call(lambda: pynvml.nvmlDeviceGetPersistenceMode(h)),
    }


def gpu_info(device: torch.device | None = None) -> dict:
    """Name, capability, memory and NVML data of the CUDA device, or {} on CPU."""
    if not torch.cuda.is_available():
        return {}
    index = (device.index if device is not None and device.index is not None else None) or 0
    props = torch.cuda.get_device_properties(index)
    return {
        "gpu": props.name,
        "gpu_count": torch.cuda.device_count(),
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "gpu_mem_total_mb": props.total_memory / 2**20,
        **nvml_info(index),
    }


def software_versions() -> dict:
    mamba = package_version("mamba-ssm") or package_version("mamba_ssm")
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": try_call(lambda: torch.backends.cudnn.version()) if torch.cuda.is_available() else None,
        "triton": try_call(lambda: __import__("triton").__version__),
        "mamba_ssm": mamba,
        "causal_conv1d": package_version("causal-conv1d") or package_version("causal_conv1d"),
        "fvcore": package_version("fvcore"),
        "numpy": package_version("numpy"),
        "pandas": package_version("pandas"),
    }


def environment(device: torch.device | None = None, **settings) -> dict:
    """Everything about where and how a run happened; `settings` (batch, dtype, reps, ...) are merged in."""
    now = _dt.datetime.now(_dt.UTC)
    return {
        "date": now.isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device) if device is not None else None,
        "git_commit": git_commit(),
        **software_versions(),
        **gpu_info(device),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "flash_attn_autotune": os.environ.get("FLASH_ATTN_AUTOTUNE"),
        # the forward's K/V reads (kernels/flash_attention.py); unset = auto: TMA at D >= 64 on sm_90, else pointers
        "flash_attn_fwd": os.environ.get("FLASH_ATTN_FWD") or "auto",
        "flash_attn_tune_top": os.environ.get("FLASH_ATTN_TUNE_TOP"),  # autotune over the first k configs (unset: all)
        "flash_attn_short_blocks": os.environ.get("FLASH_ATTN_SHORT_BLOCKS"),  # "0": no short-sequence config rule
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        **settings,
    }


def summary_line(env: dict) -> str:
    """One line for logs and the results README."""
    if env.get("gpu"):
        hw = f"{env['gpu']} (driver {env.get('driver')}, SM {env.get('sm_clock_mhz')}/{env.get('sm_clock_max_mhz')} MHz"
        hw += f", {env.get('power_draw_w')}/{env.get('power_limit_w')} W)"
    else:
        hw = f"CPU {env.get('cpu')} ({env.get('cpu_count')} cores, {env.get('torch_threads')} threads)"
    sw = f"torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, triton {env.get('triton')}"
    sw += f", mamba-ssm {env.get('mamba_ssm')}"
    return f"{hw}; {sw}; commit {env.get('git_commit')}; {env.get('date')} on {env.get('hostname')}"
