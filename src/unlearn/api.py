"""The Python API. Every CLI command is one call here: :func:`run`, :func:`evaluate`, :func:`audit`, ...

This module is the public facade: the work happens in :mod:`unlearn.pipeline` (runs, launches, evaluation,
fine-tuning), :mod:`unlearn.audit` and :mod:`unlearn.report`."""

from __future__ import annotations

from pathlib import Path

from .audit.runner import audit
from .methods import registry
from .pipeline.evaluate import evaluate, evaluate_suite
from .pipeline.launch import launch
from .pipeline.learn import learn
from .pipeline.run import RunResult, run, write_report
from .pipeline.validate import coerce_config

__all__ = [
    "RunResult",
    "audit",
    "coerce_config",
    "evaluate",
    "evaluate_suite",
    "launch",
    "learn",
    "ledger",
    "methods",
    "report",
    "run",
    "suites",
    "write_report",
]


def suites() -> dict[str, dict]:
    """Registered evaluation suites: summary, parts (standard file names) and settings."""
    from .eval.suites import SUITES

    return {
        name: {
            "summary": st.summary,
            "parts": st.parts or "any number of files (one part each)",
            "uses": list(st.uses),
            "settings": {
                k: {"default": f.default, "description": f.description} for k, f in st.config_cls.model_fields.items()
            },
        }
        for name, st in sorted(SUITES.items())
    }


def methods() -> dict[str, dict]:
    """Registered methods with their summary and parameter defaults and descriptions."""
    return {
        name: {
            "summary": m.summary,
            "parameters": {
                k: {"default": f.default, "description": f.description} for k, f in m.config_cls.model_fields.items()
            },
        }
        for name, m in sorted(registry.REGISTRY.items())
    }


def ledger(run_dir: str | Path) -> dict:
    """The chain of unlearning requests behind a run folder, root first, with every hash re-verified: see
    :func:`unlearn.runs.ledger.ledger`."""
    from .runs.ledger import ledger as build

    return build(run_dir)


def report(run_dirs: list[str | Path] | str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Write ``report.html`` (self-contained: figures inline as SVG) and ``report.md`` for one or several run
    folders: into the run folder for one, ``reports/<timestamp>/`` for several, or ``out``. Returns ``{"html":
    path, "md": path}``; see :func:`unlearn.report.html.report`."""
    from .report.html import report as write

    return write(run_dirs, out)
