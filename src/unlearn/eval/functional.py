"""Unlearning-evaluation metrics as small pure functions of numbers, arrays and strings (no model).

A scorer computes per-token log-probabilities (and argmax correctness, generated text, ...) from a model and
calls these. Conventions:

* ``token_logprobs`` is a 1-D sequence of the natural-log probabilities ``log p(x_t | x_<t)`` of the tokens
  of one answer / text; lists, numpy arrays and torch tensors are accepted, empty ones raise ``ValueError``;
* membership-inference scores are oriented so that **higher = more likely a member** (seen in training);
* every function returns python ``float`` / ``bool`` / ``dict`` except :func:`kl_divergence` (one value per row).

Sources: TOFU (Maini et al. 2024) and its successor open-unlearning (github.com/locuslab/open-unlearning),
MUSE (Shi et al. 2024), RWKU (Jin et al. 2024) and the membership-inference papers cited per function.
"""

from __future__ import annotations

import re
import string
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "normalized_prob",
    "truth_ratio",
    "truth_ratio_forget",
    "truth_ratio_retain",
    "prob_among_choices",
    "rouge_l",
    "exact_memorization",
    "extraction_strength",
    "forget_quality",
    "harmonic_mean",
    "loss_score",
    "zlib_score",
    "min_k",
    "min_k_plus_plus",
    "reference_score",
    "auc",
    "privleak",
    "mc_accuracy",
    "kl_divergence",
    "repetition_rate",
    "contains_answer",
    "corruption_rate",
    "recovery",
]

MINKPP_SIGMA_FLOOR = 1e-3
"""Lower bound on σ_t in :func:`min_k_plus_plus` (open-unlearning clamps the variance at 1e-6)."""


