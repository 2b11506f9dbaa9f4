"""What a manifest records beside the results: library versions and machine, and the run files' hashes."""

from __future__ import annotations

import platform
import torch
from ..version import __version__
from ..models.load import cpu_level
from ..runs.folder import RunFolder


def versions() -> dict:
    import accelerate
    import safetensors
    import transformers

    return {
        "unlearn": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "safetensors": safetensors.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_level": cpu_level(),
        "threads": torch.get_num_threads(),
    }


def run_file_hashes(folder: RunFolder) -> dict[str, str]:
    from ..models.save import file_sha256
    from ..runs.ledger import RUN_FILES

    return {name: file_sha256(folder.path(name)) for name in RUN_FILES}
