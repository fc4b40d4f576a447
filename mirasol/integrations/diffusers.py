"""A frame-chunk-causal Wan in diffusers, and its chunk-by-chunk KV-cached rollout.

CausVid, Self-Forcing, LongLive and Krea's realtime model turn Wan's bidirectional video
transformer into an autoregressive one: latent frames are grouped into chunks of
``frames_per_chunk``, and a token attends to its own chunk and the earlier ones (LongLive:
only the ``window_chunks - 1`` before its own, plus ``sink_frames`` first frames). That is
:func:`mirasol.chunked_causal_attention` with ``chunk_size = frames_per_chunk *
tokens_per_frame`` (DESIGN.md §2a); this module puts it in every self-attention of a
diffusers ``WanTransformer3DModel``::

    from diffusers import WanTransformer3DModel
    from mirasol.integrations.diffusers import block_causal

    transformer = WanTransformer3DModel.from_pretrained(..., subfolder="transformer")
    causal = block_causal(transformer, frames_per_chunk=3)   # CausVid, Self-Forcing
    # LongLive: causal = block_causal(transformer, 3, window_chunks=4, sink_frames=3)
    out = transformer(latents, timestep, text).sample        # 21 frames: 7 chunks

    rollout = causal.rollout(max_frames=21)                  # generation, chunk by chunk
    for chunk in range(7):
        x = noise[:, :, 3 * chunk:3 * chunk + 3]
        for t in timesteps:                                  # reads the cache only
            x = denoise(x, rollout.step(x, t, text), t)
        rollout.step(x, zero, text, commit=True)             # the clean chunk joins it

Nothing of the model changes but its self-attention processors (``block.attn1``), a
pre-forward hook that reads the latent grid (tokens per frame) off each call's input, and,
during a rollout, a hook on ``transformer.rope`` that shifts diffusers' own rotary
embedding to the chunk's frame offset. :meth:`BlockCausalWan.remove` undoes all three.
Cross-attention to the text is untouched.
"""

from __future__ import annotations

import re
from types import ModuleType

import torch
from torch import Tensor

from mirasol.layers.kv_cache import ChunkKVCache
from mirasol.ops import chunked_causal_attention
from mirasol.ops._checks import check_non_negative_int, check_positive_int

__all__ = ["BlockCausalWan", "BlockCausalWanProcessor", "WanRollout", "block_causal",
           "check_diffusers_api"]

_NAME = "mirasol.integrations.diffusers"
MIN_DIFFUSERS = (0, 42)
# What the processor calls in diffusers.models.transformers.transformer_wan.
_API = ("WanAttention", "WanAttnProcessor", "WanRotaryPosEmbed", "WanTransformer3DModel",
        "_get_qkv_projections")


def check_diffusers_api(version: str, wan: ModuleType) -> None:
    """Raise ImportError unless diffusers ``version``'s Wan module ``wan`` has the attention
    API this module builds on: per-module attention processors called with
    ``rotary_emb=(cos, sin)``, ``_get_qkv_projections``, a rotary embedding that splits
    head dims into frame, height and width parts (diffusers >= 0.42; the tested range)."""
    found = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    missing = [name for name in _API if not hasattr(wan, name)]
    if not missing and not hasattr(getattr(wan, "WanRotaryPosEmbed"), "forward"):
        missing.append("WanRotaryPosEmbed.forward")
    if found < MIN_DIFFUSERS or missing:
        lacking = f" (its Wan module lacks {', '.join(missing)})" if missing else ""
        raise ImportError(
            f"{_NAME} needs diffusers >= {'.'.join(map(str, MIN_DIFFUSERS))}, whose "
            f"WanAttention takes attention processors called with rotary_emb=(cos, sin); "
            f"found diffusers {version}{lacking}: pip install 'mirasol-kernels[diffusers]'")


def _wan_module() -> ModuleType:
    try:
        import diffusers
        from diffusers.models.transformers import transformer_wan
    except ImportError as e:
        raise ImportError(f"{_NAME} needs diffusers: pip install "
                          "'mirasol-kernels[diffusers]'") from e
    check_diffusers_api(diffusers.__version__, transformer_wan)
    return transformer_wan


_wan = _wan_module()


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Wan's rotary embedding on interleaved pairs, as ``WanAttnProcessor`` applies it:
    x (B, N, H, D), cos/sin (1, N, 1, D) in float64; one rounding to x's dtype."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2).type_as(x)


