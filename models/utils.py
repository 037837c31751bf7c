"""Small shared helpers: CLI error handling, device choice, atomic file writes, environment record."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from models.common import ConfigError


class ArgParser(argparse.ArgumentParser):
    """argparse whose errors are one line (`prog: error: ...`) with exit code 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def tame_cpu_allocator(threshold: int = 1 << 20) -> bool:
    """Pin glibc's mmap threshold so large freed tensors go back to the OS.

    glibc raises its mmap threshold after each large free, so later tensor-sized blocks come from the heap and stay
    resident: the reference Mamba's training step at batch 8 peaked at 24 GB of RSS on CPU (0.9 GB with this).
    Called by `import models` (every entry point, notebooks included) and by the CLIs. No-op where mallopt is
    missing (non-glibc) or SPARSE_KEEP_MALLOC=1 (glibc's defaults, or a preloaded tcmalloc: make's CPU targets);
    returns whether it applied.
    """
    if os.environ.get("SPARSE_KEEP_MALLOC") == "1":
        return False
    try:
        import ctypes

        M_MMAP_THRESHOLD = -3
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def cli_main(run, argv=None, parser: ArgParser | None = None) -> int:
    """Run a CLI body; ConfigError → one-line message and exit 2. Returns the exit code."""
    prog = parser.prog if parser else Path(sys.argv[0]).name
    tame_cpu_allocator()
    try:
        run(argv)
    except ConfigError as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted; files already written are complete\n")
        return 130
    return 0


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}") from None


def _atomic(path, write) -> Path:
    """Write via a temp file in the same folder, then rename over `path`: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj, path) -> Path:
    return _atomic(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path, text: str) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


def atomic_to_csv(df, path) -> Path:
    return _atomic(path, lambda tmp: df.to_csv(tmp, index=False))


def atomic_savefig(fig, path, **kw) -> Path:
    return _atomic(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix.lstrip("."), **kw))
