"""Where a PU model's SI-SNRi is lost: the mask mapping, or the classifier's ranking of bins.

For each test mixture (the quality benchmark's set) it scores, with the project's one SI-SNR:
- ``soft``: the model's soft mask σ(−s·f) with its own sharpness s (``config.mask_sharpness``), as shipped;
- ``posterior``: 1 − e^f/2, the PU posterior of speech when f is the P-vs-U optimum log(2π p_P / p_U);
- ``f_map``: the best mask that is a function of f alone — a least-squares gain per f quantile (GROUPS of them),
  fitted in-sample with the clean references of these same files: what any remapping of f could reach, roughly;
- ``irm``: the ideal ratio mask |S|² / (|S|² + |N|²) on the same STFT: a reference, not the best real mask (the
  truncated phase-sensitive mask clip(Re(S·X*) / |X|², 0, 1) scores about 1 dB higher).
If ``f_map`` sits near ``soft``, no post-processing of f helps: the classifier must rank bins better.
It also reports the mean mask (|X|-weighted) on noise-dominated bins (local SNR < −10 dB) and on speech-dominated
bins (> +10 dB).

    python -m benchmarks.mask_headroom --data /work/shared/data -m rtpulse/weights/default.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.quality import DEFAULT_DATA, add_mixture_options, generated_set
from rtpulse.errors import RtpulseError
from rtpulse.metrics import si_snr
from rtpulse.model import load_model
from rtpulse.stft import istft, stft
from rtpulse.stream import mask_gain, sanitize, tail_for_lookahead

MASKS = ("soft", "posterior", "f_map", "irm")
GROUPS = 40  # f quantiles of the f_map (one gain each)
DOMINANT_DB = 10.0


def fit_f_map(
    logits: list[torch.Tensor], mixes: list[torch.Tensor], cleans: list[torch.Tensor], groups: int = GROUPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(edges, gains): the gain per f quantile that minimises Σ |g·X − S|² over all bins (clipped to [0, 1]).
    Shapes: each entry ``[F, T]`` (f real, X and S complex)."""
    f_all = torch.cat([f.flatten() for f in logits])
    pick = torch.randperm(f_all.numel(), generator=torch.Generator().manual_seed(0))[:200_000]
    edges = torch.quantile(f_all[pick], torch.linspace(0, 1, groups + 1)[1:-1])
    num, den = torch.zeros(groups, dtype=torch.float64), torch.zeros(groups, dtype=torch.float64)
    for f, x, s in zip(logits, mixes, cleans):
        group = torch.bucketize(f, edges).flatten()
        num.index_add_(0, group, (s * x.conj()).real.flatten().double())
        den.index_add_(0, group, x.abs().square().flatten().double())
    return edges, (num / den.clamp_min(1e-20)).clamp(0, 1).float()


def masks_for(
    f: torch.Tensor, x: torch.Tensor, s: torch.Tensor, edges: torch.Tensor, gains: torch.Tensor, sharpness: float = 1.0
) -> dict:
    n = x - s
    return {
        "soft": mask_gain(f, "soft", sharpness=sharpness),  # the engine's own soft mask
        "posterior": mask_gain(f, "posterior"),
        "f_map": gains[torch.bucketize(f, edges)],
        "irm": s.abs().square() / (s.abs().square() + n.abs().square()).clamp_min(1e-20),
    }


def headroom(model, noisy: list[np.ndarray], clean: list[np.ndarray]) -> dict:
    """Mean SI-SNRi (dB) per mask of :data:`MASKS` and the mean soft mask on noise- / speech-dominated bins."""
    xs, ss, fs = [], [], []
    with torch.no_grad():
        for x, s in zip(noisy, clean):
            tail = tail_for_lookahead(x.size, model.lookahead)  # the frames rtpulse.stream.enhance computes
            spec = stft(sanitize(torch.from_numpy(x))[None], tail=tail)
            fs.append(model(spec.abs())[0, 0].contiguous())  # bucketize wants it so
            xs.append(spec[0])
            ss.append(stft(torch.from_numpy(s)[None], tail=tail)[0])
    edges, gains = fit_f_map(fs, xs, ss)
    scores = {m: [] for m in MASKS}
    on = {"noise": [0.0, 0.0], "speech": [0.0, 0.0]}
    for f, x, s, x_wave, s_wave in zip(fs, xs, ss, noisy, clean):
        ref = torch.from_numpy(s_wave)
        base = float(si_snr(torch.from_numpy(x_wave), ref))
        masks = masks_for(f, x, s, edges, gains, model.config.mask_sharpness)
        for name, mask in masks.items():
            scores[name].append(float(si_snr(istft(x * mask, x_wave.size), ref)) - base)
        local = 10 * torch.log10(s.abs().square() / (x - s).abs().square().clamp_min(1e-20) + 1e-20)
        soft, w = masks["soft"], x.abs()
        for kind, sel in (("noise", local < -DOMINANT_DB), ("speech", local > DOMINANT_DB)):
            on[kind][0] += float((soft * w)[sel].sum())
            on[kind][1] += float(w[sel].sum())
    out = {m: float(np.mean(v)) for m, v in scores.items()}
    out.update({f"soft_on_{k}_bins": a / b if b else float("nan") for k, (a, b) in on.items()})
    return out


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="root with speech/dev and noise/dev")
    p.add_argument("-m", "--model", type=Path, action="append", required=True, help="model file(s)")
    p.add_argument("--count", type=int, default=40)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--seed", type=int, default=0)
    add_mixture_options(p)
    args = p.parse_args()
    if args.count < 1 or not args.seconds > 0:
        p.error("--count must be ≥ 1 and --seconds > 0")
    try:
        models = [(path, load_model(path).eval()) for path in args.model]  # before minutes of decoding
        for part in ("speech", "noise"):
            if not (args.data / part / "dev").is_dir():
                raise RtpulseError(f"no {args.data / part / 'dev'}: give --data ROOT with speech/dev and noise/dev")
        items = generated_set(args.data, args.count, args.seconds, args.seed, min_seconds=args.min_speech_seconds,
                              reference_floor_db=args.reference_floor_db)
        noisy, clean = [it.noisy for it in items], [it.clean for it in items]
        print(f"SI-SNRi dB on {len(items)} test mixtures (--data {args.data}, seed {args.seed})\n")
        print("| model | " + " | ".join(MASKS) + " | soft mask on noise bins | on speech bins |")
        print("|---|" + "---|" * (len(MASKS) + 2))
        for path, model in models:
            r = headroom(model, noisy, clean)  # a model whose output holds NaN: a one-line error
            cells = [f"{r[m]:+.2f}" for m in MASKS]
            cells += [f"{r['soft_on_noise_bins']:.2f}", f"{r['soft_on_speech_bins']:.2f}"]
            print(f"| {path} | " + " | ".join(cells) + " |")
    except (RtpulseError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
