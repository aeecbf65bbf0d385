"""What every command module shares: option enums and the one-line error exit (light imports only)."""

from __future__ import annotations

from enum import Enum

import typer
from rich.console import Console

console = Console(stderr=True)


class Mask(str, Enum):
    binary = "binary"
    soft = "soft"
    posterior = "posterior"


class Engine(str, Enum):
    offline = "offline"
    stream = "stream"


def fail(err: Exception) -> None:
    """Print a user error on one line and exit 1."""
    console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)
