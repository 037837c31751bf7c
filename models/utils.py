"""Small shared helpers: CLI error handling, device choice, atomic file writes, environment record."""

from __future__ import annotations

import argparse
import os
import signal
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


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (kill, timeout): unwind, so the atomic writers remove their temp files


def cli_main(run, argv=None, parser: ArgParser | None = None) -> int:
    """Run a CLI body and return its exit code: argparse errors and ConfigError → their one-line message and 2 (or
    the error's `exit_code`); out of memory → one line and 1; SIGTERM / Ctrl-C → one line and 130."""
    prog = parser.prog if parser else Path(sys.argv[0]).name
    tame_cpu_allocator()
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread
        previous = None
    try:
        run(argv)
    except SystemExit as e:  # argparse's one-line errors (exit 2) and --help (0): a return code, not an exception
        if isinstance(e.code, str):
            sys.stderr.write(f"{e.code}\n")
            return 1
        return 0 if e.code is None else e.code
    except ConfigError as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        return getattr(e, "exit_code", 2)
    except (torch.OutOfMemoryError, MemoryError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        sys.stderr.write(f"{prog}: error: out of memory ({first[:200]}); use a smaller --batch-size or --resolution\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted; files already written are complete\n")
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
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


TMP_SUFFIX = ".tmp"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(folder) -> list[Path]:
    """Delete the temp files that killed writers left in `folder` (named .<file>.<pid>.<random>.tmp, where the
    pid is no longer running). Returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(f".*{TMP_SUFFIX}"):
        parts = tmp.name[: -len(TMP_SUFFIX)].rsplit(".", 2)
        if len(parts) == 3 and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _atomic(path, write) -> Path:
    """Write via a temp file in the same folder, then rename over `path`: readers never see half a file.

    The temp file is removed if the write fails or is interrupted (SIGTERM too, under cli_main); one left by a
    kill -9 names its writer's pid, and the next atomic write into the folder removes it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=path.parent)
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


def atomic_write_bytes(path, data: bytes) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_bytes(data))