def _arr(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """``x`` (list, numpy array, torch tensor on any device) as a numpy array of ``dtype``."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x, dtype=dtype)


def _vec(x: Any, name: str, dtype: Any = np.float64) -> np.ndarray:
    """A non-empty 1-D array, or ``ValueError`` naming the argument."""
    a = _arr(x, dtype)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    return a


# ----------------------------------------------------------------------------------------------------------
# QA / TOFU
# ----------------------------------------------------------------------------------------------------------


def normalized_prob(token_logprobs: Any) -> float:
    """Length-normalised answer probability ``P(a|q)^(1/|a|) = exp(mean_t log p_t)`` (TOFU, Maini et al. 2024)."""
    return float(np.exp(_vec(token_logprobs, "token_logprobs").mean()))


def truth_ratio(perturbed_token_logprobs: Sequence[Any], correct_token_logprobs: Any) -> float:
    """TOFU truth ratio ``R = (Π_j P(â_j|q)^(1/|â_j|))^(1/m) / P(ã|q)^(1/|ã|)`` (Maini et al. 2024).

    The numerator is the geometric mean over the ``m`` perturbed (wrong) answers â_j of their length-normalised
    probabilities, the denominator the length-normalised probability of the paraphrased (or original) correct
    answer ã, i.e. ``exp(mean_j mean_t log p_j,t − mean_t log p_ã,t)`` — as in the TOFU code and open-unlearning
    (``exp(-mean_j avg_loss_j) / exp(-avg_loss_ã)``). R < 1 means the model prefers the correct answer.
    """
    if len(perturbed_token_logprobs) == 0:
        raise ValueError("perturbed_token_logprobs is empty: need at least one perturbed answer")
    wrong = np.mean([_vec(lp, f"perturbed answer {j}").mean() for j, lp in enumerate(perturbed_token_logprobs)])
    with np.errstate(over="ignore"):  # a guarded model's forbidden tokens: R is 0 or inf, as exp gives it
        return float(np.exp(wrong - _vec(correct_token_logprobs, "correct_token_logprobs").mean()))


def truth_ratio_forget(tr_values: Any) -> float:
    """Forget-set truth-ratio score ``mean(min(R, 1/R))`` (TOFU; open-unlearning ``closer_to_1_better``).

    1 when wrong and correct answers are equally likely (nothing known), → 0 when the model clearly prefers
    either one. R = 0 or R = inf (one side of the ratio underflowed, as behind a generation-time guard that
    forbids tokens) scores 0, the limit of min(R, 1/R).
    """
    tr = _vec(tr_values, "tr_values")
    if np.any(np.isnan(tr)) or np.any(tr < 0):
        raise ValueError("truth ratios must be non-negative numbers")
    with np.errstate(divide="ignore"):
        return float(np.mean(np.minimum(tr, 1.0 / tr)))


def truth_ratio_retain(tr_values: Any) -> float:
    """Retain/real-authors/world-facts truth-ratio score ``mean(max(0, 1 − R))`` (TOFU; open-unlearning
    ``true_better``): higher when the model prefers the correct answer."""
    return float(np.mean(np.maximum(0.0, 1.0 - _vec(tr_values, "tr_values"))))


def prob_among_choices(correct_token_logprobs: Any, perturbed_token_logprobs_list: Sequence[Any]) -> float:
    """TOFU probability on real authors / world facts: ``P_n(c) / (P_n(c) + Σ_j P_n(â_j))`` (Maini et al. 2024).

    ``P_n`` is the length-normalised probability :func:`normalized_prob`, ``c`` the correct answer and â_j the
    perturbed ones (open-unlearning ``probability_w_options``, which adds 1e-10 to the denominator; we don't).
    """
    correct = normalized_prob(correct_token_logprobs)
    wrong = sum(normalized_prob(lp) for lp in perturbed_token_logprobs_list)
    return float(correct / (correct + wrong))


_ROUGE_SCORERS: dict = {}


def rouge_l(prediction: str, reference: str, *, stem: bool = True) -> dict[str, float]:
    """ROUGE-L (longest common subsequence) ``recall``, ``precision`` and ``f1`` of ``prediction`` vs ``reference``.

    ``rouge_score.rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem)``: lowercased, non-alphanumerics
    dropped; TOFU and open-unlearning stem (Porter), MUSE does not (``stem=False``). recall = LCS/|reference|,
    precision = LCS/|prediction|. TOFU reports the recall, MUSE the F1.
    """
    if stem not in _ROUGE_SCORERS:
        from rouge_score import rouge_scorer

        _ROUGE_SCORERS[stem] = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem)
    s = _ROUGE_SCORERS[stem].score(reference, prediction)["rougeL"]  # score(target, prediction)
    return {"recall": float(s.recall), "precision": float(s.precision), "f1": float(s.fmeasure)}


def exact_memorization(correct: Any) -> float:
    """Exact memorisation: fraction of answer tokens whose teacher-forced argmax prediction equals the token.

    ``correct[t]`` = (argmax p(·|x_<t) == x_t). Tirumala et al. 2022; open-unlearning ``exact_memorization``.
    """
    return float(_vec(correct, "correct", dtype=bool).mean())


def extraction_strength(correct: Any) -> float:
    """Extraction strength ``ES = 1 − k*/n`` (Carlini et al. 2021; open-unlearning ``extraction_strength``).

    ``correct[t]`` = (teacher-forced argmax at position t == x_t); ``k*`` is the smallest prefix length such that
    given the true prefix ``x_<k*`` every remaining token ``x_k*..x_n-1`` is argmax-correct, i.e. one past the last
    wrong position. ES = 1 if all tokens are correct. When the last token is wrong no suffix matches, and
    open-unlearning's loop ends at k = n − 1: ES = 1/n there, not 0 — followed here, as the reference computes it.
    """
    c = _vec(correct, "correct", dtype=bool)
    wrong = np.flatnonzero(~c)
    k_star = min(int(wrong[-1]) + 1, c.size - 1) if wrong.size else 0
    return 1.0 - k_star / c.size


def forget_quality(truth_ratios: Any, reference_truth_ratios: Any) -> float:
    """TOFU forget quality: p-value of the two-sample Kolmogorov–Smirnov test (``scipy.stats.ks_2samp``, default
    two-sided, ``method="auto"`` = exact for small samples) between the forget-set truth ratios of the unlearned
    model and those of the reference (retain-only) model (Maini et al. 2024). High = indistinguishable."""
    from scipy.stats import ks_2samp

    a, b = _vec(truth_ratios, "truth_ratios"), _vec(reference_truth_ratios, "reference_truth_ratios")
    return float(ks_2samp(a, b).pvalue)


def harmonic_mean(values: Any) -> float:
    """Harmonic mean ``n / Σ 1/v_i`` of non-negative values, 0 if any is 0.

    TOFU's model utility is the harmonic mean of 9 numbers (probability, ROUGE-L and truth-ratio score on the
    retain set, real authors and world facts).
    """
    v = _vec(values, "values")
    if np.any(v < 0):
        raise ValueError("harmonic_mean needs non-negative values")
    if np.any(v == 0):
        return 0.0
    return float(v.size / np.sum(1.0 / v))


# ----------------------------------------------------------------------------------------------------------
# Membership inference (higher score = more likely a member)
# ----------------------------------------------------------------------------------------------------------


def loss_score(token_logprobs: Any) -> float:
    """LOSS attack (Yeom et al. 2018): ``mean_t log p_t`` = minus the mean token NLL."""
    return float(_vec(token_logprobs, "token_logprobs").mean())


def zlib_score(token_logprobs: Any, text: str) -> float:
    """zlib attack (Carlini et al. 2021, "Extracting training data from large language models").

    Carlini et al. rank by the ratio of the model's log-perplexity to the zlib entropy of the text; their code,
    the Min-K% repo and open-unlearning compute ``mean NLL / len(zlib.compress(text.encode("utf-8")))`` where
    lower = member. We return its negation, ``mean_t log p_t / zlib_bytes``, so that higher = member.
    (The per-token mean, not the total, matches the reference implementations.)
    """
    if not text:
        raise ValueError("text is empty")
    return loss_score(token_logprobs) / len(zlib.compress(text.encode("utf-8")))


def _n_lowest(n: int, k: float) -> int:
    """How many of ``n`` tokens Min-K% and Min-K%++ average: ``int(n · k)``, at least one, exactly as the Min-K%
    and Min-K%++ authors' code and open-unlearning compute it."""
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {k}")
    return max(1, int(n * k))


