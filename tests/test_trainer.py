"""Trainer: on-device data, steps, checkpoints, resume, the CLI. Tiny generated audio in tmp_path."""

import dataclasses
import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from rich.console import Console
from typer.testing import CliRunner

from rtpulse.cli import app
from rtpulse.errors import RtpulseError
from rtpulse.model import load_model
from rtpulse.stft import HOP
from trainer.checkpoint import load_checkpoint
from trainer.config import TrainConfig
from trainer.data import AudioBank, Recipe, mix_at_snr, noise_floor_db
from trainer.train import build_model, run_training


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    for d in ("clean", "noise", "noisy"):
        (root / d / "sub").mkdir(parents=True)
    for i in range(3):
        voice = 0.3 * np.sin(2 * np.pi * (180 + 40 * i) * t) * (np.sin(2 * np.pi * 3 * t) > 0)
        sf.write(root / "clean" / "sub" / f"s{i}.wav", voice.astype(np.float32), 16000)
        noise = 0.1 * rng.standard_normal(24000)
        sf.write(root / "noise" / f"n{i}.flac", noise.astype(np.float32), 22050)  # resampled on load
        sf.write(root / "noisy" / "sub" / f"u{i}.wav", (voice + 0.1 * rng.standard_normal(t.size)).astype(np.float32), 16000)
    return root


def tiny(corpus, tmp_path, **kw) -> TrainConfig:
    base = {"out": str(tmp_path / "run"), "clean": str(corpus / "clean"), "noise": str(corpus / "noise"),
            "cache": str(tmp_path / "cache"), "epochs": 1, "steps_per_epoch": 2, "batch_size": 2,
            "crop_seconds": 0.1, "dev_count": 2, "dev_seconds": 0.25, "dev_fraction": 0.34, "dropout": 0.0,
            "device": "cpu"}
    base.update(kw)
    return TrainConfig(**base)


def test_the_logged_statistics_are_the_steps_own_and_their_epoch_mean(corpus, tmp_path, monkeypatch):
    import math

    import trainer.train
    from trainer.data import Batch
    from trainer.train import STAT_KEYS, compute_loss

    # constant logits f = −0.5 (last layer's weights zero), w = 1: every statistic by hand, with π = 0.7
    cfg = tiny(corpus, tmp_path, weight_exponent=0.0, risk="nnpu", prior=0.7)
    model = build_model(cfg)
    with torch.no_grad():
        model.convs[-1].weight.zero_()
        model.convs[-1].bias.fill_(-0.5)
    g = torch.Generator().manual_seed(0)
    _, stats = compute_loss(model, Batch(u=torch.randn(2, 8000, generator=g), p=torch.randn(2, 8000, generator=g)), cfg)
    sig = 1 / (1 + math.exp(-0.5))  # σ(0.5): the P bins' loss σ(−f)
    want = {"risk_p": 0.7 * sig, "risk_u": (1 - 0.7) * (1 - sig), "corrected": 0.0, "u_speech": 1.0,
            "logit_mean": -0.5, "logit_std": 0.0}
    want["loss"] = want["risk_p"] + want["risk_u"]  # R_U^- − πR_P^- > 0: no correction
    assert {k: pytest.approx(float(stats[k]), abs=1e-6) for k in want} == want
    # the epoch's record is the mean of its steps' statistics
    seen, real = [], trainer.train.train_step
    monkeypatch.setattr(trainer.train, "train_step", lambda *a, **kw: seen.append(real(*a, **kw)) or seen[-1])
    run_training(tiny(corpus, tmp_path, steps_per_epoch=3), progress=False)
    (row,) = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(seen) == 3 and len({float(s["loss"]) for s in seen}) == 3  # three different steps
    for k in STAT_KEYS:
        assert row[k] == pytest.approx(np.mean([float(s[k]) for s in seen]), rel=1e-5, abs=1e-7), k


def test_crops_are_slices_of_one_file_or_zero_padded():
    bank = AudioBank([np.arange(1, 11, dtype=np.float32), np.arange(101, 104, dtype=np.float32)], ["a", "b"])
    x = bank.crops(200, 5, torch.Generator().manual_seed(0))  # [200, 5]
    for row in x.tolist():
        if row[0] > 100:  # file b (3 samples) padded with zeros
            assert row == [101, 102, 103, 0, 0]
        else:
            assert row == list(range(int(row[0]), int(row[0]) + 5)) and row[-1] <= 10
    assert {int(r[0]) for r in x.tolist()} > {1, 6}  # starts vary over the whole file


def test_mix_at_snr_hits_the_snr_and_normalises():
    g = torch.Generator().manual_seed(1)
    clean, noise = torch.randn(3, 8000, generator=g), 5 * torch.randn(3, 8000, generator=g) + 2
    snr = torch.tensor([-5.0, 0.0, 10.0])
    noisy, c, n = mix_at_snr(clean, noise, snr)
    assert torch.allclose(10 * torch.log10((c**2).sum(-1) / (n**2).sum(-1)), snr, atol=1e-3)
    assert torch.allclose(noisy.std(-1), torch.ones(3), atol=1e-3)
    assert torch.allclose(noisy, c + n, atol=1e-5)


def test_pu_batches_use_noise_separate_from_the_mixtures(corpus):
    # with silent "speech", each U clip is exactly its (standardised) noise crop: P must be other noise
    silent = AudioBank([np.zeros(16000, np.float32)], ["silence"])
    noise = AudioBank.from_files(sorted((corpus / "noise").rglob("*.flac")), None)
    b = Recipe("pu", noise, clean=silent).batch(4, 4000, torch.Generator().manual_seed(0))
    assert b.u.shape == b.p.shape == (4, 4000)
    assert torch.allclose(b.u.std(-1), torch.ones(4), atol=1e-3) and torch.allclose(b.p.std(-1), torch.ones(4), atol=1e-3)
    corr = (b.u @ b.p.T) / 4000  # [4, 4]: ≈ 1 where a P clip were the noise inside a U clip
    assert float(corr.abs().max()) < 0.2


def test_two_steps_change_weights_and_write_a_loadable_checkpoint(corpus, tmp_path):
    cfg = tiny(corpus, tmp_path, output_bias=-1.0, command="rtpulse train --test")
    before = build_model(cfg).state_dict()
    assert torch.all(before["convs.6.bias"] == -1.0)
    summary = run_training(cfg, progress=False)
    assert summary["steps"] == 2
    model = load_model(tmp_path / "run" / "last.safetensors")
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)
    assert model.config.extra["train_command"] == "rtpulse train --test"
    assert model.config.extra["train_config"]["prior"] == 0.7
    assert load_model(tmp_path / "run" / "best.safetensors").config.extra["epoch"] == 1
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    for key in ("loss", "risk_p", "risk_u", "corrected", "u_speech", "logit_std", "dev_sisnri_binary", "dev_sisnri_soft"):
        assert np.isfinite(rows[0][key]), key
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["clean"]["held_out"]) == 1 and len(split["clean"]["train"]) == 2


