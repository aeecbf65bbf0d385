"""Training losses: PU (weighted sigmoid, nnPU / uPU), PN (signal approximation), MixIT.

Convention everywhere: the network's channel-0 logit f ≥ 0 means "noise" — the positive class of PU,
y = +1 — and f < 0 means "speech". Shapes: logits and magnitudes ``[B, F, T]`` (one channel), MixIT
logits ``[B, 3, F, T]``. Losses are computed in float32 even under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

EPS = 1e-7
RISKS = ("nnpu", "upu", "pvu")


def sigmoid_loss(margin: torch.Tensor) -> torch.Tensor:
    """ℓ(z) = σ(−z) for the margin z = y·f (Kiryo et al. 2017)."""
    return torch.sigmoid(-margin)


def bin_weight(mag: torch.Tensor, exponent: float) -> torch.Tensor:
    """w = (|X| + ε)^p: p = 1 is PULSE's weighted loss, p = 0 the unweighted ablation (w ≡ 1)."""
    if exponent == 0:
        return torch.ones_like(mag)
    return (mag + EPS) ** exponent


@dataclass
class PURisk:
    """loss: what to back-propagate. risk_p: π·R_P^+. risk_u: R_U^- − π·R_P^- (before the correction).

    corrected: 1.0 where the non-negative correction fired (risk_u < −β, nnPU only), else 0.0.
    All are 0-dim float32 tensors (no host sync needed to build them).
    """

    loss: torch.Tensor
    risk_p: torch.Tensor
    risk_u: torch.Tensor
    corrected: torch.Tensor


def pu_risk(
    f_p: torch.Tensor,
    f_u: torch.Tensor,
    w_p: torch.Tensor,
    w_u: torch.Tensor,
    prior: float = 0.7,
    risk: str = "nnpu",
    beta: float = 0.0,
    gamma: float = 1.0,
    p_bins: torch.Tensor | None = None,
    decide_on: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> PURisk:
    """Weighted sigmoid PU risk over bins: P = noise clips (logits ``f_p``), U = noisy clips (``f_u``).

    R_P^+ = mean_P w·σ(−f), R_P^- = mean_P w·σ(f), R_U^- = mean_U w·σ(f) (means over all bins).
    uPU: loss = π R_P^+ + (R_U^- − π R_P^-). nnPU (Kiryo et al. 2017, Algorithm 1): if
    R_U^- − π R_P^- < −β, step on −γ·(R_U^- − π R_P^-) instead.
    pvu: the P-vs-U logistic warm start, loss = 2π·mean_P w·softplus(−f) + mean_U w·softplus(f). Its optimum
    f = log(2π p_P / p_U) puts f = 0 on the same boundary as the PU Bayes rule (noise iff π p_P ≥ (1−π) p_N,
    i.e. 2π p_P ≥ p_U), and unlike the sigmoid loss it never saturates while the net is still learning to
    tell U from P. Uses only noisy + noise clips, like nnPU. risk_p / risk_u still report the sigmoid terms.
    p_bins (0/1, shaped like ``f_p``): only these bins of the P clips are P data; the P means run over them.
    decide_on: maps this batch's (detached) R_U^- − π R_P^- to the value nnPU's correction is decided on. Under
    DDP it is the mean over ranks, so every rank takes the branch the whole batch would (trainer.ddp.global_mean).
    """
    if risk not in RISKS:
        raise ValueError(f"risk must be one of {RISKS}, got {risk!r}")
    f_p, f_u, w_p, w_u = f_p.float(), f_u.float(), w_p.float(), w_u.float()

    def mean_p(x: torch.Tensor) -> torch.Tensor:
        return x.mean() if p_bins is None else (x * p_bins).sum() / p_bins.sum().clamp_min(1)

    risk_p = prior * mean_p(w_p * sigmoid_loss(f_p))
    risk_u = (w_u * sigmoid_loss(-f_u)).mean() - prior * mean_p(w_p * sigmoid_loss(-f_p))
    if risk == "upu":
        return PURisk(risk_p + risk_u, risk_p, risk_u, torch.zeros((), device=f_p.device))
    if risk == "pvu":
        softplus = torch.nn.functional.softplus
        loss = 2 * prior * mean_p(w_p * softplus(-f_p)) + (w_u * softplus(f_u)).mean()
        return PURisk(loss, risk_p, risk_u, torch.zeros((), device=f_p.device))
    fire = (risk_u.detach() if decide_on is None else decide_on(risk_u.detach())) < -beta
    # torch.where keeps this sync-free: the gradient flows only through the branch that was taken.
    loss = torch.where(fire, -gamma * risk_u, risk_p + risk_u)
    return PURisk(loss, risk_p, risk_u, fire.float())


def pn_loss(f: torch.Tensor, mag_noisy: torch.Tensor, mag_clean: torch.Tensor) -> torch.Tensor:
    """Signal approximation: mean (σ(−f)·|X| − |S|)², speech mask σ(−f) (f ≥ 0 is noise)."""
    return ((torch.sigmoid(-f.float()) * mag_noisy - mag_clean) ** 2).mean()


def mixit_loss(
    logits: torch.Tensor, mag_mix: torch.Tensor, mag_noisy: torch.Tensor, mag_noise: torch.Tensor
) -> torch.Tensor:
    """MixIT with three sigmoid masks on the mixture of mixtures M = noisy + noise.

    logits ``[B, 3, F, T]``: speech mask σ(−f0) (channel 0 keeps the runtime's convention), noise masks
    σ(f1), σ(f2). Assignment A: (speech + noise1 → noisy, noise2 → noise); B: swap 1 and 2. The best
    assignment is chosen per clip (the reference takes it per batch), then averaged over the batch.
    """
    logits = logits.float()
    s, n1, n2 = torch.sigmoid(-logits[:, 0]), torch.sigmoid(logits[:, 1]), torch.sigmoid(logits[:, 2])

    def err(mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((mask * mag_mix - target) ** 2).mean(dim=(-2, -1))  # [B]

    loss_a = err(s + n1, mag_noisy) + err(n2, mag_noise)
    loss_b = err(s + n2, mag_noisy) + err(n1, mag_noise)
    return torch.minimum(loss_a, loss_b).mean()
