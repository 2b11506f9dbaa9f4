"""The last holes in bad-input handling, one test per case, on the tiny llama.

Each case ends in one ``error: ...`` line naming the argument or file and exit code 2 (Ctrl-C: 130), with no
half-written output; an interrupted run's work folder is kept exactly as it was whenever resuming is refused.
Every numeric option of every command refuses NaN and infinities (fuzzed with hypothesis).
"""

from __future__ import annotations

import errno
import json
import os
import shutil

import click
import pytest
from conftest import assert_refused, ctrl_c_at_evaluation, invoke, small_run_config, tree_hash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unlearn
from unlearn.cli import main
from unlearn.cli.group import Number

STEPS = ["--steps", "3", "--ff-frac", "0.05", "--attn-frac", "0"]


def _one_line(code: int, err: str, *needles: str, exit_code: int = 2) -> None:
    lines = err.strip().splitlines()
    assert code == exit_code, f"exit {code}: {err!r}"
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], f"{lines[0]!r} does not mention {needle!r}"


# ------------------------------------------------------------------------------------------ numbers everywhere


def _numeric_options() -> list[tuple[str, click.Option]]:
    found = []
    for name, command in sorted(main.commands.items()):
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(param.type, Number):
                found.append((name, param))
    return found


def test_every_numeric_option_has_the_one_validated_type():
    plain = [
        f"{name} {param.opts[0]}"
        for name, command in main.commands.items()
        for param in command.params
        if isinstance(param.type, (click.types.IntParamType, click.types.FloatParamType))
    ]
    assert not plain, f"numeric options without the validated Number type: {plain}"
    assert {"learn --epochs", "run --ff-frac", "eval --seq-len", "audit --seed"} <= {
        f"{n} {p.opts[0]}" for n, p in _numeric_options()
    }


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(_numeric_options()),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e999", "+nan"])
    | st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
def test_fuzz_numeric_options_refuse_non_finite_values(option, value):
    """Parsing only (the command does not run): every value is a finite number in range, or a one-line error that
    names the option."""
    name, param = option
    command = main.commands[name]
    args = [param.opts[0], value] + (["--data", "x", "--out", "y"] if name == "learn" else [])
    try:
        ctx = command.make_context(name, args)
    except click.BadParameter as exc:
        assert param.opts[0] in exc.format_message() and "\n" not in exc.format_message()
        return
    parsed = ctx.params[param.name]
    assert parsed == parsed and abs(parsed) != float("inf"), f"{name} {param.opts[0]} {value!r} -> {parsed!r}"


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_learn_epochs_nan_and_inf(env, value):
    code, out, err = invoke("learn", "--model", str(env["model"]), "--data", str(env["code"]), "--out",
                            str(env["out"] / "l"), "--epochs", value)  # fmt: skip
    assert_refused(f"--epochs {value}", code, out, err, "--epochs", env["out"])


def test_learn_lr_nan_and_bad_lora_name_the_option(env):
    base = ["learn", "--model", str(env["model"]), "--data", str(env["code"]), "--out", str(env["out"] / "l")]
    code, out, err = invoke(*base, "--lr", "nan")
    assert_refused("--lr nan", code, out, err, "--lr", env["out"])
    code, out, err = invoke(*base, "--lora", "r=abc", "--dtype", "fp32")
    assert_refused("--lora r=abc", code, out, err, "lora", env["out"])
    assert "pydantic" not in err and "http" not in err


# ------------------------------------------------------------------------------------------------ output space


def test_learn_out_that_cannot_be_written(env):
    code, out, err = invoke("learn", "--model", str(env["model"]), "--data", str(env["code"]), "--out",
                            "/proc/unlearn-test/learned", "--steps", "1", "--dtype", "fp32")  # fmt: skip
    _one_line(code, err, "--out /proc/unlearn-test/learned", "cannot write")


