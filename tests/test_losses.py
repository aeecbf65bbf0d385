"""Losses against hand-computed values. Logits use 0 and ±ln 3, where σ is 0.5, 0.75 and 0.25."""

import math

import pytest
import torch

from trainer.losses import bin_weight, mixit_loss, pn_loss, pu_risk

LN3 = math.log(3.0)


def pu_case():
    # P: f = [0, ln3] → σ(−f) = [.5, .25], σ(f) = [.5, .75]; w = [1, 2]
    #   R_P^+ = (1·.5 + 2·.25)/2 = 0.5;  R_P^- = (1·.5 + 2·.75)/2 = 1.0
    # U: f = [−ln3, 0] → σ(f) = [.25, .5]; w = [2, 2] → R_U^- = (.5 + 1)/2 = 0.75
    f_p = torch.tensor([0.0, LN3], requires_grad=True)
    f_u = torch.tensor([-LN3, 0.0], requires_grad=True)
    return f_p, f_u, torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.0])


def test_nnpu_without_correction_is_the_unbiased_risk():
    f_p, f_u, w_p, w_u = pu_case()
    r = pu_risk(f_p, f_u, w_p, w_u, prior=0.5, risk="nnpu", gamma=0.5)
    # π R_P^+ = 0.25; R_U^- − π R_P^- = 0.75 − 0.5 = 0.25 ≥ 0 → loss 0.5
    assert r.risk_p.item() == pytest.approx(0.25)
    assert r.risk_u.item() == pytest.approx(0.25)
    assert r.loss.item() == pytest.approx(0.5)
    assert r.corrected.item() == 0.0


def test_nnpu_correction_steps_on_minus_gamma_times_the_negative_risk():
    f_p, f_u, w_p, w_u = pu_case()
    r = pu_risk(f_p, f_u, w_p, w_u, prior=0.9, risk="nnpu", gamma=0.5)
    # R_U^- − π R_P^- = 0.75 − 0.9 = −0.15 < 0 → loss = −γ·(−0.15) = 0.075
    assert r.risk_u.item() == pytest.approx(-0.15)
    assert r.risk_p.item() == pytest.approx(0.45)
    assert r.loss.item() == pytest.approx(0.075)
    assert r.corrected.item() == 1.0
    r.loss.backward()
    # ∂/∂f_p of −γ(−π·mean(w σ(f_p))) = γ π w σ'(f_p)/2; σ'(0) = .25, σ'(ln3) = .1875; the P⁺ term is absent
    assert f_p.grad.tolist() == pytest.approx([0.5 * 0.9 * 1 * 0.25 / 2, 0.5 * 0.9 * 2 * 0.1875 / 2])
    # ∂/∂f_u = −γ w σ'(f_u)/2
    assert f_u.grad.tolist() == pytest.approx([-0.5 * 2 * 0.1875 / 2, -0.5 * 2 * 0.25 / 2])


def test_beta_moves_the_threshold():
    f_p, f_u, w_p, w_u = pu_case()
    r = pu_risk(f_p, f_u, w_p, w_u, prior=0.9, risk="nnpu", beta=0.2, gamma=0.5)
    # −0.15 ≥ −0.2: no correction → π R_P^+ + (R_U^- − π R_P^-) = 0.45 − 0.15
    assert r.corrected.item() == 0.0
    assert r.loss.item() == pytest.approx(0.30)


def test_upu_never_corrects():
    f_p, f_u, w_p, w_u = pu_case()
    r = pu_risk(f_p, f_u, w_p, w_u, prior=0.9, risk="upu", gamma=0.5)
    assert r.loss.item() == pytest.approx(0.30)
    assert r.corrected.item() == 0.0


def test_weight_exponent_zero_is_unweighted_and_one_is_magnitude():
    mag = torch.tensor([1.0, 2.0])
    assert bin_weight(mag, 0).tolist() == [1.0, 1.0]
    assert bin_weight(mag, 1).tolist() == pytest.approx([1.0, 2.0])
    assert bin_weight(mag, 2).tolist() == pytest.approx([1.0, 4.0])
    f_p, f_u, _, _ = pu_case()
    r = pu_risk(f_p, f_u, bin_weight(mag, 0), bin_weight(mag, 0), prior=0.5)
    # unweighted: R_P^+ = (.5 + .25)/2 = .375; R_P^- = (.5 + .75)/2 = .625; R_U^- = (.25 + .5)/2 = .375
    assert r.risk_p.item() == pytest.approx(0.5 * 0.375)
    assert r.risk_u.item() == pytest.approx(0.375 - 0.5 * 0.625)


def test_pn_signal_approximation():
    f = torch.tensor([0.0, LN3])  # speech masks σ(−f) = [.5, .25]
    mag_noisy, mag_clean = torch.tensor([2.0, 4.0]), torch.tensor([1.0, 0.0])
    # estimates [1, 1] vs [1, 0] → squared errors [0, 1] → mean 0.5
    assert pn_loss(f, mag_noisy, mag_clean).item() == pytest.approx(0.5)


def test_mixit_takes_the_best_assignment_per_clip():
    # clip 0: s = σ(−0) = .5, n1 = σ(ln3) = .75, n2 = σ(−ln3) = .25; |M| = 4, |noisy| = 3, |noise| = 3
    #   A: ((.5+.75)·4 − 3)² + (.25·4 − 3)² = 4 + 4 = 8;  B: ((.5+.25)·4 − 3)² + (.75·4 − 3)² = 0
    # clip 1: the noise channels swapped → A = 0, B = 8. Best per clip → mean 0 (a per-batch min gives 4).
    logits = torch.tensor([[0.0, LN3, -LN3], [0.0, -LN3, LN3]]).reshape(2, 3, 1, 1)
    full = torch.full((2, 1, 1), 4.0), torch.full((2, 1, 1), 3.0), torch.full((2, 1, 1), 3.0)
    assert mixit_loss(logits, *full).item() == pytest.approx(0.0, abs=1e-6)
    one = mixit_loss(logits[:1], full[0][:1], full[1][:1], torch.full((1, 1, 1), 1.0))
    # clip 0 with |noise| = 1: A = 4 + 0 = 4, B = 0 + (3 − 1)² = 4 → 4
    assert one.item() == pytest.approx(4.0)


def test_mixit_speech_channel_uses_the_runtime_convention():
    # f0 very negative = speech: s ≈ 1; noise masks ≈ 0 → A: (|M| − |noisy|)² + |noise|²
    logits = torch.tensor([-30.0, -30.0, -30.0]).reshape(1, 3, 1, 1)
    loss = mixit_loss(logits, torch.full((1, 1, 1), 5.0), torch.full((1, 1, 1), 3.0), torch.full((1, 1, 1), 2.0))
    assert loss.item() == pytest.approx((5 - 3) ** 2 + 2**2, rel=1e-5)
