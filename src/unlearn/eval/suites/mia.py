"""Membership inference: how well can an attacker tell the forget texts (members) from texts the model never saw?

Scores per text (higher = "member"): LOSS (mean log p), zlib ratio, Min-K% and Min-K%++ (see
:mod:`unlearn.eval.functional` for definitions and sources), GradNorm (minus the mean per-parameter gradient norm
of the text's loss: a text the model fits well moves its weights less), and, with ``--reference``, the
reference-model loss difference: the six attacks of open-unlearning. Each is summarised as the ROC AUC of members
vs non-members (scikit-learn): 0.5 means the attacker cannot tell them apart; after successful unlearning the
forget texts should look like unseen text.
"""

from __future__ import annotations

from pydantic import Field

from ...data.formats import load_texts
from .. import functional as F
from .base import Suite, SuiteConfig, SuiteContext, register

MIA_SCORES = ("loss", "zlib", "min_k", "min_k_plus_plus")


class MiaConfig(SuiteConfig):
    min_k: float = Field(0.2, gt=0, le=1, description="fraction k of Min-K% and Min-K%++ (Shi et al.: 0.2)")
    max_tokens: int | None = Field(
        None, ge=8, description="tokens scored per text (default: the whole text; at most the model's positions)"
    )
    field: str = Field("text", description="record field holding the text")
    gradnorm: bool = Field(True, description="also the GradNorm attack (one backward pass per text)")
    gradnorm_p: float = Field(2.0, description="the p of GradNorm's per-parameter gradient norm: 1, 2 or inf")


def mia_samples(scorer, texts: list[str], *, k: float, max_tokens: int | None, label: str = "scoring") -> list[dict]:
    """Per-text membership scores (and the token log-probs' sum, for reference-model attacks)."""
    pairs = [("", _head(scorer, t, max_tokens)) for t in texts]
    scored = scorer.score(pairs, distribution=True, label=label)
    return [
        {
            "loss": F.loss_score(s.logprobs),
            "zlib": F.zlib_score(s.logprobs, text),
            "min_k": F.min_k(s.logprobs, k),
            "min_k_plus_plus": F.min_k_plus_plus(s.logprobs, s.mu, s.sigma, k),
            "n_tokens": s.n,
        }
        for (_, text), s in zip(pairs, scored)
    ]


def _head(scorer, text: str, max_tokens: int | None) -> str:
    """The text cut to about ``max_tokens`` tokens (at a token boundary, decoded back to text); with None the
    whole text (the scorer cuts only what exceeds the model's positions)."""
    if max_tokens is None:
        return text
    ids = scorer.tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else scorer.tokenizer.decode(ids[:max_tokens])


def mia_aucs(members: list[dict], nonmembers: list[dict], keys=MIA_SCORES) -> dict:
    """ROC AUC of each score, members labelled 1."""
    return {f"auc_{k}": F.auc([m[k] for m in members], [n[k] for n in nonmembers]) for k in keys}


def run(ctx: SuiteContext, cfg: MiaConfig) -> dict:
    missing = [p for p in ("members", "nonmembers") if p not in ctx.files]
    if missing:
        from ...errors import UnlearnError

        raise UnlearnError(f"suite mia needs --data members=PATH and --data nonmembers=PATH (missing {missing[0]})")
    entries = {}
    for part in ("members", "nonmembers"):
        texts = load_texts(ctx.files[part], field=cfg.field, limit=cfg.limit)

        def compute(texts=texts, part=part):
            samples = mia_samples(ctx.scorer, texts, k=cfg.min_k, max_tokens=cfg.max_tokens, label=f"scoring {part}")
            return {"summary": {"n": len(samples)}, "samples": samples}

        entries[part] = ctx.part(part, compute)["samples"]
    summary = mia_aucs(entries["members"], entries["nonmembers"])
    if cfg.gradnorm:
        norms = {}
        for part in ("members", "nonmembers"):
            texts = [
                _head(ctx.scorer, t, cfg.max_tokens)
                for t in load_texts(ctx.files[part], field=cfg.field, limit=cfg.limit)
            ]

            def compute(texts=texts, part=part):
                values = ctx.scorer.grad_norms(texts, p=cfg.gradnorm_p, label=f"gradient norms {part}")
                return {"summary": {"n": len(values)}, "samples": [{"grad_norm": v} for v in values]}

            norms[part] = [-s["grad_norm"] for s in ctx.part(f"gradnorm:{part}", compute)["samples"]]
        summary["auc_gradnorm"] = F.auc(norms["members"], norms["nonmembers"])  # a smaller norm = member
    ref = ctx.reference
    if ref is not None and ref.saved is None:
        diff = {}  # reference attack: log-likelihood under the model minus under the reference model
        for part in ("members", "nonmembers"):
            texts = load_texts(ctx.files[part], field=cfg.field, limit=cfg.limit)

            def compute(texts=texts, part=part):
                samples = mia_samples(
                    ref.scorer, texts, k=cfg.min_k, max_tokens=cfg.max_tokens, label=f"reference {part}"
                )
                return {"summary": {"n": len(samples)}, "samples": samples}

            ref_samples = ctx.part(f"reference:{part}", compute, extra=("reference", ref.sha))["samples"]
            diff[part] = [s["loss"] - r["loss"] for s, r in zip(entries[part], ref_samples)]
        summary["auc_reference"] = F.auc(diff["members"], diff["nonmembers"])
    summary["n_members"], summary["n_nonmembers"] = len(entries["members"]), len(entries["nonmembers"])
    return summary


register(
    Suite(
        name="mia",
        summary="membership inference: LOSS, zlib, Min-K%, Min-K%++ (and reference) AUCs, members vs non-members",
        config_cls=MiaConfig,
        parts={"members": "", "nonmembers": ""},
        run=run,
        uses=("reference",),
        loaders={"*": lambda path, cfg: load_texts(path, field=cfg.field, limit=cfg.limit)},
    )
)
