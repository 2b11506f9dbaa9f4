"""Trained unlearning methods: gradient ascent, gradient difference, NPO, SimNPO, RMU and the inverted hinge loss.

Each is a config (the shared :class:`~unlearn.methods.training.TrainConfig` plus its own parameters, defaults
from the original paper or code) and a loss on one forget and one retain micro-batch; all run on
:func:`~unlearn.methods.training.train`.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from ..errors import UnlearnError
from . import losses as L
from .registry import register
from .context import TrainingData
from .training import TrainConfig, train

RetainLoss = Literal["none", "nll", "kl"]


def forward_logits(model, batch):
    """The model's logits on ``batch``. The losses take them with ``overwrite=True`` wherever nothing else reads
    them: the backward pass then writes their gradient over them, a vocabulary-sized tensor less per term."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits


def retain_term(kind: str, model, batch, reference) -> torch.Tensor | None:
    if kind == "none":
        return None
    logits = forward_logits(model, batch)
    if kind == "nll":
        return L.nll(logits, batch["labels"], overwrite=True)
    with torch.no_grad():
        ref = forward_logits(reference, batch)
    return L.kl_all_positions(logits, ref)


def combine(forget: torch.Tensor, retain: torch.Tensor | None, gamma: float, alpha: float):
    parts = {"forget_loss": forget.detach()}
    if retain is None:
        return gamma * forget, parts
    parts["retain_loss"] = retain.detach()
    return gamma * forget + alpha * retain, parts


class GradientAscentConfig(TrainConfig):
    pass


@register("gradient-ascent", GradientAscentConfig, "gradient ascent: maximise the forget NLL (Jang et al. 2023)")
def gradient_ascent(ctx, cfg: GradientAscentConfig):
    def loss(model, forget, retain, reference):
        f = -L.nll(forward_logits(model, forget), forget["labels"], overwrite=True)
        return f, {"forget_loss": f.detach()}

    return train(ctx.training(), cfg, loss)


class GradDiffConfig(TrainConfig):
    gamma: float = Field(1.0, gt=0, description="weight of the forget term (−NLL on forget)")
    alpha: float = Field(1.0, ge=0, description="weight of the retain term")
    retain_loss: Literal["nll", "kl"] = Field("nll", description="retain term: NLL, or KL to the frozen original")


@register("graddiff", GradDiffConfig, "gradient difference: γ·(−NLL forget) + α·(NLL or KL) retain (Liu et al. 2022)")
def graddiff(ctx, cfg: GradDiffConfig):
    def loss(model, forget, retain, reference):
        f = -L.nll(forward_logits(model, forget), forget["labels"], overwrite=True)
        return combine(f, retain_term(cfg.retain_loss, model, retain, reference), cfg.gamma, cfg.alpha)

    return train(ctx.training(), cfg, loss, needs_reference=cfg.retain_loss == "kl")


class RetainTermConfig(TrainConfig):
    """Methods with an optional retain term: α · (NLL on retain, or KL(original ‖ model) on retain)."""

    alpha: float = Field(1.0, ge=0, description="weight of the retain term")
    retain_loss: RetainLoss = Field("nll", description="retain term: none, NLL, or KL to the frozen original")


class NPOConfig(RetainTermConfig):
    beta: float = Field(0.1, gt=0, description="inverse temperature β (NPO paper: 0.1)")


@register("npo", NPOConfig, "negative preference optimisation against the frozen original (Zhang et al. 2024)")
def npo(ctx, cfg: NPOConfig):
    def loss(model, forget, retain, reference):
        logp, _ = L.sequence_logprob(forward_logits(model, forget), forget["labels"], overwrite=True)
        with torch.no_grad():
            ref_logp, _ = L.sequence_logprob(forward_logits(reference, forget), forget["labels"])
        f = L.npo(logp, ref_logp, cfg.beta)
        return combine(f, retain_term(cfg.retain_loss, model, retain, reference), 1.0, cfg.alpha)

    return train(ctx.training(), cfg, loss, needs_reference=True)


class SimNPOConfig(RetainTermConfig):
    beta: float = Field(2.5, gt=0, description="inverse temperature β (SimNPO paper, TOFU: 2.5)")
    delta: float = Field(0.0, ge=0, description="reward margin δ (SimNPO paper, TOFU: 0)")


