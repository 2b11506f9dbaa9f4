"""What a pruned neuron did: the tokens its output weights promote when read through the unembedding.

A feed-forward neuron i of layer ℓ adds ``a_i · W_out[:, i]`` to the residual stream. Reading that direction
through the final norm and the unembedding, as the logit lens reads a hidden state, gives the tokens the neuron
pushes up (the "decoding feature neurons" view of Geva et al. 2022 and of TARS-style analyses). For a code
forget set, the pruned neurons should promote code tokens: ``def``, ``self``, ``import``, brackets.
"""

from __future__ import annotations

import torch

from .adapters import Adapter


@torch.no_grad()
def promoted_tokens(model, adapter: Adapter, tokenizer, pruned: dict[int, list[int]], k: int = 10) -> dict:
    """``{layer: {neuron: [its k most promoted tokens, as text]}}`` for the feed-forward neurons ``pruned``
    (``{layer: [neuron indices]}``), read off the model's current weights (before pruned columns are zeroed)."""
    out: dict[int, dict[int, list[str]]] = {}
    for layer, idx in sorted(pruned.items()):
        if not idx:
            continue
        weight = adapter.out_proj(model, layer, "ff").weight
        columns = weight[idx] if adapter.conv1d else weight[:, idx].T  # [n, hidden]: each neuron's write vector
        param = next(model.parameters())
        logits = adapter.unembed(model, columns.to(device=param.device, dtype=param.dtype)).float()
        top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices.tolist()
        out[layer] = {i: [tokenizer.decode([t]) for t in ids] for i, ids in zip(idx, top)}
    return out
