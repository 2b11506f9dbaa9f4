"""The audit's attack registry: each attack is a name, a description and a function of the loaded audit."""

from __future__ import annotations
from collections.abc import Callable
from dataclasses import dataclass
from ..registry import Registry


@dataclass(frozen=True)
class Attack:
    """A registered attack: ``run(audit) -> [result entries]`` on an :class:`_Audit` (the loaded models, probes,
    settings and the scoring helpers). ``default``: whether an audit without ``--attack`` runs it (the costly or
    setting-dependent attacks are opt-in)."""

    name: str
    description: str
    run: Callable
    default: bool = True


ATTACKS: Registry[Attack] = Registry("attack")


def attack(name: str, description: str, *, default: bool = True):
    """Register the decorated function as attack ``name`` (``default=False``: run only when asked for by name)."""

    def wrap(fn):
        ATTACKS.add(name, Attack(name, description, fn, default))
        return fn

    return wrap
