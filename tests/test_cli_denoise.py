import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import noisy_signal, random_model
from typer.testing import CliRunner

from rtpulse.cli import app
from rtpulse.model import save_model
from rtpulse.stream import enhance

runner = CliRunner()


def make_model(tmp_path, lookahead=1):
    path = tmp_path / "m.safetensors"
    save_model(random_model("blocks2", lookahead), path)
    return path


def test_denoise_48k_stereo_gives_48k_mono_of_same_length(tmp_path):
    x16 = noisy_signal(1.5)
    x48 = np.repeat(x16, 3)  # crude 48 kHz version; content does not matter here
    stereo = np.stack([x48, 0.5 * x48], axis=1)
    src = tmp_path / "in.wav"
    sf.write(src, stereo, 48000)
    model = make_model(tmp_path)
    outs = {}
    for engine in ("offline", "stream"):
        dst = tmp_path / f"out_{engine}.wav"
        r = runner.invoke(app, ["denoise", str(src), "-o", str(dst), "-m", str(model), "--engine", engine,
                                "--mask", "soft"])
        assert r.exit_code == 0, r.output
        info = sf.info(dst)
        assert (info.samplerate, info.channels, info.frames) == (48000, 1, stereo.shape[0])
        outs[engine], _ = sf.read(dst, dtype="float32")
    np.testing.assert_allclose(outs["offline"], outs["stream"], atol=1e-5)
    assert np.max(np.abs(outs["offline"])) > 0.01  # not silence


