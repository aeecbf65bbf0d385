"""The epoch loop with live diagnostics (rich progress), validation, metrics.jsonl and checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
import time

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from rtpulse.errors import RtpulseError
from rtpulse.stft import HOP, SAMPLE_RATE
from trainer.config import effective_precision
from trainer.ddp import rank_seed

REFRESH_STEPS = 10  # host syncs for the live line happen this often, not every step
_clock = time.monotonic  # the --minutes budget's clock (a test replaces it)


def _live(avg: dict, cfg) -> str:
    line = f"loss {avg['loss']:.4f}"
    if cfg.method == "pu":
        line += f" │ P {avg['risk_p']:.3f} U {avg['risk_u']:+.3f} nn {avg['corrected']:.0%}"
    return line + f" │ U speech {avg['u_speech']:.1%} │ f {avg['logit_mean']:+.2f}±{avg['logit_std']:.2f}"


def run_epochs(cfg, d, model, optimizer, scheduler, recipe, dev, state, console, show, ema=None) -> dict:
    from trainer.train import STAT_KEYS, _write_line, checkpoint_model, context_frames, save_epoch, train_step
    from trainer.validate import dev_pu_risk, dev_sisnri

    net = d.wrap(model)
    length = round(cfg.crop_seconds * SAMPLE_RATE) + context_frames(cfg) * HOP  # context, then the crop
    run_dir = cfg.run_dir
    progress = Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} clips/s"), TimeRemainingColumn(), TextColumn("{task.fields[diag]}"),
        console=console, transient=False, disable=not show,
    )
    with progress:
        task = progress.add_task("train", total=cfg.steps_per_epoch, epoch=0, rate=0.0, diag="")
        first, started = state["epoch"] + 1, _clock()
        warm_start = cfg.method == "pu" and cfg.risk != "pvu"  # the first --pvu-steps steps are P-vs-U
        epoch = state["epoch"]
        while epoch < cfg.epochs:  # a --minutes budget sets cfg.epochs after the first epoch
            epoch += 1
            seed = rank_seed(cfg.seed, epoch, d.rank)
            gen = torch.Generator(device=d.device).manual_seed(seed)
            torch.manual_seed(seed + 1)  # dropout's stream, also per (epoch, rank)
            if hasattr(recipe, "set_epoch"):
                recipe.set_epoch(epoch)
            of = f"{cfg.epochs}" if cfg.minutes is None else f"? ({cfg.minutes:g} min)"
            progress.reset(task, total=cfg.steps_per_epoch, epoch=f"{epoch}/{of}", rate=0.0, diag="")
            sums = torch.zeros(len(STAT_KEYS), device=d.device)
            t0 = time.time()
            for i in range(cfg.steps_per_epoch):
                batch = recipe.batch(cfg.batch_size, length, gen)
                stats = train_step(net, optimizer, batch, cfg, scheduler, state["step"])
                if ema is not None:
                    # the average starts over when a P-vs-U warm start ends: its epochs do not compete for best, and
                    # an average still made mostly of its weights (at 0.999 past the ramp, 90 % of it 100 steps on)
                    # would put the warm start into the first epochs that do
                    if warm_start and state["step"] + 1 == cfg.pvu_steps:
                        ema.restart(model)
                    else:
                        ema.update(model)
                sums += torch.stack([stats[k].float() for k in STAT_KEYS])
                state["step"] += 1
                if show and ((i + 1) % REFRESH_STEPS == 0 or i + 1 == cfg.steps_per_epoch or i < 3):
                    avg = dict(zip(STAT_KEYS, (sums / (i + 1)).tolist()))
                    rate = (i + 1) * cfg.batch_size * d.world / max(time.time() - t0, 1e-9)
                    progress.update(task, completed=i + 1, rate=rate, diag=_live(avg, cfg))
            seconds = time.time() - t0
            avg = dict(zip(STAT_KEYS, (d.mean(sums) / cfg.steps_per_epoch).tolist()))
            if not math.isfinite(avg["loss"]):  # every rank sees the same mean, so every rank stops here
                raise RtpulseError(f"training diverged: the loss is {avg['loss']} in epoch {epoch}, which was not saved; "
                                   "lower --lr or set --clip-grad, and check the data")
            record = {"epoch": epoch, "step": state["step"], "lr": optimizer.param_groups[0]["lr"], **avg,
                      "clips_per_s": cfg.steps_per_epoch * cfg.batch_size * d.world / seconds,
                      "train_seconds": seconds, "precision": effective_precision(cfg.precision, d.device.type)}
            if d.main:
                published = model if ema is None else ema.averaged(model)  # what last/best.safetensors will hold
                record.update(_validate(published, dev, cfg, d.device, dev_sisnri, dev_pu_risk))
                score = _score(record, cfg)
                # epochs inside a P-vs-U warm start (--pvu-steps before nnPU/uPU) do not compete for best: a
                # table row would otherwise score the warm start instead of its method. The first epoch is still
                # kept as a placeholder (so best.safetensors always exists) until a post-warm-up epoch replaces it.
                warm = warm_start and state["step"] <= cfg.pvu_steps
                if warm:
                    best = state["best_epoch"] == 0
                else:
                    best = score > state["best_score"] or state["best_epoch"] == 0 or state.get("best_warm", False)
                if best:
                    state["best_score"], state["best_epoch"], state["best_warm"] = score, epoch, warm
                record.update(score=score, best_epoch=state["best_epoch"])
                state["epoch"] = epoch
                # the line first: a resume trims lines past its checkpoint, but cannot restore a missing one
                _write_line(run_dir / "metrics.jsonl", record)
                save_epoch(run_dir, checkpoint_model(model, cfg, epoch, record), optimizer, scheduler, state, best,
                           ema=ema, published=checkpoint_model(published, cfg, epoch, record))
                if console is not None:
                    console.print(_epoch_line(record, cfg), highlight=False)
            state["epoch"] = epoch
            d.barrier()
            if cfg.minutes is not None:
                cfg = _plan(cfg, d, scheduler, first, _clock() - started, console)
    return {"epochs": state["epoch"], "steps": state["step"], "best_epoch": state["best_epoch"],
            "best_score": state["best_score"], "run_dir": str(run_dir)}


def _plan(cfg, d, scheduler, first: int, seconds: float, console):
    """Turn the --minutes budget into epochs, from the epoch just run (every rank the same: the ranks' mean time);
    the cosine decay is stretched to end with them, and config.json records them for a resume."""
    from rtpulse.files import write_text_atomic
    from trainer.train import _lr_factor, planned_epochs

    seconds = float(d.mean(torch.tensor([seconds], dtype=torch.float64, device=d.device)))
    planned = dataclasses.replace(cfg, epochs=planned_epochs(cfg, first, seconds), minutes=None)
    scheduler.lr_lambdas[0] = _lr_factor(planned)
    if d.main:
        write_text_atomic(cfg.run_dir / "config.json", json.dumps(planned.to_dict(), indent=1))
        if console is not None:
            console.print(f"--minutes {cfg.minutes:g}: epoch {first} took {seconds:.1f} s → {planned.epochs} epochs "
                          f"(--epochs {cfg.epochs} the cap)", highlight=False)
    return planned


def _validate(model, dev, cfg, device, dev_sisnri, dev_pu_risk) -> dict:
    out = {}
    if dev.noisy is not None:
        out.update(dev_sisnri(model, dev.noisy, dev.clean, device))
    if dev.u is not None:
        out.update(dev_pu_risk(model, dev.u, dev.p, cfg, device, dev.p_noise))
    return out


def _score(record: dict, cfg) -> float:
    """Higher is better: dev SI-SNRi when clean dev data exists, else −(held-out nnPU risk), else −loss."""
    key = f"dev_sisnri_{cfg.select_mask}"
    if key in record:
        score = record[key]
    elif "val_risk" in record:
        score = -record["val_risk"]
    else:
        score = -record["loss"]
    return score if math.isfinite(score) else -math.inf  # a NaN would never lose a comparison it should


def _epoch_line(r: dict, cfg) -> str:
    parts = [f"epoch {r['epoch']}", f"loss {r['loss']:.4f}"]
    if cfg.method == "pu":
        parts.append(f"P {r['risk_p']:.3f} U {r['risk_u']:+.3f} nn-fired {r['corrected']:.0%}")
    parts.append(f"U speech {r['u_speech']:.1%} f {r['logit_mean']:+.2f}±{r['logit_std']:.2f}")
    if "dev_sisnri_binary" in r:
        parts.append(f"dev SI-SNRi {r['dev_sisnri_binary']:+.2f} dB (binary) {r['dev_sisnri_soft']:+.2f} dB (soft)")
    if "val_risk" in r:
        parts.append(f"val risk {r['val_risk']:.4f}")
    parts.append(f"{r['clips_per_s']:.1f} clips/s" + (" ★" if r["best_epoch"] == r["epoch"] else ""))
    return " │ ".join(parts)
