"""`rtpulse bench latency|quality`: thin commands over `benchmarks/` (imported inside)."""

from __future__ import annotations

import typer

bench_app = typer.Typer(help="Measure latency and quality against peers.", no_args_is_help=True)


@bench_app.command()
def latency() -> None:
    """Per-hop compute, real-time factor and measured delay."""
    raise typer.Exit(1)
