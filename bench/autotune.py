"""Triton autotune choices, saved from one process and reused by the next (`make bench ARGS="--autotune-cache F"`).

A `triton.autotune` kernel benchmarks its configs the first time it meets a new key and keeps the fastest for the
life of the process. mamba_ssm's Mamba-2 (SSD) kernels key on chunk size and head dims only, not on batch or
sequence length: a process keeps the configs it chose at the first shape it ran, and a second process (the next
call of a resumed sweep, or a second run) may choose others. Measured: between two H200 runs (the same Mamba-2
code), its training steps moved 5.8–6.6 % at every r ≥ 48 while each run's own rounds agreed within 0.4 % (README,
"What `make bench` measures"). A cache file removes that choice from the comparison: every key a process tunes is
added to it (as the index and text of the chosen config in the kernel's config list), and a process that loads it
starts with those choices, so every call and run that shares the file runs the same configs from the moment the
file holds them.

    tuners = autotuners(("mamba_ssm.",))         # {"module.kernel": Autotuner} of the loaded modules
    applied, skipped = preload(tuners, load("tune.json"))
    update("tune.json", choices(tuners), gpu)   # under a lock: re-read, add the new keys, write (temp, rename)

A choice is applied only where the kernel's name, the key and the config's text at the saved index all match (a
mamba_ssm or triton version with other configs skips it, and counts it as skipped). The file records the triton
version and the GPU; `load` refuses a malformed file, or one of another GPU name, in one line. Several processes
(the workers of a multi-GPU sweep) may share a file: `update` takes a lock and merges, and the file's first choice of
a key stands; two workers that tune one key at the same moment may still run different configs in that call.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from models.common import ConfigError
from models.utils import atomic_write_text

FORMAT = 1  # the file's layout version


def autotuners(prefixes: tuple[str, ...] = ("mamba_ssm.",)) -> dict:
    """Every triton Autotuner that a loaded module under one of `prefixes` holds as a global: {"module.name": it}."""
    try:
        from triton.runtime.autotuner import Autotuner
    except ImportError:  # no triton: nothing is tuned
        return {}
    found = {}
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not mod_name.startswith(prefixes):
            continue
        for name, obj in list(vars(mod).items()):
            if isinstance(obj, Autotuner):
                found[f"{mod_name}.{name}"] = obj
    return found


_SCALARS = (int, float, str, bool, type(None))


def _saveable(key: tuple) -> bool:
    """A key that survives JSON unchanged: a tuple of Python scalars (a numpy int would come back a string)."""
    return all(type(k) in _SCALARS for k in key)


def choices(tuners: dict) -> dict[str, list[dict]]:
    """What each tuner has chosen so far: {name: [{"key": [...], "config": index, "text": str(config)}, ...]}.
    A key that JSON cannot carry unchanged, or a config not in the list (a pruned copy), is left out."""
    out = {}
    for name, t in sorted(tuners.items()):
        picked = []
        for key, config in t.cache.items():
            # (by equality: triton's own disk cache, TRITON_CACHE_AUTOTUNING, rebuilds equal Config objects)
            index = next((i for i, c in enumerate(t.configs) if c == config), None)
            if index is not None and _saveable(key):
                picked.append({"key": list(key), "config": index, "text": str(config)})
        if picked:
            out[name] = picked
    return out


def preload(tuners: dict, saved: dict[str, list[dict]]) -> tuple[int, int]:
    """Put the saved choices into the tuners' caches (a key the process has tuned already keeps its own choice).
    Returns (applied, skipped): skipped are choices whose kernel is not loaded or whose config list differs."""
    applied = skipped = 0
    for name, picked in saved.items():
        t = tuners.get(name)
        for p in picked:
            i = p.get("config")
            if t is None or not 0 <= i < len(t.configs) or str(t.configs[i]) != p["text"]:
                skipped += 1
                continue
            key = tuple(p["key"])
            if key not in t.cache:
                t.cache[key] = t.configs[i]
                applied += 1
    return applied, skipped


def merged(old: dict[str, list[dict]], new: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """old's choices with new's added (a key both hold keeps old's: the file's first choice stands)."""
    out = {name: list(picked) for name, picked in old.items()}
    for name, picked in new.items():
        have = {tuple(p["key"]) for p in out.get(name, [])}
        out.setdefault(name, []).extend(p for p in picked if tuple(p["key"]) not in have)
    return out


def _entries_ok(picked) -> bool:
    return isinstance(picked, list) and all(
        isinstance(e, dict) and isinstance(e.get("key"), list) and all(type(k) in _SCALARS for k in e["key"])
        and type(e.get("config")) is int and isinstance(e.get("text"), str)
        for e in picked
    )  # fmt: skip


def load(path: str | Path, gpu: str | None = None) -> dict[str, list[dict]]:
    """The saved choices ({} when the file does not exist). ConfigError (one line) for a file that is not one,
    or one tuned on another GPU than `gpu`."""
    p = Path(path)
    if not p.exists():
        return {}
    try:
        data = json.loads(p.read_text())
        saved = data["choices"]
        if data.get("format") != FORMAT or not isinstance(saved, dict) or not all(map(_entries_ok, saved.values())):
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"--autotune-cache {p}: not an autotune cache file (format {FORMAT})") from None
    if gpu and data.get("gpu") and data["gpu"] != gpu:
        raise ConfigError(f"--autotune-cache {p}: tuned on {data['gpu']}, this is {gpu}; use another file")
    return saved


def save(path: str | Path, saved: dict[str, list[dict]], gpu: str | None = None) -> None:
    """Write the choices (temp file, then rename), with the triton version and the GPU."""
    try:
        import triton

        version = triton.__version__
    except ImportError:
        version = None
    text = json.dumps({"format": FORMAT, "triton": version, "gpu": gpu, "choices": saved}, indent=1, sort_keys=True)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), text + "\n")


def update(path: str | Path, new: dict[str, list[dict]], gpu: str | None = None) -> tuple[dict, int]:
    """Add `new`'s keys to the file under an exclusive lock (PATH.lock): re-read, merge (the file's choice of a key
    stands), write. Returns (the file's choices now, how many of new's keys the file holds with another config)."""
    import fcntl

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p.with_name(p.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = load(p, gpu)
        both = merged(old, new)
        if both != old:
            save(p, both, gpu)
    held = {(name, tuple(e["key"])): e["config"] for name, es in both.items() for e in es}
    differ = sum(held[(name, tuple(e["key"]))] != e["config"] for name, es in new.items() for e in es)
    return both, differ
