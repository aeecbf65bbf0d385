from pathlib import Path

import numpy as np
import pytest
import torch

from rtpulse.model import ModelConfig, PulseCNN
from rtpulse.stft import stft


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def random_model(preset: str = "blocks2", lookahead: int = 0, spread: float = 2.0, **kw) -> PulseCNN:
    """A random-weight model in eval mode whose logits on :func:`noisy_signal` have median 0 and std ``spread`` (per
    output channel).

    PyTorch's default init gives logits within ~0.1 of each other, out of much larger activations: the binary
    mask is then all ones or all zeros and the soft one ~0.5 everywhere, so a test of the masking path could not
    tell a mask from a constant. He init and a rescaled last layer (no activation follows it) spread them: about
    half the bins are kept.
    """
    torch.manual_seed(1234)
    model = PulseCNN(ModelConfig(preset=preset, lookahead=lookahead, **kw)).eval()
    with torch.no_grad():
        for conv in model.convs:  # He init, as `rtpulse train --init he`: no cancellation of large activations
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            torch.nn.init.normal_(conv.bias, std=0.01)
        logits = model(stft(torch.from_numpy(noisy_signal()))[None].abs())[0].flatten(1)  # [C, F·T]
        scale = spread / logits.std(1).clamp_min(1e-12)  # per output channel
        last = model.convs[-1]
        last.weight.mul_(scale[:, None, None, None])
        last.bias.mul_(scale).sub_(logits.median(1).values * scale)
    return model


def noisy_signal(seconds: float = 1.0, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A harmonic 'voice' with vibrato plus white noise: float32, peak < 1."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2)
    return (0.2 * voice + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def write_selection_root(root, split: str) -> Path:
    """A data root as the quality benchmark reads it: 3 voices with pauses (a quiet noise floor) in ``speech/SPLIT``
    and 3 white noises in ``noise/SPLIT``. Returns ``root``."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    for part in ("speech", "noise"):
        (root / part / split).mkdir(parents=True)
    for i in range(3):
        voice = noisy_signal(4.5, seed=i) * (np.arange(72000) % 16000 < 12000)
        sf.write(root / "speech" / split / f"s{i}.wav", voice.astype("float32"), 16000)
        sf.write(root / "noise" / split / f"n{i}.wav", 0.1 * rng.standard_normal(32000).astype("float32"), 16000)
    return root


def write_tiny_corpus(root) -> None:
    """root/clean: 3 gated tones of 1 s (one 'voice' each); root/noise: 3 white noises of 1 s; 16 kHz WAV."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    for d in ("clean", "noise"):
        (root / d).mkdir(parents=True)
    for i in range(3):
        voice = 0.3 * np.sin(2 * np.pi * (180 + 40 * i) * t) * (np.sin(2 * np.pi * 3 * t) > 0)
        sf.write(root / "clean" / f"s{i}.wav", voice.astype(np.float32), 16000)
        sf.write(root / "noise" / f"n{i}.wav", (0.1 * rng.standard_normal(t.size)).astype(np.float32), 16000)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Per-hop streaming work is many tiny ops: one thread is faster and does not fight other processes."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
