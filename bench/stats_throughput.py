"""Statistics-collection throughput vs a plain forward pass of the same model, batch and dtype.

Prints one JSON object. Selective pruning only needs the decoder body (no LM head), so the fair baseline is a
plain forward of the body; a full forward with logits is reported too. Each measurement is the best of
``--repeats`` timed passes over the same token chunks, after one warm-up pass.

    python bench/stats_throughput.py                      # bundled SmolLM2-135M, FF + attention statistics
    python bench/stats_throughput.py --kinds ff --dtype fp32 --tokens 8192
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from unlearn.data.chunking import build_corpus
from unlearn.data.sources import DataSpec
from unlearn.models.adapters import adapter_for
from unlearn.models.hooks import body, collect_statistics
from unlearn.models.load import load_model


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--data", default="python-stdlib")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--kinds", default="ff,attn", help="comma-separated hook kinds: ff, attn")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    torch.manual_seed(0)
    loaded = load_model(args.model, args.dtype, "cpu")
    model, adapter = loaded.model, adapter_for(loaded.model)
    corpus = build_corpus("bench", DataSpec(args.data), loaded.tokenizer, seq_len=args.seq_len,
                          eval_tokens=args.tokens, stats_tokens=0, seed=0)
    split = corpus.eval
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())

    @torch.inference_mode()
    def forward(full: bool):
        net = model if full else body(model)
        for ids, _ in split.batches(args.batch_size):
            net(input_ids=ids, use_cache=False)

    def stats():
        collect_statistics(model, adapter, split, batch_size=args.batch_size, kinds=kinds)

    t_body = best_of(lambda: forward(False), args.repeats)
    t_full = best_of(lambda: forward(True), args.repeats)
    t_stats = best_of(stats, args.repeats)
    n = split.n_tokens
    print(json.dumps({
        "model": args.model, "dtype": loaded.dtype, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
        "tokens": n, "seq_len": args.seq_len, "batch_size": args.batch_size, "kinds": list(kinds),
        "forward_body_tok_s": round(n / t_body, 1),
        "forward_with_logits_tok_s": round(n / t_full, 1),
        "statistics_tok_s": round(n / t_stats, 1),
        "statistics_vs_forward_body": round(t_body / t_stats, 3),
        "target_vs_forward_body": 0.90,
    }, indent=2))


if __name__ == "__main__":
    main()
