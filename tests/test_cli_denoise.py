import numpy as np
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
    for cmd in (["--help"], ["denoise", "--help"]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 0 and "Usage" in r.output


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
