"""The training loop: on-device mixing → one STFT → PulseCNN → PU / PN / MixIT loss → Adam.

Per epoch: ``steps_per_epoch`` steps of freshly mixed clips, validation, one JSON line in
RUN_DIR/metrics.jsonl, an atomic checkpoint (RUN_DIR/ckpt), RUN_DIR/last.safetensors and, when the
validation score improves, RUN_DIR/best.safetensors. ``resume`` continues from the newest checkpoint
with the same step, optimizer state and random streams (each epoch's streams derive from seed, epoch
and rank, so a resumed epoch draws exactly the clips the killed run would have).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.console import Console
from rich.text import Text

from rtpulse.errors import RtpulseError
from rtpulse.files import probe_writable_dir, write_text_atomic
from rtpulse.model import N_BINS, PulseCNN, save_model
from rtpulse.stft import HOP, SAMPLE_RATE, stft
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.config import TrainConfig, effective_precision
from trainer.data import (
    AudioBank,
    Batch,
    Recipe,
    default_cache_dir,
    list_audio,
    name_list,
    quiet_floor_files,
    read_split,
    split_files,
    write_split,
)
from trainer.ddp import Dist, global_mean, init_distributed
from trainer.ema import WeightAverage
from trainer.losses import bin_weight, mixit_loss, pn_loss, pu_risk
from trainer.memory import keep_freed_memory
from trainer.validate import DevData

# what a run writes beside ckpt/: a fresh run refuses a folder holding any of them (it would overwrite or append)
RUN_FILES = ("config.json", "split.json", "metrics.jsonl", "best.safetensors", "last.safetensors", "training.png")
STAT_KEYS = ("loss", "risk_p", "risk_u", "corrected", "u_speech", "logit_mean", "logit_std")


# --- one step ------------------------------------------------------------------------------------------


def context_frames(cfg: TrainConfig) -> int:
    """Whole hops of --context-seconds: frames of each clip that only feed the model's level/floor trackers."""
    return round(cfg.context_seconds * SAMPLE_RATE) // HOP


