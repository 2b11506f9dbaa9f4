"""Reading run folders for the report, and the format-neutral document the HTML and Markdown writers render.

Every number a table shows is a :class:`Cell` that remembers where it came from: ``src`` holds JSON pointers
such as ``metrics.json#/after/forget/top1`` into the run folder's files, and ``op`` says how a derived value
(a difference, a relative change) was computed from them. The HTML writer puts both into ``data-*``
attributes, so a checker can recompute every rendered number from the JSON files
(``bench/report_screenshot.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UnlearnError
from ..runs.folder import MANIFEST

# derived values: the operands in ``src`` are (a, b), usually (after, before)
OPS = {
    "neg": lambda a: -a,
    "diff": lambda a, b: a - b,
    "relchange": lambda a, b: (a - b) / b,
    "drop": lambda a, b: (b - a) / b,
}


# ----------------------------------------------------------------------------------------------------------------
# reading


def read_json(path: Path, required: bool = True):
    """The JSON object in ``path``; None when it is absent and not ``required``. One-line errors name the file."""
    if not path.exists():
        if required:
            raise UnlearnError(f"{path}: missing (is {path.parent} a run folder?)")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UnlearnError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UnlearnError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise UnlearnError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise UnlearnError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


@dataclass
class Run:
    """One run folder: its JSON files (``metrics``, ``manifest``, optional ``audit``) and raw ``config.yaml``."""

    index: int
    path: Path
    metrics: dict
    manifest: dict
    audit: dict | None
    config_text: str | None
    config: dict
    problems: list[str] = field(default_factory=list)  # malformed values, shown when rendered without verifying
    pruned: dict | None = None  # pruned_neurons.json (with the tokens each pruned feed-forward neuron promotes)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def method(self) -> str:
        return text(self.manifest.get("method")) or text(self.config.get("method")) or "?"


def load_run(path: str | Path, index: int = 0) -> Run:
    """Read a finished run folder; :class:`UnlearnError` (one line naming the file) for anything unusable."""
    p = Path(path)
    if not p.exists():
        raise UnlearnError(f"run folder {p} not found")
    if not p.is_dir():
        raise UnlearnError(f"{p}: not a folder (expected a run folder with metrics.json and manifest.json)")
    metrics = read_json(p / "metrics.json")
    manifest = read_json(p / MANIFEST)
    audit = read_json(p / "audit.json", required=False)
    pruned = read_json(p / "pruned_neurons.json", required=False)
    config_text, config = None, {}
    cfg = p / "config.yaml"
    if cfg.is_file():
        try:
            config_text = cfg.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UnlearnError(f"{cfg}: cannot read: {getattr(exc, 'strerror', None) or exc}") from exc
        import yaml

        try:
            loaded = yaml.safe_load(config_text)
        except yaml.YAMLError:
            loaded = None  # shown as text anyway; only the budget settings are read from it
        config = loaded if isinstance(loaded, dict) else {}
    return Run(index, p, metrics, manifest, audit, config_text, config, pruned=pruned)


# ----------------------------------------------------------------------------------------------------------------
# tolerant access


def get(obj, *keys):
    """``obj[k1][k2]...`` or None when any level is missing or of the wrong type (keys may be list indices)."""
    for k in keys:
        if isinstance(obj, dict) and isinstance(k, str):
            obj = obj.get(k)
        elif isinstance(obj, list) and isinstance(k, int) and -len(obj) <= k < len(obj):
            obj = obj[k]
        else:
            return None
    return obj


def num(x) -> int | float | None:
    """``x`` when it is a JSON number (not a bool), else None."""
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def text(x) -> str | None:
    """A string to show for a scalar JSON value, None for missing / containers."""
    if x is None or isinstance(x, (dict, list)):
        return None
    return str(x)


def pointer(file: str, *keys) -> str:
    """A JSON pointer (RFC 6901) into ``file``: ``metrics.json#/after/forget/top1``."""
    parts = [str(k).replace("~", "~0").replace("/", "~1") for k in keys]
    return f"{file}#/" + "/".join(parts)


def resolve(files: dict[str, dict], ref: str):
    """Follow a :func:`pointer` in ``files`` ({file name: parsed JSON}); KeyError when it does not resolve."""
    file, _, path = ref.partition("#")
    obj = files[file]
    for raw in path.split("/")[1:] if path else []:
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(obj, list):
            obj = obj[int(key)]
        elif isinstance(obj, dict):
            obj = obj[key]
        else:
            raise KeyError(ref)
    return obj


