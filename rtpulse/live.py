"""Live denoising: device audio → ring buffer → worker thread (resample, engine, resample) → ring → device.

The PortAudio callback (:meth:`LivePipeline.callback`) only copies samples: it averages the input
channels into the input ring and copies processed samples from the output ring to every output
channel. A worker thread (:meth:`LivePipeline.work_once`) runs the engine hop by hop.

Timeline and the fixed delay. Every output sample k is taken from position ``k − slack`` of the
worker's timeline, and worker position j is the processed version of input sample ``j − system_delay``
(``system_delay`` = resampler delays + the engine's ``1024 + 256·L`` samples, at the device rate). So
output k always belongs to input ``k − delay`` with ``delay = slack + system_delay`` — whatever happens:

* the worker is late (slow hop, CPU contention): the callback plays the *dry* input of that same
  instant for the positions that are not ready (``dropped_samples``); the worker, once back, catches
  up if it is less than ``max_lag`` (250 ms) behind — bursty callbacks do that — and otherwise drops
  the stale input and restarts the engine at the callback's position (``late_restarts``);
* the model step raises: counted (``faults``), the engine restarts at the next needed position.

After a restart the engine is fresh, so for ``system_delay`` samples (its start-up) the dry input is
played; from then on the output is exactly what a fresh engine gives on the input from the restart
position, which equals the uninterrupted output once the model's past (its receptive field, and the
level normaliser's window, ~2 s in the shipped model: ``model.past_frames``) has passed.
Latency never grows: the delay is fixed at start and the rings have a fixed size.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from rtpulse.errors import RtpulseError
from rtpulse.files import discard, libsndfile_path, temp_beside, write_text_atomic
from rtpulse.resampler import StreamResampler

# A device's float32 samples are nominally within ±1: anything past this is driver garbage, clipped before the
# engine and the dry path (which would play it) see it. Files may be louder (rtpulse.stream.MAX_ABS).
DEVICE_MAX_ABS = 1e3
from rtpulse.signals import Terminated, stop_signals_held
from rtpulse.stft import HOP, SAMPLE_RATE

LAG_MARGIN = 32  # device samples of extra slack for the resamplers' hold-back (≤ ~6 samples at 48 kHz)
FIRST_AUDIO_S = 30.0  # opening a device can take seconds; none at all this long after: it never started
# no audio for this long (or 4 blocks, if longer) after audio began: the device is gone. Not less: on a loaded 2-core
# machine PulseAudio's ALSA plugin has paused callbacks for over 3 s and then recovered (the end-to-end test, in CI)
STALL_S = 10.0
EVENTS_KEPT = 100  # restarts remembered for the stats (the dashboard shows the last 20)
CLOSE_TIMEOUT_S = 2.0  # a vanished device can hang PortAudio's stop/close for good: wait no longer than this


class Engine(Protocol):
    """What the pipeline needs from :class:`rtpulse.stream.StreamingDenoiser`."""

    delay: int  # samples at 16 kHz

    def process(self, chunk: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...


def ring_write(ring: np.ndarray, start: int, data: np.ndarray) -> None:
    """Write ``data`` at absolute position ``start`` of a ring (positions taken modulo its size)."""
    cap, n = ring.size, data.size
    i = start % cap
    first = min(n, cap - i)
    ring[i : i + first] = data[:first]
    ring[: n - first] = data[first:]


def ring_read(ring: np.ndarray, start: int, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` with the ring's samples at absolute positions ``start …``; negative positions are 0."""
    n = out.size
    if start < 0:
        lead = min(n, -start)
        out[:lead] = 0.0
        if lead < n:
            ring_read(ring, 0, out[lead:])
        return out
    cap = ring.size
    i = start % cap
    first = min(n, cap - i)
    out[:first] = ring[i : i + first]
    out[first:] = ring[: n - first]
    return out


@dataclass
class Counters:
    input_overflows: int = 0  # PortAudio: input samples lost before the callback saw them
    output_underflows: int = 0  # PortAudio: the device ran out of output samples
    underflows_after_startup: int = 0  # the same, counted only after the start-up period
    dropped_blocks: int = 0  # callbacks that played dry input because processed samples were not ready
    dropped_samples: int = 0
    dropped_after_startup: int = 0  # dropped_samples after the start-up period
    faults: int = 0  # exceptions in the engine step
    late_restarts: int = 0  # engine restarts because the worker fell behind the callback
    callbacks: int = 0
    hops: int = 0


