"""Pick a model's soft-mask sharpness s (the mask σ(−s·f)) on scored mixtures; optionally write the model with it.

The PU logits keep their meaning (f = 0 stays the decision boundary); s only decides how hard the soft mask
commits. A briefly trained PU classifier is less confident than SI-SNR rewards, so s > 1 gains SI-SNRi; PESQ and
STOI fall once the mask is too hard, so of the values within TOLERANCE_DB of the best the gentlest wins.

The selection mixtures are made like the quality benchmark's test set (benchmarks.quality.generated_set), from
the **train** split by default: speakers and noise recordings the test set (dev split) never uses (the model was
trained on them as noisy mixtures and noise clips, so this set ranks s, never one model against another). Clean speech
only scores the candidates, as it picks the trainer's checkpoint; the network is not trained on it. `rtpulse train`
writes s = 1 (and selects checkpoints with it); s is chosen afterwards with this tool.

    python -m benchmarks.mask_sharpness --data /work/shared/data -m MODEL [--write OUT]
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.quality import DEFAULT_DATA, add_mixture_options, generated_set
from rtpulse.errors import RtpulseError
from rtpulse.files import check_output_file, discard, temp_beside
from rtpulse.metrics import si_snr
from rtpulse.model import MAX_SHARPNESS, MIN_SHARPNESS, load_model, save_model
from rtpulse.stft import istft, stft
from rtpulse.stream import mask_gain, sanitize, tail_for_lookahead

GRID = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
TOLERANCE_DB = 0.05


@dataclasses.dataclass
class Case:
    """One mixture: logits f and noisy STFT X ``[F, M]``, noisy and clean waveforms ``[T]``."""

    logits: torch.Tensor
    spec: torch.Tensor
    noisy: torch.Tensor
    clean: torch.Tensor


def cases_for(model, noisy: list[np.ndarray], clean: list[np.ndarray]) -> list[Case]:
    """The model's logits on each mixture, computed once (the frames rtpulse.stream.enhance computes)."""
    out = []
    with torch.no_grad():
        for x, s in zip(noisy, clean, strict=True):
            wave = sanitize(torch.from_numpy(x))
            spec = stft(wave[None], tail=tail_for_lookahead(x.size, model.lookahead))[0]
            out.append(Case(model(spec.abs()[None])[0, 0], spec, wave, torch.from_numpy(s)))
    return out


def soft_gains(cases: list[Case], sharpness: float, noisy_scores: list[float] | None = None) -> np.ndarray:
    """Each case's SI-SNRi (dB) with the soft mask σ(−s·f); ``noisy_scores``: the inputs' SI-SNR, if known."""
    if noisy_scores is None:
        noisy_scores = [float(si_snr(c.noisy, c.clean)) for c in cases]
    return np.array([
        float(si_snr(istft(c.spec * mask_gain(c.logits, "soft", sharpness=sharpness), c.noisy.numel()), c.clean)) - base
        for c, base in zip(cases, noisy_scores, strict=True)
    ])


def grid_scores(cases: list[Case], grid: tuple[float, ...] = GRID) -> list[float]:
    """Mean SI-SNRi (dB) of the soft mask σ(−s·f) for each s of ``grid``."""
    noisy_scores = [float(si_snr(c.noisy, c.clean)) for c in cases]  # the same for every s
    return [float(np.mean(soft_gains(cases, s, noisy_scores))) for s in grid]


def pick(grid: tuple[float, ...], scores: list[float], tolerance_db: float = TOLERANCE_DB) -> float:
    """The smallest s whose score is within ``tolerance_db`` of the best."""
    if not all(math.isfinite(v) for v in scores):
        raise RtpulseError(f"non-finite SI-SNRi among {scores}: the model's outputs are not usable")
    best = max(scores)
    return min(s for s, v in zip(grid, scores, strict=True) if v >= best - tolerance_db)


def write_new(model, path: Path) -> None:
    """:func:`save_model` to a temp name beside ``path``, then a hard link: never replaces a file that appeared
    meanwhile (os.replace would)."""
    tmp = temp_beside(path)
    try:
        save_model(model, tmp)
        os.link(tmp, path)
    except FileExistsError:
        raise RtpulseError(f"{path} exists; give a new path for the model with the chosen sharpness") from None
    finally:
        discard(tmp)


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="root with speech/SPLIT and noise/SPLIT")
    p.add_argument("-m", "--model", type=Path, required=True, help="model file")
    p.add_argument("--split", default="train", help="which split's mixtures choose s (default: train)")
    p.add_argument("--count", type=int, default=40)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--seed", type=int, default=1)
    add_mixture_options(p)
    p.add_argument("--write", type=Path, help="write the model with the chosen sharpness here (a new file)")
    args = p.parse_args()
    if not 1 <= args.count <= 10_000:
        p.error("--count must be 1…10000")
    if not 0 <= args.seed < 2**32:
        p.error("--seed must be 0…2^32−1")
    try:
        if args.write is not None:
            if args.write.suffix != ".safetensors":  # a model under an audio name would be "played" by mistake
                raise RtpulseError(f"--write {args.write}: a model file's name ends in .safetensors")
            if args.write.exists():
                raise RtpulseError(f"{args.write} exists; give a new path for the model with the chosen sharpness")
            check_output_file(args.write, (args.model,))  # its folder: before minutes of scoring
        model = load_model(args.model).eval()  # before minutes of decoding
        items = generated_set(args.data, args.count, args.seconds, args.seed, split=args.split,
                              min_seconds=args.min_speech_seconds, reference_floor_db=args.reference_floor_db)
        grid = tuple(s for s in GRID if MIN_SHARPNESS <= s <= MAX_SHARPNESS)
        scores = grid_scores(cases_for(model, [it.noisy for it in items], [it.clean for it in items]), grid)
        chosen = pick(grid, scores)
    except (RtpulseError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"soft-mask SI-SNRi (dB) on {len(items)} mixtures of the {args.split} split (seed {args.seed}), {args.model}")
    print("\n| sharpness | " + " | ".join(f"{s:g}" for s in grid) + " |")
    print("|---|" + "---|" * len(grid))
    print("| SI-SNRi | " + " | ".join(f"{v:+.2f}" for v in scores) + " |")
    print(f"\nchosen: {chosen:g} (the gentlest within {TOLERANCE_DB:g} dB of the best, {max(scores):+.2f})")
    if chosen == grid[-1]:
        print(f"note: {chosen:g} is the largest value tried; a sharper mask might score higher still")
    if args.write is not None:
        extra = dict(model.config.extra)
        extra["mask_sharpness_selection"] = {
            "split": args.split, "count": len(items), "seconds": args.seconds, "seed": args.seed,
            "grid": list(grid), "si_snri": [round(v, 3) for v in scores],
        }
        # mask "soft": the sharpness acts on the soft mask only, and a trainer's model names "binary"
        model.config = dataclasses.replace(model.config, mask="soft", mask_sharpness=chosen, extra=extra)
        try:
            write_new(model, args.write)
        except (RtpulseError, OSError) as e:
            sys.exit(f"error: {e}")
        print(f"wrote {args.write} (mask soft, sharpness {chosen:g})")


if __name__ == "__main__":
    main()
