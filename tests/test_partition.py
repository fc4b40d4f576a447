"""Time-aligned partitioning: each chunk's audio is the audio of its frames' time span."""

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mirasol.model.partition import ChunkLayout, chunk_layout, partition

# (fps as passed, the rate it stands for): 29.97 is read as 2997/100, the float of
# 30000/1001 as NTSC exactly
RATES = [(25, Fraction(25)), (30, Fraction(30)), (29.97, Fraction("29.97")),
         (30000 / 1001, Fraction(30000, 1001)), (24000 / 1001, Fraction(24000, 1001))]


def _check_covers(layout: ChunkLayout, rate: Fraction, sr: int, fpc: int):
    """Window t spans [t·fpc/fps, (t+1)·fpc/fps) in sample units to within one sample at
    either end, with no gaps and overlaps of at most one sample."""
    span = Fraction(fpc * sr) / rate
    for t, start in enumerate(layout.audio_starts):
        assert abs(start - t * span) < 1
        assert abs(start + layout.samples_per_chunk - (t + 1) * span) < 1
    for a, b in zip(layout.audio_starts, layout.audio_starts[1:]):
        assert a <= b <= a + layout.samples_per_chunk <= b + 1
    assert layout.audio_starts[-1] + layout.samples_per_chunk <= layout.required_samples


@pytest.mark.parametrize("fps,sr,fpc", [(25, 16000, 4), (30, 48000, 1), (30, 16000, 4),
                                        (29.97, 16000, 4), (30000 / 1001, 44100, 8)])
def test_windows_are_the_chunks_audio(fps, sr, fpc):
    num_chunks, batch = 6, 2
    layout = chunk_layout(num_chunks * fpc, fpc, fps, sr)
    video = torch.randn(batch, num_chunks * fpc, 3, 2, 2)
    # each sample's value is its own index (exact in float64), so windows read as ranges
    audio = torch.arange(layout.required_samples + 7, dtype=torch.float64).repeat(batch, 1)
    _, windows = partition(video, audio, frames_per_chunk=fpc, fps=fps, sample_rate=sr)
    assert windows.shape == (batch, num_chunks, layout.samples_per_chunk)
    rate = dict(RATES)[fps]
    assert layout.samples_per_chunk == math.ceil(Fraction(fpc * sr) / rate)
    for t in range(num_chunks):
        start = math.floor(Fraction(t * fpc * sr) / rate)
        expected = torch.arange(start, start + layout.samples_per_chunk, dtype=torch.float64)
        torch.testing.assert_close(windows[:, t], expected.expand(batch, -1), rtol=0, atol=0)
        # the window holds every sample whose time i/sr falls in the chunk's frames, except
        # possibly the last (start rounds down, the length is fixed), and none more than one
        # sample outside them
        t0, t1 = Fraction(t * fpc) / rate, Fraction((t + 1) * fpc) / rate
        got = windows[0, t].long().tolist()
        assert all(t0 - Fraction(1, sr) < Fraction(i, sr) < t1 + Fraction(1, sr) for i in got)
        near = range(max(0, start - 2), start + layout.samples_per_chunk + 2)
        inside = [i for i in near if t0 <= Fraction(i, sr) < t1]
        assert set(inside[:-1]) <= set(got)
    _check_covers(layout, rate, sr, fpc)


@pytest.mark.parametrize("fps,rate", RATES)
def test_starts_never_drift(fps, rate):
    layout = chunk_layout(128 * 5, 5, fps, 22050)
    span = Fraction(5 * 22050) / rate
    assert layout.num_chunks == 128
    assert layout.audio_starts == tuple(math.floor(t * span) for t in range(128))
    assert layout.required_samples == math.ceil(128 * span)
    assert list(layout.audio_starts) == sorted(layout.audio_starts)


