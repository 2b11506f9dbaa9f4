"""MUSE (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models").

* VerbMem: ROUGE-L F1 between the greedy continuation (128 new tokens) of a forget-text prompt and the first 128
  tokens of its true continuation.
* KnowMem on forget and retain: few-shot QA (the benchmark's in-context examples) in MUSE's format
  (``Question: ...\nAnswer: `` with the trailing space), the answer cut before a blank line or the next
  ``Question``, ROUGE-L F1 against the gold answer.

Both ROUGE scores are without stemming, as MUSE's ``rouge_scorer.RougeScorer(..., use_stemmer=False)``.
* PrivLeak: AUC of Min-K% (k = 40 %) on the whole of each forget and holdout text, in MUSE's convention (forget
  texts labelled as non-members, so AUC_muse = 1 − this package's member AUC), relative to a reference (retrained)
  model's: (AUC_muse − AUC_muse,ref) / AUC_muse,ref × 100 (open-unlearning's ``privacy.py`` reproduces MUSE's
  code). Near 0 is good; strongly negative means leakage (the model still tells its forget texts apart), strongly
  positive means over-unlearning. The other membership-inference scores (LOSS, zlib, Min-K%++) are reported
  alongside, as member AUCs.
"""

from __future__ import annotations

from pydantic import Field

from ...data.formats import load_continuations, load_qa, load_texts
from ...errors import UnlearnError
from .. import functional as F
from .base import Suite, SuiteConfig, SuiteContext, mean, register
from .mia import mia_aucs, mia_samples


class MuseConfig(SuiteConfig):
    verbmem_new_tokens: int = Field(128, ge=1, le=4096, description="tokens generated for VerbMem (MUSE: 128)")
    knowmem_new_tokens: int = Field(32, ge=1, le=1024, description="tokens generated for KnowMem answers (MUSE: 32)")
    min_k: float = Field(0.4, gt=0, le=1, description="k of Min-K% for PrivLeak (MUSE: 0.4)")
    max_tokens: int | None = Field(
        None,
        ge=8,
        description="tokens scored per PrivLeak text (default: the whole text, as MUSE; at most the model's)",
    )
    template: str = Field("plain", description="KnowMem prompts: plain (MUSE's Question:/Answer: format), chat, auto")


PARTS = {
    "verbmem": "verbmem/forget.jsonl",
    "knowmem_forget": "knowmem/forget_qa.jsonl",
    "knowmem_forget_icl": "knowmem/forget_qa_icl.jsonl",
    "knowmem_retain": "knowmem/retain2_qa.jsonl",
    "knowmem_retain_icl": "knowmem/retain2_qa_icl.jsonl",
    "privleak_forget": "privleak/forget.jsonl",
    "privleak_holdout": "privleak/holdout.jsonl",
}


