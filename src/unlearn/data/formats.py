"""Evaluation data formats: QA pairs (TOFU, MUSE knowmem), multiple choice (WMDP, MMLU), RWKU probes, MUSE verbmem.

Each loader reads records with :func:`~unlearn.data.sources.iter_records` (a .jsonl/.json/.csv/.parquet file, a
folder or glob of them, or ``hf:NAME``), checks every record it reads and returns frozen items in file order.
Any problem raises :class:`UnlearnError` with one line naming the record (``path:line`` or ``path[i]``) and what
is wrong with it, e.g. ``data/x.jsonl:3: missing field 'answer' (has question, choices)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import UnlearnError
from .sources import iter_records, missing_field

T = TypeVar("T")
_LEVEL_IN_NAME = re.compile(r"level([123])(?!\d)")
_CHOICE_COLUMN = re.compile(r"choice(0|[1-9]\d*)")


@dataclass(frozen=True)
class QAItem:
    """A question with its answer (TOFU, MUSE knowmem, generic QA); TOFU adds paraphrased and perturbed answers."""

    question: str
    answer: str
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = ()
    paraphrased_question: str | None = None
    id: str = ""


@dataclass(frozen=True)
class MCItem:
    """A multiple-choice question (WMDP, MMLU): ``answer`` is the index of the right choice."""

    question: str
    choices: tuple[str, ...]
    answer: int
    id: str = ""


@dataclass(frozen=True)
class Probe:
    """An RWKU knowledge probe: level 1 cloze queries hold a ``___`` blank, levels 2 and 3 are questions."""

    query: str
    answer: str
    level: str
    type: str
    subject: str = ""
    id: str = ""


@dataclass(frozen=True)
class Continuation:
    """A prompt and the text that follows it in the source (MUSE verbmem)."""

    prompt: str
    target: str
    id: str = ""


def load_qa(
    source: str | Path, *, limit: int | None = None, hf_config: str | None = None, hf_split: str = "train"
) -> list[QAItem]:
    """Question-answer items from records with ``question`` and ``answer`` (TOFU's optional fields are kept)."""
    return _load(source, _qa, limit, hf_config, hf_split)


def load_mc(
    source: str | Path, *, limit: int | None = None, hf_config: str | None = None, hf_split: str = "train"
) -> list[MCItem]:
    """Multiple-choice items: ``question``, ``choices`` (a list) or ``choice0..choiceN`` columns, and ``answer``.

    ``answer`` is a 0-based index (an int or a string of digits) or a letter A-Z.
    """
    return _load(source, _mc, limit, hf_config, hf_split)


def load_probes(
    source: str | Path, *, limit: int | None = None, hf_config: str | None = None, hf_split: str = "train"
) -> list[Probe]:
    """RWKU probes with ``query`` and ``answer``; ``level`` comes from the record or a ``levelN`` file name."""
    return _load(source, _probe, limit, hf_config, hf_split)


def load_continuations(
    source: str | Path, *, limit: int | None = None, hf_config: str | None = None, hf_split: str = "train"
) -> list[Continuation]:
    """Prompt-continuation pairs from records with ``prompt`` and ``gt`` (or ``target``)."""
    return _load(source, _continuation, limit, hf_config, hf_split)


def load_texts(
    source: str | Path,
    *,
    field: str = "text",
    limit: int | None = None,
    hf_config: str | None = None,
    hf_split: str = "train",
) -> list[str]:
    """The non-empty string ``field`` of each record (e.g. MUSE privleak ``text``)."""
    return _load(source, lambda where, rec: _text(rec, field, where), limit, hf_config, hf_split)


def _load(
    source: str | Path,
    parse: Callable[[str, dict], T],
    limit: int | None,
    hf_config: str | None,
    hf_split: str,
) -> list[T]:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise UnlearnError(f"limit must be a whole number >= 0, got {limit!r}")
    items: list[T] = []
    if limit == 0:
        return items
    for where, rec in iter_records(str(source), hf_config=hf_config, hf_split=hf_split):
        items.append(parse(where, rec))
        if len(items) == limit:
            break
    if not items:
        raise UnlearnError(f"{source}: no records")
    return items


def _kind(value: Any) -> str:
    """A value's type in JSON terms, for messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, (list, tuple)):
        return "list"
    return "object" if isinstance(value, dict) else type(value).__name__


def _check_text(value: Any, name: str, where: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UnlearnError(f"{where}: {name} is empty")
    if not isinstance(value, str):
        raise UnlearnError(f"{where}: {name} must be a string, got {_kind(value)}")
    return value


def _text(rec: dict, key: str, where: str) -> str:
    """The required non-empty string ``rec[key]``."""
    if key not in rec:
        raise missing_field(where, key, rec)
    return _check_text(rec[key], f"field {key!r}", where)


def _optional_text(rec: dict, key: str, where: str) -> str | None:
    """``rec[key]`` if it is there and not empty, else None; a value that is not a string is an error."""
    value = rec.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _check_text(value, f"field {key!r}", where)


def _qa(where: str, rec: dict) -> QAItem:
    question, answer = _text(rec, "question", where), _text(rec, "answer", where)
    perturbed = rec.get("perturbed_answer")
    perturbed = [] if perturbed is None else [perturbed] if isinstance(perturbed, str) else perturbed
    if not isinstance(perturbed, list) or not all(isinstance(p, str) and p.strip() for p in perturbed):
        raise UnlearnError(f"{where}: field 'perturbed_answer' must be a string or a list of non-empty strings")
    return QAItem(
        question=question,
        answer=answer,
        paraphrased_answer=_optional_text(rec, "paraphrased_answer", where),
        perturbed_answers=tuple(perturbed),
        paraphrased_question=_optional_text(rec, "paraphrased_question", where),
        id=where,
    )


def _choices(rec: dict, where: str) -> tuple[str, ...]:
    if "choices" in rec:
        choices = rec["choices"]
        if not isinstance(choices, (list, tuple)) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise UnlearnError(f"{where}: field 'choices' must be a list of at least 2 strings")
        return tuple(_check_text(c, f"field 'choices' item {i}", where) for i, c in enumerate(choices))
    numbers = sorted(int(m[1]) for key in rec if isinstance(key, str) and (m := _CHOICE_COLUMN.fullmatch(key)))
    if not numbers:
        raise missing_field(where, "choices", rec, " (or choice0..choiceN)")
    if numbers != list(range(len(numbers))):
        gap = min(set(range(numbers[-1] + 1)) - set(numbers))
        raise UnlearnError(f"{where}: choice columns must run choice0..choiceN without gaps: choice{gap} is missing")
    if len(numbers) < 2:
        raise UnlearnError(f"{where}: needs at least 2 choices, got only choice0")
    return tuple(_cell(rec[f"choice{i}"], f"field 'choice{i}'", where) for i in numbers)


def _cell(value: Any, name: str, where: str) -> str:
    """A choice column's text: CSV cells are text already, typed tables (parquet, hf:) may hold MMLU's "4" as 4."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return _check_text(value, name, where)


def _answer_index(value: Any, n: int, where: str) -> int:
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < n:
            raise UnlearnError(f"{where}: answer index {value} out of range for {n} choices")
        return value
    letter = value.strip().upper() if isinstance(value, str) else ""
    if len(letter) == 1 and "A" <= letter <= "Z":
        if ord(letter) - ord("A") >= n:
            raise UnlearnError(f"{where}: answer {letter!r} out of range for {n} choices (A-{chr(ord('A') + n - 1)})")
        return ord(letter) - ord("A")
    shown = repr(value) if isinstance(value, str) else _kind(value)
    raise UnlearnError(f"{where}: field 'answer' must be a choice index (0, 1, ...) or letter (A, B, ...), got {shown}")


def _mc(where: str, rec: dict) -> MCItem:
    question = _text(rec, "question", where)
    choices = _choices(rec, where)
    if "answer" not in rec:
        raise missing_field(where, "answer", rec)
    return MCItem(question, choices, _answer_index(rec["answer"], len(choices), where), id=where)


def _probe(where: str, rec: dict) -> Probe:
    query, answer = _text(rec, "query", where), _text(rec, "answer", where)
    level = rec.get("level")
    if level is None:
        found = _LEVEL_IN_NAME.search(Path(where).name)
        if not found:
            raise UnlearnError(f"{where}: no field 'level' and no level1/level2/level3 in the file name")
        level = found[1]
    elif isinstance(level, int) and not isinstance(level, bool):
        level = str(level)
    if level not in ("1", "2", "3"):
        shown = repr(level) if isinstance(level, str) else _kind(level)
        raise UnlearnError(f"{where}: field 'level' must be 1, 2 or 3, got {shown}")
    kind = _text(rec, "type", where) if "type" in rec else ("cloze" if level == "1" else "question")
    return Probe(query, answer, level, kind, subject=_optional_text(rec, "subject", where) or "", id=where)


def _continuation(where: str, rec: dict) -> Continuation:
    prompt = _text(rec, "prompt", where)
    key = next((k for k in ("gt", "target") if k in rec), None)
    if key is None:
        raise missing_field(where, "gt", rec, " (or 'target')")
    return Continuation(prompt, _text(rec, key, where), id=where)
