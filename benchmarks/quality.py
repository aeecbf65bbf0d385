"""Quality benchmark: rtpulse, peer denoisers and classic baselines scored on the same audio in one run.

Test set: ``--noisy DIR --clean DIR`` (paired by name), or mixtures generated with a fixed seed from
``<data>/speech/dev`` + ``<data>/noise/dev`` (default data root: ``../shared/data`` beside the repository):
speech clips of 4 s or more (``--min-speech-seconds``) cut to ``seconds``, a random noise segment, SNR ~
U[−5, 10] dB mixed with the trainer's ``mix_at_snr`` (the paper's mixing), then the pair rescaled to −26 dBFS
RMS (scale-free metrics; int16 peers must not clip).

Metrics per file: SI-SNR and SI-SNRi (rtpulse.metrics, the paper's definition), PESQ-WB, STOI and DNSMOS
(P.835 SIG/BAK/OVRL + P.808, non-intrusive) through torchmetrics with the ONNX files the ``speechmos`` wheel
ships, copied into torchmetrics' cache path so nothing is downloaded. Aggregate: mean and 95% CI (t).

Every system's output is aligned to the input before scoring (rtpulse offline has no delay, the streaming
engine's fixed delay is dropped, peers drop their raw-stream delay); the residual lag against the input is
measured by cross-correlation and reported per system (0 = aligned).

Run: ``python -m benchmarks.quality`` or ``rtpulse bench quality`` (same options).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from benchmarks.align import signed_lag
from benchmarks.latency import _save_fig, have_matplotlib, machine
from rtpulse.audio import find_audio_files
from rtpulse.errors import RtpulseError
from rtpulse.files import discard, write_text_atomic
from rtpulse.metrics import perceptual_scores, si_snr_np
from rtpulse.stft import SAMPLE_RATE
from trainer.data import QUIET_FLOOR_DB

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
METRICS = ("si_snri", "si_snr", "pesq_wb", "stoi", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808")
MIN_SPEECH_S = 4.0
# A reference with a steady background 15–20 dB under the voice (a quarter of the dev speech) scores every
# denoiser that removes that background as distorting the "clean" speech: RNNoise and DeepFilterNet3 lose 5–16 dB
# SI-SNRi on such files. Test references must be quieter than this between words (trainer.data.noise_floor_db);
# the trainer validates on the same kind of references.
REFERENCE_FLOOR_DB = QUIET_FLOOR_DB


@dataclass
class QualityOptions:
    noisy: Path | None = None
    clean: Path | None = None
    data: Path | None = None
    models: list[Path] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    count: int = 40
    seconds: float = 6.0
    seed: int = 0
    real: Path | None = None
    streaming: bool = True
    peers: bool = True
    dnsmos: bool = True
    baselines: bool = True
    min_speech_seconds: float = MIN_SPEECH_S
    level_dbfs: float = -26.0  # RMS of each noisy mixture or file, generated or given (peak capped at 0.99)
    reference_floor_db: float = REFERENCE_FLOOR_DB  # 0 keeps every speech file


@dataclass
class Item:
    name: str
    noisy: np.ndarray  # [T] float32, 16 kHz
    clean: np.ndarray | None  # [T] or None for real recordings
    snr_db: float | None = None
    noise: str | None = None  # generated sets: the noise recording mixed in (folder/stem), for the per-noise table


# --- test sets ----------------------------------------------------------------------------------------


def paired_set(noisy_root: Path, clean_root: Path, level_dbfs: float = -26.0) -> tuple[list[Item], list[str]]:
    """Pairs as ``rtpulse eval`` makes them (same checks), brought to the generated sets' level, and its one-line
    warnings (unpaired, cut to length)."""
    from trainer.evaluate import load_pair, pair_files, pairing_warnings

    pairs, unpaired, unused = pair_files(noisy_root, clean_root)
    items, cut = [], {}
    for name, n_path, c_path in pairs:
        x, s, cut_samples = load_pair(n_path, c_path)
        if cut_samples:
            cut[name] = cut_samples
        gain = listening_gain(x, level_dbfs)  # one gain for both: the same scores, the peers get a level they expect
        items.append(Item(name, (x * gain).astype(np.float32), (s * gain).astype(np.float32)))
    return items, pairing_warnings(clean_root, unpaired, cut, unused)


def listening_gain(noisy: np.ndarray, level_dbfs: float = -26.0) -> float:
    """The gain that brings ``noisy`` to ``level_dbfs`` RMS, its peak capped at 0.99: every set the systems see is at
    one level (RNNoise and Speex take int16 and clip past full scale; DeepFilterNet3 fails on very quiet input)."""
    return min(10 ** (level_dbfs / 20) / (float(noisy.std()) + 1e-9), 0.99 / (float(np.abs(noisy).max()) + 1e-9))


def add_mixture_options(parser) -> None:
    """The options its one-line errors name, for the argparse tools that make their mixtures with :func:`generated_set`."""
    parser.add_argument("--min-speech-seconds", type=float, default=MIN_SPEECH_S,
                        help=f"speech files at least this long (default {MIN_SPEECH_S:g})")
    parser.add_argument("--reference-floor-db", type=float, default=REFERENCE_FLOOR_DB,
                        help=f"speech files at most this noisy between words (default {REFERENCE_FLOOR_DB:g}; 0 keeps all)")


def generated_set(
    data: Path,
    count: int,
    seconds: float,
    seed: int,
    min_seconds: float = MIN_SPEECH_S,
    level_dbfs: float = -26.0,
    reference_floor_db: float = REFERENCE_FLOOR_DB,
    split: str = "dev",
) -> list[Item]:
    """``count`` seeded mixtures from ``data/speech/SPLIT`` and ``data/noise/SPLIT`` (speech files ≥ ``min_seconds``
    whose noise floor is at most ``reference_floor_db``)."""
    from trainer.data import decode_cached, mix_at_snr, noise_floor_db

    for name, value, low in (("--seconds", seconds, 1 / 16), ("--min-speech-seconds", min_seconds, 0.0)):
        if not low <= value < float("inf"):
            raise RtpulseError(f"{name} must be a finite number ≥ {low:g}, got {value}")
    if not -200 <= reference_floor_db <= 0:  # NaN fails this too (and kept every file, then broke the JSON)
        raise RtpulseError(f"--reference-floor-db must be −200…0 dB (0 keeps all), got {reference_floor_db}")
    if not -80 <= level_dbfs <= 0:  # NaN fails this too
        raise RtpulseError(f"--level-dbfs must be −80…0 dB, got {level_dbfs}")
    if not 0 <= seed < 2**32:
        raise RtpulseError(f"--seed must be 0…2^32−1, got {seed}")
    speech_dir, noise_dir = data / "speech" / split, data / "noise" / split
    for d in (speech_dir, noise_dir):
        if not d.is_dir():
            raise RtpulseError(f"no {d}: pass --data ROOT holding speech/{split} and noise/{split}")
    rng = np.random.default_rng(seed)
    speech_files = find_audio_files(speech_dir)
    noise_files = find_audio_files(noise_dir)
    if not noise_files:
        raise RtpulseError(f"no audio files in {noise_dir}")
    rng.shuffle(speech_files)
    noises: dict[Path, np.ndarray] = {}
    items: list[Item] = []
    length_max = int(seconds * SAMPLE_RATE)
    too_short = too_noisy = 0  # of the files looked at: says which option to relax when too few are left
    for path in speech_files:
        if len(items) == count:
            break
        s = decode_cached(path, None)  # a NaN sample is an error naming the file, not a table of NaN
        if s.size < min_seconds * SAMPLE_RATE:
            too_short += 1
            continue
        if noise_floor_db(s) > reference_floor_db:
            too_noisy += 1
            continue
        start = int(rng.integers(0, s.size - min(s.size, length_max) + 1))
        s = s[start : start + length_max]
        npath = noise_files[int(rng.integers(len(noise_files)))]
        if npath not in noises:
            noises[npath] = decode_cached(npath, None)
            if not np.any(noises[npath]):  # a mixture at the drawn SNR would be the clean speech, mislabelled
                raise RtpulseError(f"{npath} holds no sound (empty or silent); remove it from the noise folder")
        nz = noises[npath]
        if nz.size < s.size:
            nz = np.tile(nz, s.size // nz.size + 1)
        off = int(rng.integers(0, nz.size - s.size + 1))
        # a stretch of digital silence (a recording's padded tail, a pause in the speech) mixes into an all-zero
        # mixture or reference: every system then scores 0 dB there, pulling each mean toward 0 without a word
        for what, part, at in (("noise", nz[off : off + s.size], off % noises[npath].size), ("speech", s, start)):
            if not np.any(part):
                file = npath if what == "noise" else path
                raise RtpulseError(f"the {part.size / SAMPLE_RATE:g} s of {file} from {at / SAMPLE_RATE:.2f} s drawn for "
                                   f"a test mixture are digital silence; trim the silence from the {what} file or "
                                   "remove it")
        snr = float(rng.uniform(-5.0, 10.0))
        noisy, clean, _ = mix_at_snr(
            torch.from_numpy(s[None]), torch.from_numpy(nz[off : off + s.size][None].copy()), torch.tensor([snr])
        )
        noisy, clean = noisy[0].numpy(), clean[0].numpy()
        gain = listening_gain(noisy, level_dbfs)
        items.append(
            Item(
                f"mix-{len(items):03d}-{path.stem}",
                (noisy * gain).astype(np.float32),
                (clean * gain).astype(np.float32),
                snr,
                f"{npath.parent.name}/{npath.stem}",
            )
        )
    if len(items) < count:
        raise RtpulseError(
            f"only {len(items)} of the {len(speech_files)} speech files in {speech_dir} are usable ({count} asked): "
            f"{too_short} shorter than {min_seconds:g} s (lower --min-speech-seconds), {too_noisy} with a noise "
            f"floor above {reference_floor_db:g} dB (raise --reference-floor-db; 0 keeps all); or lower --count, or "
            "give --data with more speech"
        )
    return items


REAL_LIMIT = 50  # DNSMOS costs seconds a file per system


def real_set(root: Path, limit: int = REAL_LIMIT, level_dbfs: float = -26.0) -> list[Item]:
    from trainer.evaluate import load_checked

    items = []
    for path in find_audio_files(root)[:limit]:
        x = load_checked(path)
        items.append(Item(path.stem, (x * listening_gain(x, level_dbfs)).astype(np.float32), None))
    return items


# --- systems -------------------------------------------------------------------------------------------


@dataclass
class System:
    name: str
    kind: str  # input | rtpulse | peer | baseline
    run: Callable[[np.ndarray], np.ndarray]
    note: str = ""


def model_names(opts: QualityOptions) -> list[str]:
    """Each --model's row name: "rtpulse LABEL", or "rtpulse STEM" of its file without a label."""
    labels = list(opts.labels) + [None] * len(opts.models)
    return [f"rtpulse {label or Path(path).stem}" for path, label in zip(opts.models, labels)]


