"""Malformed values in a run folder's JSON files, found before a report presents them as results.

A run writes finite numbers only (perplexity is capped at exp(700)); a NaN, an infinity, a missing metric or a
value of the wrong type means the file was damaged or edited by hand. :func:`report <unlearn.report.html.report>`
refuses such a folder unless told not to verify, and then shows the problems at the top of the run's part.
"""

from __future__ import annotations

import math

from .common import A, M, MF
from .data import Run, num

CORE_METRICS = ("top1", "top10", "loss")  # every corpus of metrics.json's before and after has them


def _pointer(keys) -> str:
    return "/" + "/".join(str(k).replace("~", "~0").replace("/", "~1") for k in keys)


def _non_finite(obj, keys=()):
    """(pointer, value) of every NaN or infinite number in a parsed JSON value."""
    if isinstance(obj, float) and not math.isfinite(obj):
        yield _pointer(keys), obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _non_finite(v, (*keys, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _non_finite(v, (*keys, i))


def _a(value) -> str:
    """What a JSON value is, for a message: "an object", "a text", "null"."""
    if value is None:
        return "null"
    name = {dict: "object", list: "array", str: "text", bool: "true/false"}.get(type(value), type(value).__name__)
    return ("an " if name[0] in "aeiou" else "a ") + name


def _metrics_problems(metrics: dict) -> list[str]:
    problems = []
    for phase in ("before", "after"):
        corpora = metrics.get(phase)
        if not isinstance(corpora, dict) or not corpora:
            found = "missing" if phase not in metrics else f"{_a(corpora)}, not an object of corpora"
            problems.append(f"{M}#{_pointer([phase])}: {found}")
            continue
        for which in ("forget", "retain"):
            if which not in corpora:
                problems.append(f"{M}#{_pointer([phase, which])}: missing")
        for which, values in corpora.items():
            if not isinstance(values, dict):
                problems.append(f"{M}#{_pointer([phase, which])}: {_a(values)}, not an object of metrics")
                continue
            if which.endswith("_drop"):  # the relative drop of each metric
                problems += [
                    f"{M}#{_pointer([phase, which, k])}: {_a(v)}, not a number"
                    for k, v in values.items()
                    if num(v) is None
                ]
                continue
            for key in CORE_METRICS:
                if key not in values:
                    problems.append(f"{M}#{_pointer([phase, which, key])}: missing")
                elif num(values[key]) is None:
                    problems.append(f"{M}#{_pointer([phase, which, key])}: {_a(values[key])}, not a number")
    for key, kind in (("steps", list), ("stop_reason", str)):
        if key in metrics and not isinstance(metrics[key], kind):
            expected = "an array" if kind is list else "text"
            problems.append(f"{M}#{_pointer([key])}: {_a(metrics[key])}, not {expected}")
    return problems


def malformed(run: Run) -> list[str]:
    """Problems with the values of ``run``'s metrics.json, manifest.json and audit.json, each naming the file
    and the JSON pointer of the value."""
    problems = []
    for name, data in ((M, run.metrics), (MF, run.manifest), (A, run.audit)):
        if data is not None:
            problems += [f"{name}#{where}: {value} is not a finite number" for where, value in _non_finite(data)]
    problems += _metrics_problems(run.metrics)
    if not isinstance(run.manifest.get("model"), dict):
        problems.append(f"{MF}#/model: {'missing' if 'model' not in run.manifest else 'not an object'}")
    if run.audit is not None and not isinstance(run.audit.get("attacks", []), list):
        problems.append(f"{A}#/attacks: {_a(run.audit['attacks'])}, not an array")
    return [f"{run.path}/{p}" for p in problems]
