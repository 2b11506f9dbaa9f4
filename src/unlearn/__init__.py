"""unlearn: make a causal language model forget, and prove it."""

__version__ = "0.1.0"

from .api import RunResult, evaluate, evaluate_suite, learn, methods, run, suites  # noqa: E402
from .config import DataConfig, RunConfig, StopConfig  # noqa: E402
from .errors import UnlearnError  # noqa: E402

__all__ = [
    "DataConfig",
    "RunConfig",
    "RunResult",
    "StopConfig",
    "UnlearnError",
    "evaluate",
    "evaluate_suite",
    "learn",
    "methods",
    "run",
    "suites",
    "__version__",
]
