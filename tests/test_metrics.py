"""The one SI-SNR (rtpulse.metrics), on signals whose value is worked out by hand, and the perceptual scores'
argument order."""

import math

import numpy as np
import pytest
import torch

from rtpulse.metrics import perceptual_scores, si_snr, si_snri


def test_si_snr_of_a_hand_worked_case_keeps_the_mean():
    """s = [2, 0, 2, 0], ŝ = s + [.5, .5, −.5, −.5]: α = <ŝ, s>/‖s‖² = 8/8 = 1, target = s, residual power 1 and
    target power 8, so 10·log10 8 = 9.03 dB. Removing the means first (not PULSE's definition) would give 6.02."""
    s = torch.tensor([2.0, 0.0, 2.0, 0.0])
    est = s + torch.tensor([0.5, 0.5, -0.5, -0.5])
    assert float(si_snr(est, s)) == pytest.approx(10 * math.log10(8), abs=1e-6)


def test_si_snr_is_scale_invariant_and_batched_per_row():
    rng = np.random.default_rng(0)
    ref = torch.from_numpy(rng.standard_normal((3, 400)))
    est = ref + torch.from_numpy(rng.standard_normal((3, 400))) * torch.tensor([[0.1], [1.0], [3.0]])
    ref[2] *= 50  # rows of very different energy: α must be per row, not over the batch
    est[2] *= 50
    rows = torch.stack([si_snr(est[i], ref[i]) for i in range(3)])
    torch.testing.assert_close(si_snr(est, ref), rows)
    torch.testing.assert_close(si_snr(7.0 * est, ref), rows)  # scaling the estimate changes nothing
    torch.testing.assert_close(si_snr(est, 0.2 * ref), rows, atol=1e-6, rtol=0)  # nor scaling the reference
    # est = ref + e with e ⟂ ref: α = 1, so the value is 10·log10(‖ref‖²/‖e‖²)
    e = torch.from_numpy(rng.standard_normal(400))
    r = ref[0]
    e = e - (e @ r) / (r @ r) * r
    assert float(si_snr(r + e, r)) == pytest.approx(10 * math.log10(float(r @ r) / float(e @ e)), abs=1e-6)


def test_a_silent_estimate_scores_the_floor_not_0_db():
    ref = torch.sin(torch.arange(1600.0) / 7)
    noisy = ref + 4.0 * torch.randn(1600, generator=torch.Generator().manual_seed(0))  # about −9 dB
    assert float(si_snr(torch.zeros(1600), ref)) == pytest.approx(-80.0, abs=1e-6)  # 10·log10(EPS)
    assert si_snri(np.zeros(1600), noisy.numpy(), ref.numpy()) < -60  # muting everything is no improvement


def test_si_snri_is_the_difference_against_the_same_reference():
    t = np.arange(1600) / 16000
    clean = np.sin(2 * np.pi * 500 * t)
    noise = 0.5 * np.sin(2 * np.pi * 1000 * t)  # orthogonal over whole periods: SI-SNR = 10·log10(0.5/0.125)
    assert si_snri(clean + 0.1 * noise, clean + noise, clean) == pytest.approx(20.0, abs=1e-3)


def test_perceptual_scores_take_the_estimate_first_and_the_reference_second():
    """PESQ and STOI are not symmetric: scored against the libraries called with (reference, degraded)."""
    pesq = pytest.importorskip("pesq").pesq
    stoi = pytest.importorskip("pystoi").stoi
    rng = np.random.default_rng(1)
    t = np.arange(32000) / 16000
    ref = (np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0) * 0.3).astype(np.float64)
    est = ref * 0.7 + 0.05 * rng.standard_normal(ref.size)  # attenuated and noisy: the two orders differ
    got = perceptual_scores(est, ref)
    assert got["pesq_wb"] == pytest.approx(pesq(16000, ref, est, "wb"), abs=1e-6)
    assert got["stoi"] == pytest.approx(stoi(ref, est, 16000, extended=False), abs=1e-9)
    assert abs(pesq(16000, est, ref, "wb") - got["pesq_wb"]) > 1e-3 or abs(stoi(est, ref, 16000) - got["stoi"]) > 1e-6


@pytest.mark.parametrize("peak", [1e-4, 1e-5, 1e-6])
def test_si_snr_does_not_depend_on_the_level_of_a_quiet_pair(peak):
    """clean 500 Hz, error 1 kHz 40 dB below (orthogonal over whole periods): 40 dB at any level. With the absolute
    EPS it was 36.5 dB at −80 dBFS, 18.8 dB at −100 dBFS, and a copy of a −120 dBFS reference scored −9 dB."""
    t = torch.arange(16000, dtype=torch.float64) / 16000
    ref = torch.sin(2 * math.pi * 500 * t)
    err = 0.01 * torch.sin(2 * math.pi * 1000 * t)
    assert float(si_snr(peak * (ref + err), peak * ref)) == pytest.approx(40.0, abs=1e-3)
    assert float(si_snr(ref + err, peak * ref)) == pytest.approx(40.0, abs=1e-3)
    assert float(si_snr(peak * ref, peak * ref)) == pytest.approx(80.0, abs=0.01)  # the cap, as the floor: ±80 dB
    assert float(si_snr(torch.zeros(16000), peak * ref)) == pytest.approx(-80.0, abs=1e-6)


def test_pesq_is_not_asked_to_score_past_its_utterance_limit(monkeypatch):
    """pesq writes past its 50-utterance array on long references (a segmentation fault ends the eval run): over
    PESQ_MAX_SECONDS it is never called and the file has no PESQ score."""
    pesq_module = pytest.importorskip("pesq")
    from rtpulse.metrics import PESQ_MAX_SECONDS

    calls = []
    monkeypatch.setattr(pesq_module, "pesq", lambda *a, **k: calls.append(a[1].size) or 3.0)
    rng = np.random.default_rng(0)
    n = PESQ_MAX_SECONDS * 16000
    ref = 0.1 * rng.standard_normal(n + 1)
    assert perceptual_scores(ref, ref)["pesq_wb"] is None and calls == []
    assert perceptual_scores(ref[:n], ref[:n])["pesq_wb"] == 3.0 and calls == [n]
