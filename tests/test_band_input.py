"""The band inputs (ModelConfig.band_input): what the four channels hold, that they let a bin's logit depend on
the spectrum far beyond a layer stack's view, and refusing a run that would drop them (growing them into a
trained model with the same logits: test_freq_input.py; stream = offline: test_stream.py)."""

import pytest
import torch
from conftest import random_model

from rtpulse.errors import RtpulseError
from rtpulse.model import ModelConfig, save_model
from trainer.config import TrainConfig
from trainer.train import build_model


def test_the_band_channels_hold_each_frames_mean_input_per_band_times_3_at_every_bin():
    m = random_model("blocks2", 0, freq_input=True, band_input=True, compress="linear")
    assert m.config.input_names == ("magnitude", "frequency", "band_0_1k", "band_1_2k", "band_2_4k", "band_4_8k")
    mag = torch.rand(2, 513, 7) * 4
    x = m.features(mag)
    assert x.shape == (2, 6, 513, 7)
    for channel, (lo, hi) in zip(range(2, 6), ((0, 64), (64, 128), (128, 256), (256, 513))):  # 15.625 Hz per bin
        want = (mag[:, lo:hi] / 15).mean(1) * 3  # [B, T], by hand
        torch.testing.assert_close(x[:, channel, 0], want)
        torch.testing.assert_close(x[:, channel, 400], want)  # the same at every bin
    with pytest.raises(RtpulseError, match="band_input"):
        ModelConfig(band_input=1)


def test_only_the_band_inputs_let_a_6_khz_logit_hear_what_happens_below_1_khz():
    mag = torch.rand(1, 513, 40)
    louder_low = mag.clone()
    louder_low[:, :64] *= 4  # 0–1 kHz only: 335 bins away from bin 400, far outside a 13-bin view
    for band_input in (False, True):
        m = random_model("blocks2", 0, band_input=band_input)
        with torch.no_grad():
            moved = (m(louder_low) - m(mag))[0, 0, 400, -1].abs().item()
        assert (moved > 1e-4) == band_input


def test_a_band_input_model_cannot_start_a_run_without_them(tmp_path):
    cfg = {"out": str(tmp_path / "run"), "clean": "c", "noise": "n", "dropout": 0.0}
    save_model(build_model(TrainConfig(**cfg, band_input=True)), tmp_path / "b.safetensors")
    with pytest.raises(RtpulseError, match="give --band-input"):
        build_model(TrainConfig(**cfg, freq_input=True, init_from=str(tmp_path / "b.safetensors")))
