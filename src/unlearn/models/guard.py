"""A GUARD-style generation-time guard: the inference-time policy of the ``guard`` method (after "Generation-time
LLM unlearning via adaptive restriction and detection").

The policy has three parts, all kept beside the plain checkpoint (``policy.json`` and ``policy.safetensors``):

* a **detector**: a sequence is flagged when its embedding, the mean of the unit-normalised hidden states at the
  output of decoder block ``layer`` (the first position of each row left out: an attention sink), centred by
  ``mean``, is closer in cosine to the forget centroid than to the retain centroid by more than ``threshold``;
* **forbidden tokens** and **phrases** (token n-grams) far more frequent in the forget data than in the retain data;
* a **logits edit**: in a flagged sequence every forbidden token, and the token that would complete a forbidden
  phrase after the tokens before it, loses ``penalty`` (``inf``: set to the dtype's lowest value, never chosen).

Attached to a model (:meth:`GuardPolicy.install`) it is three hooks: a forward pre-hook on the model that sees the
input ids (a forward without a filled cache starts a sequence; later ones append the tokens they bring), a
forward hook on block ``layer`` that runs the detector on that first forward, and a forward hook on the output
embeddings (the LM head) that edits the logits. ``generate`` with its KV cache and next-token scoring of whole
sequences both see the guarded distribution; :meth:`GuardPolicy.processor` gives the same edit as a transformers
``LogitsProcessor`` for a model without the hooks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UnlearnError
from . import component_files, policies
from .adapters import adapter_for
from .policies import POLICY_FILE, TENSORS_FILE

FORMAT = 1
TENSORS = ("mean", "forget_centroid", "retain_centroid")


def pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Sequence embeddings [B, d] (float32): the mean over each row's attended positions, its first one left out
    (unless it is the only one), of the unit-normalised hidden states ``hidden`` [B, T, d]."""
    h = nn.functional.normalize(hidden.float(), dim=-1)
    mask = torch.ones(h.shape[:2], device=h.device) if mask is None else mask.to(h.device).float()
    first = mask.cumsum(1) == 1
    many = mask.sum(1, keepdim=True) > 1
    keep = mask * ~(first & many)
    return (h * keep.unsqueeze(-1)).sum(1) / keep.sum(1, keepdim=True).clamp_min(1)


def penalise(values: torch.Tensor, penalty: float) -> torch.Tensor:
    """``values`` lowered by ``penalty``; ``inf``: set to the dtype's lowest finite value (never chosen, losses
    stay finite)."""
    if math.isinf(penalty):
        return torch.full_like(values, torch.finfo(values.dtype).min)
    return values - penalty


