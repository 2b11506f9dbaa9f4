"""The model-changing attacks (quantisation, relearning) and the logit lens, each a small function."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..data.chunking import TokenSplit
from ..errors import UnlearnError


def recovery(before: float, after_unlearning: float, after_attack: float) -> float | None:
    """How much of what unlearning removed the attack brings back: (attack − unlearned) / (before − unlearned),
    clipped to [0, 1]; None when unlearning changed nothing (no gap to recover)."""
    gap = before - after_unlearning
    if abs(gap) < 1e-12:
        return None
    return min(1.0, max(0.0, (after_attack - after_unlearning) / gap))


# ---- quantisation ----------------------------------------------------------------------------------------------
def quantize_tensor(weight: torch.Tensor, bits: int, group_size: int = 0, dim: int = 0) -> torch.Tensor:
    """Round-trip ``weight`` through symmetric ``bits``-bit integers with one scale per output channel (``dim``
    indexes the channels) or per group of ``group_size`` inputs within a channel: ``q = clamp(round(w / s),
    −(2^(b−1) − 1), 2^(b−1) − 1)``, ``s = max|w| / (2^(b−1) − 1)``; returns ``q · s`` in the weight's dtype."""
    if bits < 2:
        raise UnlearnError(f"cannot quantise to {bits} bits: use 2 to 16")
    qmax = 2 ** (bits - 1) - 1
    w = weight.detach().float().movedim(dim, 0)
    rows = w.reshape(w.shape[0], -1)
    if group_size and rows.shape[1] % group_size == 0 and rows.shape[1] > group_size:
        rows = rows.reshape(rows.shape[0], -1, group_size)
    scale = rows.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) / qmax
    q = (rows / scale).round().clamp(-qmax, qmax) * scale
    return q.reshape(w.shape).movedim(0, dim).to(weight.dtype)


@torch.no_grad()
def quantize_model(model: nn.Module, bits: int, group_size: int = 0) -> int:
    """Quantise (round trip) the weights of every linear layer in place, as weight-only int8/4-bit inference does;
    the embeddings and the output embedding stay as they are. Returns how many layers were quantised."""
    skip = {id(model.get_output_embeddings()), id(model.get_input_embeddings())}
    n = 0
    for module in model.modules():
        conv1d = type(module).__name__ == "Conv1D"  # GPT-2: weight is [in, out]
        if id(module) in skip or not (isinstance(module, nn.Linear) or conv1d):
            continue
        module.weight.copy_(quantize_tensor(module.weight, bits, group_size, dim=1 if conv1d else 0))
        n += 1
    return n


# ---- logit lens ----------------------------------------------------------------------------------------------
@torch.inference_mode()
def logit_lens(model: nn.Module, adapter, split: TokenSplit, *, batch_size: int, progress=None) -> list[dict]:
    """Next-token accuracy read off every block's output (final norm + output embedding): per layer ``top1``,
    ``top10`` and ``median_rank`` (0 = ranked first) of the scored targets. The last layer's equals the model's."""
    device = next(model.parameters()).device
    blocks = adapter.blocks(model)
    captured: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    handles = [b.register_forward_hook(keep) for b in blocks]
    ranks: list[list[torch.Tensor]] = [[] for _ in blocks]
    try:
        for ids, special in split.batches(batch_size):
            captured.clear()
            ids = ids.to(device)
            model(input_ids=ids, use_cache=False)
            valid = ~special[:, 1:].to(device)
            targets = ids[:, 1:][valid]
            for layer, hidden in enumerate(captured):
                h = hidden[:, :-1][valid]
                logits = adapter.unembed(model, h).float()
                target_logit = logits.gather(-1, targets.unsqueeze(-1))
                ranks[layer].append((logits > target_logit).sum(-1).cpu())
            if progress:
                progress(ids.numel())
    finally:
        for h in handles:
            h.remove()
    out = []
    for r in ranks:
        r = torch.cat(r) if r else torch.zeros(0, dtype=torch.long)
        n = max(len(r), 1)
        out.append(
            {
                "top1": float((r == 0).sum()) / n,
                "top10": float((r < 10).sum()) / n,
                "median_rank": float(r.float().median()) if len(r) else None,
            }
        )
    return out


# ---- relearning ----------------------------------------------------------------------------------------------
def relearn(model: nn.Module, split: TokenSplit, *, steps: int, lr: float, batch_size: int, seed: int, reporter):
    """A copy of ``model`` fine-tuned for ``steps`` optimizer steps on ``split`` (next-token loss on its scored
    tokens) with the training loop of the methods and ``unlearn learn``; returns (model in the input's dtype,
    per-step log)."""
    from ..methods.training import TrainConfig, fine_tune

    if len(split.input_ids) == 0:
        raise UnlearnError("no rows to relearn on")
    dtype = next(model.parameters()).dtype
    cfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size)
    result = fine_tune(copy.deepcopy(model), split, cfg, seed=seed, reporter=reporter)
    return result.model.to(dtype).eval().requires_grad_(False), result.log
