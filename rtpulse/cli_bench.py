"""`rtpulse bench latency|quality`: thin commands over `benchmarks/` (imported inside the commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rtpulse.cli_common import USER_ERRORS, console, fail, labelled
from rtpulse.cli_train import Precision
from rtpulse.errors import RtpulseError
from rtpulse.files import check_output_dir

bench_app = typer.Typer(
    help="Measure latency and quality against peers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_RESULTS = Path("benchmarks") / "results"  # relative to where the command runs (the repository root, usually)

ModelsOpt = Annotated[list[Path] | None, typer.Option("--model", "-m", help="A model file to include (repeatable).")]
# the generated test set of `bench quality`, which `bench training` scores its rows on too
MinSpeechOpt = Annotated[
    float, typer.Option(help="Shortest dev speech file used for a test mixture (s); lower it for short speech.")
]


def _progress():
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}", markup=False),  # it names models and files
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # piped or logged: a transient bar only leaves a blank line behind
    )


@bench_app.command()
def latency(
    json_out: Annotated[
        Path, typer.Option("--json", help="JSON output; the .md table and _hops.png go beside it.")
    ] = _RESULTS / "latency.json",
    model: ModelsOpt = None,
    hops: Annotated[int, typer.Option(min=10, help="Timed hops per configuration (warm-up excluded).")] = 3000,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed hops before timing.")] = 100,
    presets: Annotated[
        bool, typer.Option(help="Include paper/blocks2 at L=0 and max lookahead (random weights).")
    ] = True,
    peers: Annotated[bool, typer.Option(help="Time the peer denoisers per 10 ms block.")] = True,
    peer_blocks: Annotated[int, typer.Option(min=10, help="Timed 10 ms blocks per peer.")] = 2000,
    plot: Annotated[bool, typer.Option(help="Write the PNG histogram of hop times (needs matplotlib).")] = True,
    profile: Annotated[bool, typer.Option(help="Profile the model step of configs with rtf > 0.04.")] = True,
    timing_repeats: Annotated[int, typer.Option(min=5, help="Repeats for the mean step / recompute times.")] = 300,
) -> None:
    """Measured delay (impulse), per-hop compute on one thread, real-time factor, cache gain; peers' RTF."""
    from benchmarks.latency import LatencyOptions, check_latency_outputs, markdown, run_latency, write_latency

    opts = LatencyOptions(
        hops=hops,
        warmup=warmup,
        models=list(model or []),
        presets=presets,
        peers=peers,
        peer_blocks=peer_blocks,
        profile=profile,
        timing_repeats=timing_repeats,
    )
    from rich.text import Text

    try:
        check_latency_outputs(json_out)  # before minutes of timing
        with console.status("latency") as status:
            # a Text: the spinner reads a str as markup, and the message names model files
            result, hist = run_latency(opts, progress=lambda msg: status.update(Text(msg)))
        written = write_latency(result, hist, json_out, plot=plot)
    except USER_ERRORS as e:
        fail(e)
    typer.echo(markdown(result))
    console.print("wrote " + ", ".join(str(p) for p in written), highlight=False)
    bad = [c["name"] for c in result["configs"] if c["delay_samples_measured"] != c["delay_samples_expected"]]
    if bad:
        fail(RtpulseError(f"measured delay differs from 1024 + 256·L for: {', '.join(bad)}"))


@bench_app.command()
def quality(
    out: Annotated[Path, typer.Option("--out", help="Output folder for quality.json/.md and the PNGs.")] = _RESULTS,
    noisy: Annotated[Path | None, typer.Option(help="Folder of noisy files (paired by name with --clean).")] = None,
    clean: Annotated[Path | None, typer.Option(help="Folder of clean references for --noisy.")] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Data root with speech/dev and noise/dev to mix a test set from (unless --noisy/--clean). "
            "Default: shared/data in the folder that holds the repository (../shared/data from its root)."
        ),
    ] = None,
    model: ModelsOpt = None,
    label: Annotated[
        list[str] | None, typer.Option(help="A label per --model, in order (default: the file name).")
    ] = None,
    count: Annotated[int, typer.Option(min=1, help="Mixtures to generate.")] = 40,
    seconds: Annotated[float, typer.Option(min=1.0, help="Length of each generated mixture (s).")] = 6.0,
    seed: Annotated[int, typer.Option(help="Seed for the generated test set.")] = 0,
    min_speech_seconds: MinSpeechOpt = 4.0,
    real: Annotated[
        Path | None,
        typer.Option(help="Folder of real noisy recordings (no clean), scored in addition with DNSMOS only."),
    ] = None,
    streaming: Annotated[bool, typer.Option(help="Also score rtpulse models through the streaming engine.")] = True,
    peers: Annotated[bool, typer.Option(help="Include the peer denoisers.")] = True,
    dnsmos: Annotated[bool, typer.Option(help="Score DNSMOS (torchmetrics + speechmos ONNX files).")] = True,
    level_dbfs: Annotated[
        float, typer.Option(help="RMS level each noisy mixture or file is brought to, in dBFS (peak capped at 0.99).")
    ] = -26.0,
    reference_floor_db: Annotated[
        float,
        typer.Option(
            help="Skip dev speech whose quiet frames are louder than this relative to its loud ones (a background "
            "in the reference penalises every denoiser that removes it); 0 keeps all."
        ),
    ] = -25.0,
) -> None:
    """SI-SNRi, PESQ-WB, STOI and DNSMOS for rtpulse, peers and a Wiener baseline on one test set."""
    from benchmarks.quality import QualityOptions, markdown, run_quality, write_quality

    opts = QualityOptions(
        noisy=noisy,
        clean=clean,
        data=data,
        models=list(model or []),
        labels=list(label or []),
        count=count,
        seconds=seconds,
        seed=seed,
        min_speech_seconds=min_speech_seconds,
        real=real,
        streaming=streaming,
        peers=peers,
        dnsmos=dnsmos,
        level_dbfs=level_dbfs,
        reference_floor_db=reference_floor_db,
    )
    try:
        check_output_dir(out)  # before minutes of scoring
        with _progress() as progress:
            result, example = run_quality(opts, progress)
        written = write_quality(result, example, out)
    except USER_ERRORS as e:
        fail(e)
    typer.echo(markdown(result))
    console.print("wrote " + ", ".join(str(p) for p in written), highlight=False)
    for warning in result["warnings"]:
        console.print(labelled("warning:", "yellow", warning), highlight=False, soft_wrap=True)


