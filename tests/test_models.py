"""Architecture adapters, hooks (statistics + ablation), weight folding, saving and loading.

Every test builds tiny random models in memory (conftest.tiny_model); nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import FAMILIES, MOE_FAMILIES, tiny_model
from transformers import AutoModelForCausalLM

from unlearn.data.chunking import TokenSplit
from unlearn.errors import UnlearnError
from unlearn.models.adapters import ADAPTERS, adapter_for, has_bias, supported, weight_columns
from unlearn.models.hooks import Ablation, NeuronStats, ablated, collect_statistics, hook_points
from unlearn.models.load import (
    DTYPES,
    load_model,
    resolve_device,
    resolve_dtype,
    resolve_source,
    state_dict_hash,
)
from unlearn.models.save import check_foldable, file_sha256, fold, needs_bias, save_checkpoint

SEQ = 12


def _ids(n: int = 2, seq: int = SEQ, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, 380, (n, seq), generator=g)


@torch.inference_mode()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits.float()


def _make_ablation(model, adapter, *, mean: bool, kinds=("ff", "attn"), seed: int = 0) -> Ablation:
    """Prune a different handful of neurons in every layer; fill with 0 or with random non-zero values."""
    g = torch.Generator().manual_seed(seed)
    ablation = Ablation()
    for kind in kinds:
        n = adapter.n_neurons(model, kind)
        for layer in range(adapter.n_layers(model)):
            idx = torch.randperm(n, generator=g)[: max(3, n // 8)]
            values = torch.randn(len(idx), generator=g) if mean else torch.zeros(len(idx))
            ablation.add((kind, layer), idx, values, n)
    return ablation


def _reload_plain(path: Path):
    """Load with stock transformers only (no unlearn code involved)."""
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _assert_close(a, b, atol=1e-5):
    assert a.shape == b.shape
    diff = (a - b).abs().max().item()
    assert diff <= atol, f"max abs diff {diff} > {atol}"


# ----------------------------------------------------------------------------------------------------------------
# adapters


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_finds_output_projections(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    assert adapter.family == family
    assert adapter.n_layers(model) == 2
    ff_width = 4 * 32 if family == "gpt2" else 64  # gpt2's n_inner defaults to 4 * n_embd
    assert adapter.n_neurons(model, "ff") == ff_width
    assert adapter.n_neurons(model, "attn") == 32
    for layer in range(2):
        for kind in ("ff", "attn"):
            mod = adapter.out_proj(model, layer, kind)
            cols = weight_columns(mod, adapter.conv1d)
            assert cols.shape == (32, adapter.n_neurons(model, kind))  # [out = hidden, in = neurons]
    assert adapter.out_proj(model, 0, "ff") is not adapter.out_proj(model, 1, "ff")
    assert adapter.out_proj(model, 0, "ff") is not adapter.out_proj(model, 0, "attn")


def test_adapter_for_unsupported_model_lists_supported_types():
    from transformers import AutoConfig

    bloom = AutoModelForCausalLM.from_config(
        AutoConfig.for_model("bloom", vocab_size=50, hidden_size=16, n_layer=1, n_head=2)
    )
    for model in (bloom, SimpleNamespace(config=SimpleNamespace(model_type="foo")), torch.nn.Linear(2, 2)):
        with pytest.raises(UnlearnError) as info:
            adapter_for(model)
        msg = str(info.value)
        assert "unsupported architecture" in msg
        for name in supported():
            assert name in msg
    assert "'bloom'" in str(pytest.raises(UnlearnError, adapter_for, bloom).value)
    # the causal LMs, dense and mixture-of-experts, and the ViT classifier
    assert supported() == sorted([*FAMILIES, *MOE_FAMILIES, "vit"]) == sorted(ADAPTERS)


# ----------------------------------------------------------------------------------------------------------------
# zero ablation: hooks == folded weights == saved checkpoint loaded by stock transformers


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_ablation_hooks_fold_and_save_agree(family, tokenizer, tmp_path):
    model = tiny_model(family)
    adapter = adapter_for(model)
    ablation = _make_ablation(model, adapter, mean=False)
    assert needs_bias(ablation) == set()
    ids = _ids()

    base = _logits(model, ids)
    with ablated(model, adapter, ablation):
        hooked = _logits(model, ids)
    _assert_close(_logits(model, ids), base, atol=0)  # hooks gone
    assert (hooked - base).abs().max() > 1e-4, "pruning did not change the logits"

    work = copy.deepcopy(model)
    folded = fold(work, adapter, ablation)
    assert folded is work  # zero ablation never needs a rebuild
    _assert_close(_logits(folded, ids), hooked)
    for (kind, layer), mask in ablation.pruned.items():
        cols = weight_columns(adapter.out_proj(folded, layer, kind), adapter.conv1d)
        assert torch.all(cols[:, mask] == 0)
        orig = weight_columns(adapter.out_proj(model, layer, kind), adapter.conv1d)
        assert torch.all(cols[:, ~mask] == orig[:, ~mask])

    files = save_checkpoint(folded, tokenizer, tmp_path / "ckpt")
    assert "config.json" in files and "model.safetensors" in files
    assert files["model.safetensors"] == file_sha256(tmp_path / "ckpt" / "model.safetensors")
    reloaded = _reload_plain(tmp_path / "ckpt")
    assert type(reloaded) is type(model)
    _assert_close(_logits(reloaded, ids), hooked)
    assert state_dict_hash(reloaded) == state_dict_hash(folded)


@pytest.mark.parametrize("family", ["llama", "gpt2", "phi3"])
def test_zero_fold_changes_only_the_pruned_neurons(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    ablation = _make_ablation(model, adapter, mean=False, kinds=("ff",))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold(copy.deepcopy(model), adapter, ablation)
    after = folded.state_dict()
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # the output columns of the pruned neurons and the rows that compute them, nothing else
    names = {"gpt2": ("mlp.c_proj.weight", "mlp.c_fc.weight", "mlp.c_fc.bias"),
             "phi3": ("mlp.down_proj.weight", "mlp.gate_up_proj.weight")}  # fmt: skip
    ff_keys = names.get(family, ("mlp.down_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight"))
    assert changed == {k for k in before if k.endswith(ff_keys)}
    for (_, layer), mask in ablation.pruned.items():
        width = mask.numel()
        for proj in adapter.ff_inputs(folded, layer):
            rows = weight_columns(proj, adapter.conv1d)
            for k in range(rows.shape[0] // width):
                assert torch.all(rows[k * width : (k + 1) * width][mask] == 0)
                assert torch.all(rows[k * width : (k + 1) * width][~mask] != 0)
    # the input model of a fold is the working copy; the original stays untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "opt"])
def test_fine_tuning_cannot_revive_a_folded_neuron(family):
    """Zeroing only the output column leaves the neuron computing its feature, and the first gradient step
    writes the column back; with its input rows zeroed as well every gradient through it is zero."""
    torch.manual_seed(0)
    model = tiny_model(family)
    adapter = adapter_for(model)
    ablation = _make_ablation(model, adapter, mean=False, kinds=("ff",))
    folded = fold(copy.deepcopy(model), adapter, ablation).train().requires_grad_(True)
    opt = torch.optim.AdamW(folded.parameters(), lr=1e-2, weight_decay=0.1)
    ids = _ids()
    for _ in range(5):
        opt.zero_grad()
        folded(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    for (_, layer), mask in ablation.pruned.items():
        out = weight_columns(adapter.out_proj(folded, layer, "ff"), adapter.conv1d)
        assert torch.all(out[:, mask] == 0) and torch.any(out[:, ~mask] != 0)
        for proj in adapter.ff_inputs(folded, layer):
            assert torch.all(weight_columns(proj, adapter.conv1d)[mask] == 0)


def test_fold_without_ablation_is_a_no_op():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    h = state_dict_hash(model)
    assert fold(model, adapter, Ablation()) is model
    assert state_dict_hash(model) == h


# ----------------------------------------------------------------------------------------------------------------
# mean ablation

STORABLE = [
    ("llama", {}, ("ff", "attn")),
    ("llama", {}, ("ff",)),
    ("gpt2", {}, ("ff", "attn")),
    ("gpt_neox", {}, ("ff", "attn")),
    ("opt", {}, ("ff", "attn")),
    ("opt", {"enable_bias": False}, ("ff", "attn")),
    ("gemma", {}, ("attn",)),
]


@pytest.mark.parametrize("family,extra,kinds", STORABLE, ids=lambda v: str(v))
def test_mean_ablation_hooks_fold_and_save_agree(family, extra, kinds, tokenizer, tmp_path):
    model = tiny_model(family, **extra)
    adapter = adapter_for(model)
    ablation = _make_ablation(model, adapter, mean=True, kinds=kinds)
    assert needs_bias(ablation) == set(kinds)
    check_foldable(model, adapter, kinds)  # no error
    ids = _ids()

    base = _logits(model, ids)
    with ablated(model, adapter, ablation):
        hooked = _logits(model, ids)
    assert (hooked - base).abs().max() > 1e-4

    # the zero-ablated model differs: the fill values really matter
    zero = Ablation(ablation.pruned, {k: torch.zeros_like(v) for k, v in ablation.fill.items()})
    with ablated(model, adapter, zero):
        assert (_logits(model, ids) - hooked).abs().max() > 1e-4

    folded = fold(copy.deepcopy(model), adapter, ablation)
    _assert_close(_logits(folded, ids), hooked)
    for kind in kinds:
        assert has_bias(adapter.out_proj(folded, 0, kind))

    save_checkpoint(folded, tokenizer, tmp_path / "ckpt")
    reloaded = _reload_plain(tmp_path / "ckpt")
    _assert_close(_logits(reloaded, ids), hooked)
    _assert_close(_logits(reloaded, ids), _logits(folded, ids), atol=0)


@pytest.mark.parametrize("kinds", [("ff", "attn"), ("ff",), ("attn",)])
def test_mean_fold_llama_turns_on_bias_flags_and_zeroes_new_biases(kinds, tokenizer, tmp_path):
    model = tiny_model("llama")
    assert not model.config.mlp_bias and not model.config.attention_bias
    adapter = adapter_for(model)
    ablation = _make_ablation(model, adapter, mean=True, kinds=kinds)
    original = {k: v.clone() for k, v in model.state_dict().items()}

    folded = fold(copy.deepcopy(model), adapter, ablation)
    assert folded.config.mlp_bias == ("ff" in kinds)
    assert folded.config.attention_bias == ("attn" in kinds)
    save_checkpoint(folded, tokenizer, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["mlp_bias"] is ("ff" in kinds)
    assert config["attention_bias"] is ("attn" in kinds)

    reloaded = _reload_plain(tmp_path / "ckpt")
    state = reloaded.state_dict()
    new_biases = sorted(set(state) - set(original))
    assert new_biases and all(k.endswith(".bias") for k in new_biases)
    expected_new = {"ff": ("gate_proj", "up_proj", "down_proj"), "attn": ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert {k.split(".")[-2] for k in new_biases} == {p for kind in kinds for p in expected_new[kind]}
    for key in new_biases:
        proj = key.split(".")[-2]
        if proj in ("down_proj", "o_proj"):
            layer = int(key.split(".")[2])
            kind = "ff" if proj == "down_proj" else "attn"
            mask, fill = ablation.pruned[(kind, layer)], ablation.fill[(kind, layer)]
            w = original[key.replace(".bias", ".weight")]
            expected = (w[:, mask].double() @ fill[mask].double()).float()
            torch.testing.assert_close(state[key], expected, rtol=1e-5, atol=1e-6)
            assert state[key].abs().max() > 0
        else:
            assert torch.all(state[key] == 0), f"{key} should be zero"
    # every pre-existing parameter is unchanged except the pruned weight columns and the rows computing them
    for key, value in original.items():
        if key.endswith(("down_proj.weight", "o_proj.weight")):
            continue
        if "ff" in kinds and key.endswith(("gate_proj.weight", "up_proj.weight")):
            layer = int(key.split(".")[2])
            mask = ablation.pruned[("ff", layer)]
            assert torch.all(state[key][mask] == 0) and torch.equal(state[key][~mask], value[~mask]), key
            continue
        assert torch.equal(state[key], value), key


NOT_STORABLE = [
    ("mistral", "ff"),
    ("mistral", "attn"),
    ("qwen2", "ff"),
    ("qwen2", "attn"),
    ("phi3", "ff"),
    ("phi3", "attn"),
    ("gemma", "ff"),
]


@pytest.mark.parametrize("family,kind", NOT_STORABLE)
def test_mean_ablation_not_storable_raises(family, kind):
    model = tiny_model(family)
    adapter = adapter_for(model)
    proj = "MLP" if kind == "ff" else "attention"
    with pytest.raises(UnlearnError, match=f"mean ablation needs a bias on the {proj} output projection.*'zero'"):
        check_foldable(model, adapter, [kind])
    ablation = _make_ablation(model, adapter, mean=True, kinds=(kind,))
    h = state_dict_hash(model)
    with pytest.raises(UnlearnError, match=family):
        fold(model, adapter, ablation)
    assert state_dict_hash(model) == h  # nothing was changed before the error
    # zero ablation of the same neurons is fine
    zero = Ablation(ablation.pruned, {k: torch.zeros_like(v) for k, v in ablation.fill.items()})
    fold(model, adapter, zero)


def test_check_foldable_accepts_existing_bias():
    # llama built with the flags on already has the biases: nothing to add
    model = tiny_model("llama", mlp_bias=True, attention_bias=True)
    adapter = adapter_for(model)
    check_foldable(model, adapter, ["ff", "attn"])
    ablation = _make_ablation(model, adapter, mean=True)
    ids = _ids()
    with ablated(model, adapter, ablation):
        hooked = _logits(model, ids)
    work = copy.deepcopy(model)
    folded = fold(work, adapter, ablation)
    assert folded is work  # no rebuild necessary
    _assert_close(_logits(folded, ids), hooked)


# ----------------------------------------------------------------------------------------------------------------
# ablated(): hooks are removed on exit


def test_ablated_removes_hooks_on_exit_and_on_error():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    ablation = _make_ablation(model, adapter, mean=True)
    ids = _ids()
    base = _logits(model, ids)
    n_hooks = lambda: sum(len(m._forward_pre_hooks) for m in model.modules())  # noqa: E731
    assert n_hooks() == 0

    with ablated(model, adapter, ablation) as m:
        assert m is model
        assert n_hooks() == 4
        hooked = _logits(model, ids)
    assert n_hooks() == 0
    assert not torch.allclose(hooked, base)
    assert torch.equal(_logits(model, ids), base)

    with pytest.raises(RuntimeError, match="boom"):
        with ablated(model, adapter, ablation):
            assert n_hooks() == 4
            raise RuntimeError("boom")
    assert n_hooks() == 0
    assert torch.equal(_logits(model, ids), base)


def test_ablated_skips_empty_masks_and_keeps_unpruned_neurons():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    ablation = Ablation()
    ablation.pruned[("ff", 0)] = torch.zeros(64, dtype=torch.bool)
    ablation.fill[("ff", 0)] = torch.ones(64)  # fill where not pruned must be ignored
    ids = _ids()
    base = _logits(model, ids)
    with ablated(model, adapter, ablation):
        assert sum(len(m._forward_pre_hooks) for m in model.modules()) == 0
        assert torch.equal(_logits(model, ids), base)

    # the hook computes keep * x + fill on exactly the pruned neurons
    seen = {}
    mod = adapter.out_proj(model, 1, "ff")
    ablation = Ablation()
    ablation.add(("ff", 1), torch.tensor([2, 5]), torch.tensor([0.5, -1.5]), 64)
    ablation.fill[("ff", 1)][7] = 9.0  # a stray fill on a kept neuron is masked out
    with ablated(model, adapter, ablation):
        handle = mod.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0].clone()))
        try:
            _logits(model, ids)
        finally:
            handle.remove()
    raw = {}
    handle = mod.register_forward_pre_hook(lambda _m, args: raw.setdefault("x", args[0].clone()))
    try:
        _logits(model, ids)
    finally:
        handle.remove()
    x, r = seen["x"], raw["x"]
    assert torch.all(x[..., 2] == 0.5) and torch.all(x[..., 5] == -1.5)
    keep = [i for i in range(64) if i not in (2, 5)]
    assert torch.equal(x[..., keep], r[..., keep])


def test_ablated_model_trains_after_inference_mode_forward():
    """An evaluation under inference mode, then training under the same hooks (prune-then-heal evaluates the
    pruned model, then heals it): the hook's cached casts must not leak inference tensors into autograd."""
    model = tiny_model("llama").requires_grad_(True)
    adapter = adapter_for(model)
    ablation = _make_ablation(model, adapter, mean=True)
    ids = _ids()
    with ablated(model, adapter, ablation):
        with torch.inference_mode():
            model(input_ids=ids)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# ----------------------------------------------------------------------------------------------------------------
