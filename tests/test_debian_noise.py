"""trainer.debian_noise: which files it keeps, the leak check against dev recordings, and a build from a real .deb."""

import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rtpulse.audio import load_mono
from rtpulse.errors import RtpulseError
from rtpulse.stft import SAMPLE_RATE
from trainer import debian_noise as dn


def test_patterns_keep_ambiences_and_leave_out_voices_and_animal_calls():
    glest = next(s for s in dn.SOURCES if s.package == "megaglest-data")
    assert dn.wanted(glest, "/usr/share/games/megaglest/tilesets/forest/sounds/night.ogg")
    assert not dn.wanted(glest, "/usr/share/games/megaglest/tilesets/forest/sounds/wolf.wav")
    assert not dn.wanted(glest, "/usr/share/games/megaglest/techs/megapack/factions/tech/units/worker/sounds/ack.wav")
    assert not dn.wanted(glest, "/usr/share/games/megaglest/tilesets/forest/sounds/night.txt")
    lincity = next(s for s in dn.SOURCES if s.package == "lincity-ng-data")
    assert dn.wanted(lincity, "/usr/share/games/lincity-ng/sounds/TraficHigh1.wav")
    assert not dn.wanted(lincity, "/usr/share/games/lincity-ng/sounds/SportsCroud1.wav")  # a crowd: voices
    flare = next(s for s in dn.SOURCES if s.package == "flare-game")
    kart = next(s for s in dn.SOURCES if s.package == "supertuxkart-data")
    assert dn.wanted(flare, "/usr/share/games/flare/soundfx/environment/rain.ogg")
    assert dn.wanted(kart, "/usr/share/games/supertuxkart/data/sfx/river_loop.ogg")
    for source, inner in ((flare, "/usr/share/games/flare/soundfx/environment/birds.ogg"),  # birdsong: tonal calls
                          (kart, "/usr/share/games/supertuxkart/data/sfx/exotic-birds.ogg")):
        assert not dn.wanted(source, inner)


def test_correlation_finds_a_copy_at_any_gain_offset_and_dc_and_not_unrelated_noise():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal(40_000)
    piece = 0.01 * reference[12_345:12_345 + 8_000] + 3.0  # another gain, another start, a DC offset
    assert dn.max_normalised_xcorr(piece, reference) == pytest.approx(1.0, abs=1e-6)
    assert dn.max_normalised_xcorr(reference, piece) == pytest.approx(1.0, abs=1e-6)  # either way round
    noisy_piece = piece + 0.01 * rng.standard_normal(8_000)  # the copy at 0 dB SNR: r = 1/sqrt(2)
    assert dn.max_normalised_xcorr(noisy_piece, reference) == pytest.approx(2**-0.5, abs=0.03)
    unrelated = rng.standard_normal(8_000)
    assert dn.max_normalised_xcorr(unrelated, reference) < 0.06  # ≈ 4.5/sqrt(8000) at most over 32k lags


def test_silent_windows_match_nothing():
    rng = np.random.default_rng(3)
    click = np.zeros(4_000)
    click[2_000] = 1.0
    reference = np.concatenate([np.zeros(10_000), rng.standard_normal(10_000)])  # silence, then noise
    assert dn.max_normalised_xcorr(click, reference) < 0.1  # the onset alone would give ≈ 1 without the floor
    assert dn.max_normalised_xcorr(np.zeros(100), reference) == 0.0


def _write(path: Path, x: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, rate)
    return path


def test_leaks_names_the_dev_recording_a_file_shares(tmp_path):
    rng = np.random.default_rng(1)
    dev = rng.standard_normal((2, 6 * SAMPLE_RATE)).astype(np.float32)
    _write(tmp_path / "dev/a.wav", dev[0])
    _write(tmp_path / "dev/b.wav", dev[1])
    references, files = dn.leak_reference(tmp_path / "dev")
    assert [f.name for f in files] == ["a.wav", "b.wav"]
    # a training file that holds 3 s of dev recording b after 4 s of other noise
    shared = np.concatenate([rng.standard_normal(4 * SAMPLE_RATE), dev[1, SAMPLE_RATE:4 * SAMPLE_RATE]])
    corr, which = dn.leaks(shared.astype(np.float32), references)
    assert corr > 0.9 and which == 1
    other = rng.standard_normal(7 * SAMPLE_RATE).astype(np.float32)
    assert dn.leaks(other, references)[0] < 0.1


