"""LogMelSpectrogram against float64 numpy oracles written from the Slaney formulas."""

import math

import numpy as np
import pytest
import torch

from mirasol.model.audio import LogMelSpectrogram, mel_filterbank
from mirasol.testing import tolerances


def _hz_to_mel(f):
    # Slaney: 3 mel per 200 Hz up to 1 kHz (= 15 mel), then 27 mel per factor 6.4
    f = np.asarray(f, dtype=np.float64)
    return np.where(f < 1000, 3 * f / 200, 15 + 27 * np.log(np.maximum(f, 1e-9) / 1000)
                    / np.log(6.4))


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    return np.where(m < 15, 200 * m / 3, 1000 * 6.4 ** ((m - 15) / 27))


def _oracle_edges(n_mels, f_min, f_max):
    return _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2))


def _oracle_filterbank(sr, n_fft, n_mels, f_min, f_max):
    """(n_fft // 2 + 1, n_mels): triangle m rises from f_m to f_{m+1}, falls to f_{m+2},
    scaled by 2 / (f_{m+2} - f_m)."""
    f = _oracle_edges(n_mels, f_min, f_max)
    bins = np.arange(n_fft // 2 + 1) * sr / n_fft
    fb = np.zeros((bins.size, n_mels))
    for m in range(n_mels):
        for k, x in enumerate(bins):
            if f[m] <= x <= f[m + 1]:
                w = (x - f[m]) / (f[m + 1] - f[m])
            elif f[m + 1] < x <= f[m + 2]:
                w = (f[m + 2] - x) / (f[m + 2] - f[m + 1])
            else:
                w = 0.0
            fb[k, m] = w * 2 / (f[m + 2] - f[m])
    return fb


def _oracle_logmel(wave, sr, n_fft, hop, n_mels, f_min, f_max, eps):
    """wave (B, L) float64 → (B, n_mels, frames) via framed rfft."""
    frames = 1 + (wave.shape[-1] - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    idx = np.arange(frames)[:, None] * hop + np.arange(n_fft)
    power = np.abs(np.fft.rfft(wave[:, idx] * window, axis=-1)) ** 2  # (B, frames, bins)
    mel = power @ _oracle_filterbank(sr, n_fft, n_mels, f_min, f_max)
    return np.log(mel + eps).transpose(0, 2, 1)


CONFIGS = [  # sample_rate, n_fft, hop, n_mels, f_min, f_max
    (16000, 400, 160, 64, 0.0, None),
    (22050, 512, 128, 40, 50.0, 7000.0),
    (8000, 256, 100, 24, 300.0, 3400.0),
]


def test_slaney_oracle_known_points():
    # guards the oracle itself: the scale's break point and two textbook values
    assert _hz_to_mel(1000) == pytest.approx(15)
    assert _hz_to_mel(440) == pytest.approx(6.6)
    assert _hz_to_mel(6400) == pytest.approx(42)
    assert _mel_to_hz(_hz_to_mel(3210.0)) == pytest.approx(3210.0)


@pytest.mark.parametrize("sr,n_fft,hop,n_mels,f_min,f_max", CONFIGS)
def test_filterbank_matches_oracle(sr, n_fft, hop, n_mels, f_min, f_max):
    f_max = sr / 2 if f_max is None else f_max
    fb = mel_filterbank(sr, n_fft, n_mels, f_min, f_max)
    assert fb.dtype == torch.float32 and fb.shape == (n_fft // 2 + 1, n_mels)
    expected = _oracle_filterbank(sr, n_fft, n_mels, f_min, f_max)
    np.testing.assert_allclose(fb.numpy(), expected, **tolerances.MEL_FILTERBANK)
    # area normalization: each triangle integrates to ~1 over Hz (coarse Riemann sum)
    areas = fb.double().sum(0).numpy() * sr / n_fft
    edges = _oracle_edges(n_mels, f_min, f_max)
    wide = edges[2:] - edges[:-2] > tolerances.MEL_AREA_MIN_BINS * sr / n_fft
    assert wide.sum() >= 9  # the widest triangles of every config (9 to 18 of them)
    np.testing.assert_allclose(areas[wide], 1.0, **tolerances.MEL_AREA)


@pytest.mark.parametrize("sr,n_fft,hop,n_mels,f_min,f_max", CONFIGS)
def test_spectrogram_matches_oracle(sr, n_fft, hop, n_mels, f_min, f_max):
    module = LogMelSpectrogram(sr, n_fft, hop, n_mels, f_min, f_max)
    wave = torch.randn(2, sr // 2, dtype=torch.float64)
    expected = _oracle_logmel(wave.numpy(), sr, n_fft, hop, n_mels, f_min,
                              sr / 2 if f_max is None else f_max, 1e-6)
    out32 = module(wave.float())
    assert out32.dtype == torch.float32 and out32.shape == expected.shape
    np.testing.assert_allclose(out32.numpy(), expected, **tolerances.LOG_MEL_FLOAT32)
    out64 = module(wave)
    assert out64.dtype == torch.float64
    # float64 compute; only the float32-stored filterbank limits agreement
    np.testing.assert_allclose(out64.numpy(), expected, **tolerances.LOG_MEL_FLOAT64)


@pytest.mark.parametrize("k", [20, 35, 50, 60])
def test_sine_peaks_in_nearest_filter(k):
    sr, n_mels = 16000, 64
    edges = _oracle_edges(n_mels, 0.0, sr / 2)
    centers = edges[1:-1]
    f0 = centers[k] + 0.2 * (centers[k + 1] - centers[k])
    t = torch.arange(sr, dtype=torch.float64) / sr
    mel = LogMelSpectrogram(sr, n_mels=n_mels)(torch.sin(2 * math.pi * f0 * t).float())
    assert int(np.argmin(np.abs(centers - f0))) == k
    assert int(mel.exp().sum(-1).argmax()) == k


def test_shapes_and_frames():
    module = LogMelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=32)
    for length in (400, 559, 560, 16000):
        frames = 1 + (length - 400) // 160
        assert module.num_frames(length) == frames
        assert module(torch.randn(length)).shape == (32, frames)
    batched = torch.randn(2, 3, 1000)
    out = module(batched)
    assert out.shape == (2, 3, 32, module.num_frames(1000))
    torch.testing.assert_close(out[1, 2], module(batched[1, 2]))
    assert module(batched.half()).dtype == torch.float32


def test_errors():
    module = LogMelSpectrogram(16000)
    with pytest.raises(ValueError, match="waveform needs at least n_fft=400 samples; got 399"):
        module(torch.randn(2, 399))
    with pytest.raises(ValueError, match="waveform must be a floating-point"):
        module(torch.ones(2, 1000, dtype=torch.int16))
    with pytest.raises(ValueError, match="needs at least n_fft"):
        module.num_frames(399)
    with pytest.raises(ValueError, match="f_max"):
        LogMelSpectrogram(16000, f_max=9000.0)


def test_buffers_are_not_state():
    module = LogMelSpectrogram(16000)
    assert module.state_dict() == {}
    assert list(module.parameters()) == []
    assert {name for name, _ in module.named_buffers()} == {"window", "mel_fb"}
    assert module.mel_fb.shape == (201, 64) and module.window.shape == (400,)


def test_meta_device():
    with torch.device("meta"):
        module = LogMelSpectrogram(16000)
        out = module(torch.empty(2, 16000))
    assert module.mel_fb.is_meta and module.window.is_meta
    assert out.is_meta and out.shape == (2, 64, 98)


@pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation for complex")
def test_compile_matches_eager():
    module = LogMelSpectrogram(16000, n_mels=32)
    wave = torch.randn(2, 4000)
    compiled = torch.compile(module, fullgraph=True)
    torch.testing.assert_close(compiled(wave), module(wave), **tolerances.LOG_MEL_COMPILED)