class BlockCausalWanProcessor:
    """The attention processor of a ``WanAttention`` self-attention (a block's ``attn1``)
    under :class:`BlockCausalWan`: ``WanAttnProcessor``'s projections, qk-norm and rotary
    embedding, then :func:`mirasol.chunked_causal_attention` (B, H, N, head_dim) instead of
    full attention, then the output projection. Numerically it is diffusers' SDPA path with
    the dense block-causal mask (``tests/test_diffusers.py``, the parity rule)."""

    def __init__(self, causal: BlockCausalWan, layer: int):
        self.causal, self.layer = causal, layer

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None,
                 rotary_emb: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(f"{_NAME}: BlockCausalWanProcessor is for the self-attention "
                             "(attn1) of a Wan block: it takes no encoder_hidden_states and "
                             "no attention_mask (the mask is block-causal by construction)")
        q, k, v = _wan._get_qkv_projections(attn, hidden_states, None)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))  # (B, N, H, D)
        if rotary_emb is not None:
            q, k = _rotate(q, *rotary_emb), _rotate(k, *rotary_emb)
        # The op reads (B, H, N, D) through strides: the transposes copy nothing.
        out = self.causal.attend(self.layer, q.transpose(1, 2), k.transpose(1, 2),
                                 v.transpose(1, 2))
        out = out.transpose(1, 2).flatten(2).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


