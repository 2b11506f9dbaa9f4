"""unlearn: make a causal language model forget, and prove it."""

__version__ = "0.1.0"

from .api import RunResult, evaluate, methods, run  # noqa: E402
from .config import DataConfig, RunConfig, StopConfig  # noqa: E402
from .errors import UnlearnError  # noqa: E402

__all__ = [
    "DataConfig",
    "RunConfig",
    "RunResult",
    "StopConfig",
    "UnlearnError",
    "evaluate",
    "methods",
    "run",
    "__version__",
]
