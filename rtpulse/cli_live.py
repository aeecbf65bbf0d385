"""`rtpulse devices` and `rtpulse live` (owned by the live issue). sounddevice is imported inside."""

from __future__ import annotations

import typer


def devices() -> None:
    """List audio input and output devices."""
    raise typer.Exit(1)


def live() -> None:
    """Microphone → denoise → speaker, in real time."""
    raise typer.Exit(1)