# Ablation bookkeeping


def test_ablation_counts_indices_total_copy():
    a = Ablation()
    assert a.counts() == {"ff": [], "attn": []} and a.indices() == {} and a.total("ff") == 0
    assert a.counts(2) == {"ff": [0, 0], "attn": [0, 0]}
    a.add(("ff", 1), torch.tensor([5, 2]), torch.zeros(2), 8)
    a.add(("attn", 0), torch.tensor([0]), torch.tensor([0.25]), 4)
    a.add(("ff", 1), torch.tensor([2, 7]), torch.tensor([1.0, 3.0]), 8)  # 2 again: counted once, fill updated
    a.add(("ff", 3), torch.tensor([1]), torch.zeros(1), 8)

    assert a.counts() == {"ff": [0, 3, 0, 1], "attn": [1, 0, 0, 0]}
    assert a.counts(6) == {"ff": [0, 3, 0, 1, 0, 0], "attn": [1, 0, 0, 0, 0, 0]}
    assert a.indices() == {"attn": {0: [0]}, "ff": {1: [2, 5, 7], 3: [1]}}
    assert a.total("ff") == 4 and a.total("attn") == 1
    assert a.pruned[("ff", 1)].dtype == torch.bool and a.pruned[("ff", 1)].shape == (8,)
    assert a.fill[("ff", 1)].tolist() == [0, 0, 1.0, 0, 0, 0, 0, 3.0]
    assert a.fill[("attn", 0)].tolist() == [0.25, 0, 0, 0]

    b = a.copy()
    assert b.indices() == a.indices()
    b.add(("ff", 1), torch.tensor([0]), torch.tensor([4.0]), 8)
    b.fill[("attn", 0)][0] = 9.0
    assert a.indices()["ff"][1] == [2, 5, 7]  # deep copy: the original is unchanged
    assert a.fill[("attn", 0)][0] == 0.25
    assert b.total("ff") == 5

    # json round trip (what pruned_neurons.json stores: integer layer keys become strings)
    assert json.loads(json.dumps(a.indices())) == {"attn": {"0": [0]}, "ff": {"1": [2, 5, 7], "3": [1]}}


