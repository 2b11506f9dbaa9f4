"""The command group, its one-line errors and exit codes, and the option parsers every command shares."""

from __future__ import annotations

import contextlib
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


def fraction(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise UnlearnError(f"{flag} expects a fraction or percentage, got {value!r}") from None


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


@contextlib.contextmanager
def one_line_errors():
    """Usage errors, UnlearnError, a full disk or a forbidden path, Ctrl-C: one line and exit code 2."""
    try:
        yield
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        fail("aborted")
    except click.ClickException as exc:
        fail(exc.format_message().replace("\n", " "))
    except UnlearnError as exc:
        fail(str(exc).replace("\n", " "))
    except OSError as exc:
        fail_os(exc)
    except KeyboardInterrupt:
        fail("interrupted")


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
    unlearn eval       evaluate any model: suites (TOFU, MUSE, RWKU, MCQ, LM, MIA) or next-token metrics
    unlearn learn      fine-tune a model on QA or text data (to build unlearning targets)
    unlearn methods    the registered unlearning methods and their parameters
    unlearn suites     the evaluation suites, their data parts and settings
    unlearn audit      attack an unlearned model: how much of the forgotten material comes back?
    unlearn ledger     the chain of unlearning requests behind a run folder, every hash re-verified
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
