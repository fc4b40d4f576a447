"""Mirasol3B (Piergiovanni et al., CVPR 2024): time-aligned video and audio, partitioned
into T chunks, encoded per chunk, fused per chunk into m tokens by the Combiner, modelled
autoregressively over chunks; a text decoder cross-attends to the resulting latents."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from mirasol.layers import TransformerCombiner, TTMCombiner, set_backend
from mirasol.model.av import AVTransformer
from mirasol.model.config import MirasolConfig
from mirasol.model.encoders import AudioEncoder, VideoEncoder
from mirasol.model.generation import beam_search, greedy_search
from mirasol.model.partition import chunk_layout, partition, partition_audio
from mirasol.model.stream import MirasolStream
from mirasol.model.text import ContextNorm, TextDecoder, lm_loss


class MirasolOutput(NamedTuple):
    """``loss`` = ``lm_loss`` + latent_loss_weight · ``latent_loss`` (``lm_loss`` and
    ``logits`` (B, L, vocab) are None without text); ``latents`` (B, T, m, dim)."""

    loss: Tensor
    lm_loss: Tensor | None
    latent_loss: Tensor
    logits: Tensor | None
    latents: Tensor


def _check_features(name: str, features: Tensor, width: int) -> None:
    if features.dim() != 4 or features.shape[-1] != width:
        raise ValueError(f"{name} must be (B, T, N, {width}), got {tuple(features.shape)}")


class Mirasol(nn.Module):
    """The model of a :class:`MirasolConfig`; ``backend`` ("auto", "triton", "torch",
    "reference") reaches every fast layer (:func:`mirasol.layers.set_backend` changes it).

    Inputs: ``video`` (B, F, C, H, W) frames at ``config.fps`` (F a multiple of
    ``frames_per_chunk``; T = F / frames_per_chunk chunks), ``audio`` (B, S) mono waveform
    at ``config.audio.sample_rate`` covering at least the video's duration (later samples
    are ignored). Precomputed encoder outputs can replace either: ``video_features``
    (B, T, Nv, video.width), ``audio_features`` (B, T, Na, audio.width).
    """

    def __init__(self, config: MirasolConfig, backend: str = "auto"):
        super().__init__()
        c = self.config = config
        self.video_encoder = (VideoEncoder(c.video, c.frames_per_chunk, backend)
                              if c.video.encoder else None)
        self.video_proj = nn.Linear(c.video.width, c.dim)
        self.audio_encoder = self.audio_proj = None
        if c.audio is not None:
            if c.audio.encoder:
                window = chunk_layout(c.frames_per_chunk, c.frames_per_chunk, c.fps,
                                      c.audio.sample_rate).samples_per_chunk
                self.audio_encoder = AudioEncoder(c.audio, window, backend)
            self.audio_proj = nn.Linear(c.audio.width, c.dim)
        k = c.combiner
        if k.kind == "transformer":
            self.combiner = TransformerCombiner(c.dim, k.num_tokens, k.depth, k.num_heads,
                                                c.mlp_ratio, backend)
        else:
            self.combiner = TTMCombiner(c.dim, k.num_tokens, k.memory_size, k.depth,
                                        k.num_heads, c.mlp_ratio, k.bottleneck_dim,
                                        backend=backend)
        self.av = AVTransformer(c.dim, c.depth, c.num_heads, k.num_tokens, c.mlp_ratio, backend,
                                window_chunks=c.window_chunks, sink_chunks=c.sink_chunks,
                                time_embedding=c.time_embedding)
        self.context_norm = ContextNorm(k.num_tokens, c.dim)
        self.text = TextDecoder(c.text, c.dim, backend)

    def set_backend(self, backend: str) -> Mirasol:
        return set_backend(self, backend)

    def context_parallel(self, group) -> Mirasol:
        """Shares each clip's chunks across the ranks of ``group`` (a process group; None:
        off) in the A/V model, the long sequence: each rank runs its blocks on its chunks
        (:func:`~mirasol.distributed.chunk_sharded_attention`) and the latents are gathered
        for the text decoder and the losses, which every rank of the group computes alike.
        The ranks of a group pass the same clips. Summed over a group's ``R`` ranks, the
        gradients are ``R`` times the clip's, so under data parallelism over all ranks
        (DDP, FSDP2) the mean of the ranks' gradients is the data-parallel mean."""
        self.av.context_group = group
        return self

    # -- audio-video ------------------------------------------------------------------

    def _video_tokens(self, video: Tensor | None, features: Tensor | None) -> Tensor:
        if features is not None:
            _check_features("video_features", features, self.config.video.width)
            return features
        if video is None:
            raise ValueError("pass video (B, F, C, H, W) or video_features (B, T, N, width)")
        if self.video_encoder is None:
            raise ValueError("this model has no video encoder (video.encoder=False): pass "
                             "video_features")
        chunks, _ = partition(video, None, frames_per_chunk=self.config.frames_per_chunk)
        return self.video_encoder(chunks)

    def _audio_tokens(self, audio: Tensor | None, features: Tensor | None,
                      num_frames: int) -> Tensor | None:
        """The audio encoder's tokens of the waveform of ``num_frames`` frames (or the
        features given), None for a video-only model."""
        if not self._takes_audio(audio, features):
            return None
        if features is not None:
            return features
        c = self.config
        return self.audio_encoder(partition_audio(
            audio, num_frames, frames_per_chunk=c.frames_per_chunk, fps=c.fps,
            sample_rate=c.audio.sample_rate))

    def _takes_audio(self, audio: Tensor | None, features: Tensor | None) -> bool:
        """Whether audio comes (checked against what the model takes): False for a
        video-only model, which raises when given any."""
        c = self.config
        if c.audio is None:
            if audio is not None or features is not None:
                raise ValueError("this is a video-only model (config.audio is None): it takes "
                                 "no audio")
            return False
        if features is not None:
            _check_features("audio_features", features, c.audio.width)
            return True
        if audio is None:
            raise ValueError("this model takes audio: pass audio (B, S) or audio_features, or "
                             "use a video-only config (audio=None)")
        if self.audio_encoder is None:
            raise ValueError("this model has no audio encoder (audio.encoder=False): pass "
                             "audio_features")
        return True

    def _combine(self, v: Tensor, a: Tensor | None, state) -> tuple[Tensor, Tensor | None]:
        """The Combiner on encoder tokens v (B, T, Nv, width) and a (or None) after its
        ``state`` (``combiner.initial_state`` for a clip's start): the (B, T, m, dim)
        outputs and the state after them."""
        if a is not None and a.shape[:2] != v.shape[:2]:
            raise ValueError(f"video gives {tuple(v.shape[:2])} (B, T) chunks but audio gives "
                             f"{tuple(a.shape[:2])}")
        return self.combiner.step(self.video_proj(v), None if a is None else self.audio_proj(a),
                                  state)

    def encode(self, video: Tensor | None = None, audio: Tensor | None = None, *,
               video_features: Tensor | None = None, audio_features: Tensor | None = None,
               first_chunk: int = 0) -> tuple[Tensor, Tensor]:
        """(combined, latents), both (B, T, m, dim): the Combiner's outputs and the A/V
        model's. Chunk t's latents depend on chunks <= t only (with ``window_chunks``, on
        the window's and the sinks'). ``first_chunk``: the clip's first chunk is chunk
        ``first_chunk`` of a longer timeline (its time embedding), e.g. to train a windowed
        model on clips at random times of the long streams it will run on."""
        v = self._video_tokens(video, video_features)
        # Raw audio is cut at the frames' chunk boundaries (T chunks of frames_per_chunk).
        a = self._audio_tokens(audio, audio_features, v.shape[1] * self.config.frames_per_chunk)
        combined, _ = self._combine(v, a, self.combiner.initial_state(v.shape[0]))
        return combined, self.av(combined, first_chunk=first_chunk)

    def without_window(self, backend: str = "auto") -> Mirasol:
        """A model with these weights and no window (``window_chunks=None``, no sinks): the
        paper's unbounded model, where every chunk so far is visible to the A/V model and
        the text decoder. On the model's device, its layers on ``backend``."""
        model = Mirasol(self.config.replace(window_chunks=None, sink_chunks=0), backend)
        model.load_state_dict(self.state_dict())
        return model.to(next(self.parameters()).device).train(self.training)

    def stream(self, batch: int = 1, *, max_chunks: int = 1,
               capacity_chunks: int | None = None) -> MirasolStream:
        """A live :class:`~mirasol.model.MirasolStream` of ``batch`` clips that arrive as they
        play: ``push`` the next chunks, ``ask`` at any moment. Pushes hold up to
        ``max_chunks`` chunks; a model without a window (every chunk stays visible) needs
        ``capacity_chunks``, the most chunks the stream will reach."""
        return MirasolStream(self, batch, max_chunks=max_chunks,
                             capacity_chunks=capacity_chunks)

    # -- text ---------------------------------------------------------------------------

    def visible_chunks(self, latents: Tensor) -> Tensor:
        """The chunks of ``latents`` (B, T, m, dim) the text decoder reads: all of them, or
        with ``window_chunks`` W and ``sink_chunks`` S the first S and the last W, in time
        order. Idempotent: a stream keeps exactly these and hands them back."""
        W, S, T = self.config.window_chunks, self.config.sink_chunks, latents.shape[1]
        if W is None or T <= S + W:
            return latents
        return torch.cat((latents[:, :S], latents[:, T - W:]), dim=1)

    def context(self, latents: Tensor) -> Tensor:
        """(B, T'·m, dim): what the text decoder cross-attends to: the visible chunks
        (:meth:`visible_chunks`) standardized by :class:`ContextNorm`."""
        return self.context_norm(self.visible_chunks(latents)).flatten(1, 2)

    def _check_text(self, name: str, text: Tensor, lengths: Tensor | None, batch: int) -> None:
        if text.dim() != 2 or text.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name} must be (B, L) int64 token ids, got "
                             f"{tuple(text.shape)} {text.dtype}")
        if text.shape[1] == 0:
            raise ValueError(f"{name} is empty (L = 0)")
        if text.shape[0] != batch:
            raise ValueError(f"{name} has batch {text.shape[0]} but the video has {batch}")
        if lengths is not None and lengths.shape != (batch,):
            raise ValueError(f"{name} lengths must be ({batch},), got {tuple(lengths.shape)}")
        if torch.compiler.is_compiling():
            return  # value checks below would break the graph
        vocab = self.config.text.vocab_size
        if text.numel() and (int(text.min()) < 0 or int(text.max()) >= vocab):
            raise ValueError(f"{name} has token ids outside [0, {vocab})")
        if lengths is not None and (int(lengths.min()) < 1 or int(lengths.max()) > text.shape[1]):
            raise ValueError(f"{name} lengths must lie in [1, {text.shape[1]}]")

    def forward(self, video: Tensor | None = None, audio: Tensor | None = None,
                text: Tensor | None = None, *, answer_mask: Tensor | None = None,
                text_lengths: Tensor | None = None, video_features: Tensor | None = None,
                audio_features: Tensor | None = None, first_chunk: int = 0) -> MirasolOutput:
        """Losses and logits. ``text`` (B, L) token ids, right-padded to ``text_lengths``;
        the LM loss predicts the tokens where ``answer_mask`` (B, L) is True (default:
        every token after the first, within the lengths). ``first_chunk``: as in
        :meth:`encode`."""
        combined, latents = self.encode(video, audio, video_features=video_features,
                                        audio_features=audio_features, first_chunk=first_chunk)
        # The latent loss trains the A/V model and its predictor only: with the Combiner's
        # outputs detached on the input side as well as the target side, it cannot be
        # lowered by collapsing the Combiner to predictable (constant) features. That takes
        # a second pass of the (small: T·m tokens) A/V model when gradients are on.
        latent = self.av.latent_loss(
            self.av(combined.detach(), first_chunk=first_chunk) if torch.is_grad_enabled()
            else latents, combined)
        if text is None:
            return MirasolOutput(self.config.latent_loss_weight * latent, None, latent, None,
                                 latents)
        self._check_text("text", text, text_lengths, latents.shape[0])
        logits = self.text(text, self.context(latents))
        target = torch.ones_like(text, dtype=torch.bool) if answer_mask is None else answer_mask
        if answer_mask is not None and answer_mask.shape != text.shape:
            raise ValueError(f"answer_mask must have text's shape {tuple(text.shape)}, got "
                             f"{tuple(answer_mask.shape)}")
        if text_lengths is not None:
            positions = torch.arange(text.shape[1], device=text.device)
            target = target & (positions < text_lengths[:, None])
        lm = lm_loss(logits, text, target)
        return MirasolOutput(lm + self.config.latent_loss_weight * latent, lm, latent, logits,
                             latents)

    def text_logits(self, text: Tensor, latents: Tensor) -> Tensor:
        """Next-token logits (B, L, vocab) of ``text`` (B, L) token ids given A/V ``latents``
        (B, T, m, dim), as :meth:`encode` returns them: what :meth:`forward` computes for
        its LM loss, without encoding again (e.g. to score many texts per clip)."""
        self._check_text("text", text, None, latents.shape[0])
        return self.text(text, self.context(latents))

    @torch.no_grad()
    def generate(self, video: Tensor | None = None, audio: Tensor | None = None,
                 prompt: Tensor | None = None, *, eos_token_id: int, pad_token_id: int,
                 prompt_lengths: Tensor | None = None, max_new_tokens: int = 32,
                 num_beams: int = 1, length_penalty: float = 1.0, use_cache: bool = True,
                 video_features: Tensor | None = None, audio_features: Tensor | None = None,
                 latents: Tensor | None = None) -> Tensor:
        """Answer tokens (B, max_new_tokens) continuing each right-padded ``prompt`` (B, P)
        of ``prompt_lengths`` (default P): greedy (``num_beams=1``) or beam search, each
        answer ending with ``eos_token_id`` (when produced within the budget) and then
        ``pad_token_id`` (the tokenizer's ids, e.g. :class:`mirasol.data.ByteTokenizer`'s).
        The clip comes as ``video``/``audio`` (or their features), or as the ``latents``
        (B, T, m, dim) that :meth:`encode` computed for it."""
        if prompt is None:
            raise ValueError("generate needs a prompt (B, P) of token ids")
        if max_new_tokens < 1 or num_beams < 1:
            raise ValueError(f"max_new_tokens ({max_new_tokens}) and num_beams ({num_beams}) "
                             "must be at least 1")
        if latents is None:
            _, latents = self.encode(video, audio, video_features=video_features,
                                     audio_features=audio_features)
        elif any(x is not None for x in (video, audio, video_features, audio_features)):
            raise ValueError("generate takes the clip as video/audio (or their features) or "
                             "as latents, not both")
        self._check_text("prompt", prompt, prompt_lengths, latents.shape[0])
        if prompt_lengths is None:
            prompt_lengths = torch.full((prompt.shape[0],), prompt.shape[1], device=prompt.device)
        args = (self.text, self.context(latents), prompt, prompt_lengths.long())
        kw = dict(max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                  pad_token_id=pad_token_id, use_cache=use_cache)
        if num_beams == 1:
            return greedy_search(*args, **kw)
        return beam_search(*args, num_beams=num_beams, length_penalty=length_penalty, **kw)

    # -- bookkeeping --------------------------------------------------------------------

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component; "audio-video" is everything but the text decoder."""
        parts = {"video encoder": self.video_encoder, "audio encoder": self.audio_encoder,
                 "projections": nn.ModuleList(m for m in (self.video_proj, self.audio_proj)
                                              if m is not None),
                 "combiner": self.combiner, "av model": self.av, "text decoder": self.text}
        counts = {name: sum(p.numel() for p in part.parameters()) if part is not None else 0
                  for name, part in parts.items()}
        counts["audio-video"] = sum(n for name, n in counts.items() if name != "text decoder")
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts
