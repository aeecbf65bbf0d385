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
of a dev recording (correlation ≥ LEAK_CORR) is left out: game studios draw on the same sound libraries as the
data's sources, and the project's dev and test mixtures both take their noise from the dev split.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from rtpulse.audio import AUDIO_SUFFIXES, find_audio_files, load_mono, resample, write_audio
from rtpulse.errors import RtpulseError
from rtpulse.files import check_output_dir, temp_beside, write_text_atomic
from rtpulse.stft import SAMPLE_RATE
from trainer.data import default_cache_dir

MIN_SECONDS = 3.0  # shorter effects are one event, not a background
LEAK_CORR = 0.4  # a shared recording scored 0.98 here; unrelated ones a median of 0.12, at most 0.39
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
    Source("flare-game", "CC-BY-SA-3.0+", ("*/soundfx/environment/*",), ("*owl*", "*raven*", "*bird*")),
    Source("supertuxkart-data", "CC0, CC-BY-SA-3.0 or public domain (per file, debian/copyright)",
           ("*/sfx/river_loop*", "*/sfx/waterfall_loop*", "*/sfx/airplane_jetEngine*",
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

def wanted(source: Source, inner: str) -> bool:
    return (inner.lower().endswith(AUDIO_SUFFIXES) and any(fnmatch.fnmatch(inner, p) for p in source.include)
            and not any(fnmatch.fnmatch(inner, p) for p in source.exclude))


def download(packages: list[str], into: Path) -> dict[str, Path]:
    """``apt-get download`` (no install, no root needed beyond apt's lists) → {package: .deb}."""
    missing = [p for p in packages if not list(into.glob(f"{p}_*.deb"))]
    if missing:
        _run(["apt-get", "download", *missing], into)
    return {p: max(into.glob(f"{p}_*.deb")) for p in packages}


def extract(deb: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    try:
        _run(["dpkg-deb", "-x", str(deb), str(into)], into)
    except RtpulseError as e:  # a download cut short stays in --debs: say which file to delete
        raise RtpulseError(f"{e} (delete {deb} to download it again)") from None
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
    """The dev recordings at LEAK_RATE and their paths; a one-line error if there are none."""
    files = find_audio_files(dev_root)
    signals = [load_mono(p, LEAK_RATE).astype(np.float64) for p in files]
    kept = [(x, p) for x, p in zip(signals, files) if len(x) >= LEAK_RATE and np.any(x)]
    if not kept:
        raise RtpulseError(f"--dev-noise {dev_root}: no audio file of 1 s or more to check against")
    return [x for x, _ in kept], [p for _, p in kept]


def max_normalised_xcorr(segment: np.ndarray, reference: np.ndarray) -> float:
    """max over lags of the Pearson correlation between ``segment`` and the window of ``reference`` under it:
    1 for a copy at any gain and offset, about 4/sqrt(len) at most for unrelated white noise. Windows more than
    30 dB below the reference's mean power are skipped (silence matches nothing)."""
    if len(reference) < len(segment):
        segment, reference = reference, segment
    n = len(segment)
    segment = segment - segment.mean()
    seg_norm = np.linalg.norm(segment)
    if n < 2 or seg_norm == 0:
        return 0.0
    size = 1 << int(np.ceil(np.log2(len(reference) + n)))
    corr = np.fft.irfft(np.fft.rfft(reference, size) * np.conj(np.fft.rfft(segment, size)), size)[: len(reference) - n + 1]
    sums = np.cumsum(np.concatenate([[0.0], reference]))
    squares = np.cumsum(np.concatenate([[0.0], reference**2]))
    window_sum, window_energy = sums[n:] - sums[:-n], squares[n:] - squares[:-n]
    window_var = window_energy - window_sum**2 / n  # the window's energy about its own mean
    loud = window_var > 1e-3 * n * np.mean(reference**2)
    if not loud.any():
        return 0.0
    return float(np.max(np.abs(corr[loud]) / (np.sqrt(window_var[loud]) * seg_norm)))


def leaks(x: np.ndarray, references: list[np.ndarray]) -> tuple[float, int]:
    """(the highest correlation of any LEAK_SEGMENT_S piece of ``x`` (at 16 kHz) with any reference, the index of
    that reference). Not whitened: a first difference cut a true copy's score (Opus-coded in the dev set) from 0.98
    to 0.64, level with tonal look-alikes. Look-alikes cost a few training files; a missed copy would cost the test."""
    y = resample(x, SAMPLE_RATE, LEAK_RATE).astype(np.float64)
    size = min(len(y), int(LEAK_SEGMENT_S * LEAK_RATE))
    # half-overlapping pieces, the last one flush with the end: any shared stretch of 1.5 pieces holds a whole one
    starts = sorted({*range(0, max(1, len(y) - size + 1), max(1, size // 2)), max(0, len(y) - size)})
    best, which = 0.0, -1
    for start in starts:
        for i, reference in enumerate(references):
            corr = max_normalised_xcorr(y[start:start + size], reference)
            if corr > best:
                best, which = corr, i
    return best, which


def version_of(deb: Path) -> str:
    return unquote(deb.name.split("_")[1])  # apt writes an epoch's colon as %3a


def flac_name(package: str, inner: str) -> Path:
    """One flat name per source file; the source's suffix stays in it, so rain.wav and rain.ogg do not collide."""
    return Path(package, inner.replace("/", "__") + ".flac")


MANIFEST_FIELDS = ("path", "package", "version", "source_file", "seconds", "licence", "dev_xcorr")


def build(out: Path, debs_dir: Path, dev_noise: Path | None,
          sources: tuple[Source, ...] = SOURCES) -> list[dict[str, str]]:
    """Everything into a fresh ``out`` (refused if it exists and is not empty): built beside it and renamed
    into place at the end, so an interrupted run leaves no half set that a trainer would read."""
    from rich.progress import track

    out = check_output_dir(out)
    if out.exists() and any(out.iterdir()):
        raise RtpulseError(f"{out} is not empty: give a new folder (a rebuild must not keep files it now leaves out)")
    references, reference_files = leak_reference(dev_noise) if dev_noise else ([], [])
    if not references:
        print("note: no --dev-noise: the files are not checked for recordings shared with a dev set", file=sys.stderr)
    debs = download([s.package for s in sources], debs_dir)
    staging = temp_beside(out)
    shutil.rmtree(staging, ignore_errors=True)
    rows, seen = [], set()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for source in sources:
                root = extract(debs[source.package], Path(tmp, source.package))
                files = sorted(p for p in root.rglob("*")
                               if p.is_file() and wanted(source, "/" + str(p.relative_to(root))))
                for path in track(files, description=source.package):
                    row = _take(path, root, source, debs, seen, references, reference_files, staging)
                    if row:
                        rows.append(row)
        if not rows:
            raise RtpulseError("no file was kept: the packages hold none the patterns name")
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(staging / "manifest.csv", text.getvalue())
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return rows


def _take(path: Path, root: Path, source: Source, debs: dict[str, Path], seen: set[str],
          references: list[np.ndarray], reference_files: list[Path], staging: Path) -> dict[str, str] | None:
    """One package file → its manifest row, written to ``staging``; None when it is left out."""
    inner = str(path.relative_to(root))
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    if digest in seen:
        return None
    seen.add(digest)
    try:
        x = load_mono(path, SAMPLE_RATE)
    except (RtpulseError, RuntimeError, OSError, ValueError) as e:  # one broken file does not stop the set
        print(f"skipped (unreadable): {source.package}/{inner}: {e}", file=sys.stderr)
        return None
    seconds = len(x) / SAMPLE_RATE
    if seconds < MIN_SECONDS or np.std(x) < 1e-4:
        return None
    corr, which = leaks(x, references) if references else (0.0, -1)
    if corr >= LEAK_CORR:
        print(f"left out: {source.package}/{inner} matches {reference_files[which]} (r = {corr:.2f})", file=sys.stderr)
        return None
    name = flac_name(source.package, inner)
    (staging / name).parent.mkdir(parents=True, exist_ok=True)
    write_audio(staging / name, x, SAMPLE_RATE)
    return {"path": str(name), "package": source.package, "version": version_of(debs[source.package]),
            "source_file": inner, "seconds": f"{seconds:.2f}", "licence": source.licence,
            "dev_xcorr": f"{corr:.3f}" if references else ""}  # empty: not checked, not "no match"


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="a new folder for the FLAC files and manifest.csv (link it into --noise)")
    ap.add_argument("--debs", type=Path, default=None, help="where the .deb files are kept (default: ~/.cache/rtpulse/debs)")
    ap.add_argument("--dev-noise", type=Path, default=None, help="noise recordings that must stay unseen")
    args = ap.parse_args(argv)
    try:
        debs = check_output_dir(args.debs or default_cache_dir() / "debs")
        debs.mkdir(parents=True, exist_ok=True)
        rows = build(args.out, debs, args.dev_noise)
    except RtpulseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e.filename or args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    minutes = sum(float(r["seconds"]) for r in rows) / 60
    print(f"{len(rows)} files, {minutes:.1f} min of noise in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
