"""Forget one class of a vision transformer: selective pruning, its random control, SSD and gradient ascent.

The language-model machinery, unchanged, on images: the ViT adapter finds the MLP and attention output
projections (:mod:`unlearn.models.adapters`), the statistics are the same hook reductions over every patch token
and the class token (:func:`unlearn.models.hooks.statistics_over`), neurons are scored and chosen by
:func:`unlearn.methods.selective_pruning.scores` / :func:`~unlearn.methods.selective_pruning.select`, and the
ablation is folded into the weights (:func:`unlearn.models.save.fold`), so the result is a plain
``ViTForImageClassification`` checkpoint. SSD dampens with :func:`unlearn.methods.edits.dampen`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..errors import UnlearnError
from ..methods.edits import dampen
from ..methods.selective_pruning import scores, select
from ..models.adapters import adapter_for
from ..models.hooks import Ablation, ablated, statistics_over
from ..models.save import fold
from .data import Images
from .model import accuracy

METHODS = ("selective-pruning", "random-pruning", "ssd", "gradient-ascent")


class VisionForgetConfig(BaseModel):
    """Parameters of class forgetting (every method reads the ones it needs)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    importance: Literal["freq", "abs", "rms", "std"] = Field("abs", description="pruning: per-neuron importance")
    ff_frac: float = Field(0.005, ge=0, lt=1, description="pruning: share of all MLP neurons pruned per step")
    attn_frac: float = Field(0.0, ge=0, lt=1, description="pruning: share of all attention neurons per step")
    eps_ff: float = Field(1e-3, gt=0, description="pruning: eps in I_forget / (I_retain + eps), MLP neurons")
    eps_attn: float = Field(1e-4, gt=0, description="pruning: eps for attention neurons")
    ablation: Literal["zero", "mean"] = Field("zero", description="pruning: set pruned neurons to 0 or retain mean")
    max_steps: int = Field(50, ge=1, le=10_000, description="pruning and ascent: the most steps")
    target: float | None = Field(
        0.1,
        ge=0,
        le=1,
        description="stop once accuracy on the forget images is at most this share of its value before (None: "
        "run max_steps)",
    )
    lr: float = Field(1e-4, gt=0, lt=1, description="gradient ascent: learning rate (AdamW)")
    batch_size: int = Field(64, ge=1, description="images per batch (statistics, Fisher, ascent)")
    selection_weighting: float = Field(5.0, gt=0, description="SSD α (the SSD paper's value for ViT: 5)")
    dampening_constant: float = Field(1.0, ge=0, description="SSD λ")
    tokens: Literal["all", "cls"] = Field(
        "all", description="pruning: statistics over every token (patches and class token) or the class token only"
    )
    seed: int = 0
    scope: Literal["global"] = "global"

    def fraction(self, kind: str) -> float:
        return self.ff_frac if kind == "ff" else self.attn_frac

    def eps(self, kind: str) -> float:
        return self.eps_ff if kind == "ff" else self.eps_attn


@dataclass
class Forgotten:
    """The unlearned model (a plain ``ViTForImageClassification``) and what was done."""

    model: nn.Module
    method: str
    seconds: float
    steps: int = 0
    ablation: Ablation | None = None
    info: dict = field(default_factory=dict)


