"""Progress reporting: rich progress bars on a console, or nothing (library use, tests)."""

from __future__ import annotations

import contextlib


class Reporter:
    """``task(description, total)`` is a context manager yielding ``advance(n)``; ``log(msg)`` prints a line."""

    def __init__(self, console=None):
        self.console = console

    @contextlib.contextmanager
    def task(self, description: str, total: int):
        if self.console is None:
            yield lambda n=1: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("tokens"), TimeElapsedColumn(), console=self.console, transient=True) as bar:
            tid = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(tid, n)

    def log(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, highlight=False)
