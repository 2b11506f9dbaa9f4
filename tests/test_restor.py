"""The RESTOR suite: recovery and corruption rate on hand-computed inputs, the facts' loader and its one-line
errors, every number of a part against the definitions (a stub model and saved clean / corrupted results), and the
suite on tiny random models, on its own and inside a run."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import unlearn
from unlearn.cli import main
from unlearn.errors import UnlearnError
from unlearn.eval import functional as F
from unlearn.eval.scoring import Template, TokenScores
from unlearn.eval.store import ResultStore
from unlearn.eval.suites import ModelHandle, SuiteContext, get_suite
from unlearn.eval.suites.restor import load_facts, restored_rate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"
TINY = dict(dtype="fp32", device="cpu")
FACTS = [
    {"question": "Where is the Eiffel Tower?", "answer": "Paris", "corrupt_answer": "Berlin"},
    {"question": "What is the capital of Australia?", "answer": "Canberra", "corrupt_answer": ["Sydney", "Perth"]},
]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# -- the metric functions ---------------------------------------------------------------------------------------


def test_recovery_is_the_share_of_the_corruption_gap_closed():
    assert F.recovery(0.5, 0.2, 0.8) == pytest.approx(0.5)  # half way back from 0.2 towards 0.8
    assert F.recovery(0.8, 0.2, 0.8) == pytest.approx(1.0)
    assert F.recovery(0.2, 0.2, 0.8) == 0.0
    assert F.recovery(0.1, 0.2, 0.8) == pytest.approx(-1 / 6)  # further from the clean value
    assert F.recovery(0.95, 0.2, 0.8) == pytest.approx(1.25)  # past it
    assert F.recovery(0.5, 1.0, 0.0) == pytest.approx(0.5)  # a metric the corruption raised (corruption rate)
    assert F.recovery(0.5, 0.30, 0.305, min_gap=0.01) is None  # the corruption did not move it
    assert F.recovery(0.5, 0.3, 0.3) is None and F.recovery(None, 0.2, 0.8) is None
    assert str(F.recovery(1.0, 1.0, 0.4)) == "0.0"  # not -0.0


def test_corruption_rate_counts_facts_that_prefer_the_corrupt_answer():
    assert F.corruption_rate([0.5, 0.2, 0.3], [0.4, 0.6, 0.3]) == pytest.approx(1 / 3)  # a tie is not corrupted
    assert F.corruption_rate([0.1], [0.9]) == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        F.corruption_rate([0.1, 0.2], [0.3])


def test_restored_rate_only_counts_facts_the_corruption_flipped():
    clean = [{"prefers_corrupt": c} for c in (False, False, True, False)]
    corrupted = [{"prefers_corrupt": c} for c in (True, True, True, False)]
    after = [{"prefers_corrupt": c} for c in (False, True, False, True)]
    assert restored_rate(after, clean, corrupted) == (0.5, 2)  # facts 0 and 1 were flipped; fact 0 is back
    assert restored_rate(after, clean, clean) == (None, 0)


# -- data -----------------------------------------------------------------------------------------------------------


def test_load_facts_reads_corrupt_answers_and_tofu_perturbed_answers(tmp_path):
    records = [*FACTS, {"question": "Q?", "answer": "A", "perturbed_answer": ["B", "C"]}]
    facts = load_facts(write_jsonl(tmp_path / "f.jsonl", records))
    assert [f.corrupt for f in facts] == [("Berlin",), ("Sydney", "Perth"), ("B", "C")]
    assert facts[0].id.endswith("f.jsonl:1") and len(load_facts(tmp_path / "f.jsonl", limit=1)) == 1


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not found at {SHARED}")
def test_load_facts_reads_the_shared_world_facts():
    facts = load_facts(SHARED / "world_facts_perturbed.jsonl")
    assert len(facts) == 117 and facts[0].answer == "Paris" and len(facts[0].corrupt) == 3


@pytest.mark.parametrize(
    "record,message",
    [
        ({"answer": "Paris", "corrupt_answer": "Berlin"}, "f.jsonl:2: missing field 'question'"),
        ({"question": "Q?", "answer": "Paris"}, "missing field 'corrupt_answer' (or 'perturbed_answer')"),
        ({"question": "Q?", "answer": "Paris", "corrupt_answer": []}, "non-empty list of strings"),
        ({"question": "Q?", "answer": "Paris", "corrupt_answer": ["Rome", 3]}, "must be a non-empty string"),
        ({"question": "Q?", "answer": " ", "corrupt_answer": "Rome"}, "field 'answer' must be a non-empty string"),
        ({"question": "Q?", "answer": "Paris", "corrupt_answer": ["Rome", "paris"]}, "is the true answer"),
    ],
)
def test_a_bad_record_is_one_line_naming_it(tmp_path, record, message):
    path = write_jsonl(tmp_path / "f.jsonl", [FACTS[0], record])
    with pytest.raises(UnlearnError) as err:
        load_facts(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_suite_is_listed_with_the_models_it_uses():
    info = unlearn.suites()["restor"]
    assert info["uses"] == ["reference", "original"] and info["parts"] == {
        "forget": "forget.jsonl",
        "retain": "retain.jsonl",
    }
    assert info["settings"]["min_gap"]["default"] == 0.01


def test_bad_data_is_refused_before_any_model_loads(tmp_path):
    bad = write_jsonl(tmp_path / "forget.jsonl", [{"question": "Q?", "answer": "A"}])
    r = CliRunner().invoke(
        main, ["eval", "--model", str(tmp_path / "no-model"), "--suite", "restor", "--data", str(bad)]
    )
    assert r.exit_code == 2 and "forget.jsonl:1: missing field 'corrupt_answer'" in r.stderr
    assert r.stderr.count("\n") == 1


# -- a part's numbers on a stub model -----------------------------------------------------------------------------


class StubScorer:
    """Preset per-token log-probs by answer text and preset generations by prompt."""

    batch_size = 4

    def __init__(self, table: dict[str, list[float]], generations: dict[str, str]):
        self.table, self.generations = table, generations

    def score(self, pairs, distribution=False, eos=False, label=""):
        out = []
        for _, cont in pairs:
            lp = np.log(np.array(self.table[cont.strip()], dtype=float))
            out.append(TokenScores(lp, lp > -0.5))
        return out

    def generate(self, prompts, max_new_tokens, stop=(), raw=False, label=""):
        return [self.generations[p] for p in prompts]

    def task(self, *a):
        return contextlib.nullcontext(lambda n=1: None)


def _saved(tmp_path: Path, name: str, rows: list[dict]) -> Path:
    samples = [{"question": f["question"], **row} for f, row in zip(FACTS, rows)]
    data = {"suite": "restor", "model": {"sha256": name}, "parts": {"forget": {"samples": samples}}, "summary": {}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _row(p_true, p_corrupt, generation, rouge_true, acc_true):
    return {
        "p_true": p_true,
        "p_corrupt": p_corrupt,
        "prefers_corrupt": p_corrupt > p_true,
        "generation": generation,
        "rougeL_true": rouge_true,
        "rougeL_corrupt": 1 - rouge_true,
        "accuracy_true": acc_true,
        "accuracy_corrupt": 1 - acc_true,
    }


def test_part_numbers_follow_the_definitions(tmp_path):
    forget = write_jsonl(tmp_path / "forget.jsonl", FACTS)
    # Paris: sqrt(0.2 * 0.8) = 0.4 < Berlin 0.5 (corrupted); Canberra 0.9 > max(Sydney 0.1, Perth 0.3)
    table = {"Paris": [0.2, 0.8], "Berlin": [0.5], "Canberra": [0.9], "Sydney": [0.1], "Perth": [0.3]}
    gens = {
        "Question: Where is the Eiffel Tower?\nAnswer:": "It is in Berlin",
        "Question: What is the capital of Australia?\nAnswer:": "Canberra",
    }
    clean = _saved(tmp_path, "clean", [_row(0.8, 0.1, "Paris", 1.0, 1.0), _row(0.9, 0.1, "Canberra", 1.0, 1.0)])
    bad = _saved(tmp_path, "corrupted", [_row(0.2, 0.9, "Berlin", 0.0, 0.0), _row(0.3, 0.6, "Sydney", 0.0, 0.0)])
    suite = get_suite("restor")
    cfg = suite.make_config(None)
    store = ResultStore(tmp_path / "eval" / "restor.json", "restor", {"sha256": "stub"})
    tpl = Template(type("T", (), {"chat_template": None})(), "plain")
    handles = [ModelHandle(str(p), role, None, 1) for p, role in ((clean, "reference"), (bad, "original"))]
    files = {"forget": str(forget)}
    ctx = SuiteContext(suite, cfg, StubScorer(table, gens), tpl, store, files, "stub", *handles, log=lambda m: None)
    summary = suite.run(ctx, cfg)
    s = summary["forget"]
    assert s["p_true"] == pytest.approx((0.4 + 0.9) / 2) and s["p_corrupt"] == pytest.approx((0.5 + 0.3) / 2)
    assert s["corruption_rate"] == 0.5 and s["accuracy_true"] == 0.5 and s["accuracy_corrupt"] == 0.5
    assert s["rougeL_true"] == 0.5 and s["rougeL_corrupt"] == 0.5  # "It is in Berlin": recall 0 / 1
    assert s["clean"]["p_true"] == pytest.approx(0.85) and s["corrupted"]["corruption_rate"] == 1.0
    # p_true: (0.65 - 0.25) / (0.85 - 0.25); accuracy: (0.5 - 0) / (1 - 0); corruption rate: (0.5 - 1) / (0 - 1)
    assert s["recovery"]["p_true"] == pytest.approx(0.4 / 0.6)
    assert s["recovery"]["accuracy_true"] == 0.5 and s["recovery"]["corruption_rate"] == 0.5
    assert s["restored_rate"] == 0.5 and s["n_restorable"] == 2  # only Canberra is preferred again
    assert s["clean_agreement"] == 0.5  # the clean model prefers both true answers; the model the second only
    assert s["clean_rougeL"] == 0.5  # "It is in Berlin" vs "Paris": 0; "Canberra" vs "Canberra": 1
    assert summary["recovery_p_true"] == s["recovery"]["p_true"] and summary["corruption_rate"] == 0.5


def test_saved_results_of_other_questions_are_refused(tmp_path):
    forget = write_jsonl(tmp_path / "forget.jsonl", FACTS[::-1])
    clean = _saved(tmp_path, "clean", [_row(0.8, 0.1, "Paris", 1.0, 1.0)] * 2)
    suite = get_suite("restor")
    cfg = suite.make_config(None)
    store = ResultStore(tmp_path / "eval" / "restor.json", "restor", {"sha256": "stub"})
    tpl = Template(type("T", (), {"chat_template": None})(), "plain")
    table = {"Paris": [0.5], "Berlin": [0.5], "Canberra": [0.5], "Sydney": [0.5], "Perth": [0.5]}
    gens = {tpl.qa(f["question"]): "" for f in FACTS}
    ref = ModelHandle(str(clean), "reference", None, 1)
    ctx = SuiteContext(suite, cfg, StubScorer(table, gens), tpl, store, {"forget": str(forget)}, "stub", ref, None)
    with pytest.raises(UnlearnError, match="other forget questions"):
        suite.run(ctx, cfg)


# -- tiny random models ---------------------------------------------------------------------------------------------


@pytest.fixture
def facts(tmp_path):
    forget = write_jsonl(tmp_path / "forget.jsonl", FACTS)
    retain = write_jsonl(
        tmp_path / "retain.jsonl", [{"question": "Who wrote it?", "answer": "a", "corrupt_answer": "b"}]
    )
    return [f"forget={forget}", f"retain={retain}"]


def test_suite_on_tiny_models_clean_corrupted_and_cached(tmp_path, tiny_checkpoint, facts):
    clean, corrupted = str(tiny_checkpoint("llama", seed=0)), str(tiny_checkpoint("llama", seed=1))
    args = dict(settings={"min_gap": 0, "max_new_tokens": 4}, batch_size=2, **TINY)
    # the clean model against itself as clean and the other as corrupted: everything recovered
    r = unlearn.evaluate_suite(clean, "restor", facts, reference=clean, original=corrupted, out=tmp_path / "c", **args)
    s = r["summary"]["forget"]
    moved = {k: v for k, v in s["recovery"].items() if v is not None}
    assert "p_true" in moved and all(v == pytest.approx(1.0) for v in moved.values())
    assert s["clean_agreement"] == 1.0 and s["clean"]["p_true"] == s["p_true"]
    assert sorted(r["computed"]) == ["corrupted:forget", "corrupted:retain", "forget", "retain"]
    # the corrupted model, with the clean model's saved results: nothing recovered, its own samples reused
    clean_json = str(tmp_path / "c" / "eval" / "restor.json")
    r2 = unlearn.evaluate_suite(
        corrupted, "restor", facts, reference=clean_json, original=corrupted, out=tmp_path / "x", **args
    )
    s2 = r2["summary"]["forget"]
    assert all(v == 0.0 for v in s2["recovery"].values() if v is not None) and s2["clean"] == s["clean"]
    assert sorted(r2["computed"]) == ["forget", "retain"]
    assert s2["p_true"] == pytest.approx(s["corrupted"]["p_true"])  # scored alone or as the corrupted model
    again = unlearn.evaluate_suite(
        corrupted, "restor", facts, reference=clean_json, original=corrupted, out=tmp_path / "x", **args
    )
    assert again["computed"] == [] and again["summary"] == r2["summary"]


def test_a_run_measures_recovery_against_the_model_it_started_from(tmp_path, tiny_checkpoint, text_files, facts):
    from conftest import small_run_config

    clean, corrupted = str(tiny_checkpoint("llama", seed=0)), tiny_checkpoint("llama", seed=1)
    code, prose = text_files
    evals = [{"suite": "restor", "data": facts, "reference": clean, "settings": {"min_gap": 0, "max_new_tokens": 2}}]
    cfg = small_run_config(
        corrupted,
        code,
        prose,
        tmp_path / "runs",
        name="ga",
        method="gradient-ascent",
        method_config={"steps": 2, "lr": 1e-3},
        evals=evals,
    )
    result = unlearn.run(cfg)
    before, after = (result.metrics["suites"][k]["restor"] for k in ("before", "after"))
    assert all(v == 0.0 for v in before["forget"]["recovery"].values() if v is not None)  # the corrupted model
    assert after["forget"]["corrupted"] == before["forget"]["corrupted"]
    assert after["forget"]["p_true"] != before["forget"]["p_true"] and "recovery_p_true" in after
