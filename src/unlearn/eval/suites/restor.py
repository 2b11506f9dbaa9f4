"""RESTOR (Rezaei et al. 2024, "RESTOR: Knowledge Recovery in Machine Unlearning", arXiv:2411.00204).

A model that learnt misinformation about real entities (the *corrupted* model) is unlearnt on the corrupting
data. Forgetting the wrong answers is half of the job: RESTOR asks whether the model also *recovers* what it knew
before the corruption, the knowledge state of the *clean* model.

Records: ``question``, ``answer`` (the true fact) and ``corrupt_answer`` (the misinformation: a string or a
list), or TOFU's ``perturbed_answer`` list in its place. Parts: ``forget`` (the corrupted facts) and ``retain``
(facts that were never corrupted, which should stay as the clean model has them). Per fact, on any model:

* ``p_true`` / ``p_corrupt``: the length-normalised probability P(a | q)^(1/|a|) of the true answer and of the
  likeliest corrupt answer, the answer tokens alone after the question's prompt;
* ``prefers_corrupt``: ``p_corrupt > p_true`` (its mean is the ``corruption_rate``);
* the greedy answer, its ROUGE-L recall (stemmed, as TOFU) against the true and the best corrupt answer, and
  ``accuracy_true`` / ``accuracy_corrupt``: whether it contains that answer (normalised, whole words).

``--reference`` is the clean model (or its ``eval/restor.json``) and ``--original`` the corrupted one (a run's
starting model by default). With both, each part also reports their summaries, ``recovery`` of every metric =
(model − corrupted) / (clean − corrupted) where the corruption moved it by more than ``min_gap``,
``restored_rate`` (of the facts the clean model got right by probability and the corrupted one got wrong, the
share the model gets right again), ``clean_agreement`` (the share of facts where the model prefers the answer the
clean model prefers, right or wrong: RESTOR's target is the clean model's knowledge state, not the truth) and
``clean_rougeL`` (ROUGE-L recall of the greedy answer against the clean model's greedy answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from ...data.sources import iter_records, missing_field
from ...errors import UnlearnError
from .. import functional as F
from .base import ModelHandle, Suite, SuiteConfig, SuiteContext, mean, register

PARTS = ("forget", "retain")
METRICS = ("p_true", "p_corrupt", "rougeL_true", "rougeL_corrupt", "accuracy_true", "accuracy_corrupt")
ROLES = {"reference": "clean", "original": "corrupted"}


class RestorConfig(SuiteConfig):
    max_new_tokens: int = Field(32, ge=1, le=1024, description="longest generated answer")
    min_gap: float = Field(
        0.01,
        ge=0,
        le=1,
        description="recovery of a metric only where the clean and corrupted models differ by more than this",
    )


@dataclass(frozen=True)
class Fact:
    """A fact about a real entity: the question, its true answer and the misinformation that corrupted it."""

    question: str
    answer: str
    corrupt: tuple[str, ...]
    id: str = ""


def _text(value, name: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UnlearnError(f"{where}: field {name!r} must be a non-empty string")
    return value


def _fact(where: str, rec: dict) -> Fact:
    for key in ("question", "answer"):
        if key not in rec:
            raise missing_field(where, key, rec)
    question, answer = _text(rec["question"], "question", where), _text(rec["answer"], "answer", where)
    key = next((k for k in ("corrupt_answer", "perturbed_answer") if rec.get(k) is not None), None)
    if key is None:
        raise missing_field(where, "corrupt_answer", rec, " (or 'perturbed_answer')")
    value = rec[key]
    corrupt = [value] if isinstance(value, str) else value
    if not isinstance(corrupt, list) or not corrupt:
        raise UnlearnError(f"{where}: field {key!r} must be a string or a non-empty list of strings")
    corrupt = [_text(c, key, where) for c in corrupt]
    same = [c for c in corrupt if c.strip().casefold() == answer.strip().casefold()]
    if same:
        raise UnlearnError(f"{where}: corrupt answer {same[0]!r} is the true answer")
    return Fact(question, answer, tuple(corrupt), id=where)


def load_facts(source: str | Path, *, limit: int | None = None) -> list[Fact]:
    """The facts of a RESTOR file (JSONL, JSON, CSV, parquet or ``hf:NAME``), checked record by record: a bad
    record raises one line naming it (``path:line``) and the problem."""
    facts: list[Fact] = []
    for where, rec in iter_records(str(source)):
        facts.append(_fact(where, rec))
        if limit is not None and len(facts) >= limit:
            break
    if not facts:
        raise UnlearnError(f"{source}: no records")
    return facts


def fact_samples(scorer, template, facts: list[Fact], *, max_new_tokens: int, label: str) -> list[dict]:
    """Per-fact values on one model: answer probabilities, preference, greedy answer and its matches."""
    prompts = [template.qa(f.question) for f in facts]
    pairs = [(p, template.answer(a)) for p, f in zip(prompts, facts) for a in (f.answer, *f.corrupt)]
    scores = dict(zip(pairs, scorer.score(pairs, label=f"scoring {label}")))
    outputs = scorer.generate(prompts, max_new_tokens=max_new_tokens, stop=template.stop, label=f"generating {label}")
    samples = []
    for prompt, fact, out in zip(prompts, facts, outputs):
        p_true = F.normalized_prob(scores[(prompt, template.answer(fact.answer))].logprobs)
        p_corrupt = max(F.normalized_prob(scores[(prompt, template.answer(c))].logprobs) for c in fact.corrupt)
        samples.append(
            {
                "id": fact.id,
                "question": fact.question,
                "p_true": p_true,
                "p_corrupt": p_corrupt,
                "prefers_corrupt": bool(p_corrupt > p_true),
                "generation": out,
                "rougeL_true": F.rouge_l(out, fact.answer)["recall"],
                "rougeL_corrupt": max(F.rouge_l(out, c)["recall"] for c in fact.corrupt),
                "accuracy_true": float(F.contains_answer(out, fact.answer)),
                "accuracy_corrupt": float(any(F.contains_answer(out, c) for c in fact.corrupt)),
            }
        )
    return samples


def summarize(samples: list[dict]) -> dict:
    """Means over facts of every per-fact metric, and the corruption rate."""
    out = {k: mean(s[k] for s in samples) for k in METRICS}
    out["corruption_rate"] = F.corruption_rate([s["p_true"] for s in samples], [s["p_corrupt"] for s in samples])
    out["n"] = len(samples)
    return out


def restored_rate(samples: list[dict], clean: list[dict], corrupted: list[dict]) -> tuple[float | None, int]:
    """Of the facts the clean model prefers true and the corrupted model prefers corrupt, the share the model
    prefers true again (None when there is no such fact), and their number."""
    idx = [
        i
        for i in range(len(samples))
        if not clean[i]["prefers_corrupt"] and corrupted[i]["prefers_corrupt"]  # knew it, lost it
    ]
    if not idx:
        return None, 0
    return sum(not samples[i]["prefers_corrupt"] for i in idx) / len(idx), len(idx)


def compare(samples: list[dict], clean: list[dict] | None, corrupted: list[dict] | None, min_gap: float) -> dict:
    """A part's comparison with the clean and corrupted models (whichever are known): their summaries, the
    recovery of every metric, the restored rate and the agreement with the clean model's preferences and answers."""
    out: dict = {}
    if clean is not None:
        out["clean"] = summarize(clean)
        out["clean_agreement"] = mean(
            float(s["prefers_corrupt"] == c["prefers_corrupt"]) for s, c in zip(samples, clean)
        )
        out["clean_rougeL"] = mean(
            F.rouge_l(s["generation"], c["generation"])["recall"] for s, c in zip(samples, clean)
        )
    if corrupted is not None:
        out["corrupted"] = summarize(corrupted)
    if clean is not None and corrupted is not None:
        own = summarize(samples)
        out["recovery"] = {
            k: F.recovery(own[k], out["corrupted"][k], out["clean"][k], min_gap=min_gap)
            for k in (*METRICS, "corruption_rate")
        }
        out["restored_rate"], out["n_restorable"] = restored_rate(samples, clean, corrupted)
    return out