def test_denoise_16k_output_equals_engine_output(tmp_path):
    x = noisy_signal(1.0)
    src = tmp_path / "a.flac"
    sf.write(src, x, 16000, subtype="PCM_24")
    model_path = make_model(tmp_path)
    dst = tmp_path / "a_out.wav"
    r = runner.invoke(app, ["denoise", str(src), "-o", str(dst), "-m", str(model_path)])
    assert r.exit_code == 0, r.output
    y, rate = sf.read(dst, dtype="float32")
    read_back, _ = sf.read(src, dtype="float32")
    from rtpulse.model import load_model

    expected = enhance(load_model(model_path), torch.from_numpy(read_back)).numpy()
    assert rate == 16000
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_many_files_into_directory(tmp_path):
    model = make_model(tmp_path)
    for name in ("a.wav", "b.wav"):
        sf.write(tmp_path / name, noisy_signal(0.5), 22050)
    out = tmp_path / "out"
    out.mkdir()
    r = runner.invoke(app, ["denoise", str(tmp_path / "a.wav"), str(tmp_path / "b.wav"), "-o", str(out),
                            "-m", str(model)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["a.wav", "b.wav"]
    assert sf.info(out / "b.wav").samplerate == 22050


def _one_line_error(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 1
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:")
    return lines[0]


def test_missing_file_is_one_line_error(tmp_path):
    r = runner.invoke(app, ["denoise", str(tmp_path / "nope.wav"), "-o", str(tmp_path / "o.wav"),
                            "-m", str(make_model(tmp_path))])
    assert "not found" in _one_line_error(r)


def test_corrupt_file_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    r = runner.invoke(app, ["denoise", str(bad), "-o", str(tmp_path / "o.wav"), "-m", str(make_model(tmp_path))])
    assert "cannot read" in _one_line_error(r)
    assert not (tmp_path / "o.wav").exists()


def test_bad_model_file_is_one_line_error(tmp_path):
    src = tmp_path / "in.wav"
    sf.write(src, noisy_signal(0.2), 16000)
    fake = tmp_path / "fake.safetensors"
    fake.write_text("hello")
    r = runner.invoke(app, ["denoise", str(src), "-o", str(tmp_path / "o.wav"), "-m", str(fake)])
    assert "not an rtpulse model" in _one_line_error(r)


def test_help_for_every_command():
    # each command's help names its own options (Typer prints "Usage" for anything, so that alone proves nothing)
    own = {(): ["denoise", "live", "train", "eval", "bench"], ("denoise",): ["--engine", "--floor-db", "--force"],
           ("live",): ["--record-in", "--dry", "--duration"], ("devices",): ["List audio input and output devices"],
           ("train",): ["--method", "--resume", "--prior"], ("eval",): ["--synth", "--noisy"],
           ("bench",): ["latency", "quality", "training"], ("bench", "latency"): ["--peers"],
           ("bench", "quality"): ["--data", "--count"], ("bench", "training"): ["--only"]}
    for cmd, words in own.items():
        r = runner.invoke(app, [*cmd, "--help"], terminal_width=200)
        assert r.exit_code == 0 and all(w in r.output for w in words), (cmd, r.output)


def test_default_mask_is_the_models_own_and_the_option_overrides_it(tmp_path):
    import dataclasses

    from rtpulse.model import PulseCNN

    base = random_model("blocks2", 0)
    soft_model = PulseCNN(dataclasses.replace(base.config, mask="soft")).eval()
    soft_model.load_state_dict(base.state_dict())
    path = tmp_path / "soft.safetensors"
    save_model(soft_model, path)
    x = noisy_signal(0.5)
    src = tmp_path / "in.wav"
    sf.write(src, x, 16000, subtype="FLOAT")
    outs = {}
    for name, extra in (("default", []), ("binary", ["--mask", "binary"])):
        r = runner.invoke(app, ["denoise", str(src), "-o", str(tmp_path / f"{name}.wav"), "-m", str(path), *extra])
        assert r.exit_code == 0, r.output
        outs[name], _ = sf.read(tmp_path / f"{name}.wav", dtype="float32")
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(outs["default"], enhance(soft_model, xt, "soft").numpy(), atol=1e-6)
    np.testing.assert_allclose(outs["binary"], enhance(soft_model, xt, "binary").numpy(), atol=1e-6)


# --- SIGTERM: cleaned up like Ctrl-C ----------------------------------------------------------------------


# SIGHUP: the terminal closed; SIGINT: Ctrl-C, said in one line and 130 whichever typer runs (typer's own is silent)
@pytest.mark.parametrize(("name", "code", "said"), [("SIGTERM", 143, "terminated (SIGTERM)"),
                                                    ("SIGHUP", 129, "terminated (SIGHUP)"),
                                                    ("SIGINT", 130, "interrupted (Ctrl-C)")])
def test_sigterm_mid_write_removes_the_temp_file_and_exits_143(tmp_path, name, code, said):
    """A real process killed with SIGTERM (or SIGHUP) while writing: the hidden temp file goes, no output appears.

    143 (= 128 + 15) is what a shell reports for a process ended by SIGTERM; 129 for SIGHUP; Ctrl-C gives 130.
    """
    src, out = tmp_path / "long.wav", tmp_path / "out"
    sf.write(src, np.tile(noisy_signal(1.0, rate=8000), 120), 8000)  # 2 min: seconds of work after the first block
    # SIGHUP at its default, as from a terminal: under nohup (as CI may run) it is ignored, and rtpulse leaves it so
    # SIGINT as a terminal's Ctrl-C delivers it (a shell ignores it for background jobs, and children inherit that)
    start = ("import signal; signal.signal(signal.SIGHUP, signal.SIG_DFL); "
             "signal.signal(signal.SIGINT, signal.default_int_handler); from rtpulse.cli import app; app()")
    cmd = [sys.executable, "-c", start, "denoise", str(src), "-o", str(out / "y.wav"), "-m", str(make_model(tmp_path))]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and any(out.iterdir())) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        temps = sorted(p.name for p in out.iterdir())
        proc.send_signal(getattr(signal, name))
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert temps == [f".y.wav.tmp-{proc.pid}"]  # the kill landed while the temp file was being written
    assert proc.returncode == code, err  # 0 would mean it finished first; negative that the signal was not handled
    assert list(out.iterdir()) == []  # neither the temp file nor a partial y.wav
    assert err.strip().splitlines()[-1] == f"{said}: the unfinished output was removed" and "Traceback" not in err


def test_sigterm_inside_the_guard_raises_terminated_and_the_old_handler_comes_back():
    from rtpulse.signals import Terminated, sigterm_interrupts

    seen = []
    old = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with pytest.raises(Terminated), sigterm_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**6):  # handlers run between bytecodes; this loop never finishes first
                pass
        assert issubclass(Terminated, KeyboardInterrupt)  # so every Ctrl-C cleanup path runs for it
        os.kill(os.getpid(), signal.SIGTERM)  # outside the guard: the previous handler again
        for _ in range(1000):
            pass
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, old)


