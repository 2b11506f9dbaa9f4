"""GUARD-style generation-time unlearning ("Generation-time LLM unlearning via adaptive restriction and
detection"): the weights stay as they are; a policy decides per sequence whether it touches the forget target and,
where it does, restricts the tokens the model may produce.

1. **Forbidden tokens and phrases.** Over the training chunks of both corpora (``tokens`` each), every token and
   every n-gram (2..``ngram`` tokens, no special token inside) is scored by the log-ratio of its smoothed rates,
   ``log((c_f + α) / (N_f + αU)) − log((c_r + α) / (N_r + αU))``; those seen at least ``min_count`` times in the
   forget data, at least ``min_ratio`` times more frequent there, and not among the ``exclude_common`` most
   frequent tokens of both corpora, are kept, the ``n_tokens`` tokens and ``n_phrases`` phrases with the highest
   ratio. With ``semantic_threshold`` the tokens whose output embedding has at least that cosine to a forbidden
   token are forbidden too (semantic matching).
2. **Detector.** Prompts are the training chunks cut to random lengths (``min_prompt`` up to the chunk); a prompt's
   embedding is the model's own mean unit hidden state after block ``layer``; its score the cosine to the forget
   centroid minus the cosine to the retain centroid; the threshold maximises balanced accuracy on the calibration
   prompts (or is ``retain_quantile`` of the retain prompts' scores, or ``threshold``). ``held_out`` of the chunks
   only measure it.
3. **Intervention** (:class:`unlearn.models.guard.GuardPolicy`): hooks that edit the logits of flagged sequences.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import UnlearnError
from ..models import components
from ..models.guard import POLICY_FILE, TENSORS_FILE, GuardPolicy, pool
from .registry import MethodResult, register


class GuardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    layer: int | None = Field(
        None, ge=0, description="decoder block whose output the detector mean-pools; default: the middle"
    )
    tokens: int = Field(
        32768, ge=64, le=100_000_000, description="training tokens of each corpus counted and cut into prompts"
    )
    n_tokens: int = Field(32, ge=0, le=100_000, description="forbidden single tokens (the highest log-ratio)")
    ngram: int = Field(3, ge=1, le=8, description="longest forbidden phrase in tokens (1: single tokens only)")
    n_phrases: int = Field(32, ge=0, le=100_000, description="forbidden phrases of 2..ngram tokens")
    min_ratio: float = Field(
        10.0, ge=1, description="a forbidden token or phrase is at least this many times more frequent in forget text"
    )
    min_count: int = Field(3, ge=1, description="a forbidden token or phrase occurs at least this often in forget text")
    smoothing: float = Field(1.0, gt=0, description="α added to every count in the log-ratio")
    exclude_common: int = Field(
        50, ge=0, description="the most frequent tokens of both corpora together that are never forbidden"
    )
    penalty: float | Literal["inf"] = Field(
        "inf", description="subtracted from a forbidden token's logit in a flagged sequence; inf: never produced"
    )
    threshold: float | None = Field(
        None, ge=-2, le=2, description="detector threshold on cos(forget) − cos(retain); default: calibrated"
    )
    retain_quantile: float | None = Field(
        None, gt=0, lt=1, description="calibrate the threshold as this quantile of the retain prompts' scores"
    )
    semantic_threshold: float | None = Field(
        None, gt=0, le=1, description="also forbid tokens whose output-embedding cosine to a forbidden one is ≥ this"
    )
    min_prompt: int = Field(16, ge=2, description="shortest calibration prompt in tokens")
    held_out: float = Field(0.25, gt=0, lt=1, description="share of chunks kept from calibration to measure it")
    seed: int | None = Field(None, ge=0, lt=2**63, description="seed of prompt lengths and the held-out split")

    @field_validator("penalty", mode="before")
    @classmethod
    def _inf(cls, value):
        if isinstance(value, float) and math.isinf(value) and value > 0:
            return "inf"
        if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "infinity"):
            return "inf"
        return value

    @field_validator("penalty")
    @classmethod
    def _positive(cls, value):
        if value != "inf" and not value > 0:
            raise ValueError(f"must be positive or inf, got {value}")
        return value

    @model_validator(mode="after")
    def _one_threshold(self):
        if self.threshold is not None and self.retain_quantile is not None:
            raise ValueError("set threshold or retain_quantile, not both")
        return self


def log_ratio(cf, cr, nf: int, nr: int, alpha: float, kinds: int):
    """The smoothed log-ratio of forget to retain rates of counts ``cf``, ``cr`` (``kinds`` distinct items)."""
    return math.log((cf + alpha) / (nf + alpha * kinds)) - math.log((cr + alpha) / (nr + alpha * kinds))


def runs(split) -> list[list[int]]:
    """The token runs of a split's chunks between special tokens."""
    out = []
    for row, special in zip(split.input_ids.tolist(), split.special.tolist()):
        current: list[int] = []
        for t, s in zip(row, special):
            if s:
                if current:
                    out.append(current)
                current = []
            else:
                current.append(t)
        if current:
            out.append(current)
    return out


