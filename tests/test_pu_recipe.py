"""The PU recipe knobs that make PULSE train on real recordings: P-vs-U warm start, matched P level, He init,
gradient clipping. Tiny generated data only."""

import math

import numpy as np
import pytest
import torch

from trainer.config import TrainConfig
from trainer.data import AudioBank, Recipe
from trainer.losses import pu_risk
from trainer.train import build_model, compute_loss, train_step


def test_pvu_loss_matches_hand_computed_values():
    # f = 0 everywhere: softplus(0) = log 2, so loss = 2π·w̄_P·log2 + w̄_U·log2
    z = torch.zeros(1, 2, 3)
    r = pu_risk(z, z, torch.full_like(z, 2.0), torch.full_like(z, 3.0), prior=0.25, risk="pvu")
    assert math.isclose(float(r.loss), (2 * 0.25 * 2.0 + 3.0) * math.log(2), rel_tol=1e-6)
    # the sigmoid diagnostics are still the nnPU terms: π·w̄_P·σ(0), w̄_U·σ(0) − π·w̄_P·σ(0)
    assert math.isclose(float(r.risk_p), 0.25 * 2.0 * 0.5, rel_tol=1e-6)
    assert math.isclose(float(r.risk_u), 3.0 * 0.5 - 0.25 * 2.0 * 0.5, rel_tol=1e-6)
    # f_p = 1, f_u = −2, w = 1, π = 0.5: loss = softplus(−1) + softplus(−2)
    r = pu_risk(torch.ones(1, 1, 1), torch.full((1, 1, 1), -2.0), torch.ones(1, 1, 1), torch.ones(1, 1, 1), 0.5, "pvu")
    assert math.isclose(float(r.loss), math.log1p(math.exp(-1)) + math.log1p(math.exp(-2)), rel_tol=1e-6)


def test_pvu_optimum_sits_on_the_pu_bayes_boundary():
    # one shared logit for P and U bins: the minimiser is f* = log(2π w̄_P / w̄_U), so f* = 0 exactly when
    # 2π·(P mass) = (U mass) — the weighted PU decision boundary
    w_p, w_u, prior = torch.full((1, 4, 4), 1.5), torch.full((1, 4, 4), 2.0), 0.4
    f = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([f], max_iter=100, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = pu_risk(f.expand(1, 4, 4), f.expand(1, 4, 4), w_p, w_u, prior, "pvu").loss
        loss.backward()
        return loss

    opt.step(closure)
    assert abs(float(f.detach()) - math.log(2 * prior * 1.5 / 2.0)) < 1e-4


def test_matched_p_clips_have_the_noise_level_of_a_mixture():
    rng = np.random.default_rng(0)
    speech = AudioBank([rng.standard_normal(8000).astype(np.float32)], ["s"])
    noise = AudioBank([rng.standard_normal(8000).astype(np.float32)], ["n"])
    gen = torch.Generator().manual_seed(0)
    unit = Recipe("pu", noise, clean=speech).batch(64, 2000, gen)
    matched = Recipe("pu", noise, clean=speech, p_level="matched", snr_range=(-5.0, 10.0)).batch(64, 2000, gen)
    assert torch.allclose(unit.p.std(-1), torch.ones(64), atol=1e-3)
    std = matched.p.std(-1)
    lo, hi = 1 / math.sqrt(1 + 10 ** (10 / 10)), 1 / math.sqrt(1 + 10 ** (-5 / 10))  # SNR 10 dB … −5 dB
    assert float(std.min()) >= lo - 1e-3 and float(std.max()) <= hi + 1e-3
    assert float(std.max() - std.min()) > 0.3  # drawn per clip, not one constant
    assert torch.allclose(matched.u.std(-1), torch.ones(64), atol=1e-3)  # U clips are untouched


def _cfg(tmp_path, **kw):
    base = {"out": str(tmp_path), "clean": "c", "noise": "n", "dropout": 0.0, "batch_size": 2, "device": "cpu"}
    base.update(kw)
    return TrainConfig(**base)


def test_he_init_makes_the_logits_depend_on_the_input(tmp_path):
    mag = torch.rand(2, 513, 20) * 30
    spreads = {}
    for init in ("default", "he"):
        model = build_model(_cfg(tmp_path, init=init)).eval()
        spreads[init] = float(model(mag).detach().std())
    assert spreads["he"] > 30 * spreads["default"]
    assert torch.all(build_model(_cfg(tmp_path, init="he")).convs[-1].bias == 0)


def _batch(seed=0):
    from trainer.data import Batch

    g = torch.Generator().manual_seed(seed)
    return Batch(u=torch.randn(2, 4000, generator=g), p=0.5 * torch.randn(2, 4000, generator=g))


def test_pvu_steps_switch_to_nnpu_afterwards(tmp_path):
    cfg = _cfg(tmp_path, init="he", pvu_steps=1, prior=0.6)
    model = build_model(cfg)
    b = _batch()
    cfg_pvu, cfg_nn = _cfg(tmp_path, risk="pvu", prior=0.6), _cfg(tmp_path, risk="nnpu", prior=0.6)
    assert torch.equal(compute_loss(model, b, cfg, step=0)[0], compute_loss(model, b, cfg_pvu)[0])
    assert torch.equal(compute_loss(model, b, cfg, step=1)[0], compute_loss(model, b, cfg_nn)[0])
    assert not torch.equal(compute_loss(model, b, cfg_pvu)[0], compute_loss(model, b, cfg_nn)[0])


def test_clip_grad_bounds_the_gradient_norm(tmp_path):
    norms = {}
    for clip in (0.0, 1e-3):
        cfg = _cfg(tmp_path, init="he", clip_grad=clip)
        model = build_model(cfg)
        train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), _batch(), cfg)
        norms[clip] = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))
    assert norms[0.0] > 1e-2  # unclipped gradient is large…
    assert norms[1e-3] <= 1e-3 * (1 + 1e-4)  # …and clipped to the bound


