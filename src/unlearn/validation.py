"""One way to turn settings into a validated pydantic config, and its first problem into one line.

Every config of the project (the run's, a method's, a suite's, the audit's, fine-tuning's) is built with
:func:`build`, so that every bad setting reads the same: ``invalid <what> <setting>: <problem>``, with the
closest valid name suggested for a misspelt one.
"""

from __future__ import annotations

import difflib
from typing import TypeVar, get_args

from pydantic import BaseModel, ValidationError

from .errors import UnlearnError

M = TypeVar("M", bound=BaseModel)


def build(model: type[M], values: dict | None, what: str) -> M:
    """``model(**values)``; a validation problem raises :class:`UnlearnError` naming ``what`` and the setting."""
    values = dict(values or {})
    names = [k for k in values if not isinstance(k, str)]
    if names:
        raise UnlearnError(f"invalid {what}: setting names must be text, got {names[0]!r}")
    try:
        return model(**values)
    except ValidationError as exc:
        raise UnlearnError(f"invalid {what}{problem(exc, model)}") from exc
    except ValueError as exc:  # a validator's own check that pydantic does not wrap
        raise UnlearnError(f"invalid {what}: {exc}") from exc


def problem(exc: ValidationError, model: type[BaseModel]) -> str:
    """The first error of ``exc`` as `` <setting path>: <message>`` (one line; just ``: <message>`` for a problem
    of the settings as a whole)."""
    err = exc.errors()[0]
    where = ".".join(shown(p) for p in err["loc"])
    message = " ".join(str(err["msg"]).split()).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden" and err["loc"]:
        close = difflib.get_close_matches(str(err["loc"][-1]), fields_at(model, err["loc"][:-1]), n=1)
        message += f" (did you mean {close[0]}?)" if close else ""
    return f" {where}: {message}" if where else f": {message}"


def shown(key) -> str:
    """A setting's key as an error message shows it: plain names as they are, anything else quoted (one line)."""
    return str(key) if isinstance(key, int) or str(key).isidentifier() else repr(key)


def fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The setting names valid at ``loc`` of ``model`` (the path of an unknown key, without the key itself)."""
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a list of settings
        field = model.model_fields.get(part)
        candidates = [field.annotation, *get_args(field.annotation)] if field is not None else []
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)
