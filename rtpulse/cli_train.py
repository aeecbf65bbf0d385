"""`rtpulse train` and `rtpulse eval`: thin commands; the trainer package is imported inside them."""

from __future__ import annotations

import os
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from rtpulse.cli_common import USER_ERRORS, Engine, Mask, console, fail, labelled, message
from rtpulse.errors import RtpulseError


class Method(str, Enum):
    pu = "pu"
    pn = "pn"
    mixit = "mixit"


class Preset(str, Enum):
    paper = "paper"
    blocks2 = "blocks2"
    blocks3 = "blocks3"
    blocks2f = "blocks2f"
    blocks3t = "blocks3t"


class Compress(str, Enum):
    power = "power"
    linear = "linear"
    log1p = "log1p"


class Risk(str, Enum):
    nnpu = "nnpu"
    upu = "upu"
    pvu = "pvu"


class PLevel(str, Enum):
    unit = "unit"
    matched = "matched"
    mixed = "mixed"


class PGain(str, Enum):
    own = "own"
    u = "u"


class Init(str, Enum):
    default = "default"
    he = "he"


class LrSchedule(str, Enum):
    constant = "constant"
    cosine = "cosine"


class SelectMask(str, Enum):  # the masks the dev pass scores (trainer.validate)
    binary = "binary"
    soft = "soft"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


