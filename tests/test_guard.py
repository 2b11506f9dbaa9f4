"""guard: the logits edit on hand-computed inputs, the forbidden tokens and the detector on data with distinct
vocabularies, guarded generation (KV cache) and scoring, the LogitsProcessor, and a run whose saved folder
carries the policy (re-attached by ``load_model`` and ``load_guarded``)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import unlearn
from unlearn.errors import UnlearnError
from unlearn.methods import get_method
from unlearn.methods.guard import fit_policy, semantic
from unlearn.models import components
from unlearn.models.adapters import adapter_for
from unlearn.models.guard import GuardPolicy
from unlearn.models.load import load_model

from conftest import assert_refused, bigram_split, invoke, left_padded, tiny_model

FORGET, RETAIN = range(100, 112), range(200, 212)  # two disjoint vocabularies of the tiny tokenizer
RUN = {"tokens": 1024, "min_prompt": 8, "n_tokens": 6, "n_phrases": 4, "min_ratio": 3, "exclude_common": 10}
CFG = {"exclude_common": 0, "n_tokens": 8, "n_phrases": 4, "min_prompt": 8, "tokens": 64}


def _policy(tokens, phrases, penalty=3.0, threshold=0.0, width=4) -> GuardPolicy:
    z = torch.zeros(width)
    return GuardPolicy(0, z, torch.ones(width), -torch.ones(width), threshold, tokens, phrases, penalty)


@pytest.fixture(scope="module")
def fitted(tokenizer):
    model = tiny_model("llama")
    cfg = get_method("guard").make_config(CFG)
    splits = {"forget": bigram_split(FORGET, 16, 32, 0), "retain": bigram_split(RETAIN, 16, 32, 1)}
    policy, facts = fit_policy(model, adapter_for(model), tokenizer, splits, cfg, seed=0)
    return model, policy, facts


def test_edit_penalises_forbidden_tokens_and_phrase_completions_in_flagged_rows():
    policy = _policy(tokens=[2], phrases=[[4, 5], [1, 4, 6], [3, 2]])  # [3, 2] ends in a forbidden token: no twice
    history = torch.tensor([[1, 4, 3, 4], [1, 4, 3, 4]])
    logits = torch.zeros(2, 4, 8)
    out = policy.edit(logits, history, torch.tensor([True, False]))
    want = torch.zeros(2, 4, 8)
    want[0, :, 2] = -3  # the forbidden token everywhere in the flagged row
    want[0, 1, 5] = want[0, 3, 5] = -3  # after a 4: 5 completes [4, 5]
    want[0, 1, 6] = -3  # after 1, 4: 6 completes [1, 4, 6] (not after 3, 4)
    assert torch.equal(out, want) and torch.equal(logits, torch.zeros(2, 4, 8))
    # the last position only (a cached step): the history before it still completes the phrases
    assert torch.equal(policy.edit(logits[:, -1:], history, torch.tensor([True, True])), want[0:1, -1:].expand(2, 1, 8))
    hard = _policy(tokens=[2], phrases=[], penalty=math.inf).edit(logits, history, torch.tensor([True, False]))
    assert (hard[0, :, 2] == torch.finfo(torch.float32).min).all() and (hard[1] == 0).all()
    assert torch.equal(policy.edit(logits, history, torch.tensor([False, False])), logits)


def test_forbidden_tokens_come_from_the_forget_vocabulary_and_the_detector_separates_the_two(fitted, tokenizer):
    model, policy, facts = fitted
    assert policy.tokens and set(policy.tokens) <= set(FORGET)
    assert policy.phrases and all(set(p) <= set(FORGET) for p in policy.phrases)
    assert [t["text"] for t in facts["forbidden_tokens"]] == [tokenizer.decode([t]) for t in policy.tokens]
    assert facts["detector"]["held_out"]["balanced_accuracy"] == 1.0
    forget, retain = bigram_split(FORGET, 10, 24, 7).input_ids, bigram_split(RETAIN, 10, 24, 8).input_ids
    assert policy.detect(model, forget).all() and not policy.detect(model, retain).any()
    assert policy.detect(model, forget[:, :8]).all() and not policy.detect(model, retain[:, :8]).any()


def test_semantic_matching_adds_tokens_whose_output_embedding_is_close_to_a_forbidden_one():
    model = tiny_model("llama")
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        head[7] = 2 * head[5]  # cosine 1
        head[9] = head[5] + 0.01 * head[9]  # cosine ≈ 1
        head[11] = 2 * head[5]  # a special token: never added
    found = semantic(model, [5], 0.99, special={11})
    assert [f["id"] for f in found] == [7, 9] and all(f["of"] == 5 for f in found)
    assert semantic(model, [], 0.5, set()) == []


def _generate(model, ids, mask, **kw):
    return model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=1, eos_token_id=None, **kw
    )[:, ids.shape[1] :]


def test_guarded_generation_never_emits_forbidden_tokens_when_flagged_and_is_plain_otherwise(fitted):
    model, fitted_policy, _ = fitted
    forget, retain = bigram_split(FORGET, 2, 20, 11).input_ids, bigram_split(RETAIN, 2, 20, 12).input_ids
    ids, mask = left_padded([forget[0], retain[0], forget[1][:12], retain[1][:9]])
    plain = _generate(model, ids, mask)
    # forbid what the plain model says after the forget prompts, and a phrase it would complete
    said = sorted(set(plain[[0, 2]].flatten().tolist()))
    phrase = plain[0, :2].tolist()
    policy = GuardPolicy(
        fitted_policy.layer,
        fitted_policy.mean,
        fitted_policy.forget_centroid,
        fitted_policy.retain_centroid,
        fitted_policy.threshold,
        tokens=said[1:],
        phrases=[phrase] if phrase[1] == said[0] else [[phrase[0], said[0]]],
        penalty=math.inf,
    )
    components.attach(model, policy)
    try:
        guarded = _generate(model, ids, mask)
        # the cached decoding steps extended one history per row (the prompt and all but the last new token)
        assert policy._state["history"].shape == (4, ids.shape[1] + guarded.shape[1] - 1)
        scored = model(input_ids=ids, attention_mask=mask).logits
    finally:
        components.detach(model)
    assert torch.equal(guarded[[1, 3]], plain[[1, 3]])  # unflagged: exactly the plain model
    assert not torch.equal(guarded[0], plain[0]) and not torch.equal(guarded[2], plain[2])
    for row in (0, 2):
        new = guarded[row].tolist()
        assert not set(new) & set(policy.tokens)
        context = ids[row][mask[row].bool()].tolist()[-1:] + new
        pairs = set(zip(context, context[1:]))
        assert not pairs & {tuple(p) for p in policy.phrases}
    # next-token scoring of whole sequences sees the same edit
    plain_logits = model(input_ids=ids, attention_mask=mask).logits
    flags = torch.tensor([True, False, True, False])
    assert torch.equal(scored, policy.edit(plain_logits, ids, flags))
    # the LogitsProcessor on the plain model gives the guarded generation
    processor = policy.processor(model, ids, mask)
    assert processor.flags.tolist() == flags.tolist()
    assert torch.equal(_generate(model, ids, mask, logits_processor=[processor]), guarded)


def test_a_run_saves_the_policy_and_loading_the_run_folder_attaches_it(run_tiny):
    result = run_tiny("guard", "guard", RUN)
    facts = result.manifest["method_facts"]
    assert facts["counts"]["tokens"] == len(facts["forbidden_tokens"]) > 0
    assert {"calibration", "held_out"} <= set(facts["detector"]) and set(facts["eval_flagged"]) >= {"forget", "retain"}
    assert {"policy.json", "policy.safetensors"} <= set(result.manifest["model"]["files"])
    assert result.manifest["model"]["sha256_after"] == result.manifest["model"]["sha256_before"]
    saved = json.loads((result.run_dir / "model" / "policy.json").read_text())
    assert saved["tokens"] == [t["ids"][0] for t in facts["forbidden_tokens"]] and saved["penalty"] == "inf"
    said = []
    loaded = load_model(str(result.run_dir), "fp32", "cpu", log=said.append)
    assert "attached guard policy (6 forbidden tokens" in said[0]
    assert [c.file for c in components.attached(loaded.model)] == ["policy.json"]
    model, tokenizer = unlearn.load_guarded(result.run_dir, dtype="fp32", device="cpu", log=said.append)
    assert components.attached(model)[0].tokens == saved["tokens"] and tokenizer.pad_token_id == 1
    with pytest.raises(UnlearnError, match="no generation policy"):
        unlearn.load_guarded(result.config.model, dtype="fp32", device="cpu", log=said.append)
    with pytest.raises(UnlearnError, match="already carries"):
        run_tiny("again", "guard", {"tokens": 512}, from_run=str(result.run_dir), model=str(result.run_dir / "model"))
    with pytest.raises(UnlearnError, match="guard found no token or phrase to forbid"):
        run_tiny("nothing", "guard", {**RUN, "min_ratio": 1e6})


def test_bad_settings_fail_in_one_line(env):
    make = get_method("guard").make_config
    assert make({"penalty": "inf"}).penalty == make({"penalty": math.inf}).penalty == "inf"
    assert make({"penalty": 5}).penalty == 5.0
    with pytest.raises(UnlearnError, match="invalid guard setting penalty: .*positive or inf"):
        make({"penalty": -1})
    with pytest.raises(UnlearnError, match="threshold or retain_quantile, not both"):
        make({"threshold": 0.1, "retain_quantile": 0.9})
    code, out, err = invoke(*env["base"], "--method", "guard", "--set", "semantic_threshold=2")
    assert_refused("semantic", code, out, err, "semantic_threshold", env["out"])
