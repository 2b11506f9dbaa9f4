"""Progress reporting: rich progress bars on a console, or nothing (library use, tests, ``--quiet``).

Warnings are not progress: :meth:`Reporter.warn` prints them on the console, or on stderr when there is none.
"""

from __future__ import annotations

import contextlib


class Reporter:
    """``task(description, total)`` yields ``advance(n)``; ``stage(msg)`` shows a transient status while a block
    runs; ``log(msg)`` prints a permanent line on the console; ``warn(msg)`` always prints (stderr without one)."""

    def __init__(self, console=None):
        self.console = console

    @contextlib.contextmanager
    def task(self, description: str, total: int, unit: str = "tokens"):
        if self.console is None or not self.console.is_terminal:  # bars only make sense on a terminal
            yield lambda n=1: None
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        ) as bar:
            tid = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(tid, n)

    @contextlib.contextmanager
    def stage(self, message: str):
        """A transient status line (a spinner on a terminal, nothing elsewhere) while a slow stage runs."""
        if self.console is None:
            yield
            return
        with self.console.status(message):
            yield

    def log(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        """A line the user must see whatever the verbosity: something went wrong, or what to do next."""
        if self.console is not None:
            self.console.print(message, highlight=False, soft_wrap=True)
            return
        from .distributed import is_main

        if is_main():  # in a multi-process launch, process 0 speaks for all
            import sys

            print(message, file=sys.stderr, flush=True)
