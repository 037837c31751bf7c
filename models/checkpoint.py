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


def model_from_checkpoint(path, model: str | None = None, device="cpu", **backend_overrides):
    """Rebuild the model a checkpoint was trained with and load its weights.

    model: a variant name ('v1', 'v4', ...: models.variants) to insist on one; backend_overrides: mixer_backend /
    attn_backend (weights are the same).
    """
    from models.variants import get_variant, variant_of_checkpoint

    expected = get_variant(model).cls.name if model else None
    ckpt = read_checkpoint(path, expected)
    variant = get_variant(model) if model else variant_of_checkpoint(ckpt["model_name"])
    if variant is None:
        raise ConfigError(f"checkpoint {path} holds an unknown model {ckpt['model_name']!r}")
    cls, make_cfg = variant.cls, variant.make_config
    cfg = make_cfg("default", env={})
    try:
        cfg = replace(cfg, **{"prediction": "velocity", **ckpt["config"]})  # checkpoints before x1-prediction
        cfg = replace(cfg, **{k: v for k, v in backend_overrides.items() if v is not None})
        cfg.validate()
        net = cls(cfg)
        net.load_state_dict(ckpt["model"])
    except (TypeError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"checkpoint {path} does not fit {cls.__name__}: {first}") from None
    return net.to(device), ckpt