class LivePipeline:
    """Fixed-delay live pipeline around a streaming engine, at any device rate.

    ``callback(indata [n, C_in], outdata [n, C_out], frames, time, status)`` is the sounddevice
    callback; ``work_once()`` does one step of engine work (the worker thread calls it in a loop).
    ``delay`` (device samples) is the fixed input→output delay, device latencies excluded.
    """

    def __init__(
        self,
        engine: Engine,
        rate: int,
        blocksize: int,
        in_channels: int = 1,
        out_channels: int = 1,
        dry: float = 0.0,
        headroom: int | None = None,
        startup_s: float = 1.0,
        max_lag_s: float = 0.25,
    ) -> None:
        if not 0.0 <= dry <= 1.0:
            raise ValueError(f"dry must be within 0…1, got {dry}")
        self.engine, self.rate, self.blocksize = engine, int(rate), int(blocksize)
        self.in_channels, self.out_channels, self.dry = in_channels, out_channels, float(dry)
        self.down = StreamResampler(self.rate, SAMPLE_RATE)
        self.up = StreamResampler(SAMPLE_RATE, self.rate)
        ratio = self.rate / SAMPLE_RATE
        self.system_delay = round(self.down.delay_out * ratio + engine.delay * ratio + self.up.delay_out)
        self.hop_device = math.ceil(HOP * ratio)  # device samples per engine hop
        # restart grid: device samples that span a whole number of hops and resampler periods
        self.grid = HOP * self.down.down // math.gcd(self.down.up, HOP * self.down.down)
        # slack: how far behind the input the callback reads the worker's output. One block is needed
        # (a block's input arrives with the request for its output); the headroom (default 3 hops,
        # 48 ms) absorbs compute hiccups and bursty callbacks without playing dry samples
        # (+ LAG_MARGIN: the resamplers hold back up to a few samples until their next input arrives)
        self.headroom = int(headroom) if headroom is not None else 3 * self.hop_device
        # a worker up to max_lag behind catches up (the engine runs ~15x faster than real time) and keeps its
        # state, so its output is exact again at once; further behind, it drops the stale input and restarts
        self.max_lag = max(self.hop_device, round(max_lag_s * self.rate))
        self.slack = self.blocksize + self.headroom + LAG_MARGIN
        self.delay = self.slack + self.system_delay
        need = 4 * (self.delay + self.blocksize + self.hop_device)
        cap = 1 << max(need, 2 * self.rate).bit_length()
        self.in_ring = np.zeros(cap, np.float32)  # mono input, device rate, position = input sample index
        self.out_ring = np.zeros(cap, np.float32)  # worker timeline
        self.played_ring = np.zeros(cap, np.float32)  # what the callback emitted (for --record-out)
        max_block = max(self.blocksize, 1) * 8
        self._mono = np.zeros(max_block, np.float32)  # callback scratch, preallocated
        self._out = np.zeros(max_block, np.float32)
        # the input, sanitised channel by channel, and its non-finite samples: flat, so that [frames, channels] is a
        # contiguous view for any channel count (numpy 2.4's isfinite writes wrong values into a strided bool out)
        self._chans = np.zeros(max_block * in_channels, np.float32)
        self._bad = np.zeros(max_block * in_channels, bool)
        self._chunk = np.zeros(self.hop_device, np.float32)  # worker scratch
        self._dry = np.zeros(4 * self.hop_device, np.float32)
        self._wet = np.zeros(4 * self.hop_device, np.float32)
        self.startup_samples = int(startup_s * self.rate)
        self.counters = Counters()
        self.compute_s = np.full(1024, np.nan)  # per-hop compute seconds, last 1024 hops
        self.busy_s = 0.0  # worker compute time in total
        self.in_level = 0.0  # RMS of the last callback block
        self.out_level = 0.0
        self.in_peak = 0.0  # largest |sample| of the last callback block: the level meters' colour (clipping)
        self.out_peak = 0.0
        # (reason, position, engine start) of the latest restarts: a model that fails every hop restarts 62 times a
        # second, and a list of them all would grow for as long as the session runs
        self.events: deque[tuple[str, int, int]] = deque(maxlen=EVENTS_KEPT)
        self.last_error = ""
        self.n_in = 0  # input samples written by the callback
        self.n_read = 0  # output samples emitted by the callback
        self.wake = threading.Event()
        self._lock = threading.Lock()  # serialises work_once (worker thread vs. tests/stop)
        self._max_abs = DEVICE_MAX_ABS
        self._restart(0, None)

    # ---- callback side: copies only ---------------------------------------------------------

    def callback(self, indata: np.ndarray, outdata: np.ndarray, frames: int, time_info=None, status=None) -> None:
        c = self.counters
        c.callbacks += 1
        after_startup = self.n_read >= self.startup_samples
        if status is not None:
            if status.input_overflow:
                c.input_overflows += 1
            if status.output_underflow:
                c.output_underflows += 1
                c.underflows_after_startup += after_startup
        channels = indata.shape[1]
        if frames > self._mono.size or frames * channels > self._chans.size:  # a host that ignores the settings
            size = max(frames, self._mono.size)
            self._mono = np.zeros(size, np.float32)
            self._out = np.zeros(size, np.float32)
            self._chans = np.zeros(max(frames * channels, self._chans.size), np.float32)
            self._bad = np.zeros(self._chans.size, bool)
        mono, y = self._mono[:frames], self._out[:frames]
        chans = self._chans[: frames * channels].reshape(frames, channels)
        bad = self._bad[: frames * channels].reshape(frames, channels)
        # as the engine's sanitize (NaN/±Inf → 0, clipped), with no allocation: the dry path reads this ring too, so
        # a NaN, Inf or 1e30 from a driver would otherwise reach the speaker. Each channel before the downmix (as
        # denoise does): a NaN from one microphone must not zero that sample of the others
        np.isfinite(indata, out=bad)
        np.logical_not(bad, out=bad)
        np.clip(indata, -self._max_abs, self._max_abs, out=chans)
        np.copyto(chans, 0.0, where=bad)
        if channels == 1:
            mono[:] = chans[:, 0]
        else:  # the mean; np.mean itself allocates a block-sized temporary
            np.add.reduce(chans, axis=1, out=mono)
            np.divide(mono, channels, out=mono)
        ring_write(self.in_ring, self.n_in, mono)
        self.n_in += frames
        self.in_level = math.sqrt(float(np.dot(mono, mono)) / max(frames, 1))
        self.in_peak = max(float(mono.max()), -float(mono.min())) if frames else 0.0

        j0 = self.n_read - self.slack  # worker position for outdata[0]
        ready = min(max(self.worker_out - j0, 0), frames)
        ring_read(self.out_ring, j0, y[:ready])
        if ready < frames:  # the worker is late: play the dry input of the same instant
            ring_read(self.in_ring, j0 + ready - self.system_delay, y[ready:])
            missing = frames - min(frames, max(ready, -j0))  # positions before 0 are silence anyway
            if missing > 0:
                c.dropped_blocks += 1
                c.dropped_samples += missing
                if after_startup:
                    c.dropped_after_startup += missing
        outdata[:] = y[:, None]
        ring_write(self.played_ring, self.n_read, y)
        self.n_read += frames
        self.out_level = math.sqrt(float(np.dot(y, y)) / max(frames, 1))
        self.out_peak = max(float(y.max()), -float(y.min())) if frames else 0.0
        self.wake.set()

    # ---- worker side ------------------------------------------------------------------------

    def _restart(self, position: int, reason: str | None) -> None:
        """Fresh engine and resamplers; worker output resumes at ``position`` (dry until the engine is warm).

        The engine is fed from the first input sample at or after ``position`` on the :attr:`grid`, so its
        STFT frames and resampler phases coincide with an uninterrupted run's: once the model's past
        (``model.past_frames``: receptive field and level window) has passed, the output is the uninterrupted
        output again, sample for sample.
        """
        self.engine.reset()
        self.down.reset()
        self.up.reset()
        base = -(-position // self.grid) * self.grid
        self.worker_in = base  # next input sample the engine gets
        self.worker_out = position  # next worker position to write; [position, base) is played dry
        self._base_out = base  # worker position of the composite output's next sample
        self.warm_until = base + self.system_delay  # the fresh engine's start-up: play dry
        self._fed_16k = 0
        if reason is not None:
            self.events.append((reason, position, base))

    def work_once(self) -> bool:
        """Process up to one hop of available input. Returns False when there was nothing to do."""
        with self._lock:
            return self._work()

    def _work(self) -> bool:
        need = self.n_read - self.slack  # the next position the callback will read
        # fell far behind: drop the stale input and restart where the callback is (a smaller lag heals
        # itself: those positions were played dry, the worker catches up and the next ones will be ready)
        if need - self.worker_out > self.max_lag:
            self.counters.late_restarts += 1
            self._restart(need, "late")
        avail = self.n_in - self.worker_in
        if avail <= 0:
            return False
        m = min(avail, self.hop_device)
        x = ring_read(self.in_ring, self.worker_in, self._chunk[:m])
        t0 = time.perf_counter()
        try:
            y = self.up.process(self.engine.process(self.down.process(x)))
        except Exception as err:  # noqa: BLE001 - any model failure: count, restart, keep playing
            self.counters.faults += 1
            self.last_error = f"{type(err).__name__}: {err}"
            self._restart(max(self.worker_out, self.n_read - self.slack), "fault")
            return True
        dt = time.perf_counter() - t0
        self.busy_s += dt
        hops_before = self._fed_16k // HOP
        self._fed_16k += round(m * SAMPLE_RATE / self.rate)
        hops = self._fed_16k // HOP - hops_before
        if hops:
            self.compute_s[self.counters.hops % self.compute_s.size] = dt / hops
            self.counters.hops += hops
        self.worker_in += m
        if y.size == 0:
            return True
        j = self.worker_out  # = self._base_out except right after a restart: then [j, base) is dry
        start = self._base_out - j
        k = start + y.size
        if k > self._dry.size:
            self._dry = np.zeros(k, np.float32)
            self._wet = np.zeros(k, np.float32)
        dry = ring_read(self.in_ring, j - self.system_delay, self._dry[:k])
        out = self._wet[:k]
        out[:start] = dry[:start]
        if self.dry > 0.0:
            np.multiply(y, 1.0 - self.dry, out=out[start:])
            out[start:] += self.dry * dry[start:]
        else:
            out[start:] = y
        if j < self.warm_until:
            q = min(k, self.warm_until - j)
            out[:q] = dry[:q]
        ring_write(self.out_ring, j, out)
        self._base_out += y.size
        self.worker_out = j + k  # publish after the write: the callback only reads below this
        return True

    # ---- stats --------------------------------------------------------------------------

    def stats(self) -> dict:
        """A snapshot for the dashboard and the JSON summary (times in ms)."""
        times = self.compute_s[np.isfinite(self.compute_s)]
        hop_ms = HOP / SAMPLE_RATE * 1e3
        # None (JSON null) before the first hop is timed: NaN is not valid JSON
        med = float(np.median(times) * 1e3) if times.size else None
        p99 = float(np.percentile(times, 99) * 1e3) if times.size else None
        c = self.counters
        return {
            "rate": self.rate,
            "blocksize": self.blocksize,
            "seconds": self.n_read / self.rate,
            "in_level_dbfs": _dbfs(self.in_level),
            "out_level_dbfs": _dbfs(self.out_level),
            "in_peak_dbfs": _dbfs(self.in_peak),
            "out_peak_dbfs": _dbfs(self.out_peak),
            "hop_ms_median": med,
            "hop_ms_p99": p99,
            "rtf": med / hop_ms if times.size else None,
            "rtf_total": self.busy_s / max(self.n_read / self.rate, 1e-9),
            "engine_delay_ms": self.engine.delay / SAMPLE_RATE * 1e3,
            "pipeline_delay_ms": self.delay / self.rate * 1e3,
            "restarts": [list(e) for e in list(self.events)[-20:]],
            "last_error": self.last_error,
            **c.__dict__,
        }


def _dbfs(rms: float) -> float:
    return 20 * math.log10(max(rms, 1e-10))


class LiveWorker:
    """Runs :meth:`LivePipeline.work_once` in a daemon thread until :meth:`stop`. A failure outside the engine
    (whose faults the pipeline handles) ends the thread with :attr:`error` set: the session checks it."""

    def __init__(self, pipeline: LivePipeline) -> None:
        self.pipeline = pipeline
        self.error: str | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rtpulse-live-worker", daemon=True)

    def start(self) -> LiveWorker:
        self.thread.start()
        return self

    def _run(self) -> None:
        p = self.pipeline
        try:
            while not self._stop.is_set():
                if not p.work_once():
                    p.wake.wait(0.05)
                    p.wake.clear()
        except Exception as e:  # noqa: BLE001 - reported by the session, which would otherwise play dry input silently
            self.error = f"{type(e).__name__}: {e}"

    def stop(self) -> None:
        self._stop.set()
        self.pipeline.wake.set()
        self.thread.join(timeout=5)


SFC_RF64_AUTO_DOWNGRADE = 0x1210  # libsndfile: an RF64 file that ends under 4 GiB is written as a plain WAV


def open_growing_wav(path, rate: int):
    """A float32 WAV of unknown length: RF64 that libsndfile turns into an ordinary WAV when it ends under 4 GiB (a
    plain WAV's 32-bit sizes keep only the first 6.2 h at 48 kHz). soundfile has no public call for the switch: where
    its internals differ, a plain WAV."""
    import soundfile as sf

    try:
        f = sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="FLOAT", format="RF64")
    except (sf.LibsndfileError, RuntimeError, ValueError):  # a libsndfile without RF64
        return sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="FLOAT", format="WAV")
    try:
        if sf._snd.sf_command(f._file, SFC_RF64_AUTO_DOWNGRADE, sf._ffi.NULL, 1) == 1:
            return f
    except AttributeError:
        pass
    f.close()  # RF64 for every recording would be unreadable to some players: the plain WAV instead
    return sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="FLOAT", format="WAV")


