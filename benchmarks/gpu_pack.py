"""Pack a compact copy of the training data (and the wheels the GPU image lacks) for a device run.

The device tool carries at most 64 MiB of working tree, the repository included, and its image has torch,
numpy, scipy, typer, rich and safetensors but not soundfile. ``../shared/data`` is 94 MB of Ogg/Opus, so this copies all of the
noise and the dev speech and as much train speech as fits ``--budget-mib``, taken round-robin over the
manifest's voice groups (so a subset keeps every language and corpus, not the first folders alphabetically).
Files are copied as they are (Opus is already the compact form; re-encoding would add artefacts).

    python -m benchmarks.gpu_pack --data ../shared/data --out .data/gpu
    # then, with the device tool: carry [".data/gpu"], command:
    #   python3 -m pip install -q --no-index --no-deps --target /tmp/site .data/gpu/wheels/*.whl &&
    #   PYTHONPATH=/tmp/site:$PWD python3 -m rtpulse.cli bench training --data .data/gpu/data --device cuda ...
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from rtpulse.audio import find_audio_files
from rtpulse.errors import RtpulseError
from rtpulse.files import temp_beside

# soundfile and its two pure-Python/cffi needs; the device image (Python 3.12) has everything else rtpulse uses.
WHEELS = ("soundfile==0.14.0", "cffi==2.0.0", "pycparser==2.23")
DEVICE_PYTHON = "3.12"
# cffi is compiled per Python: its wheels for these too (~0.2 MB each), in case the image's Python is not 3.12 (it
# cannot be checked from here, and a pack for the wrong one costs the one call); gpu_session lets pip pick
OTHER_PYTHONS = ("3.10", "3.11", "3.13", "3.14")
MIB = 1 << 20


def _groups(data: Path, files: list[Path]) -> dict[str, list[Path]]:
    """Train speech files by voice group: the manifest's ``group`` column, else the parent folder."""
    by_path = {rel: row.get("group") or "" for rel, row in _manifest(data).items()}
    groups: dict[str, list[Path]] = defaultdict(list)
    for p in files:
        rel = p.relative_to(data).as_posix()
        groups[by_path.get(rel) or p.parent.relative_to(data).as_posix()].append(p)
    return dict(sorted(groups.items()))


def _manifest(data: Path) -> dict[str, dict]:
    """``data/manifest.csv`` rows by path ({} without one)."""
    manifest = data / "manifest.csv"
    if not manifest.is_file():
        return {}
    try:
        with manifest.open(newline="") as f:
            return {row["path"]: row for row in csv.DictReader(f)}
    except (KeyError, csv.Error, UnicodeDecodeError) as e:
        raise RtpulseError(f"{manifest}: not a manifest with a 'path' column ({e})") from None


def _manifest_seconds(data: Path) -> dict[str, float]:
    out = {}
    for rel, row in _manifest(data).items():
        try:
            out[rel] = float(row.get("seconds") or 0)
        except ValueError:
            raise RtpulseError(f"{data / 'manifest.csv'}: seconds {row.get('seconds')!r} of {rel} is not a number") from None
    return out


def choose_files(data: Path, budget_bytes: int, seed: int = 0) -> tuple[list[Path], dict]:
    """Every noise and dev-speech file, then train speech round-robin over voice groups while it fits."""
    parts = {name: data / name for name in ("noise/train", "noise/dev", "speech/dev", "speech/train")}
    for d in parts.values():
        if not d.is_dir():
            raise RtpulseError(f"no {d}: --data must hold speech/{{train,dev}} and noise/{{train,dev}}")
    fixed = [p for name in ("noise/train", "noise/dev", "speech/dev") for p in find_audio_files(parts[name])]
    used = sum(p.stat().st_size for p in fixed)
    if used > budget_bytes:
        raise RtpulseError(f"noise and dev speech alone are {used / MIB:.1f} MiB, over the {budget_bytes / MIB:.1f} MiB budget")
    rng = np.random.default_rng(seed)
    queues = []
    for files in _groups(data, find_audio_files(parts["speech/train"])).values():
        order = rng.permutation(len(files))
        queues.append([files[i] for i in order])
    train: list[Path] = []
    total_train = sum(len(q) for q in queues)
    while any(queues):
        for q in queues:
            if q:
                p = q.pop(0)
                size = p.stat().st_size
                if used + size <= budget_bytes:  # a file that does not fit is skipped; smaller ones may still
                    train.append(p)
                    used += size
    if not total_train:
        raise RtpulseError(f"no train speech in {parts['speech/train']}: a pack without it cannot train")
    if not train:  # a pack the trainer cannot use: refused here, not on the GPU's time
        raise RtpulseError(f"no train speech file fits the {budget_bytes / MIB:.1f} MiB budget beside the noise and dev "
                           f"speech ({used / MIB:.1f} MiB); raise --budget-mib")
    stats = {"bytes": used, "fixed_files": len(fixed), "train_files": len(train), "train_files_available": total_train}
    return fixed + sorted(train), stats


