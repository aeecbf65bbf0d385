"""SI-SNRi per file against the noise floor of its "clean" reference, for every system of a quality run.

Why the quality benchmark skips references with a steady background (``REFERENCE_FLOOR_DB``): a denoiser that
removes the background under the voice is scored as distorting the reference. This plots the evidence.

    python -m benchmarks.reference_floor benchmarks/results/quality40/quality.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.latency import _save_fig, have_matplotlib
from benchmarks.quality import DEFAULT_DATA, REFERENCE_FLOOR_DB, generated_set
from rtpulse.errors import RtpulseError
from rtpulse.files import check_output_file


def floors_by_file(result: dict, data: Path) -> dict[str, float]:
    """Regenerate a run's test set (its count, length, seed and reference filter; runs from before the filter used
    none) and measure each reference's noise floor. Refuses when the set does not match the run's files."""
    from trainer.data import noise_floor_db

    ts = result.get("test_set") if isinstance(result, dict) else None
    if not isinstance(ts, dict) or not isinstance(result.get("systems"), dict):
        raise RtpulseError("not a quality.json of `rtpulse bench quality` (no test_set and systems)")
    if "count" not in ts:
        raise RtpulseError("its files were given (--noisy/--clean), not generated: there is no set to regenerate")
    items = generated_set(
        data, ts["count"], ts["seconds_max"], ts["seed"], ts["speech_min_seconds"],
        reference_floor_db=ts.get("reference_floor_db", 0.0), level_dbfs=ts.get("level_dbfs", -26.0),
    )
    floors = {it.name: noise_floor_db(it.clean) for it in items}
    scored = {f["file"] for system in result["systems"].values() for f in system.get("files", [])}
    if scored - floors.keys():
        raise RtpulseError(f"{len(scored - floors.keys())} scored files are not in the regenerated set: other --data?")
    return floors


def by_floor(result: dict, floors: dict[str, float], split_db: float) -> dict[str, dict[str, float]]:
    """Mean SI-SNRi per system over files whose reference floor is ≤ / > ``split_db``."""
    table = {}
    for name, system in result["systems"].items():
        rows = [(floors[f["file"]], f["si_snri"]) for f in system.get("files", []) if f["file"] in floors]
        quiet = [v for fl, v in rows if fl <= split_db]
        loud = [v for fl, v in rows if fl > split_db]
        table[name] = {"quiet": float(np.mean(quiet)) if quiet else float("nan"),
                       "background": float(np.mean(loud)) if loud else float("nan"),
                       "n_quiet": len(quiet), "n_background": len(loud)}
    return table


def plot(result: dict, floors: dict[str, float], systems: list[str], path: Path, split_db: float) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in systems:
        files = result["systems"][name].get("files", [])
        rows = sorted((floors[f["file"]], f["si_snri"]) for f in files if f["file"] in floors)
        ax.scatter([r[0] for r in rows], [r[1] for r in rows], s=18, label=name)
    ax.axvline(split_db, color="grey", ls="--", lw=1)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("noise floor of the clean reference (dB: quiet frames vs loud ones)")
    ax.set_ylabel("SI-SNRi (dB)")
    ax.set_title("A background in the reference penalises removing it")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_fig(fig, path)
    plt.close(fig)


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("quality_json", type=Path)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--split-db", type=float, default=REFERENCE_FLOOR_DB)
    p.add_argument("--systems", nargs="*", default=["rtpulse (shipped) offline", "RNNoise", "DeepFilterNet3"])
    p.add_argument("--out", type=Path, default=None, help="PNG (default: reference_floor.png beside the JSON)")
    args = p.parse_args()
    if not -200 <= args.split_db <= 0:  # NaN put every file on neither side: a table of NaN means over 0 files
        p.error(f"--split-db must be −200…0 dB, got {args.split_db}")
    out = args.out or args.quality_json.with_name("reference_floor.png")
    try:
        check_output_file(out, (args.quality_json,))  # a folder, or a path under a file: before minutes of decoding
        result = json.loads(args.quality_json.read_text())
        floors = floors_by_file(result, args.data)
    except (OSError, ValueError, KeyError, RtpulseError) as e:
        sys.exit(f"error: {args.quality_json}: {e}")
    for name, row in by_floor(result, floors, args.split_db).items():
        print(f"{name:34s} floor ≤ {args.split_db:g} dB: {row['quiet']:+.2f} ({row['n_quiet']} files)   "
              f"> {args.split_db:g} dB: {row['background']:+.2f} ({row['n_background']} files)")
    if have_matplotlib():
        try:
            plot(result, floors, [s for s in args.systems if s in result["systems"]], out, args.split_db)
        except (OSError, RtpulseError) as e:
            sys.exit(f"error: cannot write {out}: {e}")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