def _count(texts: list[list[int]], n: int) -> Counter:
    return Counter(tuple(r[i : i + n]) for r in texts for i in range(len(r) - n + 1))


def select(forget: Counter, retain: Counter, cfg: GuardConfig, k: int, allowed) -> list[dict]:
    """The ``k`` items (tuples) of ``forget`` with the highest log-ratio that pass the count and ratio limits and
    ``allowed(item)``: ``{"ids", "forget", "retain", "log_ratio"}`` each, best first."""
    nf, nr = sum(forget.values()), sum(retain.values())
    kinds = len(set(forget) | set(retain))
    floor = math.log(cfg.min_ratio)
    found = []
    for item, c in forget.items():
        if c < cfg.min_count or not allowed(item):
            continue
        score = log_ratio(c, retain.get(item, 0), nf, nr, cfg.smoothing, kinds)
        if score >= floor:
            found.append({"ids": list(item), "forget": c, "retain": retain.get(item, 0), "log_ratio": round(score, 4)})
    found.sort(key=lambda f: (-f["log_ratio"], -f["forget"], f["ids"]))
    return found[:k]


def forbidden(forget_split, retain_split, cfg: GuardConfig, special: set[int]) -> tuple[list[dict], list[dict]]:
    """(forbidden tokens, forbidden phrases) of the two corpora, as :func:`select` describes them."""
    f_runs, r_runs = runs(forget_split), runs(retain_split)
    f1, r1 = _count(f_runs, 1), _count(r_runs, 1)
    common = {t for (t,), _ in (f1 + r1).most_common(cfg.exclude_common)} if cfg.exclude_common else set()
    tokens = select(f1, r1, cfg, cfg.n_tokens, lambda item: item[0] not in common and item[0] not in special)
    blocked = {t["ids"][0] for t in tokens}
    phrases = []
    for n in range(2, cfg.ngram + 1):
        phrases += select(
            _count(f_runs, n),
            _count(r_runs, n),
            cfg,
            cfg.n_phrases,
            lambda item: item[-1] not in blocked and not (set(item) & special),
        )
    phrases.sort(key=lambda f: (-f["log_ratio"], -f["forget"], f["ids"]))
    return tokens, phrases[: cfg.n_phrases]


@torch.no_grad()
def semantic(model, tokens: list[int], threshold: float, special: set[int]) -> list[dict]:
    """Tokens not in ``tokens`` whose output embedding has cosine ≥ ``threshold`` to one of them."""
    if not tokens:
        return []
    w = torch.nn.functional.normalize(model.get_output_embeddings().weight.float(), dim=-1)
    cos = w @ w[torch.tensor(tokens, device=w.device)].T  # [V, k]
    best, of = cos.max(dim=1)
    found = []
    for t in (best >= threshold).nonzero().flatten().tolist():
        if t not in tokens and t not in special:
            found.append({"id": t, "cos": round(float(best[t]), 4), "of": tokens[int(of[t])]})
    return sorted(found, key=lambda f: -f["cos"])


