"""Evaluation throughput: Scorer.score vs a plain forward, and batched vs one-at-a-time greedy generation.

Prints one JSON object. Two measurements on the same model and dtype:

* Log-prob scoring: ``Scorer.score`` on TOFU (prompt, answer) pairs — each question's answer, paraphrased answer
  and perturbed answers after its prompt — in tokens/s (prompt + continuation tokens, padding not counted), per
  batch size. The baseline is a plain full forward (with logits) of the same right-padded, length-sorted
  batches and attention masks; ``score_vs_forward`` = scoring throughput / forward throughput, i.e. the cost of
  tokenisation, log-softmax, gather and argmax on top of the model call.
* Greedy generation: ``Scorer.generate(raw=True)`` of the question prompts one at a time and left padded in one
  batch, in generated tokens/s (up to end-of-sequence), the speedup, and the fraction of texts that are identical
  (left padding can flip a near-tie argmax; reported, not checked).

Both results are cached per input by a Scorer, so every pass uses a new one. Each number is the best of
``--repeats`` timed passes (interleaved), after a warm-up (for generation a short one: one batch, 4 tokens).

    python bench/eval_throughput.py                       # bundled SmolLM2-135M, 10 TOFU questions
    python bench/eval_throughput.py --dtype fp32 --batch-sizes 1,32 --n-prompts 8 --new-tokens 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from unlearn.data.formats import load_qa
from unlearn.eval.scoring import Scorer, Template
from unlearn.models.load import load_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled model needs no network (set before transformers loads)
DEFAULT_QA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu" / "forget01_perturbed.jsonl"


def best_of(fns: dict, repeats: int, warmups: dict | None = None) -> dict:
    """Run each function (or its cheaper stand-in in ``warmups``) once to warm up, then ``repeats`` interleaved
    timed passes; the best time of each."""
    for key, fn in fns.items():
        (warmups or {}).get(key, fn)()
    times = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: min(t) for key, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto", help="auto, bf16 or fp32")
    ap.add_argument("--qa", type=Path, default=DEFAULT_QA, help="TOFU-style QA file (answers and perturbations)")
    ap.add_argument("--n-questions", type=int, default=10, help="questions whose answers are scored")
    ap.add_argument("--batch-sizes", default="1,8,16", help="comma-separated scoring batch sizes")
    ap.add_argument("--n-prompts", type=int, default=16, help="question prompts generated from")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--gen-batch", type=int, default=16, help="generation batch size compared with 1")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = os.getloadavg()
    loaded = load_model(args.model, args.dtype, "cpu")
    model, tok = loaded.model, loaded.tokenizer
    template = Template(tok, "auto")
    items = load_qa(args.qa)

    # -- 1. scoring vs plain forward ------------------------------------------------------------------------------
    pairs = [
        (template.qa(it.question), template.answer(a))
        for it in items[: args.n_questions]
        for a in (it.answer, it.paraphrased_answer, *it.perturbed_answers)
        if a
    ]
    probe = Scorer(model, tok)  # only for its tokenisation, so the forward sees exactly the scored tokens
    encoded = sorted(
        (probe._prompt_ids(p) + probe._cont_ids(c) for p, c in set(pairs)), key=len, reverse=True
    )  # score() dedups and sorts longest first too
    n_tokens = sum(len(seq) for seq in encoded)

    def padded(batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for b in range(0, len(encoded), batch_size):
            rows = encoded[b : b + batch_size]
            ids = torch.full((len(rows), len(rows[0])), probe.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, seq in enumerate(rows):
                ids[r, : len(seq)], mask[r, : len(seq)] = torch.tensor(seq), 1
            out.append((ids, mask))
        return out

    @torch.inference_mode()
    def forward(batches):
        for ids, mask in batches:
            model(input_ids=ids, attention_mask=mask, use_cache=False)

    def score(batch_size: int):
        Scorer(model, tok, batch_size=batch_size).score(pairs)

    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    fns = {}
    for bs in batch_sizes:
        batches = padded(bs)
        fns[f"score/{bs}"] = lambda bs=bs: score(bs)
        fns[f"forward/{bs}"] = lambda batches=batches: forward(batches)
    t = best_of(fns, args.repeats)
    scoring = {
        str(bs): {
            "score_tok_s": round(n_tokens / t[f"score/{bs}"], 1),
            "forward_tok_s": round(n_tokens / t[f"forward/{bs}"], 1),
            "score_vs_forward": round(t[f"forward/{bs}"] / t[f"score/{bs}"], 3),
        }
        for bs in batch_sizes
    }

    # -- 2. batched vs one-at-a-time generation -------------------------------------------------------------------
    prompts = [template.qa(it.question) for it in items[: args.n_prompts]]
    results = {}

    def generate(batch_size: int, warm: bool = False):
        scorer = Scorer(model, tok, batch_size=batch_size)
        if warm:  # a short pass: one batch, a few tokens
            return scorer.generate(prompts[:batch_size], max_new_tokens=min(4, args.new_tokens), raw=True)
        texts = scorer.generate(prompts, max_new_tokens=args.new_tokens, raw=True)
        results[batch_size] = (texts, scorer.stats["generated_tokens"])

    gen_sizes = sorted({1, args.gen_batch})
    t = best_of(
        {bs: (lambda bs=bs: generate(bs)) for bs in gen_sizes},
        args.repeats,
        warmups={bs: (lambda bs=bs: generate(bs, warm=True)) for bs in gen_sizes},
    )
    generation = {f"batch_{bs}_tok_s": round(results[bs][1] / t[bs], 1) for bs in gen_sizes}
    generation |= {f"batch_{bs}_tokens": results[bs][1] for bs in gen_sizes}
    one, many = results[1][0], results[args.gen_batch][0]
    same = sum(a == b for a, b in zip(one, many))
    generation |= {
        "speedup": round(t[1] / t[args.gen_batch], 2),
        "identical": same == len(one),
        "identical_fraction": round(same / len(one), 3),
    }

    print(
        json.dumps(
            {
                "model": args.model,
                "dtype": loaded.dtype,
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "load_average_start": [round(x, 2) for x in load_start],
                "load_average_end": [round(x, 2) for x in os.getloadavg()],
                "repeats": args.repeats,
                "template": template.mode,
                "scoring": {
                    "questions": min(args.n_questions, len(items)),
                    "pairs": len(encoded),
                    "tokens": n_tokens,
                    "by_batch_size": scoring,
                },
                "generation": {
                    "prompts": len(prompts),
                    "new_tokens": args.new_tokens,
                    "gen_batch": args.gen_batch,
                    **generation,
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
