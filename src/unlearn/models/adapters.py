"""Architecture adapters: where each family keeps the two output projections that selective pruning acts on.

A *neuron* is one input feature of an output projection:

* feed-forward (``ff``): the input of the MLP's output projection (``down_proj`` / ``fc2`` / ``c_proj`` /
  ``dense_4h_to_h``). For gated MLPs that input is ``act(gate) * up``.
* attention (``attn``): the input of the attention output projection (``o_proj`` / ``out_proj`` / ``c_proj`` /
  ``dense``), i.e. the concatenated per-head outputs, one neuron per head dimension.
* expert (``expert``, mixture-of-experts models): the input of every expert's output projection, ``act(gate) * up``
  of each expert, numbered expert by expert (``experts × width`` neurons per layer; see :mod:`.experts`). A
  Qwen2-MoE's shared expert is an ordinary MLP: its neurons are the ``ff`` kind.

Each adapter also says how a constant (mean-ablation) can be folded into a saved checkpoint that stock
``transformers`` loads: either the projection always has a bias, or a config flag turns one on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UnlearnError

KINDS = ("ff", "attn")  # the kinds of a dense model, and the default of every statistics pass
EXPERT = "expert"
ALL_KINDS = (*KINDS, EXPERT)


@dataclass(frozen=True)
class Adapter:
    """How to find the output projections of one model family (paths relative to the model root)."""

    family: str
    layers: str  # dotted path to the ModuleList of decoder blocks
    ff_out: str | None  # path inside a block to the MLP output projection (None: a MoE model without a dense MLP)
    attn_out: str  # path inside a block to the attention output projection
    # Bias folding for mean ablation: "always" (the projection has a bias), the name of a boolean config flag
    # that adds one (and which other projections the flag also gives a bias), or None (impossible).
    ff_bias: str | None
    attn_bias: str | None
    conv1d: bool = False  # GPT-2 style Conv1D: weight is [in, out] instead of nn.Linear's [out, in]
    final_norm: str = "model.norm"  # the norm between the last block and the unembedding (logit lens)
    experts: str | None = None  # path inside a block to the fused experts (3-D gate_up_proj / down_proj tensors)
    router: str | None = None  # path inside a block to the router (its first output: the router logits)
    # paths inside a block to the projections whose output rows make the ff neurons (gate and up; a fused
    # gate_up has 2·width rows, neuron n at rows n and width + n): folding zeroes them too (see save.fold)
    ff_in: tuple[str, ...] = ()

    def out_proj(self, model: nn.Module, layer: int, kind: str) -> nn.Module:
        """The module whose input holds the neurons of ``kind`` (for ``expert``: the experts module)."""
        if kind == EXPERT:
            return self.experts_of(model, layer)
        if kind == "ff" and self.ff_out is None:
            raise UnlearnError(
                f"{self.family} has no dense feed-forward MLP, only experts (selective pruning: set ff_frac=0 and "
                "prune expert neurons with expert_frac)"
            )
        block = self.blocks(model)[layer]
        return _get(block, self.ff_out if kind == "ff" else self.attn_out)

    def ff_inputs(self, model: nn.Module, layer: int) -> list[nn.Module]:
        """The projections whose output rows make the ff neurons of ``layer`` (gate and up, or the first MLP layer)."""
        block = self.blocks(model)[layer]
        return [_get(block, path) for path in self.ff_in]

    def has(self, kind: str) -> bool:
        """Whether this family has neurons of ``kind``."""
        return self.experts is not None if kind == EXPERT else kind == "attn" or self.ff_out is not None

    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in ALL_KINDS if self.has(k))

    def experts_of(self, model: nn.Module, layer: int) -> nn.Module:
        return self._moe_part(model, layer, self.experts)

    def router_of(self, model: nn.Module, layer: int) -> nn.Module:
        return self._moe_part(model, layer, self.router)

    def _moe_part(self, model: nn.Module, layer: int, path: str | None) -> nn.Module:
        if path is None:
            raise UnlearnError(f"{self.family} is not a mixture-of-experts model: it has no experts")
        try:
            return _get(self.blocks(model)[layer], path)
        except AttributeError:
            raise UnlearnError(
                f"layer {layer} of this {self.family} model has a dense MLP, no experts: expert neurons and routing "
                "need experts in every layer"
            ) from None

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return _get(model, self.layers)

    def n_layers(self, model: nn.Module) -> int:
        return len(self.blocks(model))

    def n_neurons(self, model: nn.Module, kind: str) -> int:
        if kind == EXPERT:
            n_experts, _, width = self.experts_of(model, 0).down_proj.shape
            return n_experts * width
        return in_features(self.out_proj(model, 0, kind), self.conv1d)

    def unembed(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Logits read off a hidden state of any layer: the final norm, then the output embedding (logit lens)."""
        hidden = _get(model, self.final_norm)(hidden)
        project_out = getattr(getattr(getattr(model, "model", None), "decoder", None), "project_out", None)
        if project_out is not None:  # OPT variants whose embedding width differs from the hidden width
            hidden = project_out(hidden)
        return model.get_output_embeddings()(hidden)

    def bias_flag(self, kind: str) -> str | None:
        return {"ff": self.ff_bias, "attn": self.attn_bias}.get(kind)  # experts have none


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def in_features(mod: nn.Module, conv1d: bool) -> int:
    return mod.weight.shape[0] if conv1d else mod.weight.shape[1]


