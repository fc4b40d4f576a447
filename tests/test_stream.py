"""Live Mirasol (MirasolStream): a clip pushed chunk by chunk, or k chunks at a time, gives
the whole-clip forward's latents (§5 rule, float64 oracle) and answers, with and without a
window, for both Combiners and on every backend; a saved state goes on identically in a new
stream; a refused push changes nothing; the state is bounded by the window."""

import copy

import pytest
import torch

from mirasol.layers import set_backend
from mirasol.model import Mirasol, MirasolStream
from mirasol.testing import assert_identical, assert_parity, compare_with_oracle
from test_model import IDS, MICRO, TOK, _clip

# Window of 2 chunks; with one sink chunk as well; without the absolute time embedding.
WINDOWS = {"none": {}, "window": dict(window_chunks=2),
           "sink": dict(window_chunks=2, sink_chunks=1),
           "relative": dict(window_chunks=2, time_embedding=False)}
SAMPLES = 2000  # MICRO: one 2-frame chunk at 4 fps is 0.5 s of 4 kHz audio


def _model(kind="transformer", window="window", backend="torch", **extra):
    torch.manual_seed(0)
    config = MICRO.replace(combiner={"kind": kind}, **WINDOWS[window], **extra)
    return set_backend(Mirasol(config), backend).eval()


def _streamed(model, video, audio, sizes, capacity=None):
    """(latents of every chunk, the stream): the clip pushed in pieces of ``sizes`` chunks,
    each with the audio a little past its frames (so pieces carry uneven amounts of audio);
    a model without a window gets a stream of ``capacity`` chunks (default: the clip's)."""
    c = model.config
    T = video.shape[1] // c.frames_per_chunk
    stream = model.stream(video.shape[0], max_chunks=max(sizes),
                          **({} if c.window_chunks else {"capacity_chunks": capacity or T}))
    out, done = [], 0
    for k in sizes:
        frames = slice(done * c.frames_per_chunk, (done + k) * c.frames_per_chunk)
        # A piece's audio: up to a little past its frames (the rest comes with the next).
        sent = done * SAMPLES + 123 if done else 0
        done += k
        end = done * SAMPLES + 123 if done < T else audio.shape[1]
        out.append(stream.push(video[:, frames], audio[:, sent:end]))
    return torch.cat(out, dim=1), stream


@pytest.mark.parametrize("kind", ["transformer", "ttm"])
@pytest.mark.parametrize("window", list(WINDOWS))
@pytest.mark.parametrize("sizes", [(1,) * 6, (2, 1, 3)], ids=["one", "uneven"])
def test_stream_equals_whole_clip(kind, window, sizes):
    model = _model(kind, window)
    video, audio = _clip(model.config, chunks=6)
    oracle = copy.deepcopy(model).double()
    reports = compare_with_oracle(lambda v, a: _streamed(model, v, a, sizes)[0],
                                  lambda v, a: model.encode(v, a)[1], (video, audio),
                                  names=("video", "audio"), grads=False,
                                  oracle=lambda v, a: oracle.encode(v, a)[1])
    assert_parity(reports)
    whole = model.encode(video, audio)[1]
    latents, stream = _streamed(model, video, audio, sizes)
    assert stream.chunks == 6 and stream.seconds == 3.0
    assert_identical(stream.latents, model.visible_chunks(latents))
    assert stream.latents.shape[1] == {"none": 6, "window": 2, "sink": 3, "relative": 2}[window]
    assert model.visible_chunks(whole).shape == stream.latents.shape


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_stream_on_every_backend(backend):
    model = _model("ttm", "sink", backend)
    video, audio = _clip(model.config, chunks=4, B=1)
    oracle = set_backend(copy.deepcopy(model).double(), "reference")
    reports = compare_with_oracle(lambda v, a: _streamed(model, v, a, (1, 2, 1))[0],
                                  lambda v, a: model.encode(v, a)[1], (video, audio),
                                  names=("video", "audio"), grads=False,
                                  oracle=lambda v, a: oracle.encode(v, a)[1])
    assert_parity(reports)


@pytest.mark.parametrize("window", ["none", "sink"])
def test_answers_equal_generate_on_the_whole_clip(window):
    model = _model("ttm", window)
    video, audio = _clip(model.config, chunks=5)
    _, stream = _streamed(model, video, audio, (1,) * 5)
    prompt, lengths = TOK.pad([TOK.prompt("what is it?"), TOK.prompt("and now?")])
    whole = model.generate(video, audio, prompt, prompt_lengths=lengths, max_new_tokens=6, **IDS)
    live = stream.generate(prompt, prompt_lengths=lengths, max_new_tokens=6, **IDS)
    assert_identical(live, whole)
    answers = stream.ask(["what is it?", "and now?"], TOK, max_new_tokens=6)
    assert answers == [TOK.decode(row) for row in whole]
    assert stream.ask("what is it?", TOK, num_beams=2, max_new_tokens=4) == [
        TOK.decode(row) for row in model.generate(video, audio, prompt[:1, :lengths[0]].expand(
            2, -1), max_new_tokens=4, num_beams=2, **IDS)]


