"""Two models on the same mixtures, file by file: B − A soft-mask SI-SNRi with its 95 % interval.

A mean over 40 mixtures moves by ±0.8 dB with the draw of files; two models on the same files differ far less, so a
change is judged by the per-file difference (a paired t interval) and by how many files it wins, and is broken down
by the noise recording mixed in. The mixtures are benchmarks.mask_sharpness's: the dev split at seed 1 by default
(the selection set: unseen speakers and noise recordings); seed 0 is the quality benchmark's test set. Each model's
soft mask uses its own stored sharpness unless ``--sharpness-a`` / ``--sharpness-b`` say otherwise.

    python -m benchmarks.paired --data /work/shared/data A.safetensors B.safetensors
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.mask_sharpness import cases_for, soft_gains
from benchmarks.quality import DEFAULT_DATA, add_mixture_options, generated_set, mean_ci
from rtpulse.errors import RtpulseError
from rtpulse.model import MAX_SHARPNESS, MIN_SHARPNESS, load_model


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """(mean of b − a, half-width of its 95 % t interval, files where b is ahead) for per-file scores."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if d.size < 2:
        raise RtpulseError("a paired interval needs at least 2 mixtures")
    ci = mean_ci(list(d))
    return ci["mean"], ci["ci95"], int((d > 0).sum())


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_a", type=Path, help="the reference model file")
    p.add_argument("model_b", type=Path, help="the model compared with it")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="root with speech/SPLIT and noise/SPLIT")
    p.add_argument("--sharpness-a", type=float, help="soft-mask sharpness for A (default: its stored one)")
    p.add_argument("--sharpness-b", type=float, help="soft-mask sharpness for B (default: its stored one)")
    p.add_argument("--split", default="dev", help="which split's mixtures (default: dev)")
    p.add_argument("--count", type=int, default=40)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--seed", type=int, default=1)
    add_mixture_options(p)
    args = p.parse_args()
    if not 2 <= args.count <= 10_000:
        p.error("--count must be 2…10000")
    if not 0 <= args.seed < 2**32:
        p.error("--seed must be 0…2^32−1")
    for s in (args.sharpness_a, args.sharpness_b):
        if s is not None and not MIN_SHARPNESS <= s <= MAX_SHARPNESS:
            p.error(f"--sharpness must be {MIN_SHARPNESS:g}…{MAX_SHARPNESS:g}, got {s:g}")
    try:
        models = [load_model(args.model_a).eval(), load_model(args.model_b).eval()]  # before minutes of decoding
        sharp = [m.config.mask_sharpness if s is None else s
                 for m, s in zip(models, (args.sharpness_a, args.sharpness_b), strict=True)]
        items = generated_set(args.data, args.count, args.seconds, args.seed, split=args.split,
                              min_seconds=args.min_speech_seconds, reference_floor_db=args.reference_floor_db)
        noisy, clean = [it.noisy for it in items], [it.clean for it in items]
        a, b = (soft_gains(cases_for(m, noisy, clean), s) for m, s in zip(models, sharp, strict=True))
        mean, half, wins = paired_difference(a, b)
    except (RtpulseError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"soft-mask SI-SNRi (dB) on {len(items)} mixtures of the {args.split} split (seed {args.seed})")
    print(f"A {args.model_a} (s = {sharp[0]:g}): {a.mean():+.2f}")
    print(f"B {args.model_b} (s = {sharp[1]:g}): {b.mean():+.2f}")
    print(f"B − A per file: {mean:+.3f} ± {half:.3f} (95 %), B ahead on {wins} of {len(items)}")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        groups[it.noise or "?"].append(i)
    print("\n| noise recording | files | A | B |\n|---|---|---|---|")
    for name, idx in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        print(f"| {name} | {len(idx)} | {a[idx].mean():+.2f} | {b[idx].mean():+.2f} |")


if __name__ == "__main__":
    main()
