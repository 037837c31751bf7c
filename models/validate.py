"""Input checks shared by every CLI: argparse `type=` functions, environment variables, paths, memory bounds.

Every check fails with ONE line that names the flag (or variable) and what is allowed, before any compute:

    p.add_argument("--lr", type=positive_float, default=None)      # "argument --lr: must be a finite number > 0, ..."
    batch = env_value("BATCH_SIZE", positive_int, 64)              # "environment variable BATCH_SIZE='x': ..."
    out = output_file(".png", ".pdf")("samples.gif")               # "... unknown image extension '.gif' ..."

Inside argparse a type function raises argparse.ArgumentTypeError (argparse adds "argument --flag: "); `check`
applies the same functions to Python values and raises ConfigError naming the field. `memory_*` turn a model's
own estimate (SparseFieldModel.memory_bytes) into "needs ~X GB, Y available; --batch-size B fits" before a
multi-GB allocation is tried. New flags should reuse these instead of writing their own checks.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from models.common import ConfigError

# ----------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------


def integer(lo: int | None = None, hi: int | None = None, what: str = "an integer"):
    """An argparse type: an int in [lo, hi] (either bound optional)."""
    bounds = " and ".join(s for s in (lo is not None and f">= {lo}", hi is not None and f"<= {hi}") if s)
    allowed = f"{what} {bounds}".strip()

    def parse(text) -> int:
        if isinstance(text, bool):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        try:
            value = int(text) if not isinstance(text, float) or text.is_integer() else None
        except (TypeError, ValueError):
            value = None
        if value is None:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
        return value

    parse.__name__ = f"integer[{lo},{hi}]"
    return parse


def number(lo: float | None = None, hi: float | None = None, lo_open=False, hi_open=False, allow_inf=False):
    """An argparse type: a finite float in the interval (open/closed ends as given); `allow_inf`: also +inf."""
    ends = []
    if lo is not None:
        ends.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        ends.append(f"{'<' if hi_open else '<='} {hi:g}")
    allowed = "a finite number" + (" " + " and ".join(ends) if ends else "") + (" (or inf)" if allow_inf else "")

    def parse(text) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        if math.isnan(value) or (math.isinf(value) and not (allow_inf and value > 0)):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        if math.isinf(value):
            return value
        if lo is not None and (value < lo or (lo_open and value == lo)):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value:g}")
        if hi is not None and (value > hi or (hi_open and value == hi)):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = integer(1)
nonneg_int = integer(0)
finite_float = number()
positive_float = number(0, lo_open=True)
nonneg_float = number(0)
fraction = number(0, 1, lo_open=True, hi_open=True)  # observed fraction: (0, 1)
dropout_rate = number(0, 1, hi_open=True)  # [0, 1)
resolution = integer(8)  # image side in pixels


def check(type_fn, value, name: str):
    """Apply a type function to a Python value; ConfigError '<name>: must be ...' on failure."""
    try:
        return type_fn(value)
    except argparse.ArgumentTypeError as e:
        raise ConfigError(f"{name}: {e}") from None


def env_value(name: str, type_fn, default=None, environ=None):
    """The environment variable `name` parsed with `type_fn` (unset or empty: `default`)."""
    raw = (os.environ if environ is None else environ).get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return type_fn(raw.strip())
    except argparse.ArgumentTypeError as e:
        raise ConfigError(f"environment variable {name}={raw!r}: {e}") from None


# ----------------------------------------------------------------------------------------------
# Models (the keys of models.variants' table)
# ----------------------------------------------------------------------------------------------


def model_name(text) -> str:
    """An argparse type: a model key of the table of variants (v1, v2, v3, v4, ...)."""
    from models.variants import variant_names  # here, not at the top: the table imports every model

    names = variant_names()
    if text not in names:
        raise argparse.ArgumentTypeError(f"unknown model {text!r}; choose from {', '.join(names)}")
    return text


def model_checkpoint(text) -> str:
    """An argparse type: MODEL=PATH, a model key of the table and a readable file (returned as given)."""
    key, sep, path = str(text).partition("=")
    if not sep or not key or not path:
        raise argparse.ArgumentTypeError(f"must be MODEL=PATH (e.g. v1=checkpoints_mamba/mamba_best.pth), got {text!r}")
    model_name(key)
    existing_file(path)
    return text


# ----------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def existing_file(text) -> Path:
    p = Path(text)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    if not os.access(p, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text} is not readable")
    return p


def existing_dir(text) -> str:
    p = Path(text)
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text} does not exist or is not a folder")
    return str(text)


def writable_dir(text) -> str:
    """A folder that exists and is writable, or can be created (nothing is created here)."""
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create folder {text}: {base} is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"folder {base} is not writable")
    return str(text)


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".pdf", ".svg")  # what matplotlib's savefig writes without extras


def output_file(*exts: str):
    """An argparse type: a file path to write, with one of `exts`, in a folder that is (or can be) writable."""
    exts = tuple(e.lower() for e in exts)

    def parse(text) -> Path:
        p = Path(text)
        if p.suffix.lower() not in exts:
            got = repr(p.suffix) if p.suffix else "none"
            raise argparse.ArgumentTypeError(f"unknown file extension {got} in {text}; use one of {', '.join(exts)}")
        if p.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
        try:
            writable_dir(p.parent if str(p.parent) else ".")
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"cannot write {text}: {e}") from None
        return p

    parse.__name__ = "output_file"
    return parse


image_file = output_file(*IMAGE_EXTS)


def guard_committed_results(out, device, names=None, repo: Path | None = None) -> None:
    """A CPU run never replaces the committed GPU report: refuse writing into results/ (not results/cpu/)
    when the files it would write (`names`; None: any file) already exist there."""
    if getattr(device, "type", str(device)) == "cuda":
        return
    repo = repo or Path(__file__).resolve().parents[1]
    results, cpu = (repo / "results").resolve(), (repo / "results" / "cpu").resolve()
    out = Path(out).resolve()
    if out != results and (results not in out.parents or out == cpu or cpu in out.parents):
        return
    existing = [n for n in (names or []) if (out / n).exists()] if names is not None else list(out.glob("*"))
    if existing:
        first = existing[0] if isinstance(existing[0], str) else existing[0].name
        raise ConfigError(
            f"--out {out}: a CPU run would replace the committed GPU results ({first}); "
            "use --out results/cpu (the CPU default) or another folder"
        )


# ----------------------------------------------------------------------------------------------
# Memory bounds
# ----------------------------------------------------------------------------------------------

GB = 1e9


def available_memory(device) -> tuple[int, str]:
    """Bytes this process may still allocate on `device`, and where the number came from.

    $MEM_BUDGET_GB overrides (a shared machine, tests). CUDA: free device memory. CPU: MemAvailable, capped by
    the cgroup limit when one is set.
    """
    budget = env_value("MEM_BUDGET_GB", positive_float)
    if budget is not None:
        return int(budget * GB), "$MEM_BUDGET_GB"
    dev = getattr(device, "type", str(device))
    if dev == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0]), "free GPU memory"
    avail, src = None, "available RAM"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        raw = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if raw != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            limit = int(raw) - used
            if avail is None or limit < avail:
                avail, src = limit, "the cgroup's memory limit"
    except (OSError, ValueError):
        pass
    if avail is None:  # not Linux: no bound
        return 1 << 62, "unknown"
    return avail, src


def fmt_bytes(n: float) -> str:
    if n < 1e12:
        return f"{n / GB:.1f} GB"
    return f"{n / 1e12:.0f} TB" if n < 1e15 else f"{n / 1e12:.1e} TB"


def largest_fitting(estimate, lo: int, hi: int, avail: float) -> int | None:
    """The largest x in [lo, hi] with estimate(x) <= avail (estimate non-decreasing), or None."""
    if estimate(lo) > avail:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(mid) <= avail:
            lo = mid
        else:
            hi = mid - 1
    return lo


def memory_check(estimate, batch: int, res: int, avail: int, src: str, what: str, batch_flag="--batch-size",
                 res_flag="--resolution") -> None:  # fmt: skip
    """Refuse (one line) when estimate(batch, res) bytes exceed `avail`; say which batch / resolution fits."""
    need = estimate(batch, res)
    if need <= avail:
        return
    with_batch = f" with {batch_flag} {batch}" if batch_flag else ""
    head = f"{res_flag} {res}{with_batch}: {what} needs ~{fmt_bytes(need)}, {fmt_bytes(avail)} {src}"
    b = largest_fitting(lambda b: estimate(b, res), 1, batch, avail) if batch_flag else None
    if b is not None:
        raise ConfigError(f"{head}; {batch_flag} {b} fits")
    r = largest_fitting(lambda r: estimate(1, r), 8, res, avail)
    at = f" at {batch_flag} 1" if batch_flag else ""
    fix = f"{res_flag} {r} fits{at}" if r else "nothing fits, even at 8×8"
    raise ConfigError(f"{head}; {fix}")


PROCESS_BASE = int(0.6 * GB)  # resident size of a process that has imported torch and rendered a few crops
CUDA_SLACK = 4.0  # on CUDA an OOM is a clean exception: refuse only estimates this far past the free memory


def run_bytes(model_cls, cfg, resolution: int, batch: int, train: bool, device_type: str, params: int = 0,
              data_samples: int = 0) -> int:  # fmt: skip
    """Host-or-device bytes of a run: the model's activation estimate, weights (+ grads and AdamW state when
    training), the rendered crops (and their device copy), and the process itself."""
    n = resolution * resolution
    state = params * (16 if train else 4)
    data = data_samples * cfg.value_channels * n * 4 * 2
    return int(model_cls.memory_bytes(cfg, n, batch, train, device_type) + state + data + PROCESS_BASE)


def check_memory(estimate, batch: int, res: int, device, what: str, batch_flag="--batch-size",
                 res_flag="--resolution") -> None:  # fmt: skip
    """memory_check against what `device` has free (CUDA: only gross overshoots, see CUDA_SLACK)."""
    avail, src = available_memory(device)
    if getattr(device, "type", str(device)) == "cuda":
        avail = int(avail * CUDA_SLACK)
    memory_check(estimate, batch, res, avail, src, what, batch_flag, res_flag)


def fit_batch(estimate, res: int, device, cap: int) -> int | None:
    """The largest power of two <= cap whose estimate fits in the device's free memory (None: not even 1)."""
    avail, _ = available_memory(device)
    b = 1 << max(cap, 1).bit_length() - 1
    while b >= 1:
        if estimate(b, res) <= avail:
            return b
        b //= 2
    return None