def test_speech_floor_keeps_only_speech_without_a_steady_background(corpus, tmp_path):
    clean = tmp_path / "clean"
    clean.mkdir()
    rng = np.random.default_rng(1)
    voice, _ = sf.read(corpus / "clean" / "sub" / "s0.wav", dtype="float32")  # gated: silent half the time
    sf.write(clean / "quiet.wav", voice, 16000)
    sf.write(clean / "hiss.wav", voice + 0.03 * rng.standard_normal(voice.size).astype(np.float32), 16000)
    cfg = tiny(corpus, tmp_path, clean=str(clean), val_clean=str(clean), val_noise=str(corpus / "noise"),
               speech_floor_db=-25.0, steps_per_epoch=1)
    run_training(cfg, progress=False)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert [p.rsplit("/", 1)[1] for p in split["clean"]["train"] + split["val"]["clean"]] == ["quiet.wav", "quiet.wav"]
    with pytest.raises(RtpulseError, match="raise --speech-floor-db"):
        run_training(dataclasses.replace(cfg, out=str(tmp_path / "run2"), speech_floor_db=-200.0), progress=False)


def test_the_noise_floor_ignores_digital_silence_padded_at_the_ends():
    rng = np.random.default_rng(2)
    t = np.arange(5 * 16000) / 16000
    voice = 0.5 * np.sin(2 * np.pi * 200 * t) * (np.sin(2 * np.pi * 1.5 * t) > 0)  # digital silence between words
    hiss = (voice + 0.1 * rng.standard_normal(t.size)).astype(np.float32)
    pad = np.zeros(6400, np.float32)  # 0.4 s at each end: 14 % of the frames
    floor = noise_floor_db(hiss)
    assert floor > -25.0
    assert abs(noise_floor_db(np.concatenate([pad, hiss, pad])) - floor) < 1.0  # was −191 dB: kept as quiet
    assert noise_floor_db(voice.astype(np.float32)) < -100.0  # pauses of digital silence inside still count
    assert noise_floor_db(np.zeros(16000, np.float32)) == 0.0


def test_short_files_lie_in_the_trained_part_of_a_clip_not_in_its_tracker_history(corpus, tmp_path):
    from trainer.ddp import Dist
    from trainer.train import build_data, context_frames

    clean = tmp_path / "short"
    clean.mkdir()
    for i in range(3):  # 0.3 s words, shorter than the 0.5 s of history before each crop
        sf.write(clean / f"w{i}.wav", (0.3 * np.sin(np.arange(4800) * (0.1 + 0.02 * i))).astype(np.float32), 16000)
    cfg = tiny(corpus, tmp_path, method="pn", clean=str(clean), context_seconds=0.5, level_frames=10, crop_seconds=0.5)
    recipe, _, _ = build_data(cfg, Dist(), None)
    lead = context_frames(cfg) * HOP
    b = recipe.batch(16, lead + 8000, torch.Generator().manual_seed(0))
    trained = b.clean[:, lead:].square().sum(-1) / b.clean.square().sum(-1)
    assert float(trained.min()) > 0.99  # the whole word is in the part the loss sees (it was all in the history)
    # at most `lead` zeros first, and no more than leave the file its end in the clip
    for size, row in ((4, [0, 0, 0, 1, 1, 1, 1, 0]), (6, [0, 0, 1, 1, 1, 1, 1, 1])):
        assert AudioBank([np.ones(size, np.float32)], ["a"]).crops(1, 8, torch.Generator(), lead=3).tolist() == [row]


@pytest.mark.parametrize(("risk", "expected"), [("nnpu", 3), ("pvu", 1)])
def test_warm_start_epochs_do_not_compete_for_best(corpus, tmp_path, monkeypatch, risk, expected):
    # scores that fall every epoch: epoch 1 would win, but with --pvu-steps 2 (1 step per epoch) epochs 1–2 are
    # the P-vs-U warm start of an nnPU run, so its best is the first epoch after it; a pure pvu run has no warm start
    monkeypatch.setattr("trainer.loop._score", lambda record, cfg: -float(record["epoch"]))
    cfg = tiny(corpus, tmp_path, epochs=4, steps_per_epoch=1, pvu_steps=2, risk=risk)
    summary = run_training(cfg, progress=False)
    assert summary["best_epoch"] == expected
    assert load_model(tmp_path / "run" / "best.safetensors").config.extra["epoch"] == expected


class Killed(Exception):
    """Stands in for a kill at one point of the epoch's bookkeeping."""


def _kill_at(monkeypatch, name: str, epoch: int) -> None:
    """Make ``trainer.train.<name>`` (looked up by the loop at run time) die when it handles ``epoch``."""
    import trainer.train

    real = getattr(trainer.train, name)

    def epoch_of(arg):  # a metrics record or a model carrying its epoch
        return arg.get("epoch") if isinstance(arg, dict) else getattr(arg, "config", None) and arg.config.extra.get("epoch")

    def dying(*args, **kw):
        if epoch in map(epoch_of, args):
            raise Killed
        return real(*args, **kw)

    monkeypatch.setattr(trainer.train, name, dying)


def test_resume_continues_exactly_like_an_uninterrupted_run(corpus, tmp_path, monkeypatch):
    from trainer.train import resume_config

    # warm-up then cosine: a scheduler that did not resume would restart the warm-up and change the weights
    full = tiny(corpus, tmp_path, out=str(tmp_path / "full"), epochs=3, dropout=0.2, warmup_steps=3,
                lr_schedule="cosine")
    run_training(full, progress=False)
    part = dataclasses.replace(full, out=str(tmp_path / "part"))
    with monkeypatch.context() as m:  # killed after epoch 2's metrics line, before its checkpoint
        _kill_at(m, "save_epoch", 2)
        with pytest.raises(Killed):
            run_training(part, progress=False)
    assert len((tmp_path / "part" / "metrics.jsonl").read_text().splitlines()) == 2  # epoch 2's line, no checkpoint
    summary = run_training(resume_config(tmp_path / "part"), resume=True, progress=False)
    assert summary["steps"] == 6
    a, sa = load_checkpoint(tmp_path / "full")
    b, sb = load_checkpoint(tmp_path / "part")
    assert sa["step"] == sb["step"] == 6 and sb["epoch"] == 3
    assert sa["scheduler"] == sb["scheduler"]
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert len(sa["optimizer"]["state"]) == len(b.state_dict())
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values(), strict=True):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    lines = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    full_lines = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]  # the trimmed line of the killed epoch 2 comes back, once
    assert [r["lr"] for r in lines] == [r["lr"] for r in full_lines]


def test_the_weight_average_ramps_its_decay_then_holds_it():
    from trainer.ema import WeightAverage

    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    avg = WeightAverage(model, decay=0.2)
    for w in (2.0, 3.0):
        with torch.no_grad():
            model.weight.fill_(w)
        avg.update(model)
    # decay after n updates: min(0.2, (1 + n) / (10 + n)) → 2/11 (the ramp), then 0.2 (the cap)
    first = 1.0 * 2 / 11 + 2.0 * 9 / 11
    assert avg.params[0].item() == pytest.approx(first * 0.2 + 3.0 * 0.8)
    assert avg.averaged(model).weight.item() == pytest.approx(first * 0.2 + 3.0 * 0.8)
    assert model.weight.item() == 3.0  # the copy holds the average; the model keeps training its own weights


