"""The run configuration: one validated object that a YAML file, CLI flags or Python code fill in."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .data.sources import DataSpec
from .errors import UnlearnError


class DataConfig(BaseModel):
    """A corpus: a file, folder, glob, built-in name (python-stdlib, english-prose) or hf:NAME."""

    model_config = ConfigDict(extra="forbid")
    source: str
    fields: list[str] = Field(default_factory=lambda: ["text"], description="record fields joined as the text")
    format: Literal["text", "qa"] = Field(
        "text", description="text: chunks of running text; qa: question/answer records, loss and metrics on answers"
    )
    hf_config: str | None = None
    hf_split: str = "train"

    def spec(self) -> DataSpec:
        return DataSpec(self.source, tuple(self.fields), self.hf_config, self.hf_split)

    @field_validator("fields")
    @classmethod
    def _nonempty(cls, v):
        if not v or not all(isinstance(f, str) and f for f in v):
            raise ValueError("fields must be a non-empty list of field names")
        return v


class StopConfig(BaseModel):
    """Budgeted stopping: stop before retain drops too far, or once forget has dropped far enough."""

    model_config = ConfigDict(extra="forbid")
    metric: str = Field("top1", description="metric the budget watches (top1, top10, skip50_top1, ...)")
    max_retain_drop: float | None = Field(None, gt=0, lt=1, description="largest relative retain drop allowed")
    forget_target_drop: float | None = Field(None, gt=0, le=1, description="stop once forget dropped this much")
    max_retain_kl: float | None = Field(
        None, gt=0, description="largest mean KL(original ‖ model) of next-token distributions on retain allowed"
    )

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.max_retain_drop, self.forget_target_drop, self.max_retain_kl))


class EvalSpec(BaseModel):
    """An evaluation suite that a run applies to the model before and after unlearning."""

    model_config = ConfigDict(extra="forbid")
    suite: str = Field(description="tofu, muse, rwku, mcq, lm or mia (see unlearn suites)")
    data: list[str] = Field(description="benchmark folders, files or PART=PATH entries")
    settings: dict = Field(default_factory=dict, description="suite settings (see unlearn suites)")
    reference: str | None = Field(None, description="reference model or its eval/<suite>.json")

    @field_validator("data")
    @classmethod
    def _some_data(cls, v):
        if not v:
            raise ValueError("an evaluation suite needs at least one data entry")
        return v


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("smollm2-135m", description="alias, checkpoint directory, .gguf file or hub id")
    dtype: Literal["auto", "bf16", "fp32", "fp16"] = "auto"
    device: str = "auto"
    forget: DataConfig = Field(default_factory=lambda: DataConfig(source="python-stdlib"))
    retain: DataConfig = Field(default_factory=lambda: DataConfig(source="english-prose"))
    method: str = "selective-pruning"
    method_config: dict = Field(default_factory=dict, description="parameters of the method (see unlearn methods)")
    seq_len: int = Field(256, ge=8, le=32768, description="tokens per chunk")
    stats_tokens: int = Field(16384, ge=1, description="tokens per corpus for the method's statistics/training")
    eval_tokens: int = Field(8192, ge=1, description="tokens per corpus for evaluation (disjoint from stats)")
    val_tokens: int = Field(
        2048,
        ge=0,
        description="tokens per corpus held out for budgeted stopping (disjoint "
        "from evaluation and statistics; 0 = none)",
    )
    batch_size: int = Field(8, ge=1)
    skip_k: int = Field(50, ge=0, description="skip-k accuracy ignores the k most frequent tokens")
    stop: StopConfig = Field(default_factory=StopConfig)
    evals: list[EvalSpec] = Field(default_factory=list, description="suites evaluated before and after unlearning")
    seed: int = 0
    out_dir: str = "runs"
    name: str | None = Field(None, description="run folder name (default: timestamp-method)")
    save_model: bool = True
    report: bool = Field(True, description="write report.html and report.md into the run folder")
    from_run: str | None = Field(
        None,
        description="a previous run folder: unlearn its saved model further (a sequential request); its files "
        "are verified against its manifest first and never modified",
    )

    @model_validator(mode="after")
    def _budget_metric_known(self):
        known = ("top1", "top10", f"skip{self.skip_k}_top1", f"skip{self.skip_k}_top10")
        if self.stop.metric not in known:
            raise ValueError(f"unknown stop metric {self.stop.metric!r}: use one of {', '.join(known)}")
        return self

    @model_validator(mode="after")
    def _budget_needs_validation(self):
        if self.stop.active and not self.val_tokens:
            raise ValueError("a stopping budget or target is measured on validation chunks: set val_tokens > 0")
        return self

    @field_validator("from_run")
    @classmethod
    def _run_folder_given(cls, v):
        if v is not None and not v.strip():
            raise ValueError("from_run must be the path of a run folder")
        return v

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v):
        if v is not None and (not v or "/" in v or "\\" in v or v.startswith(".")):
            raise ValueError("name must be a plain folder name (no slashes, not starting with '.')")
        return v


def parse_config(values: dict) -> RunConfig:
    try:
        return RunConfig(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        raise UnlearnError(f"invalid config {where}: {err['msg']}") from exc


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UnlearnError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UnlearnError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UnlearnError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data
