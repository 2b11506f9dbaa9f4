"""The parametric trace of the forget data: the MLP directions most aligned with it before unlearning, and how much
of each is left after (the intrinsic evaluation of ConceptVectors, Hong et al. 2024).

A feed-forward neuron writes ``a · v`` into the residual stream, ``v`` its column of the MLP output projection (its
value vector). Read through the final norm and the unembedding, as the logit lens reads a hidden state (and as
:mod:`unlearn.models.inspect` reads pruned neurons), ``v`` gives logits ``z`` over the vocabulary. Its *alignment*
with a forget corpus is how far the logits of the corpus's own tokens ``F`` stand above the vocabulary's, in
standard deviations: ``(mean_{t∈F} z_t − mean_t z_t) / std_t z_t``. ``F`` are the tokens much more frequent in the
forget text than in the retain text. The ``k`` most aligned neurons of all layers are the concept vectors; after
unlearning each is compared with what is now in its place ``v'``: cosine, norm ratio ``‖v'‖/‖v‖`` and projection
share ``⟨v', v⟩/‖v‖²`` (the part of the original direction that remains), and its alignment then.

Pruning zeroes the columns it removes (norm 0); ConceptVectors found that fine-tuning methods leave these vectors
almost untouched (cosine ≈ 1), suppressing the knowledge elsewhere rather than erasing it.

Choosing among all neurons needs every neuron's mean and standard deviation over the vocabulary; with ``E`` the
unembedding rows and ``h`` a normed value vector they are ``ē·h`` and ``(hᵀ C h)^½`` with ``C`` the covariance of
the rows of ``E``: one pass over ``E`` and a product per layer, never the [neurons × vocabulary] logits.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..models.adapters import EXPERT, Adapter, weight_columns

TRACE_VECTORS = 32  # k: the concept vectors followed through unlearning
TRACE_TOKENS = 50  # the forget-specific tokens their alignment is measured on
PROMOTED = 5  # tokens recorded per concept vector (what it promoted before)
_VOCAB_CHUNK = 8192  # unembedding rows converted to float32 at once
_NEURON_CHUNK = 2048
_MEANS = ("cosine", "norm_ratio", "projection", "alignment_before", "alignment_after")  # averaged over the vectors


@dataclass
class ConceptVectors:
    """The chosen value vectors as they were: float32 copies on the CPU, with where they sit and what they meant."""

    tokens: torch.Tensor  # the forget-specific token ids
    layers: list[int]
    neurons: list[int]
    vectors: torch.Tensor  # [k, hidden]
    alignment: list[float]
    promotes: list[list[int]]  # each vector's most promoted token ids


def forget_specific_tokens(forget, retain, vocab: int, n: int = TRACE_TOKENS) -> torch.Tensor:
    """The ids of at most ``n`` tokens most over-represented in ``forget`` against ``retain`` (token splits with
    ``input_ids`` and a ``special`` mask; ``retain`` may be None): ranked by the log ratio of their add-one smoothed
    relative frequencies, keeping only tokens the forget text holds more often than the retain text would predict.
    Special tokens never count; ties go to the lower id."""
    f = _counts(forget, vocab)
    r = _counts(retain, vocab) if retain is not None else torch.zeros_like(f)
    score = torch.log((f + 1) / (f.sum() + vocab)) - torch.log((r + 1) / (r.sum() + vocab))
    score[f == 0] = -torch.inf
    order = torch.sort(score, descending=True, stable=True).indices[:n]
    return order[score[order] > 0]


def _counts(split, vocab: int) -> torch.Tensor:
    ids = split.input_ids[~split.special.bool()]
    ids = ids[(ids >= 0) & (ids < vocab)]
    return torch.bincount(ids, minlength=vocab).double()


class Lens:
    """The final norm, OPT's projection out and the unembedding as float32 maps from value vectors to logits."""

    def __init__(self, model: nn.Module, adapter: Adapter):
        head = model.get_output_embeddings()
        self.weight, self.bias = head.weight, getattr(head, "bias", None)
        self.device = self.weight.device
        self.norm = copy.deepcopy(model.get_submodule(adapter.final_norm)).float().to(self.device)
        out = getattr(getattr(getattr(model, "model", None), "decoder", None), "project_out", None)
        self.project_out = copy.deepcopy(out).float().to(self.device) if out is not None else None

    def hidden(self, v: torch.Tensor) -> torch.Tensor:
        """[n, d]: what the unembedding multiplies; a last column of ones when it has a bias (its extra input)."""
        h = self.norm(v.to(self.device, torch.float32))
        if self.project_out is not None:
            h = self.project_out(h)
        return torch.cat([h, h.new_ones(len(h), 1)], 1) if self.bias is not None else h

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Unembedding rows ``start:stop`` in float32 (with the bias as a last column, to match :meth:`hidden`)."""
        rows = self.weight[start:stop].float()
        return torch.cat([rows, self.bias[start:stop, None].float()], 1) if self.bias is not None else rows

    def logits(self, v: torch.Tensor) -> torch.Tensor:
        h = self.hidden(v)
        vocab = len(self.weight)
        return torch.cat([h @ self.rows(i, i + _VOCAB_CHUNK).T for i in range(0, vocab, _VOCAB_CHUNK)], 1)

    def moments(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The mean row of the unembedding, the mean row over ``tokens`` and the rows' covariance (1/V)."""
        vocab = len(self.weight)
        chunks = range(0, vocab, _VOCAB_CHUNK)
        mean = sum(self.rows(i, i + _VOCAB_CHUNK).sum(0) for i in chunks) / vocab
        cov = 0
        for i in chunks:
            centred = self.rows(i, i + _VOCAB_CHUNK) - mean
            cov = cov + centred.T @ centred
        ids = tokens.to(self.device)
        picked = self.weight[ids].float()
        if self.bias is not None:
            picked = torch.cat([picked, self.bias[ids, None].float()], 1)
        return mean, picked.mean(0), cov / vocab