def test_required_samples_suffice_exactly():
    video = torch.zeros(1, 8, 1, 1, 1)
    kw = dict(frames_per_chunk=4, fps=29.97, sample_rate=16000)
    need = chunk_layout(8, 4, 29.97, 16000).required_samples
    assert need == math.ceil(Fraction(8 * 16000) / Fraction("29.97"))
    _, windows = partition(video, torch.zeros(1, need), **kw)
    assert windows.shape[:2] == (1, 2)
    with pytest.raises(ValueError, match=f"audio has {need - 1} samples but 8 frames at "
                                         f"fps=29.97 need {need} samples at sample_rate=16000"):
        partition(video, torch.zeros(1, need - 1), **kw)


def test_extra_audio_is_ignored():
    video = torch.zeros(2, 8, 1, 1, 1)
    audio = torch.randn(2, 20000)
    kw = dict(frames_per_chunk=4, fps=30, sample_rate=16000)
    need = chunk_layout(8, 4, 30, 16000).required_samples
    torch.testing.assert_close(partition(video, audio, **kw)[1],
                               partition(video, audio[:, :need], **kw)[1])


@pytest.mark.parametrize("permuted", [False, True])
def test_video_chunks_are_a_view(permuted):
    video = torch.randn(2, 12, 3, 4, 5)
    if permuted:  # a (B, C, F, H, W) clip seen as (B, F, C, H, W)
        video = torch.randn(2, 3, 12, 4, 5).transpose(1, 2)
    chunks, audio = partition(video, None, frames_per_chunk=4, fps=25, sample_rate=16000)
    assert audio is None
    assert chunks.shape == (2, 3, 4, 3, 4, 5)
    assert chunks.untyped_storage().data_ptr() == video.untyped_storage().data_ptr()
    torch.testing.assert_close(chunks, video.reshape(2, 3, 4, 3, 4, 5), rtol=0, atol=0)
    video[1, 5].fill_(7.0)
    assert (chunks[1, 1, 1] == 7.0).all()


def test_errors_name_the_argument():
    kw = dict(frames_per_chunk=4, fps=30, sample_rate=16000)
    video, audio = torch.zeros(2, 8, 1, 1, 1), torch.zeros(2, 5000)
    with pytest.raises(ValueError, match=r"video must be 5-D .* got shape \(2, 8, 1, 1\)"):
        partition(torch.zeros(2, 8, 1, 1), audio, **kw)
    with pytest.raises(ValueError, match=r"audio must be 2-D .* got shape \(2, 1, 5000\)"):
        partition(video, audio[:, None], **kw)
    with pytest.raises(ValueError, match="audio has batch size 3 but video has 2"):
        partition(video, torch.zeros(3, 5000), **kw)
    with pytest.raises(ValueError, match="audio has 100 samples but 8 frames"):
        partition(video, torch.zeros(2, 100), **kw)
    with pytest.raises(ValueError, match="num_frames=10 is not a multiple of frames_per_chunk=4"):
        partition(torch.zeros(2, 10, 1, 1, 1), audio, **kw)
    with pytest.raises(ValueError, match="num_frames=0"):
        partition(torch.zeros(2, 0, 1, 1, 1), audio, **kw)
    with pytest.raises(ValueError, match="frames_per_chunk=0"):
        chunk_layout(8, 0, 30, 16000)
    with pytest.raises(ValueError, match="fps=-30"):
        chunk_layout(8, 4, -30, 16000)


@given(rate=st.sampled_from(RATES), sr=st.sampled_from([8000, 16000, 22050, 44100]),
       fpc=st.integers(1, 16), num_chunks=st.integers(1, 64))
def test_windows_cover_their_chunk(rate, sr, fpc, num_chunks):
    fps, exact = rate
    layout = chunk_layout(num_chunks * fpc, fpc, fps, sr)
    assert layout.num_chunks == len(layout.audio_starts) == num_chunks
    assert layout.frames_per_chunk == fpc
    _check_covers(layout, exact, sr, fpc)
