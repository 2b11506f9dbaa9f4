"""Evaluation suites: named compositions of metrics over the parts (data files) of a benchmark.

A suite is registered with :func:`register`: a name, a pydantic config of its settings, its parts with the file
name each has inside a benchmark folder (``--data ../shared/data/tofu``), and a function
``run(ctx, config) -> summary``. The function computes each part through :meth:`SuiteContext.part`, which
caches the part's per-sample values and summary in ``eval/<suite>.json`` under a fingerprint of model, data and
settings. Reference and original models are loaded only when a metric asks for them.
"""

from __future__ import annotations

from . import harness, lm, mcq, mia, muse, restor, rwku, tofu  # noqa: F401  (register the suites)
from .base import (
    SUITES,
    Suite,
    SuiteConfig,
    SuiteContext,
    ModelHandle,
    get_suite,
    mean,
    ordered,
    register,
    resolve_parts,
)

__all__ = [
    "SUITES",
    "Suite",
    "SuiteConfig",
    "SuiteContext",
    "ModelHandle",
    "get_suite",
    "mean",
    "ordered",
    "register",
    "resolve_parts",
]
