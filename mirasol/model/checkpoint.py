"""Checkpoints: ``model.safetensors`` (the state_dict) beside ``config.json`` (the
:class:`MirasolConfig`) in one directory.

A checkpoint is only ever seen complete or not at all: it is written into a hidden
temporary folder beside its final place, each file flushed to disk, then renamed into place
(:func:`atomic_directory`). A file that is damaged anyway (a disk fault, a copy cut short)
raises :class:`CheckpointError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mirasol.model.config import MirasolConfig
from mirasol.model.mirasol import Mirasol

WEIGHTS, CONFIG = "model.safetensors", "config.json"
# An FSDP2 training checkpoint holds its weights and optimizer state here, one file per rank
# (torch.distributed.checkpoint), in place of WEIGHTS: `mirasol export` consolidates it.
SHARDS = "shards"
T = TypeVar("T")


class CheckpointError(ValueError):
    """A checkpoint file that is missing or cannot be read: ``path`` and ``problem``."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"checkpoint file {self.path}: {problem}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yields an empty temporary folder beside ``final``; once the block ends without an
    exception, its files are flushed to disk and it is renamed to ``final`` (an existing
    ``final`` is replaced). A kill at any moment leaves ``final`` absent, old or new, never
    partial; a leftover temporary folder is hidden (``.name.tmp-…``) and ignored."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, final: Path) -> None:
    """Flush every file under ``tmp`` to disk, then rename it to ``final`` (replacing an
    existing one): the last step of :func:`atomic_directory`, for a temporary folder that
    several processes wrote."""
    for root, _, files in os.walk(tmp, topdown=False):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))
    if final.exists():  # rewriting a step (a resumed run): the old copy goes first
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync(final.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace ``path``'s content with ``text`` in one rename: a reader sees the old
    content or the new, never an empty or partial file."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def read_file(path: str | Path, read: Callable[[Path], T], what: str) -> T:
    """``read(path)``, with a missing or unreadable file raised as :class:`CheckpointError`
    (``what``: the format expected, for the message)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "missing")
    try:
        return read(path)
    except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise CheckpointError(path, f"not a readable {what} ({type(e).__name__}: {e})") from e


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (a truncated or corrupt one: :class:`CheckpointError`)."""
    return read_file(path, load_file, "safetensors file")


def read_json(path: str | Path):
    """A JSON file's value (a truncated or corrupt one: :class:`CheckpointError`)."""
    return read_file(path, lambda p: json.loads(p.read_text()), "JSON file")


def write_checkpoint(model: Mirasol, directory: Path, *, metadata: dict[str, str] | None = None,
                     state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """The checkpoint's two files into an existing ``directory`` (no atomicity: see
    :func:`save_checkpoint`)."""
    state = model.state_dict() if state_dict is None else state_dict
    state = {name: t.detach().contiguous().cpu() for name, t in state.items()}
    save_file(state, directory / WEIGHTS, metadata=metadata)
    model.config.save(directory / CONFIG)


def save_checkpoint(model: Mirasol, directory: str | Path, *,
                    metadata: dict[str, str] | None = None,
                    state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``directory/model.safetensors`` and ``directory/config.json``, atomically
    (:func:`atomic_directory`); returns the directory. ``metadata`` (str -> str) goes into
    the safetensors header; ``state_dict`` replaces ``model.state_dict()`` (a full state
    dict gathered from a sharded model)."""
    with atomic_directory(directory) as tmp:
        write_checkpoint(model, tmp, metadata=metadata, state_dict=state_dict)
    return Path(directory)


def load_state(model: Mirasol, directory: str | Path) -> Mirasol:
    """Load ``directory``'s weights into ``model`` (in place, cast to its parameters'
    device and dtype). Raises :class:`CheckpointError` for a missing or damaged weight
    file, ValueError naming every missing, unexpected and mismatched key when the
    checkpoint was written by a model of another configuration."""
    weights = Path(directory) / WEIGHTS
    if (weights.parent / SHARDS).is_dir() and not weights.exists():
        raise CheckpointError(weights, "missing: this is a sharded FSDP2 training checkpoint "
                                       "(`mirasol export` writes it whole)")
    state = read_tensors(weights)
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


def load_config(directory: str | Path) -> MirasolConfig:
    """``directory/config.json`` (missing, bad JSON or unknown fields:
    :class:`CheckpointError`)."""
    path = Path(directory) / CONFIG
    data = read_json(path)
    try:
        return MirasolConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(path, f"not a MirasolConfig ({e})") from e


def load_checkpoint(directory: str | Path, *, backend: str = "auto",
                    device: torch.device | str = "cpu") -> Mirasol:
    """A :class:`Mirasol` built from ``directory/config.json`` with its weights loaded."""
    model = Mirasol(load_config(directory), backend=backend).to(device)
    return load_state(model, directory)