def run(ctx: SuiteContext, cfg: MuseConfig) -> dict:
    summary: dict = {}
    if "verbmem" in ctx.files:
        items = load_continuations(ctx.files["verbmem"], limit=cfg.limit)

        def verbmem():
            outs = ctx.scorer.generate(
                [it.prompt for it in items], max_new_tokens=cfg.verbmem_new_tokens, label="generating verbmem"
            )
            tok = ctx.scorer.tokenizer  # MUSE compares with the continuation's first verbmem_new_tokens tokens
            targets = [
                tok.decode(tok(it.target, add_special_tokens=False)["input_ids"][: cfg.verbmem_new_tokens])
                for it in items
            ]
            samples = [
                {"id": it.id, "generation": out, "rougeL_f1": F.rouge_l(out, target, stem=False)["f1"]}
                for it, out, target in zip(items, outs, targets)
            ]
            return {
                "summary": {"rougeL_f1": mean(s["rougeL_f1"] for s in samples), "n": len(samples)},
                "samples": samples,
            }

        summary["verbmem"] = ctx.part("verbmem", verbmem)["summary"]
    for which in ("forget", "retain"):
        part = f"knowmem_{which}"
        if part not in ctx.files:
            continue
        items = load_qa(ctx.files[part], limit=cfg.limit)
        shots_file = ctx.files.get(f"{part}_icl")
        shots = [(s.question, s.answer) for s in load_qa(shots_file)] if shots_file else []

        def knowmem(items=items, shots=shots, part=part):
            # MUSE's prompt ends "Answer: " (a space) and its answers are cut before these
            space, stop = ("", ctx.template.stop) if ctx.template.chat else (" ", ("\n\n", "\nQuestion", "Question:"))
            prompts = [ctx.template.qa(it.question, shots) + space for it in items]
            outs = ctx.scorer.generate(
                prompts, max_new_tokens=cfg.knowmem_new_tokens, stop=stop, label=f"generating {part}"
            )
            samples = [
                {
                    "id": it.id,
                    "question": it.question,
                    "generation": out,
                    "rougeL_f1": F.rouge_l(out, it.answer, stem=False)["f1"],
                }
                for it, out in zip(items, outs)
            ]
            return {
                "summary": {"rougeL_f1": mean(s["rougeL_f1"] for s in samples), "n": len(samples)},
                "samples": samples,
            }

        summary[part] = ctx.part(part, knowmem, extra=(ctx.data_key(f"{part}_icl") if shots_file else None,))["summary"]
    if "privleak_forget" in ctx.files and "privleak_holdout" in ctx.files:
        summary["privleak"] = privleak(ctx, cfg)
    elif "privleak_forget" in ctx.files or "privleak_holdout" in ctx.files:
        ctx.log("muse: PrivLeak needs both privleak/forget and privleak/holdout texts")
    return summary


def _mia_part(ctx: SuiteContext, part: str, cfg: MuseConfig, handle=None) -> list[dict]:
    texts = load_texts(ctx.files[part], limit=cfg.limit)
    scorer = handle.scorer if handle is not None else ctx.scorer
    name = f"reference:{part}" if handle is not None else part

    def compute():
        samples = mia_samples(scorer, texts, k=cfg.min_k, max_tokens=cfg.max_tokens, label=f"scoring {name}")
        return {"summary": {"n": len(samples)}, "samples": samples}

    extra = ("reference", handle.sha) if handle is not None else ()
    return ctx.part(name, compute, extra=extra)["samples"]


def privleak(ctx: SuiteContext, cfg: MuseConfig) -> dict:
    members, nonmembers = _mia_part(ctx, "privleak_forget", cfg), _mia_part(ctx, "privleak_holdout", cfg)
    out = mia_aucs(members, nonmembers)
    ref = ctx.reference
    ref_auc = None
    if ref is None:
        ctx.log("muse: PrivLeak needs --reference (a retrained model or its eval/muse.json); reporting AUCs only")
    elif ref.saved is not None:
        ref_auc = (ref.saved.get("summary", {}).get("privleak") or {}).get("auc_min_k")
        if ref_auc is None:
            raise UnlearnError(f"reference results {ref.spec} have no privleak AUC: evaluate muse on the reference")
    else:
        ref_auc = mia_aucs(_mia_part(ctx, "privleak_forget", cfg, ref), _mia_part(ctx, "privleak_holdout", cfg, ref))[
            "auc_min_k"
        ]
    out["reference_auc_min_k"] = ref_auc
    out["auc_muse"] = 1.0 - out["auc_min_k"]  # MUSE's own AUC: forget texts labelled as non-members
    out["reference_auc_muse"] = None if ref_auc is None else 1.0 - ref_auc
    out["privleak"] = F.privleak(out["auc_min_k"], ref_auc) if ref_auc is not None else None
    return out


register(
    Suite(
        name="muse",
        summary="MUSE: VerbMem, KnowMem (forget/retain), PrivLeak (Min-K 40% AUC vs reference) and MIA AUCs",
        config_cls=MuseConfig,
        parts=PARTS,
        run=run,
        uses=("reference",),
        loaders={
            "verbmem": lambda path, cfg: load_continuations(path, limit=cfg.limit),
            "privleak_forget": lambda path, cfg: load_texts(path, limit=cfg.limit),
            "privleak_holdout": lambda path, cfg: load_texts(path, limit=cfg.limit),
            "*": lambda path, cfg: load_qa(path, limit=cfg.limit),
        },
    )
)