def test_an_ema_run_validates_and_publishes_the_average_and_resumes_it_exactly(corpus, tmp_path, monkeypatch):
    import trainer.validate
    from trainer.train import resume_config

    validated = []
    real = trainer.validate.dev_sisnri

    def recording(model, *args, **kw):
        validated.append([p.detach().clone() for p in model.parameters()])
        return real(model, *args, **kw)

    monkeypatch.setattr(trainer.validate, "dev_sisnri", recording)
    full = tiny(corpus, tmp_path, out=str(tmp_path / "full"), epochs=3, ema=0.5, lr=1e-2)
    run_training(full, progress=False)
    raw, state = load_checkpoint(tmp_path / "full")
    last = load_model(tmp_path / "full" / "last.safetensors")
    assert state["ema"]["updates"] == 6
    for p, a, v, r in zip(last.parameters(), state["ema"]["params"], validated[-1], raw.parameters(), strict=True):
        assert torch.equal(p, a) and torch.equal(p, v)  # published = saved average = what was validated
    assert any(not torch.equal(p, r) for p, r in zip(last.parameters(), raw.parameters()))  # not the raw weights
    part = dataclasses.replace(full, out=str(tmp_path / "part"))
    with monkeypatch.context() as m:
        _kill_at(m, "save_epoch", 2)
        with pytest.raises(Killed):
            run_training(part, progress=False)
    run_training(resume_config(tmp_path / "part"), resume=True, progress=False)
    resumed = load_model(tmp_path / "part" / "last.safetensors")
    for k, v in last.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_the_weight_average_starts_over_when_the_warm_start_ends(corpus, tmp_path):
    from trainer.ema import WeightAverage

    # --pvu-steps 2 at one step an epoch: epochs 1–2 are the P-vs-U warm start, epoch 3 the first to compete for
    # best; its published average must be nnPU's weights only (the warm start's end, then step 3), not the warm start
    run_training(tiny(corpus, tmp_path, epochs=3, steps_per_epoch=1, pvu_steps=2, ema=0.9, lr=1e-2), progress=False)
    ckpt = tmp_path / "run" / "ckpt"
    expected = WeightAverage(load_model(ckpt / "epoch-0002.safetensors"), 0.9)
    expected.update(load_model(ckpt / "epoch-0003.safetensors"))
    last = load_model(tmp_path / "run" / "last.safetensors")
    for p, e in zip(last.parameters(), expected.params, strict=True):
        assert torch.equal(p, e)


def test_planned_epochs_fit_the_budget_within_the_cap_and_past_the_warm_start(tmp_path):
    from trainer.train import planned_epochs

    cfg = TrainConfig(out=str(tmp_path / "r"), epochs=100, steps_per_epoch=50, minutes=2.0)
    assert planned_epochs(cfg, 1, 30.0) == 4  # 120 s / 30 s
    assert planned_epochs(cfg, 1, 31.0) == 3  # whole epochs only: the fourth would end past the budget
    assert planned_epochs(cfg, 1, 500.0) == 1  # the epoch already run stays
    assert planned_epochs(cfg, 6, 30.0) == 9  # a resume before the plan: 5 done, then 4 more
    assert planned_epochs(cfg, 1, 0.5) == 100  # the cap
    warm = dataclasses.replace(cfg, pvu_steps=120)  # steps 0…119 are P-vs-U: epoch 3 (steps 100…149) is the first nnPU
    assert planned_epochs(warm, 1, 40.0) == 3
    # a budget of 2 epochs would end inside the warm start, where no epoch competes for best: said, not run for hours
    with pytest.raises(RtpulseError, match="--pvu-steps 120 needs 3 epochs, but 2 minutes hold 2 at 60.0 s an epoch"):
        planned_epochs(warm, 1, 60.0)
    assert planned_epochs(dataclasses.replace(warm, risk="pvu"), 1, 500.0) == 1  # no warm start to get past


