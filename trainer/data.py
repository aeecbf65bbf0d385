"""Audio folders → decoded-once cache → one tensor per corpus → clips mixed on the training device.

A corpus (:class:`AudioBank`) keeps every file's 16 kHz mono samples concatenated in one tensor with
file offsets, so a batch of random crops is one gather by index arithmetic — no per-clip Python in
the hot loop, and it runs on the GPU when the bank lives there.

Synthetic recipe (as in PULSE): noise standardised (zero mean, unit std), speech scaled to an SNR
drawn from U[snr_min, snr_max] dB, the mixture (and its parts) divided by the mixture's std.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rtpulse.audio import find_audio_files, load_mono
from rtpulse.errors import RtpulseError
from rtpulse.files import discard, temp_beside, write_text_atomic
from rtpulse.stft import SAMPLE_RATE

STD_EPS = 1e-5
# --p-level mixed: a P clip's noise is added to another U clip of the batch at this level (dB re the U clip's std).
# Only the bins where the added noise dominates are P bins; their neighbours hold the U clip's speech, as the
# neighbours of a noise-dominated bin inside a noisy recording do.
P_MIX_DB = (-10.0, 5.0)
P_MIX_MARGIN_DB = 10.0  # default lead of the added noise over the host, amplitude dB (20·log10 of |STFT| ratios)
# --noise-warp: 39 min of training noise from a few dozen recordings, and the test noises are other recordings.
# A warped noise clip is played faster or slower (every frequency × rate, so a 6 kHz chirp lands anywhere in
# 4.8…7.5 kHz) and re-coloured (a tilt plus a few broad bumps). U's noise and the P clips are warped alike, so P
# stays the noise that U holds.
WARP_RATE = 1.25  # rates log-uniform in [1/WARP_RATE, WARP_RATE]
WARP_TILT_DB = 9.0  # gain at Nyquist re DC, uniform in ±this
WARP_BUMP_DB = 3.0  # amplitude of each of WARP_BUMPS cosines across 0…Nyquist, uniform in ±this
WARP_BUMPS = 3
NOISE_MIX_DB = (-10.0, 0.0)  # level of a second noise added under --noise-mix, re the first (both unit std)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rtpulse"


def decode_cached(path: Path, cache_dir: Path | None) -> np.ndarray:
    """One file → mono float32 at 16 kHz; decoded once into ``cache_dir/<hash>.npy`` (path+mtime+size)."""
    if cache_dir is None:
        return _finite(load_mono(path, SAMPLE_RATE), path)
    st = path.stat()
    # fsencode: the file system's bytes, also for a name that is not UTF-8 (held as surrogates, which .encode()
    # refuses); a UTF-8 name gives the same bytes, so existing cache entries keep their keys
    key = hashlib.sha1(os.fsencode(f"{path.resolve()}|{st.st_mtime_ns}|{st.st_size}|{SAMPLE_RATE}")).hexdigest()
    npy = cache_dir / f"{key}.npy"
    if npy.is_file():
        try:
            return _finite(np.load(npy, allow_pickle=False), path)
        except (OSError, ValueError, EOFError):  # EOFError: an empty file (a crash right after the rename)
            pass  # corrupt cache entry: decode again
    x = _finite(load_mono(path, SAMPLE_RATE).astype(np.float32), path)
    tmp = temp_beside(npy, ".npy")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(tmp, x, allow_pickle=False)
        os.replace(tmp, npy)
    except OSError as e:
        raise RtpulseError(f"cannot write the decoded-audio cache {cache_dir}: {e.strerror or e}; "
                           "give --cache a writable folder") from None
    finally:
        discard(tmp)
    return x


def _finite(x: np.ndarray, path: Path) -> np.ndarray:
    """``x``, or a one-line error naming the file: one NaN in a bank would turn a training step, or every score
    of a generated test set, into NaN far from its cause."""
    if not np.isfinite(x).all():
        raise RtpulseError(f"{path} holds NaN or infinite samples; repair or remove it")
    return x


def name_list(names: list[str], shown: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, d, e, … (12 in all)``: keeps a warning on one line."""
    more = f", … ({len(names)} in all)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def list_audio(root: Path, what: str) -> list[Path]:
    files = find_audio_files(root)
    if not files:
        raise RtpulseError(f"no audio files (wav, flac, ogg, …) under {what} folder {root}")
    return files


