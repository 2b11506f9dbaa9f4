"""A sparse-autoencoder feature clamp: the inference-time edit of ``sae-clamp`` (Farrell et al. 2024).

At the output of one decoder block (the residual stream ``h``) the selected SAE features are read,
``f = ReLU((h − b_dec) W_enc + b_enc)``, and wherever one fires (f > 0) its contribution is replaced:
``h ← h + (f' − f) W_dec`` with ``f'`` = 0 (zero ablation) or −c (negative clamping). Only the selected features'
contributions change and the SAE's reconstruction error stays in ``h``, so a position where no selected feature
fires is left exactly as it was; so is a position whose norm is above ``norm_limit`` (an attention sink, far outside
what the SAE was trained on). Nothing of the model's weights changes: the clamp is a forward hook, saved as
``clamp.safetensors`` (the selected features' encoder and decoder rows, in the model's own units) and
``clamp.json`` (layer, mode, features, values, what the SAE was) next to the plain checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UnlearnError
from . import component_files
from .adapters import adapter_for

CLAMP_FILE = "clamp.json"
TENSORS_FILE = "clamp.safetensors"
FORMAT = 1
TENSORS = ("w_enc", "b_enc", "b_dec", "w_dec", "values")


@dataclass
class FeatureClamp:
    """The selected features of an SAE at the output of decoder block ``layer`` and the value each takes when it
    fires. ``w_enc`` [d, k], ``b_enc`` [k], ``b_dec`` [d], ``w_dec`` [k, d], ``values`` [k], all float32 in the
    units of the residual stream."""

    layer: int
    features: list[int]
    w_enc: torch.Tensor
    b_enc: torch.Tensor
    b_dec: torch.Tensor
    w_dec: torch.Tensor
    values: torch.Tensor
    mode: str
    norm_limit: float = float("inf")
    info: dict = field(default_factory=dict)
    file: str = CLAMP_FILE
    _handle: object = field(default=None, init=False, repr=False)
    _cast: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        k, d = self.w_dec.shape
        shapes = {"w_enc": (d, k), "b_enc": (k,), "b_dec": (d,), "values": (k,)}
        wrong = [n for n, s in shapes.items() if tuple(getattr(self, n).shape) != s]
        if wrong or len(self.features) != k:
            raise UnlearnError(
                f"inconsistent feature clamp: {', '.join(wrong) or 'features'} do not match w_dec {k}×{d}"
            )

    def _tensors(self, device: torch.device) -> tuple:
        key = (device, torch.is_inference_mode_enabled())
        if key not in self._cast:
            self._cast[key] = tuple(getattr(self, n).to(device=device, dtype=torch.float32) for n in TENSORS)
        return self._cast[key]

    def activations(self, h: torch.Tensor) -> torch.Tensor:
        """The selected features' activations ``f`` [..., k] on residual vectors ``h`` [..., d]."""
        w_enc, b_enc, b_dec, _, _ = self._tensors(h.device)
        return torch.relu((h.float() - b_dec) @ w_enc + b_enc)

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` with every firing selected feature's contribution replaced by its clamp value (same dtype)."""
        _, _, _, w_dec, values = self._tensors(h.device)
        f = self.activations(h)
        target = torch.where(f > 0, values.expand_as(f), f)
        delta = (target - f) @ w_dec
        if self.norm_limit != float("inf"):
            delta = delta * (h.float().norm(dim=-1, keepdim=True) <= self.norm_limit)
        return (h.float() + delta).to(h.dtype)

    def _hook(self, _module, _args, output):
        if isinstance(output, tuple):
            return (self.edit(output[0]),) + tuple(output[1:])
        return self.edit(output)

    def install(self, model: nn.Module) -> None:
        adapter = adapter_for(model)
        n_layers = adapter.n_layers(model)
        if not 0 <= self.layer < n_layers:
            raise UnlearnError(f"the feature clamp is at layer {self.layer}, but the model has {n_layers} layers")
        width = model.get_input_embeddings().weight.shape[1]
        if width != self.w_dec.shape[1]:
            raise UnlearnError(f"the feature clamp is {self.w_dec.shape[1]} wide, the model's residual stream {width}")
        self.remove()
        self._handle = adapter.blocks(model)[self.layer].register_forward_hook(self._hook)

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def record(self) -> dict:
        """What ``clamp.json`` says (everything but the tensors)."""
        return {
            "format": FORMAT,
            "kind": "sae-clamp",
            "hook": f"output of decoder block {self.layer} (the residual stream after it)",
            "layer": self.layer,
            "mode": self.mode,
            "features": list(self.features),
            "values": [round(float(v), 6) for v in self.values],
            "norm_limit": self.norm_limit if self.norm_limit != float("inf") else None,
            "tensors": TENSORS_FILE,
            "sae": self.info,
        }

    def save(self, directory: Path) -> list[str]:
        tensors = {n: getattr(self, n) for n in TENSORS}
        return component_files.write(directory, CLAMP_FILE, self.record(), TENSORS_FILE, tensors)

    def describe(self) -> str:
        return f"SAE feature clamp ({len(self.features)} features at layer {self.layer}, {self.mode})"


def read(directory: Path) -> FeatureClamp:
    """The clamp saved in ``directory`` (``clamp.json`` and ``clamp.safetensors``)."""

    def build(meta: dict, tensors: dict) -> FeatureClamp:
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, this version reads {FORMAT}")
        limit = meta.get("norm_limit")
        return FeatureClamp(
            layer=int(meta["layer"]),
            features=[int(i) for i in meta["features"]],
            **{n: tensors[n] for n in TENSORS},
            mode=str(meta["mode"]),
            norm_limit=float("inf") if limit is None else float(limit),
            info=dict(meta.get("sae") or {}),
        )

    return component_files.read(directory, CLAMP_FILE, TENSORS_FILE, "feature clamp", build)
