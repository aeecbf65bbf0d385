"""`rtpulse eval`: enhance with the runtime (rtpulse.stream) and score SI-SNR / SI-SNRi (+ PESQ-WB, STOI)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rtpulse.audio import find_audio_files, load_mono
from rtpulse.errors import RtpulseError
from rtpulse.files import write_text_atomic
from rtpulse.metrics import PESQ_MAX_SECONDS, perceptual_scores, si_snr_np, si_snri
from rtpulse.model import PulseCNN
from rtpulse.stft import HOP, N_FFT, SAMPLE_RATE
from rtpulse.stream import check_floor_db, enhance, stream_offline_equivalent
from trainer.data import name_list

SCORES = ("si_snr", "si_snr_noisy", "si_snri", "pesq_wb", "stoi")


@dataclass(frozen=True)
class EvalOptions:
    engine: str = "offline"
    mask: str = "binary"
    floor_db: float | None = None

    def __post_init__(self) -> None:
        check_floor_db(self.floor_db)


def enhance_signal(model: PulseCNN, x: np.ndarray, opts: EvalOptions) -> np.ndarray:
    """Mono 16 kHz ``[T]`` → enhanced ``[T]`` with the offline or the streaming engine (same samples)."""
    if opts.engine == "stream":
        return stream_offline_equivalent(model, x.astype(np.float32), HOP, mask=opts.mask, floor_db=opts.floor_db)
    return enhance(model, torch.from_numpy(x.astype(np.float32)), opts.mask, opts.floor_db).numpy()


def score(model: PulseCNN, noisy: np.ndarray, clean: np.ndarray, opts: EvalOptions) -> dict:
    est = enhance_signal(model, noisy, opts)
    row = {"si_snr": si_snr_np(est, clean), "si_snr_noisy": si_snr_np(noisy, clean), "si_snri": si_snri(est, noisy, clean)}
    row.update(perceptual_scores(est, clean))
    return row


def pair_files(noisy_root: Path, clean_root: Path) -> tuple[list[tuple[str, Path, Path]], list[str], list[str]]:
    """Pair by path relative to each root: with its extension first, then without, then by bare file name where that
    is unique and the clean file is no other noisy file's own partner (``noisy/snr0/utt`` and ``noisy/snr5/utt`` both
    pair with ``clean/utt``); two files pair.

    Returns (pairs as (name, noisy, clean), noisy files without a clean partner, clean files no pair uses).
    """
    if noisy_root.is_file() and clean_root.is_file():
        if os.path.samefile(noisy_root, clean_root):  # a file scored against itself: SI-SNR 80 dB (the cap), no meaning
            raise RtpulseError(f"--noisy {noisy_root} and --clean {clean_root} are the same file")
        return [(noisy_root.stem, noisy_root, clean_root)], [], []
    for inner, outer in ((clean_root, noisy_root), (noisy_root, clean_root)):
        if outer.is_dir() and inner.resolve().is_relative_to(outer.resolve()):  # the same folder too
            raise RtpulseError(f"--clean {clean_root} and --noisy {noisy_root} overlap (one holds the other): the "
                               "clean files would be scored as noisy ones; give two separate folders")
    noisy, clean = find_audio_files(noisy_root), find_audio_files(clean_root)

    def rel(p: Path, root: Path) -> str:
        return p.name if root.is_file() else str(p.relative_to(root))

    def group(keys) -> dict[str, list[Path]]:
        out: dict[str, list[Path]] = {}
        for key, p in keys:
            out.setdefault(key, []).append(p)
        return out

    def unique(table: dict[str, list[Path]], key: str) -> Path | None:
        found = table.get(key, [])
        return found[0] if len(found) == 1 else None

    exact = {rel(p, clean_root): p for p in clean}
    loose = group((str(Path(rel(p, clean_root)).with_suffix("")), p) for p in clean)
    by_name = group((p.stem, p) for p in clean)
    # a name without its extension, unless two noisy files share it (x.wav and x.flac keep theirs)
    stems = group((str(Path(rel(p, noisy_root)).with_suffix("")), p) for p in noisy)
    names = {p: key if len(ps) == 1 else rel(p, noisy_root) for key, ps in stems.items() for p in ps}
    matched: dict[Path, Path] = {}
    for p in noisy:
        key = rel(p, noisy_root)
        found = exact.get(key) or unique(loose, str(Path(key).with_suffix("")))
        if found is not None:
            matched[p] = found
    claimed = set(matched.values())
    for p in noisy:
        if p not in matched and (found := unique(by_name, p.stem)) is not None and found not in claimed:
            matched[p] = found
    pairs = [(names[p], p, matched[p]) for p in noisy if p in matched]
    unpaired = [names[p] for p in noisy if p not in matched]
    used = set(matched.values())
    unused = [rel(p, clean_root) for p in clean if p not in used]
    if not pairs:
        raise RtpulseError(f"no file in {noisy_root} has a clean partner of the same name in {clean_root}")
    return pairs, unpaired, unused


def load_checked(path: Path) -> np.ndarray:
    """Mono 16 kHz ``[T]``; an empty file or one with NaN/inf samples is an error (its scores would be 0 or NaN)."""
    x = load_mono(path, SAMPLE_RATE)
    if x.size < N_FFT:  # SI-SNR of a few samples is any number (one sample is always a scaled copy)
        raise RtpulseError(f"{path} holds {x.size} samples at 16 kHz, under one STFT frame ({N_FFT}): too short to score")
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise RtpulseError(f"{path} holds {bad} non-finite sample(s) (NaN or inf): its scores would be NaN")
    if not np.any(x):  # SI-SNR against silence (or of silence) is a number without meaning
        raise RtpulseError(f"{path} is silent (every sample is 0): there is nothing to score")
    return x


# Noisy and clean lengths may differ by a little (codec padding, resampling rounding): scored over the shorter,
# with a warning. More than this and the files are likely not a pair (or cut differently): an error, not a score.
LENGTH_MISMATCH_MAX = 0.05


def load_pair(noisy_path: Path, clean_path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(noisy ``[n]``, clean ``[n]``, samples cut off the longer one); n is the shorter length."""
    x, s = load_checked(noisy_path), load_checked(clean_path)
    n, cut = min(x.size, s.size), abs(x.size - s.size)
    if cut > LENGTH_MISMATCH_MAX * max(x.size, s.size):
        raise RtpulseError(
            f"{noisy_path} ({x.size / SAMPLE_RATE:.3f} s) and {clean_path} ({s.size / SAMPLE_RATE:.3f} s) differ in "
            f"length by more than {LENGTH_MISMATCH_MAX:.0%}: not a noisy/clean pair? Trim them to the same length"
        )
    return x[:n], s[:n], cut


