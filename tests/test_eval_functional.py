"""Unit tests of the metric definitions in ``unlearn.eval.functional``, each on a hand-computable input."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from unlearn.eval import functional as F

L = math.log


def test_normalized_prob_is_geometric_mean_of_token_probs():
    assert F.normalized_prob([L(0.5), L(0.5)]) == pytest.approx(0.5)
    assert F.normalized_prob(np.array([L(0.25), 0.0])) == pytest.approx(0.5)  # sqrt(0.25 * 1)
    assert F.normalized_prob(torch.tensor([L(0.125)] * 3)) == pytest.approx(0.125)
    assert isinstance(F.normalized_prob([0.0]), float)


@pytest.mark.parametrize("bad", [[], np.zeros(0), np.zeros((2, 2))])
def test_bad_token_arrays_raise(bad):
    with pytest.raises(ValueError):
        F.normalized_prob(bad)
    with pytest.raises(ValueError):
        F.min_k(bad)


def test_truth_ratio():
    # perturbed length-normalised probs 0.25 and 0.0625 -> geometric mean 0.125; correct 0.5 -> R = 0.25
    perturbed = [[L(0.25)], [L(0.25), L(0.015625)]]
    assert F.truth_ratio(perturbed, [L(0.5), L(0.5)]) == pytest.approx(0.25)
    # geometric mean of 0.25 and 1.0 is 0.5 = correct -> R = 1
    assert F.truth_ratio([[L(0.25)], [0.0, 0.0]], [L(0.5)]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        F.truth_ratio([], [0.0])


def test_truth_ratio_aggregates():
    assert F.truth_ratio_forget([0.5, 2.0, 1.0]) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert F.truth_ratio_retain([0.25, 1.5]) == pytest.approx((0.75 + 0.0) / 2)
    # a guarded model (forbidden tokens at the lowest finite logit) gives R = 0 or inf: both score 0
    lowest = -3.4e38
    assert F.truth_ratio([[lowest]], [-1.0]) == 0.0 and F.truth_ratio([[-1.0]], [lowest]) == float("inf")
    assert F.truth_ratio_forget([0.0, float("inf"), 1.0]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="non-negative"):
        F.truth_ratio_forget([float("nan")])


def test_prob_among_choices():
    assert F.prob_among_choices([L(0.5)], [[L(0.25)], [L(0.25), L(0.25)]]) == pytest.approx(0.5)
    assert F.prob_among_choices([L(0.6)], [[L(0.2)]]) == pytest.approx(0.75)


def test_rouge_l():
    r = F.rouge_l("the cat sat", "the cat sat on the mat")
    assert r["recall"] == pytest.approx(0.5)
    assert r["precision"] == pytest.approx(1.0)
    assert r["f1"] == pytest.approx(2 / 3)
    assert F.rouge_l("Cats sitting.", "cat sits")["recall"] == pytest.approx(1.0)  # lowercase + Porter stemmer
    assert F.rouge_l("dog", "cat")["f1"] == 0.0


def test_exact_memorization_and_extraction_strength():
    assert F.exact_memorization([True, False, True, True]) == pytest.approx(0.75)
    assert F.exact_memorization(torch.tensor([1, 1, 0, 0], dtype=torch.bool)) == pytest.approx(0.5)
    assert F.extraction_strength([True, False, True, True]) == pytest.approx(0.5)  # k* = 2 of 4
    assert F.extraction_strength([False, True, True, True]) == pytest.approx(0.75)  # k* = 1
    assert F.extraction_strength([True] * 5) == 1.0  # k* = 0
    # last wrong: no suffix matches; open-unlearning's loop stops at k = n − 1, so ES = 1/n
    assert F.extraction_strength([True, True, False]) == pytest.approx(1 / 3)
    assert F.extraction_strength([False]) == 1.0  # n = 1: k stops at 0
    with pytest.raises(ValueError):
        F.extraction_strength([])


def test_forget_quality_ks_pvalue():
    a = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert F.forget_quality(a, a) == pytest.approx(1.0)
    # disjoint samples of 5 and 5: exact two-sided p = 2 / C(10, 5) = 2 * 5! * 5! / 10!
    expected = 2 * math.factorial(5) ** 2 / math.factorial(10)
    assert expected == pytest.approx(0.0079365079)
    assert F.forget_quality(a, [1.1, 1.2, 1.3, 1.4, 1.5]) == pytest.approx(expected)


def test_harmonic_mean():
    assert F.harmonic_mean([1.0, 2.0, 4.0]) == pytest.approx(3 / (1 + 0.5 + 0.25))
    assert F.harmonic_mean([0.5] * 9) == pytest.approx(0.5)
    assert F.harmonic_mean([0.9, 0.0, 0.8]) == 0.0
    with pytest.raises(ValueError):
        F.harmonic_mean([-1.0, 1.0])


def test_loss_zlib_and_reference_scores():
    lp = [-1.0, -2.0, -3.0]
    assert F.loss_score(lp) == pytest.approx(-2.0)
    text = "hello hello hello"
    assert F.zlib_score(lp, text) == pytest.approx(-2.0 / len(zlib.compress(text.encode())))
    assert F.reference_score(lp, [-4.0, -4.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        F.zlib_score(lp, "")


def test_min_k():
    lp = [-1.0, -5.0, -2.0, -4.0, -3.0]
    # int(n * k) lowest tokens, at least one, as the Min-K% authors and open-unlearning count them
    assert F.min_k(lp) == pytest.approx(-5.0)  # int(5 * 0.2) = 1
    assert F.min_k(lp, k=0.4) == pytest.approx(-4.5)  # -5, -4
    assert F.min_k(lp, k=0.6) == pytest.approx(-4.0)  # int(3.0000000000000004) = 3
    assert F.min_k(lp, k=0.5) == pytest.approx(-4.5)  # int(2.5) = 2, not 3
    assert F.min_k(lp, k=0.7) == pytest.approx(-4.0)  # int(3.5) = 3
    assert F.min_k(lp, k=1.0) == pytest.approx(-3.0)
    assert F.min_k([-7.0], k=0.01) == pytest.approx(-7.0)  # at least one token
    with pytest.raises(ValueError):
        F.min_k(lp, k=0.0)


def test_min_k_plus_plus():
    lp, mu, sigma = [-1.0, -2.0, -3.0], [-2.0, -2.0, -2.0], [1.0, 2.0, 0.5]  # z = [1, 0, -2]
    assert F.min_k_plus_plus(lp, mu, sigma) == pytest.approx(-2.0)  # int(0.6) = 0 -> at least 1
    assert F.min_k_plus_plus(lp, mu, sigma, k=0.5) == pytest.approx(-2.0)  # int(1.5) = 1
    assert F.min_k_plus_plus(lp, mu, sigma, k=0.7) == pytest.approx(-1.0)  # int(2.1) = 2: mean(-2, 0)
    assert F.min_k_plus_plus(lp, mu, sigma, k=1.0) == pytest.approx(-1 / 3)
    assert F.min_k_plus_plus([-1.0], [-1.0], [0.0], k=1.0) == 0.0  # sigma = 0 guarded
    assert math.isfinite(F.min_k_plus_plus([-1.5], [-1.0], [0.0]))
    with pytest.raises(ValueError):
        F.min_k_plus_plus(lp, mu[:2], sigma)


def test_auc_and_privleak():
    assert F.auc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert F.auc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert F.auc([3.0, 1.0], [2.0, 0.0]) == pytest.approx(0.75)  # 3 of 4 pairs ordered
    assert F.auc([1.0], [1.0]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        F.auc([], [1.0])
    with pytest.raises(ValueError):
        F.auc([1.0], [])
    # MUSE's convention (open-unlearning privacy.py): AUC_muse = 1 - member AUC, relative to the reference's
    assert F.privleak(0.99, 0.5228) == pytest.approx((0.01 - 0.4772) / 0.4772 * 100)  # -97.9: still leaks
    assert F.privleak(0.99, 0.5228) == pytest.approx(-97.904, abs=1e-3)
    assert F.privleak(0.6, 0.5) == pytest.approx(-20.0)  # the forget texts look more like members: leakage
    assert F.privleak(0.4, 0.5) == pytest.approx(20.0)  # less like members than a retrained model: over-unlearnt
    assert F.privleak(0.5, 0.5) == 0.0
    assert F.privleak(0.2, 1.0) == pytest.approx(0.8 / 1e-10 * 100)  # the reference's 1e-10 guard, no error


def test_mc_accuracy_ties_go_to_lowest_index():
    scores = [[0.1, 0.9], [0.5, 0.5], np.array([0.3, 0.2])]
    assert F.mc_accuracy(scores, [1, 1, 0]) == pytest.approx(2 / 3)
    assert F.mc_accuracy([[0.5, 0.5]], [0]) == 1.0
    with pytest.raises(ValueError):
        F.mc_accuracy(scores, [1])


def test_kl_divergence():
    p = np.log([[0.5, 0.5], [0.2, 0.8]])
    np.testing.assert_allclose(F.kl_divergence(p, p), [0.0, 0.0], atol=1e-12)
    q = np.log([[0.25, 0.75], [0.5, 0.5]])
    expected = [0.5 * L(2) + 0.5 * L(0.5 / 0.75), 0.2 * L(0.4) + 0.8 * L(1.6)]
    np.testing.assert_allclose(F.kl_divergence(p, q), expected, rtol=1e-12)
    # zero-probability terms of P count 0 (log 0 = -inf must not produce nan)
    assert F.kl_divergence(np.array([0.0, -np.inf]), np.log([0.5, 0.5])) == pytest.approx(L(2))
    out = F.kl_divergence(torch.tensor(p, dtype=torch.float32), torch.tensor(q, dtype=torch.float32))
    assert isinstance(out, torch.Tensor) and out.shape == (2,)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5)
    torch_zero = F.kl_divergence(torch.tensor([0.0, -math.inf]), torch.log(torch.tensor([0.5, 0.5])))
    assert torch_zero.item() == pytest.approx(L(2))


def test_repetition_rate():
    assert F.repetition_rate("a b a b a b".split(), n=2) == pytest.approx(1 - 2 / 5)  # ab ba ab ba ab
    assert F.repetition_rate([1, 2, 3, 4]) == 0.0
    assert F.repetition_rate([7] * 5) == pytest.approx(1 - 1 / 3)
    assert F.repetition_rate([1, 2], n=3) == 0.0
    assert F.repetition_rate(np.array([1, 1, 1]), n=1) == pytest.approx(2 / 3)


def test_contains_answer():
    assert F.contains_answer("He was born in Paris, France.", "paris")
    assert F.contains_answer("It's THE   Eiffel tower!", "Eiffel Tower")
    assert F.contains_answer("The answer: an apple pie", "the apple-pie") is False  # hyphen removed -> "applepie"
    assert F.contains_answer("an apple pie", "The apple pie")
    assert not F.contains_answer("Born in 1990", "1")
    assert not F.contains_answer("concatenate", "cat")
    assert not F.contains_answer("anything", "The")
