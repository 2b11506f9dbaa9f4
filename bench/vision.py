"""Forget one class of a vision transformer (the selective-pruning paper's vision experiment; issue 20, section 1).

Offline and on the CPU: scikit-learn's 8×8 digits, a small ViTForImageClassification built from a config and
trained here (`unlearn.vision.tiny_vit`), then class `--forget-class` forgotten by selective pruning, its random
control (the same number of neurons, chosen at random), SSD and gradient ascent, beside the oracle: the same
model retrained from scratch without the class. Per method: forget-class and retain-class accuracy on the test
images before and after, test accuracy, a loss-based membership-inference AUC of the forget class's training
images against its test images (0.5 = no trace of having trained on them, as for the oracle), and seconds.
Selective pruning's model is folded, saved with `save_pretrained`, reloaded with stock transformers and
re-measured. Prints a table on stderr and one JSON object on stdout.

    python bench/vision.py --quick          # one case: seed 0, forget class 3 (about 2 minutes on 2 cores)
    python bench/vision.py                  # seeds 0,1,2 × classes 3,7, as in docs/vision.md

Exit status 0 when the first case meets the targets (selective pruning: forget-class accuracy ≤ 10 % of before,
retain-class accuracy drop ≤ 5 % relative, reloaded checkpoint identical).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch

from unlearn.models.load import cpu_level
from unlearn.vision import VisionForgetConfig, accuracy, digits, forget_class, mia_auc, tiny_vit, train

TARGET_FORGET = 0.10  # forget-class accuracy after ≤ 10 % of before
TARGET_RETAIN = 0.05  # retain-class accuracy drop ≤ 5 % relative


def measure(model, split, cls: int) -> dict:
    return {
        "forget_acc": accuracy(model, split.test.of_class(cls)),
        "retain_acc": accuracy(model, split.test.without_class(cls)),
        "test_acc": accuracy(model, split.test),
        "mia_auc": mia_auc(model, split.train.of_class(cls), split.test.of_class(cls)),
    }


def row(before: dict, after: dict, seconds: float, **extra) -> dict:
    return {
        "forget_acc_before": before["forget_acc"],
        "forget_acc_after": after["forget_acc"],
        "retain_acc_before": before["retain_acc"],
        "retain_acc_after": after["retain_acc"],
        "test_acc_after": after["test_acc"],
        "mia_auc_after": after["mia_auc"],
        "seconds": round(seconds, 2),
        **extra,
    }


def reloaded_accuracy(model, split, cls: int) -> dict:
    """The folded model through save_pretrained and a stock ViTForImageClassification.from_pretrained."""
    from transformers import ViTForImageClassification

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        again = ViTForImageClassification.from_pretrained(tmp).eval()
    return measure(again, split, cls)


def case(split, epochs: int, seed: int, cls: int) -> dict:
    """Train the original and the oracle with ``seed``, forget ``cls`` with every method; the case's rows."""
    t0 = time.perf_counter()
    original = train(tiny_vit(split.num_labels, seed=seed), split.train, epochs=epochs, seed=seed)
    train_s = time.perf_counter() - t0
    before = measure(original, split, cls)
    forget, retain = split.train.of_class(cls), split.train.without_class(cls)
    rows = {}
    t0 = time.perf_counter()
    oracle = train(tiny_vit(split.num_labels, seed=seed), retain, epochs=epochs, seed=seed)
    rows["retrain (oracle)"] = row(before, measure(oracle, split, cls), time.perf_counter() - t0)
    sp = forget_class(original, forget, retain, "selective-pruning", VisionForgetConfig(seed=seed))
    reloaded = reloaded_accuracy(sp.model, split, cls)
    rows["selective-pruning"] = row(
        before, measure(sp.model, split, cls), sp.seconds, steps=sp.steps, pruned=sp.info["pruned"], reloaded=reloaded
    )
    # the control: as many neurons, in as many steps, chosen at random
    control = VisionForgetConfig(seed=seed, target=None, max_steps=sp.steps)
    rnd = forget_class(original, forget, retain, "random-pruning", control)
    rows["random-pruning"] = row(
        before, measure(rnd.model, split, cls), rnd.seconds, steps=rnd.steps, pruned=rnd.info["pruned"]
    )
    ssd = forget_class(original, forget, retain, "ssd", VisionForgetConfig(seed=seed))
    rows["ssd"] = row(before, measure(ssd.model, split, cls), ssd.seconds, dampened=ssd.info["dampened"])
    ga = forget_class(original, forget, retain, "gradient-ascent", VisionForgetConfig(seed=seed))
    rows["gradient-ascent"] = row(before, measure(ga.model, split, cls), ga.seconds, steps=ga.steps)
    s = rows["selective-pruning"]
    targets = {
        "forget_acc_after_le_10pct_of_before": s["forget_acc_after"] <= TARGET_FORGET * s["forget_acc_before"],
        "retain_drop_le_5pct": s["retain_acc_after"] >= (1 - TARGET_RETAIN) * s["retain_acc_before"],
        "reloaded_checkpoint_identical": abs(reloaded["test_acc"] - s["test_acc_after"]) < 1e-9,
    }
    params = sum(p.numel() for p in original.parameters())
    return {
        "seed": seed,
        "forget_class": cls,
        "params": params,
        "train_s": round(train_s, 1),
        "before": before,
        "methods": rows,
        "targets": targets,
        "ok": all(targets.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one case: seed 0, class 3")
    ap.add_argument("--epochs", type=int, default=30, help="training epochs (original model and oracle)")
    ap.add_argument("--seeds", default="0,1,2", help="seeds of the data split, the models and the methods")
    ap.add_argument("--classes", default="3,7", help="digits to forget, one case each")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.classes = "0", "3"
    start = time.perf_counter()
    cases = []
    for seed in map(int, args.seeds.split(",")):
        split = digits(seed=seed)
        for cls in map(int, args.classes.split(",")):
            cases.append(case(split, args.epochs, seed, cls))
            table(cases[-1], sys.stderr)
    first = cases[0]
    out = {
        "cpu": cpu_level(),
        "threads": torch.get_num_threads(),
        "data": {"train": len(split.train), "test": len(split.test)},
        "epochs": args.epochs,
        # the first case's rows at the top level; every case in "cases"
        "methods": first["methods"],
        "targets": first["targets"],
        "cases": cases,
        "cases_meeting_targets": f"{sum(c['ok'] for c in cases)}/{len(cases)}",
        "all_ok": all(c["ok"] for c in cases),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(out, indent=1))
    sys.exit(0 if first["ok"] else 1)


def table(c: dict, stream) -> None:
    before = c["before"]
    print(f"\nViT {c['params']:,} parameters, digits, seed {c['seed']}, forget class {c['forget_class']}", file=stream)
    print(f"{'method':<18} {'forget acc':>15} {'retain acc':>15} {'test acc':>8} {'MIA AUC':>7} {'s':>6}", file=stream)
    fa, ra = f"{before['forget_acc']:.3f}", f"{before['retain_acc']:.3f}"
    print(f"{'(original)':<18} {fa:>15} {ra:>15} {before['test_acc']:>8.3f} {before['mia_auc']:>7.3f}", file=stream)
    for name, r in c["methods"].items():
        fa = f"{r['forget_acc_before']:.3f}→{r['forget_acc_after']:.3f}"
        ra = f"{r['retain_acc_before']:.3f}→{r['retain_acc_after']:.3f}"
        cells = f"{fa:>15} {ra:>15} {r['test_acc_after']:>8.3f} {r['mia_auc_after']:>7.3f} {r['seconds']:>6.1f}"
        print(f"{name:<18} {cells}", file=stream)


if __name__ == "__main__":
    main()