@bench_app.command()
def training(
    data: Annotated[Path, typer.Option(help="Data root with speech/{train,dev} and noise/{train,dev}.")],
    out: Annotated[Path, typer.Option(help="Folder for runs/, rows/ and training_table.md/.json/.png.")] = (
        _RESULTS / "training_table"
    ),
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per row (with --minutes: the cap).")] = 100,
    minutes: Annotated[
        float | None,
        typer.Option(help="Each row's time budget for its steps (`rtpulse train --minutes`: the epochs that fit).")
    ] = None,
    steps_per_epoch: Annotated[int, typer.Option(min=1, help="Steps per epoch.")] = 100,
    batch_size: Annotated[int, typer.Option(min=1, help="Clips per step (PU: this many U and as many P).")] = 16,
    crop_seconds: Annotated[float, typer.Option(help="Training clip length (s).")] = 3.125,
    lr: Annotated[float, typer.Option(help="Adam learning rate (cosine decay to 1 %).")] = 3e-4,
    warmup_steps: Annotated[int, typer.Option(min=0, help="Linear warm-up steps.")] = 100,
    pvu_steps: Annotated[
        int, typer.Option(min=0, help="P-vs-U warm start before nnPU/uPU rows (0 = the paper's method throughout).")
    ] = 0,
    gamma: Annotated[
        float, typer.Option(help="nnPU's correction step γ for the PU rows (the reference code's 0.096; train's is 1).")
    ] = 0.096,
    select_mask: Annotated[
        str, typer.Option(help="Mask that picks each row's best epoch: reference (binary for PU, soft for PN/MixIT, as "
                               "the reference code), soft or binary.")
    ] = "reference",
    preset: Annotated[
        str | None, typer.Option(help="Replace `paper` in every row (e.g. blocks2 on a CPU); L is capped.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, … (default: cuda if available).")] = None,
    precision: Annotated[
        Precision, typer.Option(help="Each row's `rtpulse train --precision` (bf16: a CPU with native bf16, or CUDA).")
    ] = Precision.auto,
    only: Annotated[list[str] | None, typer.Option(help="Run only this row (repeatable).")] = None,
    count: Annotated[int, typer.Option(min=1, help="Test mixtures (the quality benchmark's set).")] = 20,
    seconds: Annotated[float, typer.Option(min=1.0, help="Length of each test mixture (s).")] = 6.0,
    min_speech_seconds: MinSpeechOpt = 4.0,
    reference_floor_db: Annotated[
        float, typer.Option(help="Noise floor a test reference may have (as `bench quality`); 0 keeps all.")
    ] = -25.0,
    dev_count: Annotated[int, typer.Option(min=1, help="The trainer's dev clips (pick each run's best epoch).")] = 40,
    dev_seconds: Annotated[float, typer.Option(help="Length of each dev clip (s).")] = 4.0,
) -> None:
    """Train and score the comparison table: PU (paper L=8, L=0), PN, MixIT, unweighted, uPU, both compress choices."""
    from benchmarks.training_table import TableOptions, run_table

    opts = TableOptions(
        data=data,
        out=out,
        epochs=epochs,
        minutes=minutes,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        crop_seconds=crop_seconds,
        lr=lr,
        warmup_steps=warmup_steps,
        pvu_steps=pvu_steps,
        gamma=gamma,
        select_mask=select_mask,
        preset=preset,
        device=device,
        precision=precision.value,
        only=list(only or []),
        count=count,
        seconds=seconds,
        min_speech_seconds=min_speech_seconds,
        reference_floor_db=reference_floor_db,
        dev_count=dev_count,
        dev_seconds=dev_seconds,
    )
    try:
        check_output_dir(out)
        result = run_table(opts)
    except USER_ERRORS as e:
        fail(e)
    typer.echo((out / "training_table.md").read_text())
    console.print(f"{len(result['rows'])} rows in {out}", highlight=False)
