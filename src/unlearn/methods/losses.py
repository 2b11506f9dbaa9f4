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


def token_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, *, overwrite: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(label_{t+1} | ≤ t) per position [B, T−1], mask of scored positions [B, T−1]). ``overwrite``: the
    backward pass writes the logits' gradient over the logits (:func:`_gradient_buffer`)."""
    targets = labels[:, 1:]
    mask = targets != IGNORE
    lp = _BlockLogprob.apply(logits, targets.clamp_min(0), overwrite)
    return lp * mask, mask


def nll(logits: torch.Tensor, labels: torch.Tensor, *, overwrite: bool = False) -> torch.Tensor:
    """Mean negative log-likelihood over scored tokens (the language-modelling loss); ``overwrite`` as in
    :func:`token_logprobs`."""
    lp, mask = token_logprobs(logits, labels, overwrite=overwrite)
    return -lp.sum() / mask.sum().clamp_min(1)


def sequence_logprob(
    logits: torch.Tensor, labels: torch.Tensor, *, overwrite: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π(y|x) = Σ_t log p(y_t) per sequence [B], number of scored tokens per sequence [B]); ``overwrite`` as
    in :func:`token_logprobs`."""
    lp, mask = token_logprobs(logits, labels, overwrite=overwrite)
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


def kl_to_reference(
    logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, *, overwrite: bool = False
) -> torch.Tensor:
    """Mean over scored positions of KL(p_ref ‖ p_model) of the next-token distributions: prune-then-heal's
    distillation loss (selective pruning's ``heal_target="kl"``), which heals only the positions it scores. The
    trained methods' KL retain term is :func:`kl_all_positions`.

    Computed in float32 a block of positions at a time (:class:`_BlockKL`): no vocabulary-sized float32 tensor of
    the whole batch is made, in the forward or the backward pass (each would be 100 MB for 2 × 256 tokens of a
    49k vocabulary), and only the logits themselves are kept for the backward pass; with ``overwrite`` the
    gradient is written over them (:func:`_gradient_buffer`), one such tensor less."""
    mask = labels[:, 1:] != IGNORE
    kl = _BlockKL.apply(logits, ref_logits.detach(), overwrite)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


KL_BLOCK = 64  # positions per block: 64 × 49k float32 is 12.6 MB per temporary


class _BlockKL(torch.autograd.Function):
    """KL(softmax(ref) ‖ softmax(z)) at every position t < T − 1 of ``logits`` [B, T, V] (position t predicts
    t + 1), as [B, T − 1] float32, computed in blocks of positions. Forward: Σ p_ref·log p_ref − Σ p_ref·log p.
    Backward (the gradient of log-softmax): ∂KL_t/∂z_t = softmax(z_t)·Σ p_ref − p_ref, times the incoming
    gradient, computed with autograd's own kernel on each block (the same numbers as without blocks); the last
    position (no next token) gets none."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, ref_logits: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
        ctx.overwrite = overwrite
        b, t, _ = logits.shape
        out = torch.empty(b, t - 1, dtype=torch.float32, device=logits.device)
        for i, j, k in _blocks(b, t - 1):
            lr = torch.log_softmax(ref_logits[i, j:k].float(), -1)
            p_ref = lr.exp()
            neg_entropy = (p_ref * lr).sum(-1)
            del lr
            lp = torch.log_softmax(logits[i, j:k].float(), -1)
            out[i, j:k] = neg_entropy - (p_ref * lp).sum(-1)
        ctx.save_for_backward(logits, ref_logits)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, ref_logits = ctx.saved_tensors
        b, t, _ = logits.shape
        out = _gradient_buffer(logits, ctx.overwrite)
        for i, j, k in _blocks(b, t - 1):
            p_ref = torch.log_softmax(ref_logits[i, j:k].float(), -1).exp()  # as the forward made it
            lp = torch.log_softmax(logits[i, j:k].float(), -1)
            # autograd's own steps for −Σ p_ref·log_softmax(z), so the gradient is the unblocked one to the bit
            g_lp = -grad[i, j:k, None] * p_ref
            out[i, j:k] = torch._log_softmax_backward_data(g_lp, lp, -1, torch.float32).to(out.dtype)
        return out, None, None


class _BlockLogprob(torch.autograd.Function):
    """log softmax(z_t)[y_t] at every position t < T − 1 of ``logits`` [B, T, V], ``targets`` [B, T − 1], as
    [B, T − 1] float32, a block of positions at a time (see :class:`_BlockKL`): the same numbers, forward and
    backward, as ``log_softmax(logits[:, :-1].float()).gather(targets)`` without its vocabulary-sized float32
    tensors of the whole batch."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
        ctx.overwrite = overwrite
        b, t, _ = logits.shape
        out = torch.empty(b, t - 1, dtype=torch.float32, device=logits.device)
        for i, j, k in _blocks(b, t - 1):
            lp = torch.log_softmax(logits[i, j:k].float(), -1)
            out[i, j:k] = lp.gather(-1, targets[i, j:k, None]).squeeze(-1)
        ctx.save_for_backward(logits, targets)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, targets = ctx.saved_tensors
        b, t, v = logits.shape
        out = _gradient_buffer(logits, ctx.overwrite)
        for i, j, k in _blocks(b, t - 1):
            lp = torch.log_softmax(logits[i, j:k].float(), -1)
            g_lp = torch.zeros(k - j, v, dtype=torch.float32, device=logits.device)
            g_lp.scatter_add_(-1, targets[i, j:k, None], grad[i, j:k, None].float())
            out[i, j:k] = torch._log_softmax_backward_data(g_lp, lp, -1, torch.float32).to(out.dtype)
        return out, None, None


def _gradient_buffer(logits: torch.Tensor, overwrite: bool) -> torch.Tensor:
    """Where a blocked loss's backward pass writes the logits' gradient: a fresh zero tensor, or (``overwrite``)
    the logits themselves, each block written after it was read and the last position (no next token) zeroed.
    Overwriting saves one vocabulary-sized tensor of the whole batch (100 MB for 2 × 256 tokens of a 49k
    vocabulary in float32) and is right only where nothing reads these logits after the loss; a backward step
    that saved them and runs after this one fails loudly on their changed version instead of reading the gradient
    as logits."""
    if not overwrite:
        return torch.zeros_like(logits)
    logits[:, -1].zero_()
    return logits


def _blocks(batch: int, positions: int):
    """(sequence, first position, end) of every block of :data:`KL_BLOCK` positions."""
    for i in range(batch):
        for j in range(0, positions, KL_BLOCK):
            yield i, j, min(positions, j + KL_BLOCK)


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


def wga(logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """Weighted gradient ascent (Wang et al. 2025, "Rethinking LLM Unlearning Objectives: A Gradient Perspective
    and Go Beyond"): mean over scored tokens of w_t · log p(y_t), w_t = p(y_t)^β held constant (no gradient) —
    gradient ascent whose tokens count less as the model already assigns them little probability
    (open-unlearning's ``compute_wga_loss``)."""
    lp, mask = token_logprobs(logits, labels)
    weight = (lp.detach() * beta).exp()
    return (weight * lp).sum() / mask.sum().clamp_min(1)


def satimp(logits: torch.Tensor, labels: torch.Tensor, beta1: float, beta2: float) -> torch.Tensor:
    """SatImp (Yang et al. 2025, "Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning"): mean over
    scored tokens of p(y_t)^β₁ · (1 − p(y_t))^β₂ · log p(y_t), the weights held constant — saturation (p^β₁)
    times importance ((1 − p)^β₂) weighted gradient ascent (open-unlearning's ``compute_satimp_loss``)."""
    lp, mask = token_logprobs(logits, labels)
    p = lp.detach().exp()
    weight = p**beta1 * (1 - p) ** beta2
    return (weight * lp * mask).sum() / mask.sum().clamp_min(1)


def _soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over ``mask``ed positions of −Σ_v softmax(target)_v · log softmax(z)_v (``logits`` [B, T, V])."""
    q = torch.softmax(target_logits.float(), -1)
    per_position = -(q * torch.log_softmax(logits.float(), -1)).sum(-1)
    return (per_position * mask).sum() / mask.sum().clamp_min(1)


def ce_unlearning(logits: torch.Tensor, labels: torch.Tensor, skip_first: int = 1) -> torch.Tensor:
    """CE-U, cross-entropy unlearning (Yang 2025, "CE-U: Cross Entropy Unlearning", arXiv:2503.01224): the
    cross-entropy of the model's next-token distribution against its own distribution with the true token's logit
    set to −∞ (held constant), averaged over scored positions; the first ``skip_first`` scored tokens of each
    sequence are left out (the paper's footnote; open-unlearning's ``compute_batch_ceu``)."""
    scored = labels != IGNORE
    labels = labels.masked_fill(scored & (scored.cumsum(-1) <= skip_first), IGNORE)
    targets = labels[:, 1:]
    z = logits[:, :-1]
    without_true = z.detach().float().scatter(-1, targets.clamp_min(0).unsqueeze(-1), float("-inf"))
    return _soft_cross_entropy(z, without_true, targets != IGNORE)


def undial(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """UNDIAL (Dong et al. 2025, "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large
    Language Models"): the cross-entropy of the model against the frozen original's next-token distribution with
    the true token's logit lowered by β, averaged over scored positions (open-unlearning's
    ``compute_undial_loss``, which averages over every position instead, prompt and padding included, and
    there lowers the logit of token V − 100 that its −100 label indexes)."""
    targets = labels[:, 1:]
    adjusted = ref_logits[:, :-1].detach().float()
    adjusted = adjusted.scatter_add(
        -1, targets.clamp_min(0).unsqueeze(-1), torch.full_like(targets, -beta, dtype=adjusted.dtype).unsqueeze(-1)
    )
    return _soft_cross_entropy(logits[:, :-1], adjusted, targets != IGNORE)


def logit_gap(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """PDU's forget term (Entesari et al. 2025, "Constrained Entropic Unlearning: A Primal-Dual Framework for
    Large Language Models"): mean over scored positions of (max_v z_v − mean_v z_v)² — driving it to 0 flattens
    the next-token distribution towards uniform. Taken at the positions that predict scored tokens (open-unlearning's
    ``PDU.compute_loss`` takes the logits one position later, at the scored tokens themselves)."""
    z = logits[:, :-1].float()
    gap = (z.max(-1).values - z.mean(-1)).square()
    mask = labels[:, 1:] != IGNORE
    return (gap * mask).sum() / mask.sum().clamp_min(1)


def dual_ascent(weight: float, violation: float, step_size: float) -> float:
    """One projected dual-ascent step on a constraint's multiplier: max(0, λ + η · (g − ε)), ``violation`` = g − ε
    (PDU's retain-loss constraint g ≤ ε; open-unlearning's ``PDU.final_loss_value``)."""
    return max(0.0, weight + step_size * violation)
