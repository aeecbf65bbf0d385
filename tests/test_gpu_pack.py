"""The compact data pack for device runs: everything fixed, train speech round-robin by group, within budget."""

import numpy as np
import pytest
import soundfile as sf

from benchmarks.gpu_pack import MIB, pack
from rtpulse.errors import RtpulseError


def _tree(root):
    rng = np.random.default_rng(0)
    rows = ["path,kind,split,source,group,utterance_type,seconds,licence,licence_detail"]
    def put(rel, seconds, group=""):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(p, (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32), 16000, subtype="PCM_16")
        rows.append(f"{rel},x,x,x,{group},,{seconds},x,")
    put("noise/train/a.wav", 0.5)
    put("noise/train/b.wav", 0.5)
    put("noise/dev/c.wav", 0.5)
    put("speech/dev/d.wav", 0.5)
    # group "big" sorts first and has many files; "small" has two: a budget for four train files must take both
    for i in range(6):
        put(f"speech/train/corpus/big{i}.wav", 1.0, "big")
    for i in range(2):
        put(f"speech/train/corpus/small{i}.wav", 1.0, "small")
    # the manifest's seconds (not the files') give the pack's hours: 900 s a train file
    rows = [r.replace(",1.0,x,", ",900,x,") for r in rows]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    (root / "README.md").write_text("licences\n")
    return root


def test_pack_keeps_every_fixed_file_and_spreads_train_over_groups_within_budget(tmp_path):
    data = _tree(tmp_path / "data")
    fixed = sum((data / r).stat().st_size for r in ("noise/train/a.wav", "noise/train/b.wav", "noise/dev/c.wav", "speech/dev/d.wav"))
    one = (data / "speech/train/corpus/big0.wav").stat().st_size
    budget = fixed + 4 * one + 100
    out = tmp_path / "pack"
    stats = pack(data, out, budget / MIB, wheels=False)
    copied = sorted(p.relative_to(out / "data").as_posix() for p in (out / "data").rglob("*.wav"))
    train = [c for c in copied if c.startswith("speech/train/")]
    assert {"noise/train/a.wav", "noise/train/b.wav", "noise/dev/c.wav", "speech/dev/d.wav"} <= set(copied)
    assert len(train) == 4 == stats["train_files"]
    assert sum("small" in t for t in train) == 2 and sum("big" in t for t in train) == 2  # round-robin, not alphabetical
    assert stats["bytes"] <= budget and stats["train_hours"] == 1.0  # 4 files × 900 s
    assert (out / "data/noise/train/a.wav").read_bytes() == (data / "noise/train/a.wav").read_bytes()
    assert (out / "data/README.md").read_text() == "licences\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left
    with pytest.raises(RtpulseError, match="not an empty folder"):
        pack(data, out, budget / MIB, wheels=False)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(RtpulseError, match="not an empty folder"):
        pack(data, tmp_path / "a_file", budget / MIB, wheels=False)
    with pytest.raises(RtpulseError, match="over the"):
        pack(data, tmp_path / "small", (fixed - 1) / MIB, wheels=False)
    assert not (tmp_path / "small").exists()
    # no train speech at all, or room for the fixed files but for no train speech: the trainer could not use it
    empty = _tree(tmp_path / "empty")
    for p in (empty / "speech" / "train").rglob("*.wav"):
        p.unlink()
    with pytest.raises(RtpulseError, match="no train speech in .*speech/train"):
        pack(empty, tmp_path / "no_speech", 1.0, wheels=False)
    with pytest.raises(RtpulseError, match="no train speech file fits the .* budget"):
        pack(data, tmp_path / "no_train", (fixed + one - 1) / MIB, wheels=False)
    assert not (tmp_path / "no_train").exists()


def test_pack_refuses_a_bad_manifest_in_one_line(tmp_path):
    data = _tree(tmp_path / "data")
    text = (data / "manifest.csv").read_text().replace(",900,", ",lots,", 1)
    (data / "manifest.csv").write_text(text)
    with pytest.raises(RtpulseError, match="is not a number"):
        pack(data, tmp_path / "pack", 1.0, wheels=False)
    assert not (tmp_path / "pack").exists()


@pytest.mark.parametrize("budget", [float("nan"), float("inf"), 0.0, 2.0])
def test_a_budget_that_is_no_number_or_below_the_wheels_room_is_refused(tmp_path, budget):
    data = _tree(tmp_path / "data")
    with pytest.raises(RtpulseError, match="--budget-mib must be a number above 3"):  # the wheels get 3 MiB
        pack(data, tmp_path / "pack", budget, wheels=True)
    assert not (tmp_path / "pack").exists()


def test_a_pack_inside_its_data_is_refused(tmp_path):
    # a second pack would then count the first one's noise and dev speech as train speech
    data = _tree(tmp_path / "data")
    with pytest.raises(RtpulseError, match="is inside --data"):
        pack(data, data / "speech" / "train" / "pk", 1.0, wheels=False)
    assert not (data / "speech" / "train" / "pk").exists()


def test_the_pack_carries_cffi_for_other_pythons_beside_the_devices(tmp_path, monkeypatch):
    # cffi is compiled per Python and the device's Python cannot be checked from here: a pack with cffi for 3.12
    # alone installs nowhere else, and the one device call ends before it trains
    import subprocess
    from pathlib import Path

    import benchmarks.gpu_pack as gp

    asked = []

    def fake_run(cmd, **kw):
        version = cmd[cmd.index("--python-version") + 1]
        asked.append((version, [a for a in cmd if "==" in a]))
        for spec in (a for a in cmd if "==" in a):
            name, ver = spec.split("==")
            tag = "py3-none-any" if name != "cffi" else f"cp{version.replace('.', '')}-cp{version.replace('.', '')}-x"
            (Path(cmd[cmd.index("-d") + 1]) / f"{name}-{ver}-{tag}.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(gp.subprocess, "run", fake_run)
    names = [w.name for w in gp.download_wheels(tmp_path / "wheels")]
    assert asked[0] == (gp.DEVICE_PYTHON, list(gp.WHEELS))  # everything for the device's Python
    cffi = sorted(n for n in names if n.startswith("cffi-"))
    assert [n.split("-")[2] for n in cffi] == ["cp310", "cp311", "cp312", "cp313", "cp314"]
    assert len(names) == len(cffi) + 2  # soundfile and pycparser once
