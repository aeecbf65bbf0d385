"""benchmarks.paired: the per-file difference of two models, on hand-computed scores and a tiny data root."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import random_model, write_selection_root

from benchmarks.paired import paired_difference
from rtpulse.errors import RtpulseError
from rtpulse.model import save_model


def test_paired_difference_on_hand_computed_scores():
    mean, half, wins = paired_difference(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 5.0, 5.0]))
    # d = [1, 0, 2, 1]: mean 1, sample std √(2/3), t(0.975, 3) = 3.1824, half-width 3.1824 · √(2/3) / √4
    assert mean == pytest.approx(1.0)
    assert half == pytest.approx(3.1824 * (2 / 3) ** 0.5 / 2, abs=1e-3)
    assert wins == 3  # a tie is not a win
    with pytest.raises(RtpulseError, match="at least 2"):
        paired_difference(np.array([1.0]), np.array([2.0]))


def _data_root(tmp_path):
    return write_selection_root(tmp_path / "data", "dev")


def _run(*args):
    return subprocess.run([sys.executable, "-m", "benchmarks.paired", *map(str, args)],
                          check=False, capture_output=True, text=True)


def test_a_model_against_itself_differs_by_zero_and_another_sharpness_does_not(tmp_path):
    data, model = _data_root(tmp_path), tmp_path / "m.safetensors"
    save_model(random_model("blocks2", 2), model)
    same = _run(model, model, "--data", data, "--count", 3, "--seconds", 1)
    assert same.returncode == 0, same.stderr
    assert "B − A per file: +0.000 ± 0.000 (95 %), B ahead on 0 of 3" in same.stdout
    import re

    rows = re.findall(r"^\| (dev/n\d) \| (\d+) \| ([+-]\d+\.\d\d) \| \3 \|$", same.stdout, re.MULTILINE)
    assert rows and sum(int(k) for _, k, _ in rows) == 3  # the per-noise table: each recording, every file once
    other = _run(model, model, "--data", data, "--count", 3, "--seconds", 1, "--sharpness-b", 3)
    assert other.returncode == 0, other.stderr
    line = next(x for x in other.stdout.splitlines() if x.startswith("B − A"))
    assert not line.startswith("B − A per file: +0.000 ± 0.000")
    assert "(s = 3)" in other.stdout


@pytest.mark.parametrize(("bad", "words"), [("missing_model", "none.safetensors"), ("count", "--count must be 2…10000"),
                                            ("sharpness", "--sharpness must be"), ("no_split", "speech/test")])
def test_bad_arguments_are_one_line_errors(tmp_path, bad, words):
    data, model = _data_root(tmp_path), tmp_path / "m.safetensors"
    save_model(random_model("blocks2", 0), model)
    few = ["--count", 2, "--seconds", 1]  # the data root holds 3 voices: each case fails for its own reason only
    args = {"missing_model": [tmp_path / "none.safetensors", model, "--data", data, *few],
            "count": [model, model, "--data", data, "--count", 1],
            "sharpness": [model, model, "--data", data, "--sharpness-a", 0, *few],
            "no_split": [model, model, "--data", data, "--split", "test", *few]}[bad]
    run = _run(*args)
    assert run.returncode != 0 and "Traceback" not in run.stderr and words in run.stderr, run.stderr


@pytest.mark.parametrize("tool", ["benchmarks.paired", "benchmarks.mask_sharpness"])
def test_the_mixture_options_their_errors_suggest_exist(tmp_path, tool):
    data, model = _data_root(tmp_path), tmp_path / "m.safetensors"
    save_model(random_model("blocks2", 0), model)
    models = [model, model] if tool == "benchmarks.paired" else ["-m", model, "--split", "dev"]
    args = [*models, "--data", data, "--count", 2, "--seconds", 1]
    run = subprocess.run([sys.executable, "-m", tool, *map(str, args), "--min-speech-seconds", "1000"],
                         check=False, capture_output=True, text=True)
    assert run.returncode != 0 and "lower --min-speech-seconds" in run.stderr and "unrecognized" not in run.stderr
    run = subprocess.run([sys.executable, "-m", tool, *map(str, args), "--min-speech-seconds", "1",
                          "--reference-floor-db", "0"], check=False, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
