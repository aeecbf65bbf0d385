"""The one exception type for problems a user can fix (bad file, bad option, missing device).

The CLI catches it and prints its message on one line; everything else is a bug and may traceback.
"""


class RtpulseError(Exception):
    """A user-facing error: the message is one line that says what is wrong and what to do."""