def test_dev_folder_without_usable_audio_is_a_one_line_error(tmp_path):
    _write(tmp_path / "dev/short.wav", np.ones(100, dtype=np.float32))  # 6 ms: nothing to check against
    with pytest.raises(RtpulseError, match="no audio file of 1 s or more"):
        dn.leak_reference(tmp_path / "dev")


def _deb(tmp: Path, package: str, files: dict[str, np.ndarray | bytes]) -> Path:
    """A real .deb holding ``files`` (arrays as 22.05 kHz audio, bytes as they are), named as apt names an epoch."""
    root = tmp / "pkgroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 2:1.2-3\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n")
    for inner, x in files.items():
        (root / inner).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(x, bytes):
            (root / inner).write_bytes(x)
        else:
            sf.write(root / inner, x, 22050)
    debs = tmp / "debs"
    debs.mkdir()
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(debs / f"{package}_2%3a1.2-3_all.deb")],
                   check=True, capture_output=True)
    return debs


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")
def test_build_keeps_wanted_files_once_and_leaves_out_short_broken_and_dev_copies(tmp_path, capsys):
    rng = np.random.default_rng(2)
    rain = (0.1 * rng.standard_normal(5 * 22050)).astype(np.float32)
    dev_recording = (0.1 * rng.standard_normal(8 * 22050)).astype(np.float32)
    debs = _deb(tmp_path, "fake-data", {
        "usr/share/fake/ambient/rain.wav": rain,
        "usr/share/fake/ambient/rain_copy.wav": rain,  # byte-identical: kept once
        "usr/share/fake/ambient/rain.flac": rain[::-1].copy(),  # same stem as rain.wav: must not overwrite it
        "usr/share/fake/ambient/click.wav": rain[:22050],  # 1 s: an event, not a background
        "usr/share/fake/ambient/fire.wav": dev_recording[22050:6 * 22050],  # 5 s of a dev recording
        "usr/share/fake/ambient/broken.ogg": b"OggS not really",  # unreadable: skipped, the rest goes on
        "usr/share/fake/voices/hello.wav": rain,  # not under the pattern
    })
    dev = tmp_path / "dev"
    dev.mkdir()
    sf.write(dev / "fireplace.wav", dev_recording, 22050)
    source = dn.Source("fake-data", "CC0", ("*/ambient/*",))
    out = tmp_path / "out"
    rows = dn.build(out, debs, dev, sources=(source,))

    assert [r["source_file"] for r in rows] == ["usr/share/fake/ambient/rain.flac", "usr/share/fake/ambient/rain.wav"]
    assert {r["version"] for r in rows} == {"2:1.2-3"} and {r["licence"] for r in rows} == {"CC0"}
    err = capsys.readouterr().err
    assert "fire.wav matches" in err and "fireplace.wav" in err and "broken.ogg" in err
    for row, name in zip(rows, ["rain.flac", "rain.wav"]):
        written = out / row["path"]
        assert written.suffix == ".flac" and sf.info(written).samplerate == SAMPLE_RATE
        expected = load_mono(tmp_path / "pkgroot/usr/share/fake/ambient" / name, SAMPLE_RATE)
        assert np.max(np.abs(load_mono(written, SAMPLE_RATE) - expected)) < 1e-4  # FLAC's 16-bit step
        assert float(row["seconds"]) == pytest.approx(5.0, abs=0.01)
    with open(out / "manifest.csv") as f:
        assert list(csv.DictReader(f)) == rows
    assert all(0 < float(r["dev_xcorr"]) < dn.LEAK_CORR for r in rows)  # checked, and below the bar
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []  # no staging folder left

    with pytest.raises(RtpulseError, match="not empty"):  # a rebuild must not keep files it would now leave out
        dn.build(out, debs, dev, sources=(source,))


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")
def test_a_broken_deb_is_a_one_line_error_naming_the_file_to_delete(tmp_path):
    debs = tmp_path / "debs"
    debs.mkdir()
    (debs / "fake-data_1.0_all.deb").write_bytes(b"!<arch>\ncut short")
    with pytest.raises(RtpulseError, match="delete .*fake-data_1.0_all.deb"):
        dn.build(tmp_path / "out", debs, None, sources=(dn.Source("fake-data", "CC0", ("*",)),))
    assert not (tmp_path / "out").exists()
