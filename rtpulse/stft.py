"""The one STFT of rtpulse: 16 kHz, 1024-sample frames, hop 256, periodic Hamming, 513 bins.

Framing convention shared by training, offline inference and streaming: frame m covers samples
[256·m − 768, 256·m + 256), i.e. the signal is preceded by 768 zeros — exactly what a streaming
ring buffer that starts empty sees. Every output sample in [0, T) is then covered by 4 frames, and the
overlap-add normalisation is the constant Σ w² over 4 shifts, which is also what ``torch.istft``
divides by on this region, so offline and streaming agree sample for sample.
"""

from __future__ import annotations

import torch

SAMPLE_RATE = 16_000
N_FFT = 1024
HOP = 256
N_BINS = N_FFT // 2 + 1
LEAD = N_FFT - HOP  # zeros before the signal so that sample 0 sits in 4 frames


def window(device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.hamming_window(N_FFT, periodic=True, device=device, dtype=dtype)


def ola_norm(win: torch.Tensor) -> torch.Tensor:
    """Σ_m w²(n − m·HOP) over the 4 overlapping frames: constant for a periodic Hamming at hop N/4."""
    return (win**2).reshape(N_FFT // HOP, HOP).sum(0)  # [HOP], all equal (1.5896 for Hamming)


def n_frames(length: int, tail: int = 0) -> int:
    """Frames that cover ``length`` samples plus ``tail`` extra samples of zero padding."""
    return (LEAD + length + tail + HOP - 1) // HOP - (N_FFT // HOP - 1)


def stft(x: torch.Tensor, tail: int = 0) -> torch.Tensor:
    """Signal ``[..., T]`` → complex spectrogram ``[..., 513, M]`` with the framing above.

    ``tail`` zero samples are appended first (streaming needs future frames past the end of a signal).
    """
    length = x.shape[-1]
    m = n_frames(length, tail)
    total = N_FFT + HOP * (m - 1)
    x = torch.nn.functional.pad(x, (LEAD, total - LEAD - length))
    return torch.stft(
        x.reshape(-1, total), N_FFT, HOP, window=window(x.device, x.dtype), center=False, return_complex=True
    ).reshape(*x.shape[:-1], N_BINS, m)


def istft(spec: torch.Tensor, length: int) -> torch.Tensor:
    """Complex spectrogram ``[..., 513, M]`` → signal ``[..., length]`` (inverse of :func:`stft`)."""
    m = spec.shape[-1]
    total = N_FFT + HOP * (m - 1)
    real = torch.float32 if spec.dtype == torch.complex64 else torch.float64
    y = torch.istft(
        spec.reshape(-1, N_BINS, m), N_FFT, HOP, window=window(spec.device, real), center=False, length=total
    )
    return y[..., LEAD : LEAD + length].reshape(*spec.shape[:-2], length)


class StreamingSTFT:
    """Per-hop analysis and synthesis with the same window and normalisation as :func:`stft`/:func:`istft`.

    ``analyze(hop)``: push 256 new samples into the 1024-sample ring → complex frame ``[513]``.
    ``synthesize(frame)``: overlap-add one (masked) frame → the 256 samples it completes.
    The synthesised samples lag the analysed ones by one frame minus a hop (768 samples).
    """

    def __init__(self) -> None:
        self.win = window()
        self.norm = ola_norm(self.win)
        self.reset()

    def reset(self) -> None:
        self.ring = torch.zeros(N_FFT)
        self.ola = torch.zeros(N_FFT)

    def analyze(self, hop: torch.Tensor) -> torch.Tensor:
        self.ring = torch.cat((self.ring[HOP:], hop))  # [N_FFT], newest samples last
        return torch.fft.rfft(self.ring * self.win)  # [513] complex

    def synthesize(self, frame: torch.Tensor) -> torch.Tensor:
        self.ola += torch.fft.irfft(frame, n=N_FFT) * self.win
        done = self.ola[:HOP] / self.norm  # [HOP]: all 4 frames that touch these samples are in
        self.ola = torch.cat((self.ola[HOP:], torch.zeros(HOP)))
        return done
