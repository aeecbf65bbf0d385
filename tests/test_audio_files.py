"""Audio files: .opus really holds Opus, and a header's absurd sample rate is refused before any resampling."""

import numpy as np
import pytest
import soundfile as sf

from rtpulse.audio import read_audio, write_audio
from rtpulse.errors import RtpulseError


def test_opus_output_is_opus_and_keeps_the_signal(tmp_path):
    t = np.arange(16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    write_audio(tmp_path / "x.opus", tone, 16000)
    info = sf.info(str(tmp_path / "x.opus"))
    assert (info.format, info.subtype) == ("OGG", "OPUS")  # Ogg's default would be Vorbis
    back, rate = read_audio(tmp_path / "x.opus")
    assert rate in (16000, 48000)  # libsndfile may decode Opus at 48 kHz
    spectrum = np.abs(np.fft.rfft(back[:, 0]))
    assert np.argmax(spectrum) * rate / back.shape[0] == pytest.approx(440, abs=2)


def test_opus_at_a_rate_it_cannot_store_is_a_one_line_error(tmp_path):
    with pytest.raises(RtpulseError, match="Opus stores 8, 12, 16, 24 or 48 kHz, this audio is 44100 Hz"):
        write_audio(tmp_path / "x.opus", np.zeros(441, np.float32), 44100)
    assert list(tmp_path.iterdir()) == []


def test_absurd_header_rate_is_refused(tmp_path):
    path = tmp_path / "r.wav"
    sf.write(str(path), np.zeros(100, np.float32), 16000, subtype="FLOAT")
    raw = bytearray(path.read_bytes())
    assert int.from_bytes(raw[24:28], "little") == 16000  # the fmt chunk's rate field
    raw[24:28] = (100_000_007).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(RtpulseError, match="claims 100000007 Hz"):
        read_audio(path)


def test_denoise_refuses_an_absurd_rate_and_an_opus_rate_before_work(tmp_path):
    from typer.testing import CliRunner

    from rtpulse.cli import app

    path = tmp_path / "r.wav"
    sf.write(str(path), np.zeros(100, np.float32), 16000, subtype="FLOAT")
    raw = bytearray(path.read_bytes())
    raw[24:28] = (100_000_007).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    res = CliRunner().invoke(app, ["denoise", str(path), "-o", str(tmp_path / "out.wav")])
    assert res.exit_code == 1 and "claims 100000007 Hz" in res.output and "Traceback" not in res.output
    sf.write(str(tmp_path / "cd.wav"), np.zeros(4410, np.float32), 44100)
    res = CliRunner().invoke(app, ["denoise", str(tmp_path / "cd.wav"), "-o", str(tmp_path / "out.opus")])
    assert res.exit_code == 1 and "Opus stores 8, 12, 16, 24 or 48 kHz, this audio is 44100 Hz" in res.output
    sf.write(str(tmp_path / "hi.wav"), np.zeros(9600, np.float32), 96000)
    res = CliRunner().invoke(app, ["denoise", str(tmp_path / "hi.wav"), "-o", str(tmp_path / "out.mp3")])
    assert res.exit_code == 1 and f"cannot write {tmp_path / 'out.mp3'}: MP3 stores 8 to 48 kHz" in res.output
    assert "this audio is 96000 Hz" in res.output and ".tmp-" not in res.output
    # DXD's 352.8 kHz as Vorbis: libvorbis would kill the process (SIGSEGV) and leave the temp file
    sf.write(str(tmp_path / "dxd.wav"), np.zeros(3528, np.float32), 352800)
    res = CliRunner().invoke(app, ["denoise", str(tmp_path / "dxd.wav"), "-o", str(tmp_path / "out.ogg")])
    assert res.exit_code == 1 and "Vorbis stores at most 200 kHz, this audio is 352800 Hz" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cd.wav", "dxd.wav", "hi.wav", "r.wav"]


def test_audio_files_are_found_through_linked_folders_once_and_a_link_loop_ends(tmp_path):
    from rtpulse.audio import find_audio_files

    noise, extra = tmp_path / "noise", tmp_path / "extra"
    (noise / "sub").mkdir(parents=True)
    extra.mkdir()
    for p in (noise / "a.wav", noise / "sub" / "b.FLAC", extra / "c.ogg", noise / "notes.txt"):
        p.write_bytes(b"x")
    (noise / "debian").symlink_to(extra, target_is_directory=True)  # the documented way to add noise
    (noise / "sub" / "loop").symlink_to(noise, target_is_directory=True)
    found = find_audio_files(noise)
    assert found == [noise / "a.wav", noise / "debian" / "c.ogg", noise / "sub" / "b.FLAC"]
    # a folder reached directly and through links before and after it by name: listed under its real path
    (noise / "alink").symlink_to(noise / "sub", target_is_directory=True)
    (noise / "zlink").symlink_to(noise / "sub", target_is_directory=True)
    assert find_audio_files(noise) == found
