"""--noise-warp: training noise played at another rate and re-coloured. Generated tones and white noise only."""

import numpy as np
import pytest
import torch

from rtpulse.errors import RtpulseError
from trainer.data import WARP_RATE, WARP_TILT_DB, AudioBank, Recipe, draw_warps, warp_clips

SR, N = 16000, 16000  # 1 s clips: rfft bin k is k Hz


def _tone(hz: float, seconds: float = 2.0) -> torch.Tensor:
    return torch.sin(2 * torch.pi * hz * torch.arange(round(seconds * SR)) / SR)


def _peak_hz(x: torch.Tensor) -> int:
    return int(torch.fft.rfft(x).abs().argmax())


def test_warp_moves_every_frequency_by_the_rate_and_keeps_an_unwarped_clip_exact():
    x = torch.stack([_tone(1000.0), _tone(1000.0), _tone(3000.0)])
    y = warp_clips(x, torch.tensor([N, 12000, 20000]), torch.zeros(3, N // 2 + 1), N)
    assert y.shape == (3, N)
    assert torch.allclose(y[0], x[0, :N], atol=1e-5)  # rate 1, flat gain: the crop itself
    assert _peak_hz(y[1]) == 750  # 12,000 samples played in 16,000: 0.75× as fast
    assert _peak_hz(y[2]) == 3750  # 20,000 in 16,000: 1.25×
    assert float(y[1].std()) == pytest.approx(float(x[1].std()), rel=0.02)  # a tone keeps its level


def test_warp_is_band_limited_and_applies_the_gain_curve():
    white = torch.randn(2, 2 * N, generator=torch.Generator().manual_seed(0))
    f = torch.linspace(0, 1, N // 2 + 1)
    slow = warp_clips(white[:1], torch.tensor([12000]), torch.zeros(1, N // 2 + 1), N)[0]
    power = torch.fft.rfft(slow).abs() ** 2
    # slowed to 0.75×: nothing above 0.75 × Nyquist (6 kHz), nothing folded back into it
    assert float(power[6001:].sum() / power.sum()) < 1e-9
    tilted = warp_clips(white[1:], torch.tensor([N]), (12.0 * f)[None], N)[0]  # +12 dB at Nyquist re DC
    ref = torch.fft.rfft(white[1, :N]).abs() ** 2
    top = torch.fft.rfft(tilted).abs() ** 2
    low, high = slice(0, 1000), slice(7000, 8001)  # mean gain there: 0.75 dB and 11.25 dB
    gain_db = [10 * np.log10(float(top[b].sum() / ref[b].sum())) for b in (low, high)]
    assert gain_db == pytest.approx([0.75, 11.25], abs=0.05)


def test_drawn_warps_stay_in_their_ranges_and_differ_per_clip():
    sizes, gain_db = draw_warps(400, N, torch.Generator().manual_seed(1), "cpu")
    rate = sizes.float() / N
    assert float(rate.min()) >= 1 / WARP_RATE - 1e-4 and float(rate.max()) <= WARP_RATE + 1e-4
    assert float(rate.min()) < 0.85 and float(rate.max()) > 1.15  # the whole range is used
    assert float(gain_db[:, 0].abs().max()) < 3 * 3.0 + 1e-4  # DC: only the bumps (3 cosines of ±3 dB)
    span = gain_db[:, -1] - gain_db[:, 0]  # the tilt, minus twice the odd cosines' amplitudes
    assert float(span.abs().max()) <= WARP_TILT_DB + 2 * 2 * 3.0 + 1e-4 and float(span.std()) > 2.0


def test_recipe_warps_the_share_asked_for_in_u_and_p_alike():
    bank = AudioBank([_tone(1000.0, 4.0).numpy().astype(np.float32)], ["tone"])
    speech = AudioBank([np.zeros(4 * SR, dtype=np.float32)], ["silence"])  # the mixture is then the noise alone

    def peaks(share: float) -> np.ndarray:
        recipe = Recipe("pu", bank, clean=speech, noise_warp=share)
        b = recipe.batch(64, N, torch.Generator().manual_seed(3))
        return np.array([[_peak_hz(u), _peak_hz(p)] for u, p in zip(b.u, b.p)])

    assert (peaks(0.0) == 1000).all()  # off: the recordings as they are
    both = peaks(1.0)
    for side in (0, 1):  # U's noise and the P clips are warped alike
        hz = both[:, side]
        assert (hz >= 1000 / WARP_RATE - 1).all() and (hz <= 1000 * WARP_RATE + 1).all()
        assert (hz != 1000).mean() > 0.9 and hz.std() > 50
    half = (peaks(0.5) != 1000).mean()
    assert 0.3 < half < 0.7


def test_unwarped_clips_keep_their_colour():
    rng = np.random.default_rng(4)
    white = AudioBank([rng.standard_normal(4 * SR).astype(np.float32)], ["white"])

    def tilts_db(share: float) -> np.ndarray:  # per clip: power 6–8 kHz over 0–2 kHz
        noise = Recipe("pu", white, clean=white, noise_warp=share).noise_clips(64, N, torch.Generator().manual_seed(5))
        power = torch.fft.rfft(noise).abs() ** 2
        return 10 * np.log10((power[:, 6000:8001].sum(1) / power[:, :2001].sum(1)).numpy())

    assert np.abs(tilts_db(0.0)).max() < 1.0  # white noise is flat: 0 dB up to the estimate's spread (σ ≈ 0.15 dB)
    half = tilts_db(0.5)
    coloured = np.abs(half) > 1.0
    assert 0.2 < coloured.mean() < 0.8  # the warped half is re-coloured (a faster clip also loses its top band) …
    assert np.abs(half[~coloured]).max() < 1.0  # … and the other half is left flat


def test_noisy_recordings_with_noise_warp_are_refused(tmp_path):
    from trainer.config import TrainConfig

    with pytest.raises(RtpulseError, match="--noise-warp warps the noise mixed into --clean"):
        TrainConfig(out=str(tmp_path / "run"), noisy=str(tmp_path), noise=str(tmp_path), noise_warp=0.5).validate()


def test_noise_warp_outside_0_to_1_is_refused(tmp_path):
    from trainer.config import TrainConfig

    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(RtpulseError, match="noise-warp|finite"):
            TrainConfig(out=str(tmp_path / "run"), clean=str(tmp_path), noise=str(tmp_path),
                        noise_warp=bad).validate()