def other_samples(ctx: SuiteContext, role: str, part: str, facts: list[Fact], own: list[dict], cfg) -> list | None:
    """The per-fact values of the clean (``reference``) or corrupted (``original``) model on ``part``: from its
    saved ``restor.json`` (which must hold the same questions), the model's own when it is the same model, or
    computed (and cached) otherwise."""
    handle: ModelHandle | None = ctx.need(role)
    if handle is None:
        return None
    name = ROLES[role]
    questions = [f.question for f in facts]
    if handle.saved is not None:
        if handle.saved.get("suite") != "restor":
            raise UnlearnError(f"{name} results {handle.spec} are not an eval/restor.json")
        if handle.saved_samples(part, "question") != questions:
            raise UnlearnError(
                f"{name} results {handle.spec} were scored on other {part} questions than {ctx.files[part]}: "
                "evaluate that model on the same data and limit"
            )
        return handle.saved["parts"][part]["samples"]
    if handle.sha == ctx.model_sha:
        return own

    def compute():
        samples = fact_samples(
            handle.scorer, ctx.template, facts, max_new_tokens=cfg.max_new_tokens, label=f"{name} {part}"
        )
        return {"summary": summarize(samples), "samples": samples}

    return ctx.part(f"{name}:{part}", compute, extra=(name, handle.sha))["samples"]


def run(ctx: SuiteContext, cfg: RestorConfig) -> dict:
    summary: dict = {}
    for part in [p for p in PARTS if p in ctx.files]:
        facts = load_facts(ctx.files[part], limit=cfg.limit)

        def compute(facts=facts, part=part):
            samples = fact_samples(ctx.scorer, ctx.template, facts, max_new_tokens=cfg.max_new_tokens, label=part)
            return {"summary": summarize(samples), "samples": samples}

        own = ctx.part(part, compute)["samples"]
        clean = other_samples(ctx, "reference", part, facts, own, cfg)
        corrupted = other_samples(ctx, "original", part, facts, own, cfg)
        summary[part] = {**summarize(own), **compare(own, clean, corrupted, cfg.min_gap)}
    if "forget" not in summary:
        return summary
    forget = summary["forget"]
    summary["corruption_rate"] = forget["corruption_rate"]
    for key in ("restored_rate", "clean_agreement", "clean_rougeL"):
        if key in forget:
            summary[key] = forget[key]
    if "recovery" in forget:
        summary["recovery_p_true"] = forget["recovery"]["p_true"]
        summary["recovery_accuracy"] = forget["recovery"]["accuracy_true"]
    else:
        ctx.log("restor: recovery needs --reference (the clean model) and --original (the corrupted model)")
    return summary


register(
    Suite(
        name="restor",
        summary="RESTOR: corruption rate and recovery of the clean model's facts (reference = clean model)",
        config_cls=RestorConfig,
        parts={"forget": "forget.jsonl", "retain": "retain.jsonl"},
        run=run,
        uses=("reference", "original"),
        loaders={"*": lambda path, cfg: load_facts(path, limit=cfg.limit)},
    )
)
