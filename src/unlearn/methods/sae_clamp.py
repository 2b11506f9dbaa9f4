"""Sparse-autoencoder feature clamping (Farrell, Lau & Conmy, "Applying sparse autoencoders to unlearn knowledge
in language models", 2024).

1. Read the residual stream at the output of decoder block ``layer`` on training chunks of both corpora (the
   statistics chunks and the chunks after them, ``train_tokens`` each; special tokens, the first position of each
   chunk and attention sinks left out) and train a small SAE on it (:mod:`unlearn.models.sae`).
2. Score every feature as selective pruning scores neurons: ``I_forget / (I_retain + eps)``, ``I`` the firing
   frequency or the mean activation on each corpus, among features that fire on at least ``min_forget_freq`` of
   the forget tokens; keep the top ``clamped``.
3. Clamp them at inference (:class:`unlearn.models.clamp.FeatureClamp`): wherever a selected feature fires, its
   contribution is replaced by 0 (``mode=zero``) or by −c times its decoder direction (``mode=negative``; the
   paper finds zero ablation ineffective and negative clamping necessary). The weights stay as they were; the
   clamp is a forward hook, saved next to the plain checkpoint and attached again whenever it is loaded.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import UnlearnError
from ..models import components
from ..models.clamp import CLAMP_FILE, TENSORS_FILE, FeatureClamp
from ..models.hooks import body
from ..models.sae import SparseAutoencoder, train_sae
from .registry import MethodResult, register

SINK_FACTOR = 8.0  # a position whose residual norm is above this multiple of the median is an attention sink
HELD_OUT = 0.1  # of the collected rows, the share kept from training to measure the SAE's quality


class SAEClampConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    layer: int | None = Field(
        None, ge=0, description="decoder block whose output (the residual stream) the SAE reads; default: the middle"
    )
    expansion: int = Field(4, ge=1, le=64, description="dictionary size as a multiple of the model's width")
    l1: float = Field(
        0.003,
        gt=0,
        le=10,
        description="L1 coefficient on the feature activations (inputs scaled to a mean squared norm of the width)",
    )
    train_tokens: int = Field(
        32768,
        ge=64,
        le=100_000_000,
        description="tokens of each corpus the SAE trains on: the statistics chunks, then the chunks after them",
    )
    steps: int = Field(400, ge=1, le=1_000_000, description="Adam steps of SAE training")
    batch_size: int = Field(1024, ge=1, le=1_000_000, description="residual vectors per SAE training step")
    lr: float = Field(1e-3, gt=0, lt=1, description="learning rate of SAE training (Adam)")
    clamped: int = Field(64, ge=1, le=100_000, description="number of features clamped (the most forget-specific)")
    importance: Literal["freq", "mean"] = Field(
        "freq", description="what a feature's score compares: freq = how often it fires, mean = its mean activation"
    )
    eps: float = Field(1e-3, gt=0, description="eps in I_forget / (I_retain + eps)")
    min_forget_freq: float = Field(
        0.01, ge=0, le=1, description="a candidate fires on at least this fraction of forget tokens"
    )
    mode: Literal["zero", "negative"] = Field(
        "negative", description="what a firing selected feature is set to: zero, or −c (negative clamping)"
    )
    clamp_value: float | None = Field(
        None,
        gt=0,
        description="c, the same for every feature (mode negative), in the SAE's activation units (the residual "
        "stream scaled to a mean squared norm of the width); default: clamp_scale × each feature's own mean",
    )
    clamp_scale: float = Field(
        4.0,
        gt=0,
        le=1000,
        description="c = clamp_scale × the feature's mean activation where it fires on forget tokens (mode negative, "
        "unless clamp_value is set)",
    )
    seed: int | None = Field(None, ge=0, lt=2**63, description="seed of SAE initialisation and batches (default: run)")


class _Stop(Exception):
    """Raised by the collecting hook once the chosen block has run: the blocks after it are not needed."""


@torch.inference_mode()
def residuals(model, adapter, layer: int, split, batch_size: int, progress=None) -> torch.Tensor:
    """The residual stream after block ``layer`` on every token of ``split`` but special tokens and the first of
    each chunk, as float32 rows [n, d] on the CPU (the forward pass stops after that block)."""
    rows: list[torch.Tensor] = []
    state: dict = {}

    def hook(_module, _args, output):
        h = output[0] if isinstance(output, tuple) else output
        rows.append(h[state["keep"].to(h.device)].float().cpu())
        raise _Stop

    device = next(model.parameters()).device
    handle = adapter.blocks(model)[layer].register_forward_hook(hook)
    try:
        for ids, special in split.batches(batch_size):
            keep = ~special.bool()
            keep[:, 0] = False
            state["keep"] = keep
            try:
                body(model)(input_ids=ids.to(device), use_cache=False)
            except _Stop:
                pass
            if progress:
                progress(ids.numel())
    finally:
        handle.remove()
    return torch.cat(rows) if rows else torch.zeros(0, model.get_input_embeddings().weight.shape[1])


def without_sinks(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``x`` without its attention-sink rows (norm above SINK_FACTOR × the median) and that norm limit."""
    if not len(x):
        return x, float("inf")
    norms = x.norm(dim=1)
    limit = float(norms.median()) * SINK_FACTOR
    return x[norms <= limit], limit