def flatten(d, prefix: tuple = ()) -> list[tuple[tuple, object]]:
    """Nested dicts (and lists) → [(key path, leaf value)]."""
    out = []
    if isinstance(d, dict):
        for k, v in d.items():
            out += flatten(v, (*prefix, k))
    elif isinstance(d, list) and d and all(isinstance(v, (dict, list)) or num(v) is not None for v in d):
        for i, v in enumerate(d):
            out += flatten(v, (*prefix, i))
    else:
        out.append((prefix, d))
    return out


# ----------------------------------------------------------------------------------------------------------------
# formatting


def fmt_metric(x) -> str:
    """4 decimals; integers with thousands separators; tiny or huge floats in scientific notation."""
    if x is None:
        return "–"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if math.isnan(x) or math.isinf(x):
        return str(x)
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e7):
        return f"{x:.3e}"
    return f"{x:.4f}"


def fmt_pct(x, signed: bool = False) -> str:
    """A fraction as a percentage with one decimal (``signed``: always with + or -)."""
    if x is None:
        return "–"
    if math.isnan(x) or math.isinf(x):
        return str(x)
    x = x * 100 + 0.0  # no "-0.0%"
    if abs(x) < 0.05:
        x = 0.0
    return f"{x:+.1f}%" if signed else f"{x:.1f}%"


def fmt_seconds(x) -> str:
    return "–" if x is None else f"{x:,.1f} s" if x >= 10 else f"{x:.3f} s"


# ----------------------------------------------------------------------------------------------------------------
# the document


@dataclass
class Cell:
    """One table cell. ``value`` (a number) + ``src`` (pointers) + ``op`` make it checkable against the JSON."""

    text: str
    value: int | float | None = None
    src: tuple[str, ...] = ()
    op: str | None = None
    run: int | None = None
    cls: str = ""
    code: bool = False


@dataclass
class Table:
    columns: list[str]
    rows: list[tuple[str, list[Cell]]] = field(default_factory=list)  # (data-key, cells)
    caption: str = ""
    name: str = ""  # data-table attribute

    def add(self, key: str, cells: list[Cell]) -> None:
        self.rows.append((key, cells))


@dataclass
class Plot:
    svg: str
    caption: str


@dataclass
class Para:
    text: str
    cls: str = ""


@dataclass
class DefList:
    items: list[tuple[str, Cell]]


@dataclass
class Details:
    """A collapsed block: preformatted ``pre`` text (e.g. config.yaml) and/or other blocks."""

    summary: str
    pre: str | None = None
    blocks: list = field(default_factory=list)


@dataclass
class Section:
    title: str
    id: str
    blocks: list = field(default_factory=list)
    level: int = 3


@dataclass
class RunPart:
    """All sections of one run."""

    run: Run
    sections: list[Section]
    summary: list[tuple[str, Cell]]  # header facts


@dataclass
class Document:
    title: str
    runs: list[Run]
    comparison: list[Section]
    parts: list[RunPart]
    generated: str


def value_cell(run: Run, file: str, *keys, pct: bool = False, signed: bool = False, cls: str = "") -> Cell:
    """A cell showing the number at ``file#/keys`` of ``run`` ("–" when it is missing)."""
    files = {"metrics.json": run.metrics, MANIFEST: run.manifest, "audit.json": run.audit}
    v = num(get(files.get(file), *keys))
    if v is None:
        raw = get(files.get(file), *keys)
        return Cell("–" if raw is None else str(raw), run=run.index, cls="num")
    shown = fmt_pct(v, signed) if pct else fmt_metric(v)
    return Cell(shown, v, (pointer(file, *keys),), run=run.index, cls=cls)


def derived_cell(run: Run, op: str, a: tuple, b: tuple | None = None, pct: bool = False, signed: bool = False) -> Cell:
    """A cell computed by ``OPS[op]`` from the numbers at pointers ``a`` (and ``b``): (file, *keys) tuples."""
    files = {"metrics.json": run.metrics, MANIFEST: run.manifest, "audit.json": run.audit}
    operands = [a] if b is None else [a, b]
    values = [num(get(files.get(o[0]), *o[1:])) for o in operands]
    if any(v is None for v in values):
        return Cell("–", run=run.index, cls="num")
    try:
        v = OPS[op](*values)
    except ZeroDivisionError:
        return Cell("–", run=run.index, cls="num")
    shown = fmt_pct(v, signed) if pct else (f"{v:+.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:+.3e}")
    return Cell(shown, v, tuple(pointer(*o) for o in operands), op, run.index)


def control_run(run: Run) -> Run | None:
    """The run's random control (its sibling folder, ``control: random``), if it is there and readable."""
    name = text(get(run.metrics, "control", "random"))
    if not name or "/" in name or "\\" in name:
        return None
    try:
        return load_run(run.path.parent / name)
    except UnlearnError:
        return None
