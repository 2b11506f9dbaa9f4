"""User-facing errors.

Anything the user can fix (a missing file, a bad fraction, an unsupported architecture) raises
:class:`UnlearnError`. The CLI turns it into a one-line message and exit code 2; programmatic callers get a
normal exception whose message says what to do.
"""


class UnlearnError(ValueError):
    """A problem with the user's input: the message names it and, where possible, the fix."""