def test_an_ignored_sigterm_stays_ignored_inside_the_guard():
    from rtpulse.signals import sigterm_interrupts

    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # e.g. a parent's nohup-like choice
    try:
        with sigterm_interrupts():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, old)


# --- inputs checked before outputs; an output that names a file is not made a folder ----------------------


def test_a_stray_word_after_force_is_a_missing_input_and_no_folder_is_made(tmp_path):
    """`-o fx.wav --force true`: "true" is taken as a second input. Said so; fx.wav/ is not created."""
    src = tmp_path / "in1.flac"
    sf.write(src, noisy_signal(0.3), 16000)
    model = str(make_model(tmp_path))
    fx = tmp_path / "fx.wav"
    line = _one_line_error(runner.invoke(app, ["denoise", str(src), "-o", str(fx), "--force", "true", "-m", model]))
    assert "input not found: true" in line
    # two real inputs and an -o that names a file: refused, not turned into a folder fx.wav/
    other = tmp_path / "in2.wav"
    sf.write(other, noisy_signal(0.3), 16000)
    line = _one_line_error(runner.invoke(app, ["denoise", str(src), str(other), "-o", str(fx), "-m", model]))
    assert f"-o {fx} names a file, but 2 inputs were given" in line
    assert not fx.exists()
    # a folder that exists is the user's choice, whatever its name
    (tmp_path / "takes.wav").mkdir()
    r = runner.invoke(app, ["denoise", str(src), str(other), "-o", str(tmp_path / "takes.wav"), "-m", model])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "takes.wav").iterdir()) == ["in1.flac", "in2.wav"]


def test_a_missing_input_is_reported_before_anything_about_the_output(tmp_path):
    model = str(make_model(tmp_path))
    line = _one_line_error(runner.invoke(app, ["denoise", str(tmp_path / "missing"), "-o", str(tmp_path / "d") + "/",
                                               "-m", model]))
    assert "input not found" in line and "format" not in line
    # in a batch too, before any file is written: a typo does not cost an hour of half-done work
    good = tmp_path / "good.wav"
    sf.write(good, noisy_signal(0.3), 16000)
    line = _one_line_error(runner.invoke(app, ["denoise", str(good), str(tmp_path / "nope.wav"), "-o",
                                               str(tmp_path / "d"), "-m", model]))
    assert "nope.wav" in line
    assert not (tmp_path / "d").exists()


def test_an_output_under_a_file_says_the_file_is_not_a_folder(tmp_path):
    src = tmp_path / "in.wav"
    sf.write(src, noisy_signal(0.3), 16000)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    line = _one_line_error(runner.invoke(app, ["denoise", str(src), "-o", str(notes / "x.wav"),
                                               "-m", str(make_model(tmp_path))]))
    assert f"{notes} is a file, not a folder" in line
    for out, why in ((f"{notes}/", "a name ending in / asks for"), (str(notes), "several inputs need")):
        inputs = [str(src)] if out.endswith("/") else [str(src), str(src.with_name("in2.wav"))]
        sf.write(src.with_name("in2.wav"), noisy_signal(0.3), 16000)
        line = _one_line_error(runner.invoke(app, ["denoise", *inputs, "-o", out, "-m", str(make_model(tmp_path))]))
        assert f"{why} -o to be a directory, but {notes} is a file" in line
    assert notes.read_text() == "mine"


def test_one_input_into_a_new_folder_named_with_a_slash(tmp_path):
    src = tmp_path / "in.wav"
    sf.write(src, noisy_signal(0.3), 16000)
    res = runner.invoke(app, ["denoise", str(src), "-o", f"{tmp_path / 'newdir'}/", "-m", str(make_model(tmp_path))])
    assert res.exit_code == 0, res.output
    assert sf.info(tmp_path / "newdir" / "in.wav").frames == sf.info(src).frames