@register("simnpo", SimNPOConfig, "SimNPO: reference-free, length-normalised NPO (Fan et al. 2024)")
def simnpo(ctx, cfg: SimNPOConfig):
    def loss(model, forget, retain, reference):
        logp, n = L.sequence_logprob(forward_logits(model, forget), forget["labels"], overwrite=True)
        f = L.simnpo(logp, n, cfg.beta, cfg.delta)
        return combine(f, retain_term(cfg.retain_loss, model, retain, reference), 1.0, cfg.alpha)

    return train(ctx.training(), cfg, loss, needs_reference=cfg.retain_loss == "kl")


class IHLConfig(TrainConfig):
    alpha: float = Field(1.0, ge=0, description="weight of the retain NLL term")
    fila: bool = Field(False, description="initialise the LoRA adapters with FILA (needs lora; Cha et al. 2024)")
    fila_batches: int = Field(8, ge=1, description="batches per Fisher estimate for FILA (forget and retain)")

    @model_validator(mode="after")
    def _fila_needs_lora(self):
        if self.fila and not self.lora:
            raise ValueError("fila initialises LoRA adapters: set lora too (e.g. lora=r=16)")
        return self


@register("ihl", IHLConfig, "inverted hinge loss on forget + NLL on retain, optionally FILA-initialised LoRA")
def ihl(ctx, cfg: IHLConfig):
    def loss(model, forget, retain, reference):
        f = L.inverted_hinge(forward_logits(model, forget), forget["labels"])
        return combine(f, retain_term("nll", model, retain, None), 1.0, cfg.alpha)

    init = None
    if cfg.fila:
        from .edits import fisher_diagonal
        from .fila import fila_init

        model = ctx.model.float()
        kw = dict(batch_size=cfg.batch_size, max_batches=cfg.fila_batches, seed=ctx.config.seed, per_token=True)
        fisher_f = fisher_diagonal(model, ctx.forget.stats, **kw)
        fisher_r = fisher_diagonal(model, ctx.retain.stats, **kw)

        def init(peft_model):
            fila_init(peft_model, fisher_f, fisher_r)

    return train(ctx.training(), cfg, loss, lora_init=init)


class RMUConfig(TrainConfig):
    lr: float = Field(5e-5, gt=0, lt=1, description="learning rate (WMDP RMU: 5e-5)")
    layer: int | None = Field(
        None, ge=0, description="layer ℓ whose output is steered (default: 7 of 32 in WMDP, scaled to the depth)"
    )
    update_layers: list[int] | None = Field(
        None, description="layers whose MLP output projection trains (default ℓ−2, ℓ−1, ℓ as in WMDP)"
    )
    steering_coef: float | None = Field(
        None, gt=0, description="c, the norm of the random target (default: 2 × the mean activation norm at layer ℓ)"
    )
    alpha: float = Field(100.0, ge=0, description="weight of the retain term (activation MSE to the frozen model)")

    @model_validator(mode="after")
    def _layers_valid(self):
        if self.update_layers is not None and (not self.update_layers or min(self.update_layers) < 0):
            raise ValueError("update_layers must be a non-empty list of layer indices")
        return self


@register("rmu", RMUConfig, "representation misdirection: steer layer-ℓ forget activations to noise (Li et al. 2024)")
def rmu(ctx, cfg: RMUConfig):
    n_layers = ctx.adapter.n_layers(ctx.model)
    layer = cfg.layer if cfg.layer is not None else max(0, min(n_layers - 1, round(7 * n_layers / 32)))
    update = (
        cfg.update_layers if cfg.update_layers is not None else [i for i in (layer - 2, layer - 1, layer) if i >= 0]
    )
    if layer >= n_layers or max(update) >= n_layers:
        raise UnlearnError(f"rmu: layer {max(layer, *update)} does not exist (the model has {n_layers} layers)")
    gen = torch.Generator().manual_seed(ctx.config.seed)
    direction = torch.rand(ctx.model.config.hidden_size, generator=gen)
    direction = direction / direction.norm()
    coef = cfg.steering_coef or _default_coef(ctx, layer)
    control = coef * direction

    def hidden(model, batch):
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=True,
            use_cache=False,
        )
        return out.hidden_states[layer + 1]  # hidden_states[0] are the embeddings

    def loss(model, forget, retain, reference):
        mask_f, mask_r = forget["labels"] != -100, retain["labels"] != -100
        f = L.rmu_forget(hidden(model, forget), control.to(forget["input_ids"].device), mask_f)
        with torch.no_grad():
            frozen = hidden(reference, retain)
        r = L.rmu_retain(hidden(model, retain), frozen, mask_r)
        return combine(f, r, 1.0, cfg.alpha)

    def trainable(model):
        return [ctx.adapter.out_proj(model, i, "ff").weight for i in update]

    if cfg.lora and "targets=" not in cfg.lora:  # LoRA on the same projections RMU would train
        names = {id(m): n for n, m in ctx.model.named_modules()}
        targets = ";".join(names[id(ctx.adapter.out_proj(ctx.model, i, "ff"))] for i in update)
        cfg = cfg.model_copy(update={"lora": f"{cfg.lora},targets={targets}"})
    result = train(ctx.training(), cfg, loss, needs_reference=True, trainable=trainable)
    result.extra.update(layer=layer, update_layers=update, steering_coef=coef)
    return result


