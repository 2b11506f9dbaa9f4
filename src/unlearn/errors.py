"""User-facing errors.

Anything the user can fix (a missing file, a bad fraction, an unsupported architecture) raises
:class:`UnlearnError`. The CLI turns it into a one-line message and exit code 2; programmatic callers get a
normal exception whose message says what to do.
"""

import errno


class UnlearnError(ValueError):
    """A problem with the user's input: the message names it and, where possible, the fix."""


class DiskFull(UnlearnError):
    """Not enough free space for what a command must write; the message names the path and the bytes needed."""


# a full disk or quota: what the user can fix by freeing space or writing elsewhere
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# errors of the machine's state rather than of the program: reported in one line, never as a traceback
ENVIRONMENT = DISK_FULL | {errno.EACCES, errno.EPERM, errno.EROFS}


def from_os_error(exc: OSError, doing: str = "") -> UnlearnError:
    """One line for a failed read or write (``doing``: e.g. "writing the model"); a full disk says so."""
    where = f" ({exc.filename})" if exc.filename else ""
    reason = " ".join(str(exc.strerror or exc).split())
    if exc.errno in DISK_FULL:
        while_ = f" while {doing}" if doing else ""
        return DiskFull(f"no space left on device (disk full){while_}{where}: free some space or write elsewhere")
    return UnlearnError(f"{doing} failed{where}: {reason}" if doing else f"{reason}{where}")
