"""Peer methods from open-unlearning's trainers: WGA, CE-U, SatImp, UNDIAL and PDU.

Each is a config (the shared :class:`~unlearn.methods.training.TrainConfig` plus its own parameters, defaults
from open-unlearning: the trainer's ``configs/trainer/*.yaml`` where it has one, else its constructor) and a
loss in :mod:`~unlearn.methods.losses`; all run on :func:`~unlearn.methods.training.train`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator

from . import losses as L
from .registry import register
from .trained import RetainTermConfig, combine, forward_logits, retain_term
from .training import TrainConfig, batches, train


def _with_retain(forget: torch.Tensor, cfg, model, retain, reference, gamma: float = 1.0):
    """γ · forget + α · retain term; the retain term is not computed when α = 0."""
    kind = cfg.retain_loss if cfg.alpha > 0 else "none"
    return combine(forget, retain_term(kind, model, retain, reference), gamma, cfg.alpha)


class WGAConfig(RetainTermConfig):
    beta: float = Field(1.0, ge=0, description="weight exponent β: w = p(y)^β (open-unlearning WGA.yaml: 1.0)")
    gamma: float = Field(1.0, gt=0, description="weight of the forget term (WGA.yaml: 1.0; α = 1 there too)")


@register("wga", WGAConfig, "weighted gradient ascent: tokens weighted by p(y)^β + α·retain (Wang et al. 2025)")
def wga(ctx, cfg: WGAConfig):
    def loss(model, forget, retain, reference):
        f = L.wga(forward_logits(model, forget), forget["labels"], cfg.beta)
        return _with_retain(f, cfg, model, retain, reference, cfg.gamma)

    return train(ctx.training(), cfg, loss, needs_reference=cfg.retain_loss == "kl" and cfg.alpha > 0)


class CEUConfig(TrainConfig):
    skip_first: int = Field(
        1,
        ge=0,
        description="scored tokens left out at the start of each sequence (CEU.yaml ignore_first_n_answer_tokens: 1)",
    )


@register(
    "ce-u", CEUConfig, "cross-entropy unlearning: fit the model's own distribution minus the true token (Yang 2025)"
)
def ce_u(ctx, cfg: CEUConfig):
    def loss(model, forget, retain, reference):
        f = L.ce_unlearning(forward_logits(model, forget), forget["labels"], cfg.skip_first)
        return f, {"forget_loss": f.detach()}

    return train(ctx.training(), cfg, loss)


class SatImpConfig(RetainTermConfig):
    beta1: float = Field(5.0, ge=0, description="saturation exponent β₁ on p(y) (SatImp.yaml: 5.0)")
    beta2: float = Field(1.0, ge=0, description="importance exponent β₂ on 1 − p(y) (SatImp.yaml: 1.0)")
    gamma: float = Field(
        0.1, gt=0, description="weight of the forget term (SatImp.yaml: γ = 0.1, α = 1; the constructor swaps them)"
    )


@register("satimp", SatImpConfig, "saturation × importance weighted gradient ascent + α·retain (Yang et al. 2025)")
def satimp(ctx, cfg: SatImpConfig):
    def loss(model, forget, retain, reference):
        f = L.satimp(forward_logits(model, forget), forget["labels"], cfg.beta1, cfg.beta2)
        return _with_retain(f, cfg, model, retain, reference, cfg.gamma)

    return train(ctx.training(), cfg, loss, needs_reference=cfg.retain_loss == "kl" and cfg.alpha > 0)


class UndialConfig(RetainTermConfig):
    lr: float = Field(1e-4, gt=0, lt=1, description="learning rate (UNDIAL.yaml: 1e-4)")
    beta: float = Field(10.0, ge=0, description="how far the true token's logit is lowered (UNDIAL.yaml: 10)")
    alpha: float = Field(0.0, ge=0, description="weight of the retain term (UNDIAL.yaml: 0, none)")


@register(
    "undial", UndialConfig, "self-distillation towards the original with the true logit lowered by β (Dong et al. 2025)"
)
def undial(ctx, cfg: UndialConfig):
    def loss(model, forget, retain, reference):
        with torch.no_grad():
            ref = forward_logits(reference, forget)
        f = L.undial(forward_logits(model, forget), ref, forget["labels"], cfg.beta)
        return _with_retain(f, cfg, model, retain, reference)

    return train(ctx.training(), cfg, loss, needs_reference=True)


class PDUConfig(TrainConfig):
    gamma: float = Field(1.0, gt=0, description="weight of the forget term (PDU.yaml via GradDiff: 1.0)")
    alpha: float = Field(1.0, ge=0, description="initial retain weight λ₀, the dual variable (PDU.yaml: 1.0)")
    retain_loss: Literal["nll", "kl"] = Field("nll", description="retain term: NLL, or KL to the frozen original")
    retain_eps: float | None = Field(
        None,
        ge=0,
        description="constraint: retain loss ≤ ε (PDU.yaml leaves it to be set, '???'; default: the original "
        "model's retain NLL on up to 8 batches, i.e. no worse than before; needed with retain_loss=kl)",
    )
    primal_dual: bool = Field(True, description="update λ by dual ascent (PDU.yaml: true; false: fixed α)")
    dual_step_size: float = Field(1.0, ge=0, description="dual step size η (PDU.yaml: 1.0)")
    dual_warmup_steps: int = Field(
        0,
        ge=0,
        description="optimizer steps before λ moves (PDU.yaml: 5 epochs; this loop counts steps, not epochs)",
    )

    @model_validator(mode="after")
    def _eps_for_kl(self):
        if self.retain_loss == "kl" and self.retain_eps is None:
            raise ValueError("retain_loss=kl needs retain_eps (the original's KL to itself is 0)")
        return self


@dataclass
class Dual:
    """PDU's dual variable λ across the loss calls of one run: after each micro-batch (as open-unlearning updates
    it, once per ``compute_loss``) λ ← max(0, λ + η · (retain loss − ε)), once ``warmup`` calls have passed."""

    value: float
    step_size: float
    warmup: int = 0
    calls: int = 0

    def state_dict(self) -> dict:
        return {"value": self.value, "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.calls = state["value"], state["calls"]

    def update(self, violation: float) -> float:
        if self.calls >= self.warmup:
            self.value = L.dual_ascent(self.value, violation, self.step_size)
        self.calls += 1
        return self.value


@register("pdu", PDUConfig, "primal-dual: flatten forget logits subject to retain loss ≤ ε (Entesari et al. 2025)")
def pdu(ctx, cfg: PDUConfig):
    eps = cfg.retain_eps if cfg.retain_eps is not None else _retain_nll(ctx, cfg.batch_size)
    dual = Dual(cfg.alpha, cfg.dual_step_size if cfg.primal_dual else 0.0, cfg.dual_warmup_steps * cfg.grad_accum)

    def loss(model, forget, retain, reference):
        f = L.logit_gap(forward_logits(model, forget), forget["labels"])
        r = retain_term(cfg.retain_loss, model, retain, reference) - eps
        total = cfg.gamma * f + dual.value * r
        dual.update(float(r.detach()))
        return total, {"forget_loss": f.detach(), "retain_loss": r.detach() + eps, "dual": torch.tensor(dual.value)}

    # λ travels in every checkpoint: a resumed run continues with the exact value
    result = train(ctx.training(), cfg, loss, needs_reference=cfg.retain_loss == "kl", loss_state=dual)
    result.extra.update(retain_eps=eps, dual=dual.value)
    return result


@torch.no_grad()
def _retain_nll(ctx, batch_size: int, n_batches: int = 8) -> float:
    """The untouched model's mean retain NLL over up to ``n_batches`` micro-batches (PDU's default ε)."""
    model = ctx.model
    device = next(model.parameters()).device
    split = ctx.retain.stats
    stream = batches(split, batch_size, ctx.config.seed + 1)
    n = max(1, min(n_batches, -(-len(split.input_ids) // batch_size)))
    total = 0.0
    for _ in range(n):
        batch = {k: v.to(device) for k, v in next(stream).items()}
        total += float(L.nll(forward_logits(model, batch), batch["labels"]))
    return total / n