# ----------------------------------------------------------------------------------------------------------------
# collect_statistics against a naive computation


def _split_with_specials(n_chunks=5, seq=SEQ, seed=3) -> TokenSplit:
    ids = _ids(n_chunks, seq, seed)
    ids[:, 0] = 0  # BOS / separator at the start of every chunk
    ids[1, 5] = 0
    ids[2, 7:] = 1  # a run of pad tokens
    ids[4, 3] = 1
    special = torch.isin(ids, torch.tensor([0, 1]))
    return TokenSplit(ids, special)


def _capture_inputs(model, adapter, split):
    """The raw input of every output projection, captured with our own hooks: {point: [n_chunks, seq, n]}."""
    points = hook_points(model, adapter)
    seq = split.input_ids.shape[1]  # (OPT feeds fc2 a flattened [tokens, n] input)
    captured = {p: [] for p in points}

    def hook(point):
        return lambda _m, args: captured[point].append(args[0].detach().reshape(1, seq, -1).clone())

    handles = [
        adapter.out_proj(model, layer, kind).register_forward_pre_hook(hook((kind, layer))) for kind, layer in points
    ]
    try:
        with torch.inference_mode():
            for i in range(len(split.input_ids)):  # one chunk at a time
                model(input_ids=split.input_ids[i : i + 1], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {p: torch.cat(v).double() for p, v in captured.items()}


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_collect_statistics_matches_naive(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    split = _split_with_specials()
    n_valid = int((~split.special).sum())
    assert 0 < n_valid < split.n_tokens

    stats = collect_statistics(model, adapter, split, batch_size=2)
    raw = _capture_inputs(model, adapter, split)
    assert set(stats) == set(raw) == {(k, layer) for k in ("ff", "attn") for layer in range(2)}
    valid = ~split.special
    for point, x in raw.items():
        x = x[valid]  # [n_valid, n]
        s = stats[point]
        assert s.count == n_valid
        expected = {
            "freq": (x > 0).double().mean(0),
            "abs": x.abs().mean(0),
            "rms": x.square().mean(0).sqrt(),
            "std": x.std(0, unbiased=False),
        }
        for kind, value in expected.items():
            # the float32 activations of a batch of 2 and of 1 may differ in the last bits (CPU kernels pick their
            # blocking by shape); the std of a nearly constant neuron (|mean| 0.25, std 0.003) magnifies that to ~2e-7
            atol = 1e-6 if kind == "std" else 1e-7
            torch.testing.assert_close(s.importance(kind), value, rtol=1e-5, atol=atol, msg=f"{point} {kind}")
        torch.testing.assert_close(s.mean, x.mean(0), rtol=1e-5, atol=1e-7)
        assert (s.importance("freq") > 0).any() and (s.importance("freq") < 1).any()
        # including the special positions would give different numbers
        assert not torch.allclose(raw[point].reshape(-1, x.shape[-1]).abs().mean(0), s.importance("abs"))
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == 0  # our hooks are gone


def test_collect_statistics_ignores_special_positions():
    """Poisoning the last layer's activations only at special positions changes no statistic."""
    model = tiny_model("llama")
    adapter = adapter_for(model)
    split = _split_with_specials()
    clean = collect_statistics(model, adapter, split, batch_size=5)
    state = {}

    def poison(_m, args):
        x = args[0].clone()
        x[state["special"]] = 1e3
        return (x,)

    # the last layer's attention output feeds nothing but the same position's residual stream
    handle = adapter.out_proj(model, 1, "attn").register_forward_pre_hook(poison)
    try:
        state["special"] = split.special
        poisoned = collect_statistics(model, adapter, split, batch_size=5)
    finally:
        handle.remove()
    for point in clean:
        for field in ("positive", "abs_sum", "sum", "sq_sum"):
            torch.testing.assert_close(
                getattr(poisoned[point], field), getattr(clean[point], field), rtol=1e-6, atol=1e-6
            )
    # whereas marking fewer positions as special does change them
    fewer = TokenSplit(split.input_ids, torch.zeros_like(split.special))
    handle = adapter.out_proj(model, 1, "attn").register_forward_pre_hook(poison)
    try:
        all_rows = collect_statistics(model, adapter, fewer, batch_size=5)
    finally:
        handle.remove()
    assert all_rows[("attn", 1)].count == split.n_tokens
    assert all_rows[("attn", 1)].abs_sum.max() > 1e3


def test_collect_statistics_batch_size_invariant_and_progress():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    split = _split_with_specials()
    seen = []
    one = collect_statistics(model, adapter, split, batch_size=1)
    three = collect_statistics(model, adapter, split, batch_size=3, progress=seen.append)
    assert seen == [3 * SEQ, 2 * SEQ]
    for point in one:
        assert one[point].count == three[point].count
        for field in ("positive", "abs_sum", "sum", "sq_sum"):
            torch.testing.assert_close(getattr(one[point], field), getattr(three[point], field), rtol=1e-5, atol=1e-8)
    only_ff = collect_statistics(model, adapter, split, batch_size=3, kinds=("ff",))
    assert set(only_ff) == {("ff", 0), ("ff", 1)}
    assert only_ff[("ff", 0)].sum.dtype == torch.float64


def test_collect_statistics_sees_ablation():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    split = _split_with_specials()
    ablation = Ablation()
    ablation.add(("ff", 0), torch.tensor([3, 4]), torch.tensor([0.0, 2.0]), 64)
    with ablated(model, adapter, ablation):
        stats = collect_statistics(model, adapter, split, batch_size=2)
    s = stats[("ff", 0)]
    assert s.importance("abs")[3] == 0 and s.importance("freq")[3] == 0
    torch.testing.assert_close(s.mean[4], torch.tensor(2.0, dtype=torch.float64))
    assert s.importance("std")[4] < 1e-6


def test_neuron_stats_importance_formulas():
    s = NeuronStats(
        count=4,
        positive=torch.tensor([4.0, 0.0, 2.0], dtype=torch.float64),
        abs_sum=torch.tensor([8.0, 4.0, 4.0], dtype=torch.float64),
        sum=torch.tensor([8.0, -4.0, 0.0], dtype=torch.float64),
        sq_sum=torch.tensor([16.0, 4.0, 16.0], dtype=torch.float64),
    )
    assert s.importance("freq").tolist() == [1.0, 0.0, 0.5]
    assert s.importance("abs").tolist() == [2.0, 1.0, 1.0]
    assert s.importance("rms").tolist() == [2.0, 1.0, 2.0]
    assert s.importance("std").tolist() == [0.0, 0.0, 2.0]
    assert s.mean.tolist() == [2.0, -1.0, 0.0]
    with pytest.raises(ValueError, match="unknown importance"):
        s.importance("median")
    empty = NeuronStats(0, torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2))
    assert empty.importance("rms").tolist() == [0.0, 0.0] and empty.mean.tolist() == [0.0, 0.0]


# ----------------------------------------------------------------------------------------------------------------
# state_dict_hash


def test_state_dict_hash_stable_and_sensitive(tmp_path):
    model = tiny_model("llama")
    h = state_dict_hash(model)
    assert len(h) == 64 and h == state_dict_hash(model)
    assert state_dict_hash(tiny_model("llama")) == h  # same seed, same weights
    assert state_dict_hash(tiny_model("llama", seed=1)) != h
    model.save_pretrained(tmp_path / "m")
    assert state_dict_hash(_reload_plain(tmp_path / "m")) == h  # independent of the file layout
    with torch.no_grad():
        w = adapter_for(model).out_proj(model, 1, "ff").weight
        old = w[3, 5].item()
        w[3, 5] = old + 1e-3
        assert state_dict_hash(model) != h
        w[3, 5] = old
    assert state_dict_hash(model) == h
    assert state_dict_hash(copy.deepcopy(model).to(torch.bfloat16)) != h


# ----------------------------------------------------------------------------------------------------------------
# load.py


def _tree_digest(path: Path) -> dict:
    return {
        str(p.relative_to(path)): (file_sha256(p), p.stat().st_mtime_ns) for p in sorted(path.rglob("*")) if p.is_file()
    }


def test_resolve_source_errors(tmp_path):
    with pytest.raises(UnlearnError, match="model not found"):
        resolve_source(str(tmp_path / "missing"))
    with pytest.raises(UnlearnError, match="model not found"):
        resolve_source("./no-such-model")
    with pytest.raises(UnlearnError, match="model not found"):
        resolve_source("a/b/c")
    with pytest.raises(UnlearnError, match="model not found"):
        resolve_source("not a hub id!")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnlearnError, match="no config.json"):
        resolve_source(str(tmp_path / "empty"))
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(UnlearnError, match="is a file"):
        resolve_source(str(tmp_path / "weights.bin"))
    with pytest.raises(UnlearnError, match="model file not found"):
        resolve_source(str(tmp_path / "missing.gguf"))
    # hub ids pass through untouched (no network access here)
    assert resolve_source("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert resolve_source("gpt2") == "gpt2"


def test_resolve_dtype_and_device():
    for bad in ("fp64", "float32", "", "int8"):
        with pytest.raises(UnlearnError, match="unknown dtype"):
            resolve_dtype(bad, "cpu")
    for good in DTYPES:
        assert resolve_dtype(good, "cpu") == good
    assert resolve_dtype("auto", "cpu") in ("bf16", "fp32")
    for bad in ("tpu", "gpu", "", "mps", "cuda0"):
        with pytest.raises(UnlearnError, match="unknown device"):
            resolve_device(bad)
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"
        for dev in ("cuda", "cuda:0"):
            with pytest.raises(UnlearnError, match="no CUDA GPU"):
                resolve_device(dev)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_load_model_from_checkpoint_folder(tiny_checkpoint, dtype):
    path = tiny_checkpoint("llama")
    before = _tree_digest(path)
    loaded = load_model(str(path), dtype=dtype, device="cpu")
    assert loaded.dtype == dtype and loaded.device == "cpu"
    assert loaded.source == str(path) and loaded.spec == str(path)
    assert next(loaded.model.parameters()).dtype == DTYPES[dtype]
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.tokenizer.pad_token_id == 1 and loaded.tokenizer.eos_token_id == 0
    ids = _ids()
    expected = _logits(tiny_model("llama"), ids)
    got = _logits(loaded.model, ids)
    if dtype == "fp32":
        _assert_close(got, expected, atol=1e-6)
        assert state_dict_hash(loaded.model) == state_dict_hash(tiny_model("llama"))
    else:
        _assert_close(got, expected, atol=5e-2)
    # loading writes nothing into the source folder
    assert _tree_digest(path) == before


def test_load_model_bad_input(tiny_checkpoint, tmp_path):
    path = tiny_checkpoint("llama")
    with pytest.raises(UnlearnError, match="unknown dtype"):
        load_model(str(path), dtype="fp64", device="cpu")
    with pytest.raises(UnlearnError, match="unknown device"):
        load_model(str(path), dtype="fp32", device="tpu")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    with pytest.raises(UnlearnError, match="could not load model"):
        load_model(str(broken), dtype="fp32", device="cpu")
    assert (broken / "config.json").read_text() == "{" and len(list(broken.iterdir())) == 1
