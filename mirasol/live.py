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

import torch

from mirasol.data import ByteTokenizer, SyntheticConfig, media_args, stream_media
from mirasol.model import Mirasol

TOKENIZER = ByteTokenizer()


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
            text = stream.ask(question, TOKENIZER, num_beams=num_beams,
                              max_new_tokens=max_new_tokens)[0]
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


@torch.no_grad()
def live_accuracy(model: Mirasol, data: SyntheticConfig, *, streams: int = 8,
                  episodes: int = 150, seed: int = 0, split: str = "test",
                  ablation: str = "full", unbounded: bool = False) -> dict:
    """The long-video task: ``streams`` live streams, each ``episodes`` consecutive synthetic
    clips of ``data`` (``data.num_chunks`` chunks each: 150 episodes of the tiny preset's
    4 one-second chunks are 10 minutes), pushed one episode at a time; after each, the
    episode's question is asked about the stream as it is then. A model whose window covers
    an episode sees exactly that episode's chunks in its decoder; ``unbounded``: the same
    weights without the window, every chunk so far visible (the decoder must pick the
    episode out of all of them).

    Returns ``accuracy`` (closed set: the likeliest answer of the question's kind is right)
    and ``exact_match`` (greedy answer), overall and ``by_minute`` (by the minute of video
    the question comes in), ``seconds`` of each stream, and ``nbytes``: the stream state's
    size after each episode."""
    from mirasol.data.synthetic import ANSWERS, ablate, collate, make_example
    from mirasol.train import likeliest_answers, score

    device = next(model.parameters()).device
    model = (model.without_window() if unbounded else model).eval()
    chunks = data.num_chunks
    stream = model.stream(streams, max_chunks=chunks,
                          capacity_chunks=episodes * chunks if unbounded else None)
    hits, nbytes = [], []
    longest = max(len(a.encode()) for answers in ANSWERS.values() for a in answers)
    for episode in range(episodes):
        clips = [make_example(data, seed, split, s * episodes + episode) for s in range(streams)]
        batch = ablate(collate(clips, TOKENIZER), ablation)
        stream.push(batch["video"].to(device), batch["audio"].to(device))
        questions = [c.question for c in clips]
        best = likeliest_answers(model, stream.latents, questions,
                                 [ANSWERS[c.kind] for c in clips])
        said = stream.ask(questions, TOKENIZER, max_new_tokens=longest + 1)
        minute = int(stream.seconds - 1e-9) // 60
        hits += [(minute, best[i] == c.answer, said[i].strip() == c.answer)
                 for i, c in enumerate(clips)]
        nbytes.append(stream.nbytes)

    minutes = sorted({m for m, _, _ in hits})
    return {**score([h[1:] for h in hits]),
            "by_minute": {m: score([h[1:] for h in hits if h[0] == m]) for m in minutes},
            "seconds": stream.seconds, "nbytes": nbytes}
