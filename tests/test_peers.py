"""The peer methods from open-unlearning (WGA, CE-U, SatImp, UNDIAL, PDU): each loss and PDU's dual update on
inputs small enough to compute by hand (values and, where a weight or target is held constant, gradients), and
every method trained end to end on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

import unlearn
from unlearn.methods import get_method
from unlearn.methods import losses as L
from unlearn.methods.peers import Dual

PEERS = ("wga", "ce-u", "satimp", "undial", "pdu")


def _logits(*rows, grad: bool = False):
    """[1, T, V] logits whose softmax at position t is ``rows[t]`` (probabilities)."""
    return torch.tensor([[[math.log(p) for p in row] for row in rows]], requires_grad=grad)


# position 0 predicts label 1 (p 0.5), position 1 predicts label 0 (p 0.25); position 2 predicts nothing
ROWS = ([0.5, 0.5], [0.25, 0.75], [0.9, 0.1])
LABELS = torch.tensor([[-100, 1, 0]])


def test_wga_weights_each_token_by_its_probability_to_the_beta():
    got = L.wga(_logits(*ROWS), LABELS, 2.0).item()
    assert got == pytest.approx((0.5**2 * math.log(0.5) + 0.25**2 * math.log(0.25)) / 2, rel=1e-6)
    assert L.wga(_logits(*ROWS), LABELS, 0.0).item() == pytest.approx(-L.nll(_logits(*ROWS), LABELS).item())
    # the weight is a constant: ∂/∂z₁ = (w₁/2)·(onehot(0) − p₁) = (0.0625/2)·([1, 0] − [0.25, 0.75])
    z = _logits(*ROWS, grad=True)
    L.wga(z, LABELS, 2.0).backward()
    assert z.grad[0, 1].tolist() == pytest.approx([0.03125 * 0.75, -0.03125 * 0.75], rel=1e-5)


def test_satimp_weights_saturation_times_importance():
    # w = p^β₁ (1 − p)^β₂ with β₁ = 2, β₂ = 1: 0.25·0.5 = 0.125 and 0.0625·0.75 = 0.046875
    got = L.satimp(_logits(*ROWS), LABELS, 2.0, 1.0).item()
    assert got == pytest.approx((0.125 * math.log(0.5) + 0.046875 * math.log(0.25)) / 2, rel=1e-6)
    z = _logits(*ROWS, grad=True)
    L.satimp(z, LABELS, 2.0, 1.0).backward()
    assert z.grad[0, 0].tolist() == pytest.approx([-0.125 / 2 * 0.5, 0.125 / 2 * 0.5], rel=1e-5)


def test_ce_unlearning_fits_the_distribution_without_the_true_token():
    rows = ([0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6])
    labels = torch.tensor([[-100, 0, 2]])  # position 0 predicts token 0, position 1 token 2
    ce0 = -(0.6 * math.log(0.3) + 0.4 * math.log(0.2))  # target [0, 0.3, 0.2] / 0.5
    ce1 = -(1 / 7 * math.log(0.1) + 6 / 7 * math.log(0.6))  # target [0.1, 0.6, 0] / 0.7
    assert L.ce_unlearning(_logits(*rows), labels, 0).item() == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    assert L.ce_unlearning(_logits(*rows), labels, 1).item() == pytest.approx(ce1, rel=1e-6)  # the first skipped
    assert L.ce_unlearning(_logits(*rows), labels, 2).item() == 0.0
    # the target is held constant: ∂/∂z₁ = p − q
    z = _logits(*rows, grad=True)
    L.ce_unlearning(z, labels, 1).backward()
    assert z.grad[0, 1].tolist() == pytest.approx([0.1 - 1 / 7, 0.6 - 6 / 7, 0.3], rel=1e-5)
    assert z.grad[0, 0].abs().sum().item() == 0.0


def test_undial_distils_the_original_with_the_true_logit_lowered():
    model = ([0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4])
    ref = ([0.5, 0.25, 0.25], [0.9, 0.05, 0.05], [0.3, 0.3, 0.4])
    labels = torch.tensor([[-100, 0, -100]])  # only position 0 is scored: it predicts token 0
    # β = ln 2 halves the reference's 0.5 on token 0: the target is uniform
    want = -(math.log(0.5) + math.log(0.3) + math.log(0.2)) / 3
    assert L.undial(_logits(*model), _logits(*ref), labels, math.log(2)).item() == pytest.approx(want, rel=1e-6)
    # β = 0 and model = reference: the entropy of the reference
    same = L.undial(_logits(*ref), _logits(*ref), labels, 0.0).item()
    assert same == pytest.approx(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25)), rel=1e-6)
    z = _logits(*model, grad=True)
    L.undial(z, _logits(*ref), labels, math.log(2)).backward()
    assert z.grad[0, 0].tolist() == pytest.approx([0.5 - 1 / 3, 0.3 - 1 / 3, 0.2 - 1 / 3], rel=1e-5)
    assert z.grad[0, 1].abs().sum().item() == 0.0


def test_logit_gap_is_max_minus_mean_squared_on_scored_positions():
    z = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 6.0], [5.0, 0.0, 0.0]]])
    assert L.logit_gap(z, torch.tensor([[-100, 1, 1]])).item() == pytest.approx((1 + 16) / 2)
    assert L.logit_gap(z, torch.tensor([[-100, -100, 1]])).item() == pytest.approx(16.0)


def test_dual_ascent_and_its_warm_up():
    assert L.dual_ascent(1.0, 0.5, 2.0) == 2.0
    assert L.dual_ascent(1.0, -3.0, 1.0) == 0.0  # projected onto λ ≥ 0
    dual = Dual(1.0, step_size=1.0, warmup=1)
    assert [dual.update(v) for v in (0.5, 0.5, -2.0, 0.25)] == [1.0, 1.5, 0.0, 0.25]
    fixed = Dual(2.0, step_size=0.0)  # primal_dual=false
    assert fixed.update(5.0) == 2.0


def test_defaults_and_validation():
    info = unlearn.methods()
    assert set(PEERS) <= set(info)
    assert info["wga"]["parameters"]["beta"]["default"] == 1.0
    assert info["satimp"]["parameters"]["gamma"]["default"] == 0.1
    assert info["undial"]["parameters"]["beta"]["default"] == 10.0
    assert info["undial"]["parameters"]["alpha"]["default"] == 0.0
    assert info["ce-u"]["parameters"]["skip_first"]["default"] == 1
    assert info["pdu"]["parameters"]["primal_dual"]["default"] is True
    with pytest.raises(Exception, match="retain_eps"):
        get_method("pdu").make_config({"retain_loss": "kl"})
    with pytest.raises(Exception, match="beta1"):
        get_method("satimp").make_config({"beta1": -1})


@pytest.mark.parametrize("method", PEERS)
def test_every_peer_method_trains_the_tiny_model(run_tiny, method):
    result = run_tiny(method, method, {"steps": 2, "lr": 1e-3, "batch_size": 2})
    assert result.manifest["model"]["sha256_after"] != result.manifest["model"]["sha256_before"]
    log = result.metrics["train_log"]
    assert [s["step"] for s in log] == [1, 2] and all(math.isfinite(s["loss"]) for s in log)


def test_pdu_dual_variable_follows_the_retain_loss(run_tiny):
    result = run_tiny("pdu", "pdu", {"steps": 3, "lr": 1e-3, "batch_size": 2, "retain_eps": 1.0})
    log, dual = result.metrics["train_log"], 1.0  # λ₀ = α = 1
    for s in log:  # λ ← max(0, λ + 1 · (retain NLL − 1)), after each step
        dual = max(0.0, dual + s["retain_loss"] - 1.0)
        assert s["dual"] == pytest.approx(dual, abs=1e-5)
    assert result.manifest["method_facts"]["dual"] == pytest.approx(dual, abs=1e-5)
    fixed = run_tiny("fixed", "pdu", {"steps": 2, "lr": 1e-3, "batch_size": 2, "primal_dual": False})
    assert [s["dual"] for s in fixed.metrics["train_log"]] == [1.0, 1.0]
    assert fixed.manifest["method_facts"]["retain_eps"] > 0  # measured on the original model