def test_learn_on_a_full_disk_is_refused_before_training(env, monkeypatch):
    monkeypatch.setattr("unlearn.models.save.free_bytes", lambda path: 1_000)
    out = env["out"] / "learned"
    code, _, err = invoke("learn", "--model", str(env["model"]), "--data", str(env["code"]), "--out", str(out),
                          "--steps", "1", "--dtype", "fp32")  # fmt: skip
    _one_line(code, err, "not enough disk space", str(out), "MB free")
    assert not env["out"].exists() or not any(env["out"].iterdir())


def test_run_on_a_full_disk_is_refused_before_the_work(env, monkeypatch):
    from unlearn.methods.context import MethodContext

    monkeypatch.setattr("unlearn.models.save.free_bytes", lambda path: 1_000)
    monkeypatch.setattr(MethodContext, "statistics", lambda *a, **k: pytest.fail("the work started"))
    code, out, err = invoke(*env["base"])
    assert_refused("full disk", code, out, err, "not enough disk space", env["out"])


def test_disk_filling_up_while_saving_names_path_bytes_and_the_removed_folder(env, monkeypatch):
    import transformers.modeling_utils as modeling_utils

    def full(*args, **kwargs):
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(modeling_utils, "safe_save_file", full)  # safetensors' own error type, not an OSError
    code, out, err = invoke(*env["base"], "--name", "full")
    assert_refused("disk full while saving", code, out, err, "no space left on device", env["out"])
    for needle in (str(env["out"] / ".full.incomplete" / "model"), "needs about", "MB free", "was removed: run again"):
        assert needle in err, needle


def test_quiet_still_warns_when_the_report_cannot_be_written(env, monkeypatch):
    def full(run_dir):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run_dir / "report.html"))

    monkeypatch.setattr("unlearn.pipeline.run.write_report", full)
    code, out, err = invoke(*env["base"], "--name", "noreport", "--quiet")
    assert code == 0, err  # the run folder is complete; the report is derived from it
    assert "warning: report not written" in err and "unlearn report" in err
    assert (env["out"] / "noreport" / "manifest.json").is_file()


# ------------------------------------------------------------------------------------------------------ inputs


def test_non_text_record_fields_are_refused_with_the_line(env):
    data = env["tmp"] / "records.jsonl"
    data.write_text('{"text": "fine words here"}\n{"text": 42}\n', encoding="utf-8")
    code, out, err = invoke(*env["base"], "--forget", str(data))
    assert_refused("number as text", code, out, err, f"{data}:2: field 'text' is int, not text", env["out"])
    data.write_text('{"text": {"body": "x"}}\n', encoding="utf-8")
    code, out, err = invoke(*env["base"], "--forget", str(data))
    assert_refused("object as text", code, out, err, f"{data}:1: field 'text' is dict", env["out"])


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_devices_and_pipes_are_not_data(env, kind):
    if kind == "device":
        source = "/dev/zero"
    else:
        source = str(env["tmp"] / "pipe")
        os.mkfifo(source)
    code, out, err = invoke(*env["base"], "--forget", source)
    assert_refused(kind, code, out, err, "is not a regular file", env["out"])
    assert "not found" not in err


@pytest.mark.parametrize(
    "change, needle",
    [({"num_attention_heads": 5}, "not a multiple"), ({"hidden_size": "wide"}, "hidden_size")],
)
def test_a_bad_config_json_is_blamed_on_config_json(env, change, needle):
    broken = env["tmp"] / "broken-model"
    shutil.copytree(env["model"], broken)
    config = json.loads((broken / "config.json").read_text(encoding="utf-8"))
    (broken / "config.json").write_text(json.dumps({**config, **change}), encoding="utf-8")
    code, out, err = invoke(*env["base"], "--model", str(broken))
    assert_refused(str(change), code, out, err, f"{broken / 'config.json'} describes no model", env["out"])
    assert needle in err and "tokenizer" not in err


