"""icul: scoring and generation (greedy and sampled, left-padded batches, KV cache) under the policy equal the
plain model on the context-prefixed inputs; the context's structure on running text and QA records (plain and
chat template); the cap on its length; a run whose saved folder carries the policy (re-attached by ``load_model``
and ``load_guarded``); settings refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

import unlearn
from unlearn.data.chunking import TokenSplit
from unlearn.errors import UnlearnError
from unlearn.eval.scoring import Template
from unlearn.methods import get_method
from unlearn.methods.icul import Example, build_policy, render, text_examples
from unlearn.models import components
from unlearn.models.icul import IculPolicy
from unlearn.models.load import load_model

from conftest import FAMILIES, assert_refused, invoke, left_padded, tiny_model

CONTEXT = [0, 17, 42, 99, 3, 250, 8, 0]
RUN = {"shots_forget": 2, "shots_retain": 2, "prompt_tokens": 8, "answer_tokens": 6}


def _generate(model, ids, mask, **kw):
    kw = {"do_sample": False, **kw}
    return model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=10, pad_token_id=1, eos_token_id=None, **kw
    )


def _attached(model, policy):
    components.attach(model, policy)
    return model


@pytest.fixture
def model():
    return tiny_model("llama")


def test_scoring_under_the_policy_is_the_plain_model_on_the_context_prefixed_batch(model):
    policy = IculPolicy(CONTEXT)
    ids = torch.tensor([[5, 60, 61, 62, 63, 64], [7, 70, 71, 1, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])  # right padding
    n = len(CONTEXT)
    plain = {m is None: model(*policy.prefixed(ids, m)).logits[:, n:] for m in (mask, None)}
    plain_loss = model(input_ids=ids, labels=ids).loss
    _attached(model, policy)
    try:
        for m in (mask, None):
            got = model(input_ids=ids, attention_mask=m, use_cache=False).logits
            assert got.shape == (2, 6, model.config.vocab_size)
            assert torch.allclose(got, plain[m is None], atol=1e-5)
        positional = model(ids, mask).logits  # arguments by position are seen too
        assert torch.allclose(positional, plain[False], atol=1e-5)
        # labels: the same targets as the plain loss, scored after the context
        out = model(input_ids=ids, labels=ids, output_hidden_states=True)
        want = torch.nn.functional.cross_entropy(plain[True][:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        assert torch.allclose(out.loss, want, atol=1e-5) and not torch.allclose(out.loss, plain_loss)
        assert out.logits.shape[1] == 6 and all(h.shape[1] == 6 for h in out.hidden_states)
        # fewer logits asked for: the last positions of the caller's
        last = model(input_ids=ids, attention_mask=mask, logits_to_keep=2).logits
        assert torch.allclose(last, plain[False][:, -2:], atol=1e-5)
        picked = model(input_ids=ids, attention_mask=mask, logits_to_keep=torch.tensor([0, 3])).logits
        assert torch.allclose(picked, plain[False][:, [0, 3]], atol=1e-5)
    finally:
        components.detach(model)
    assert torch.allclose(model(ids, mask).logits, model(input_ids=ids, attention_mask=mask).logits)


@pytest.mark.parametrize("prompts", [[[5, 60, 61, 62]], [[5, 60, 61, 62, 63, 64], [7, 70, 71]]])
def test_generation_under_the_policy_is_the_plain_model_on_the_context_prefixed_prompt(model, prompts):
    policy = IculPolicy(CONTEXT)
    ids, mask = left_padded(prompts)
    ref_ids, ref_mask = left_padded([CONTEXT + p for p in prompts])
    want = _generate(model, ref_ids, ref_mask)[:, ref_ids.shape[1] :]
    torch.manual_seed(3)
    sampled = _generate(model, ref_ids, ref_mask, do_sample=True, top_k=0)[:, ref_ids.shape[1] :]
    plain = _generate(model, ids, mask)
    _attached(model, policy)
    try:
        got = _generate(model, ids, mask)
        uncached = _generate(model, ids, mask, use_cache=False)
        torch.manual_seed(3)
        got_sampled = _generate(model, ids, mask, do_sample=True, top_k=0)
    finally:
        components.detach(model)
    assert torch.equal(got[:, : ids.shape[1]], ids)  # the caller's prompt, no context ids
    assert torch.equal(got[:, ids.shape[1] :], want) and torch.equal(uncached, got)
    assert torch.equal(got_sampled[:, ids.shape[1] :], sampled)
    assert not torch.equal(got, plain)  # the context changed what the model says
    assert torch.equal(_generate(model, ids, mask), plain)  # detached: the plain model again


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_scores_and_generates_after_the_context(family):
    model, policy = tiny_model(family), IculPolicy(CONTEXT)
    prompts = [[5, 60, 61, 62, 63, 64], [7, 70, 71]]
    ids, mask = left_padded(prompts)
    ref_ids, ref_mask = left_padded([CONTEXT + p for p in prompts])
    beams = {"num_beams": 3, "num_return_sequences": 2}
    want = [_generate(model, ref_ids, ref_mask, **kw)[:, ref_ids.shape[1] :] for kw in ({}, beams)]
    prefixed, prefixed_mask = policy.prefixed(ids, mask)
    scored = model(input_ids=prefixed, attention_mask=prefixed_mask).logits[:, policy.length :]
    embeds = model.get_input_embeddings()(ids)
    _attached(model, policy)
    try:
        got = [_generate(model, ids, mask, **kw)[:, ids.shape[1] :] for kw in ({}, beams)]
        from_embeds = model.generate(
            inputs_embeds=embeds, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=1
        )
        logits = model(input_ids=ids, attention_mask=mask).logits
    finally:
        components.detach(model)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(from_embeds[:, -10:], want[0])
    assert torch.allclose(logits, scored, atol=1e-5)


def test_a_manual_decoding_loop_with_the_cache_sees_the_context(model):
    policy = IculPolicy(CONTEXT)
    ids = torch.tensor([[5, 60, 61, 62]])
    full = torch.tensor([CONTEXT + [5, 60, 61, 62, 9]])
    want = model(input_ids=full).logits[:, -1]
    _attached(model, policy)
    try:
        first = model(input_ids=ids, use_cache=True)
        assert first.cache.get_seq_length() == len(CONTEXT) + 4
        step = model(
            input_ids=torch.tensor([[9]]), cache=first.cache, attention_mask=torch.ones(1, 5, dtype=torch.long)
        )
    finally:
        components.detach(model)
    assert torch.allclose(step.logits[:, -1], want, atol=1e-5)


def _split(rows: list[list[int]], special_at=()) -> TokenSplit:
    ids = torch.tensor(rows)
    special = torch.zeros_like(ids, dtype=torch.bool)
    for r, c in special_at:
        special[r, c] = True
    return TokenSplit(ids, special)


def test_text_examples_are_the_longest_run_of_each_chunk_cut_into_prompt_and_answer():
    padded = [(2, c) for c in range(1, 12)]  # the third chunk: one token, then padding: no example
    split = _split([list(range(10, 22)), list(range(30, 42)), [50] + [1] * 11], [(1, 4), *padded])
    found = text_examples(split, prompt_tokens=4, answer_tokens=3, corpus="forget")
    assert [(e.index, e.prompt, e.answer) for e in found] == [
        (0, [10, 11, 12, 13], [14, 15, 16]),
        (1, [35, 36, 37, 38], [39, 40, 41]),  # the run after the special token at 4 is the longer one
    ]
    assert text_examples(split, 40, 3, "forget")[0].prompt == list(range(10, 21))  # a short run keeps one answer token


def _text_pools():
    forget = [
        Example("forget", i, "text", [100 + 10 * i, 101 + 10 * i], [105 + 10 * i, 106 + 10 * i]) for i in range(3)
    ]
    retain = [Example("retain", i, "text", [200 + 10 * i, 201 + 10 * i], [205 + 10 * i]) for i in range(3)]
    return forget, retain


def test_the_text_context_shows_forget_examples_with_replaced_answers_then_retain_examples(tokenizer):
    forget, retain = _text_pools()
    make = get_method("icul").make_config
    policy, facts = build_policy(forget, retain, tokenizer, make({"shots_forget": 2, "shots_retain": 2}), seed=4)
    shown = facts["examples"]
    assert [e["corpus"] for e in shown] == ["forget", "forget", "retain", "retain"]
    assert [e["replaced"] for e in shown] == [True, True, False, False]
    f = {e.index: e for e in forget}
    r = {e.index: e for e in retain}
    order = [e["index"] for e in shown]
    ids = policy.context_ids
    assert ids[0] == 0 and ids[-1] == 0  # the separator around the examples
    pieces = _pieces(ids)
    assert [p[:2] for p in pieces] == [f[order[0]].prompt, f[order[1]].prompt, r[order[2]].prompt, r[order[3]].prompt]
    # flipped: each forget example shows the answer of the next forget example in the seeded order
    assert pieces[0][2:] == f[order[1]].answer
    assert pieces[1][2:] != f[order[1]].answer and pieces[1][2:] in [e.answer for e in forget]  # not its own
    assert pieces[2][2:] == r[order[2]].answer and pieces[3][2:] == r[order[3]].answer  # retain: true answers
    assert facts["context_tokens"] == len(ids) == policy.length and facts["counts"] == {"forget": 2, "retain": 2}
    again, _ = build_policy(forget, retain, tokenizer, make({"shots_forget": 2, "shots_retain": 2}), seed=4)
    assert again.context_ids == ids  # seeded
    refuse = make({"replace": "refuse", "refusal": "nope", "shots_forget": 1, "shots_retain": 0})
    policy, facts = build_policy(forget, retain, tokenizer, refuse, seed=4)
    assert facts["examples"][0]["shown"] == "nope"
    assert tokenizer.decode(policy.context_ids).endswith(" nope<|endoftext|>")
    _, facts = build_policy(forget, retain, tokenizer, make({"replace": "retain", "shots_retain": 1}), seed=4)
    kept = {e["answer"] for e in facts["examples"] if e["corpus"] == "retain"}
    assert all(e["shown"] not in kept for e in facts["examples"] if e["replaced"])
    assert {e["shown"] for e in facts["examples"] if e["replaced"]} <= {
        tokenizer.decode(e.answer).strip() for e in retain
    }


def _pieces(ids: list[int]) -> list[list[int]]:
    """The examples of a text context: the ids between separators (0)."""
    out, current = [], []
    for t in ids[1:]:
        if t == 0:
            out.append(current)
            current = []
        else:
            current.append(t)
    return out


def test_the_context_is_cut_to_max_context_tokens_retain_examples_first(tokenizer):
    forget, retain = _text_pools()
    make = get_method("icul").make_config
    _, full = build_policy(forget, retain, tokenizer, make({"shots_forget": 3, "shots_retain": 3}), seed=0)
    assert full["context_tokens"] == 1 + 3 * 5 + 3 * 4 and full["left_out"] == {"forget": 0, "retain": 0}
    _, cut = build_policy(
        forget, retain, tokenizer, make({"shots_forget": 3, "shots_retain": 3, "max_context_tokens": 17}), 0
    )
    assert cut["counts"] == {"forget": 3, "retain": 0} and cut["left_out"] == {"forget": 0, "retain": 3}
    assert cut["context_tokens"] == 16
    _, cut = build_policy(forget, retain, tokenizer, make({"shots_forget": 3, "max_context_tokens": 11}), 0)
    assert cut["counts"] == {"forget": 2, "retain": 0}
    long = [Example("forget", i, "text", list(range(100, 110)), [120 + i]) for i in range(2)]
    with pytest.raises(UnlearnError, match="one forget example is 13 tokens, more than max_context_tokens 8"):
        build_policy(long, retain, tokenizer, make({"max_context_tokens": 8}), 0)
    with pytest.raises(UnlearnError, match="flipped needs at least 2 forget examples"):
        build_policy(forget[:1], retain, tokenizer, make({}), 0)


QA = [("Who wrote Alpha?", "Ann Lee"), ("Where is Beta?", "In Gamma"), ("When was Delta?", "In 1901")]
QA_RETAIN = [("What is Zeta?", "A letter"), ("What is Eta?", "Another letter")]


def _qa_pools():
    forget = [Example("forget", i, "qa", q, a) for i, (q, a) in enumerate(QA)]
    retain = [Example("retain", i, "qa", q, a) for i, (q, a) in enumerate(QA_RETAIN)]
    return forget, retain


def test_the_qa_context_is_rendered_like_the_runs_questions(tokenizer):
    forget, retain = _qa_pools()
    cfg = get_method("icul").make_config({"shots_forget": 2, "shots_retain": 1})
    policy, facts = build_policy(forget, retain, tokenizer, cfg, seed=1)
    ex = facts["examples"]
    assert facts["template"] == "plain" and [e["corpus"] for e in ex] == ["forget", "forget", "retain"]
    assert all(e["shown"] != e["answer"] and e["shown"] in dict(QA).values() for e in ex[:2])
    assert ex[2]["shown"] == ex[2]["answer"]
    want = "".join(f"Question: {e['prompt']}\nAnswer: {e['shown']}\n\n" for e in ex)
    assert policy.text == want
    # a tokenizer with a chat template: one conversation, as the run renders its questions
    chat = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    chat.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<|endoftext|>{% endfor %}"
    chat.chat_template += "{% if add_generation_prompt %}<assistant>{% endif %}"
    policy, facts = build_policy(forget, retain, chat, cfg, seed=1)
    assert facts["template"] == "chat"
    assert policy.text == "".join(f"<user>{e['prompt']}<|endoftext|><assistant>{e['shown']}<|endoftext|>" for e in ex)
    ids = render([Example("retain", 0, "text", [5, 6], [7])], tokenizer, Template(tokenizer, "auto"))
    assert ids == [0, 5, 6, 7, 0]


def test_a_run_saves_the_policy_and_loading_the_run_folder_attaches_it(run_tiny):
    result = run_tiny("icul", "icul", RUN)
    facts = result.manifest["method_facts"]
    assert facts["counts"] == {"forget": 2, "retain": 2} and facts["formats"] == {
        "forget": ["text"],
        "retain": ["text"],
    }
    assert [e["replaced"] for e in facts["examples"]] == [True, True, False, False]
    assert result.manifest["model"]["sha256_after"] == result.manifest["model"]["sha256_before"]
    assert "policy.json" in result.manifest["model"]["files"]
    assert not (result.run_dir / "model" / "policy.safetensors").exists()
    saved = json.loads((result.run_dir / "model" / "policy.json").read_text())
    assert saved["kind"] == "icul" and saved["tensors"] is None and saved["context_tokens"] == facts["context_tokens"]
    said = []
    loaded = load_model(str(result.run_dir), "fp32", "cpu", log=said.append)
    assert f"attached icul policy ({facts['context_tokens']}-token context: 2 forget and 2 retain" in said[0]
    policy = components.attached(loaded.model)[0]
    assert isinstance(policy, IculPolicy) and policy.context_ids == saved["context_ids"]
    model, _ = unlearn.load_guarded(result.run_dir, dtype="fp32", device="cpu", log=said.append)
    ids = torch.tensor([[5, 60, 61, 62]])
    plain = load_model(result.config.model, "fp32", "cpu", log=said.append).model
    assert torch.allclose(model(ids).logits, plain(*policy.prefixed(ids)).logits[:, policy.length :], atol=1e-5)
    with pytest.raises(UnlearnError, match="already carries"):
        run_tiny("again", "icul", RUN, from_run=str(result.run_dir), model=str(result.run_dir / "model"))


def test_a_qa_run_shows_questions_with_replaced_answers(run_tiny, tmp_path):
    rows = [{"question": f"What does module {n} do?", "answer": f"Module {n} handles {n} tasks."} for n in "abcdef"]
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = run_tiny(
        "qa",
        "icul",
        {"shots_forget": 3, "shots_retain": 1, "prompt_tokens": 8, "answer_tokens": 8},
        forget={"source": str(qa), "format": "qa"},
        seq_len=64,
        stats_tokens=6 * 64,
        eval_tokens=6 * 64,
    )
    facts = result.manifest["method_facts"]
    assert facts["formats"] == {"forget": ["qa"], "retain": ["text"]} and facts["template"] == "plain"
    forget = [e for e in facts["examples"] if e["corpus"] == "forget"]
    assert len(forget) == 3 and all(e["shown"] != e["answer"] for e in forget)
    assert facts["context"].startswith(f"Question: {forget[0]['prompt']}\nAnswer: {forget[0]['shown']}\n\n")


def test_bad_settings_fail_in_one_line(env):
    make = get_method("icul").make_config
    assert make({}).replace == "flipped" and make({"replace": "refuse"}).refusal == "I don't know."
    with pytest.raises(UnlearnError, match="invalid icul setting shots_forget"):
        make({"shots_forget": 0})
    with pytest.raises(UnlearnError, match="invalid icul setting refusal: .*must not be empty"):
        make({"refusal": "  "})
    code, out, err = invoke(*env["base"], "--method", "icul", "--set", "replace=swap")
    assert_refused("replace", code, out, err, "replace", env["out"])
    code, out, err = invoke(*env["base"], "--method", "icul", "--set", "max_context_tokens=4")
    assert_refused("cap", code, out, err, "max_context_tokens", env["out"])