def min_k(token_logprobs: Any, k: float = 0.2) -> float:
    """Min-K% Prob (Shi et al. 2024, "Detecting pretraining data from large language models"): the mean of the
    ``int(n·k)`` lowest token log-probs (at least one), as the reference code takes them. MUSE uses k = 0.4.
    """
    lp = _vec(token_logprobs, "token_logprobs")
    return float(np.sort(lp)[: _n_lowest(lp.size, k)].mean())


def min_k_plus_plus(token_logprobs: Any, mu: Any, sigma: Any, k: float = 0.2) -> float:
    """Min-K%++ (Zhang et al. 2024): the mean of the ``int(n·k)`` lowest ``z_t = (log p(x_t) − μ_t) / σ_t``.

    ``μ_t = E_{z∼p(·|x_<t)} log p(z)`` and ``σ_t`` is the standard deviation of ``log p(z)`` under the same
    next-token distribution. σ_t is floored at :data:`MINKPP_SIGMA_FLOOR` (1e-3; open-unlearning clamps the
    variance at 1e-6), so a degenerate distribution (σ = 0) gives a finite z.
    """
    lp = _vec(token_logprobs, "token_logprobs")
    m, s = _vec(mu, "mu"), _vec(sigma, "sigma")
    if not lp.shape == m.shape == s.shape:
        raise ValueError(f"token_logprobs, mu and sigma differ in length: {lp.size}, {m.size}, {s.size}")
    z = (lp - m) / np.maximum(s, MINKPP_SIGMA_FLOOR)
    return float(np.sort(z)[: _n_lowest(z.size, k)].mean())


def reference_score(token_logprobs: Any, reference_token_logprobs: Any) -> float:
    """Reference-model attack (Carlini et al. 2022 "Membership inference attacks from first principles";
    Mireshghallah et al. 2022): ``mean log p_target − mean log p_reference``, i.e. the target's calibrated loss."""
    return loss_score(token_logprobs) - loss_score(reference_token_logprobs)


def auc(member_scores: Any, nonmember_scores: Any) -> float:
    """ROC AUC (``sklearn.metrics.roc_auc_score``) of separating members (label 1) from non-members (label 0)
    by score; ties count one half. ``ValueError`` if either side is empty."""
    from sklearn.metrics import roc_auc_score

    m, n = _vec(member_scores, "member_scores"), _vec(nonmember_scores, "nonmember_scores")
    labels = np.concatenate([np.ones(m.size), np.zeros(n.size)])
    return float(roc_auc_score(labels, np.concatenate([m, n])))


def privleak(auc_value: float, reference_auc: float) -> float:
    """MUSE PrivLeak (Shi et al. 2024) in MUSE's own convention, as open-unlearning reproduces it
    (``src/evals/metrics/privacy.py``).

    ``auc_value`` and ``reference_auc`` are this package's AUCs (forget texts = members, label 1; higher score =
    member). MUSE labels the forget texts as non-members, so its AUC is ``1 − AUC``, and PrivLeak is
    ``(AUC_muse − AUC_muse,ref) / (AUC_muse,ref + 1e-10) × 100`` with AUC_ref the retrained (never-saw-the-forget-
    set) model's. ≈ 0 is ideal; strongly negative = leakage (the forget texts still look like members), strongly
    positive = over-unlearning. E.g. AUC 0.99 against a reference 0.5228 gives −97.9.
    """
    muse, muse_ref = 1.0 - auc_value, 1.0 - reference_auc
    return float((muse - muse_ref) / (muse_ref + 1e-10) * 100.0)


# ----------------------------------------------------------------------------------------------------------
# Other helpers
# ----------------------------------------------------------------------------------------------------------


