"""`rtpulse live` through a real audio stack: PulseAudio null sinks as microphone and speaker (48 kHz).

A harness plays a generated noisy file into the virtual microphone, `rtpulse live` denoises it to the
virtual speaker, the speaker is recorded, aligned by cross-correlation and compared with
`rtpulse denoise` of the same file. Recipe: ../shared/audio-loop.md. Skipped only where PulseAudio
(or PortAudio) cannot run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import fftconvolve

from rtpulse.metrics import si_snr_np, si_snri

RATE = 48_000
SECONDS = 10.0
PA_TOOLS = ("pulseaudio", "pactl", "paplay", "parecord")


@pytest.fixture
def sigint_not_ignored():
    """The children are stopped with SIGINT, so they must not inherit it ignored (as pytest does in a background job
    started from a script: Python then installs no Ctrl-C handler). A handler in this process resets to the
    default in a child; an ignored signal stays ignored."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def _run(cmd: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=30, **kw)


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    """A private PulseAudio server: sink `spk` (the speaker), sink `feed` whose monitor is the source `mic`."""
    missing = [t for t in PA_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(
            f"PulseAudio cannot run here: {', '.join(missing)} not installed (apt: pulseaudio pulseaudio-utils)"
        )
    try:
        import sounddevice  # noqa: F401
    except OSError as e:
        pytest.skip(f"PortAudio cannot load ({e}); apt: libportaudio2")
    runtime = tmp_path_factory.mktemp("xdg")
    runtime.chmod(0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    env.pop("PULSE_SERVER", None)
    log = runtime / "pa.log"
    started = _run(
        ["pulseaudio", "--system=false", "--exit-idle-time=-1", "--daemonize=yes", f"--log-target=file:{log}"],
        env,
    )
    pid_file = runtime / "pulse" / "pid"
    if started.returncode != 0 or not pid_file.exists():
        detail = (started.stderr.strip() or (log.read_text()[-300:] if log.exists() else "")).splitlines()
        pytest.skip(f"PulseAudio cannot run here: {detail[-1] if detail else 'no pid file'}")
    pid = int(pid_file.read_text().split()[0])
    try:
        for args in (
            ["load-module", "module-null-sink", "sink_name=spk", f"rate={RATE}", "channels=1", "format=float32le"],
            ["load-module", "module-null-sink", "sink_name=feed", f"rate={RATE}", "channels=1", "format=float32le"],
            ["load-module", "module-remap-source", "master=feed.monitor", "source_name=mic"],
            ["set-default-sink", "spk"],
            ["set-default-source", "mic"],
        ):
            r = _run(["pactl", *args], env)
            assert r.returncode == 0, f"pactl {' '.join(args)}: {r.stderr}"
        yield env
    finally:
        os.kill(pid, signal.SIGTERM)  # only the server this fixture started
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


def speech_like(seconds: float, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy): harmonic 'voiced' syllables with a wandering pitch, plus pink-ish noise at ~5 dB SNR."""
    rng = np.random.default_rng(7)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 16))
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 2  # ~5 syllables a second
    clean = 0.3 * voiced * envelope
    white = rng.standard_normal(t.size)
    pink = np.fft.irfft(np.fft.rfft(white) / np.sqrt(np.maximum(np.fft.rfftfreq(t.size, 1 / rate), 50)), t.size)
    noise = pink * np.sqrt(np.mean(clean**2) / np.mean(pink**2) / 10 ** (5 / 10))
    return clean.astype(np.float32), (clean + noise).astype(np.float32)


def align(recording: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The stretch of ``recording`` that lines up with ``reference`` (cross-correlation peak)."""
    corr = fftconvolve(recording, reference[::-1], mode="full")
    lag = int(np.argmax(np.abs(corr))) - (reference.size - 1)
    assert lag >= 0 and lag + reference.size <= recording.size, f"recording too short for lag {lag}"
    return recording[lag : lag + reference.size]


def segment_scores(recording: np.ndarray, reference: np.ndarray, lag: int, seconds: float = 1.0) -> list[float]:
    """SI-SNR of each ``seconds`` segment of ``reference`` against ``recording``, each aligned on its own
    within ±25 ms of ``lag``: the virtual loop's ALSA→pulse plugin recovers from its own underruns by
    inserting gaps that PortAudio never reports, so one global alignment would score the loop, not rtpulse."""
    n, reach, scores = int(seconds * RATE), RATE // 40, []
    for start in range(RATE // 2, reference.size - n - RATE // 2 + 1, n):
        ref = reference[start : start + n]
        lo = max(0, lag + start - reach)
        window = recording[lo : lag + start + n + reach]
        if window.size < n or np.sqrt(np.mean(ref**2)) < 1e-3:
            continue
        corr = fftconvolve(window, ref[::-1], mode="valid")
        k = int(np.argmax(np.abs(corr)))
        scores.append(si_snr_np(window[k : k + n], ref))
    return scores


def model_and_mask(tmp_path: Path) -> tuple[Path, str]:
    """The shipped model with its own mask (soft) if there is one; else random weights with the soft mask (a
    random network calls nearly every bin noise, so its binary mask would be all zeros). Soft, because live
    frames the signal on a grid shifted by the loop's delay, and a binary mask flips bins with the grid."""
    from rtpulse.model import ModelConfig, PulseCNN, default_model_path, save_model

    if default_model_path().exists():
        from rtpulse.model import load_model

        return default_model_path(), load_model(default_model_path()).config.mask
    import torch

    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_model(PulseCNN(ModelConfig(preset="blocks2")), path)
    return path, "soft"


def denoise(src: Path, dst: Path, model: Path, mask: str) -> None:
    """`rtpulse denoise` in this process (no second interpreter start-up)."""
    from typer.testing import CliRunner

    from rtpulse.cli import app

    r = CliRunner().invoke(app, ["denoise", str(src), "-o", str(dst), "--model", str(model), "--mask", mask])
    assert r.exit_code == 0, r.output


def test_live_through_pulseaudio_matches_offline_denoise(pulse, sigint_not_ignored, tmp_path):
    env = pulse
    clean, noisy = speech_like(SECONDS, RATE)
    sf.write(tmp_path / "noisy.wav", noisy, RATE, subtype="FLOAT")
    model, mask = model_and_mask(tmp_path)
    rtpulse = [sys.executable, "-m", "rtpulse.cli"]
    stats_path, rec_in = tmp_path / "stats.json", tmp_path / "in.wav"
    live = subprocess.Popen(
        [
            *rtpulse,
            "live",
            "--model",
            str(model),
            "--mask",
            mask,
            "--rate",
            str(RATE),
            "--duration",
            "60",
            "--no-dashboard",
            "--latency",
            "0.2",
            "--headroom",
            "150",
            "--stats-json",
            str(stats_path),
            "--record-in",
            str(rec_in),
            "--record-out",
            str(tmp_path / "out.wav"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    rec = None
    try:
        # wait until live's stream is connected to the server (opening takes ~2 s), then settle
        for _ in range(150):
            if "protocol-native" in _run(["pactl", "list", "short", "sink-inputs"], env).stdout:
                break
            assert live.poll() is None, live.communicate()[0]
            time.sleep(0.1)
        time.sleep(1.5)
        rec = subprocess.Popen(
            [
                "parecord",
                "--latency-msec=100",
                "--device=spk.monitor",
                f"--rate={RATE}",
                "--channels=1",
                "--format=float32le",
                "--file-format=wav",
                str(tmp_path / "speaker.wav"),
            ],
            env=env,
        )
        time.sleep(0.5)
        _run(["paplay", "--latency-msec=100", "--device=feed", str(tmp_path / "noisy.wav")], env)
        time.sleep(3.0)  # the loop's delay varies (0.1–2 s): record with margin
    finally:
        if rec is not None:
            rec.send_signal(signal.SIGINT)
            rec.wait(timeout=10)
        live.send_signal(signal.SIGINT)  # Ctrl-C: stream closed, recordings finalised, summary printed
        log = live.communicate(timeout=30)[0]
    assert live.returncode == 0, log
    assert "stopped (Ctrl-C)" in log
    stats = json.loads(stats_path.read_text())
    assert stats["interrupted"] and stats["rate"] == RATE and stats["faults"] == 0
    assert stats["underflows_after_startup"] == 0, stats  # the device never ran dry after start-up
    # the worker kept up (a busy shared machine may cost a few samples played dry; they are counted)
    assert stats["dropped_after_startup"] < 0.01 * stats["seconds"] * RATE, stats
    assert sf.info(str(rec_in)).samplerate == RATE and sf.info(str(rec_in)).frames > SECONDS * RATE

    offline = tmp_path / "offline.wav"
    denoise(tmp_path / "noisy.wav", offline, model, mask)
    reference, _ = sf.read(offline, dtype="float32")
    assert np.sqrt(np.mean(reference**2)) > 0.01  # the model passes something: the comparison means something
    speaker, rate = sf.read(tmp_path / "speaker.wav", dtype="float32")
    assert rate == RATE
    speaker = speaker.reshape(speaker.shape[0], -1)[:, 0]
    live_out = align(speaker, reference)
    edge = RATE // 2  # the file's start and end: the offline pass sees zeros around it, live sees silence
    lag = int(np.argmax(np.abs(fftconvolve(speaker, reference[::-1], mode="full")))) - (reference.size - 1)
    segments = segment_scores(speaker, reference, lag)
    score = float(np.median(segments))
    print(f"per-second SI-SNR(live, offline): {np.round(segments, 1).tolist()}")
    inner = slice(edge, -edge)
    gains = [si_snri(y[inner], noisy[inner], clean[inner]) for y in (live_out, reference)]
    print(f"SI-SNR(live, offline) = {score:.1f} dB; SI-SNRi live {gains[0]:.2f} dB, offline {gains[1]:.2f} dB")
    print(f"stats: {json.dumps(stats)}")
    # the criterion: live matches offline (SI-SNR ≥ 20 dB, the median of per-second aligned segments),
    # or scores the same SI-SNRi (±0.5 dB).
    # Live frames the signal on a grid shifted by the loop's delay, so a sharp binary mask can differ.
    assert score >= 20.0 or abs(gains[0] - gains[1]) <= 0.5

    # live's own recordings: what it played is the denoised input at exactly the fixed pipeline delay
    offline_in = tmp_path / "offline_in.wav"
    denoise(rec_in, offline_in, model, mask)
    played, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    expected, _ = sf.read(offline_in, dtype="float32")
    corr = fftconvolve(played, expected[::-1], mode="full")
    lag = int(np.argmax(np.abs(corr))) - (expected.size - 1)
    assert lag == round(stats["pipeline_delay_ms"] * RATE / 1000)
    print(f"pipeline delay measured {lag / RATE * 1e3:.2f} ms (stated {stats['pipeline_delay_ms']:.2f} ms)")
