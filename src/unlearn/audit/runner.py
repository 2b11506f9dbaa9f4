"""``unlearn audit``: attacks that try to bring forgotten material back, each scored as *recovery*.

For every attack the forget metric is reported on the original model (``before``), the unlearned model
(``after_unlearning``) and the unlearned model under attack (``after_attack``); ``recovery`` =
(after_attack − after_unlearning) / (before − after_unlearning), clipped to [0, 1]: 0 = the attack brings nothing
back, 1 = everything unlearning removed. The forget and retain rows are those the run evaluated (same data,
seq_len, eval_tokens and seed), so ``before`` and ``after_unlearning`` equal the run's own metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import DataConfig, RunConfig, load_config_file, parse_config
from ..errors import UnlearnError
from ..eval.store import write_json_atomic
from ..eval.metrics import evaluate_split
from ..progress import Reporter
from ..validation import build
from ..runs.folder import MANIFEST, is_run_folder
from .attacks import recovery
from . import registered  # noqa: F401  (register the attacks)
from .base import ATTACKS
from .probes import Probes, build_probes


class AuditConfig(BaseModel):
    """The audit's settings (``unlearn audit --set KEY=VALUE``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    metric: Literal["top1", "top10"] = Field("top1", description="forget metric that recovery is computed on")
    relearn_steps: int = Field(20, ge=1, le=10_000, description="relearning: optimizer steps")
    relearn_lr: float = Field(5e-5, gt=0, lt=1, description="relearning: learning rate (the learn step's default)")
    relearn_batch_size: int = Field(4, ge=1, description="relearning: rows per step")
    relearn_tokens: int = Field(
        4096, ge=1, description="relearning: tokens of forget (and control) data held out from the evaluation rows"
    )
    quant_bits: list[int] = Field(default_factory=lambda: [8, 4], description="quantisation: bit widths to try")
    quant_group_size: int = Field(0, ge=0, description="quantisation: inputs per scale (0 = one scale per channel)")
    shots: int | None = Field(
        None, ge=1, le=16, description="in-context: spare chunks (text, default 1) or QA records (default 3)"
    )
    topic: str | None = Field(None, description="what the forget data is, for the text prompt templates")
    # opt-in attacks (docs/audit.md): direction ablation, relearning against a reference, adversarial suffix, sweep
    ablate_layers: list[int] | None = Field(
        None, description="ablate: residual-stream sites to try (0 = embeddings, k = output of block k; all)"
    )
    ablate_at: Literal["layer", "all"] = Field(
        "layer", description="ablate: project the direction out at its own site only, or at every site"
    )
    reference: str | None = Field(
        None, description="relearn:oracle: a model (or run folder) that never saw the forget data"
    )
    oracle_checkpoints: int = Field(4, ge=1, le=100, description="relearn:oracle: evaluations along the relearning")
    suffix_len: int = Field(8, ge=1, le=64, description="suffix: adversarial tokens before the scored tokens")
    suffix_steps: int = Field(100, ge=1, le=5000, description="suffix: search steps")
    suffix_topk: int = Field(32, ge=1, le=4096, description="suffix: candidate tokens per position (gradient top-k)")
    suffix_candidates: int = Field(16, ge=1, le=512, description="suffix: candidate suffixes scored per step")
    suffix_probes: int = Field(4, ge=1, le=64, description="suffix: held-out forget rows the suffix is optimised on")
    suffix_target_tokens: int = Field(32, ge=1, description="suffix: scored tokens per row in the search's loss")
    sweep_steps: list[Annotated[int, Field(ge=1, le=10_000)]] = Field(
        default_factory=lambda: [10, 40], min_length=1, description="relearn-sweep: step counts"
    )
    sweep_lr: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=lambda: [5e-5, 2e-4], min_length=1, description="relearn-sweep: learning rates"
    )
    sweep_tokens: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, min_length=1, description="relearn-sweep: held-out forget tokens per point (default relearn_tokens)"
    )
    sweep_modes: list[Literal["full", "lora"]] = Field(
        default_factory=lambda: ["full", "lora"], min_length=1, description="relearn-sweep: full fine-tuning, LoRA"
    )
    sweep_lora: str = Field("r=8", description="relearn-sweep: the LoRA adapters ('r=8[,alpha=16,targets=a;b]')")

    @field_validator("quant_bits")
    @classmethod
    def _bits(cls, v):
        if not v or any(not 2 <= b <= 16 for b in v):
            raise ValueError("quant_bits must list widths between 2 and 16")
        return v

    @field_validator("ablate_layers")
    @classmethod
    def _sites(cls, v):
        if v is not None and (not v or min(v) < 0):
            raise ValueError("ablate_layers must list sites >= 0 (0 = embeddings)")
        return v

    @field_validator("sweep_lora")
    @classmethod
    def _lora(cls, v):
        from ..methods.training import lora_spec

        return lora_spec(v)

    @model_validator(mode="after")
    def _sweep_data(self):
        if self.sweep_tokens and max(self.sweep_tokens) > self.relearn_tokens:
            raise ValueError(
                "sweep_tokens cannot exceed relearn_tokens (the held-out forget data): raise relearn_tokens"
            )
        return self


