"""Checkpoints: ``model.safetensors`` (the state_dict) beside ``config.json`` (the
:class:`MirasolConfig`) in one directory."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mirasol.model.config import MirasolConfig
from mirasol.model.mirasol import Mirasol

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_checkpoint(model: Mirasol, directory: str | Path, *,
                    metadata: dict[str, str] | None = None,
                    state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``directory/model.safetensors`` and ``directory/config.json``; returns the
    directory. ``metadata`` (str -> str) goes into the safetensors header; ``state_dict``
    replaces ``model.state_dict()`` (a full state dict gathered from a sharded model)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if state_dict is None else state_dict
    state = {name: t.detach().contiguous().cpu() for name, t in state.items()}
    save_file(state, directory / WEIGHTS, metadata=metadata)
    model.config.save(directory / CONFIG)
    return directory


def load_state(model: Mirasol, directory: str | Path) -> Mirasol:
    """Load ``directory``'s weights into ``model`` (in place, cast to its parameters'
    device and dtype). Raises ValueError naming every missing, unexpected and mismatched
    key when the checkpoint was written by a model of another configuration."""
    state = load_file(Path(directory) / WEIGHTS)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                    for k, v in expected.items() if k in state and state[k].shape != v.shape)
    if missing or unexpected or shapes:
        problems = [f"{label} ({len(keys)}): {', '.join(keys[:20])}"
                    + (" ..." if len(keys) > 20 else "")
                    for label, keys in (("missing keys", missing),
                                        ("unexpected keys", unexpected),
                                        ("shape mismatches", shapes)) if keys]
        raise ValueError(f"checkpoint {directory} does not fit this model's configuration; "
                         + "; ".join(problems))
    with torch.no_grad():
        for name, tensor in expected.items():
            tensor.copy_(state[name])
    return model


def load_checkpoint(directory: str | Path, *, backend: str = "auto",
                    device: torch.device | str = "cpu") -> Mirasol:
    """A :class:`Mirasol` built from ``directory/config.json`` with its weights loaded."""
    directory = Path(directory)
    model = Mirasol(MirasolConfig.load(directory / CONFIG), backend=backend).to(device)
    return load_state(model, directory)
