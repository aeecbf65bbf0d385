import numpy as np
import pytest
import torch

from rtpulse.model import ModelConfig, PulseCNN


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def random_model(preset: str = "blocks2", lookahead: int = 0, **kw) -> PulseCNN:
    """A random-weight model in eval mode, with output logits spread around 0 so masks are mixed."""
    torch.manual_seed(1234)
    return PulseCNN(ModelConfig(preset=preset, lookahead=lookahead, **kw)).eval()


def noisy_signal(seconds: float = 1.0, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A harmonic 'voice' with vibrato plus white noise: float32, peak < 1."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2)
    return (0.2 * voice + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Per-hop streaming work is many tiny ops: one thread is faster and does not fight other processes."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
