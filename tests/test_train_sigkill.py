"""Reliability: `rtpulse train` killed with SIGKILL mid-epoch, then resumed, ends bit-identical to an
uninterrupted run. Real subprocesses (CPU, one thread), tiny generated audio in tmp_path."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_corpus

from rtpulse.model import load_model
from trainer.checkpoint import load_checkpoint

STEPS = 20  # per epoch: ~1.5 s of CPU here, so "mid-epoch" has room on either side of the kill
EPOCHS = 3
KILL_AT = 0.3  # kill after this fraction of epoch 1's training time has been spent (as CPU time) in epoch 2
TIMEOUT = 120  # seconds; only a hang hits this
# a warm-up and a cosine schedule, so a scheduler that did not resume would change the weights
_REST = "--dev-seconds 0.25 --dev-fraction 0.34 --seed 3 --device cpu --warmup-steps 5 --lr-schedule cosine"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_tiny_corpus(root)
    return root


def _train(tmp_path, *args: str, log: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(tmp_path / log, "wb") as out:  # a file, not a pipe: a full pipe would stall the trainer
        return subprocess.Popen(
            [sys.executable, "-m", "rtpulse.cli", "train", *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )


def _new_run(corpus, tmp_path, run) -> list[str]:
    paths = ["--out", str(run), "--clean", str(corpus / "clean"), "--noise", str(corpus / "noise")]
    # default dropout (0.2) on: its random stream has to resume exactly too
    sizes = f"--epochs {EPOCHS} --steps-per-epoch {STEPS} --batch-size 2 --crop-seconds 0.1 --dev-count 2"
    return [*paths, "--cache", str(tmp_path / "cache"), *sizes.split(), *_REST.split()]


def _finish(proc: subprocess.Popen, tmp_path, log: str) -> None:
    try:
        rc = proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, (tmp_path / log).read_text(errors="replace")[-3000:]


def _cpu_seconds(pid: int) -> float:
    """The process's CPU time (utime + stime); wall time where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return time.monotonic()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _epochs(metrics: Path) -> list[dict]:
    """The complete lines of metrics.jsonl (one per finished epoch); a line still being written is left out."""
    text = metrics.read_text() if metrics.exists() else ""
    return [json.loads(x) for x in text.split("\n")[:-1] if x.strip()]


def _kill_inside_epoch_2(proc: subprocess.Popen, run, tmp_path) -> None:
    """Wait for epoch 1's metrics line (written just before its checkpoint), then for epoch 2 to do ~30 % of an
    epoch's work, measured in the trainer's own CPU time so a loaded machine does not shift the kill."""
    deadline = time.monotonic() + TIMEOUT
    while not _epochs(run / "metrics.jsonl"):
        assert proc.poll() is None, "trainer exited early: " + (tmp_path / "killed.log").read_text(errors="replace")
        assert time.monotonic() < deadline, "epoch 1 never finished"
        time.sleep(0.02)
    start = _cpu_seconds(proc.pid)
    budget = KILL_AT * _epochs(run / "metrics.jsonl")[0]["train_seconds"]
    while _cpu_seconds(proc.pid) - start < budget:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def _visible_checkpoint_files(run) -> list:
    """Everything a user or the resumer could take for a checkpoint or model file (temp files start with '.')."""
    return sorted(p for p in [*(run / "ckpt").iterdir(), *run.glob("*.safetensors")] if not p.name.startswith("."))


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(corpus, tmp_path):
    killed, full = tmp_path / "killed", tmp_path / "full"
    proc = _train(tmp_path, *_new_run(corpus, tmp_path, killed), log="killed.log")
    try:
        _kill_inside_epoch_2(proc, killed, tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # it died inside epoch 2: epoch 1 complete on disk, nothing of epoch 2, no half-written file on show
    assert [r["epoch"] for r in _epochs(killed / "metrics.jsonl")] == [1]
    names = {p.name for p in _visible_checkpoint_files(killed)}
    assert names == {"epoch-0001.safetensors", "epoch-0001.state.pt", "best.safetensors", "last.safetensors"}
    for p in _visible_checkpoint_files(killed):
        if p.suffix == ".safetensors":
            assert load_model(p).config.extra["epoch"] == 1, p.name
    _, state = load_checkpoint(killed)
    assert (state["epoch"], state["step"]) == (1, STEPS)

    proc = _train(tmp_path, "--resume", str(killed), "--epochs", str(EPOCHS), log="resume.log")
    _finish(proc, tmp_path, "resume.log")
    proc = _train(tmp_path, *_new_run(corpus, tmp_path, full), log="full.log")
    _finish(proc, tmp_path, "full.log")

    a, b = load_model(full / "last.safetensors"), load_model(killed / "last.safetensors")
    assert a.config.extra["epoch"] == b.config.extra["epoch"] == EPOCHS
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    _, st_a = load_checkpoint(full)
    _, st_b = load_checkpoint(killed)
    assert (st_a["epoch"], st_a["step"]) == (st_b["epoch"], st_b["step"]) == (EPOCHS, EPOCHS * STEPS)
    for pa, pb in zip(st_a["optimizer"]["state"].values(), st_b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    # the resumed log has each epoch once, with the same training losses as the uninterrupted run
    ra, rb = _epochs(full / "metrics.jsonl"), _epochs(killed / "metrics.jsonl")
    assert [r["epoch"] for r in rb] == [1, 2, 3]
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]
    assert [r["step"] for r in rb] == [STEPS, 2 * STEPS, 3 * STEPS]
