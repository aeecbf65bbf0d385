import numpy as np
import pytest
import torch

from rtpulse.stft import HOP, N_BINS, N_FFT, StreamingSTFT, istft, ola_norm, stft, window


def test_window_is_periodic_hamming_and_ola_constant():
    w = window()
    n = torch.arange(N_FFT)
    assert torch.allclose(w, 0.54 - 0.46 * torch.cos(2 * torch.pi * n / N_FFT), atol=1e-6)
    norm = ola_norm(w)
    # Σ w² over 4 shifts of a periodic Hamming is 4·(0.54² + 0.46²/2) everywhere
    assert torch.allclose(norm, torch.full((HOP,), 4 * (0.54**2 + 0.46**2 / 2)), atol=1e-5)


@pytest.mark.parametrize("length", [1, 255, 256, 1000, 16000, 16001])
def test_perfect_reconstruction(length):
    x = torch.randn(2, length)
    spec = stft(x)
    assert spec.shape[:2] == (2, N_BINS)
    assert torch.max(torch.abs(istft(spec, length) - x)) < 1e-5


def test_streaming_stft_matches_offline_frames_and_reconstructs():
    x = torch.randn(40 * HOP)
    spec = stft(x)  # frame m covers [256m − 768, 256m + 256)
    s = StreamingSTFT()
    frames, out = [], []
    for m in range(40):
        frames.append(s.analyze(x[m * HOP : (m + 1) * HOP]))
        out.append(s.synthesize(frames[-1]))
    assert torch.allclose(torch.stack(frames, -1), spec[:, :40], atol=1e-4)
    y = torch.cat(out)  # lags the input by 768 samples
    np.testing.assert_allclose(y[768:].numpy(), x[: -768].numpy(), atol=1e-5)
