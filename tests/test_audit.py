"""The robustness audit: recovery formula, each attack on tiny models where the recovery is known, the CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner
from conftest import FAMILIES, tiny_model, tree_hash

import unlearn
from unlearn.audit.attacks import logit_lens, quantize_model, quantize_tensor, recovery
from unlearn.audit.probes import build_probes
from unlearn.cli import main
from unlearn.config import DataConfig
from unlearn.data.chunking import TokenSplit
from unlearn.eval.metrics import evaluate_split
from unlearn.eval.scoring import Template
from unlearn.methods.losses import nll
from unlearn.models.adapters import adapter_for

SMALL = dict(seq_len=32, eval_tokens=256, batch_size=8, dtype="fp32", device="cpu")


def test_recovery_formula():
    assert recovery(0.6, 0.2, 0.4) == pytest.approx(0.5)
    assert recovery(0.6, 0.2, 0.9) == 1.0  # clipped
    assert recovery(0.6, 0.2, 0.1) == 0.0  # clipped
    assert recovery(0.5, 0.5, 0.7) is None  # nothing was unlearned
    assert recovery(2.0, 4.0, 3.0) == pytest.approx(0.5)  # a loss: lower is better, same formula


def test_quantize_tensor_by_hand():
    w = torch.tensor([[1.0, -0.5, 0.26, 0.74], [0.1, 0.2, -0.4, 0.0]])
    # 2 bits: qmax 1, scale = row max → every weight rounds to -1, 0 or 1 times the row max
    q = quantize_tensor(w, 2)
    assert torch.equal(q, torch.tensor([[1.0, -0.0, 0.0, 1.0], [0.0, 0.0, -0.4, 0.0]]))
    # 8 bits: error at most half a step (max|w| / 127 / 2) per row
    q8 = quantize_tensor(w, 8)
    step = w.abs().amax(1, keepdim=True) / 127
    assert ((q8 - w).abs() <= step / 2 + 1e-7).all()
    # groups of 2: each pair has its own scale
    g = quantize_tensor(w, 2, group_size=2)
    assert torch.equal(g[1], torch.tensor([0.0, 0.2, -0.4, 0.0]))
    # channels along dim 1 (GPT-2 Conv1D weights are [in, out])
    assert torch.equal(quantize_tensor(w.T, 2, dim=1), q.T)


def _trained(tmp_path, tiny_checkpoint, code) -> tuple[str, torch.nn.Module]:
    """A tiny llama that has learnt some of the forget text (so there is something to unlearn), with its linear
    weights already on the 4-bit grid, saved as the 'original'."""
    out = tmp_path / "learnt"
    unlearn.learn(
        str(tiny_checkpoint("llama")), str(code), out, steps=100, lr=1e-2, batch_size=8, seq_len=32, tokens=4096,
        dtype="fp32", device="cpu",
    )  # fmt: skip
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    quantize_model(model, 4)
    model.save_pretrained(out)
    return str(out), model


def _save(model, like: str, path) -> str:
    from transformers import AutoTokenizer

    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(like).save_pretrained(path)
    return str(path)


def _audit(model, original, code, prose, tmp_path, name, **kw):
    return unlearn.audit(
        model, original=original, forget=str(code), retain=str(prose), out=tmp_path / name, **SMALL, **kw
    )


def test_quantization_removes_a_small_weight_delta_but_not_a_logit_mask(tmp_path, tiny_checkpoint, text_files):
    code, prose = text_files
    original, model = _trained(tmp_path, tiny_checkpoint, code)
    # "unlearning" by a weight delta below half a 4-bit step, in the direction that raises the forget loss (as
    # gradient ascent does; the largest weight of each row untouched): rounding to the 4-bit grid gives the
    # original back exactly → recovery 1
    probes = build_probes("forget", DataConfig(source=str(code)), _tok(original), None, seq_len=32,
                          eval_tokens=256, train_tokens=32, seed=0)  # fmt: skip
    delta = copy.deepcopy(model).requires_grad_(True)
    ids = probes.plain.input_ids
    nll(delta(input_ids=ids).logits, ids.masked_fill(probes.plain.special, -100)).backward()
    with torch.no_grad():
        for m in delta.modules():
            if isinstance(m, torch.nn.Linear) and m is not delta.get_output_embeddings():
                top = m.weight.abs().amax(1, keepdim=True)
                m.weight.add_((m.weight.grad.sign() * 0.45 * top / 7).masked_fill(m.weight.abs() == top, 0))
    delta.requires_grad_(False)
    # "unlearning" by a logit mask (output embedding rows of the commonest forget tokens negated): the output
    # embedding is not quantised and the rest is on the grid already → nothing changes → recovery 0
    mask = copy.deepcopy(model)
    ids, counts = probes.plain.input_ids.unique(return_counts=True)
    with torch.no_grad():
        mask.get_output_embeddings().weight[ids[counts.argsort(descending=True)[:40]]] *= -1
    results = {}
    for name, m in (("delta", delta), ("mask", mask)):
        path = _save(m, original, tmp_path / name)
        rec = _audit(path, original, code, prose, tmp_path, f"audit-{name}", attacks=["quantize"],
                     settings={"quant_bits": [4]})  # fmt: skip
        (entry,) = rec["attacks"]
        assert entry["after_unlearning"] < entry["before"] - 0.02  # the "unlearning" did something
        results[name] = entry
    assert results["delta"]["recovery"] == 1.0 and results["delta"]["after_attack"] == results["delta"]["before"]
    assert results["mask"]["recovery"] == 0.0
    assert results["mask"]["after_attack"] == results["mask"]["after_unlearning"]
    assert results["mask"]["original_attacked"] == results["mask"]["before"]  # the original is on the grid


def _tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("family", FAMILIES)
def test_logit_lens_last_layer_is_the_models_output(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    ids = torch.randint(2, 380, (3, 16), generator=torch.Generator().manual_seed(0))
    split = TokenSplit(ids, torch.zeros_like(ids, dtype=torch.bool))
    lens = logit_lens(model, adapter, split, batch_size=2)
    assert len(lens) == adapter.n_layers(model)
    assert lens[-1]["top1"] == pytest.approx(evaluate_split(model, split, batch_size=2, skip_k=0)["top1"])


def test_logit_lens_finds_what_the_last_layer_hides(tmp_path, tiny_checkpoint, text_files):
    code, prose = text_files
    original, model = _trained(tmp_path, tiny_checkpoint, code)
    hidden = copy.deepcopy(model)  # the last block scrambles everything: the first block still knows
    with torch.no_grad():
        hidden.model.layers[1].mlp.down_proj.weight.mul_(60)
    path = _save(hidden, original, tmp_path / "hidden")
    rec = _audit(path, original, code, prose, tmp_path, "audit-lens", attacks=["logit-lens"])
    (entry,) = rec["attacks"]
    # an independent route to layer 1's lens: the model cut after its first block
    cut = copy.deepcopy(model)
    del cut.model.layers[1]
    cut.config.num_hidden_layers = 1
    probes = build_probes("forget", DataConfig(source=str(code)), _tok(original), Template(_tok(original)),
                          seq_len=32, eval_tokens=256, train_tokens=32, seed=0)  # fmt: skip
    layer1 = evaluate_split(cut, probes.plain, batch_size=8)["top1"]
    assert entry["details"]["per_layer"]["unlearned"][0] == pytest.approx(layer1)
    assert entry["details"]["per_layer"]["original"][0] == pytest.approx(layer1)  # block 1 is untouched
    assert entry["details"]["best_layer"] == 1 and entry["after_attack"] == pytest.approx(layer1)
    expected = (layer1 - entry["after_unlearning"]) / (entry["before"] - entry["after_unlearning"])
    assert entry["recovery"] == pytest.approx(min(1.0, max(0.0, expected)))
    assert entry["recovery"] > 0.2


def test_relearning_undoes_gradient_ascent_more_than_the_control(tmp_path, tiny_checkpoint, text_files):
    code, prose = text_files
    original, _ = _trained(tmp_path, tiny_checkpoint, code)
    run = unlearn.run(
        dict(model=original, forget={"source": str(code)}, retain={"source": str(prose)}, stats_tokens=1024,
             val_tokens=0, out_dir=str(tmp_path / "runs"), method="gradient-ascent",
             method_config={"steps": 10, "lr": 3e-3}, **SMALL)
    )  # fmt: skip
    assert run.after["forget"]["top1"] < run.before["forget"]["top1"] - 0.1
    weights = tree_hash(run.run_dir / "model")
    rec = unlearn.audit(str(run.run_dir), attacks=["relearn"],
                        settings={"relearn_steps": 15, "relearn_lr": 3e-3, "relearn_tokens": 1024})  # fmt: skip
    forget, control = rec["attacks"]
    assert (forget["variant"], control["variant"]) == ("forget", "control")
    assert len(forget["details"]["loss"]) == 15
    assert forget["recovery"] > 0.6 and forget["recovery"] > control["recovery"] + 0.2
    assert tree_hash(run.run_dir / "model") == weights  # the audited checkpoint is untouched


def test_prompt_and_in_context_rows_score_the_same_tokens(tokenizer, text_files, tmp_path):
    code, _ = text_files
    template = Template(tokenizer, "plain")
    p = build_probes("forget", DataConfig(source=str(code)), tokenizer, template, seq_len=32, eval_tokens=128,
                     train_tokens=64, seed=0, topic="Python code")  # fmt: skip

    def scored(split):
        return [row[1:][~special[1:]].tolist() for row, special in zip(split.input_ids, split.special)]

    plain = scored(p.plain)
    for name in p.prompt_names():
        assert scored(p.prompted(name)) == plain, name
    assert scored(p.in_context(2)) == plain
    assert p.prompted("step-by-step").input_ids.shape[1] > 32
    # QA: the answer tokens are scored, whatever the question becomes
    qa = tmp_path / "qa.jsonl"
    rows = [{"question": f"Who wrote book {i}?", "answer": f"Author {i} wrote it.", "paraphrased_question":
             f"Book {i} was written by whom?"} for i in range(12)]  # fmt: skip
    qa.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    q = build_probes("forget", DataConfig(source=str(qa), format="qa"), tokenizer, template, seq_len=32,
                     eval_tokens=160, train_tokens=64, seed=0)  # fmt: skip
    assert q.n_probes == 5 and len(q.train.input_ids) == 2  # 5 evaluation rows, 2 held-out ones
    names = {"paraphrase", "step-by-step", "role-play", "prefix-injection", "affirmative-suffix"}
    assert set(q.prompt_names()) == names
    for name in q.prompt_names():
        assert scored(q.prompted(name)) == scored(q.plain), name
    ctx = q.in_context(3)
    assert scored(ctx) == scored(q.plain)
    for row, i in zip(ctx.input_ids, q.eval_index):
        text = tokenizer.decode(row)
        assert text.count(rows[i]["question"]) == 1  # asked once, never given as an example


def test_audit_of_a_run_folder_cli(run_tiny, tmp_path):
    result = run_tiny("r", "selective-pruning", {"ff_frac": 0.05, "attn_frac": 0.05, "steps": 1})
    run_dir = result.run_dir
    args = ["audit", str(run_dir), "--set", "relearn_steps=2", "--set", "relearn_tokens=64", "--set", "shots=1"]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    assert "audit.json" in res.stdout and "relearn" in res.stdout
    rec = json.loads((run_dir / "audit.json").read_text())
    names = [f"{a['attack']}:{a['variant']}" for a in rec["attacks"]]
    assert names[:4] == ["relearn:forget", "relearn:control", "quantize:int8", "quantize:int4"]
    assert {"logit-lens:best-layer", "prompt:step-by-step", "prompt:role-play", "in-context:1-shot"} <= set(names)
    # the same rows as the run: before / after unlearning equal the run's own metrics
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for a in rec["attacks"]:
        assert a["before"] == metrics["before"]["forget"]["top1"]
        assert a["after_unlearning"] == metrics["after"]["forget"]["top1"]
        assert a["recovery"] is None or 0 <= a["recovery"] <= 1
    # a second audit does not silently replace the first
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "--overwrite" in res.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--attack", "nope"], "nope"),
        (["--set", "metric=loss"], "metric"),
        (["--set", "quant_bits=[1]"], "quant_bits"),
        (["--set", "colour=red"], "colour"),
    ],
)
def test_audit_bad_input_one_line(run_tiny, args, message):
    run_dir = run_tiny("r", "selective-pruning", {"ff_frac": 0.05, "attn_frac": 0.0, "steps": 1}).run_dir
    res = CliRunner().invoke(main, ["audit", str(run_dir), *args], catch_exceptions=False)
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and message in res.stderr
    assert not (run_dir / "audit.json").exists()


def test_audit_needs_an_original(tiny_checkpoint, text_files):
    code, prose = text_files
    res = CliRunner().invoke(
        main, ["audit", "--model", str(tiny_checkpoint("llama")), "--forget", str(code), "--retain", str(prose)],
        catch_exceptions=False,
    )  # fmt: skip
    assert res.exit_code == 2 and "--original" in res.stderr
