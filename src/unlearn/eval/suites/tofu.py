"""TOFU (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs"), as in open-unlearning.

Parts: ``forget`` (forgetXX_perturbed), ``retain`` (retain_perturbed), ``real_authors`` and ``world_facts``.
Per question: answer probability, truth ratio, ROUGE-L of the greedy answer, exact memorisation and extraction
strength. Forget quality = KS-test p-value of the forget truth ratios against a reference (retain-only) model's;
model utility = harmonic mean of probability, ROUGE-L recall and truth ratio on the three utility parts.
"""

from __future__ import annotations

from pydantic import Field

from ...data.formats import load_qa
from ...errors import UnlearnError
from .. import functional as F
from .base import Suite, SuiteConfig, SuiteContext, mean, register

UTILITY_PARTS = ("retain", "real_authors", "world_facts")


class TofuConfig(SuiteConfig):
    max_new_tokens: int = Field(200, ge=1, le=4096, description="longest generated answer (open-unlearning: 200)")


def qa_samples(scorer, template, items, *, role: str, generate: bool, max_new_tokens: int = 200) -> list[dict]:
    """Per-question values. ``role`` is ``forget``/``retain`` (probability = P(answer)^(1/len)) or ``choices``
    (real authors / world facts: probability of the answer among the perturbed answers)."""
    prompts = [template.qa(it.question) for it in items]
    pairs = []
    for prompt, it in zip(prompts, items):
        pairs.append((prompt, template.response(it.question, it.answer)))
        if it.paraphrased_answer:
            pairs.append((prompt, template.response(it.question, it.paraphrased_answer)))
        pairs += [(prompt, template.response(it.question, p)) for p in it.perturbed_answers]
    # answers scored as TOFU and open-unlearning score them: tokenised with the prompt, with EOS
    scores = dict(zip(pairs, scorer.score(pairs, eos=True, label=f"scoring {role}")))
    outputs = (
        scorer.generate(prompts, max_new_tokens=max_new_tokens, stop=template.stop, label=f"generating {role}")
        if generate
        else [None] * len(items)
    )
    samples = []
    for prompt, it, out in zip(prompts, items, outputs):
        ans = scores[(prompt, template.response(it.question, it.answer))]
        para = it.paraphrased_answer
        correct = scores[(prompt, template.response(it.question, para))] if para else ans
        perturbed = [scores[(prompt, template.response(it.question, p))].logprobs for p in it.perturbed_answers]
        s = {"id": it.id, "question": it.question}
        if role == "choices" and perturbed:
            s["prob"] = F.prob_among_choices(ans.logprobs, perturbed)
        else:
            s["prob"] = F.normalized_prob(ans.logprobs)
        s["truth_ratio"] = F.truth_ratio(perturbed, correct.logprobs) if perturbed else None
        s["exact_memorization"] = F.exact_memorization(ans.correct)
        s["extraction_strength"] = F.extraction_strength(ans.correct)
        if out is not None:
            rouge = F.rouge_l(out, it.answer)
            s.update(generation=out, rougeL_recall=rouge["recall"], rougeL_f1=rouge["f1"])
        samples.append(s)
    return samples


def summarize(samples: list[dict], role: str) -> dict:
    trs = [s["truth_ratio"] for s in samples if s["truth_ratio"] is not None]
    out = {k: mean(s.get(k) for s in samples) for k in ("prob", "rougeL_recall", "rougeL_f1")}
    out["truth_ratio"] = (F.truth_ratio_forget(trs) if role == "forget" else F.truth_ratio_retain(trs)) if trs else None
    out["exact_memorization"] = mean(s["exact_memorization"] for s in samples)
    out["extraction_strength"] = mean(s["extraction_strength"] for s in samples)
    out["n"] = len(samples)
    return out


def run(ctx: SuiteContext, cfg: TofuConfig) -> dict:
    summary: dict = {}
    forget_tr = forget_items = None
    for part in [p for p in ("forget", *UTILITY_PARTS) if p in ctx.files]:
        role = "choices" if part in ("real_authors", "world_facts") else part
        items = load_qa(ctx.files[part], limit=cfg.limit)

        def compute(items=items, role=role, part=part):
            samples = qa_samples(
                ctx.scorer, ctx.template, items, role=role, generate=True, max_new_tokens=cfg.max_new_tokens
            )
            return {"summary": summarize(samples, "forget" if part == "forget" else "retain"), "samples": samples}

        entry = ctx.part(part, compute)
        summary[part] = entry["summary"]
        if part == "forget":
            forget_tr, forget_items = [s["truth_ratio"] for s in entry["samples"]], items
    if forget_tr is not None and None not in forget_tr:
        ref = reference_truth_ratios(ctx, forget_items)
        summary["forget_quality"] = F.forget_quality(forget_tr, ref) if ref is not None else None
    if all(p in summary for p in UTILITY_PARTS):
        values = [summary[p][k] for p in UTILITY_PARTS for k in ("prob", "rougeL_recall", "truth_ratio")]
        summary["model_utility"] = F.harmonic_mean(values) if None not in values else None
    return summary


def reference_truth_ratios(ctx: SuiteContext, items: list) -> list[float] | None:
    """The reference model's truth ratios on the forget ``items``: from its saved ``tofu.json`` (which must hold
    the same questions) or computed (and cached)."""
    ref = ctx.reference
    if ref is None:
        ctx.log("tofu: forget quality needs --reference (a retain-only model or its eval/tofu.json)")
        return None
    if ref.saved is not None:
        if ref.saved_samples("forget", "question") != [it.question for it in items]:
            raise UnlearnError(
                f"reference results {ref.spec} were scored on other forget questions than {ctx.files['forget']}: "
                "evaluate the reference on the same forget data and limit"
            )
        return ref.saved_samples("forget", "truth_ratio")

    def compute():
        samples = qa_samples(ref.scorer, ctx.template, items, role="forget", generate=False)
        return {"summary": summarize(samples, "forget"), "samples": samples}

    entry = ctx.part("reference:forget", compute, extra=("reference", ref.sha))
    return [s["truth_ratio"] for s in entry["samples"]]


register(
    Suite(
        name="tofu",
        summary="TOFU: probability, truth ratio, ROUGE-L, memorisation; forget quality (KS vs reference), utility",
        config_cls=TofuConfig,
        parts={
            "forget": "forget01_perturbed.jsonl",
            "retain": "retain_perturbed.jsonl",
            "real_authors": "real_authors_perturbed.jsonl",
            "world_facts": "world_facts_perturbed.jsonl",
        },
        run=run,
        uses=("reference",),
        loaders={"*": lambda path, cfg: load_qa(path, limit=cfg.limit)},
    )
)