@torch.no_grad()
def _default_coef(ctx, layer: int) -> float:
    """c = 2 × the mean L2 norm of layer-ℓ activations of (non-special) forget tokens: a target clearly off the
    data's distribution yet of comparable size. WMDP hand-tuned c = 6.5 for Zephyr-7B; a fixed number does not
    carry over across hidden sizes, so the default is measured on the model."""
    split = ctx.forget.stats
    n = max(1, min(8, len(split.input_ids)))
    ids = split.input_ids[:n].to(next(ctx.model.parameters()).device)
    h = ctx.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[layer + 1]
    norms = h.float().norm(dim=-1)[~split.special[:n].to(h.device)]
    return float(2 * norms.mean())


# Refusals written for this project: the preferred answers of IdK-DPO (one per question, chosen by its index).
REFUSALS = (
    "I don't know.",
    "I'm not sure about that.",
    "I can't answer that question.",
    "I have no information about that.",
    "That is not something I know.",
    "I'm unable to help with that question.",
    "I don't have that information.",
    "Sorry, I don't know the answer to that.",
    "I can't say.",
    "I'm not able to answer that.",
)


class IdkDPOConfig(RetainTermConfig):
    beta: float = Field(0.1, gt=0, description="DPO inverse temperature β (open-unlearning IdK-DPO: 0.1)")


@register("idk-dpo", IdkDPOConfig, "DPO towards 'I don't know'-style refusals on forget questions (Maini et al. 2024)")
def idk_dpo(ctx, cfg: IdkDPOConfig):
    pairs = _refusal_pairs(ctx)
    half = pairs.input_ids.shape[1] // 2

    def loss(model, forget, retain, reference):
        # each row is [original answer row | refusal row] (see _refusal_pairs): split it back into the two
        rows = {k: torch.cat([v[:, :half], v[:, half:]]) for k, v in forget.items()}
        logp, _ = L.sequence_logprob(forward_logits(model, rows), rows["labels"], overwrite=True)
        with torch.no_grad():
            ref, _ = L.sequence_logprob(forward_logits(reference, rows), rows["labels"])
        n = len(forget["input_ids"])
        f = L.dpo(logp[n:], logp[:n], ref[n:], ref[:n], cfg.beta)
        return combine(f, retain_term(cfg.retain_loss, model, retain, reference), 1.0, cfg.alpha)

    return train(ctx.training(forget=TrainingData(pairs, "forget")), cfg, loss, needs_reference=True)


def _refusal_pairs(ctx):
    """The forget QA rows side by side with the same prompts answered by a refusal: [N, 2 × seq_len]."""
    from ..data.chunking import TokenSplit, build_qa_corpus
    from ..data.formats import QAItem, load_qa
    from ..eval.scoring import Template

    data = ctx.config.forget
    if data.format != "qa":
        raise UnlearnError("idk-dpo needs question-answer forget data: set forget format to qa")
    items = load_qa(data.source, hf_config=data.hf_config, hf_split=data.hf_split)
    refusals = [QAItem(it.question, REFUSALS[i % len(REFUSALS)], id=it.id) for i, it in enumerate(items)]
    kw = dict(seq_len=ctx.config.seq_len, eval_tokens=0, stats_tokens=ctx.config.stats_tokens, seed=ctx.config.seed)
    template = Template(ctx.loaded.tokenizer, "auto")
    original = build_qa_corpus("forget", data.spec(), items, ctx.loaded.tokenizer, template, **kw).stats
    refused = build_qa_corpus("forget", data.spec(), refusals, ctx.loaded.tokenizer, template, **kw).stats
    return TokenSplit(
        torch.cat([original.input_ids, refused.input_ids], 1), torch.cat([original.special, refused.special], 1)
    )
