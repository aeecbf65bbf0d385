"""--noise-balance (every noise folder drawn equally often) and --noise-mix (two noises at once). Generated signals only."""

import numpy as np
import pytest
import torch

from rtpulse.errors import RtpulseError
from trainer.config import TrainConfig
from trainer.data import AudioBank, Recipe

N = 400  # crop length


def _bank() -> AudioBank:
    # folder "rain": one file of 9 s worth of samples, all 1.0; folder "fan": two files of 0.5 each, 2.0 each
    arrays = [np.full(9000, 1.0), np.full(500, 2.0), np.full(500, 2.0)]
    return AudioBank(arrays, ["/n/rain/a.wav", "/n/fan/b.wav", "/n/fan/c.wav"])


def _share_of_rain(bank: AudioBank) -> float:
    crops = bank.crops(4000, N, torch.Generator().manual_seed(3))
    return float((crops[:, 0] == 1.0).float().mean())


def test_unbalanced_bank_draws_files_by_length():
    assert _share_of_rain(_bank()) == pytest.approx(0.9, abs=0.02)  # 9000 of 10,000 samples


def test_balanced_bank_draws_each_folder_equally_and_files_within_by_length():
    bank = _bank().balance_folders()
    assert _share_of_rain(bank) == pytest.approx(0.5, abs=0.03)
    assert bank.weights.tolist() == pytest.approx([1.0, 0.5, 0.5])  # fan's two equal files split its half


def test_balancing_one_folder_changes_no_draw():
    arrays = [np.full(9000, 1.0), np.full(1000, 2.0)]
    plain = AudioBank(arrays, ["/n/a.wav", "/n/b.wav"])
    balanced = AudioBank(arrays, ["/n/a.wav", "/n/b.wav"]).balance_folders()
    gen = torch.Generator
    assert torch.equal(plain.crops(64, N, gen().manual_seed(1)), balanced.crops(64, N, gen().manual_seed(1)))


def test_noisy_recordings_with_noise_balance_are_refused(tmp_path):
    with pytest.raises(RtpulseError, match="--noise-balance reweights the noise mixed into --clean"):
        TrainConfig(out=str(tmp_path / "run"), noisy=str(tmp_path), noise=str(tmp_path), noise_balance=True).validate()


def test_noise_mix_adds_a_second_crop_below_the_first_to_that_share_of_clips():
    # two sources, a 50 Hz hum and a 3 kHz whine, so each clip's parts can be read off its spectrum
    sr, n = 16000, 1600
    t = np.arange(20 * sr) / sr
    bank = AudioBank([np.sin(2 * np.pi * 50 * t), np.sin(2 * np.pi * 3000 * t)], ["/n/hum/a.wav", "/n/whine/b.wav"])
    speech = AudioBank([np.zeros(n)], ["/s/a.wav"])
    clips = Recipe("pu", bank, clean=speech, noise_mix=0.5).noise_clips(400, n, torch.Generator().manual_seed(2))
    spec = torch.fft.rfft(clips).abs()
    low, high = spec[:, 5], spec[:, 300]  # 50 Hz and 3 kHz bins of a 0.1 s clip
    both = (low > 1) & (high > 1)
    assert float(both.float().mean()) == pytest.approx(0.25, abs=0.06)  # mixed (1/2) × the other source (1/2)
    ratio_db = 20 * torch.log10(torch.minimum(low, high)[both] / torch.maximum(low, high)[both])
    assert float(ratio_db.min()) >= -10.5 and float(ratio_db.max()) <= 0.01  # second crop 0…10 dB below
    assert float(ratio_db.max()) > -2 and float(ratio_db.min()) < -8  # and it spans the range


def test_no_noise_mix_leaves_the_crops_as_drawn():
    bank = _bank()
    speech = AudioBank([np.zeros(N)], ["/s/a.wav"])
    gen = torch.Generator
    got = Recipe("pu", bank, clean=speech).noise_clips(64, N, gen().manual_seed(1))
    assert torch.equal(got, bank.crops(64, N, gen().manual_seed(1)))


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_noise_mix_outside_0_to_1_is_refused(tmp_path, share):
    with pytest.raises(RtpulseError, match="--noise-mix is a share"):
        TrainConfig(out=str(tmp_path / "run"), clean=str(tmp_path), noise=str(tmp_path), noise_mix=share).validate()
