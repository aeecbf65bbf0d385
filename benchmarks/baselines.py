"""Classic single-channel baselines on rtpulse's own STFT: power spectral subtraction and a Wiener filter
with decision-directed a-priori SNR (Ephraim & Malah 1984). Offline, zero delay, 16 kHz ``[T]`` → ``[T]``.

The noise power spectrum is the mean power of the quietest frames (lowest total energy), so it needs
speech pauses, as real recordings have; a signal that never pauses is treated as noise.
"""

from __future__ import annotations

import numpy as np
import torch

from rtpulse.stft import istft, stft


def noise_psd(power: torch.Tensor, quiet_fraction: float = 0.15) -> torch.Tensor:
    """Power ``[513, M]`` → noise power per bin ``[513]``: mean over the quietest ``quiet_fraction`` of frames."""
    energy = power.sum(0)  # [M]
    k = max(1, round(quiet_fraction * energy.numel()))
    quiet = torch.argsort(energy)[:k]
    return power[:, quiet].mean(1).clamp_min(1e-12)


def _spec(x: np.ndarray) -> torch.Tensor:
    return stft(torch.from_numpy(np.asarray(x, np.float32).reshape(-1)).double())  # [513, M] complex128


def spectral_subtraction(x: np.ndarray, over: float = 2.0, floor_db: float = -20.0) -> np.ndarray:
    """Power subtraction: G = sqrt(max(1 − over·N/|X|², floor²)). ``[T]`` → ``[T]`` float32."""
    spec = _spec(x)
    power = spec.abs() ** 2
    noise = noise_psd(power)[:, None]
    floor = 10.0 ** (floor_db / 20.0)
    gain = torch.sqrt((1.0 - over * noise / power.clamp_min(1e-12)).clamp_min(floor**2))
    return istft(spec * gain, x.size).float().numpy()


def wiener(x: np.ndarray, alpha: float = 0.98, floor_db: float = -20.0) -> np.ndarray:
    """Wiener gain ξ/(1+ξ), ξ decision-directed: α·G²(t−1)·γ(t−1) + (1−α)·max(γ(t) − 1, 0). ``[T]`` → ``[T]``."""
    spec = _spec(x)
    power = spec.abs() ** 2  # [513, M]
    gamma = power / noise_psd(power)[:, None]  # a-posteriori SNR
    floor = 10.0 ** (floor_db / 20.0)
    gains = torch.empty_like(gamma)
    prev = torch.zeros(gamma.shape[0], dtype=gamma.dtype)  # G²γ of the previous frame
    for t in range(gamma.shape[1]):
        xi = alpha * prev + (1 - alpha) * (gamma[:, t] - 1).clamp_min(0)
        g = (xi / (1 + xi)).clamp_min(floor)
        gains[:, t] = g
        prev = g**2 * gamma[:, t]
    return istft(spec * gains, x.size).float().numpy()


BASELINES = {"Spectral subtraction": spectral_subtraction, "Wiener (DD)": wiener}
