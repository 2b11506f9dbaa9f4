"""Sparse-autoencoder feature clamping (``sae-clamp``, Farrell et al. 2024) on the bundled model, in the default
scenario (forget python-stdlib code, retain general English, utility: held-out English): zero ablation against
negative clamping, and a larger selection and dictionary. Each variant is one full ``unlearn.run`` (its own SAE
trained with the run's seed, its clamp saved with the model, the after-metrics measured with the clamp attached),
then the run folder is loaded again as a model to check that the clamp comes back with it.

Prints one JSON object on stdout (progress on stderr): per variant the relative top-1 drops on forget, retain and
utility (held-out chunks), the same for skip50 top-1, the SAE's held-out quality, the first clamped features with
the tokens they promote, the run's seconds, and whether the reloaded run folder reproduces the forget loss.

    python bench/sae_clamp.py --out /tmp/sae > bench/results/sae_clamp.json
    python bench/sae_clamp.py --out /tmp/sae --variants negative-16,zero-16
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import unlearn
from unlearn.models.load import cpu_level

VARIANTS = {
    "negative-64": {},  # the default: 64 features of a 4× dictionary, c = 4 × each one's mean firing activation
    "zero-64": {"mode": "zero"},
    "negative-16": {"clamped": 16},
    "zero-16": {"mode": "zero", "clamped": 16},
    "negative-64-expansion-8": {"expansion": 8},
    "negative-16-scale-10": {"clamped": 16, "clamp_scale": 10},
}
DEFAULT = "negative-64,zero-64,negative-16,negative-64-expansion-8"


def _drops(after: dict) -> dict:
    return {
        f"{w}_{m}_drop": round(after[f"{w}_drop"][m], 4)
        for w in ("forget", "retain", "utility")
        for m in ("top1", "skip50_top1")
    }


def _variant(name: str, settings: dict, out: Path) -> dict:
    start = time.perf_counter()
    result = unlearn.run({"method": "sae-clamp", "method_config": settings, "out_dir": str(out), "name": name})
    seconds = time.perf_counter() - start
    facts = result.manifest["method_facts"]
    again = unlearn.evaluate(str(result.run_dir), ["python-stdlib"])["python-stdlib"]
    return {
        "settings": settings,
        **_drops(result.after),
        "forget_loss_before": round(result.before["forget"]["loss"], 4),
        "forget_loss_after": round(result.after["forget"]["loss"], 4),
        "retain_loss_before": round(result.before["retain"]["loss"], 4),
        "retain_loss_after": round(result.after["retain"]["loss"], 4),
        "reloaded_forget_loss": round(again["loss"], 4),
        "layer": facts["layer"],
        "sae": {k: facts["sae"][k] for k in ("n_features", "l1", "steps", "train_rows", "final_loss", "held_out")},
        "features": [
            {k: f[k] for k in ("feature", "forget_freq", "retain_freq", "value", "promotes")}
            for f in facts["features"][:5]
        ],
        "seconds": round(seconds, 1),
        "method_seconds": result.manifest["timings_s"].get("method"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/sae-clamp-bench", help="where the run folders go (replaced)")
    parser.add_argument("--variants", default=DEFAULT, help=f"comma-separated names of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}: use {', '.join(VARIANTS)}")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    results = {}
    for name in names:
        print(f"sae-clamp {name} ...", file=sys.stderr)
        results[name] = _variant(name, VARIANTS[name], out)
        r = results[name]
        print(
            f"  forget top1 drop {r['forget_top1_drop']:.1%}, retain {r['retain_top1_drop']:.1%}, "
            f"utility {r['utility_top1_drop']:.1%} ({r['seconds']} s)",
            file=sys.stderr,
        )
    record = {
        "machine": {"cpu_level": cpu_level(), "date": time.strftime("%Y-%m-%d")},
        "model": "smollm2-135m",
        "scenario": "forget python-stdlib, retain general-english, utility held-out English (the default run)",
        "variants": results,
    }
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