# A reference recorded over a steady background scores a denoiser that removes it as distorting the speech. The
# quality benchmark's test references and the trainer's validation references are quieter than this between words.
QUIET_FLOOR_DB = -25.0


def quiet_floor_files(files: list[Path], floor_db: float, cache_dir: Path | None, what: str,
                      option: str = "--speech-floor-db") -> list[Path]:
    """The files whose :func:`noise_floor_db` is at most ``floor_db`` (speech without a steady background)."""
    kept = [p for p in files if noise_floor_db(decode_cached(p, cache_dir)) <= floor_db]
    if not kept:
        raise RtpulseError(f"no {what} file has a noise floor ≤ {floor_db:g} dB; raise {option} (0 keeps every file)")
    return kept


def split_files(files: list[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Split by file with a fixed seed: (train, held_out). Held-out gets ≥ 1 file when there are ≥ 2."""
    if fraction <= 0 or len(files) < 2:
        return list(files), []
    order = np.random.default_rng(seed).permutation(len(files))
    n_held = min(len(files) - 1, max(1, round(fraction * len(files))))
    held = sorted(files[i] for i in order[:n_held])
    train = sorted(files[i] for i in order[n_held:])
    return train, held


# below a 16-bit file's least step (3e-5): a file whose peak stays under it holds no signal
SILENT_PEAK = 1e-5


class AudioBank:
    """All files of one corpus in one tensor. ``samples [N]``, ``starts [K]``, ``lengths [K]`` (int64)."""

    def __init__(self, arrays: list[np.ndarray], names: list[str]) -> None:
        keep = [(a, n) for a, n in zip(arrays, names) if a.size > 0]
        if not keep:
            raise RtpulseError("all audio files are empty")
        self.names = [n for _, n in keep]
        lengths = np.array([a.size for a, _ in keep], dtype=np.int64)
        self.samples = torch.from_numpy(np.concatenate([a for a, _ in keep]).astype(np.float32))
        self.lengths = torch.from_numpy(lengths)
        self.starts = torch.from_numpy(np.concatenate(([0], np.cumsum(lengths)[:-1])))
        self.weights = self.lengths.double()  # how often each file is cropped: ∝ its length unless balanced
        self.left_out: list[str] = []  # files from_files skipped as empty or silent

    @classmethod
    def from_files(
        cls, files: list[Path], cache_dir: Path | None, on_file: Callable[[], None] | None = None,
        required: bool = True,
    ) -> AudioBank | None:
        """Empty and silent files are left out (named in ``left_out``): a silent noise clip teaches nothing and a
        silent reference makes SI-SNR meaningless. Every file empty or silent is an error (None if not ``required``)."""
        arrays, names, left_out = [], [], []
        for f in files:
            x = decode_cached(f, cache_dir)
            if x.size and float(np.abs(x).max()) >= SILENT_PEAK:
                arrays.append(x)
                names.append(str(f))
            else:
                left_out.append(str(f))
            if on_file:
                on_file()
        if not arrays and not required:
            return None
        if not arrays:
            where = f" under {os.path.commonpath(left_out)}" if left_out else ""
            what = f"{left_out[0]} is" if len(left_out) == 1 else f"every audio file{where} is"
            raise RtpulseError(f"{what} empty or silent: nothing to train or score on")
        bank = cls(arrays, names)
        bank.left_out = left_out
        return bank

    def to(self, device: torch.device | str) -> AudioBank:
        for k in ("samples", "lengths", "starts", "weights"):
            setattr(self, k, getattr(self, k).to(device))
        return self

    def balance_folders(self) -> AudioBank:
        """Crop each folder (a file's parent: one recording source) equally often, files within it ∝ length, so
        a source with many minutes does not drown one with a few. A bank from one folder is unchanged."""
        folders = [str(Path(n).parent) for n in self.names]
        totals: dict[str, float] = {}
        for folder, n in zip(folders, self.lengths.tolist()):
            totals[folder] = totals.get(folder, 0.0) + n
        share = torch.tensor([1.0 / totals[f] for f in folders], dtype=torch.float64, device=self.lengths.device)
        self.weights = self.lengths.double() * share
        return self

    def file_power(self, i: int) -> float:
        """Mean power of file ``i`` (float64, one file at a time: no copy of the bank)."""
        a = int(self.starts[i])
        return float(self.samples[a : a + int(self.lengths[i])].double().square().mean())

    @property
    def seconds(self) -> float:
        return self.samples.numel() / SAMPLE_RATE

    def crops(self, n: int, length: int, gen: torch.Generator, files_out: list | None = None,
              lead: int = 0) -> torch.Tensor:
        """``n`` random crops ``[n, length]``: file drawn by ``weights`` (∝ its length unless balanced), start
        uniform; short files zero-padded after their end, and with ``lead`` (a clip's first samples that only feed
        the trackers, no loss) first before their start, up to ``lead`` zeros: a short file's sound then lies in the
        part of the clip that is trained on, not in its history. ``files_out`` (a list) receives each crop's file
        index."""
        dev = self.samples.device
        files = torch.multinomial(self.weights.float(), n, replacement=True, generator=gen)  # [n]
        if files_out is not None:
            files_out.extend(files.tolist())
        lens = self.lengths[files]
        room = (lens - length).clamp_min(0)
        offs = (torch.rand(n, device=dev, generator=gen) * (room + 1).float()).long().minimum(room)
        offs = offs - (length - lens).clamp(0, lead)  # a negative start: zeros before a short file
        pos = offs[:, None] + torch.arange(length, device=dev)[None]  # [n, length]
        valid = (pos >= 0) & (pos < lens[:, None])
        idx = (self.starts[files][:, None] + pos).clamp(0, self.samples.numel() - 1)
        return self.samples[idx] * valid


def warp_clips(x: torch.Tensor, sizes: torch.Tensor, gain_db: torch.Tensor, length: int) -> torch.Tensor:
    """Play ``x[i, :sizes[i]]`` in ``length`` samples (rate sizes[i]/length: faster when larger), then weight its
    spectrum by ``gain_db[i]`` (``[n, length // 2 + 1]`` bins, 0 … Nyquist). ``x [n, ≥ max(sizes)]`` → ``[n, length]``.

    Band-limited: the spectrum of the first sizes[i] samples is cut or zero-padded to ``length`` samples' bins, so
    nothing aliases (a faster clip loses what would land above Nyquist; a slower one has an empty top band)."""
    bins = length // 2 + 1
    out = []
    for row, size, gain in zip(x, sizes.tolist(), gain_db):  # one FFT pair per clip (sizes differ): ≪ a step's cost
        spec = torch.fft.rfft(row[:size])
        spec = spec[:bins] if spec.numel() >= bins else torch.cat([spec, spec.new_zeros(bins - spec.numel())])
        out.append(torch.fft.irfft(spec * 10.0 ** (gain / 20.0), n=length) * (length / size))  # same level
    return torch.stack(out)


def draw_warps(n: int, length: int, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(sizes [n], gain_db [n, length // 2 + 1])`` for :func:`warp_clips` (see WARP_*)."""
    log_rate = (2 * torch.rand(n, device=device, generator=gen) - 1) * np.log(WARP_RATE)
    sizes = (length * log_rate.exp()).round().long()
    f = torch.linspace(0.0, 1.0, length // 2 + 1, device=device)  # 0 … Nyquist
    tilt = (2 * torch.rand(n, 1, device=device, generator=gen) - 1) * WARP_TILT_DB
    bumps = (2 * torch.rand(n, WARP_BUMPS, device=device, generator=gen) - 1) * WARP_BUMP_DB
    k = torch.arange(1, WARP_BUMPS + 1, device=device, dtype=f.dtype)
    gain_db = tilt * f + bumps @ torch.cos(np.pi * k[:, None] * f[None])
    return sizes, gain_db


def noise_floor_db(x: np.ndarray, frame: int = 256) -> float:
    """How far a recording's quiet frames sit below its loud ones: 10th minus 95th percentile of 16 ms frame
    power, in dB. Clean read speech with pauses is −30 dB or lower; a recording with a steady background is
    closer to 0 (in ../shared/data, artikulate's Polish/French/English sets have medians of −16 to −19 dB)."""
    n = x.size // frame * frame
    if n == 0:
        return 0.0
    power = np.square(x[:n].astype(np.float64)).reshape(-1, frame).mean(1)
    # leading and trailing digital silence (an editor's padding) is no background: 10 % of it put a recording with a
    # steady hiss at −190 dB. Pauses of digital silence between words still count (clean speech has them).
    sound = np.flatnonzero(power >= SILENT_PEAK**2)
    if sound.size == 0:
        return 0.0
    level = 10 * np.log10(power[sound[0] : sound[-1] + 1] + 1e-20)
    return float(np.percentile(level, 10) - np.percentile(level, 95))


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std per row: ``[B, T]``."""
    x = x - x.mean(-1, keepdim=True)
    return x / (x.std(-1, keepdim=True) + STD_EPS)


def mix_at_snr(clean: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor):
    """``[B, T]`` speech, ``[B, T]`` noise, ``[B]`` dB → (noisy, clean, noise), all divided by std(noisy)."""
    noise = standardise(noise)
    clean = clean - clean.mean(-1, keepdim=True)
    e_clean = (clean**2).sum(-1, keepdim=True)
    e_noise = (noise**2).sum(-1, keepdim=True)
    clean = clean * (10.0 ** (snr_db[:, None] / 20.0)) * torch.sqrt(e_noise / (e_clean + 1e-12))
    noisy = clean + noise
    scale = noisy.std(-1, keepdim=True) + STD_EPS
    return noisy / scale, clean / scale, noise / scale


@dataclass
class Batch:
    """Waveforms ``[B, T]`` for one step. Which fields are set depends on the method.

    pu: ``u`` (noisy), ``p`` (separate noise clips; under ``--p-level mixed`` another U clip plus a noise clip, the
    noise part scaled like ``p`` in ``p_noise``). pn: ``u`` (noisy), ``clean``.
    mixit: ``mix`` (noisy + noise, normalised), ``u`` (noisy) and ``noise`` scaled like ``mix``.
    """

    u: torch.Tensor
    p: torch.Tensor | None = None
    clean: torch.Tensor | None = None
    mix: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    p_noise: torch.Tensor | None = None


class Recipe:
    """Draws batches. Synthetic: ``clean`` + ``noise`` banks; real (PU only): ``noisy`` + ``noise`` banks."""

    def __init__(
        self, method: str, noise: AudioBank, clean: AudioBank | None = None, noisy: AudioBank | None = None,
        snr_range: tuple[float, float] = (-5.0, 10.0), p_level: str = "unit", noise_warp: float = 0.0,
        noise_mix: float = 0.0, lead: int = 0,
    ) -> None:
        """``lead``: the samples of tracker history before each clip's trained part (:meth:`AudioBank.crops`)."""
        if (clean is None) == (noisy is None):
            raise RtpulseError("give either clean speech (synthetic recipe) or noisy recordings (real), not both")
        if noisy is not None and method != "pu":
            raise RtpulseError(f"--method {method} needs clean speech (--clean); real noisy recordings train PU only")
        self.method, self.noise, self.clean, self.noisy, self.snr_range = method, noise, clean, noisy, snr_range
        self.p_level, self.noise_warp, self.noise_mix, self.lead = p_level, noise_warp, noise_mix, lead

    def noise_clips(self, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
        """``[n, length]`` noise crops (see :meth:`single_noise_clips`); with ``noise_mix`` > 0 that share of them
        has a second, independent crop added 0…10 dB below it, drawn like the first: often another recording (rain over an
        engine), sometimes the same source."""
        first = self.single_noise_clips(n, length, gen)
        if self.noise_mix <= 0:
            return first
        second = self.single_noise_clips(n, length, gen)
        lo, hi = NOISE_MIX_DB
        level = lo + (hi - lo) * torch.rand(n, 1, device=first.device, generator=gen)
        mixed = (torch.rand(n, 1, device=first.device, generator=gen) < self.noise_mix).float()
        return standardise(first) + mixed * 10.0 ** (level / 20.0) * standardise(second)

    def single_noise_clips(self, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
        """``[n, length]`` noise crops; with ``noise_warp`` > 0 that share of them warped (:func:`warp_clips`)."""
        if self.noise_warp <= 0:
            return self.noise.crops(n, length, gen, lead=self.lead)
        dev = self.noise.samples.device
        sizes, gain_db = draw_warps(n, length, gen, dev)
        warped = torch.rand(n, device=dev, generator=gen) < self.noise_warp
        sizes = torch.where(warped, sizes, length)
        gain_db = gain_db * warped[:, None]
        # no lead here: a short file stays at the start of a crop whose rows are played at different rates
        return warp_clips(self.noise.crops(n, int(sizes.max()), gen), sizes, gain_db, length)

    def to(self, device) -> Recipe:
        for bank in (self.noise, self.clean, self.noisy):
            if bank is not None:
                bank.to(device)
        return self

    def noisy_clips(self, n: int, length: int, gen: torch.Generator):
        """(noisy, clean) ``[n, length]``; clean is None for real recordings."""
        if self.noisy is not None:
            return standardise(self.noisy.crops(n, length, gen, lead=self.lead)), None
        noisy, clean, _ = self.mixtures(n, length, gen)
        return noisy, clean

    def mixtures(self, n: int, length: int, gen: torch.Generator, files_out: list | None = None):
        """(noisy, clean, speech) ``[n, length]``: the synthetic recipe's mixtures, their clean part, and the speech
        crops as they were before mixing scaled them (where a silent stretch still looks silent); ``files_out``
        receives each speech crop's file index in the clean bank."""
        speech = self.clean.crops(n, length, gen, files_out, self.lead)
        noise = self.noise_clips(n, length, gen)
        lo, hi = self.snr_range
        snr = lo + (hi - lo) * torch.rand(n, device=speech.device, generator=gen)
        noisy, clean, _ = mix_at_snr(speech, noise, snr)
        return noisy, clean, speech

    def batch(self, n: int, length: int, gen: torch.Generator) -> Batch:
        noisy, clean = self.noisy_clips(n, length, gen)
        if self.method == "pn":
            return Batch(u=noisy, clean=clean)
        # P clips / MixIT's second noise: fresh crops, never the noise inside the noisy clips.
        noise = standardise(self.noise_clips(n, length, gen))
        if self.method == "pu":
            if self.p_level == "matched":
                # the level noise has inside a unit-std mixture at an SNR from the same range: 1/√(1 + 10^(snr/10)).
                # Needs no clean speech; without it the weighted loss sees P ~1.6× louder than the noise in U.
                lo, hi = self.snr_range
                snr = lo + (hi - lo) * torch.rand(n, device=noise.device, generator=gen)
                noise = noise / torch.sqrt(1 + 10.0 ** (snr[:, None] / 10.0))
            elif self.p_level == "mixed":
                lo, hi = P_MIX_DB
                level = lo + (hi - lo) * torch.rand(n, device=noise.device, generator=gen)
                added = noise * 10.0 ** (level[:, None] / 20.0)
                mixed = noisy.roll(1, 0) + added  # P clip i's host is U clip i − 1 (batch size 1: clip 0 itself)
                scale = mixed.std(-1, keepdim=True) + STD_EPS
                return Batch(u=noisy, p=mixed / scale, p_noise=added / scale)
            return Batch(u=noisy, p=noise)
        mix = noisy + noise
        scale = mix.std(-1, keepdim=True) + STD_EPS
        return Batch(u=noisy / scale, mix=mix / scale, noise=noise / scale)


def write_split(path: Path, split: dict[str, dict[str, list[Path]]]) -> None:
    data = {k: {part: [os.path.abspath(f) for f in files] for part, files in v.items()} for k, v in split.items()}
    write_text_atomic(path, json.dumps(data, indent=1))


def read_split(path: Path) -> dict[str, dict[str, list[Path]]]:
    """A run's split.json, so a resumed run trains and validates on the files it started with (files added to
    the folders since are ignored; a file gone is an error, not a silently different dev set)."""
    try:
        data = json.loads(path.read_text())
        split = {k: {part: [Path(f) for f in files] for part, files in v.items()} for k, v in data.items()}
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise RtpulseError(f"cannot resume: {path} is not a readable file split ({e})") from None
    gone = [f for v in split.values() for files in v.values() for f in files if not f.is_file()]
    if gone:
        more = f" and {len(gone) - 1} more" if len(gone) > 1 else ""
        # runs made before paths were stored absolute name files relative to the folder they were started in
        where = "" if gone[0].is_absolute() else f" in {Path.cwd()} (resume from the folder the run was started in)"
        raise RtpulseError(f"cannot resume: {gone[0]}{more} from {path} no longer exist{where}")
    return split
