"""UOE, unlearning one expert (Zhuang et al. 2024, "UOE: Unlearning One Expert Is Enough for Mixture-of-Experts
LLMs", arXiv:2411.18797; published as SEUF, ACL 2025) on mixture-of-experts models.

1. Expert attribution: the forget statistics chunks run through the model; each expert's *affinity* is its mean
   router probability over the forget tokens (:func:`~unlearn.models.experts.routing`).
2. The most engaged expert (over all layers, of one layer, or the top one of every layer) is the only part of the
   model that unlearns, with an inner trained loss (gradient ascent, gradient difference, NPO, SimNPO or WGA, as
   :mod:`~unlearn.methods.trained` and :mod:`~unlearn.methods.peers` compute them); its layer's router trains too.
   The experts are fused 3-D tensors, so the whole tensor is handed to the optimizer and a gradient mask keeps
   every other expert's slice still.
3. An anchor on the router: anchor_weight · mean over the forget tokens of (p_e(x) − p⁰_e(x))², p_e the router
   probability of the target expert and p⁰ the frozen original's — the router may not route the forget data away
   from the expert being unlearnt (the shortcut that, the paper finds, makes standard methods forget the wrong
   experts and damage utility). The squared-difference form is this project's reading of the paper's anchor.

``MethodResult.extra`` records the targets, every expert's affinity, the trained share of the model and the
routing shift: how many forget and retain tokens (their evaluation chunks) change their top-k experts.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from ..errors import UnlearnError
from ..models.experts import Routing, captured, routing, routing_shift, top_k
from . import losses as L
from .registry import register
from .trained import combine, forward_logits, retain_term
from .training import TrainConfig, train

Inner = Literal["gradient-ascent", "graddiff", "npo", "simnpo", "wga"]
BETA = {"npo": 0.1, "simnpo": 2.5, "wga": 1.0}  # the defaults of the methods of these names


class UOEConfig(TrainConfig):
    inner: Inner = Field("npo", description="the unlearning loss the expert trains with (as the method of that name)")
    layer: Literal["top", "each"] | int = Field(
        "top",
        description="which experts unlearn: top = the one with the highest forget affinity over all layers (the "
        "paper's single expert); each = the top expert of every layer; a layer index = that layer's top expert",
    )
    anchor_weight: float = Field(
        100.0,
        ge=0,
        description="weight of the router anchor (p_target − p_target original)² on forget tokens (0: off; "
        "100: chosen on bench/moe.py, where 1 left the target's routing as without an anchor)",
    )
    train_router: bool = Field(True, description="train the target layer's router too (the anchor holds it)")
    gamma: float = Field(1.0, gt=0, description="weight of the forget term")
    alpha: float = Field(1.0, ge=0, description="weight of the retain term (not with inner=gradient-ascent)")
    retain_loss: Literal["nll", "kl"] = Field("nll", description="retain term: NLL, or KL to the frozen original")
    beta: float | None = Field(
        None, gt=0, description="β of npo / simnpo / wga (default: that method's, 0.1 / 2.5 / 1.0)"
    )
    delta: float = Field(0.0, ge=0, description="SimNPO's reward margin δ")

    @model_validator(mode="after")
    def _fused_experts(self):
        if self.weight_decay:
            raise ValueError("weight_decay must be 0: the fused expert tensors would decay every frozen expert too")
        if self.lora:
            raise ValueError("uoe trains one expert's slice of fused tensors directly: lora is not supported")
        if isinstance(self.layer, int) and self.layer < 0:
            raise ValueError("layer must be top, each or a layer index >= 0")
        return self


def attribute(forget: Routing, layer: str | int) -> list[tuple[int, int]]:
    """The (layer, expert) pairs to unlearn from the forget data's mean router probabilities ``forget.probs``
    [layers, E]: the highest over all layers (``top``), each layer's highest (``each``) or layer ``layer``'s.
    Ties go to the lower index."""
    probs = forget.probs
    if layer == "top":
        flat = int(torch.argmax(probs))
        return [divmod(flat, probs.shape[1])]
    if layer == "each":
        return [(i, int(torch.argmax(row))) for i, row in enumerate(probs)]
    if layer >= probs.shape[0]:
        raise UnlearnError(f"uoe: layer {layer} does not exist (the model has {probs.shape[0]} layers)")
    return [(layer, int(torch.argmax(probs[layer])))]


def anchor(probs: list[torch.Tensor], original: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Mean over targets of the mean over ``mask``ed tokens of (p − p⁰)²: each target expert's router probability
    ``probs[i]`` [tokens] held at the original's ``original[i]``."""
    mask = mask.reshape(-1)
    n = mask.sum().clamp_min(1)
    terms = [((p.reshape(-1) - p0.reshape(-1).detach()).square() * mask).sum() / n for p, p0 in zip(probs, original)]
    return torch.stack(terms).mean()


def forget_term(cfg: UOEConfig, logits, labels, ref_logits=None) -> torch.Tensor:
    """The inner method's forget loss on one forget batch."""
    beta = cfg.beta if cfg.beta is not None else BETA.get(cfg.inner)
    if cfg.inner in ("gradient-ascent", "graddiff"):
        return -L.nll(logits, labels)
    if cfg.inner == "npo":
        logp, _ = L.sequence_logprob(logits, labels)
        ref_logp, _ = L.sequence_logprob(ref_logits, labels)
        return L.npo(logp, ref_logp, beta)
    if cfg.inner == "simnpo":
        logp, n = L.sequence_logprob(logits, labels)
        return L.simnpo(logp, n, beta, cfg.delta)
    return L.wga(logits, labels, beta)


