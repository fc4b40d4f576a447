"""stream_media: incremental decoding in pieces of whole chunks, checked against load_media
(the same frames, the same audio samples) on the bundled clip and on written files, from
paths and file objects; truncated and short sources raise MediaError after the pieces that
were whole."""

import io

import pytest
import torch

pytest.importorskip("av")

from mirasol.data import MediaError, load_media, stream_media  # noqa: E402
from test_media import SETTINGS, _write_video, clip_path  # noqa: E402, F401  (a fixture)

# The written files' format: 1-s chunks of 4 frames, 16² frames.
SMALL = dict(frames_per_chunk=4, fps=4, image_size=16, sample_rate=8000)


def _ends_until(match: str, source) -> list[float]:
    """The ends of the pieces ``source`` yields before MediaError matching ``match``."""
    ends = []
    with pytest.raises(MediaError, match=match):
        for piece in stream_media(source, **SMALL):
            ends.append(piece.end)
    return ends


@pytest.fixture(scope="module")
def whole(clip_path):
    # 5.28 s: 21 frames at 4 fps, 20 in whole chunks of 4.
    return load_media(clip_path, frames_multiple=4, **SETTINGS)


@pytest.mark.parametrize("per_piece, lengths", [(1, [4] * 5), (2, [8, 8, 4]), (3, [12, 8])])
def test_pieces_are_load_medias_clip(clip_path, whole, per_piece, lengths):
    pieces = list(stream_media(clip_path, frames_per_chunk=4, chunks_per_piece=per_piece,
                               **SETTINGS))
    assert [len(p.video) for p in pieces] == lengths
    ends = [sum(lengths[:i + 1]) / 4 for i in range(len(lengths))]
    assert [p.end for p in pieces] == ends and [p.start for p in pieces] == [0.0, *ends[:-1]]
    assert torch.equal(torch.cat([p.video for p in pieces]), whole.video)
    audio = torch.empty(0)
    for p in pieces:
        audio = torch.cat([audio, p.audio])
        assert len(audio) >= p.end * 8000  # the audio so far covers the frames so far
    assert p.audio.dtype == torch.float32 and audio.abs().max() <= 1
    # One resampler run over the same decoded frames: the same samples, bit for bit.
    assert torch.equal(audio[:len(whole.audio)], whole.audio)


def test_file_objects(clip_path, whole):
    with open(clip_path, "rb") as f:
        from_file = list(stream_media(f, frames_per_chunk=4, **SETTINGS))
    from_bytes = list(stream_media(io.BytesIO(clip_path.read_bytes()), frames_per_chunk=4,
                                   **SETTINGS))
    for pieces in (from_file, from_bytes):
        assert torch.equal(torch.cat([p.video for p in pieces]), whole.video)


class _Counting(io.BytesIO):
    """A file object that records how much of itself has been read."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.furthest = 0

    def read(self, n=-1):
        out = super().read(n)
        self.furthest = max(self.furthest, self.tell())
        return out


def test_incremental(tmp_path):
    # Matroska interleaves its streams as written; the first piece must come before the
    # file has been read to its end.
    path = _write_video(tmp_path / "long.mkv", list(range(0, 8000, 100)), 8.0)
    source = _Counting(path.read_bytes())
    pieces = stream_media(source, **SMALL)
    first = next(pieces)
    assert first.end == 1.0 and source.furthest < len(source.getvalue()) / 2
    assert len(list(pieces)) == 7


def test_truncated_raises_after_the_whole_pieces(tmp_path):
    path = _write_video(tmp_path / "clip.mkv", list(range(0, 4000, 100)), 4.0)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(path.read_bytes()[:len(path.read_bytes()) * 6 // 10])
    assert _ends_until(r"cut\.mkv: decode failed at 2\.\d\d s: .*declares 4\.\d\d s "
                       r"\(truncated\?\)", cut) == [1.0, 2.0]
    assert len(list(stream_media(path, **SMALL))) == 4


def test_audio_shorter_than_video(tmp_path):
    short = _write_video(tmp_path / "short.mp4", list(range(0, 2000, 100)), 1.0)
    assert _ends_until(r"short\.mp4: its audio track covers 0\.000-1\.003 s but the video "
                       r"clip spans 0\.000-2\.000 s", short) == [1.0]


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        stream_media(tmp_path / "missing.mp4", frames_per_chunk=4, **SETTINGS)
    silent = _write_video(tmp_path / "silent.mp4", list(range(0, 1000, 100)))
    with pytest.raises(ValueError, match="chunks_per_piece must be at least 1"):
        stream_media(silent, frames_per_chunk=4, chunks_per_piece=0, **SETTINGS)
    with pytest.raises(MediaError, match="silent.mp4 has no audio track"):
        next(stream_media(silent, frames_per_chunk=4, **SETTINGS))
    pieces = list(stream_media(silent, frames_per_chunk=4, require_audio=False, **SETTINGS))
    assert [len(p.video) for p in pieces] == [4] and pieces[0].audio is None
    # Shorter than one chunk: nothing.
    assert list(stream_media(silent, frames_per_chunk=8, require_audio=False, **SETTINGS)) == []
    with pytest.raises(MediaError, match="BytesIO.*is not a video file PyAV can decode"):
        next(stream_media(io.BytesIO(b"not a video" * 50), frames_per_chunk=4, **SETTINGS))