def _divided(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den``, 0 where ``den`` is 0 (a zero vector: no direction, no alignment)."""
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))


def value_vectors(model: nn.Module, adapter: Adapter, layer: int) -> torch.Tensor:
    """[neurons, hidden]: each feed-forward neuron's value vector in ``layer`` (any dtype and device; a view on a
    dense model). On a mixture-of-experts model: every expert neuron's, ``down_proj[e][:, i]`` expert by expert,
    after those of its dense MLP if it has one (Qwen2-MoE's shared expert)."""
    parts = [weight_columns(adapter.out_proj(model, layer, "ff"), adapter.conv1d).T] if adapter.has("ff") else []
    if adapter.has(EXPERT):
        down = adapter.experts_of(model, layer).down_proj  # [experts, hidden, width]
        parts.append(down.transpose(1, 2).reshape(-1, down.shape[1]))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def alignment(lens: Lens, v: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The alignment of each row of ``v`` with ``tokens`` from its full logits (0 for a zero vector), and its
    :data:`PROMOTED` most promoted token ids."""
    z = lens.logits(v)
    score = _divided(z[:, tokens.to(z.device)].mean(1) - z.mean(1), z.std(1, correction=0))
    score = torch.where(v.to(z.device).norm(dim=1) > 0, score, torch.zeros_like(score))
    return score.cpu(), z.topk(min(PROMOTED, z.shape[1]), dim=1).indices.cpu()


@torch.no_grad()
def alignment_scores(model: nn.Module, adapter: Adapter, tokens: torch.Tensor) -> torch.Tensor:
    """[layers, neurons]: every feed-forward neuron's alignment with ``tokens``, from the unembedding's moments
    (equal to :func:`alignment` on each column, without the logits); −inf for a zero column, never chosen."""
    lens = Lens(model, adapter)
    mean, mean_f, cov = lens.moments(tokens)
    out = []
    for layer in range(adapter.n_layers(model)):
        columns, scores = value_vectors(model, adapter, layer), []
        for i in range(0, len(columns), _NEURON_CHUNK):
            v = columns[i : i + _NEURON_CHUNK].to(lens.device, torch.float32)
            h = lens.hidden(v)
            std = ((h @ cov) * h).sum(1).clamp_min(0).sqrt()
            score = _divided(h @ mean_f - h @ mean, std)
            scores.append(torch.where(v.norm(dim=1) > 0, score, -torch.inf).cpu())
        out.append(torch.cat(scores))
    return torch.stack(out)


@torch.no_grad()
def concept_vectors(model: nn.Module, adapter: Adapter, forget, retain, k: int = TRACE_VECTORS):
    """The ``k`` feed-forward value vectors of all layers most aligned with the tokens specific to ``forget``
    against ``retain`` (their statistics splits), copied as they are now; None when no token is specific to the
    forget text or the model has no unembedding to read them through (or weights offloaded to no device)."""
    head = model.get_output_embeddings()
    if head is None or any(p.device.type == "meta" for p in model.parameters()):
        return None
    tokens = forget_specific_tokens(forget, retain, len(head.weight))
    if not len(tokens):
        return None
    scores = alignment_scores(model, adapter, tokens)
    flat = scores.flatten()
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    order = order[torch.isfinite(flat[order])].tolist()
    if not order:
        return None
    width = scores.shape[1]
    layers, neurons = [i // width for i in order], [i % width for i in order]
    vectors = torch.stack([value_vectors(model, adapter, a)[b].float().cpu() for a, b in zip(layers, neurons)])
    score, top = alignment(Lens(model, adapter), vectors, tokens)
    return ConceptVectors(tokens, layers, neurons, vectors, score.tolist(), top.tolist())


@torch.no_grad()
def trace_remaining(model: nn.Module, adapter: Adapter, concepts: ConceptVectors, tokenizer=None) -> dict:
    """How much of each concept vector ``model`` still holds in its place (the unlearned model, pruned columns
    folded in): the ``parametric_trace`` entry of a run's metrics, means over the vectors and each vector."""
    before = concepts.vectors
    after = torch.stack(
        [value_vectors(model, adapter, a)[b].float().cpu() for a, b in zip(concepts.layers, concepts.neurons)]
    )
    norm_before, norm_after = before.norm(dim=1), after.norm(dim=1)
    dot = (before * after).sum(1)
    cosine = _divided(dot, norm_before * norm_after)  # 0 where the vector is gone
    ratio, projection = norm_after / norm_before, dot / norm_before**2
    aligned, _ = alignment(Lens(model, adapter), after, concepts.tokens)
    decode = (lambda t: tokenizer.decode([t])) if tokenizer is not None else str  # noqa: E731
    vectors = [
        {
            "layer": layer,
            "neuron": neuron,
            "promotes": [decode(t) for t in concepts.promotes[i]],
            "alignment_before": _round(concepts.alignment[i]),
            "alignment_after": _round(aligned[i]),
            "cosine": _round(cosine[i]),
            "norm_ratio": _round(ratio[i]),
            "projection": _round(projection[i]),
        }
        for i, (layer, neuron) in enumerate(zip(concepts.layers, concepts.neurons))
    ]
    means = {key: _round(sum(v[key] for v in vectors) / len(vectors)) for key in _MEANS} if vectors else {}
    return {
        "k": len(vectors),
        "forget_tokens": [decode(t) for t in concepts.tokens.tolist()],
        **means,
        "vectors": vectors,
    }


def _round(x) -> float:
    return round(float(x), 6)