def test_a_minutes_run_trains_exactly_the_run_of_its_planned_epochs(corpus, tmp_path, monkeypatch):
    import trainer.loop
    from trainer.train import resume_config

    # epoch 1 "takes" 30 s of a 2-minute budget → 4 epochs; its warm-up covers epoch 1, so the only schedule that
    # differs (the cap's, before the plan) is never used, and the cosine decay must then end at epoch 4 as planned
    ticks = itertools.count(0.0, 30.0)  # called at the loop's start and after each planning epoch
    monkeypatch.setattr(trainer.loop, "_clock", lambda: next(ticks))
    common = {"dropout": 0.2, "warmup_steps": 2, "lr_schedule": "cosine"}
    budget = tiny(corpus, tmp_path, out=str(tmp_path / "budget"), epochs=50, minutes=2.0, **common)
    summary = run_training(budget, progress=False)
    fixed = tiny(corpus, tmp_path, out=str(tmp_path / "fixed"), epochs=4, **common)
    run_training(fixed, progress=False)
    assert summary["epochs"] == 4
    saved = resume_config(tmp_path / "budget")
    assert (saved.epochs, saved.minutes) == (4, None)  # a resume continues the plan, not the cap
    a, sa = load_checkpoint(tmp_path / "budget")
    b, sb = load_checkpoint(tmp_path / "fixed")
    assert sa["step"] == sb["step"] == 8
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    lrs = [[json.loads(x)["lr"] for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
           for r in ("budget", "fixed")]
    assert lrs[0] == lrs[1] and lrs[0][-1] < 0.05 * budget.lr  # decayed by the planned end, not the cap's


def test_a_minutes_budget_must_be_positive(corpus, tmp_path):
    tiny(corpus, tmp_path, minutes=0.5).validate()
    for bad in (0.0, -1.0):
        with pytest.raises(RtpulseError, match="--minutes must be above 0"):
            tiny(corpus, tmp_path, minutes=bad).validate()


@pytest.mark.parametrize("kill_in", ["save_model", "save_checkpoint"])  # best.safetensors' writer, the state's
def test_a_kill_while_saving_a_best_epoch_keeps_best_consistent(corpus, tmp_path, monkeypatch, kill_in):
    # scores 1, 3, 2: epoch 2 is best, and the run is killed in one of its two writes; were the state written
    # first, it would name epoch 2 as best while best.safetensors still held epoch 1, and epoch 3 would not fix it
    from trainer.train import resume_config

    monkeypatch.setattr("trainer.loop._score", lambda record, cfg: [0.0, 1.0, 3.0, 2.0][record["epoch"]])
    cfg = tiny(corpus, tmp_path, epochs=3, steps_per_epoch=1)
    with monkeypatch.context() as m:
        _kill_at(m, kill_in, 2)
        with pytest.raises(Killed):
            run_training(cfg, progress=False)
    summary = run_training(resume_config(tmp_path / "run"), resume=True, progress=False)
    assert summary["best_epoch"] == 2
    best = load_model(tmp_path / "run" / "best.safetensors")
    assert best.config.extra["epoch"] == 2
    epoch2 = load_model(tmp_path / "run" / "ckpt" / "epoch-0002.safetensors")
    for k, v in epoch2.state_dict().items():
        assert torch.equal(v, best.state_dict()[k]), k


def test_resume_keeps_its_file_split_epochs_and_survives_a_moved_init_model(corpus, tmp_path):
    import shutil

    from rtpulse.model import save_model
    from trainer.train import resume_config

    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    start = tmp_path / "start.safetensors"
    sharp = build_model(tiny(corpus, tmp_path))
    sharp.config = dataclasses.replace(sharp.config, mask_sharpness=2.5)
    save_model(sharp, start)
    cfg = tiny(corpus, tmp_path, clean=str(data / "clean"), noise=str(data / "noise"), steps_per_epoch=1,
               init_from=str(start))
    run_training(cfg, progress=False)
    # training uses and writes the plain soft mask whatever its starting model's sharpness (chosen afterwards)
    assert load_model(tmp_path / "run" / "last.safetensors").config.mask_sharpness == 1.0
    split = (tmp_path / "run" / "split.json").read_text()
    start.unlink()  # the starting model is not needed to resume
    shutil.copy(data / "noise" / "n0.flac", data / "noise" / "n9.flac")  # a new file would re-shuffle the split
    summary = run_training(resume_config(tmp_path / "run", epochs=2), resume=True, progress=False)
    assert summary["epochs"] == 2
    assert (tmp_path / "run" / "split.json").read_text() == split and "n9.flac" not in split
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 2  # a plain --resume keeps it
    assert resume_config(tmp_path / "run").epochs == 2
    (data / "noise" / "n1.flac").unlink()
    with pytest.raises(RtpulseError, match="n1.flac.* no longer exist"):
        run_training(resume_config(tmp_path / "run", epochs=3), resume=True, progress=False)


def test_a_run_started_with_relative_paths_resumes_from_another_folder(corpus, tmp_path, monkeypatch):
    import shutil

    from trainer.train import resume_config

    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    shutil.copytree(corpus, first / "data")
    (elsewhere / "data" / "clean").mkdir(parents=True)  # the same relative layout, other (no) files
    monkeypatch.chdir(first)
    run_training(tiny(corpus, tmp_path, clean="data/clean", noise="data/noise", steps_per_epoch=1), progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["clean"], saved["noise"]) == (str(first / "data" / "clean"), str(first / "data" / "noise"))
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert all(f.startswith(str(first / "data")) for v in split.values() for files in v.values() for f in files)
    monkeypatch.chdir(elsewhere)
    summary = run_training(resume_config(tmp_path / "run", epochs=2), resume=True, progress=False)
    assert summary["epochs"] == 2
    # a run from before paths were stored absolute: the error says where the relative path was looked for
    split["noise"]["train"] = ["data/noise/n0.flac"]
    (tmp_path / "run" / "split.json").write_text(json.dumps(split))
    with pytest.raises(RtpulseError, match=f"no longer exist in {elsewhere} \\(resume from the folder the run was"):
        run_training(resume_config(tmp_path / "run", epochs=3), resume=True, progress=False)


def test_a_pn_run_recorded_with_pu_options_before_they_were_refused_still_resumes(corpus, tmp_path):
    from trainer.train import resume_config

    # the table used to give its PN rows --p-level matched; new runs refuse it, old ones must go on
    run_training(tiny(corpus, tmp_path, method="pn"), progress=False)
    path = tmp_path / "run" / "config.json"
    saved = json.loads(path.read_text())
    saved["p_level"] = "matched"
    del saved["val_floor_db"]  # nor did such a run know --val-floor-db: it validated on every file
    path.write_text(json.dumps(saved))
    ckpt = tmp_path / "run" / "ckpt" / "epoch-0001.safetensors"
    model = load_model(ckpt)
    model.config.extra["train_config"]["p_level"] = "matched"
    del model.config.extra["train_config"]["val_floor_db"]
    from rtpulse.model import save_model

    save_model(model, ckpt)
    with pytest.raises(RtpulseError, match="--p-level is a PU option"):
        run_training(tiny(corpus, tmp_path, out=str(tmp_path / "new"), method="pn", p_level="matched"), progress=False)
    cfg = resume_config(tmp_path / "run", epochs=2)
    assert cfg.val_floor_db == 0.0
    assert run_training(cfg, resume=True, progress=False)["epochs"] == 2


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous(corpus, tmp_path):
    run_training(tiny(corpus, tmp_path, epochs=2, steps_per_epoch=1), progress=False)
    ckpt = tmp_path / "run" / "ckpt"
    (ckpt / "epoch-0002.state.pt").write_bytes(b"not a checkpoint")
    _, state = load_checkpoint(tmp_path / "run")
    assert state["epoch"] == 1 and state["step"] == 1


def test_a_kill_while_saving_the_last_epochs_state_leaves_last_current_after_resume(corpus, tmp_path, monkeypatch):
    # the state file marks an epoch done; written before last.safetensors, a kill between the two left a finished
    # run whose last.safetensors stayed an epoch behind, and a resume returned at once without fixing it
    import trainer.checkpoint
    from trainer.train import resume_config

    real = trainer.checkpoint.save_model

    def dying(model, path):  # killed while writing epoch 2's last.safetensors
        if path.name == "last.safetensors" and model.config.extra["epoch"] == 2:
            raise Killed
        real(model, path)

    with monkeypatch.context() as m:
        m.setattr(trainer.checkpoint, "save_model", dying)
        with pytest.raises(Killed):
            run_training(tiny(corpus, tmp_path, epochs=2, steps_per_epoch=1), progress=False)
    assert load_checkpoint(tmp_path / "run")[1]["epoch"] == 1  # epoch 2 is not done: the resume redoes it
    summary = run_training(resume_config(tmp_path / "run"), resume=True, progress=False)
    assert not summary.get("finished_before") and summary["epochs"] == 2
    assert load_model(tmp_path / "run" / "last.safetensors").config.extra["epoch"] == 2
    (tmp_path / "run" / "training.png").unlink()  # as if killed while drawing it: a finished resume redraws it
    again = run_training(resume_config(tmp_path / "run"), resume=True, progress=False)
    assert again["finished_before"] and (tmp_path / "run" / "training.png").is_file()


def test_checkpoints_past_epoch_9999_are_ordered_by_number_not_name(tmp_path):
    from conftest import random_model

    from trainer.checkpoint import save_checkpoint

    model = random_model("blocks2", 0)
    for epoch in (9998, 9999, 10000, 10001):  # by name, epoch-10000 sorts before epoch-9999
        model.config = dataclasses.replace(model.config, extra={"epoch": epoch})
        save_checkpoint(tmp_path, model, {"epoch": epoch, "step": epoch})
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["epoch-10000.safetensors", "epoch-10000.state.pt", "epoch-10001.safetensors", "epoch-10001.state.pt"]
    assert load_checkpoint(tmp_path)[1]["epoch"] == 10001


class _Payload:  # a class object in a state file: weights_only refuses it, and must not be advised away
    pass


def test_a_state_file_holding_objects_is_refused_without_torchs_unsafe_advice(corpus, tmp_path):
    run_training(tiny(corpus, tmp_path, epochs=1, steps_per_epoch=1), progress=False)
    torch.save({"epoch": 1, "x": _Payload()}, tmp_path / "run" / "ckpt" / "epoch-0001.state.pt")
    with pytest.raises(RtpulseError) as info:
        load_checkpoint(tmp_path / "run")
    msg = str(info.value)
    assert "epoch-0001.state.pt is not a readable state file (it holds more than tensors and plain values)" in msg
    assert "weights_only" not in msg and "\n" not in msg
    (tmp_path / "run" / "ckpt" / "epoch-0001.state.pt").write_bytes(b"x\n")  # damaged, not code: said so
    with pytest.raises(RtpulseError, match=r"epoch-0001.state.pt is not a readable state file \(damaged: not a saved"):
        load_checkpoint(tmp_path / "run")


@pytest.mark.parametrize("method", ["pn", "mixit"])
def test_supervised_baselines_train(corpus, tmp_path, method):
    summary = run_training(tiny(corpus, tmp_path, method=method, steps_per_epoch=1), progress=False)
    model = load_model(tmp_path / "run" / "last.safetensors")
    assert summary["steps"] == 1
    assert model.config.out_channels == (3 if method == "mixit" else 1)


def test_real_recordings_select_by_heldout_risk(corpus, tmp_path):
    cfg = tiny(corpus, tmp_path, clean=None, noisy=str(corpus / "noisy"), steps_per_epoch=1)
    run_training(cfg, progress=False)
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert row["score"] == pytest.approx(-row["val_risk"])
    assert row["val_risk"] == pytest.approx(row["val_risk_p"] + max(0.0, row["val_risk_u"]))
    assert "dev_sisnri_binary" not in row


def test_heldout_risk_with_mixed_p_counts_only_the_bins_training_counts(corpus, tmp_path):
    from rtpulse.stft import stft
    from trainer.ddp import Dist
    from trainer.losses import bin_weight, pu_risk
    from trainer.train import build_data, build_model, mixed_p_bins, pu_logits
    from trainer.validate import dev_pu_risk

    cfg = tiny(corpus, tmp_path, clean=None, noisy=str(corpus / "noisy"), p_level="mixed", risk="pvu").validate()
    _, dev, _ = build_data(cfg, Dist(), None)
    assert dev.p_noise is not None and dev.p_noise.shape == dev.p.shape
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    got = dev_pu_risk(model, dev.u, dev.p, cfg, "cpu", dev.p_noise)
    mu, sp = stft(dev.u).abs(), stft(dev.p)
    with torch.no_grad():
        fu, fp = pu_logits(model, torch.cat((mu, sp.abs())), cfg).chunk(2)
    bins = mixed_p_bins(sp, dev.p_noise, cfg.p_mix_margin)
    want = pu_risk(fp, fu, bin_weight(sp.abs(), 1.0), bin_weight(mu, 1.0), cfg.prior, "upu", p_bins=bins)
    assert got["val_risk_p"] == pytest.approx(float(want.risk_p), rel=1e-5)
    assert got["val_risk_u"] == pytest.approx(float(want.risk_u), rel=1e-5)
    assert got["val_risk_p"] != pytest.approx(dev_pu_risk(model, dev.u, dev.p, cfg, "cpu")["val_risk_p"], rel=1e-3)


@pytest.mark.parametrize("val", [False, True])  # held-out files, or --val-clean/--val-noise folders
def test_noise_warp_warps_training_noise_but_never_the_dev_clips(corpus, tmp_path, val):
    from trainer.ddp import Dist
    from trainer.train import build_data

    folders = {"val_clean": str(corpus / "clean"), "val_noise": str(corpus / "noise")} if val else {}
    plain, warped = (build_data(tiny(corpus, tmp_path, noise_warp=w, **folders).validate(), Dist(), None)
                     for w in (0.0, 1.0))
    assert warped[0].noise_warp == 1.0
    torch.testing.assert_close(warped[1].noisy, plain[1].noisy, rtol=0, atol=0)
    torch.testing.assert_close(warped[1].clean, plain[1].clean, rtol=0, atol=0)
    draw = [r.batch(4, 1600, torch.Generator().manual_seed(0)).p for r in (plain[0], warped[0])]
    assert (draw[0] - draw[1]).abs().max() > 0.1  # the training noise itself is warped


def test_noise_balance_and_noise_mix_reach_the_training_recipe(corpus, tmp_path):
    from trainer.ddp import Dist
    from trainer.train import build_data

    plain, balanced, mixed = (build_data(tiny(corpus, tmp_path / k, **kw).validate(), Dist(), None)[0] for k, kw in
                              (("p", {}), ("b", {"noise_balance": True}), ("m", {"noise_mix": 1.0})))
    assert float(plain.noise.weights.sum()) == plain.noise.samples.numel()  # files by length
    assert float(balanced.noise.weights.sum()) == pytest.approx(1.0)  # one folder: its files share one draw
    console = Console(file=io.StringIO(), width=200)
    build_data(tiny(corpus, tmp_path / "c", noise_balance=True).validate(), Dist(), console)
    assert "--noise-balance changes nothing here" in console.file.getvalue()
    assert mixed.noise_mix == 1.0
    draw = [r.batch(4, 1600, torch.Generator().manual_seed(0)).p for r in (plain, mixed)]
    assert (draw[0] - draw[1]).abs().max() > 0.1  # every P clip has a second noise in it


def test_noise_mix_with_noisy_recordings_is_refused(corpus, tmp_path):
    with pytest.raises(RtpulseError, match="--noise-mix mixes the noise added to --clean"):
        tiny(corpus, tmp_path, clean=None, noisy=str(corpus / "noisy"), noise_mix=0.5).validate()


def test_heldout_risk_weighs_a_short_last_batch_by_its_clips(corpus, tmp_path, monkeypatch):
    # 3 clips in batches of 2: the mean over the batches must equal the one-batch mean (each clip has the same bins),
    # not count the last clip as much as the first two together
    from trainer.ddp import Dist
    from trainer.train import build_data, build_model
    from trainer.validate import dev_pu_risk

    cfg = tiny(corpus, tmp_path, clean=None, noisy=str(corpus / "noisy"), dev_count=3).validate()
    _, dev, _ = build_data(cfg, Dist(), None)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    whole = dev_pu_risk(model, dev.u, dev.p, cfg, "cpu")
    monkeypatch.setattr("trainer.validate.EVAL_BATCH", 2)
    split = dev_pu_risk(model, dev.u, dev.p, cfg, "cpu")
    first_two = dev_pu_risk(model, dev.u[:2], dev.p[:2], cfg, "cpu")
    assert first_two["val_risk_u"] != pytest.approx(whole["val_risk_u"], rel=1e-3)  # the clips differ
    for k in ("val_risk_p", "val_risk_u", "val_u_speech"):
        assert split[k] == pytest.approx(whole[k], rel=1e-5), k


def _tiny_train_args(corpus, tmp_path, run, *extra: str) -> list[str]:
    return ["train", "--out", str(run), "--clean", str(corpus / "clean"), "--noise", str(corpus / "noise"),
            "--cache", str(tmp_path / "cache"), "--steps-per-epoch", "2", "--batch-size", "2", "--crop-seconds", "0.1",
            "--dev-count", "2", "--dev-seconds", "0.25", "--device", "cpu", *extra]


def test_cli_one_epoch_smoke_train_then_eval(corpus, tmp_path):
    run = tmp_path / "run"
    res = CliRunner().invoke(app, _tiny_train_args(
        corpus, tmp_path, run, "--epochs", "1", "--warmup-steps", "4", "--val-clean", str(corpus / "clean"),
        "--val-noise", str(corpus / "noise"), "--level-frames", "30", "--floor-frames", "20",
        "--context-seconds", "0.05", "--freq-input",
    ))
    assert res.exit_code == 0, res.output
    # the path a user copies is never broken across lines (tmp_path is longer than the runner's 80 columns)
    assert f"best epoch 1 → {run}/best.safetensors" in res.output
    saved = load_model(run / "last.safetensors").config
    assert (saved.level_frames, saved.floor_frames, saved.freq_input) == (30, 20, True)  # the options reach the model
    state = torch.load(run / "ckpt" / "epoch-0001.state.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(3e-4 * 3 / 4)  # warm-up step 3 of 4
    split = json.loads((run / "split.json").read_text())
    assert split["clean"]["held_out"] == [] and len(split["val"]["clean"]) == 3
    res = CliRunner().invoke(app, ["train", "--resume", str(run), "--epochs", "1"])
    assert res.exit_code == 0, res.output  # already at epoch 1: nothing to do, still fine, and said so
    assert "has already trained all 1 epochs: nothing to do (give --epochs above 1 to go on)" in res.output
    assert "trained 1 epochs" not in res.output


def test_cli_minutes_plans_from_the_first_epoch_under_a_default_cap(corpus, tmp_path):
    run = tmp_path / "run"
    res = CliRunner().invoke(app, _tiny_train_args(corpus, tmp_path, run, "--minutes", "1e-5"))
    assert res.exit_code == 0, res.output
    # 0.6 ms is less than any epoch: the one run is all the budget holds
    assert "--minutes 1e-05: epoch 1 took" in res.output and "→ 1 epochs (--epochs 10000 the cap)" in res.output
    assert "trained 1 epochs" in res.output
    saved = json.loads((run / "config.json").read_text())
    assert (saved["epochs"], saved["minutes"]) == (1, None)


@pytest.mark.parametrize("args, message", [
    (["--noise", "n"], "give --clean DIR"),
    (["--clean", "c", "--noise", "n", "--val-floor-db", "5"], "--val-floor-db must be within −120…0 dB"),
    # PU's options are refused for the baselines, which would ignore them and still record them in config.json
    (["--clean", "c", "--noise", "n", "--method", "pn", "--risk", "upu"], "--risk is a PU option"),
    (["--clean", "c", "--noise", "n", "--method", "mixit", "--prior", "0.3"], "--method mixit does not use it"),
    (["--clean", "c", "--noise", "n", "--method", "pn", "--pvu-steps", "5"], "--pvu-steps is a PU option"),
    (["--clean", "c", "--noise", "n", "--weight-exponent", "-3"], "--weight-exponent must be 0…4"),
    (["--clean", "c", "--noisy", "u", "--noise", "n"], "exactly one"),
    (["--noisy", "u", "--noise", "n", "--method", "pn"], "trains PU only"),
    (["--noisy", "u", "--noise", "n", "--speech-floor-db", "-25"], "not --noisy"),
    (["--clean", "c", "--noise", "n", "--floor-frames", "-3"], "--floor-frames must be 0…1000"),
    (["--clean", "c", "--noise", "n", "--context-seconds", "-1"], "--context-seconds must be 0…60"),
    (["--clean", "c", "--noise", "n", "--lr", "nan"], "--lr must be a finite number"),
    (["--clean", "c", "--noise", "n", "--dev-fraction", "1"], "--dev-fraction must be in [0, 1)"),
    (["--clean", "c", "--noise", "n", "--snr-min", "10", "--snr-max", "-5"], "is above --snr-max"),
    # refused before any audio is decoded: the data folders "c" and "n" do not even exist
    (["--clean", "c", "--noise", "n", "--lookahead", "99"], "lookahead must be 0…6 for preset 'blocks2'"),
    (["--clean", "c", "--noise", "n", "--device", "bogus"], "is not a device"),
    (["--clean", "c", "--noise", "n", "--freq-scale", "30"], "give --freq-input"),
    (["--clean", "c", "--noise", "n", "--freq-input", "--freq-scale", "0"], "--freq-scale must be 0.1…1000"),
    (["--clean", "c", "--noise", "n", "--beta", "-0.1"], "--beta must be ≥ 0 and --gamma in [0, 1]"),
    (["--clean", "c", "--noise", "n", "--gamma", "1.5"], "--beta must be ≥ 0 and --gamma in [0, 1]"),
    (["--clean", "c", "--noise", "n", "--gamma", "-1"], "--beta must be ≥ 0 and --gamma in [0, 1]"),
    (["--clean", "c", "--noise", "n", "--snr-min", "1e6", "--snr-max", "1e7"], "must be −50…50 dB"),
    (["--clean", "c", "--noise", "n", "--crop-seconds", "1e9"], "at most 60 s"),
    (["--clean", "c", "--noise", "n", "--dev-seconds", "1e9"], "at most 60 s"),
    (["--clean", "c", "--noise", "n", "--seed", "-1"], "--seed must be 0…"),
    (["--clean", "c", "--noise", "n", "--warmup-steps", "-5"], "--warmup-steps must be ≥ 0"),
    (["--clean", "c", "--noise", "n", "--epochs", "0"], "--epochs must be ≥ 1"),
    (["--clean", "c", "--noise", "n", "--minutes", "0"], "--minutes must be above 0"),
    (["--clean", "c", "--noise", "n", "--ema", "1"], "--ema is the average's decay per step, in [0, 1)"),
    (["--clean", "c", "--noise", "n", "--ema", "-0.5"], "--ema is the average's decay per step, in [0, 1)"),
    (["--clean", "c", "--noise", "n", "--output-bias", "1e308"], "--output-bias must be −100…100"),
])
def test_cli_bad_options_fail_in_one_line(tmp_path, args, message):
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), *args])
    assert res.exit_code == 1
    assert message in res.output and "Traceback" not in res.output


