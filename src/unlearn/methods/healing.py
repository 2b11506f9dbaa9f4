"""Prune-then-heal (selective pruning's healing): train the pruned model on retain text with its pruned neurons
held at their ablated value, towards the original model's next-token distribution (KL) or the text's next tokens,
under a forget floor that keeps the forget data as unlikely as pruning left it (or more)."""

from __future__ import annotations

import contextlib
import copy

import torch

from ..models.hooks import Ablation
from .registry import MethodResult


FLOOR_TOKENS = 4096


def _floor_chunks(stats):
    """The chunks on which the forget floor's pruned forget NLL is measured: the first ``FLOOR_TOKENS`` of the
    statistics chunks (they come in shuffled order), not all of them: one forward pass over the default 8,192
    statistics tokens takes about 17 s on a 2-core AVX2 CPU."""
    from ..data.chunking import TokenSplit

    n = max(1, FLOOR_TOKENS // stats.input_ids.shape[1])
    return stats if n >= len(stats.input_ids) else TokenSplit(stats.input_ids[:n], stats.special[:n])


def model_inputs(batch) -> dict:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}


def vocabulary_parameters(model) -> list:
    """The token embeddings and the LM head (one tensor when they are tied)."""
    found = [m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    return list({id(p): p for p in found}.values())


def body_parameters(model) -> list:
    """The parameters other than the token embeddings and the LM head."""
    vocab = {id(p) for p in vocabulary_parameters(model)}
    return [p for p in model.parameters() if id(p) not in vocab]


def frozen_copy(model, cfg):
    """A frozen copy of ``model`` to distil from. The token embeddings and the LM head are shared with ``model``
    unless ``cfg.heal_embeddings`` (they then never train; 113 MB less for SmolLM2-135M in float32)."""
    kept = {} if cfg.heal_embeddings else {id(p): p for p in vocabulary_parameters(model)}
    return copy.deepcopy(model, memo=kept).eval().requires_grad_(False)


def short_training(ctx, retain_split, **overrides):
    """``ctx`` as a short training run on ``retain_split``: no checkpoints (it restarts on --resume), no budget."""
    from .context import TrainingData

    return ctx.training(
        retain=TrainingData(retain_split),
        save_checkpoint=None,
        resumed=None,
        budgeted=False,
        check_budget=None,
        **overrides,
    )


def heal(ctx, ablation: Ablation, cfg, retain_split) -> MethodResult:
    """Prune-then-heal: train the model on ``retain_split`` (the retain statistics chunks, or the
    ``heal_tokens`` chunks: :meth:`~unlearn.api.MethodContext.training_split`) with ``ablation`` applied: towards
    the next tokens (``heal_target="nll"``) or towards the model as it was before pruning, KL(original ‖ model)
    over the whole vocabulary (``"kl"``; the original is a frozen copy, or with ``heal_lora`` the same weights run
    with the adapters and the ablation hooks off). A pruned neuron's input to its output projection
    stays at its ablated value (0, or the constant retain mean), so that projection's column gets no gradient:
    the pruned neurons stay pruned, and the other weights relearn what the retain data lost with them.

    With ``heal_forget_weight`` g > 0 each step also scores a forget batch and adds g * max(0, floor - NLL_forget),
    floor = ``heal_floor_scale`` × the pruned model's mean forget NLL on the statistics chunks (their first
    ``FLOOR_TOKENS``): a hinge that is silent while the forget data stays that unlikely, and pushes back (gradient
    ascent, bounded) as soon as the forget loss falls below it. Returns the training result (the model, float32;
    ``extra["forget_floor"]``).
    """
    from ..data.chunking import tokens_sha256
    from ..eval.metrics import mean_loss
    from ..models.hooks import Switch, ablated
    from .training import TrainConfig, train

    tcfg = TrainConfig(
        steps=cfg.heal_steps,
        lr=cfg.heal_lr,
        batch_size=cfg.heal_batch_size,
        checkpointing=cfg.heal_checkpointing,
        lora=cfg.heal_lora,
        sam_rho=cfg.heal_sam_rho,
    )
    view = short_training(ctx, retain_split)
    switch = Switch()
    retain_loss = _retain_loss(ctx, cfg, switch)  # before the ablation hooks go on: KL's frozen copy is unpruned
    lora_hooks = contextlib.ExitStack()

    def ablate_lora_path(peft_model):
        # peft wraps each output projection in a LoRA layer whose adapter reads the projection's input beside the
        # wrapped layer: a hook on the wrapper ablates that input for both, so no pruned neuron leaks through it
        lora_hooks.enter_context(ablated(peft_model.get_base_model(), ctx.adapter, ablation, switch))

    with ablated(ctx.model, ctx.adapter, ablation, switch), lora_hooks:
        floor = None
        if cfg.heal_forget_weight:
            pruned_nll = mean_loss(ctx.model, _floor_chunks(ctx.forget.stats), batch_size=ctx.config.batch_size)
            floor = cfg.heal_floor_scale * pruned_nll
        result = train(
            view,
            tcfg,
            _floored(retain_loss, floor, cfg.heal_forget_weight),
            trainable=None if cfg.heal_embeddings else body_parameters,
            lora_init=ablate_lora_path if cfg.heal_lora else None,
        )
    result.extra["forget_floor"] = floor
    result.extra["heal_data"] = {"n_tokens": retain_split.n_tokens, "sha256": tokens_sha256(retain_split.input_ids)}
    return result


def _nll(model, batch):
    from .training import next_token_loss

    return next_token_loss(model, batch)[0]


def _retain_loss(ctx, cfg, switch):
    """The healing loss on a retain batch: next-token NLL, or KL to the model as it was before pruning."""
    from . import losses

    # KL healing distils from the model as it was before pruning: with LoRA, the same model with its adapters and
    # ablation hooks off; otherwise a frozen copy, taken before the ablation hooks go on
    original = frozen_copy(ctx.model, cfg) if cfg.heal_target == "kl" and not cfg.heal_lora else None

    def reference_logits(model, batch):
        with torch.no_grad():
            if original is not None:
                return original(**model_inputs(batch)).logits
            with getattr(model, "module", model).disable_adapter(), switch.off():
                return model(**model_inputs(batch)).logits

    def retain_loss(model, batch):
        if cfg.heal_target == "nll":
            return _nll(model, batch)
        logits = model(**model_inputs(batch)).logits
        return losses.kl_to_reference(logits, reference_logits(model, batch), batch["labels"], overwrite=True)

    return retain_loss


def _floored(retain_loss, floor: float | None, weight: float):
    """The training loss: ``retain_loss``, plus ``weight`` × the hinge max(0, floor − forget NLL) when a
    forget floor is set."""

    acted = [False]  # whether the hinge acted in the previous step

    def loss(model, forget, retain, _reference):
        r = retain_loss(model, retain)
        if floor is None:
            return r, {}
        # the hinge is silent (no gradient) while the forget loss is above the floor: then one forward pass
        # without a graph tells so, and the forward and backward passes of a graph are only paid when it acts.
        # After a step where it acted it most likely acts again, and the graph is built at once.
        if acted[0]:
            f = _nll(model, forget)
        else:
            with torch.no_grad():
                f = _nll(model, forget)
            if f < floor:
                f = _nll(model, forget)
        acted[0] = bool(f < floor)
        return r + weight * torch.relu(floor - f), {"retain_loss": r.detach(), "forget_loss": f.detach()}

    return loss
