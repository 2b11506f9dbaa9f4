"""Robustness audit: attacks that try to bring forgotten material back (see :mod:`unlearn.audit.runner`)."""

from .runner import ATTACKS, AuditConfig, audit

__all__ = ["ATTACKS", "AuditConfig", "audit"]
