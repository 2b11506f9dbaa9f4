"""The run configuration: one validated object that a YAML file, CLI flags or Python code fill in."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .data.sources import DataSpec
from .errors import UnlearnError
from .validation import build


# Accelerate's big-model placements that --device-map accepts
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


class DataConfig(BaseModel):
    """A corpus: a file, folder, glob, built-in name (python-stdlib, english-prose, general-english,
    general-english-heldout) or hf:NAME."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    source: str
    fields: list[str] = Field(default_factory=lambda: ["text"], description="record fields joined as the text")
    format: Literal["text", "qa"] = Field(
        "text", description="text: chunks of running text; qa: question/answer records, loss and metrics on answers"
    )
    hf_config: str | None = None
    hf_split: str = "train"
    eval_source: str | None = Field(
        None,
        description="held-out text to report metrics on (file, folder, glob or built-in; same fields): then "
        "source serves only the method's statistics/training and the validation chunks",
    )

    def spec(self) -> DataSpec:
        return DataSpec(self.source, tuple(self.fields), self.hf_config, self.hf_split)

    def eval_spec(self) -> DataSpec | None:
        return DataSpec(self.eval_source, tuple(self.fields)) if self.eval_source else None

    @model_validator(mode="after")
    def _eval_source_for_text(self):
        if self.eval_source is not None and self.format != "text":
            raise ValueError("eval_source is for text corpora (QA data is split by record)")
        return self

    @field_validator("fields")
    @classmethod
    def _nonempty(cls, v):
        if not v or not all(isinstance(f, str) and f for f in v):
            raise ValueError("fields must be a non-empty list of field names")
        return v


