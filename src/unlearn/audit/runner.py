"""``unlearn audit``: attacks that try to bring forgotten material back, each scored as *recovery*.

For every attack the forget metric is reported on the original model (``before``), the unlearned model
(``after_unlearning``) and the unlearned model under attack (``after_attack``); ``recovery`` =
(after_attack − after_unlearning) / (before − after_unlearning), clipped to [0, 1]: 0 = the attack brings nothing
back, 1 = everything unlearning removed. The forget and retain rows are those the run evaluated (same data,
seq_len, eval_tokens and seed), so ``before`` and ``after_unlearning`` equal the run's own metrics.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..config import DataConfig, RunConfig, load_config_file, parse_config
from ..errors import UnlearnError
from ..eval.metrics import evaluate_split
from ..progress import Reporter
from ..registry import Registry
from ..validation import build
from ..runs.folder import MANIFEST, is_run_folder
from .attacks import logit_lens, quantize_model, recovery, relearn
from .probes import Probes, build_probes

ATTACKS: Registry[str] = Registry("attack")  # name: what the attack does
ATTACKS.add("relearn", "fine-tune on a held-out slice of the forget data (and on the retain data as a control)")
ATTACKS.add("quantize", "round-trip the linear layers' weights through int8 / 4-bit integers (per channel, symmetric)")
ATTACKS.add("logit-lens", "read the forget tokens off every layer's hidden state (final norm + unembedding)")
ATTACKS.add("prompt", "paraphrased questions, step-by-step, role-play, prefix-injection and affirmative-suffix prompts")
ATTACKS.add("in-context", "place forget material (spare chunks, or neighbouring QA records) before each probe")


class AuditConfig(BaseModel):
    """The audit's settings (``unlearn audit --set KEY=VALUE``)."""

    model_config = ConfigDict(extra="forbid")
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

    @field_validator("quant_bits")
    @classmethod
    def _bits(cls, v):
        if not v or any(not 2 <= b <= 16 for b in v):
            raise ValueError("quant_bits must list widths between 2 and 16")
        return v


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
) -> dict:
    """Attack an unlearned ``model`` (a checkpoint, or a run folder) and score how much each attack recovers.

    With a run folder, ``original``, ``forget``, ``retain`` and the chunking settings default to the run's; the
    results go to ``RUN/audit.json`` (else ``OUT/audit.json``, default ``audits/<model>``). ``attacks``: any of
    :data:`ATTACKS` (default all); ``settings``: :class:`AuditConfig` fields. Returns the audit record.
    """
    from ..pipeline.corpora import check_data_exists
    from ..pipeline.evaluate import slug
    from ..runs.manifest import versions
    from ..eval.scoring import Template
    from ..eval.store import write_json_atomic
    from ..models.adapters import adapter_for
    from ..models.load import load_model, state_dict_hash

    t0 = time.perf_counter()
    reporter = Reporter(console)
    cfg = make_config(settings)
    chosen = list(attacks or ATTACKS)
    for a in chosen:
        ATTACKS.lookup(a)
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
    seq_len = seq_len or run_cfg.seq_len
    eval_tokens = eval_tokens or run_cfg.eval_tokens
    seed = run_cfg.seed if seed is None else seed
    batch_size = batch_size or run_cfg.batch_size
    # a run folder's model is loaded as the run saved and evaluated it (a trained or healed model is float32)
    saved_dtype = dtype or (_saved_dtype(run_dir) if run_dir else None) or run_cfg.dtype
    dtype = dtype or run_cfg.dtype
    out_dir = Path(out) if out is not None else run_dir or Path("audits") / slug(model)
    path = out_dir / "audit.json"
    if out_dir.exists() and not out_dir.is_dir():
        raise UnlearnError(f"output folder {out_dir} is a file: choose another --out")
    if path.exists() and not overwrite:
        raise UnlearnError(f"{path} already exists: pass --overwrite to replace it")

    timings: dict[str, float] = {}
    start = time.perf_counter()
    with reporter.stage(f"loading model {model}"):
        unlearned = load_model(model, saved_dtype, device, log=reporter.log)
    with reporter.stage(f"loading original {original}"):
        orig = load_model(original, dtype, device, log=reporter.log)
    if len(unlearned.tokenizer) != len(orig.tokenizer):
        raise UnlearnError(f"{model} and {original} have different tokenizers: audit against the model it came from")
    adapter = adapter_for(unlearned.model)
    timings["load"] = time.perf_counter() - start

    template = Template(unlearned.tokenizer, "auto")
    chunking = dict(seq_len=seq_len, eval_tokens=eval_tokens, train_tokens=cfg.relearn_tokens, seed=seed)
    probes = {
        which: build_probes(which, d, unlearned.tokenizer, template, topic=cfg.topic, **chunking)
        for which, d in (("forget", forget_cfg), ("retain", retain_cfg))
    }
    if control_cfg is not retain_cfg:
        probes["control"] = build_probes("control", control_cfg, unlearned.tokenizer, template, **chunking)
    fp = probes["forget"]

    def score(m, split, label: str) -> dict:
        with reporter.task(label[:28], split.n_tokens) as advance:
            return evaluate_split(m, split, batch_size=batch_size, skip_k=run_cfg.skip_k, progress=advance)

    start = time.perf_counter()
    base = {
        name: {which: score(m.model, probes[which].plain, f"{name}: {which}") for which in ("forget", "retain")}
        for name, m in (("original", orig), ("unlearned", unlearned))
    }
    timings["baseline"] = time.perf_counter() - start
    metric = cfg.metric
    before, after = base["original"]["forget"][metric], base["unlearned"]["forget"][metric]
    retain_before, retain_after = base["original"]["retain"][metric], base["unlearned"]["retain"][metric]

    def entry(attack, variant, attacked: dict, *, retain: dict | None = None, original_attacked=None, **details):
        value = attacked[metric]
        return {
            "attack": attack,
            "variant": variant,
            "description": details.pop("description", ATTACKS[attack]),
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

    results = []
    for name in chosen:
        start = time.perf_counter()
        with reporter.stage(f"attack: {name}"):
            if name == "relearn":
                results += _relearn(cfg, probes, unlearned.model, score, entry, seed, reporter)
            elif name == "quantize":
                for bits in cfg.quant_bits:
                    q = copy.deepcopy(unlearned.model)
                    layers = quantize_model(q, bits, cfg.quant_group_size)
                    grouping = f"groups of {cfg.quant_group_size}" if cfg.quant_group_size else "per channel"
                    attacked = {w: score(q, probes[w].plain, f"int{bits}: {w}") for w in ("forget", "retain")}
                    del q
                    qo = copy.deepcopy(orig.model)
                    quantize_model(qo, bits, cfg.quant_group_size)
                    orig_q = score(qo, fp.plain, f"int{bits} original: forget")[metric]
                    del qo
                    results.append(
                        entry(
                            "quantize",
                            f"int{bits}",
                            attacked["forget"],
                            retain=attacked["retain"],
                            original_attacked=orig_q,
                            description=f"weights of {layers} linear layers round-tripped through {bits}-bit "
                            f"integers ({grouping})",
                        )
                    )
            elif name == "logit-lens":
                results.append(_lens(fp, unlearned.model, orig.model, adapter, batch_size, metric, reporter, entry))
            elif name == "prompt":
                for variant in fp.prompt_names():
                    split = fp.prompted(variant)
                    results.append(
                        entry(
                            "prompt",
                            variant,
                            score(unlearned.model, split, f"prompt {variant}"),
                            original_attacked=score(orig.model, split, f"original {variant}")[metric],
                            description=_prompt_description(fp, variant),
                        )
                    )
            elif name == "in-context":
                shots = cfg.shots or (1 if fp.kind == "text" else 3)
                split = fp.in_context(shots)
                what = f"{shots} spare forget chunk(s)" if fp.kind == "text" else f"the {shots} nearest forget records"
                results.append(
                    entry(
                        "in-context",
                        f"{shots}-shot",
                        score(unlearned.model, split, "in-context"),
                        original_attacked=score(orig.model, split, "original in-context")[metric],
                        description=f"{what} placed before each probe",
                        shots=shots,
                    )
                )
        timings[name] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - t0
    scored = [r for r in results if r["recovery"] is not None]
    top = max(scored, key=lambda r: r["recovery"], default=None)
    record = {
        "model": {"spec": model, "source": unlearned.source, "sha256": state_dict_hash(unlearned.model)},
        "original": {"spec": original, "source": orig.source, "sha256": state_dict_hash(orig.model)},
        "run_dir": str(run_dir) if run_dir else None,
        "forget": fp.describe(),
        "retain": probes["retain"].describe(),
        "control": probes["control"].describe() if "control" in probes else None,
        "metric": metric,
        "baseline": base,
        "attacks": results,
        "max_recovery": {"attack": f"{top['attack']}:{top['variant']}", "recovery": top["recovery"]} if top else None,
        "settings": {
            **cfg.model_dump(),
            "attacks": chosen,
            "seq_len": seq_len,
            "eval_tokens": eval_tokens,
            "seed": seed,
            "batch_size": batch_size,
            "dtype": unlearned.dtype,
        },
        "versions": versions(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    write_json_atomic(path, record)
    if run_dir is not None and path.parent == run_dir and (run_dir / "report.html").exists():
        from ..report.html import write_report

        try:  # the run's report gains its audit section
            write_report(run_dir)
        except Exception as exc:  # noqa: BLE001 - the audit is written; the report can be rebuilt
            reporter.log(f"warning: report not updated ({exc}); rebuild it with `unlearn report {run_dir}`")
    return {**record, "path": str(path)}


def _relearn(cfg, probes, model, score, entry, seed, reporter) -> list[dict]:
    out = []
    sets = [("forget", probes["forget"]), ("control", probes.get("control", probes["retain"]))]
    for variant, p in sets:
        if len(p.train.input_ids) == 0:
            raise UnlearnError(
                f"relearning needs {p.which} data outside the evaluation rows, and {p.data.source} has none left: "
                "lower --eval-tokens"
            )
        tuned, log = relearn(
            model,
            p.train,
            steps=cfg.relearn_steps,
            lr=cfg.relearn_lr,
            batch_size=cfg.relearn_batch_size,
            seed=seed,
            reporter=reporter,
        )
        attacked = {w: score(tuned, probes[w].plain, f"relearn {variant}: {w}") for w in ("forget", "retain")}
        del tuned
        out.append(
            entry(
                "relearn",
                variant,
                attacked["forget"],
                retain=attacked["retain"],
                description=f"{cfg.relearn_steps} steps at lr {cfg.relearn_lr:g} on {p.train.n_tokens} tokens of "
                f"{'held-out forget' if variant == 'forget' else 'unrelated (control)'} data ({p.data.source})",
                loss=[round(r["loss"], 4) for r in log],
            )
        )
    return out


def _lens(fp: Probes, model, original, adapter, batch_size, metric, reporter, entry) -> dict:
    per = {}
    for name, m in (("unlearned", model), ("original", original)):
        with reporter.task(f"logit lens: {name}", fp.plain.n_tokens) as advance:
            per[name] = logit_lens(m, adapter, fp.plain, batch_size=batch_size, progress=advance)
    values = [layer[metric] for layer in per["unlearned"]]
    best = max(range(len(values)), key=lambda i: (values[i], i))
    attacked = dict(per["unlearned"][best])
    return entry(
        "logit-lens",
        "best-layer",
        attacked,
        original_attacked=max(layer[metric] for layer in per["original"]),
        description=f"forget tokens read off layer {best + 1} of {len(values)} (the best layer)",
        best_layer=best + 1,
        per_layer={k: [layer[metric] for layer in v] for k, v in per.items()},
        median_rank={k: [layer["median_rank"] for layer in v] for k, v in per.items()},
    )


def _prompt_description(p: Probes, variant: str) -> str:
    from .prompts import QA_PROMPTS, TEXT_PROMPTS

    user, prefix = (TEXT_PROMPTS if p.kind == "text" else QA_PROMPTS)[variant]
    text = user.format(topic=p.topic, question="{question}", paraphrased_question="{paraphrased question}")
    return (text.strip() + (f" ⟶ assistant: {prefix.format(topic=p.topic).strip()}" if prefix else "")).replace(
        "\n", " "
    )


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