def test_init_from_starts_at_the_given_weights_and_refuses_another_shape(tmp_path):
    import pytest

    from rtpulse.errors import RtpulseError
    from rtpulse.model import save_model

    src = build_model(_cfg(tmp_path, init="he", seed=3))
    save_model(src, tmp_path / "start.safetensors")
    model = build_model(_cfg(tmp_path, seed=4, init_from=str(tmp_path / "start.safetensors")))
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    assert not torch.equal(
        build_model(_cfg(tmp_path, seed=4)).state_dict()["convs.0.weight"], src.state_dict()["convs.0.weight"]
    )
    # another lookahead only moves padding: the weights carry over; another compress does not
    shifted = build_model(_cfg(tmp_path, lookahead=2, init_from=str(tmp_path / "start.safetensors")))
    assert shifted.lookahead == 2 and torch.equal(shifted.state_dict()["convs.0.weight"], src.state_dict()["convs.0.weight"])
    with pytest.raises(RtpulseError, match=f"it has compress {src.config.compress!r} and 1 output.*this run 'log1p'"):
        build_model(_cfg(tmp_path, compress="log1p", init_from=str(tmp_path / "start.safetensors")))


def test_cosine_schedule_warms_up_then_decays_to_one_percent(tmp_path):
    import math

    from trainer.train import _lr_factor

    cfg = _cfg(tmp_path, epochs=2, steps_per_epoch=55, warmup_steps=10, lr_schedule="cosine")
    f = _lr_factor(cfg)
    assert f(0) == 0.1 and f(9) == 1.0  # linear warm-up over 10 steps
    assert f(10) == 1.0
    assert math.isclose(f(10 + 50), 0.505)  # half-way through the 100 decay steps: (1 + 0.01) / 2
    assert math.isclose(f(110), 0.01) and math.isclose(f(500), 0.01)  # floor after the last step
    constant = _lr_factor(_cfg(tmp_path, epochs=2, steps_per_epoch=55, warmup_steps=10))
    assert constant(60) == 1.0 and constant(500) == 1.0


