"""Edit methods (SSD, task-vector negation): the formulas pinned on hand-computable inputs, the Fisher estimate
against a hand-rolled one, end-to-end runs on a tiny model (plain checkpoint, reproducible, LoRA), bad
parameters rejected at config time."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import unlearn
from unlearn.data.chunking import TokenSplit
from unlearn.methods import get_method
from unlearn.methods import losses as L
from unlearn.methods.edits import dampen, fisher_diagonal, negate_task_vector

from conftest import tiny_model


def test_dampen_hand_computed():
    theta = torch.tensor([2.0, 3.0, -6.0])
    params = {"w": theta.clone()}
    imp_f = {"w": torch.tensor([1.0, 20.0, 30.0])}
    imp_r = {"w": torch.tensor([1.0, 1.0, 2.0])}
    # element 0: 1 > 10·1? no. element 1: 20 > 10 → ×1/20. element 2: 30 > 20 → ×2/30
    n, total = dampen(params, imp_f, imp_r, alpha=10.0, lam=1.0)
    assert (n, total) == (1 + 1, 3)
    expected = torch.tensor([2.0, 3.0 * (1 / 20), -6.0 * (2 / 30)])
    torch.testing.assert_close(params["w"], expected, rtol=1e-7, atol=0)
    # the factor is bounded by 1 (λ large: selected but not grown); I_r = 0 < I_f zeroes the element
    params = {"w": theta.clone()}
    n, _ = dampen(params, imp_f, imp_r, alpha=10.0, lam=100.0)
    assert n == 2 and torch.equal(params["w"], theta)
    params = {"w": theta.clone(), "skipped": theta.clone()}
    n, total = dampen(params, {"w": torch.tensor([0.0, 5.0, 0.0])}, {"w": torch.zeros(3)}, alpha=10.0, lam=1.0)
    assert (n, total) == (1, 3)
    assert params["w"].tolist() == [2.0, 0.0, -6.0] and torch.equal(params["skipped"], theta)


def _split(n_chunks=3, seq=8, seed=0) -> TokenSplit:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 400, (n_chunks, seq), generator=gen)
    ids[:, 0] = 0  # a BOS-like special token, not scored
    return TokenSplit(ids, ids == 0)


def test_fisher_matches_hand_rolled_squared_gradients():
    model = tiny_model("llama")
    split = _split(n_chunks=2)
    got = fisher_diagonal(model, split, batch_size=2, max_batches=1, seed=0, exclude=["norm"])
    assert not any("norm" in n for n in got)
    # by hand: one batch holding both chunks, squared gradient of the batch-mean NLL
    model.requires_grad_(True)
    labels = split.input_ids.masked_fill(split.special, -100)
    logits = model(input_ids=split.input_ids, attention_mask=torch.ones_like(split.input_ids)).logits
    L.nll(logits, labels).backward()
    for name, p in model.named_parameters():
        if "norm" not in name:
            torch.testing.assert_close(got[name], p.grad.square(), rtol=1e-4, atol=1e-12)
    # several batches: the mean over batches; the model is left as it was (no grads, frozen)
    model.zero_grad(set_to_none=True)
    model.requires_grad_(False)
    split = _split(n_chunks=3)
    three = fisher_diagonal(model, split, batch_size=1, max_batches=None, seed=0)
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    parts = []
    for i in range(3):
        one = TokenSplit(split.input_ids[i : i + 1], split.special[i : i + 1])
        parts.append(fisher_diagonal(model, one, batch_size=1, max_batches=None, seed=0))
    name = "model.layers.0.mlp.down_proj.weight"
    torch.testing.assert_close(three[name], sum(p[name] for p in parts) / 3, rtol=1e-4, atol=1e-12)


def test_per_token_fisher_weights_batches_by_their_scored_tokens():
    # FILA's importance: I = Σ_b n_b·g_b² / Σ_b n_b, n_b the labels ≠ −100 of batch b (before the shift)
    model = tiny_model("llama")
    split = _split(n_chunks=2, seq=8)
    split.special[1, :5] = True  # the second chunk scores fewer tokens: 3 labels against 7
    got = fisher_diagonal(model, split, batch_size=1, max_batches=None, seed=0, per_token=True)
    parts, counts = [], []
    for i in range(2):
        one = TokenSplit(split.input_ids[i : i + 1], split.special[i : i + 1])
        parts.append(fisher_diagonal(model, one, batch_size=1, max_batches=None, seed=0))
        counts.append(int((~split.special[i]).sum()))
    assert counts == [7, 3]
    name = "model.layers.1.self_attn.q_proj.weight"
    expected = (counts[0] * parts[0][name] + counts[1] * parts[1][name]) / 10
    torch.testing.assert_close(got[name], expected, rtol=1e-4, atol=1e-12)
    plain = fisher_diagonal(model, split, batch_size=1, max_batches=None, seed=0)
    torch.testing.assert_close(plain[name], (parts[0][name] + parts[1][name]) / 2, rtol=1e-4, atol=1e-12)


def test_task_vector_arithmetic():
    base = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.5]])}
    tuned = {"a": torch.tensor([1.5, 1.0]), "b": torch.tensor([[0.25]])}
    out = negate_task_vector(base, tuned, alpha=2.0)
    # θ − α(θ_ft − θ): 1 − 2·0.5 = 0, 2 − 2·(−1) = 4, 0.5 − 2·(−0.25) = 1
    assert out["a"].tolist() == [0.0, 4.0] and out["b"].tolist() == [[1.0]]
    assert base["a"].tolist() == [1.0, 2.0]  # inputs untouched
    model, other = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    sd = dict(model.named_parameters())
    same = negate_task_vector(sd, dict(other.named_parameters()), alpha=0.0)
    assert all(torch.equal(same[n], p) for n, p in sd.items())


def _loads(result):
    model = AutoModelForCausalLM.from_pretrained(result.run_dir / "model")
    assert not any("lora" in k for k in model.state_dict())
    return model


def test_ssd_end_to_end_is_reproducible(run_tiny):
    a = run_tiny("a", "ssd", {"batch_size": 2, "max_batches": 4})
    b = run_tiny("b", "ssd", {"batch_size": 2, "max_batches": 4})
    ma, facts = a.manifest, a.manifest["method_facts"]
    assert ma["model"]["sha256_after"] != ma["model"]["sha256_before"]
    assert ma["model"]["sha256_after"] == b.manifest["model"]["sha256_after"]
    assert 0 < facts["dampened"] < facts["total"] and facts["alpha"] == 10.0 and facts["lambda"] == 1.0
    assert a.metrics["stop_reason"] == f"dampened {facts['dampened']} of {facts['total']} parameters"
    _loads(a)
    c = run_tiny("c", "ssd", {"batch_size": 2, "max_batches": 0, "exclude": ["embed", "lm_head"]})
    total = sum(p.numel() for n, p in _loads(c).named_parameters() if "embed" not in n and "lm_head" not in n)
    assert c.manifest["method_facts"]["total"] == total


def test_task_vector_end_to_end_and_with_lora(run_tiny, tiny_checkpoint):
    r = run_tiny("tv", "task-vector", {"steps": 2, "lr": 1e-3, "batch_size": 2, "alpha": 0.5})
    m = r.manifest
    assert m["model"]["sha256_after"] != m["model"]["sha256_before"] and m["model"]["dtype"] == "fp32"
    assert [s["step"] for s in r.metrics["train_log"]] == [1, 2]
    assert m["method_facts"]["alpha"] == 0.5 and m["method_facts"]["finetune_steps"] == 2
    assert m["method_facts"]["task_vector_norm"] > 0
    _loads(r)
    lora = run_tiny("lora", "task-vector", {"steps": 2, "lr": 1e-2, "lora": "r=4,targets=q_proj;down_proj"})
    before = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("llama")).state_dict()
    after = _loads(lora).state_dict()
    changed = {n.split(".")[-2] for n, p in after.items() if not torch.equal(p, before[n])}
    assert changed == {"q_proj", "down_proj"}  # only the LoRA-merged modules moved


@pytest.mark.parametrize(
    "method,values,name",
    [
        ("task-vector", {"alpha": 0}, "alpha"),
        ("task-vector", {"alpha": -1.0}, "alpha"),
        ("task-vector", {"steps": 0}, "steps"),
        ("ssd", {"dampening_constant": -1}, "dampening_constant"),
        ("ssd", {"selection_weighting": 0}, "selection_weighting"),
        ("ssd", {"max_batches": -1}, "max_batches"),
        ("ssd", {"lambda": 1}, "lambda"),  # unknown key: extra="forbid"
    ],
)
def test_bad_parameters_fail_at_config_time(tmp_path, method, values, name):
    with pytest.raises(unlearn.UnlearnError, match=name):
        get_method(method).make_config(values)
    with pytest.raises(unlearn.UnlearnError, match=name):  # before any model is loaded (the model does not exist)
        unlearn.run({"model": str(tmp_path / "none"), "method": method, "method_config": values})


def test_methods_lists_edit_methods():
    info = unlearn.methods()
    assert info["ssd"]["parameters"]["selection_weighting"]["default"] == 10.0
    assert info["ssd"]["parameters"]["dampening_constant"]["default"] == 1.0
    assert info["task-vector"]["parameters"]["alpha"]["default"] == 1.0
    assert info["task-vector"]["parameters"]["lr"]["default"] == 1e-5


def test_single_edits_refuse_a_budget(tmp_path):
    for method in ("ssd", "task-vector"):
        with pytest.raises(unlearn.UnlearnError, match="cannot stop on a budget"):
            unlearn.run({"method": method, "stop": {"max_retain_drop": 0.05}, "out_dir": str(tmp_path)})
