"""The one SI-SNR of the project (the paper's definition: no mean removal)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

EPS = 1e-8  # relative: both signals have unit energy when it is used, so SI-SNR lies within ±80 dB
TINY = torch.finfo(torch.float64).tiny


def si_snr(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SNR in dB over the last axis: ``[..., T]`` × ``[..., T]`` → ``[...]``.

    target = (<ŝ, s> / ‖s‖²)·s, SI-SNR = 10·log10(‖target‖² / ‖ŝ − target‖²). No mean removal, as in PULSE.
    Bounded by ±80 dB (10·log10 EPS) whatever the signals' level.
    """
    estimate, reference = estimate.double(), reference.double()
    # the value does not depend on either signal's scale, so each is first brought to unit energy: EPS is then relative
    # to the signals, not absolute (a 40 dB estimate of a reference at −80 dBFS scored 36.5 dB, one at −100 dBFS 18.8 dB,
    # and an exact copy of a −120 dBFS reference −9 dB). A silent signal stays silent: the −80 dB floor below
    estimate = estimate / estimate.square().sum(-1, keepdim=True).sqrt().clamp_min(TINY)
    reference = reference / reference.square().sum(-1, keepdim=True).sqrt().clamp_min(TINY)
    alpha = (estimate * reference).sum(-1, keepdim=True) / ((reference**2).sum(-1, keepdim=True) + EPS)
    target = alpha * reference
    noise = estimate - target
    # EPS outside the ratio: a silent estimate (target = noise = 0) scores 10·log10(EPS) = −80 dB, the floor, not
    # the 0 dB of EPS/EPS (which would beat a noisy input below 0 dB, and reward muting everything)
    return 10 * torch.log10((target**2).sum(-1) / ((noise**2).sum(-1) + EPS) + EPS)


def si_snr_np(estimate: np.ndarray, reference: np.ndarray) -> float:
    """:func:`si_snr` for two 1-D numpy signals (convenience for evaluation code)."""
    return float(si_snr(torch.from_numpy(np.asarray(estimate)), torch.from_numpy(np.asarray(reference))))


def si_snri(estimate: np.ndarray, noisy: np.ndarray, reference: np.ndarray) -> float:
    """SI-SNR improvement: SI-SNR(estimate) − SI-SNR(noisy input), both against the clean reference."""
    return si_snr_np(estimate, reference) - si_snr_np(noisy, reference)


# pesq's C code keeps at most 50 utterances (P.862) and writes past that array when the reference holds more: what
# follows is undefined, up to a segmentation fault that ends the whole `rtpulse eval` run without a word (noise in 60
# one-second bursts crashes it at 60 s, 90 s of speech-like bursts at 1.5 Hz too). P.862.3 asks for references of
# 8…30 s with at most 50 utterances; beyond 30 s no score is taken
PESQ_MAX_SECONDS = 30


def perceptual_scores(estimate: np.ndarray, reference: np.ndarray, rate: int = 16_000) -> dict:
    """PESQ-WB and STOI when the ``[eval]`` extra is installed; absent keys when it is not.

    ``pesq_wb`` is None where pesq refuses the input (e.g. a silent estimate, under ¼ s) or it is over
    PESQ_MAX_SECONDS, ``stoi`` where pystoi does (too short): a gap in the table, not a crash.
    """
    out: dict = {}
    try:
        from pesq import pesq

        if reference.size > PESQ_MAX_SECONDS * rate:
            raise ValueError("too long for pesq")  # see PESQ_MAX_SECONDS: never passed to it
        out["pesq_wb"] = float(pesq(rate, reference.astype(np.float64), estimate.astype(np.float64), "wb"))
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 — pesq raises its own error types on silent or odd input
        out["pesq_wb"] = None
    try:
        from pystoi import stoi

        with warnings.catch_warnings():
            # too short for its 30-frame (384 ms) window, pystoi warns and returns 1e-5 (or fails): not a score
            warnings.filterwarnings("error", message="Not enough STFT frames", category=RuntimeWarning)
            out["stoi"] = float(stoi(reference, estimate, rate, extended=False))
    except ImportError:
        pass
    except (RuntimeWarning, ValueError, IndexError):
        out["stoi"] = None
    return out