def rtpulse_systems(opts: QualityOptions) -> tuple[list[System], list[str]]:
    from rtpulse.model import default_model_path, load_model
    from rtpulse.stream import enhance, stream_offline_equivalent

    notes, runs = [], []
    shipped = default_model_path()
    if shipped.is_file():
        runs.append(("rtpulse (shipped)", shipped))
    else:
        notes.append(f"shipped rtpulse model skipped: {shipped} does not exist yet")
    runs += zip(model_names(opts), opts.models)
    systems = []
    for label, path in runs:
        model = load_model(path)
        cfg = model.config
        desc = f"{cfg.method.upper()}, {cfg.preset}, L={cfg.lookahead}, compress={cfg.compress}"
        soft = "soft" if cfg.mask_sharpness == 1 else f"soft (sharpness {cfg.mask_sharpness:g})"
        # soft σ(−s·f), the paper's binary 1[f < 0], and the PU posterior for a model that names it as its own
        for mask in ("soft", "binary", *(("posterior",) if cfg.mask == "posterior" else ())):
            suffix = "" if mask == "soft" else f" {mask}"
            systems.append(System(
                f"{label} offline{suffix}", "rtpulse",
                lambda x, model=model, mask=mask: enhance(model, torch.from_numpy(x), mask).numpy(),
                f"{desc}, {soft if mask == 'soft' else mask} mask",
            ))
        if opts.streaming:
            systems.append(System(
                f"{label} streaming", "rtpulse",
                lambda x, model=model: stream_offline_equivalent(model, x, mask="soft"),
                f"{desc}, {soft} mask; streaming engine, {1024 + 256 * cfg.lookahead}-sample delay removed",
            ))
    return systems, notes


