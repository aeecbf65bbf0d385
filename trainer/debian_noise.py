"""More real noise recordings for training: ambient sounds shipped in Debian's game data packages.

The train split holds 39 min of noise from a few dozen recordings, and after some epochs the network fits
those recordings rather than unseen ones. PU learning needs no labels for noise, so any noise-only
recording adds data. Debian's mirror is reachable here and its game data packages carry recorded
ambiences (rain, wind, rivers, forest and night insects, engines, workshops) under free licences.

    python -m trainer.debian_noise OUT --dev-noise ../shared/data/noise/dev

downloads the packages below with ``apt-get download`` (nothing is installed), keeps the files the
patterns name (ambiences and machine noise; never voices, crowds, music or animal calls, which would
teach the network that speech-like sounds are noise), drops byte-identical copies and files under
MIN_SECONDS, and writes each as 16 kHz mono FLAC to ``OUT/<package>/…`` with ``OUT/manifest.csv``
(package, version, source file, seconds, licence). With ``--dev-noise``, any file that contains a piece
of a dev recording (normalised cross-correlation ≥ LEAK_CORR) is left out, so the dev and test sets stay
unseen noise: game studios draw on the same sound libraries.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtpulse.audio import find_audio_files, load_mono, resample, write_audio
from rtpulse.errors import RtpulseError
from rtpulse.files import write_text_atomic
from rtpulse.stft import SAMPLE_RATE

MIN_SECONDS = 3.0  # shorter effects are one event, not a background
LEAK_CORR = 0.4  # marks a shared recording: one scored 0.93; unrelated clicks and hums reach about 0.3
LEAK_RATE = 4000  # the leak check compares below 2 kHz: enough to match a waveform, 16× cheaper
LEAK_SEGMENT_S = 3.0


@dataclass(frozen=True)
class Source:
    package: str
    licence: str  # of the sound files, from the package's debian/copyright
    include: tuple[str, ...]  # fnmatch patterns on the path inside the package
    exclude: tuple[str, ...] = ()


SOURCES = (
    Source("megaglest-data", "CC-BY-SA-3.0", ("*/tilesets/*/sounds/*",), ("*wolf*", "*/hell/*")),
    Source("redeclipse-data", "CC-BY-SA-3.0; ambience/morph CC-BY-3.0", ("*/sounds/ambience/*",),
           ("*/morph/ambient*", "*alienwind*", "*dizzywind*", "*wakawaka*", "*vapour*", "*lava*")),
    Source("flare-game", "CC-BY-SA-3.0+", ("*/soundfx/environment/*",), ("*owl*", "*raven*")),
    Source("supertuxkart-data", "CC0, CC-BY-SA-3.0 or public domain (per file, debian/copyright)",
           ("*/sfx/river_loop*", "*/sfx/waterfall_loop*", "*/sfx/exotic-birds*", "*/sfx/airplane_jetEngine*",
            "*/sfx/engine_small*", "*steamLocomotive*", "*/sfx/clock*")),
    Source("supertux-data", "GPL-3+", ("*/sounds/rain.wav",)),
    Source("widelands-data", "GPL-2+",
           ("*/sound/*/cutting/*", "*/sound/*/saw/*", "*/sound/barbarians/stonegrind*", "*/sound/barbarians/weaver*",
            "*/sound/metal/*", "*/sound/mill/*", "*/sound/smiths/*", "*/sound/woodcutting/*", "*/sound/farm/scythe*")),
    Source("lincity-ng-data", "GPL-2+ (or CC-BY-SA-2.0)",
           tuple(f"*/sounds/{name}*" for name in (
               "Blacksmith", "CoalMine", "DirtTrack", "Fire", "IndustryHigh", "IndustryLight", "Mill", "OreMine",
               "PowerCoal", "PowerSolar", "RailTrain", "Recycle", "Rocket", "TraficHigh", "TraficLow", "Water",
               "WindMill", "Tip", "MonumentConstruction", "ParklandLake")), ("*FireStation*",)),
    Source("extremetuxracer-data", "GPL-2+", ("*/sounds/*_slide*",)),
)
AUDIO = (".ogg", ".wav", ".flac")


def wanted(source: Source, inner: str) -> bool:
    return (inner.lower().endswith(AUDIO) and any(fnmatch.fnmatch(inner, p) for p in source.include)
            and not any(fnmatch.fnmatch(inner, p) for p in source.exclude))


def download(packages: list[str], into: Path) -> dict[str, Path]:
    """``apt-get download`` (no install, no root needed beyond apt's lists) → {package: .deb}."""
    missing = [p for p in packages if not list(into.glob(f"{p}_*.deb"))]
    if missing:
        _run(["apt-get", "download", *missing], into)
    return {p: max(into.glob(f"{p}_*.deb")) for p in packages}


def extract(deb: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(into)], into)
    return into


