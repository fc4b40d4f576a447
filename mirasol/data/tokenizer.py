"""Byte-level tokenizer: ids 0..255 are UTF-8 bytes, 256..259 are specials. Needs no
vocabulary file, so tests and small runs work offline; any text round-trips."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class ByteTokenizer:
    """Question-answer layout: ``[BOS] question [SEP] answer [EOS]``, right-padded with PAD.
    The language-model loss predicts the answer bytes and the EOS (see :meth:`example`)."""

    PAD = 256
    BOS = 257
    SEP = 258
    EOS = 259
    vocab_size = 260

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text``, no specials."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Text of ``ids`` (a list or 1-D tensor) up to the first EOS; other specials are
        skipped and invalid UTF-8 becomes U+FFFD."""
        if isinstance(ids, Tensor):
            if ids.ndim != 1:
                raise ValueError(f"ids must be 1-D; got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        out = bytearray()
        for i in ids:
            if i == self.EOS:
                break
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the vocabulary [0, {self.vocab_size})")
            if i < 256:
                out.append(i)
        return out.decode("utf-8", errors="replace")

    def prompt(self, question: str) -> list[int]:
        """``[BOS] + question bytes + [SEP]``: the model's input at generation time."""
        return [self.BOS, *self.encode(question), self.SEP]

    def example(self, question: str, answer: str) -> tuple[list[int], list[bool]]:
        """``prompt(question) + answer bytes + [EOS]`` and a mask that is True exactly on
        the answer bytes and the EOS, the tokens the loss predicts."""
        prompt, target = self.prompt(question), [*self.encode(answer), self.EOS]
        return prompt + target, [False] * len(prompt) + [True] * len(target)

    def pad(self, sequences: list[list[int]], masks: list[list[bool]] | None = None
            ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        """Right-pad with PAD: ids int64 (B, L) with L the longest length, and lengths int64
        (B,); with ``masks`` (one per sequence, same lengths) also the mask as bool (B, L),
        False on padding."""
        if not sequences:
            raise ValueError("sequences is empty; need at least one sequence to pad")
        lengths = [len(s) for s in sequences]
        if masks is not None and [len(m) for m in masks] != lengths:
            raise ValueError(f"masks must match sequences one to one in length; got lengths "
                             f"{[len(m) for m in masks]} for sequences of {lengths}")
        width = max(lengths)
        ids = torch.full((len(sequences), width), self.PAD, dtype=torch.int64)
        for row, seq in zip(ids, sequences):
            row[:len(seq)] = torch.tensor(seq, dtype=torch.int64)
        lens = torch.tensor(lengths, dtype=torch.int64)
        if masks is None:
            return ids, lens
        mask = torch.zeros(len(sequences), width, dtype=torch.bool)
        for row, m in zip(mask, masks):
            row[:len(m)] = torch.tensor(m, dtype=torch.bool)
        return ids, lens, mask
