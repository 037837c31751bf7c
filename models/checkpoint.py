"""Checkpoints: what they hold, atomic saving, and loading with clear errors."""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import asdict, replace
from pathlib import Path

import torch

from models.common import ConfigError
from models.utils import atomic_torch_save

FORMAT = 1


def save_checkpoint(path, model, **state) -> Path:
    """model + config + any training state (optimizer, scheduler, step, RNG, ...), written atomically."""
    payload = {
        "format": FORMAT,
        "model_name": model.name,
        "model_version": model.version,
        "config": asdict(model.cfg),
        "model": model.state_dict(),
        **state,
    }
    return atomic_torch_save(payload, path)


def read_checkpoint(path, expected_model: str | None = None, map_location="cpu") -> dict:
    """Load and check a checkpoint; every failure is a ConfigError with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise ConfigError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_name" not in ckpt or "config" not in ckpt:
        raise ConfigError(f"checkpoint {path} is not a checkpoint of this project")
    if expected_model is not None and ckpt["model_name"] != expected_model:
        raise ConfigError(
            f"checkpoint {path} holds {ckpt.get('model_version', '?')} ({ckpt['model_name']}) weights, "
            f"not {expected_model} weights"
        )
    return ckpt


def _same_family_backend(path, ckpt_backend: str | None, backend: str | None) -> str | None:
    """The mixer backend to rebuild with: Mamba-1 and Mamba-2 parameters differ, so a checkpoint stays in its family."""
    from models.mamba import Mamba2CUDA, mixer_family

    if backend is None or ckpt_backend is None:
        return backend
    family = mixer_family(ckpt_backend)
    if backend == "auto" and family == "Mamba-2":  # auto picks within the checkpoint's family
        return "mamba2" if (Mamba2CUDA is not None and torch.cuda.is_available()) else "mamba2_ref"
    if mixer_family(backend) != family:
        allowed = "mamba2 or mamba2_ref" if family == "Mamba-2" else "auto, mamba_ssm or reference"
        raise ConfigError(
            f"checkpoint {path} holds {family} mixers (mixer_backend {ckpt_backend!r}); {mixer_family(backend)} "
            f"parameters differ, so it cannot load on mixer backend {backend!r}: choose {allowed}"
        )
    return backend


def model_from_checkpoint(path, model: str | None = None, device="cpu", **backend_overrides):
    """Rebuild the model a checkpoint was trained with and load its weights.

    model: a variant name (models/variants.py) to insist on one (its class's `loads_checkpoints_of` names the
    checkpoints it accepts: V3 loads V1's); backend_overrides: mixer_backend / attn_backend (weights are the same,
    within a mixer family: Mamba-1 and Mamba-2 checkpoints do not cross).
    """
    from models.variants import VARIANTS, get_variant, variant_of_checkpoint

    # class checkpoint name → the FIRST record of that class (v4, not its ablation v4_nopos: the config comes from
    # the checkpoint, the record's own overrides do not apply to a checkpoint found by its name)
    names = {}
    for key, v in VARIANTS.items():
        names.setdefault(v.cls.name, key)
    if model is not None:
        get_variant(model)  # unknown → one-line ConfigError
    ckpt = read_checkpoint(path)
    if model is None:
        found = variant_of_checkpoint(ckpt["model_name"])
        if found is None:
            raise ConfigError(f"checkpoint {path} holds an unknown model {ckpt['model_name']!r}")
        model = found.key
    variant = get_variant(model)
    cls, make_cfg = variant.cls, variant.config
    accepted = getattr(cls, "loads_checkpoints_of", (cls.name,))
    if ckpt["model_name"] not in accepted:
        fits = " or ".join(names.get(n, n) for n in accepted)
        raise ConfigError(
            f"checkpoint {path} holds {ckpt.get('model_version', '?')} ({ckpt['model_name']}) weights, "
            f"not {cls.name} weights; {model} loads {fits} checkpoints"
        )
    cfg = make_cfg("default", env={})
    over = {k: v for k, v in backend_overrides.items() if v is not None}
    if "mixer_backend" in over:
        over["mixer_backend"] = _same_family_backend(path, ckpt["config"].get("mixer_backend"), over["mixer_backend"])
    try:
        cfg = replace(cfg, **{"prediction": "velocity", **ckpt["config"]})  # checkpoints before x1-prediction
        cfg = replace(cfg, **over)
        cfg.validate()
        net = cls(cfg)
        net.load_state_dict(ckpt["model"])
    except (TypeError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"checkpoint {path} does not fit {cls.__name__}: {first}") from None
    return net.to(device), ckpt
