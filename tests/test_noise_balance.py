"""--noise-balance: every noise folder (recording source) drawn equally often. Generated constants only."""

import numpy as np
import pytest
import torch

from rtpulse.errors import RtpulseError
from trainer.config import TrainConfig
from trainer.data import AudioBank

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