def test_seq_len_beyond_the_models_positions(env):
    # the tiny llama has 512 positions
    code, _, err = invoke("eval", "--model", str(env["model"]), "--data", str(env["code"]), "--seq-len", "600",
                          "--dtype", "fp32")  # fmt: skip
    _one_line(code, err, "--seq-len 600 is longer than", "512 positions", "at most 512")
    code, out, err = invoke(*env["base"], "--seq-len", "600")
    assert_refused("run --seq-len 600", code, out, err, "512 positions", env["out"])


def test_bad_reference_is_named_before_any_evaluation(env, monkeypatch):
    from unlearn.eval.scoring import Scorer

    records = [{"question": "Who wrote shlex?", "answer": "The shlex module", "paraphrased_answer": "shlex",
                "perturbed_answer": ["textwrap", "nobody"]}]  # fmt: skip
    forget = env["tmp"] / "forget01_perturbed.jsonl"
    forget.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    monkeypatch.setattr(Scorer, "__init__", lambda *a, **k: pytest.fail("evaluation started"))
    out = env["tmp"] / "evals"
    missing = str(env["tmp"] / "missing") + "/"
    code, _, err = invoke("eval", "--model", str(env["model"]), "--suite", "tofu", "--data", str(forget),
                          "--reference", missing, "--out", str(out), "--dtype", "fp32")  # fmt: skip
    _one_line(code, err, "--reference not found", "missing/")
    assert not out.exists()


# --------------------------------------------------------------------------------------- interruption, resume


@pytest.fixture
def interrupted(tmp_path, tiny_checkpoint, text_files, monkeypatch):
    """A pruning run stopped by Ctrl-C in its third step: its work folder, with a checkpoint after step 2."""

    code, prose = text_files
    cfg = small_run_config(tiny_checkpoint("llama"), code, prose, tmp_path / "runs", name="cut")
    cfg["method_config"] = {"ff_frac": 0.05, "attn_frac": 0.0, "steps": 4}
    with monkeypatch.context() as mp:
        ctrl_c_at_evaluation(mp, 4)  # before, step 1, step 2, then Ctrl-C during step 3
        with pytest.raises(KeyboardInterrupt):
            unlearn.run(cfg)
    work = tmp_path / "runs" / ".cut.incomplete"
    assert (work / "checkpoint" / "state.pt").is_file()
    return work


def test_resume_refuses_an_edited_config_and_keeps_the_work_folder(interrupted):
    config = interrupted / "config.yaml"
    config.write_text(config.read_text(encoding="utf-8").replace("ff_frac: 0.05", "ff_frac: 0.02"), encoding="utf-8")
    before = tree_hash(interrupted)
    code, _, err = invoke("run", "--resume", str(interrupted.parent / "cut"))
    _one_line(code, err, f"{config} changed after the run was interrupted", "nothing was changed")
    assert tree_hash(interrupted) == before


def test_an_unreadable_checkpoint_keeps_the_work_folder(interrupted):
    state = interrupted / "checkpoint" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    before = tree_hash(interrupted)
    code, _, err = invoke("run", "--resume", str(interrupted.parent / "cut"))
    _one_line(code, err, f"checkpoint {state} cannot be read", "the work folder is kept as it was")
    assert tree_hash(interrupted) == before
    shutil.rmtree(state.parent)  # as the message says: restart the method from its first step
    code, _, err = invoke("run", "--resume", str(interrupted.parent / "cut"), "--quiet")
    assert code == 0, err
    assert (interrupted.parent / "cut" / "manifest.json").is_file()


def test_ctrl_c_exits_130_with_the_resume_hint_also_when_quiet(env, monkeypatch):
    ctrl_c_at_evaluation(monkeypatch, 3)
    code, _, err = invoke(*env["base"], *STEPS, "--name", "cut", "--quiet")
    assert code == 130, err
    assert f"interrupted: continue with `unlearn run --resume {env['out'] / 'cut'}`" in err
    assert err.strip().splitlines()[-1] == "interrupted"
    assert (env["out"] / ".cut.incomplete" / "config.yaml").is_file()