def make_config(settings: dict | None) -> AuditConfig:
    return build(AuditConfig, settings, "audit setting")


def run_folder(model: str) -> Path | None:
    """The run folder ``model`` names (the folder itself or its ``model/``), if it is one."""
    p = Path(model)
    for d in (p, p.parent):
        if is_run_folder(d):
            if not (d / "model").is_dir():
                raise UnlearnError(f"run folder {d} has no saved model (it ran with --no-save-model)")
            return d
    return None


def audit(
    model: str,
    *,
    original: str | None = None,
    forget: str | DataConfig | None = None,
    retain: str | DataConfig | None = None,
    control: str | DataConfig | None = None,
    attacks: list[str] | None = None,
    settings: dict | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    seq_len: int | None = None,
    eval_tokens: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    dtype: str | None = None,
    device: str = "auto",
    console=None,
    verify: bool = True,
) -> dict:
    """Attack an unlearned ``model`` (a checkpoint, or a run folder) and score how much each attack recovers.

    With a run folder, ``original``, ``forget``, ``retain`` and the chunking settings default to the run's; the
    results go to ``RUN/audit.json`` (else ``OUT/audit.json``, default ``audits/<model>``). ``attacks``: any of
    :data:`ATTACKS` (default: all but the opt-in ones); ``settings``: :class:`AuditConfig` fields. A run
    folder's files are first checked against its manifest (:class:`UnlearnError` naming the first that differs)
    unless ``verify`` is False. Returns the audit record.
    """
    t0 = time.perf_counter()
    reporter = Reporter(console)
    cfg = make_config(settings)
    chosen = list(attacks or [name for name, a in ATTACKS.items() if a.default])
    for a in chosen:
        ATTACKS.lookup(a)
    if cfg.reference and "relearn:oracle" in chosen:  # named now, not after the attacks before it
        from ..models.load import check_model_spec

        check_model_spec(cfg.reference, "--reference")
    setup = _setup(
        model, original, forget, retain, control, out, overwrite, seq_len, eval_tokens, seed, batch_size, dtype
    )
    if verify and setup.run_dir is not None:
        from ..runs.ledger import require_intact

        require_intact(setup.run_dir)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    job = _load(setup, cfg, device, reporter)
    timings["load"] = time.perf_counter() - start
    start = time.perf_counter()
    job.baselines()
    timings["baseline"] = time.perf_counter() - start
    results = []
    for name in chosen:
        start = time.perf_counter()
        with reporter.stage(f"attack: {name}"):
            results += ATTACKS[name].run(job)
        timings[name] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - t0
    record = _record(job, chosen, results, timings)
    write_json_atomic(setup.path, record)
    run_dir = setup.run_dir
    if run_dir is not None and setup.path.parent == run_dir and (run_dir / "report.html").exists():
        from ..report.html import write_report

        try:  # the run's report gains its audit section
            write_report(run_dir)
        except Exception as exc:  # noqa: BLE001 - the audit is written; the report can be rebuilt
            reporter.warn(f"warning: report not updated ({exc}); rebuild it with `unlearn report {run_dir}`")
    return {**record, "path": str(setup.path)}


