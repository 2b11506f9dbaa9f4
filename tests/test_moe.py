"""Mixture-of-experts models: the adapters of the fused-expert families, expert neurons (statistics, ablation,
folding), routing statistics and routing shift, selective pruning of expert neurons end to end, and UOE (its
attribution and anchor on hand-computed inputs, and a run on a tiny model built from a config)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import MOE_FAMILIES, SMALL, assert_refused, invoke, small_run_config, tiny_model
from transformers import AutoModelForCausalLM

import unlearn
from unlearn.data.chunking import TokenSplit
from unlearn.errors import UnlearnError
from unlearn.methods.uoe import UOEConfig, anchor, attribute
from unlearn.models.adapters import adapter_for
from unlearn.models.experts import Routing, expert_activations, routing, routing_shift
from unlearn.models.hooks import Ablation, ablated, collect_statistics
from unlearn.models.save import check_foldable, fold, save_checkpoint


def _split(n: int = 3, seq: int = 10) -> TokenSplit:
    ids = torch.randint(2, 380, (n, seq), generator=torch.Generator().manual_seed(1))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = True
    return TokenSplit(ids, special)


@torch.inference_mode()
def _logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


def _expert_ablation(model, adapter) -> Ablation:
    ablation, n = Ablation(), adapter.n_neurons(model, "expert")
    for layer in range(adapter.n_layers(model)):
        ablation.add(("expert", layer), torch.tensor([0, 5, n // 2 + 1, n - 1]), torch.zeros(4), n)
    ablation.add(("attn", 1), torch.tensor([1, 2]), torch.zeros(2), adapter.n_neurons(model, "attn"))
    return ablation


# ---------------------------------------------------------------------------------------------------------------
# adapters, expert neurons, folding


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_expert_neurons_hooks_fold_and_save_agree(family, tokenizer, tmp_path):
    model = tiny_model(family)
    adapter = adapter_for(model)
    assert adapter.family == family and adapter.has("expert") and adapter.has("ff") == (family == "qwen2_moe")
    assert adapter.n_neurons(model, "expert") == 4 * 16
    ids = _split().input_ids
    base = _logits(model, ids)
    ablation = _expert_ablation(model, adapter)
    with ablated(model, adapter, ablation):
        hooked = _logits(model, ids)
        stats = collect_statistics(model, adapter, _split(), batch_size=2, kinds=("expert",), needs=("abs",))
    assert (hooked - base).abs().max() > 1e-5
    assert torch.equal(_logits(model, ids), base)  # the mask is gone
    assert "parametrizations" not in "".join(model.state_dict())
    for (kind, layer), mask in ablation.pruned.items():  # a pruned expert neuron reads 0, as a pruned dense one
        assert kind != "expert" or stats[(kind, layer)].abs_sum[mask].eq(0).all()
    folded = fold(copy.deepcopy(model), adapter, ablation)
    torch.testing.assert_close(_logits(folded, ids), hooked, rtol=0, atol=1e-6)
    save_checkpoint(folded, tokenizer, tmp_path / "ckpt")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(reloaded, ids), hooked, rtol=0, atol=1e-6)


def test_expert_activations_rebuild_the_experts_output():
    """Σ_e w_e · down_proj[e] @ a_e over each token's chosen experts is what the experts module returns."""
    model = tiny_model("mixtral")
    experts = model.model.layers[0].mlp.experts
    hidden = torch.randn(5, 32, generator=torch.Generator().manual_seed(0))
    chosen = torch.tensor([[0, 1], [1, 3], [2, 0], [3, 2], [1, 0]])
    weights = torch.rand(5, 2, generator=torch.Generator().manual_seed(1))
    acts = expert_activations(experts, hidden, chosen).view(5, 4, 16)
    for t in range(5):  # zero exactly where the expert was not chosen
        assert [bool(acts[t, e].any()) for e in range(4)] == [e in chosen[t].tolist() for e in range(4)]
    w = torch.zeros(5, 4).scatter(1, chosen, weights)
    rebuilt = torch.einsum("te,ehw,tew->th", w, experts.down_proj, acts)
    torch.testing.assert_close(rebuilt, experts(hidden, chosen, weights), rtol=1e-5, atol=1e-6)