def _target_probs(seen: dict, targets) -> list[torch.Tensor]:
    """Each target's router probability on the tokens of the last forward pass ({layer: [(logits, chosen)]})."""
    return [torch.softmax(seen[layer][-1][0].float(), -1)[:, expert] for layer, expert in targets]


def _loss(ctx, cfg: UOEConfig, targets):
    """The training loss: γ · inner forget term + α · retain term + anchor_weight · router anchor."""
    layers = sorted({layer for layer, _ in targets})
    routers = {layer: ctx.adapter.router_of(ctx.model, layer) for layer in layers}
    k, needs_logits = top_k(ctx.model), cfg.inner == "npo"

    def loss(model, forget, retain, reference):
        with captured(routers, k) as seen:
            logits = forward_logits(model, forget)
        ref_logits, terms = None, {}
        if cfg.anchor_weight or needs_logits:
            plain = getattr(reference, "module", reference)
            ref_routers = {layer: ctx.adapter.router_of(plain, layer) for layer in layers}
            with torch.no_grad(), captured(ref_routers, k) as ref_seen:
                ref_logits = forward_logits(reference, forget)
        f = forget_term(cfg, logits, forget["labels"], ref_logits)
        kind = "none" if cfg.inner == "gradient-ascent" or not cfg.alpha else cfg.retain_loss
        total, parts = combine(f, retain_term(kind, model, retain, reference), cfg.gamma, cfg.alpha)
        if cfg.anchor_weight:
            terms["anchor_loss"] = anchor(
                _target_probs(seen, targets), _target_probs(ref_seen, targets), forget["labels"] != L.IGNORE
            )
            total = total + cfg.anchor_weight * terms["anchor_loss"]
        return total, {**parts, **{n: t.detach() for n, t in terms.items()}}

    return loss


def _trainable(ctx, cfg: UOEConfig, targets, handles: list):
    """The ``trainable`` callback of :func:`train`: the target experts' fused tensors (a gradient mask keeps the
    other experts' slices at zero gradient) and, with ``train_router``, their layers' routers."""

    def params(model):
        out = []
        for layer in sorted({layer for layer, _ in targets}):
            experts = ctx.adapter.experts_of(model, layer)
            n_experts = experts.down_proj.shape[0]
            keep = torch.zeros(n_experts, dtype=torch.bool)
            keep[[e for t_layer, e in targets if t_layer == layer]] = True
            for p in experts.parameters(recurse=False):
                if p.shape[0] == n_experts:  # one slice per expert
                    p.requires_grad_(True)
                    mask = keep.to(p.device).view(-1, *[1] * (p.dim() - 1))
                    handles.append(p.register_hook(lambda g, mask=mask: g * mask.to(g.dtype)))
                    out.append(p)
            if cfg.train_router:
                out += list(ctx.adapter.router_of(model, layer).parameters())
        return out

    return params


def _trained_share(ctx, targets, cfg: UOEConfig) -> dict:
    """How many parameters unlearn: the target experts' slices and (with ``train_router``) their routers."""
    total = sum(p.numel() for p in ctx.model.parameters())
    n = 0
    for layer, _expert in targets:
        experts = ctx.adapter.experts_of(ctx.model, layer)
        n_experts = experts.down_proj.shape[0]
        n += sum(p[0].numel() for p in experts.parameters(recurse=False) if p.shape[0] == n_experts)
    if cfg.train_router:
        n += sum(
            p.numel() for layer in {t[0] for t in targets} for p in ctx.adapter.router_of(ctx.model, layer).parameters()
        )
    return {"parameters": n, "share": round(n / total, 6)}


@register(
    "uoe",
    UOEConfig,
    "unlearn only the expert most engaged by the forget data, router anchored (MoE models; Zhuang et al. 2024)",
)
def uoe(ctx, cfg: UOEConfig):
    if not ctx.adapter.has("expert"):
        raise UnlearnError(f"uoe needs a mixture-of-experts model; {ctx.config.model} has no experts")
    batch = ctx.config.batch_size
    attribution = routing(ctx.model, ctx.adapter, ctx.forget.stats, batch)
    targets = attribute(attribution, cfg.layer)
    before = {w: routing(ctx.model, ctx.adapter, ctx.corpus(w).eval, batch) for w in ("forget", "retain")}
    share = _trained_share(ctx, targets, cfg)
    ctx.reporter.log(
        "uoe: unlearning "
        + ", ".join(f"expert {e} of layer {layer}" for layer, e in targets)
        + f" ({share['share']:.3%} of the parameters)"
    )
    handles: list = []
    needs_reference = bool(cfg.anchor_weight) or cfg.inner == "npo" or (cfg.retain_loss == "kl" and cfg.alpha > 0)
    try:
        result = train(
            ctx.training(),
            cfg,
            _loss(ctx, cfg, targets),
            needs_reference=needs_reference,
            trainable=_trainable(ctx, cfg, targets, handles),
        )
    finally:
        for h in handles:
            h.remove()
    after = {w: routing(result.model, ctx.adapter, ctx.corpus(w).eval, batch) for w in ("forget", "retain")}
    result.extra.update(
        targets=[
            {"layer": layer, "expert": e, "affinity": round(float(attribution.probs[layer, e]), 6)}
            for layer, e in targets
        ],
        affinity=attribution.summary(),
        trained=share,
        routing_shift={w: routing_shift(before[w], after[w], targets[0]) for w in before},
    )
    return result