def autocast_for(precision: str, device: torch.device):
    """The model's forward under bf16 autocast ("bf16", or "auto" on CUDA), else float32. Losses stay float32."""
    if effective_precision(precision, device.type) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def pu_logits(model: torch.nn.Module, mag: torch.Tensor, cfg: TrainConfig, ctx: int = 0) -> torch.Tensor:
    """Noise logits ``[2B, F, T − ctx]`` of U clips then P clips (``mag`` ``[2B, F, T]``, same order).

    With ``cfg.p_gain == "u"`` P clip i goes through the level normaliser at U clip i's gain (a no-op without it)."""
    gain = None
    if cfg.p_gain == "u":
        g_u = getattr(model, "module", model).level_gain(mag[: mag.shape[0] // 2])  # DDP wraps the model
        gain = torch.cat((g_u, g_u))
    return model(mag, ctx, gain)[:, 0].float()


def mixed_p_bins(p_spec: torch.Tensor, p_noise: torch.Tensor | None, margin_db: float) -> torch.Tensor | None:
    """0/1 like ``p_spec`` (the P clips' complex STFT ``[B, F, T]``): under ``--p-level mixed`` the bins where the
    added noise (waveforms ``p_noise``) leads the host U clip by ``margin_db`` (amplitude dB). None for plain P clips.
    The STFT is linear, so the host's part is ``p_spec − stft(p_noise)``."""
    if p_noise is None:
        return None
    added = stft(p_noise)
    return (added.abs() >= (p_spec - added).abs() * 10.0 ** (margin_db / 20.0)).to(p_spec.real.dtype)


def compute_loss(model: torch.nn.Module, batch: Batch, cfg: TrainConfig, step: int = 0) -> tuple[torch.Tensor, dict]:
    """Loss and diagnostics (0-dim tensors, no host sync). U = ``batch.u`` is what the model enhances.

    ``step`` (steps done before this one) selects the P-vs-U warm start for the first ``cfg.pvu_steps``.
    The clips' first ``context_frames(cfg)`` frames are history for the trackers: no logits, no loss.
    """
    ctx = context_frames(cfg)
    autocast = autocast_for(cfg.precision, batch.u.device)
    zero = torch.zeros((), device=batch.u.device)
    if cfg.method == "pu":
        n = batch.u.shape[0]
        spec = stft(torch.cat((batch.u, batch.p)))  # [2B, 513, ctx + M]: U clips then P clips
        full = spec.abs()
        mag = full[..., ctx:]
        with autocast:
            f = pu_logits(model, full, cfg, ctx)  # [2B, 513, M]
        w = bin_weight(mag, cfg.weight_exponent)
        risk = "pvu" if step < cfg.pvu_steps else cfg.risk
        # under DDP each rank averages over its own P bins: ranks' P bins weigh a little unevenly, as clips do
        p_bins = mixed_p_bins(spec[n:], batch.p_noise, cfg.p_mix_margin)
        p_bins = None if p_bins is None else p_bins[..., ctx:]
        # nnPU's correction is decided on the whole batch (all ranks), as one process would
        r = pu_risk(f[n:], f[:n], w[n:], w[:n], cfg.prior, risk, cfg.beta, cfg.gamma, p_bins, decide_on=global_mean)
        loss, f_u, extra = r.loss, f[:n], {"risk_p": r.risk_p, "risk_u": r.risk_u, "corrected": r.corrected}
    elif cfg.method == "pn":
        full_u, mag_s = stft(torch.cat((batch.u, batch.clean))).abs().chunk(2)
        mag_u, mag_s = full_u[..., ctx:], mag_s[..., ctx:]
        with autocast:
            f_u = model(full_u, ctx)[:, 0].float()
        loss, extra = pn_loss(f_u, mag_u, mag_s), {}
    else:
        full = stft(torch.cat((batch.mix, batch.u, batch.noise))).abs()
        mag_m, mag_u, mag_n = full[..., ctx:].chunk(3)
        with autocast:
            logits = model(full[: batch.mix.shape[0]], ctx).float()  # [B, 3, 513, M]
        loss, f_u, extra = mixit_loss(logits, mag_m, mag_u, mag_n), logits[:, 0], {}
    f_u = f_u.detach()
    stats = {"loss": loss.detach(), "risk_p": zero, "risk_u": zero, "corrected": zero,
             "u_speech": (f_u < 0).float().mean(), "logit_mean": f_u.mean(), "logit_std": f_u.std()}
    stats.update({k: v.detach() for k, v in extra.items()})
    return loss, stats


def train_step(model, optimizer, batch: Batch, cfg: TrainConfig, scheduler=None, step: int = 0) -> dict:
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss, stats = compute_loss(model, batch, cfg, step)
    loss.backward()
    if cfg.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return stats


# --- setup ---------------------------------------------------------------------------------------------


def build_model(cfg: TrainConfig, resume: bool = False) -> PulseCNN:
    """The run's model; ``resume`` skips --init-from (the checkpoint's weights replace it, and it may be gone)."""
    mc = cfg.model_config()
    torch.manual_seed(cfg.seed)
    model = PulseCNN(mc)
    if cfg.init == "he":
        with torch.no_grad():  # keeps the logit spread at init (PyTorch's default shrinks it ~1e-4 over 7 layers)
            for conv in model.convs[:-1]:
                torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                conv.bias.zero_()
            last = model.convs[-1]
            torch.nn.init.normal_(last.weight, std=last.in_channels**-0.5)
            last.bias.zero_()
    if cfg.init_from and not resume:
        from rtpulse.model import load_model

        start = load_model(cfg.init_from)
        with torch.no_grad():  # finite weights can still overflow float32: an epoch of NaN, then "lower --lr"
            probe = start(torch.ones(1, N_BINS, 16 + start.receptive_field[1]))
        if not torch.isfinite(probe).all():
            raise RtpulseError(f"--init-from {cfg.init_from}: the model's output is not finite: its weights "
                               "overflow float32 (a damaged model file?)")
        # lookahead only moves padding (same weight shapes), so an L = 0 model can start an L = 2 run
        if (start.config.compress, start.config.out_channels) != (mc.compress, mc.out_channels):
            raise RtpulseError(
                f"--init-from {cfg.init_from}: it has compress {start.config.compress!r} and "
                f"{start.config.out_channels} output(s), this run {mc.compress!r} and {mc.out_channels}"
            )
        if start.config.input_names != mc.input_names:
            wanted = [opt for opt, has, keeps in (
                ("--floor-frames", bool(start.config.floor_frames), bool(mc.floor_frames)),
                ("--freq-input", start.config.freq_input, mc.freq_input),
                ("--band-input", start.config.band_input, mc.band_input),
            ) if has and not keeps]
            if wanted:
                raise RtpulseError(f"--init-from {cfg.init_from}: it reads more inputs; give {' and '.join(wanted)}")
            if start.config.preset != mc.preset:
                raise RtpulseError(
                    f"--init-from {cfg.init_from}: can add inputs to a model of the same preset only "
                    f"(it is {start.config.preset!r}, this run {mc.preset!r})"
                )
            from trainer.grow import widen_inputs

            widen_inputs(start, model)
        elif start.config.preset == mc.preset:
            model.load_state_dict(start.state_dict())
        else:  # a smaller preset grows into this one, computing the same logits at step 0
            from trainer.grow import grow_into

            grow_into(start, model)
        if start.config.freq_input and mc.freq_input and start.config.freq_scale != mc.freq_scale:
            with torch.no_grad():  # the channel's range changes: its weights scale inversely, the logits stay
                model.convs[0].weight[:, mc.input_names.index("frequency")] *= start.config.freq_scale / mc.freq_scale
    if cfg.output_bias is not None:
        with torch.no_grad():  # e.g. negative: start by calling bins speech (f < 0)
            model.convs[-1].bias.fill_(cfg.output_bias)
    return model


def build_data(cfg: TrainConfig, d: Dist, console: Console | None,
               split: dict | None = None) -> tuple[Recipe, DevData, dict]:
    """Banks on the training device, fixed dev clips on the CPU, and the file split (``split``: a resumed
    run's own, from its split.json; else made from the folders)."""
    cache = Path(cfg.cache) if cfg.cache else default_cache_dir()
    speech_key = "clean" if cfg.clean else "noisy"
    have_val = cfg.val_clean is not None
    if split is None:
        split = _split_folders(cfg, cache, speech_key)
    sp_train, sp_held = split[speech_key]["train"], split[speech_key]["held_out"]
    no_train, no_held = split["noise"]["train"], split["noise"]["held_out"]

    def load(files: list[Path], held_out: bool = False) -> AudioBank | None:
        if not files:
            return None
        # the split is drawn before files are decoded: the held-out part may be a folder's one silent file, which
        # costs this validation, not the run
        bank = AudioBank.from_files(files, cache, required=not held_out)
        if bank is None:
            if console is not None:
                names = name_list([str(f) for f in files])
                console.print(Text.assemble(("note:", "yellow"), f" the held-out file(s) {names} are all empty or "
                              "silent: no validation on them"), highlight=False, soft_wrap=True)
            return None
        if console is not None and bank.left_out:
            console.print(Text.assemble(("note:", "yellow"), f" left out {len(bank.left_out)} empty or silent file(s): "
                          f"{name_list(bank.left_out)}"), highlight=False, soft_wrap=True)
        return bank

    if console is not None:
        n_all = sum(len(v) for part in split.values() for v in part.values())
        console.print(f"decoding {n_all} files (cached in {cache}) …", highlight=False)
    banks = {"noise": load(no_train), speech_key: load(sp_train)}
    if cfg.noise_balance:
        banks["noise"].balance_folders()
        if console is not None and len({Path(n).parent for n in banks["noise"].names}) == 1:
            console.print("note: --noise-balance changes nothing here: the training noise files are all in one folder",
                          highlight=False)
    recipe = Recipe(cfg.method, banks["noise"], clean=banks.get("clean"), noisy=banks.get("noisy"),
                    snr_range=(cfg.snr_min, cfg.snr_max), p_level=cfg.p_level, noise_warp=cfg.noise_warp,
                    noise_mix=cfg.noise_mix, lead=context_frames(cfg) * HOP).to(d.device)
    gen = torch.Generator().manual_seed(cfg.seed + 7919)  # the dev set is fixed for the whole run
    length = round(cfg.dev_seconds * SAMPLE_RATE)
    dev = DevData()
    if have_val:
        vr = Recipe("pn", load(split["val"]["noise"]), clean=load(split["val"]["clean"]),
                    snr_range=(cfg.snr_min, cfg.snr_max))
        dev.noisy, dev.clean = vr.noisy_clips(cfg.dev_count, length, gen)
    held_noise, held_speech = (load(no_held, True), load(sp_held, True)) if sp_held and no_held else (None, None)
    if held_noise is not None and held_speech is not None:
        hr = Recipe("pu" if cfg.noisy else "pn", held_noise, clean=held_speech if cfg.clean else None,
                    noisy=held_speech if cfg.noisy else None, snr_range=(cfg.snr_min, cfg.snr_max),
                    p_level=cfg.p_level)
        if cfg.noisy:
            b = hr.batch(cfg.dev_count, length, gen)
            dev.u, dev.p, dev.p_noise = b.u, b.p, b.p_noise
        elif not have_val:
            dev.noisy, dev.clean = hr.noisy_clips(cfg.dev_count, length, gen)
    if console is not None and dev.noisy is None and dev.u is None:
        console.print(Text.assemble(("note:", "yellow"), " no validation data (no --val-clean/--val-noise, and too "
                      "few files to hold out: --dev-fraction needs ≥ 2 files of speech and of noise), so "
                      "best.safetensors is the epoch with the lowest training loss"))
    return recipe, dev, split


def _split_folders(cfg: TrainConfig, cache: Path, speech_key: str) -> dict:
    noise_files = list_audio(Path(cfg.noise), "--noise")
    speech_files = list_audio(Path(cfg.clean or cfg.noisy), f"--{speech_key}")
    if cfg.speech_floor_db is not None:  # speech with a background the noise set lacks teaches "keep it"
        speech_files = quiet_floor_files(speech_files, cfg.speech_floor_db, cache, "--clean")
    # with a separate clean validation set, synthetic training keeps every file; real mode still holds
    # out P/U files for its risk.
    frac = 0.0 if (cfg.val_clean is not None and cfg.clean) else cfg.dev_fraction
    sp_train, sp_held = split_files(speech_files, frac, cfg.seed)
    no_train, no_held = split_files(noise_files, frac, cfg.seed + 1)
    split = {speech_key: {"train": sp_train, "held_out": sp_held}, "noise": {"train": no_train, "held_out": no_held}}
    if cfg.val_clean is not None:
        val_clean = list_audio(Path(cfg.val_clean), "--val-clean")
        floor = min(cfg.val_floor_db, 0.0 if cfg.speech_floor_db is None else cfg.speech_floor_db)
        if floor < 0.0:
            option = "--val-floor-db" if floor == cfg.val_floor_db else "--speech-floor-db"
            val_clean = quiet_floor_files(val_clean, floor, cache, "--val-clean", option)
        split["val"] = {"clean": val_clean, "noise": list_audio(Path(cfg.val_noise), "--val-noise")}
    return split


def _lr_factor(cfg: TrainConfig):
    """Linear warm-up, then constant or a cosine decay to 1 % of --lr at the last step."""
    warm, total = cfg.warmup_steps, cfg.epochs * cfg.steps_per_epoch

    def factor(step: int) -> float:
        if warm > 0 and step < warm:
            return (step + 1) / warm
        if cfg.lr_schedule == "constant":
            return 1.0
        done = min(1.0, (step - warm) / max(1, total - warm))
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * done))

    return factor