def test_nested_masks_and_training_keep_pruned_columns():
    model = tiny_model("olmoe")
    adapter = adapter_for(model)
    down = adapter.experts_of(model, 1).down_proj
    ablation = _expert_ablation(model, adapter)
    with ablated(model, adapter, ablation):
        with ablated(model, adapter, Ablation()) as inner:  # nothing pruned: no mask added
            assert inner is model
        with ablated(model, adapter, ablation):
            pass  # an inner mask on the same tensors comes off alone
        model.requires_grad_(True)
        model(input_ids=_split().input_ids).logits.square().mean().backward()
    assert adapter.experts_of(model, 1).down_proj is down and down.grad is not None
    mask = ablation.pruned[("expert", 1)].view(4, 16)
    assert down.grad.transpose(1, 2)[mask].eq(0).all() and down.grad.transpose(1, 2)[~mask].ne(0).any()


def test_mean_ablation_and_missing_kinds_refused():
    model = tiny_model("mixtral")
    adapter = adapter_for(model)
    with pytest.raises(UnlearnError, match="use ablation 'zero'"):
        check_foldable(model, adapter, ["expert"])
    with pytest.raises(UnlearnError, match="no dense feed-forward MLP"):
        adapter.n_neurons(model, "ff")
    llama = tiny_model("llama")
    with pytest.raises(UnlearnError, match="not a mixture-of-experts model"):
        adapter_for(llama).n_neurons(llama, "expert")


# ---------------------------------------------------------------------------------------------------------------
# routing


def test_routing_statistics_of_a_tiny_model():
    model = tiny_model("qwen3_moe")
    r = routing(model, adapter_for(model), _split(), batch_size=2)
    assert r.tokens == 27 and r.choices.shape == (27, 2, 2)
    assert r.counts.sum(1).tolist() == [27 * 2, 27 * 2]  # every token picks two experts per layer
    torch.testing.assert_close(r.probs.sum(1), torch.ones(2, dtype=torch.float64))
    assert routing_shift(r, r)["decisions"] == 0.0


def test_routing_shift_hand_computed():
    probs, counts = torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.long)
    before = Routing(probs, counts, torch.tensor([[[0, 1], [2, 3]], [[0, 1], [0, 2]]]))
    after = Routing(probs, counts, torch.tensor([[[0, 1], [2, 3]], [[0, 3], [0, 2]]]))
    got = routing_shift(before, after, target=(0, 1))
    assert got["decisions"] == 0.25 and got["tokens"] == 0.5 and got["per_layer"] == [0.5, 0.0]
    assert got["target_chosen"] == {"before": 1.0, "after": 0.5}


# ---------------------------------------------------------------------------------------------------------------
# UOE


def test_uoe_attribution_and_anchor_hand_computed():
    r = Routing(torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]), torch.zeros(2, 3), torch.zeros(0, 2, 2))
    assert attribute(r, "top") == [(0, 1)]
    assert attribute(r, "each") == [(0, 1), (1, 0)]
    assert attribute(r, 1) == [(1, 0)]
    with pytest.raises(UnlearnError, match="layer 2 does not exist"):
        attribute(r, 2)
    p = torch.tensor([0.5, 0.2, 0.9], requires_grad=True)
    mask = torch.tensor([True, True, False])
    value = anchor([p], [torch.tensor([0.4, 0.2, 0.3])], mask)  # ((0.1)² + 0²) / 2; the masked token counts not
    assert value.item() == pytest.approx(0.005)
    value.backward()
    torch.testing.assert_close(p.grad, torch.tensor([0.1, 0.0, 0.0]))  # 2 · (p − p⁰) / 2 tokens
    two = anchor([p, p], [torch.tensor([0.4, 0.2, 0.3]), torch.tensor([0.5, 0.0, 0.0])], mask)
    assert two.item() == pytest.approx((0.005 + 0.02) / 2)  # the mean over targets
    for bad in ({"weight_decay": 0.1}, {"lora": "r=4"}, {"layer": -1}, {"inner": "rmu"}):
        with pytest.raises(ValueError):
            UOEConfig(**bad)