def test_a_model_whose_finite_weights_overflow_writes_nothing(tmp_path):
    """Weights of 1e30 pass the NaN check of the model file, but overflow float32 in the first layers."""
    src = tmp_path / "in.wav"
    sf.write(src, noisy_signal(0.3), 16000)
    model = random_model()
    with torch.no_grad():
        for conv in model.convs:
            conv.weight.copy_(1e30 * torch.randn_like(conv.weight).sign())  # +inf and −inf meet: NaN
    save_model(model, tmp_path / "huge.safetensors")
    for engine, mask in (("offline", "binary"), ("stream", "soft")):  # binary would make it silence, soft NaN
        line = _one_line_error(runner.invoke(app, ["denoise", str(src), "-o", str(tmp_path / "o.wav"), "-m",
                                                   str(tmp_path / "huge.safetensors"), "--engine", engine,
                                                   "--mask", mask]))
        assert "the model's output holds NaN: its weights overflow float32" in line
        assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.safetensors", "in.wav"]  # no output, no temp file


def test_an_error_piped_to_a_log_is_its_one_line_and_nothing_before_it(tmp_path):
    """Not a terminal (a log, a pipe): no progress bar, whose transient remains were a blank line before the error."""
    bad, bad2 = tmp_path / "bad.wav", tmp_path / "bad2.wav"
    bad.write_text("hello")
    bad2.write_text("hello")  # eval refuses one file given twice before reading it
    for args in (["denoise", str(bad), "-o", str(tmp_path / "o.wav"), "-m", str(make_model(tmp_path))],
                 ["eval", "-m", str(make_model(tmp_path)), "--noisy", str(bad), "--clean", str(bad2)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 1 and res.output.startswith("error: cannot read") and res.output.count("\n") == 1


@pytest.mark.parametrize("engine", ["offline", "stream"])
def test_a_float_file_at_integer_scale_is_denoised_as_loud_not_clipped(tmp_path, engine):
    # float WAVs written from integer samples without scaling (±32768, ±2^23) are real recordings: a level-normalised
    # model gives the same output scaled (2^k is exact in float), where clipping at ±1e3 once gave garbage
    path = tmp_path / "m.safetensors"
    save_model(random_model("blocks2", 1, level_frames=20), path)
    x = noisy_signal(1.0)
    outs = []
    for scale in (1.0, 2.0**15, 2.0**23):
        src, dst = tmp_path / f"in{scale:.0f}.wav", tmp_path / f"out{scale:.0f}.wav"
        sf.write(src, x * scale, 16000, subtype="FLOAT")
        r = runner.invoke(app, ["denoise", str(src), "-o", str(dst), "-m", str(path), "--engine", engine])
        assert r.exit_code == 0, r.output
        outs.append(sf.read(dst, dtype="float32")[0] / scale)
    assert np.abs(x).max() * 2.0**23 > 1e6 and np.abs(outs[0]).max() > 0.01  # far past the old clip; not silent
    np.testing.assert_allclose(outs[1], outs[0], rtol=0, atol=1e-6 * np.abs(outs[0]).max())
    np.testing.assert_allclose(outs[2], outs[0], rtol=0, atol=1e-6 * np.abs(outs[0]).max())


def test_paths_that_look_like_rich_markup_are_printed_as_they_are(tmp_path):
    model = make_model(tmp_path)
    missing = tmp_path / "[live] set.wav"
    r = runner.invoke(app, ["denoise", str(missing), "-o", str(tmp_path / "o.wav"), "-m", str(model)])
    assert r.exit_code == 1 and f"input not found: {missing}" in r.output, r.output  # "[live]" once vanished
    src = tmp_path / "in.wav"
    sf.write(src, noisy_signal(0.5), 16000)
    out_dir = tmp_path / "out" / "[/x]"  # a closing tag with no opening one: rich raised MarkupError after the work
    r = runner.invoke(app, ["denoise", str(src), "-o", f"{out_dir}/", "-m", str(model)])
    assert r.exit_code == 0 and f"→ {out_dir}" in r.output and "Traceback" not in r.output, r.output
    assert (out_dir / "in.wav").is_file()


@pytest.mark.parametrize("where", ["input", "output", "model"])
def test_a_name_longer_than_the_system_allows_is_a_one_line_error(tmp_path, where):
    # pathlib's exists() raises ENAMETOOLONG rather than answer False: it was a traceback
    model = make_model(tmp_path)
    src = tmp_path / "in.wav"
    sf.write(src, noisy_signal(0.5), 16000)
    long = tmp_path / ("a" * 300 + ".wav")
    args = {"input": [str(long), "-o", str(tmp_path / "o.wav"), "-m", str(model)],
            "output": [str(src), "-o", str(long), "-m", str(model)],
            "model": [str(src), "-o", str(tmp_path / "o.wav"), "-m", str(tmp_path / ("m" * 300 + ".safetensors"))]}
    r = runner.invoke(app, ["denoise", *args[where]])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "File name too long" in r.output and "Errno" not in r.output


def test_a_name_that_is_not_utf8_is_read_and_written(tmp_path):
    # Latin-1 bytes in a name on a UTF-8 system: Python holds them as surrogates, which soundfile could not encode
    model = make_model(tmp_path)
    src = tmp_path / os.fsdecode(b"lat\xe9.wav")
    dst = tmp_path / os.fsdecode(b"out\xe9.wav")
    sf.write(os.fsencode(src), noisy_signal(0.5), 16000)
    r = runner.invoke(app, ["denoise", str(src), "-o", str(dst), "-m", str(model)])
    assert r.exit_code == 0, r.output
    assert sf.info(os.fsencode(dst)).frames == 8000 and b"out\xe9.wav" in os.listdir(os.fsencode(tmp_path))


def test_a_format_that_cannot_hold_a_loud_output_says_it_clipped(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(random_model("blocks2", 1, level_frames=20), path)
    src = tmp_path / "loud.wav"
    sf.write(src, noisy_signal(1.0) * 2.0**15, 16000, subtype="FLOAT")
    flac = runner.invoke(app, ["denoise", str(src), "-o", str(tmp_path / "o.flac"), "-m", str(path)])
    y = sf.read(tmp_path / "o.flac", dtype="float32")[0]
    clipped = int(np.count_nonzero(np.abs(y) >= 32767 / 32768))  # FLAC holds integers: ±1 at most
    assert flac.exit_code == 0 and clipped > 100, flac.output
    assert f"warning: {tmp_path / 'o.flac'}: {clipped} samples beyond full scale" in flac.output
    r = runner.invoke(app, ["denoise", str(src), "-o", str(tmp_path / "o.wav"), "-m", str(path)])
    assert r.exit_code == 0 and "warning" not in r.output, r.output  # float WAV stores any level: nothing said
    wav = sf.read(tmp_path / "o.wav", dtype="float32")[0]
    assert np.abs(wav).max() > 8192
    # MP3 keeps levels up to ±8,192 (louder ones abort LAME), Vorbis up to ±32 (louder ones come back garbled)
    for name, bound in (("o.mp3", "8,192"), ("o.ogg", "32")):
        r = runner.invoke(app, ["denoise", str(src), "-o", str(tmp_path / name), "-m", str(path)])
        over = int(np.count_nonzero(np.abs(wav) > float(bound.replace(",", ""))))
        assert r.exit_code == 0 and f"{over} samples beyond ±{bound} were clipped" in r.output, r.output
    assert np.abs(sf.read(tmp_path / "o.mp3", dtype="float32")[0]).max() > 8000
    # an ordinary full-scale recording at 44.1 kHz overshoots ±1 by a hair after resampling: no warning for that
    full = np.repeat(noisy_signal(1.0), 3)[:44100]
    sf.write(tmp_path / "full.wav", (full / np.abs(full).max() * 32767 / 32768).astype(np.float32), 44100,
             subtype="PCM_16")
    r = runner.invoke(app, ["denoise", str(tmp_path / "full.wav"), "-o", str(tmp_path / "full.flac"), "-m", str(path)])
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    # a hot recording, clipped at −0.1 dBFS: inside full scale, yet its denoised square-ish waves overshoot it
    hot = np.clip(noisy_signal(2.0, seed=1) * 6, -0.99, 0.99).astype(np.float32)
    sf.write(tmp_path / "hot.wav", hot, 16000, subtype="PCM_16")
    r = runner.invoke(app, ["denoise", str(tmp_path / "hot.wav"), "-o", str(tmp_path / "hot.wav.wav"), "-m", str(path)])
    kept = sf.read(tmp_path / "hot.wav.wav", dtype="float32")[0]
    assert r.exit_code == 0 and np.abs(kept).max() > 1.01, r.output  # float WAV keeps the overshoot, says nothing
    assert "warning" not in r.output
    r = runner.invoke(app, ["denoise", str(tmp_path / "hot.wav"), "-o", str(tmp_path / "hot.flac"), "-m", str(path)])
    over = int(np.count_nonzero(np.abs(kept) > 1.0))
    assert f"warning: {tmp_path / 'hot.flac'}: {over} samples beyond full scale (±1) were clipped (the loudest at " \
        f"{np.abs(kept).max():.2f})" in r.output
    r = runner.invoke(app, ["denoise", str(tmp_path / "hot.wav"), "-o", str(tmp_path / "hot.opus"), "-m", str(path)])
    assert f"warning: {tmp_path / 'hot.opus'}: {over} samples beyond full scale" in r.output  # Opus at 16 kHz clips


def test_a_wav_piped_in_through_dev_stdin_is_denoised_as_the_file(tmp_path):
    model = make_model(tmp_path)
    src = tmp_path / "in.wav"
    sf.write(src, noisy_signal(0.7), 22050)  # resampled on the way: more than one read
    ref = runner.invoke(app, ["denoise", str(src), "-o", str(tmp_path / "file.wav"), "-m", str(model)])
    assert ref.exit_code == 0, ref.output
    # `cat in.wav | rtpulse denoise /dev/stdin -o …`: a pipe cannot seek (SoundFile.blocks refused it)
    res = subprocess.run([sys.executable, "-m", "rtpulse.cli", "denoise", "/dev/stdin", "-o", str(tmp_path / "pipe.wav"),
                          "-m", str(model)], input=src.read_bytes(), capture_output=True, check=False, timeout=120)
    assert res.returncode == 0, res.stderr.decode()
    np.testing.assert_array_equal(sf.read(tmp_path / "pipe.wav")[0], sf.read(tmp_path / "file.wav")[0])
    # a WAV written to a pipe cannot have its sizes filled in: 0xFFFFFFFF, which libsndfile reads from a pipe as
    # 2^31 − 1 samples (read from a file, the file's size corrects it). The length is what the pipe held
    streamed = bytearray(src.read_bytes())
    streamed[4:8] = streamed[streamed.find(b"data") + 4 : streamed.find(b"data") + 8] = b"\xff\xff\xff\xff"
    res = subprocess.run([sys.executable, "-m", "rtpulse.cli", "denoise", "/dev/stdin", "-o", str(tmp_path / "s.wav"),
                          "-m", str(model)], input=bytes(streamed), capture_output=True, check=False, timeout=120)
    assert res.returncode == 0 and b"warning" not in res.stderr + res.stdout, res.stderr.decode()
    np.testing.assert_array_equal(sf.read(tmp_path / "s.wav")[0], sf.read(tmp_path / "file.wav")[0])
    # FLAC's decoder seeks: from a pipe it "lost sync"
    sf.write(tmp_path / "in.flac", sf.read(src, dtype="float32")[0], 22050)
    ref = runner.invoke(app, ["denoise", str(tmp_path / "in.flac"), "-o", str(tmp_path / "flac.wav"), "-m", str(model)])
    res = subprocess.run([sys.executable, "-m", "rtpulse.cli", "denoise", "/dev/stdin", "-o", str(tmp_path / "pf.wav"),
                          "-m", str(model)], input=(tmp_path / "in.flac").read_bytes(), capture_output=True,
                         check=False, timeout=120)
    assert ref.exit_code == 0 and res.returncode == 0, res.stderr.decode()
    np.testing.assert_array_equal(sf.read(tmp_path / "pf.wav")[0], sf.read(tmp_path / "flac.wav")[0])


def test_a_pipe_as_output_is_refused_and_an_unwritable_name_is_said_before_force(tmp_path):
    src = tmp_path / "in.wav"
    sf.write(src, noisy_signal(0.3), 16000)
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    for extra in ([], ["--force"]):  # renamed over, the pipe would be gone and its reader get nothing
        line = _one_line_error(runner.invoke(app, ["denoise", str(src), "-o", str(fifo), "-m",
                                                   str(make_model(tmp_path)), *extra]))
        assert f"output {fifo} is not a regular file" in line
    assert fifo.is_fifo()
    (tmp_path / "notes.txt").write_text("mine")  # exists, and is no audio name: not "pass --force to replace it"
    line = _one_line_error(runner.invoke(app, ["denoise", str(src), "-o", str(tmp_path / "notes.txt"), "-m",
                                               str(make_model(tmp_path))]))
    assert "unknown audio format '.txt'" in line and (tmp_path / "notes.txt").read_text() == "mine"
