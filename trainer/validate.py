"""Validation during training: dev SI-SNRi on fixed mixtures, or the nnPU risk on held-out P/U clips."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rtpulse.metrics import si_snr
from rtpulse.model import PulseCNN
from rtpulse.stft import stft
from rtpulse.stream import enhance
from trainer.losses import bin_weight, pu_risk

EVAL_BATCH = 8


@dataclass
class DevData:
    """Fixed held-out clips ``[N, T]`` (CPU). ``noisy``/``clean`` for SI-SNRi; ``u``/``p`` for the PU risk."""

    noisy: torch.Tensor | None = None
    clean: torch.Tensor | None = None
    u: torch.Tensor | None = None
    p: torch.Tensor | None = None
    p_noise: torch.Tensor | None = None  # --p-level mixed: the noise part of each P clip (only its bins are P)


@torch.no_grad()
def dev_sisnri(model: PulseCNN, noisy: torch.Tensor, clean: torch.Tensor, device) -> dict[str, float]:
    """Mean SI-SNRi (dB) of the binary and the soft mask over ``[N, T]`` mixtures, via rtpulse.stream.enhance."""
    model.eval()
    sums = {"binary": 0.0, "soft": 0.0}
    for i in range(0, noisy.shape[0], EVAL_BATCH):
        x = noisy[i : i + EVAL_BATCH].to(device)
        s = clean[i : i + EVAL_BATCH].to(device)
        base = si_snr(x, s)
        for mask in sums:
            sums[mask] += float((si_snr(enhance(model, x, mask), s) - base).sum())
    return {f"dev_sisnri_{m}": v / noisy.shape[0] for m, v in sums.items()}


@torch.no_grad()
def dev_pu_risk(model: PulseCNN, u: torch.Tensor, p: torch.Tensor, cfg, device,
                p_noise: torch.Tensor | None = None) -> dict[str, float]:
    """Held-out nnPU risk π R_P^+ + max(0, R_U^- − π R_P^-) (lower is better) and the U speech fraction.
    With ``p_noise`` (``--p-level mixed``) only the P clips' bins where that noise dominates count, as in training."""
    from trainer.train import mixed_p_bins, pu_logits  # train imports this module

    model.eval()
    tot = {"risk_p": 0.0, "risk_u": 0.0, "speech": 0.0}
    n = 0
    for i in range(0, u.shape[0], EVAL_BATCH):
        mu = stft(u[i : i + EVAL_BATCH].to(device)).abs()
        sp = stft(p[i : i + EVAL_BATCH].to(device))
        mp = sp.abs()
        noise_part = None if p_noise is None else p_noise[i : i + EVAL_BATCH].to(device)
        fu, fp = pu_logits(model, torch.cat((mu, mp)), cfg).chunk(2)  # P at the U gain under --p-gain u
        r = pu_risk(fp, fu, bin_weight(mp, cfg.weight_exponent), bin_weight(mu, cfg.weight_exponent),
                    cfg.prior, "upu", p_bins=mixed_p_bins(sp, noise_part, cfg.p_mix_margin))
        b = mu.shape[0]  # batches weigh by their clips, so a short last batch counts no more than its share
        tot["risk_p"] += b * float(r.risk_p)
        tot["risk_u"] += b * float(r.risk_u)
        tot["speech"] += b * float((fu < 0).float().mean())
        n += b
    rp, ru = tot["risk_p"] / n, tot["risk_u"] / n
    return {"val_risk": rp + max(0.0, ru), "val_risk_p": rp, "val_risk_u": ru, "val_u_speech": tot["speech"] / n}
