"""Selective pruning (Pochinkov & Schoots, "Dissecting Language Models: Machine Unlearning via Selective
Pruning", 2024): ablate the neurons that are much more important on the forget data than on the retain data.

Per step: collect per-neuron statistics on the forget and retain statistics chunks, score every neuron by
``I_forget / (I_retain + eps)``, ablate the top ``ff_frac`` of feed-forward and ``attn_frac`` of attention
neurons (across all layers, or within each layer), evaluate, and repeat — statistics are re-collected on the
pruned model unless ``recollect`` is off.

Then, by default, heal (:mod:`.healing`): a few training steps on retain text with the pruned neurons held pruned —
towards the original model's next-token distribution (KL distillation) or the text's next tokens — under a forget
floor that keeps the forget data at least ``heal_floor_scale`` times as unlikely as pruning left it. The defaults
(one step of 0.5 % of the feed-forward neurons, no attention neurons, 8 KL healing steps, floor 2×) were chosen on
prose the run never saw in ``bench/efficacy.py`` (issue 16); ``heal_steps=0`` prunes only, and the ``paper``
preset is the published algorithm. With ``undo_alpha`` the result is then distilled into a noised copy of itself
(UNDO, :mod:`.undo`).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import UnlearnError
from ..models.adapters import ALL_KINDS
from ..models.hooks import Ablation
from .registry import MethodResult, register
from .training import lora_spec


class SelectivePruningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    importance: Literal["freq", "abs", "rms", "std", "random"] = Field(
        "rms",
        description="per-neuron importance: freq=P(x>0), abs=E|x|, rms=sqrt(E x^2), std=standard deviation; random: "
        "a control that prunes the same number of neurons chosen at random (seeded), with no statistics",
    )
    ff_frac: float = Field(0.005, ge=0, lt=1, description="fraction of all feed-forward neurons pruned per step")
    attn_frac: float = Field(0.0, ge=0, lt=1, description="fraction of all attention neurons pruned per step")
    expert_frac: float = Field(
        0.0, ge=0, lt=1, description="fraction of all expert neurons (mixture-of-experts models) pruned per step"
    )
    steps: int = Field(1, ge=1, le=1000, description="number of pruning steps (the most, when a budget is set)")
    scope: Literal["global", "layer"] = Field("global", description="rank neurons across all layers or per layer")
    ablation: Literal["zero", "mean"] = Field("zero", description="set pruned neurons to 0 or to their retain mean")
    eps_ff: float = Field(1e-3, gt=0, description="eps in I_forget / (I_retain + eps) for ff and expert neurons")
    eps_attn: float = Field(1e-4, gt=0, description="eps in I_forget / (I_retain + eps) for attention neurons")
    recollect: bool = Field(True, description="re-collect statistics on the pruned model before every step")
    heal_steps: int = Field(
        8,
        ge=0,
        le=100_000,
        description="after pruning, optimizer steps of next-token training on retain chunks (heal_tokens) with "
        "the pruned neurons held at their ablated value (prune-then-heal; 0 = prune only)",
    )
    heal_lr: float = Field(2e-4, gt=0, lt=1, description="learning rate of the healing steps (AdamW)")
    heal_batch_size: int = Field(2, ge=1, description="retain (and forget) chunks per healing step")
    heal_embeddings: bool = Field(
        False,
        description="train the token embeddings and the LM head too while healing (off: they keep their weights; "
        "for SmolLM2-135M, whose two are one tied matrix, 28M fewer trained parameters and about 0.4 GiB less "
        "memory)",
    )
    heal_checkpointing: bool = Field(
        True,
        description="activation checkpointing while healing: recompute each layer's activations in the backward "
        "pass (about 1 GiB less memory on SmolLM2-135M, about a third more compute per healing step)",
    )
    heal_target: Literal["nll", "kl"] = Field(
        "kl",
        description="what healing fits on the retain chunks: nll = their next tokens; kl = the original model's "
        "whole next-token distribution, KL(original ‖ model) (distillation: keeps the model's calibration instead "
        "of sharpening it towards the retain text; one more forward pass per step, and a copy of the model)",
    )
    heal_sam_rho: float = Field(
        0.0,
        ge=0,
        lt=10,
        description="sharpness-aware healing: each healing step's gradient is taken ρ away along the loss's "
        "steepest rise (SAM; with the forget floor, towards making the forget data likelier again), so the "
        "healed model sits where small weight changes move it little (0 = off; twice the compute per step)",
    )
    heal_lora: str | None = Field(
        None,
        description="heal LoRA adapters instead of the whole body ('r=16[,alpha=32,targets=a;b]'), merged into the "
        "saved weights: a cheaper backward pass (no weight gradients of the frozen body) and no optimizer state",
    )
    heal_tokens: int = Field(
        16384,
        ge=0,
        le=100_000_000,
        description="retain tokens to heal on, at most: the statistics chunks, then the retain chunks after them "
        "(fewer if the corpus has no more; 0 = the statistics chunks only)",
    )
    heal_forget_weight: float = Field(
        1.0,
        ge=0,
        le=1000,
        description="weight g of a forget floor while healing: the loss adds g * max(0, floor - forget NLL), "
        "floor = the pruned model's forget NLL on the statistics chunks: healing may not make them likelier "
        "than pruning left them (0 = retain loss only)",
    )

    heal_floor_scale: float = Field(
        2.0,
        ge=1,
        le=100,
        description="the forget floor is this multiple of the pruned model's forget NLL: 1 keeps the forget data "
        "as unlikely as pruning left it; above 1 the hinge pushes it further (bounded gradient ascent)",
    )

    undo_alpha: float = Field(
        0.0,
        ge=0,
        le=1,
        description="UNDO: after healing, shrink the body's weights towards a fresh random initialisation, "
        "θ ← (1 − α)·θ + α·θ_init, and distil the unlearned model into that copy (undo_steps of KL on the healing "
        "chunks): what the weights still hid beneath the behaviour is damaged, the behaviour comes back "
        "(Lee et al. 2025; 0 = off)",
    )
    undo_steps: int = Field(50, ge=1, le=100_000, description="UNDO: distillation steps (with undo_alpha)")
    undo_lr: float = Field(2e-4, gt=0, lt=1, description="UNDO: learning rate of the distillation (AdamW)")

    _lora_syntax = field_validator("heal_lora")(lora_spec)

    @model_validator(mode="after")
    def _something_to_prune(self):
        if self.ff_frac <= 0 and self.attn_frac <= 0 and self.expert_frac <= 0:
            raise ValueError("ff_frac and attn_frac are both 0 (expert_frac too): set at least one in (0, 1)")
        if self.undo_alpha and not self.heal_steps:
            raise ValueError("undo_alpha distils the healed model: set heal_steps ≥ 1")
        return self

    def fraction(self, kind: str) -> float:
        return {"ff": self.ff_frac, "attn": self.attn_frac}.get(kind, self.expert_frac)

    def eps(self, kind: str) -> float:
        return self.eps_attn if kind == "attn" else self.eps_ff


def scores(forget_stats, retain_stats, cfg: SelectivePruningConfig, kind: str) -> dict[int, torch.Tensor]:
    """Score = I_forget / (I_retain + eps) per neuron, per layer, for one kind of neuron."""
    out = {}
    for (k, layer), fs in forget_stats.items():
        if k == kind:
            rs = retain_stats[(k, layer)]
            out[layer] = fs.importance(cfg.importance) / (rs.importance(cfg.importance) + cfg.eps(kind))
    return out


def select(
    layer_scores: dict[int, torch.Tensor], already: Ablation, kind: str, frac: float, scope: str
) -> dict[int, torch.Tensor]:
    """Indices to prune per layer: the top ``frac`` of all neurons of this kind (global) or of each layer.

    Already pruned neurons are never chosen again; ties are broken by position (stable sort) so the result is
    deterministic.
    """
    layers = sorted(layer_scores)
    masked = []
    for layer in layers:
        s = layer_scores[layer].clone().double()
        s[torch.isnan(s)] = -torch.inf
        done = already.pruned.get((kind, layer))
        if done is not None:
            s[done] = -torch.inf
        masked.append(s)
    chosen: dict[int, torch.Tensor] = {}
    if scope == "layer":
        for layer, s in zip(layers, masked):
            k = min(round(frac * len(s)), int(torch.isfinite(s).sum()))
            if k > 0:
                chosen[layer] = torch.sort(s, descending=True, stable=True).indices[:k]
        return chosen
    flat = torch.cat(masked)
    k = min(round(frac * len(flat)), int(torch.isfinite(flat).sum()))
    top = torch.sort(flat, descending=True, stable=True).indices[:k]
    offsets = [0]
    for s in masked:
        offsets.append(offsets[-1] + len(s))
    for layer, start, end in zip(layers, offsets[:-1], offsets[1:]):
        idx = top[(top >= start) & (top < end)] - start
        if len(idx):
            chosen[layer] = idx.sort().values
    return chosen


@register(
    "selective-pruning",
    SelectivePruningConfig,
    "prune neurons far more active on forget than on retain data (Pochinkov & Schoots 2024)",
)
def run(ctx, cfg: SelectivePruningConfig) -> MethodResult:
    kinds = [k for k in ALL_KINDS if cfg.fraction(k) > 0]
    _check_fractions(ctx, cfg, kinds)
    # the healing chunks, tokenised before pruning: a bad source fails before the slow part
    heal_data = ctx.training_split("retain", cfg.heal_tokens) if cfg.heal_steps else None
    ablation = Ablation()
    steps: list[dict] = []
    forget_stats = retain_stats = None
    current = ctx.baseline
    stop_reason = f"completed {cfg.steps} steps"
    resumed = ctx.resumed
    if resumed is not None:  # an interrupted run: continue after its last completed step
        ablation, steps, current = resumed["ablation"], resumed["steps"], resumed["current"]
    control = torch.Generator().manual_seed(ctx.config.seed) if cfg.importance == "random" else None
    for _ in range(len(steps) if control is not None else 0):  # resumed: the draws of the steps already done
        _random_scores(ctx, kinds, control)
    for step in range(len(steps) + 1, cfg.steps + 1):
        if control is not None:  # the random control: statistics only for mean ablation's fill values
            if cfg.ablation == "mean" and retain_stats is None:
                retain_stats = ctx.statistics("retain", Ablation(), kinds, needs=("mean",))
        elif forget_stats is None or cfg.recollect:
            at = ablation if cfg.recollect else Ablation()  # without re-collection: the unpruned model's, once
            forget_stats = ctx.statistics("forget", at, kinds, needs=(cfg.importance,))
            retain_stats = ctx.statistics(
                "retain",
                at,
                kinds,
                needs=(cfg.importance, "mean") if cfg.ablation == "mean" else (cfg.importance,),
            )
        previous = ablation.copy()
        randoms = _random_scores(ctx, kinds, control) if control is not None else None
        added = _prune(ctx, cfg, kinds, ablation, forget_stats, retain_stats, randoms)
        if not any(added.values()):
            stop_reason = "no neurons left to prune"
            break
        reason, validation = ctx.check_budget(ablation)
        metrics = ctx.evaluate(ablation, label=f"step {step}")
        record = {
            "step": step,
            "pruned_this_step": added,
            "pruned_total": {k: ablation.total(k) for k in kinds},
            **metrics,
        }
        if validation is not None:
            record["validation"] = validation
        if reason and reason.startswith("budget"):
            record["reverted"] = True
            steps.append(record)
            ablation = previous
            stop_reason = reason + f"; step {step} reverted"
            break
        steps.append(record)
        current = metrics
        if reason:
            stop_reason = reason
            break
        if step < cfg.steps:  # a no-op in a context without a run folder
            ctx.save_checkpoint({"ablation": ablation, "steps": steps, "current": current})
    return _healed(
        ctx, cfg, MethodResult(ablation=ablation, steps=steps, stop_reason=stop_reason, final=current), heal_data
    )


def _check_fractions(ctx, cfg: SelectivePruningConfig, kinds: list[str]) -> None:
    """An error when a pruning fraction rounds to no neuron at all."""
    for kind in kinds:
        name = f"{kind}_frac"
        per_layer = ctx.adapter.n_neurons(ctx.model, kind)  # an error where the model has none of this kind
        pool = per_layer if cfg.scope == "layer" else per_layer * ctx.adapter.n_layers(ctx.model)
        if round(cfg.fraction(kind) * pool) < 1:
            raise UnlearnError(
                f"{name} {cfg.fraction(kind)} prunes no neuron: it is less than one of the {pool} "
                f"{'per layer' if cfg.scope == 'layer' else 'in the model'}; raise it"
            )


def _random_scores(ctx, kinds, generator) -> dict[str, dict[int, torch.Tensor]]:
    """The random control's scores: uniform draws per neuron, per kind and layer, from the run's seeded
    generator (one draw per step, so the same seed prunes the same neurons)."""
    n_layers = ctx.adapter.n_layers(ctx.model)
    return {
        kind: {
            layer: torch.rand(ctx.adapter.n_neurons(ctx.model, kind), generator=generator) for layer in range(n_layers)
        }
        for kind in kinds
    }


def _prune(
    ctx, cfg: SelectivePruningConfig, kinds, ablation: Ablation, forget_stats, retain_stats, randoms=None
) -> dict:
    """Add one step's neurons of each kind to ``ablation`` (in place); how many were added per kind. ``randoms``:
    the random control's scores in place of the importance ratio."""
    added = {}
    for kind in kinds:
        layer_scores = randoms[kind] if randoms is not None else scores(forget_stats, retain_stats, cfg, kind)
        chosen = select(layer_scores, ablation, kind, cfg.fraction(kind), cfg.scope)
        added[kind] = sum(len(v) for v in chosen.values())
        n = ctx.adapter.n_neurons(ctx.model, kind)
        for layer, idx in chosen.items():
            values = retain_stats[(kind, layer)].mean[idx] if cfg.ablation == "mean" else torch.zeros(len(idx))
            ablation.add((kind, layer), idx, values, n)
    return added