@torch.no_grad()
def feature_stats(sae: SparseAutoencoder, x: torch.Tensor, batch: int = 4096) -> dict[str, torch.Tensor]:
    """Per feature over the rows of ``x``: ``freq`` (share of rows where it fires), ``mean`` (mean activation over
    all rows) and ``firing_mean`` (mean activation where it fires)."""
    n = sae.w_dec.shape[0]
    fired, total = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for i in range(0, len(x), batch):
        f = sae.encode(x[i : i + batch]).double()
        fired += (f > 0).sum(0)
        total += f.sum(0)
    rows = max(len(x), 1)
    return {"freq": fired / rows, "mean": total / rows, "firing_mean": total / fired.clamp_min(1)}


def select_features(forget: dict, retain: dict, cfg: SAEClampConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``clamped`` most forget-specific features (indices, best first) and the score of every feature
    (``-inf`` where it fires on fewer than ``min_forget_freq`` of forget tokens)."""
    score = forget[cfg.importance] / (retain[cfg.importance] + cfg.eps)
    candidate = (forget["freq"] >= cfg.min_forget_freq) & (forget["freq"] > 0)
    score = torch.where(candidate, score, torch.full_like(score, -math.inf))
    n = min(cfg.clamped, int(candidate.sum()))
    if n == 0:
        raise UnlearnError(
            f"no SAE feature fires on at least {cfg.min_forget_freq:g} of the forget tokens: lower min_forget_freq "
            f"or l1, or train longer (steps)"
        )
    return score.topk(n).indices, score


def clamp_values(selected: torch.Tensor, forget: dict, cfg: SAEClampConfig) -> torch.Tensor:
    """What each selected feature is set to where it fires: 0, or −c."""
    if cfg.mode == "zero":
        return torch.zeros(len(selected))
    if cfg.clamp_value is not None:
        return torch.full((len(selected),), -cfg.clamp_value)
    return -cfg.clamp_scale * forget["firing_mean"][selected].float()


def build_clamp(sae: SparseAutoencoder, layer: int, selected, values, limit: float, info: dict, mode: str):
    """The clamp of the ``selected`` features of ``sae``, its input scale folded into the tensors (the clamp reads
    and writes the residual stream in the model's own units)."""
    s = float(sae.scale)
    return FeatureClamp(
        layer=layer,
        features=[int(i) for i in selected],
        w_enc=(sae.w_enc[:, selected] * s).detach().clone(),
        b_enc=sae.b_enc[selected].detach().clone(),
        b_dec=(sae.b_dec / s).detach().clone(),
        w_dec=(sae.w_dec[selected] / s).detach().clone(),
        values=values.float(),
        mode=mode,
        norm_limit=limit,
        info=info,
    )


@torch.no_grad()
def promoted(model, adapter, tokenizer, directions: torch.Tensor, k: int = 10) -> list[list[str]]:
    """The ``k`` tokens each row of ``directions`` [n, d] promotes, read through the final norm and unembedding."""
    param = next(model.parameters())
    logits = adapter.unembed(model, directions.to(device=param.device, dtype=param.dtype)).float()
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices.tolist()
    return [[tokenizer.decode([t]) for t in ids] for ids in top]


def _collect(ctx, layer: int, tokens: int) -> dict[str, torch.Tensor]:
    """Residual rows of each corpus's training chunks at ``layer``."""
    out = {}
    for which in ("forget", "retain"):
        split = ctx.training_split(which, tokens)
        with ctx.reporter.task(f"SAE activations: {which}", split.n_tokens) as advance:
            out[which] = residuals(ctx.model, ctx.adapter, layer, split, ctx.config.batch_size, advance)
    return out


def _split_rows(x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training rows, held-out rows) of ``x``, shuffled with ``seed``."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_held = max(1, int(len(x) * HELD_OUT))
    return x[order[n_held:]], x[order[:n_held]]


def _train(ctx, cfg: SAEClampConfig, layer: int, seed: int) -> tuple:
    """Collect both corpora's residual rows, train the SAE on them (sinks left out, a tenth held out to measure
    it): (the SAE on the CPU, the rows per corpus below the sink limit, the limit, the facts to record)."""
    rows = _collect(ctx, layer, cfg.train_tokens)
    both, limit = without_sinks(torch.cat([rows["forget"], rows["retain"]]))
    if len(both) < 2:
        raise UnlearnError("too few tokens to train an SAE on: raise train_tokens or stats_tokens")
    train_rows, held_out = _split_rows(both, seed)
    n_features = cfg.expansion * both.shape[1]
    device = next(ctx.model.parameters()).device
    bf16 = ctx.loaded.dtype == "bf16"
    with ctx.reporter.task(f"SAE training ({n_features} features)", cfg.steps) as advance:
        trained = train_sae(
            train_rows.to(device),
            n_features,
            l1=cfg.l1,
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            seed=seed,
            held_out=held_out.to(device),
            bf16=bf16,
            progress=advance,
        )
    info = {
        "n_features": n_features,
        "l1": cfg.l1,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "seed": seed,
        "bf16": bf16,
        "train_rows": len(train_rows),
        "input_scale": round(float(trained.sae.scale), 6),
        "final_loss": round(trained.final_loss, 6),
        "held_out": trained.quality,
    }
    kept = {w: x[x.norm(dim=1) <= limit] for w, x in rows.items()}
    return trained.sae.cpu(), kept, limit, info


@register(
    "sae-clamp",
    SAEClampConfig,
    "trains a sparse autoencoder on one layer's residual stream and clamps the most forget-specific features at "
    "inference, to 0 or −c (Farrell et al. 2024)",
    budget=False,
)
def sae_clamp(ctx, cfg: SAEClampConfig) -> MethodResult:
    """Train the SAE, select and clamp its most forget-specific features; the model comes back with the clamp
    attached (its weights unchanged), so the run's evaluation after and its saved folder include it."""
    model, adapter = ctx.model, ctx.adapter
    n_layers = adapter.n_layers(model)
    layer = n_layers // 2 if cfg.layer is None else cfg.layer
    if layer >= n_layers:
        raise UnlearnError(
            f"sae-clamp layer {layer} is out of range: the model has {n_layers} layers (0-{n_layers - 1})"
        )
    if any(c.file == CLAMP_FILE for c in components.attached(model)):
        raise UnlearnError("the model already carries an SAE feature clamp: sae-clamp on top of one is not supported")
    seed = ctx.config.seed % 2**63 if cfg.seed is None else cfg.seed
    sae, rows, limit, info = _train(ctx, cfg, layer, seed)
    stats = {w: feature_stats(sae, x) for w, x in rows.items()}
    selected, score = select_features(stats["forget"], stats["retain"], cfg)
    values = clamp_values(selected, stats["forget"], cfg)
    promotes = promoted(model, adapter, ctx.loaded.tokenizer, sae.w_dec[selected])
    features = [
        {
            "feature": int(i),
            "score": round(float(score[i]), 4),
            **{f"{w}_{k}": round(float(stats[w][k][i]), 5) for w in ("forget", "retain") for k in ("freq", "mean")},
            "value": round(float(v), 4),
            "promotes": promotes[j],
        }
        for j, (i, v) in enumerate(zip(selected.tolist(), values.tolist()))
    ]
    components.attach(model, build_clamp(sae, layer, selected, values, limit, info, cfg.mode))
    return MethodResult(
        ablation=None,
        model=model,
        steps=[],
        stop_reason=f"clamped {len(features)} SAE features at layer {layer} ({cfg.mode})",
        extra={
            "layer": layer,
            "mode": cfg.mode,
            "norm_limit": round(limit, 3),
            "sae": info,
            "features": features,
            "clamp_files": [f"model/{CLAMP_FILE}", f"model/{TENSORS_FILE}"],
        },
    )
