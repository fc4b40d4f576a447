"""The Mirasol model: shapes, chunk causality and time alignment, losses, backends agree
(§5 rule at model level), presets' parameter counts, torch.compile, bad inputs."""

import pytest
import torch
from torch import nn

from mirasol.data import ByteTokenizer
from mirasol.model import Mirasol, MirasolConfig, preset
from mirasol.testing import assert_identical, assert_parity, compare_module_with_oracle

TOK = ByteTokenizer()
IDS = dict(eos_token_id=TOK.EOS, pad_token_id=TOK.PAD)  # generate's special tokens
KINDS = pytest.mark.parametrize("kind", ["transformer", "ttm"])

# Smaller than "tiny" so the triton backend (the interpreter) runs the model quickly:
# 16x16 frames, 2-frame chunks at 4 fps (0.5 s of 4 kHz audio = 2000 samples).
MICRO = preset("tiny", frames_per_chunk=2, dim=32,
               video=dict(image_size=16, width=32),
               audio=dict(sample_rate=4000, n_fft=128, hop_length=64, n_mels=16,
                          width=32),
               combiner=dict(num_tokens=4, memory_size=6, bottleneck_dim=16),
               text=dict(width=32, depth=2, cross_attention_every=2))


def _clip(config: MirasolConfig, B=2, chunks=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    F = chunks * config.frames_per_chunk
    size = config.video.image_size
    video = torch.randn(B, F, 3, size, size, generator=gen)
    audio = None
    if config.audio is not None:
        audio = torch.randn(B, round(F / config.fps * config.audio.sample_rate), generator=gen)
    return video, audio


def _qa(B=2):
    ids, masks = zip(*(TOK.example(f"what {i}?", "yes" if i % 2 else "no") for i in range(B)))
    return TOK.pad(list(ids), list(masks))


@KINDS
@pytest.mark.parametrize("with_audio", [True, False])
def test_shapes(kind, with_audio):
    config = MICRO.replace(combiner={"kind": kind}, **({} if with_audio else {"audio": None}))
    model = Mirasol(config)
    video, audio = _clip(config)
    text, lengths, answer = _qa()
    out = model(video, audio, text, answer_mask=answer, text_lengths=lengths)
    assert out.latents.shape == (2, 3, 4, 32)
    assert out.logits.shape == (*text.shape, config.text.vocab_size)
    assert out.loss.shape == out.lm_loss.shape == out.latent_loss.shape == ()
    torch.testing.assert_close(out.loss, out.lm_loss + out.latent_loss)
    assert model.config.audio is None or model.audio_encoder is not None


def test_latents_of_a_chunk_see_no_later_chunk_in_either_modality():
    for kind in ("transformer", "ttm"):
        config = MICRO.replace(combiner={"kind": kind})
        model = Mirasol(config).eval()
        video, audio = _clip(config, chunks=4)
        _, base = model.encode(video, audio)
        # chunk 2 starts at frame 4, i.e. 1.0 s = sample 4000
        later_video, later_audio = video.clone(), audio.clone()
        later_video[:, 4:] += 1.0
        later_audio[:, 4000:] += 1.0
        for v, a in ((later_video, audio), (video, later_audio)):
            _, latents = model.encode(v, a)
            torch.testing.assert_close(latents[:, :2], base[:, :2], rtol=0, atol=0)
            assert not torch.allclose(latents[:, 2:], base[:, 2:])


def test_audio_before_a_chunk_does_not_reach_it_through_the_transformer_combiner():
    """Each chunk's audio window is its own time span: audio of chunk 0's span changes
    chunk 0's Combiner output, but not chunk 1's."""
    model = Mirasol(MICRO).eval()
    video, audio = _clip(MICRO, chunks=2)
    base, _ = model.encode(video, audio)
    audio = audio.clone()
    audio[:, :2000] += 1.0
    changed, _ = model.encode(video, audio)
    torch.testing.assert_close(changed[:, 1], base[:, 1], rtol=0, atol=0)
    assert not torch.allclose(changed[:, 0], base[:, 0])


def test_precomputed_features_skip_the_encoders():
    model = Mirasol(MICRO).eval()
    video, audio = _clip(MICRO)
    combined, latents = model.encode(video, audio)
    from mirasol.model.partition import partition
    v, a = partition(video, audio, frames_per_chunk=2, fps=MICRO.fps, sample_rate=4000)
    feats = dict(video_features=model.video_encoder(v), audio_features=model.audio_encoder(a))
    torch.testing.assert_close(model.encode(**feats)[1], latents)
    features_only = Mirasol(MICRO.replace(video={"encoder": False}, audio={"encoder": False}))
    assert features_only.video_encoder is None and features_only.audio_encoder is None
    assert features_only(**feats).latents.shape == latents.shape
    with pytest.raises(ValueError, match="no video encoder"):
        features_only(video, audio_features=feats["audio_features"])


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = Mirasol(MICRO)
    video, audio = _clip(MICRO)
    text, lengths, answer = _qa()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        out = model(video, audio, text, answer_mask=answer, text_lengths=lengths)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_lm_loss_counts_only_answer_tokens():
    model = Mirasol(MICRO).eval()
    video, audio = _clip(MICRO)
    text, lengths, answer = _qa()
    out = model(video, audio, text, answer_mask=answer, text_lengths=lengths)
    # garbage after the padding or in the question changes nothing
    noisy = text.clone()
    noisy[0, lengths[0]:] = 7
    noisy[:, 1] = 9  # a question byte: only a later answer token could depend on it...
    out2 = model(video, audio, noisy, answer_mask=answer, text_lengths=lengths)
    assert not torch.equal(out2.lm_loss, out.lm_loss)  # ...and it does, through attention
    noisy = text.clone()
    noisy[0, lengths[0]:] = 7
    out3 = model(video, audio, noisy, answer_mask=answer, text_lengths=lengths)
    torch.testing.assert_close(out3.lm_loss, out.lm_loss, rtol=0, atol=0)
    logp = out.logits.log_softmax(-1)
    targets = [(b, i) for b in range(2) for i in range(1, text.shape[1])
               if answer[b, i] and i < lengths[b]]
    manual = torch.stack([-torch.stack([logp[b, i - 1, text[b, i]] for c, i in targets
                                        if c == b]).mean() for b in range(2)]).mean()
    torch.testing.assert_close(out.lm_loss, manual)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_with_and_without_cache_agree(num_beams):
    torch.manual_seed(0)
    model = Mirasol(MICRO).eval()
    video, audio = _clip(MICRO, B=3)
    prompts = [TOK.prompt(q) for q in ("a?", "what colour?", "")]
    prompt, lengths = TOK.pad(prompts)
    kw = dict(prompt_lengths=lengths, max_new_tokens=7, num_beams=num_beams, **IDS)
    cached = model.generate(video, audio, prompt, **kw)
    full = model.generate(video, audio, prompt, use_cache=False, **kw)
    torch.testing.assert_close(cached, full, rtol=0, atol=0)
    assert cached.shape == (3, 7)
    # each right-padded prompt gives what it gives alone
    for b in range(3):
        alone = model.generate(video[b:b + 1], audio[b:b + 1], prompt[b:b + 1, :lengths[b]],
                               max_new_tokens=7, num_beams=num_beams, **IDS)
        torch.testing.assert_close(alone[0], cached[b], rtol=0, atol=0)


def test_generation_and_logits_from_precomputed_latents():
    """generate(latents=...) answers what generate(video, audio) does, and text_logits
    gives forward's logits: one encoding serves many prompts (as in evaluation)."""
    torch.manual_seed(0)
    model = Mirasol(MICRO).eval()
    video, audio = _clip(MICRO)
    prompt, lengths = TOK.pad([TOK.prompt("q?"), TOK.prompt("longer q?")])
    kw = dict(prompt_lengths=lengths, max_new_tokens=5, **IDS)
    _, latents = model.encode(video, audio)
    assert_identical(model.generate(prompt=prompt, latents=latents, **kw),
                     model.generate(video, audio, prompt, **kw))
    text, text_lengths, answer = _qa()
    out = model(video, audio, text, answer_mask=answer, text_lengths=text_lengths)
    assert_identical(model.text_logits(text, latents), out.logits)
    with pytest.raises(ValueError, match="not both"):
        model.generate(video, audio, prompt, latents=latents, **kw)


def test_cached_decoding_logits_equal_a_full_forward():
    torch.manual_seed(0)
    model = Mirasol(MICRO).eval()
    video, audio = _clip(MICRO)
    text, lengths, _ = _qa()
    _, latents = model.encode(video, audio)
    latents = model.context(latents)
    full = model.text(text, latents)
    state = model.text.start(latents, capacity=text.shape[1])
    steps = [model.text(text[:, :3], state=state)]
    steps += [model.text(text[:, i:i + 1], state=state) for i in range(3, text.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


def test_beam_search_with_one_beam_is_greedy_and_beams_score_at_least_greedy():
    torch.manual_seed(0)
    model = Mirasol(MICRO).eval()
    video, audio = _clip(MICRO)
    prompt, lengths = TOK.pad([TOK.prompt("q?"), TOK.prompt("longer q?")])
    greedy = model.generate(video, audio, prompt, prompt_lengths=lengths, max_new_tokens=5,
                            **IDS)
    from mirasol.model.generation import beam_search
    _, latents = model.encode(video, audio)
    one = beam_search(model.text, model.context(latents), prompt, lengths, max_new_tokens=5,
                      num_beams=1, eos_token_id=TOK.EOS, pad_token_id=TOK.PAD)
    torch.testing.assert_close(one, greedy, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@KINDS
def test_backends_agree_at_model_level(backend, kind):
    """Logits, input and every parameter gradient: fast backend vs reference on the same
    weights, against a float64 oracle (§5 rule)."""
    torch.manual_seed(0)
    config = MICRO.replace(combiner={"kind": kind})
    text, lengths, answer = _qa()

    class Logits(nn.Module):
        def __init__(self):
            super().__init__()
            # eval: ContextNorm's running statistics stay fixed, so every copy computes the
            # same function (in training each copy would set them from its own first batch)
            self.model = Mirasol(config).eval()

        def forward(self, video, audio):
            return self.model(video, audio, text, text_lengths=lengths).logits

    video, audio = _clip(config, chunks=2)
    reports = compare_module_with_oracle(Logits(), (video, audio), backend=backend,
                                         names=("video", "audio"))
    assert len(reports) > 50
    assert_parity(reports)


def test_torch_compile_matches_eager():
    """fullgraph: no graph break anywhere (partitioning, encoders, Combiner, A/V model,
    decoder); a second frame count recompiles and still matches."""
    torch.manual_seed(0)
    model = Mirasol(MICRO.replace(combiner={"kind": "ttm"})).eval()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    text, lengths, answer = _qa()
    for chunks in (2, 3):
        video, audio = _clip(MICRO, chunks=chunks)
        eager = model(video, audio, text, answer_mask=answer, text_lengths=lengths)
        out = compiled(video, audio, text, answer_mask=answer, text_lengths=lengths)
        torch.testing.assert_close(out.logits, eager.logits)
        torch.testing.assert_close(out.loss, eager.loss)
    model.zero_grad()
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_parameters_do_not_depend_on_the_number_of_frames():
    """One model takes 128 and 512 frames (4 vs 16 chunks of 32 frames) and every parameter
    is used by both: the count is the same by construction, not by a config per length."""
    config = preset("tiny", frames_per_chunk=32, fps=8.0, audio=None,
                    video={"image_size": 16, "width": 32},
                    text={"width": 32}, dim=32)
    model = Mirasol(config)
    count = sum(p.numel() for p in model.parameters())
    text, lengths, answer = _qa(1)
    for frames in (128, 512):
        model.zero_grad()
        video = torch.randn(1, frames, 3, 16, 16)
        out = model(video, text=text, answer_mask=answer, text_lengths=lengths)
        assert out.latents.shape[1] == frames // 32
        out.loss.backward()
        assert all(p.grad is not None for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == count


def test_mirasol3b_preset_parameter_counts():
    """About 3.0B (±5%), about 2.9B without audio (±5%), more than half in the A/V part:
    counted on the meta device (no memory)."""
    with torch.device("meta"):
        full = Mirasol(preset("mirasol3b")).parameter_counts()
        video_only = Mirasol(preset("mirasol3b", audio=None)).parameter_counts()
    assert abs(full["total"] / 3.0e9 - 1) <= 0.05, full
    assert abs(video_only["total"] / 2.9e9 - 1) <= 0.05, video_only
    assert full["audio-video"] > full["total"] / 2
    assert full["audio-video"] + full["text decoder"] == full["total"]
    assert video_only["audio encoder"] == 0


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_presets_build_and_round_trip_through_json(name, tmp_path):
    config = preset(name)
    config.save(tmp_path / "config.json")
    assert MirasolConfig.load(tmp_path / "config.json") == config
    with torch.device("meta"):
        counts = Mirasol(config).parameter_counts()
    assert counts["total"] == sum(v for k, v in counts.items()
                                  if k not in ("audio-video", "total"))


def test_config_errors():
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ValueError, match="combiner.kind"):
        preset("tiny", combiner={"kind": "perceiver"})
    with pytest.raises(ValueError, match="image_size"):
        preset("tiny", video={"image_size": 30})
    with pytest.raises(ValueError, match="tubelet_size"):
        preset("tiny", frames_per_chunk=3)
    with pytest.raises(ValueError, match="unknown MirasolConfig fields"):
        MirasolConfig.from_dict({**preset("tiny").to_dict(), "depht": 3})


def test_bad_inputs_raise_clear_errors():
    model = Mirasol(MICRO)
    video, audio = _clip(MICRO)
    text, lengths, answer = _qa()
    cases = [
        (dict(video=video[:, :5], audio=audio), "not a multiple of frames_per_chunk"),
        (dict(video=video[..., :15, :15], audio=audio), "not divisible by the patch size"),
        (dict(video=torch.randn(2, 6, 3, 24, 24), audio=audio), "takes 16x16 frames"),
        (dict(video=video[:, :, :1], audio=audio), "channels"),
        (dict(video=video, audio=audio[:, :2999]), "audio has 2999 samples"),
        (dict(video=video), "this model takes audio"),
        (dict(video=video, audio=audio, text=text[:, :0]), "text is empty"),
        (dict(video=video, audio=audio, text=text[:1]), "batch"),
        (dict(video=video, audio=audio, text=text.float()), "int64 token ids"),
        (dict(video=video, audio=audio, text=text + 300), "outside"),
        (dict(video=video, audio=audio, text=text, text_lengths=lengths * 0), "lengths"),
        (dict(video=video, audio=audio, text=text, answer_mask=answer[:, 1:]), "answer_mask"),
        (dict(audio=audio), "pass video"),
        (dict(video_features=torch.randn(2, 3, 8, 5)), "video_features must be"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            model(**kwargs)
    with pytest.raises(ValueError, match="video-only model"):
        Mirasol(MICRO.replace(audio=None))(video, audio)
    with pytest.raises(ValueError, match="prompt"):
        model.generate(video, audio, None, **IDS)
