"""Where text comes from: files, folders, globs, structured records, built-in corpora and HF datasets.

Every source yields ``(doc_id, text)`` documents lazily, in a fixed order, so a token budget only reads as much
as it needs. Built-in sources use material that is on every machine with Python:

* ``python-stdlib``: the ``.py`` files of the running Python's standard library (tests and site-packages
  excluded) — source code, the default *forget* corpus.
* ``english-prose``: the reference prose of ``pydoc_data/topics.py`` (the text ``help("if")`` shows) with its
  code blocks, grammar rules and headings removed: one narrow register of English (technical reference);
* ``general-english``: everyday English on 87 subjects in eight forms (encyclopedia entries, news reports,
  stories, letters, dialogues, poems, explanations, descriptions), written by SmolLM2-135M-Instruct and shipped
  with this package (``general_english.jsonl.gz``, made by ``scripts/make_general_english.py``) — the default
  *retain* corpus;
* ``general-english-heldout``: the same kind of text on 21 other subjects, which no method sees — the default
  *utility* corpus (general English that no step of a run used).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnlearnError

BUILTIN = ("python-stdlib", "english-prose", "general-english", "general-english-heldout")
GENERAL_ENGLISH = Path(__file__).with_name("general_english.jsonl.gz")
STRUCTURED = (".jsonl", ".json", ".csv", ".parquet")
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "__pycache__", "idle_test", "pydoc_data"}


@dataclass(frozen=True)
class DataSpec:
    """A corpus: ``source`` is a path, glob, built-in name or ``hf:NAME``; ``fields`` picks text from records."""

    source: str
    fields: tuple[str, ...] = ("text",)
    hf_config: str | None = None
    hf_split: str = "train"

    def describe(self) -> str:
        return self.source if self.fields == ("text",) else f"{self.source} [{','.join(self.fields)}]"


def iter_documents(spec: DataSpec) -> Iterator[tuple[str, str]]:
    """Yield ``(doc_id, text)`` for a data spec; raises :class:`UnlearnError` for anything unreadable."""
    src = spec.source
    if src == "python-stdlib":
        yield from _stdlib_code()
    elif src == "english-prose":
        yield from _pydoc_prose()
    elif src in ("general-english", "general-english-heldout"):
        yield from _general_english("heldout" if src.endswith("heldout") else "train")
    elif src.startswith("hf:"):
        for where, rec in _hf_records(src[3:], spec.hf_config, spec.hf_split):
            yield where, _record_text(rec, spec.fields, where)
    else:
        paths = _expand(src)
        named = len(paths) == 1 and not any(ch in src for ch in "*?[") and not Path(src).expanduser().is_dir()
        for path in paths:
            yield from _read_path(path, spec.fields, skip_binary=not named)


def _expand(src: str) -> list[Path]:
    path = Path(src).expanduser()
    if any(ch in src for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(src), recursive=True) if Path(p).is_file())
        if not files:
            raise UnlearnError(f"no files match {src}")
        return files
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise UnlearnError(f"data folder {src} has no files")
        return files
    if path.is_file():
        return [path]
    if path.exists():  # a device, a pipe, a socket: reading one may never end
        raise UnlearnError(f"{src} is not a regular file (a device, pipe or socket): give a file, folder or glob")
    raise UnlearnError(f"data not found: {src} (use a file, folder, glob, {', '.join(BUILTIN)} or hf:NAME)")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc.start) from exc
    except OSError as exc:
        raise UnlearnError(f"cannot read {path}: {exc.strerror}") from exc


def _not_utf8(path: Path, byte: int, hint: str = "") -> UnlearnError:
    return UnlearnError(f"{path} is not UTF-8 text (byte {byte}{hint}): convert it first")


def iter_records(source: str, *, hf_config: str | None = None, hf_split: str = "train") -> Iterator[tuple[str, dict]]:
    """Yield ``(where, record)`` for a structured file (.jsonl/.json/.csv/.parquet), a folder/glob of them, or hf:NAME.

    ``where`` is ``path:line`` (JSONL, CSV), ``path[i]`` (JSON, Parquet) or ``hf:NAME[i]``. Records come lazily and in
    file order; a file that is not structured, a record that is not an object or a file that cannot be parsed raises
    :class:`UnlearnError` naming the place.
    """
    if source.startswith("hf:"):
        records = _hf_records(source[3:], hf_config, hf_split)
    else:
        paths = _expand(source)
        for path in paths:
            if path.suffix.lower() not in STRUCTURED:
                raise UnlearnError(f"{path} is not a structured data file ({', '.join(STRUCTURED)})")
        records = (item for path in paths for item in _structured_records(path))
    for where, rec in records:
        if not isinstance(rec, dict):
            raise UnlearnError(f"{where}: expected an object with named fields, got {type(rec).__name__}")
        yield where, rec


def missing_field(where: str, field: str, rec: dict, alternative: str = "") -> UnlearnError:
    """The error for a record without ``field``: names the place, the field and the fields the record has."""
    has = ", ".join(str(k) for k in rec if k is not None) or "none"
    return UnlearnError(f"{where}: missing field {field!r}{alternative} (has {has})")


def _record_text(rec, fields, where: str) -> str:
    if not isinstance(rec, dict):
        raise UnlearnError(f"{where}: expected an object with field {fields[0]!r}, got {type(rec).__name__}")
    parts = []
    for field in fields:
        if field not in rec:
            raise missing_field(where, field, rec)
        value = rec[field]
        if not isinstance(value, str):
            kind = "null" if value is None else type(value).__name__
            raise UnlearnError(
                f"{where}: field {field!r} is {kind}, not text: every record's text fields must be strings "
                "(fix the record, or name another field with --forget-field/--retain-field)"
            )
        parts.append(value)
    return "\n".join(parts)


def _structured_records(path: Path) -> Iterator[tuple[str, object]]:
    """``(where, record)`` for each record of a .jsonl/.json/.csv/.parquet file, in file order."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        # split at \n only: str.splitlines() also splits at U+2028, \x0c, ... which JSON strings may hold raw
        for i, line in enumerate(_read_text(path).split("\n"), 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UnlearnError(f"{path}:{i}: invalid JSON ({exc.msg})") from exc
                yield f"{path}:{i}", rec
    elif suffix == ".json":
        try:
            data = json.loads(_read_text(path))
        except json.JSONDecodeError as exc:
            raise UnlearnError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
        for i, rec in enumerate(data if isinstance(data, list) else [data]):
            yield f"{path}[{i}]", rec
    elif suffix == ".csv":
        # a file object, not splitlines(): quoted fields may span lines (and hold \x0c, U+2028, ...)
        reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
        _ = reader.fieldnames  # reads the header, which may span lines too
        end = reader.line_num
        for rec in reader:
            yield f"{path}:{end + 1}", rec  # the record's first line
            end = reader.line_num
    else:  # .parquet
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise UnlearnError("reading parquet needs pyarrow: pip install pyarrow") from exc
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # noqa: BLE001 - pyarrow raises its own hierarchy
            raise UnlearnError(f"{path}: not a readable parquet file ({exc})".splitlines()[0]) from exc
        for i, rec in enumerate(rows):
            yield f"{path}[{i}]", rec


def _read_path(path: Path, fields: tuple[str, ...], skip_binary: bool = True) -> Iterator[tuple[str, str]]:
    """The text of a file; a binary one (NUL bytes near the start) is skipped inside a folder or glob, and
    refused when the user named it."""
    if path.suffix.lower() in STRUCTURED:
        for where, rec in _structured_records(path):
            yield where, _record_text(rec, fields, where)
        return
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UnlearnError(f"cannot read {path}: {exc.strerror}") from exc
    nul = raw.find(b"\0", 0, 4096)
    if nul >= 0:
        if skip_binary:
            return  # binary file inside a folder: not text, skip it
        raise _not_utf8(path, nul, " is NUL: a binary or UTF-16 file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc.start) from exc
    yield str(path), text


def _hf_records(name: str, config: str | None, split: str) -> Iterator[tuple[str, dict]]:
    try:
        import datasets
    except ImportError as exc:
        raise UnlearnError("hf: sources need the datasets package: pip install datasets") from exc
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # noqa: BLE001 - hub, network and format errors all end here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnlearnError(f"could not load dataset {name!r}: {first}") from exc
    for i, rec in enumerate(ds):
        yield f"hf:{name}[{i}]", rec


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """Standard-library ``.py`` files in a fixed order (tests, site-packages and pydoc_data excluded)."""
    root = stdlib_dir()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("test"))
        files += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py") and not f.startswith("test_")]
    return sorted(files)


def _stdlib_code() -> Iterator[tuple[str, str]]:
    root = stdlib_dir()
    for path in stdlib_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            yield f"stdlib:{path.relative_to(root)}", text


_HEADING_UNDERLINE = re.compile(r"^[*=\-~^\"]{3,}\s*$")


def prose_only(text: str) -> str:
    """Drop reST code blocks (indented lines), grammar rules, doctest blocks, tables and heading underlines."""
    paragraphs, current = [], []
    doctest = False  # inside an unindented ">>>" block: skip it up to the next blank line
    for line in text.splitlines():
        if not line.strip():
            doctest = False
        elif line.startswith(">>>"):
            doctest = True
        if (
            doctest
            or not line.strip()
            or line.startswith((" ", "\t", "+-", "+=", "|"))
            or _HEADING_UNDERLINE.match(line)
        ):
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        current.append(line.strip())
    if current:
        paragraphs.append(" ".join(current))
    # keep real sentences: several words, not a heading or a lone label
    kept = [p for p in paragraphs if len(p.split()) >= 8 and not p.rstrip().endswith("::")]
    return "\n\n".join(kept)


def _pydoc_prose() -> Iterator[tuple[str, str]]:
    path = stdlib_dir() / "pydoc_data" / "topics.py"
    if not path.is_file():
        raise UnlearnError(f"built-in source english-prose needs {path}, which this Python lacks")
    namespace: dict = {}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)  # a plain dict literal
    for key in sorted(namespace["topics"]):
        text = prose_only(namespace["topics"][key])
        if text:
            yield f"pydoc:{key}", text


def _general_english(part: str) -> Iterator[tuple[str, str]]:
    """The texts of one half (``train`` or ``heldout``) of the shipped general-English corpus, in file order."""
    import gzip

    if not GENERAL_ENGLISH.is_file():
        raise UnlearnError(f"built-in general-English corpus missing: {GENERAL_ENGLISH} (reinstall unlearn-lm)")
    with gzip.open(GENERAL_ENGLISH, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            rec = json.loads(line)
            if rec["part"] == part:
                yield f"general-english:{i}", rec["text"]
