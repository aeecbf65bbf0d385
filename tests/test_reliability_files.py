"""`rtpulse denoise` with bad and unusual files: one-line errors or correct output at the input's rate and
length; chunked processing equals the whole-file computation; outputs are never partial and inputs never
overwritten."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import noisy_signal, random_model
from typer.testing import CliRunner

from rtpulse.cli import app
from rtpulse.denoise import DenoiseOptions, denoise_array, denoise_file, level_bound, write_blocks_atomic
from rtpulse.errors import RtpulseError
from rtpulse.model import ModelConfig, PulseCNN, save_model
from rtpulse.stft import stft
from rtpulse.stream import MAX_ABS, OUTPUT_GAIN_BOUND

runner = CliRunner()


def _model(lookahead: int = 1) -> PulseCNN:
    # mixed binary masks: about half the bins kept (a default-init model kept them all, so a pass-through that
    # ignored the model matched denoise_array too)
    model = random_model("blocks2", lookahead, compress="power")
    with torch.no_grad():
        kept = (model(stft(torch.from_numpy(noisy_signal(2.0, seed=5)))[None].abs()) < 0).float().mean().item()
    assert 0.2 < kept < 0.8, kept
    return model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture
def model_path(tmp_path, model):
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    return path


def _signal(n: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    tone = 0.3 * np.sin(2 * np.pi * 0.013 * t * (1 + np.arange(channels)))
    return (tone + 0.1 * rng.standard_normal((n, channels))).astype(np.float32)


def _denoise(args: list) -> object:
    return runner.invoke(app, ["denoise", *map(str, args)])


def _assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    for frag in fragments:
        assert frag in lines[0], result.output


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# --- bad inputs ----------------------------------------------------------------------------------------


def test_empty_file_is_a_one_line_error(tmp_path, model_path):
    src = tmp_path / "empty.wav"
    src.write_bytes(b"")
    _assert_one_line_error(_denoise([src, "-o", tmp_path / "o.wav", "-m", model_path]), "empty.wav")
    assert not (tmp_path / "o.wav").exists()


def test_wav_with_zero_samples_is_a_one_line_error(tmp_path, model_path):
    src = tmp_path / "zero.wav"
    sf.write(src, np.zeros((0, 1), np.float32), 16000)
    _assert_one_line_error(_denoise([src, "-o", tmp_path / "o.wav", "-m", model_path]), "no samples")


def test_not_audio_is_a_one_line_error(tmp_path, model_path):
    src = tmp_path / "notes.wav"
    src.write_text("this is not audio\n" * 50)
    _assert_one_line_error(_denoise([src, "-o", tmp_path / "o.wav", "-m", model_path]), "cannot read")


def test_directory_input_is_a_one_line_error(tmp_path, model_path):
    folder = tmp_path / "adir.wav"
    folder.mkdir()
    _assert_one_line_error(_denoise([folder, "-o", tmp_path / "o.wav", "-m", model_path]), "directory")


def test_missing_input_is_a_one_line_error(tmp_path, model_path):
    _assert_one_line_error(_denoise([tmp_path / "nope.wav", "-o", tmp_path / "o.wav", "-m", model_path]), "not found")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads chmod-000 files anyway")
def test_unreadable_file_is_a_one_line_error(tmp_path, model_path):
    src = tmp_path / "secret.wav"
    sf.write(src, _signal(1000, 1), 16000)
    src.chmod(0)
    _assert_one_line_error(_denoise([src, "-o", tmp_path / "o.wav", "-m", model_path]), "secret.wav")


def test_permission_error_on_open_is_a_one_line_error(tmp_path, model_path, monkeypatch):
    """Tests run as root here, so chmod 000 does not block reads; the OS error is injected instead."""
    src = tmp_path / "locked.wav"
    sf.write(src, _signal(1000, 1), 16000)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(src))

    monkeypatch.setattr("rtpulse.denoise.sf.SoundFile", denied)
    _assert_one_line_error(_denoise([src, "-o", tmp_path / "o.wav", "-m", model_path]), "Permission denied")


def test_truncated_header_is_a_one_line_error(tmp_path, model_path):
    src = tmp_path / "cut.wav"
    sf.write(src, _signal(4000, 2), 16000, subtype="PCM_16")
    src.write_bytes(src.read_bytes()[:30])  # inside the RIFF header
    _assert_one_line_error(_denoise([src, "-o", tmp_path / "o.wav", "-m", model_path]), "cut.wav")


@pytest.mark.parametrize("suffix,fmt", [(".wav", "WAV"), (".flac", "FLAC")])
def test_truncated_data_gives_output_of_the_readable_length(tmp_path, model_path, model, suffix, fmt):
    src = tmp_path / f"cut{suffix}"
    sf.write(src, _signal(20000, 2), 22050, format=fmt, subtype="PCM_16")
    raw = src.read_bytes()
    src.write_bytes(raw[: len(raw) * 2 // 3])
    try:
        readable, rate = sf.read(src, dtype="float32", always_2d=True)
    except sf.LibsndfileError:
        readable = None
    r = _denoise([src, "-o", tmp_path / "o.wav", "-m", model_path])
    if readable is None or readable.shape[0] == 0:
        _assert_one_line_error(r, "cut")
        return
    assert r.exit_code == 0, r.output
    y, out_rate = sf.read(tmp_path / "o.wav", dtype="float32")
    assert out_rate == rate == 22050
    assert y.shape == (readable.shape[0],)
    np.testing.assert_allclose(y, denoise_array(model, readable, rate, DenoiseOptions()), atol=1e-5)


def test_a_cut_mp3_whose_header_promises_more_gives_silence_not_repeated_audio(tmp_path, model_path, model):
    src = tmp_path / "cut.mp3"
    sf.write(src, _signal(6 * 22050, 1)[:, 0], 22050)  # a header (Xing) that announces 6 s
    raw = src.read_bytes()
    src.write_bytes(raw[: len(raw) * 2 // 5])  # an interrupted download
    readable, rate = sf.read(src, dtype="float32")
    announced = sf.info(src).frames
    assert 0 < readable.size < announced - 22050  # the case: libsndfile reads less than the header says
    r = _denoise([src, "-o", tmp_path / "o.wav", "-m", model_path])
    assert r.exit_code == 0, r.output
    assert f"only {readable.size / rate:.2f} s of the {announced / rate:.2f} s its header announces" in r.output
    y = sf.read(tmp_path / "o.wav", dtype="float32")[0]
    assert y.size == announced  # the length it announced, as a player shows it
    # what was read is denoised as that audio alone; after it, silence (SoundFile.blocks repeated its last block)
    np.testing.assert_allclose(y[: readable.size - 4096], denoise_array(model, readable, rate, DenoiseOptions())[
        : readable.size - 4096], atol=1e-4)
    assert np.abs(y[readable.size + 4096 :]).max() < 1e-6


def test_a_cut_flac_is_denoised_as_far_as_it_goes(tmp_path, model_path):
    src = tmp_path / "cut.flac"
    sf.write(src, _signal(3 * 44100, 1)[:, 0], 44100)
    src.write_bytes(src.read_bytes()[: len(src.read_bytes()) * 3 // 5])  # libsndfile reads some, then fails
    r = _denoise([src, "-o", tmp_path / "o.wav", "-m", model_path])
    assert r.exit_code == 0 and "its header announces could be read" in r.output, r.output
    y = sf.read(tmp_path / "o.wav", dtype="float32")[0]
    assert y.size == 3 * 44100 and np.abs(y[:44100]).max() > 0.01 and not y[-44100 // 2 :].any()


def test_a_wav_past_4_gib_is_written_as_rf64_and_an_aiff_that_large_refused(tmp_path, model_path, model, monkeypatch):
    import rtpulse.denoise

    src = tmp_path / "long.wav"
    x = _signal(16000, 1)
    sf.write(src, x, 16000)
    r = _denoise([src, "-o", tmp_path / "plain.wav", "-m", model_path])
    assert r.exit_code == 0, r.output
    assert sf.info(tmp_path / "plain.wav").format == "WAV"
    # the 4 GiB of a RIFF size field, scaled down to this second of audio (64,000 bytes of float samples)
    monkeypatch.setattr(rtpulse.denoise, "RIFF_MAX_DATA", 63_999)
    r = _denoise([src, "-o", tmp_path / "big.wav", "-m", model_path])
    assert r.exit_code == 0, r.output
    assert sf.info(tmp_path / "big.wav").format == "RF64"  # plain WAV would keep only what its size field counts
    np.testing.assert_array_equal(sf.read(tmp_path / "big.wav")[0], sf.read(tmp_path / "plain.wav")[0])
    monkeypatch.setattr(rtpulse.denoise, "RIFF_MAX_DATA", 31_999)  # AIFF writes 16-bit samples: 32,000 bytes
    r = _denoise([src, "-o", tmp_path / "big.aiff", "-m", model_path])
    _assert_one_line_error(r, "past AIFF's 4 GiB; write .wav (RF64) or .flac instead")
    assert not (tmp_path / "big.aiff").exists()


def test_one_sample_file_gives_one_sample(tmp_path, model_path):
    src = tmp_path / "one.wav"
    sf.write(src, np.array([[0.5]], np.float32), 44100)
    r = _denoise([src, "-o", tmp_path / "o.wav", "-m", model_path])
    assert r.exit_code == 0, r.output
    info = sf.info(tmp_path / "o.wav")
    assert (info.frames, info.samplerate, info.channels) == (1, 44100, 1)


def test_nan_and_inf_in_a_float_file_give_finite_output(tmp_path, model_path, model):
    x = _signal(8000, 1)
    x[3000:3100] = np.nan
    x[5000] = np.inf
    x[6000] = -1e30
    src = tmp_path / "bad.wav"
    sf.write(src, x, 16000, subtype="FLOAT")
    for engine in ("offline", "stream"):
        out = tmp_path / f"o_{engine}.wav"
        r = _denoise([src, "-o", out, "-m", model_path, "--engine", engine])
        assert r.exit_code == 0, r.output
        y, _ = sf.read(out, dtype="float32")
        assert y.shape == (8000,) and np.all(np.isfinite(y))
        assert np.abs(y).max() <= OUTPUT_GAIN_BOUND * MAX_ABS  # −1e30 is clipped to −MAX_ABS first
        clean = np.where(np.isfinite(x), x, 0.0)
        np.testing.assert_allclose(y[:1500], denoise_array(model, clean, 16000, DenoiseOptions())[:1500], atol=1e-5)


def test_a_nan_in_one_channel_does_not_silence_the_other_channels(tmp_path, model):
    """Channels are cleaned before the downmix: a NaN in one channel made the mean NaN, then 0, and took the other
    channels' samples with it (100 ms of a good right channel came out silent)."""
    data = _signal(8000, 2)
    data[2000:3600, 0] = np.nan  # a damaged left channel
    clean = np.where(np.isfinite(data), data, 0.0).astype(np.float32)
    expected = denoise_array(model, clean, 16000, DenoiseOptions())
    assert np.abs(expected[2000:3600]).max() > 0.01  # the right channel still speaks there
    np.testing.assert_allclose(denoise_array(model, data, 16000, DenoiseOptions()), expected, atol=1e-6)
    src = tmp_path / "nan.wav"
    sf.write(src, data, 16000, subtype="FLOAT")
    denoise_file(model, src, tmp_path / "o.wav", DenoiseOptions(), chunk_frames=3)
    np.testing.assert_allclose(sf.read(tmp_path / "o.wav", dtype="float32")[0], expected, atol=1e-6)


