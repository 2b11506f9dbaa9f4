"""Statistics-collection throughput vs a plain forward pass of the same model, batch and dtype.

Prints one JSON object. Selective pruning only needs the decoder body (no LM head), so the fair baseline is a
plain forward of the body; a full forward with logits is reported too. Each measurement is the best of
``--repeats`` timed passes over the same token chunks (interleaved), after one warm-up pass.

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
from unlearn.models.hooks import IMPORTANCE, body, collect_statistics
from unlearn.models.load import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--data", default="python-stdlib")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--kinds", default="ff,attn", help="comma-separated hook kinds: ff, attn")
    ap.add_argument(
        "--importance",
        default="abs",
        help="importance functions (comma-separated, plus 'mean') whose statistics are collected; 'all' for every one",
    )
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    torch.manual_seed(0)
    loaded = load_model(args.model, args.dtype, "cpu")
    model, adapter = loaded.model, adapter_for(loaded.model)
    corpus = build_corpus(
        "bench",
        DataSpec(args.data),
        loaded.tokenizer,
        seq_len=args.seq_len,
        eval_tokens=args.tokens,
        stats_tokens=0,
        seed=0,
    )
    split = corpus.eval
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    needs = IMPORTANCE + ("mean",) if args.importance == "all" else tuple(args.importance.split(","))

    @torch.inference_mode()
    def forward(full: bool):
        net = model if full else body(model)
        for ids, _ in split.batches(args.batch_size):
            net(input_ids=ids, use_cache=False)

    def stats():
        collect_statistics(model, adapter, split, batch_size=args.batch_size, kinds=kinds, needs=needs)

    # interleave the three measurements so that drifting machine load hits them alike; keep each one's best
    timings = {"body": [], "full": [], "stats": []}
    fns = {"body": lambda: forward(False), "full": lambda: forward(True), "stats": stats}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            timings[key].append(time.perf_counter() - start)
    t_body, t_full, t_stats = (min(timings[k]) for k in ("body", "full", "stats"))
    n = split.n_tokens
    print(
        json.dumps(
            {
                "model": args.model,
                "dtype": loaded.dtype,
                "threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "processor": platform.processor() or platform.machine(),
                "tokens": n,
                "seq_len": args.seq_len,
                "batch_size": args.batch_size,
                "kinds": list(kinds),
                "statistics": list(needs),
                "forward_body_tok_s": round(n / t_body, 1),
                "forward_with_logits_tok_s": round(n / t_full, 1),
                "statistics_tok_s": round(n / t_stats, 1),
                "statistics_vs_forward_body": round(t_body / t_stats, 3),
                "target_vs_forward_body": 0.90,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
