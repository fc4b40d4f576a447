"""mirasol.live.watch and ``mirasol watch``: a media file streamed through a model gives, at
each answer's time, the answer of the whole-clip model on the frames up to then; a failing
source keeps the answers before it; the command prints timestamped answers."""

import io

import pytest
import torch

pytest.importorskip("av")

from mirasol import cli  # noqa: E402
from mirasol.data import ByteTokenizer, MediaError, load_media, media_args  # noqa: E402
from mirasol.live import watch  # noqa: E402
from mirasol.model import Mirasol, preset, save_checkpoint  # noqa: E402
from test_media import _write_video  # noqa: E402

TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # tiny's format (4 fps, 1-s chunks of 4 frames, 8 kHz), smaller widths
    return Mirasol(preset("tiny", window_chunks=2, dim=32, video=dict(width=32),
                          audio=dict(width=32), text=dict(width=32, depth=2))).eval()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return _write_video(tmp_path_factory.mktemp("live") / "clip.mkv",
                        list(range(0, 5000, 100)), 5.0, size=64)


def test_answers_are_the_whole_clips_up_to_then(model, clip):
    answers = list(watch(model, clip, ["colour?", "tone?"], every=2, max_new_tokens=6))
    # every 2 s of the 5 s clip, and once at the end
    assert [(a.seconds, a.question) for a in answers] == [
        (2.0, "colour?"), (2.0, "tone?"), (4.0, "colour?"), (4.0, "tone?"),
        (5.0, "colour?"), (5.0, "tone?")]
    media = load_media(clip, **media_args(model.config))
    for a in answers:
        frames = int(a.seconds * 4)
        prompt = torch.tensor([TOK.prompt(a.question)])
        whole = model.generate(media.video[None, :frames], media.audio[None, :frames * 2000],
                               prompt, max_new_tokens=6, eos_token_id=TOK.EOS,
                               pad_token_id=TOK.PAD)
        assert a.answer == TOK.decode(whole[0])
        assert a.wall > 0 and a.rtf > 0 and a.nbytes > 0


def test_every_push_and_errors(model, clip, tmp_path):
    assert [a.seconds for a in watch(model, clip, "what?", chunks_per_push=2,
                                     max_new_tokens=2)] == [2.0, 4.0, 5.0]
    with pytest.raises(ValueError, match="every must be positive"):
        next(watch(model, clip, "what?", every=0))
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(clip.read_bytes()[:len(clip.read_bytes()) // 2])
    got = []
    with pytest.raises(MediaError, match="cut.mkv: decode failed at"):
        for answer in watch(model, cut, "what?", max_new_tokens=2):
            got.append(answer.seconds)
    assert got == [1.0, 2.0]
    with open(clip, "rb") as f:
        assert len(list(watch(model, io.BytesIO(f.read()), "what?", max_new_tokens=2))) == 5


def test_command(model, clip, tmp_path, capsys):
    save_checkpoint(model, tmp_path / "model")
    assert cli.main(["watch", str(clip), "--checkpoint", str(tmp_path / "model"), "--ask",
                     "colour?", "--every", "2.5", "--max-new-tokens", "3"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split("]")[0] for line in lines] == ["[     3.0 s", "[     5.0 s"]
    assert all("colour?" in line for line in lines)
    assert "done: 5.0 s of video in" in err and "x real time" in err
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(clip.read_bytes()[:len(clip.read_bytes()) // 2])
    assert cli.main(["watch", str(cut), "--checkpoint", str(tmp_path / "model")]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2 and "source failed: 2.0 s" in err and "decode failed" in err


def test_live_accuracy_structure_and_memory(model):
    from mirasol.data import SyntheticConfig
    from mirasol.live import live_accuracy

    data = SyntheticConfig.for_model(model.config)
    windowed = live_accuracy(model, data, streams=2, episodes=4)
    assert windowed["count"] == 8 and windowed["seconds"] == 16.0
    assert list(windowed["by_minute"]) == [0] and 0 <= windowed["accuracy"] <= 1
    assert len(set(windowed["nbytes"])) == 1  # flat: the window holds the state
    unbounded = live_accuracy(model, data, streams=2, episodes=4, unbounded=True)
    assert unbounded["nbytes"] == sorted(unbounded["nbytes"])
    assert unbounded["nbytes"][-1] > unbounded["nbytes"][0] > windowed["nbytes"][0]
