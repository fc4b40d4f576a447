"""mirasol.pictures: the mask pictures of docs/ops.md (docs/masks/) are drawn from the masks
module's dense masks and written as valid, small PNGs; without matplotlib the error names
the extra to install."""

import struct
import sys
import zlib
from pathlib import Path

import pytest

from mirasol import masks, pictures

DOCS = Path(__file__).resolve().parents[1] / "docs" / "masks"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunks(data: bytes):
    """(type, payload) of each chunk of a PNG, each chunk's CRC checked."""
    assert data[:8] == PNG_SIGNATURE
    at = 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind, payload = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length:at + 12 + length])
        assert zlib.crc32(kind + payload) == crc, kind
        yield kind, payload
        at += 12 + length


def _check_png(path: Path) -> tuple[int, int]:
    chunks = list(_png_chunks(path.read_bytes()))
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    assert any(kind == b"IDAT" for kind, _ in chunks)
    return struct.unpack(">II", chunks[0][1][:8])


@pytest.mark.parametrize("stem", list(pictures.FAMILY))
def test_each_family_member_is_drawn_as_a_valid_small_png(stem, tmp_path):
    pytest.importorskip("matplotlib", reason="the pictures need the 'report' extra")
    title, make = pictures.FAMILY[stem]
    path = pictures.save_picture(make(), tmp_path / f"{stem}.png", title=title)
    width, height = _check_png(path)
    assert 150 <= width <= 800 and 100 <= height <= 800
    assert path.stat().st_size < 40_000

    # The drawing is the dense mask: of the plotted cells' pixels, the visible colour's
    # share is the mask's share of visible pairs (the chunk lines cover a few pixels).
    import matplotlib.colors
    import matplotlib.image

    pixels = matplotlib.image.imread(path)[..., :3]

    def count(colour):
        return int((abs(pixels - matplotlib.colors.to_rgb(colour)) < 0.02).all(-1).sum())

    shown = count(pictures.VISIBLE) / (count(pictures.VISIBLE) + count(pictures.HIDDEN))
    assert shown == pytest.approx(make().dense()[0, 0].float().mean().item(), abs=0.03)


def test_the_committed_pictures_are_the_family_and_small():
    assert sorted(p.stem for p in DOCS.glob("*.png")) == sorted(pictures.FAMILY)
    for path in DOCS.glob("*.png"):
        _check_png(path)
        assert path.stat().st_size < 40_000, path


def test_the_gallery_command_writes_every_picture(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the pictures need the 'report' extra")
    assert pictures.main([str(tmp_path / "out")]) == 0
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.png")) == sorted(pictures.FAMILY)
    assert pictures.main([]) == 2
    assert "usage" in capsys.readouterr().err


def test_a_padded_batch_entry_and_a_bad_one(tmp_path):
    pytest.importorskip("matplotlib", reason="the pictures need the 'report' extra")
    import torch

    mask = masks.chunked_causal(24, 4, torch.tensor([24, 10]), window_chunks=2)
    _check_png(pictures.save_picture(mask, tmp_path / "b1.png", batch=1))
    with pytest.raises(ValueError, match="batch 2"):
        pictures.save_picture(mask, tmp_path / "b2.png", batch=2)


def test_without_matplotlib_the_error_names_the_report_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises
    with pytest.raises(ImportError, match=r"mirasol-kernels\[report\]"):
        pictures.save_picture(masks.chunked_causal(8, 4), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
