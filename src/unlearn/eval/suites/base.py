"""The suite contract: a suite's config, its registration, the handle on the model it scores and the context it
runs in, and how its data files map to its parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field

from ...errors import UnlearnError
from ...registry import Registry
from ...validation import build
from ..scoring import Scorer, Template
from ..store import ResultStore, file_sha256, fingerprint


class SuiteConfig(BaseModel):
    """Settings every suite has."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    limit: int | None = Field(None, ge=1, description="evaluate only the first N records of each part")
    template: str = Field(
        "auto", description="question prompts: auto (chat template when the tokenizer has one), chat, plain"
    )


@dataclass
class Suite:
    name: str
    summary: str
    config_cls: type[SuiteConfig]
    parts: dict[str, str]  # part name -> file name (relative) inside a benchmark folder; "" = given explicitly
    run: Callable
    free_parts: bool = False  # any number of parts, named by file (mcq, lm, ...)
    uses: tuple[str, ...] = ()  # "reference" and/or "original": models some metrics need
    data_optional: bool = False  # runs without --data (lm-eval: the harness's own tasks)
    loaders: dict[str, Callable] = field(default_factory=dict)  # part (or "*") -> loader(path, config)

    def check_data(self, files: dict[str, str], config: SuiteConfig) -> None:
        """Read and validate every part's records (before any model is loaded: bad data fails fast)."""
        for part, path in files.items():
            loader = self.loaders.get(part) or self.loaders.get("*")
            if loader is not None:
                loader(path, config)

    def make_config(self, values: dict | None) -> SuiteConfig:
        return build(self.config_cls, values, f"{self.name} suite setting")


SUITES: Registry[Suite] = Registry("suite")


def register(suite: Suite) -> Suite:
    return SUITES.add(suite.name, suite)


def get_suite(name: str) -> Suite:
    """The registered suite ``name`` (``lm-eval:TASK,...`` names the lm-eval suite: see :func:`suite_and_settings`)."""
    return SUITES.lookup(name.partition(":")[0] if name.startswith("lm-eval:") else name)


def suite_and_settings(name: str, settings: dict | None) -> tuple[Suite, dict | None]:
    """The suite a ``--suite`` / ``evals`` name means, and its settings: ``lm-eval:a,b`` is the lm-eval suite with
    ``tasks: [a, b]``."""
    base, sep, tasks = name.partition(":")
    if sep and base == "lm-eval":
        return SUITES.lookup(base), {**(settings or {}), "tasks": tasks.split(",")}
    return SUITES.lookup(name), settings


class ModelHandle:
    """A model that some metrics need (reference or original), loaded on first use; or a saved results JSON."""

    def __init__(self, spec: str, role: str, loader: Callable[[str], object], batch_size: int, progress=None):
        self.spec, self.role = spec, role
        self._loader, self._batch_size, self._progress = loader, batch_size, progress
        self._scorer: Scorer | None = None
        self._sha: str | None = None
        self.saved: dict | None = None
        if spec.endswith(".json"):
            import json

            path = Path(spec)
            if not path.is_file():
                raise UnlearnError(f"{role} results file not found: {spec}")
            try:
                self.saved = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise UnlearnError(f"{role} results file {spec} is not valid JSON: {exc}") from exc
            if not isinstance(self.saved, dict) or "parts" not in self.saved:
                raise UnlearnError(f"{role} results file {spec} is not an eval/<suite>.json written by unlearn")

    @property
    def scorer(self) -> Scorer:
        if self.saved is not None:
            raise UnlearnError(f"this metric needs the {self.role} model itself, not its saved results {self.spec}")
        if self._scorer is None:
            loaded = self._loader(self.spec)
            self._scorer = Scorer(loaded.model, loaded.tokenizer, batch_size=self._batch_size, progress=self._progress)
        return self._scorer

    @property
    def sha(self) -> str:
        if self.saved is not None:
            return self.saved.get("model", {}).get("sha256", self.spec)
        if self._sha is None:
            from ...models.load import state_dict_hash

            self._sha = state_dict_hash(self.scorer.model)
        return self._sha

    def saved_samples(self, part: str, key: str) -> list | None:
        """Per-sample ``key`` of ``part`` from the saved results, or None when absent."""
        if self.saved is None:
            return None
        entry = self.saved["parts"].get(part)
        if not entry:
            raise UnlearnError(f"{self.role} results {self.spec} have no part {part!r}")
        return [s[key] for s in entry["samples"]]


