"""Greedy and beam-search decoding for the text decoder, with or without its key/value
cache (the two give the same tokens; without the cache every step recomputes the whole
sequence, which is what the cache is checked against)."""

from __future__ import annotations

import torch
from torch import Tensor

from mirasol.model.text import TextDecoder


class _Stepper:
    """Next-token logits for a batch of right-padded prompts, one new token per call."""

    def __init__(self, decoder: TextDecoder, latents: Tensor, prompt: Tensor,
                 prompt_lengths: Tensor, max_new_tokens: int, use_cache: bool):
        self.decoder, self.latents, self.use_cache = decoder, latents, use_cache
        self.rows = torch.arange(prompt.shape[0], device=prompt.device)
        self.lengths = prompt_lengths.clone()
        if use_cache:
            self.state = decoder.start(latents, prompt.shape[1] + max_new_tokens)
        else:
            self.tokens = torch.cat((prompt, prompt.new_zeros(prompt.shape[0], max_new_tokens)),
                                    dim=1)
        self.prompt = prompt

    def first(self) -> Tensor:
        """(B, V) logits after each sample's prompt."""
        if self.use_cache:
            logits = self.decoder(self.prompt, state=self.state)
            self.state.lengths = self.lengths.clone()  # drop the prompts' right padding
        else:
            logits = self.decoder(self.prompt, self.latents)
        return logits[self.rows, self.lengths - 1]

    def next(self, token: Tensor) -> Tensor:
        """Append ``token`` (B,) to each sequence; (B, V) logits after it."""
        if self.use_cache:
            self.lengths = self.lengths + 1
            return self.decoder(token[:, None], state=self.state)[:, -1]
        self.tokens[self.rows, self.lengths] = token
        self.lengths = self.lengths + 1
        logits = self.decoder(self.tokens[:, :int(self.lengths.max())], self.latents)
        return logits[self.rows, self.lengths - 1]

    def reorder(self, index: Tensor) -> None:
        self.lengths = self.lengths[index]
        if self.use_cache:
            self.state.reorder(index)
        else:
            self.tokens, self.latents = self.tokens[index], self.latents[index]


@torch.no_grad()
def greedy_search(decoder: TextDecoder, latents: Tensor, prompt: Tensor, prompt_lengths: Tensor,
                  *, max_new_tokens: int, eos_token_id: int, pad_token_id: int,
                  use_cache: bool = True) -> Tensor:
    """(B, max_new_tokens) argmax continuations: each ends with EOS (if produced), then pad."""
    stepper = _Stepper(decoder, latents, prompt, prompt_lengths, max_new_tokens, use_cache)
    out = prompt.new_full((prompt.shape[0], max_new_tokens), pad_token_id)
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    logits = stepper.first()
    for t in range(max_new_tokens):
        token = torch.where(done, pad_token_id, logits.argmax(-1))
        out[:, t] = token
        done |= token == eos_token_id
        if t + 1 == max_new_tokens or bool(done.all()):
            break
        logits = stepper.next(token)
    return out


@torch.no_grad()
def beam_search(decoder: TextDecoder, latents: Tensor, prompt: Tensor, prompt_lengths: Tensor,
                *, max_new_tokens: int, num_beams: int, eos_token_id: int, pad_token_id: int,
                length_penalty: float = 1.0, use_cache: bool = True) -> Tensor:
    """(B, max_new_tokens): per sample, the hypothesis with the best
    ``sum(log p) / length**length_penalty`` among ``num_beams`` beams; a sample stops once
    ``num_beams`` hypotheses have ended with EOS. ``num_beams=1`` is greedy search."""
    B, K = prompt.shape[0], num_beams
    expand = lambda t: t.repeat_interleave(K, dim=0)  # noqa: E731
    stepper = _Stepper(decoder, expand(latents), expand(prompt), expand(prompt_lengths),
                       max_new_tokens, use_cache)
    scores = torch.full((B, K), float("-inf"), device=prompt.device)
    scores[:, 0] = 0.0  # all beams start equal: expand the first only
    sequences = prompt.new_zeros(B, K, 0)
    finished: list[list[tuple[float, list[int], bool]]] = [[] for _ in range(B)]
    done = [False] * B
    logp = stepper.first().float().log_softmax(-1)
    for t in range(max_new_tokens):
        V = logp.shape[-1]
        top_scores, top_index = (scores[..., None] + logp.view(B, K, V)).view(B, -1).topk(2 * K)
        source = torch.arange(K, device=prompt.device).repeat(B, 1)
        token = torch.full((B, K), pad_token_id, device=prompt.device)
        scores = torch.full((B, K), float("-inf"), device=prompt.device)
        for b in range(B):
            if done[b]:
                continue
            kept = 0
            for rank, (score, index) in enumerate(zip(top_scores[b].tolist(),
                                                      top_index[b].tolist())):
                beam, tok = divmod(index, V)
                if tok == eos_token_id:
                    if rank < K:
                        finished[b].append((score / (t + 1) ** length_penalty,
                                            sequences[b, beam].tolist(), True))
                    continue
                source[b, kept], token[b, kept], scores[b, kept] = beam, tok, score
                kept += 1
                if kept == K:
                    break
            done[b] = len(finished[b]) >= K
        sequences = torch.cat((sequences.gather(1, source[..., None].expand(
            -1, -1, sequences.shape[2])), token[..., None]), dim=2)
        if all(done) or t + 1 == max_new_tokens:
            break
        stepper.reorder((torch.arange(B, device=prompt.device)[:, None] * K + source).view(-1))
        logp = stepper.next(token.view(-1)).float().log_softmax(-1)
    out = prompt.new_full((B, max_new_tokens), pad_token_id)
    length = sequences.shape[2]
    for b in range(B):
        live = [] if done[b] else [(scores[b, k].item() / length ** length_penalty,
                                    sequences[b, k].tolist(), False) for k in range(K)]
        _, tokens, ended = max(finished[b] + live, key=lambda h: h[0])
        tokens = tokens + [eos_token_id] if ended else tokens
        out[b, :len(tokens)] = torch.tensor(tokens, dtype=out.dtype)
    return out
