"""Selective pruning: scoring, selection, config validation and end-to-end runs on a tiny llama checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import RUN_FOLDER_FILES
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

import unlearn
from unlearn.data.chunking import build_corpus
from unlearn.data.sources import DataSpec
from unlearn.errors import UnlearnError
from unlearn.eval.metrics import evaluate_split
from unlearn.methods import get_method
from unlearn.methods.selective_pruning import SelectivePruningConfig, scores, select
from unlearn.models.adapters import adapter_for, weight_columns
from unlearn.models.hooks import Ablation, NeuronStats, collect_statistics
from unlearn.models.load import state_dict_hash
from unlearn.models.save import file_sha256

F64 = torch.float64


def _stats(count, positive, abs_sum, total, sq_sum) -> NeuronStats:
    t = lambda v: torch.tensor(v, dtype=F64)  # noqa: E731
    return NeuronStats(count, t(positive), t(abs_sum), t(total), t(sq_sum))


# ----------------------------------------------------------------------------------------------------------------
# scores


def test_scores_are_forget_over_retain_plus_eps():
    forget = {
        ("ff", 0): _stats(4, [4, 0, 2], [8, 4, 0], [8, -4, 0], [16, 4, 0]),
        ("ff", 1): _stats(4, [1, 1, 1], [4, 4, 4], [4, 4, 4], [4, 4, 4]),
        ("attn", 0): _stats(4, [0, 0], [1, 2], [1, 2], [1, 1]),
    }
    retain = {
        ("ff", 0): _stats(2, [1, 2, 0], [2, 0, 1], [2, 0, 1], [2, 0, 8]),
        ("ff", 1): _stats(2, [0, 0, 0], [1, 2, 3], [1, 2, 3], [1, 2, 3]),
        ("attn", 0): _stats(2, [0, 0], [2, 2], [2, 2], [2, 2]),
    }
    cfg = SelectivePruningConfig(importance="abs", ff_frac=0.1, eps_ff=1e-3, eps_attn=0.5)
    s = scores(forget, retain, cfg, "ff")
    assert set(s) == {0, 1}
    torch.testing.assert_close(s[0], torch.tensor([2 / (1 + 1e-3), 1 / 1e-3, 0 / (0.5 + 1e-3)], dtype=F64))
    torch.testing.assert_close(s[1], torch.tensor([1 / (0.5 + 1e-3), 1 / (1 + 1e-3), 1 / (1.5 + 1e-3)], dtype=F64))
    a = scores(forget, retain, cfg, "attn")
    assert set(a) == {0}
    torch.testing.assert_close(a[0], torch.tensor([0.25 / 1.5, 0.5 / 1.5], dtype=F64))

    freq = scores(forget, retain, SelectivePruningConfig(importance="freq", ff_frac=0.1), "ff")
    torch.testing.assert_close(freq[0], torch.tensor([1 / (0.5 + 1e-3), 0.0, 0.5 / 1e-3], dtype=F64))
    rms = scores(forget, retain, SelectivePruningConfig(importance="rms", ff_frac=0.1), "ff")
    torch.testing.assert_close(rms[0], torch.tensor([2 / (1 + 1e-3), 1 / 1e-3, 0.0], dtype=F64))
    std = scores(forget, retain, SelectivePruningConfig(importance="std", ff_frac=0.1), "ff")
    # forget std: [0, 0, 0]; retain std of neuron 2: sqrt(4 - 0.25)
    torch.testing.assert_close(std[0], torch.zeros(3, dtype=F64))
    std_r = scores(retain, forget, SelectivePruningConfig(importance="std", ff_frac=0.1), "ff")
    torch.testing.assert_close(std_r[0], torch.tensor([0.0, 0.0, math.sqrt(3.75) / 1e-3], dtype=F64))


# ----------------------------------------------------------------------------------------------------------------
# select

NAN = float("nan")
SCORES = {0: torch.tensor([0.1, 5.0, 3.0, NAN]), 1: torch.tensor([4.0, 0.2, 6.0, 1.0])}


def _lists(chosen: dict) -> dict:
    return {layer: sorted(idx.tolist()) for layer, idx in chosen.items()}


def test_select_global_scope():
    assert _lists(select(SCORES, Ablation(), "ff", 3 / 8, "global")) == {0: [1], 1: [0, 2]}
    assert _lists(select(SCORES, Ablation(), "ff", 1 / 8, "global")) == {1: [2]}
    got = select(SCORES, Ablation(), "ff", 5 / 8, "global")
    assert _lists(got) == {0: [1, 2], 1: [0, 2, 3]}
    assert all(v.dtype == torch.long for v in got.values())
    # the input scores are not modified
    assert torch.isnan(SCORES[0][3]) and SCORES[1][2] == 6.0


def test_select_layer_scope():
    got = select(SCORES, Ablation(), "ff", 0.5, "layer")
    assert _lists(got) == {0: [1, 2], 1: [0, 2]}
    assert _lists(select(SCORES, Ablation(), "ff", 0.25, "layer")) == {0: [1], 1: [2]}
    # per layer, even though layer 1 holds all of the global top 2
    assert _lists(
        select({0: torch.tensor([1.0, 2.0]), 1: torch.tensor([9.0, 8.0])}, Ablation(), "ff", 0.5, "layer")
    ) == {0: [1], 1: [0]}
    assert _lists(
        select({0: torch.tensor([1.0, 2.0]), 1: torch.tensor([9.0, 8.0])}, Ablation(), "ff", 0.5, "global")
    ) == {1: [0, 1]}


def test_select_never_chooses_already_pruned():
    done = Ablation()
    done.add(("ff", 1), torch.tensor([2]), torch.zeros(1), 4)
    done.add(("attn", 0), torch.tensor([1]), torch.zeros(1), 4)  # another kind: irrelevant here
    assert _lists(select(SCORES, done, "ff", 3 / 8, "global")) == {0: [1, 2], 1: [0]}
    assert _lists(select(SCORES, done, "ff", 0.5, "layer")) == {0: [1, 2], 1: [0, 3]}
    # for attention neurons only the (attn, 0) mask counts: neuron 1 of layer 0 is blocked, 2 of layer 1 is not
    assert _lists(select(SCORES, done, "attn", 3 / 8, "global")) == {0: [2], 1: [0, 2]}
    # pruning everything step by step never repeats a neuron and ends with nothing left
    ablation = Ablation()
    seen = []
    for _ in range(5):
        chosen = select(SCORES, ablation, "ff", 0.25, "global")
        for layer, idx in chosen.items():
            seen += [(layer, i) for i in idx.tolist()]
            ablation.add(("ff", layer), idx, torch.zeros(len(idx)), 4)
    assert len(seen) == len(set(seen)) == 7  # all but the NaN neuron
    assert (0, 3) not in seen
    assert select(SCORES, ablation, "ff", 0.25, "global") == {}


def test_select_attention_kind_uses_its_own_pruned_mask():
    done = Ablation()
    done.add(("attn", 1), torch.tensor([2]), torch.zeros(1), 4)
    assert _lists(select(SCORES, done, "attn", 1 / 8, "global")) == {0: [1]}
    assert _lists(select(SCORES, done, "ff", 1 / 8, "global")) == {1: [2]}


def test_select_nan_never_chosen():
    s = {0: torch.tensor([NAN, NAN, 1.0]), 1: torch.tensor([NAN, 2.0, NAN])}
    assert _lists(select(s, Ablation(), "ff", 0.9, "global")) == {0: [2], 1: [1]}
    assert _lists(select(s, Ablation(), "ff", 0.9, "layer")) == {0: [2], 1: [1]}
    assert select({0: torch.full((4,), NAN)}, Ablation(), "ff", 0.5, "global") == {}


def test_select_ties_broken_by_position():
    s = {0: torch.ones(4), 1: torch.ones(4)}
    assert _lists(select(s, Ablation(), "ff", 0.25, "global")) == {0: [0, 1]}
    assert _lists(select(s, Ablation(), "ff", 0.75, "global")) == {0: [0, 1, 2, 3], 1: [0, 1]}
    assert _lists(select(s, Ablation(), "ff", 0.5, "layer")) == {0: [0, 1], 1: [0, 1]}
    tied = {0: torch.tensor([1.0, 3.0, 3.0, 0.0]), 1: torch.tensor([3.0, 2.0, 3.0, 3.0])}
    assert _lists(select(tied, Ablation(), "ff", 3 / 8, "global")) == {0: [1, 2], 1: [0]}
    # deterministic: the same call gives the same answer
    for _ in range(3):
        assert _lists(select(tied, Ablation(), "ff", 3 / 8, "global")) == {0: [1, 2], 1: [0]}
    # layer scope keeps ties in position order too
    assert select(tied, Ablation(), "ff", 0.5, "layer")[1].tolist() == [0, 2]
    # large enough that an unstable sort would scramble equal scores
    big = torch.ones(300)
    big[::3] = 2.0
    top = list(range(0, 300, 3))
    rest = [i for i in range(300) if i % 3][:50]  # the first 50 of the tied 1.0 scores, by position
    assert _lists(select({0: big}, Ablation(), "ff", 0.5, "global")) == {0: sorted(top + rest)}
    assert select({0: big}, Ablation(), "ff", 0.5, "layer")[0].tolist() == top + rest


def test_select_k_rounding_and_limits():
    s = {0: torch.arange(10, dtype=torch.float32)}  # neuron i has score i
    assert _lists(select(s, Ablation(), "ff", 0.14, "global")) == {0: [9]}  # 1.4 -> 1
    assert _lists(select(s, Ablation(), "ff", 0.16, "global")) == {0: [8, 9]}  # 1.6 -> 2
    assert select(s, Ablation(), "ff", 0.04, "global") == {}  # 0.4 -> 0
    assert _lists(select(s, Ablation(), "ff", 0.16, "layer")) == {0: [8, 9]}
    # a fraction larger than what is left takes only what is left
    done = Ablation()
    done.add(("ff", 0), torch.arange(2, 10), torch.zeros(8), 10)
    assert _lists(select(s, done, "ff", 0.5, "global")) == {0: [0, 1]}
    assert _lists(select(s, done, "ff", 0.5, "layer")) == {0: [0, 1]}
    done.add(("ff", 0), torch.tensor([0, 1]), torch.zeros(2), 10)
    assert select(s, done, "ff", 0.5, "global") == {} and select(s, done, "ff", 0.5, "layer") == {}


# ----------------------------------------------------------------------------------------------------------------
# config validation


@pytest.mark.parametrize(
    "values,where",
    [
        ({"ff_frac": 1.0}, "ff_frac"),
        ({"ff_frac": -0.1}, "ff_frac"),
        ({"attn_frac": 1.5}, "attn_frac"),
        ({"ff_frac": 0.0, "attn_frac": 0.0}, "both 0"),
        ({"ff_frac": 0.0, "attn_frac": 0.0, "steps": 3}, "both 0"),
        ({"importance": "median"}, "importance"),
        ({"scope": "model"}, "scope"),
        ({"ablation": "random"}, "ablation"),
        ({"steps": 0}, "steps"),
        ({"eps_ff": 0.0}, "eps_ff"),
        ({"ff_fraction": 0.1}, "ff_fraction"),  # unknown key
    ],
)
def test_config_validation(values, where):
    with pytest.raises(ValidationError, match=where):
        SelectivePruningConfig(**values)
    method = get_method("selective-pruning")
    with pytest.raises(UnlearnError, match=rf"^invalid selective-pruning setting\b.*{where}"):
        method.make_config(values)


def test_config_defaults_and_registry():
    cfg = get_method("Selective_Pruning ").make_config(None)
    assert isinstance(cfg, SelectivePruningConfig)
    assert (cfg.importance, cfg.ff_frac, cfg.attn_frac) == ("rms", 0.005, 0.0)
    assert (cfg.scope, cfg.ablation, cfg.steps, cfg.recollect) == ("global", "zero", 1, True)
    # the default heals by distillation (KL to the original on retain text) under a raised forget floor
    assert (cfg.heal_steps, cfg.heal_lr, cfg.heal_batch_size, cfg.heal_tokens) == (8, 2e-4, 2, 16384)
    assert (cfg.heal_forget_weight, cfg.heal_embeddings, cfg.heal_checkpointing) == (1.0, False, True)
    assert (cfg.heal_target, cfg.heal_floor_scale, cfg.heal_lora) == ("kl", 2.0, None)
    assert cfg.fraction("ff") == 0.005 and cfg.fraction("attn") == 0.0
    assert cfg.eps("ff") == 1e-3 and cfg.eps("attn") == 1e-4
    assert SelectivePruningConfig(ff_frac=0.0, attn_frac=0.3).fraction("attn") == 0.3
    with pytest.raises(UnlearnError, match="unknown method 'nope'.*selective-pruning"):
        get_method("nope")
    assert "selective-pruning" in unlearn.methods()


def test_run_rejects_bad_method_config_before_loading(tmp_path):
    with pytest.raises(UnlearnError, match="ff_frac"):
        unlearn.run({"model": str(tmp_path / "no-model"), "method_config": {"ff_frac": 2}, "out_dir": str(tmp_path)})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------------
# end to end through unlearn.run

SEQ_LEN, EVAL_TOKENS, VAL_TOKENS, STATS_TOKENS, BATCH = 32, 512, 512, 256, 8
METRICS = ("top1", "top10", "skip50_top1", "skip50_top10")


@pytest.fixture
def setup(tmp_path, tiny_checkpoint, text_files, run_tiny):
    code, prose = text_files
    ckpt = tiny_checkpoint("llama")

    def run(name: str, method_config: dict, **overrides):
        budgets = dict(seq_len=SEQ_LEN, stats_tokens=STATS_TOKENS, eval_tokens=EVAL_TOKENS, val_tokens=VAL_TOKENS)
        # tiny models have too few heads for the default attention fraction; these tests are about pruning:
        # healing (on by default) is switched on where a test is about it
        mc = {"attn_frac": 0.0, "heal_steps": 0, **method_config}
        return run_tiny(name, "selective-pruning", mc, **{**budgets, "batch_size": BATCH, **overrides})

    return {"run": run, "ckpt": ckpt, "code": code, "prose": prose, "out": tmp_path / "runs"}


def _corpus(path: Path, tokenizer, seed: int = 0):
    return build_corpus(
        "x",
        DataSpec(str(path)),
        tokenizer,
        seq_len=SEQ_LEN,
        eval_tokens=EVAL_TOKENS,
        stats_tokens=STATS_TOKENS,
        val_tokens=VAL_TOKENS,
        seed=seed,
    )


def _plain(path: Path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _assert_metrics_equal(got: dict, expected: dict):
    assert got.keys() == expected.keys()
    for k in got:
        assert got[k] == pytest.approx(expected[k], rel=1e-5, abs=1e-9), k


def _reproduce(setup, model_dir: Path, result):
    """Stock transformers + evaluate_split on the run's own evaluation chunks give the reported 'after'."""
    model = _plain(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for which, path in (("forget", setup["code"]), ("retain", setup["prose"])):
        corpus = _corpus(path, tokenizer)
        assert corpus.sha256 == result.manifest["data"][which]["sha256_tokens"]
        got = evaluate_split(model, corpus.eval, batch_size=BATCH, skip_k=50)
        _assert_metrics_equal(got, result.after[which])
    return model


def _tree(path: Path) -> dict:
    return {str(p.relative_to(path)): file_sha256(p) for p in sorted(path.rglob("*")) if p.is_file()}


def test_run_end_to_end(setup):
    ckpt_before = _tree(setup["ckpt"])
    result = setup["run"]("e2e", {"ff_frac": 0.1, "attn_frac": 0.1, "steps": 2})
    run_dir = result.run_dir
    assert run_dir == setup["out"] / "e2e"
    assert sorted(p.name for p in run_dir.iterdir()) == RUN_FOLDER_FILES
    assert [p.name for p in setup["out"].iterdir()] == ["e2e"]  # no temporary folder left behind
    assert _tree(setup["ckpt"]) == ckpt_before  # the source checkpoint is never touched

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["method"] == "selective-pruning" and config["seq_len"] == SEQ_LEN and config["seed"] == 0
    assert (
        config["method_config"]
        == SelectivePruningConfig(ff_frac=0.1, attn_frac=0.1, steps=2, heal_steps=0).model_dump()
    )

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    assert set(metrics) >= {"before", "steps", "after", "stop_reason"}
    assert metrics["stop_reason"] == "completed 2 steps"
    n_ff, n_attn = 2 * 64, 2 * 32
    per_step = {"ff": round(0.1 * n_ff), "attn": round(0.1 * n_attn)}
    assert [s["step"] for s in metrics["steps"]] == [1, 2]
    for i, step in enumerate(metrics["steps"], 1):
        assert step["pruned_this_step"] == per_step
        assert step["pruned_total"] == {k: i * v for k, v in per_step.items()}
        assert "reverted" not in step
        for which in ("forget", "retain"):
            before, now = metrics["before"][which], step[which]
            for m in METRICS:
                expected = (before[m] - now[m]) / before[m] if before[m] else 0.0
                assert step[f"{which}_drop"][m] == pytest.approx(expected)
            assert now["n_tokens"] == before["n_tokens"] > 0
    last = metrics["steps"][-1]
    assert {k: v for k, v in metrics["after"].items() if not k.startswith("utility")} == {
        k: last[k] for k in ("forget", "retain", "forget_drop", "retain_drop")
    }
    assert metrics["after"]["utility"]["n_tokens"] == metrics["before"]["utility"]["n_tokens"] > 0

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["method"] == "selective-pruning" and manifest["seed"] == 0
    assert manifest["pruned_total"] == {k: 2 * v for k, v in per_step.items()}
    counts = manifest["pruned_neurons_per_layer"]
    assert {k: sum(v) for k, v in counts.items()} == manifest["pruned_total"]
    assert manifest["model"]["family"] == "llama" and manifest["model"]["dtype"] == "fp32"
    assert manifest["stop_reason"] == metrics["stop_reason"]
    for which in ("forget", "retain"):
        assert manifest["data"][which]["eval_tokens"] == EVAL_TOKENS
        assert manifest["data"][which]["stats_tokens"] == STATS_TOKENS
    assert manifest["model"]["sha256_before"] == state_dict_hash(_plain(setup["ckpt"]))
    assert manifest["model"]["sha256_after"] != manifest["model"]["sha256_before"]
    for name, digest in manifest["model"]["files"].items():
        assert file_sha256(run_dir / "model" / name) == digest

    pruned = json.loads((run_dir / "pruned_neurons.json").read_text())
    assert {kind: [len(pruned[kind].get(str(i), [])) for i in range(len(c))] for kind, c in counts.items()} == counts

    # the saved model: stock transformers, the pruned columns are zero, the rest untouched, metrics reproduce
    model = _reproduce(setup, run_dir / "model", result)
    assert state_dict_hash(model) == manifest["model"]["sha256_after"]
    original = _plain(setup["ckpt"])
    adapter = adapter_for(model)
    for kind in ("ff", "attn"):
        for layer in range(2):
            idx = pruned.get(kind, {}).get(str(layer), [])
            assert len(idx) == len(set(idx)) and all(0 <= i < adapter.n_neurons(model, kind) for i in idx)
            w = weight_columns(adapter.out_proj(model, layer, kind), False)
            w0 = weight_columns(adapter.out_proj(original, layer, kind), False)
            keep = [i for i in range(w.shape[1]) if i not in idx]
            assert torch.all(w[:, idx] == 0) and torch.equal(w[:, keep], w0[:, keep])

    # 'before' is the unmodified model on the same chunks
    tokenizer = AutoTokenizer.from_pretrained(setup["ckpt"])
    for which, path in (("forget", setup["code"]), ("retain", setup["prose"])):
        got = evaluate_split(original, _corpus(path, tokenizer).eval, batch_size=BATCH, skip_k=50)
        _assert_metrics_equal(got, metrics["before"][which])


def test_run_selection_matches_building_blocks(setup):
    """Without re-collection, 2 steps of 16 prune the top 32 of the initial scores; with it, step 1 is the top 16."""
    tokenizer = AutoTokenizer.from_pretrained(setup["ckpt"])
    model = _plain(setup["ckpt"])
    adapter = adapter_for(model)
    stats = {
        which: collect_statistics(model, adapter, _corpus(path, tokenizer).stats, batch_size=BATCH, kinds=("ff",))
        for which, path in (("forget", setup["code"]), ("retain", setup["prose"]))
    }
    cfg = SelectivePruningConfig(ff_frac=0.125, attn_frac=0.0, importance="rms", steps=2)
    s = scores(stats["forget"], stats["retain"], cfg, "ff")
    expected = {str(k): v for k, v in _lists(select(s, Ablation(), "ff", 0.25, "global")).items()}
    step1 = {str(k): v for k, v in _lists(select(s, Ablation(), "ff", 0.125, "global")).items()}

    once = setup["run"]("once", {**cfg.model_dump(), "recollect": False})
    assert _indices(once.run_dir) == {"ff": expected}
    assert once.manifest["pruned_total"] == {"ff": 32, "attn": 0}

    first = setup["run"]("first", {**cfg.model_dump(), "steps": 1})
    assert _indices(first.run_dir) == {"ff": step1}

    layer = setup["run"]("layer", {**cfg.model_dump(), "steps": 1, "scope": "layer"})
    by_layer = {str(k): v for k, v in _lists(select(s, Ablation(), "ff", 0.125, "layer")).items()}
    assert _indices(layer.run_dir) == {"ff": by_layer}
    assert layer.manifest["pruned_neurons_per_layer"] == {"ff": [8, 8], "attn": [0, 0]}


def test_run_is_deterministic(setup):
    mc = {"ff_frac": 0.1, "attn_frac": 0.05, "steps": 2}
    a = setup["run"]("a", mc)
    b = setup["run"]("b", mc)
    for name in ("pruned_neurons.json", "metrics.json"):
        assert (a.run_dir / name).read_bytes() == (b.run_dir / name).read_bytes(), name
    assert a.manifest["model"]["sha256_after"] == b.manifest["model"]["sha256_after"]
    assert a.manifest["model"]["files"]["model.safetensors"] == b.manifest["model"]["files"]["model.safetensors"]
    c = setup["run"]("c", mc, seed=1)  # another seed draws other chunks
    assert c.manifest["data"]["forget"]["sha256_tokens"] != a.manifest["data"]["forget"]["sha256_tokens"]


# A budget that never binds: the run records the validation metrics of every step, from which the tests pick
# thresholds (random tiny models are near chance, so thresholds must come from what a run actually showed).
WATCH = {"metric": "top1", "max_retain_drop": 0.999}


def _validation_drop(step: dict, key: str) -> tuple[str, float]:
    metric = max(METRICS, key=lambda m: step["validation"][key][m])
    return metric, step["validation"][key][metric]


def test_budget_reverts_step(setup):
    mc = {"ff_frac": 0.25, "attn_frac": 0.25, "steps": 3}
    free = setup["run"]("free", mc, stop=WATCH)
    assert len(free.metrics["steps"]) == 3 and free.metrics["stop_reason"] == "completed 3 steps"
    assert free.metrics["validation_before"]["retain"]["n_tokens"] > 0
    metric, drop1 = _validation_drop(free.metrics["steps"][0], "retain_drop")
    assert drop1 > 0, "pruning a quarter of all neurons should hurt some retain metric"

    tight = setup["run"]("tight", mc, stop={"metric": metric, "max_retain_drop": drop1 / 2})
    steps = tight.metrics["steps"]
    assert len(steps) == 1 and steps[0]["reverted"] is True
    assert steps[0]["retain_drop"] == free.metrics["steps"][0]["retain_drop"]
    assert steps[0]["validation"] == free.metrics["steps"][0]["validation"]
    assert tight.metrics["stop_reason"].startswith("budget") and tight.metrics["stop_reason"].endswith(
        "step 1 reverted"
    )
    assert tight.manifest["pruned_total"] == {"ff": 0, "attn": 0}
    assert json.loads((tight.run_dir / "pruned_neurons.json").read_text()) == {}
    assert {k: v for k, v in tight.after.items() if not k.endswith("_drop")} == tight.before  # nothing changed
    assert all(v == 0.0 for v in tight.after["utility_drop"].values())
    assert tight.manifest["model"]["sha256_after"] == tight.manifest["model"]["sha256_before"]
    assert state_dict_hash(_plain(tight.run_dir / "model")) == state_dict_hash(_plain(setup["ckpt"]))

    # a budget above every step's validation drop never stops the run
    worst = max(s["validation"]["retain_drop"][metric] for s in free.metrics["steps"])
    loose = setup["run"]("loose", mc, stop={"metric": metric, "max_retain_drop": min(max(worst, 0) + 0.01, 0.99)})
    assert [s["retain_drop"] for s in loose.metrics["steps"]] == [s["retain_drop"] for s in free.metrics["steps"]]
    assert loose.metrics["stop_reason"] == "completed 3 steps"


def test_budget_needs_validation_chunks(setup):
    with pytest.raises(unlearn.UnlearnError, match="val_tokens"):
        setup["run"]("noval", {"ff_frac": 0.25}, val_tokens=0, stop={"max_retain_drop": 0.1})
    with pytest.raises(unlearn.UnlearnError, match="unknown stop metric"):
        setup["run"]("badmetric", {"ff_frac": 0.25}, stop={"metric": "loss", "max_retain_drop": 0.1})
    assert not setup["out"].exists() or not any(setup["out"].iterdir())


def test_forget_target_stops_run(setup):
    mc = {"ff_frac": 0.25, "attn_frac": 0.25, "steps": 3}
    free = setup["run"]("free", mc, stop=WATCH)
    for step in free.metrics["steps"]:
        metric, drop = _validation_drop(step, "forget_drop")
        if drop > 0:
            break
    else:
        raise AssertionError("no step has a positive validation forget drop: the stopping test needs one")
    step = step["step"]
    hit = setup["run"]("hit", mc, stop={"metric": metric, "forget_target_drop": drop})
    steps = hit.metrics["steps"]
    assert len(steps) == step and not any(s.get("reverted") for s in steps)
    assert hit.metrics["stop_reason"].startswith("target")
    assert hit.manifest["pruned_total"] == free.metrics["steps"][step - 1]["pruned_total"]
    assert steps[-1]["validation"]["forget_drop"][metric] >= drop
    _reproduce(setup, hit.run_dir / "model", hit)


def test_run_stops_when_nothing_left(setup):
    result = setup["run"]("all", {"ff_frac": 0.9, "steps": 3})
    steps = result.metrics["steps"]
    assert [s["pruned_this_step"]["ff"] for s in steps] == [round(0.9 * 128), 128 - round(0.9 * 128)]
    assert result.metrics["stop_reason"] == "no neurons left to prune"
    assert result.manifest["pruned_neurons_per_layer"] == {"ff": [64, 64], "attn": [0, 0]}
    _reproduce(setup, result.run_dir / "model", result)


def test_mean_ablation_run_saves_loadable_model(setup):
    mean = setup["run"]("mean", {"ff_frac": 0.1, "attn_frac": 0.1, "steps": 2, "ablation": "mean"})
    zero = setup["run"]("zero", {"ff_frac": 0.1, "attn_frac": 0.1, "steps": 2})
    config = json.loads((mean.run_dir / "model" / "config.json").read_text())
    assert config["mlp_bias"] is True and config["attention_bias"] is True
    model = _reproduce(setup, mean.run_dir / "model", mean)
    assert state_dict_hash(model) == mean.manifest["model"]["sha256_after"]
    assert model.model.layers[0].mlp.down_proj.bias.abs().max() > 0
    assert torch.all(model.model.layers[0].mlp.up_proj.bias == 0)
    # same neurons are picked at step 1 (retain means do not affect the first selection); the metrics differ
    assert mean.metrics["steps"][0]["pruned_this_step"] == zero.metrics["steps"][0]["pruned_this_step"]
    assert mean.after["retain"]["loss"] != zero.after["retain"]["loss"]


def test_mean_ablation_fills_with_retain_means(setup):
    """One mean-ablation step: the new output-projection biases are W[:, pruned] @ retain_mean[pruned]."""
    result = setup["run"]("mean1", {"ff_frac": 0.1, "attn_frac": 0.1, "steps": 1, "ablation": "mean"})
    pruned = json.loads((result.run_dir / "pruned_neurons.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(setup["ckpt"])
    original = _plain(setup["ckpt"])
    adapter = adapter_for(original)
    retain = collect_statistics(original, adapter, _corpus(setup["prose"], tokenizer).stats, batch_size=BATCH)
    forget = collect_statistics(original, adapter, _corpus(setup["code"], tokenizer).stats, batch_size=BATCH)
    model = _plain(result.run_dir / "model")
    for kind in ("ff", "attn"):
        for layer in range(2):
            idx = pruned[kind].get(str(layer), [])
            w = adapter.out_proj(original, layer, kind).weight.double()
            bias = adapter.out_proj(model, layer, kind).bias.double()
            expected = w[:, idx] @ retain[(kind, layer)].mean[idx]
            torch.testing.assert_close(bias, expected, rtol=1e-4, atol=1e-6)
            if idx:
                assert not torch.allclose(bias, w[:, idx] @ forget[(kind, layer)].mean[idx], rtol=1e-4, atol=1e-6)


def test_mean_ablation_unsupported_family_fails_early(setup, tiny_checkpoint):
    with pytest.raises(UnlearnError, match="mean ablation needs a bias on the MLP output projection"):
        setup["run"]("m", {"ff_frac": 0.1, "ablation": "mean"}, model=str(tiny_checkpoint("mistral")))
    assert not setup["out"].exists() or list(setup["out"].iterdir()) == []


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_prune_then_heal_keeps_pruned_neurons_pruned(setup, ablation):
    """Healing trains on retain with the pruned neurons held at their ablated value: their output-projection
    columns get no gradient (zero ablation: they stay exactly 0 in the saved model), the same neurons are
    pruned as without healing, and the retain loss goes down from where pruning left it."""
    mc = {"ff_frac": 0.2, "steps": 2, "ablation": ablation, "heal_target": "nll", "heal_floor_scale": 1}
    plain = setup["run"]("plain-" + ablation, mc)
    healed = setup["run"]("healed-" + ablation, {**mc, "heal_steps": 8, "heal_lr": 3e-3})
    # the same neurons (the tokens they promote are read through each saved model's own final norm)
    assert _indices(healed.run_dir) == _indices(plain.run_dir)
    assert len(healed.metrics["train_log"]) == 8 and "healed 8 steps" in healed.metrics["stop_reason"]
    before_heal = healed.manifest["method_facts"]["before_heal"]
    assert before_heal["retain"]["loss"] == pytest.approx(plain.after["retain"]["loss"])
    assert healed.after["retain"]["loss"] < before_heal["retain"]["loss"]
    model = _plain(healed.run_dir / "model")
    down = model.model.layers[0].mlp.down_proj.weight
    original = _plain(setup["ckpt"]).model.layers[0].mlp.down_proj.weight
    pruned = json.loads((healed.run_dir / "pruned_neurons.json").read_text())["ff"].get("0", [])
    kept = [i for i in range(down.shape[1]) if i not in pruned]
    assert pruned and not torch.equal(down[:, kept], original[:, kept])  # the other weights trained
    if ablation == "zero":
        assert torch.count_nonzero(down[:, pruned]) == 0


def test_undo_noises_then_distils_the_healed_model(setup):
    """UNDO: the healed model is the teacher of a copy shrunk towards a fresh initialisation; the distillation
    steps follow the healing ones in the log, bring the KL to the teacher down, and the pruned neurons stay dead
    (their output columns and the gate and up rows that compute them are 0 in the saved model)."""
    # a teacher far from uniform (healed towards the retain text's tokens), so the KL is well above its noise
    mc = {"ff_frac": 0.2, "steps": 1, "heal_steps": 8, "heal_lr": 3e-3, "heal_target": "nll", "heal_forget_weight": 0}
    healed = setup["run"]("healed", mc)
    undone = setup["run"]("undone", {**mc, "undo_alpha": 0.5, "undo_steps": 8, "undo_lr": 1e-3})
    assert "UNDO" in undone.metrics["stop_reason"]
    log = undone.metrics["train_log"]
    assert [r.get("phase") for r in log] == [None] * 8 + ["undo"] * 8 and [r["step"] for r in log] == list(range(1, 17))
    assert log[-1]["loss"] < log[8]["loss"] / 2
    model, other = _plain(undone.run_dir / "model"), _plain(healed.run_dir / "model")
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, other.model.layers[0].mlp.up_proj.weight)
    pruned = json.loads((undone.run_dir / "pruned_neurons.json").read_text())["ff"]
    assert pruned and _indices(undone.run_dir) == _indices(healed.run_dir)
    for layer, idx in pruned.items():
        mlp = model.model.layers[int(layer)].mlp
        for w in (mlp.down_proj.weight[:, idx], mlp.gate_proj.weight[idx], mlp.up_proj.weight[idx]):
            assert torch.count_nonzero(w) == 0
    with pytest.raises(ValidationError, match="heal_steps"):
        SelectivePruningConfig(undo_alpha=0.1, heal_steps=0)


def test_undo_noise_mixes_towards_a_fresh_initialisation():
    from conftest import tiny_model

    from unlearn.methods.undo import noised

    def mixed(alpha):
        model = tiny_model("llama")
        noised(model, alpha, seed=3, parameters=list(model.parameters()))
        return dict(model.named_parameters())

    base, fresh, half = dict(tiny_model("llama").named_parameters()), mixed(1.0), mixed(0.5)
    for name, p in mixed(0.0).items():
        assert torch.equal(p, base[name])
        torch.testing.assert_close(half[name], 0.5 * base[name] + 0.5 * fresh[name])
    assert any(not torch.equal(fresh[n], base[n]) for n in base)


def test_heal_freezes_the_vocabulary_matrices_and_recomputes_activations(setup):
    """By default healing trains the body only (the token embeddings and the LM head keep their weights) and
    recomputes activations in the backward pass: the same training as keeping them; heal_embeddings trains all."""
    mc = {"ff_frac": 0.2, "steps": 1, "heal_steps": 4, "heal_lr": 3e-3}
    recomputed = setup["run"]("heal-recomputed", mc)
    kept = setup["run"]("heal-kept", {**mc, "heal_checkpointing": False})
    for a, b in zip(recomputed.metrics["train_log"], kept.metrics["train_log"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    original, healed = _plain(setup["ckpt"]), _plain(recomputed.run_dir / "model")
    for get in ("get_input_embeddings", "get_output_embeddings"):
        assert torch.equal(getattr(healed, get)().weight, getattr(original, get)().weight)
    up = healed.model.layers[0].mlp.up_proj.weight
    assert not torch.equal(up, original.model.layers[0].mlp.up_proj.weight)  # the body trained
    everything = _plain(setup["run"]("heal-embeddings", {**mc, "heal_embeddings": True}).run_dir / "model")
    assert not torch.equal(everything.get_input_embeddings().weight, original.get_input_embeddings().weight)


def test_heal_forget_floor_keeps_forget_loss_up(setup):
    """With heal_forget_weight the healing loss is retain NLL + w * max(0, floor - forget NLL), floor = the pruned
    model's forget NLL on the statistics chunks: the hinge is silent above the floor, pushes back below it, and
    the healed model keeps the forget data less likely than healing on retain alone leaves it."""
    mc = {"ff_frac": 0.2, "steps": 1, "heal_steps": 12, "heal_lr": 3e-3, "heal_target": "nll", "heal_floor_scale": 1}
    plain = setup["run"]("heal-plain", {**mc, "heal_forget_weight": 0.0})
    floored = setup["run"]("heal-floor", {**mc, "heal_forget_weight": 5.0})
    assert _indices(floored.run_dir) == _indices(plain.run_dir)  # the same neurons (read through each own model)
    floor = floored.manifest["method_facts"]["heal_forget_floor"]
    assert "forget floor" in floored.metrics["stop_reason"]
    # the floor is the pruned model's forget loss (its statistics chunks are the run's forget training data)
    before = floored.manifest["method_facts"]["before_heal"]
    assert floor == pytest.approx(before["forget"]["loss"], rel=0.2)
    log = floored.metrics["train_log"]
    assert len(log) == 12 and all("forget_loss" in e and "retain_loss" in e for e in log)
    for e in log:
        expected = e["retain_loss"] + 5.0 * max(0.0, floor - e["forget_loss"])
        assert e["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert any(e["forget_loss"] < floor for e in log)  # healing pulled the forget loss down, the hinge acted
    assert floored.after["forget"]["loss"] > plain.after["forget"]["loss"]
    assert "heal_forget_floor" not in plain.manifest["method_facts"]


def test_heal_by_distillation_and_a_raised_floor(setup):
    """heal_target kl fits KL(original ‖ model) on the retain chunks: non-negative, and healing lowers it;
    heal_floor_scale raises the forget floor above the pruned model's forget NLL, and the hinge then pushes the
    forget loss further up than a floor at the pruned level does."""
    mc = {"ff_frac": 0.2, "steps": 1, "heal_steps": 6, "heal_lr": 3e-3, "heal_forget_weight": 5.0}
    kl = setup["run"]("heal-kl", {**mc, "heal_target": "kl", "heal_floor_scale": 1.0})
    assert all(e["retain_loss"] >= 0 for e in kl.metrics["train_log"])
    # distillation stays near the original's predictions where next-token training moves away from them
    free = {**mc, "heal_forget_weight": 0.0, "heal_floor_scale": 1.0}
    by_kl, by_nll = (setup["run"](f"free-{t}", {**free, "heal_target": t}) for t in ("kl", "nll"))
    moved = [abs(r.after["retain"]["loss"] - r.before["retain"]["loss"]) for r in (by_kl, by_nll)]
    assert moved[0] < moved[1]
    raised = setup["run"]("heal-raised", {**mc, "heal_target": "kl", "heal_floor_scale": 2.0})
    facts = raised.manifest["method_facts"]
    assert facts["heal_forget_floor"] == pytest.approx(2.0 * kl.manifest["method_facts"]["heal_forget_floor"])
    assert all(e["forget_loss"] < facts["heal_forget_floor"] for e in raised.metrics["train_log"][:1])
    assert raised.after["forget"]["loss"] > kl.after["forget"]["loss"]


def test_heal_with_lora_distils_from_the_unpruned_weights(setup):
    """heal_lora trains LoRA adapters and distils from the same weights run with the adapters and the ablation
    hooks off (no copy of the model): its first step's KL is the full heal's (same pruned start, same teacher),
    the merged adapters change the kept weights, and the saved model keeps the pruned columns at 0."""
    mc = {"ff_frac": 0.2, "steps": 1, "heal_steps": 4, "heal_lr": 3e-3, "heal_forget_weight": 0.0}
    full = setup["run"]("heal-full", mc)
    lora = setup["run"]("heal-lora", {**mc, "heal_lora": "r=4"})
    log = lora.metrics["train_log"]
    assert log[0]["loss"] > 0
    assert log[0]["loss"] == pytest.approx(full.metrics["train_log"][0]["loss"], rel=1e-4)
    model, original = _plain(lora.run_dir / "model"), _plain(setup["ckpt"])
    pruned = json.loads((lora.run_dir / "pruned_neurons.json").read_text())["ff"]
    for layer, idx in pruned.items():
        down = model.model.layers[int(layer)].mlp.down_proj.weight
        kept = [i for i in range(down.shape[1]) if i not in idx]
        assert torch.count_nonzero(down[:, idx]) == 0
        assert not torch.equal(down[:, kept], original.model.layers[int(layer)].mlp.down_proj.weight[:, kept])
    _reproduce(setup, lora.run_dir / "model", lora)


def test_ablation_reaches_the_lora_path(tiny_checkpoint):
    """Hooks put on a peft model's wrapped output projections ablate the input of the adapter too: the LoRA model
    under ablation computes what its merged weights compute with the pruned columns removed."""
    from unlearn.methods.training import wrap_lora
    from unlearn.models.hooks import ablated

    model = _plain(tiny_checkpoint("llama"))
    adapter = adapter_for(model)
    ablation = Ablation()
    n = adapter.n_neurons(model, "ff")
    ablation.add(("ff", 0), torch.tensor([1, 5, 7]), torch.zeros(3), n)
    peft_model = wrap_lora(model, "r=4")
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # a trained adapter (peft starts B at 0)
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.no_grad(), ablated(peft_model.get_base_model(), adapter, ablation):
        hooked = peft_model(input_ids=ids).logits
    merged = peft_model.merge_and_unload()
    merged.model.layers[0].mlp.down_proj.weight.data[:, [1, 5, 7]] = 0
    with torch.no_grad():
        folded = merged(input_ids=ids).logits
    torch.testing.assert_close(hooked, folded, rtol=1e-4, atol=1e-5)


def test_heal_tokens_extend_the_statistics_chunks(setup):
    """heal_tokens heals on the retain statistics chunks followed by the chunks after them in the same stream:
    the statistics chunks come first, nothing is taken from the evaluation or validation chunks."""
    from unlearn.data.chunking import tokens_sha256

    run = setup["run"]("heal-tokens", {"ff_frac": 0.2, "steps": 1, "heal_steps": 2, "heal_tokens": 3 * STATS_TOKENS})
    data = run.manifest["method_facts"]["heal_data"]
    assert data["n_tokens"] >= 3 * STATS_TOKENS
    tokenizer = AutoTokenizer.from_pretrained(setup["ckpt"])
    small = _corpus(setup["prose"], tokenizer)
    big = build_corpus(
        "x",
        DataSpec(str(setup["prose"])),
        tokenizer,
        seq_len=SEQ_LEN,
        eval_tokens=EVAL_TOKENS,
        stats_tokens=3 * STATS_TOKENS,
        val_tokens=VAL_TOKENS,
        seed=0,
    )
    assert data["sha256"] == tokens_sha256(big.stats.input_ids)
    assert torch.equal(big.stats.input_ids[: len(small.stats.input_ids)], small.stats.input_ids)
    assert torch.equal(big.eval.input_ids, small.eval.input_ids) and torch.equal(big.val.input_ids, small.val.input_ids)
    stats_only = setup["run"]("heal-tokens-0", {"ff_frac": 0.2, "steps": 1, "heal_steps": 2, "heal_tokens": 0})
    assert stats_only.manifest["method_facts"]["heal_data"]["sha256"] == tokens_sha256(small.stats.input_ids)
    # more than the corpus holds: every chunk after the evaluation and validation chunks, and no error
    everything = setup["run"]("heal-all", {"ff_frac": 0.2, "steps": 1, "heal_steps": 2, "heal_tokens": 10_000_000})
    n_all = len(tokenizer(setup["prose"].read_text()).input_ids)
    n_heal = everything.manifest["method_facts"]["heal_data"]["n_tokens"]
    assert 3 * STATS_TOKENS <= n_heal <= n_all - EVAL_TOKENS - VAL_TOKENS


def test_presets_set_the_method_and_explicit_settings_win(setup):
    from unlearn.methods.presets import PRESETS

    run = setup["run"]("preset", {"steps": 1, "heal_steps": 2, "heal_tokens": 0, "ff_frac": 0.2}, preset="prune-heal")
    mc = run.config.method_config
    assert run.config.preset == "prune-heal" and run.config.method == "selective-pruning"
    assert mc["steps"] == 1 and mc["heal_steps"] == 2 and mc["ff_frac"] == 0.2  # given explicitly
    assert mc["heal_lr"] == PRESETS["prune-heal"]["method_config"]["heal_lr"]  # from the preset
    with pytest.raises(unlearn.UnlearnError, match="unknown preset"):
        setup["run"]("nope", {"steps": 1}, preset="nope")
    with pytest.raises(unlearn.UnlearnError, match="drop --method npo"):
        unlearn.run({"preset": "paper", "method": "npo"})


def test_eval_source_reports_on_held_out_files(setup, tmp_path):
    """With eval_source the reported chunks come from other files than the statistics."""
    held = tmp_path / "held.txt"
    held.write_text(setup["prose"].read_text(encoding="utf-8")[::-1], encoding="utf-8")  # other text
    run = setup["run"]("held", {"steps": 1}, retain={"source": str(setup["prose"]), "eval_source": str(held)})
    plain = setup["run"]("plain", {"steps": 1})
    assert run.manifest["data"]["retain"]["eval_source"] == str(held)
    assert run.before["retain"] != plain.before["retain"] and run.before["forget"] == plain.before["forget"]
    with pytest.raises(unlearn.UnlearnError, match="data not found"):
        setup["run"]("missing", {"steps": 1}, retain={"source": str(setup["prose"]), "eval_source": "nope.txt"})


def test_random_pruning_control_prunes_as_many_neurons_at_random_and_repeats_with_the_seed(run_tiny):
    """The reviewers' control: the same number of neurons per step, chosen at random (seeded), no statistics."""
    import json

    cfg = {"ff_frac": 0.1, "attn_frac": 0.0, "steps": 2, "heal_steps": 0}
    rms = run_tiny("rms", "selective-pruning", cfg)
    rnd = run_tiny("rnd", "selective-pruning", {**cfg, "importance": "random"})
    again = run_tiny("rnd2", "selective-pruning", {**cfg, "importance": "random"})
    other = run_tiny("rnd3", "selective-pruning", {**cfg, "importance": "random"}, seed=1)
    mean = run_tiny("rndm", "selective-pruning", {**cfg, "importance": "random", "ablation": "mean"})

    def pruned(run):
        return json.loads((run.run_dir / "pruned_neurons.json").read_text())

    assert rnd.manifest["pruned_total"] == rms.manifest["pruned_total"] == mean.manifest["pruned_total"]
    assert [s["pruned_this_step"] for s in rnd.metrics["steps"]] == [
        s["pruned_this_step"] for s in rms.metrics["steps"]
    ]
    assert pruned(rnd) == pruned(again) == pruned(mean) and pruned(rnd) != pruned(rms) and pruned(rnd) != pruned(other)


def test_random_control_resumes_to_the_uninterrupted_draws(tmp_path, tiny_checkpoint, text_files, monkeypatch):
    import json

    import unlearn
    from conftest import ctrl_c_at_evaluation, small_run_config

    code, prose = text_files
    cfg = small_run_config(tiny_checkpoint("llama"), code, prose, tmp_path / "runs")
    cfg["method_config"] = {"ff_frac": 0.05, "attn_frac": 0.0, "steps": 4, "importance": "random", "heal_steps": 0}
    whole = unlearn.run({**cfg, "name": "whole"}).run_dir
    with monkeypatch.context() as mp:
        ctrl_c_at_evaluation(mp, 4)  # before, step 1, step 2, then Ctrl-C during step 3
        with pytest.raises(KeyboardInterrupt):
            unlearn.run({**cfg, "name": "cut"})
    resumed = unlearn.run(resume=tmp_path / "runs" / "cut").run_dir
    read = lambda d: json.loads((d / "pruned_neurons.json").read_text())  # noqa: E731
    assert read(resumed) == read(whole)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_promoted_tokens_read_each_pruned_neuron_through_the_unembedding(family, tokenizer):
    from conftest import tiny_model
    from unlearn.models.adapters import adapter_for
    from unlearn.models.inspect import promoted_tokens

    model = tiny_model(family)
    adapter = adapter_for(model)
    got = promoted_tokens(model, adapter, tokenizer, {1: [3, 7]}, k=5)
    weight = adapter.out_proj(model, 1, "ff").weight
    for i in (3, 7):
        column = weight[i] if adapter.conv1d else weight[:, i]  # the neuron's write vector
        logits = adapter.unembed(model, column[None])[0]
        assert got[1][i] == [tokenizer.decode([t]) for t in logits.topk(5).indices.tolist()]


def test_a_run_records_and_reports_what_the_pruned_neurons_promote(run_tiny):
    import json

    run = run_tiny("p", "selective-pruning", {"ff_frac": 0.1, "attn_frac": 0.0, "steps": 1, "heal_steps": 0})
    pruned = json.loads((run.run_dir / "pruned_neurons.json").read_text())
    promotes = pruned["promotes"]["ff"]
    assert {layer: sorted(map(int, neurons)) for layer, neurons in promotes.items()} == pruned["ff"]
    assert all(len(tokens) == 10 for neurons in promotes.values() for tokens in neurons.values())
    assert "What was pruned: these neurons promote" in (run.run_dir / "report.md").read_text()


def _indices(run_dir) -> dict:
    """pruned_neurons.json without the tokens the neurons promote: the pruned indices per kind and layer."""
    import json

    data = json.loads((run_dir / "pruned_neurons.json").read_text())
    return {k: v for k, v in data.items() if k != "promotes"}
