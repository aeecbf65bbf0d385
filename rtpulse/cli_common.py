"""What every command module shares: option enums and the one-line error exit (light imports only)."""

from __future__ import annotations

import os
from enum import Enum

import typer
from rich.console import Console
from rich.text import Text

from rtpulse.errors import RtpulseError

# markup off: messages carry paths and device names, and "[live] take.wav" or "out/[/x]" are names, not styles
console = Console(stderr=True, markup=False)


class Mask(str, Enum):
    binary = "binary"
    soft = "soft"
    posterior = "posterior"


class Engine(str, Enum):
    offline = "offline"
    stream = "stream"


# what a command reports in one line: its own errors, and the system's about a path (a name longer than 255
# bytes, a folder that cannot be read), which pathlib's exists() and is_dir() raise rather than answer
USER_ERRORS = (RtpulseError, OSError)


def message(err: Exception) -> str:
    """The one line for a user error: an OSError as "reason: path", without Python's "[Errno N]"."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror + (f": {os.fsdecode(err.filename)}" if err.filename is not None else "")
    return str(err)


def labelled(label: str, style: str, text: str) -> Text:
    """``label text`` with only the label styled; the text is printed as it is, never read as rich markup."""
    return Text.assemble((label, style), " ", text)


def fail(err: Exception) -> None:
    """Print a user error on one line and exit 1."""
    console.print(labelled("error:", "bold red", message(err)), highlight=False, soft_wrap=True)
    raise typer.Exit(1)