def test_a_double_file_beyond_float32s_range_is_clipped_like_the_array_not_silenced(tmp_path, model):
    data = _signal(8000, 1).astype(np.float64)
    data[4000:4010, 0] = 1e39  # finite in float64, inf in float32
    expected = denoise_array(model, data, 16000, DenoiseOptions())
    assert np.abs(expected).max() > 1e6  # clipped to the engine's full level, not zeroed
    src = tmp_path / "wide.wav"
    sf.write(src, data, 16000, subtype="DOUBLE")
    denoise_file(model, src, tmp_path / "o.wav", DenoiseOptions(), chunk_frames=3)
    np.testing.assert_allclose(sf.read(tmp_path / "o.wav", dtype="float32")[0], expected, rtol=1e-5, atol=1e-3)


def test_a_loud_mp3_is_clipped_and_said_not_an_aborted_process(tmp_path):
    """LAME asserts (SIGABRT: no error, the temp file left behind) on a float file at 32-bit integer scale; the writer
    clips to MP3_MAX_LEVEL and counts it. In a child process: the abort would take pytest with it."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        import numpy as np
        from pathlib import Path
        from conftest import noisy_signal
        from rtpulse.denoise import write_blocks_atomic
        x = (noisy_signal(1.0) * 2.0**31).astype(np.float32)
        print(write_blocks_atomic(Path({str(tmp_path / "o.mp3")!r}), [x], 16000, x.size)[0])
    """)
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-500:]
    assert int(r.stdout.split()[-1]) > 100  # clipped, and counted for the warning
    y, _ = sf.read(tmp_path / "o.mp3", dtype="float32")
    assert y.size == 16000 and np.abs(y).max() > 4000
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("rate", [44100, 48000])
def test_vorbis_holds_what_it_is_given_or_clips_it_and_says_so(tmp_path, rate):
    """A 440 Hz tone at ±300 came back from .ogg at 0–4 dB SNR (garbage), unclipped and unsaid (the bound was ±1000)."""
    x = (300 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    clipped, _ = write_blocks_atomic(tmp_path / "o.ogg", [x], rate, x.size)
    y, _ = sf.read(tmp_path / "o.ogg", dtype="float32")
    bound = level_bound("OGG", None)
    assert clipped == 0 or bound < 300  # what is not clipped must come back as written
    written = np.clip(x, -bound, bound)
    snr = 10 * np.log10(np.sum(written**2) / np.sum((y - written) ** 2))
    assert snr > 15, snr


def test_unknown_output_format_is_refused_before_work(tmp_path, model_path):
    src = tmp_path / "a.wav"
    sf.write(src, _signal(2000, 1), 16000)
    _assert_one_line_error(_denoise([src, "-o", tmp_path / "o.xyz", "-m", model_path]), "unknown audio format")
    # soundfile lists RAW but cannot write it without a subtype: refused the same way, not a TypeError
    _assert_one_line_error(_denoise([src, "-o", tmp_path / "o.raw", "-m", model_path]), "unknown audio format")
    # libsndfile writes these, but not at the audio's rate (.wve: 8 kHz, .xi: 44.1 kHz) or not faithfully
    for ext in (".wve", ".xi", ".htk", ".sds", ".sd2"):
        _assert_one_line_error(_denoise([src, "-o", tmp_path / f"o{ext}", "-m", model_path]), "unknown audio format")
    assert not list(tmp_path.glob("*o.*"))


def test_into_a_folder_an_input_in_a_format_not_written_becomes_wav(tmp_path, model_path):
    sf.write(tmp_path / "take1.aif", _signal(4000, 1), 22050, format="AIFF")
    sf.write(tmp_path / "take2", _signal(3000, 2), 16000, format="WAV")  # no extension
    sf.write(tmp_path / "take3.caf", _signal(2000, 3), 44100, format="CAF")
    out = tmp_path / "out"
    r = _denoise([tmp_path / "take1.aif", tmp_path / "take2", tmp_path / "take3.caf", "-o", out, "-m", model_path])
    assert r.exit_code == 0, r.output
    got = {p.name: (sf.info(p).format, sf.info(p).samplerate, sf.info(p).frames) for p in out.iterdir()}
    assert got == {"take1.aif": ("AIFF", 22050, 4000), "take2.wav": ("WAV", 16000, 3000),
                   "take3.wav": ("WAV", 44100, 2000)}
    sf.write(tmp_path / "take2.wav", _signal(3000, 2), 16000)
    _assert_one_line_error(_denoise([tmp_path / "take2", tmp_path / "take2.wav", "-o", tmp_path / "o2", "-m",
                                     model_path]), "two inputs would both be written as 'take2.wav'")


@pytest.mark.parametrize("floor", ["nan", "inf", "-inf", "6", "1e5", "-201"])
def test_bad_floor_db_is_refused_before_work(tmp_path, model_path, floor):
    """NaN would silence the output, a positive floor amplify it, 1e5 overflow: all refused, nothing written."""
    src = tmp_path / "a.wav"
    sf.write(src, _signal(2000, 1), 16000)
    _assert_one_line_error(_denoise([src, "-o", tmp_path / "o.wav", "-m", model_path, f"--floor-db={floor}"]),
                           "--floor-db must be -200…0 dB")
    assert not (tmp_path / "o.wav").exists()


# --- rates, channels, sample formats -----------------------------------------------------------------

CASES = [
    (rate, channels, subtype)
    for i, (rate, subtype) in enumerate(
        (r, s) for r in (8000, 22050, 44100, 48000, 96000) for s in ("PCM_16", "PCM_24", "FLOAT")
    )
    for channels in [1 + i % 8]
]


@pytest.mark.parametrize("rate,channels,subtype", CASES)
def test_any_rate_channels_and_sample_format_give_mono_at_input_rate_and_length(
    tmp_path, model_path, model, rate, channels, subtype
):
    data = _signal(int(0.4 * rate) + 3, channels, seed=channels)
    src = tmp_path / "in.wav"
    sf.write(src, data, rate, subtype=subtype)
    r = _denoise([src, "-o", tmp_path / "out.flac", "-m", model_path])
    assert r.exit_code == 0, r.output
    y, out_rate = sf.read(tmp_path / "out.flac", dtype="float32")
    assert out_rate == rate and y.shape == (data.shape[0],)
    read_back, _ = sf.read(src, dtype="float32", always_2d=True)
    expected = denoise_array(model, read_back, rate, DenoiseOptions())
    assert np.abs(expected).max() > 0.01  # the mask keeps something, so the comparison means something
    np.testing.assert_allclose(y, expected, atol=2e-5)  # FLAC stores 16 bits: compare at that resolution


def test_8_channel_96k_input_is_downmixed_not_truncated_to_one_channel(tmp_path, model_path, model):
    data = np.zeros((9600, 8), np.float32)
    data[:, 7] = _signal(9600, 1)[:, 0]  # only the last channel carries signal
    src = tmp_path / "ch8.wav"
    sf.write(src, data, 96000, subtype="FLOAT")
    r = _denoise([src, "-o", tmp_path / "o.wav", "-m", model_path])
    assert r.exit_code == 0, r.output
    y, _ = sf.read(tmp_path / "o.wav", dtype="float32")
    assert np.abs(y).max() > 0.001
    np.testing.assert_allclose(y, denoise_array(model, data, 96000, DenoiseOptions()), atol=1e-6)


# --- chunked = whole file ----------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["offline", "stream"])
@pytest.mark.parametrize("lookahead,rate,chunk_frames", [(0, 16000, 1), (1, 44100, 3), (3, 8000, 5), (6, 48000, 2)])
def test_chunked_file_equals_whole_file(tmp_path, engine, lookahead, rate, chunk_frames):
    model = _model(lookahead)
    data = _signal(int(0.45 * rate) + 11, 2, seed=lookahead)
    src = tmp_path / "in.wav"
    sf.write(src, data, rate, subtype="FLOAT")
    opts = DenoiseOptions(engine=engine, mask="soft", floor_db=-30)
    seconds = denoise_file(model, src, tmp_path / "out.wav", opts, chunk_frames=chunk_frames)
    assert seconds == pytest.approx(data.shape[0] / rate)
    y, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    whole = denoise_array(model, data, rate, opts)
    assert np.abs(whole).max() > 0.01
    np.testing.assert_allclose(y, whole, atol=1e-6)


@pytest.mark.parametrize("engine", ["offline", "stream"])
def test_chunked_file_equals_whole_file_with_a_time_dilated_model(tmp_path, engine):
    """blocks3t looks back 54 frames at L = 2 (layers dilated 4 and 16): each chunk needs all of them (past_frames)."""
    from conftest import random_model

    model = random_model("blocks3t", 2, level_frames=12, freq_input=True)
    data = _signal(40000, 1, seed=13)  # 2.5 s: 156 frames, chunks of 2
    src = tmp_path / "in.wav"
    sf.write(src, data, 16000, subtype="FLOAT")
    opts = DenoiseOptions(engine=engine, mask="soft")
    denoise_file(model, src, tmp_path / "out.wav", opts, chunk_frames=2)
    y, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    whole = denoise_array(model, data, 16000, opts)
    assert np.abs(y - data[:, 0]).max() > 0.01  # the model really masks
    np.testing.assert_allclose(y, whole, atol=1e-6)


@pytest.mark.parametrize("trackers", [{"level_frames": 12}, {"level_frames": 12, "floor_frames": 25}])
def test_chunked_file_equals_whole_file_with_level_normalisation(tmp_path, trackers):
    """The level normaliser and the floor tracker look back: chunks need that much more context to stay exact."""
    torch.manual_seed(5)
    model = PulseCNN(ModelConfig(preset="blocks2", lookahead=1, **trackers)).eval()
    data = _signal(16000, 1, seed=9) * np.linspace(0.05, 1.0, 16000, dtype=np.float32)[:, None]
    src = tmp_path / "in.wav"
    sf.write(src, data, 16000, subtype="FLOAT")
    opts = DenoiseOptions(mask="soft")
    denoise_file(model, src, tmp_path / "out.wav", opts, chunk_frames=3)
    y, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    np.testing.assert_allclose(y, denoise_array(model, data, 16000, opts), atol=1e-6)


@pytest.mark.parametrize("engine", ["offline", "stream"])
def test_chunked_files_use_the_models_mask_sharpness(tmp_path, engine):
    """A model with mask_sharpness 2.5 denoises a file in chunks exactly as a model with 2.5× its logits and the plain
    soft mask does (the reference never touches the sharpness code)."""
    sharp = _model(1)
    sharp.config = dataclasses.replace(sharp.config, mask_sharpness=2.5)
    scaled = _model(1)
    with torch.no_grad():
        scaled.convs[-1].weight.mul_(2.5)
        scaled.convs[-1].bias.mul_(2.5)
    data = _signal(9000, 1, seed=4)
    src = tmp_path / "in.wav"
    sf.write(src, data, 16000, subtype="FLOAT")
    opts = DenoiseOptions(engine=engine, mask="soft")
    denoise_file(sharp, src, tmp_path / "out.wav", opts, chunk_frames=3)
    y, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    np.testing.assert_allclose(y, denoise_array(scaled, data, 16000, opts), atol=1e-5)
    assert np.max(np.abs(y - denoise_array(_model(1), data, 16000, opts))) > 1e-3  # s = 1 differs


def test_offline_and_stream_engines_give_the_same_samples_in_chunks(tmp_path, model):
    data = _signal(12000, 1)
    src = tmp_path / "in.wav"
    sf.write(src, data, 22050, subtype="FLOAT")
    outs = {}
    for engine in ("offline", "stream"):
        denoise_file(model, src, tmp_path / f"{engine}.wav", DenoiseOptions(engine=engine), chunk_frames=4)
        outs[engine], _ = sf.read(tmp_path / f"{engine}.wav", dtype="float32")
    assert np.abs(outs["offline"]).max() > 0.01
    np.testing.assert_allclose(outs["offline"], outs["stream"], atol=1e-5)


def test_progress_reaches_one(tmp_path, model):
    src = tmp_path / "in.wav"
    sf.write(src, _signal(20000, 1), 16000)
    seen: list[float] = []
    denoise_file(model, src, tmp_path / "o.wav", DenoiseOptions(), chunk_frames=8, on_progress=seen.append)
    assert len(seen) > 2 and seen == sorted(seen) and seen[-1] == 1.0


# --- outputs: never the input, never replaced without --force, never partial -------------------------


def test_output_equal_to_input_is_refused_and_input_untouched(tmp_path, model_path):
    src = tmp_path / "in.wav"
    sf.write(src, _signal(4000, 1), 16000)
    before = src.read_bytes()
    for force in ([], ["--force"]):
        _assert_one_line_error(_denoise([src, "-o", src, "-m", model_path, *force]), "is the input")
        other = tmp_path / "sub" / ".." / "in.wav"  # the same file spelled differently
        _assert_one_line_error(_denoise([src, "-o", other, "-m", model_path, *force]), "is the input")
    assert src.read_bytes() == before


def test_directory_output_holding_an_input_is_refused(tmp_path, model_path):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    for p in (a, b):
        sf.write(p, _signal(2000, 1), 16000)
    before = a.read_bytes()
    _assert_one_line_error(_denoise([a, b, "-o", tmp_path, "-m", model_path, "--force"]), "is the input")
    assert a.read_bytes() == before


def test_existing_output_needs_force(tmp_path, model_path):
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, _signal(4000, 1), 16000)
    dst.write_bytes(b"keep me")
    _assert_one_line_error(_denoise([src, "-o", dst, "-m", model_path]), "--force")
    assert dst.read_bytes() == b"keep me"
    r = _denoise([src, "-o", dst, "-m", model_path, "--force"])
    assert r.exit_code == 0, r.output
    assert sf.info(dst).frames == 4000


