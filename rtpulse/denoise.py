"""`rtpulse denoise`: files in, enhanced files out at each input's own rate and length."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rtpulse.audio import read_audio, resample, to_mono, write_audio
from rtpulse.errors import RtpulseError
from rtpulse.model import PulseCNN
from rtpulse.stft import SAMPLE_RATE
from rtpulse.stream import enhance, stream_offline_equivalent

ENGINES = ("offline", "stream")


@dataclass(frozen=True)
class DenoiseOptions:
    mask: str = "binary"
    floor_db: float | None = None
    engine: str = "offline"


def denoise_signal(model: PulseCNN, x16k: np.ndarray, opts: DenoiseOptions) -> np.ndarray:
    """Mono 16 kHz float32 ``[T]`` → enhanced ``[T]``, aligned (the streaming delay removed)."""
    if opts.engine == "stream":
        return stream_offline_equivalent(model, x16k, chunk=4096, mask=opts.mask, floor_db=opts.floor_db)
    y = enhance(model, torch.from_numpy(np.ascontiguousarray(x16k)), opts.mask, opts.floor_db)
    return y.numpy()


def plan_outputs(inputs: list[Path], output: Path, force: bool) -> list[tuple[Path, Path]]:
    """Pair each input with its output path; refuse overwriting an input, or an existing file without force."""
    if not inputs:
        raise RtpulseError("no input files given")
    to_dir = len(inputs) > 1 or output.is_dir() or str(output).endswith(("/", "\\"))
    if to_dir:
        if output.exists() and not output.is_dir():
            raise RtpulseError(f"several inputs need -o to be a directory, but {output} is a file")
        names = [p.name for p in inputs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise RtpulseError(f"two inputs share the name {sorted(dup)[0]!r}; denoise them into separate folders")
        pairs = [(p, output / p.name) for p in inputs]
    else:
        pairs = [(inputs[0], output)]
    for src, dst in pairs:
        if dst.exists() and src.exists() and dst.resolve() == src.resolve():
            raise RtpulseError(f"output {dst} is the input file; choose another output path")
        if dst.exists() and not force:
            raise RtpulseError(f"output {dst} exists; pass --force to replace it")
    return pairs


def denoise_file(model: PulseCNN, src: Path, dst: Path, opts: DenoiseOptions) -> float:
    """Denoise one file; returns its duration in seconds. The output is written atomically."""
    data, rate = read_audio(src)
    if data.shape[0] == 0:
        raise RtpulseError(f"{src} holds no samples")
    x = resample(to_mono(data), rate, SAMPLE_RATE)
    if not np.all(np.isfinite(x)):
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    y = denoise_signal(model, x, opts)
    out = resample(y, SAMPLE_RATE, rate)
    out = np.pad(out, (0, max(0, data.shape[0] - out.shape[0])))[: data.shape[0]]
    dst.parent.mkdir(parents=True, exist_ok=True)
    info_subtype = None if dst.suffix.lower() not in (".wav",) else "FLOAT"
    write_audio(dst, out, rate, subtype=info_subtype)
    return data.shape[0] / rate
