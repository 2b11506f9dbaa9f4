"""Next-token metrics on hand-computable inputs: a lookup-table "model" whose logits depend on the current token."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearn.data.chunking import TokenSplit
from unlearn.eval.metrics import TOPK, evaluate_split, frequent_tokens, mean_loss, relative_drop

V = 16


class TableLM(nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: a bigram model with fixed scores."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.clone(), requires_grad=False)
        self.calls: list[tuple[tuple[int, ...], dict]] = []

    def forward(self, input_ids, **kwargs):
        self.calls.append((tuple(input_ids.shape), kwargs))
        return SimpleNamespace(logits=self.table[input_ids])


def cyclic_table(v: int = V) -> torch.Tensor:
    """Scores with a known ranking: after token p, token v has rank (v - p - 1) mod V (p + 1 is the favourite)."""
    p = torch.arange(v).unsqueeze(1)
    return -((torch.arange(v).unsqueeze(0) - p - 1) % v).float()


def split_of(rows, special_positions=()) -> TokenSplit:
    ids = torch.tensor(rows, dtype=torch.long)
    special = torch.zeros_like(ids, dtype=torch.bool)
    for r, c in special_positions:
        special[r, c] = True
    return TokenSplit(ids, special)


# Two chunks; position 4 of chunk 0 and position 7 of chunk 1 are separators (token 0, special).
#   chunk 0 transitions (prev -> target: rank): 3->4:0  4->5:0  5->9:3  9->0:special  0->1:0  1->15:13  15->2:2
#   chunk 1 transitions:                        7->8:0  8->1:8  1->1:15  1->12:10  12->12:15  12->13:0  13->0:special
HAND = split_of([[3, 4, 5, 9, 0, 1, 15, 2], [7, 8, 1, 1, 12, 12, 13, 0]], special_positions=[(0, 4), (1, 7)])
HAND_RANKS = [0, 0, 3, 0, 13, 2, 0, 8, 15, 10, 15, 0]
LSE = math.log(sum(math.exp(-j) for j in range(V)))  # every row of cyclic_table has the same logsumexp


def reference(model: TableLM, split: TokenSplit, skip_k: int) -> dict[str, float]:
    """A plain-Python re-implementation of the metrics, one position at a time."""
    table = model.table.detach().double()
    skip = set(frequent_tokens(split, skip_k).tolist())
    n = sn = top1 = top10 = s1 = s10 = 0
    loss = 0.0
    for ids, special in zip(split.input_ids.tolist(), split.special.tolist()):
        for t in range(1, len(ids)):
            if special[t]:
                continue
            row, target = table[ids[t - 1]], ids[t]
            rank = int((row > row[target]).sum())
            n += 1
            loss += float(torch.logsumexp(row, 0) - row[target])
            top1 += rank < 1
            top10 += rank < 10
            if target not in skip:
                sn += 1
                s1 += rank < 1
                s10 += rank < 10
    return {
        "top1": top1 / n,
        "top10": top10 / n,
        f"skip{skip_k}_top1": s1 / sn,
        f"skip{skip_k}_top10": s10 / sn,
        "loss": loss / n,
        "perplexity": math.exp(loss / n),
        "n_tokens": n,
    }


def assert_metrics(got: dict, want: dict, rel=1e-6):
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=rel, abs=1e-9), key


# ------------------------------------------------------------------------------------------------ frequent_tokens


def test_frequent_tokens_on_hand_split():
    # non-special targets: 4 5 9 1 15 2 | 8 1 1 12 12 13  ->  1 (x3), 12 (x2), then singletons by id
    assert frequent_tokens(HAND, 2).tolist() == [1, 12]
    assert frequent_tokens(HAND, 5).tolist() == [1, 12, 2, 4, 5]
    assert frequent_tokens(HAND, 100).tolist() == [1, 12, 2, 4, 5, 8, 9, 13, 15]
    assert frequent_tokens(HAND, 2).dtype == torch.long


def test_frequent_tokens_ties_broken_by_token_id():
    split = split_of([[0, 9, 5, 3, 5, 3, 7, 2, 9]])  # targets 3, 5, 9 twice, 2, 7 once; 0 at position 0 is none
    assert frequent_tokens(split, 1).tolist() == [3]
    assert frequent_tokens(split, 3).tolist() == [3, 5, 9]
    assert frequent_tokens(split, 5).tolist() == [3, 5, 9, 2, 7]


def test_frequent_tokens_skip_first_position_and_special_targets():
    # token 6 fills every first position and every special position: it is never a counted target
    split = split_of([[6, 6, 2, 6], [6, 3, 6, 2]], special_positions=[(0, 1), (0, 3), (1, 2)])
    assert frequent_tokens(split, 3).tolist() == [2, 3]
    unmarked = split_of([[6, 6, 2, 6], [6, 3, 6, 2]])
    assert frequent_tokens(unmarked, 1).tolist() == [6]


def test_frequent_tokens_k_zero_and_empty():
    assert frequent_tokens(HAND, 0).tolist() == []
    assert frequent_tokens(HAND, -3).tolist() == []
    all_special = split_of([[1, 2, 3]], special_positions=[(0, 1), (0, 2)])
    assert frequent_tokens(all_special, 5).tolist() == []
    empty = TokenSplit(torch.empty(0, 8, dtype=torch.long), torch.empty(0, 8, dtype=torch.bool))
    assert frequent_tokens(empty, 5).tolist() == []


# ------------------------------------------------------------------------------------------------ evaluate_split


def test_hand_computed_metrics():
    model = TableLM(cyclic_table())
    got = evaluate_split(model, HAND, batch_size=2, skip_k=2)
    assert got["n_tokens"] == 12  # 14 positions with a target, 2 of them separators
    assert got["top1"] == pytest.approx(5 / 12)
    assert got["top10"] == pytest.approx(8 / 12)
    # skip2 drops targets 1 and 12 (the two most frequent): 4 5 9 15 2 8 13 with ranks 0 0 3 13 2 0 0
    assert got["skip2_top1"] == pytest.approx(4 / 7)
    assert got["skip2_top10"] == pytest.approx(6 / 7)
    # nll = logsumexp(row) - row[target] = LSE + rank
    assert got["loss"] == pytest.approx(LSE + sum(HAND_RANKS) / 12, rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(got["loss"]), rel=1e-9)
    assert_metrics(got, reference(model, HAND, 2))


def test_loss_matches_torch_cross_entropy():
    torch.manual_seed(0)
    table = torch.randn(V, V) * 3
    split = split_of(
        [[random.Random(i).randrange(V) for i in range(k, k + 10)] for k in range(4)],
        special_positions=[(0, 3), (2, 9), (3, 0)],
    )
    got = evaluate_split(TableLM(table), split, batch_size=3, skip_k=2)
    logits = table[split.input_ids[:, :-1]]
    targets = split.input_ids[:, 1:]
    valid = ~split.special[:, 1:]
    want = F.cross_entropy(logits[valid], targets[valid])
    assert got["n_tokens"] == int(valid.sum()) == 4 * 9 - 2  # (3, 0) is no target
    assert got["loss"] == pytest.approx(float(want), rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(float(want)), rel=1e-5)
    # the loss-only pass (the forget floor's) returns exactly the same number
    assert mean_loss(TableLM(table), split, batch_size=3) == got["loss"]


def test_special_targets_are_excluded_but_special_inputs_are_not():
    model = TableLM(cyclic_table())
    base = evaluate_split(model, HAND, batch_size=4, skip_k=2)
    # the logits predicting a special target cannot matter: make row 9 (only used before the separator) all wrong
    table = cyclic_table()
    table[9] = torch.linspace(5, -5, V)
    table[9, 0] = -100.0
    assert_metrics(evaluate_split(TableLM(table), HAND, batch_size=4, skip_k=2), base)
    # unmarking the separators makes them count: 14 targets
    plain = TokenSplit(HAND.input_ids, torch.zeros_like(HAND.special))
    assert evaluate_split(model, plain, batch_size=4, skip_k=2)["n_tokens"] == 14
    # a special token as the *input* still predicts the next (non-special) target: 0 -> 1 in chunk 0
    table = cyclic_table()
    table[0] = -table[0]  # after 0, token 1 becomes the worst guess
    worse = evaluate_split(TableLM(table), HAND, batch_size=4, skip_k=2)
    assert worse["n_tokens"] == 12 and worse["top1"] == pytest.approx(4 / 12)


def test_only_special_targets():
    split = split_of([[5, 0, 0, 0]], special_positions=[(0, 1), (0, 2), (0, 3)])
    got = evaluate_split(TableLM(cyclic_table()), split, batch_size=1, skip_k=2)
    assert got["n_tokens"] == 0 and got["top1"] == 0 and math.isfinite(got["perplexity"])


def test_uniform_logits_tie_counts_as_top1():
    got = evaluate_split(TableLM(torch.zeros(V, V)), HAND, batch_size=8, skip_k=2)
    assert got["top1"] == got["top10"] == got["skip2_top1"] == 1.0  # rank = number strictly greater = 0
    assert got["loss"] == pytest.approx(math.log(V), rel=1e-6)
    assert got["perplexity"] == pytest.approx(V, rel=1e-5)


def test_top10_boundary():
    # target ranks 9 and 10 exactly: one inside top-10, one outside
    split = split_of([[0, 10, 0, 11]], special_positions=[(0, 2)])  # 0->10 rank 9, 0->11 rank 10
    got = evaluate_split(TableLM(cyclic_table()), split, batch_size=1, skip_k=0)
    assert got["n_tokens"] == 2 and got["top1"] == 0 and got["top10"] == 0.5
    assert TOPK == (1, 10)


def test_skip_k_zero_equals_plain_and_key_names():
    model = TableLM(cyclic_table())
    got = evaluate_split(model, HAND, batch_size=2, skip_k=0)
    assert got["skip0_top1"] == got["top1"] and got["skip0_top10"] == got["top10"]
    default = evaluate_split(model, HAND, batch_size=2)
    assert "skip50_top1" in default and "skip50_top10" in default
    # with k >= the number of distinct targets every target is skipped: defined as 0, not a crash
    assert default["skip50_top1"] == 0.0


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 64])
def test_batch_size_invariance_and_reference(batch_size):
    torch.manual_seed(1)
    v, n_chunks, seq = 24, 7, 12
    table = torch.randn(v, v) * 2
    ids = torch.randint(0, v, (n_chunks, seq))
    ids[ids % 5 == 0] = ids[ids % 5 == 0] // 5  # a skewed distribution: frequent small ids
    split = TokenSplit(ids, torch.rand(n_chunks, seq, generator=torch.Generator().manual_seed(2)) < 0.15)
    model = TableLM(table)
    got = evaluate_split(model, split, batch_size=batch_size, skip_k=3)
    assert_metrics(got, reference(model, split, 3), rel=1e-5)
    assert [shape for shape, _ in model.calls] == [
        (min(batch_size, n_chunks - i), seq) for i in range(0, n_chunks, batch_size)
    ]
    assert all(kwargs.get("use_cache") is False for _, kwargs in model.calls)
    assert_metrics(got, evaluate_split(model, split, batch_size=n_chunks, skip_k=3), rel=1e-6)


def test_progress_reports_tokens():
    seen = []
    evaluate_split(TableLM(cyclic_table()), HAND, batch_size=1, skip_k=2, progress=seen.append)
    assert seen == [8, 8]


def test_half_precision_logits_are_upcast():
    table = (torch.randn(V, V, generator=torch.Generator().manual_seed(3)) * 4).to(torch.bfloat16)
    half = evaluate_split(TableLM(table), HAND, batch_size=2, skip_k=2)
    full = evaluate_split(TableLM(table.float()), HAND, batch_size=2, skip_k=2)
    assert_metrics(half, full, rel=1e-6)


def test_real_tiny_model_matches_manual_computation():
    from conftest import tiny_model

    model = tiny_model("llama")
    torch.manual_seed(0)
    ids = torch.randint(2, 400, (3, 16))
    ids[:, 0] = 0
    ids[1, 9] = 0
    split = TokenSplit(ids, ids == 0)
    got = evaluate_split(model, split, batch_size=2, skip_k=5)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
    valid = ~split.special[:, 1:]
    targets = ids[:, 1:]
    rank = (logits > logits.gather(-1, targets.unsqueeze(-1))).sum(-1)[valid]
    assert got["n_tokens"] == 3 * 15 - 1
    assert got["loss"] == pytest.approx(float(F.cross_entropy(logits[valid], targets[valid])), rel=1e-4)
    assert got["top1"] == pytest.approx(float((rank < 1).float().mean()))
    assert got["top10"] == pytest.approx(float((rank < 10).float().mean()))
    assert got["loss"] == pytest.approx(math.log(400), rel=0.2)  # a random model is near uniform


# ------------------------------------------------------------------------------------------------- relative_drop


def test_relative_drop():
    assert relative_drop(0.8, 0.2) == pytest.approx(0.75)
    assert relative_drop(0.5, 0.5) == 0.0
    assert relative_drop(0.4, 0.6) == pytest.approx(-0.5)  # an increase is a negative drop
    assert relative_drop(0.3, 0.0) == 1.0
    assert relative_drop(0.0, 0.0) == 0.0
    assert relative_drop(0.0, 0.3) == 0.0
