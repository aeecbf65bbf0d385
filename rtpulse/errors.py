"""The one exception type for problems a user can fix (bad file, bad option, missing device).

The CLI catches it and prints its message on one line; everything else is a bug and may traceback.
"""


class RtpulseError(Exception):
    """A user-facing error: the message is one line that says what is wrong and what to do."""


def short_reason(e: BaseException, limit: int = 200) -> str:
    """An exception's first line, cut short, for a one-line error: a damaged file header can put kilobytes into it."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
