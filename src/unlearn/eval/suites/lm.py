"""Language modelling on corpora: next-token metrics, specificity against the original model, and fluency.

Per corpus (``--data``: any corpus source, e.g. ``english-prose`` or a text file):

* the selective-pruning paper's next-token metrics (top-1, top-10, skip-k, loss, perplexity) on held-out chunks
  — with the run's seed and chunking these are the run's own evaluation chunks;
* **specificity** (needs the original model): mean KL(original ‖ evaluated) of the next-token distributions over
  the same chunks — how much the model changed on text that should be unaffected (the CounterFact+ idea,
  Meng et al. 2022, applied to whole distributions);
* **fluency**: greedy continuations of the first tokens of some chunks; their repetition rate (share of repeated
  3-grams) and, with the original model, their mean log-probability under the original model (degenerate,
  unnatural text scores low).
"""

from __future__ import annotations

import torch
from pydantic import Field

from ...data.chunking import build_corpus
from ...data.sources import DataSpec
from .. import functional as F
from ..metrics import evaluate_split
from .base import Suite, SuiteConfig, SuiteContext, mean, register


class LmConfig(SuiteConfig):
    eval_tokens: int = Field(8192, ge=1, description="held-out tokens per corpus (a run's default)")
    seq_len: int = Field(256, ge=8, description="tokens per chunk (a run's default)")
    skip_k: int = Field(50, ge=0, description="skip-k accuracy ignores the k most frequent tokens")
    seed: int = Field(0, description="chunk choice; a run's seed gives its evaluation chunks")
    field: str = Field("text", description="record field holding the text (structured files)")
    fluency_prompts: int = Field(8, ge=0, description="continuations generated per corpus for fluency (0 = none)")
    prompt_tokens: int = Field(32, ge=1, description="tokens of each chunk used as the fluency prompt")
    new_tokens: int = Field(64, ge=1, description="tokens generated per fluency prompt")


@torch.inference_mode()
def specificity_kl(model, original, split, batch_size: int) -> float:
    """Mean over non-special target positions of KL(original ‖ model) of the next-token distributions."""
    device, odevice = next(model.parameters()).device, next(original.parameters()).device
    total, count = 0.0, 0
    for ids, special in split.batches(batch_size):
        valid = ~special[:, 1:]
        lp = torch.log_softmax(model(input_ids=ids.to(device), use_cache=False).logits[:, :-1].float(), -1).cpu()
        lo = torch.log_softmax(original(input_ids=ids.to(odevice), use_cache=False).logits[:, :-1].float(), -1).cpu()
        kl = F.kl_divergence(lo, lp)
        total += float(kl[valid].double().sum())
        count += int(valid.sum())
    return total / max(count, 1)


def run(ctx: SuiteContext, cfg: LmConfig) -> dict:
    summary: dict = {}
    scorer, tok = ctx.scorer, ctx.scorer.tokenizer
    original = ctx.original
    for part, source in ctx.files.items():
        corpus = build_corpus(
            part,
            DataSpec(source, (cfg.field,)),
            tok,
            seq_len=cfg.seq_len,
            eval_tokens=cfg.eval_tokens,
            stats_tokens=0,
            seed=cfg.seed,
        )

        def compute(corpus=corpus, part=part):
            with scorer.task(f"evaluate {part}"[:28], corpus.eval.n_tokens) as advance:
                out = evaluate_split(
                    scorer.model, corpus.eval, batch_size=scorer.batch_size, skip_k=cfg.skip_k, progress=advance
                )
            samples = []
            if original is not None:
                out["specificity_kl"] = specificity_kl(
                    scorer.model, original.scorer.model, corpus.eval, max(1, scorer.batch_size // 2)
                )
            if cfg.fluency_prompts:
                chunks = corpus.eval.input_ids[: cfg.fluency_prompts, : cfg.prompt_tokens]
                prompts = [tok.decode(c, skip_special_tokens=True) for c in chunks.tolist()]
                gens = scorer.generate(prompts, max_new_tokens=cfg.new_tokens, raw=True, label=f"generating {part}")
                for prompt, gen in zip(prompts, gens):
                    ids = tok(gen, add_special_tokens=False)["input_ids"]
                    samples.append({"prompt": prompt, "generation": gen, "repetition": F.repetition_rate(ids, 3)})
                if original is not None:
                    scored = original.scorer.score([(s["prompt"], s["generation"]) for s in samples if s["generation"]])
                    for s, sc in zip([s for s in samples if s["generation"]], scored):
                        s["original_logprob"] = float(sc.logprobs.mean())
                out["repetition_rate"] = mean(s["repetition"] for s in samples)
                out["fluency_logprob"] = mean(s.get("original_logprob") for s in samples)
            return {"summary": out, "samples": samples}

        extra = (corpus.sha256, original.sha if original is not None else None)
        summary[part] = ctx.part(part, compute, data=corpus.sha256, extra=extra)["summary"]
    if original is None:
        ctx.log("lm: specificity and fluency log-probability need the original model (--original)")
    return summary


register(
    Suite(
        name="lm",
        summary="next-token metrics per corpus, specificity KL(original‖model), fluency of generations",
        config_cls=LmConfig,
        parts={},
        run=run,
        free_parts=True,
        uses=("original",),
    )
)
