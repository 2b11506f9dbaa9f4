"""UNDO for selective pruning ("Distillation robustifies unlearning", Lee et al. 2025): unlearn, noise, distil.

The unlearned model (pruned and healed) is the teacher. A student starts as a copy of it with its body weights
shrunk towards a fresh random initialisation, θ ← (1 − α)·θ + α·θ_init, which damages what the weights still
hold beneath the behaviour (the forgotten capability the relearning attack brings back); then it is distilled
on retain chunks, KL(teacher ‖ student) over the whole vocabulary, so it relearns only what the teacher still
shows. The pruned neurons stay ablated in both. α trades robustness for the distillation it takes to get the
utility back; the paper distils for much of a pretraining budget, far more than a CPU run affords.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def noised(model, alpha: float, seed: int, parameters) -> None:
    """Shrink and perturb ``parameters`` of ``model`` in place: θ ← (1 − α)·θ + α·θ_init, θ_init the weights a
    fresh model of the same configuration starts with (its own initialisation; seeded)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    fresh = AutoModelForCausalLM.from_config(model.config, dtype=next(model.parameters()).dtype)
    init = dict(fresh.named_parameters())
    chosen = {id(p) for p in parameters}
    for name, p in model.named_parameters():
        if id(p) in chosen:
            p.mul_(1 - alpha).add_(init[name].to(p.device), alpha=alpha)


def distil(ctx, model, ablation, cfg, retain_split):
    """The UNDO student of ``model`` (the unlearned teacher, with ``ablation``): noised by ``cfg.undo_alpha``
    and distilled from the teacher for ``cfg.undo_steps`` steps on ``retain_split``. Returns the training result."""
    from ..models.hooks import ablated
    from . import losses
    from .healing import body_parameters, frozen_copy, model_inputs, short_training
    from .training import TrainConfig, train

    teacher = frozen_copy(model, cfg)
    noised(model, cfg.undo_alpha, ctx.config.seed, body_parameters(model))
    view = short_training(ctx, retain_split, model=model)
    tcfg = TrainConfig(
        steps=cfg.undo_steps, lr=cfg.undo_lr, batch_size=cfg.heal_batch_size, checkpointing=cfg.heal_checkpointing
    )

    def loss(model, _forget, retain, _reference):
        with torch.no_grad():
            target = teacher(**model_inputs(retain)).logits
        logits = model(**model_inputs(retain)).logits
        return losses.kl_to_reference(logits, target, retain["labels"], overwrite=True), {}

    with ablated(model, ctx.adapter, ablation), ablated(teacher, ctx.adapter, ablation):
        return train(view, tcfg, loss, trainable=None if cfg.heal_embeddings else body_parameters)
