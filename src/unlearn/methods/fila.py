"""FILA: Fisher-information-weighted initialisation of LoRA adapters for unlearning (Cha et al., "Towards Robust
and Parameter-Efficient Knowledge Unlearning for LLMs", ICLR 2025).

The adapters should start on the weight components that matter to the forget data and not to the retain data.
Per adapted weight W (out × in): relative importance F = F_forget / (1e-5 + F_retain) from token-normalised
diagonal Fisher estimates (each batch's squared gradient weighted by its token count, divided by the total), row
importances r_i = sqrt(Σ_j F_ij) (the row-wise weighting of FWSVD, Hsu et al. 2022, which FILA uses), and the
rank-k SVD of diag(r)·W = U S Vᵀ with S scaled down by the LoRA scaling s gives A = (S_k/s)^½ V_kᵀ and
B = diag(r + 1e-5)⁻¹ U_k (S_k/s)^½. The adapters start as (A, B) and the frozen base weight becomes W − s·B·A, so
the model computes what it did before training starts; only the adapters then train.

All of this follows the authors' code (the FILA baseline of the VILA repository, kyj93790/VILA ``TOFU/fila.py``
and ``TOFU/forget.py``: the same Fisher weighting, the two 1e-5 and the split of S between A and B), with one
difference: the SVD here is exact (``torch.linalg.svd`` in float64) where theirs is ``torch.svd_lowrank``, a
randomised approximation of the same factors.
"""

from __future__ import annotations

import torch

from ..errors import UnlearnError


EPS = 1e-5  # the authors' constant, both in the Fisher ratio and in the inverse row importance


def fila_factors(
    weight: torch.Tensor, importance: torch.Tensor, rank: int, scaling: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B [out × rank], A [rank × in]) with s·B·A the rank-``rank`` approximation of W that minimises
    ‖diag(r)(W − s·B·A)‖_F (up to the 1e-5 added to r before inverting), row weights r = sqrt(row sums of
    ``importance``), s the LoRA ``scaling``."""
    w = weight.double()
    r = importance.double().sum(1).sqrt()
    u, s, vh = torch.linalg.svd(r[:, None] * w, full_matrices=False)
    k = min(rank, len(s))
    root = (s[:k] / scaling).sqrt()
    a = root[:, None] * vh[:k]
    b = (u[:, :k] * root) / (r[:, None] + EPS)
    return b.to(weight.dtype), a.to(weight.dtype)


@torch.no_grad()
def fila_init(peft_model, forget_fisher: dict, retain_fisher: dict, eps: float = EPS) -> int:
    """Initialise every LoRA layer of ``peft_model`` with :func:`fila_factors` of its base weight (Fisher
    dictionaries are keyed by the parameter names of the model before peft wrapped it, token-normalised as
    :func:`~unlearn.methods.edits.fisher_diagonal` with ``per_token=True`` computes them) and subtract s·B·A from
    the base weight. Returns the number of layers initialised."""
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
            rel = forget_fisher[key] / (eps + retain_fisher[key])
            b, a = fila_factors(base.weight.float(), rel.float(), rank, scale)
            a_layer.weight.copy_(a)
            b_layer.weight.copy_(b)
            base.weight.sub_((scale * (b @ a)).to(base.weight.dtype))
        done += 1
    if not done:
        raise UnlearnError("FILA needs LoRA adapters: set lora (e.g. lora=r=16)")
    return done
