"""In-context unlearning: the inference-time policy of the ``icul`` method (after Pawelczyk et al. 2023,
"In-Context Unlearning: Language Models as Few-Shot Unlearners").

The policy is one token sequence, the **context**: forget examples shown with replaced answers, then retain
examples with their true ones. It is kept beside the plain checkpoint as ``policy.json`` (no tensors file).

Attached to a model (:meth:`IculPolicy.install`) it is two hooks on the model itself, so that every caller sees the
model conditioned on the context without knowing it:

* a **forward pre-hook** (with keyword arguments). On a forward without a filled KV cache (a prefill, or plain
  scoring) it puts the context ids before every row's ``input_ids`` (or their embeddings before
  ``inputs_embeds``), and ``labels`` get ``-100`` there. On every forward it puts ones before a 2-D
  ``attention_mask``, moves ``position_ids`` by the context's length (the context takes positions 0..C−1), and
  does the same with a ``cache_position`` that counts the caller's tokens only;
* a **forward hook** that cuts the returned ``logits`` (and ``hidden_states``) back to the caller's positions, the
  last ones only where ``logits_to_keep`` asked for fewer.

``model.generate`` (greedy or sampling, left-padded batches, KV cache) returns the caller's prompt and the new
tokens; next-token scoring gets one row of logits per input position, conditioned on the context.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UnlearnError
from . import component_files, policies
from .policies import POLICY_FILE, TENSORS_FILE

FORMAT = 1
IGNORE = -100  # the label transformers' losses skip


def cached_length(cache) -> int:
    """How many positions a KV cache (a transformers ``Cache`` or a legacy tuple of per-layer pairs) holds."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return int(cache[0][0].shape[-2]) if len(cache) else 0


