"""sae-clamp: the clamp edit on hand-computed inputs, feature selection, SAE training, and runs on the tiny model
whose saved folder carries the clamp (re-attached on every load, refused on top of itself, kept by later runs)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import unlearn
from unlearn.errors import UnlearnError
from unlearn.methods import get_method
from unlearn.methods.sae_clamp import select_features
from unlearn.models import components
from unlearn.models.clamp import FeatureClamp
from unlearn.models.load import load_model
from unlearn.models.sae import train_sae

from conftest import assert_refused, invoke, tiny_model

SAE = {"steps": 20, "batch_size": 64, "train_tokens": 512, "clamped": 3, "l1": 0.001}


def _clamp(values, norm_limit=math.inf) -> FeatureClamp:
    """Two features on a 2-wide stream: f₀ = ReLU(h₀), f₁ = ReLU(h₁ − 1); decoder rows [1, 0] and [0, 2]."""
    return FeatureClamp(
        layer=0,
        features=[7, 9],
        w_enc=torch.eye(2),
        b_enc=torch.tensor([0.0, -1.0]),
        b_dec=torch.zeros(2),
        w_dec=torch.tensor([[1.0, 0.0], [0.0, 2.0]]),
        values=torch.tensor(values),
        mode="negative",
        norm_limit=norm_limit,
    )


def test_clamp_replaces_only_the_firing_features_contribution():
    clamp = _clamp([-3.0, 0.0])  # feature 0 clamped to −3, feature 1 zero-ablated
    h = torch.tensor([[2.0, 0.5], [-1.0, 3.0], [-1.0, 0.5], [2.0, 3.0]])
    assert clamp.activations(h).tolist() == [[2.0, 0.0], [0.0, 2.0], [0.0, 0.0], [2.0, 2.0]]
    # h + (f' − f) W_dec: row 0: (−3 − 2)·[1, 0]; row 1: (0 − 2)·[0, 2]; row 2: nothing fires; row 3: both
    want = [[-3.0, 0.5], [-1.0, -1.0], [-1.0, 0.5], [-3.0, -1.0]]
    assert clamp.edit(h).tolist() == want
    # zero ablation of both: the firing features' contributions are removed, the error term stays
    assert _clamp([0.0, 0.0]).edit(h).tolist() == [[0.0, 0.5], [-1.0, -1.0], [-1.0, 0.5], [0.0, -1.0]]
    # a position above the norm limit (an attention sink) is left alone
    limited = _clamp([-3.0, 0.0], norm_limit=2.5)
    assert limited.edit(torch.tensor([[2.0, 0.5], [3.0, 0.0]])).tolist() == [[-3.0, 0.5], [3.0, 0.0]]
    # bf16 in, bf16 out; where nothing fires the values are bit for bit the input's
    quiet = torch.tensor([[-1.0, 0.5], [-0.3, 0.9]], dtype=torch.bfloat16)
    assert torch.equal(clamp.edit(quiet), quiet)


def test_clamp_is_a_hook_saved_beside_the_weights_and_read_back(tmp_path):
    model = tiny_model("llama")
    ids = torch.tensor([[5, 9, 13, 2, 7]])
    plain = model(ids).logits
    w_dec = torch.nn.functional.normalize(torch.randn(2, 32, generator=torch.Generator().manual_seed(0)), dim=1)
    clamp = FeatureClamp(
        1, [0, 1], w_dec.T.clone(), torch.zeros(2), torch.zeros(32), w_dec, torch.tensor([-5.0, 0]), "negative"
    )
    components.attach(model, clamp)
    hooked = model(ids).logits
    assert not torch.allclose(hooked, plain)
    with pytest.raises(UnlearnError, match="already carries"):
        components.attach(model, _clamp([0.0, 0.0]))
    assert components.save_attached(model, tmp_path) == ["clamp.json", "clamp.safetensors"]
    assert json.loads((tmp_path / "clamp.json").read_text())["values"] == [-5.0, 0.0]
    assert [c.file for c in components.detach(model)] == ["clamp.json"]
    assert torch.equal(model(ids).logits, plain)
    assert len(components.attach_saved(model, tmp_path)) == 1
    assert torch.allclose(model(ids).logits, hooked, atol=1e-6)
    (tmp_path / "clamp.json").write_text("{not json")
    with pytest.raises(UnlearnError, match="cannot read the feature clamp"):
        components.attach_saved(tiny_model("llama"), tmp_path)


def test_selection_ranks_forget_specific_features_among_frequent_ones():
    forget = {"freq": torch.tensor([0.5, 0.2, 0.005, 0.3]), "mean": torch.tensor([1.0, 1.0, 1.0, 1.0])}
    retain = {"freq": torch.tensor([0.5, 0.0, 0.0, 0.1]), "mean": torch.tensor([1.0, 1.0, 1.0, 1.0])}
    cfg = get_method("sae-clamp").make_config({"clamped": 2, "min_forget_freq": 0.01})
    selected, score = select_features(forget, retain, cfg)
    # scores 0.5/0.501, 0.2/0.001, (feature 2 fires too rarely), 0.3/0.101
    assert selected.tolist() == [1, 3]
    assert score[2].item() == -math.inf and score[1].item() == pytest.approx(200.0)
    cfg = get_method("sae-clamp").make_config({"min_forget_freq": 0.9})
    with pytest.raises(UnlearnError, match="no SAE feature fires"):
        select_features(forget, retain, cfg)
    with pytest.raises(UnlearnError, match="mode"):
        get_method("sae-clamp").make_config({"mode": "half"})


def test_sae_training_reconstructs_sparse_data():
    g = torch.Generator().manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(16, 24, generator=g), dim=1)
    codes = torch.rand(2048, 16, generator=g) * (torch.rand(2048, 16, generator=g) < 0.1)
    trained = train_sae(codes @ atoms * 10, 32, l1=1e-3, steps=300, batch_size=256, lr=1e-2, seed=0)
    assert trained.quality["fve"] > 0.8 and trained.quality["l0"] < 16
    norms = trained.sae.w_dec.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_a_run_saves_the_clamp_and_loading_the_run_folder_attaches_it(run_tiny, tmp_path):
    result = run_tiny("sae", "sae-clamp", SAE)
    facts = result.manifest["method_facts"]
    assert facts["layer"] == 1 and facts["mode"] == "negative" and len(facts["features"]) == 3
    assert {"fve", "l0", "dead"} <= set(facts["sae"]["held_out"]) and all(f["promotes"] for f in facts["features"])
    assert all(f["value"] < 0 for f in facts["features"])
    model_dir = result.run_dir / "model"
    assert {"clamp.json", "clamp.safetensors"} <= set(result.manifest["model"]["files"])
    assert result.manifest["model"]["sha256_after"] == result.manifest["model"]["sha256_before"]  # weights unchanged
    said = []
    loaded = load_model(str(result.run_dir), "fp32", "cpu", log=said.append)  # the run folder stands for its model
    assert loaded.source == str(model_dir) and "attached SAE feature clamp (3 features at layer 1" in said[0]
    model, _ = unlearn.load_model(model_dir, dtype="fp32", device="cpu", log=said.append)  # the public call
    assert [c.features for c in components.attached(model)] == [[f["feature"] for f in facts["features"]]]
    data = [str(p) for p in (result.config.forget.source, result.config.retain.source)]
    again = unlearn.evaluate(str(result.run_dir), data, seq_len=32, eval_tokens=128, batch_size=4, dtype="fp32")
    plain = unlearn.evaluate(result.config.model, data, seq_len=32, eval_tokens=128, batch_size=4, dtype="fp32")
    for which, source in zip(("forget", "retain"), data):  # metrics.json's after-metrics are the clamped model's
        assert again[source]["loss"] == pytest.approx(result.after[which]["loss"], rel=1e-6)
        assert plain[source]["loss"] == pytest.approx(result.before[which]["loss"], rel=1e-6)
    assert again[data[0]]["loss"] != pytest.approx(plain[data[0]]["loss"], rel=1e-6)
    zero = run_tiny("zero", "sae-clamp", {**SAE, "mode": "zero"})
    assert [f["value"] for f in zero.manifest["method_facts"]["features"]] == [0.0, 0.0, 0.0]


def test_later_runs_keep_the_clamp_and_refuse_a_second(run_tiny):
    first = run_tiny("first", "sae-clamp", SAE)
    parent = {"from_run": str(first.run_dir), "model": str(first.run_dir / "model")}
    with pytest.raises(UnlearnError, match="already carries"):
        run_tiny("again", "sae-clamp", SAE, **parent)
    later = run_tiny("later", "selective-pruning", {"heal_steps": 0}, **parent)
    assert (later.run_dir / "model" / "clamp.json").read_text() == (first.run_dir / "model" / "clamp.json").read_text()


def test_cli_lists_the_method_and_refuses_a_layer_out_of_range(env):
    code, out, _ = invoke("methods")
    assert code == 0 and "sae-clamp" in out
    code, out, err = invoke(*env["base"], "--method", "sae-clamp", "--set", "layer=7", "--set", "steps=2")
    assert_refused("layer", code, out, err, "layer 7 is out of range", env["out"])
