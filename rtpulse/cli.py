"""The `rtpulse` command line. Commands are thin: they parse options and call typed functions.

Heavy or optional imports (sounddevice, the trainer, benchmark peers) happen inside the commands
that need them, so `rtpulse denoise` works without PortAudio and never loads training code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rtpulse.cli_common import USER_ERRORS, Engine, Mask, console, fail, labelled, message
from rtpulse.errors import RtpulseError

app = typer.Typer(
    help="rtpulse: real-time speech denoising with a CNN mask trained by PU learning (PULSE).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
def load_model_or_default(path: Path | None):
    from rtpulse.model import load_default_model, load_model

    return load_model(path) if path is not None else load_default_model()


ModelOpt = Annotated[
    Path | None, typer.Option("--model", "-m", help="Model file (.safetensors). Default: the shipped model.")
]
MaskOpt = Annotated[
    Mask | None,
    typer.Option(
        help="binary: keep bins the model calls speech (the paper); soft: σ(−s·f), s the model's sharpness; "
        "posterior: 1 − e^f/2 (PU models trained with --risk pvu). Default: the model's own choice (soft for the "
        "shipped model; binary for models that name none)."
    ),
]


def mask_for(mask: Mask | str | None, model) -> str:
    """The mask the user asked for, else the one the model file names."""
    return model.config.mask if mask is None else str(getattr(mask, "value", mask))
FloorOpt = Annotated[
    float | None,
    typer.Option("--floor-db", help="Minimum gain in dB, -200…0 (e.g. -30), so removed bins are attenuated, not zeroed."),
]


@app.command()
def denoise(
    inputs: Annotated[list[Path], typer.Argument(help="Audio files to denoise (wav, flac, ogg; any rate/channels).")],
    # a str, not a Path: Path("out/") drops the slash that says "a folder" for a single input
    output: Annotated[str, typer.Option("--output", "-o", help="Output file, or a directory (several inputs, or a "
                                        "name ending in /).")],
    model: ModelOpt = None,
    mask: MaskOpt = None,
    floor_db: FloorOpt = None,
    engine: Annotated[
        Engine, typer.Option(help="offline: whole file at once; stream: the real-time engine (same samples).")
    ] = Engine.offline,
    force: Annotated[bool, typer.Option("--force", help="Replace output files that already exist.")] = False,
) -> None:
    """Denoise audio files. Output: mono, at each input's sample rate and length.

    Ctrl-C (exit 130), SIGTERM (143) or SIGHUP (129) stops cleanly: finished files are kept, no partial file is left.
    """
    from rtpulse.signals import sigterm_interrupts, stop_words

    # SIGTERM (kill, a service stop) cleans up like Ctrl-C does: the unfinished output's temp file is removed.
    # Exit status 143 = 128 + 15, what a shell reports for a process ended by SIGTERM (Ctrl-C gives 130).
    try:
        with sigterm_interrupts():
            _denoise_all(inputs, output, model, mask, floor_db, engine, force)
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP
        said, code = stop_words(e)
        console.print(f"{said}: the unfinished output was removed", highlight=False, soft_wrap=True)
        raise typer.Exit(code) from None


def _denoise_all(
    inputs: list[Path], output: str, model: Path | None, mask: Mask | None, floor_db: float | None, engine: Engine,
    force: bool,
) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from rtpulse.denoise import DenoiseOptions, denoise_file, plan_outputs
    from rtpulse.files import check_output_file

    try:
        pairs = plan_outputs(inputs, output, force)  # first: a mistyped path fails before the model loads
        for _, dst in pairs:  # the model is an input too: "-o m.wav -m m.wav --force" would replace it
            check_output_file(dst, (model,))
        net = load_model_or_default(model)
        opts = DenoiseOptions(mask=mask_for(mask, net), floor_db=floor_db, engine=engine.value)
    except USER_ERRORS as e:
        fail(e)
    errors: list[str] = []
    warnings: list[str] = []
    seconds = 0.0
    with Progress(
        TextColumn("{task.description}", markup=False), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console, transient=True,
        disable=not console.is_terminal,  # piped or logged: a transient bar only leaves a blank line behind
    ) as progress:
        task = progress.add_task("denoising", total=len(pairs))
        for src, dst in pairs:
            progress.update(task, description=f"denoising {src.name}")
            try:
                seconds += denoise_file(net, src, dst, opts, on_warning=warnings.append)
            except USER_ERRORS as e:
                errors.append(message(e))
            progress.advance(task)
    done = len(pairs) - len(errors)
    if len(pairs) == 1 and errors:
        fail(RtpulseError(errors[0]))
    for msg in warnings:
        console.print(labelled("warning:", "yellow", msg), highlight=False, soft_wrap=True)
    for msg in errors:
        console.print(labelled("error:", "red", msg), highlight=False, soft_wrap=True)
    console.print(f"denoised {done}/{len(pairs)} file(s), {seconds:.1f} s of audio → {output}", highlight=False,
                  soft_wrap=True)
    if errors:
        raise typer.Exit(1)


def _register() -> None:
    """Commands that live in their own modules (each keeps its heavy imports inside the command)."""
    from rtpulse import cli_bench, cli_live, cli_train

    app.command("devices")(cli_live.devices)
    app.command("live")(cli_live.live)
    app.command("train")(cli_train.train)
    app.command("eval")(cli_train.evaluate)
    app.add_typer(cli_bench.bench_app, name="bench")


_register()

if __name__ == "__main__":  # pragma: no cover
    app()
