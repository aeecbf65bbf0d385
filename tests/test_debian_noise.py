"""trainer.debian_noise: which files it keeps, the leak check against dev recordings, and a build from a real .deb."""

import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rtpulse.audio import load_mono
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


def test_normalised_xcorr_finds_a_copy_at_any_gain_and_offset_and_not_unrelated_noise():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal(40_000)
    piece = 0.01 * reference[12_345:12_345 + 8_000]  # another gain, another start
    assert dn.max_normalised_xcorr(piece, reference) == pytest.approx(1.0, abs=1e-6)
    noisy_piece = piece + 0.01 * rng.standard_normal(8_000)  # the copy at 0 dB SNR: r = 1/sqrt(2)
    assert dn.max_normalised_xcorr(noisy_piece, reference) == pytest.approx(2**-0.5, abs=0.03)
    unrelated = rng.standard_normal(8_000)
    assert dn.max_normalised_xcorr(unrelated, reference) < 0.06  # ≈ 4.5/sqrt(8000) at most over 32k lags


def test_leaks_compares_at_the_file_rate():
    rng = np.random.default_rng(1)
    dev = rng.standard_normal(6 * SAMPLE_RATE).astype(np.float32)
    references = [dn._unit(dn.resample(dev, SAMPLE_RATE, dn.LEAK_RATE))]
    # a training file that holds 3 s of the dev recording after 4 s of other noise
    shared = np.concatenate([rng.standard_normal(4 * SAMPLE_RATE), dev[SAMPLE_RATE:4 * SAMPLE_RATE]]).astype(np.float32)
    assert dn.leaks(shared, references) > (dn.LEAK_CORR, 0)
    other = rng.standard_normal(7 * SAMPLE_RATE).astype(np.float32)
    assert dn.leaks(other, references)[0] < 0.1


def _deb(tmp: Path, package: str, files: dict[str, np.ndarray]) -> Path:
    root = tmp / "pkgroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.2-3\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n")
    for inner, x in files.items():
        (root / inner).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / inner, x, 22050)
    debs = tmp / "debs"
    debs.mkdir()
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(debs / f"{package}_1.2-3_all.deb")],
                   check=True, capture_output=True)
    return debs


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")
def test_build_keeps_wanted_files_once_and_leaves_out_short_ones_and_dev_copies(tmp_path):
    rng = np.random.default_rng(2)
    rain = (0.1 * rng.standard_normal(5 * 22050)).astype(np.float32)
    dev_recording = (0.1 * rng.standard_normal(8 * 22050)).astype(np.float32)
    debs = _deb(tmp_path, "fake-data", {
        "usr/share/fake/ambient/rain.wav": rain,
        "usr/share/fake/ambient/rain_copy.wav": rain,  # byte-identical: kept once
        "usr/share/fake/ambient/click.wav": rain[:22050],  # 1 s: an event, not a background
        "usr/share/fake/ambient/fire.wav": dev_recording[22050:6 * 22050],  # 5 s of a dev recording
        "usr/share/fake/voices/hello.wav": rain,  # not under the pattern
    })
    dev = tmp_path / "dev"
    dev.mkdir()
    sf.write(dev / "fireplace.wav", dev_recording, 22050)
    source = dn.Source("fake-data", "CC0", ("*/ambient/*",))
    out = tmp_path / "out"
    rows = dn.build(out, debs, dev, sources=(source,))

    assert [r["source_file"] for r in rows] == ["usr/share/fake/ambient/rain.wav"]
    assert rows[0]["version"] == "1.2-3" and rows[0]["licence"] == "CC0"
    written = out / rows[0]["path"]
    assert written.suffix == ".flac" and sf.info(written).samplerate == SAMPLE_RATE
    expected = load_mono(tmp_path / "pkgroot/usr/share/fake/ambient/rain.wav", SAMPLE_RATE)
    assert np.max(np.abs(load_mono(written, SAMPLE_RATE) - expected)) < 1e-4  # FLAC's 16-bit step
    assert float(rows[0]["seconds"]) == pytest.approx(5.0, abs=0.01)
    with open(out / "manifest.csv") as f:
        assert list(csv.DictReader(f)) == rows