def _healed(ctx, cfg: SelectivePruningConfig, pruned: MethodResult, heal_data) -> MethodResult:
    """The pruning result, healed on ``heal_data`` when healing is on and some neuron was pruned."""
    ablation, stop_reason = pruned.ablation, pruned.stop_reason
    pruned_any = any(ablation.total(k) for k in ALL_KINDS)
    if cfg.heal_steps and not pruned_any:
        pruned.stop_reason += "; nothing pruned, so not healed"  # e.g. a budget undid the first step
    if not cfg.heal_steps or not pruned_any:
        return pruned
    from .healing import heal

    healed = heal(ctx, ablation, cfg, heal_data)
    stop_reason += f"; healed {cfg.heal_steps} steps on retain"
    extra = {
        "heal_seconds": healed.extra["train_seconds"],
        "before_heal": pruned.final,
        "heal_data": healed.extra["heal_data"],
    }
    if healed.extra["forget_floor"] is not None:
        stop_reason += f" with a forget floor (NLL {healed.extra['forget_floor']:.3f})"
        extra["heal_forget_floor"] = healed.extra["forget_floor"]
    model, log = healed.model, healed.log
    if cfg.undo_alpha:
        from .undo import distil

        undone = distil(ctx, model, ablation, cfg, heal_data)
        model = undone.model
        log = log + [{**r, "step": r["step"] + len(healed.log), "phase": "undo"} for r in undone.log]
        stop_reason += f"; distilled into a copy noised by α = {cfg.undo_alpha:g} for {cfg.undo_steps} steps (UNDO)"
        extra["undo_seconds"] = undone.extra["train_seconds"]
    return MethodResult(
        ablation=ablation, steps=pruned.steps, stop_reason=stop_reason, model=model, log=log, extra=extra
    )