@dataclass
class GuardPolicy:
    """The detector (``mean``, ``forget_centroid``, ``retain_centroid`` [d], ``threshold`` at block ``layer``),
    the forbidden single tokens (``tokens``: from the data; ``semantic``: their output-embedding neighbours), the
    forbidden ``phrases`` (token id lists of length ≥ 2) and the ``penalty``."""

    layer: int
    mean: torch.Tensor
    forget_centroid: torch.Tensor
    retain_centroid: torch.Tensor
    threshold: float
    tokens: list[int]
    phrases: list[list[int]]
    penalty: float
    semantic: list[int] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    file: str = POLICY_FILE
    _handles: list = field(default_factory=list, init=False, repr=False)
    _state: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        d = self.mean.shape[-1]
        if self.forget_centroid.shape != (d,) or self.retain_centroid.shape != (d,) or self.mean.shape != (d,):
            raise UnlearnError("inconsistent guard policy: the detector's vectors differ in width")
        if any(len(p) < 2 for p in self.phrases):
            raise UnlearnError("inconsistent guard policy: a phrase has fewer than 2 tokens")
        if not self.penalty > 0:
            raise UnlearnError(f"inconsistent guard policy: penalty {self.penalty} is not positive")

    @property
    def forbidden(self) -> list[int]:
        """Every single token penalised in a flagged sequence (from the data, then the semantic neighbours)."""
        return list(dict.fromkeys(self.tokens + self.semantic))

    def scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The detector's score of sequence embeddings [B, d]: cos to the forget centroid − cos to the retain one."""
        x = embeddings.float() - self.mean.to(embeddings.device).float()
        centroids = (self.forget_centroid, self.retain_centroid)
        cos = [nn.functional.cosine_similarity(x, c.to(x.device).float()[None], dim=-1) for c in centroids]
        return cos[0] - cos[1]

    def flags(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Which sequences the detector flags (bool [B])."""
        return self.scores(embeddings) > self.threshold

    def edit(self, logits: torch.Tensor, history: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        """``logits`` [B, L, V] (the last L positions of ``history`` [B, T], T ≥ L) with, in the rows ``flags``
        marks, every forbidden token and every token that completes a forbidden phrase penalised once."""
        flags = flags.to(logits.device)
        if not bool(flags.any()):
            return logits
        out = logits.clone()
        vocab = logits.shape[-1]
        single = torch.tensor([t for t in self.forbidden if t < vocab], dtype=torch.long, device=logits.device)
        if len(single):
            picked = out[..., single]
            out[..., single] = torch.where(flags[:, None, None], penalise(picked, self.penalty), picked)
        blocked = set(single.tolist())
        n_pos = logits.shape[1]
        history = history.to(logits.device)
        for m, group in self._phrase_groups(blocked, vocab).items():
            prefixes = torch.tensor([p[:-1] for p in group], device=logits.device)
            last = torch.tensor([p[-1] for p in group], device=logits.device)
            recent = history[:, -(n_pos + m - 1) :]
            if recent.shape[1] < m:
                continue
            windows = recent.unfold(1, m, 1)  # [B, W, m], window w ends at position w + m − 1 of ``recent``
            hit = (windows[:, :, None, :] == prefixes[None, None]).all(-1) & flags[:, None, None]
            hit = hit[:, -n_pos:]
            rows, pos, which = hit.nonzero(as_tuple=True)
            pos = pos + (n_pos - hit.shape[1])
            if len(rows):
                cols = last[which]
                out[rows, pos, cols] = penalise(out[rows, pos, cols], self.penalty)
        return out

    def _phrase_groups(self, blocked: set, vocab: int) -> dict[int, list[list[int]]]:
        """The phrases whose last token is not already forbidden, by prefix length (duplicates dropped)."""
        groups: dict[int, list[list[int]]] = {}
        for p in self.phrases:
            if p[-1] not in blocked and p[-1] < vocab and p not in groups.get(len(p) - 1, []):
                groups.setdefault(len(p) - 1, []).append(list(p))
        return groups

    @torch.no_grad()
    def detect(self, model: nn.Module, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
        """Run the detector on prompts: which rows of ``input_ids`` [B, T] it flags (one forward to ``layer``)."""
        adapter = adapter_for(model)
        seen = {}

        def hook(_module, _args, output):
            seen["h"] = output[0] if isinstance(output, tuple) else output
            raise _Done

        handle = adapter.blocks(model)[self.layer].register_forward_hook(hook)
        try:
            device = next(model.parameters()).device
            mask = None if attention_mask is None else attention_mask.to(device)
            getattr(model, "base_model", model)(input_ids=input_ids.to(device), attention_mask=mask, use_cache=False)
        except _Done:
            pass
        finally:
            handle.remove()
        return self.flags(pool(seen["h"], attention_mask))

    def processor(self, model: nn.Module, input_ids: torch.Tensor, attention_mask=None) -> GuardLogitsProcessor:
        """A ``LogitsProcessor`` for ``model.generate(input_ids, logits_processor=[...])`` on a model without the
        hooks: the detector runs once on the prompts here."""
        return GuardLogitsProcessor(self, self.detect(model, input_ids, attention_mask))

    def _before(self, _module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        state = self._state
        if ids is None:  # inputs_embeds: nothing to track, no edit
            state.clear()
            return
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5 names it ``cache``
        filled = cache is not None and (cache.get_seq_length() if hasattr(cache, "get_seq_length") else len(cache))
        if not filled or "history" not in state or len(state["history"]) != len(ids):
            mask = kwargs.get("attention_mask")
            state.update(history=ids, mask=mask if mask is not None and mask.dim() == 2 else None, flags=None)
            state["pending"] = True
        else:
            state["history"] = torch.cat([state["history"], ids.to(state["history"].device)], dim=1)

    def _detect_hook(self, _module, _args, output):
        if self._state.pop("pending", False):
            h = output[0] if isinstance(output, tuple) else output
            self._state["flags"] = self.flags(pool(h.detach(), self._state.get("mask")))

    def _edit_hook(self, _module, _args, output):
        state = self._state
        flags = state.get("flags")
        if flags is None or not torch.is_tensor(output) or output.dim() != 3 or len(output) != len(flags):
            return output
        return self.edit(output, state["history"], flags)

    def install(self, model: nn.Module) -> None:
        adapter = adapter_for(model)
        n_layers = adapter.n_layers(model)
        if not 0 <= self.layer < n_layers:
            raise UnlearnError(f"the guard policy reads layer {self.layer}, but the model has {n_layers} layers")
        width = model.get_input_embeddings().weight.shape[1]
        if width != self.mean.shape[0]:
            raise UnlearnError(f"the guard policy's detector is {self.mean.shape[0]} wide, the model {width}")
        head = model.get_output_embeddings()
        if head is None:
            raise UnlearnError("the guard policy edits the LM head's logits, and this model has no LM head")
        self.remove()
        self._handles = [
            model.register_forward_pre_hook(self._before, with_kwargs=True),
            adapter.blocks(model)[self.layer].register_forward_hook(self._detect_hook),
            head.register_forward_hook(self._edit_hook),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._state.clear()

    def record(self) -> dict:
        """What ``policy.json`` says (everything but the detector's vectors)."""
        return {
            "format": FORMAT,
            "kind": "guard",
            "detector": f"mean unit hidden state after decoder block {self.layer}, cos(forget) − cos(retain)",
            "layer": self.layer,
            "threshold": self.threshold,
            "penalty": "inf" if math.isinf(self.penalty) else self.penalty,
            "tokens": list(self.tokens),
            "semantic": list(self.semantic),
            "phrases": [list(p) for p in self.phrases],
            "tensors": TENSORS_FILE,
            "info": self.info,
        }

    def save(self, directory: Path) -> list[str]:
        tensors = {n: getattr(self, n) for n in TENSORS}
        return component_files.write(directory, POLICY_FILE, self.record(), TENSORS_FILE, tensors)

    def describe(self) -> str:
        return (
            f"guard policy ({len(self.forbidden)} forbidden tokens, {len(self.phrases)} phrases, detector at layer "
            f"{self.layer})"
        )


class _Done(Exception):
    """Raised by the detector's hook once block ``layer`` has run: the blocks after it are not needed."""


class GuardLogitsProcessor:
    """The policy's logits edit as a transformers ``LogitsProcessor``: ``flags`` [B] from the detector (rows of a
    beam search or of several samples per prompt follow their prompt's flag)."""

    def __init__(self, policy: GuardPolicy, flags: torch.Tensor):
        self.policy, self.flags = policy, flags.bool()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = len(input_ids)
        if rows % len(self.flags):
            raise UnlearnError(f"the guard processor has {len(self.flags)} flags, generation {rows} rows")
        flags = self.flags.repeat_interleave(rows // len(self.flags)).to(scores.device)
        return self.policy.edit(scores[:, None, :], input_ids, flags)[:, 0]


def build(meta: dict, tensors: dict) -> GuardPolicy:
    """The guard policy of a ``policy.json`` record of kind ``guard`` and its tensors."""
    if meta.get("format") != FORMAT:
        raise ValueError(f"format {meta.get('format')!r} of the guard policy, this version reads {FORMAT}")
    return GuardPolicy(
        layer=int(meta["layer"]),
        **{n: tensors[n] for n in TENSORS},
        threshold=float(meta["threshold"]),
        tokens=[int(t) for t in meta["tokens"]],
        phrases=[[int(t) for t in p] for p in meta["phrases"]],
        penalty=float(meta["penalty"]),
        semantic=[int(t) for t in meta.get("semantic", [])],
        info=dict(meta.get("info") or {}),
    )


policies.register("guard", build)