def planned_epochs(cfg: TrainConfig, first_epoch: int, seconds_per_epoch: float) -> int:
    """The total for a ``--minutes`` run: the epochs done, plus as many more as fit in the budget at the pace of
    ``first_epoch`` (its steps, validation and checkpoint), counting ``first_epoch`` itself; at least that epoch and
    at most ``--epochs``; a P-vs-U warm start that the budget cannot get past is a one-line error."""
    fit = first_epoch - 1 + max(1, math.floor(cfg.minutes * 60 / max(seconds_per_epoch, 1e-9)))
    warm = cfg.pvu_steps // cfg.steps_per_epoch + 1 if cfg.method == "pu" and cfg.risk != "pvu" else 1
    if warm > min(cfg.epochs, fit):  # its epochs never compete for best: a run inside it would keep epoch 1
        raise RtpulseError(f"--pvu-steps {cfg.pvu_steps} needs {warm} epochs, but {cfg.minutes:g} minutes hold "
                           f"{min(cfg.epochs, fit)} at {seconds_per_epoch:.1f} s an epoch: lower --pvu-steps or raise "
                           f"--minutes (the epoch done is kept: --resume {cfg.run_dir} --epochs N goes on)")
    return min(cfg.epochs, fit)


def _write_line(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _trim_metrics(path: Path, upto_epoch: int) -> None:
    """A killed run may have logged epochs it never checkpointed: keep lines up to ``upto_epoch``."""
    if not path.is_file():
        return
    # complete lines only: a kill inside a write leaves a last line without its newline (and maybe half its JSON)
    keep = [ln for i, ln in enumerate(path.read_text().split("\n")[:-1], 1)
            if ln.strip() and _metrics_epoch(path, i, ln) <= upto_epoch]
    write_text_atomic(path, "".join(ln + "\n" for ln in keep))


def _metrics_epoch(path: Path, line_no: int, line: str) -> int:
    """The epoch of one metrics.jsonl line, or a one-line error: this file is the run's record, never guessed at."""
    try:
        epoch = json.loads(line)["epoch"]
    except (ValueError, TypeError, KeyError):  # JSONDecodeError is a ValueError; a bare number has no ["epoch"]
        epoch = None
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        raise RtpulseError(f"{path} line {line_no} is not a metrics record of this trainer; repair or remove that "
                           "line to resume")
    return epoch


# The options a resume may change (config.json is rewritten with them); any other difference between config.json and
# the checkpoint's own copy means the file was edited, and the checkpoint would train under a recipe it never had.
RESUMABLE_CHANGES = frozenset({"out", "epochs", "minutes", "device", "precision", "command"})


def check_resume_matches(run_dir: Path, cfg: TrainConfig, checkpoint: PulseCNN) -> None:
    saved = checkpoint.config.extra.get("train_config")
    if not isinstance(saved, dict):  # checkpoints from before train_config was stored: nothing to compare
        return
    mine = cfg.to_dict()
    changed = sorted(k for k in mine.keys() & saved.keys() if k not in RESUMABLE_CHANGES and mine[k] != saved[k])
    if changed:
        k = changed[0]
        raise RtpulseError(f"{run_dir}/config.json says {k} = {mine[k]!r} but its checkpoint was trained with "
                           f"{saved[k]!r}; restore config.json, or start a new run (--init-from to keep the weights)")


# --- the run -------------------------------------------------------------------------------------------


def resume_config(run_dir: Path, epochs: int | None = None, device: str | None = None,
                  precision: str | None = None) -> TrainConfig:
    """The run's own config.json, with a new total of ``epochs``, ``device`` and ``precision`` when given (the
    machine may have changed; the recipe may not)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RtpulseError(f"cannot resume: {path} not found (is {run_dir} a training run directory?)")
    try:
        text = path.read_text()
        cfg = TrainConfig.from_json(text)
        if "val_floor_db" not in json.loads(text):  # a run from before --val-floor-db validated on every file
            cfg = dataclasses.replace(cfg, val_floor_db=0.0)
    except (OSError, ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise RtpulseError(f"cannot resume: {path} is not a readable run config ({e})") from None
    # a new total replaces a time budget not yet turned into epochs (a run killed right after its first epoch)
    return dataclasses.replace(cfg, out=str(run_dir), epochs=cfg.epochs if epochs is None else epochs,
                               minutes=cfg.minutes if epochs is None else None,
                               device=device or cfg.device, precision=precision or cfg.precision)


def _killed_in_first_epoch(run_dir: Path) -> bool:
    """A folder holding a readable run config.json and no metrics line past epoch 1: a run killed before its
    first checkpoint (it writes the config first, then epoch 1's line, best.safetensors and the checkpoint)."""
    try:
        TrainConfig.from_json((run_dir / "config.json").read_text())
        lines = (run_dir / "metrics.jsonl").read_text().split("\n")[:-1] if (run_dir / "metrics.jsonl").exists() else []
        return all(json.loads(ln)["epoch"] <= 1 for ln in lines if ln.strip())  # a half-written last line: not counted
    except (OSError, ValueError, TypeError, KeyError):
        return False


class RunLock:
    """An exclusive lock on the run folder, held by rank 0 for the whole run and let go when the process ends (a
    kill too): two trainers in one folder at once (a command started twice, a --resume while the run still trains)
    would both pass the checks below and interleave metrics.jsonl, checkpoints and config.json."""

    def __init__(self) -> None:
        self.fd: int | None = None

    def take(self, run_dir: Path) -> None:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): unlocked, as before
            return
        fd = os.open(run_dir, os.O_RDONLY)  # the folder itself: no lock file is left in it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RtpulseError(f"{run_dir} is in use by another rtpulse train; wait for it to end or give another "
                               "--out") from None
        except OSError:  # a file system without flock (some network mounts): unlocked, as before
            os.close(fd)
            return
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def run_training(cfg: TrainConfig, resume: bool = False, console: Console | None = None, progress: bool = True) -> dict:
    """Train; returns the summary (best epoch and score, paths). Under torchrun every rank calls this."""
    cfg.validate(new_run=not resume)
    if not resume:
        cfg = cfg.with_absolute_paths()
    keep_freed_memory()  # about 2× the steps/s on CPU (trainer.memory)
    d = init_distributed(cfg.device)
    lock = RunLock()
    finished = False
    try:
        summary = _run(cfg, d, resume, console if d.main else None, progress and d.main, lock)
        finished = True
        return summary
    finally:
        lock.release()
        d.close(finished)


