"""`rtpulse devices` and `rtpulse live`. sounddevice and the engine are imported inside the commands."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from rtpulse.audio import MAX_INPUT_RATE
from rtpulse.errors import RtpulseError

# Upper bounds: far beyond any real setting, low enough that a typo (--headroom 1e9) is an error, not an attempt
# to allocate a terabyte of ring buffer. 16384 frames is 341 ms at 48 kHz; more than 2 s of delay is no longer
# live audio.
MAX_BLOCKSIZE = 16384
MAX_LATENCY_S = 2.0
MAX_HEADROOM_MS = 2000.0


def devices() -> None:
    """List audio input and output devices (index, name, host API, channels, default rate)."""
    from rich.console import Console
    from rich.table import Table

    from rtpulse.cli import fail
    from rtpulse.cli_common import USER_ERRORS
    from rtpulse.live import list_devices

    try:
        found = list_devices()
    except USER_ERRORS as e:
        fail(e)
    table = Table(title="audio devices (* = default)")
    for col in ("index", "name", "host API", "in", "out", "default rate"):
        table.add_column(col, justify="right" if col in ("index", "in", "out", "default rate") else "left")
    for d in found:
        mark = ("*in " if d["default_input"] else "") + ("*out" if d["default_output"] else "")
        table.add_row(
            str(d["index"]),
            f"{d['name']} {mark}".strip(),
            d["hostapi"],
            str(d["inputs"]),
            str(d["outputs"]),
            f"{d['rate']} Hz",
        )
    Console(markup=False).print(table)  # "USB [hw:1,0]" is a name
    if not found:
        Console(stderr=True).print("no audio devices found (is a sound server or card available?)")


def live(
    input: Annotated[
        str | None,
        typer.Option("--input", "-i", help="Input device: index or name substring. Default: the system default."),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Output device: index or name substring. Default: the system default."),
    ] = None,
    model: ModelOpt = None,
    mask: MaskOpt = None,
    floor_db: FloorOpt = None,
    dry: Annotated[
        float,
        typer.Option(
            help="Fraction of the original input mixed into the output, delay-aligned: out = (1−X)·denoised + X·input. 0 = fully denoised, 1 = bypass."
        ),
    ] = 0.0,
    rate: Annotated[
        int | None,
        typer.Option(
            help="Device sample rate in Hz (e.g. 48000, 44100, 16000). Default: the input device's default rate; audio is resampled to/from the model's 16 kHz."
        ),
    ] = None,
    blocksize: Annotated[
        int | None,
        typer.Option(help="Device frames per audio callback. Default: one 16 ms engine hop at the device rate."),
    ] = None,
    latency: Annotated[
        float,
        typer.Option(
            help="Device latency to ask PortAudio for, in seconds ('low' settings underrun on busy machines)."
        ),
    ] = 0.1,
    headroom: Annotated[
        float,
        typer.Option(help="Milliseconds of compute hiccup absorbed without playing dry input (adds that much delay)."),
    ] = 48.0,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds. Default: run until Ctrl-C.")
    ] = None,
    record_in: Annotated[
        Path | None, typer.Option("--record-in", help="Write the (mono) input to this WAV file.")
    ] = None,
    record_out: Annotated[
        Path | None, typer.Option("--record-out", help="Write what is played (mono) to this WAV file.")
    ] = None,
    stats_json: Annotated[
        Path | None, typer.Option("--stats-json", help="Write the final counters and timings to this JSON file.")
    ] = None,
    no_dashboard: Annotated[
        bool,
        typer.Option("--no-dashboard", help="Print a status line every few seconds instead of the live dashboard."),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace recording and stats files that already exist.")
    ] = False,
) -> None:
    """Microphone → denoise → speaker, in real time, with a live dashboard. Ctrl-C (or SIGTERM) stops."""
    from rich.console import Console

    from rtpulse.cli import fail, load_model_or_default, mask_for
    from rtpulse.cli_common import USER_ERRORS
    from rtpulse.dashboard import num
    from rtpulse.files import check_json_output, check_output_file, probe_writable_dir
    from rtpulse.live import LiveOptions, run_live
    from rtpulse.model import default_model_path
    from rtpulse.signals import Terminated, sigterm_interrupts
    from rtpulse.stream import check_floor_db

    console = Console(stderr=True, markup=False)  # device names and paths are not markup
    if not 0.0 <= dry <= 1.0:
        fail(RtpulseError(f"--dry must be within 0…1, got {dry}"))
    for name, value in (("--blocksize", blocksize), ("--rate", rate)):
        if value is not None and value <= 0:
            fail(RtpulseError(f"{name} must be positive, got {value}"))
    # written as "not (x > 0)" so that NaN is refused too
    if not latency > 0 or not headroom >= 0 or (duration is not None and not duration > 0):
        fail(RtpulseError("--latency and --duration must be positive, --headroom not negative"))
    if any(v is not None and math.isinf(v) for v in (latency, headroom, duration)):
        fail(RtpulseError("--latency, --headroom and --duration must be finite"))
    for name, value, top, unit in (
        ("--blocksize", blocksize, MAX_BLOCKSIZE, " frames"),
        ("--rate", rate, MAX_INPUT_RATE, " Hz"),
        ("--latency", latency, MAX_LATENCY_S, " s"),
        ("--headroom", headroom, MAX_HEADROOM_MS, " ms (it adds that much delay)"),
    ):
        if value is not None and value > top:
            got = value if isinstance(value, int) else f"{value:g}"  # --rate 1000000, not 1e+06
            fail(RtpulseError(f"{name} must be at most {top:g}{unit}, got {got}"))
    for path in (record_in, record_out):
        if path is not None and path.suffix.lower() != ".wav":
            fail(RtpulseError(f"recordings are WAV files: {path} should end in .wav"))
    try:
        check_floor_db(floor_db)
        if stats_json is not None:  # before the devices open: no session is lost to a bad path
            check_json_output(stats_json, "--stats-json")
            probe_writable_dir(stats_json.parent)  # a read-only or unmakeable folder too
        if record_in is not None:
            check_output_file(record_in, (model,))  # never over the model file
        if record_out is not None:
            check_output_file(record_out, (record_in, model))
        for path in (record_in, record_out, stats_json):  # as denoise does: an old recording is never lost
            if path is not None and path.exists() and not force:
                raise RtpulseError(f"{path} exists; pass --force to replace it")
        net = load_model_or_default(model)
        opts = LiveOptions(
            input=input,
            output=output,
            mask=mask_for(mask, net),
            floor_db=floor_db,
            dry=dry,
            rate=rate,
            blocksize=blocksize,
            latency=latency,
            headroom_ms=headroom,
            duration=duration,
            record_in=record_in,
            record_out=record_out,
            stats_json=stats_json,
            dashboard=not no_dashboard,
        )
        name = (model or default_model_path()).name
        # SIGTERM stops a running session as Ctrl-C does (recordings and stats written, exit 0); before the
        # stream runs it ends the command with 143 (= 128 + 15; Ctrl-C gives 130) and no temp file left
        with sigterm_interrupts():
            stats = run_live(net, name, opts, console)
    except USER_ERRORS as e:
        fail(e)
    except Terminated as e:
        console.print(f"terminated ({e.signal_name}) before the audio stream ran", highlight=False)
        raise typer.Exit(e.exit_code) from None
    stopped = {"SIGTERM": "stopped (SIGTERM)", "SIGHUP": "stopped (SIGHUP)", "SIGINT": "stopped (Ctrl-C)"}.get(
        stats["stop_signal"], "done")
    console.print(
        f"{stopped}: {stats['seconds']:.1f} s at {stats['rate']} Hz on {stats['devices']}, "
        f"delay {stats['total_delay_ms']:.0f} ms, hop {num(stats['hop_ms_median'], '.2f')}/{num(stats['hop_ms_p99'], '.2f')} ms "
        f"(median/p99), CPU {stats['cpu_percent']:.0f}%, xruns in {stats['input_overflows']} "
        f"out {stats['output_underflows']}, dropped blocks {stats['dropped_blocks']}, faults {stats['faults']}"
        + "".join(f"; recorded {p}" for p in (record_in, record_out) if p),
        highlight=False,
        soft_wrap=True,
    )


# The shared option types live in rtpulse.cli, which imports this module while registering commands:
# importing them last (the annotations above are strings, resolved by typer when the app runs) works
# whichever of the two modules is imported first.
from rtpulse.cli import FloorOpt, MaskOpt, ModelOpt
