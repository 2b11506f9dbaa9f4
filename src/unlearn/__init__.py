"""unlearn: make a causal language model forget, and prove it."""

from .version import __version__  # noqa: E402

from .api import (  # noqa: E402
    RunResult,
    audit,
    evaluate,
    evaluate_suite,
    keygen,
    launch,
    learn,
    ledger,
    load_guarded,
    load_model,
    methods,
    report,
    run,
    sign,
    suites,
    sweep,
)
from .config import DataConfig, RunConfig, StopConfig  # noqa: E402
from .errors import UnlearnError  # noqa: E402

__all__ = [
    "DataConfig",
    "RunConfig",
    "RunResult",
    "StopConfig",
    "UnlearnError",
    "audit",
    "evaluate",
    "evaluate_suite",
    "keygen",
    "launch",
    "learn",
    "ledger",
    "load_guarded",
    "load_model",
    "methods",
    "report",
    "run",
    "sign",
    "suites",
    "sweep",
    "__version__",
]