def download_wheels(dest: Path) -> list[Path]:
    """The wheels for the device's Python (required), then cffi's for OTHER_PYTHONS (where pip finds them)."""
    dest.mkdir(parents=True, exist_ok=True)
    for version in (DEVICE_PYTHON, *OTHER_PYTHONS):
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
               version, "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform",
               "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d", str(dest),
               *(WHEELS if version == DEVICE_PYTHON else [w for w in WHEELS if w.startswith("cffi==")])]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0 and version == DEVICE_PYTHON:
            lines = done.stderr.strip().splitlines()
            raise RtpulseError(f"pip download failed: {lines[-1] if lines else f'exit status {done.returncode}'}")
    return sorted(dest.glob("*.whl"))


def pack(data: Path, out: Path, budget_mib: float, wheels: bool = True, seed: int = 0) -> dict:
    """Write ``out/data/...`` (same layout as ``data``), ``out/wheels/`` and ``out/pack.json``; all or nothing."""
    data = data.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RtpulseError(f"{out} exists and is not an empty folder; remove it or choose another --out")
    if out.resolve().is_relative_to(data):  # a later pack would count this one's noise and dev files as train speech
        raise RtpulseError(f"--out {out} is inside --data {data}; put the pack outside the data it is made from")
    wheel_room = 3 * MIB if wheels else 0  # the wheels are ~2.5 MB (cffi for five Pythons)
    if not math.isfinite(budget_mib) or budget_mib * MIB <= wheel_room:
        raise RtpulseError(f"--budget-mib must be a number above {wheel_room / MIB:g} (the wheels' room), got {budget_mib:g}")
    files, stats = choose_files(data, int(budget_mib * MIB) - wheel_room, seed)
    tmp = temp_beside(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for p in files:
            dst = tmp / "data" / p.relative_to(data)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dst)
        if (data / "README.md").is_file():
            shutil.copy2(data / "README.md", tmp / "data" / "README.md")  # the licences travel with the audio
        stats["wheels"] = [w.name for w in download_wheels(tmp / "wheels")] if wheels else []
        seconds = _manifest_seconds(data)
        stats["train_hours"] = round(sum(seconds.get(p.relative_to(data).as_posix(), 0.0) for p in files
                                         if p.is_relative_to(data / "speech" / "train")) / 3600, 2)
        stats["mib"] = round(sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) / MIB, 2)
        if stats["mib"] > budget_mib:  # the wheels had a fixed allowance; their real size decides
            raise RtpulseError(f"the pack came to {stats['mib']} MiB, over --budget-mib {budget_mib:g}; lower the budget")
        stats["source"] = str(data)
        (tmp / "pack.json").write_text(json.dumps(stats, indent=1) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="root with speech/{train,dev} and noise/{train,dev}")
    p.add_argument("--out", type=Path, default=Path(".data/gpu"), help="an ignored folder to carry (default .data/gpu)")
    p.add_argument("--budget-mib", type=float, default=56.0, help="size of the pack, wheels included (default 56)")
    p.add_argument("--no-wheels", action="store_true", help="do not download the soundfile wheels")
    args = p.parse_args()
    try:
        stats = pack(args.data, args.out, args.budget_mib, wheels=not args.no_wheels)
    except (RtpulseError, OSError) as e:
        sys.exit(f"error: {e}")
    print(
        f"{args.out}: {stats['mib']} MiB — {stats['fixed_files']} noise/dev files, {stats['train_files']} of "
        f"{stats['train_files_available']} train speech files ({stats['train_hours']} h), wheels: {', '.join(stats['wheels']) or 'none'}"
    )


if __name__ == "__main__":
    main()
