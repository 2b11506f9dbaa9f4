"""Crash safety and --resume: after an interruption (Ctrl-C, or kill -9 at random moments) the output folder
holds either no run folder or a complete one, and ``unlearn run --resume`` ends with the result of an
uninterrupted run: the same pruned neurons, metrics and saved weights."""

from __future__ import annotations

import importlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import unlearn
from conftest import small_run_config
from unlearn.runs.ledger import read_manifest, verify_run

PRUNING = {"method_config": {"ff_frac": 0.05, "attn_frac": 0.05, "steps": 5}}
TRAINING = {"method": "graddiff", "method_config": {"steps": 6, "lr": 1e-3, "batch_size": 2}, "checkpoint_every": 2}


def _config(model, code, prose, out, **extra) -> dict:
    return small_run_config(model, code, prose, out, **extra)


def _same_result(a: Path, b: Path) -> None:
    """Two finished runs agree on everything but timings and dates."""
    assert (a / "pruned_neurons.json").read_text() == (b / "pruned_neurons.json").read_text()
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma == mb
    fa, fb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert fa["model"]["sha256_after"] == fb["model"]["sha256_after"]
    assert fa["model"]["files"]["model.safetensors"] == fb["model"]["files"]["model.safetensors"]


@pytest.mark.parametrize("kind", ["pruning", "training"])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, tiny_checkpoint, text_files, monkeypatch, kind):
    code, prose = text_files
    extra = PRUNING if kind == "pruning" else TRAINING
    cfg = _config(tiny_checkpoint("llama"), code, prose, tmp_path / "runs", **extra)
    reference = unlearn.run({**cfg, "name": "reference"}).run_dir

    # interrupt in the middle: at the third evaluation (pruning) or the fifth optimizer step (training)
    from unlearn.methods.context import MethodContext

    training = importlib.import_module("unlearn.methods.training")

    calls = {"n": 0}
    if kind == "pruning":
        real = MethodContext.evaluate

        def evaluate(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 4:  # before, step 1, step 2, then Ctrl-C during step 3
                raise KeyboardInterrupt
            return real(self, *args, **kwargs)

        monkeypatch.setattr(MethodContext, "evaluate", evaluate)
    else:
        real = training._finite

        def finite(x):
            calls["n"] += 1
            if calls["n"] == 5 * 3:  # graddiff logs three terms per step: Ctrl-C in step 5
                raise KeyboardInterrupt
            return real(x)

        monkeypatch.setattr(training, "_finite", finite)
    with pytest.raises(KeyboardInterrupt):
        unlearn.run({**cfg, "name": "interrupted"})
    monkeypatch.undo()
    out = tmp_path / "runs"
    assert not (out / "interrupted").exists()
    work = out / ".interrupted.incomplete"
    assert (work / "checkpoint" / "state.pt").is_file()
    with pytest.raises(unlearn.UnlearnError, match="interrupted run interrupted is waiting"):
        unlearn.run({**cfg, "name": "interrupted"})

    resumed = unlearn.run(resume=out / "interrupted")
    assert resumed.run_dir == out / "interrupted" and not work.exists()
    assert not (resumed.run_dir / "checkpoint").exists()
    _same_result(reference, resumed.run_dir)
    with pytest.raises(unlearn.UnlearnError, match="is complete"):
        unlearn.run(resume=out / "interrupted")


def test_resume_refuses_what_it_cannot_continue(tmp_path, tiny_checkpoint, text_files):
    code, prose = text_files
    cfg = _config(tiny_checkpoint("llama"), code, prose, tmp_path / "runs", **PRUNING)
    with pytest.raises(unlearn.UnlearnError, match="no interrupted run"):
        unlearn.run(resume=tmp_path / "runs" / "nothing")
    with pytest.raises(unlearn.UnlearnError, match="give no other settings"):
        unlearn.run(cfg, resume=tmp_path / "runs" / "nothing")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "unlearn", "run", *args]


def _flags(cfg: dict) -> list[str]:
    path = Path(cfg["out_dir"]).parent / "config.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return ["--config", str(path), "--quiet"]


@pytest.mark.parametrize("kind,seeds", [("pruning", (1, 2)), ("training", (4,))])
def test_kill_9_at_random_moments(tmp_path, tiny_checkpoint, text_files, kind, seeds):
    """kill -9 a real `unlearn run` process at random moments: never a half-written run folder, and resuming (or
    starting over, when it died before its work folder existed) gives the uninterrupted result."""
    code, prose = text_files
    extra = PRUNING if kind == "pruning" else TRAINING
    out = tmp_path / "runs"
    cfg = _config(tiny_checkpoint("llama"), code, prose, out, **extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(_cli(*_flags({**cfg, "name": "reference"})), env=env, check=True, capture_output=True)
    duration = time.perf_counter() - start
    for seed in seeds:
        name = f"killed-{seed}"
        delay = random.Random(seed).uniform(0.3, 1.0) * duration
        proc = subprocess.Popen(_cli(*_flags({**cfg, "name": name})), env=env, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        final, work = out / name, out / f".{name}.incomplete"
        if final.exists():  # finished before the kill: it must be complete
            manifest, _ = read_manifest(final, "run")
            assert verify_run(final, manifest) == []
            assert not work.exists()
        elif work.exists():
            subprocess.run(_cli("--resume", str(final), "--quiet"), env=env, check=True, capture_output=True)
        else:  # killed before the work folder was made: start over
            subprocess.run(_cli(*_flags({**cfg, "name": name})), env=env, check=True, capture_output=True)
        assert not work.exists() and (final / "manifest.json").is_file()
        _same_result(out / "reference", final)


def test_pdu_resumes_with_its_exact_dual_variable(tmp_path, tiny_checkpoint, text_files, monkeypatch):
    """PDU's λ changes after every micro-batch; it travels in the checkpoint, so an interrupted run ends where an
    uninterrupted one does (with gradient accumulation, where the logged λ is only a per-step mean)."""
    code, prose = text_files
    method = {"steps": 6, "lr": 1e-3, "batch_size": 2, "grad_accum": 2, "dual_step_size": 0.7}
    cfg = _config(
        tiny_checkpoint("llama"), code, prose, tmp_path / "runs", method="pdu", method_config=method, checkpoint_every=2
    )
    reference = unlearn.run({**cfg, "name": "reference"}).run_dir
    training = importlib.import_module("unlearn.methods.training")
    real, calls = training._Loop.step, {"n": 0}

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # Ctrl-C in step 5, after the checkpoint of step 4
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(training._Loop, "step", step)
    with pytest.raises(KeyboardInterrupt):
        unlearn.run({**cfg, "name": "interrupted"})
    monkeypatch.undo()
    resumed = unlearn.run(resume=tmp_path / "runs" / "interrupted")
    _same_result(reference, resumed.run_dir)
    duals = [s["dual"] for s in json.loads((resumed.run_dir / "metrics.json").read_text())["train_log"]]
    assert len(set(duals)) > 1  # λ did move
