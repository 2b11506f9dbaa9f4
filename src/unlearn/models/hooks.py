"""Named hook points on the output projections: statistics collection and neuron ablation masks.

Hook points are ``("ff", layer)`` (taker's ``mlp_pre_out``) and ``("attn", layer)`` (``attn_pre_out``): the
input of the MLP / attention output projection; on mixture-of-experts models also ``("expert", layer)``, the input of
every expert's output projection (:mod:`.experts`). Statistics are batched on the tensor — one masked reduction
per hook call, no per-token Python loop — and accumulated in float64 so token budgets can grow freely.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import distributed
from ..data.chunking import TokenSplit
from . import experts
from .adapters import EXPERT, KINDS, Adapter

Point = tuple[str, int]  # ("ff" | "attn" | "expert", layer index)
IMPORTANCE = ("freq", "abs", "rms", "std")


@dataclass
class NeuronStats:
    """Sufficient statistics of one hook point over the valid (non-special) tokens seen so far (float64).

    A statistic that was not collected is ``None``; ``m2`` is the sum of squared deviations from the mean
    (exact for ``std``; when absent, ``std`` falls back to ``E x² − (E x)²``).
    """

    count: int
    positive: torch.Tensor | None  # number of tokens with x > 0, per neuron
    abs_sum: torch.Tensor | None
    sum: torch.Tensor | None
    sq_sum: torch.Tensor | None
    m2: torch.Tensor | None = None

    def importance(self, kind: str) -> torch.Tensor:
        """``freq`` = P(x > 0); ``abs`` = E|x|; ``rms`` = sqrt(E x²); ``std`` = sqrt(E (x − E x)²)."""
        n = max(self.count, 1)
        if kind not in IMPORTANCE:
            raise ValueError(f"unknown importance function {kind!r}")
        if kind == "std" and self.m2 is not None:
            return (self.m2 / n).clamp_min(0).sqrt()
        needed = {"freq": ("positive",), "abs": ("abs_sum",), "rms": ("sq_sum",), "std": ("sum", "sq_sum")}[kind]
        if any(getattr(self, f) is None for f in needed):
            raise ValueError(f"importance {kind!r} was not collected")
        if kind == "freq":
            return self.positive / n
        if kind == "abs":
            return self.abs_sum / n
        if kind == "rms":
            return (self.sq_sum / n).sqrt()
        return (self.sq_sum / n - (self.sum / n) ** 2).clamp_min(0).sqrt()

    @property
    def mean(self) -> torch.Tensor:
        if self.sum is None:
            raise ValueError("the mean was not collected")
        return self.sum / max(self.count, 1)


# What each statistic needs per batch: one reduction over the token rows. bf16 activations are summed in blocks
# of BLOCK rows in bf16 (fp32 accumulation inside the kernel, one bf16 rounding per block: relative error ~2e-4),
# the blocks in float32, the batches in float64. Upcasting the whole activation first costs twice as much and
# would take statistics to ~80 % of a plain forward's speed; the block sums keep them above 95 %. Counts of
# positive values are exact (a block holds at most BLOCK ≤ 256 ones). fp16 activations are upcast (a block sum
# could overflow fp16); fp32 ones are summed as they are.
BLOCK = 64


def _rowsum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the rows of ``x`` [n, d] as float64 [d]: block sums in bf16 for bf16 input (see above)."""
    if x.dtype == torch.float16:
        x = x.float()
    if x.dtype != torch.bfloat16:
        return x.sum(0, dtype=torch.float32).double()
    full = x.shape[0] - x.shape[0] % BLOCK
    out = x[:full].view(-1, BLOCK, x.shape[1]).sum(1).sum(0, dtype=torch.float32)
    if full < x.shape[0]:
        out = out + x[full:].sum(0, dtype=torch.float32)
    return out.double()


_REDUCE = {
    "positive": lambda x: _rowsum(torch.relu(x).sign_()),
    "abs_sum": lambda x: _rowsum(x.abs()),
    "sum": lambda x: _rowsum(x),
    # bf16 squares carry ~4e-3 relative error each, averaging out in the sums (fine for ranking); fp16 squares
    # could overflow, so fp16 is upcast first (in _rowsum)
    "sq_sum": lambda x: _rowsum(x.square() if x.dtype != torch.float16 else x.float().square()),
}
NEEDS = {"freq": {"positive"}, "abs": {"abs_sum"}, "rms": {"sq_sum"}, "std": {"sum", "m2"}, "mean": {"sum"}}


