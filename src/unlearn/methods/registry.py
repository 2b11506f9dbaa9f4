"""A registry of unlearning methods keyed by name; each has a pydantic config class and one ``run`` function.

Every method has the same signature, ``run(ctx: MethodContext, cfg) -> MethodResult``: it receives the model,
the tokenised forget and retain corpora and an ``evaluate`` callback, and returns the edits to fold into the
saved model together with its per-step trajectory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel

from ..registry import Registry
from ..validation import build


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type[BaseModel]
    run: Callable
    summary: str
    budget: bool = True  # whether the method honours stopping budgets (steps it can stop between)
    check: Callable | None = None  # check(run_config, method_config): the method's own checks before any model loads

    def make_config(self, values: dict | None) -> BaseModel:
        return build(self.config_cls, values, f"{self.name} setting")


@dataclass
class MethodResult:
    ablation: object | None  # models.hooks.Ablation to fold into the weights at save time, if any
    steps: list[dict] = field(default_factory=list)
    stop_reason: str = ""
    final: dict | None = None  # metrics of the returned state (forget/retain)
    model: object | None = None  # the changed model, for methods that train (replaces the working copy)
    log: list[dict] = field(default_factory=list)  # per optimizer step: loss terms, learning rate
    extra: dict = field(default_factory=dict)  # method facts worth recording in the manifest


def canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")


REGISTRY: Registry[Method] = Registry("method", key=canonical)


def register(name: str, config_cls: type[BaseModel], summary: str, *, budget: bool = True, check=None):
    def wrap(fn):
        REGISTRY.add(name, Method(canonical(name), config_cls, fn, summary, budget, check))
        return fn

    return wrap


def get_method(name: str) -> Method:
    return REGISTRY.lookup(name)