def pairing_warnings(clean_root: Path, unpaired: list[str], cut: dict[str, int], unused: list[str]) -> list[str]:
    """One line each: noisy files left out for want of a clean partner; clean files no pair used; pairs scored over
    the shorter file."""
    out = []
    if unpaired:
        out.append(f"{len(unpaired)} noisy file(s) without a clean partner in {clean_root} skipped: {name_list(unpaired)}")
    if unused:
        out.append(f"{len(unused)} clean file(s) in {clean_root} without a noisy partner: {name_list(unused)}")
    if cut:
        ms = max(cut.values()) * 1000 / SAMPLE_RATE
        out.append(f"{len(cut)} pair(s) differ in length (by up to {ms:.1f} ms), scored over the shorter: "
                   f"{name_list(list(cut))}")
    return out


def _result(model: PulseCNN, rows: list[dict], opts: EvalOptions, source: dict, warnings: list[str]) -> dict:
    # PESQ/STOI can be missing for a file (too short, refused) where SI-SNR is not: each mean states its file count
    mean, mean_files = {}, {}
    for k in SCORES:
        vals = [r[k] for r in rows if r.get(k) is not None]
        if vals:
            mean[k], mean_files[k] = float(np.mean(vals)), len(vals)
            if len(vals) < len(rows):
                gaps = [r["name"] for r in rows if r.get(k) is None]
                why = f": pesq takes ¼…{PESQ_MAX_SECONDS} s with speech in it" if k == "pesq_wb" else ""
                warnings.append(f"{k} mean over {len(vals)} of {len(rows)} files (no score for {name_list(gaps)}{why})")
        elif any(k in r for r in rows):  # its library is installed, yet refused every file (e.g. all too short)
            why = f"under ¼ s or over {PESQ_MAX_SECONDS} s" if k == "pesq_wb" else "too short for it"
            warnings.append(f"{k}: no file could be scored ({why}, or silent outputs?), so it has no mean")
    missing = [k for k in ("pesq_wb", "stoi") if rows and not any(k in r for r in rows)]
    if missing:  # the [eval] extra is not installed: say why the columns are absent
        warnings.append(f"{' and '.join(missing)} not scored: pip install 'rtpulse[eval]' for them")
    return {"model": model.config.preset, "lookahead": model.lookahead, "engine": opts.engine, "mask": opts.mask,
            "mask_sharpness": model.config.mask_sharpness, "floor_db": opts.floor_db, **source, "count": len(rows),
            "mean": mean, "mean_files": mean_files, "warnings": warnings, "files": rows}


def evaluate_pairs(model: PulseCNN, noisy_root: Path, clean_root: Path, opts: EvalOptions) -> dict:
    from rich.progress import track

    pairs, unpaired, unused = pair_files(noisy_root, clean_root)
    rows, cut = [], {}
    from rtpulse.cli_common import console

    # piped or logged: a transient bar only leaves a blank line behind
    for name, n_path, c_path in track(pairs, description="scoring", transient=True, console=console,
                                      disable=not console.is_terminal):
        x, s, cut_samples = load_pair(n_path, c_path)
        if cut_samples:
            cut[name] = cut_samples
        rows.append({"name": name, **score(model, x, s, opts)})
    warnings = pairing_warnings(clean_root, unpaired, cut, unused)
    return _result(model, rows, opts, {"noisy": str(noisy_root), "clean": str(clean_root)}, warnings)


