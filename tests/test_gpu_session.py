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


def _wheel(folder: Path, name: str, tag: str, module: str, source: str) -> Path:
    """A minimal wheel that pip installs offline: one module, METADATA, WHEEL and RECORD."""
    import zipfile

    info = f"{name}-0.0.1.dist-info"
    path = folder / f"{name}-0.0.1-{tag}.whl"
    files = {f"{module}.py": source, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n",
             f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: {tag}\n"}
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return path


def test_soundfile_installs_from_a_pack_that_also_holds_wheels_for_other_pythons(tmp_path, monkeypatch):
    # the pack carries cffi for several Pythons (the device's cannot be checked beforehand); pip given every file
    # refuses them all for the one this Python cannot load, and the one device call is lost before it starts
    import sysconfig

    from benchmarks.gpu_session import install_wheels

    wheels = tmp_path / "pack" / "wheels"
    wheels.mkdir(parents=True)
    here = f"cp{sys.version_info.major}{sys.version_info.minor}"
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    _wheel(wheels, "soundfile", "py3-none-any", "soundfile", "import fake_cffi_backend\nFAKE = True\n")
    _wheel(wheels, "cffi", f"{here}-{here}-{platform}", "fake_cffi_backend", "")
    _wheel(wheels, "cffi", f"cp399-cp399-{platform}", "fake_cffi_backend", "raise ImportError('wrong Python')\n")
    shadow = tmp_path / "shadow"  # this Python "lacks" soundfile, as the device image does
    shadow.mkdir()
    (shadow / "soundfile.py").write_text("raise ImportError('no soundfile here')\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow))
    site = tmp_path / "site"
    assert install_wheels(tmp_path / "pack", site) == site
    assert (site / "soundfile.py").is_file() and (site / "fake_cffi_backend.py").read_text() == ""


def test_a_row_stopped_at_the_deadline_takes_its_children_with_it(tmp_path):
    # a table row is `bench training`, whose `rtpulse train` is its child: stopping the parent alone left the
    # trainer running on the GPU (and writing into the folder being packed)
    from benchmarks.gpu_session import STOPPED, child_env, run_all

    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
            f"open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(120)")
    import time

    started = time.monotonic()
    codes = run_all({"row": [sys.executable, "-c", code]}, tmp_path / "logs", child_env(None), time.monotonic() + 5)
    assert codes == {"row": STOPPED} and time.monotonic() - started < 60
    child = int(pid_file.read_text())
    try:
        status = Path(f"/proc/{child}/status")
        alive = status.exists() and "\nState:\tZ" not in status.read_text()
        assert not alive, "the row's child outlived the deadline"
    finally:
        try:
            os.kill(child, 9)
        except ProcessLookupError:
            pass


def test_a_decode_that_fails_still_packs_the_logs(tmp_path):
    # the cache warm-up is a head start: its failure (here a file that is no audio) must not end the call before
    # anything is packed; the runs meet the same file and say so in their logs, which come back
    data, out, work = _data(tmp_path / "data"), tmp_path / "out", tmp_path / "work"
    (data / "noise" / "train" / "bad.wav").write_bytes(b"RIFF not audio at all")
    argv = [sys.executable, "-m", "benchmarks.gpu_session", "--data", str(data), "--out", str(out), "--work", str(work),
            "--device", "cpu", "--minutes", "1e-5", "--rows", "", "--candidates", "ship-scratch",
            "--ship-arg=--steps-per-epoch=1", "--ship-arg=--batch-size=1"]
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    res = subprocess.run(argv, check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert res.returncode == 1 and "ship-scratch: exit" in res.stdout, res.stdout + res.stderr
    with tarfile.open(out / "gpu_session.tar") as tar:
        assert "logs/ship-scratch.log" in tar.getnames()


def test_the_paper_net_keeps_one_copy_of_each_unpadded_activation_for_backward():
    # ten runs share one GPU: a 1×1 layer's F.pad (which adds nothing) still copies its input, and autograd kept both
    # copies — a third of a PU row's activation memory (6.0 → 4.1 GiB at batch 16 × 3.125 s in bf16)
    import torch

    from rtpulse.model import ModelConfig, PulseCNN

    model = PulseCNN(ModelConfig(preset="paper", dropout=0.0))  # as every recipe of the call trains it
    mag = torch.rand(1, 513, 12)
    storages = {}

    def keep(t):
        storages[t.untyped_storage().data_ptr()] = tuple(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        out = model(mag)
    wide = [s for s in storages.values() if s[:3] == (1, 128, 513)]
    assert len(wide) == 2, wide  # the two 128-channel activations, each kept once
    x = model.features(mag)
    for i, (conv, (past, future)) in enumerate(zip(model.convs, model.time_pads)):
        fpad = conv.dilation[0] * (conv.kernel_size[0] // 2)
        x = conv(torch.nn.functional.pad(x, (past, future, fpad, fpad)))
        x = torch.relu(x) if i < len(model.convs) - 1 else x
    assert torch.equal(out, x)
