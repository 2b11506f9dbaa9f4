"""Statistics-collection throughput vs a plain forward pass of the same model, batch and dtype, and vs the CPU's
matrix-multiply roofline.

Prints one JSON object. Selective pruning only needs the decoder body (no LM head), so the fair baseline is a
plain forward of the body; a full forward with logits is reported too. The passes are interleaved over the same
token chunks — batch by batch, the order rotating — after one warm-up; ``statistics_vs_forward_body`` is the
median over ``--repeats`` rounds of the per-round ratio (robust to a busy machine), and the tokens/s figures
are each pass's best round.

Roofline: the body's matrix-multiply work per token (2 × non-embedding parameters, plus the attention scores and
weighted sums, 2 × 2 × layers × hidden × seq_len / 2 for causal attention) times the tokens/s, as a fraction of
the best rate a large square matrix multiply reaches in the same dtype on this machine.

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

from unlearn.data.chunking import TokenSplit, build_corpus
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
    loaded, split = model_and_chunks(args.model, args.dtype, args.data, args.tokens, args.seq_len)
    model, adapter = loaded.model, adapter_for(loaded.model)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    needs = IMPORTANCE + ("mean",) if args.importance == "all" else tuple(args.importance.split(","))

    batches = [TokenSplit(ids, special) for ids, special in split.batches(args.batch_size)]

    @torch.inference_mode()
    def forward(full: bool, batch: TokenSplit):
        (model if full else body(model))(input_ids=batch.input_ids, use_cache=False)

    def stats(batch: TokenSplit):
        collect_statistics(model, adapter, batch, batch_size=args.batch_size, kinds=kinds, needs=needs)

    # Interleave at the finest grain — body, statistics and full forward on each batch in turn, the order rotating
    # — so that drifting load on a shared machine hits all three alike. Per round: total time of each.
    timings = {"body": [], "full": [], "stats": []}
    dtype = next(model.parameters()).dtype
    fns = {"body": lambda b: forward(False, b), "stats": stats, "full": lambda b: forward(True, b)}
    for fn in fns.values():
        fn(batches[0])  # warm-up
    order = list(fns)
    for _ in range(args.repeats):
        spent = dict.fromkeys(fns, 0.0)
        for batch in batches:
            for key in order:
                start = time.perf_counter()
                fns[key](batch)
                spent[key] += time.perf_counter() - start
            order = order[1:] + order[:1]
        for key, value in spent.items():
            timings[key].append(value)
    t_body, t_full, t_stats = (min(timings[k]) for k in ("body", "full", "stats"))
    ratios = sorted(b / st for b, st in zip(timings["body"], timings["stats"]))
    n = split.n_tokens
    peak = matmul_peak(dtype)
    flops = flops_per_token(model, args.seq_len)
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
                "statistics_vs_forward_body": round(ratios[len(ratios) // 2], 3),
                "statistics_vs_forward_body_best_passes": round(t_body / t_stats, 3),
                "statistics_vs_forward_body_per_round": [round(r, 3) for r in ratios],
                "target_vs_forward_body": 0.95,
                "matmul_peak_gflops": round(peak / 1e9, 1),
                "body_gflop_per_token": round(flops / 1e9, 4),
                "forward_body_roofline_fraction": round(flops * n / t_body / peak, 3),
                "statistics_roofline_fraction": round(flops * n / t_stats / peak, 3),
            },
            indent=2,
        )
    )


def model_and_chunks(model: str, dtype: str, data: str, tokens: int, seq_len: int):
    """The model on the CPU and the first ``tokens`` of ``data`` in chunks of ``seq_len`` (what benchmarks time)."""
    loaded = load_model(model, dtype, "cpu")
    corpus = build_corpus(
        "bench", DataSpec(data), loaded.tokenizer, seq_len=seq_len, eval_tokens=tokens, stats_tokens=0, seed=0
    )
    return loaded, corpus.eval


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """The best FLOP/s of a size×size×size matrix multiply in ``dtype`` on this machine."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def flops_per_token(model, seq_len: int) -> float:
    """Matrix-multiply FLOPs per token of the decoder body: the linear layers plus causal attention."""
    cfg = model.config
    embed = model.get_input_embeddings().weight.numel()
    linear = sum(p.numel() for p in body(model).parameters()) - embed
    layers, hidden = cfg.num_hidden_layers, cfg.hidden_size
    return 2 * linear + 2 * 2 * layers * hidden * seq_len / 2


if __name__ == "__main__":
    main()
