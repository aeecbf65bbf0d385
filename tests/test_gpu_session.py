"""benchmarks.gpu_session on the CPU: a row and a candidate at once on a time budget, results in one tar."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf

from rtpulse.model import load_model

REPO = Path(__file__).resolve().parent.parent


def _data(root: Path) -> Path:
    rng = np.random.default_rng(3)
    t = np.arange(16000) / 16000
    for split in ("train", "dev"):
        for part in ("speech", "noise"):
            (root / part / split).mkdir(parents=True)
        for i in range(3):
            voice = 0.3 * np.sin(2 * np.pi * (170 + 50 * i) * t) * (np.sin(2 * np.pi * 2 * t) > 0)
            sf.write(root / "speech" / split / f"s{i}.wav", voice.astype(np.float32), 16000)
            sf.write(root / "noise" / split / f"n{i}.wav", (0.1 * rng.standard_normal(20000)).astype(np.float32), 16000)
    return root


def test_a_row_and_a_candidate_train_at_once_on_the_budget_and_come_back_in_one_tar(tmp_path):
    data, out, work = _data(tmp_path / "data"), tmp_path / "out", tmp_path / "work"
    tiny = ["--steps-per-epoch", "2", "--batch-size", "2", "--crop-seconds", "0.5", "--dev-count", "2",
            "--dev-seconds", "0.5"]
    table = [*tiny, "--preset", "blocks2", "--count", "2", "--seconds", "1", "--min-speech-seconds", "0.5",
             "--warmup-steps", "0"]
    argv = [sys.executable, "-m", "benchmarks.gpu_session", "--data", str(data), "--out", str(out), "--work", str(work),
            "--device", "cpu", "--minutes", "1e-5", "--rows", "pn-paper-L0", "--candidates", "ship-scratch",
            *(f"--table-arg={a}" for a in table), *(f"--ship-arg={a}" for a in tiny)]
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    res = subprocess.run(argv, check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "decoded 12 files" in res.stdout  # the cache was filled once, before the runs
    assert "pn-paper-L0: exit 0" in res.stdout and "ship-scratch: exit 0" in res.stdout and "table: exit 0" in res.stdout
    with tarfile.open(out / "gpu_session.tar") as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "back", filter="data")
    back = tmp_path / "back"
    assert not [n for n in names if "ckpt" in n]  # optimizer states stay behind: at most 8 files come back
    assert "PN (supervised), L=0" in (back / "table" / "training_table.md").read_text()
    assert json.loads((back / "table" / "rows" / "pn-paper-L0.json").read_text())["steps"] == 2
    assert sorted(p.name for p in (back / "table" / "rows").iterdir()) == ["pn-paper-L0.json"]  # no other row trained
    for run in (back / "table" / "runs" / "pn-paper-L0", back / "ship-scratch"):
        config = json.loads((run / "config.json").read_text())
        assert (config["epochs"], config["minutes"]) == (1, None)  # 0.6 ms holds one epoch: the plan ran
    model = load_model(back / "ship-scratch" / "best.safetensors")
    assert (model.config.preset, model.config.lookahead, model.config.freq_input) == ("paper", 2, True)
    assert (back / "logs" / "ship-scratch.log").read_text().startswith(sys.executable)
    again = subprocess.run(argv, check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert again.returncode == 2 and f"--work {work} is not empty" in again.stderr  # not last call's runs as this one's


def test_a_run_past_the_deadline_is_stopped_and_the_rest_still_comes_back(tmp_path):
    data, out, work = _data(tmp_path / "data"), tmp_path / "out", tmp_path / "work"
    slow = ["--steps-per-epoch", "100000", "--batch-size", "2", "--crop-seconds", "0.5", "--dev-count", "2",
            "--dev-seconds", "0.5"]  # an epoch far longer than the 15 s deadline
    argv = [sys.executable, "-m", "benchmarks.gpu_session", "--data", str(data), "--out", str(out), "--work", str(work),
            "--device", "cpu", "--minutes", "10", "--stop-after", "0.25", "--rows", "", "--candidates", "ship-scratch",
            *(f"--ship-arg={a}" for a in slow)]
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    res = subprocess.run(argv, check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert res.returncode == 1 and "ship-scratch: exit stopped at the deadline" in res.stdout, res.stdout + res.stderr
    with tarfile.open(out / "gpu_session.tar") as tar:
        assert "logs/ship-scratch.log" in tar.getnames()  # what there is still comes back