def _run(command: list[str], cwd: Path) -> None:
    try:
        run = subprocess.run(command, check=False, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise RtpulseError(f"{command[0]} not found: this tool needs Debian's apt and dpkg") from None
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or ["no message"])[-1]
        raise RtpulseError(f"{command[0]} {command[1]} failed: {last}")


def leak_reference(dev_root: Path) -> tuple[list[np.ndarray], list[Path]]:
    files = find_audio_files(dev_root)
    return [_unit(load_mono(p, LEAK_RATE)) for p in files], files


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.mean()
    return x / (np.linalg.norm(x) + 1e-12)


def max_normalised_xcorr(segment: np.ndarray, reference: np.ndarray) -> float:
    """max over lags of |⟨segment, reference window⟩| / (‖segment‖·‖reference window‖): 1 for a copy
    (at any gain), ≈ 1/sqrt(len) for unrelated noise."""
    n = len(segment)
    if len(reference) < n:
        segment, reference = reference, segment
        n = len(segment)
    size = 1 << int(np.ceil(np.log2(len(reference) + n)))
    corr = np.fft.irfft(np.fft.rfft(reference, size) * np.conj(np.fft.rfft(segment, size)), size)[: len(reference) - n + 1]
    energy = np.cumsum(np.concatenate([[0.0], reference**2]))
    window = np.sqrt(np.maximum(energy[n:] - energy[:-n], 1e-12))
    return float(np.max(np.abs(corr) / (window * (np.linalg.norm(segment) + 1e-12))))


def leaks(x: np.ndarray, references: list[np.ndarray]) -> tuple[float, int]:
    """(the highest normalised cross-correlation of any LEAK_SEGMENT_S piece of ``x`` (at 16 kHz) with any
    reference, which reference)."""
    y = resample(x, SAMPLE_RATE, LEAK_RATE)
    size = int(LEAK_SEGMENT_S * LEAK_RATE)
    # half-overlapping pieces, the last one flush with the end: any shared stretch of 1.5 pieces holds a whole one
    starts = sorted({*range(0, max(1, len(y) - size + 1), size // 2), max(0, len(y) - size)})
    best, which = 0.0, -1
    for start in starts:
        seg = y[start:start + size]
        if np.std(seg) < 1e-6:
            continue
        for i, reference in enumerate(references):
            corr = max_normalised_xcorr(seg - seg.mean(), reference)
            if corr > best:
                best, which = corr, i
    return best, which


def version_of(deb: Path) -> str:
    return deb.name.split("_")[1]


def build(out: Path, debs_dir: Path, dev_noise: Path | None,
          sources: tuple[Source, ...] = SOURCES) -> list[dict[str, str]]:
    from rich.progress import track

    debs = download([s.package for s in sources], debs_dir)
    references, reference_files = leak_reference(dev_noise) if dev_noise else ([], [])
    rows, seen = [], set()
    with tempfile.TemporaryDirectory() as tmp:
        for source in sources:
            root = extract(debs[source.package], Path(tmp, source.package))
            files = sorted(p for p in root.rglob("*") if p.is_file() and wanted(source, "/" + str(p.relative_to(root))))
            for path in track(files, description=source.package):
                digest = hashlib.sha1(path.read_bytes()).hexdigest()
                if digest in seen:
                    continue
                seen.add(digest)
                x = load_mono(path, SAMPLE_RATE)
                seconds = len(x) / SAMPLE_RATE
                if seconds < MIN_SECONDS or np.std(x) < 1e-4:
                    continue
                corr, which = leaks(x, references) if references else (0.0, -1)
                inner = str(path.relative_to(root))
                if corr >= LEAK_CORR:
                    print(f"left out: {source.package}/{inner} matches {reference_files[which]} (r = {corr:.2f})",
                          file=sys.stderr)
                    continue
                name = Path(source.package, inner.replace("/", "__")).with_suffix(".flac")
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                write_audio(out / name, x, SAMPLE_RATE)
                rows.append({"path": str(name), "package": source.package, "version": version_of(debs[source.package]),
                             "source_file": inner, "seconds": f"{seconds:.2f}", "licence": source.licence,
                             "dev_xcorr": f"{corr:.3f}"})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["path"])
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "manifest.csv", text.getvalue())
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder for the FLAC files and manifest.csv (pass it to --noise)")
    ap.add_argument("--debs", type=Path, default=None, help="where the .deb files are kept (default: OUT/.debs)")
    ap.add_argument("--dev-noise", type=Path, default=None, help="noise recordings that must stay unseen")
    args = ap.parse_args(argv)
    try:
        debs = args.debs or args.out / ".debs"
        debs.mkdir(parents=True, exist_ok=True)
        rows = build(args.out, debs, args.dev_noise)
    except RtpulseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    minutes = sum(float(r["seconds"]) for r in rows) / 60
    print(f"{len(rows)} files, {minutes:.1f} min of noise in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