class Recorder:
    """Drains a ring (by absolute position) into a WAV file written to a temp name, renamed on close.

    The session drains it every 50 ms, far within the ring (2–4 s). Should a drain come so late that the ring
    may have been overwritten, the overdue samples are written as silence and counted in :attr:`lost`: the file
    keeps the session's timeline and never holds samples from the wrong time."""

    def __init__(self, path: Path, rate: int, ring: np.ndarray, position) -> None:
        import soundfile as sf

        self.path = Path(path)
        self.tmp = temp_beside(self.path)
        self.ring, self.position = ring, position  # position(): samples written to the ring so far
        self.done = 0
        self.lost = 0
        self.failed = False  # a write failed (disk full): close keeps what was written
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open_growing_wav(libsndfile_path(self.tmp), rate)
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise RtpulseError(f"cannot write {self.path}: {str(e).splitlines()[0]}") from None
        self._buf = np.zeros(ring.size // 2, np.float32)

    def drain(self) -> None:
        end = self.position()
        # only the newest half ring is safe to read: the writer goes on while this drain runs
        overdue = end - self.ring.size // 2 - self.done
        if overdue > 0:
            self._buf[:] = 0.0
            while overdue > 0:
                n = min(overdue, self._buf.size)
                self.file.write(self._buf[:n])
                self.done, self.lost, overdue = self.done + n, self.lost + n, overdue - n
        while self.done < end:
            n = min(end - self.done, self._buf.size)
            self.file.write(ring_read(self.ring, self.done, self._buf[:n]))
            self.done += n

    def close(self) -> None:
        # where the file really is: a Ctrl-C between a write and its count would otherwise repeat that block
        self.done = self.file.tell()
        if not self.failed:
            self.drain()
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        discard(self.tmp)


# ---- the device session (sounddevice is imported here, inside the functions) ---------------------


def import_sounddevice():
    try:
        import sounddevice as sd
    except OSError as e:  # the package is there but PortAudio is not
        raise RtpulseError(f"cannot load PortAudio ({e}); install it, e.g. `apt-get install libportaudio2`") from None
    except ImportError:
        raise RtpulseError("sounddevice is not installed: pip install 'rtpulse[live]'") from None
    return sd


def list_devices() -> list[dict]:
    """Every PortAudio device: index, name, host API, input/output channels, default rate, default flags."""
    sd = import_sounddevice()
    try:
        devices = sd.query_devices()
        default_in, default_out = sd.default.device
    except sd.PortAudioError as e:
        raise RtpulseError(f"cannot query audio devices: {e}") from None
    apis = [a["name"] for a in sd.query_hostapis()]
    return [
        {
            "index": d["index"],
            "name": d["name"],
            "hostapi": apis[d["hostapi"]],
            "inputs": d["max_input_channels"],
            "outputs": d["max_output_channels"],
            "rate": int(d["default_samplerate"]),
            "default_input": d["index"] == default_in,
            "default_output": d["index"] == default_out,
        }
        for d in devices
    ]


def resolve_device(spec: str | None, kind: str) -> dict:
    """``spec`` (an index, a name substring, or None for the default) → that device's entry of :func:`list_devices`.

    ``kind`` is "input" or "output"; the device must have channels of that kind.
    """
    devices = list_devices()
    key = "inputs" if kind == "input" else "outputs"
    hint = "run `rtpulse devices` to list them"
    if spec is None:
        found = [d for d in devices if d[f"default_{kind}"]]
        if not found:
            raise RtpulseError(f"no default {kind} device; pass --{kind} (an index or a name); {hint}")
        return found[0]
    if spec.strip().isdecimal() and spec.strip().isascii():  # "²" is a digit to isdigit(), not to int()
        found = [d for d in devices if d["index"] == int(spec)]
        if not found:
            raise RtpulseError(f"no audio device with index {spec}; {hint}")
        if found[0][key] < 1:
            raise RtpulseError(f"device {spec} ({found[0]['name']!r}) has no {kind} channels; {hint}")
        return found[0]
    matches = [d for d in devices if spec.lower() in d["name"].lower() and d[key] > 0]
    exact = [d for d in matches if d["name"].lower() == spec.lower()]
    if not matches:
        raise RtpulseError(f"no {kind} device matches {spec!r}; {hint}")
    # as sounddevice does: a guess would play to a device the user did not mean. That includes a name several devices
    # share exactly (one card under two host APIs, as Windows lists MME and WASAPI): only the index tells them apart
    shared = exact if len(exact) > 1 else [] if exact else matches
    if len(shared) > 1:
        names = ", ".join(f"[{d['index']}] {d['name']}" + (f" ({d['hostapi']})" if exact else "") for d in shared)
        more = "" if exact else " or more of its name"
        raise RtpulseError(f"{len(shared)} {kind} devices match {spec!r}: {names}; give its index{more} ({hint})")
    return (exact or matches)[0]


@dataclass(frozen=True)
class LiveOptions:
    input: str | None = None
    output: str | None = None
    mask: str = "binary"
    floor_db: float | None = None
    dry: float = 0.0
    rate: int | None = None  # device rate; None: the input device's default rate
    blocksize: int | None = None  # device frames per callback; None: one engine hop
    latency: float = 0.1
    headroom_ms: float = 48.0
    duration: float | None = None
    record_in: Path | None = None
    record_out: Path | None = None
    stats_json: Path | None = None
    dashboard: bool = True
    status_every: float = 5.0


def run_live(model, model_name: str, opts: LiveOptions, console) -> dict:
    """Open the duplex stream and denoise until ``opts.duration`` or Ctrl-C. Returns the final stats.

    Recordings and the stats JSON are written (atomically) however the run ends. ``stop_signal`` in the stats
    is "SIGINT" or "SIGTERM" for a run stopped by one (SIGTERM raises only under a handler that makes it an
    interrupt: :func:`rtpulse.signals.sigterm_interrupts`), else None.
    """
    import torch

    from rtpulse.dashboard import render_dashboard, status_line
    from rtpulse.stream import StreamingDenoiser

    sd = import_sounddevice()
    torch.set_num_threads(1)  # one hop is a few small tensors: a second thread only adds contention
    sys.setswitchinterval(0.001)  # let the callback thread get the GIL quickly while the worker computes
    dev_in, dev_out = resolve_device(opts.input, "input"), resolve_device(opts.output, "output")
    names = f"input {dev_in['index']} {dev_in['name']!r} / output {dev_out['index']} {dev_out['name']!r}"
    rate = int(opts.rate or dev_in["rate"])
    ch_in, ch_out = min(dev_in["inputs"], 2), min(dev_out["outputs"], 2)
    try:
        sd.check_input_settings(device=dev_in["index"], channels=ch_in, samplerate=rate, dtype="float32")
        sd.check_output_settings(device=dev_out["index"], channels=ch_out, samplerate=rate, dtype="float32")
    except (sd.PortAudioError, ValueError) as e:
        raise RtpulseError(f"{names} cannot run at {rate} Hz ({e}); try --rate, or run `rtpulse devices`") from None
    engine = StreamingDenoiser(model, mask=opts.mask, floor_db=opts.floor_db)
    blocksize = opts.blocksize or math.ceil(HOP * rate / SAMPLE_RATE)
    headroom = round(opts.headroom_ms * rate / 1000)
    pipe = LivePipeline(engine, rate, blocksize, ch_in, ch_out, dry=opts.dry, headroom=headroom)
    recorders = []
    try:
        if opts.record_in:
            recorders.append(Recorder(opts.record_in, rate, pipe.in_ring, lambda: pipe.n_in))
        if opts.record_out:
            recorders.append(Recorder(opts.record_out, rate, pipe.played_ring, lambda: pipe.n_read))
    except BaseException:  # a bad path, Ctrl-C or SIGTERM: the first one's temp file must not stay behind
        for r in recorders:
            r.abort()
        raise

    def drain() -> str | None:
        """Write what the recorders' rings gained; the error for a recording that could not be written."""
        for r in recorders:
            if not r.failed:
                try:
                    r.drain()
                except (OSError, RuntimeError) as e:  # soundfile's errors are RuntimeErrors: a full disk, a lost mount
                    r.failed = True
                    return f"cannot write {r.path} ({str(e).splitlines()[0]}); the session stopped, what was recorded is kept"
        return None

    stopped = threading.Event()
    try:
        stream = sd.Stream(
            device=(dev_in["index"], dev_out["index"]),
            samplerate=rate,
            blocksize=blocksize,
            dtype="float32",
            latency=opts.latency,
            channels=(ch_in, ch_out),
            callback=pipe.callback,
            finished_callback=stopped.set,
        )
    except (sd.PortAudioError, ValueError) as e:
        for r in recorders:
            r.abort()
        raise RtpulseError(f"cannot open {names}: {e}; run `rtpulse devices` to list devices") from None
    except BaseException:  # Ctrl-C or SIGTERM while the device opens (that can take seconds): no temp file stays
        for r in recorders:
            r.abort()
        raise
    worker, stop_signal, error = None, None, None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    info = {"model": model_name, "devices": names, "device_latency_ms": 0.0, "channels": [ch_in, ch_out]}

    def snapshot() -> dict:
        wall = time.perf_counter() - wall0
        return {
            **info,
            **pipe.stats(),
            "total_delay_ms": pipe.delay / rate * 1e3 + info["device_latency_ms"],
            "cpu_percent": 100 * (time.process_time() - cpu0) / max(wall, 1e-9),
            "wall_s": wall,
        }

    try:
        # inside the try: a Ctrl-C/SIGTERM from here on closes the stream and the recordings (no temp file stays)
        worker = LiveWorker(pipe).start()
        info["device_latency_ms"] = (stream.latency[0] + stream.latency[1]) * 1e3
        stream.start()
        # --duration counts audio from the first callback (opening a stream can take seconds)
        target = opts.duration * rate if opts.duration else math.inf
        stall_s = max(STALL_S, 4 * blocksize / rate)
        last_n, last_progress = pipe.n_read, time.perf_counter()
        next_status = wall0 + opts.status_every
        view = None
        if opts.dashboard:
            from rich.live import Live

            view = Live(render_dashboard(snapshot()), console=console, refresh_per_second=8, transient=False)
            view.start()
        try:
            while pipe.n_read < target:
                time.sleep(0.05)
                # here, not in the worker: a worker slower than real time is never idle, and the rings wrap in 2–4 s
                error = drain()
                if error is not None:
                    break
                if worker.error is not None:
                    error = f"denoising stopped ({worker.error})"
                    break
                now, n = time.perf_counter(), pipe.n_read  # one read: the callback thread moves it meanwhile
                if n != last_n:
                    last_n, last_progress = n, now
                if n == 0 and now > wall0 + FIRST_AUDIO_S:
                    error = f"{names} delivered no audio for {FIRST_AUDIO_S:.0f} s; run `rtpulse devices`"
                    break
                # a vanished device may neither end the stream nor call back again: no audio is the sign
                if n > 0 and now - last_progress > stall_s:  # n_read: set last in the callback
                    error = f"no audio for {stall_s:g} s from {names} (device gone?); run `rtpulse devices`"
                    break
                if stopped.is_set() or not stream.active:  # PortAudio ended the stream itself
                    error = f"the audio stream stopped ({names}: device gone?); run `rtpulse devices`"
                    break
                if view is not None:
                    view.update(render_dashboard(snapshot()))
                elif now >= next_status:
                    next_status += opts.status_every
                    console.print(status_line(snapshot()), highlight=False, soft_wrap=True)
        finally:
            if view is not None:
                view.stop()
                if not console.is_terminal:  # piped, rich leaves the last frame without its newline
                    console.line()
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM under rtpulse.signals.sigterm_interrupts
        stop_signal = e.signal_name if isinstance(e, Terminated) else "SIGINT"
    except sd.PortAudioError as e:
        error = f"audio stream error on {names}: {e}; run `rtpulse devices`"
    finally:
        with stop_signals_held():  # a second Ctrl-C/SIGTERM must not leave the recordings unfinished
            closed = close_stream(stream, sd, CLOSE_TIMEOUT_S)  # first: the recordings then hold all it played
            if worker is not None:
                worker.stop()
            for r in recorders:  # each one, whatever another's fate
                try:
                    r.close()
                except (OSError, RuntimeError) as e:
                    r.abort()
                    if error is None or r.failed:  # the drain's "what was recorded is kept" no longer holds
                        error = f"cannot write {r.path} ({str(e).splitlines()[0]}); it was not saved"
    lost = {str(r.path): r.lost for r in recorders if r.lost}
    if lost:  # the session's main loop was held up for seconds
        console.print(f"warning: {', '.join(f'{k} has {v} samples of silence' for k, v in lost.items())} where "
                      "the recording fell behind", highlight=False, soft_wrap=True)
    if not closed and error is None:
        error = f"the audio device did not close within {CLOSE_TIMEOUT_S:g} s ({names}: device gone?)"
    stats = {**snapshot(), "interrupted": stop_signal is not None, "stop_signal": stop_signal, "error": error,
             "recording_lost_samples": lost}
    if opts.stats_json:
        try:
            write_text_atomic(opts.stats_json, json.dumps(stats, indent=2, default=str) + "\n")
        except (OSError, RtpulseError) as e:  # the path was probed before the session; the disk may have filled since
            error = error or f"{e} (the session ran: {status_line(stats)})"
    if error:
        raise RtpulseError(error)
    return stats


def close_stream(stream, sd, timeout_s: float) -> bool:
    """Stop and close ``stream`` in a helper thread; False if that did not finish within ``timeout_s``.

    A device that vanished mid-stream can leave PortAudio's stop waiting for good on a callback thread stuck in
    the driver. Then the recordings and stats are still written, and sounddevice's exit handler (which would stop
    the same stream again, and hang the same way) is dropped so that the process can end."""
    import atexit
    import contextlib

    def stop_and_close() -> None:
        # a device that is gone or a stream already closed raises here: there is nothing left to release
        with contextlib.suppress(Exception):
            stream.abort()  # not stop(): nothing queued is worth waiting for once the session ends
            stream.close()

    t = threading.Thread(target=stop_and_close, name="rtpulse-close-stream", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        handler = getattr(sd, "_exit_handler", None)
        if handler is not None:
            atexit.unregister(handler)
        return False
    return True


__all__ = [
    "Counters",
    "LiveOptions",
    "LivePipeline",
    "LiveWorker",
    "Recorder",
    "list_devices",
    "resolve_device",
    "ring_read",
    "ring_write",
    "run_live",
]