def prompts(split, rows: list[int], min_len: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunks ``rows`` of ``split`` cut to random lengths (``min_len`` up to the chunk), right-padded:
    (ids [n, T], attention mask [n, T])."""
    ids = split.input_ids[rows]
    width = ids.shape[1]
    lengths = torch.randint(min(min_len, width), width + 1, (len(rows),), generator=gen)
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    return ids * mask, mask


@torch.no_grad()
def embeddings(model, adapter, layer: int, ids: torch.Tensor, mask, batch_size: int) -> torch.Tensor:
    """The detector's embeddings [n, d] of ``ids`` (one forward to ``layer`` per batch)."""
    seen, out = {}, []

    def hook(_module, _args, output):
        seen["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    device = next(model.parameters()).device
    handle = adapter.blocks(model)[layer].register_forward_hook(hook)
    try:
        for i in range(0, len(ids), batch_size):
            m = None if mask is None else mask[i : i + batch_size].to(device)
            try:
                getattr(model, "base_model", model)(input_ids=ids[i : i + batch_size].to(device), attention_mask=m)
            except _Stop:
                pass
            out.append(pool(seen["h"], m).cpu())
    finally:
        handle.remove()
    return torch.cat(out)


class _Stop(Exception):
    """Raised by the collecting hook once the detector's block has run."""


def centroids(forget: torch.Tensor, retain: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(mean, forget centroid, retain centroid): the mean of the two corpora's mean embeddings, and each corpus's
    mean unit embedding about it."""
    mean = (forget.mean(0) + retain.mean(0)) / 2
    unit = [torch.nn.functional.normalize(x - mean, dim=-1).mean(0) for x in (forget, retain)]
    return mean, unit[0], unit[1]


def calibrate(forget: torch.Tensor, retain: torch.Tensor, cfg: GuardConfig) -> float:
    """The threshold on the scores of forget and retain calibration prompts: ``cfg.threshold``, the
    ``retain_quantile`` of the retain scores, or the midpoint of the best balanced accuracy (the middle of ties)."""
    if cfg.threshold is not None:
        return float(cfg.threshold)
    if cfg.retain_quantile is not None:
        return float(torch.quantile(retain.double(), cfg.retain_quantile))
    values = torch.cat([forget, retain]).double().unique()
    if len(values) < 2:
        return float(values[0])
    cuts = (values[1:] + values[:-1]) / 2
    accuracy = [accuracy_at(forget, retain, float(c))["balanced_accuracy"] for c in cuts]
    best = max(accuracy)
    ties = [float(c) for c, a in zip(cuts, accuracy) if a == best]
    return ties[len(ties) // 2]


def accuracy_at(forget: torch.Tensor, retain: torch.Tensor, threshold: float) -> dict:
    """Forget prompts flagged, retain prompts flagged, balanced accuracy at ``threshold``."""
    recall = float((forget > threshold).double().mean()) if len(forget) else 0.0
    false_pos = float((retain > threshold).double().mean()) if len(retain) else 0.0
    return {
        "forget_flagged": round(recall, 4),
        "retain_flagged": round(false_pos, 4),
        "balanced_accuracy": round((recall + 1 - false_pos) / 2, 4),
        "n": [len(forget), len(retain)],
    }


def _held_out_rows(n: int, share: float, gen: torch.Generator, which: str) -> tuple[list[int], list[int]]:
    """(calibration rows, held-out rows) of ``n`` chunks."""
    if n < 2:
        raise UnlearnError(f"guard needs at least 2 {which} chunks to calibrate and measure the detector: raise tokens")
    order = torch.randperm(n, generator=gen).tolist()
    n_held = min(n - 1, max(1, round(n * share)))
    return order[n_held:], order[:n_held]


def fit_detector(model, adapter, layer: int, splits: dict, cfg: GuardConfig, seed: int, batch_size: int):
    """The detector's (mean, forget centroid, retain centroid), threshold and its accuracy on the calibration
    and held-out prompts of ``splits`` (``forget`` and ``retain`` token splits)."""
    gen = torch.Generator().manual_seed(seed)
    emb = {}
    for which, split in splits.items():
        calib, held = _held_out_rows(len(split.input_ids), cfg.held_out, gen, which)
        for part, rows in (("calibration", calib), ("held_out", held)):
            ids, mask = prompts(split, rows, cfg.min_prompt, gen)
            emb[which, part] = embeddings(model, adapter, layer, ids, mask, batch_size)
    vectors = centroids(emb["forget", "calibration"], emb["retain", "calibration"])
    probe = GuardPolicy(layer, *vectors, threshold=0.0, tokens=[], phrases=[], penalty=math.inf)
    scores = {key: probe.scores(x) for key, x in emb.items()}
    threshold = calibrate(scores["forget", "calibration"], scores["retain", "calibration"], cfg)
    facts = {
        part: accuracy_at(scores["forget", part], scores["retain", part], threshold)
        for part in ("calibration", "held_out")
    }
    return vectors, threshold, facts


def fit_policy(model, adapter, tokenizer, splits: dict, cfg: GuardConfig, seed: int, batch_size: int = 8):
    """The guard policy of ``model`` for the ``forget`` and ``retain`` token splits of ``splits``, and the facts
    to record (forbidden tokens and phrases decoded, the detector's accuracy)."""
    n_layers = adapter.n_layers(model)
    layer = n_layers // 2 if cfg.layer is None else cfg.layer
    if layer >= n_layers:
        raise UnlearnError(f"guard layer {layer} is out of range: the model has {n_layers} layers (0-{n_layers - 1})")
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    tokens, phrases = forbidden(splits["forget"], splits["retain"], cfg, special)
    ids = [t["ids"][0] for t in tokens]
    near = semantic(model, ids, cfg.semantic_threshold, special) if cfg.semantic_threshold else []
    vectors, threshold, accuracy = fit_detector(model, adapter, layer, splits, cfg, seed, batch_size)
    penalty = math.inf if cfg.penalty == "inf" else float(cfg.penalty)
    how = (
        "threshold" if cfg.threshold is not None else "retain_quantile" if cfg.retain_quantile else "balanced accuracy"
    )
    info = {"seed": seed, "calibration": how}
    policy = GuardPolicy(
        layer,
        *vectors,
        threshold=threshold,
        tokens=ids,
        phrases=[p["ids"] for p in phrases],
        penalty=penalty,
        semantic=[s["id"] for s in near],
        info={**info, "detector": accuracy},
    )
    for item in tokens + phrases:
        item["text"] = tokenizer.decode(item["ids"])
    for item in near:
        item["text"], item["of_text"] = tokenizer.decode([item["id"]]), tokenizer.decode([item["of"]])
    facts = {
        "layer": layer,
        "threshold": round(threshold, 6),
        "penalty": cfg.penalty,
        "detector": accuracy,
        "forbidden_tokens": tokens,
        "semantic_tokens": near,
        "forbidden_phrases": phrases,
        "counts": {"tokens": len(tokens), "semantic": len(near), "phrases": len(phrases)},
    }
    return policy, facts


def flagged_share(policy: GuardPolicy, model, split, batch_size: int) -> float:
    """The share of ``split``'s chunks (whole, as next-token scoring sees them) that the detector flags."""
    flags = [policy.detect(model, ids) for ids, _ in split.batches(batch_size)]
    return round(float(torch.cat(flags).double().mean()), 4) if flags else 0.0


@register(
    "guard",
    GuardConfig,
    "generation-time guard: a detector flags prompts about the forget data and, there, forbidden tokens and "
    "phrases of the forget data are penalised in the logits; weights unchanged (GUARD)",
    budget=False,
)
def guard(ctx, cfg: GuardConfig) -> MethodResult:
    """Fit the policy on the run's training chunks and attach it; the model comes back with its weights unchanged
    and the policy's hooks on, so the run's evaluation after and its saved folder include it."""
    model = ctx.model
    if any(c.file == POLICY_FILE for c in components.attached(model)):
        raise UnlearnError("the model already carries a guard policy: guard on top of one is not supported")
    seed = ctx.config.seed % 2**63 if cfg.seed is None else cfg.seed
    splits = {which: ctx.training_split(which, cfg.tokens) for which in ("forget", "retain")}
    with ctx.reporter.stage("fitting the guard policy"):
        policy, facts = fit_policy(model, ctx.adapter, ctx.loaded.tokenizer, splits, cfg, seed, ctx.config.batch_size)
    if not policy.forbidden and not policy.phrases:
        raise UnlearnError(
            "guard found no token or phrase to forbid in the data (a policy that would change nothing): lower "
            "min_ratio or min_count, or give more forget text (tokens)"
        )
    named = {"forget": ctx.forget.eval, "retain": ctx.retain.eval}
    if ctx.utility is not None:
        named["utility"] = ctx.utility.eval
    facts["eval_flagged"] = {k: flagged_share(policy, model, s, ctx.config.batch_size) for k, s in named.items()}
    components.attach(model, policy)
    held = facts["detector"]["held_out"]
    return MethodResult(
        ablation=None,
        model=model,
        steps=[],
        stop_reason=(
            f"guard policy: {len(policy.forbidden)} forbidden tokens, {len(policy.phrases)} phrases; detector "
            f"balanced accuracy {held['balanced_accuracy']:.3f} on held-out prompts"
        ),
        extra={**facts, "policy_files": [f"model/{POLICY_FILE}", f"model/{TENSORS_FILE}"]},
    )
