"""The generation-time guard (``guard``) on the bundled model, in the default scenario (forget python-stdlib code,
retain general English, utility: held-out English): one full ``unlearn.run`` with the default settings (top-1
drops with the policy attached, the detector's accuracy, the share of evaluation chunks it flags), then
generation throughput of the plain model against the guarded run folder (``unlearn.load_guarded``), greedy, at
batch 1 and 16 (plain and guarded in turn), on code prompts (flagged: the edit runs) and held-out English
prompts (unflagged).

Prints one JSON object on stdout (progress on stderr):

    python bench/guard.py --out /tmp/guard --threads 1 > bench/results/guard.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from pathlib import Path

import torch

import unlearn
from unlearn.data.sources import DataSpec, iter_documents
from unlearn.models import components
from unlearn.models.load import cpu_level

MODEL = "smollm2-135m"


def _prompts(source: str, n: int, skip: int, chars: int = 240) -> list[str]:
    """``n`` prompts: the first ``chars`` characters of documents of ``source`` after the first ``skip``."""
    docs = (text for _, text in iter_documents(DataSpec(source)) if len(text.strip()) >= chars)
    return [text.strip()[:chars] for text in itertools.islice(docs, skip, skip + n)]


@torch.inference_mode()
def _seconds(model, batch: dict, new: int, pad: int) -> float:
    """Seconds of one greedy generation of exactly ``new`` tokens per row of ``batch``."""
    start = time.perf_counter()
    model.generate(**batch, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=pad)
    return time.perf_counter() - start


def _case(models: dict, tokenizer, prompts: list[str], new: int, repeats: int) -> dict:
    """Generated tokens per second of each model on the batch ``prompts`` (left-padded), the best of ``repeats``
    runs taken in turn (plain, guarded, plain, ...), so that load from other processes hits both alike; and which
    rows the guard flagged."""
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    best = dict.fromkeys(models, float("inf"))
    for _ in range(repeats):
        for name, model in models.items():
            best[name] = min(best[name], _seconds(model, batch, new, tokenizer.pad_token_id))
    out = {n: {"tokens_per_s": round(len(prompts) * new / s, 1), "seconds": round(s, 3)} for n, s in best.items()}
    guard = components.attached(models["guarded"])[0]
    out["flagged"] = guard.detect(models["guarded"], batch["input_ids"], batch["attention_mask"]).tolist()
    out["overhead"] = round(best["guarded"] / best["plain"] - 1, 4)
    return out


def _throughput(run_dir: Path, new: int, repeats: int) -> dict:
    plain, tokenizer = unlearn.load_model(MODEL, dtype="fp32", device="cpu")
    guarded, _ = unlearn.load_guarded(run_dir, dtype="fp32", device="cpu")
    models = {"plain": plain, "guarded": guarded}
    code, english = _prompts("python-stdlib", 16, 500), _prompts("general-english-heldout", 16, 0)
    cases = {"batch1_code": code[:1], "batch1_english": english[:1], "batch16_code": code, "batch16_english": english}
    out = {}
    for name, prompts in cases.items():
        print(f"generation {name} ...", file=sys.stderr)
        out[name] = _case(models, tokenizer, prompts, new, repeats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/guard-bench", help="where the run folder goes (replaced)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per prompt")
    parser.add_argument("--repeats", type=int, default=2, help="generations per model and batch (the best counts)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = unlearn.run({"method": "guard", "method_config": {}, "out_dir": str(out), "name": "guard"})
    seconds = time.perf_counter() - start
    facts = result.manifest["method_facts"]
    drops = {
        f"{w}_{m}_drop": round(result.after[f"{w}_drop"][m], 4)
        for w in ("forget", "retain", "utility")
        for m in ("top1", "skip50_top1")
    }
    record = {
        "machine": {"cpu_level": cpu_level(), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")},
        "model": MODEL,
        "scenario": "forget python-stdlib, retain general-english, utility held-out English (the default run)",
        "run": {
            **drops,
            "threshold": facts["threshold"],
            "detector": facts["detector"],
            "eval_flagged": facts["eval_flagged"],
            "counts": facts["counts"],
            "forbidden_tokens": [t["text"] for t in facts["forbidden_tokens"]],
            "forbidden_phrases": [p["text"] for p in facts["forbidden_phrases"]],
            "seconds": round(seconds, 1),
            "method_seconds": result.manifest["timings_s"].get("method"),
        },
        "generation": {
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            **_throughput(result.run_dir, args.new_tokens, args.repeats),
        },
    }
    print(json.dumps(record, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
