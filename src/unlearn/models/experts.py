"""Mixture-of-experts internals: the expert neurons (their activations, masking, folding) and the routers (routing
statistics, each token's top-k choice, and how far a change to the model shifts it).

transformers 5 stores the experts of a layer fused: ``gate_up_proj`` [E, 2·width, hidden] and ``down_proj``
[E, hidden, width], one slice per expert, called as ``experts(hidden, top_k_index, top_k_weights)`` after the
router picked each token's top-k experts. Expert ``e``'s neuron ``i`` (flat index ``e · width + i``) is input ``i``
of ``down_proj[e]``: ``act(gate) * up`` of that expert. Its value on a token the router did not send to ``e`` is 0
(the expert adds nothing there), so its statistics over all tokens fold routing and activation together.

Zero ablation of an expert neuron is the column ``down_proj[e][:, i]`` set to 0. While a run is in progress that
is a parametrisation (``down_proj ← down_proj · keep``) rather than a pre-hook: the neurons sit inside the experts'
forward, out of a hook's reach, and a masked column also gets no gradient, so healing keeps it pruned. A constant
(mean ablation) would reach the residual stream scaled by each token's routing weight, which no checkpoint can
store: expert neurons take zero ablation only.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..errors import UnlearnError

# the fused layout read here: transformers' experts with concatenated [gate; up], not transposed, gated, no norm
_LAYOUT = {"is_transposed": False, "is_concatenated": True, "has_gate": True, "has_post_expert_norm": False}


def check_layout(module: nn.Module) -> tuple[int, int]:
    """(number of experts, width of each) of a fused experts module, or an error naming what differs."""
    down, gate_up = getattr(module, "down_proj", None), getattr(module, "gate_up_proj", None)
    if not isinstance(down, torch.Tensor) or down.dim() != 3 or not isinstance(gate_up, torch.Tensor):
        raise UnlearnError(f"{type(module).__name__}: expected fused expert tensors (gate_up_proj, down_proj)")
    odd = [k for k, v in _LAYOUT.items() if getattr(module, k, v) != v]
    n_experts, hidden, width = down.shape
    if odd or gate_up.shape != (n_experts, 2 * width, hidden):
        raise UnlearnError(f"{type(module).__name__}: expert layout not supported ({', '.join(odd) or 'shapes'})")
    return n_experts, width


def expert_activations(module: nn.Module, hidden: torch.Tensor, top_k_index: torch.Tensor) -> torch.Tensor:
    """[tokens, E · width]: every expert neuron's input to its output projection on each token (``hidden``
    [tokens, d] as the experts module receives it), 0 where the router did not choose the expert or the neuron is
    masked (:func:`mask_neurons`), as a pre-hook sees an ablated dense neuron."""
    n_experts, width = check_layout(module)
    out = hidden.new_zeros(hidden.shape[0], n_experts, width)
    bias = getattr(module, "gate_up_proj_bias", None) if getattr(module, "has_bias", False) else None
    for e in top_k_index.unique().tolist():
        if not 0 <= e < n_experts:  # some implementations pad the choice with E
            continue
        rows = (top_k_index == e).any(-1).nonzero().squeeze(1)
        gate_up = F.linear(hidden[rows], module.gate_up_proj[e], None if bias is None else bias[e])
        out[rows, e] = module._apply_gate(gate_up).to(out.dtype)
    for mask in _active_masks(module):
        out *= mask.keep.to(device=out.device, dtype=out.dtype).view(1, n_experts, width)
    return out.view(hidden.shape[0], n_experts * width)


def _active_masks(module: nn.Module) -> list:
    if not parametrize.is_parametrized(module, "down_proj"):
        return []
    chain = module.parametrizations["down_proj"]
    return [p for p in chain if isinstance(p, _Keep) and (p.switch is None or p.switch.on)]


def experts_input(args: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states [tokens, d], top-k expert indices [tokens, k]) from an experts module's positional
    arguments, as a forward pre-hook sees them."""
    if len(args) < 2:
        raise UnlearnError("the experts module was called without positional (hidden, top_k_index) arguments")
    hidden = args[0].reshape(-1, args[0].shape[-1])
    return hidden, args[1].reshape(hidden.shape[0], -1)


class _Keep(nn.Module):
    """The parametrisation ``down_proj ← down_proj · keep`` (keep [E, 1, width]); a no-op while ``switch`` is off."""

    def __init__(self, keep: torch.Tensor, switch=None) -> None:
        super().__init__()
        self.keep, self.switch, self.cast = keep, switch, {}

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.switch is not None and not self.switch.on:
            return weight
        key = (weight.device, weight.dtype)
        if key not in self.cast:
            self.cast[key] = self.keep.to(device=weight.device, dtype=weight.dtype)
        return weight * self.cast[key]


@dataclass
class _Masked:
    module: nn.Module
    keep: _Keep

    def remove(self) -> None:
        """Take this mask off (only this one: masks of nested ablations stay), restoring the original tensor."""
        chain = self.module.parametrizations["down_proj"]
        if len(chain) == 1:
            parametrize.remove_parametrizations(self.module, "down_proj", leave_parametrized=False)
            return
        index = next(i for i, p in enumerate(chain) if p is self.keep)
        del chain[index]


