"""Live pipeline without PortAudio: a simulated duplex stream drives the callback; faults are injected.

What must hold: every callback is answered with exactly its number of samples; the delay is fixed
(dropped positions carry the dry input of exactly ``delay`` samples ago); the counters count the
faults; and after a fault the output is the engine's normal output again (first exactly a fresh
engine's output from the restart position, then, past the receptive field, the uninterrupted output).
"""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from rtpulse.audio import resample
from rtpulse.live import LivePipeline, LiveWorker, Recorder, ring_read, ring_write
from rtpulse.metrics import si_snr_np
from rtpulse.model import ModelConfig, PulseCNN
from rtpulse.resampler import StreamResampler
from rtpulse.stft import SAMPLE_RATE
from rtpulse.stream import StreamingDenoiser

RATE = 48_000
BLOCK = 480  # 10 ms device blocks: not a multiple of the hop (768 device samples)


@pytest.fixture(scope="module")
def model():
    # one intra-op thread, as `rtpulse live` uses: per-hop tensors are tiny, and on a busy 2-core
    # machine a second OpenMP thread makes every hop wait for a core
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield PulseCNN(ModelConfig(preset="blocks2")).eval()
    torch.set_num_threads(threads)


class FaultyEngine:
    """A StreamingDenoiser whose ``process`` sleeps or raises on chosen calls (1-based call numbers)."""

    def __init__(self, model: PulseCNN, slow: dict[int, float] | None = None, fail: set[int] | None = None):
        self.inner = StreamingDenoiser(model, mask="soft")
        self.delay = self.inner.delay
        self.slow, self.fail = slow or {}, fail or set()
        self.calls = 0

    def process(self, chunk: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls in self.slow:
            time.sleep(self.slow[self.calls])
        if self.calls in self.fail:
            raise RuntimeError("injected fault")
        return self.inner.process(chunk)

    def reset(self) -> None:
        self.inner.reset()


def noisy_input(seconds: float, rate: int = RATE) -> np.ndarray:
    rng = np.random.default_rng(1)
    t = np.arange(int(seconds * rate)) / rate
    tones = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((220, 440, 660, 1320), start=1))
    return (0.2 * tones * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def fresh_output(model: PulseCNN, pipe: LivePipeline, x: np.ndarray, start: int) -> np.ndarray:
    """What a fresh engine restarted at input ``start`` puts at output positions ``start + pipe.delay …``.

    Worker position j = input j − system_delay; its first ``system_delay`` positions are the dry input.
    """
    down, up = StreamResampler(pipe.rate, SAMPLE_RATE), StreamResampler(SAMPLE_RATE, pipe.rate)
    y = up.process(StreamingDenoiser(model, mask="soft").process(down.process(x[start:])))
    d = pipe.system_delay
    y[:d] = x[start - d : start] if start >= d else np.concatenate((np.zeros(d - start, np.float32), x[:start]))
    return y


def drive(pipe: LivePipeline, x: np.ndarray, block: int, channels: int = 1, on_block=None) -> np.ndarray:
    """Simulated duplex stream: feed ``x`` block by block through the callback, collect what it plays."""
    out = []
    for b, i in enumerate(range(0, x.size - block + 1, block)):
        indata = np.repeat(x[i : i + block, None], channels, axis=1)
        outdata = np.full((block, 2), np.nan, np.float32)
        pipe.callback(indata, outdata, block, None, None)
        assert np.array_equal(outdata[:, 0], outdata[:, 1])  # the mono result goes to every channel
        out.append(outdata[:, 0].copy())
        if on_block is not None:
            on_block(b)
    return np.concatenate(out)


def test_ring_wraps_and_negative_positions_read_as_silence():
    ring = np.zeros(8, np.float32)
    ring_write(ring, 6, np.arange(1, 5, dtype=np.float32))  # positions 6..9 → slots 6,7,0,1
    assert ring.tolist() == [3, 4, 0, 0, 0, 0, 1, 2]
    out = ring_read(ring, -2, np.empty(5, np.float32))
    assert out.tolist() == [0, 0, 3, 4, 0]
    assert ring_read(ring, 6, np.empty(4, np.float32)).tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("rate_in,rate_out", [(48_000, 16_000), (44_100, 16_000), (16_000, 44_100)])
def test_resampler_blocks_equal_whole_signal(rate_in, rate_out):
    x = np.random.default_rng(0).standard_normal(9000).astype(np.float32)
    whole = StreamResampler(rate_in, rate_out).process(x)
    r = StreamResampler(rate_in, rate_out)
    cuts = np.cumsum(np.random.default_rng(1).integers(1, 700, size=40))
    parts = [r.process(p) for p in np.split(x, cuts[cuts < x.size])]
    assert np.array_equal(np.concatenate(parts), whole)
    assert whole.size == (x.size - 1) * r.up // r.down + 1  # outputs whose newest input has arrived


@pytest.mark.parametrize("rate_in,rate_out", [(48_000, 16_000), (16_000, 48_000), (44_100, 16_000)])
def test_resampler_is_offline_resampling_delayed(rate_in, rate_out):
    """The live resampler = `rtpulse denoise`'s resampling (resample_poly), delayed by ``delay_out``."""
    x = np.random.default_rng(2).standard_normal(8000).astype(np.float32)
    r = StreamResampler(rate_in, rate_out)
    y = np.concatenate([r.process(x[i : i + 333]) for i in range(0, x.size, 333)])
    ref = resample(x, rate_in, rate_out)
    d = int(r.delay_out)
    assert d == r.delay_out
    n = min(y.size - d, ref.size) - 100  # the offline end sees the zeros after the signal; skip it
    np.testing.assert_allclose(y[d : d + n], ref[:n], atol=1e-5)


@pytest.mark.parametrize("rate", [48_000, 44_100])
def test_resampler_round_trip_of_a_tone_has_high_snr(rate):
    t = np.arange(rate) / rate
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    down, up = StreamResampler(rate, SAMPLE_RATE), StreamResampler(SAMPLE_RATE, rate)
    y = np.concatenate([up.process(down.process(tone[i : i + 441])) for i in range(0, tone.size, 441)])
    delay = down.delay_out * rate / SAMPLE_RATE + up.delay_out
    # align by the (possibly fractional) delay with a linear interpolation of the reference
    n = np.arange(rate // 4, y.size - rate // 8)
    ref = np.interp(n - delay, np.arange(tone.size), tone)
    assert si_snr_np(y[n], ref) > 40


def test_no_fault_output_is_the_engine_output_at_a_fixed_delay(model):
    x = noisy_input(1.5)
    pipe = LivePipeline(FaultyEngine(model), RATE, BLOCK, dry=0.0)

    def worker(_block):
        while pipe.work_once():
            pass

    out = drive(pipe, x, BLOCK, on_block=worker)
    assert out.size == x.size - x.size % BLOCK
    ref = fresh_output(model, pipe, x, 0)
    n = out.size - pipe.slack
    np.testing.assert_allclose(out[pipe.slack :], ref[:n], atol=1e-5)
    assert np.all(out[: pipe.slack] == 0)
    c = pipe.counters
    assert (c.dropped_samples, c.faults, c.late_restarts) == (0, 0, 0)
    # the wet output really differs from the dry input (else the checks below could not tell them apart)
    assert np.abs(ref[pipe.system_delay :] - x[: ref.size - pipe.system_delay]).max() > 0.05


@pytest.mark.parametrize("dry, worker_runs", [(0.3, True), (0.0, False)], ids=["dry-mix", "worker-stalled"])
def test_nan_inf_and_huge_input_never_reach_the_speaker(model, dry, worker_runs):
    # the dry path (the --dry mix, and the dry input played while the worker is late) reads the input ring
    x = noisy_input(1.0)
    x[3000:3010] = np.nan
    x[5000], x[5001], x[7000] = np.inf, -np.inf, 1e30
    pipe = LivePipeline(FaultyEngine(model), RATE, BLOCK, dry=dry)
    work = (lambda b: [None for _ in iter(pipe.work_once, False)]) if worker_runs else None
    out = drive(pipe, x, BLOCK, on_block=work)
    assert np.isfinite(out).all() and np.abs(out).max() <= 1e3  # DEVICE_MAX_ABS: the callback's bound on device input
    assert (np.abs(out) > 0.05).mean() > 0.2  # and it still plays the signal


@pytest.mark.parametrize("channels", [1, 2])
def test_the_callback_cleans_its_input_without_allocating(model, channels):
    import tracemalloc

    n = 16384  # the largest block: a block-sized temporary (64 KB of float32) would dwarf the few small objects
    pipe = LivePipeline(FaultyEngine(model), RATE, n, in_channels=channels, dry=0.3)
    block = np.resize(noisy_input(0.1), n).astype(np.float32)
    block[: n // 2] = np.nan  # the cleaning runs on every sample of this block
    indata, outdata = np.repeat(block[:, None], channels, axis=1), np.zeros((n, 2), np.float32)
    for _ in range(3):  # warm-up: numpy's first calls may cache
        pipe.callback(indata, outdata, n, None, None)
    tracemalloc.start()
    try:
        for _ in range(5):
            pipe.callback(indata, outdata, n, None, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # nan_to_num's temporaries were a block of float32 and one of bools (80 KB here); views and floats are ~3 KB
    assert peak < n and np.isfinite(outdata).all()


def test_a_nan_in_one_input_channel_leaves_the_others_in_the_downmix(model):
    """The callback averaged the channels before it cleaned them: a NaN from one microphone zeroed that sample of
    all. Cleaned first (as denoise does), the bad channel counts as silence and the other still plays."""
    x = noisy_input(0.1)
    indata = np.stack((x, 0.5 * x), axis=1)
    indata[100:200, 0], indata[300, 0], indata[400, 0] = np.nan, np.inf, 1e30
    pipe = LivePipeline(FaultyEngine(model), RATE, BLOCK, in_channels=2)
    pipe.callback(indata[:BLOCK], np.zeros((BLOCK, 1), np.float32), BLOCK, None, None)
    got = ring_read(pipe.in_ring, 0, np.zeros(BLOCK, np.float32))
    want = np.where(np.isfinite(indata[:BLOCK, 0]), np.clip(indata[:BLOCK, 0], -1e3, 1e3), 0.0) / 2 + 0.25 * x[:BLOCK]
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-6, atol=1e-6)
    assert np.abs(got[100:200]).max() > 0.01  # channel 1 is still heard where channel 0 was NaN


def test_dry_mix_is_a_weighted_sum_of_wet_and_delayed_input(model):
    x = noisy_input(1.0)
    wet_pipe = LivePipeline(FaultyEngine(model), RATE, BLOCK, dry=0.0)
    mix_pipe = LivePipeline(FaultyEngine(model), RATE, BLOCK, dry=0.25)
    wet = drive(wet_pipe, x, BLOCK, on_block=lambda b: [None for _ in iter(wet_pipe.work_once, False)])
    mix = drive(mix_pipe, x, BLOCK, on_block=lambda b: [None for _ in iter(mix_pipe.work_once, False)])
    d = mix_pipe.delay
    np.testing.assert_allclose(mix[d:], 0.75 * wet[d:] + 0.25 * x[: mix.size - d], atol=1e-5)


def test_a_model_failing_every_hop_keeps_a_bounded_list_of_restarts(model):
    from rtpulse.live import EVENTS_KEPT

    x = noisy_input(3.0)
    pipe = LivePipeline(FaultyEngine(model, fail=set(range(10_000))), RATE, BLOCK, startup_s=0.05)
    out = drive(pipe, x, BLOCK, on_block=lambda b: [None for _ in iter(pipe.work_once, False)])
    assert pipe.counters.faults > EVENTS_KEPT  # every hop failed, and each restarted the engine
    assert len(pipe.events) == EVENTS_KEPT and pipe.events[-1][0] == "fault"
    assert len(pipe.stats()["restarts"]) == 20 and out.size == x.size - x.size % BLOCK


def test_late_worker_and_exception_keep_the_stream_whole_and_recover(model):
    """Fake clock: the worker skips 12 blocks (a 120 ms stall), later the model step raises once."""
    x = noisy_input(3.0)
    engine = FaultyEngine(model, fail={200})
    pipe = LivePipeline(engine, RATE, BLOCK, in_channels=2, startup_s=0.2, max_lag_s=0)  # restart when late
    stalled = set(range(60, 72))

    def worker(b):
        if b not in stalled:
            while pipe.work_once():
                pass

    out = drive(pipe, x, BLOCK, channels=2, on_block=worker)
    c = pipe.counters
    assert out.size == x.size - x.size % BLOCK  # no gaps: every callback got all its samples
    assert c.late_restarts == 1 and c.faults == 1
    assert [r for r, _, _ in pipe.events] == ["late", "fault"]
    # the worker last ran after block 59 and next after block 72's callback: positions up to 60·BLOCK
    # (less the resamplers' few samples of lag) were in hand, the callbacks asked up to 73·BLOCK − slack
    missed = 73 * BLOCK - pipe.slack - 60 * BLOCK
    assert missed <= c.dropped_samples <= missed + 4
    assert c.dropped_blocks == len(range(60 + pipe.slack // BLOCK, 73))

    d, sd = pipe.delay, pipe.system_delay
    dry = np.concatenate((np.zeros(d, np.float32), x))[: out.size]  # input delayed by exactly `delay`
    uninterrupted = np.concatenate((np.zeros(pipe.slack, np.float32), fresh_output(model, pipe, x, 0)))
    stall = slice(73 * BLOCK - c.dropped_samples, 73 * BLOCK)  # output positions the stalled worker missed
    expect_dry = np.zeros(out.size, bool)
    expect_dry[stall] = True
    starts = [(0, 0)] + [(pos, base) for _, pos, base in pipe.events]
    settle = (model.receptive_field[1] + 6) * pipe.hop_device  # receptive field + STFT frame + resampler taps
    for i, (pos, p) in enumerate(starts):
        assert p % pipe.grid == 0 and 0 <= p - pos < pipe.grid
        end = (starts[i + 1][0] + pipe.slack) if i + 1 < len(starts) else out.size
        ref = np.concatenate((np.zeros(pipe.slack + p, np.float32), fresh_output(model, pipe, x, p)))
        seg = slice(pos + pipe.slack, end)
        expect_dry[pos + pipe.slack : p + pipe.slack + sd] = True  # gap to the grid + the fresh engine's start-up
        # every sample is the fresh engine's output or dry input at the fixed delay, as expected
        np.testing.assert_allclose(out[seg], np.where(expect_dry[seg], dry[seg], ref[seg]), atol=1e-5)
        # … and past the receptive field the engine output is the uninterrupted output again
        tail = slice(p + pipe.slack + sd + settle, end)
        wet = ~expect_dry[tail]
        np.testing.assert_allclose(out[tail][wet], uninterrupted[tail][wet], atol=1e-4)
    assert expect_dry.mean() < 0.5  # most of the output was the engine's


def test_short_stall_is_caught_up_without_a_restart(model):
    """Default max_lag: a 120 ms stall plays dry for the missed positions only; the engine keeps its state,
    so every other sample is exactly the uninterrupted output."""
    x = noisy_input(2.0)
    pipe = LivePipeline(FaultyEngine(model), RATE, BLOCK, startup_s=0.2)
    stalled = set(range(60, 72))

    def worker(b):
        if b not in stalled:
            while pipe.work_once():
                pass

    out = drive(pipe, x, BLOCK, on_block=worker)
    c = pipe.counters
    assert c.late_restarts == 0 and not pipe.events and c.dropped_samples > 0
    uninterrupted = np.concatenate((np.zeros(pipe.slack, np.float32), fresh_output(model, pipe, x, 0)))[: out.size]
    dry = np.concatenate((np.zeros(pipe.delay, np.float32), x))[: out.size]
    missed = slice(73 * BLOCK - c.dropped_samples, 73 * BLOCK)
    np.testing.assert_allclose(out[missed], dry[missed], atol=1e-6)
    wet = np.ones(out.size, bool)
    wet[missed] = False
    np.testing.assert_allclose(out[wet], uninterrupted[wet], atol=1e-5)


def test_real_time_stream_with_slow_hops_and_exceptions(model, tmp_path):
    """Worker thread + a simulated device clock at real-time pace (~2.5 s): the stream never stalls."""
    import soundfile as sf

    x = noisy_input(2.5)
    engine = FaultyEngine(model, slow={60: 0.15, 120: 0.05}, fail={90, 150})
    pipe = LivePipeline(engine, RATE, BLOCK, startup_s=0.3, max_lag_s=0)
    rec_in = Recorder(tmp_path / "in.wav", RATE, pipe.in_ring, lambda: pipe.n_in)
    rec_out = Recorder(tmp_path / "out.wav", RATE, pipe.played_ring, lambda: pipe.n_read)
    worker = LiveWorker(pipe).start()
    out, period = [], BLOCK / RATE
    t0 = time.perf_counter()
    try:
        for b, i in enumerate(range(0, x.size - BLOCK + 1, BLOCK)):
            time.sleep(max(0.0, t0 + b * period - time.perf_counter()))  # the device clock
            outdata = np.full((BLOCK, 1), np.nan, np.float32)
            pipe.callback(
                x[i : i + BLOCK, None],
                outdata,
                BLOCK,
                None,
                SimpleNamespace(input_overflow=b == 5, output_underflow=b in (3, 200)),
            )
            out.append(outdata[:, 0].copy())
            rec_in.drain()  # as the session does, from its own loop: a late worker must not hold the recordings back
            rec_out.drain()
    finally:
        worker.stop()
    rec_in.close()
    rec_out.close()
    out = np.concatenate(out)
    c = pipe.counters
    assert out.size == x.size - x.size % BLOCK and np.all(np.isfinite(out))
    assert c.faults == 2 and engine.calls > 150
    assert c.late_restarts >= 1 and c.dropped_samples > 0  # the 150 ms hop cannot be hidden by the slack
    assert (c.input_overflows, c.output_underflows, c.underflows_after_startup) == (1, 2, 1)
    uninterrupted = np.concatenate((np.zeros(pipe.slack, np.float32), fresh_output(model, pipe, x, 0)))
    # after the last restart has settled, the output is the uninterrupted engine output again
    last = pipe.events[-1][2] + pipe.slack + pipe.system_delay + (model.receptive_field[1] + 6) * pipe.hop_device
    assert last < out.size - RATE // 8, "the run must end with a stretch of normal output"
    np.testing.assert_allclose(out[last:], uninterrupted[last : out.size], atol=1e-4)
    st = pipe.stats()
    assert st["hop_ms_median"] > 0 and st["hops"] == c.hops and st["faults"] == 2
    # the recordings are exactly what went in and what was played
    np.testing.assert_array_equal(sf.read(tmp_path / "in.wav", dtype="float32")[0], x[: out.size])
    np.testing.assert_array_equal(sf.read(tmp_path / "out.wav", dtype="float32")[0], out)
    assert not list(tmp_path.glob(".*tmp*"))


def test_worker_thread_stops_promptly(model):
    pipe = LivePipeline(FaultyEngine(model), RATE, BLOCK)
    worker = LiveWorker(pipe).start()
    assert worker.thread.is_alive()
    worker.stop()  # joins: a worker that ignored the stop would leave the thread alive (or hang here)
    assert not worker.thread.is_alive()


FAKE_DEVICES = [
    {
        "index": 0,
        "name": "Built-in Mic",
        "hostapi": "ALSA",
        "inputs": 2,
        "outputs": 0,
        "rate": 44100,
        "default_input": True,
        "default_output": False,
    },
    {
        "index": 1,
        "name": "USB Headset",
        "hostapi": "ALSA",
        "inputs": 1,
        "outputs": 2,
        "rate": 48000,
        "default_input": False,
        "default_output": True,
    },
]


@pytest.fixture
def fake_devices(monkeypatch):
    import rtpulse.live

    monkeypatch.setattr(rtpulse.live, "list_devices", lambda: [dict(d) for d in FAKE_DEVICES])


def test_devices_resolve_by_index_name_substring_and_default(fake_devices):
    from rtpulse.live import resolve_device

    assert resolve_device(None, "input")["index"] == 0
    assert resolve_device(None, "output")["index"] == 1
    assert resolve_device("1", "input")["name"] == "USB Headset"
    assert resolve_device("usb", "output")["index"] == 1
    assert resolve_device("headset", "input")["index"] == 1


@pytest.mark.parametrize(
    "spec,kind,words",
    [("7", "input", "index 7"), ("mic", "output", "'mic'"), ("0", "output", "no output channels"),
     # "b" is in both inputs' names: a guess could record from the wrong microphone
     ("b", "input", "2 input devices match 'b': [0] Built-in Mic, [1] USB Headset; give its index"),
     ("²", "input", "no input device matches '²'")],  # a digit to str.isdigit, not to int()
)
def test_device_errors_name_the_device_and_how_to_list(fake_devices, spec, kind, words):
    from rtpulse.errors import RtpulseError
    from rtpulse.live import resolve_device

    with pytest.raises(RtpulseError) as e:
        resolve_device(spec, kind)
    assert words in str(e.value) and "rtpulse devices" in str(e.value) and "\n" not in str(e.value)


def test_a_name_several_devices_share_exactly_is_refused_not_guessed(monkeypatch):
    """Windows lists one card under MME, DirectSound and WASAPI with one name: the first one is not a choice."""
    import rtpulse.live
    from rtpulse.errors import RtpulseError

    twins = [*FAKE_DEVICES, {**FAKE_DEVICES[1], "index": 7, "hostapi": "JACK"}]
    monkeypatch.setattr(rtpulse.live, "list_devices", lambda: [dict(d) for d in twins])
    with pytest.raises(RtpulseError) as e:
        rtpulse.live.resolve_device("USB Headset", "output")
    assert "2 output devices match 'USB Headset': [1] USB Headset (ALSA), [7] USB Headset (JACK); give its index (" in str(
        e.value)
    assert rtpulse.live.resolve_device("7", "output")["hostapi"] == "JACK"
    assert rtpulse.live.resolve_device("built-in mic", "input")["index"] == 0  # an exact name of one device still is


def test_live_cli_reports_bad_device_and_options_in_one_line(fake_devices, tmp_path, model):
    from typer.testing import CliRunner

    from rtpulse.cli import app
    from rtpulse.model import save_model

    save_model(model, tmp_path / "m.safetensors")
    pytest.importorskip("sounddevice", exc_type=OSError)  # run_live loads PortAudio before the devices
    runner = CliRunner()
    r = runner.invoke(app, ["live", "--model", str(tmp_path / "m.safetensors"), "--input", "nosuch"])
    assert r.exit_code == 1 and "nosuch" in r.output and "rtpulse devices" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(app, ["live", "--model", str(tmp_path / "m.safetensors"), "--dry", "1.5"])
    assert r.exit_code == 1 and "--dry" in r.output
    r = runner.invoke(
        app, ["live", "--model", str(tmp_path / "m.safetensors"), "--record-out", str(tmp_path / "o.mp3")]
    )
    assert r.exit_code == 1 and ".wav" in r.output
    m = ["live", "--model", str(tmp_path / "m.safetensors")]
    (tmp_path / "d.json").mkdir()
    for extra, words in (
        (["--headroom", "nan"], "--headroom not negative"),
        (["--latency", "inf"], "must be finite"),
        (["--floor-db", "nan"], "--floor-db must be -200…0 dB"),
        (["--record-in", str(tmp_path / "r.wav"), "--record-out", str(tmp_path / "r.wav")], "same file"),
        (["--record-in", str(tmp_path / "r.wav"), "--stats-json", str(tmp_path / "r.wav")], "ending in .json"),
        (["--stats-json", str(tmp_path / "d.json")], "is a directory"),
        (["--stats-json", str(tmp_path / "m.safetensors" / "s.json")], "is a file, not a folder"),
    ):
        r = runner.invoke(app, [*m, *extra])
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 1 and len(lines) == 1 and words in lines[0], (extra, r.output)


def test_recorder_makes_its_folder_and_a_bad_path_is_one_line_error(tmp_path):
    from rtpulse.errors import RtpulseError

    ring = np.zeros(64, np.float32)
    rec = Recorder(tmp_path / "new" / "dir" / "in.wav", RATE, ring, lambda: 0)
    rec.close()
    assert (tmp_path / "new" / "dir" / "in.wav").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(RtpulseError, match=r"^cannot write .*file/in\.wav: "):
        Recorder(tmp_path / "file" / "in.wav", RATE, ring, lambda: 0)
    assert (tmp_path / "file").read_text() == "x"


def test_stats_before_the_first_hop_are_valid_json_and_shown_as_dashes(model):
    from rtpulse.dashboard import status_line

    s = LivePipeline(FaultyEngine(model), RATE, BLOCK).stats()  # Ctrl-C within the first hop
    assert (s["hop_ms_median"], s["hop_ms_p99"], s["rtf"]) == (None, None, None)
    json.dumps(s, allow_nan=False)  # NaN would be written as the non-JSON token NaN
    line = status_line({**s, "cpu_percent": 1.0, "total_delay_ms": 90.0})
    assert "hop —/— ms (median/p99) RTF — " in line and "nan" not in line


def test_dashboard_and_status_line_show_the_counters(model):
    from rich.console import Console

    from rtpulse.dashboard import render_dashboard, status_line

    pipe = LivePipeline(FaultyEngine(model), RATE, BLOCK)
    drive(pipe, noisy_input(0.3), BLOCK, on_block=lambda b: [None for _ in iter(pipe.work_once, False)])
    pipe.counters.output_underflows = 3
    s = {
        **pipe.stats(),
        "model": "m.safetensors",
        "devices": "in 0 / out 1",
        "device_latency_ms": 20.0,
        "total_delay_ms": pipe.delay / RATE * 1e3 + 20.0,
        "cpu_percent": 12.0,
    }
    console = Console(record=True, width=150)
    console.print(render_dashboard(s))
    text = console.export_text()
    assert "m.safetensors" in text and "output underflows 3" in text and f"{s['total_delay_ms']:.0f} ms" in text
    line = status_line(s)
    assert "out 3" in line and "\n" not in line


def test_the_level_meters_turn_red_when_the_peaks_reach_full_scale(model):
    """A full-scale sine is −3 dBFS RMS and clipped speech far less: coloured by the RMS, a clipping microphone showed
    yellow. The peak colours the bar; a quiet signal stays green."""
    from rich.console import Console

    from rtpulse.dashboard import render_dashboard

    def input_row(peak: float) -> tuple[str, dict]:
        pipe = LivePipeline(FaultyEngine(model), RATE, BLOCK)
        block = (peak * np.sin(2 * np.pi * 1000 * np.arange(BLOCK) / RATE)).astype(np.float32)
        pipe.callback(block[:, None], np.zeros((BLOCK, 2), np.float32), BLOCK, None, None)
        s = {**pipe.stats(), "model": "m", "devices": "d", "device_latency_ms": 0.0, "total_delay_ms": 1.0,
             "cpu_percent": 1.0}
        console = Console(record=True, width=150, force_terminal=True, color_system="standard")
        console.print(render_dashboard(s))
        return next(ln for ln in console.export_text(styles=True).splitlines() if "input" in ln), s

    row, s = input_row(1.0)
    assert "\x1b[31m█" in row  # red: at full scale
    assert s["in_level_dbfs"] == pytest.approx(-3.01, abs=0.05) and s["in_peak_dbfs"] == pytest.approx(0.0, abs=0.05)
    assert "\x1b[32m█" in input_row(0.1)[0]  # green: −20 dBFS peaks


# --- the live command without a sound card: a fake sounddevice plays a tone into the real pipeline ---------


def tone(start: int, n: int, rate: int) -> np.ndarray:
    return (0.1 * np.sin(2 * np.pi * 440 * np.arange(start, start + n) / rate)).astype(np.float32)


class FakeStream:
    """sounddevice.Stream stand-in: a thread calls the callback with a tone, one block per block period."""

    def __init__(self, callback, samplerate, blocksize, channels, **kw) -> None:
        self.callback, self.rate, self.blocksize, self.channels = callback, samplerate, blocksize, channels
        self.latency, self.active, self.fed = (0.005, 0.005), True, 0
        self._stop = threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def start(self) -> None:
        self.__enter__()

    def abort(self) -> None:
        self.__exit__()

    def close(self) -> None:
        pass

    def _run(self) -> None:
        n, (c_in, c_out) = self.blocksize, self.channels
        while not self._stop.is_set():
            indata = np.repeat(tone(self.fed, n, self.rate)[:, None], c_in, axis=1)  # same on both: mono = tone
            self.callback(indata, np.zeros((n, c_out), np.float32), n, None, None)
            self.fed += n
            time.sleep(n / self.rate)


@pytest.fixture
def fake_sd(fake_devices, monkeypatch):
    """rtpulse.live's sounddevice, faked; ``.opened`` lists the streams made, ``.on_open`` runs before each."""
    import sys

    import rtpulse.live

    sd = SimpleNamespace(opened=[], on_open=None, PortAudioError=type("PortAudioError", (Exception,), {}),
                         stream_class=FakeStream, _exit_handler=lambda: None)
    sd.check_input_settings = sd.check_output_settings = lambda **kw: None

    def stream(**kw):
        if sd.on_open is not None:
            sd.on_open()
        sd.opened.append(sd.stream_class(**kw))
        return sd.opened[-1]

    sd.Stream = stream
    monkeypatch.setattr(rtpulse.live, "import_sounddevice", lambda: sd)
    switch = sys.getswitchinterval()  # run_live shortens it for the whole process
    yield sd
    sys.setswitchinterval(switch)


@pytest.fixture
def sigterm_fallback():
    """A SIGTERM handler that only records: should the code under test not install its own, the test fails
    instead of killing the test run."""
    import signal

    seen: list[int] = []
    old = {sig: signal.signal(sig, lambda signum, frame: seen.append(signum)) for sig in (signal.SIGTERM, signal.SIGHUP)}
    yield seen
    for sig, handler in old.items():
        signal.signal(sig, handler)


def _live(tmp_path, model, *extra: str):
    from typer.testing import CliRunner

    from rtpulse.cli import app
    from rtpulse.model import save_model

    save_model(model, tmp_path / "m.safetensors")
    args = ["live", "--model", str(tmp_path / "m.safetensors"), "--rate", "16000", "--no-dashboard", *extra]
    return CliRunner().invoke(app, args)


def _one_line(r) -> str:
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error:"), r.output
    return lines[0]


@pytest.mark.parametrize("option", ["--record-in", "--record-out", "--stats-json"])
def test_live_refuses_to_replace_a_file_without_force(fake_sd, tmp_path, model, option):
    old = tmp_path / ("old.json" if option == "--stats-json" else "old.wav")
    old.write_bytes(b"keep me")
    line = _one_line(_live(tmp_path, model, "--duration", "0.2", option, str(old)))
    assert f"{old} exists; pass --force to replace it" in line
    assert old.read_bytes() == b"keep me" and fake_sd.opened == []  # refused before any device opened


def test_live_force_replaces_recordings_and_stats(fake_sd, tmp_path, model):
    rec_in, rec_out, stats = tmp_path / "in.wav", tmp_path / "out.wav", tmp_path / "s.json"
    for p in (rec_in, rec_out, stats):
        p.write_bytes(b"old")
    r = _live(tmp_path, model, "--duration", "0.3", "--force", "--record-in", str(rec_in), "--record-out",
              str(rec_out), "--stats-json", str(stats))
    assert r.exit_code == 0, r.output
    recorded, rate = sf.read(rec_in, dtype="float32")
    assert rate == 16000 and recorded.size >= 0.3 * 16000
    np.testing.assert_array_equal(recorded, tone(0, recorded.size, 16000))  # the input, sample for sample
    assert sf.info(rec_out).frames >= 0.3 * 16000
    assert json.loads(stats.read_text())["stop_signal"] is None


def test_the_dashboard_piped_ends_its_last_frame_before_the_summary(fake_sd, tmp_path, model):
    from typer.testing import CliRunner

    from rtpulse.cli import app
    from rtpulse.model import save_model

    save_model(model, tmp_path / "m.safetensors")
    r = CliRunner().invoke(app, ["live", "--model", str(tmp_path / "m.safetensors"), "--rate", "16000",
                                 "--duration", "0.3"])  # the dashboard on, its output not a terminal
    assert r.exit_code == 0, r.output
    assert any(line.startswith("done: ") for line in r.output.splitlines()), r.output  # not glued to the frame


@pytest.mark.parametrize(
    "option,value,words",
    [
        ("--headroom", "1e9", "--headroom must be at most 2000 ms"),
        ("--headroom", "2000.5", "--headroom must be at most 2000 ms"),
        ("--blocksize", "16385", "--blocksize must be at most 16384 frames"),
        ("--blocksize", str(2**40), "--blocksize must be at most 16384 frames"),
        ("--latency", "2.5", "--latency must be at most 2 s"),
        ("--rate", "1000000", "--rate must be at most 768000 Hz, got 1000000"),  # not 1e+06
    ],
)
def test_live_refuses_sizes_no_device_could_use(fake_sd, tmp_path, model, option, value, words):
    assert words in _one_line(_live(tmp_path, model, "--duration", "0.2", option, value)) and fake_sd.opened == []


def test_the_largest_accepted_sizes_are_accepted_and_allocate_little(fake_sd, tmp_path, model):
    from rtpulse.audio import MAX_INPUT_RATE as MAX_RATE
    from rtpulse.cli_live import MAX_BLOCKSIZE, MAX_HEADROOM_MS

    # the bounds themselves pass: the error is the later .wav check
    extra = ["--headroom", "2000", "--blocksize", "16384", "--latency", "2", "--record-in", str(tmp_path / "x.mp3")]
    assert "should end in .wav" in _one_line(_live(tmp_path, model, *extra))
    pipe = LivePipeline(FaultyEngine(model), MAX_RATE, MAX_BLOCKSIZE, headroom=round(MAX_HEADROOM_MS * MAX_RATE / 1e3))
    assert pipe.delay > 2 * MAX_RATE  # the headroom really is in the delay …
    assert sum(a.nbytes for a in (pipe.in_ring, pipe.out_ring, pipe.played_ring)) < 128 * 2**20  # … and fits


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])  # SIGHUP: the terminal closed, the ssh session was lost
def test_live_sigterm_stops_like_ctrl_c_and_keeps_the_recordings(fake_sd, sigterm_fallback, tmp_path, model, name):
    import os
    import signal

    rec_in, stats = tmp_path / "rec" / "in.wav", tmp_path / "rec" / "s.json"
    timer = threading.Timer(1.0, os.kill, (os.getpid(), getattr(signal, name)))
    timer.start()
    try:
        r = _live(tmp_path, model, "--duration", "20", "--record-in", str(rec_in), "--stats-json", str(stats))
    finally:
        timer.cancel()
    assert sigterm_fallback == [], f"rtpulse live did not handle {name}"
    assert r.exit_code == 0 and f"stopped ({name})" in r.output, r.output
    assert "on input 0 'Built-in Mic' / output 1 'USB Headset'" in r.output  # the summary names the devices used
    s = json.loads(stats.read_text())
    assert s["interrupted"] and s["stop_signal"] == name and s["seconds"] < 10
    recorded, _ = sf.read(rec_in, dtype="float32")
    assert recorded.size == fake_sd.opened[0].fed > 0  # everything fed was recorded
    np.testing.assert_array_equal(recorded, tone(0, recorded.size, 16000))
    assert sorted(p.name for p in rec_in.parent.iterdir()) == ["in.wav", "s.json"]  # no temp file


class VanishingStream(FakeStream):
    """A device that goes away mid-stream: its callbacks stop, the stream still says it is active, and stopping
    it hangs (PortAudio waiting on a callback thread stuck in the driver)."""

    def _run(self) -> None:
        n, (c_in, c_out) = self.blocksize, self.channels
        while not self._stop.is_set() and self.fed < 0.5 * self.rate:
            indata = np.repeat(tone(self.fed, n, self.rate)[:, None], c_in, axis=1)
            self.callback(indata, np.zeros((n, c_out), np.float32), n, None, None)
            self.fed += n
            time.sleep(n / self.rate)

    def abort(self) -> None:
        time.sleep(30)


def test_a_vanished_device_ends_the_session_and_keeps_the_recordings(fake_sd, tmp_path, model, monkeypatch):
    import atexit

    import rtpulse.live

    monkeypatch.setattr(rtpulse.live, "STALL_S", 0.5)
    monkeypatch.setattr(rtpulse.live, "CLOSE_TIMEOUT_S", 0.5)
    unregistered = []
    monkeypatch.setattr(atexit, "unregister", unregistered.append)
    fake_sd.stream_class = VanishingStream
    rec, stats = tmp_path / "in.wav", tmp_path / "s.json"
    t0 = time.perf_counter()
    line = _one_line(_live(tmp_path, model, "--record-in", str(rec), "--stats-json", str(stats)))  # no --duration
    assert time.perf_counter() - t0 < 10  # it used to wait for ever
    assert "no audio for 0.5 s from" in line and "device gone?" in line  # STALL_S, as patched here
    recorded, _ = sf.read(rec, dtype="float32")
    assert recorded.size == fake_sd.opened[0].fed >= 8000  # everything the device gave, and no temp file
    np.testing.assert_array_equal(recorded, tone(0, recorded.size, 16000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav", "m.safetensors", "s.json"]
    assert "device gone?" in json.loads(stats.read_text())["error"]
    assert unregistered == [fake_sd._exit_handler]  # sounddevice's exit handler would hang on the same stream


def test_live_sigterm_while_the_device_opens_leaves_no_temp_file(fake_sd, sigterm_fallback, tmp_path, model):
    import os
    import signal

    def slow_open():  # opening a device can take seconds; SIGTERM arrives meanwhile
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            time.sleep(0.01)

    fake_sd.on_open = slow_open
    rec = tmp_path / "rec"
    r = _live(tmp_path, model, "--duration", "0.2", "--record-in", str(rec / "in.wav"), "--record-out",
              str(rec / "out.wav"))
    assert sigterm_fallback == [], "rtpulse live did not handle SIGTERM"
    assert r.exit_code == 143 and "terminated (SIGTERM)" in r.output, r.output
    assert fake_sd.opened == [] and list(rec.iterdir()) == []  # the recorders' temp files are gone


class SignalledStream(FakeStream):
    """SIGTERM lands just after the device opened, while the session reads the stream's latency."""

    @property
    def latency(self):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
        return (0.005, 0.005)

    @latency.setter
    def latency(self, value) -> None:
        pass


def test_live_sigterm_just_after_the_device_opened_closes_everything(fake_sd, sigterm_fallback, tmp_path, model):
    fake_sd.stream_class = SignalledStream
    rec = tmp_path / "rec"
    r = _live(tmp_path, model, "--duration", "5", "--record-in", str(rec / "in.wav"))
    assert sigterm_fallback == [], "rtpulse live did not handle SIGTERM"
    assert r.exit_code == 0 and "stopped (SIGTERM)" in r.output, r.output
    assert [p.name for p in rec.iterdir()] == ["in.wav"]  # finished, no temp file beside it
    assert not any(t.name == "rtpulse-live-worker" and t.is_alive() for t in threading.enumerate())


def test_a_stats_path_that_cannot_be_written_is_refused_before_the_devices_open(fake_sd, tmp_path, model):
    line = _one_line(_live(tmp_path, model, "--duration", "1", "--stats-json", "/proc/rtpulse/s.json"))
    assert "cannot write into /proc/rtpulse" in line and fake_sd.opened == []


def test_shutdown_holds_stop_signals_and_puts_the_handlers_back():
    import os
    import signal

    from rtpulse.signals import stop_signals_held

    seen = []
    old = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    # Python's Ctrl-C handler, whatever pytest inherited (a background job started from a script ignores SIGINT)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with stop_signals_held():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)  # a second stop request during the shutdown: dropped
            for _ in range(1000):
                pass
        assert seen == []
        os.kill(os.getpid(), signal.SIGTERM)  # afterwards the handler is back
        for _ in range(1000):
            pass
        assert seen == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)


def test_a_late_recorder_drain_writes_silence_for_what_the_ring_may_have_lost(tmp_path):
    ring, end = np.zeros(64, np.float32), [0]
    rec = Recorder(tmp_path / "r.wav", RATE, ring, lambda: end[0])
    ring_write(ring, 136, np.arange(136, 200, dtype=np.float32))  # the ring now holds positions 136 … 199
    end[0] = 200
    rec.drain()  # positions below 200 − 64/2 may be overwritten while this drain reads: silence, counted
    assert rec.lost == 168
    ring_write(ring, 200, np.arange(200, 210, dtype=np.float32))
    end[0] = 210
    rec.close()  # on time: nothing more lost
    assert rec.lost == 168
    want = np.concatenate((np.zeros(168, np.float32), np.arange(168, 210, dtype=np.float32)))
    np.testing.assert_array_equal(sf.read(tmp_path / "r.wav", dtype="float32")[0], want)


def test_a_worker_failure_outside_the_engine_ends_its_thread_with_the_reason(model, monkeypatch):
    pipe = LivePipeline(FaultyEngine(model), RATE, BLOCK)
    monkeypatch.setattr(pipe, "work_once", lambda: (_ for _ in ()).throw(MemoryError("ring")))
    worker = LiveWorker(pipe).start()
    worker.thread.join(timeout=5)
    assert not worker.thread.is_alive() and worker.error == "MemoryError: ring"
    worker.stop()


def test_a_worker_slower_than_real_time_still_records_every_sample(fake_sd, tmp_path, model, monkeypatch):
    # never idle, the worker used to be the only drain: after the 2 s ring wrapped, the recording held old samples
    real = LivePipeline.work_once

    def slow(self):
        time.sleep(0.02)  # a 16 ms hop's work takes 20 ms
        return real(self)

    monkeypatch.setattr(LivePipeline, "work_once", slow)
    rec = tmp_path / "in.wav"
    r = _live(tmp_path, model, "--duration", "2.6", "--record-in", str(rec))
    assert r.exit_code == 0, r.output
    recorded, _ = sf.read(rec, dtype="float32")
    assert recorded.size == fake_sd.opened[0].fed > 2.6 * 16000 > 32768  # longer than the ring
    np.testing.assert_array_equal(recorded, tone(0, recorded.size, 16000))


@pytest.mark.parametrize("fails", ["drain", "worker"])
def test_a_failing_recording_or_worker_ends_the_session_in_one_line_and_keeps_the_rest(
    fake_sd, tmp_path, model, monkeypatch, fails
):
    import rtpulse.live

    if fails == "drain":  # a full disk: the input recording's third drain fails
        real, calls = Recorder.drain, []

        def drain(self):
            if self.path.name == "in.wav":
                calls.append(1)
                if len(calls) == 3:
                    raise RuntimeError("Error : disk full")
            real(self)

        monkeypatch.setattr(Recorder, "drain", drain)
    else:
        monkeypatch.setattr(rtpulse.live.LivePipeline, "work_once", lambda self: 1 / 0)
    rec_in, rec_out, stats = tmp_path / "in.wav", tmp_path / "out.wav", tmp_path / "s.json"
    line = _one_line(_live(tmp_path, model, "--duration", "5", "--record-in", str(rec_in), "--record-out",
                           str(rec_out), "--stats-json", str(stats)))
    want = (f"cannot write {rec_in} (Error : disk full); the session stopped, what was recorded is kept"
            if fails == "drain" else "denoising stopped (ZeroDivisionError: division by zero)")
    assert want in line and json.loads(stats.read_text())["error"] in line
    assert json.loads(stats.read_text())["seconds"] < 4  # it stopped, rather than play dry input to the end
    played, _ = sf.read(rec_out, dtype="float32")
    assert played.size == fake_sd.opened[0].fed > 0  # the other recording is whole
    recorded, _ = sf.read(rec_in, dtype="float32")
    assert 0 < recorded.size <= played.size
    np.testing.assert_array_equal(recorded, tone(0, recorded.size, 16000))  # what was written is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav", "m.safetensors", "out.wav", "s.json"]


def test_a_block_written_but_not_counted_is_not_written_twice(tmp_path):
    # a Ctrl-C between a drain's write and its count: close() goes on from where the file really is
    ring, end = np.arange(64, dtype=np.float32), [40]
    rec = Recorder(tmp_path / "r.wav", RATE, ring, lambda: end[0])
    rec.file.write(ring[:40])  # what the interrupted drain wrote; rec.done is still 0
    rec.close()
    np.testing.assert_array_equal(sf.read(tmp_path / "r.wav", dtype="float32")[0], ring[:40])


def test_recordings_are_rf64_while_they_grow_and_an_ordinary_wav_when_short(tmp_path):
    from rtpulse.live import open_growing_wav

    f = open_growing_wav(tmp_path / "r.wav", 48000)
    assert f.format == "RF64"  # past 4 GiB (6.2 h at 48 kHz) a plain WAV's sizes would lose the rest
    f.write(np.full(480, 0.25, np.float32))
    f.close()
    info = sf.info(tmp_path / "r.wav")
    assert info.format in ("WAV", "WAVEX") and info.frames == 480  # under 4 GiB: what every player reads
    np.testing.assert_array_equal(sf.read(tmp_path / "r.wav", dtype="float32")[0], np.full(480, 0.25, np.float32))


@pytest.mark.parametrize(("opened", "given"), [(2, 1), (3, 2)])
def test_a_host_giving_fewer_channels_than_opened_is_neither_muted_nor_allocating(model, opened, given):
    """A strided [frames, :channels] slice of wider scratch: numpy's isfinite marked finite samples bad (zeroed, the
    input level halved) and the downmix of a strided view allocated a block-sized buffer."""
    import tracemalloc

    n = 16384
    block = np.resize(noisy_input(0.1), n).astype(np.float32)
    block[: n // 2] = np.nan
    ref = LivePipeline(FaultyEngine(model), RATE, n, in_channels=given, dry=0.3)
    pipe = LivePipeline(FaultyEngine(model), RATE, n, in_channels=opened, dry=0.3)
    indata, outdata = np.repeat(block[:, None], given, axis=1), np.zeros((n, 2), np.float32)
    ref.callback(indata, outdata, n, None, None)
    for _ in range(3):
        pipe.callback(indata, outdata, n, None, None)
    tracemalloc.start()
    try:
        pipe.callback(indata, outdata, n, None, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pipe.in_level == pytest.approx(ref.in_level) and peak < n
