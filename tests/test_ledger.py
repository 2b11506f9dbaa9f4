"""Sequential unlearning requests (``run --from``) and the compliance ledger, on the tiny llama.

A chain a → b → c: selective pruning, then gradient ascent on other data, then selective pruning again. Each
child records its parent in a hash chain; each run re-measures the earlier requests; ``unlearn ledger``
re-verifies every hash and names what was tampered with.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sysconfig
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer

import unlearn
from unlearn.cli import main
from unlearn.data.chunking import build_corpus
from unlearn.data.sources import DataSpec
from unlearn.errors import UnlearnError
from unlearn.eval.metrics import evaluate_split
from unlearn.models.save import file_sha256

SP = {"ff_frac": 0.1, "attn_frac": 0.0, "steps": 1}  # tiny models have too few heads for attention pruning
GA = {"steps": 1, "lr": 1e-3, "batch_size": 2}
METRIC_KEYS = {"top1", "top10", "skip50_top1", "skip50_top10", "loss", "perplexity", "n_tokens"}


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False, env={"COLUMNS": "250"})
    return result.exit_code, result.stdout, result.stderr


def tree_hashes(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): file_sha256(p) for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def other_code(tmp_path) -> Path:
    """A second forget corpus (other stdlib modules) for the second request."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    path = tmp_path / "other_code.txt"
    text = "\n\n".join((lib / n).read_text(encoding="utf-8") for n in ("json/decoder.py", "bisect.py"))
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def then(run_tiny):
    """``then(parent, name, method, method_config, **overrides)``: a request on top of ``parent``'s model."""

    def run(parent, name, method, method_config, **overrides):
        model = str(parent.run_dir / "model")  # the fixture names a model: the parent's own is the one allowed
        return run_tiny(name, method, method_config, from_run=str(parent.run_dir), model=model, **overrides)

    return run


@pytest.fixture
def chain(run_tiny, then, other_code):
    """a (selective pruning) → b (gradient ascent, other forget data) → c (selective pruning, b's data)."""
    a = run_tiny("a", "selective-pruning", SP)
    a_files = tree_hashes(a.run_dir)
    b = then(a, "b", "gradient-ascent", GA, forget={"source": str(other_code)})
    c = then(b, "c", "selective-pruning", SP, forget={"source": str(other_code)})
    return {"a": a, "b": b, "c": c, "a_files": a_files}


