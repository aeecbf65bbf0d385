"""benchmarks.mask_headroom: the masks it compares, on signals whose answers are known."""

import math

import numpy as np
import torch

from benchmarks.mask_headroom import fit_f_map, headroom, masks_for
from rtpulse.metrics import si_snr
from rtpulse.model import ModelConfig
from rtpulse.stream import enhance


def test_the_f_map_recovers_a_two_valued_logit_exactly():
    # bins are pure speech (S = X, f = −3) or pure noise (S = 0, f = +2): the best gain per f is 1 and 0, so the
    # f_map mask gives S exactly, as the IRM does
    g = torch.Generator().manual_seed(0)
    x = torch.complex(torch.randn(50, 30, generator=g), torch.randn(50, 30, generator=g))
    speech = torch.rand(50, 30, generator=g) > 0.5
    s = torch.where(speech, x, torch.zeros_like(x))
    f = torch.where(speech, torch.tensor(-3.0), torch.tensor(2.0))
    edges, gains = fit_f_map([f], [x], [s])
    m = masks_for(f, x, s, edges, gains)
    assert torch.equal(m["f_map"], speech.float())
    assert torch.allclose(m["irm"], speech.float())
    assert torch.allclose(m["soft"], torch.sigmoid(-f))
    # a gain above 1 is clipped: S = 2X in one group
    edges, gains = fit_f_map([f], [x], [torch.where(speech, 2 * x, torch.zeros_like(x))])
    assert float(gains.max()) == 1.0
    # the PU posterior 1 − e^f/2: 0 from f = log 2 up (noise for sure), 1/2 at f = 0, → 1 as f → −∞
    post = masks_for(torch.tensor([math.log(2), 5.0, 0.0, -20.0]), x[0, :4], s[0, :4], edges, gains)["posterior"]
    assert torch.allclose(post, torch.tensor([0.0, 0.0, 0.5, 1.0]), atol=1e-6)


class ToneDetector(torch.nn.Module):
    """Logits from |X|: speech (f = −8) where a bin is 20 dB above the frame's median, noise (f = +8) elsewhere."""

    lookahead = 0
    config = ModelConfig(mask_sharpness=0.5)  # the engine and headroom read the soft mask's sharpness from it

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        loud = mag > 10 * mag.median(dim=1, keepdim=True).values
        return torch.where(loud, -8.0, 8.0)[:, None]


def test_headroom_scores_as_the_engine_does_and_splits_noise_from_speech_bins():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    clean = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    noisy = (clean + 0.1 * rng.standard_normal(t.size)).astype(np.float32)
    model = ToneDetector()
    r = headroom(model, [noisy], [clean])
    x, s = torch.from_numpy(noisy), torch.from_numpy(clean)
    expected = float(si_snr(enhance(model, x, "soft"), s) - si_snr(x, s))  # the shipped engine's soft mask
    assert abs(r["soft"] - expected) < 1e-3
    assert expected > 10  # the tone kept, the white noise elsewhere removed
    assert r["irm"] > 15
    assert r["soft_on_speech_bins"] > 0.9 and r["soft_on_noise_bins"] < 0.1  # (the tone's skirts are speech bins too)


def test_the_tool_takes_the_quality_sets_filters_and_a_nan_model_is_one_line(tmp_path):
    import subprocess
    import sys

    from conftest import random_model, write_selection_root

    from rtpulse.model import save_model

    write_selection_root(tmp_path / "data", "dev")  # 4.5 s voices
    good, bad = tmp_path / "m.safetensors", tmp_path / "nan.safetensors"
    save_model(random_model("blocks2", 0), good)
    broken = random_model("blocks2", 0)
    with torch.no_grad():
        for p in broken.parameters():  # ±1e30: sums of +inf and −inf, its logits NaN
            p.copy_(torch.where(torch.rand(p.shape, generator=torch.Generator().manual_seed(0)) < 0.5, 1e30, -1e30))
    save_model(broken, bad)
    base = [sys.executable, "-m", "benchmarks.mask_headroom", "--data", str(tmp_path / "data"), "--count", "2",
            "--seconds", "1"]
    # the 4 s default of --min-speech-seconds is the quality benchmark's; a set made with another is rebuilt with it
    run = subprocess.run([*base, "-m", str(good), "--min-speech-seconds", "5"], check=False, capture_output=True,
                         text=True)
    assert run.returncode != 0 and "lower --min-speech-seconds" in run.stderr and "Traceback" not in run.stderr
    run = subprocess.run([*base, "-m", str(good), "--min-speech-seconds", "2"], check=False, capture_output=True,
                         text=True)
    assert run.returncode == 0 and f"| {good} | " in run.stdout, run.stderr
    run = subprocess.run([*base, "-m", str(bad)], check=False, capture_output=True, text=True)
    assert run.returncode != 0 and "NaN" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
