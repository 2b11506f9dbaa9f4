"""Loss functions of the trained unlearning methods, on logits and labels (``-100`` = not scored).

Every function is batched over ``[batch, seq]``; logits at position t predict the label at t + 1. Each
docstring gives the formula and its source; they follow open-unlearning's trainers (``src/trainer/``), the
reference ``bench/conformance.py`` runs beside them, and ``tests/test_losses.py`` pins them on hand-computable
inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(label_{t+1} | ≤ t) per position [B, T−1], mask of scored positions [B, T−1])."""
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    mask = targets != IGNORE
    lp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return lp * mask, mask


def nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over scored tokens (the language-modelling loss)."""
    lp, mask = token_logprobs(logits, labels)
    return -lp.sum() / mask.sum().clamp_min(1)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π(y|x) = Σ_t log p(y_t) per sequence [B], number of scored tokens per sequence [B])."""
    lp, mask = token_logprobs(logits, labels)
    return lp.sum(-1), mask.sum(-1)


def kl_all_positions(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_ref ‖ p_model) of the next-token distributions, summed over the vocabulary and averaged over **every**
    position of the batch (B·T rows, scored or not): the KL retain term of gradient difference, NPO, SimNPO and
    IdK-DPO exactly as TOFU and open-unlearning compute it (``compute_kl_divergence``: ``kl_div(..., reduction=
    "batchmean", log_target=True)`` over the flattened logits)."""
    with torch.no_grad():
        lr = torch.log_softmax(ref_logits.float(), -1)
        neg_entropy = (lr.exp() * lr).sum(-1)
        p_ref = lr.exp()
        del lr
    lp = torch.log_softmax(logits.float(), -1)
    kl = neg_entropy - (p_ref * lp).sum(-1)
    return kl.mean()


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over scored positions of KL(p_ref ‖ p_model) of the next-token distributions: prune-then-heal's
    distillation loss (selective pruning's ``heal_target="kl"``), which heals only the positions it scores. The
    trained methods' KL retain term is :func:`kl_all_positions`."""
    mask = labels[:, 1:] != IGNORE
    # KL = Σ p_ref log p_ref − Σ p_ref log p_model: the reference's half is computed without a graph and its log
    # probabilities freed before the model's are made, so that fewer vocabulary-sized temporaries live at once
    # (each is 100 MB for 2 × 256 tokens of a 49k vocabulary in float32)
    with torch.no_grad():
        lr = torch.log_softmax(ref_logits[:, :-1].float(), -1)
        p_ref = lr.exp()
        neg_entropy = (p_ref * lr).sum(-1)
        del lr
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    kl = neg_entropy - (p_ref * lp).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


def npo(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative preference optimisation (Zhang et al. 2024): −(2/β) · mean log σ(−β (log π − log π_ref)), with
    sequence log-probabilities. Tends to gradient ascent as β → 0, but its gradient vanishes once the model
    assigns the forget data much less probability than the reference did."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).mean()


def simnpo(logp: torch.Tensor, lengths: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """SimNPO (Fan et al. 2024), reference-free: −(2/β) · mean log σ(β (−log π(y|x) / |y| − δ)), as open-unlearning
    computes it (``simnpo.py``: the margin δ inside the β scaling)."""
    return -(2.0 / beta) * F.logsigmoid(beta * (-logp / lengths.clamp_min(1) - delta)).mean()


def inverted_hinge(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Inverted hinge loss (Cha et al. 2024, "Learning to Unlearn"): mean over scored tokens of
    1 + p(y_t) − max_{v≠y_t} p(v) — pushes the true token below its best competitor, and no further."""
    targets = labels[:, 1:]
    mask = targets != IGNORE
    p = torch.softmax(logits[:, :-1].float(), -1)
    p_true = p.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    others = p.scatter(-1, targets.clamp_min(0).unsqueeze(-1), float("-inf"))
    loss = 1 + p_true - others.max(-1).values
    return (loss * mask).sum() / mask.sum().clamp_min(1)


def _activation_loss(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over sequences of (mean over a sequence's masked tokens of ‖a − b‖² / d): open-unlearning's
    ``RMU.compute_activation_loss``."""
    err = (a.float() - b.float()).square().mean(-1)
    return ((err * mask).sum(-1) / mask.sum(-1).clamp_min(1)).mean()


def rmu_forget(hidden: torch.Tensor, control: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMU forget term (Li et al. 2024, WMDP): ‖h_ℓ − c·u‖² / d averaged over each sequence's tokens, then over
    the batch — steer the layer-ℓ activations of forget tokens towards a fixed random direction u scaled by c
    (``control`` = c·u)."""
    return _activation_loss(hidden, control.expand_as(hidden), mask)


def rmu_retain(hidden: torch.Tensor, frozen: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMU retain term: ‖h_ℓ − h_ℓ^frozen‖² / d averaged like :func:`rmu_forget` — keep retain activations
    unchanged."""
    return _activation_loss(hidden, frozen, mask)


def dpo(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
) -> torch.Tensor:
    """Direct preference optimisation (Rafailov et al. 2023) as open-unlearning's ``compute_dpo_loss`` computes it:
    −(2/β) · mean log σ(β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]) with sequence
    log-probabilities (the 2/β factor makes NPO its special case without a winner); for unlearning (IdK-DPO,
    Maini et al. 2024) y_w is a refusal and y_l the original answer."""
    return -(2.0 / beta) * F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected))).mean()