def mc_accuracy(choice_scores: Sequence[Any], answers: Sequence[int]) -> float:
    """Multiple-choice accuracy: fraction of questions whose highest-scoring choice is the answer index.

    Ties go to the lowest index (``np.argmax``), so a tie never favours a later correct answer.
    """
    if len(choice_scores) != len(answers):
        raise ValueError(f"{len(choice_scores)} choice-score rows but {len(answers)} answers")
    if len(answers) == 0:
        raise ValueError("no questions")
    hits = [np.argmax(_vec(s, f"choice_scores[{i}]")) == a for i, (s, a) in enumerate(zip(choice_scores, answers))]
    return float(np.mean(hits))


def kl_divergence(logp_p: Any, logp_q: Any) -> Any:
    """Per-row ``KL(P‖Q) = Σ_v p_v (log p_v − log q_v)`` over the last axis, from log-probability rows.

    Terms with p_v = 0 count 0 (q_v = 0 < p_v gives inf). Torch tensors stay torch (same device, no copy to host,
    computed in at least float32); anything else gives a float64 numpy array. Used for specificity,
    KL(original ‖ unlearned) on retain text.
    """
    if hasattr(logp_p, "detach") or hasattr(logp_q, "detach"):
        import torch

        lp, lq = torch.as_tensor(logp_p), torch.as_tensor(logp_q, device=torch.as_tensor(logp_p).device)
        dtype = torch.promote_types(torch.promote_types(lp.dtype, lq.dtype), torch.float32)
        lp, lq = lp.to(dtype), lq.to(dtype)
        if lp.shape != lq.shape:
            raise ValueError(f"shape mismatch: {tuple(lp.shape)} vs {tuple(lq.shape)}")
        p = lp.exp()
        return torch.where(p > 0, p * (lp - lq), torch.zeros((), dtype=dtype, device=lp.device)).sum(-1)
    lp, lq = _arr(logp_p), _arr(logp_q)
    if lp.shape != lq.shape:
        raise ValueError(f"shape mismatch: {lp.shape} vs {lq.shape}")
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):
        return np.where(p > 0, p * (lp - lq), 0.0).sum(-1)


def repetition_rate(tokens: Sequence[Any], n: int = 3) -> float:
    """seq-rep-n (Welleck et al. 2019, "Neural text generation with unlikelihood training"): ``1 − distinct
    n-grams / total n-grams`` of one sequence; 0 for fewer than ``n`` tokens. 0 = no repeats, → 1 = degenerate loop."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    toks = list(tokens.tolist() if hasattr(tokens, "tolist") else tokens)
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def _normalize(text: str) -> str:
    """SQuAD-style answer normalisation: lowercase, drop punctuation and articles, squeeze whitespace."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def contains_answer(prediction: str, answer: str) -> bool:
    """Whether the normalised ``answer`` occurs in the normalised ``prediction`` (RWKU-style accuracy of a probe,
    reported alongside ROUGE-L recall).

    Both are normalised SQuAD-style (lowercase, punctuation and articles a/an/the removed, whitespace squeezed);
    the match is a substring match on whole words ("1" is not found in "1990", "cat" not in "concatenate").
    An answer that normalises to nothing (e.g. "The") matches nothing.
    """
    a = _normalize(answer)
    return bool(a) and f" {a} " in f" {_normalize(prediction)} "


# ----------------------------------------------------------------------------------------------------------
# RESTOR (Rezaei et al. 2024): corruption and recovery
# ----------------------------------------------------------------------------------------------------------


def corruption_rate(true_probs: Any, corrupt_probs: Any) -> float:
    """Share of facts whose corrupt answer the model prefers: ``mean(P(corrupt) > P(true))`` over facts, each
    probability length-normalised (:func:`normalized_prob`); a tie counts as not corrupted."""
    t, c = _vec(true_probs, "true_probs"), _vec(corrupt_probs, "corrupt_probs")
    if t.shape != c.shape:
        raise ValueError(f"true_probs and corrupt_probs differ in length ({t.size} vs {c.size})")
    return float(np.mean(c > t))


def recovery(after: float, corrupted: float, clean: float, *, min_gap: float = 0.0) -> float | None:
    """How far a metric went back from the corrupted model to the clean one: ``(after − corrupted) / (clean −
    corrupted)`` (RESTOR's restorative unlearning): 1 = back at the clean value, 0 = still corrupted, < 0 =
    further away, > 1 = past it. None when ``|clean − corrupted| <= min_gap`` (the corruption did not move the
    metric, so there is nothing to recover) or a value is missing."""
    if after is None or corrupted is None or clean is None:
        return None
    gap = clean - corrupted
    if not np.isfinite(gap) or abs(gap) <= min_gap:
        return None
    return float((after - corrupted) / gap) + 0.0  # + 0.0: no negative zero