def test_a_255_byte_output_name_is_written_and_the_batch_goes_on(tmp_path, model_path):
    # the temp name beside an output must stay legal when the output's own name is at the file system's limit
    long_src = tmp_path / ("a" * 251 + ".wav")  # 255 bytes
    short_src = tmp_path / "b.wav"
    for i, p in enumerate((long_src, short_src)):
        sf.write(p, _signal(4000, 1, seed=i), 16000)
    out = tmp_path / "out"
    r = _denoise([long_src, short_src, "-o", out, "-m", model_path])
    assert r.exit_code == 0, r.output
    assert sf.info(out / long_src.name).frames == 4000 and sf.info(out / "b.wav").frames == 4000
    assert _leftovers(out) == []


@pytest.mark.parametrize("where", ["write", "replace", "interrupt"])
def test_crash_mid_write_leaves_no_partial_output_and_no_temp(tmp_path, model_path, monkeypatch, where):
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, _signal(12000, 1), 16000)
    calls = {"n": 0}
    real_write = sf.SoundFile.write

    def failing_write(self, data):
        calls["n"] += 1
        if calls["n"] == 2:  # the first block is already on disk
            if where == "interrupt":
                raise KeyboardInterrupt
            raise OSError(28, "No space left on device")
        return real_write(self, data)

    def failing_replace(a, b):
        raise OSError(18, "Invalid cross-device link")

    if where == "replace":
        monkeypatch.setattr("rtpulse.denoise.os.replace", failing_replace)
    else:
        monkeypatch.setattr(sf.SoundFile, "write", failing_write)
    from rtpulse import denoise as dn

    monkeypatch.setattr(dn.denoise_file, "__defaults__", (8, None, None))
    if where == "interrupt":
        with pytest.raises(KeyboardInterrupt):
            dn.denoise_file(_model(), src, dst, DenoiseOptions())
    else:
        r = _denoise([src, "-o", dst, "-m", model_path])
        _assert_one_line_error(r, "cannot write", str(dst.name))
    assert not dst.exists()
    assert _leftovers(tmp_path) == []


