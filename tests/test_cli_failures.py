"""The commands when things go wrong outside the input files: a full disk while a checkpoint is saved, stdout closed
or full under `eval`, Ctrl-C during training, two trainers in one run folder, file names that are not UTF-8."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import noisy_signal, random_model, write_tiny_corpus
from typer.testing import CliRunner

from rtpulse.cli import app
from rtpulse.errors import RtpulseError
from rtpulse.model import save_model

TIMEOUT = 120  # seconds; only a hang hits this


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_tiny_corpus(root)
    return root


def _train_args(corpus, tmp_path, run, *extra: str) -> list[str]:
    return ["train", "--out", str(run), "--clean", str(corpus / "clean"), "--noise", str(corpus / "noise"),
            "--cache", str(tmp_path / "cache"), "--steps-per-epoch", "2", "--batch-size", "2", "--crop-seconds",
            "0.1", "--dev-count", "2", "--dev-seconds", "0.25", "--dev-fraction", "0.34", "--dropout", "0",
            "--device", "cpu", *extra]


def _cli(*args: str, prelude: str = "", **kw) -> subprocess.Popen:
    """``rtpulse ARGS`` in a process of its own (one thread), SIGINT as a terminal delivers it."""
    start = "; ".join(filter(None, ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler)",
                                    prelude, "from rtpulse.cli import app; app()")))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", start, *args], env=env, text=True, **kw)


def _temps(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob(".*") if ".tmp-" in p.name)


def test_a_full_disk_while_the_training_state_is_saved_is_one_line_and_leaves_no_temp(corpus, tmp_path):
    """torch.save into a file turns a failed write into a RuntimeError ("enforce fail at inline_container.cc"), which
    no one-line error path caught: a traceback. Files past 100 kB fail here (RLIMIT_FSIZE, a full disk's stand-in
    that needs no mount): the model files (75 kB) are written, the state with Adam's moments (160 kB) is not."""
    run = tmp_path / "run"
    limit = "import resource; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); " \
            "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))"
    proc = _cli(*_train_args(corpus, tmp_path, run, "--epochs", "1"), prelude=limit, stderr=subprocess.PIPE)
    err = proc.communicate(timeout=TIMEOUT)[1]
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"error: cannot write {run}/ckpt/epoch-0001.state.pt: File too large"
    assert _temps(run) == []
    assert not list((run / "ckpt").glob("*.state.pt"))  # the epoch is not marked complete: the command starts over


def test_denoise_on_a_full_disk_or_an_unwritable_folder_says_why_in_one_line(tmp_path):
    """libsndfile's failed write() or open() reached the user as "cannot write y.wav: System error.": soundfile keeps
    only its generic text. Files past 20 kB fail here (RLIMIT_FSIZE, the full disk's stand-in); /proc takes no files."""
    model, src = tmp_path / "m.safetensors", tmp_path / "x.wav"
    save_model(random_model("blocks2", 0), model)
    sf.write(src, noisy_signal(0.5), 16000)  # 32 kB of float samples out
    limit = "import resource; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); " \
            "resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))"
    for dst, reason, prelude in ((tmp_path / "y.wav", "File too large", limit),
                                 (Path("/proc/y.wav"), "No such file or directory", "")):
        proc = _cli("denoise", str(src), "-o", str(dst), "-m", str(model), prelude=prelude, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT)
        out = proc.communicate(timeout=TIMEOUT)[0]
        assert proc.returncode == 1 and out.strip().splitlines() == [f"error: cannot write {dst}: {reason}"], out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "x.wav"]  # no temp file left


def test_a_finished_run_whose_plot_cannot_be_written_reports_its_summary_and_a_warning(corpus, tmp_path, monkeypatch):
    """The closing training.png is drawn after every epoch and checkpoint is saved: a plot that could not be written
    failed the run (exit 1, naming the hidden temp file .training.png.tmp-PID.png) and its summary line was lost."""
    import trainer.loop

    run = tmp_path / "run"
    real = trainer.loop.run_epochs

    def then_block_the_plot(*args, **kwargs):
        summary = real(*args, **kwargs)
        (run / "training.png").mkdir()  # the rename over it fails: "Is a directory"
        return summary

    monkeypatch.setattr(trainer.loop, "run_epochs", then_block_the_plot)
    res = CliRunner().invoke(app, _train_args(corpus, tmp_path, run, "--epochs", "1"))
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert f"warning: cannot write {run}/training.png: Is a directory" in lines, res.output
    assert lines[-1].startswith("trained 1 epochs") and lines[-1].endswith(f"→ {run}/best.safetensors")
    assert _temps(run) == []


@pytest.fixture()
def scored_pair(tmp_path):
    for d in ("noisy", "clean"):
        (tmp_path / d).mkdir()
    sf.write(tmp_path / "noisy" / "a.wav", noisy_signal(0.5), 16000)
    sf.write(tmp_path / "clean" / "a.wav", noisy_signal(0.5, seed=1), 16000)
    model = tmp_path / "m.safetensors"
    save_model(random_model("blocks2", 0), model)
    return ["eval", "-m", str(model), "--noisy", str(tmp_path / "noisy"), "--clean", str(tmp_path / "clean")]