class StopConfig(BaseModel):
    """Budgeted stopping: stop before retain drops too far, or once forget has dropped far enough."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
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

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    suite: str = Field(description="tofu, muse, rwku, restor, mcq, lm, mia or lm-eval:TASK[,TASK] (see unlearn suites)")
    data: list[str] = Field(
        default_factory=list,
        validate_default=True,
        description="benchmark folders, files or PART=PATH entries (lm-eval: task folders)",
    )
    settings: dict = Field(default_factory=dict, description="suite settings (see unlearn suites)")
    reference: str | None = Field(None, description="reference model or its eval/<suite>.json")

    @field_validator("data")
    @classmethod
    def _some_data(cls, v, info):
        if not v and not str(info.data.get("suite", "")).startswith("lm-eval"):  # harness tasks bring their data
            raise ValueError("an evaluation suite needs at least one data entry")
        return v

    @field_validator("settings")
    @classmethod
    def _setting_names(cls, v):
        return _text_keys(v, "suite setting")


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field("smollm2-135m", description="alias, checkpoint directory, .gguf file or hub id")
    dtype: Literal["auto", "bf16", "fp32", "fp16"] = "auto"
    device: str = "auto"
    device_map: Literal[DEVICE_MAPS] | None = Field(
        None,
        description="spread a model bigger than one device over the GPUs, CPU and disk (selective pruning and "
        "evaluation; trained methods shard with FSDP / DeepSpeed through --launcher accelerate instead)",
    )
    forget: DataConfig = Field(default_factory=lambda: DataConfig(source="python-stdlib"))
    retain: DataConfig = Field(default_factory=lambda: DataConfig(source="general-english"))
    utility: DataConfig | None = Field(
        default_factory=lambda: DataConfig(source="general-english-heldout"),
        description="general text that no step of the method uses, evaluated before and after (eval_tokens): the "
        "run's utility row, an honest measure of the damage beyond the retain data (null = none)",
    )
    method: str = "selective-pruning"
    preset: str | None = Field(
        None, description="a named method configuration (see unlearn methods); explicit method_config entries win"
    )
    method_config: dict = Field(default_factory=dict, description="parameters of the method (see unlearn methods)")
    seq_len: int = Field(256, ge=8, le=32768, description="tokens per chunk")
    stats_tokens: int = Field(8192, ge=1, description="tokens per corpus for the method's statistics/training")
    eval_tokens: int = Field(2048, ge=1, description="tokens per corpus for evaluation (disjoint from stats)")
    val_tokens: int = Field(
        2048,
        ge=0,
        description="tokens per corpus held out for budgeted stopping (disjoint "
        "from evaluation and statistics; 0 = none)",
    )
    batch_size: int | Literal["auto"] = Field(
        8,
        description="chunks per forward pass for statistics and evaluation; auto: the largest power of two (up to "
        "64) whose estimated peak memory fits in the available memory",
    )

    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, v):
        if v != "auto" and v < 1:
            raise ValueError("batch_size must be at least 1 (or auto)")
        return v

    skip_k: int = Field(50, ge=0, description="skip-k accuracy ignores the k most frequent tokens")
    stop: StopConfig = Field(default_factory=StopConfig)
    evals: list[EvalSpec] = Field(default_factory=list, description="suites evaluated before and after unlearning")
    seed: int = Field(0, ge=-(2**63), lt=2**64, description="seed for the choice of chunks and for torch")
    checkpoint_every: int = Field(
        10,
        ge=0,
        description="trained methods: save a checkpoint every k optimizer steps for --resume (0 = never); "
        "selective pruning saves one after every step",
    )
    out_dir: str = "runs"
    name: str | None = Field(None, description="run folder name (default: timestamp-method)")
    save_model: bool = True
    report: bool = Field(True, description="write report.html and report.md into the run folder")
    from_run: str | None = Field(
        None,
        description="a previous run folder: unlearn its saved model further (a sequential request); its files "
        "are verified against its manifest first and never modified",
    )
    control: Literal["random"] | None = Field(
        None,
        description="selective pruning: also run the random control (the same settings, neurons chosen at random) "
        "into the sibling folder NAME-control-random; the run's report draws its trade-off curve beside the run's",
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

    @field_validator("utility")
    @classmethod
    def _utility_is_text(cls, v):
        if v is not None and (v.format != "text" or v.eval_source is not None):
            raise ValueError("utility is running text that is only evaluated: no format qa, no eval_source")
        return v

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

    @field_validator("method_config")
    @classmethod
    def _method_parameters(cls, v):
        for key, value in _text_keys(v, "method parameter").items():
            # nan passes every range check of the method's own config; +inf is left to it (guard's penalty: inf is
            # a setting, and every method config refuses inf where a number must be finite)
            if _not_finite(value) and not _plus_inf(value):
                raise ValueError(f"method parameter {key} must be a finite number, got {value!r}")
        return v


def _text_keys(values: dict, what: str) -> dict:
    """Settings passed on as keyword arguments (method parameters, suite settings) need text names."""
    names = [k for k in values if not isinstance(k, str)]
    if names:
        raise ValueError(f"{what} names must be text, got {names[0]!r}")
    return values


def _plus_inf(value) -> bool:
    """+inf as a float or as text ("inf", "+inf", "infinity")."""
    try:
        return float(value) == math.inf if isinstance(value, (float, str)) else False
    except ValueError:
        return False


def _not_finite(value) -> bool:
    """nan or ±inf: a float, or text that pydantic would read as one ("nan", "-inf", "1e999")."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        try:
            return not math.isfinite(float(value))
        except ValueError:
            return False
    return False


def parse_config(values: dict) -> RunConfig:
    """Validate settings; any problem raises :class:`UnlearnError` with one line naming the setting."""
    return build(RunConfig, values, "config")


MAPPINGS = ("forget", "retain", "utility", "stop", "method_config")  # config sections that hold settings of their own


def load_config_file(path: str | Path) -> dict:
    """The settings of a YAML file (a mapping); any problem with the file raises a one-line UnlearnError."""
    path = Path(path)
    if path.is_dir():
        raise UnlearnError(f"config file {path} is a folder: pass a YAML file")
    if not path.is_file():
        raise UnlearnError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UnlearnError(f"config file {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from exc
    except OSError as exc:
        raise UnlearnError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: a date such as 2024-13-01, !!int x
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnlearnError(f"config file {path} is not valid YAML: {first}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UnlearnError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    for key in MAPPINGS:
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise UnlearnError(f"invalid config {key}: must be a mapping of settings, not {type(data[key]).__name__}")
    if data.get("evals") is not None and not isinstance(data["evals"], list):
        raise UnlearnError(f"invalid config evals: must be a list of suites, not {type(data['evals']).__name__}")
    return data
