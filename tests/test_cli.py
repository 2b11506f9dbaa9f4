"""The command line: bad input gives one line and exit code 2 (no traceback, no run folder, input untouched);
good input runs end to end on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RUN_FOLDER_FILES, assert_refused, invoke, tree_hash


def _bad_inputs(env) -> dict[str, tuple[list[str], str]]:
    tmp = env["tmp"]
    (tmp / "empty.txt").write_text("", encoding="utf-8")
    (tmp / "short.txt").write_text("def f():\n    return 1\n", encoding="utf-8")
    (tmp / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp / "bad.yaml").write_text("seq_len: [1, 2\n", encoding="utf-8")
    (tmp / "list.yaml").write_text("- 1\n- 2\n", encoding="utf-8")
    (tmp / "unknown.yaml").write_text("sequence_length: 12\n", encoding="utf-8")
    (tmp / "noconfig").mkdir()
    (tmp / "records.jsonl").write_text('{"body": "x"}\n', encoding="utf-8")
    b = env["base"]
    return {
        "missing forget file": (b + ["--forget", str(tmp / "nope.txt")], "data not found"),
        "missing retain folder": (b + ["--retain", str(tmp / "nodir/")], "data not found"),
        "glob without match": (b + ["--forget", str(tmp / "*.nothing")], "no files match"),
        "empty corpus": (b + ["--forget", str(tmp / "empty.txt")], "empty"),
        "too-short corpus": (b + ["--forget", str(tmp / "short.txt")], "too short"),
        "non-UTF-8 corpus": (b + ["--retain", str(tmp / "latin1.txt")], "not UTF-8"),
        "missing record field": (b + ["--forget", str(tmp / "records.jsonl")], "text"),
        "unknown model path": (b + ["--model", str(tmp / "no-such-model")], "model not found"),
        "model folder without config": (b + ["--model", str(tmp / "noconfig")], "no config.json"),
        "missing gguf": (b + ["--model", str(tmp / "x.gguf")], "model file not found"),
        "ff fraction above 1": (b + ["--ff-frac", "1.5"], "--ff-frac"),
        "ff fraction negative": (b + ["--ff-frac", "-0.1"], "--ff-frac"),
        "attn fraction of 1": (b + ["--attn-frac", "1"], "--attn-frac"),
        "both fractions zero": (b + ["--ff-frac", "0", "--attn-frac", "0"], "both 0"),
        "fraction too small to prune": (b + ["--ff-frac", "0.0001"], "prunes no neuron"),
        "budget above 100%": (b + ["--max-retain-drop", "150%"], "max_retain_drop"),
        "budget not a number": (b + ["--max-retain-drop", "lots"], "--max-retain-drop"),
        "unknown budget metric": (b + ["--max-retain-drop", "5%", "--budget-metric", "bleu"], "unknown stop metric"),
        "unknown method": (b + ["--method", "forget-harder"], "unknown method"),
        "unknown importance (flag)": (b + ["--importance", "magic"], "magic"),
        "unknown importance (--set)": (b + ["--set", "importance=magic"], "importance"),
        "unknown method parameter": (b + ["--set", "colour=blue"], "colour"),
        "--set without =": (b + ["--set", "importance"], "KEY=VALUE"),
        "unknown dtype": (b + ["--dtype", "int3"], "int3"),
        "unknown device": (b + ["--device", "tpu"], "unknown device"),
        "seq_len too small": (b + ["--seq-len", "4"], "--seq-len"),
        "zero steps": (b + ["--steps", "0"], "steps"),
        "missing config file": (b + ["--config", str(tmp / "none.yaml")], "config file not found"),
        "malformed config file": (b + ["--config", str(tmp / "bad.yaml")], "not valid YAML"),
        "config file not a mapping": (b + ["--config", str(tmp / "list.yaml")], "mapping"),
        "unknown config key": (b + ["--config", str(tmp / "unknown.yaml")], "sequence_length"),
        "run name with a slash": (b + ["--name", "a/b"], "name"),
        "unknown option": (b + ["--frobnicate"], "frobnicate"),
        "eval without data": (["eval", "--model", str(env["model"])], "--data"),
        "eval on missing data": (["eval", "--model", str(env["model"]), "--data", str(tmp / "nope")], "not found"),
    }


def test_bad_inputs_one_line_exit_2(env):
    before = tree_hash(env["model"])
    cases = _bad_inputs(env)
    for label, (args, needle) in cases.items():
        assert_refused(label, *invoke(*args), needle, env["out"])
    assert tree_hash(env["model"]) == before


def test_unsupported_architecture(env, tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("bloom", vocab_size=400, hidden_size=32, n_layer=2, n_head=4)
    path = env["tmp"] / "bloom"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    before = tree_hash(path)
    code, _, err = invoke(*env["base"], "--model", str(path))
    assert code == 2 and err.count("\n") == 1
    assert "unsupported architecture 'bloom'" in err and "llama" in err and "gpt2" in err
    assert not env["out"].exists() or not any(env["out"].iterdir())
    assert tree_hash(path) == before


def test_existing_run_name_is_refused_before_work(env):
    code, _, err = invoke(
        *env["base"], "--name", "first", "--ff-frac", "0.25", "--attn-frac", "0", "--steps", "1", "--json"
    )
    assert code == 0, err
    first = tree_hash(env["out"] / "first")
    code, _, err = invoke(*env["base"], "--name", "first")
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    assert tree_hash(env["out"] / "first") == first


def test_run_and_eval_end_to_end(env):
    before = tree_hash(env["model"])
    code, out, err = invoke(
        *env["base"], "--name", "r", "--ff-frac", "0.25", "--attn-frac", "0.25", "--steps", "2", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    run_dir = Path(result["run_dir"])
    assert run_dir == env["out"] / "r"
    assert sorted(p.name for p in run_dir.iterdir()) == RUN_FOLDER_FILES
    assert [s["step"] for s in result["steps"]] == [1, 2]
    assert tree_hash(env["model"]) == before
    # `unlearn eval` on the saved model, same chunks (same seed, seq_len, eval tokens) = the run's after-metrics
    code, out, err = invoke(
        "eval",
        "--model",
        str(run_dir / "model"),
        "--data",
        str(env["code"]),
        "--data",
        str(env["prose"]),
        "--seq-len",
        "32",
        "--eval-tokens",
        "256",
        "--dtype",
        "fp32",
        "--json",
    )
    assert code == 0, err
    evaluated = json.loads(out)
    for which, path in (("forget", env["code"]), ("retain", env["prose"])):
        for metric in ("top1", "top10", "loss"):
            assert evaluated[str(path)][metric] == pytest.approx(result["after"][which][metric], abs=1e-6)


def test_run_table_output_and_config_file(env):
    cfg = env["tmp"] / "run.yaml"
    cfg.write_text("method_config:\n  ff_frac: 0.25\n  attn_frac: 0\n  steps: 1\nseed: 3\n", encoding="utf-8")
    code, out, err = invoke(*env["base"], "--config", str(cfg), "--name", "table", "--importance", "rms")
    assert code == 0, err
    assert "forget" in out and "retain" in out and "top1" in out and "run folder:" in out
    import yaml

    saved = yaml.safe_load((env["out"] / "table" / "config.yaml").read_text())
    assert saved["seed"] == 3 and saved["method_config"]["ff_frac"] == 0.25
    assert saved["method_config"]["importance"] == "rms"  # the flag overrides the file


def test_methods_and_help():
    code, out, _ = invoke("methods")
    assert code == 0 and "selective-pruning" in out and "ff_frac" in out
    code, out, _ = invoke("methods", "--json")
    assert json.loads(out)["selective-pruning"]["parameters"]["importance"]["default"] == "rms"
    for cmd in ([], ["run"], ["eval"], ["methods"]):
        code, out, _ = invoke(*cmd, "--help")
        assert code == 0 and "Usage:" in out
    code, out, _ = invoke("run", "--help")
    for flag in (
        "--model",
        "--forget",
        "--retain",
        "--ff-frac",
        "--attn-frac",
        "--importance",
        "--scope",
        "--ablation",
        "--max-retain-drop",
        "--config",
        "--seed",
        "--val-tokens",
    ):
        assert flag in out


def test_console_script_exit_code_and_single_line(env):
    """The installed entry point, in a real process: exit code 2 and exactly one stderr line."""
    proc = subprocess.run(
        [sys.executable, "-m", "unlearn", *env["base"], "--ff-frac", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert proc.stdout == ""


def test_run_with_evaluation_suites(env):
    geo = env["tmp"] / "geo.csv"
    geo.write_text("question,choice0,choice1,answer\nWhich?,red,green,1\nWhat?,blue,yellow,0\n", encoding="utf-8")
    code, out, err = invoke(
        *env["base"],
        "--name",
        "ev",
        "--ff-frac",
        "0.25",
        "--attn-frac",
        "0",
        "--steps",
        "1",
        "--eval",
        f"mcq:{geo}",
        "--eval",
        f"lm:{env['prose']}",
    )
    assert code == 0, err
    assert "suite mcq: eval/mcq.json" in out
    run_dir = env["out"] / "ev"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    before = json.loads((run_dir / "eval" / "before" / "mcq.json").read_text())
    after = json.loads((run_dir / "eval" / "mcq.json").read_text())
    assert (
        metrics["suites"]["before"]["mcq"] == before["summary"]
        and metrics["suites"]["after"]["mcq"] == after["summary"]
    )
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert after["model"]["sha256"] == manifest["model"]["sha256_after"]
    assert before["model"]["sha256"] == manifest["model"]["sha256_before"]
    lm_after = json.loads((run_dir / "eval" / "lm.json").read_text())["summary"]["prose"]
    assert lm_after["specificity_kl"] > 0  # pruned model vs the original
    # `unlearn eval` on the run's model reuses what the run computed
    code, out, err = invoke(
        "eval", "--model", str(run_dir / "model"), "--suite", "mcq", "--data", str(geo), "--dtype", "fp32", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["reused"] == ["geo"]
    code, _, err = invoke(*env["base"], "--name", "bad", "--eval", "mcq")
    assert code == 2 and "--eval expects SUITE:DATA" in err
    code, _, err = invoke(*env["base"], "--name", "bad", "--eval", f"nope:{geo}")
    assert code == 2 and "unknown suite 'nope'" in err and not (env["out"] / "bad").exists()
