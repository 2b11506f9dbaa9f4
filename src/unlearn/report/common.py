"""What the report's section builders share: section ids, plain cells, the run-file names, recovery colours."""

from __future__ import annotations

from ..runs.folder import MANIFEST
from .data import (
    Cell,
    Run,
    text,
)

M, MF, A = "metrics.json", MANIFEST, "audit.json"
HIGH_RECOVERY, WARN_RECOVERY = 0.5, 0.2


def sid(run: Run, name: str) -> str:
    return f"run{run.index}-{name}"


def plain(run: Run, value) -> Cell:
    shown = text(value)
    return Cell(shown if shown is not None else "–", run=run.index)


def parent_cell(run: Run, parent: dict) -> Cell:
    name = text(parent.get("run_name")) or "?"
    where = text(parent.get("run_dir"))
    return Cell(name + (f" ({where})" if where else ""), run=run.index, code=True)


def recovery_class(v) -> str:
    return "high" if v is not None and v >= HIGH_RECOVERY else "warn" if v is not None and v >= WARN_RECOVERY else ""
