"""How an inference-time component (:mod:`.components`) keeps itself beside a checkpoint: a JSON record (the
marker file its kind is registered under) and a safetensors file of its tensors, written and read back here."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import UnlearnError


def write(directory: Path, marker: str, record: dict, tensors_file: str, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Write ``tensors`` (as float32 on the CPU) to ``tensors_file`` and ``record`` to ``marker`` in ``directory``;
    the names written. With no tensors no tensor file is written and the record says ``"tensors": null``."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    if tensors:
        save_file({n: t.detach().float().contiguous().cpu() for n, t in tensors.items()}, directory / tensors_file)
    else:
        record = {**record, "tensors": None}
    (directory / marker).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return [marker, tensors_file] if tensors else [marker]


def read(directory: Path, marker: str, tensors_file: str, what: str, build: Callable[[dict, dict], object]):
    """``build(record, tensors)`` from the files :func:`write` left in ``directory`` (the record names its tensor
    file, ``tensors_file`` by default; ``"tensors": null`` means none, and ``tensors`` is empty); anything
    unreadable, missing or rejected by ``build`` (a ``ValueError``, a missing key) is one :class:`UnlearnError`
    naming ``what`` and the folder."""
    from safetensors.torch import load_file

    try:
        record = json.loads((directory / marker).read_text(encoding="utf-8"))
        name = record.get("tensors", tensors_file)
        return build(record, load_file(directory / name) if name else {})
    except UnlearnError:
        raise
    except Exception as exc:  # noqa: BLE001 - json, safetensors and missing keys all mean an unreadable component
        raise UnlearnError(f"cannot read the {what} in {directory}: {exc}".splitlines()[0]) from exc