class BlockCausalWan:
    """A ``WanTransformer3DModel`` made frame-chunk-causal in place (:func:`block_causal`
    builds it). Holds the mask's rule in latent frames and the grid of the call in flight.

    With ``T = tokens_per_frame`` (latent height x width after patching, read off each
    call), the self-attention is ``chunked_causal_attention(..., chunk_size=frames_per_chunk
    * T, window_chunks=window_chunks, sink_tokens=sink_frames * T)``. Every call's latent
    frame count (after the temporal patch) must be a whole number of chunks.
    """

    def __init__(self, transformer, frames_per_chunk: int, *, window_chunks: int | None = None,
                 sink_frames: int = 0, backend: str = "auto"):
        if not isinstance(transformer, _wan.WanTransformer3DModel):
            raise TypeError(f"{_NAME}: block_causal needs a diffusers WanTransformer3DModel, "
                            f"got {type(transformer).__name__}")
        check_positive_int(_NAME, "frames_per_chunk", frames_per_chunk)
        if window_chunks is not None:
            check_positive_int(_NAME, "window_chunks", window_chunks)
        check_non_negative_int(_NAME, "sink_frames", sink_frames)
        self.transformer, self.frames_per_chunk = transformer, frames_per_chunk
        self.window_chunks, self.sink_frames, self.backend = window_chunks, sink_frames, backend
        self.frame_tokens: int | None = None    # of the call in flight
        self.frame_offset = 0                   # its first frame's position in the video
        self._rollout: WanRollout | None = None
        self._processors = [block.attn1.processor for block in transformer.blocks]
        for layer, block in enumerate(transformer.blocks):
            block.attn1.set_processor(BlockCausalWanProcessor(self, layer))
        self._hooks = [
            transformer.register_forward_pre_hook(self._read_grid, with_kwargs=True),
            transformer.rope.register_forward_hook(self._shift_rotary)]

    # ------------------------------------------------------------------ the hooks

    def _read_grid(self, transformer, args, kwargs) -> None:
        """Before each forward: the latent grid, checked against the chunks (and, during a
        rollout, against its cache) before anything runs."""
        latents = args[0] if args else kwargs["hidden_states"]
        p_t, p_h, p_w = transformer.config.patch_size
        frames = latents.shape[2] // p_t
        self.frame_tokens = (latents.shape[3] // p_h) * (latents.shape[4] // p_w)
        if frames % self.frames_per_chunk:
            raise ValueError(
                f"{_NAME}: {frames} latent frames ({latents.shape[2]} in hidden_states, "
                f"temporal patch {p_t}) are not a whole number of chunks of "
                f"{self.frames_per_chunk} frames")
        self.frame_offset = 0 if self._rollout is None else self._rollout.frames
        if self._rollout is not None:
            self._rollout.check_step(latents.shape[0], frames, self.frame_tokens)
        reach = transformer.rope.max_seq_len
        if self.frame_offset + frames > reach:
            raise ValueError(f"{_NAME}: frames [{self.frame_offset}, "
                             f"{self.frame_offset + frames}) are past the rotary embedding's "
                             f"{reach} positions (the model's rope_max_seq_len)")

    def _shift_rotary(self, rope, args, output):
        """diffusers' rotary embedding of the frames at ``frame_offset`` on: its own output
        for the video up to them, less the frames before (only the shape of its input is
        read, so a meta tensor stands in for those)."""
        if not self.frame_offset:
            return output
        b, c, f, h, w = args[0].shape
        longer = torch.empty(b, c, f + self.frame_offset * rope.patch_size[0], h, w,
                             device="meta")
        skip = self.frame_offset * self.frame_tokens
        return tuple(t[:, skip:] for t in type(rope).forward(rope, longer))

    # ------------------------------------------------------------------ attention

    @property
    def chunk_size(self) -> int:
        """Tokens per chunk in the call in flight."""
        return self.frames_per_chunk * self.frame_tokens

    @property
    def sink_tokens(self) -> int:
        return self.sink_frames * self.frame_tokens

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Layer ``layer``'s attention, (B, H, N, D): the call's own tokens, or during a
        rollout the step's queries against the cache and the step's own keys."""
        if self._rollout is not None:
            k, v = self._rollout.keys(layer, k, v)
        return chunked_causal_attention(q, k, v, self.chunk_size,
                                        window_chunks=self.window_chunks,
                                        sink_tokens=self.sink_tokens, backend=self.backend)

    # ------------------------------------------------------------------ rollout, undo

    def rollout(self, max_frames: int | None = None, *, chunks_per_step: int = 1,
                keep_graph: bool = False) -> WanRollout:
        """A chunk-by-chunk generation against a KV cache (:class:`WanRollout`).

        Args:
            max_frames: latent frames the video may reach: required without a window
                (every frame stays visible, so the cache holds them all), optional with one
                (the cache holds the sinks and the window only; the rotary embedding's
                reach still bounds the video).
            chunks_per_step: with a window, the most chunks one step brings (sizes the
                rolling cache).
            keep_graph: the cached keys/values keep their autograd history (see
                :class:`mirasol.layers.ChunkKVCache`); default: detached (Self-Forcing).
        """
        return WanRollout(self, max_frames, chunks_per_step, keep_graph)

    def remove(self) -> None:
        """Restore the model's own processors and remove the hooks."""
        for block, processor in zip(self.transformer.blocks, self._processors):
            block.attn1.set_processor(processor)
        for hook in self._hooks:
            hook.remove()

    def __repr__(self) -> str:
        window = "" if self.window_chunks is None else f", window_chunks={self.window_chunks}"
        sinks = f", sink_frames={self.sink_frames}" if self.sink_frames else ""
        return (f"BlockCausalWan(frames_per_chunk={self.frames_per_chunk}{window}{sinks}, "
                f"layers={len(self._processors)}, backend={self.backend!r})")


class WanRollout:
    """Chunk-by-chunk generation with a block-causal Wan (CausVid, Self-Forcing): each
    :meth:`step` runs the transformer on the next chunk(s) of latents, whose queries attend
    to the cached keys/values of every earlier chunk (within the window) and to their own.
    A step with ``commit=True`` also writes its keys/values to the cache and moves the
    rollout to the next chunk; steps without it (the denoising steps) leave the cache as it
    is. The outputs are those of the whole video run at once through the block-causal model
    (``tests/test_diffusers.py``), one chunk at a time.

    One :class:`mirasol.layers.ChunkKVCache` per layer, built at the first step (its batch,
    dtype and device are the latents').
    """

    def __init__(self, causal: BlockCausalWan, max_frames: int | None, chunks_per_step: int,
                 keep_graph: bool):
        if max_frames is not None:
            check_positive_int(_NAME, "max_frames", max_frames)
        elif causal.window_chunks is None:
            raise ValueError(f"{_NAME}: without a window every frame stays visible, so the "
                             "rollout needs max_frames (the latent frames the video may "
                             "reach) to size its cache")
        check_positive_int(_NAME, "chunks_per_step", chunks_per_step)
        self.causal, self.max_frames = causal, max_frames
        self.chunks_per_step, self.keep_graph = chunks_per_step, keep_graph
        self.caches: list[ChunkKVCache | None] = [None] * len(causal.transformer.blocks)
        self.frames = 0      # latent frames committed
        self.batch: int | None = None          # set by the first step, as is
        self.frame_tokens: int | None = None   # the latent grid's tokens a frame
        self._commit = False

    def check_step(self, batch: int, frames: int, frame_tokens: int) -> None:
        """Raise, before anything runs, unless a step of ``frames`` latent frames of
        ``frame_tokens`` tokens each, ``batch`` samples, fits the rollout."""
        if self.batch is not None and (batch, frame_tokens) != (self.batch, self.frame_tokens):
            raise ValueError(f"{_NAME}: a rollout step of batch {batch} with {frame_tokens} "
                             f"tokens a frame in a rollout of batch {self.batch} with "
                             f"{self.frame_tokens}")
        chunks = frames // self.causal.frames_per_chunk
        if self.causal.window_chunks is not None and chunks > self.chunks_per_step:
            raise ValueError(f"{_NAME}: a step of {chunks} chunks in a rollout of at most "
                             f"{self.chunks_per_step} per step (chunks_per_step)")
        if self.max_frames is not None and self.frames + frames > self.max_frames:
            raise ValueError(f"{_NAME}: a step of {frames} latent frames after "
                             f"{self.frames} is past the rollout's cache of max_frames="
                             f"{self.max_frames}")

    def step(self, hidden_states: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, *,
             commit: bool = False, **kwargs) -> Tensor:
        """The transformer's output (``.sample``) for the next chunk(s) of latents
        ``hidden_states`` (B, C, frames, H, W), a whole number of chunks at frame
        :attr:`frames` of the video. ``commit``: the chunk is final (CausVid and
        Self-Forcing run the denoised chunk once more at timestep 0 for this): its keys and
        values join the cache and the next step starts after it. ``kwargs`` go to the
        transformer."""
        self.causal._rollout, self._commit = self, commit
        try:
            out = self.causal.transformer(hidden_states, timestep, encoder_hidden_states,
                                          return_dict=False, **kwargs)[0]
        finally:
            self.causal._rollout = None
        if self.batch is None:
            self.batch, self.frame_tokens = hidden_states.shape[0], self.causal.frame_tokens
        if commit:
            self.frames += hidden_states.shape[2] // self.causal.transformer.config.patch_size[0]
        return out

    def keys(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Layer ``layer``'s keys and values for the step in flight: the cache's and the
        step's own (written to the cache when the step commits)."""
        cache = self.caches[layer]
        if cache is None:
            causal = self.causal
            size = (dict(capacity=self.max_frames * causal.frame_tokens)
                    if causal.window_chunks is None else dict(max_chunks=self.chunks_per_step))
            cache = self.caches[layer] = ChunkKVCache(
                k.shape[0], k.shape[1], k.shape[3], chunk_size=causal.chunk_size,
                window_chunks=causal.window_chunks, sink_tokens=causal.sink_tokens,
                dtype=k.dtype, device=k.device, keep_graph=self.keep_graph, **size)
        return cache.append(k, v) if self._commit else cache.peek(k, v)

    def reset(self) -> None:
        """Start a new video (the caches' buffers are kept)."""
        for cache in self.caches:
            if cache is not None:
                cache.reset()
        self.frames, self.batch, self.frame_tokens = 0, None, None

    @property
    def nbytes(self) -> int:
        """Bytes the caches hold."""
        return sum(c.nbytes for c in self.caches if c is not None)


def block_causal(transformer, frames_per_chunk: int, *, window_chunks: int | None = None,
                 sink_frames: int = 0, backend: str = "auto") -> BlockCausalWan:
    """Make a diffusers ``WanTransformer3DModel`` frame-chunk-causal, in place.

    Args:
        transformer: the model; its blocks' self-attention processors are replaced.
        frames_per_chunk: latent frames (after the temporal patch) per chunk: CausVid and
            Self-Forcing use 3 (21 frames, 7 chunks).
        window_chunks: a token sees its own chunk and the ``window_chunks - 1`` before it
            (None: every earlier chunk). LongLive: 4 (12 frames with its 3-frame chunks).
        sink_frames: the first latent frames, visible to every chunk whatever the window
            (LongLive: 3).
        backend: of :func:`mirasol.chunked_causal_attention`.

    Returns:
        The :class:`BlockCausalWan` handle: :meth:`~BlockCausalWan.rollout` for chunk-by-chunk
        generation, :meth:`~BlockCausalWan.remove` to undo.
    """
    return BlockCausalWan(transformer, frames_per_chunk, window_chunks=window_chunks,
                          sink_frames=sink_frames, backend=backend)