@pytest.mark.parametrize("window", ["none", "window"])
def test_saved_state_goes_on_identically(tmp_path, window):
    model = _model("ttm", window)
    video, audio = _clip(model.config, chunks=5)
    straight, _ = _streamed(model, video, audio, (1, 2, 1, 1))
    first, stream = _streamed(model, video[:, :6], audio[:, :3 * SAMPLES + 500], (1, 2),
                              capacity=5)
    stream.save(tmp_path / "stream.pt")
    later = _model("ttm", window).stream(2, max_chunks=2, **(
        {"capacity_chunks": 5} if window == "none" else {}))
    later.restore(tmp_path / "stream.pt")
    assert later.chunks == 3
    rest = [later.push(video[:, 6 + 2 * i:8 + 2 * i], audio[:, (3 + i) * SAMPLES + 500 * (i == 0)
                                                             :(4 + i) * SAMPLES])
            for i in range(2)]
    assert_identical(torch.cat([first, *rest], dim=1), straight)
    # and the first stream, untouched by the save, goes on the same way
    again = stream.push(video[:, 6:8], audio[:, 3 * SAMPLES + 500:4 * SAMPLES])
    assert_identical(again, rest[0])


def test_reset_starts_a_new_clip():
    model = _model("ttm", "window")
    video, audio = _clip(model.config, chunks=3)
    expected, stream = _streamed(model, video, audio, (1, 1, 1))
    stream.push(*_clip(model.config, chunks=1, seed=5))
    stream.reset()
    assert stream.chunks == 0
    again = torch.cat([stream.push(video[:, 2 * t:2 * t + 2], audio[:, t * SAMPLES:(t + 1) * SAMPLES])
                       for t in range(3)], dim=1)
    assert_identical(again, expected)


def test_state_is_bounded_by_the_window():
    model = _model("ttm", "sink")
    video, audio = _clip(model.config, chunks=1)
    stream = model.stream(2)
    sizes = []
    for t in range(12):
        stream.push(video, torch.randn(2, SAMPLES))
        sizes.append(stream.nbytes)
    assert len(set(sizes[3:])) == 1 and stream.latents.shape[1] == 3
    unbounded = _model("ttm", "none").stream(2, capacity_chunks=12)
    grown = []
    for t in range(12):
        unbounded.push(video, torch.randn(2, SAMPLES))
        grown.append(unbounded.latents.shape[1])
    assert grown == list(range(1, 13))


def _refused(stream, match, *args, **kwargs):
    before = stream.state_dict()
    with pytest.raises(ValueError, match=match):
        stream.push(*args, **kwargs)
    after = stream.state_dict()
    assert after["chunks"] == before["chunks"] and after["audio_start"] == before["audio_start"]
    assert_identical(after["audio"], before["audio"])
    assert_identical(after["latents"], before["latents"])


def test_refused_pushes_change_nothing():
    model = _model("ttm", "window")
    video, audio = _clip(model.config, chunks=3)
    stream = model.stream(2, max_chunks=2)
    stream.push(video[:, :2], audio[:, :SAMPLES + 10])
    _refused(stream, "3 frames is not a whole number of chunks of 2", video[:, 2:5],
             audio[:, SAMPLES:])
    _refused(stream, "audio reaches sample 3000.*frames up to 4 need 4000", video[:, 2:4],
             audio[:, SAMPLES + 10:3000])
    _refused(stream, "3 chunks in one push, more than max_chunks \\(2\\)",
             torch.randn(2, 6, 3, 16, 16), audio[:, SAMPLES + 10:])
    _refused(stream, "batch 1 into a stream of 2 clips", video[:1, 2:4], audio[:1, SAMPLES:])
    _refused(stream, "24 fps, but the model takes 4", video[:, 2:4], audio[:, SAMPLES + 10:],
             fps=24)
    _refused(stream, "audio at 16000 Hz, but the model takes 4000 Hz", video[:, 2:4],
             audio[:, SAMPLES + 10:], sample_rate=16000)
    _refused(stream, "pass video .* or video_features", None, audio[:, SAMPLES + 10:])
    _refused(stream, "audio must be \\(2, samples\\)", video[:, 2:4], audio[0])
    _refused(stream, "takes 16x16 frames.*got 8x8", torch.randn(2, 2, 3, 8, 8), audio[:, SAMPLES + 10:])
    # and then the stream goes on as if nothing had been pushed
    stream.push(video[:, 2:6], audio[:, SAMPLES + 10:], fps=4, sample_rate=4000)
    assert stream.chunks == 3


