"""Unlearning methods, registered by name. Importing this package registers the built-in ones."""

from . import alu, edits, exact, guard, icul, peers, sae_clamp, selective_pruning, trained, uoe  # noqa: F401  (register themselves)
from .registry import REGISTRY, Method, MethodResult, get_method, register

__all__ = ["REGISTRY", "Method", "MethodResult", "get_method", "register"]
