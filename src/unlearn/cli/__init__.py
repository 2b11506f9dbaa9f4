"""The ``unlearn`` command line: a thin layer over :mod:`unlearn.api`.

Bad input (anything raising :class:`UnlearnError`) prints one line, ``error: ...``, and exits with code 2.
"""

from __future__ import annotations

from . import commands, eval, records, run, sweep  # noqa: F401  (register the commands on the group)
from .group import main

__all__ = ["main"]
