"""Exact unlearning by sharded adapters: the time of `unlearn learn --shards` against a deletion, and the check
that the deletion equals learning without the deleted records from the start.

python bench/exact.py --records 40 --shards 4 --slices 2 > exact.json

Learns the first ``--records`` QA records of TOFU's ``full.jsonl`` on the bundled SmolLM2-135M-Instruct in
``--shards`` shards x ``--slices`` slices; deletes one record of a last slice and one record of a first slice
(two runs: the first retrains one adapter, the second every adapter of its shard); learns the records without
the first deleted one from scratch and compares the weights with the first deletion's, tensor by tensor.
Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

import unlearn
from unlearn.methods import sharding as S

TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu" / "full.jsonl"


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _delete(model: Path, records: list[dict], work: Path, name: str, args) -> tuple[dict, float]:
    delete = _jsonl(work / f"{name}.jsonl", records)
    start = time.perf_counter()
    result = unlearn.run(
        {
            "model": str(model),
            "method": "exact",
            "forget": {"source": str(delete), "format": "qa"},
            "retain": {"source": "general-english"},
            "utility": None,
            "seq_len": args.seq_len,
            "stats_tokens": args.seq_len,
            "eval_tokens": 4 * args.seq_len,
            "val_tokens": 0,
            "batch_size": 8,
            "dtype": args.dtype,
            "out_dir": str(work / "runs"),
            "name": name,
            "report": False,
        }
    )
    return result, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(TOFU))
    ap.add_argument("--records", type=int, default=40)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--slices", type=int, default=2)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    lines = Path(args.data).read_text(encoding="utf-8").splitlines()[: args.records]
    records = [{"question": r["question"], "answer": r["answer"]} for r in map(json.loads, lines)]
    learn = dict(shards=args.shards, slices=args.slices, epochs=args.epochs, seq_len=args.seq_len, batch_size=4)
    learn |= dict(lr=2e-4, lora="r=8", dtype=args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = _jsonl(work / "facts.jsonl", records)
        start = time.perf_counter()
        unlearn.learn("smollm2-135m", str(data), work / "learnt", **learn)
        learn_s = time.perf_counter() - start
        placed = {r["sha256"]: (r["shard"], r["slice"]) for r in S.read_manifest(work / "learnt")["records"]}
        cell = [placed[S.record_key("qa", argparse.Namespace(**r))] for r in records]
        last = next(i for i, c in enumerate(cell) if c[1] == args.slices - 1)
        first = next(i for i, c in enumerate(cell) if c[1] == 0)
        out = {"records": len(records), "settings": learn, "learn_s": round(learn_s, 1), "deletions": []}
        for name, i in (("last-slice", last), ("first-slice", first)):
            result, seconds = _delete(work / "learnt", [records[i]], work, name, args)
            facts = result.manifest["method_facts"]
            out["deletions"].append({"deleted": name, "run_s": round(seconds, 1), **facts})
            print(f"{name}: {seconds:.0f} s, {facts}", file=sys.stderr)
        start = time.perf_counter()
        rest = _jsonl(work / "rest.jsonl", [r for i, r in enumerate(records) if i != last])
        unlearn.learn("smollm2-135m", str(rest), work / "scratch", **learn)
        out["scratch_learn_s"] = round(time.perf_counter() - start, 1)
        a = load_file(str(work / "runs" / "last-slice" / "model" / "model.safetensors"))
        b = load_file(str(work / "scratch" / "model.safetensors"))
        out["bit_exact"] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