def test_init_from_a_smaller_preset_grows_it_with_the_same_logits_and_room_to_learn(tmp_path):
    import pytest

    from rtpulse.errors import RtpulseError
    from rtpulse.model import save_model

    mag = torch.rand(2, 513, 40) * 300
    small_path = tmp_path / "small.safetensors"
    pairs = (("blocks2", "blocks3"), ("blocks3", "paper"), ("blocks2", "paper"), ("blocks3", "blocks3t"))
    for small_preset, big_preset in pairs:
        small = build_model(_cfg(tmp_path, preset=small_preset, lookahead=2, compress="linear", init="he", seed=3))
        save_model(small, small_path)
        big = build_model(
            _cfg(tmp_path, preset=big_preset, lookahead=2, compress="linear", init="he", init_from=str(small_path))
        )
        assert len(big.convs) > len(small.convs)
        with torch.no_grad():
            want = small(mag)
        got = big(mag)
        assert want.abs().mean() > 0.1  # a net whose logits are not ~0, so equality means something
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # the added channels are live: the output layer's zero weights on them get a gradient
        got.sum().backward()
        c = small.convs[-1].in_channels
        if big.convs[-1].in_channels > c:
            assert big.convs[-1].weight.grad[:, c:].abs().sum() > 0
        else:  # blocks3t adds no channels: its identity-started dilated layers learn on their other taps
            for conv in big.convs[len(small.convs) - 1 : -1]:
                assert conv.dilation[1] > 1 and conv.weight.grad[:, :, :, :2].abs().sum() > 0
    save_model(build_model(_cfg(tmp_path, preset="paper", compress="linear", init="he")), small_path)
    with pytest.raises(RtpulseError, match="cannot grow a 'paper' model into 'blocks2': a model only grows into a bigger"):
        build_model(_cfg(tmp_path, preset="blocks2", compress="linear", init_from=str(small_path)))
    # same shapes, other frequency dilation: copying the weights would change what they compute
    save_model(build_model(_cfg(tmp_path, preset="blocks2f", compress="linear", init="he")), small_path)
    with pytest.raises(RtpulseError, match="cannot grow .* the first layers of the bigger preset"):
        build_model(_cfg(tmp_path, preset="blocks3", compress="linear", init_from=str(small_path)))


def test_mixed_p_clips_are_another_u_clip_plus_noise_at_the_mix_levels():
    from trainer.data import P_MIX_DB

    rng = np.random.default_rng(1)
    speech = AudioBank([rng.standard_normal(8000).astype(np.float32)], ["s"])
    noise = AudioBank([rng.standard_normal(8000).astype(np.float32)], ["n"])
    b = Recipe("pu", noise, clean=speech, p_level="mixed").batch(32, 2000, torch.Generator().manual_seed(0))
    host = b.p - b.p_noise
    # the host of P clip i is U clip i − 1, scaled: correlation 1, never U clip i itself
    for i in range(32):
        c = np.corrcoef(host[i].numpy(), b.u[i - 1].numpy())[0, 1]
        assert c > 0.9999
        assert abs(np.corrcoef(host[i].numpy(), b.u[i].numpy())[0, 1]) < 0.2
    assert torch.allclose(b.p.std(-1), torch.ones(32), atol=1e-3)
    level = 20 * torch.log10(b.p_noise.std(-1) / host.std(-1))
    assert float(level.min()) >= P_MIX_DB[0] - 0.1 and float(level.max()) <= P_MIX_DB[1] + 0.1
    assert float(level.max() - level.min()) > 8  # drawn per clip


def test_mixed_p_bins_are_where_the_added_noise_dominates_by_the_margin():
    from rtpulse.stft import stft
    from trainer.train import mixed_p_bins

    t = torch.arange(16000) / 16000

    def tone(hz, amp):
        return amp * torch.sin(2 * math.pi * hz * t)[None]  # hz / 15.625 = the bin

    host = tone(500, 1.0) + tone(6250, 0.5)  # bins 32 and 400
    added = tone(3000, 1.0) + tone(6250, 1.0)  # bins 192 and 400, where it leads the host by 6.02 dB (amplitude)
    # margin 5 dB of amplitude is passed at bin 400; 5 dB read as power (×3.16 in amplitude) would not be
    for margin, at_400 in ((10.0, 0.0), (7.0, 0.0), (5.0, 1.0), (3.0, 1.0)):
        bins = mixed_p_bins(stft(host + added), added, margin)[0].mean(-1)  # share of frames in which a bin is P
        assert float(bins[192]) == 1.0 and float(bins[32]) == 0.0 and float(bins[400]) == at_400
    assert mixed_p_bins(stft(added), None, 10.0) is None  # plain P clips: every bin is P


