"""Audio files in and out: read any format soundfile knows, downmix, resample, write atomically."""

from __future__ import annotations

import os
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from rtpulse.errors import RtpulseError
from rtpulse.files import discard, libsndfile_path, temp_beside

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au")


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """File → (float32 samples ``[T, C]``, sample rate). Any problem is one :class:`RtpulseError` line."""
    path = Path(path)
    if not path.exists():
        raise RtpulseError(f"input not found: {path}")
    if path.is_dir():
        raise RtpulseError(f"input is a directory, not an audio file: {path}")
    try:
        data, rate = sf.read(libsndfile_path(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise RtpulseError(f"cannot read {path} as audio: {str(e).splitlines()[0]}") from None
    check_input_rate(path, rate)
    return data, int(rate)


MAX_INPUT_RATE = 768_000  # the highest rate audio interfaces offer; a damaged header can claim any number


def check_input_rate(path: str | os.PathLike, rate: int) -> None:
    """Refuse a sample rate no recording has: resampling from it would need filters of gigabytes."""
    if not 1 <= rate <= MAX_INPUT_RATE:
        raise RtpulseError(f"{Path(path)}: its header claims {rate} Hz; rates above {MAX_INPUT_RATE} Hz are refused")


def to_mono(data: np.ndarray) -> np.ndarray:
    """``[T, C]`` or ``[T]`` → ``[T]`` by averaging channels."""
    return data if data.ndim == 1 else data.mean(axis=1, dtype=np.float32)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling along axis 0 (whole signal, offline)."""
    if rate_in == rate_out or x.shape[0] == 0:
        return x.astype(np.float32, copy=False)
    g = gcd(rate_in, rate_out)
    return resample_poly(x, rate_out // g, rate_in // g, axis=0).astype(np.float32)


def load_mono(path: str | os.PathLike, rate: int) -> np.ndarray:
    """File → mono float32 at ``rate``."""
    data, file_rate = read_audio(path)
    return resample(to_mono(data), file_rate, rate)


# What rtpulse writes, by suffix: (soundfile format, subtype; None = the format's default). Float WAV keeps full
# precision; Ogg's default codec is Vorbis, so .opus names Opus. Only these: libsndfile's other formats store some
# rates wrongly or not at all (.wve always 8 kHz, .xi 44.1 kHz, .htk and .sds altered, .sd2 unreadable).
WRITE_FORMATS: dict[str, tuple[str, str | None]] = {
    ".wav": ("WAV", "FLOAT"), ".flac": ("FLAC", None), ".ogg": ("OGG", None), ".opus": ("OGG", "OPUS"),
    ".mp3": ("MP3", None), ".aiff": ("AIFF", None), ".aif": ("AIFF", None), ".au": ("AU", None),
}


def output_format(path: str | os.PathLike) -> tuple[str, str | None]:
    """(soundfile format, subtype) for writing ``path``, chosen by its suffix (:data:`WRITE_FORMATS`); any other
    suffix, or one this libsndfile cannot encode, is a one-line error."""
    path = Path(path)
    fmt = WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise RtpulseError(f"cannot write {path}: unknown audio format {path.suffix!r} (rtpulse writes "
                           f"{', '.join(WRITE_FORMATS)})")
    if fmt[0] not in sf.available_formats() or (fmt[1] is not None and fmt[1] not in sf.available_subtypes(fmt[0])):
        raise RtpulseError(f"cannot write {path}: this libsndfile has no {path.suffix[1:]} encoder (use .wav or .flac)")
    return fmt


OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


VORBIS_MAX_RATE = 200_000  # 200,001 Hz and up: a segmentation fault inside libvorbis (through libsndfile)


def check_output_rate(path: str | os.PathLike, rate: int) -> None:
    """Opus and MP3 store only a few rates (libsndfile's own error for others is cryptic, and comes after the work)."""
    fmt, subtype = output_format(path)
    if subtype == "OPUS" and rate not in OPUS_RATES:
        raise RtpulseError(f"cannot write {Path(path)}: Opus stores 8, 12, 16, 24 or 48 kHz, this audio is {rate} Hz "
                           "(write .ogg or .flac instead)")
    if fmt == "OGG" and subtype != "OPUS" and rate > VORBIS_MAX_RATE:  # libvorbis crashes the process above it
        raise RtpulseError(f"cannot write {Path(path)}: Vorbis stores at most {VORBIS_MAX_RATE // 1000} kHz, this audio "
                           f"is {rate} Hz (write .flac or .wav instead)")
    if fmt == "MP3" and rate not in MP3_RATES:
        raise RtpulseError(f"cannot write {Path(path)}: MP3 stores 8 to 48 kHz (8, 11.025, 12, 16, 22.05, 24, 32, "
                           f"44.1, 48), this audio is {rate} Hz (write .flac or .wav instead)")


def write_audio(path: str | os.PathLike, data: np.ndarray, rate: int, subtype: str | None = None) -> None:
    """Write via a temp file in the same folder and rename, so a crash never leaves a partial file."""
    path = Path(path)
    ext, own_subtype = output_format(path)
    check_output_rate(path, rate)
    tmp = temp_beside(path)
    try:
        sf.write(libsndfile_path(tmp), data, rate, subtype=subtype or own_subtype, format=ext)
        os.replace(tmp, path)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        # libsndfile names the file it opened: the user knows path, not the hidden temp name
        raise RtpulseError(f"cannot write {path}: {str(e).splitlines()[0].replace(str(tmp), str(path))}") from None
    finally:
        discard(tmp)


def find_audio_files(root: str | os.PathLike) -> list[Path]:
    """All audio files under ``root`` (recursive, sorted), or ``[root]`` if it is a file. Linked folders are
    followed (extra noise is added by linking its folder into --noise), each real folder once (a link loop ends)."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise RtpulseError(f"not found: {root}")
    seen: set[tuple[int, int]] = set()
    found = []
    for folder, subdirs, files in os.walk(root, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            subdirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        # a folder reached both directly and through a link is listed under its real path, whatever the disk's order
        subdirs.sort(key=lambda d: (os.path.islink(os.path.join(folder, d)), d))
        found += [Path(folder) / f for f in files if Path(f).suffix.lower() in AUDIO_SUFFIXES]
    return sorted(p for p in found if p.is_file())
