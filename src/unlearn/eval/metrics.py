"""Next-token metrics of the selective-pruning paper, on fixed-length token chunks.

For every position whose *target* (the next token) is not a special token:

* ``top1`` / ``top10``: fraction of targets ranked first / within the first ten by the model's logits;
* ``skip_top1`` / ``skip_top10``: the same, ignoring targets that are among the ``skip_k`` most frequent
  tokens of that dataset's evaluation chunks (the paper's "skip50" when ``skip_k = 50``);
* ``loss``: mean cross-entropy (nats per token); ``perplexity`` = exp(loss).

The rank of the target is counted directly (number of logits strictly greater than the target's), so any
top-k comes from the same pass without a sort.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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


@torch.inference_mode()
def evaluate_split(model: nn.Module, split: TokenSplit, *, batch_size: int, skip_k: int = 50,
                   progress=None) -> dict[str, float]:
    """Top-1/top-10 accuracy, skip-k accuracy, loss and perplexity of ``model`` on ``split``."""
    device = next(model.parameters()).device
    skip_ids = frequent_tokens(split, skip_k).to(device)
    sums = {"n": 0, "loss": 0.0, "top1": 0, "top10": 0, "skip_n": 0, "skip_top1": 0, "skip_top10": 0}
    for ids, special in split.batches(batch_size):
        ids = ids.to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        targets = ids[:, 1:]
        valid = ~special[:, 1:].to(device)
        target_logit = logits.gather(-1, targets.unsqueeze(-1))
        rank = (logits > target_logit).sum(-1)
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        skip = valid & ~torch.isin(targets, skip_ids)
        sums["n"] += int(valid.sum())
        sums["loss"] += float(nll[valid].double().sum())
        sums["top1"] += int((rank[valid] < 1).sum())
        sums["top10"] += int((rank[valid] < 10).sum())
        sums["skip_n"] += int(skip.sum())
        sums["skip_top1"] += int((rank[skip] < 1).sum())
        sums["skip_top10"] += int((rank[skip] < 10).sum())
        if progress:
            progress(ids.numel())
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