def positional_names(model: nn.Module) -> list[str]:
    """The names of the arguments ``model.forward`` takes by position, in order."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in inspect.signature(model.forward).parameters.values() if p.kind in kinds]


@dataclass
class IculPolicy:
    """The in-context unlearning context: ``context_ids`` (token ids put before every new sequence), ``text``
    (the same decoded, for people) and ``info`` (what the method recorded: examples, counts, seed)."""

    context_ids: list[int]
    text: str = ""
    info: dict = field(default_factory=dict)
    file: str = POLICY_FILE
    _handles: list = field(default_factory=list, init=False, repr=False)
    _state: dict = field(default_factory=dict, init=False, repr=False)
    _positional: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self):
        if not self.context_ids:
            raise UnlearnError("inconsistent icul policy: the context is empty")
        if min(self.context_ids) < 0:
            raise UnlearnError("inconsistent icul policy: the context holds a negative token id")

    @property
    def length(self) -> int:
        """The context's length in tokens: how much longer every prefill or scoring forward becomes."""
        return len(self.context_ids)

    def context(self, rows: int, device=None) -> torch.Tensor:
        """The context ids as a batch of ``rows`` identical rows [rows, C]."""
        return torch.tensor(self.context_ids, dtype=torch.long, device=device).expand(rows, -1)

    def prefixed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """``(ids, mask)``: what the plain model reads for ``input_ids`` [B, T] under the policy, the context
        before every row and attended (the mask stays None when there is none)."""
        ids = torch.cat([self.context(len(input_ids), input_ids.device), input_ids], 1)
        if attention_mask is None:
            return ids, None
        return ids, torch.cat([attention_mask.new_ones(len(attention_mask), self.length), attention_mask], 1)

    def _before(self, model, args, kwargs):
        kwargs = {**dict(zip(self._positional, args)), **kwargs}
        self._state.clear()
        ids, embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
        given = ids if ids is not None else embeds
        if given is None:
            return None
        rows, n = given.shape[0], self.length
        past = cached_length(kwargs.get("cache", kwargs.get("past_key_values")))
        if past == 0:
            self._prefix(model, kwargs, rows, given.shape[1])
        mask = kwargs.get("attention_mask")
        if mask is not None:
            if mask.dim() != 2:
                raise UnlearnError(
                    f"the icul policy extends 2-D attention masks only, and this forward has a {mask.dim()}-D one "
                    "(a static or compiled cache builds those: generate with the default dynamic cache)"
                )
            kwargs["attention_mask"] = torch.cat([mask.new_ones(rows, n), mask], 1)
        kwargs.update(self._positions(kwargs, past))
        return (), kwargs

    def _prefix(self, model, kwargs: dict, rows: int, length: int) -> None:
        """Put the context before the inputs (and the labels) of a forward that starts new sequences."""
        n = self.length
        if kwargs.get("input_ids") is not None:
            ids = kwargs["input_ids"]
            kwargs["input_ids"] = torch.cat([self.context(rows, ids.device).to(ids.dtype), ids], 1)
        else:
            embeds = kwargs["inputs_embeds"]
            extra = model.get_input_embeddings()(self.context(rows, embeds.device)).to(embeds.dtype)
            kwargs["inputs_embeds"] = torch.cat([extra, embeds], 1)
        labels = kwargs.get("labels")
        if labels is not None:
            # the caller's first label is never a target of the plain loss; it must not become one here either
            kwargs["labels"] = torch.cat([labels.new_full((rows, n + 1), IGNORE), labels[:, 1:]], 1)
            self._state["loss"] = True
        keep = kwargs.get("logits_to_keep")
        if torch.is_tensor(keep):  # positions to keep: counted from the caller's first token
            if keep.dtype == torch.bool:
                kwargs["logits_to_keep"] = torch.cat([keep.new_zeros(*keep.shape[:-1], n), keep], -1)
            else:
                kwargs["logits_to_keep"] = keep + n
        else:
            self._state["trim"] = length

    def _positions(self, kwargs: dict, past: int) -> dict:
        """``position_ids`` and ``cache_position`` moved past the context (the context's own positions before
        them on a forward that starts new sequences)."""
        n, out = self.length, {}
        pos = kwargs.get("position_ids")
        if pos is not None:
            out["position_ids"] = pos + n
            if past == 0:
                head = torch.arange(n, dtype=pos.dtype, device=pos.device).expand(*pos.shape[:-1], n)
                out["position_ids"] = torch.cat([head, pos + n], -1)
        where = kwargs.get("cache_position")
        if where is not None:
            if past == 0:
                head = torch.arange(n, dtype=where.dtype, device=where.device)
                out["cache_position"] = torch.cat([head, where + n])
            elif int(where.reshape(-1)[0]) < past:  # counted without the context (one that counts the cache is right)
                out["cache_position"] = where + n
        return out

    def _after(self, _model, _args, output):
        trim = self._state.pop("trim", None)
        loss = self._state.pop("loss", False)
        if trim is None:
            return output
        if isinstance(output, tuple):
            items, at = list(output), 1 if loss else 0
            if at < len(items) and torch.is_tensor(items[at]) and items[at].dim() == 3:
                items[at] = items[at][:, -trim:]
            return tuple(items)
        logits = getattr(output, "logits", None)
        if torch.is_tensor(logits) and logits.dim() == 3 and logits.shape[1] > trim:
            output.logits = logits[:, -trim:]
        hidden = getattr(output, "hidden_states", None)
        if isinstance(hidden, tuple) and all(torch.is_tensor(h) and h.dim() == 3 for h in hidden):
            output.hidden_states = tuple(h[:, -trim:] for h in hidden)
        return output

    def install(self, model: nn.Module) -> None:
        vocab = model.get_input_embeddings().weight.shape[0]
        if max(self.context_ids) >= vocab:
            raise UnlearnError(
                f"the icul context holds token id {max(self.context_ids)}, but the model has {vocab} embeddings: "
                "the policy was made for another tokenizer"
            )
        limit = getattr(model.config, "max_position_embeddings", None)
        if isinstance(limit, int) and self.length >= limit:
            raise UnlearnError(f"the icul context is {self.length} tokens, and the model has only {limit} positions")
        self.remove()
        self._positional = positional_names(model)
        self._handles = [
            model.register_forward_pre_hook(self._before, with_kwargs=True),
            model.register_forward_hook(self._after),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._state.clear()

    def record(self) -> dict:
        """What ``policy.json`` says: the context as ids (what is used) and as text, and the method's facts."""
        return {
            "format": FORMAT,
            "kind": "icul",
            "context_tokens": self.length,
            "context_ids": list(self.context_ids),
            "context": self.text,
            "info": self.info,
        }

    def save(self, directory: Path) -> list[str]:
        return component_files.write(directory, POLICY_FILE, self.record(), TENSORS_FILE, {})

    def describe(self) -> str:
        counts = self.info.get("counts") or {}
        shown = f": {counts['forget']} forget and {counts['retain']} retain examples" if counts else ""
        return f"icul policy ({self.length}-token context{shown})"


def build(meta: dict, tensors: dict) -> IculPolicy:
    """The icul policy of a ``policy.json`` record of kind ``icul`` (it has no tensors)."""
    if meta.get("format") != FORMAT:
        raise ValueError(f"format {meta.get('format')!r} of the icul policy, this version reads {FORMAT}")
    ids = meta["context_ids"]
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise ValueError("context_ids must be a list of token ids")
    return IculPolicy(list(ids), text=str(meta.get("context") or ""), info=dict(meta.get("info") or {}))


policies.register("icul", build)