def test_cli_refuses_to_overwrite_a_run(corpus, tmp_path):
    run_training(tiny(corpus, tmp_path, steps_per_epoch=1), progress=False)
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), "--clean", str(corpus / "clean"),
                                   "--noise", str(corpus / "noise"), "--cache", str(tmp_path / "cache")])
    assert res.exit_code == 1 and "--resume" in res.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_cuda_on_a_machine_without_it_is_one_line_error(tmp_path):
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--clean", "c", "--noise", "n",
                                   "--device", "cuda"])
    assert res.exit_code == 1 and "has no CUDA; use --device cpu" in res.output and "Traceback" not in res.output


def test_out_that_is_a_file_is_refused_and_kept(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    res = CliRunner().invoke(app, ["train", "--out", str(f), "--clean", "c", "--noise", "n"])
    assert res.exit_code == 1 and "is a file; give a folder" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["train", "--out", str(f / "run"), "--clean", "c", "--noise", "n"])
    assert res.exit_code == 1 and "is a file, not a folder" in res.output and "Traceback" not in res.output
    assert f.read_text() == "mine"


def test_resume_reads_its_own_config_takes_a_new_device_and_refuses_a_damaged_one(tmp_path):
    from trainer.train import resume_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"out": "elsewhere", "clean": "c", "noise": "n", "lr": 1,
                                                 "device": "cuda", "p_mix_margin_db": None}))
    assert TrainConfig(out=str(run), clean="c", noise="n", dev_fraction=0.0).validate().dev_fraction == 0.0  # no hold-out
    cfg = resume_config(run, device="cpu")
    assert (cfg.out, cfg.lr, cfg.device, cfg.epochs) == (str(run), 1.0, "cpu", 10)  # epochs: the default
    assert isinstance(cfg.lr, float)
    assert resume_config(run).device == "cuda"
    good = {"out": "r", "clean": "c", "noise": "n", "p_level": "mixed"}
    for damaged in ('{"out": "r", "clea', "[1, 2]", json.dumps({**good, "lr": "x"}),
                    json.dumps({**good, "p_mix_margin_db": "6"}), json.dumps({**good, "epochs": 2.5}),
                    json.dumps({**good, "freq_input": 1})):
        (run / "config.json").write_text(damaged)
        res = CliRunner().invoke(app, ["train", "--resume", str(run)])
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert lines[-1].startswith("error: cannot resume:") and "not a readable run config" in lines[-1]