@dataclass
class _Setup:
    """What to audit, resolved from the arguments and (for a run folder) the run's own settings."""

    model: str
    original: str
    run_dir: Path | None
    run_cfg: RunConfig
    forget: DataConfig
    retain: DataConfig
    control: DataConfig
    seq_len: int
    eval_tokens: int
    seed: int
    batch_size: int
    saved_dtype: str
    dtype: str
    path: Path


def _setup(model, original, forget, retain, control, out, overwrite, seq_len, eval_tokens, seed, batch_size, dtype):
    """Every check that needs no model: the run folder, the data, the output file."""
    from ..pipeline.corpora import check_data_exists
    from ..pipeline.evaluate import slug

    run_dir = run_folder(model)
    run_cfg = _run_config(run_dir) if run_dir else RunConfig()
    if run_dir is not None:
        model = str(run_dir / "model")
    original = original or (run_cfg.model if run_dir else None)
    if not original:
        raise UnlearnError("the audit compares with the model before unlearning: pass --original")
    forget_cfg = _data(forget) or (run_cfg.forget if run_dir else None)
    retain_cfg = _data(retain) or (run_cfg.retain if run_dir else None)
    if forget_cfg is None or retain_cfg is None:
        raise UnlearnError("pass --forget and --retain (or audit a run folder, which records both)")
    control_cfg = _data(control) or retain_cfg
    for d in {id(x): x for x in (forget_cfg, retain_cfg, control_cfg)}.values():
        check_data_exists(d)
    # a run folder's model is loaded as the run saved and evaluated it (a trained or healed model is float32)
    saved_dtype = dtype or (_saved_dtype(run_dir) if run_dir else None) or run_cfg.dtype
    out_dir = Path(out) if out is not None else run_dir or Path("audits") / slug(model)
    path = out_dir / "audit.json"
    if out_dir.exists() and not out_dir.is_dir():
        raise UnlearnError(f"output folder {out_dir} is a file: choose another --out")
    if path.exists() and not overwrite:
        raise UnlearnError(f"{path} already exists: pass --overwrite to replace it")
    return _Setup(
        model=model,
        original=original,
        run_dir=run_dir,
        run_cfg=run_cfg,
        forget=forget_cfg,
        retain=retain_cfg,
        control=control_cfg,
        seq_len=seq_len or run_cfg.seq_len,
        eval_tokens=eval_tokens or run_cfg.eval_tokens,
        seed=run_cfg.seed if seed is None else seed,
        batch_size=batch_size or run_cfg.batch_size,
        saved_dtype=saved_dtype,
        dtype=dtype or run_cfg.dtype,
        path=path,
    )


@dataclass
class _Audit:
    """One audit's loaded models, probes and settings, and the helpers every attack scores with."""

    setup: _Setup
    cfg: AuditConfig
    unlearned: object  # LoadedModel
    orig: object  # LoadedModel
    adapter: object
    probes: dict
    reporter: Reporter
    base: dict = field(default_factory=dict)

    @property
    def fp(self) -> Probes:
        return self.probes["forget"]

    @property
    def metric(self) -> str:
        return self.cfg.metric

    def score(self, m, split, label: str) -> dict:
        with self.reporter.task(label[:28], split.n_tokens) as advance:
            return evaluate_split(
                m, split, batch_size=self.setup.batch_size, skip_k=self.setup.run_cfg.skip_k, progress=advance
            )

    def baselines(self) -> None:
        """Forget and retain metrics of the original and the unlearned model on the plain probes."""
        self.base = {
            name: {
                which: self.score(m.model, self.probes[which].plain, f"{name}: {which}")
                for which in ("forget", "retain")
            }
            for name, m in (("original", self.orig), ("unlearned", self.unlearned))
        }

    def entry(self, attack, variant, attacked: dict, *, retain: dict | None = None, original_attacked=None, **details):
        """One attack's result: the forget metric before, after unlearning and under attack, and its recovery."""
        metric, base = self.metric, self.base
        before, after = base["original"]["forget"][metric], base["unlearned"]["forget"][metric]
        retain_before, retain_after = base["original"]["retain"][metric], base["unlearned"]["retain"][metric]
        value = attacked[metric]
        return {
            "attack": attack,
            "variant": variant,
            "description": details.pop("description", ATTACKS[attack].description),
            "before": before,
            "after_unlearning": after,
            "after_attack": value,
            "recovery": recovery(before, after, value),
            "retain": None
            if retain is None
            else {"before": retain_before, "after_unlearning": retain_after, "after_attack": retain[metric]},
            "original_attacked": original_attacked,
            "details": {"metrics": attacked, **details},
        }


