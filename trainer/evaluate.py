"""`rtpulse eval`: enhance with the runtime (rtpulse.stream) and score SI-SNR / SI-SNRi (+ PESQ-WB, STOI)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rtpulse.audio import find_audio_files, load_mono
from rtpulse.errors import RtpulseError
from rtpulse.files import write_text_atomic
from rtpulse.metrics import perceptual_scores, si_snr_np, si_snri
from rtpulse.model import PulseCNN
from rtpulse.stft import HOP, SAMPLE_RATE
from rtpulse.stream import check_floor_db, enhance, stream_offline_equivalent

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


def pair_files(noisy_root: Path, clean_root: Path) -> list[tuple[str, Path, Path]]:
    """Pair by path relative to each root (falls back to the bare file name when that is unique); two files pair."""
    if noisy_root.is_file() and clean_root.is_file():
        return [(noisy_root.stem, noisy_root, clean_root)]
    noisy = find_audio_files(noisy_root)
    clean = find_audio_files(clean_root)

    def rel(p: Path, root: Path) -> str:
        return p.name if root.is_file() else str(p.relative_to(root).with_suffix(""))

    by_rel = {rel(p, clean_root): p for p in clean}
    by_name: dict[str, list[Path]] = {}
    for p in clean:
        by_name.setdefault(p.stem, []).append(p)
    pairs = []
    for p in noisy:
        key = rel(p, noisy_root)
        match = by_rel.get(key) or (by_name[p.stem][0] if len(by_name.get(p.stem, [])) == 1 else None)
        if match is not None:
            pairs.append((key, p, match))
    if not pairs:
        raise RtpulseError(f"no file in {noisy_root} has a clean partner of the same name in {clean_root}")
    return pairs


def _result(model: PulseCNN, rows: list[dict], opts: EvalOptions, source: dict) -> dict:
    mean = {}
    for k in SCORES:
        vals = [r[k] for r in rows if r.get(k) is not None]
        if vals:
            mean[k] = float(np.mean(vals))
    return {"model": model.config.preset, "lookahead": model.lookahead, "engine": opts.engine, "mask": opts.mask,
            "floor_db": opts.floor_db, **source, "count": len(rows), "mean": mean, "files": rows}


def evaluate_pairs(model: PulseCNN, noisy_root: Path, clean_root: Path, opts: EvalOptions) -> dict:
    from rich.progress import track

    rows = []
    for name, n_path, c_path in track(pair_files(noisy_root, clean_root), description="scoring", transient=True):
        x, s = load_mono(n_path, SAMPLE_RATE), load_mono(c_path, SAMPLE_RATE)
        n = min(x.size, s.size)
        rows.append({"name": name, **score(model, x[:n], s[:n], opts)})
    return _result(model, rows, opts, {"noisy": str(noisy_root), "clean": str(clean_root)})


def evaluate_synth(model: PulseCNN, clean_root: Path, noise_root: Path, seed: int, count: int, seconds: float,
                   opts: EvalOptions, cache: Path | None = None) -> dict:
    """Generated mixtures (the training recipe, seeded), scored in memory; nothing is written."""
    if count < 1 or not 1024 <= seconds * SAMPLE_RATE < float("inf"):
        raise RtpulseError(f"--count must be ≥ 1 and --seconds ≥ 0.064 (one STFT frame), got {count} and {seconds}")
    from trainer.data import AudioBank, Recipe, default_cache_dir, list_audio

    cache = cache or default_cache_dir()
    clean = AudioBank.from_files(list_audio(clean_root, "--clean"), cache)
    noise = AudioBank.from_files(list_audio(noise_root, "--noise"), cache)
    gen = torch.Generator().manual_seed(seed)
    noisy, ref = Recipe("pn", noise, clean=clean).noisy_clips(count, round(seconds * SAMPLE_RATE), gen)
    rows = [{"name": f"mix-{i:04d}", **score(model, noisy[i].numpy(), ref[i].numpy(), opts)} for i in range(count)]
    return _result(model, rows, opts, {"clean": str(clean_root), "noise": str(noise_root), "seed": seed})


def print_table(result: dict, console) -> None:
    from rich.table import Table

    cols = [k for k in SCORES if k in result["mean"]]
    table = Table(title=f"{result['engine']} engine, {result['mask']} mask")
    table.add_column("file")
    for k in cols:
        table.add_column(k, justify="right")

    def fmt(v):
        return "—" if v is None else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"

    for r in result["files"]:
        table.add_row(r["name"], *(fmt(r.get(k)) for k in cols))
    table.add_section()
    table.add_row("[bold]mean", *(f"[bold]{fmt(result['mean'][k])}" for k in cols))
    console.print(table)


def write_json(result: dict, path: Path) -> None:
    write_text_atomic(path, json.dumps(result, indent=1))