def test_out_folder_with_a_users_files_is_refused_untouched(corpus, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"my": "settings"}')
    (run / "metrics.jsonl").write_text("keep me\n")
    with pytest.raises(RtpulseError, match="already holds config.json; give a new or empty --out"):
        run_training(tiny(corpus, tmp_path, steps_per_epoch=1), progress=False)
    assert (run / "config.json").read_text() == '{"my": "settings"}'
    assert (run / "metrics.jsonl").read_text() == "keep me\n"


def test_a_run_killed_in_its_first_epoch_starts_again(corpus, tmp_path, monkeypatch):
    cfg = tiny(corpus, tmp_path, steps_per_epoch=1)
    with monkeypatch.context() as m:  # killed after epoch 1's line and best.safetensors, before its checkpoint
        _kill_at(m, "save_checkpoint", 1)
        with pytest.raises(Killed):
            run_training(cfg, progress=False)
    assert not any((tmp_path / "run" / "ckpt").glob("*.state.pt"))
    summary = run_training(cfg, progress=False)  # the same command again
    assert summary["epochs"] == 1
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1]  # the killed run's line is not kept twice


def test_resume_below_the_epochs_done_is_refused_and_keeps_the_config(corpus, tmp_path):
    from trainer.train import resume_config

    run_training(tiny(corpus, tmp_path, epochs=2, steps_per_epoch=1), progress=False)
    before = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(RtpulseError, match="already trained 2 epochs; give --epochs above 2"):
        run_training(resume_config(tmp_path / "run", epochs=1), resume=True, progress=False)
    assert (tmp_path / "run" / "config.json").read_text() == before