def test_p_bins_restrict_the_p_means_to_the_selected_bins():
    g = torch.Generator().manual_seed(3)
    f_p, f_u = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    w_p, w_u = torch.rand(2, 5, 7, generator=g) + 0.5, torch.rand(2, 5, 7, generator=g) + 0.5
    sel = torch.rand(2, 5, 7, generator=g) > 0.6
    for risk in ("pvu", "upu", "nnpu"):
        masked = pu_risk(f_p, f_u, w_p, w_u, 0.7, risk, p_bins=sel.float())
        # the same as the P term over just those bins (a [1, 1, K] tensor), U unchanged
        k = int(sel.sum())
        subset = pu_risk(f_p[sel].view(1, 1, k), f_u, w_p[sel].view(1, 1, k), w_u, 0.7, risk)
        for a, b in ((masked.loss, subset.loss), (masked.risk_p, subset.risk_p), (masked.risk_u, subset.risk_u)):
            assert math.isclose(float(a), float(b), rel_tol=1e-5)
        assert not math.isclose(float(masked.loss), float(pu_risk(f_p, f_u, w_p, w_u, 0.7, risk).loss), rel_tol=1e-3)


def test_mixed_p_level_trains_on_the_dominated_bins_after_the_context_and_its_misuse_is_refused(tmp_path):
    import pytest

    from rtpulse.errors import RtpulseError
    from rtpulse.stft import stft
    from trainer.losses import bin_weight
    from trainer.train import context_frames, mixed_p_bins, pu_logits

    rng = np.random.default_rng(2)
    speech = AudioBank([rng.standard_normal(16000).astype(np.float32)], ["s"])
    noise = AudioBank([rng.standard_normal(16000).astype(np.float32)], ["n"])
    cfg = _cfg(tmp_path, method="pu", risk="pvu", p_level="mixed", p_mix_margin_db=6.0, level_frames=8,
               context_seconds=0.128).validate()
    ctx = context_frames(cfg)
    assert ctx == 8
    batch = Recipe("pu", noise, clean=speech, p_level="mixed").batch(2, 8000, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = build_model(cfg)
    loss, stats = compute_loss(model, batch, cfg)
    assert math.isfinite(float(loss.detach())) and loss.requires_grad
    # by hand: the P terms over the bins the added noise leads by 6 dB, the context frames cut off
    full = stft(torch.cat((batch.u, batch.p))).abs()
    f = pu_logits(model, full, cfg, ctx).detach()
    w = bin_weight(full[..., ctx:], 1.0)
    bins = mixed_p_bins(stft(batch.p), batch.p_noise, 6.0)[..., ctx:]
    assert 0.05 < float(bins.mean()) < 0.95
    want = pu_risk(f[2:], f[:2], w[2:], w[:2], cfg.prior, "pvu", p_bins=bins)
    every = pu_risk(f[2:], f[:2], w[2:], w[:2], cfg.prior, "pvu")
    assert math.isclose(float(stats["risk_p"]), float(want.risk_p), rel_tol=1e-5)
    assert math.isclose(float(loss.detach()), float(want.loss), rel_tol=1e-5)
    assert not math.isclose(float(loss.detach()), float(every.loss), rel_tol=1e-3)
    for bad, match in (({"p_level": "mixed", "method": "pn"}, "p-level mixed"),
                       ({"p_level": "mixed", "p_gain": "u", "level_frames": 8}, "p-level mixed"),
                       ({"p_level": "mixed", "p_gain": "x"}, "p-gain must be"),
                       ({"p_mix_margin_db": 6.0}, "give --p-level mixed"),
                       ({"p_level": "mixed", "p_mix_margin_db": float("nan")}, "finite number"),
                       ({"p_level": "mixed", "p_mix_margin_db": -1.0}, "0…60"),
                       ({"p_level": "loud"}, "unit, matched or mixed")):
        with pytest.raises(RtpulseError, match=match):
            _cfg(tmp_path, **bad).validate()


def test_compute_loss_passes_beta_gamma_and_the_weight_exponent_to_the_risk(tmp_path):
    """nnPU with β = 0.3, γ = 0.5 and |X|^0 weights, by hand from the model's own logits: the trainer must hand each
    option to pu_risk in its place (β and γ swapped, or the exponent dropped, give other numbers)."""
    from rtpulse.stft import stft
    from trainer.losses import bin_weight
    from trainer.train import pu_logits

    rng = np.random.default_rng(3)
    speech = AudioBank([rng.standard_normal(16000).astype(np.float32)], ["s"])
    noise = AudioBank([rng.standard_normal(16000).astype(np.float32)], ["n"])
    batch = Recipe("pu", noise, clean=speech).batch(2, 4000, torch.Generator().manual_seed(0))
    batch.p = 3 * batch.p  # P bins weigh 3× U's: with constant logits R_U^- − π·R_P^- < −β, the correction fires
    torch.manual_seed(0)
    for beta, gamma, exponent, fires in ((0.3, 0.5, 1.0, True), (0.0, 1.0, 0.0, False)):
        cfg = _cfg(tmp_path, risk="nnpu", beta=beta, gamma=gamma, weight_exponent=exponent, prior=0.9).validate()
        model = build_model(cfg)
        with torch.no_grad():
            model.convs[-1].weight.zero_()
            model.convs[-1].bias.fill_(-3.0)
        loss, stats = compute_loss(model, batch, cfg)
        mag = stft(torch.cat((batch.u, batch.p))).abs()
        f = pu_logits(model, mag, cfg).detach()
        w = bin_weight(mag, exponent)
        want = pu_risk(f[2:], f[:2], w[2:], w[:2], 0.9, "nnpu", beta, gamma)
        assert float(want.corrected) == float(fires) == float(stats["corrected"])
        assert math.isclose(float(loss.detach()), float(want.loss), rel_tol=1e-5)
        if fires:  # β and γ only act through the correction
            swapped = pu_risk(f[2:], f[:2], w[2:], w[:2], 0.9, "nnpu", gamma, beta)
            assert not math.isclose(float(loss.detach()), float(swapped.loss), rel_tol=1e-3)
        else:  # the weights: |X|^0 = 1, not |X|
            unit = pu_risk(f[2:], f[:2], bin_weight(mag[2:], 1.0), bin_weight(mag[:2], 1.0), 0.9, "nnpu")
            assert not math.isclose(float(loss.detach()), float(unit.loss), rel_tol=1e-3)


def test_pn_loss_in_the_trainer_compares_the_masked_noisy_with_the_clean(tmp_path):
    """clean = ½·noisy and logits ≡ 0 (mask σ(0) = ½): the masked noisy magnitude is the clean one, loss exactly 0;
    with the two swapped it would be (½|X| − |X|)² > 0."""
    from trainer.data import Batch

    cfg = _cfg(tmp_path, method="pn").validate()
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    u = torch.from_numpy(np.random.default_rng(4).standard_normal((2, 4000)).astype(np.float32))
    loss, _ = compute_loss(model, Batch(u=u, clean=0.5 * u), cfg)
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-10)
    loss, _ = compute_loss(model, Batch(u=u, clean=0.25 * u), cfg)
    assert float(loss.detach()) > 1e-3