_GATED = dict(ff_out="mlp.down_proj", attn_out="self_attn.o_proj", ff_in=("mlp.gate_proj", "mlp.up_proj"))

# model_type -> adapter. Families sharing Llama's layout differ only in which bias flags their config has.
ADAPTERS: dict[str, Adapter] = {
    "llama": Adapter("llama", "model.layers", **_GATED, ff_bias="mlp_bias", attn_bias="attention_bias"),
    "mistral": Adapter("mistral", "model.layers", **_GATED, ff_bias=None, attn_bias=None),
    "qwen2": Adapter("qwen2", "model.layers", **_GATED, ff_bias=None, attn_bias=None),
    "gemma": Adapter("gemma", "model.layers", **_GATED, ff_bias=None, attn_bias="attention_bias"),
    "phi3": Adapter("phi3", "model.layers", **{**_GATED, "ff_in": ("mlp.gate_up_proj",)}, ff_bias=None, attn_bias=None),
    "gpt2": Adapter(
        "gpt2",
        "transformer.h",
        ff_out="mlp.c_proj",
        attn_out="attn.c_proj",
        ff_in=("mlp.c_fc",),
        ff_bias="always",
        attn_bias="always",
        conv1d=True,
        final_norm="transformer.ln_f",
    ),
    "gpt_neox": Adapter(
        "gpt_neox",
        "gpt_neox.layers",
        ff_out="mlp.dense_4h_to_h",
        ff_in=("mlp.dense_h_to_4h",),
        attn_out="attention.dense",
        ff_bias="always",
        attn_bias="always",
        final_norm="gpt_neox.final_layer_norm",
    ),
    "opt": Adapter(
        "opt",
        "model.decoder.layers",
        ff_out="fc2",
        ff_in=("fc1",),
        attn_out="self_attn.out_proj",
        ff_bias="enable_bias",
        attn_bias="enable_bias",
        final_norm="model.decoder.final_layer_norm",
    ),
    # Vision transformers (ViTForImageClassification): the same neurons in an encoder; transformers 5 layout,
    # with the 4.x one below. Both projections always have a bias, so mean ablation folds.
    "vit": Adapter(
        "vit",
        "vit.layers",
        ff_out="mlp.fc2",
        ff_in=("mlp.fc1",),
        attn_out="attention.o_proj",
        ff_bias="always",
        attn_bias="always",
        final_norm="vit.layernorm",
    ),
}
# Mixture-of-experts families, transformers 5 layout: each layer's experts fused into 3-D tensors
# (experts.gate_up_proj [E, 2·width, hidden], experts.down_proj [E, hidden, width]) beside a top-k router (gate).
_MOE = dict(attn_out="self_attn.o_proj", experts="mlp.experts", router="mlp.gate", ff_bias=None)
ADAPTERS.update(
    {
        # Qwen2-MoE also has an always-on shared expert, an ordinary gated MLP: its neurons are the ff kind
        "qwen2_moe": Adapter(
            "qwen2_moe",
            "model.layers",
            ff_out="mlp.shared_expert.down_proj",
            attn_bias=None,
            **_MOE,
            ff_in=("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj"),
        ),
        "qwen3_moe": Adapter("qwen3_moe", "model.layers", ff_out=None, attn_bias="attention_bias", **_MOE),
        "mixtral": Adapter("mixtral", "model.layers", ff_out=None, attn_bias=None, **_MOE),
        "olmoe": Adapter("olmoe", "model.layers", ff_out=None, attn_bias="attention_bias", **_MOE),
    }
)
_VIT_4 = Adapter(
    "vit",
    "vit.encoder.layer",
    ff_out="output.dense",
    attn_out="attention.output.dense",
    ff_bias="always",
    attn_bias="always",
    final_norm="vit.layernorm",
)


def supported() -> list[str]:
    return sorted(ADAPTERS)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for a loaded ``transformers`` causal LM (or ViT classifier), or a clear error listing the
    supported families."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise UnlearnError(
            f"unsupported architecture {model_type!r}: supported model types are {', '.join(supported())}"
        )
    if model_type == "vit" and not hasattr(getattr(model, "vit", None), "layers"):
        return _VIT_4  # transformers 4.x names the blocks and projections differently
    return ADAPTERS[model_type]


def has_bias(mod: nn.Module) -> bool:
    return getattr(mod, "bias", None) is not None


def weight_columns(mod: nn.Module, conv1d: bool) -> torch.Tensor:
    """The weight as [out, in] (a view for nn.Linear, a transposed view for Conv1D)."""
    return mod.weight.T if conv1d else mod.weight