def test_uoe_unlearns_one_expert_of_a_tiny_moe(tmp_path, tiny_checkpoint, text_files):
    ckpt = tiny_checkpoint("qwen2_moe")
    cfg = small_run_config(ckpt, *text_files, tmp_path / "runs", stats_tokens=256, eval_tokens=128)
    result = unlearn.run({**cfg, "name": "uoe", "method": "uoe", "method_config": {"steps": 2, "lr": 1e-2}})
    facts = result.manifest["method_facts"]
    [target] = facts["targets"]
    layer, expert = target["layer"], target["expert"]
    probs = torch.tensor(facts["affinity"]["mean_prob"])
    assert probs.shape == (2, 4) and target["affinity"] == pytest.approx(float(probs.max()), abs=1e-6)
    before = AutoModelForCausalLM.from_pretrained(ckpt).state_dict()
    after = AutoModelForCausalLM.from_pretrained(result.run_dir / "model").state_dict()
    prefix = f"model.layers.{layer}.mlp."
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {prefix + "experts.gate_up_proj", prefix + "experts.down_proj", prefix + "gate.weight"}
    for name in ("gate_up_proj", "down_proj"):  # only the target expert's slice of the fused tensors moved
        diff = (before[prefix + "experts." + name] - after[prefix + "experts." + name]).flatten(1).abs().amax(1)
        assert diff.nonzero().flatten().tolist() == [expert]
    assert facts["trained"]["parameters"] == 3 * 16 * 32 + 4 * 32
    shift = facts["routing_shift"]
    assert shift["forget"]["per_layer"][:layer] == [0.0] * layer  # layers before the target route as before
    assert set(shift["forget"]["target_chosen"]) == {"before", "after"}
    log = result.metrics["train_log"]
    assert log[0]["anchor_loss"] == 0.0 and all("anchor_loss" in s for s in log)

    # the comparison: the inner method on every parameter shifts the routing of the same chunks too
    npo = unlearn.run({**cfg, "name": "npo", "method": "npo", "method_config": {"steps": 2, "lr": 1e-2}})
    original = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    everything = AutoModelForCausalLM.from_pretrained(npo.run_dir / "model").eval()
    split = _split()
    adapter = adapter_for(original)
    all_params = routing_shift(routing(original, adapter, split, 4), routing(everything, adapter, split, 4))
    assert all_params["per_layer"][0] > 0  # every layer trained: the first layer's routing moves


def test_uoe_refuses_a_dense_model(tmp_path, tiny_checkpoint, text_files):
    code, prose = text_files
    out = tmp_path / "runs"
    args = ["run", "--model", str(tiny_checkpoint("llama")), "--forget", str(code), "--retain", str(prose)]
    got = invoke(*args, "--out", str(out), *SMALL, "--method", "uoe")
    assert_refused("uoe on llama", *got, "uoe needs a mixture-of-experts model", out)
    assert "uoe" in invoke("methods")[1]


def test_selective_pruning_of_expert_neurons_end_to_end(tmp_path, tiny_checkpoint, text_files):
    ckpt = tiny_checkpoint("mixtral")
    cfg = small_run_config(ckpt, *text_files, tmp_path / "runs")
    settings = {"ff_frac": 0, "expert_frac": 0.05, "heal_steps": 1}
    result = unlearn.run({**cfg, "name": "sp", "method": "selective-pruning", "method_config": settings})
    assert result.manifest["pruned_total"] == {"ff": 0, "attn": 0, "expert": 6}  # 5 % of 2 × 64
    model = AutoModelForCausalLM.from_pretrained(result.run_dir / "model")  # stock transformers
    pruned = result.manifest["pruned_neurons_per_layer"]["expert"]
    assert sum(pruned) == 6
    zero_columns = sum(int((layer.mlp.experts.down_proj == 0).all(1).sum()) for layer in model.model.layers)
    assert zero_columns == 6
    with pytest.raises(UnlearnError, match="no dense feed-forward MLP"):
        unlearn.run({**cfg, "name": "sp-ff", "method": "selective-pruning"})
