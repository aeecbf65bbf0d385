"""`rtpulse denoise`: files in, enhanced files out at each input's own rate and length.

Files are processed in chunks with bounded memory (a one-hour file never sits in memory whole):
read blocks → downmix → :func:`~rtpulse.stream.sanitize` → resample to 16 kHz → model on spectrogram
chunks with their receptive-field context → resample back → write blocks to a temp file → rename.
Every stage keeps just enough context that the chunked result equals :func:`denoise_array` (the same
computation on the whole file at once) to float tolerance, whatever the chunk size.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

from rtpulse.audio import (
    AUDIO_SUFFIXES,
    WRITE_FORMATS,
    check_input_rate,
    check_output_rate,
    output_format,
    resample,
    to_mono,
)
from rtpulse.errors import RtpulseError
from rtpulse.files import check_output_file, discard, libsndfile_path, os_write_error, temp_beside
from rtpulse.model import PulseCNN
from rtpulse.stft import HOP, LEAD, SAMPLE_RATE, istft, n_frames, stft
from rtpulse.stream import (
    StreamingDenoiser,
    check_floor_db,
    enhance,
    mask_gain,
    sanitize,
    stream_offline_equivalent,
    tail_for_lookahead,
)

ENGINES = ("offline", "stream")
# Model chunk: 256 frames (4.1 s). The paper preset's widest layer then holds 128×513×~280 floats (~75 MB);
# bigger chunks buy little speed and cost memory linearly.
CHUNK_FRAMES = 256


@dataclass(frozen=True)
class DenoiseOptions:
    mask: str = "binary"
    floor_db: float | None = None
    engine: str = "offline"

    def __post_init__(self) -> None:
        check_floor_db(self.floor_db)


def denoise_signal(model: PulseCNN, x16k: np.ndarray, opts: DenoiseOptions) -> np.ndarray:
    """Mono 16 kHz float32 ``[T]`` → enhanced ``[T]``, aligned (the streaming delay removed). Whole signal."""
    if opts.engine == "stream":
        return stream_offline_equivalent(model, x16k, chunk=4096, mask=opts.mask, floor_db=opts.floor_db)
    y = enhance(model, torch.from_numpy(np.ascontiguousarray(x16k)), opts.mask, opts.floor_db)
    return y.numpy()


def denoise_array(model: PulseCNN, data: np.ndarray, rate: int, opts: DenoiseOptions) -> np.ndarray:
    """Whole-file reference: samples ``[T, C]`` or ``[T]`` at ``rate`` → enhanced mono ``[T]`` at ``rate``.

    :func:`denoise_file` computes the same samples chunk by chunk.
    """
    x = resample(to_mono(sanitize(data)), rate, SAMPLE_RATE)  # sanitised before the downmix, as _read_blocks does
    y = denoise_signal(model, x, opts)
    out = resample(y, SAMPLE_RATE, rate)
    return np.pad(out, (0, max(0, data.shape[0] - out.shape[0])))[: data.shape[0]]


def _names_audio_file(path: Path) -> bool:
    """``path`` ends in an audio suffix (fx.wav, a.FLAC, …): meant as a file, not as a folder."""
    ext = path.suffix.lower()
    return ext in AUDIO_SUFFIXES or (len(ext) > 1 and ext[1:].upper() in sf.available_formats())


def plan_outputs(inputs: list[Path], output: str | os.PathLike, force: bool) -> list[tuple[Path, Path]]:
    """Pair each input with its output path; refuse overwriting an input, or an existing file without force.

    Inputs are checked first: a missing input is the error to report, not what its output name would be.
    ``output`` ending in a slash names a folder even for one input (pass the user's string: Path drops it).
    """
    slash = str(output).endswith(("/", "\\"))
    output = Path(output)
    if not inputs:
        raise RtpulseError("no input files given")
    for src in inputs:
        if not src.exists():
            raise RtpulseError(f"input not found: {src}")
        if src.is_dir():
            raise RtpulseError(f"input is a directory, not an audio file: {src}")
        if not os.access(src, os.R_OK):
            raise RtpulseError(f"cannot read {src}: permission denied")
    to_dir = len(inputs) > 1 or output.is_dir() or slash
    if to_dir:
        if output.exists() and not output.is_dir():
            why = "several inputs need" if len(inputs) > 1 else "a name ending in / asks for"
            raise RtpulseError(f"{why} -o to be a directory, but {output} is a file")
        # "-o fx.wav" with two inputs is a slip (e.g. "--force true" made "true" an input), not a folder name
        if not output.is_dir() and len(inputs) > 1 and _names_audio_file(output):
            raise RtpulseError(f"-o {output} names a file, but {len(inputs)} inputs were given; give a folder")
        # each keeps its name; one in a format rtpulse does not write (an extensionless file, .caf) becomes .wav
        names = [p.name if p.suffix.lower() in WRITE_FORMATS else p.stem + ".wav" for p in inputs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise RtpulseError(f"two inputs would both be written as {min(dup)!r}; denoise them into separate folders")
        pairs = [(p, output / n) for p, n in zip(inputs, names, strict=True)]
    else:
        pairs = [(inputs[0], output)]
    for src, dst in pairs:
        # resolve() even when dst does not exist yet: "sub/../in.wav" names the input once sub/ is created
        same = dst.resolve() == src.resolve() or (dst.exists() and src.exists() and os.path.samefile(dst, src))
        if same:
            raise RtpulseError(f"output {dst} is the input file; choose another output path")
        check_output_file(dst)  # not a directory, and not under a file ("notes.txt/x.wav")
        output_format(dst)  # a name it cannot write is said before "pass --force"
        if dst.exists() and not force:
            raise RtpulseError(f"output {dst} exists; pass --force to replace it")
    return pairs


# --- chunked pipeline ----------------------------------------------------------------------------------


class _Window:
    """Forward-only random access to a signal that arrives as consecutive blocks: ``get(a, b)`` returns
    samples [a, b) (zeros outside [0, length)); ``drop_before(a)`` forgets what no later request needs."""

    def __init__(self, blocks: Iterable[np.ndarray], length: int) -> None:
        self._blocks = iter(blocks)
        self._buf = np.zeros(0, np.float32)
        self._start = 0  # absolute index of _buf[0]
        self.length = length

    def get(self, a: int, b: int) -> np.ndarray:
        want = min(b, self.length)
        parts, end = [self._buf], self._start + self._buf.size
        while end < want:
            block = next(self._blocks, None)
            if block is None:  # source shorter than announced (truncated file): the rest reads as zeros
                self.length = end
                break
            parts.append(block)
            end += block.size
        self._buf = np.concatenate(parts) if len(parts) > 1 else self._buf
        out = np.zeros(b - a, np.float32)
        lo, hi = max(a, self._start, 0), min(b, self._start + self._buf.size, self.length)
        if hi > lo:
            out[lo - a : hi - a] = self._buf[lo - self._start : hi - self._start]
        return out

    def drop_before(self, a: int) -> None:
        if a > self._start:
            self._buf = self._buf[a - self._start :].copy()  # copy: let the big old buffer go
            self._start = a


def resampled_length(n: int, rate_in: int, rate_out: int) -> int:
    """Samples :func:`rtpulse.audio.resample` returns for ``n`` input samples (ceil(n · out / in))."""
    g = gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    return (n * up + down - 1) // down


def _resample_blocks(
    blocks: Iterable[np.ndarray], n_in: int, rate_in: int, rate_out: int, piece: int
) -> Iterator[np.ndarray]:
    """:func:`rtpulse.audio.resample` of the whole signal, produced ``piece`` output samples at a time.

    Each piece runs ``resample_poly`` on its input span plus the filter's half-length on both sides,
    starting at a multiple of ``down`` so the polyphase filter has the same phase as on the whole signal.
    """
    if rate_in == rate_out:
        yield from blocks
        return
    g = gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    half = -(-10 * max(up, down) // up) + 2  # resample_poly's filter half-length (10·max taps) in input samples
    window = _Window(blocks, n_in)
    n_out = resampled_length(n_in, rate_in, rate_out)
    for j0 in range(0, n_out, piece):
        j1 = min(j0 + piece, n_out)
        start = ((j0 * down) // up - half) // down * down
        seg = window.get(start, -(-(j1 * down) // up) + half + 1)
        offset = start * up // down  # whole-signal output index of seg's output 0
        yield resample_poly(seg, up, down)[j0 - offset : j1 - offset].astype(np.float32)
        window.drop_before(start)


def _offline_blocks(
    model: PulseCNN, x16: Iterable[np.ndarray], length: int, opts: DenoiseOptions, chunk_frames: int
) -> Iterator[np.ndarray]:
    """:func:`~rtpulse.stream.enhance` of the whole 16 kHz signal, ``HOP·chunk_frames`` samples at a time.

    Output samples [256a, 256b) need the masked frames [a, b+3); their logits need input frames
    [a − model.past_frames, b + 3 + L) — the model's receptive field plus its level/floor window. Frames past
    either end of the whole spectrogram are left out, so the model pads them with zeros as it does offline.
    """
    lookahead = model.lookahead
    past = model.past_frames
    total_frames = n_frames(length, tail_for_lookahead(length, lookahead))
    window = _Window((sanitize(b) for b in x16), length)
    out_frames = -(-length // HOP)
    for a in range(0, out_frames, chunk_frames):
        b = min(a + chunk_frames, out_frames)
        keep_end = min(b + 3, total_frames)
        first, last = max(0, a - past), min(total_frames, keep_end + lookahead)
        seg = window.get(HOP * first - LEAD, HOP * last)  # frame m covers samples [256m − 768, 256m + 256)
        spec = stft(torch.from_numpy(seg))[:, 3:]  # [513, last − first]: stft's 3 lead-in frames dropped
        with torch.no_grad():
            logits = model(spec.abs().unsqueeze(0))[0, 0]  # [513, last − first]
        keep = slice(a - first, keep_end - first)
        masked = spec[:, keep] * mask_gain(logits[:, keep], opts.mask, opts.floor_db, model.config.mask_sharpness)
        n = min(HOP * b, length) - HOP * a
        yield istft(masked, n).numpy()
        window.drop_before(HOP * max(0, b - past) - LEAD)


def _stream_blocks(model: PulseCNN, x16: Iterable[np.ndarray], length: int, opts: DenoiseOptions) -> Iterator:
    """The real-time engine over the whole signal, its delay removed: ``length`` aligned samples in pieces."""
    engine = StreamingDenoiser(model, opts.mask, opts.floor_db)
    skip = engine.delay
    for block in chain(x16, [None]):
        y = engine.process(block) if block is not None else engine.flush()
        cut = min(skip, y.size)
        skip -= cut
        if y.size > cut:
            yield y[cut:]


def _trim(blocks: Iterable[np.ndarray], n: int) -> Iterator[np.ndarray]:
    for block in blocks:
        block = block[:n]
        n -= block.size
        if block.size:
            yield block
        if n <= 0:
            return


def _read_blocks(f: sf.SoundFile, src: Path, blocksize: int) -> Iterator[np.ndarray]:
    read_any = False
    try:
        # read() until it returns nothing, not SoundFile.blocks(): that one trusts the header's length and, on a cut
        # MP3, went on yielding its reused buffer (the last block again) up to the length the header promised
        # in pieces of at most READ_FRAMES: a cut FLAC fails on the read that reaches its cut, losing that read
        # a DOUBLE file read as float64: libsndfile's float32 would turn a 1e39 into inf, which sanitize silences,
        # where denoise_array clips it to full level (the two must give the same samples)
        wide = "float64" if f.subtype == "DOUBLE" else "float32"
        while (block := f.read(min(blocksize, READ_FRAMES), dtype=wide, always_2d=True)).size:
            read_any = True
            # sanitise before resampling (its filter would smear NaN around) and before the downmix: a NaN in one
            # channel would make the mean NaN, and so 0, silencing the other channels' samples with it
            yield to_mono(sanitize(block))
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        if not read_any:
            raise RtpulseError(f"cannot read {src}: {str(e).splitlines()[0]}") from None
        # a cut FLAC fails where its data end ("psf_fseek() failed"): what was read is the file (the caller warns)


def _open_input(src: Path) -> sf.SoundFile:
    if not src.exists():
        raise RtpulseError(f"input not found: {src}")
    if src.is_dir():
        raise RtpulseError(f"input is a directory, not an audio file: {src}")
    try:
        # a pipe (/dev/stdin, a FIFO): read whole, so that any format can seek in it (FLAC), and libsndfile measures
        # its length (a WAV written to a pipe says 2^31 − 1 samples in its header)
        if not src.is_file():
            return sf.SoundFile(io.BytesIO(src.read_bytes()))
        return sf.SoundFile(libsndfile_path(src))
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise RtpulseError(f"cannot read {src} as audio: {str(e).splitlines()[0]}") from None


READ_FRAMES = 16384  # per read of the input file
# Levels up to this read back from .ogg as written at every rate (8–192 kHz): a 440 Hz tone of 128 came back at 19 dB
# SNR at 44.1 and 48 kHz, one of 256 at 2 dB (garbage), a 60 Hz square of 64 at 12 dB; at 32 tones, squares and saws
# lose at most 3 dB against level 1 (and 1000, the old bound, garbled tones at 8, 44.1, 48 and 96 kHz)
VORBIS_MAX_LEVEL = 32.0
# LAME aborts the whole process (an assert in its quantiser: no error, the temp file left behind) on loud MP3 input:
# 120 of 120 speech and noise files at ±2^31 (float files at 32-bit integer scale, which the engine accepts); flat
# stretches, which clipping at this bound makes, from ±16,384 (a DC step of 22,000 at 16 kHz; 3 of 1,000 piecewise
# constant signals at 16,384); none of 2,000 at 12,000 or 8,192, nor squares, steps or clipped speech at 8,192.
MP3_MAX_LEVEL = 8192.0
CLIP_SLACK = 0.01  # an output louder than full scale by more than this is worth a warning where the format clips
RIFF_MAX_DATA = 2**32 - 1 - 4096  # WAV, AIFF and AU sizes are 32-bit fields (less the header's room)
SAMPLE_BYTES = {"FLOAT": 4, "DOUBLE": 8, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4}
SFE_SYSTEM = 2  # libsndfile's error code for a failed system call


def large_file_format(dst: Path, fmt: str, subtype: str | None, frames: int) -> str:
    """The container for ``frames`` mono samples: a float WAV past 4 GiB (6.2 h at 48 kHz) becomes RF64 (still .wav,
    which libsndfile and ffmpeg read; plain WAV kept only its first 4 GiB); AIFF or AU that large is refused."""
    size = frames * SAMPLE_BYTES.get(subtype or sf.default_subtype(fmt), 4)
    if size <= RIFF_MAX_DATA:
        return fmt
    if fmt == "WAV":
        return "RF64"
    if fmt in ("AIFF", "AU"):
        raise RtpulseError(f"cannot write {dst}: {size / 2**30:.1f} GiB of samples is past {fmt}'s 4 GiB; write .wav "
                           "(RF64) or .flac instead")
    return fmt


def level_bound(fmt: str, subtype: str | None) -> float | None:
    """The largest level ``fmt`` stores faithfully (None: any). Read back by soundfile: float WAV keeps any level, MP3
    up to MP3_MAX_LEVEL (past it the encoder aborts); FLAC, AIFF and AU hold integers (±1); Opus clips at ±1 at 16 and
    24 kHz (its speech mode), and Vorbis turns levels past VORBIS_MAX_LEVEL into garbage."""
    if subtype in ("FLOAT", "DOUBLE"):
        return None
    if fmt == "MP3":
        return MP3_MAX_LEVEL
    if fmt == "OGG" and subtype != "OPUS":
        return VORBIS_MAX_LEVEL
    return 1.0


def write_blocks_atomic(dst: Path, blocks: Iterable[np.ndarray], rate: int, frames: int = 0) -> tuple[int, float]:
    """Write mono blocks to a hidden temp file next to ``dst`` and rename it over ``dst`` at the end; returns how
    many samples were clipped to the format's :func:`level_bound`, and the loudest of them (0 for float WAV, which
    keeps any level).

    Any failure — in the writer, in the rename, or in whatever produces the blocks (including
    KeyboardInterrupt) — deletes the temp file and leaves ``dst`` as it was.
    """
    fmt, subtype = output_format(dst)
    fmt = large_file_format(dst, fmt, subtype, frames)  # ``frames``: how many samples will come
    bound = level_bound(fmt, subtype)
    clipped, peak = 0, 0.0
    tmp = temp_beside(dst)
    try:
        with sf.SoundFile(libsndfile_path(tmp), "w", samplerate=rate, channels=1, subtype=subtype, format=fmt) as f:
            for block in blocks:
                if bound is not None:  # clipped here, the same way for every format, and counted
                    over = np.abs(block) > bound
                    if over.any():
                        clipped += int(np.count_nonzero(over))
                        peak = max(peak, float(np.abs(block).max()))
                        block = np.clip(block, -bound, bound)
                f.write(block)
        os.replace(tmp, dst)
    except OSError as e:  # the rename; Python's text would name the hidden temp file
        raise RtpulseError(f"cannot write {dst}: {e.strerror or e}") from None
    except (sf.LibsndfileError, RuntimeError) as e:
        # a failed system call (full disk, read-only folder) is only "System error." here: the OS says which
        reason = os_write_error(tmp) if getattr(e, "code", None) == SFE_SYSTEM else None
        # libsndfile names the file it opened: the user knows dst, not the hidden temp name
        reason = reason or str(e).splitlines()[0].replace(str(tmp), str(dst))
        raise RtpulseError(f"cannot write {dst}: {reason}") from None
    finally:
        discard(tmp)
    return clipped, peak


def denoise_file(
    model: PulseCNN,
    src: Path,
    dst: Path,
    opts: DenoiseOptions,
    chunk_frames: int = CHUNK_FRAMES,
    on_progress: Callable[[float], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> float:
    """Denoise one file in chunks; returns its duration in seconds. The output is written atomically.

    Memory is bounded by ``chunk_frames`` (not the file's length). ``on_progress(fraction)`` is called
    as the input is read; ``on_warning(text)`` hears of samples the output format had to clip.
    """
    src, dst = Path(src), Path(dst)
    output_format(dst)  # refuse an unknown output format before any work
    with _open_input(src) as f:
        n_in, rate = f.frames, f.samplerate
        check_input_rate(src, rate)
        check_output_rate(dst, rate)  # the output keeps the input's rate: refused before any work
        piece = HOP * chunk_frames
        block_in = max(1, piece * rate // SAMPLE_RATE)
        if n_in <= 0:
            raise RtpulseError(f"{src} holds no samples")
        large_file_format(dst, *output_format(dst), n_in)  # an AIFF past 4 GiB, too

        done = 0

        def read() -> Iterator[np.ndarray]:
            nonlocal done
            for block in _read_blocks(f, src, block_in):
                done += block.size
                if on_progress is not None:
                    on_progress(min(1.0, done / n_in))
                yield block

        n16 = resampled_length(n_in, rate, SAMPLE_RATE)
        x16 = _trim(_resample_blocks(read(), n_in, rate, SAMPLE_RATE, piece), n16)
        if opts.engine == "stream":
            y16 = _stream_blocks(model, x16, n16, opts)
        else:
            y16 = _offline_blocks(model, x16, n16, opts, chunk_frames)
        out = _trim(_resample_blocks(y16, n16, SAMPLE_RATE, rate, block_in), n_in)
        check_output_file(dst)  # "notes.txt/x.wav": say notes.txt is a file, not mkdir's "File exists"
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RtpulseError(f"cannot create the output folder {dst.parent}: {e.strerror}") from None
        clipped, loudest = write_blocks_atomic(dst, out, rate, n_in)
    if done < n_in and on_warning is not None:  # a cut MP3's header still announces the whole file
        on_warning(f"{src}: only {done / rate:.2f} s of the {n_in / rate:.2f} s its header announces could be read "
                   f"(a cut or damaged file?); the rest of {dst} is silence")
    # not for the hair (~0.1 %) a full-scale recording overshoots by after resampling; a clipped recording denoised
    # can overshoot by 10–30 %, an input past full scale by more
    bound = level_bound(*output_format(dst))
    if clipped and loudest > bound * (1.0 + CLIP_SLACK) and on_warning is not None:
        scale = "full scale (±1)" if bound == 1.0 else f"±{bound:,.0f}"
        on_warning(f"{dst}: {clipped} samples beyond {scale} were clipped (the loudest at {loudest:.2f}), as "
                   f"{dst.suffix} holds at most {scale}; write .wav to keep them")
    return n_in / rate