def train(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory (checkpoints, metrics, plot).")] = None,
    method: Annotated[Method, typer.Option(help="pu: PULSE (noisy + noise only); pn: supervised; mixit.")] = Method.pu,
    preset: Annotated[Preset, typer.Option(help="Network size: paper (11 layers), blocks2, blocks3; blocks2f = blocks2 dilated across frequency (65-bin view); blocks3t = blocks3 plus two time-dilated layers (57-frame view).")] = Preset.blocks2,
    lookahead: Annotated[int, typer.Option(help="Future frames the model sees (0 = causal; 16 ms each).")] = 0,
    compress: Annotated[
        Compress, typer.Option(help="Input: power |X|^(1/15), linear |X|/15, log1p.")
    ] = Compress.linear,
    dropout: Annotated[float, typer.Option(help="Dropout after every conv but the last.")] = 0.2,
    level_frames: Annotated[
        int, typer.Option(help="Normalise the model's input level over the last N frames (0 = off; 125 ≈ 2 s).")
    ] = 0,
    floor_frames: Annotated[
        int, typer.Option(help="Add noise-floor inputs tracked over the last N frames (0 = off; 94 ≈ 1.5 s).")
    ] = 0,
    freq_input: Annotated[
        bool, typer.Option(help="Add an input channel holding each bin's frequency (convolutions cannot see it).")
    ] = False,
    band_input: Annotated[
        bool, typer.Option(help="Add four input channels holding each frame's mean input in 0–1, 1–2, 2–4 and 4–8 kHz (what the spectrum beyond a layer's view is doing).")
    ] = False,
    freq_scale: Annotated[
        float | None,
        typer.Option(help="The frequency channel's range ±X (default 3): Adam moves its weights ~lr per step, so a "
                     "larger range is learned faster (a model started with another range is rescaled: the same logits)."),
    ] = None,
    clean: Annotated[Path | None, typer.Option(help="Clean speech folder (synthetic recipe).")] = None,
    noise: Annotated[Path | None, typer.Option(help="Noise recordings folder (P clips; mixed into speech).")] = None,
    noisy: Annotated[Path | None, typer.Option(help="Real noisy recordings folder (U clips; PU only).")] = None,
    val_clean: Annotated[Path | None, typer.Option(help="Clean speech for validation mixtures (dev SI-SNRi).")] = None,
    val_noise: Annotated[Path | None, typer.Option(help="Noise for validation mixtures (with --val-clean).")] = None,
    cache: Annotated[Path | None, typer.Option(help="Decoded-audio cache (default ~/.cache/rtpulse).")] = None,
    dev_fraction: Annotated[float, typer.Option(help="Files held out for validation when no --val-* given.")] = 0.1,
    dev_count: Annotated[int, typer.Option(help="Fixed validation clips.")] = 32,
    dev_seconds: Annotated[float, typer.Option(help="Length of each validation clip.")] = 3.125,
    crop_seconds: Annotated[float, typer.Option(help="Training clip length (shorter = faster on CPU).")] = 3.125,
    context_seconds: Annotated[
        float, typer.Option(help="Audio before each crop that only feeds the level/floor trackers (no loss on it).")
    ] = 0.0,
    snr_min: Annotated[float, typer.Option(help="Lowest mixing SNR (dB).")] = -5.0,
    snr_max: Annotated[float, typer.Option(help="Highest mixing SNR (dB).")] = 10.0,
    epochs: Annotated[
        int | None,
        typer.Option(help="Epochs (default 10, or 10000 as the cap of --minutes; with --resume: the new total)."),
    ] = None,
    minutes: Annotated[
        float | None,
        typer.Option(help="A time budget: after the first epoch, train as many epochs as fit in this many minutes at"
                     " its pace (steps, validation, checkpoint; data loading not counted), the cosine decay ending"
                     " with them."),
    ] = None,
    steps_per_epoch: Annotated[int, typer.Option(help="Steps per epoch, each on freshly mixed clips.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Clips per step per process (PU: this many U and as many P).")] = 8,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 3e-4,
    warmup_steps: Annotated[int, typer.Option(help="Linear learning-rate warm-up steps.")] = 0,
    lr_schedule: Annotated[
        LrSchedule,
        typer.Option(
            help="After warm-up: constant, or cosine decay to 1 % of --lr at the last step (--resume with more"
            " --epochs stretches the decay to the new total)."
        ),
    ] = LrSchedule.constant,
    output_bias: Annotated[
        float | None, typer.Option(help="Initial bias of the last conv (<0: start at speech).")
    ] = None,
    prior: Annotated[float, typer.Option(help="PU class prior π (fraction of noise bins in U).")] = 0.7,
    risk: Annotated[
        Risk, typer.Option(help="nnpu (non-negative, Kiryo et al.), upu (unbiased ablation) or pvu (P-vs-U logistic).")
    ] = Risk.nnpu,
    beta: Annotated[float, typer.Option(help="nnPU β: correction fires when the U-side risk < −β.")] = 0.0,
    gamma: Annotated[float, typer.Option(help="nnPU γ: step size factor of the correction.")] = 1.0,
    weight_exponent: Annotated[float, typer.Option(help="Loss weight |X|^p (1 = PULSE, 0 = unweighted).")] = 1.0,
    pvu_steps: Annotated[
        int, typer.Option(help="First steps on the P-vs-U logistic warm start (risk pvu), then --risk.")
    ] = 0,
    speech_floor_db: Annotated[
        float | None,
        typer.Option(
            help="Use only --clean/--val-clean files whose quiet frames are at least this far below their loud ones "
            "(e.g. -25; speech recorded over a steady background would teach the model to keep it)."
        ),
    ] = None,
    val_floor_db: Annotated[
        float | None,
        typer.Option(
            help="Validate only on --val-clean files whose quiet frames are at least this far below their loud ones, "
            "as the quality benchmark's test references (a reference with a background marks removing it as an "
            "error). Default -25; 0 keeps every file."
        ),
    ] = None,
    p_level: Annotated[
        PLevel,
        typer.Option(
            help="P clips: unit std (paper), matched to the noise inside a mixture, or mixed: added to another noisy "
            "clip, the bins where that noise dominates being the P bins (they then have speech beside them, as "
            "noise bins in a recording do)."
        ),
    ] = PLevel.unit,
    p_mix_margin_db: Annotated[
        float | None,
        typer.Option(help="With --p-level mixed: by how much the added noise must lead the noisy clip in a bin for the bin to count as P (amplitude dB, 0…60; default 10)."),
    ] = None,
    noise_warp: Annotated[
        float,
        typer.Option(help="Share of training noise clips (0…1; in the noisy mixtures and the P clips alike) played 0.8…1.25× as fast and re-coloured, so a few recordings stand for more noises. Validation noise is never warped."),
    ] = 0.0,
    noise_mix: Annotated[
        float,
        typer.Option(help="Share of training noise clips (0…1; in the noisy mixtures and the P clips alike) with a second, independent noise crop added 0…10 dB below the first (drawn like the first, so often from another recording). Validation noise is never mixed."),
    ] = 0.0,
    noise_balance: Annotated[
        bool,
        typer.Option(help="Draw training noise from each folder holding noise files (a file's own folder: one recording source) equally often, files within it by length, instead of every file by its length. Validation noise is never reweighted."),
    ] = False,
    p_gain: Annotated[
        PGain, typer.Option(help="Level gain for P clips: their own, or the U clip's beside them (noise at a mixture's level).")
    ] = PGain.own,
    init: Annotated[Init, typer.Option(help="Weight init: default (PyTorch) or he (Kaiming normal).")] = Init.default,
    clip_grad: Annotated[float, typer.Option(help="Max gradient norm (0 = off).")] = 0.0,
    ema: Annotated[
        float,
        typer.Option(help="Validate and publish (last/best.safetensors) an exponential moving average of the weights with this decay per step, e.g. 0.999 (0 = off; ramped in as (1 + n)/(10 + n) at step n, so 0.999 binds from step ~9,000; restarted when a --pvu-steps warm start ends; a resume continues the raw weights and the average)."),
    ] = 0.0,
    init_from: Annotated[
        Path | None,
        typer.Option(help="Start from this model file's weights (fine-tuning; same compress; L may differ; a smaller preset (blocks2 < blocks3 < paper or blocks3t) grows into this one, its logits unchanged if L and --level-frames match)."),
    ] = None,
    select_mask: Annotated[
        SelectMask, typer.Option(help="Mask whose dev SI-SNRi picks best.safetensors.")
    ] = SelectMask.binary,
    seed: Annotated[int, typer.Option(help="Seed for init, split and every random stream.")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 … (default: cuda if available).")] = None,
    precision: Annotated[
        Precision | None,
        typer.Option(help="The model's arithmetic: auto (bf16 autocast on CUDA, float32 on CPU; the default), fp32, or bf16 (on a CPU with native bf16 about twice fp32's clips/s)."),
    ] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory where it stopped.")] = None,
) -> None:
    """Train a PULSE (PU), PN or MixIT model. Under torchrun each process trains on its own clips."""
    from rtpulse.signals import sigterm_interrupts, stop_words
    from trainer.config import TrainConfig
    from trainer.train import resume_config, run_training

    command = "rtpulse train " + shlex.join(sys.argv[2:]) if len(sys.argv) > 1 else "rtpulse train"
    try:
        if resume is not None:
            cfg = resume_config(resume, epochs, device, None if precision is None else precision.value)
            if os.environ.get("RANK", "0") == "0":  # once under torchrun
                console.print(f"resuming {resume} with its config.json: options other than --epochs, --device and "
                              "--precision are not read", highlight=False, soft_wrap=True)
        else:
            if out is None:
                raise RtpulseError("--out RUN_DIR is required (or --resume RUN_DIR)")
            cfg = TrainConfig(
                out=str(out),
                method=method.value,
                preset=preset.value,
                lookahead=lookahead,
                compress=compress.value,
                dropout=dropout,
                level_frames=level_frames,
                floor_frames=floor_frames,
                freq_input=freq_input,
                band_input=band_input,
                **({} if freq_scale is None else {"freq_scale": freq_scale}),  # None: rtpulse.model.FREQ_SCALE
                clean=_s(clean),
                noise=_s(noise),
                noisy=_s(noisy),
                val_clean=_s(val_clean),
                val_noise=_s(val_noise),
                cache=_s(cache),
                dev_fraction=dev_fraction,
                dev_count=dev_count,
                dev_seconds=dev_seconds,
                crop_seconds=crop_seconds,
                context_seconds=context_seconds,
                snr_min=snr_min,
                snr_max=snr_max,
                noise_warp=noise_warp,
                noise_mix=noise_mix,
                noise_balance=noise_balance,
                epochs=epochs if epochs is not None else 10 if minutes is None else 10_000,
                minutes=minutes,
                steps_per_epoch=steps_per_epoch,
                batch_size=batch_size,
                lr=lr,
                warmup_steps=warmup_steps,
                lr_schedule=lr_schedule.value,
                output_bias=output_bias,
                prior=prior,
                risk=risk.value,
                beta=beta,
                gamma=gamma,
                weight_exponent=weight_exponent,
                pvu_steps=pvu_steps,
                p_level=p_level.value,
                p_mix_margin_db=p_mix_margin_db,
                p_gain=p_gain.value,
                speech_floor_db=speech_floor_db,
                **({} if val_floor_db is None else {"val_floor_db": val_floor_db}),  # None: trainer.data.QUIET_FLOOR_DB
                init=init.value,
                clip_grad=clip_grad,
                ema=ema,
                init_from=_s(init_from),
                select_mask=select_mask.value,
                seed=seed,
                device=device,
                precision="auto" if precision is None else precision.value,
                command=command,
            )
        # SIGTERM (kill, a scheduler's stop) unwinds as Ctrl-C does: the checkpoint being written loses its temp file
        with sigterm_interrupts():
            summary = run_training(cfg, resume=resume is not None, console=console)
    except USER_ERRORS as e:
        fail(e)
    except KeyboardInterrupt as e:  # one line that says what is kept, not typer's silent 130 (or "Aborted!", 1)
        said, code = stop_words(e)
        run_dir = Path(resume or out) if (resume or out) is not None else None
        if os.environ.get("RANK", "0") == "0" and run_dir is not None:
            if any((run_dir / "ckpt").glob("epoch-*.state.pt")):
                kept = f"its finished epochs are kept: rtpulse train --resume {run_dir} goes on"
            else:
                kept = "no epoch was finished: the same command starts it again"
            console.print(f"{said}: {kept}", highlight=False, soft_wrap=True)
        raise typer.Exit(code) from None
    if os.environ.get("RANK", "0") != "0":  # only rank 0 validates, so only it knows the best epoch
        return
    if summary.get("plot_warning"):  # the run itself finished: its summary follows
        console.print(labelled("warning:", "yellow", summary["plot_warning"]), highlight=False, soft_wrap=True)
    if summary.get("finished_before"):
        n = summary["epochs"]
        console.print(f"{summary['run_dir']} has already trained all {n} epochs: nothing to do (give --epochs above "
                      f"{n} to go on); best epoch {summary['best_epoch']}", highlight=False, soft_wrap=True)
        return
    console.print(
        f"trained {summary['epochs']} epochs ({summary['steps']} steps, {summary['seconds']:.0f} s); "
        f"best epoch {summary['best_epoch']} → {summary['run_dir']}/best.safetensors",
        highlight=False,
        soft_wrap=True,  # never break the path a user copies (and a wrap would move with the seconds' digits)
    )


def _s(p: Path | None) -> str | None:
    return None if p is None else str(p)


def evaluate(
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Model file (.safetensors). Default: the shipped model.")
    ] = None,
    noisy: Annotated[
        Path | None, typer.Option(help="Noisy file, or folder of files paired with --clean by file name.")
    ] = None,
    clean: Annotated[Path | None, typer.Option(help="Clean references (or clean speech with --synth).")] = None,
    noise: Annotated[Path | None, typer.Option(help="Noise folder for --synth.")] = None,
    synth: Annotated[bool, typer.Option("--synth", help="Score on generated mixtures of --clean and --noise.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the generated mixtures (--synth).")] = 0,
    count: Annotated[int, typer.Option(help="Number of generated mixtures (--synth).")] = 32,
    seconds: Annotated[float, typer.Option(help="Length of each generated mixture (--synth).")] = 3.125,
    engine: Annotated[Engine, typer.Option(help="offline or stream (the real-time engine).")] = Engine.offline,
    mask: Annotated[
        Mask | None,
        typer.Option(
            help="binary (the paper), soft σ(−s·f) (s: the model's sharpness) or posterior 1 − e^f/2. "
            "Default: the model's own choice."
        ),
    ] = None,
    floor_db: Annotated[float | None, typer.Option("--floor-db", help="Minimum gain in dB.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write per-file and mean scores here.")] = None,
    cache: Annotated[Path | None, typer.Option(help="Decoded-audio cache for --synth.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the --json file if it exists.")] = False,
) -> None:
    """Score a model: SI-SNR, SI-SNRi (and PESQ-WB, STOI when installed) on pairs or generated mixtures."""
    from rich.console import Console

    from rtpulse.files import check_json_output, probe_writable_dir
    from trainer.evaluate import EvalOptions, evaluate_pairs, evaluate_synth, print_table, write_json

    try:
        from rtpulse.model import default_model_path, load_default_model, load_model

        if json_out is not None:  # before minutes of scoring; *.json: never over an audio input or a model
            check_json_output(json_out, "--json")
            if json_out.exists() and not force:  # as denoise: e.g. a run's config.json is not lost to a typo
                raise RtpulseError(f"--json {json_out} exists; pass --force to replace it")
            probe_writable_dir(json_out.parent)  # a read-only folder is said now, not after the scoring
        net = load_model(model) if model is not None else load_default_model()
        opts = EvalOptions(engine=engine.value, mask=mask.value if mask else net.config.mask, floor_db=floor_db)
        if synth:
            if clean is None or noise is None:
                raise RtpulseError("--synth needs --clean DIR and --noise DIR")
            result = evaluate_synth(net, clean, noise, seed, count, seconds, opts, cache)
        else:
            if noisy is None or clean is None:
                raise RtpulseError("give --noisy DIR --clean DIR (paired by file name), or --synth")
            result = evaluate_pairs(net, noisy, clean, opts)
        # "model" is the preset; two checkpoints' reports must say which file each scored
        result = {"model_file": str(model if model is not None else default_model_path()), **result}
    except USER_ERRORS as e:
        fail(e)
    # the file first: stdout closed early (`| head`: rich exits 1 on the broken pipe) or full (a disk, /dev/full)
    # would otherwise cost the scores minutes of scoring made; a file that cannot be written still shows the table
    unwritten = None
    if json_out is not None:
        try:
            write_json(result, json_out)
        except USER_ERRORS as e:
            unwritten = e
    try:
        print_table(result, Console(markup=False))  # results on stdout (> scores.txt); file names as they are
        for warning in result["warnings"]:
            console.print(labelled("warning:", "yellow", warning), highlight=False, soft_wrap=True)
    except USER_ERRORS as e:
        kept = f" (they are in {json_out})" if json_out is not None and unwritten is None else ""
        fail(unwritten or RtpulseError(f"cannot print the scores: {message(e)}{kept}"))
    if unwritten is not None:
        fail(unwritten)