def _fresh_run_restarts(run_dir: Path) -> bool:
    """For a new run in ``run_dir``: a one-line error if it holds another run or a user's files; True if it holds a
    run killed in its first epoch (which may start again)."""
    # a state file marks a checkpoint; a kill while the first one was saved leaves only weights or a temp file
    if any((run_dir / "ckpt").glob("epoch-*.state.pt")):
        raise RtpulseError(f"{run_dir} already holds a training run; use --resume {run_dir} or a new --out")
    earlier = [n for n in RUN_FILES if (run_dir / n).exists()]
    # files but no checkpoint: a run killed in its first epoch may start again; anything else (a user's files, a
    # run whose ckpt/ was deleted) would be overwritten or appended to
    restart = bool(earlier) and _killed_in_first_epoch(run_dir)
    if earlier and not restart:
        raise RtpulseError(f"{run_dir} already holds {earlier[0]}; give a new or empty --out folder")
    return restart


def _run(cfg: TrainConfig, d: Dist, resume: bool, console: Console | None, show: bool, lock: RunLock) -> dict:
    from trainer.loop import run_epochs

    run_dir = cfg.run_dir
    if d.main and run_dir.is_dir():  # before the checks: what they find stays true until this run ends
        lock.take(run_dir)
    # every rank checks (read-only), so no rank is left waiting at a barrier when rank 0 refuses
    restart = not resume and _fresh_run_restarts(run_dir)
    # the folder itself is made with config.json, after the model and the data load: a bad option or folder
    # leaves no empty run folder behind
    if d.main and restart:
        _trim_metrics(run_dir / "metrics.jsonl", 0)
    if resume:
        # on the CPU: load_state_dict moves Adam's moments to the parameters, and keeps its step counters on the
        # CPU, where the non-fused Adam wants them (on a GPU each step would sync the host twice per parameter)
        loaded, resumed = load_checkpoint(run_dir, "cpu")
        done = resumed["epoch"]
        if done > cfg.epochs:  # refused before any decoding, and before config.json is rewritten
            raise RtpulseError(f"{run_dir} has already trained {done} epochs; give --epochs above {done} to go on")
        check_resume_matches(run_dir, cfg, loaded)
        # a run from before --ema (its checkpoint's recipe lacks the key, so the check above passes) given one by
        # an edited config.json: refused here, before minutes of decoding
        if cfg.ema > 0 and "ema" not in resumed:
            raise RtpulseError(f"{run_dir}'s checkpoint holds no weight average for --ema {cfg.ema:g}")
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and not metrics.is_file():
            raise RtpulseError(f"{metrics} is not a file; the run logs its epochs there")
        if d.main:  # read (and refused if damaged) before minutes of decoding
            _trim_metrics(metrics, done)
        if done == cfg.epochs:  # finished: resuming it again (a retry loop, a re-run table) is not an error
            summary = {"finished_before": True, "epochs": done, "steps": resumed["step"], "seconds": 0.0,
                       "best_epoch": resumed["best_epoch"], "run_dir": str(run_dir)}
            if d.main and not (run_dir / "training.png").exists():  # killed while drawing it
                _plot(run_dir, summary)
            return summary
    if d.main:  # a read-only or unmakeable folder is said now, not after minutes of decoding (nothing is left made)
        probe_writable_dir(run_dir)
    model = build_model(cfg, resume).to(d.device)  # before the data: a bad --init-from fails before minutes of decoding
    split_path = run_dir / "split.json"
    # runs from before split.json existed fall back to the folders' current files
    recipe, dev, split = build_data(cfg, d, console, read_split(split_path) if resume and split_path.is_file() else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg))
    state = {"epoch": 0, "step": 0, "best_score": -math.inf, "best_epoch": 0}
    ema = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None
    if resume:
        state = resumed
        model.load_state_dict(loaded.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state.pop("ema"))
    if d.main:  # on resume too: a new --epochs or --device must outlive the next kill
        if lock.fd is None and not resume:
            # the folder is made only now: a run started beside this one may have made it (and written) meanwhile
            run_dir.mkdir(parents=True, exist_ok=True)
            lock.take(run_dir)
            if _fresh_run_restarts(run_dir):
                _trim_metrics(run_dir / "metrics.jsonl", 0)
        write_text_atomic(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=1))
        if not resume:
            write_split(split_path, split)
    d.barrier()
    t0 = time.time()
    summary = run_epochs(cfg, d, model, optimizer, scheduler, recipe, dev, state, console, show, ema)
    summary["seconds"] = time.time() - t0
    if d.main:
        _plot(run_dir, summary)
    return summary


