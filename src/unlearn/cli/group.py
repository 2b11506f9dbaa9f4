"""The command group, its one-line errors and exit codes, and the option parsers every command shares."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import get_args

import click

from ..config import RunConfig
from ..errors import ENVIRONMENT, UnlearnError, from_os_error
from ..methods.selective_pruning import SelectivePruningConfig


PCT = "(a fraction such as 0.05 or a percentage such as 5%)"
DEFAULTS = RunConfig()
SP = {k: f.default for k, f in SelectivePruningConfig.model_fields.items()}


class Number(click.ParamType):
    """The type of every numeric option: a finite whole number (``int``) or number (``float``) within bounds.

    NaN and infinities are refused with the option's name (Python's ``float()`` accepts them, and a NaN passes
    every comparison-based range check). :meth:`like` takes the bounds from a config field, so a flag and the
    setting it fills keep one range."""

    def __init__(self, kind: type = float, *, ge=None, gt=None, le=None, lt=None):
        self.kind, self.ge, self.gt, self.le, self.lt = kind, ge, gt, le, lt
        self.name = "integer" if kind is int else "number"

    @classmethod
    def like(cls, model, field: str, kind: type | None = None) -> Number:
        """The number type of the config ``model``'s ``field``: its kind and its ge/gt/le/lt bounds."""
        info = model.model_fields[field]
        bounds = {k: getattr(m, k) for m in info.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
        return cls(kind or (int if info.annotation in (int, "int") else float), **bounds)

    def convert(self, value, param, ctx):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            text = str(value).strip()
            try:
                value = int(text) if self.kind is int else float(text)
            except ValueError:
                self.fail(f"{text!r} is not {'a whole number' if self.kind is int else 'a number'}", param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number", param, ctx)
        for bound, ok, word in (
            (self.ge, lambda b: value >= b, "at least"),
            (self.gt, lambda b: value > b, "more than"),
            (self.le, lambda b: value <= b, "at most"),
            (self.lt, lambda b: value < b, "less than"),
        ):
            if bound is not None and not ok(bound):
                self.fail(f"{value} is out of range: it must be {word} {bound}", param, ctx)
        return value


def fraction(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    try:
        out = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise UnlearnError(f"{flag} expects a fraction or percentage, got {value!r}") from None
    if not math.isfinite(out):
        raise UnlearnError(f"{flag} expects a finite fraction or percentage, got {value!r}")
    return out


def int_or_auto(value: str | None, flag: str):
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise UnlearnError(f"{flag} expects a whole number or auto, got {value!r}") from None


def console_for():
    """Progress on stderr; None (no progress) in the processes of a multi-process launch other than process 0."""
    from ..distributed import is_main

    if not is_main():
        return None
    from rich.console import Console

    # a launched process writes into a pipe that `unlearn run --launcher` forwards to its terminal
    return Console(stderr=True, force_terminal=True if os.environ.get("UNLEARN_FORCE_TERMINAL") else None)


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def fail_os(exc: OSError) -> None:
    """A full disk, a read-only or forbidden path: one line; any other OSError is a bug and keeps its traceback."""
    if exc.errno not in ENVIRONMENT:
        raise exc
    fail(str(from_os_error(exc)))


def interrupted() -> None:
    """Ctrl-C: not bad input, so not exit code 2, but the shell's 130 (128 + SIGINT)."""
    click.echo("interrupted", err=True)
    sys.exit(130)


@contextlib.contextmanager
def one_line_errors():
    """Usage errors, UnlearnError, a full disk or a forbidden path: one line and exit code 2; Ctrl-C: 130."""
    try:
        yield
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            interrupted()
        fail("aborted")
    except click.ClickException as exc:
        fail(exc.format_message().replace("\n", " "))
    except UnlearnError as exc:
        fail(str(exc).replace("\n", " "))
    except OSError as exc:
        fail_os(exc)
    except KeyboardInterrupt:
        interrupted()


class Command(click.Command):
    """Turn usage errors and UnlearnError into one line and exit code 2."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        with one_line_errors():
            return super().main(*args, **kwargs)


class Group(click.Group):
    command_class = Command

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        with one_line_errors():
            rv = super().main(*args, **kwargs)
        if isinstance(rv, int) and rv:
            sys.exit(rv)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="unlearn-lm", prog_name="unlearn")
def main():
    """Make a causal language model forget — a capability, a body of knowledge or specific data — and prove it.

    \b
    unlearn run        unlearn (defaults: forget Python code, keep English prose, on the bundled SmolLM2-135M)
    unlearn eval       evaluate any model: suites (TOFU, MUSE, RWKU, MCQ, LM, MIA, lm-eval tasks) or next-token metrics
    unlearn learn      fine-tune a model on QA or text data (to build unlearning targets)
    unlearn methods    the registered unlearning methods and their parameters
    unlearn suites     the evaluation suites, their data parts and settings
    unlearn audit      attack an unlearned model: how much of the forgotten material comes back?
    unlearn ledger     the chain of unlearning requests behind a run folder, every hash re-verified
    unlearn sign       sign a finished run folder (Ed25519); unlearn keygen makes the key pair
    unlearn report     an HTML + Markdown report of one or several run folders (plots, tables, audit)
    """


def choices(model, field: str) -> click.Choice:
    """A ``click.Choice`` of the values a config field's ``Literal`` type allows: the config stays the one list."""
    return click.Choice(list(get_args(model.model_fields[field].annotation)))


def set_if_given(d: dict, key: str, value) -> None:
    if value is not None:
        d[key] = value


def key_values(items, flag: str) -> dict:
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise UnlearnError(f"{flag} expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out
