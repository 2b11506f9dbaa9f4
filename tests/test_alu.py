"""alu: the pipeline around generation (drafts that touch a target rewritten with the targets banned, or refused;
clean drafts exactly as plain generate gives them), the ban processor, the three checkers fitted on data with
distinct vocabularies, and a run whose saved folder carries the policy (re-attached by ``load_model``)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import unlearn
from unlearn.errors import UnlearnError
from unlearn.methods import get_method
from unlearn.methods.alu import fit_policy
from unlearn.models import components, policies
from unlearn.models.adapters import adapter_for
from unlearn.models.alu import AluPolicy, BanProcessor, find
from unlearn.models.load import load_model

from conftest import assert_refused, bigram_split, invoke, left_padded, tiny_model

FORGET, RETAIN = range(100, 112), range(200, 212)  # two disjoint vocabularies of the tiny tokenizer
FIT = {"tokens": 64, "min_prompt": 8, "n_tokens": 6, "n_phrases": 4, "min_ratio": 3, "exclude_common": 0}
RUN = {"tokens": 1024, "min_prompt": 8, "n_tokens": 6, "n_phrases": 4, "min_ratio": 3, "exclude_common": 10}


def _generate(model, ids, mask, **kw):
    return model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=1, eos_token_id=None, **kw
    )


@pytest.fixture(scope="module")
def drafted():
    """A tiny model, two left-padded prompts and the plain greedy output; a token only the first draft says."""
    model = tiny_model("llama")
    ids, mask = left_padded([[5, 40, 41, 42, 43, 44], [7, 90, 91]])
    plain = _generate(model, ids, mask)
    first, second = plain[0, ids.shape[1] :].tolist(), plain[1, ids.shape[1] :].tolist()
    only = [t for t in first if t not in second and t not in (5, 7, 40, 41, 42, 43, 44, 90, 91)]
    assert only, "the two drafts share every token: pick other prompts"
    return model, ids, mask, plain, only[0]


def _policy(steps, targets, **kw) -> AluPolicy:
    return AluPolicy(steps=steps, checker="match", threshold=0.5, targets=targets, refusal=[60, 61, 62], **kw)


def test_find_and_the_ban_processor_on_hand_inputs():
    assert find([1, 2, 3, 4], [[3], [2, 3], [3, 2], [9], [4, 5]]) == [0, 1]
    ban = BanProcessor([[[2], [4, 5]], [[3, 4, 6]]])
    history = torch.tensor([[1, 4], [3, 4], [9, 4], [1, 1]])  # 2 rows per prompt: beams follow their prompt
    out = ban(history, torch.zeros(4, 8))
    low = torch.finfo(torch.float32).min
    want = torch.zeros(4, 8)
    want[:2, 2] = low  # prompt 0: token 2 everywhere; 5 after a 4
    want[:2, 5] = low
    want[2, 6] = 0  # prompt 1: 6 only after 3, 4
    assert torch.equal(out[:2], want[:2]) and out[2].eq(0).all() and out[3].eq(0).all()
    assert ban(torch.tensor([[3, 4], [3, 4], [3, 4], [3, 4]]), torch.zeros(4, 8))[2, 6] == low


def test_a_draft_with_a_target_is_rewritten_without_it_and_a_clean_one_is_the_plain_generation(drafted):
    model, ids, mask, plain, target = drafted
    policy = _policy(["draft", "check", "rewrite"], [[target]], names=["t"])
    components.attach(model, policy)
    try:
        out = _generate(model, ids, mask)
        trace = policy.last_trace
        clean = _generate(model, ids[1:], mask[1:])
    finally:
        components.detach(model)
    width = ids.shape[1]
    assert torch.equal(out[:, :width], ids) and target not in out[0, width:].tolist()
    assert torch.equal(out[1], plain[1])  # the clean row: exactly the plain greedy generation
    assert trace[0]["fired"] == ["draft", "check", "rewrite", "check"] and trace[0]["final"] == "rewrite"
    assert trace[0]["matched"] == [] and trace[0]["scores"][0] >= 1 and not trace[0]["flagged"]
    assert trace[1]["fired"] == ["draft", "check"] and trace[1]["final"] == "draft"
    assert torch.equal(clean, plain[1:])  # nothing flagged: the very tensor plain generate returns
    assert "generate" not in model.__dict__ and torch.equal(_generate(model, ids, mask), plain)  # removed


def test_refuse_replaces_a_flagged_answer_and_after_rewrite_only_when_the_rewrite_is_flagged_again(drafted):
    model, ids, mask, plain, target = drafted
    width = ids.shape[1]
    policy = _policy(["draft", "check", "refuse"], [[target]], instruction=[70, 71])
    components.attach(model, policy)
    try:
        out = _generate(model, ids, mask)
        assert out[0, width:].tolist() == [60, 61, 62] + [1] * 7 and torch.equal(out[1], plain[1])
        assert [t["final"] for t in policy.last_trace] == ["refuse", "draft"]
        assert policy.last_trace[0]["fired"] == ["draft", "check", "refuse"]
    finally:
        components.detach(model)
    # every token a target: the rewrite cannot avoid them all, so it is flagged again and refused
    every = _policy(["draft", "check", "rewrite", "refuse"], [[t] for t in range(400)], ban="matched", rewrites=2)
    components.attach(model, every)
    try:
        out = _generate(model, ids, mask)
    finally:
        components.detach(model)
    assert [t["final"] for t in every.last_trace] == ["refuse", "refuse"]
    assert every.last_trace[0]["fired"] == ["draft", "check", "rewrite", "check", "rewrite", "check", "refuse"]
    assert out[0, width:].tolist()[:3] == [60, 61, 62]


@pytest.fixture(scope="module")
def splits():
    return {"forget": bigram_split(FORGET, 16, 32, 0), "retain": bigram_split(RETAIN, 16, 32, 1)}


@pytest.mark.parametrize("checker", ["match", "embed", "model"])
def test_each_checker_is_fitted_and_measured_on_held_out_chunks(checker, splits, tokenizer):
    model = tiny_model("llama")
    cfg = get_method("alu").make_config(
        {**FIT, "checker": checker, "targets": ["zebra"], "steps": ["draft", "check", "refuse"]}
    )
    policy, facts = fit_policy(model, adapter_for(model), tokenizer, splits, cfg, seed=0)
    assert facts["counts"]["user"] >= 1 and facts["counts"]["data"] > 0
    data = [t["ids"] for t in facts["targets"] if t["source"] == "data"]
    assert all(set(ids) <= set(FORGET) for ids in data)
    assert set(facts["checker_accuracy"]) == {"calibration", "held_out"} and math.isfinite(policy.threshold)
    if checker != "model":  # a random-init model's yes/no answers carry no signal; the other two separate
        assert facts["checker_accuracy"]["held_out"]["balanced_accuracy"] == 1.0
    else:
        assert policy.question["yes"] != policy.question["no"] and "zebra" in facts["question"]
    forget = bigram_split(FORGET, 2, 12, 5).input_ids.tolist()
    assert policy.scores(model, forget).shape == (2,)
    policy.threshold = -math.inf  # flag everything: every row is refused
    ids, mask = left_padded(forget)
    components.attach(model, policy)
    try:
        out = _generate(model, ids, mask)
    finally:
        components.detach(model)
    assert all(t["final"] == "refuse" for t in policy.last_trace)
    assert out[:, 12:15].tolist() == [policy.refusal[:3]] * 2


def test_the_model_checker_can_ask_another_local_model(splits, tokenizer, tiny_checkpoint):
    model = tiny_model("llama")
    path = tiny_checkpoint("llama", seed=3)
    judge = load_model(str(path), "fp32", "cpu")
    cfg = get_method("alu").make_config({**FIT, "checker": "model", "checker_model": str(path)})
    policy, facts = fit_policy(
        model, adapter_for(model), tokenizer, splits, cfg, 0, 4, (judge.model, tokenizer, str(path))
    )
    assert facts["checker_model"] == str(path)
    scored = policy.scores(model, [[100, 101, 102]])
    policy.judge = None  # loaded again from its path, as after loading a saved policy
    assert torch.allclose(policy.scores(model, [[100, 101, 102]]), scored, atol=1e-5)


def test_a_run_saves_the_policy_and_loading_the_run_folder_attaches_it(run_tiny, tmp_path):
    result = run_tiny("alu", "alu", {**RUN, "targets": ["def"]})
    facts = result.manifest["method_facts"]
    assert facts["next_token_metrics"] == "unchanged model: alu acts on generation only"
    assert facts["steps"] == ["draft", "check", "rewrite"] and facts["checker"] == "match"
    assert result.manifest["model"]["sha256_after"] == result.manifest["model"]["sha256_before"]
    saved = json.loads((result.run_dir / "model" / "policy.json").read_text())
    assert (
        saved["kind"] == "alu" and saved["tensors"] is None and saved["targets"] == [t["ids"] for t in facts["targets"]]
    )
    said = []
    loaded = load_model(str(result.run_dir), "fp32", "cpu", log=said.append)
    assert "attached alu policy (draft → check → rewrite; match checker" in said[0]
    policy = components.attached(loaded.model)[0]
    assert loaded.model.generate == policy.generate
    ids = loaded.tokenizer("def parse(text):", return_tensors="pt")
    out = loaded.model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert out.shape[0] == 1 and len(policy.last_trace) == 1
    model, _ = unlearn.load_guarded(result.run_dir, dtype="fp32", device="cpu", log=said.append)
    assert isinstance(components.attached(model)[0], AluPolicy)


def test_the_embed_checker_keeps_its_vectors_beside_the_record(splits, tokenizer, tmp_path):
    model = tiny_model("llama")
    cfg = get_method("alu").make_config({**FIT, "checker": "embed"})
    policy, _ = fit_policy(model, adapter_for(model), tokenizer, splits, cfg, seed=0)
    assert policy.save(tmp_path) == ["policy.json", "policy.safetensors"]
    again = policies.read(tmp_path)
    assert again.checker == "embed" and torch.equal(again.detector.mean, policy.detector.mean)
    rows = bigram_split(FORGET, 2, 12, 5).input_ids.tolist() + bigram_split(RETAIN, 2, 12, 6).input_ids.tolist()
    assert torch.allclose(again.scores(model, rows), policy.scores(model, rows))


def test_bad_settings_fail_in_one_line(env):
    make = get_method("alu").make_config
    assert make({"steps": ["draft", "check", "rewrite", "refuse"]}).steps[-1] == "refuse"
    with pytest.raises(UnlearnError, match="invalid alu setting: steps must be"):
        make({"steps": ["draft", "rewrite"]})
    with pytest.raises(UnlearnError, match="checker_model needs checker: model"):
        make({"checker_model": "x"})
    with pytest.raises(UnlearnError, match="no targets"):
        make({"n_tokens": 0, "n_phrases": 0})
    code, out, err = invoke(*env["base"], "--method", "alu", "--set", "steps=[check,draft]")
    assert_refused("steps", code, out, err, "steps", env["out"])
    code, out, err = invoke(*env["base"], "--method", "alu", "--set", "checker=oracle")
    assert_refused("checker", code, out, err, "checker", env["out"])


def test_the_suites_generate_through_the_pipeline_and_a_copy_keeps_its_own(drafted, tokenizer):
    import copy

    from unlearn.eval.scoring import Scorer

    model, *_ = drafted
    every = _policy(["draft", "check", "refuse"], [[t] for t in range(400)])
    every.refusal = tokenizer(" I don't know.", add_special_tokens=False)["input_ids"]
    components.attach(model, every)
    try:
        scorer = Scorer(model, tokenizer, batch_size=2)
        said = scorer.generate(["def parse(text):", "Question: who?\nAnswer:"], max_new_tokens=32, stop=("\n\n",))
        twin = copy.deepcopy(model)
        theirs = components.attached(twin)[0]
        assert theirs is not every and twin.generate == theirs.generate and theirs._model is twin
    finally:
        components.detach(model)
    assert said == ["I don't know.", "I don't know."] and [t["final"] for t in every.last_trace] == ["refuse"] * 2


def test_a_missing_checker_model_is_refused_in_one_line(env):
    code, out, err = invoke(
        *env["base"], "--method", "alu", "--set", "checker=model", "--set", "checker_model=/no/judge"
    )
    assert_refused("checker_model", code, out, err, "/no/judge", env["out"])