def _close(measured: dict, recorded: dict) -> None:
    assert set(measured) == set(recorded) == METRIC_KEYS
    for key, value in recorded.items():
        assert measured[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_chain_records_parents_files_and_earlier_requests(chain):
    a, b, c = chain["a"], chain["b"], chain["c"]
    assert a.manifest["parent"] is None and "earlier_requests" not in a.metrics
    for child, parent in ((b, a), (c, b)):
        raw = (parent.run_dir / "manifest.json").read_bytes()
        assert child.manifest["parent"] == {
            "run_dir": str(parent.run_dir.resolve()),
            "run_name": parent.run_dir.name,
            "manifest_sha256": hashlib.sha256(raw).hexdigest(),
            "model_sha256": parent.manifest["model"]["sha256_after"],
        }
        assert child.manifest["model"]["sha256_before"] == parent.manifest["model"]["sha256_after"]
        config = yaml.safe_load((child.run_dir / "config.yaml").read_text())
        assert config["from_run"] == str(parent.run_dir.resolve())
        assert config["model"] == str(parent.run_dir.resolve() / "model")
    for run in (a, b, c):
        files = run.manifest["files"]
        assert sorted(files) == ["config.yaml", "metrics.json", "pruned_neurons.json"]
        assert all(file_sha256(run.run_dir / name) == sha for name, sha in files.items())
        assert json.loads((run.run_dir / "manifest.json").read_text()) == run.manifest
        for data in run.manifest["data"].values():
            assert len(data["sha256_eval_tokens"]) == 64
    # the parent run folder is never modified by a request on top of it (nor by the ledger)
    unlearn.ledger(c.run_dir)
    assert tree_hashes(a.run_dir) == chain["a_files"]

    earlier = c.metrics["earlier_requests"]
    assert [e["run"] for e in earlier] == ["a", "b"]  # root first
    for entry, past in zip(earlier, (a, b)):
        assert list(entry) == ["run", "forget_source", "retain_source", "metric", "forget", "retain", "metrics"]
        assert entry["metric"] == "top1"
        assert entry["forget_source"] == past.manifest["data"]["forget"]["source"]
        assert entry["retain_source"] == past.manifest["data"]["retain"]["source"]
        for which in ("forget", "retain"):
            assert list(entry[which]) == ["original", "after_request", "before", "after"]
            assert entry[which]["original"] == past.before[which]["top1"]
            assert entry[which]["after_request"] == past.after[which]["top1"]
            measured = entry["metrics"][which]
            assert list(measured) == ["before", "after"]
            assert entry[which]["before"] == measured["before"]["top1"]
            assert entry[which]["after"] == measured["after"]["top1"]
    assert earlier[0]["forget_source"] != earlier[1]["forget_source"]

    # the parent model re-measured on the parent's own request reproduces the parent's metrics.json "after"
    for child, parent in ((b, a), (c, b)):
        own = child.metrics["earlier_requests"][-1]["metrics"]
        for which in ("forget", "retain"):
            _close(own[which]["before"], parent.after[which])
    # "after" is this run's unlearned model: c repeats b's request settings, so it equals c's own after, and
    # the saved checkpoint, loaded by stock transformers, measures the same on b's evaluation chunks
    for which in ("forget", "retain"):
        _close(earlier[1]["metrics"][which]["after"], c.after[which])
    model = AutoModelForCausalLM.from_pretrained(c.run_dir / "model").eval()
    tok = AutoTokenizer.from_pretrained(c.run_dir / "model")
    chunks = build_corpus(
        "f", DataSpec(c.config.forget.source), tok, seq_len=32, eval_tokens=128, stats_tokens=0, seed=0
    )
    _close(evaluate_split(model, chunks.eval, batch_size=4), earlier[1]["metrics"]["forget"]["after"])
    for which in ("forget", "retain"):
        # b's model on a's request, measured by b (after) and by c (before)
        _close(earlier[0]["metrics"][which]["before"], b.metrics["earlier_requests"][0]["metrics"][which]["after"])
    assert earlier[1]["metrics"]["forget"]["after"]["loss"] != earlier[1]["metrics"]["forget"]["before"]["loss"]


def test_ledger_verifies_the_chain_api_cli_and_json(chain, tmp_path):
    c = chain["c"]
    result = unlearn.ledger(c.run_dir)
    assert result["verified"] is True and result["problems"] == []
    reqs = result["requests"]
    assert [r["run"] for r in reqs] == ["a", "b", "c"]
    assert [r["method"] for r in reqs] == ["selective-pruning", "gradient-ascent", "selective-pruning"]
    assert reqs[0]["parent"] is None and reqs[2]["parent"]["run_name"] == "b"
    assert reqs[1]["method_config"]["lr"] == GA["lr"]
    assert reqs[1]["model"]["sha256_before"] == reqs[0]["model"]["sha256_after"]
    assert reqs[1]["data"]["forget"]["sha256_tokens"] == chain["b"].manifest["data"]["forget"]["sha256_tokens"]
    assert reqs[0]["created"] == chain["a"].manifest["created"]
    assert all(r["verified"] and r["problems"] == [] for r in reqs)

    code, out, err = invoke("ledger", str(c.run_dir))
    assert code == 0, err
    lines = out.strip().splitlines()
    verdict = next(i for i, line in enumerate(lines) if line.startswith("verified:"))
    assert lines[verdict] == "verified: 3 requests, all hashes match"
    said = " ".join(" ".join(lines[verdict + 1 :]).split())  # and that nothing protects the newest manifest
    assert said.startswith("the newest request c is unsigned") and result["head"]["manifest_sha256"] in said
    assert "gradient-ascent" in out and "other_code.txt" in out
    code, out, err = invoke("ledger", str(c.run_dir), "--json")
    assert code == 0, err
    assert json.loads(out) == json.loads(json.dumps(result))

    # a runs folder moved as a whole still verifies: parents are found beside their child
    moved = tmp_path / "moved"
    shutil.move(str(c.run_dir.parent), moved)
    again = unlearn.ledger(moved / "c")
    assert again["verified"], again["problems"]
    assert [r["run_dir"] for r in again["requests"]] == [str(moved / n) for n in ("a", "b", "c")]


def test_tampered_model_file_fails_ledger_and_refuses_a_new_request(chain, run_tiny):
    b, c = chain["b"], chain["c"]
    weights = b.run_dir / "model" / "model.safetensors"
    with open(weights, "ab") as fh:
        fh.write(b"\0tampered")
    result = unlearn.ledger(c.run_dir)
    assert result["verified"] is False
    assert len(result["problems"]) == 1 and str(weights) in result["problems"][0]
    assert [r["verified"] for r in result["requests"]] == [True, False, True]

    code, out, err = invoke("ledger", str(c.run_dir))
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: verification failed: ") and str(weights) in err
    assert "verification failed" in out and "model.safetensors" in out and "Traceback" not in out + err

    # a new request on top of the tampered run is refused before any work, in one line naming the file
    out_dir = b.run_dir.parent
    before = sorted(p.name for p in out_dir.iterdir())
    code, out, err = invoke("run", "--from", str(b.run_dir), "--out", str(out_dir), "--name", "d")
    assert code == 2 and err.count("\n") == 1 and "failed verification" in err and str(weights) in err
    assert sorted(p.name for p in out_dir.iterdir()) == before
    with pytest.raises(UnlearnError, match="model.safetensors"):
        run_tiny("d", "selective-pruning", SP, from_run=str(b.run_dir), model=str(b.run_dir / "model"))


def test_tampered_parent_manifest_and_run_files_are_detected(chain, then):
    a, c = chain["a"], chain["c"]
    manifest = json.loads((a.run_dir / "manifest.json").read_text())
    manifest["method"] = "gradient-ascent"  # rewrite history: the child's record of it no longer matches
    (a.run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    # a new request on c still runs (c checks out), but does not measure the tampered ancestor's request
    d = then(c, "d", "selective-pruning", SP)
    entries = d.metrics["earlier_requests"]
    assert [e["run"] for e in entries] == ["a", "b", "c"] and ["error" in e for e in entries] == [True, False, False]
    assert "failed verification" in entries[0]["error"] and "manifest.json" in entries[0]["error"]
    metrics = c.run_dir / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"top1": 0.', '"top1": 1.', 1))
    extra = c.run_dir / "model" / "extra.safetensors"
    extra.write_bytes(b"not from the run")
    result = unlearn.ledger(c.run_dir)
    assert not result["verified"]
    problems = result["problems"]
    assert any(str(a.run_dir / "manifest.json") in p and "child b" in p for p in problems), problems
    assert any(str(metrics) in p for p in problems), problems
    assert any(str(extra) in p and "not listed" in p for p in problems), problems
    assert len(problems) == 3
    assert [r["verified"] for r in result["requests"]] == [True, False, False]  # reported on the child

    code, _, err = invoke("ledger", str(c.run_dir))
    assert code == 1 and "manifest.json" in err


def test_bad_from_and_ledger_input_exit_2_one_line(run_tiny, tmp_path, text_files):
    code_txt, prose = text_files
    nomodel = run_tiny("nomodel", "selective-pruning", SP, save_model=False)
    base = ["run", "--forget", str(code_txt), "--retain", str(prose), "--out", str(tmp_path / "runs")]
    base += ["--seq-len", "32", "--eval-tokens", "128", "--stats-tokens", "256", "--val-tokens", "0"]
    base += ["--device", "cpu", "--ff-frac", "0.1", "--attn-frac", "0", "--steps", "1"]
    (tmp_path / "plain").mkdir()
    cases = {
        "run without a saved model": (base + ["--from", str(nomodel.run_dir)], "no saved model"),
        "not a run folder": (base + ["--from", str(tmp_path / "plain")], "not a run folder"),
        "missing folder": (base + ["--from", str(tmp_path / "nope")], "not found"),
        "ledger of a folder that is no run": (["ledger", str(tmp_path / "plain")], "not a run folder"),
        "ledger of a missing folder": (["ledger", str(tmp_path / "nope")], "not found"),
    }
    before = tree_hashes(nomodel.run_dir)
    for label, (args, needle) in cases.items():
        code, out, err = invoke(*args)
        assert code == 2, f"{label}: exit {code}, {err!r}"
        assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, f"{label}: {err!r}"
        assert "Traceback" not in out + err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["nomodel"]
    assert tree_hashes(nomodel.run_dir) == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "manifest.json").write_text("[1, 2]")
    code, _, err = invoke("ledger", str(tmp_path / "junk"))
    assert code == 2 and "not an unlearn run manifest" in err


def test_from_conflicts_and_the_cli_summary(run_tiny, tmp_path, text_files, tiny_checkpoint):
    code_txt, prose = text_files
    a = run_tiny("a", "selective-pruning", SP)
    with pytest.raises(UnlearnError, match="drop --model"):
        run_tiny("x", "selective-pruning", SP, from_run=str(a.run_dir))  # the fixture's model is a's input
    with pytest.raises(UnlearnError, match="drop --dtype"):
        run_tiny("x", "selective-pruning", SP, from_run=str(a.run_dir), model=str(a.run_dir / "model"), dtype="bf16")
    with pytest.raises(UnlearnError, match="inside the parent run folder"):
        run_tiny(
            "x",
            "selective-pruning",
            SP,
            from_run=str(a.run_dir),
            model=str(a.run_dir / "model"),
            out_dir=str(a.run_dir / "more"),
        )
    before = tree_hashes(a.run_dir)
    args = ["run", "--from", str(a.run_dir), "--forget", str(code_txt), "--retain", str(prose)]
    args += ["--out", str(tmp_path / "runs"), "--name", "b", "--seq-len", "32", "--eval-tokens", "128"]
    args += ["--stats-tokens", "256", "--val-tokens", "0", "--device", "cpu", "--method", "gradient-ascent"]
    args += ["--set", "steps=1", "--set", "lr=1e-3", "--set", "batch_size=2"]
    code, out, err = invoke(*args)
    assert code == 0, err
    assert "earlier requests" in out and "run folder:" in out
    assert tree_hashes(a.run_dir) == before
    manifest = json.loads((tmp_path / "runs" / "b" / "manifest.json").read_text())
    assert manifest["parent"]["run_name"] == "a" and manifest["model"]["dtype"] == "fp32"


def test_earlier_requests_whose_data_is_gone_or_changed_are_skipped_with_an_error(
    run_tiny, then, tmp_path, other_code, text_files
):
    gone, changed = tmp_path / "gone.txt", tmp_path / "changed.txt"
    shutil.copy(other_code, gone)
    shutil.copy(other_code, changed)
    a = run_tiny("a", "selective-pruning", SP, forget={"source": str(gone)})
    b = then(a, "b", "selective-pruning", SP, forget={"source": str(changed)})
    gone.unlink()
    changed.write_text(text_files[0].read_text())  # other text: other evaluation chunks
    c = then(b, "c", "selective-pruning", SP)
    assert [e["run"] for e in c.metrics["earlier_requests"]] == ["a", "b"]
    for entry, needle, source in zip(c.metrics["earlier_requests"], ("not found", "changed since"), (gone, changed)):
        assert list(entry) == ["run", "forget_source", "retain_source", "metric", "error"]
        assert needle in entry["error"] and entry["forget_source"] == str(source)
    assert unlearn.ledger(c.run_dir)["verified"]


def test_a_run_from_before_parents_were_recorded_is_a_root(run_tiny):
    a = run_tiny("old", "selective-pruning", SP)
    manifest = json.loads((a.run_dir / "manifest.json").read_text())
    del manifest["parent"], manifest["files"]
    (a.run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    result = unlearn.ledger(a.run_dir)
    assert result["verified"] and [r["run"] for r in result["requests"]] == ["old"]
    assert result["requests"][0]["parent"] is None
