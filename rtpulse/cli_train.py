"""`rtpulse train` and `rtpulse eval`: thin commands; the trainer package is imported inside them."""

from __future__ import annotations

import typer


def train() -> None:
    """Train a PULSE (PU), PN or MixIT model."""
    raise typer.Exit(1)


def evaluate() -> None:
    """Score a model on noisy/clean pairs (SI-SNRi, PESQ, STOI)."""
    raise typer.Exit(1)
