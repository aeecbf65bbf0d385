import numpy as np
import pytest
import torch
from conftest import random_model
from torch.utils.flop_counter import FlopCounterMode

from rtpulse.errors import RtpulseError
from rtpulse.model import ModelConfig, PulseCNN, count_parameters, load_model, save_model


@pytest.mark.parametrize(
    "preset, params, rf_f, rf, max_la",
    [("paper", 98_425, 17, 17, 8), ("blocks2", 18_073, 13, 13, 6), ("blocks3", 73_529, 17, 17, 8),
     ("blocks2f", 18_073, 65, 13, 6)],
)
def test_preset_size_and_receptive_field(preset, params, rf_f, rf, max_la):
    model = PulseCNN(ModelConfig(preset=preset))
    assert count_parameters(model) == params
    assert model.receptive_field == (rf_f, rf)
    assert model.config.max_lookahead == max_la
    # Measure the receptive field: perturb one input bin, see which outputs move (offline, L = max → symmetric).
    m = random_model(preset, lookahead=max_la)
    mag = torch.rand(1, 513, 40) + 1.0
    base = m(mag)
    bumped = mag.clone()
    bumped[0, 200, 20] += 5.0
    moved = (m(bumped) - base).abs()[0, 0] > 0
    f_idx, t_idx = moved.nonzero(as_tuple=True)
    assert (f_idx.max() - f_idx.min() + 1, t_idx.max() - t_idx.min() + 1) == (rf_f, rf)
    assert (t_idx.min().item(), t_idx.max().item()) == (20 - (rf - 1) // 2, 20 + (rf - 1) // 2)


@pytest.mark.parametrize("lookahead", [0, 2, 8])
def test_time_dilated_preset_sees_57_frames_and_keeps_lookahead_out_of_its_dilated_layers(lookahead):
    """blocks3t: blocks3 + 64→64 layers dilated 4 and 16 in time → 17 + 8 + 32 = 57 frames; only the past grows."""
    model = PulseCNN(ModelConfig(preset="blocks3t", lookahead=lookahead))
    assert count_parameters(model) == 73_529 + 2 * (64 * 64 * 9 + 64)
    assert model.receptive_field == (21, 57) and model.config.max_lookahead == 8
    assert model.past_frames == 56 - lookahead
    m = random_model("blocks3t", lookahead=lookahead)
    mag = torch.rand(1, 513, 120) + 1.0
    bumped = mag.clone()
    bumped[0, 200, 40] += 5.0
    moved_t = ((m(bumped) - m(mag)).abs()[0, 0] > 0).any(0).nonzero().flatten()
    assert (moved_t.min().item(), moved_t.max().item()) == (40 - lookahead, 40 - lookahead + 56)
    with pytest.raises(RtpulseError, match="lookahead must be 0…8"):
        ModelConfig(preset="blocks3t", lookahead=9)


@pytest.mark.parametrize("lookahead", [0, 2, 6])
def test_lookahead_is_causality(lookahead):
    """Output frame t must not depend on input frames beyond t + lookahead."""
    m = random_model("blocks2", lookahead=lookahead)
    mag = torch.rand(1, 513, 30) + 1.0
    base = m(mag)
    bumped = mag.clone()
    bumped[..., 20] += 5.0
    moved_t = ((m(bumped) - base).abs()[0, 0] > 0).any(0).nonzero().flatten()
    assert moved_t.min().item() == 20 - lookahead


def test_invalid_config_is_a_clear_error():
    with pytest.raises(RtpulseError, match="lookahead"):
        ModelConfig(preset="blocks2", lookahead=7)
    with pytest.raises(RtpulseError, match="preset"):
        ModelConfig(preset="huge")


@pytest.mark.parametrize("compress", ["power", "linear", "log1p"])
def test_features(compress):
    m = PulseCNN(ModelConfig(compress=compress))
    mag = torch.tensor([[0.0, 1.0, 15.0, 32768.0]])
    expected = {"power": mag ** (1 / 15), "linear": mag / 15, "log1p": torch.log1p(mag)}[compress]
    assert torch.allclose(m.features(mag)[:, 0], expected)


def test_save_load_round_trip(tmp_path):
    m = random_model("paper", lookahead=2, compress="power", method="pu")
    path = tmp_path / "m.safetensors"
    save_model(m, path)
    loaded = load_model(path)
    assert loaded.config == m.config
    mag = torch.rand(1, 513, 12)
    assert torch.equal(loaded(mag), m(mag))
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temp file


def test_load_rejects_non_model_file(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(RtpulseError) as e:
        load_model(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("preset, lookahead", [("paper", 0), ("paper", 8), ("blocks2", 0), ("blocks3t", 2)])
def test_step_costs_one_column_per_layer(preset, lookahead):
    """A streaming step's FLOPs equal exactly one output column per layer — no receptive-field recompute."""
    m = random_model(preset, lookahead)
    state = m.init_state()
    for _ in range(lookahead + 1):  # past the warm-up so every layer runs
        m.step(torch.rand(1, 513), state)
    with FlopCounterMode(display=False) as counter:
        m.step(torch.rand(1, 513), state)
    per_column = sum(2 * 513 * cin * cout * k * k for cin, cout, k in m.config.layers)
    assert counter.get_total_flops() == per_column


def test_level_gain_of_unit_std_white_noise_is_one():
    """The normaliser's reference is the mean |X|² of a unit-std signal's frame, Σw² = 1024·(0.54² + 0.46²/2) for a
    Hamming window (Parseval): white noise of std 1 needs no gain, of std 4 a gain of 1/4."""
    from rtpulse.stft import stft

    model = PulseCNN(ModelConfig(preset="blocks2", level_frames=125)).eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(16000 * 6).astype(np.float32))
    for std in (1.0, 4.0):
        gain = model.level_gain(stft(std * x)[None].abs())[0, 0, 125:]  # once the window is full
        assert float(gain.median()) == pytest.approx(1 / std, rel=0.03)
