"""The parametric trace (ConceptVectors-style): which MLP value vectors are most aligned with the forget data, and
how much of each an unlearned model still holds, on tiny random models with hand-checkable edits, and in runs."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import FAMILIES, ctrl_c_at_evaluation, small_run_config, tiny_model
from unlearn.data.chunking import TokenSplit
from unlearn.eval import trace
from unlearn.models.adapters import adapter_for

FORGET_TOKENS = [10, 11, 12]


def _split(ids: list[int], special: int | None = None) -> TokenSplit:
    t = torch.tensor(ids).view(1, -1)
    return TokenSplit(t, t == special if special is not None else torch.zeros_like(t, dtype=torch.bool))


def _corpora():
    """Forget text made of tokens 10-12 (and the special token 1, often) over a shared background; retain text the
    same background only."""
    background = list(range(20, 60))
    forget = _split(background + FORGET_TOKENS * 8 + [1] * 30, special=1)
    return forget, _split(background * 2)


def _column(model, adapter, layer: int, neuron: int) -> torch.Tensor:
    return trace.value_vectors(model, adapter, layer)[neuron]


def test_forget_specific_tokens_are_the_over_represented_ones_never_special():
    forget, retain = _corpora()
    assert trace.forget_specific_tokens(forget, retain, 400).tolist() == FORGET_TOKENS
    assert trace.forget_specific_tokens(forget, retain, 400, n=2).tolist() == FORGET_TOKENS[:2]
    assert trace.forget_specific_tokens(retain, retain, 400).tolist() == []  # nothing specific to it
    assert trace.forget_specific_tokens(forget, None, 400).tolist()[:3] == FORGET_TOKENS


@pytest.mark.parametrize("family", FAMILIES)
def test_alignment_scores_equal_the_z_score_of_each_neurons_full_logits(family):
    """The closed form (unembedding moments) against the logits of every column read through norm and unembedding."""
    model = tiny_model(family)
    adapter = adapter_for(model)
    tokens = torch.tensor(FORGET_TOKENS)
    scores = trace.alignment_scores(model, adapter, tokens)
    for layer in range(adapter.n_layers(model)):
        columns = trace.value_vectors(model, adapter, layer)
        z = adapter.unembed(model, columns)  # the model's own logit lens
        expected = (z[:, tokens].mean(1) - z.mean(1)) / z.std(1, correction=0)
        torch.testing.assert_close(scores[layer], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_an_unchanged_model_keeps_every_concept_vector(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    concepts = trace.concept_vectors(model, adapter, *_corpora(), k=8)
    got = trace.trace_remaining(model, adapter, concepts)
    assert got["k"] == 8 and len(got["vectors"]) == 8
    assert got["cosine"] == got["norm_ratio"] == got["projection"] == pytest.approx(1.0, abs=1e-5)
    assert got["alignment_after"] == pytest.approx(got["alignment_before"], abs=1e-5)
    assert got["forget_tokens"] == [str(t) for t in FORGET_TOKENS]
    # the chosen ones are the k highest scores of all neurons, best first
    scores = trace.alignment_scores(model, adapter, concepts.tokens)
    assert [v["alignment_before"] for v in got["vectors"]] == pytest.approx(scores.flatten().topk(8).values.tolist())
    assert all(len(v["promotes"]) == trace.PROMOTED for v in got["vectors"])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_zeroed_scaled_negated_and_turned_vectors_give_their_hand_computed_trace(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    concepts = trace.concept_vectors(model, adapter, *_corpora(), k=6)
    at = list(zip(concepts.layers, concepts.neurons))
    with torch.no_grad():
        _column(model, adapter, *at[0]).zero_()  # pruned: nothing left
        _column(model, adapter, *at[1]).mul_(0.5)  # shrunk: half left, same direction
        _column(model, adapter, *at[2]).neg_()  # flipped
        v = _column(model, adapter, *at[3])
        other = torch.randn_like(v)
        other -= (other @ v) / (v @ v) * v
        other *= v.norm() / other.norm()
        v.add_(other)  # a same-length orthogonal part added: 45 degrees, norm √2, projection 1
    got = trace.trace_remaining(model, adapter, concepts)["vectors"]
    assert (got[0]["cosine"], got[0]["norm_ratio"], got[0]["projection"], got[0]["alignment_after"]) == (0, 0, 0, 0)
    assert (got[1]["cosine"], got[1]["norm_ratio"], got[1]["projection"]) == pytest.approx((1, 0.5, 0.5), abs=1e-5)
    # read through the final norm, a scaled vector promotes the same tokens (up to the norm's epsilon)
    assert got[1]["alignment_after"] == pytest.approx(got[1]["alignment_before"], rel=0.05)
    assert (got[2]["cosine"], got[2]["norm_ratio"], got[2]["projection"]) == pytest.approx((-1, 1, -1), abs=1e-5)
    assert (got[3]["cosine"], got[3]["norm_ratio"], got[3]["projection"]) == pytest.approx(
        (2**-0.5, 2**0.5, 1), abs=1e-5
    )
    assert all(g["cosine"] == pytest.approx(1, abs=1e-5) for g in got[4:])
    means = trace.trace_remaining(model, adapter, concepts)
    assert means["norm_ratio"] == pytest.approx(sum(g["norm_ratio"] for g in got) / 6, abs=1e-5)


def test_a_neuron_built_to_promote_the_forget_tokens_is_chosen_first():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    before = trace.concept_vectors(model, adapter, *_corpora(), k=4)
    assert (before.layers[0], before.neurons[0]) != (1, 5)
    unembedding = model.get_output_embeddings().weight
    centred = unembedding - unembedding.mean(0)
    covariance = centred.T @ centred / len(unembedding)
    direction = torch.linalg.solve(covariance, unembedding[FORGET_TOKENS].mean(0) - unembedding.mean(0))
    with torch.no_grad():
        _column(model, adapter, 1, 5).copy_(direction)
    concepts = trace.concept_vectors(model, adapter, *_corpora(), k=4)
    assert (concepts.layers[0], concepts.neurons[0]) == (1, 5)
    assert concepts.alignment[0] > 2 * concepts.alignment[1]
    assert set(concepts.promotes[0][:3]) == set(FORGET_TOKENS)  # its top tokens are the forget tokens
    with torch.no_grad():  # the opposite direction demotes them: never chosen
        _column(model, adapter, 1, 5).copy_(-direction)
    demoted = trace.concept_vectors(model, adapter, *_corpora(), k=4)
    assert (1, 5) not in zip(demoted.layers, demoted.neurons)


def test_bf16_models_are_read_in_float32_and_zero_columns_are_never_chosen():
    model = tiny_model("llama").to(torch.bfloat16)
    adapter = adapter_for(model)
    with torch.no_grad():
        adapter.out_proj(model, 0, "ff").weight.zero_()  # a model pruned before: layer 0 holds nothing
    concepts = trace.concept_vectors(model, adapter, *_corpora(), k=8)
    assert concepts.vectors.dtype == torch.float32 and set(concepts.layers) == {1}
    got = trace.trace_remaining(model, adapter, concepts)
    assert got["cosine"] == got["norm_ratio"] == got["projection"] == pytest.approx(1.0, abs=1e-6)
    forget, retain = _corpora()
    assert trace.concept_vectors(model, adapter, retain, retain) is None  # no token specific to the forget text


def test_a_pruning_run_zeroes_the_pruned_concept_vectors_and_reports_the_trace(run_tiny):
    run = run_tiny("p", "selective-pruning", {"ff_frac": 0.5, "attn_frac": 0.0, "steps": 1, "heal_steps": 0})
    got = json.loads((run.run_dir / "metrics.json").read_text())["parametric_trace"]
    assert got == run.metrics["parametric_trace"] and got["k"] == 32 == len(got["vectors"])
    pruned = json.loads((run.run_dir / "pruned_neurons.json").read_text())["ff"]
    hit = [v for v in got["vectors"] if v["neuron"] in pruned.get(str(v["layer"]), pruned.get(v["layer"], []))]
    kept = [v for v in got["vectors"] if v not in hit]
    assert hit and kept  # half of the neurons pruned: some concept vectors among them, some not
    assert all(v["cosine"] == v["norm_ratio"] == v["projection"] == v["alignment_after"] == 0 for v in hit)
    assert all(v["cosine"] == pytest.approx(1) and v["norm_ratio"] == pytest.approx(1) for v in kept)
    assert got["projection"] == pytest.approx(len(kept) / 32, abs=1e-5)
    assert "parametric_trace" in json.loads((run.run_dir / "manifest.json").read_text())["timings_s"]
    md = (run.run_dir / "report.md").read_text(encoding="utf-8")
    assert "### Parametric trace" in md and "Of the 32 MLP directions most aligned with the forget data" in md
    assert f"{got['projection']:.0%} remains" in md
    page = (run.run_dir / "report.html").read_text(encoding="utf-8")
    assert 'data-src="[&quot;metrics.json#/parametric_trace/vectors/31/projection&quot;]"' in page


def test_a_trained_run_records_the_trace_of_its_trained_weights(run_tiny):
    run = run_tiny("ga", "gradient-ascent", {"steps": 2, "lr": 1e-2})
    got = run.metrics["parametric_trace"]
    assert got["k"] == 32 and 0.5 < got["cosine"] < 1 and got["norm_ratio"] != pytest.approx(1, abs=1e-6)
    assert all(-1 <= v["cosine"] <= 1 for v in got["vectors"])


def test_a_resumed_run_records_the_same_trace(tmp_path, tiny_checkpoint, text_files, monkeypatch):
    import unlearn

    code, prose = text_files
    cfg = small_run_config(tiny_checkpoint("llama"), code, prose, tmp_path / "runs")
    cfg["method_config"] = {"ff_frac": 0.1, "attn_frac": 0.0, "steps": 3, "heal_steps": 0}
    whole = unlearn.run({**cfg, "name": "whole"})
    with monkeypatch.context() as mp:
        ctrl_c_at_evaluation(mp, 3)  # before, step 1, then Ctrl-C during step 2
        with pytest.raises(KeyboardInterrupt):
            unlearn.run({**cfg, "name": "cut"})
    resumed = unlearn.run(resume=tmp_path / "runs" / "cut")
    assert resumed.metrics["parametric_trace"] == whole.metrics["parametric_trace"]
    assert whole.metrics["parametric_trace"]["projection"] < 1