def image_statistics(model: nn.Module, images: Images, batch_size: int, kinds=("ff", "attn"), tokens: str = "all"):
    """Per-neuron statistics over every token of ``images`` (``tokens="all"``: the patches and the class token)
    or over the class token alone (``"cls"``: the token the classifier reads)."""
    adapter = adapter_for(model)
    per_image = 1 + (model.config.image_size // model.config.patch_size) ** 2

    def feed():
        for i in range(0, len(images), batch_size):
            x = images.x[i : i + batch_size]
            left_out = torch.zeros(len(x), per_image, dtype=torch.bool)
            if tokens == "cls":
                left_out[:, 1:] = True
            yield left_out, lambda x=x: model(pixel_values=x)

    return statistics_over(model, adapter, feed(), kinds=kinds)


def forget_class(model: nn.Module, forget: Images, retain: Images, method: str, config=None, **params) -> Forgotten:
    """Make ``model`` forget the class of the ``forget`` images while keeping the ``retain`` images' classes.
    The input model is left as it was; the result holds a new one. ``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise UnlearnError(f"unknown vision method {method!r}: choose one of {', '.join(METHODS)}")
    if not len(forget) or not len(retain):
        raise UnlearnError("forget and retain images must both be non-empty")
    cfg = config or VisionForgetConfig(**params)
    model = copy.deepcopy(model).eval()
    start = time.perf_counter()
    if method in ("selective-pruning", "random-pruning"):
        out = _prune(model, forget, retain, cfg, random=method == "random-pruning")
    elif method == "ssd":
        out = _ssd(model, forget, retain, cfg)
    else:
        out = _ascend(model, forget, cfg)
    out.method, out.seconds = method, time.perf_counter() - start
    return out


def _prune(model, forget: Images, retain: Images, cfg: VisionForgetConfig, random: bool) -> Forgotten:
    """Score, prune a step's share, re-collect on the pruned model, until the forget accuracy reaches the target."""
    adapter = adapter_for(model)
    kinds = [k for k in ("ff", "attn") if cfg.fraction(k) > 0]
    ablation, g = Ablation(), torch.Generator().manual_seed(cfg.seed)
    start_acc, steps = accuracy(model, forget), 0
    with torch.no_grad():
        for step in range(1, cfg.max_steps + 1):
            steps = step
            with ablated(model, adapter, ablation):
                f_stats = None if random else image_statistics(model, forget, cfg.batch_size, kinds, cfg.tokens)
                r_stats = image_statistics(model, retain, cfg.batch_size, kinds, cfg.tokens)
            for kind in kinds:
                n = adapter.n_neurons(model, kind)
                layer_scores = (
                    {layer: torch.rand(n, generator=g) for layer in range(adapter.n_layers(model))}
                    if random
                    else scores(f_stats, r_stats, cfg, kind)
                )
                for layer, idx in select(layer_scores, ablation, kind, cfg.fraction(kind), cfg.scope).items():
                    mean = r_stats[(kind, layer)].mean[idx] if cfg.ablation == "mean" else torch.zeros(len(idx))
                    ablation.add((kind, layer), idx, mean, n)
            with ablated(model, adapter, ablation):
                if cfg.target is not None and accuracy(model, forget) <= cfg.target * start_acc:
                    break
    model = fold(model, adapter, ablation)
    info = {kind: ablation.total(kind) for kind in kinds}
    return Forgotten(model, "", 0.0, steps=steps, ablation=ablation, info={"pruned": info})


def _fisher(model, images: Images, batch_size: int) -> dict[str, torch.Tensor]:
    """Diagonal Fisher importance, SSD's way: the squared gradient of each mini-batch's mean cross-entropy,
    averaged over the mini-batches."""
    params = dict(model.named_parameters())
    out = {n: torch.zeros_like(p) for n, p in params.items()}
    batches = range(0, len(images), batch_size)
    for i in batches:
        model.zero_grad(set_to_none=True)
        x, y = images.x[i : i + batch_size], images.y[i : i + batch_size]
        nn.functional.cross_entropy(model(pixel_values=x).logits, y).backward()
        for n, p in params.items():
            if p.grad is not None:
                out[n] += p.grad.square()
    model.zero_grad(set_to_none=True)
    return {n: v / len(batches) for n, v in out.items()}


def _ssd(model, forget: Images, retain: Images, cfg: VisionForgetConfig) -> Forgotten:
    """SSD with the retain images standing in for the full training set's importance."""
    model.float()
    imp_f, imp_r = _fisher(model, forget, cfg.batch_size), _fisher(model, retain, cfg.batch_size)
    n_damp, n_total = dampen(
        dict(model.named_parameters()), imp_f, imp_r, cfg.selection_weighting, cfg.dampening_constant
    )
    model.requires_grad_(False)
    return Forgotten(model, "", 0.0, info={"dampened": n_damp, "total": n_total})


def _ascend(model, forget: Images, cfg: VisionForgetConfig) -> Forgotten:
    """Gradient ascent on the forget images' cross-entropy (shuffled batches, AdamW), until the target."""
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    start_acc, steps = accuracy(model, forget), 0
    for step in range(1, cfg.max_steps + 1):
        steps = step
        idx = torch.randperm(len(forget), generator=g)[: cfg.batch_size]
        model.train()
        loss = -nn.functional.cross_entropy(model(pixel_values=forget.x[idx]).logits, forget.y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cfg.target is not None and accuracy(model, forget) <= cfg.target * start_acc:
            break
    model.eval().requires_grad_(False)
    return Forgotten(model, "", 0.0, steps=steps)
