"""benchmarks.mask_sharpness: the sharpness it picks, on spectra whose best sharpness is known."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import noisy_signal, random_model, write_selection_root

from benchmarks.mask_sharpness import GRID, Case, grid_scores, pick
from rtpulse.errors import RtpulseError
from rtpulse.model import load_model, save_model
from rtpulse.stft import istft


def _case_whose_clean_is_the_sharpness_2_mask(seed: int = 0) -> Case:
    """X = S·(1 + e^(2f)) with logits f = ±1 per bin: σ(−2f)·X = S exactly, so s = 2 recovers the clean signal and
    every other s leaves a residual."""
    g = torch.Generator().manual_seed(seed)
    s_spec = torch.complex(torch.randn(513, 40, generator=g), torch.randn(513, 40, generator=g))
    f = torch.where(torch.rand(513, 40, generator=g) > 0.5, torch.tensor(1.0), torch.tensor(-1.0))
    x_spec = s_spec * (1 + torch.exp(2 * f))
    n = 256 * 36
    return Case(f, x_spec, istft(x_spec, n), istft(s_spec, n))


def test_the_grid_peaks_at_the_sharpness_that_recovers_the_clean_signal():
    scores = grid_scores([_case_whose_clean_is_the_sharpness_2_mask(k) for k in range(2)])
    best = GRID[int(np.argmax(scores))]
    assert best == 2.0
    assert pick(GRID, scores) == 2.0
    assert scores[GRID.index(2.0)] > scores[GRID.index(1.75)] + 3  # an exact recovery is far ahead of its neighbours
    assert scores[GRID.index(2.0)] > scores[GRID.index(2.5)] + 3


def test_pick_prefers_the_gentlest_mask_within_the_tolerance():
    grid = (1.0, 1.5, 2.0, 3.0)
    assert pick(grid, [4.00, 4.40, 4.44, 4.30]) == 1.5  # 4.40 is within 0.05 dB of 4.44
    assert pick(grid, [4.00, 4.38, 4.44, 4.30]) == 2.0
    assert pick(grid, [4.00, 4.38, 4.44, 4.30], tolerance_db=0.0) == 2.0
    with pytest.raises(RtpulseError, match="non-finite"):
        pick(grid, [4.0, float("nan"), 4.4, 4.3])


def test_the_tool_writes_the_model_with_its_choice_and_never_overwrites(tmp_path):
    write_selection_root(tmp_path / "data", "train")
    model = tmp_path / "m.safetensors"
    save_model(random_model("blocks2", 2), model)
    out = tmp_path / "sharp.safetensors"
    cmd = [sys.executable, "-m", "benchmarks.mask_sharpness", "--data", str(tmp_path / "data"), "-m", str(model),
           "--count", "2", "--seconds", "1", "--write", str(out)]
    run = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    written = load_model(out).config
    chosen = written.mask_sharpness
    assert chosen in GRID
    assert written.mask == "soft"  # the source names "binary", which ignores the sharpness
    assert f"chosen: {chosen:g}" in run.stdout
    sel = load_model(out).config.extra["mask_sharpness_selection"]
    assert sel["split"] == "train" and sel["count"] == 2 and len(sel["si_snri"]) == len(GRID)
    assert max(sel["si_snri"]) - sel["si_snri"][GRID.index(chosen)] <= 0.05 + 1e-3
    before = out.read_bytes()
    again = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert again.returncode != 0 and "exists" in again.stderr and "Traceback" not in again.stderr
    assert out.read_bytes() == before
    mag = torch.rand(1, 513, 9)  # the weights are the source's: only the config changed
    assert torch.equal(load_model(out)(mag), load_model(model)(mag))


@pytest.mark.parametrize("split", ["dev", "test"])
def test_a_missing_split_is_a_one_line_error(tmp_path, split):
    model = tmp_path / "m.safetensors"
    save_model(random_model("blocks2", 0), model)
    run = subprocess.run([sys.executable, "-m", "benchmarks.mask_sharpness", "--data", str(tmp_path), "-m", str(model),
                          "--split", split], check=False, capture_output=True, text=True)
    assert run.returncode != 0 and f"speech/{split}" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("bad", ["write_under_a_file", "write_as_audio", "seed", "no_noise"])
def test_bad_arguments_are_one_line_errors_before_any_scoring(tmp_path, bad):
    model = tmp_path / "m.safetensors"
    save_model(random_model("blocks2", 0), model)
    for part in ("speech", "noise"):
        (tmp_path / "data" / part / "train").mkdir(parents=True)
    sf.write(tmp_path / "data/speech/train/s.wav", noisy_signal(4.5), 16000)
    (tmp_path / "afile").write_text("x")
    args = {"write_under_a_file": ["--write", str(tmp_path / "afile" / "out.safetensors")],
            "write_as_audio": ["--write", str(tmp_path / "out.wav")], "seed": ["--seed", "-1"], "no_noise": []}[bad]
    run = subprocess.run([sys.executable, "-m", "benchmarks.mask_sharpness", "--data", str(tmp_path / "data"),
                          "-m", str(model), "--count", "1", *args], check=False, capture_output=True, text=True)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert {"write_under_a_file": "afile", "write_as_audio": "name ends in .safetensors", "seed": "--seed",
            "no_noise": "no audio files"}[bad] in run.stderr
    assert "SI-SNRi" not in run.stdout
