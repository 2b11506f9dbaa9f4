"""The trained methods' losses on inputs small enough to compute by hand, in open-unlearning's conventions
(``bench/conformance.py`` runs open-unlearning's own trainer code beside them on the bundled model)."""

from __future__ import annotations

import math

import pytest
import torch

from unlearn.methods import losses as L


def _logits(*rows):
    """[1, T, V] logits whose softmax at position t is ``rows[t]`` (probabilities)."""
    return torch.tensor([[[math.log(p) for p in row] for row in rows]])


def _logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_nll_and_sequence_logprob_count_only_scored_tokens():
    logits = _logits([0.5, 0.5], [0.25, 0.75], [0.9, 0.1])
    labels = torch.tensor([[-100, 1, 0]])  # position 0 predicts label 1 (p 0.5), position 1 predicts 0 (p 0.25)
    assert L.nll(logits, labels).item() == pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2)
    logp, n = L.sequence_logprob(logits, labels)
    assert logp.item() == pytest.approx(math.log(0.5) + math.log(0.25)) and n.item() == 2
    masked = torch.tensor([[-100, -100, 0]])
    assert L.nll(logits, masked).item() == pytest.approx(-math.log(0.25))


def test_kl_all_positions_averages_every_position_like_tofu():
    model = _logits([0.5, 0.5], [0.25, 0.75])
    ref = _logits([0.9, 0.1], [0.25, 0.75])
    kl0 = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert L.kl_all_positions(model, ref).item() == pytest.approx((kl0 + 0.0) / 2, rel=1e-6)
    # the healing KL averages only the scored (shifted) positions: here position 0 alone
    assert L.kl_to_reference(model, ref, torch.tensor([[-100, 1]])).item() == pytest.approx(kl0, rel=1e-6)


def test_npo_simnpo_and_dpo_follow_open_unlearning():
    beta = 0.1
    npo = L.npo(torch.tensor([-2.0]), torch.tensor([-1.0]), beta)
    assert npo.item() == pytest.approx(-(2 / beta) * _logsigmoid(-beta * (-2.0 + 1.0)))
    # SimNPO: δ sits inside the β scaling: −(2/β) log σ(β (−log π/|y| − δ))
    sim = L.simnpo(torch.tensor([-6.0]), torch.tensor([3]), 2.5, 0.5)
    assert sim.item() == pytest.approx(-(2 / 2.5) * _logsigmoid(2.5 * (6.0 / 3 - 0.5)))
    assert sim.item() != pytest.approx(-(2 / 2.5) * _logsigmoid(2.5 * 6.0 / 3 - 0.5))
    # DPO with the 2/β factor; NPO is DPO without a winner
    dpo = L.dpo(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), beta)
    assert dpo.item() == pytest.approx(-(2 / beta) * _logsigmoid(beta * ((-1.0 + 1.5) - (-2.0 + 1.5))))
    assert L.dpo(torch.tensor([0.0]), torch.tensor([-2.0]), torch.tensor([0.0]), torch.tensor([-1.0]), beta).item() == (
        pytest.approx(npo.item())
    )


def test_rmu_terms_average_each_sequence_then_the_batch():
    hidden = torch.zeros(2, 3, 1)
    control = torch.tensor([1.0])
    hidden[0, :, 0] = torch.tensor([0.0, 1.0 - math.sqrt(3.0), 11.0])  # squared errors 1, 3, 100
    hidden[1, :, 0] = torch.tensor([1.0 + math.sqrt(10.0), 5.0, 5.0])  # 10, 16, 16
    mask = torch.tensor([[True, True, False], [True, False, False]])
    # per sequence: (1 + 3) / 2 = 2 and 10 / 1 = 10; their mean 6 (a mean over all tokens would give 14/3)
    assert L.rmu_forget(hidden, control, mask).item() == pytest.approx(6.0, rel=1e-6)
    assert L.rmu_retain(hidden, torch.ones(2, 3, 1), mask).item() == pytest.approx(6.0, rel=1e-6)


def test_inverted_hinge():
    logits = _logits([0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.4, 0.3, 0.3])
    labels = torch.tensor([[-100, 1, 0]])
    # position 0: 1 + 0.5 − 0.3; position 1: 1 + 0.6 − 0.3
    assert L.inverted_hinge(logits, labels).item() == pytest.approx((1.2 + 1.3) / 2, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_overwriting_the_logits_gives_the_same_loss_and_gradient_to_the_bit(dtype):
    """Healing's losses write the logits' gradient over the logits (one vocabulary-sized tensor less): the same
    values and gradients as with a fresh gradient tensor, across several blocks of positions and unscored ones."""
    torch.manual_seed(0)
    z = (3 * torch.randn(2, 2 * L.KL_BLOCK + 5, 50)).to(dtype)
    ref = (3 * torch.randn(2, 2 * L.KL_BLOCK + 5, 50)).to(dtype)
    labels = torch.randint(0, 50, (2, 2 * L.KL_BLOCK + 5))
    labels[0, :9] = L.IGNORE
    for loss in (lambda x, **kw: L.kl_to_reference(x, ref, labels, **kw), lambda x, **kw: L.nll(x, labels, **kw)):
        got = []
        for overwrite in (False, True):
            x = z.clone().requires_grad_()
            y = x * 1  # the logits as a model makes them: a non-leaf tensor the loss alone reads
            value = loss(y, overwrite=overwrite)
            value.backward()
            got.append((value, x.grad))
        assert torch.equal(got[0][0], got[1][0]) and torch.equal(got[0][1], got[1][1])
        assert got[1][1][:, -1].abs().sum() == 0  # the last position predicts nothing


def test_overwriting_logits_another_node_saved_fails_loudly():
    """Where something else in the graph kept the logits for a backward step that runs after the loss's, overwriting
    them is refused by autograd's version check instead of feeding that step the gradient as if it were logits."""
    x = torch.randn(1, 6, 10, requires_grad=True)
    y = x * 1
    labels = torch.randint(0, 10, (1, 6))
    total = (y * y).sum() + L.nll(y, labels, overwrite=True)  # y * y saves y; the later-made loss runs first
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        total.backward()