def mask_neurons(module: nn.Module, pruned: torch.Tensor, fill: torch.Tensor, switch=None) -> _Masked:
    """Zero-ablate the expert neurons ``pruned`` (bool [E · width]) of ``module`` until ``.remove()``."""
    n_experts, width = check_layout(module)
    if bool((fill[pruned] != 0).any()):
        raise UnlearnError("mean ablation of expert neurons cannot be stored in a checkpoint: use ablation 'zero'")
    keep = _Keep((~pruned).to(torch.float32).view(n_experts, 1, width), switch)
    parametrize.register_parametrization(module, "down_proj", keep, unsafe=True)
    return _Masked(module, keep)


@torch.no_grad()
def zero_neurons(module: nn.Module, idx: torch.Tensor) -> None:
    """Fold the zero ablation of expert neurons ``idx`` (flat indices): their columns of ``down_proj`` and their
    gate and up rows of ``gate_up_proj`` (and its bias) set to 0, so no gradient through them is left."""
    _, width = check_layout(module)
    idx = idx.to(module.down_proj.device)
    expert, j = idx // width, idx % width
    module.down_proj[expert, :, j] = 0
    bias = getattr(module, "gate_up_proj_bias", None)
    for rows in (j, j + width):
        module.gate_up_proj[expert, rows, :] = 0
        if isinstance(bias, torch.Tensor):
            bias[expert, rows] = 0


def router_choice(output, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(router logits [tokens, E], chosen experts [tokens, k]) from a router's output: transformers 5 routers
    return (logits, weights, indices); a router returning logits alone is read as softmax + top-k."""
    logits = output[0] if isinstance(output, tuple) else output
    logits = logits.reshape(-1, logits.shape[-1])
    if isinstance(output, tuple) and len(output) >= 3:
        return logits, output[2].reshape(logits.shape[0], -1)
    return logits, logits.topk(top_k, dim=-1).indices


def top_k(model: nn.Module) -> int:
    return int(model.config.num_experts_per_tok)


@contextlib.contextmanager
def captured(routers: dict[int, nn.Module], k: int):
    """Record every forward of ``routers`` ({layer: router}): yields {layer: [(logits, chosen), ...]}, logits with
    their graph (a loss may be taken of them)."""
    seen: dict[int, list] = {layer: [] for layer in routers}

    def hook_for(layer):
        return lambda _module, _args, output: seen[layer].append(router_choice(output, k))

    handles = [router.register_forward_hook(hook_for(layer)) for layer, router in routers.items()]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@dataclass
class Routing:
    """A model's routing of one token split (special tokens left out): mean router probability and top-k count
    per layer and expert, and each token's top-k set per layer (sorted expert indices)."""

    probs: torch.Tensor  # [layers, E] float64: mean softmax router probability over the tokens
    counts: torch.Tensor  # [layers, E] int64: tokens whose top-k holds the expert
    choices: torch.Tensor  # [tokens, layers, k] int64

    @property
    def tokens(self) -> int:
        return int(self.choices.shape[0])

    def summary(self) -> dict:
        return {"tokens": self.tokens, "mean_prob": _rounded(self.probs), "top_k_count": self.counts.tolist()}


@torch.inference_mode()
def routing(model: nn.Module, adapter, split, batch_size: int) -> Routing:
    """The routing of ``split`` (a token split) through ``model``'s body, every MoE layer."""
    layers = range(adapter.n_layers(model))
    routers = {layer: adapter.router_of(model, layer) for layer in layers}
    device = next(model.parameters()).device
    body = getattr(model, "base_model", model)
    probs, choices = [], []
    with captured(routers, top_k(model)) as seen:
        for ids, special in split.batches(batch_size):
            body(input_ids=ids.to(device), use_cache=False)
            valid = ~special.reshape(-1).to(device)
            got = [seen[layer].pop() for layer in layers]
            probs.append(torch.stack([torch.softmax(lg.float(), -1)[valid].double().sum(0) for lg, _ in got]).cpu())
            choices.append(torch.stack([c[valid].sort(-1).values for _, c in got], 1).cpu())
    n_experts = adapter.router_of(model, 0).weight.shape[0]
    chosen = torch.cat(choices) if choices else torch.zeros(0, len(layers), top_k(model), dtype=torch.long)
    counts = torch.stack([torch.bincount(chosen[:, i].reshape(-1), minlength=n_experts) for i in layers])
    total = sum(probs) if probs else torch.zeros(len(layers), n_experts, dtype=torch.float64)
    return Routing(total / max(1, len(chosen)), counts, chosen)


def routing_shift(before: Routing, after: Routing, target: tuple[int, int] | None = None) -> dict:
    """How many tokens changed experts: the fraction of (token, layer) routing decisions whose top-k set differs
    (``decisions``), per layer, and the fraction of tokens routed differently in at least one layer
    (``tokens``). With ``target`` = (layer, expert): the share of tokens that chose it, before and after."""
    if before.choices.shape != after.choices.shape:
        raise ValueError("routing of different token splits")
    changed = (before.choices != after.choices).any(-1)  # [tokens, layers]
    out = {
        "decisions": round(float(changed.double().mean()), 6) if changed.numel() else 0.0,
        "tokens": round(float(changed.any(1).double().mean()), 6) if changed.numel() else 0.0,
        "per_layer": _rounded(changed.double().mean(0)) if changed.numel() else [],
    }
    if target is not None:
        layer, expert = target
        out["target_chosen"] = {
            name: round(float((r.choices[:, layer] == expert).any(-1).double().mean()), 6) if r.tokens else 0.0
            for name, r in (("before", before), ("after", after))
        }
    return out


def _rounded(t: torch.Tensor) -> list:
    return torch.round(t.double(), decimals=6).tolist()
