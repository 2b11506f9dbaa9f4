"""Next-token metrics of the selective-pruning paper, on fixed-length token chunks.

For every position whose *target* (the next token) is not a special token:

* ``top1`` / ``top10``: fraction of targets ranked first / within the first ten by the model's logits;
* ``skip_top1`` / ``skip_top10``: the same, ignoring targets that are among the ``skip_k`` most frequent
  tokens of that dataset's evaluation chunks (the paper's "skip50" when ``skip_k = 50``);
* ``loss``: mean cross-entropy (nats per token); ``perplexity`` = exp(loss).

A target counts as within the top k when no more than k − 1 logits are strictly greater than its own (ties go
to the target), tested against the k-th largest logit of one ``topk`` pass; the loss is
``logsumexp(logits) − logit(target)``. Both are ~4× cheaper than counting ranks or calling ``cross_entropy``
on a 49k-token vocabulary.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import distributed
from ..data.chunking import TokenSplit

TOPK = (1, 10)


def frequent_tokens(split: TokenSplit, k: int) -> torch.Tensor:
    """The ``k`` most frequent non-special target tokens of a split (ties broken by token id)."""
    targets = split.input_ids[:, 1:][~split.special[:, 1:]]
    if k <= 0 or targets.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    ids, counts = targets.unique(return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (-int(counts[i]), int(ids[i])))
    return ids[order[:k]]


def _scored(model: nn.Module, ids: torch.Tensor):
    """The float32 logits of a batch's predicting positions, its targets, their logits and their NLLs."""
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    targets = ids[:, 1:]
    target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logits, targets, target_logit, torch.logsumexp(logits, dim=-1) - target_logit


@torch.inference_mode()
def mean_loss(model: nn.Module, split: TokenSplit, *, batch_size: int) -> float:
    """The ``loss`` of :func:`evaluate_split` (the same sums in the same order), without the ranking metrics'
    top-k pass over the vocabulary."""
    device = next(model.parameters()).device
    sums = {"n": 0, "loss": 0.0}
    for ids, special in distributed.batches(split, batch_size):
        ids = ids.to(device)
        nll = _scored(model, ids)[3]
        valid = ~special[:, 1:].to(device)
        sums["n"] += int(valid.sum())
        sums["loss"] += float(nll[valid].double().sum())
    sums = distributed.reduce_sums(sums)
    return sums["loss"] / max(sums["n"], 1)


@torch.inference_mode()
def evaluate_split(
    model: nn.Module, split: TokenSplit, *, batch_size: int, skip_k: int = 50, progress=None
) -> dict[str, float]:
    """Top-1/top-10 accuracy, skip-k accuracy, loss and perplexity of ``model`` on ``split``.

    Under a multi-process launch each process scores its share of the batches and the counts and loss sums are
    added across processes, so every process returns the metrics of the whole split.
    """
    device = next(model.parameters()).device
    skip_ids = frequent_tokens(split, skip_k).to(device)
    sums = {"n": 0, "loss": 0.0, "top1": 0, "top10": 0, "skip_n": 0, "skip_top1": 0, "skip_top10": 0}
    for ids, special in distributed.batches(split, batch_size):
        ids = ids.to(device)
        logits, targets, target_logit, nll = _scored(model, ids)
        valid = ~special[:, 1:].to(device)
        # The target is within the top k iff no more than k-1 logits exceed it iff it is >= the k-th largest.
        kth = logits.topk(min(max(TOPK), logits.shape[-1]), dim=-1).values
        hit = {k: target_logit >= kth[..., min(k, kth.shape[-1]) - 1] for k in TOPK}
        skip = valid & ~torch.isin(targets, skip_ids)
        sums["n"] += int(valid.sum())
        sums["loss"] += float(nll[valid].double().sum())
        sums["top1"] += int((hit[1] & valid).sum())
        sums["top10"] += int((hit[10] & valid).sum())
        sums["skip_n"] += int(skip.sum())
        sums["skip_top1"] += int((hit[1] & skip).sum())
        sums["skip_top10"] += int((hit[10] & skip).sum())
        if progress:
            progress(ids.numel() * distributed.world_size())
    sums = distributed.reduce_sums(sums)
    n, sn = max(sums["n"], 1), max(sums["skip_n"], 1)
    loss = sums["loss"] / n
    return {
        "top1": sums["top1"] / n,
        "top10": sums["top10"] / n,
        f"skip{skip_k}_top1": sums["skip_top1"] / sn,
        f"skip{skip_k}_top10": sums["skip_top10"] / sn,
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "n_tokens": sums["n"],
    }


def relative_drop(before: float, after: float) -> float:
    """(before − after) / before; 0 when ``before`` is 0."""
    return (before - after) / before if before else 0.0


def pareto_front(points: list[tuple[float | None, float | None]]) -> set[int]:
    """Indices of the points (forget drop, retain drop) that no other point dominates: none forgets at least as
    much while damaging retain at most as much, and is strictly better in one of the two. Points with a missing
    value are never on the front."""
    front = set()
    for i, (f, r) in enumerate(points):
        if f is None or r is None:
            continue
        dominated = any(
            g is not None and s is not None and g >= f and s <= r and (g > f or s < r)
            for j, (g, s) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.add(i)
    return front