def test_eval_writes_its_json_though_stdout_is_closed(scored_pair, tmp_path):
    """`rtpulse eval … --json s.json | head -1`: rich exits 1 on the broken pipe, and the table was printed before
    the file was written, so the scores were lost with it."""
    out = tmp_path / "s.json"
    proc = _cli(*scored_pair, "--json", str(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the table comes
    err = proc.communicate(timeout=TIMEOUT)[1]
    assert "Traceback" not in err
    assert json.loads(out.read_text())["files"][0]["name"] == "a"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_eval_on_a_full_stdout_keeps_the_json_and_says_so_in_one_line(scored_pair, tmp_path):
    out = tmp_path / "s.json"
    with open("/dev/full", "w") as full:
        proc = _cli(*scored_pair, "--json", str(out), stdout=full, stderr=subprocess.PIPE)
        err = proc.communicate(timeout=TIMEOUT)[1]
    assert proc.returncode == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [f"error: cannot print the scores: No space left on device (they are in {out})"]
    assert json.loads(out.read_text())["files"][0]["name"] == "a"


def test_eval_refuses_a_json_folder_it_cannot_write_before_scoring(scored_pair, tmp_path, monkeypatch):
    def read_only(path):
        raise RtpulseError(f"cannot write into {path}: Read-only file system")

    monkeypatch.setattr("rtpulse.files.probe_writable_dir", read_only)
    monkeypatch.setattr("trainer.evaluate.evaluate_pairs", lambda *a: pytest.fail("scored before the folder was tried"))
    res = CliRunner().invoke(app, [*scored_pair, "--json", str(tmp_path / "ro" / "s.json")])
    assert res.exit_code == 1 and "Read-only file system" in res.output


def test_ctrl_c_in_training_says_in_one_line_how_to_go_on_and_the_run_resumes(corpus, tmp_path):
    run = tmp_path / "run"
    args = _train_args(corpus, tmp_path, run, "--epochs", "50", "--steps-per-epoch", "10")
    proc = _cli(*args, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (run / "ckpt" / "epoch-0001.state.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "epoch 1 never finished"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=TIMEOUT)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"interrupted (Ctrl-C): its finished epochs are kept: rtpulse train "
                                           f"--resume {run} goes on")
    assert _temps(run) == []
    res = CliRunner().invoke(app, ["train", "--resume", str(run), "--epochs", "2"])
    assert res.exit_code == 0, res.output
    assert [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def _hold(folder: Path) -> int:
    """What another trainer running in ``folder`` holds."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_second_trainer_in_a_run_folder_is_refused(corpus, tmp_path, monkeypatch):
    """Two `rtpulse train --out R` at once (or a --resume while R still trains) both passed the checks and wrote
    every epoch's line and checkpoint twice, interleaved."""
    run = tmp_path / "run"
    run.mkdir()
    fd = _hold(run)
    try:
        res = CliRunner().invoke(app, _train_args(corpus, tmp_path, run, "--epochs", "1"))
    finally:
        os.close(fd)
    assert res.exit_code == 1 and f"{run} is in use by another rtpulse train" in res.output, res.output
    assert list(run.iterdir()) == []
    # the folder made by the other trainer while this one decoded (both started with no folder there)
    import trainer.train

    real = trainer.train.build_data
    held = []

    def other_trainer_starts(*a, **kw):
        out = real(*a, **kw)
        (tmp_path / "new").mkdir()
        held.append(_hold(tmp_path / "new"))
        return out

    monkeypatch.setattr(trainer.train, "build_data", other_trainer_starts)
    try:
        res = CliRunner().invoke(app, _train_args(corpus, tmp_path, tmp_path / "new", "--epochs", "1"))
    finally:
        for fd in held:
            os.close(fd)
    assert res.exit_code == 1 and "is in use by another rtpulse train" in res.output, res.output
    assert list((tmp_path / "new").iterdir()) == []


def test_a_file_name_that_is_not_utf8_is_decoded_into_the_cache(tmp_path):
    """The cache key was the path's text .encode()d: a Latin-1 name (surrogates in Python) raised
    UnicodeEncodeError, a traceback from `train`, `eval --synth` and `bench`."""
    from trainer.data import decode_cached

    name = os.fsdecode(b"caf\xe9.wav")
    try:
        sf.write(os.fsencode(tmp_path / name), noisy_signal(0.2), 16000, subtype="FLOAT")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    x = decode_cached(tmp_path / name, tmp_path / "cache")
    np.testing.assert_allclose(x, noisy_signal(0.2), atol=1e-6)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    np.testing.assert_array_equal(decode_cached(tmp_path / name, tmp_path / "cache"), x)  # read back from it


def test_a_run_folder_that_cannot_be_written_is_refused_before_decoding(corpus, tmp_path, monkeypatch):
    """A read-only disk or an unmakeable --out was found when config.json was written, after the decoding."""
    monkeypatch.setattr("trainer.train.build_data", lambda *a, **kw: pytest.fail("decoded before the folder was tried"))
    res = CliRunner().invoke(app, _train_args(corpus, tmp_path, "/proc/rtpulse-run", "--epochs", "1"))
    assert res.exit_code == 1 and "error: cannot write into /proc/rtpulse-run" in res.output, res.output
    new = tmp_path / "new" / "run"
    def stop(*a, **kw):
        raise RtpulseError("stopped after the probe")

    monkeypatch.setattr("trainer.train.build_model", stop)
    res = CliRunner().invoke(app, _train_args(corpus, tmp_path, new, "--epochs", "1"))
    assert "stopped after the probe" in res.output, res.output
    assert not (tmp_path / "new").exists()  # the probe leaves no folder behind
