"""Log-mel spectrogram front end for the audio encoder, in plain PyTorch (``torch.stft``).

The filterbank is librosa's default (``librosa.filters.mel(htk=False, norm="slaney")``):
triangles equally spaced on the Slaney mel scale, each scaled to unit area in Hz.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# Slaney mel scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above it
# (27 mel per factor 6.4), meeting at 1 kHz = 15 mel.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def _hz_to_mel(hz: Tensor) -> Tensor:
    # clamp keeps log() finite on the linear branch that torch.where discards anyway
    log_part = _MIN_LOG_MEL + torch.log(hz.clamp(min=_MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return torch.where(hz >= _MIN_LOG_HZ, log_part, hz / _F_SP)


def _mel_to_hz(mel: Tensor) -> Tensor:
    log_part = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (mel - _MIN_LOG_MEL))
    return torch.where(mel >= _MIN_LOG_MEL, log_part, _F_SP * mel)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float,
                   f_max: float) -> Tensor:
    """Slaney-scale, Slaney-normalized triangular filters: float32 (n_fft // 2 + 1, n_mels),
    column m weighting the rfft bins of filter m. Computed in float64 on the default device
    (so it works under ``torch.device("meta")``). Filters narrower than a bin spacing can
    come out all zero, as in librosa; choose ``n_mels`` accordingly."""
    f64 = torch.float64
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=f64)
    mel_edges = torch.linspace(0.0, 1.0, n_mels + 2, dtype=f64)
    mel_lo = _hz_to_mel(torch.tensor(f_min, dtype=f64))
    mel_hi = _hz_to_mel(torch.tensor(f_max, dtype=f64))
    edges = _mel_to_hz(mel_lo + (mel_hi - mel_lo) * mel_edges)  # (n_mels + 2,) Hz
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (center - lower)
    falling = (upper - freqs) / (upper - center)
    weights = torch.minimum(rising, falling).clamp(min=0.0)  # (n_mels, n_freqs)
    weights = weights * (2.0 / (upper - lower))
    return weights.mT.contiguous().to(torch.float32)


class LogMelSpectrogram(nn.Module):
    """``log(mel(|STFT|²) + eps)`` with a periodic Hann window and ``center=False``.

    The window and filterbank are non-persistent buffers: derived from the constructor
    arguments, they stay out of ``state_dict`` and follow ``.to(device)``. The module has
    no parameters.
    """

    def __init__(self, sample_rate: int, n_fft: int = 400, hop_length: int = 160,
                 n_mels: int = 64, f_min: float = 0.0, f_max: float | None = None,
                 eps: float = 1e-6):
        super().__init__()
        f_max = sample_rate / 2 if f_max is None else f_max
        if min(sample_rate, n_fft, hop_length, n_mels) <= 0:
            raise ValueError("sample_rate, n_fft, hop_length and n_mels must be positive; got "
                             f"{sample_rate}, {n_fft}, {hop_length}, {n_mels}")
        if not 0.0 <= f_min < f_max <= sample_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2 = {sample_rate / 2}; "
                             f"got f_min={f_min}, f_max={f_max}")
        self.sample_rate, self.n_fft, self.hop_length, self.n_mels = (
            sample_rate, n_fft, hop_length, n_mels)
        self.f_min, self.f_max, self.eps = f_min, f_max, eps
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
        self.register_buffer("window", window.to(torch.float32), persistent=False)
        self.register_buffer("mel_fb", mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max),
                             persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Frames that ``forward`` yields for ``num_samples`` samples (>= n_fft)."""
        if num_samples < self.n_fft:
            raise ValueError(f"needs at least n_fft={self.n_fft} samples; got {num_samples}")
        return 1 + (num_samples - self.n_fft) // self.hop_length

    def forward(self, waveform: Tensor) -> Tensor:
        """waveform: floating (..., L) with L >= n_fft. Returns (..., n_mels, frames) with
        frames = 1 + (L - n_fft) // hop_length, in float64 for float64 input and float32
        otherwise (half-precision input is upcast: the power spectrum overflows fp16)."""
        if not waveform.is_floating_point() or waveform.ndim == 0:
            raise ValueError("waveform must be a floating-point tensor (..., L); got "
                             f"{waveform.dtype} of shape {tuple(waveform.shape)}")
        length = waveform.shape[-1]
        if length < self.n_fft:
            raise ValueError(f"waveform needs at least n_fft={self.n_fft} samples; "
                             f"got {length} (shape {tuple(waveform.shape)})")
        dtype = torch.float64 if waveform.dtype == torch.float64 else torch.float32
        x = waveform.to(dtype).reshape(-1, length)
        spec = torch.stft(x, self.n_fft, self.hop_length, window=self.window.to(dtype),
                          center=False, return_complex=True)  # (N, n_freqs, frames)
        power = torch.view_as_real(spec).pow(2).sum(-1)
        mel = self.mel_fb.to(dtype).mT @ power  # (N, n_mels, frames)
        return torch.log(mel + self.eps).reshape(*waveform.shape[:-1], *mel.shape[-2:])

    def extra_repr(self) -> str:
        return (f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, "
                f"hop_length={self.hop_length}, n_mels={self.n_mels}, f_min={self.f_min}, "
                f"f_max={self.f_max}, eps={self.eps}")