def _load(setup: _Setup, cfg: AuditConfig, device: str, reporter: Reporter) -> _Audit:
    """Load both models (same tokenizer required) and build the probes."""
    from ..eval.scoring import Template
    from ..models.adapters import adapter_for
    from ..models.load import check_model_spec, check_seq_len, load_model

    check_model_spec(setup.original, "--original")  # before loading the first model, not after
    with reporter.stage(f"loading model {setup.model}"):
        unlearned = load_model(setup.model, setup.saved_dtype, device, log=reporter.log)
    check_seq_len(unlearned, setup.seq_len)
    with reporter.stage(f"loading original {setup.original}"):
        orig = load_model(setup.original, setup.dtype, device, log=reporter.log)
    if len(unlearned.tokenizer) != len(orig.tokenizer):
        raise UnlearnError(
            f"{setup.model} and {setup.original} have different tokenizers: audit against the model it came from"
        )
    adapter = adapter_for(unlearned.model)
    template = Template(unlearned.tokenizer, "auto")
    chunking = dict(
        seq_len=setup.seq_len, eval_tokens=setup.eval_tokens, train_tokens=cfg.relearn_tokens, seed=setup.seed
    )
    probes = {
        which: build_probes(which, d, unlearned.tokenizer, template, topic=cfg.topic, **chunking)
        for which, d in (("forget", setup.forget), ("retain", setup.retain))
    }
    if setup.control is not setup.retain:
        probes["control"] = build_probes("control", setup.control, unlearned.tokenizer, template, **chunking)
    return _Audit(setup, cfg, unlearned, orig, adapter, probes, reporter)


def _record(job: _Audit, chosen: list[str], results: list[dict], timings: dict) -> dict:
    from ..models.load import state_dict_hash
    from ..runs.manifest import versions

    setup, probes = job.setup, job.probes
    scored = [r for r in results if r["recovery"] is not None]
    top = max(scored, key=lambda r: r["recovery"], default=None)
    return {
        "model": {"spec": setup.model, "source": job.unlearned.source, "sha256": state_dict_hash(job.unlearned.model)},
        "original": {"spec": setup.original, "source": job.orig.source, "sha256": state_dict_hash(job.orig.model)},
        "run_dir": str(setup.run_dir) if setup.run_dir else None,
        "forget": job.fp.describe(),
        "retain": probes["retain"].describe(),
        "control": probes["control"].describe() if "control" in probes else None,
        "metric": job.metric,
        "baseline": job.base,
        "attacks": results,
        "max_recovery": {"attack": f"{top['attack']}:{top['variant']}", "recovery": top["recovery"]} if top else None,
        "settings": {
            **job.cfg.model_dump(),
            "attacks": chosen,
            "seq_len": setup.seq_len,
            "eval_tokens": setup.eval_tokens,
            "seed": setup.seed,
            "batch_size": setup.batch_size,
            "dtype": job.unlearned.dtype,
        },
        "versions": versions(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


def _data(d) -> DataConfig | None:
    if d is None or isinstance(d, DataConfig):
        return d
    from ..pipeline.corpora import detect_format

    return DataConfig(source=str(d), format=detect_format(str(d)))


def _saved_dtype(run_dir: Path) -> str | None:
    """The dtype a run folder's manifest records for its saved model (None if it records none)."""
    import json

    try:
        return json.loads((run_dir / MANIFEST).read_text(encoding="utf-8"))["model"]["dtype"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _run_config(run_dir: Path) -> RunConfig:
    try:
        return parse_config(load_config_file(run_dir / "config.yaml"))
    except UnlearnError as exc:
        raise UnlearnError(f"cannot audit {run_dir}: its config.yaml is unusable ({exc})") from None
