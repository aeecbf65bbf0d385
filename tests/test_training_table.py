"""The comparison-table runner: row commands, scoring, resuming a half-done table. Tiny generated audio."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from benchmarks import training_table
from benchmarks.quality import generated_set
from benchmarks.training_table import ROWS, TableOptions, recipe, row_args, run_table, score_model
from rtpulse.errors import RtpulseError
from rtpulse.model import ModelConfig, PulseCNN, save_model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(1)
    t = np.arange(16000) / 16000
    for split in ("train", "dev"):
        (root / "speech" / split).mkdir(parents=True)
        (root / "noise" / split).mkdir(parents=True)
        for i in range(3):
            voice = 0.3 * np.sin(2 * np.pi * (170 + 50 * i) * t) * (np.sin(2 * np.pi * 2 * t) > 0)
            sf.write(root / "speech" / split / f"s{i}.wav", voice.astype(np.float32), 16000)
            sf.write(root / "noise" / split / f"n{i}.wav", (0.1 * rng.standard_normal(20000)).astype(np.float32), 16000)
    return root


def _opts(data, out, **kw):
    base = {
        "data": data,
        "out": out,
        "epochs": 1,
        "steps_per_epoch": 1,
        "batch_size": 2,
        "crop_seconds": 0.1,
        "warmup_steps": 0,
        "preset": "blocks2",
        "device": "cpu",
        "cache": out / "cache",
        "count": 2,
        "seconds": 1.0,
        "min_speech_seconds": 0.5,
        "dev_count": 2,
        "dev_seconds": 0.25,
    }
    base.update(kw)
    return TableOptions(**base)


def test_row_commands_share_the_recipe_and_cap_the_lookahead(tmp_path):
    paper = row_args("pu-paper-L8", _opts(tmp_path, tmp_path, preset=None))
    assert paper[paper.index("--preset") + 1] == "paper" and paper[paper.index("--lookahead") + 1] == "8"
    small = row_args("pu-paper-L8", _opts(tmp_path, tmp_path, pvu_steps=50))
    assert small[small.index("--lookahead") + 1] == str(ModelConfig(preset="blocks2").max_lookahead)
    assert small[small.index("--pvu-steps") + 1] == "50"  # the warm start goes to nnPU rows…
    for name in ("pvu-paper-L0", "pn-paper-L0", "mixit-paper-L0"):
        assert "--pvu-steps" not in row_args(name, _opts(tmp_path, tmp_path, pvu_steps=50))  # …not to the others
    assert "--minutes" not in small
    budget = row_args("pn-paper-L0", _opts(tmp_path, tmp_path, minutes=5.0))  # a time budget reaches every row
    assert budget[budget.index("--minutes") + 1] == "5.0" and "--minutes" in recipe("pn-paper-L0", _opts(
        tmp_path, tmp_path, minutes=5.0))  # and is part of the recipe: a row trained for 5 min is not a 10-min row
    power = row_args("pu-power-L0", _opts(tmp_path, tmp_path))
    assert power.count("--compress") == 1 and power[power.index("--compress") + 1] == "power"
    for name in ROWS:  # every row names its output folder after itself
        args = row_args(name, _opts(tmp_path, tmp_path))
        assert args[args.index("--out") + 1] == str(tmp_path / "runs" / name)
        assert "--precision" not in args  # auto: each row's trainer picks (its config says "auto")
        fast = row_args(name, _opts(tmp_path, tmp_path, precision="bf16"))
        assert fast[fast.index("--precision") + 1] == "bf16"
        # as the reference code: PU rows pick their epoch by the binary mask with γ = 0.096, PN and MixIT by the soft
        pu = args[args.index("--method") + 1] == "pu"
        assert args[args.index("--select-mask") + 1] == ("binary" if pu else "soft")
        nnpu = pu and "--risk" not in args  # γ acts in nnPU's correction only
        assert (args[args.index("--gamma") + 1] == "0.096") if nnpu else "--gamma" not in args
        soft = row_args(name, _opts(tmp_path, tmp_path, select_mask="soft", gamma=1.0))
        assert soft[soft.index("--select-mask") + 1] == "soft" and ("--gamma" not in soft or "1.0" in soft)
    from benchmarks.training_table import check_options

    with pytest.raises(RtpulseError, match="--select-mask must be reference, soft or binary, got 'best'"):
        check_options(_opts(tmp_path, tmp_path, select_mask="best"))


def test_recipes_are_compared_option_by_option_and_old_rows_by_their_command(tmp_path):
    from benchmarks.training_table import check_recipe, recipe

    now = recipe("pu-paper-L0", _opts(tmp_path, tmp_path))
    moved = now[:2] + now[4:] + now[2:4]  # the same options in another order: the same recipe
    check_recipe("pu-paper-L0", moved, now, tmp_path)
    older = [a for a in now if a not in ("--gamma", "0.096")]
    with pytest.raises(RtpulseError, match=r"was trained with '--gamma 1.0 \(the default\)', not '--gamma 0.096'"):
        check_recipe("pu-paper-L0", older, now, tmp_path)
    # a row from before recipes were recorded: its command (relative data paths, machine options) is the record
    args = row_args("pu-paper-L0", _opts(Path("data"), tmp_path, select_mask="soft", gamma=1.0, device="cpu"))
    command = "rtpulse train " + " ".join(args)
    with pytest.raises(RtpulseError, match="was trained with '--select-mask soft', not '--select-mask binary"):
        check_recipe("pu-paper-L0", None, now, tmp_path, command)
    check_recipe("pu-paper-L0", None, recipe("pu-paper-L0", _opts(tmp_path, tmp_path, select_mask="soft", gamma=1.0)),
                 tmp_path, command)  # the settings it was trained with: accepted
    check_recipe("pu-paper-L0", None, now, tmp_path, "rtpulse train --resume runs/x")  # nothing to tell: passes
    # --epochs counts even at the trainer's default: with --minutes that default is a 10,000-epoch cap, not 10
    budget = [a for a in now if a not in ("--epochs", "1")] + ["--minutes", "5"]
    with pytest.raises(RtpulseError, match="was trained with 'no --epochs', not '--epochs 10'"):
        check_recipe("pu-paper-L0", budget, [*budget, "--epochs", "10"], tmp_path)


# two rows of benchmarks/results/training_table_cpu.json (session 2), as their commands were recorded
SESSION2_COMMANDS = {
    "pu-paper-L0": "rtpulse train --method pu --preset blocks2 --lookahead 0 --out runs/table_cpu/runs/pu-paper-L0 "
    "--clean /d/speech/train --noise /d/noise/train --val-clean /d/speech/dev --val-noise /d/noise/dev --dev-count 40 "
    "--dev-seconds 4.0 --epochs 8 --steps-per-epoch 50 --batch-size 8 --crop-seconds 1.0 --lr 0.001 --warmup-steps 30 "
    "--lr-schedule cosine --clip-grad 1 --init he --p-level matched --prior 0.7 --dropout 0 --level-frames 125 "
    "--select-mask soft --seed 0 --compress linear --pvu-steps 100 --device cpu",
    "pn-paper-L0": "rtpulse train --method pn --preset blocks2 --out runs/table_cpu/runs/pn-paper-L0 --clean "
    "/d/speech/train --noise /d/noise/train --val-clean /d/speech/dev --val-noise /d/noise/dev --dev-count 40 "
    "--dev-seconds 4.0 --epochs 8 --steps-per-epoch 50 --batch-size 8 --crop-seconds 1.0 --lr 0.001 --warmup-steps 30 "
    "--lr-schedule cosine --clip-grad 1 --init he --p-level matched --prior 0.7 --dropout 0 --level-frames 125 "
    "--select-mask soft --seed 0 --compress linear --device cpu",
}


@pytest.mark.parametrize("name", sorted(SESSION2_COMMANDS))
def test_session_2_rows_match_the_command_training_md_gives_to_reproduce_them(tmp_path, name):
    from benchmarks.training_table import check_recipe, recipe

    # training.md: the CPU table's command "with --gamma 1 --select-mask soft to train the rows as they were". The
    # old nnPU command has no --gamma (the trainer's default, 1) and the PN one PU options the trainer then ignored
    opts = _opts(tmp_path, tmp_path, preset="blocks2", epochs=8, steps_per_epoch=50, batch_size=8, crop_seconds=1.0,
                 lr=1e-3, warmup_steps=30, pvu_steps=100, gamma=1.0, select_mask="soft", dev_count=40, dev_seconds=4.0)
    check_recipe(name, None, recipe(name, opts), tmp_path, SESSION2_COMMANDS[name])
    with pytest.raises(RtpulseError, match="was trained with '--lr 0.001', not '--lr 0.002'"):
        check_recipe(name, None, recipe(name, dataclasses.replace(opts, lr=2e-3)), tmp_path, SESSION2_COMMANDS[name])


def test_a_model_that_keeps_every_bin_scores_zero_improvement(data, tmp_path):
    model = PulseCNN(ModelConfig(preset="blocks2", compress="linear", dropout=0.0))
    with torch.no_grad():
        model.convs[-1].weight.zero_()
        model.convs[-1].bias.fill_(-100.0)  # f ≪ 0: speech everywhere, soft and binary gain 1
    save_model(model, tmp_path / "keep.safetensors")
    items = generated_set(data, 2, 1.0, 0, min_seconds=0.5)
    scores = score_model(tmp_path / "keep.safetensors", items)
    for mask in ("soft", "binary"):
        assert abs(scores[mask]["si_snri"]) < 1e-3  # the STFT round trip gives the input back
    pytest.importorskip("pystoi")
    from benchmarks.quality import Item
    from benchmarks.training_table import _cell

    short = Item("short", items[0].noisy[:2000], items[0].clean[:2000])  # too short for STOI: no score, not a 0
    scores = score_model(tmp_path / "keep.safetensors", [*items, short])["soft"]
    assert scores["files"]["stoi"] == 2 and scores["files"]["si_snri"] == 3
    assert _cell(scores, "stoi", 3, 3) == f"{scores['stoi']:.3f} (n 2 of 3)"  # the mean says it left one out
    assert _cell(scores, "si_snri", 2, 3) == f"{scores['si_snri']:.2f}"


def test_two_rows_train_score_and_a_finished_row_is_not_run_again(data, tmp_path, monkeypatch):
    opts = _opts(data, tmp_path / "table", only=["pn-paper-L0", "upu-paper-L0"])
    result = run_table(opts)
    assert [r["name"] for r in result["rows"]] == ["pn-paper-L0", "upu-paper-L0"]
    for r in result["rows"]:
        assert r["command"] == "rtpulse train " + " ".join(row_args(r["name"], opts))
        assert json.loads(r["model"])["preset"] == "blocks2" and r["steps"] == 1
        assert np.isfinite(r["scores"]["soft"]["si_snri"]) and np.isfinite(r["scores"]["binary"]["si_snri"])
        logged = json.loads((tmp_path / "table" / "runs" / r["name"] / "metrics.jsonl").read_text().splitlines()[-1])
        dev = logged["dev_sisnri_soft"]
        assert r["dev_soft"] == {"best": dev, "best_epoch": 1, "last": dev, "peak": dev}
    md = (tmp_path / "table" / "training_table.md").read_text()
    assert ROWS["pn-paper-L0"][0] in md and "--risk upu" in md

    def no_training(name, opts):
        raise AssertionError(f"{name} was trained again")

    monkeypatch.setattr(training_table, "_train", no_training)
    before = (tmp_path / "table" / "rows" / "pn-paper-L0.json").read_text()
    again = run_table(opts)
    assert len(again["rows"]) == 2 and (tmp_path / "table" / "rows" / "pn-paper-L0.json").read_text() == before
    # another test set: the finished rows are re-scored on it (not retrained), and say which set scored them
    other = dataclasses.replace(opts, count=1)
    third = run_table(other)
    assert all(r["test_set"]["count"] == 1 for r in third["rows"])
    assert third["rows"][0]["command"] == again["rows"][0]["command"]
    assert " † |" not in (tmp_path / "table" / "training_table.md").read_text()  # no row left on the old set


def test_rows_trained_by_two_calls_with_other_settings_are_marked_and_one_folder_named_two_ways_is_one_set(
        data, tmp_path, monkeypatch):
    table = tmp_path / "table"
    run_table(_opts(data, table, only=["pn-paper-L0"]))
    monkeypatch.chdir(data.parent)  # the same data folder, named relatively: the same test set (no re-score, no †)
    second = run_table(_opts(Path(data.name), table, only=["mixit-paper-L0"], lr=1e-2))
    md = (table / "training_table.md").read_text()
    line = {r["name"]: next(ln for ln in md.splitlines() if ln.startswith(f"| {ROWS[r['name']][0]}"))
            for r in second["rows"]}
    assert " ‡ |" in line["pn-paper-L0"]  # trained with --lr 3e-4, not this call's 1e-2
    assert "‡" not in line["mixit-paper-L0"] and "†" not in md.split("Commands:")[0].split("|---|")[-1]


def test_a_killed_row_resumes_with_its_own_settings_and_records_them(data, tmp_path):
    opts = _opts(data, tmp_path / "table", only=["pvu-paper-L0"])
    run_table(opts)
    run_dir = tmp_path / "table" / "runs" / "pvu-paper-L0"
    original = json.loads((run_dir / "config.json").read_text())["command"]
    (tmp_path / "table" / "rows" / "pvu-paper-L0.json").unlink()  # killed after training, before scoring
    from rtpulse.errors import RtpulseError

    # other settings would be reported under these: refused, naming the difference and the way out
    with pytest.raises(RtpulseError, match="was trained with '--epochs 1', not '--epochs 3': give a new --out"):
        run_table(_opts(data, tmp_path / "table", only=["pvu-paper-L0"], epochs=3))
    again = run_table(opts)  # the same settings: it goes on where it stopped
    (row,) = again["rows"]
    assert row["steps"] == 1 and row["command"] == original and "--epochs 1 " in row["command"]
    with pytest.raises(RtpulseError, match="was trained with '--preset blocks2', not '--preset blocks3'"):
        run_table(_opts(data, tmp_path / "table", only=["pvu-paper-L0"], preset="blocks3"))  # a finished row too


def test_a_row_killed_before_its_first_checkpoint_starts_again(data, tmp_path):
    run_dir = tmp_path / "table" / "runs" / "pvu-paper-L0"
    (run_dir / "ckpt").mkdir(parents=True)
    (run_dir / "ckpt" / ".epoch-0001.safetensors.tmp-1").write_bytes(b"half")  # no complete checkpoint
    result = run_table(_opts(data, tmp_path / "table", only=["pvu-paper-L0"]))
    assert result["rows"][0]["steps"] == 1 and any((run_dir / "ckpt").glob("epoch-*.state.pt"))


def test_an_unknown_row_is_a_one_line_error(data, tmp_path):
    from rtpulse.errors import RtpulseError

    with pytest.raises(RtpulseError, match="unknown row 'nope'"):
        run_table(_opts(data, tmp_path, only=["nope"]))


def test_a_resumed_row_gets_this_machines_device_and_precision(tmp_path, monkeypatch):
    import subprocess

    from benchmarks import training_table

    run_dir = tmp_path / "runs" / "pn-paper-L0"
    (run_dir / "ckpt").mkdir(parents=True)
    (run_dir / "ckpt" / "epoch-0001.state.pt").write_bytes(b"")
    (run_dir / "config.json").write_text(json.dumps({"command": "rtpulse train --the-first-command"}))
    ran = []
    monkeypatch.setattr(training_table.subprocess, "run",
                        lambda args, check: ran.append(args) or subprocess.CompletedProcess(args, 0))
    training_table._train("pn-paper-L0", _opts(tmp_path, tmp_path, precision="bf16"))
    training_table._train("pn-paper-L0", _opts(tmp_path, tmp_path, device=None))
    assert ran[0][3:] == ["train", "--resume", str(run_dir), "--device", "cpu", "--precision", "bf16"]
    assert ran[1][3:] == ["train", "--resume", str(run_dir)]  # auto precision, no device: the run's own


def test_a_damaged_row_record_is_a_one_line_error_and_a_users_folder_is_not_deleted(data, tmp_path, monkeypatch):
    import subprocess

    from rtpulse.errors import RtpulseError

    opts = _opts(data, tmp_path / "table", only=["pn-paper-L0"])
    (tmp_path / "table" / "rows").mkdir(parents=True)
    (tmp_path / "table" / "rows" / "pn-paper-L0.json").write_text('{"name": "pn-pa')
    with pytest.raises(RtpulseError, match="pn-paper-L0.json is not a readable row record") as info:
        run_table(opts)
    assert "\n" not in str(info.value)
    (tmp_path / "table" / "rows" / "pn-paper-L0.json").unlink()
    # a folder of the user's where a row's run goes: no checkpoint, so it is trained there; nothing is deleted
    run_dir = tmp_path / "table" / "runs" / "pn-paper-L0"
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("mine")
    monkeypatch.setattr(training_table.subprocess, "run", lambda args, check: subprocess.CompletedProcess(args, 1))
    with pytest.raises(RtpulseError, match="row pn-paper-L0: rtpulse train exited with 1"):
        training_table._train("pn-paper-L0", opts)
    assert (run_dir / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(("kw", "words"), [({"lr": float("nan")}, "--lr must be a finite number"),
                                           ({"preset": "foo"}, "unknown preset 'foo'"),
                                           ({"batch_size": 0}, "--batch-size must be ≥ 1"),
                                           ({"minutes": 0.0}, "--minutes must be above 0")])
def test_a_bad_shared_option_is_refused_before_the_test_set_and_any_row(tmp_path, kw, words):
    from rtpulse.errors import RtpulseError

    with pytest.raises(RtpulseError, match=words):  # the data folder does not exist: nothing was read
        run_table(_opts(tmp_path / "no-data", tmp_path / "table", only=["pn-paper-L0"], **kw))
    assert not (tmp_path / "table").exists()


def test_missing_training_folders_and_a_nan_reference_floor_are_refused_before_any_row(data, tmp_path):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(data, partial)
    shutil.rmtree(partial / "noise" / "train")
    with pytest.raises(RtpulseError, match=f"no {partial / 'noise' / 'train'}: --data needs"):
        run_table(_opts(partial, tmp_path / "table", only=["pn-paper-L0"]))
    with pytest.raises(RtpulseError, match="--reference-floor-db must be −200…0 dB"):  # NaN kept every file
        run_table(_opts(data, tmp_path / "table", only=["pn-paper-L0"], reference_floor_db=float("nan")))
    assert not (tmp_path / "table").exists()


def test_the_recipe_is_the_same_for_the_same_folders_named_two_ways(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    relative = recipe("pn-paper-L0", _opts(Path("data"), Path("table")))
    absolute = recipe("pn-paper-L0", _opts(tmp_path / "data", tmp_path / "table"))
    assert relative == absolute and "--out" not in relative  # where the table sits is not what a row trains
    assert str(tmp_path / "data" / "speech" / "train") in relative


def test_a_rows_clips_per_second_is_its_clips_over_its_seconds(tmp_path):
    """Two epochs of 400 clips, one in 100 s (4 clips/s) and one in 400 s (1 clip/s): 800 clips in 500 s is 1.6
    clips/s; the mean of the rates (2.5) counted the fast epoch's second as much as the slow epoch."""
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"epoch": 1, "step": 50, "clips_per_s": 4.0, "train_seconds": 100.0, "best_epoch": 1},
             {"epoch": 2, "step": 100, "clips_per_s": 1.0, "train_seconds": 400.0, "best_epoch": 1}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cost = training_table._cost(run)
    assert cost["train_seconds"] == 500.0 and cost["clips_per_s"] == pytest.approx(800 / 500)


def test_a_plotless_table_leaves_no_earlier_bars_beside_it(tmp_path, monkeypatch):
    (tmp_path / "rows").mkdir()
    (tmp_path / "training_table.png").write_bytes(b"an earlier call's bars")
    monkeypatch.setattr(training_table, "have_matplotlib", lambda: False)
    training_table.write_table(tmp_path, {"count": 1, "seconds": 1.0, "seed": 0}, _opts(tmp_path, tmp_path))
    assert (tmp_path / "training_table.md").exists() and not (tmp_path / "training_table.png").exists()