def hook_points(model: nn.Module, adapter: Adapter, kinds=KINDS) -> list[Point]:
    return [(kind, layer) for kind in kinds for layer in range(adapter.n_layers(model))]


def body(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (statistics need no logits)."""
    return getattr(model, "base_model", model)


@torch.inference_mode()
def collect_statistics(
    model: nn.Module,
    adapter: Adapter,
    split: TokenSplit,
    *,
    batch_size: int,
    kinds=KINDS,
    needs=("freq", "abs", "rms", "std", "mean"),
    progress=None,
) -> dict[Point, NeuronStats]:
    """Run ``split`` through the model body and return per-neuron statistics at every hook point.

    ``needs`` names the importance functions (and ``mean``) wanted; only their statistics are computed, each one
    reduction over the batch's token rows. Special tokens (separators, BOS, pad) are excluded by zeroing their
    rows for the reductions (their activations can be huge, so subtracting them afterwards would cancel badly).
    ``std`` merges per-batch centred sums (Chan et al.), so it stays exact where the standard deviation is tiny
    next to the mean.
    ``progress(n_tokens)`` is called after each batch.

    Under a multi-process launch each process takes its share of the batches and the sums are added across
    processes (see :mod:`unlearn.distributed`), so every process returns the statistics of the whole split.
    """
    device = next(model.parameters()).device

    def feed():
        for ids, special in distributed.batches(split, batch_size):
            yield special, lambda ids=ids: body(model)(input_ids=ids.to(device), use_cache=False)
            if progress:
                progress(ids.numel() * distributed.world_size())

    return statistics_over(model, adapter, feed(), kinds=kinds, needs=needs)


@torch.inference_mode()
def statistics_over(model: nn.Module, adapter: Adapter, feed, *, kinds=KINDS, needs=IMPORTANCE + ("mean",)):
    """The statistics of :func:`collect_statistics` over any inputs: ``feed`` yields ``(special, run)`` pairs,
    ``special`` a bool mask over the rows the hooks will see (True = leave out) and ``run()`` the forward pass
    that produces them (token batches for a language model, image batches for a vision transformer)."""
    device = next(model.parameters()).device
    fields = set().union(*(NEEDS[n] for n in needs))
    sums = [f for f in ("positive", "abs_sum", "sum", "sq_sum") if f in fields or (f == "sum" and "m2" in fields)]
    acc: dict[Point, dict] = {p: {} for p in hook_points(model, adapter, kinds)}
    state: dict = {}

    def make_hook(point):
        def hook(module, args):
            x = _neuron_rows(point[0], module, args)
            idx = state["special"]
            # Zero the few special rows in place (zero rows add nothing to the sums below) and put them back
            # before the projection runs: far cheaper than copying the whole activation to mask it.
            saved = x.index_select(0, idx) if len(idx) else None
            if saved is not None:
                x.index_fill_(0, idx, 0)
            try:
                n = state["n"]
                got = {f: _REDUCE[f](x) for f in sums}
                if "m2" in fields and n:
                    mean = got["sum"] / n
                    # the zeroed rows each add mean² to the centred sum: take it out again
                    m2 = (x.float() - mean.float()).square().sum(0).double() - len(idx) * mean.square()
                    _merge_m2(acc[point], n, mean, m2)
            finally:
                if saved is not None:
                    x.index_copy_(0, idx, saved)
            for f, v in got.items():
                acc[point][f] = acc[point][f] + v if f in acc[point] else v

        return hook

    handles = [
        adapter.out_proj(model, layer, kind).register_forward_pre_hook(make_hook((kind, layer))) for kind, layer in acc
    ]
    count = 0
    try:
        for special, run in feed:
            state["special"] = special.reshape(-1).nonzero().squeeze(1).to(device)
            state["n"] = int(special.numel()) - len(state["special"])
            count += state["n"]
            run()
    finally:
        for h in handles:
            h.remove()
    if distributed.world_size() > 1:
        count = _reduce_across_processes(model, adapter, acc, sums, "m2" in fields, count)
    return {
        p: NeuronStats(count, *(a[f].cpu() if f in a else None for f in ("positive", "abs_sum", "sum", "sq_sum", "m2")))
        for p, a in acc.items()
    }


def _neuron_rows(kind: str, module: nn.Module, args: tuple) -> torch.Tensor:
    """[tokens, neurons]: the neurons of a hook point on each token, from its module's positional arguments."""
    if kind == EXPERT:
        return experts.expert_activations(module, *experts.experts_input(args))
    return args[0].reshape(-1, args[0].shape[-1])


def _reduce_across_processes(model, adapter, acc: dict, sums: list[str], m2: bool, count: int) -> int:
    """Add every process's sums (and merge their centred sums in rank order); return the total token count.
    A process that got no batch contributes zeros."""
    dev = distributed.comm_device()
    for (kind, _layer), a in acc.items():
        n = adapter.n_neurons(model, kind)
        for f in sums:
            a[f] = distributed.all_reduce_(a.get(f, torch.zeros(n, dtype=torch.float64)).to(dev)).cpu()
        if m2:
            parts = [a.get(k, torch.zeros(n, dtype=torch.float64)).to(dev) for k in ("_mean", "m2")]
            counts = distributed.all_gather(torch.tensor([float(a.get("_n", 0))], dtype=torch.float64, device=dev))
            means, m2s = (distributed.all_gather(t) for t in parts)
            merged: dict = {}
            for c, mean, part in zip(counts, means, m2s):
                if int(c.item()):
                    _merge_m2(merged, int(c.item()), mean.cpu(), part.cpu())
            a["m2"] = merged.get("m2", torch.zeros(n, dtype=torch.float64))
    return int(distributed.reduce_sums({"count": count})["count"])


def _merge_m2(acc: dict, n: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
    """Chan et al.'s pairwise update of (count, mean, sum of squared deviations) with one batch's values."""
    if "m2" not in acc:
        acc["_n"], acc["_mean"], acc["m2"] = n, mean, m2
        return
    total = acc["_n"] + n
    delta = mean - acc["_mean"]
    acc["_mean"] = acc["_mean"] + delta * (n / total)
    acc["m2"] = acc["m2"] + m2 + delta.square() * (acc["_n"] * n / total)
    acc["_n"] = total


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
        return {
            kind: {
                layer: m.nonzero().squeeze(1).tolist()
                for (k, layer), m in sorted(self.pruned.items())
                if k == kind and m.any()
            }
            for kind in sorted({k for k, _ in self.pruned})
        }

    def total(self, kind: str) -> int:
        return sum(int(m.sum()) for (k, _), m in self.pruned.items() if k == kind)


class Switch:
    """Turns the hooks of an :func:`ablated` block off for a while: ``with switch.off(): ...`` runs the model as
    if nothing were ablated (healing distils from the unpruned model this way, without a copy of it)."""

    def __init__(self) -> None:
        self.on = True

    @contextlib.contextmanager
    def off(self):
        self.on = False
        try:
            yield
        finally:
            self.on = True


@contextlib.contextmanager
def ablated(model: nn.Module, adapter: Adapter, ablation: Ablation, switch: Switch | None = None):
    """Apply ``ablation`` with forward-pre-hooks (x ← keep·x + fill) for the duration of the block; while
    ``switch`` is off, the hooks leave their input alone."""
    handles = []
    for (kind, layer), mask in ablation.pruned.items():
        if not mask.any():
            continue
        module = adapter.out_proj(model, layer, kind)
        if kind == EXPERT:  # inside the experts' forward: a mask on their output projections
            handles.append(experts.mask_neurons(module, mask, ablation.fill[(kind, layer)], switch))
            continue
        keep, fill = ~mask, ablation.fill[(kind, layer)] * mask
        handles.append(module.register_forward_pre_hook(_ablate(keep, fill, switch)))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def _ablate(keep: torch.Tensor, fill: torch.Tensor, switch: Switch | None = None):
    """The pre-hook x ← keep·x + fill, with keep and fill cast once to the input's device and dtype (a model spread
    over devices by a device map hands a module its input before moving it, so the weight's device can differ).
    Casts made under inference mode are kept apart: autograd refuses inference tensors when training follows."""
    cast: dict = {}

    def hook(_module, args):
        if switch is not None and not switch.on:
            return None
        x = args[0]
        key = (x.device, x.dtype, torch.is_inference_mode_enabled())
        if key not in cast:
            cast[key] = (keep.to(device=x.device, dtype=x.dtype), fill.to(device=x.device, dtype=x.dtype))
        k, f = cast[key]
        return (x * k + f,) + tuple(args[1:])

    return hook