def test_resume_refuses_damaged_metrics_and_an_edited_recipe_before_decoding(corpus, tmp_path, monkeypatch):
    import trainer.train
    from trainer.train import resume_config

    run_training(tiny(corpus, tmp_path, epochs=1, steps_per_epoch=1), progress=False)
    run = tmp_path / "run"
    monkeypatch.setattr(trainer.train, "build_data", lambda *a, **k: pytest.fail("decoded audio before refusing"))
    metrics = run / "metrics.jsonl"
    good = metrics.read_text()
    for damaged, line in (('not json\n', 2), ('{"step": 3}\n', 2), ("7\n", 2)):
        metrics.write_text(good + damaged)
        with pytest.raises(RtpulseError, match=f"metrics.jsonl line {line} is not a metrics record"):
            run_training(resume_config(run, epochs=2), resume=True, progress=False)
        assert metrics.read_text() == good + damaged  # the record is the user's to repair: left as it was
    metrics.write_text(good)
    config = json.loads((run / "config.json").read_text())
    for key, value in (("preset", "blocks3"), ("method", "pn")):
        (run / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(RtpulseError, match=f"config.json says {key} = '{value}' but its checkpoint was trained"):
            run_training(resume_config(run, epochs=2), resume=True, progress=False)
    (run / "config.json").write_text(json.dumps(config))
    metrics.unlink()
    metrics.mkdir()
    with pytest.raises(RtpulseError, match="metrics.jsonl is not a file"):
        run_training(resume_config(run, epochs=2), resume=True, progress=False)


def test_a_run_from_before_ema_given_one_in_its_config_is_refused_before_decoding(corpus, tmp_path, monkeypatch):
    import trainer.train
    from rtpulse.model import save_model
    from trainer.train import resume_config

    run_training(tiny(corpus, tmp_path, epochs=1, steps_per_epoch=1), progress=False)
    run = tmp_path / "run"
    ckpt = run / "ckpt" / "epoch-0001.safetensors"
    model = load_model(ckpt)
    del model.config.extra["train_config"]["ema"]  # a checkpoint from before --ema
    save_model(model, ckpt)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "ema": 0.5}))
    monkeypatch.setattr(trainer.train, "build_data", lambda *a, **k: pytest.fail("decoded audio before refusing"))
    with pytest.raises(RtpulseError, match="checkpoint holds no weight average for --ema 0.5"):
        run_training(resume_config(run, epochs=2), resume=True, progress=False)


def test_a_cache_that_is_a_file_and_audio_with_nan_are_one_line_errors(corpus, tmp_path):
    from trainer.data import decode_cached

    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(RtpulseError, match="cannot write the decoded-audio cache .*notes.txt"):
        run_training(tiny(corpus, tmp_path, cache=str(notes)), progress=False)
    assert notes.read_text() == "mine" and not (tmp_path / "run").exists()  # no empty run folder left behind
    bad = tmp_path / "bad.wav"
    x = np.zeros(4000, np.float32)
    x[100] = np.nan
    sf.write(bad, x, 16000, subtype="FLOAT")
    for cache in (None, tmp_path / "cache2"):
        with pytest.raises(RtpulseError, match="bad.wav holds NaN or infinite samples"):
            decode_cached(bad, cache)


def test_a_damaged_cache_entry_is_decoded_again(corpus, tmp_path):
    from trainer.data import decode_cached

    src, cache = corpus / "noise" / min(p.name for p in (corpus / "noise").iterdir()), tmp_path / "cache"
    want = decode_cached(src, cache)
    (entry,) = cache.glob("*.npy")
    for damage in (b"", b"\x93NUMPY", b"garbage"):  # empty: a crash right after the rename (EOFError once escaped)
        entry.write_bytes(damage)
        np.testing.assert_array_equal(decode_cached(src, cache), want)
        np.testing.assert_array_equal(np.load(entry), want)  # and the entry is whole again


def test_silent_noise_is_left_out_with_a_note_and_an_all_silent_folder_is_refused(corpus, tmp_path):
    import shutil

    noise = tmp_path / "noise"
    shutil.copytree(corpus / "noise", noise)
    sf.write(noise / "quiet.wav", np.zeros(16000, np.float32), 16000)
    sf.write(noise / "empty.wav", np.zeros(0, np.float32), 16000)
    console = Console(record=True, width=300)
    run_training(tiny(corpus, tmp_path, noise=str(noise), dev_fraction=0.0), console=console, progress=False)
    assert f"left out 2 empty or silent file(s): {noise / 'empty.wav'}, {noise / 'quiet.wav'}" in console.export_text()
    silent = tmp_path / "silent"
    silent.mkdir()
    sf.write(silent / "zeros.wav", np.zeros(16000, np.float32), 16000)
    sf.write(silent / "zeros2.wav", np.zeros(16000, np.float32), 16000)
    with pytest.raises(RtpulseError, match=f"every audio file under {silent} is empty or silent"):
        run_training(tiny(corpus, tmp_path, out=str(tmp_path / "run2"), noise=str(silent), dev_fraction=0.0),
                     progress=False)
    assert not (tmp_path / "run2").exists()


