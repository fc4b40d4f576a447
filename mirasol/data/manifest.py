"""Training on your own videos: a JSON-lines manifest of question-answer examples.

One JSON object per line (blank lines are skipped)::

    {"video": "clips/cat.mp4", "question": "what animal is it?", "answer": "a cat"}
    {"video": "/data/dog.mp4", "question": "...", "answer": "...", "start": 2.5, "kind": "qa"}

``video`` is relative to the manifest's folder (or absolute); ``start`` (seconds, default 0)
is where the clip begins; ``kind`` (default "manifest") labels the example, e.g. for
per-task metrics. Other keys are rejected, so a misspelt ``start`` cannot go unnoticed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from mirasol.data.media import _check_args, load_media

_REQUIRED = ("video", "question", "answer")
_OPTIONAL = ("start", "kind")


@dataclass(frozen=True)
class ManifestEntry:
    """One validated manifest line: ``video`` resolved to a path that exists, ``line`` its
    1-based line number."""

    video: Path
    question: str
    answer: str
    start: float
    kind: str
    line: int


@dataclass
class ManifestExample:
    """A decoded example with the synthetic dataset's fields: ``video`` float32
    (F, 3, H, W) in [0, 1], ``audio`` float32 (S,) or None (video-only files with
    ``require_audio=False``), ``question``, ``answer``, ``kind``."""

    video: Tensor
    audio: Tensor | None
    question: str
    answer: str
    kind: str


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """Parse and validate a manifest: every line is a JSON object with string ``video``,
    ``question`` and ``answer``, an optional non-negative ``start`` and string ``kind``, and
    an existing video file. Raises FileNotFoundError for a missing manifest, ValueError
    naming the manifest and line number for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such manifest: {path}")
    entries = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if text.strip():
            entries.append(_entry(path, number, text))
    if not entries:
        raise ValueError(f"{path} has no examples; expected one JSON object per line")
    return entries


def _entry(manifest: Path, number: int, text: str) -> ManifestEntry:
    where = f"{manifest}, line {number}"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if missing := [key for key in _REQUIRED if key not in record]:
        raise ValueError(f"{where}: missing {', '.join(missing)} (each line needs "
                         f"{', '.join(_REQUIRED)})")
    if unknown := sorted(set(record) - {*_REQUIRED, *_OPTIONAL}):
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: "
                         f"{list(_REQUIRED + _OPTIONAL)}")
    for key in (*_REQUIRED, "kind"):
        if key in record and not isinstance(record[key], str):
            raise ValueError(f"{where}: {key} must be a string, got {record[key]!r}")
    start = record.get("start", 0.0)
    if (isinstance(start, bool) or not isinstance(start, (int, float))
            or not math.isfinite(start) or start < 0):
        raise ValueError(f"{where}: start must be a non-negative number of seconds, got "
                         f"{start!r}")
    video = manifest.parent / record["video"]
    if not video.is_file():
        raise ValueError(f"{where}: video file {video} does not exist")
    return ManifestEntry(video=video, question=record["question"], answer=record["answer"],
                         start=float(start), kind=record.get("kind", "manifest"), line=number)


class ManifestDataset(Dataset):
    """The examples of a manifest (validated on construction, see :func:`read_manifest`),
    each decoded by :func:`load_media` when indexed: ``num_frames`` frames at ``fps`` from
    the line's ``start`` (None: the whole video after it), trimmed to a multiple of
    ``frames_multiple``. With ``num_frames`` None, clips differ in length: batch them with
    a collate function that pads or crops."""

    def __init__(self, manifest: str | Path, *, fps: float | Fraction, image_size: int,
                 sample_rate: int, num_frames: int | None = None, frames_multiple: int = 1,
                 require_audio: bool = True):
        _check_args(fps, image_size, sample_rate, num_frames, frames_multiple, 0.0)
        self.entries = read_manifest(manifest)
        self.media_args = dict(fps=fps, image_size=image_size, sample_rate=sample_rate,
                               num_frames=num_frames, frames_multiple=frames_multiple,
                               require_audio=require_audio)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> ManifestExample:
        entry = self.entries[index]
        media = load_media(entry.video, start=entry.start, **self.media_args)
        return ManifestExample(video=media.video, audio=media.audio, question=entry.question,
                               answer=entry.answer, kind=entry.kind)
