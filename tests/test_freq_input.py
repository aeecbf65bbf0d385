"""The frequency input (ModelConfig.freq_input): what the channel holds, that it breaks the convolutions' shift
invariance across frequency, and growing it (by input name) into trained models (stream = offline is in
test_stream.py)."""

import dataclasses

import pytest
import torch
from conftest import random_model

from rtpulse.errors import RtpulseError
from rtpulse.model import ModelConfig, PulseCNN, load_model, save_model
from trainer.config import TrainConfig
from trainer.train import build_model


def test_the_frequency_channel_runs_from_minus_3_at_dc_to_3_at_nyquist_in_every_frame():
    m = random_model("blocks2", 0, freq_input=True, compress="linear")
    mag = torch.rand(2, 513, 7)
    x = m.features(mag)
    assert x.shape == (2, 2, 513, 7)
    torch.testing.assert_close(x[:, 0], mag / 15)
    assert x[0, 1, 0, 3].item() == -3.0 and x[1, 1, 512, 0].item() == 3.0 and x[0, 1, 256, 6].item() == 0.0
    torch.testing.assert_close(x[1, 1, 128], torch.full((7,), -1.5))  # 2 kHz: a quarter of the way
    assert ModelConfig(freq_input=True).layers[0][0] == 2
    assert ModelConfig(freq_input=True, floor_frames=5).input_names == ("magnitude", "floor", "floor_snr", "frequency")
    with pytest.raises(RtpulseError, match="freq_input"):
        ModelConfig(freq_input=1)


def test_only_the_frequency_input_tells_bins_of_a_flat_spectrum_apart():
    flat = torch.ones(1, 513, 30)  # the same local pattern at every bin
    for freq_input, alike in ((False, True), (True, False)):
        logits = random_model("blocks2", 0, freq_input=freq_input)(flat)[0, 0, 20:-20, -1]  # away from the edges
        assert (logits.max() - logits.min() < 1e-5) == alike


@pytest.mark.parametrize("start, grown", [
    ({}, {"floor_frames": 30}),
    ({}, {"freq_input": True}),
    ({"floor_frames": 30}, {"floor_frames": 30, "freq_input": True}),
    ({"freq_input": True}, {"floor_frames": 30, "freq_input": True}),  # the frequency weights move to channel 3
    ({"freq_input": True}, {"freq_input": True, "band_input": True}),
])
def test_a_trained_model_grows_new_inputs_with_the_same_logits(tmp_path, start, grown):
    cfg = {"out": str(tmp_path / "run"), "clean": "c", "noise": "n", "compress": "linear", "lookahead": 2,
           "level_frames": 20, "init": "he", "dropout": 0.0}
    small = build_model(TrainConfig(**cfg, **start, seed=3))
    save_model(small, tmp_path / "small.safetensors")
    big = build_model(TrainConfig(**cfg, **grown, init_from=str(tmp_path / "small.safetensors")))
    assert big.config.input_names == ModelConfig(**grown).input_names
    mag = torch.rand(2, 513, 80) * 3
    with torch.no_grad():
        want = small(mag)
    got = big(mag)
    assert want.abs().mean() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got.sum().backward()
    new = [i for i, name in enumerate(big.config.input_names) if name not in small.config.input_names]
    assert big.convs[0].weight.grad[:, new].abs().sum() > 0  # the zero weights on the new inputs will learn
    save_model(big, tmp_path / "big.safetensors")
    assert load_model(tmp_path / "big.safetensors").config.input_names == big.config.input_names


def test_a_frequency_input_model_cannot_start_a_run_without_it(tmp_path):
    cfg = {"out": str(tmp_path / "run"), "clean": "c", "noise": "n", "dropout": 0.0}
    save_model(build_model(TrainConfig(**cfg, freq_input=True)), tmp_path / "f.safetensors")
    with pytest.raises(RtpulseError, match="give --freq-input"):
        build_model(TrainConfig(**cfg, floor_frames=10, init_from=str(tmp_path / "f.safetensors")))


def test_inputs_are_added_only_within_a_preset_and_the_refusal_names_both(tmp_path):
    cfg = {"out": str(tmp_path / "run"), "clean": "c", "noise": "n", "dropout": 0.0}
    save_model(build_model(TrainConfig(**cfg, preset="blocks2")), tmp_path / "b2.safetensors")
    with pytest.raises(RtpulseError, match="same preset only \\(it is 'blocks2', this run 'blocks3'\\)"):
        build_model(TrainConfig(**cfg, preset="blocks3", freq_input=True, init_from=str(tmp_path / "b2.safetensors")))


def test_freq_scale_sets_the_channels_range_and_is_validated():
    m = random_model("blocks2", 0, freq_input=True, freq_scale=30.0)
    x = m.features(torch.rand(1, 513, 4))
    assert x[0, 1, 0, 0].item() == -30.0 and x[0, 1, 512, 3].item() == 30.0
    for bad in (0.0, -3.0, 1e9, True, "3"):
        with pytest.raises(RtpulseError, match="freq_scale"):
            ModelConfig(freq_input=True, freq_scale=bad)


@pytest.mark.parametrize("start_scale, new_scale, added", [(3.0, 30.0, {}), (30.0, 3.0, {}),
                                                          (3.0, 30.0, {"floor_frames": 30})])  # channel 1 → 3
def test_a_run_with_another_freq_scale_starts_with_the_same_logits(tmp_path, start_scale, new_scale, added):
    cfg = {"out": str(tmp_path / "run"), "clean": "c", "noise": "n", "compress": "linear", "lookahead": 2,
           "init": "he", "dropout": 0.0, "freq_input": True, "level_frames": 20}
    small = build_model(TrainConfig(**cfg, freq_scale=start_scale, seed=3))
    with torch.no_grad():  # the frequency weights matter: make them as large as the magnitude's
        small.convs[0].weight[:, 1] = small.convs[0].weight[:, 0].flip(0) / start_scale
    save_model(small, tmp_path / "small.safetensors")
    big = build_model(TrainConfig(**cfg, **added, freq_scale=new_scale, init_from=str(tmp_path / "small.safetensors")))
    assert big.config.freq_scale == new_scale
    mag = torch.rand(1, 513, 40) * 3
    with torch.no_grad():
        want, got = small(mag), big(mag)
        unscaled = PulseCNN(dataclasses.replace(small.config, freq_scale=new_scale)).eval()
        unscaled.load_state_dict(small.state_dict())  # the same weights without the rescale: other logits
        assert (unscaled(mag) - want).abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
