"""A small vision transformer built from a config (no download), its training loop, and the measurements the
class-forgetting benchmark reports: accuracy and a loss-based membership-inference AUC."""

from __future__ import annotations

import torch
from torch import nn

from .data import Images


def tiny_vit(
    num_labels: int,
    image_size: int = 8,
    channels: int = 1,
    *,
    patch_size: int = 2,
    hidden: int = 128,
    layers: int = 4,
    neurons: int = 1024,
    seed: int = 0,
):
    """A ``ViTForImageClassification`` sized for 8×8 images: 2×2 patches (16 tokens and the class token), width
    ``hidden``, ``layers`` layers of 4 heads, ``neurons`` feed-forward neurons per layer; random weights drawn
    with ``seed``. The defaults (width 128, 1,024 neurons) are the smallest of those tried on the digits where
    single neurons specialise in one class: with width 64 and 256 or 1,024 neurons, the most class-specific
    neuron was at most 2–4× as active on its class as on the rest, and pruning could not forget a class without
    breaking the others (``docs/vision.md``)."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=channels,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=neurons,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    return ViTForImageClassification(config)


def logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(pixel_values=x[i : i + batch_size]).logits for i in range(0, len(x), batch_size)])


def accuracy(model: nn.Module, images: Images) -> float:
    """Share of ``images`` classified correctly (nan for an empty set)."""
    if not len(images):
        return float("nan")
    was = model.training
    model.eval()
    try:
        return float((logits(model, images.x).argmax(-1) == images.y).float().mean())
    finally:
        model.train(was)


def losses(model: nn.Module, images: Images) -> torch.Tensor:
    """Per-image cross-entropy (eval mode)."""
    was = model.training
    model.eval()
    try:
        return nn.functional.cross_entropy(logits(model, images.x).float(), images.y, reduction="none")
    finally:
        model.train(was)


def mia_auc(model: nn.Module, members: Images, non_members: Images) -> float:
    """ROC AUC of the loss threshold attack (lower loss = member) at telling ``members`` from ``non_members``:
    0.5 = indistinguishable, as for a model that never trained on the members."""
    from sklearn.metrics import roc_auc_score

    scores = torch.cat([-losses(model, members), -losses(model, non_members)]).numpy()
    truth = [1] * len(members) + [0] * len(non_members)
    return float(roc_auc_score(truth, scores))


def train(
    model: nn.Module,
    images: Images,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.05,
) -> nn.Module:
    """Train ``model`` on ``images`` (AdamW, cosine schedule, shuffled mini-batches drawn with ``seed``), in
    place; returns it in eval mode."""
    g = torch.Generator().manual_seed(seed)
    steps = epochs * -(-len(images) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=g)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            loss = nn.functional.cross_entropy(model(pixel_values=images.x[idx]).logits, images.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()
