"""What the report's section builders share: section ids, plain cells, the run-file names, recovery colours."""

from __future__ import annotations

from ..eval.metrics import pareto_front
from ..runs.folder import MANIFEST
from .data import (
    Cell,
    Run,
    get,
    num,
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


FRONT = {"top1": "top-1", "skip50_top1": "skip50"}  # the metrics of a comparison's Pareto fronts


def pareto_labels(runs: list[Run]) -> list[str]:
    """Per run, the Pareto fronts (forget drop against retain drop) of ``runs`` it is on: "top-1, skip50", or "–"."""
    drops = {
        m: pareto_front(
            [
                (num(get(r.metrics, "after", "forget_drop", m)), num(get(r.metrics, "after", "retain_drop", m)))
                for r in runs
            ]
        )
        for m in FRONT
    }
    return [", ".join(label for m, label in FRONT.items() if i in drops[m]) or "–" for i in range(len(runs))]