@dataclass
class SuiteContext:
    suite: Suite
    config: SuiteConfig
    scorer: Scorer
    template: Template
    store: ResultStore
    files: dict[str, str]  # part -> file path (or corpus source for lm)
    model_sha: str
    reference: ModelHandle | None = None
    original: ModelHandle | None = None
    log: Callable[[str], None] = print
    computed: list[str] = field(default_factory=list)

    def data_key(self, part: str) -> str:
        return self.data_key_of(self.files[part])

    @staticmethod
    def data_key_of(src: str) -> str:
        """What identifies a data source's content: a file's sha256, else its name."""
        return file_sha256(src) if Path(src).is_file() else src

    def part(self, name: str, compute: Callable[[], dict], *, data: str | None = None, extra=()) -> dict:
        """The cached entry of part ``name`` (``{"summary": ..., "samples": [...]}``), computed when missing."""
        fp = fingerprint(
            self.model_sha,
            name,
            data if data is not None else self.data_key(name.split(":")[-1]),
            self.config.model_dump(),
            self.template.mode,
            extra,
        )
        hit = self.store.get(name, fp)
        if hit is not None:
            return hit
        entry = compute()
        self.computed.append(name)
        return self.store.put(name, fp, entry)

    def need(self, role: str) -> ModelHandle | None:
        return self.reference if role == "reference" else self.original


def resolve_parts(suite: Suite, data: list[str]) -> dict[str, str]:
    """Map ``--data`` entries to parts: ``PART=PATH``, a benchmark folder (its standard file names), or files."""
    files: dict[str, str] = {}
    for entry in data:
        name, sep, path = entry.partition("=")
        if sep and (name in suite.parts or suite.free_parts) and name and "/" not in name:
            _add(files, name, path, suite)
            continue
        p = Path(entry)
        if p.is_dir() and not suite.free_parts:
            found = {part: str(p / rel) for part, rel in suite.parts.items() if rel and (p / rel).is_file()}
            if not found:
                expected = ", ".join(rel for rel in suite.parts.values() if rel)
                raise UnlearnError(f"{entry} has none of the {suite.name} files ({expected})")
            for part, path in found.items():
                files.setdefault(part, path)
            continue
        if suite.free_parts:
            _add(files, _part_name(entry), entry, suite)
            continue
        match = [part for part, rel in suite.parts.items() if rel and Path(rel).name == p.name]
        if not match:
            match = [part for part in suite.parts if p.name.startswith(part)]
        if not match:
            raise UnlearnError(
                f"cannot tell which {suite.name} part {entry} is: write PART=PATH with PART one of "
                f"{', '.join(suite.parts)}"
            )
        _add(files, match[0], entry, suite)
    if not files and not suite.data_optional:
        raise UnlearnError(f"suite {suite.name} needs --data (a benchmark folder, files or PART=PATH)")
    return files


def _part_name(entry: str) -> str:
    p = Path(entry)
    return p.stem if p.suffix else entry


def _add(files: dict, part: str, path: str, suite: Suite) -> None:
    from ...data.sources import BUILTIN

    if part in files:
        raise UnlearnError(f"{suite.name} part {part!r} given twice")
    if not (path in BUILTIN or path.startswith("hf:") or Path(path).exists()):
        raise UnlearnError(f"data not found: {path}")
    files[part] = path


def ordered(parts: dict[str, str], suite: Suite) -> list[str]:
    known = [p for p in suite.parts if p in parts]
    return known + [p for p in parts if p not in known]


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(sum(values) / len(values)) if values else None
