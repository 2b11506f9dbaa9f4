"""Data parallel runs: two CPU processes (accelerate launch, gloo) give the single-process result.

Selective pruning: the same pruned neurons and metrics (sums of per-batch float32 sums are order independent in
float64). A trained method: the same first steps within tolerance (DDP averages the two half-batches'
gradients, which equals the whole batch's up to rounding and the split of tokens).
"""

from __future__ import annotations

import json

import pytest
import torch

import unlearn
from conftest import small_run_config
from unlearn import distributed

pytestmark = pytest.mark.filterwarnings("ignore")


def _config(model, code, prose, out, **extra) -> dict:
    return small_run_config(model, code, prose, out, stats_tokens=1024, eval_tokens=512, **extra)


def _single(cfg: dict):
    """The one-process reference, with one thread like each launched process (torchrun sets one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return unlearn.run(cfg)
    finally:
        torch.set_num_threads(threads)


def _read(run_dir):
    return {name: json.loads((run_dir / name).read_text()) for name in ("metrics.json", "manifest.json")}


def _close(a, b, path=""):
    """Nested metrics equal: integers and strings exactly, floats to 1e-9 relative."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_two_processes_prune_the_same_neurons(tmp_path, tiny_checkpoint, text_files, dtype):
    code, prose = text_files
    model = tiny_checkpoint("llama")
    method = {"importance": "rms", "ff_frac": 0.05, "attn_frac": 0.05, "steps": 2, "ablation": "mean", "heal_steps": 0}
    cfg = _config(model, code, prose, tmp_path / "runs", method_config=method, dtype=dtype)
    one = _single({**cfg, "name": "one"})
    two = unlearn.launch({**cfg, "name": "two"}, num_processes=2)
    assert two.manifest["processes"] == 2 and one.manifest["processes"] == 1
    assert (two.run_dir / "pruned_neurons.json").read_text() == (one.run_dir / "pruned_neurons.json").read_text()
    assert two.manifest["pruned_total"] == one.manifest["pruned_total"]
    _close(one.metrics, two.metrics)
    assert two.manifest["model"]["sha256_after"] == one.manifest["model"]["sha256_after"]


def test_two_processes_train_like_one(tmp_path, tiny_checkpoint, text_files):
    code, prose = text_files
    model = tiny_checkpoint("llama")
    method = {"steps": 3, "lr": 1e-3, "batch_size": 4}
    cfg = _config(model, code, prose, tmp_path / "runs", method="graddiff", method_config=method)
    one = _single({**cfg, "name": "one"})
    two = unlearn.launch({**cfg, "name": "two"}, num_processes=2)
    log1, log2 = one.metrics["train_log"], two.metrics["train_log"]
    assert [r["step"] for r in log1] == [r["step"] for r in log2] == [1, 2, 3]
    for a, b in zip(log1, log2):  # the same data, split in two: losses agree up to the split of tokens
        assert b["loss"] == pytest.approx(a["loss"], rel=0.02, abs=1e-3)
    assert two.metrics["after"]["forget"]["loss"] == pytest.approx(one.metrics["after"]["forget"]["loss"], rel=0.02)


def test_outside_a_launch_everything_is_local(tmp_path):
    assert not distributed.launched() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.reduce_sums({"a": 1, "b": 2.5}) == {"a": 1, "b": 2.5}
    t = torch.arange(3.0)
    assert distributed.all_reduce_(t) is t and distributed.all_gather(t)[0] is t


def test_launch_checks_the_config_before_starting_processes(tmp_path, tiny_checkpoint, text_files):
    code, prose = text_files
    cfg = _config(tiny_checkpoint("llama"), code, prose, tmp_path / "runs")
    with pytest.raises(unlearn.UnlearnError, match="data not found"):
        unlearn.launch({**cfg, "forget": {"source": str(tmp_path / "missing.txt")}}, num_processes=2)
    with pytest.raises(unlearn.UnlearnError, match="accelerate config file not found"):
        unlearn.launch(cfg, num_processes=2, accelerate_config=tmp_path / "none.yaml")
    assert not (tmp_path / "runs").exists()


def test_device_map_and_auto_batch_size_give_the_same_run(tmp_path, tiny_checkpoint, text_files):
    """--device-map auto (Accelerate's placement; all on the CPU here) and --batch-size auto (the batch fitted to
    memory) change where and how many chunks run at once, not the result."""
    code, prose = text_files
    method = {"ff_frac": 0.05, "attn_frac": 0.05, "steps": 2}
    cfg = _config(tiny_checkpoint("llama"), code, prose, tmp_path / "runs", method_config=method)
    plain = unlearn.run({**cfg, "name": "plain"})
    mapped = unlearn.run({**cfg, "name": "mapped", "device_map": "auto", "batch_size": "auto"})
    assert isinstance(mapped.config.batch_size, int) and mapped.config.batch_size > cfg["batch_size"]
    assert (mapped.run_dir / "pruned_neurons.json").read_text() == (plain.run_dir / "pruned_neurons.json").read_text()  # noqa: E501
    for which in ("forget", "retain"):
        assert mapped.after[which]["top1"] == plain.after[which]["top1"]
        assert mapped.after[which]["loss"] == pytest.approx(plain.after[which]["loss"], rel=1e-5)
    with pytest.raises(unlearn.UnlearnError, match="--device-map serves statistics"):
        unlearn.run({**cfg, "device_map": "auto", "method": "npo", "method_config": {}})