def _plot(run_dir: Path, summary: dict) -> None:
    """Draw ``training.png`` into the summary. One that cannot be written (a full disk) is a warning, not a failed run:
    every epoch and checkpoint is saved by now, and an error would lose the summary of what was trained."""
    from trainer.plot import plot_metrics

    try:
        summary["plot"] = plot_metrics(run_dir / "metrics.jsonl", run_dir / "training.png")
    except RtpulseError as e:
        summary["plot"], summary["plot_warning"] = None, str(e)


def checkpoint_model(model: PulseCNN, cfg: TrainConfig, epoch: int, record: dict) -> PulseCNN:
    """The model with its training provenance in ``config.extra`` (the model card cites it)."""
    extra = {"epoch": epoch, "train_command": cfg.command, "train_config": cfg.to_dict(),
             "metrics": {k: v for k, v in record.items() if isinstance(v, (int, float))}}
    model.config = dataclasses.replace(model.config, extra=extra)
    return model


def save_epoch(run_dir: Path, model: PulseCNN, optimizer, scheduler, state: dict, best: bool,
               ema=None, published: PulseCNN | None = None) -> None:
    """``model`` (the raw weights) is what a resume continues; ``published`` (the --ema average, else the model)
    is what last/best.safetensors hold."""
    published = model if published is None else published
    full = dict(state, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                rng_cpu=torch.get_rng_state())
    if ema is not None:
        full["ema"] = ema.state_dict()
    # best first: a kill between the two leaves an epoch that is not checkpointed, so a resume re-runs it (the
    # same clips) and rewrites best; the other order could leave the state naming a best these weights are not
    if best:
        save_model(published, run_dir / "best.safetensors")
    save_checkpoint(run_dir, model, full, published)
