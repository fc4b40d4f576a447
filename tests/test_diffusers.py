"""mirasol.integrations.diffusers on a tiny random Wan (no download; built on the CPU in a
fraction of a second): the block-causal processor against diffusers' own SDPA path with the
dense block-causal mask (the parity rule: output, input and every parameter gradient), the
KV-cached rollout against the whole video at once, torch.compile without a graph break,
and the named errors.

A caveat on the oracle: diffusers' Wan computes its layer norms and residual sums in fp32
whatever the model's dtype (``FP32LayerNorm``, ``.float()`` in the blocks), so its float64
copy is exact to fp32 only. In bf16 the rule has its full force; in fp32 it still catches
any mask, layout or rotary-offset mistake (an O(1) error)."""

import copy
from dataclasses import dataclass

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

diffusers = pytest.importorskip("diffusers", reason="needs the 'diffusers' extra")
from diffusers.models.transformers import transformer_wan  # noqa: E402

from mirasol import masks  # noqa: E402
from mirasol.integrations.diffusers import block_causal, check_diffusers_api  # noqa: E402
from mirasol.testing import (assert_identical, assert_parity, compare_modules,  # noqa: E402
                             compare_with_oracle)

TEXT_DIM, CHANNELS = 16, 4


@dataclass(frozen=True)
class Wan:
    """A tiny Wan (patch (temporal_patch, 2, 2), head dim 16) made block-causal: ``chunks``
    chunks of ``frames_per_chunk`` latent frames of a (height x width) latent grid."""
    frames_per_chunk: int
    chunks: int
    window: int | None = None
    sink_frames: int = 0
    height: int = 4
    width: int = 4
    heads: int = 2
    layers: int = 2
    temporal_patch: int = 1
    batch: int = 1
    dtype: torch.dtype = torch.float32

    @property
    def frames(self) -> int:
        return self.frames_per_chunk * self.chunks

    @property
    def frame_tokens(self) -> int:
        return (self.height // 2) * (self.width // 2)

    def model(self) -> transformer_wan.WanTransformer3DModel:
        torch.manual_seed(0)
        return transformer_wan.WanTransformer3DModel(
            patch_size=(self.temporal_patch, 2, 2), num_attention_heads=self.heads,
            attention_head_dim=16, in_channels=CHANNELS, out_channels=CHANNELS,
            text_dim=TEXT_DIM, freq_dim=16, ffn_dim=32, num_layers=self.layers,
            rope_max_seq_len=32).to(self.dtype)

    def causal(self, model, backend: str = "auto"):
        return block_causal(model, self.frames_per_chunk, window_chunks=self.window,
                            sink_frames=self.sink_frames, backend=backend)

    def inputs(self, frames: int | None = None) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(self.frames)
        frames = self.frames if frames is None else frames
        latents = torch.randn(self.batch, CHANNELS, frames * self.temporal_patch,
                              self.height, self.width, generator=gen)
        text = torch.randn(self.batch, 5, TEXT_DIM, generator=gen)
        return (latents.to(self.dtype), torch.full((self.batch,), 500),
                text.to(self.dtype))


class Sample(torch.nn.Module):
    """The transformer's ``.sample`` as a module of (latents, timestep, text)."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer

    def forward(self, latents, timestep, text):
        return self.transformer(latents, timestep, text, return_dict=False)[0]


class DenseMaskSDPA:
    """diffusers' own ``WanAttnProcessor`` (SDPA) with the dense block-causal mask of
    :mod:`mirasol.masks`: what the projects carry today, as the reference."""

    def __init__(self, w: Wan):
        self.w, self.sdpa = w, transformer_wan.WanAttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 rotary_emb=None):
        w, n = self.w, hidden_states.shape[1]
        mask = masks.chunked_causal(n, w.frames_per_chunk * w.frame_tokens,
                                    window_chunks=w.window,
                                    sink_tokens=w.sink_frames * w.frame_tokens).dense()[0, 0]
        return self.sdpa(attn, hidden_states, None, mask, rotary_emb)


def dense_mask_model(w: Wan, model):
    for block in model.blocks:
        block.attn1.set_processor(DenseMaskSDPA(w))
    return model


@st.composite
def wans(draw) -> Wan:
    fpc, chunks = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    return Wan(frames_per_chunk=fpc, chunks=chunks,
               window=draw(st.none() | st.integers(1, chunks + 1)),
               sink_frames=draw(st.integers(0, fpc * chunks)),
               height=draw(st.sampled_from((2, 4, 6))), width=draw(st.sampled_from((2, 4))),
               heads=draw(st.integers(1, 2)), layers=draw(st.integers(1, 2)),
               temporal_patch=draw(st.sampled_from((1, 2))), batch=draw(st.integers(1, 2)),
               dtype=draw(st.sampled_from((torch.float32, torch.bfloat16))))


# CausVid's layout (3-frame chunks), LongLive's (window + sink frames) in bf16, one chunk
# (full attention), a temporal patch of 2 and a 3x2 latent grid.
EDGES = [
    Wan(frames_per_chunk=3, chunks=3),
    Wan(frames_per_chunk=2, chunks=4, window=2, sink_frames=2, dtype=torch.bfloat16),
    Wan(frames_per_chunk=2, chunks=1, batch=2),
    Wan(frames_per_chunk=1, chunks=3, window=1, sink_frames=1, temporal_patch=2, height=6,
        width=4),
]


def edges(**fixed):
    """Pin every edge as an @example (with ``fixed`` for the test's other arguments)."""
    def pin(test):
        for w in EDGES:
            test = example(w=w, **fixed)(test)
        return test
    return pin


# ----------------------------------------------------------------------- the processor


@given(w=wans())
@edges()
def test_the_processor_is_sdpa_with_the_dense_block_causal_mask(w):
    """Output, latents and text gradients, and every parameter's gradient."""
    model = w.model()
    reference = Sample(dense_mask_model(w, copy.deepcopy(model)))
    fast = Sample(model)
    w.causal(model)
    assert_parity(compare_modules(fast, reference, w.inputs(),
                                  names=("latents", "timestep", "text")))


def test_the_mask_is_not_full_attention_and_remove_restores_the_model():
    """The test above has teeth: block-causal differs from Wan's full attention (so a
    processor that ignored the mask would fail it), and remove() gives the model back."""
    w = EDGES[0]
    model, inputs = w.model(), w.inputs()
    full = Sample(model)(*inputs)
    causal = w.causal(model)
    chunked = Sample(model)(*inputs)
    first = w.frames_per_chunk * w.temporal_patch
    # Under the mask the first chunk sees only itself; under full attention, every frame.
    assert (chunked[:, :, :first] - full[:, :, :first]).abs().max() > 1e-2
    causal.remove()
    assert_identical(Sample(model)(*inputs), full)


# ----------------------------------------------------------------------- the rollout


def _rollout_module(w: Wan, model, steps: int):
    """latents -> the rollout's outputs, ``steps`` chunks a step: each step first run
    without committing (a denoising step), which must give the committing step's output."""
    causal = w.causal(model)

    def run(latents, timestep, text):
        rollout = causal.rollout(max_frames=w.frames, chunks_per_step=steps, keep_graph=True)
        width = steps * w.frames_per_chunk * w.temporal_patch
        outs = []
        for a in range(0, latents.shape[2], width):
            chunk = latents[:, :, a:a + width]
            peek = rollout.step(chunk, timestep, text)
            outs.append(rollout.step(chunk, timestep, text, commit=True))
            assert_identical(peek, outs[-1])
        assert rollout.frames == w.frames
        return torch.cat(outs, 2)
    return run


@given(w=wans(), steps=st.integers(1, 2))
@edges(steps=1)
@example(w=EDGES[1], steps=2)
def test_the_rollout_equals_the_whole_video_at_once(w, steps):
    """Chunk by chunk against the cache (diffusers' rotary at each chunk's frame offset,
    the window's rolling eviction, the sinks pinned) equals the block-causal forward of the
    whole video: outputs and, through the cache (keep_graph), the latents' and text's
    gradients."""
    if w.chunks % steps:
        steps = 1
    by_dtype = {}
    for dtype in (w.dtype, torch.float64):
        model = w.model().to(dtype)
        whole = copy.deepcopy(model)
        w.causal(whole, backend="reference")
        by_dtype[dtype] = (_rollout_module(w, model, steps), Sample(whole))

    def rolled(latents, timestep, text):
        return by_dtype[latents.dtype][0](latents, timestep, text)

    def whole(latents, timestep, text):
        return by_dtype[latents.dtype][1](latents, timestep, text)

    assert_parity(compare_with_oracle(rolled, whole, w.inputs(),
                                      names=("latents", "timestep", "text")))


def test_the_rolling_cache_holds_the_window_and_sinks_only():
    w = Wan(frames_per_chunk=1, chunks=8, window=2, sink_frames=1, layers=1)
    causal = w.causal(w.model())
    latents, t, text = w.inputs()
    rollout = causal.rollout()
    for f in range(w.frames):
        rollout.step(latents[:, :, f:f + 1], t, text, commit=True)
    (cache,) = rollout.caches
    # one pinned chunk (the sink frame), the window's one earlier chunk, one new chunk
    assert cache.capacity == 3 * w.frame_tokens and cache.length == w.frames * w.frame_tokens
    rollout.reset()
    assert rollout.frames == 0 and cache.length == 0


# ----------------------------------------------------------------------- torch.compile


def test_torch_compile_of_the_transformer_has_no_graph_break():
    """fullgraph: the hooks, the processors and the op trace into one graph, the op as
    mirasol's custom op (once per block), forward and backward."""
    w = EDGES[1]
    model, (latents, t, text) = w.model(), w.inputs()
    w.causal(model)
    ops = []

    def recording(gm, example_inputs):  # the graph's calls, autograd Functions' included
        ops.extend(str(n.target) for m in gm.modules() if isinstance(m, torch.fx.GraphModule)
                   for n in m.graph.nodes if n.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    latents.requires_grad_(True)
    got = torch.compile(Sample(model), fullgraph=True, backend=recording)(latents, t, text)
    want = Sample(model)(latents, t, text)
    assert_identical(got, want)
    assert ops.count("mirasol.chunked_attention_fwd") == w.layers
    (g_got,) = torch.autograd.grad(got.float().sum(), latents)
    (g_want,) = torch.autograd.grad(want.float().sum(), latents)
    assert_identical(g_got, g_want)
    torch._dynamo.reset()


# ----------------------------------------------------------------------- bad input


def test_frames_that_are_not_whole_chunks_raise_a_named_error():
    w = EDGES[0]
    model = w.model()
    w.causal(model)
    latents, t, text = w.inputs(frames=w.frames - 1)
    with pytest.raises(ValueError, match=r"8 latent frames .* not a whole number of chunks "
                                         r"of 3 frames"):
        model(latents, t, text)


def test_a_rollout_past_its_cache_raises_before_anything_changes():
    w = EDGES[0]
    causal = w.causal(w.model())
    latents, t, text = w.inputs()
    rollout = causal.rollout(max_frames=3)
    rollout.step(latents[:, :, :3], t, text, commit=True)
    with pytest.raises(ValueError, match=r"3 latent frames after 3 is past the rollout's "
                                         r"cache of max_frames=3"):
        rollout.step(latents[:, :, 3:6], t, text)
    assert rollout.frames == 3 and rollout.caches[0].length == 3 * w.frame_tokens
    with pytest.raises(ValueError, match="a rollout step of batch 2"):
        rollout.step(torch.cat([latents[:, :, :3]] * 2), t.repeat(2), text.repeat(2, 1, 1))
    with pytest.raises(ValueError, match="needs max_frames"):
        causal.rollout()
    windowed = Wan(frames_per_chunk=3, chunks=3, window=2).causal(w.model()).rollout()
    with pytest.raises(ValueError, match=r"a step of 2 chunks .* at most 1 per step"):
        windowed.step(latents[:, :, :6], t, text)


def test_frames_past_the_rotary_embedding_raise():
    w = Wan(frames_per_chunk=4, chunks=8, window=2)   # 32 frames: the rope's reach
    causal = w.causal(w.model())
    latents, t, text = w.inputs(frames=4)
    rollout = causal.rollout()
    for _ in range(8):
        rollout.step(latents, t, text, commit=True)
    with pytest.raises(ValueError, match=r"frames \[32, 36\) are past the rotary embedding's "
                                         r"32 positions"):
        rollout.step(latents, t, text)


def test_bad_arguments_and_models_raise_named_errors():
    w = EDGES[0]
    with pytest.raises(TypeError, match="needs a diffusers WanTransformer3DModel, got Linear"):
        block_causal(torch.nn.Linear(2, 2), 3)
    for kwargs, name in ((dict(frames_per_chunk=0), "frames_per_chunk"),
                         (dict(frames_per_chunk=3, window_chunks=0), "window_chunks"),
                         (dict(frames_per_chunk=3, sink_frames=-1), "sink_frames")):
        with pytest.raises(ValueError, match=name):
            block_causal(w.model(), **kwargs)
    model = w.model()
    w.causal(model)
    x = torch.randn(1, 6, 32)
    with pytest.raises(ValueError, match="for the self-attention"):
        model.blocks[0].attn1(x, x)


def test_a_diffusers_without_the_attention_api_is_named():
    check_diffusers_api(diffusers.__version__, transformer_wan)
    with pytest.raises(ImportError, match=r"needs diffusers >= 0\.42.*found diffusers 0\.31\.0"):
        check_diffusers_api("0.31.0", transformer_wan)

    class OldWan:  # a Wan module from before attention processors took rotary_emb
        WanTransformer3DModel = WanAttention = WanRotaryPosEmbed = object

    with pytest.raises(ImportError, match="lacks WanAttnProcessor, _get_qkv_projections"):
        check_diffusers_api("0.42.0", OldWan)
