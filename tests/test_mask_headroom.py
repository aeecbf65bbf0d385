"""benchmarks.mask_headroom: the masks it compares, on signals whose answers are known."""

import math

import numpy as np
import torch

from benchmarks.mask_headroom import fit_monotone_map, headroom, masks_for
from rtpulse.model import ModelConfig, PulseCNN


def test_the_monotone_map_recovers_a_two_valued_logit_exactly():
    # bins are pure speech (S = X, f = −3) or pure noise (S = 0, f = +2): the best gain per f is 1 and 0, so the
    # monotone mask gives S exactly, as the IRM does
    g = torch.Generator().manual_seed(0)
    x = torch.complex(torch.randn(50, 30, generator=g), torch.randn(50, 30, generator=g))
    speech = torch.rand(50, 30, generator=g) > 0.5
    s = torch.where(speech, x, torch.zeros_like(x))
    f = torch.where(speech, torch.tensor(-3.0), torch.tensor(2.0))
    edges, gains = fit_monotone_map([f], [x], [s])
    m = masks_for(f, x, s, edges, gains)
    assert torch.equal(m["monotone"], speech.float())
    assert torch.allclose(m["irm"], speech.float())
    assert torch.allclose(m["soft"], torch.sigmoid(-f))
    # the PU posterior 1 − e^f/2: 0 from f = log 2 up (noise for sure), → 1 as f → −∞
    post = masks_for(torch.tensor([math.log(2), 5.0, -20.0]), x[0, :3], s[0, :3], edges, gains)["posterior"]
    assert torch.allclose(post, torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)


def test_headroom_scores_the_ideal_mask_far_above_the_input_on_a_tone_in_noise():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    clean = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    noisy = (clean + 0.3 * rng.standard_normal(t.size)).astype(np.float32)  # −3 dB SNR, white
    torch.manual_seed(0)
    model = PulseCNN(ModelConfig(preset="blocks2", compress="linear")).eval()
    r = headroom(model, [noisy], [clean])
    assert r["irm"] > 15  # one tone bin kept, the white noise elsewhere removed
    assert 0 <= r["soft_on_noise_bins"] <= 1 and 0 <= r["soft_on_speech_bins"] <= 1
    assert r["monotone"] >= r["soft"] - 0.5  # the fitted map is at least about as good as the raw σ(−f)
