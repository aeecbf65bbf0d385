"""The noise-floor inputs (ModelConfig.floor_frames): the tracker on hand-computed powers, its reach back in time
(stream = offline is in test_stream.py), refusing to drop them from a trained model, and training crops with tracker history."""

import math

import numpy as np
import pytest
import torch
from conftest import random_model

from rtpulse.errors import RtpulseError
from rtpulse.model import FLOOR_EPS, FLOOR_RATIO_SCALE, ModelConfig, PulseCNN, save_model
from rtpulse.stft import HOP
from trainer.config import TrainConfig
from trainer.data import Batch
from trainer.train import build_model, compute_loss, context_frames, pu_logits


def test_floor_is_the_min_of_four_frame_means_over_the_last_k_frames():
    m = PulseCNN(ModelConfig(floor_frames=3))
    power = torch.tensor([[[4.0, 8.0, 0.0, 0.0, 12.0, 0.0]]])
    # means over the ≤ 4 frames that exist: 4, 6, 4, 3, 5, 3; mins over the ≤ 3 latest means: 4, 4, 4, 3, 3, 3
    assert m.noise_floor(power).tolist() == [[[4.0, 4.0, 4.0, 3.0, 3.0, 3.0]]]


def test_floor_channels_are_the_compressed_floor_and_the_scaled_log_ratio():
    m = PulseCNN(ModelConfig(floor_frames=3, compress="linear"))  # level normaliser off: gain 1
    mag = torch.tensor([[[2.0, 8.0 ** 0.5, 0.0, 0.0, 12.0 ** 0.5, 0.0]]])
    x = m.features(mag)  # [1, 3, 1, 6]
    floor = torch.tensor([4.0, 4.0, 4.0, 3.0, 3.0, 3.0])
    assert x.shape == (1, 3, 1, 6)
    torch.testing.assert_close(x[0, 0, 0], mag[0, 0] / 15)
    torch.testing.assert_close(x[0, 1, 0], floor.sqrt() / 15)
    want = torch.log((mag[0, 0] ** 2 + FLOOR_EPS) / (floor + FLOOR_EPS)) * FLOOR_RATIO_SCALE
    torch.testing.assert_close(x[0, 2, 0], want)
    # 8 over a floor of 4 (FLOOR_EPS ≈ 4e-4 is negligible beside them)
    assert x[0, 2, 0, 1].item() == pytest.approx(math.log(2.0) * FLOOR_RATIO_SCALE, rel=1e-4)


def test_floor_frames_must_be_in_range():
    for bad in (-1, 1001, 2.5):
        with pytest.raises(RtpulseError, match="floor_frames"):
            ModelConfig(floor_frames=bad)
    assert ModelConfig(floor_frames=5).layers[0][0] == 3 and ModelConfig().layers[0][0] == 1


def test_the_floor_reaches_back_k_frames_and_no_further():
    torch.manual_seed(0)
    m = random_model("blocks2", 0, floor_frames=30)
    mag = torch.rand(1, 513, 120) + 0.5
    base = m(mag)
    bumped = mag.clone()
    bumped[:, :, 10] *= 0.01  # a quiet frame lowers the floor of the frames whose window holds it
    moved = ((m(bumped) - base).abs()[0, 0] > 1e-6).any(0).nonzero().flatten()
    # frame 10's 4-frame means are frames 10…13; their mins reach 29 frames on: frame 42; the convs add 12
    assert moved.min().item() == 10 and moved.max().item() == 13 + 29 + 12
    assert m.past_frames == 12 + 30 + 4 - 2 == moved.max() - moved.min()  # chunked files need exactly this much


def test_a_floor_input_model_cannot_start_a_run_without_them(tmp_path):
    # growing the floor inputs into a trained model: test_freq_input.py (same logits, by input name)
    cfg = {"out": str(tmp_path / "run"), "clean": "c", "noise": "n", "dropout": 0.0}
    save_model(build_model(TrainConfig(**cfg, floor_frames=30)), tmp_path / "big.safetensors")
    with pytest.raises(RtpulseError, match="give --floor-frames"):
        build_model(TrainConfig(**cfg, init_from=str(tmp_path / "big.safetensors")))


def test_context_frames_feed_the_trackers_but_carry_no_logits_and_no_loss():
    torch.manual_seed(0)
    mag = torch.rand(1, 513, 50) + 0.1
    plain = random_model("blocks2", 1)
    torch.testing.assert_close(plain(mag, 20), plain(mag[..., 20:]))  # no trackers: context is just dropped
    tracked = random_model("blocks2", 1, floor_frames=30)
    assert tracked(mag, 20).shape == (1, 1, 513, 30)
    assert not torch.allclose(tracked(mag, 20), tracked(mag[..., 20:]))  # the floor remembers the context
    # a trainer batch: zero context in front of the clips gives exactly the loss of the clips alone
    cfg = TrainConfig(out="r", clean="c", noise="n", context_seconds=0.3, dropout=0.0, level_frames=10)
    ctx = context_frames(cfg)
    assert ctx == 4800 // HOP
    rng = np.random.default_rng(1)
    u, p = (torch.from_numpy(rng.standard_normal((2, 4000)).astype(np.float32)) for _ in range(2))
    pad = torch.zeros(2, ctx * HOP)
    model = random_model("blocks2", 0)  # no trackers of its own: the zeros must change nothing
    with_ctx, _ = compute_loss(model, Batch(u=torch.cat((pad, u), 1), p=torch.cat((pad, p), 1)), cfg)
    alone, _ = compute_loss(model, Batch(u=u, p=p), TrainConfig(out="r", clean="c", noise="n", dropout=0.0))
    torch.testing.assert_close(with_ctx, alone)


def test_p_clips_can_take_the_level_gain_of_the_u_clips():
    model = build_model(TrainConfig(out="r", clean="c", noise="n", level_frames=30, init="he", dropout=0.0))
    mag_u = torch.rand(2, 513, 40) + 0.2
    mag_p = 0.5 * mag_u  # a noise clip at half the level of the mixture beside it
    mag = torch.cat((mag_u, mag_p))
    own = pu_logits(model, mag, TrainConfig(out="r", clean="c", noise="n"))
    # its own gain brings the P clip back to full level: the level normaliser hides the 6 dB
    torch.testing.assert_close(own[2:], own[:2])
    with_u = pu_logits(model, mag, TrainConfig(out="r", clean="c", noise="n", p_gain="u"))
    torch.testing.assert_close(with_u[:2], own[:2])  # U clips are unchanged
    torch.testing.assert_close(with_u[2:], model(mag_p, 0, model.level_gain(mag_u))[:, 0])
    assert (with_u[2:] - own[2:]).abs().mean() > 0.1  # and the P clip is seen 6 dB down, as inside a mixture
    for bad in ({"p_gain": "x"}, {"p_gain": "u"}, {"p_gain": "u", "level_frames": 30, "method": "pn"}):
        with pytest.raises(RtpulseError, match="p-gain"):
            TrainConfig(out="r", clean="c", noise="n", **bad).validate()
