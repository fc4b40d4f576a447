"""Checkpoints: safetensors weights + JSON config round trip; a checkpoint of another
configuration is refused with the mismatched keys named."""

import json

import pytest
import torch

from mirasol.model import Mirasol, load_checkpoint, load_state, preset, save_checkpoint

MICRO = preset("tiny", dim=32, video=dict(image_size=16, width=32), text=dict(width=32),
               audio=None)


def test_round_trip_gives_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = Mirasol(MICRO.replace(combiner={"kind": "ttm"})).eval()
    save_checkpoint(model, tmp_path / "ckpt", metadata={"step": "7"})
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["combiner"]["kind"] == "ttm"
    loaded = load_checkpoint(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    video = torch.rand(1, 8, 3, 16, 16)
    torch.testing.assert_close(loaded.encode(video)[1], model.encode(video)[1], rtol=0, atol=0)


def test_loading_another_configuration_names_the_keys(tmp_path):
    save_checkpoint(Mirasol(MICRO), tmp_path)
    deeper = Mirasol(MICRO.replace(depth=3))
    with pytest.raises(ValueError, match=r"missing keys \(\d+\): av\.blocks\.2\."):
        load_state(deeper, tmp_path)
    wider = Mirasol(MICRO.replace(text={"width": 64}))
    with pytest.raises(ValueError, match=r"shape mismatches .*text\.embed\.weight: checkpoint "
                                         r"\(260, 32\) vs model \(260, 64\)"):
        load_state(wider, tmp_path)
    with_audio = Mirasol(preset("tiny", dim=32, video=dict(image_size=16, width=32),
                                text=dict(width=32)))
    save_checkpoint(with_audio, tmp_path / "audio")
    with pytest.raises(ValueError, match=r"unexpected keys \(\d+\): audio_encoder\."):
        load_state(Mirasol(MICRO), tmp_path / "audio")
