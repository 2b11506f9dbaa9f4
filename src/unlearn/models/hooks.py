"""Named hook points on the output projections: statistics collection and neuron ablation masks.

Hook points are ``("ff", layer)`` (taker's ``mlp_pre_out``) and ``("attn", layer)`` (``attn_pre_out``): the
input of the MLP / attention output projection. Statistics are batched on the tensor — one masked reduction
per hook call, no per-token Python loop — and accumulated in float64 so token budgets can grow freely.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data.chunking import TokenSplit
from .adapters import KINDS, Adapter

Point = tuple[str, int]  # ("ff" | "attn", layer index)
IMPORTANCE = ("freq", "abs", "rms", "std")


@dataclass
class NeuronStats:
    """Sufficient statistics of one hook point over the valid (non-special) tokens seen so far."""

    count: int
    positive: torch.Tensor  # number of tokens with x > 0, per neuron (float64)
    abs_sum: torch.Tensor
    sum: torch.Tensor
    sq_sum: torch.Tensor

    def importance(self, kind: str) -> torch.Tensor:
        """``freq`` = P(x > 0); ``abs`` = E|x|; ``rms`` = sqrt(E x²); ``std`` = sqrt(E x² − (E x)²)."""
        n = max(self.count, 1)
        if kind == "freq":
            return self.positive / n
        if kind == "abs":
            return self.abs_sum / n
        if kind == "rms":
            return (self.sq_sum / n).sqrt()
        if kind == "std":
            return (self.sq_sum / n - (self.sum / n) ** 2).clamp_min(0).sqrt()
        raise ValueError(f"unknown importance function {kind!r}")

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)


def hook_points(model: nn.Module, adapter: Adapter, kinds=KINDS) -> list[Point]:
    return [(kind, layer) for kind in kinds for layer in range(adapter.n_layers(model))]


def body(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (statistics need no logits)."""
    return getattr(model, "base_model", model)


@torch.inference_mode()
def collect_statistics(model: nn.Module, adapter: Adapter, split: TokenSplit, *, batch_size: int,
                       kinds=KINDS, progress=None) -> dict[Point, NeuronStats]:
    """Run ``split`` through the model body and return per-neuron statistics at every hook point.

    Special tokens (separators, BOS, pad) are excluded. ``progress(n_tokens)`` is called after each batch.
    """
    device = next(model.parameters()).device
    points = hook_points(model, adapter, kinds)
    acc = {p: None for p in points}
    state: dict = {}

    def make_hook(point):
        def hook(_module, args):
            x = args[0]
            # reduce in float64: std = sqrt(E x² − (E x)²) cancels badly in float32 when std << |mean|
            flat = x.reshape(-1, x.shape[-1]).index_select(0, state["rows"]).double()
            sums = torch.stack([(flat > 0).sum(0, dtype=flat.dtype), flat.abs().sum(0), flat.sum(0),
                                flat.square().sum(0)])
            acc[point] = sums if acc[point] is None else acc[point] + sums
        return hook

    handles = [adapter.out_proj(model, layer, kind).register_forward_pre_hook(make_hook((kind, layer)))
               for kind, layer in points]
    count = 0
    try:
        for ids, special in split.batches(batch_size):
            state["rows"] = (~special).reshape(-1).nonzero().squeeze(1).to(device)
            count += int(state["rows"].numel())
            body(model)(input_ids=ids.to(device), use_cache=False)
            if progress:
                progress(ids.numel())
    finally:
        for h in handles:
            h.remove()
    out = {}
    for p, s in acc.items():
        s = s.cpu()
        out[p] = NeuronStats(count, s[0], s[1], s[2], s[3])
    return out


@dataclass
class Ablation:
    """Which neurons are ablated and the value each takes (0 for zero ablation, retain mean for mean)."""

    pruned: dict[Point, torch.Tensor] = field(default_factory=dict)  # bool [n] per point
    fill: dict[Point, torch.Tensor] = field(default_factory=dict)  # float [n] per point (0 where kept)

    def add(self, point: Point, idx: torch.Tensor, values: torch.Tensor, n: int) -> None:
        if point not in self.pruned:
            self.pruned[point] = torch.zeros(n, dtype=torch.bool)
            self.fill[point] = torch.zeros(n, dtype=torch.float32)
        self.pruned[point][idx] = True
        self.fill[point][idx] = values.float()

    def copy(self) -> Ablation:
        return Ablation({k: v.clone() for k, v in self.pruned.items()}, {k: v.clone() for k, v in self.fill.items()})

    def counts(self, n_layers: int | None = None, kinds=KINDS) -> dict[str, list[int]]:
        """Pruned neurons per layer for each of ``kinds`` (lists of ``n_layers`` entries; by default up to the
        highest layer that has any pruned neuron)."""
        if n_layers is None:
            n_layers = 1 + max((layer for (_, layer) in self.pruned), default=-1)
        out = {kind: [0] * n_layers for kind in kinds}
        for (kind, layer), mask in self.pruned.items():
            out.setdefault(kind, [0] * n_layers)[layer] = int(mask.sum())
        return out

    def indices(self) -> dict[str, dict[int, list[int]]]:
        return {kind: {layer: m.nonzero().squeeze(1).tolist() for (k, layer), m in sorted(self.pruned.items())
                       if k == kind and m.any()} for kind in sorted({k for k, _ in self.pruned})}

    def total(self, kind: str) -> int:
        return sum(int(m.sum()) for (k, _), m in self.pruned.items() if k == kind)


@contextlib.contextmanager
def ablated(model: nn.Module, adapter: Adapter, ablation: Ablation):
    """Apply ``ablation`` with forward-pre-hooks (x ← keep·x + fill) for the duration of the block."""
    handles = []
    for (kind, layer), mask in ablation.pruned.items():
        if not mask.any():
            continue
        module = adapter.out_proj(model, layer, kind)
        dtype, device = module.weight.dtype, module.weight.device
        keep = (~mask).to(dtype=dtype, device=device)
        fill = (ablation.fill[(kind, layer)] * mask).to(dtype=dtype, device=device)
        handles.append(module.register_forward_pre_hook(
            lambda _m, args, keep=keep, fill=fill: (args[0] * keep + fill,) + tuple(args[1:])))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