def test_mixit_loss_in_the_trainer_separates_the_mixture_into_the_noisy_clip_and_the_noise(tmp_path):
    """noisy = x, noise = ½x, mixture = 1.5x and logits ≡ 0 (masks ½, ½, ½): both assignments give
    (1.5 − 1)²·m + (0.75 − 0.5)²·m = 0.3125·m, m = mean |X|². The noisy and noise magnitudes swapped would give
    (1.5 − 0.5)²·m + (0.75 − 1)²·m = 1.0625·m; the noisy clip taken for the mixture, (1 − 1)² + (0.5 − 0.5)² = 0."""
    from rtpulse.stft import stft
    from trainer.data import Batch

    cfg = _cfg(tmp_path, method="mixit").validate()
    model = build_model(cfg)
    assert model.config.out_channels == 3
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((2, 4000)).astype(np.float32))
    loss, _ = compute_loss(model, Batch(u=x, mix=1.5 * x, noise=0.5 * x), cfg)
    m = float(stft(x).abs().square().mean())
    assert float(loss.detach()) == pytest.approx(0.3125 * m, rel=1e-4)


def test_a_warm_start_as_long_as_the_run_is_refused(tmp_path):
    from rtpulse.errors import RtpulseError

    # warm-start epochs never compete for best: the run would keep epoch 1 as best.safetensors whatever followed
    with pytest.raises(RtpulseError, match="--pvu-steps 10 covers all 10 steps .* never reach --risk nnpu"):
        _cfg(tmp_path, pvu_steps=10, epochs=2, steps_per_epoch=5).validate()
    _cfg(tmp_path, pvu_steps=9, epochs=2, steps_per_epoch=5).validate()  # one nnPU step left: fine
    _cfg(tmp_path, pvu_steps=10, epochs=2, steps_per_epoch=5, risk="pvu").validate()  # all P-vs-U anyway
