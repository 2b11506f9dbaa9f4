"""FILA: Fisher-information-weighted initialisation of LoRA adapters for unlearning (Cha et al., "Towards Robust
and Parameter-Efficient Knowledge Unlearning for LLMs", ICLR 2025).

The adapters should start on the weight components that matter to the forget data and not to the retain data.
Per adapted weight W (out × in): relative importance F = F_forget / (F_retain + eps) from diagonal Fisher
estimates, row importances r_i = sqrt(Σ_j F_ij) (the row-wise weighting of FWSVD, Hsu et al. 2022, which FILA
uses), and the rank-k SVD of diag(r)·W = U S Vᵀ gives B = diag(r)⁻¹ U_k S_k^½ and A = S_k^½ V_kᵀ. The adapters
start as (A, B) and the frozen base weight becomes W − B·A, so the model computes exactly what it did before
training starts; only the adapters then train.
"""

from __future__ import annotations

import torch

from ..errors import UnlearnError


def fila_factors(weight: torch.Tensor, importance: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B [out × rank], A [rank × in]) minimising ‖diag(r)(W − BA)‖_F with row weights r = sqrt(row sums of
    ``importance``), floored at a tiny positive value so that a row nobody uses keeps a finite inverse."""
    w = weight.double()
    r = importance.double().sum(1).sqrt().clamp_min(1e-12)
    u, s, vh = torch.linalg.svd(r[:, None] * w, full_matrices=False)
    k = min(rank, len(s))
    root = s[:k].sqrt()
    b = (u[:, :k] * root) / r[:, None]
    a = root[:, None] * vh[:k]
    return b.to(weight.dtype), a.to(weight.dtype)


@torch.no_grad()
def fila_init(peft_model, forget_fisher: dict, retain_fisher: dict, eps: float = 1e-8) -> int:
    """Initialise every LoRA layer of ``peft_model`` with :func:`fila_factors` of its base weight (Fisher
    dictionaries are keyed by the parameter names of the model before peft wrapped it) and subtract B·A from the
    base weight. Returns the number of layers initialised."""
    done = 0
    for name, module in peft_model.named_modules():
        if not hasattr(module, "lora_A") or not hasattr(module, "base_layer"):
            continue
        base = module.base_layer
        if not isinstance(base, torch.nn.Linear):
            raise UnlearnError(f"FILA initialises LoRA on linear layers only, not {type(base).__name__} ({name})")
        key = name.removeprefix("base_model.model.") + ".weight"
        if key not in forget_fisher or key not in retain_fisher:
            raise UnlearnError(f"FILA: no Fisher estimate for {key}")
        for adapter in module.lora_A:
            a_layer, b_layer = module.lora_A[adapter], module.lora_B[adapter]
            rank, scale = a_layer.weight.shape[0], module.scaling[adapter]
            rel = forget_fisher[key] / (retain_fisher[key] + eps)
            b, a = fila_factors(base.weight.float(), rel.float(), rank)
            a_layer.weight.copy_(a)
            b_layer.weight.copy_(b / scale)
            base.weight.sub_((b @ a).to(base.weight.dtype))
        done += 1
    if not done:
        raise UnlearnError("FILA needs LoRA adapters: set lora (e.g. lora=r=16)")
    return done
