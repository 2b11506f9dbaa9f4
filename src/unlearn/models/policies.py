"""Generation policies: what ``--method guard|icul|alu`` leave beside an unchanged checkpoint. They all keep one
marker file, ``policy.json``, whose ``kind`` says which policy it is (``guard``, ``icul``, ``alu``); each kind
registers here how to build itself from that record and its tensors (``policy.safetensors``, when it has any)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..errors import UnlearnError
from ..registry import Registry
from . import component_files

POLICY_FILE = "policy.json"
TENSORS_FILE = "policy.safetensors"

BUILDERS: Registry[Callable[[dict, dict], object]] = Registry("generation policy kind")


def register(kind: str, build: Callable[[dict, dict], object]) -> None:
    """Register ``build(record, tensors)`` as the reader of ``policy.json`` files whose ``kind`` is ``kind``."""
    BUILDERS.add(kind, build)


def read(directory: Path):
    """The generation policy saved in ``directory`` (``policy.json`` and, when it names one, its tensors file)."""
    directory = Path(directory)
    try:
        kind = json.loads((directory / POLICY_FILE).read_text(encoding="utf-8")).get("kind", "guard")
    except Exception as exc:  # noqa: BLE001 - unreadable JSON is one error naming the folder
        raise UnlearnError(f"cannot read the generation policy in {directory}: {exc}".splitlines()[0]) from exc
    if kind not in BUILDERS:
        raise UnlearnError(
            f"the generation policy in {directory} is of kind {kind!r}; this version reads "
            + ", ".join(sorted(BUILDERS))
        )
    return component_files.read(directory, POLICY_FILE, TENSORS_FILE, f"{kind} policy", BUILDERS[kind])