def all_systems(opts: QualityOptions) -> tuple[list[System], dict[str, str], list[str]]:
    systems = [System("Noisy input", "input", lambda x: x, "no processing")]
    rt, notes = rtpulse_systems(opts)
    systems += rt
    skipped: dict[str, str] = {}
    if opts.peers:
        from benchmarks.peers import load_peers

        peers, skipped = load_peers()
        for p in peers:
            systems.append(System(p.name, "peer", p.enhance, f"{p.package}; {p.delay_note}"))
    if opts.baselines:
        from benchmarks.baselines import BASELINES

        for name, fn in BASELINES.items():
            systems.append(System(name, "baseline", fn, "rtpulse.stft, quietest-15%-frames noise estimate"))
    return systems, skipped, notes


# --- metrics -------------------------------------------------------------------------------------------


class Dnsmos:
    """DNSMOS through torchmetrics, its ONNX files taken from the speechmos wheel (nothing downloaded)."""

    FILES: ClassVar[dict[str, str]] = {
        "DNSMOS/model_v8.onnx": "dnsmos_models/model_v8.onnx",
        "DNSMOS/sig_bak_ovr.onnx": "dnsmos_models/sig_bak_ovr.onnx",
        "pDNSMOS/sig_bak_ovr.onnx": "pdnsmos_models/sig_bak_ovr.onnx",
    }

    def __init__(self) -> None:
        import importlib.util

        from torchmetrics.functional.audio import dnsmos as tm_dnsmos

        spec = importlib.util.find_spec("speechmos")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("speechmos is not installed (it carries the DNSMOS ONNX files)")
        src_root = Path(next(iter(spec.submodule_search_locations)))
        cache = Path(tm_dnsmos.DNSMOS_DIR).expanduser()
        for dst_rel, src_rel in self.FILES.items():
            src, dst = src_root / src_rel, cache / dst_rel
            if not src.is_file():
                raise RuntimeError(f"speechmos lacks {src_rel}")
            if not dst.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_name(dst.name + ".tmp")
                shutil.copyfile(src, tmp)
                tmp.replace(dst)
        self._fn = tm_dnsmos.deep_noise_suppression_mean_opinion_score
        self.cache = str(cache)

    WINDOW = 144_160  # 9.01 s at 16 kHz: the models' input length

    def __call__(self, x: np.ndarray) -> dict:
        # Like the official script, a clip shorter than the window is repeated to fill it; longer clips are
        # scored on their first 9.01 s only (one window instead of one per second: ~7× cheaper on CPU).
        reps = -(-self.WINDOW // max(1, x.size))
        x = np.tile(x, reps)[: max(self.WINDOW, min(x.size, self.WINDOW))]
        p808, sig, bak, ovrl = self._fn(
            torch.from_numpy(x.astype(np.float32)), SAMPLE_RATE, False, num_threads=1
        ).tolist()
        return {"dnsmos_p808": p808, "dnsmos_sig": sig, "dnsmos_bak": bak, "dnsmos_ovrl": ovrl}


def intrusive(est: np.ndarray, noisy: np.ndarray, clean: np.ndarray) -> dict:
    out = {"si_snr": si_snr_np(est, clean)}
    out["si_snri"] = out["si_snr"] - si_snr_np(noisy, clean)
    out.update(perceptual_scores(est, clean))
    return out


def mean_ci(values: list[float]) -> dict:
    """Mean and 95% confidence half-width (Student t)."""
    from scipy.stats import t

    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if v.size == 0:
        return {"mean": None, "ci95": None, "n": 0}
    half = float(t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else None
    return {"mean": float(v.mean()), "ci95": half, "n": int(v.size)}


# --- the run -------------------------------------------------------------------------------------------


def _score_set(items: list[Item], systems: list[System], dnsmos, progress, label: str) -> tuple[dict, dict]:
    rows: dict[str, list[dict]] = {s.name: [] for s in systems}
    lags: dict[str, list[int]] = {s.name: [] for s in systems}
    task = progress.add_task(label, total=len(items) * len(systems)) if progress else None
    example = {}
    for i, item in enumerate(items):
        for s in systems:
            if progress:
                progress.update(task, description=f"{label}: {s.name} on {item.name[:28]}")
            est = np.asarray(s.run(item.noisy), np.float32)[: item.noisy.size]
            row = {"file": item.name} | ({"noise": item.noise} if item.noise else {})
            if item.clean is not None:
                row.update(intrusive(est, item.noisy, item.clean))
            if dnsmos is not None:
                row.update(dnsmos(est))
            rows[s.name].append(row)
            silent = not np.any(est)
            row["silent"] = silent  # e.g. a random-weight model's binary mask removes every bin
            if s.kind != "input" and not silent:
                lags[s.name].append(signed_lag(item.noisy, est, 512))
            if i == 0:
                example[s.name] = est
            if progress:
                progress.advance(task)
    summary = {}
    for s in systems:
        metrics = {m: mean_ci([r.get(m) for r in rows[s.name]]) for m in METRICS}
        summary[s.name] = {
            "kind": s.kind,
            "note": s.note,
            "metrics": {m: v for m, v in metrics.items() if v["n"] > 0},
            "residual_lag_samples_median": float(np.median(lags[s.name])) if lags[s.name] else None,
            "silent_outputs": sum(r["silent"] for r in rows[s.name]),
            "files": rows[s.name],
        }
    if items:
        example["_noisy"], example["_clean"], example["_name"] = items[0].noisy, items[0].clean, items[0].name
    return summary, example


def run_quality(opts: QualityOptions, progress=None) -> tuple[dict, dict]:
    """Score every system on the test set (and DNSMOS on ``opts.real``). Returns (result, example signals)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny per-file work on a shared machine: extra threads only contend
    try:
        return _run_quality(opts, progress)
    finally:
        torch.set_num_threads(threads)


def _run_quality(opts: QualityOptions, progress=None) -> tuple[dict, dict]:
    if (opts.noisy is None) != (opts.clean is None):
        raise RtpulseError("--noisy and --clean go together (or give neither to generate a test set)")
    if opts.labels and len(opts.labels) != len(opts.models):
        raise RtpulseError(
            f"{len(opts.labels)} --label for {len(opts.models)} --model: give one label per model, in order, or none"
        )
    names = ["rtpulse (shipped)", *model_names(opts)]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:  # results are kept by name: two models under one would be averaged into one row
        raise RtpulseError(f"two models would both be named {twice!r} (runs/a/best and runs/b/best, or a label "
                           "that repeats another); give each --model its own --label")
    if opts.real is not None and not opts.dnsmos:  # real recordings have no reference: DNSMOS is their only score
        raise RtpulseError("--real is scored with DNSMOS only: drop --no-dnsmos, or drop --real")
    if not -80 <= opts.level_dbfs <= 0:  # every set is brought to it, not only a generated one (NaN fails this too)
        raise RtpulseError(f"--level-dbfs must be −80…0 dB, got {opts.level_dbfs}")
    systems, skipped, notes = all_systems(opts)  # before the sets: a bad --model is said before minutes of decoding
    warnings: list[str] = []
    real_items = None
    if opts.real is not None:  # read before minutes of scoring, so a bad folder fails first
        real_items = real_set(opts.real, REAL_LIMIT, opts.level_dbfs)
        if not real_items:
            raise RtpulseError(f"no audio files in {opts.real} (--real)")
        n_real = len(find_audio_files(opts.real))
        if n_real > len(real_items):
            warnings.append(f"--real: scored the first {len(real_items)} of {n_real} files (in name order)")
    if opts.noisy is not None:
        items, pair_warnings = paired_set(opts.noisy, opts.clean, opts.level_dbfs)
        warnings += pair_warnings
        source = {"noisy": str(opts.noisy), "clean": str(opts.clean)}
    else:
        data = opts.data or DEFAULT_DATA
        items = generated_set(
            data, opts.count, opts.seconds, opts.seed, opts.min_speech_seconds, opts.level_dbfs, opts.reference_floor_db
        )
        source = {
            "data": str(data),
            "count": opts.count,
            "seconds_max": opts.seconds,
            "seed": opts.seed,
            "snr_db": "U[-5, 10]",
            "speech_min_seconds": opts.min_speech_seconds,
            "reference_floor_db": opts.reference_floor_db,
        }
    # the level the systems heard: the int16 peers clip or lose their input's low bits at other levels
    source["level_dbfs"] = opts.level_dbfs
    dnsmos, dnsmos_note = None, None
    if opts.dnsmos:
        try:
            dnsmos = Dnsmos()
            dnsmos_note = (
                f"DNSMOS (P.835 SIG/BAK/OVRL, not personalised): torchmetrics with speechmos' ONNX files "
                f"copied to {dnsmos.cache} (no download); clips repeated to the 9.01 s window, one window "
                "per clip"
            )
        except Exception as e:  # noqa: BLE001 — any missing piece is a reported skip
            skipped["DNSMOS"] = f"{type(e).__name__}: {e}"
    if real_items is not None and dnsmos is None:
        warnings.append(f"--real {opts.real} not scored: DNSMOS is unavailable ({skipped['DNSMOS']})")
        real_items = None
    summary, example = _score_set(items, systems, dnsmos, progress, "quality")
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "test_set": source | {"files": len(items)},
        "systems": summary,
        "skipped": skipped,
        "warnings": warnings,
        "notes": notes
        + ([dnsmos_note] if dnsmos_note else [])
        + [
            "mean ± 95% CI (Student t) over files; SI-SNR: paper definition (no mean removal)",
            (
                "residual_lag_samples_median: cross-correlation lag of each output against its input after "
                "alignment (0 = aligned)"
            ),
        ],
    }
    if real_items is not None:
        real_summary, _ = _score_set(real_items, systems, dnsmos, progress, "real")
        result["real"] = {"folder": str(opts.real), "files": len(real_items), "systems": real_summary}
    return result, example


# --- outputs -------------------------------------------------------------------------------------------


def _fmt(m: dict | None, digits: int, files: int | None = None) -> str:
    """mean ± ci; "(n of N files)" when some files gave no score (PESQ refuses some), since that mean is over fewer"""
    if not m or m.get("mean") is None:
        return "—"
    ci = "" if m.get("ci95") is None else f" ± {m['ci95']:.{digits}f}"
    part = f" (n {m['n']} of {files})" if files is not None and m.get("n", files) < files else ""
    return f"{m['mean']:.{digits}f}{ci}{part}"


def _lag(s: dict) -> str:
    lag = s["residual_lag_samples_median"]
    text = "0" if s["kind"] == "input" else ("—" if lag is None else f"{lag:.0f}")
    return text + (f" ({s['silent_outputs']} silent)" if s.get("silent_outputs") else "")


def markdown(result: dict) -> str:
    ts = result["test_set"]
    lines = [
        "Quality — {} files ({}), {}".format(
            ts["files"], ", ".join(f"{k}={v}" for k, v in ts.items() if k != "files"), result["date"]
        ),
        "",
        "| system | SI-SNRi dB | SI-SNR dB | PESQ-WB | STOI | DNSMOS OVRL | SIG | BAK | lag |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    n = ts["files"]
    for name, s in result["systems"].items():
        m = s["metrics"]
        lines.append(
            f"| {name} | {_fmt(m.get('si_snri'), 2, n)} | {_fmt(m.get('si_snr'), 2, n)} | "
            f"{_fmt(m.get('pesq_wb'), 2, n)} | {_fmt(m.get('stoi'), 3, n)} | {_fmt(m.get('dnsmos_ovrl'), 2, n)} | "
            f"{_fmt(m.get('dnsmos_sig'), 2, n)} | {_fmt(m.get('dnsmos_bak'), 2, n)} | {_lag(s)} |"
        )
    for name, why in result["skipped"].items():
        lines.append(f"| {name} | skipped: {why} | | | | | | | |")
    lines += by_noise_lines(result["systems"])
    if "real" in result:
        lines += [
            "",
            f"Real recordings ({result['real']['files']} files in {result['real']['folder']}): DNSMOS",
            "",
            "| system | OVRL | SIG | BAK | P.808 |",
            "|---|---|---|---|---|",
        ]
        for name, s in result["real"]["systems"].items():
            m = s["metrics"]
            k = result["real"]["files"]
            lines.append(
                f"| {name} | {_fmt(m.get('dnsmos_ovrl'), 2, k)} | {_fmt(m.get('dnsmos_sig'), 2, k)} | "
                f"{_fmt(m.get('dnsmos_bak'), 2, k)} | {_fmt(m.get('dnsmos_p808'), 2, k)} |"
            )
    lines += ["", *[f"- warning: {w}" for w in result.get("warnings", [])], *[f"- {n}" for n in result["notes"]]]
    lines += [f"- {name}: {s['note']}" for name, s in result["systems"].items() if s["kind"] != "input"]
    return "\n".join(lines) + "\n"


def by_noise_lines(systems: dict) -> list[str]:
    """Mean SI-SNRi per noise recording of rtpulse and the peers (baselines left out for width): one noise
    can hold much of a gap between two systems."""
    shown = [n for n, s in systems.items() if s["kind"] in ("rtpulse", "peer")]
    scores = {n: {r["file"]: r.get("si_snri") for r in systems[n]["files"]} for n in shown}
    noises: dict[str, list[str]] = {}
    for row in systems[shown[0]]["files"] if shown else []:
        if "noise" in row and all(scores[n].get(row["file"]) is not None for n in shown):
            noises.setdefault(row["noise"], []).append(row["file"])
    if not noises:
        return []
    lines = ["", "SI-SNRi dB by noise recording (mean over its files)", ""]
    lines += ["| noise | files | " + " | ".join(shown) + " |", "|---|---|" + "---|" * len(shown)]
    for noise, files in sorted(noises.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        means = [np.mean([scores[n][f] for f in files]) for n in shown]
        lines.append(f"| {noise} | {len(files)} | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    return lines


def plot_bars(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["systems"])
    panels = [("si_snri", "SI-SNRi (dB)"), ("pesq_wb", "PESQ-WB"), ("stoi", "STOI"), ("dnsmos_ovrl", "DNSMOS OVRL")]
    colors = {"input": "0.6", "rtpulse": "tab:red", "peer": "tab:blue", "baseline": "tab:green"}
    fig, axes = plt.subplots(1, 4, figsize=(16, 0.42 * len(names) + 1.8), sharey=True)
    for ax, (key, title) in zip(axes, panels):
        means, errs = [], []
        for n in names:
            m = result["systems"][n]["metrics"].get(key) or {}
            means.append(m.get("mean") or 0.0)
            errs.append(m.get("ci95") or 0.0)
        ax.barh(
            range(len(names)), means, xerr=errs, color=[colors[result["systems"][n]["kind"]] for n in names], capsize=2
        )
        ax.set_title(title)
        ax.axvline(0, color="k", linewidth=0.5)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    fig.suptitle(f"Quality on {result['test_set']['files']} files (mean ± 95% CI)")
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def plot_spectrograms(example: dict, system: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rtpulse.stft import stft

    panels = [("noisy", example["_noisy"]), (system, example[system])]
    if example.get("_clean") is not None:
        panels.append(("clean", example["_clean"]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.6 * len(panels)), sharex=True)
    for ax, (title, x) in zip(axes, panels):
        mag = stft(torch.from_numpy(np.asarray(x, np.float32))).abs().numpy()  # [513, M]
        db = 20 * np.log10(mag + 1e-6)
        ax.imshow(
            db,
            origin="lower",
            aspect="auto",
            vmin=db.max() - 80,
            vmax=db.max(),
            cmap="magma",
            extent=(0, x.size / SAMPLE_RATE, 0, SAMPLE_RATE / 2000),
        )
        ax.set_title(title)
        ax.set_ylabel("kHz")
    axes[-1].set_xlabel(f"seconds ({example['_name']})")
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def write_quality(result: dict, example: dict, out: Path, plot: bool = True) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / "quality.json", out / "quality.md"
    write_text_atomic(jpath, json.dumps(result, indent=2) + "\n")
    write_text_atomic(mpath, markdown(result))
    written = [jpath, mpath]
    bars, spec = out / "quality_bars.png", out / "quality_spectrograms.png"
    if plot and have_matplotlib():
        plot_bars(result, bars)
        written.append(bars)
        rt = [n for n, s in result["systems"].items() if s["kind"] == "rtpulse"]
        pick = rt[0] if rt else next((n for n in result["systems"] if n.startswith("Wiener")), None)
        if pick and pick in example:
            plot_spectrograms(example, pick, spec)
            written.append(spec)
    for png in (bars, spec):  # an earlier run's plot beside this run's tables would show systems and scores it did not
        if png not in written:
            discard(png)
    return written


if __name__ == "__main__":  # pragma: no cover
    import sys

    from rtpulse.cli_bench import bench_app

    bench_app(["quality", *sys.argv[1:]], prog_name="python -m benchmarks.quality")
