"""The built-in general-English corpora, the run's utility row (general text that no step of the method uses),
the stage times and the long-run estimate, and healing with LoRA."""

from __future__ import annotations

import json
import types

import pytest
import torch

from conftest import invoke
from unlearn.data.sources import BUILTIN, DataSpec, iter_documents
from unlearn.errors import UnlearnError
from unlearn.eval.metrics import relative_drop


def _texts(source: str) -> list[str]:
    return [text for _, text in iter_documents(DataSpec(source))]


def test_general_english_halves_are_disjoint_prose():
    train, held = _texts("general-english"), _texts("general-english-heldout")
    assert "general-english" in BUILTIN and "general-english-heldout" in BUILTIN
    assert len(train) > 3 * len(held) > 0
    assert not set(train) & set(held)
    words = sum(len(t.split()) for t in held)
    assert words > 8000  # enough for the default utility budget of SmolLM2 tokens
    for text in train + held:
        assert "```" not in text and "def " not in text and len(text.split()) >= 40


def test_general_english_subjects_do_not_cross_halves():
    import gzip

    from unlearn.data.sources import GENERAL_ENGLISH

    with gzip.open(GENERAL_ENGLISH, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    parts = {}
    for rec in records:
        parts.setdefault(rec["subject"], set()).add(rec["part"])
    assert all(len(p) == 1 for p in parts.values())
    assert {"train", "heldout"} == set().union(*parts.values())


def test_run_reports_utility_before_and_after(run_tiny):
    result = run_tiny("u", "selective-pruning", {"ff_frac": 0.2, "attn_frac": 0.0, "steps": 1, "heal_steps": 0})
    before, after = result.metrics["before"], result.metrics["after"]
    assert before["utility"]["n_tokens"] > 0 and after["utility"]["n_tokens"] == before["utility"]["n_tokens"]
    for metric in ("top1", "top10"):
        expected = relative_drop(before["utility"][metric], after["utility"][metric])
        assert after["utility_drop"][metric] == pytest.approx(expected)
    assert after["utility"]["loss"] != before["utility"]["loss"]  # measured on the pruned model
    data = result.manifest["data"]
    assert data["utility"]["source"] == "general-english-heldout" and data["utility"]["stats_tokens"] == 0
    # retain is measured on the text the method used; utility never is
    assert data["retain"]["eval_on_method_text"] is True and data["utility"]["eval_on_method_text"] is False
    assert "utility" not in result.metrics["steps"][0]  # only before and after: steps stay cheap


def test_utility_on_the_saved_model_matches_a_fresh_evaluation(run_tiny, tmp_path):
    import unlearn

    result = run_tiny("u2", "selective-pruning", {"ff_frac": 0.2, "attn_frac": 0.0, "steps": 1, "heal_steps": 0})
    got = unlearn.evaluate(
        str(result.run_dir / "model"), ["general-english-heldout"], eval_tokens=128, seq_len=32, batch_size=4
    )["general-english-heldout"]
    assert got["top1"] == pytest.approx(result.after["utility"]["top1"], abs=1e-6)


def test_utility_can_be_turned_off_or_given(run_tiny, text_files):
    off = run_tiny(
        "off", "selective-pruning", {"ff_frac": 0.2, "attn_frac": 0.0, "steps": 1, "heal_steps": 0}, utility=None
    )
    assert "utility" not in off.metrics["before"] and "utility" not in off.manifest["data"]
    _, prose = text_files
    given = run_tiny(
        "given",
        "selective-pruning",
        {"ff_frac": 0.2, "attn_frac": 0.0, "steps": 1, "heal_steps": 0},
        utility={"source": str(prose)},
    )
    assert given.manifest["data"]["utility"]["source"] == str(prose)
    with pytest.raises(UnlearnError, match="invalid config utility"):
        run_tiny("qa", "selective-pruning", {"ff_frac": 0.2}, utility={"source": str(prose), "format": "qa"})


def test_cli_summary_has_utility_row_flag_and_stage_times(env):
    code, out, err = invoke(
        *env["base"], "--ff-frac", "0.2", "--attn-frac", "0", "--steps", "1", "--set", "heal_steps=0", "--name", "cli"
    )
    assert code == 0, err
    assert "utility (general-english-heldout)" in out
    assert "retain" in out and "│ *" in out  # the retain (and forget) rows are flagged
    assert "* measured on held-out chunks of the text the method itself used" in out
    assert "time: " in out and "total" in out
    code, out, err = invoke(
        *env["base"],
        "--ff-frac",
        "0.2",
        "--attn-frac",
        "0",
        "--steps",
        "1",
        "--set",
        "heal_steps=0",
        "--name",
        "none",
        "--utility",
        "none",
    )
    assert code == 0, err
    assert "utility (" not in out and "pass --utility DATA" in out


def test_cli_bad_utility_source_is_one_line_exit_2(env):
    code, out, err = invoke(*env["base"], "--utility", str(env["tmp"] / "missing.txt"), "--name", "bad")
    assert code == 2 and "missing.txt" in err and "Traceback" not in err
    assert not env["out"].exists() or not any(env["out"].iterdir())


def test_long_runs_are_announced_first():
    from unlearn.pipeline.run import LONG_RUN_S, announce_long_run, estimated_seconds
    from unlearn.methods.selective_pruning import SelectivePruningConfig

    split = types.SimpleNamespace(n_tokens=8192)
    corpus = types.SimpleNamespace(eval=split, stats=split)
    logged = []
    ctx = types.SimpleNamespace(
        config=types.SimpleNamespace(seq_len=256),
        forget=corpus,
        retain=corpus,
        utility=types.SimpleNamespace(eval=split),
        reporter=types.SimpleNamespace(log=logged.append),
    )
    cfg = SelectivePruningConfig()
    per_token = 1 / 100  # a slow CPU
    eta = estimated_seconds(ctx, cfg, per_token)
    heal = cfg.heal_steps * cfg.heal_batch_size * 256 * 2 * 3 * 1.3
    assert eta == pytest.approx((cfg.steps * 4 * 8192 + heal + 3 * 8192) * per_token)
    announce_long_run(ctx, cfg, baseline_seconds=3 * 8192 * per_token)
    assert eta > LONG_RUN_S and len(logged) == 1 and "more minutes" in logged[0]
    logged.clear()
    announce_long_run(ctx, cfg, baseline_seconds=3 * 8192 / 1e6)  # a fast machine: nothing to say
    assert logged == []


def test_cpu_level_is_named():
    from unlearn.models.load import cpu_level, cpu_supports_bf16

    level = cpu_level()
    assert level in ("amx_bf16", "avx512_bf16", "avx512", "avx2", "other", "unknown")
    assert cpu_supports_bf16() == (level in ("amx_bf16", "avx512_bf16"))


def test_heal_with_lora_keeps_pruned_neurons_pruned_and_leaves_plain_weights(run_tiny, tiny_checkpoint):
    from transformers import AutoModelForCausalLM

    mc = {"ff_frac": 0.2, "attn_frac": 0.0, "steps": 1, "heal_steps": 4, "heal_lr": 3e-3, "heal_lora": "r=4"}
    result = run_tiny("lora", "selective-pruning", mc)
    assert len(result.metrics["train_log"]) == 4
    model = AutoModelForCausalLM.from_pretrained(result.run_dir / "model")
    assert not any("lora" in name for name in model.state_dict())  # merged: a plain checkpoint
    original = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("llama"))
    down = model.model.layers[0].mlp.down_proj.weight
    pruned = json.loads((result.run_dir / "pruned_neurons.json").read_text())["ff"].get("0", [])
    assert pruned and torch.count_nonzero(down[:, pruned]) == 0
    up, up0 = model.model.layers[0].mlp.up_proj.weight, original.model.layers[0].mlp.up_proj.weight
    assert not torch.equal(up, up0)  # the adapters trained and were merged
    with pytest.raises(UnlearnError, match="heal_lora"):
        run_tiny("bad-lora", "selective-pruning", {**mc, "heal_lora": "rank=4"})
