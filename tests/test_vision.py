"""Class forgetting on vision transformers: the ViT adapter, image statistics, folding into a plain checkpoint,
and the four methods, on tiny ViTs built from a config."""

from __future__ import annotations

import copy

import pytest
import torch

from unlearn.errors import UnlearnError
from unlearn.models.adapters import adapter_for, weight_columns
from unlearn.models.hooks import Ablation, ablated
from unlearn.models.save import fold
from unlearn.vision import (
    Images,
    VisionForgetConfig,
    accuracy,
    digits,
    forget_class,
    image_statistics,
    mia_auc,
    tiny_vit,
    train,
)


def _vit(seed: int = 0):
    return tiny_vit(3, hidden=16, layers=2, neurons=32, seed=seed).eval()


def _images(n: int = 12, seed: int = 0, labels: int = 3) -> Images:
    g = torch.Generator().manual_seed(seed)
    return Images(torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % labels)


def test_vit_adapter_finds_the_output_projections():
    model = _vit()
    adapter = adapter_for(model)
    assert adapter.family == "vit"
    assert adapter.n_layers(model) == 2
    assert adapter.n_neurons(model, "ff") == 32 and adapter.n_neurons(model, "attn") == 16
    assert adapter.out_proj(model, 1, "ff") is model.vit.layers[1].mlp.fc2
    assert adapter.out_proj(model, 0, "attn") is model.vit.layers[0].attention.o_proj


@pytest.mark.parametrize("tokens", ["all", "cls"])
def test_image_statistics_match_a_direct_computation(tokens):
    model, images = _vit(), _images(10)
    seen = []
    handle = model.vit.layers[1].mlp.fc2.register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach().clone()))
    with torch.no_grad():
        model(pixel_values=images.x)
    handle.remove()
    x = seen[0]  # [images, 17 tokens, neurons]
    if tokens == "cls":
        x = x[:, :1]
    x = x.reshape(-1, x.shape[-1]).double()
    stats = image_statistics(model, images, batch_size=4, tokens=tokens)[("ff", 1)]  # batches of 4, 4, 2
    assert stats.count == len(x)
    torch.testing.assert_close(stats.importance("abs"), x.abs().mean(0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(stats.importance("freq"), (x > 0).double().mean(0))
    torch.testing.assert_close(stats.mean, x.mean(0), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mean", [False, True])
def test_folded_vit_saves_as_a_plain_checkpoint(tmp_path, mean):
    from transformers import ViTForImageClassification

    model, images = _vit(), _images(6)
    adapter = adapter_for(model)
    ablation = Ablation()
    for kind in ("ff", "attn"):
        n = adapter.n_neurons(model, kind)
        for layer in range(2):
            idx = torch.tensor([layer, 5 + layer])
            ablation.add((kind, layer), idx, torch.randn(2) if mean else torch.zeros(2), n)
    with torch.no_grad(), ablated(model, adapter, ablation):
        hooked = model(pixel_values=images.x).logits
    folded = fold(copy.deepcopy(model), adapter, ablation)
    assert torch.all(weight_columns(adapter.out_proj(folded, 1, "ff"), False)[:, [1, 6]] == 0)
    folded.save_pretrained(tmp_path)
    again = ViTForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(pixel_values=images.x).logits, hooked, rtol=1e-5, atol=1e-5)
        assert (model(pixel_values=images.x).logits - hooked).abs().max() > 1e-4


def test_pruning_counts_and_the_input_model_stays_as_it_was():
    model, images = _vit(), _images(12)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    forget, retain = images.of_class(0), images.without_class(0)
    cfg = VisionForgetConfig(ff_frac=0.125, attn_frac=0.125, target=None, max_steps=3)
    for method in ("selective-pruning", "random-pruning"):
        out = forget_class(model, forget, retain, method, cfg)
        # 12.5 % of 64 feed-forward and of 32 attention neurons per step, three steps
        assert out.steps == 3 and out.info["pruned"] == {"ff": 24, "attn": 12}
        assert out.ablation.total("ff") == 24
        adapter = adapter_for(out.model)
        columns = [weight_columns(adapter.out_proj(out.model, i, "ff"), False) for i in range(2)]
        assert sum(int((c == 0).all(0).sum()) for c in columns) == 24  # folded: the pruned columns are zero
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_selective_pruning_prunes_the_most_forget_specific_neuron_first():
    """One step of one neuron: the neuron with the highest I_forget / (I_retain + eps) over all layers, where the
    forget class's images light up one patch strongly."""
    model, images = _vit(), _images(30)
    images.x[images.y == 0, :, :2, :2] = 50.0
    forget, retain = images.of_class(0), images.without_class(0)
    f_stats, r_stats = image_statistics(model, forget, 8), image_statistics(model, retain, 8)
    ratios = torch.stack(
        [f_stats[("ff", i)].importance("abs") / (r_stats[("ff", i)].importance("abs") + 1e-3) for i in range(2)]
    )
    best = divmod(int(ratios.argmax()), ratios.shape[1])
    out = forget_class(model, forget, retain, "selective-pruning", target=None, max_steps=1, ff_frac=1 / 64)
    pruned = [(layer, int(i)) for (k, layer), m in out.ablation.pruned.items() if k == "ff" for i in m.nonzero()]
    assert pruned == [best]


def test_forgetting_a_learnt_class_and_the_stopping_target():
    split = digits(seed=0)
    train_set = Images(split.train.x[split.train.y < 3], split.train.y[split.train.y < 3])
    model = train(tiny_vit(3, hidden=32, layers=2, neurons=128, seed=0), train_set, epochs=8, seed=0)
    forget, retain = train_set.of_class(1), train_set.without_class(1)
    assert accuracy(model, forget) > 0.8
    ga = forget_class(model, forget, retain, "gradient-ascent", lr=1e-3, max_steps=200, target=0.1)
    assert accuracy(ga.model, forget) <= 0.1 * accuracy(model, forget)
    assert ga.steps < 200
    ssd = forget_class(model, forget, retain, "ssd")
    assert ssd.info["dampened"] > 0 and accuracy(ssd.model, forget) < accuracy(model, forget)


def test_bad_requests_are_refused():
    model, images = _vit(), _images(6)
    with pytest.raises(UnlearnError, match="unknown vision method"):
        forget_class(model, images, images, "retrain")
    with pytest.raises(UnlearnError, match="non-empty"):
        forget_class(model, images.of_class(7), images, "ssd")


def test_mia_auc_separates_what_the_model_fits():
    model = _vit()
    images = _images(20)
    assert mia_auc(model, images, images) == pytest.approx(0.5)
    fitted = train(copy.deepcopy(model), images.of_class(0), epochs=30, lr=1e-2)
    assert mia_auc(fitted, images.of_class(0), images.of_class(1)) == pytest.approx(1.0)
