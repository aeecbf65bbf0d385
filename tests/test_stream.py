import math

import numpy as np
import pytest
import torch
from conftest import noisy_signal, random_model

from rtpulse.stft import stft
from rtpulse.stream import StreamingDenoiser, enhance, mask_gain, stream_offline_equivalent, tail_for_lookahead

CHUNKINGS = [1, 100, 256, 1000, "random"]


def run_stream(engine: StreamingDenoiser, x: np.ndarray, chunking, seed: int = 0) -> np.ndarray:
    """Feed x in the given chunking, then flush: returns len(x) + delay samples."""
    rng = np.random.default_rng(seed)
    out, i = [], 0
    while i < x.size:
        n = int(rng.integers(1, 3000)) if chunking == "random" else chunking
        piece = engine.process(x[i : i + n])
        assert piece.size == x[i : i + n].size  # sample in, sample out
        out.append(piece)
        i += n
    out.append(engine.flush())
    return np.concatenate(out)


def move_logits_off_zero(m, x: np.ndarray, window: float = 0.5) -> float:
    """Shift the last bias so that no logit on ``x`` lies near 0; returns the smallest |logit| left.

    Streaming sums the convolutions in another order than offline: the logits differ by ~3e-5 (float32), and a
    bin whose logit is that close to 0 flips a binary mask. The shift puts 0 in the widest gap between the logits
    within ±``window``, so the binary comparison tests the engine, not float rounding.
    """
    spec = stft(torch.from_numpy(x)[None], tail=tail_for_lookahead(x.size, m.lookahead) + 8 * 256)
    with torch.no_grad():
        f = m(spec.abs())[0, 0].flatten()
        near = torch.sort(torch.cat((f[f.abs() < window], torch.tensor([-window, window])))).values
        i = int(torch.argmax(near.diff()))
        m.convs[-1].bias.sub_(float(near[i] + near[i + 1]) / 2)
        return float((m(spec.abs())[0, 0]).abs().min())


def pass_through_model(preset="blocks2", lookahead=0):
    """Every logit strongly negative → binary mask of ones."""
    m = random_model(preset, lookahead)
    with torch.no_grad():
        m.convs[-1].weight.zero_()
        m.convs[-1].bias.fill_(-10.0)
    return m


