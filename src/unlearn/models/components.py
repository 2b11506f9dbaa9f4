"""Inference-time components: what a saved model carries besides its weights (a sparse-autoencoder feature clamp,
a generation-time guard policy), kept as files beside the plain checkpoint and attached again whenever it is loaded.

A component is attached to a model in memory (forward hooks, never parameters: the weights, their hash and the
checkpoint ``save_pretrained`` writes stay those of the plain model) and listed on the model, so that whatever
saves the model (:func:`~unlearn.models.save.save_checkpoint`) writes its files too and whatever loads a folder
(:func:`~unlearn.models.load.load_model`) attaches it again. Each kind is registered here by the name of the file
that marks it (``clamp.json``); a folder holding that file gets the component on load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from torch import nn

from ..errors import UnlearnError
from ..registry import Registry
from . import alu, clamp, guard, icul, policies  # noqa: F401 - guard, icul and alu register their policy kinds

ATTACHED = "unlearn_components"  # the model attribute listing what is attached (a plain list, not a submodule)


class Component(Protocol):
    """What every inference-time component provides."""

    file: str  # the marker file its kind is registered under

    def install(self, model: nn.Module) -> None: ...  # add its hooks

    def remove(self) -> None: ...  # take its hooks off again

    def save(self, directory: Path) -> list[str]: ...  # write its files; their names

    def describe(self) -> str: ...  # one line for logs


@dataclass(frozen=True)
class Kind:
    """One kind of component: its marker file, what it is, and how to read it from a folder."""

    file: str
    summary: str
    read: Callable[[Path], Component]


KINDS: Registry[Kind] = Registry("inference component")
KINDS.add(clamp.CLAMP_FILE, Kind(clamp.CLAMP_FILE, "sparse-autoencoder feature clamp (sae-clamp)", clamp.read))
KINDS.add(
    policies.POLICY_FILE,
    Kind(policies.POLICY_FILE, "generation-time policy (guard, icul or alu)", policies.read),
)


def attached(model: nn.Module) -> list:
    """The components attached to ``model``, in the order they were attached."""
    return list(model.__dict__.get(ATTACHED, ()))


def attach(model: nn.Module, component) -> None:
    """Install ``component``'s hooks on ``model`` and list it there; one component per kind."""
    if any(c.file == component.file for c in attached(model)):
        raise UnlearnError(
            f"the model already carries a {KINDS[component.file].summary}: a second one of the same kind is not "
            f"supported (start from the model without it)"
        )
    component.install(model)
    model.__dict__.setdefault(ATTACHED, []).append(component)


def detach(model: nn.Module) -> list:
    """Take every component off ``model`` (hooks removed); return them."""
    found = attached(model)
    for component in found:
        component.remove()
    model.__dict__.pop(ATTACHED, None)
    return found


def carry(old: nn.Module, new: nn.Module) -> None:
    """Move the components of ``old`` to ``new`` (a rebuilt copy of it)."""
    if old is new:
        return
    for component in detach(old):
        attach(new, component)


def save_attached(model: nn.Module, directory: Path) -> list[str]:
    """Write the files of every component attached to ``model`` into ``directory``; their names."""
    names: list[str] = []
    for component in attached(model):
        names += component.save(Path(directory))
    return names


def attach_saved(model: nn.Module, directory: str | Path, log=None) -> list:
    """Attach every component saved in ``directory`` (a checkpoint folder) to ``model``; ``log(message)`` is told
    about each one. Returns them."""
    directory = Path(directory)
    found = []
    for name, kind in sorted(KINDS.items()):
        if (directory / name).is_file():
            component = kind.read(directory)
            attach(model, component)
            found.append(component)
            if log:
                log(f"attached {component.describe()} from {directory / name}")
    return found