def test_a_silent_file_drawn_as_the_held_out_noise_costs_the_validation_not_the_run(corpus, tmp_path):
    import shutil

    from trainer.data import list_audio, split_files
    from trainer.ddp import Dist
    from trainer.train import build_data

    noise = tmp_path / "noise"
    shutil.copytree(corpus / "noise", noise)
    sf.write(noise / "quiet.wav", np.zeros(16000, np.float32), 16000)
    # a seed whose split holds out just that file (the split is drawn before any file is decoded)
    seed = next(s for s in range(100) if split_files(list_audio(noise, "n"), 0.34, s + 1)[1] == [noise / "quiet.wav"])
    console = Console(record=True, width=300)
    recipe, dev, _ = build_data(tiny(corpus, tmp_path, noise=str(noise), seed=seed), Dist(), console)
    assert len(recipe.noise.names) == 3 and dev.noisy is None and dev.u is None
    text = console.export_text()
    assert f"the held-out file(s) {noise / 'quiet.wav'} are all empty or silent" in text
    assert "no validation data" in text


def test_validation_keeps_quiet_references_unless_told_otherwise(corpus, tmp_path):
    import shutil

    val = tmp_path / "val"
    shutil.copytree(corpus / "clean" / "sub", val)  # gated tones: silent between "words"
    t = np.arange(16000) / 16000
    background = 0.3 * np.sin(2 * np.pi * 200 * t) + 0.1 * np.random.default_rng(5).standard_normal(t.size)
    sf.write(val / "over_a_fan.wav", background.astype(np.float32), 16000)  # floor ≈ −6 dB: no quiet frames

    def val_files(run: str, **kw) -> list[str]:
        cfg = tiny(corpus, tmp_path, out=str(tmp_path / run), val_clean=str(val), val_noise=str(corpus / "noise"), **kw)
        run_training(cfg, progress=False)
        return sorted(Path(f).name for f in json.loads((tmp_path / run / "split.json").read_text())["val"]["clean"])

    assert val_files("quiet") == ["s0.wav", "s1.wav", "s2.wav"]  # the default: −25 dB, as the test set's references
    assert val_files("all", val_floor_db=0.0) == ["over_a_fan.wav", "s0.wav", "s1.wav", "s2.wav"]
    for f in ("s0.wav", "s1.wav", "s2.wav"):
        (val / f).unlink()
    with pytest.raises(RtpulseError, match=r"no --val-clean file has a noise floor ≤ -25 dB; raise --val-floor-db"):
        run_training(tiny(corpus, tmp_path, out=str(tmp_path / "none"), val_clean=str(val),
                          val_noise=str(corpus / "noise")), progress=False)


def test_a_diverged_loss_stops_with_one_line_and_saves_nothing(corpus, tmp_path, monkeypatch):
    import trainer.train

    real = trainer.train.compute_loss

    def nan_loss(*args, **kw):
        loss, stats = real(*args, **kw)
        return loss * float("nan"), {**stats, "loss": stats["loss"] * float("nan")}

    monkeypatch.setattr(trainer.train, "compute_loss", nan_loss)
    with pytest.raises(RtpulseError, match="training diverged: the loss is nan in epoch 1, which was not saved"):
        run_training(tiny(corpus, tmp_path, steps_per_epoch=1), progress=False)
    assert not (tmp_path / "run" / "best.safetensors").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_no_validation_data_is_said(tmp_path):
    t = np.arange(8000) / 16000
    for d in ("clean", "noise"):
        (tmp_path / d).mkdir()
    sf.write(tmp_path / "clean" / "s.wav", (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000)
    sf.write(tmp_path / "noise" / "n.wav", (0.1 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32), 16000)
    res = CliRunner().invoke(app, [
        "train", "--out", str(tmp_path / "run"), "--clean", str(tmp_path / "clean"), "--noise", str(tmp_path / "noise"),
        "--cache", str(tmp_path / "cache"), "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "1",
        "--crop-seconds", "0.1", "--dev-count", "1", "--dev-seconds", "0.1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "no validation data" in res.output and "lowest training loss" in res.output
    assert "legend" not in res.output  # matplotlib's warning about an empty legend


def test_a_bad_init_model_fails_before_any_audio_is_decoded(corpus, tmp_path, monkeypatch):
    def no_decoding(*args, **kw):
        raise AssertionError("decoded audio before checking --init-from")

    monkeypatch.setattr("trainer.train.build_data", no_decoding)
    with pytest.raises(RtpulseError, match="model file not found"):
        run_training(tiny(corpus, tmp_path, init_from=str(tmp_path / "gone.safetensors")), progress=False)


def test_a_run_killed_while_saving_its_first_checkpoint_starts_again(corpus, tmp_path, monkeypatch):
    # a SIGKILL inside the first save leaves weights without a state file, a temp file and a half-written line
    cfg = tiny(corpus, tmp_path, steps_per_epoch=1)
    with monkeypatch.context() as m:
        _kill_at(m, "save_checkpoint", 1)
        with pytest.raises(Killed):
            run_training(cfg, progress=False)
    ckpt = tmp_path / "run" / "ckpt"
    ckpt.mkdir(exist_ok=True)
    (ckpt / "epoch-0001.safetensors").write_bytes(b"half")
    (ckpt / ".epoch-0001.state.pt.tmp-1").write_bytes(b"half")
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "lo')
    summary = run_training(cfg, progress=False)
    assert summary["epochs"] == 1
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1]
    assert load_checkpoint(tmp_path / "run")[1]["epoch"] == 1


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_a_run_keeps_freed_memory_and_records_the_precision_it_used(corpus, tmp_path, monkeypatch, precision):
    import trainer.train

    calls = []
    monkeypatch.setattr(trainer.train, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(trainer.config, "cpu_has_native_bf16", lambda: True)  # bf16 runs emulated where it is not
    run_training(tiny(corpus, tmp_path, precision=precision, steps_per_epoch=1), progress=False)
    assert calls == [1]
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["precision"] == ("bf16" if precision == "bf16" else "fp32")  # auto on a CPU: float32


def test_dev_sisnri_is_the_mean_over_clips_across_eval_batches(monkeypatch):
    """The score that picks the best epoch: 3 clips in batches of 2 must average over 3, not over batches or 2s."""
    from conftest import random_model

    import trainer.validate
    from rtpulse.metrics import si_snr
    from rtpulse.stream import enhance
    from trainer.validate import dev_sisnri

    rng = np.random.default_rng(5)
    clean = torch.from_numpy((0.3 * rng.standard_normal((3, 4000))).astype(np.float32))
    noisy = clean + torch.from_numpy((rng.standard_normal((3, 4000)) * [[0.1], [0.5], [2.0]]).astype(np.float32))
    model = random_model()
    monkeypatch.setattr(trainer.validate, "EVAL_BATCH", 2)
    got = dev_sisnri(model, noisy, clean, "cpu")
    for mask in ("binary", "soft"):
        per_clip = [float(si_snr(enhance(model, noisy[i], mask), clean[i]) - si_snr(noisy[i], clean[i]))
                    for i in range(3)]
        assert got[f"dev_sisnri_{mask}"] == pytest.approx(np.mean(per_clip), abs=1e-5)