# Mixtures are generated all at once in memory (~20 bytes a sample while cropping): bound each and the total
SYNTH_COUNT_MAX = 10_000
SYNTH_SECONDS_MAX = 600.0
SYNTH_TOTAL_SECONDS_MAX = 3600.0
SILENT_CROP = 1e-4  # a speech crop 40 dB below its file's mean power: silence or room tone, no speech


def evaluate_synth(model: PulseCNN, clean_root: Path, noise_root: Path, seed: int, count: int, seconds: float,
                   opts: EvalOptions, cache: Path | None = None) -> dict:
    """Generated mixtures (the training recipe, seeded), scored in memory; nothing is written."""
    if count < 1 or not 1024 <= seconds * SAMPLE_RATE < float("inf"):
        raise RtpulseError(f"--count must be ≥ 1 and --seconds ≥ 0.064 (one STFT frame), got {count} and {seconds}")
    if count > SYNTH_COUNT_MAX or seconds > SYNTH_SECONDS_MAX or count * seconds > SYNTH_TOTAL_SECONDS_MAX:
        raise RtpulseError(
            f"--count must be ≤ {SYNTH_COUNT_MAX}, --seconds ≤ {SYNTH_SECONDS_MAX:g} and --count × --seconds ≤ "
            f"{SYNTH_TOTAL_SECONDS_MAX:g} (mixtures are made at once in memory), got {count} and {seconds:g}"
        )
    if not 0 <= seed < 2**32:  # as rtpulse train's --seed
        raise RtpulseError(f"--seed must be 0…{2**32 - 1}, got {seed}")
    from trainer.data import AudioBank, Recipe, default_cache_dir, list_audio

    cache = cache or default_cache_dir()
    clean = AudioBank.from_files(list_audio(clean_root, "--clean"), cache)
    noise = AudioBank.from_files(list_audio(noise_root, "--noise"), cache)
    gen = torch.Generator().manual_seed(seed)
    files: list[int] = []
    noisy, ref, speech = Recipe("pn", noise, clean=clean).mixtures(count, round(seconds * SAMPLE_RATE), gen, files)
    warnings = [f"left out {len(bank.left_out)} empty or silent {what} file(s): {name_list(bank.left_out)}"
                for bank, what in ((clean, "--clean"), (noise, "--noise")) if bank.left_out]
    # a crop from a silent stretch of speech: SI-SNR against its (amplified) room tone measures nothing. Judged before
    # mixing, which scales every crop to its SNR: a crop 40 dB below its own file's mean power holds no speech (a
    # quiet file's speech is not silence)
    power = {i: clean.file_power(i) for i in set(files)}
    silent = {i for i in range(count) if float(speech[i].double().square().mean()) <= SILENT_CROP * power[files[i]]}
    if len(silent) == count:
        raise RtpulseError("every mixture's clean crop is silent: the --clean files hold too little speech to score")
    if silent:
        warnings.append(f"left out {len(silent)} of {count} mixtures whose clean crop is silent (40 dB below the "
                        f"mean power of its file): {name_list([f'mix-{i:04d}' for i in sorted(silent)])}")
    rows = [{"name": f"mix-{i:04d}", **score(model, noisy[i].numpy(), ref[i].numpy(), opts)}
            for i in range(count) if i not in silent]
    source = {"clean": str(clean_root), "noise": str(noise_root), "seed": seed, "seconds": seconds}
    return _result(model, rows, opts, source, warnings)


def print_table(result: dict, console) -> None:
    from rich.table import Table
    from rich.text import Text

    cols = [k for k in SCORES if k in result["mean"]]
    table = Table(title=f"{result['engine']} engine, {result['mask']} mask")
    table.add_column("file", overflow="fold")  # piped (80 columns), a long name wraps whole instead of "…"
    for k in cols:
        table.add_column(k, justify="right")

    def fmt(v):
        return "—" if v is None else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"

    for r in result["files"]:
        table.add_row(r["name"], *(fmt(r.get(k)) for k in cols))
    table.add_section()
    table.add_row(*(Text(v, style="bold") for v in ("mean", *(fmt(result["mean"][k]) for k in cols))))
    counts = [result["mean_files"][k] for k in cols]
    if len(set(counts)) > 1:  # some column's mean left files out: say over how many each is
        table.add_row("files in mean", *(str(n) for n in counts))
    console.print(table)


def write_json(result: dict, path: Path) -> None:
    write_text_atomic(path, json.dumps(result, indent=1))