def test_failed_replace_keeps_the_old_output(tmp_path, model_path, monkeypatch):
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, _signal(4000, 1), 16000)
    dst.write_bytes(b"old result")

    def failing_replace(a, b):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("rtpulse.denoise.os.replace", failing_replace)
    _assert_one_line_error(_denoise([src, "-o", dst, "-m", model_path, "--force"]), "Input/output error")
    assert dst.read_bytes() == b"old result"
    assert _leftovers(tmp_path) == []


def test_sigkill_mid_write_leaves_no_output_file(tmp_path, model_path):
    """A killed process cannot clean up, but the output name only ever appears complete (rename)."""
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, _signal(16000 * 60, 1), 16000)  # a minute: long enough to be killed mid-way
    started = tmp_path / "started"
    script = textwrap.dedent(f"""
        import pathlib, torch
        torch.set_num_threads(1)
        from rtpulse.denoise import DenoiseOptions, denoise_file
        from rtpulse.model import load_model
        def progress(f, flag=pathlib.Path({str(started)!r})):
            flag.touch()
        denoise_file(load_model({str(model_path)!r}), pathlib.Path({str(src)!r}), pathlib.Path({str(dst)!r}),
                     DenoiseOptions(), chunk_frames=16, on_progress=progress)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        if proc.poll() is not None:
            pytest.skip("the child finished before it could be killed")
        temps = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not dst.exists()
    assert all(p.name.startswith(".out.wav.tmp-") for p in temps)  # only a hidden temp file was being written


def test_denoise_file_raises_rtpulse_error_for_bad_output_dir(tmp_path, model):
    src = tmp_path / "in.wav"
    sf.write(src, _signal(2000, 1), 16000)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RtpulseError):
        denoise_file(model, src, blocker / "out.wav", DenoiseOptions())


def test_text_results_are_written_atomically_and_bad_places_are_one_line_errors(tmp_path):
    from rtpulse.errors import RtpulseError
    from rtpulse.files import check_output_file, write_text_atomic

    write_text_atomic(tmp_path / "new" / "r.json", "{}")  # the folder is made
    assert (tmp_path / "new" / "r.json").read_text() == "{}"
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(RtpulseError, match=r"^cannot write .*afile/r\.json: "):
        write_text_atomic(tmp_path / "afile" / "r.json", "{}")
    with pytest.raises(RtpulseError, match="is a file, not a folder"):
        check_output_file(tmp_path / "afile" / "x" / "r.json")
    with pytest.raises(RtpulseError, match="same file"):
        check_output_file(tmp_path / "new" / ".." / "afile", (tmp_path / "afile",))
    assert (tmp_path / "afile").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["afile", "new"]


# --- benchmarks.soak: bad arguments are one-line errors ------------------------------------------------------


def _soak_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from benchmarks import soak

    monkeypatch.setattr(sys, "argv", ["soak", *args])
    with pytest.raises(SystemExit) as e:
        soak.main()
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("seconds", ["0", "-5", "nan", "inf", "7"])
def test_soak_too_short_is_a_one_line_error(tmp_path, monkeypatch, capsys, seconds):
    code, err = _soak_main(monkeypatch, capsys, "--seconds", seconds, "--out", str(tmp_path / "res"))
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("error: --seconds must be at least 7.3 for this model") and "Traceback" not in err
    assert not (tmp_path / "res").exists()


def test_soak_and_train_speed_refuse_an_output_that_is_a_file_before_the_run(tmp_path, monkeypatch, capsys):
    from benchmarks import train_speed

    taken = tmp_path / "f"
    taken.write_text("mine")
    code, err = _soak_main(monkeypatch, capsys, "--seconds", "8", "--out", str(taken))
    assert code == 1 and err == f"error: output folder {taken} is a file; give a folder\n", err
    ran = []
    monkeypatch.setattr(train_speed, "measure", lambda **kw: ran.append(kw))
    monkeypatch.setattr(sys, "argv", ["train_speed", "--out", str(taken)])
    with pytest.raises(SystemExit, match=f"output folder {taken} is a file"):
        train_speed.main()
    assert ran == [] and taken.read_text() == "mine"  # refused before the timing, not after it


def test_soak_refuses_a_folder_it_cannot_write_into_before_the_run(tmp_path, monkeypatch, capsys):
    import benchmarks.soak

    ran = []
    monkeypatch.setattr(benchmarks.soak, "run_soak", lambda *a, **kw: ran.append(a))
    code, err = _soak_main(monkeypatch, capsys, "--seconds", "8", "--out", "/proc/rtpulse-soak")  # no file can be made
    assert code == 1 and err.startswith("error: cannot write into /proc/rtpulse-soak") and err.count("\n") == 1, err
    assert ran == []
    fresh = tmp_path / "new" / "res"
    code, err = _soak_main(monkeypatch, capsys, "--seconds", "1", "--out", str(fresh))  # refused after the probe
    assert code == 1 and "--seconds must be at least" in err
    assert not (tmp_path / "new").exists()  # which left no folders behind


def test_soak_truncated_model_is_a_one_line_error(tmp_path, monkeypatch, capsys, model_path):
    cut = tmp_path / "trunc.safetensors"
    cut.write_bytes(model_path.read_bytes()[:5000])
    code, err = _soak_main(monkeypatch, capsys, "--seconds", "60", "--model", str(cut), "--out", str(tmp_path / "res"))
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: {cut} is not an rtpulse model file") and "Traceback" not in err


def test_soak_minimum_length_is_enough_to_measure_the_delay():
    """At exactly min_seconds every impulse sits in its own silence and is found at the declared delay; a
    shorter run is refused rather than measured wrongly (shorter plans overlap the silences)."""
    from benchmarks.soak import min_seconds, run_soak, soak_model

    model = soak_model()
    low = min_seconds(model)
    result = run_soak(low, model, impulses=8)
    assert result["delay_constant"] and result["max_abs_diff"] < 1e-4 * result["reference_peak"], result["impulses"]
    with pytest.raises(RtpulseError, match="--seconds must be at least"):
        run_soak(low - 0.1, model)


def test_temp_names_of_two_long_outputs_differ_and_odd_bytes_are_kept(tmp_path):
    from rtpulse.files import temp_beside, write_text_atomic

    # live keeps --record-in and --record-out open at once: names alike in their first 200 bytes must not share
    a, b = tmp_path / ("x" * 210 + "_in.wav"), tmp_path / ("x" * 210 + "_out.wav")
    assert temp_beside(a) != temp_beside(b) and len(os.fsencode(temp_beside(a).name)) <= 255
    odd = tmp_path / os.fsdecode(b"caf\xe9.json")  # a Linux name that is not valid UTF-8
    write_text_atomic(odd, "{}")
    assert odd.read_text() == "{}" and sorted(os.listdir(tmp_path)) == [os.fsdecode(b"caf\xe9.json")]
