"""Live Mirasol on a media source: :func:`watch` decodes a file or a pipe incrementally
(:func:`~mirasol.data.stream_media`), pushes each piece into a
:class:`~mirasol.model.MirasolStream` and answers the questions as the video plays; the
``mirasol watch`` command prints its answers with their timestamps.

A model with a window (``window_chunks``) watches for as long as the source lasts in bounded
memory; one without needs ``capacity_chunks``, the most chunks it will watch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from mirasol.data import media_args, stream_media
from mirasol.model import Mirasol


@dataclass
class Answer:
    """One answer of :func:`watch`: about the first ``seconds`` of the source, given after
    ``wall`` seconds of decoding and computing (``rtf``, seconds of video per second of
    wall time, > 1: faster than real time), with the stream's state ``nbytes``."""

    seconds: float
    question: str
    answer: str
    wall: float
    nbytes: int

    @property
    def rtf(self) -> float:
        return self.seconds / self.wall if self.wall > 0 else float("inf")


def watch(model: Mirasol, source, questions: str | list[str], *, every: float | None = None,
          chunks_per_push: int = 1, capacity_chunks: int | None = None, num_beams: int = 1,
          max_new_tokens: int = 16) -> Iterator[Answer]:
    """Stream ``source`` (a path or a binary file object) through ``model`` and answer each
    of ``questions`` every ``every`` seconds of video (rounded up to whole pushes; default:
    after every push of ``chunks_per_push`` chunks), and once more at the end if the last
    answer was earlier. Yields :class:`Answer` as they come; a
    :class:`~mirasol.data.MediaError` mid-source is raised after the answers before it."""
    if every is not None and every <= 0:
        raise ValueError(f"watch: every must be positive seconds, got {every}")
    questions = [questions] if isinstance(questions, str) else list(questions)
    if not questions:
        raise ValueError("watch: no question to ask")
    c = model.config
    model.eval()
    stream = model.stream(1, max_chunks=chunks_per_push, capacity_chunks=capacity_chunks)
    device = next(model.parameters()).device
    args = media_args(c)
    del args["frames_multiple"]  # pieces are whole chunks
    pieces = stream_media(source, frames_per_chunk=c.frames_per_chunk,
                          chunks_per_piece=chunks_per_push, **args)
    begin, due, asked = time.perf_counter(), every or 0.0, 0.0

    def answers() -> Iterator[Answer]:
        for question in questions:
            text = stream.ask(question, num_beams=num_beams, max_new_tokens=max_new_tokens)[0]
            yield Answer(stream.seconds, question, text, time.perf_counter() - begin,
                         stream.nbytes)

    for piece in pieces:
        audio = None if c.audio is None else piece.audio[None].to(device)
        stream.push(piece.video[None].to(device), audio)
        if stream.seconds >= due - 1e-9:
            while every and due <= stream.seconds + 1e-9:
                due += every  # the next answer's time, on the every-seconds grid
            asked = stream.seconds
            yield from answers()
    if stream.chunks and asked < stream.seconds:
        yield from answers()