@pytest.mark.parametrize("lookahead", [0, 3])
def test_identity_mask_reconstructs_input(lookahead):
    x = noisy_signal(1.0)
    m = pass_through_model("blocks2", lookahead)
    off = enhance(m, torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(off, x, atol=1e-5)
    engine = StreamingDenoiser(m)
    y = run_stream(engine, x, 256)
    assert y.size == x.size + engine.delay
    assert np.max(np.abs(y[engine.delay :] - x)) <= 1e-5
    assert np.all(y[: engine.delay] == 0)  # nothing comes out before the signal starts


@pytest.mark.parametrize("preset, lookahead", [("paper", 0), ("paper", 2), ("paper", 8), ("blocks2", 0),
                                               ("blocks2", 2), ("blocks2", 6), ("blocks2f", 2)])
@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_streaming_equals_offline(preset, lookahead, chunking):
    x = noisy_signal(0.7, seed=lookahead)
    m = random_model(preset, lookahead)
    assert move_logits_off_zero(m, x) > 1e-4
    for mask, floor in [("soft", None), ("binary", -20.0), ("posterior", None)]:
        off = enhance(m, torch.from_numpy(x), mask=mask, floor_db=floor).numpy()
        engine = StreamingDenoiser(m, mask=mask, floor_db=floor)
        y = run_stream(engine, x, chunking)
        assert np.max(np.abs(y[engine.delay :] - off)) <= 1e-5
        if mask == "binary":  # the mask really is mixed, not a constant (see random_model)
            assert 0.05 < float((mask_gain(m(stft(torch.from_numpy(x)[None]).abs()), mask) == 1).float().mean()) < 0.95
    # the random model really masks: the output is not the input
    assert np.max(np.abs(off - x)) > 1e-2


@pytest.mark.parametrize("lookahead", [0, 2])
@pytest.mark.parametrize("chunking", [1, 256, "random"])
def test_time_dilated_streaming_equals_offline(lookahead, chunking):
    """blocks3t's layers dilated 4 and 16 frames cache 8 and 32 columns: 2.5 s (156 frames) wraps them many times."""
    x = noisy_signal(2.5, seed=5)
    m = random_model("blocks3t", lookahead, level_frames=20, freq_input=True)
    assert move_logits_off_zero(m, x) > 1e-4
    off = enhance(m, torch.from_numpy(x), mask="soft").numpy()
    engine = StreamingDenoiser(m, mask="soft")
    y = run_stream(engine, x, chunking)
    assert np.max(np.abs(y[engine.delay :] - off)) <= 1e-5
    assert np.max(np.abs(off - x)) > 1e-2


@pytest.mark.parametrize(
    "trackers",
    [{"level_frames": 20}, {"level_frames": 20, "floor_frames": 30}, {"level_frames": 20, "freq_input": True},
     {"level_frames": 20, "freq_input": True, "freq_scale": 30.0},
     {"level_frames": 20, "freq_input": True, "band_input": True}],
)
@pytest.mark.parametrize("lookahead", [0, 2])
@pytest.mark.parametrize("chunking", [1, 256, "random"])
def test_streaming_equals_offline_with_level_normalisation(lookahead, chunking, trackers):
    x = noisy_signal(1.5, seed=3) * np.linspace(0.02, 1.5, 24000, dtype=np.float32)  # level (and floor) move 37 dB
    m = random_model("blocks2", lookahead, **trackers)
    off = enhance(m, torch.from_numpy(x), mask="soft").numpy()
    engine = StreamingDenoiser(m, mask="soft")
    y = run_stream(engine, x, chunking)
    assert np.max(np.abs(y[engine.delay :] - off)) <= 1e-5


def test_level_normalisation_makes_the_mask_independent_of_input_level():
    x = noisy_signal(1.0, seed=4)
    for level_frames, same in ((16, True), (0, False)):
        m = random_model("blocks2", 0, level_frames=level_frames, compress="linear")
        loud = enhance(m, torch.from_numpy(x * 10), mask="soft").numpy() / 10
        quiet = enhance(m, torch.from_numpy(x * 0.1), mask="soft").numpy() / 0.1  # 40 dB quieter
        assert (np.max(np.abs(loud - quiet)) < 1e-6) == same


@pytest.mark.parametrize("preset, lookahead", [("blocks2", 0), ("blocks2", 1), ("paper", 8), ("blocks3t", 2)])
def test_impulse_comes_out_exactly_one_delay_later(preset, lookahead):
    m = pass_through_model(preset, lookahead)
    engine = StreamingDenoiser(m)
    assert engine.delay == 1024 + 256 * lookahead
    x = np.zeros(8000, np.float32)
    x[3001] = 1.0
    y = run_stream(engine, x, 97)
    assert int(np.argmax(np.abs(y))) == 3001 + 1024 + 256 * lookahead
    assert abs(y.max() - 1.0) < 1e-5


def test_reset_restarts_the_stream():
    m = random_model("blocks2", 1)
    x = noisy_signal(0.5)
    engine = StreamingDenoiser(m, mask="soft")
    first = run_stream(engine, x, 300)  # flush() resets
    engine.process(np.ones(777, np.float32))
    engine.reset()
    again = run_stream(engine, x, 300)
    np.testing.assert_array_equal(first, again)


def test_mask_gain_values():
    f = torch.tensor([-2.0, -0.0, 0.0, 3.0])
    assert mask_gain(f, "binary").tolist() == [1.0, 0.0, 0.0, 0.0]
    assert torch.allclose(mask_gain(f, "soft"), torch.sigmoid(-f))
    # 1 − e^f/2: f = −2 → 1 − 0.0677, f = 0 → 1/2, f ≥ ln 2 → 0 (clipped: e^3/2 ≈ 10, e^200 = inf)
    posterior = mask_gain(torch.tensor([-2.0, 0.0, math.log(2.0), 3.0, 200.0]), "posterior")
    torch.testing.assert_close(posterior, torch.tensor([1 - math.exp(-2) / 2, 0.5, 0.0, 0.0, 0.0]))
    floored = mask_gain(f, "binary", floor_db=-20.0)
    assert torch.allclose(floored, torch.tensor([1.0, 0.1, 0.1, 0.1]))
    # sharpness s: the soft mask is σ(−s·f) — at f = 1, s = 2: 1/(1 + e²) = 0.1192; binary and posterior ignore s
    sharp = mask_gain(torch.tensor([1.0, -1.0, 0.0]), "soft", sharpness=2.0)
    torch.testing.assert_close(sharp, torch.tensor([1 / (1 + math.e**2), 1 / (1 + math.e**-2), 0.5]))
    for mask in ("binary", "posterior"):
        assert torch.equal(mask_gain(f, mask, sharpness=3.0), mask_gain(f, mask))


@pytest.mark.parametrize("chunking", [1, 256, "random"])
def test_the_models_mask_sharpness_is_used_by_both_engines_alike(chunking):
    x = noisy_signal(0.7, seed=5)
    plain = random_model("blocks2", 2, spread=1.0)
    sharp = random_model("blocks2", 2, spread=1.0, mask_sharpness=2.5)  # the same weights (seeded)
    off = enhance(sharp, torch.from_numpy(x), mask="soft").numpy()
    engine = StreamingDenoiser(sharp, mask="soft")
    y = run_stream(engine, x, chunking)
    assert np.max(np.abs(y[engine.delay :] - off)) <= 1e-5
    # and it is σ(−2.5 f): the same as a model whose last layer (its logits) is 2.5 times larger
    with torch.no_grad():
        plain.convs[-1].weight.mul_(2.5)
        plain.convs[-1].bias.mul_(2.5)
    np.testing.assert_allclose(off, enhance(plain, torch.from_numpy(x), mask="soft").numpy(), atol=1e-5)
    assert np.max(np.abs(off - enhance(sharp, torch.from_numpy(x), mask="binary").numpy())) > 1e-2


def test_stream_offline_equivalent_helper_matches_enhance():
    x = noisy_signal(0.5)
    m = random_model("blocks2", 2)
    np.testing.assert_allclose(
        stream_offline_equivalent(m, x, chunk=513, mask="soft"), enhance(m, torch.from_numpy(x), "soft").numpy(),
        atol=1e-5,
    )


def test_silence_before_the_signal_does_not_change_the_level_normalisation():
    """Gated level: the live pre-roll (digital silence) must not make the first seconds louder to the model."""
    x = noisy_signal(2.0, seed=6)
    pad = 256 * 200  # 3.2 s of silence, hop-aligned
    m = random_model("blocks2", 0, level_frames=125)
    alone = enhance(m, torch.from_numpy(x), mask="soft").numpy()
    after_silence = enhance(m, torch.from_numpy(np.concatenate([np.zeros(pad, np.float32), x])), mask="soft").numpy()
    # past 16 frames (> the 13-frame receptive field, where the convolutions' own zero-padding differs) the
    # outputs match; an ungated 2 s level window would differ for 2 s
    assert np.max(np.abs(after_silence[pad + 16 * 256 :] - alone[16 * 256 :])) < 1e-5


@pytest.mark.parametrize("floor", [math.nan, math.inf, 1.0, -201.0])
def test_the_engines_refuse_a_floor_that_is_not_a_finite_attenuation(floor):
    from rtpulse.errors import RtpulseError

    m = random_model("blocks2", 0)
    with pytest.raises(RtpulseError, match="--floor-db must be -200…0 dB"):
        enhance(m, torch.zeros(2000), "soft", floor)
    with pytest.raises(RtpulseError, match="--floor-db must be -200…0 dB"):
        StreamingDenoiser(m, "soft", floor)
    # the limits themselves are floors: −200 dB is a gain of 1e-10, 0 dB keeps every bin whole
    x = noisy_signal(0.3)
    np.testing.assert_allclose(enhance(m, torch.from_numpy(x), "binary", 0.0).numpy(), x, atol=1e-5)
    assert np.all(np.isfinite(enhance(m, torch.from_numpy(x), "binary", -200.0).numpy()))


def test_a_model_left_in_train_mode_gives_the_same_samples_and_keeps_its_mode():
    from rtpulse.model import ModelConfig, PulseCNN

    torch.manual_seed(0)
    m = PulseCNN(ModelConfig(preset="blocks2", lookahead=1, dropout=0.5))  # as built: train mode, dropout on
    x = noisy_signal(0.5)
    first = enhance(m, torch.from_numpy(x), "soft").numpy()
    assert m.training  # the caller's mode is its own
    np.testing.assert_array_equal(first, enhance(m, torch.from_numpy(x), "soft").numpy())  # no dropout: repeatable
    np.testing.assert_allclose(stream_offline_equivalent(m, x, mask="soft"), first, atol=1e-5)
    assert m.training


def test_a_reversed_float32_view_is_denoised_like_a_copy():
    m = random_model("blocks2", 0)
    x = noisy_signal(0.3)
    flipped = np.flip(x)  # a negative stride, float32 already: numpy hands torch the view itself
    want = StreamingDenoiser(m, mask="soft").process(flipped.copy())
    np.testing.assert_array_equal(StreamingDenoiser(m, mask="soft").process(flipped), want)


def test_a_multichannel_array_is_refused_not_interleaved_or_read_as_a_batch():
    """soundfile reads a stereo file as [T, 2]: flattened, the engine interleaved its channels sample by sample, and
    enhance took it for T signals 2 samples long. Mono in any unambiguous layout, and [B, T] batches, still pass."""
    from rtpulse.errors import RtpulseError
    from rtpulse.resampler import StreamResampler

    m = random_model("blocks2", 0)
    x = noisy_signal(0.3)
    stereo = np.stack((x, 0.5 * x), axis=1)  # [T, 2]
    with pytest.raises(RtpulseError, match=r"got shape \(4800, 2\), which looks like \[T, C\]"):
        enhance(m, torch.from_numpy(stereo))
    with pytest.raises(RtpulseError, match=r"StreamingDenoiser.process takes mono samples \[n\], got shape \(4800, 2\)"):
        StreamingDenoiser(m).process(stereo)
    with pytest.raises(RtpulseError, match=r"StreamResampler.process takes mono samples \[n\], got shape \(4800, 2\)"):
        StreamResampler(48000, 16000).process(stereo)
    # what worked stays: a [B, T] batch (channels first, one signal each), and mono as [n, 1] (always_2d) or [1, n]
    np.testing.assert_array_equal(enhance(m, torch.from_numpy(stereo.T.copy()))[0].numpy(),
                                  enhance(m, torch.from_numpy(x)).numpy())
    want = StreamingDenoiser(m).process(x)
    np.testing.assert_array_equal(StreamingDenoiser(m).process(x[:, None]), want)
    np.testing.assert_array_equal(StreamingDenoiser(m).process(x[None]), want)
    np.testing.assert_array_equal(StreamResampler(48000, 16000).process(x[:, None]),
                                  StreamResampler(48000, 16000).process(x))