def test_stream_errors():
    model = _model("ttm", "none")
    with pytest.raises(ValueError, match="no window.*capacity_chunks"):
        model.stream(1)
    with pytest.raises(ValueError, match="batch must be a positive int"):
        model.stream(0, capacity_chunks=4)
    stream = model.stream(1, capacity_chunks=2)
    with pytest.raises(ValueError, match="push at least one chunk before asking"):
        stream.ask("what?", TOK)
    video, audio = _clip(model.config, chunks=1, B=1)
    stream.push(video, audio)
    stream.push(video, audio)
    with pytest.raises(ValueError, match="capacity|full|room"):
        stream.push(video, audio)
    with pytest.raises(ValueError, match="2 questions for 1 clips"):
        stream.ask(["a?", "b?"], TOK)
    windowed = _model("ttm", "window")
    with pytest.raises(ValueError, match="capacity_chunks is for a model without a window"):
        windowed.stream(1, capacity_chunks=4)
    other = windowed.stream(1)
    with pytest.raises(ValueError, match="another config \\(fields that differ: window_chunks"):
        other.load_state_dict(stream.state_dict())
    with pytest.raises(ValueError, match="holds 1 clips, this stream 2"):
        _model("ttm", "none").stream(2, capacity_chunks=4).load_state_dict(stream.state_dict())
    with pytest.raises(ValueError, match="not a stream state"):
        other.load_state_dict({"weights": 1})


def test_config_checks():
    with pytest.raises(ValueError, match="sink_chunks"):
        MICRO.replace(sink_chunks=1)
    with pytest.raises(ValueError, match="window_chunks"):
        MICRO.replace(window_chunks=0)


def test_without_window_keeps_the_weights():
    """The same weights without the window: equal to the windowed model on a clip the window
    covers, every chunk visible beyond it."""
    model = _model("ttm", "sink")
    unbounded = model.without_window()
    assert unbounded.config == model.config.replace(window_chunks=None, sink_chunks=0)
    assert not unbounded.training
    for name, weight in model.state_dict().items():
        assert_identical(unbounded.state_dict()[name], weight)
    video, audio = _clip(model.config, chunks=2)
    assert_identical(unbounded.encode(video, audio)[1], model.encode(video, audio)[1])
    video, audio = _clip(model.config, chunks=5)
    assert unbounded.visible_chunks(unbounded.encode(video, audio)[1]).shape[1] == 5


def test_windowed_forward_reads_the_visible_chunks():
    """Training and streaming see the same thing: the decoder's logits from the whole clip's
    latents equal those from the visible chunks alone (the stream's latents)."""
    model = _model("ttm", "sink")
    video, audio = _clip(model.config, chunks=5)
    prompt, lengths = TOK.pad([TOK.prompt("what?"), TOK.prompt("why?")])
    _, latents = model.encode(video, audio)
    visible = model.visible_chunks(latents)
    assert_identical(model.visible_chunks(visible), visible)
    assert_identical(model.context(latents), model.context(visible))


@pytest.mark.parametrize("time_embedding", [True, False])
def test_a_stream_later_in_time_is_the_offset_forward(time_embedding):
    """A clip pushed 7 chunks into a stream is seen at chunks 7.. of the timeline, as
    ``encode(first_chunk=7)`` sees it: with the stateless Combiner, a window of 2 and two
    A/V layers, chunk 2 of the clip depends on the clip's chunks 0..2 alone. Without the
    time embedding that is the clip's own forward: the model is the same at every time."""
    model = _model("transformer", "window", time_embedding=time_embedding)
    oracle = copy.deepcopy(model).double()
    video, audio = _clip(model.config, chunks=3)
    later, now = (model.encode(video, audio, first_chunk=k)[1] for k in (7, 0))
    if time_embedding:
        assert not torch.allclose(later, now)
    else:
        assert_identical(later, now)
    before = [_clip(model.config, chunks=1, seed=10 + t) for t in range(7)]

    def live(v, a):  # the clip's chunks, each pushed after the 7 chunks before
        stream = model.stream(2)
        for bv, ba in before:
            stream.push(bv.to(v.dtype), ba.to(a.dtype))
        return [stream.push(v[:, 2 * t:2 * t + 2], a[:, t * SAMPLES:(t + 1) * SAMPLES])
                for t in range(3)]

    reports = compare_with_oracle(lambda v, a: live(v, a)[2],
                                  lambda v, a: model.encode(v, a, first_chunk=7)[1][:, 2:],
                                  (video, audio), names=("video", "audio"), grads=False,
                                  oracle=lambda v, a: oracle.encode(v, a, first_chunk=7)[1][:, 2:])
    assert_parity(reports)
    assert not torch.allclose(live(video, audio)[0], later[:, :1])  # chunk 0 sees the chunks before


def test_train_time_offsets_are_deterministic():
    from mirasol.train import TrainConfig, time_offset

    config = TrainConfig(time_offsets=64, seed=3)
    draws = [time_offset(config, step) for step in range(50)]
    assert draws == [time_offset(config, step) for step in range(50)]
    assert all(0 <= d < 64 for d in draws) and len(set(draws)) > 20
    assert time_offset(TrainConfig(), 5) == 0


def test_export():
    assert isinstance(_model().stream(1), MirasolStream)
