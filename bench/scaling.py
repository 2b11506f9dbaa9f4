"""Scaling of statistics collection and evaluation: time and peak memory vs token budget, time vs model size.

Prints one JSON object and writes a plot (``scaling.svg``, or ``--format png``) and the same JSON
(``scaling.json``) into ``--out`` (default: ``scaling-out/`` at the repository root, git-ignored).

* **Token budget** (bundled SmolLM2-135M, ``python-stdlib`` text): ``collect_statistics`` (FF + attention hook
  points, the statistics of ``--importance``) and ``evaluate_split`` over 1k … 100k tokens. Both stream the
  tokens batch by batch, so tokens/s should stay flat (log-log slope of time vs tokens ≈ 1) and the peak memory
  above the steady state should not grow with the budget: it is one batch's activations (for evaluation mostly
  its fp32 logits) and stops growing once the budget fills a whole batch (``--batch-size × --seq-len`` tokens).
* **Model size** (random-init Llama configs ``HIDDENxLAYERS``, vocabulary ``--vocab``, random token ids): the
  same two operations at a fixed budget (``--size-tokens``), tokens/s against parameter count.

Every point runs in a fresh subprocess (this script with ``--point``), so nothing stays warm or allocated
between points and the peak RSS is the point's own. In each one: build the model and data, run the operation
once on one batch (warm-up), then reset the peak RSS (``echo 5 > /proc/self/clear_refs``, which resets
``ru_maxrss`` to the current RSS), time one pass (best of ``--repeats``) and read
``getrusage(RUSAGE_SELF).ru_maxrss``. The peak growth is that peak minus ``ru_maxrss`` just after the reset.
Where the reset is not possible, it is the growth of ``ru_maxrss`` over the pass, a lower bound (``peak_method``
says which). ``estimate_mb`` is
``unlearn.models.memory``'s analytic forward estimate for one batch, for comparison.

    python bench/scaling.py                                   # full sweep: a long run (tens of minutes on 2 cores)
    python bench/scaling.py --tokens 1000,2000 --sizes 64x2,128x2 --size-tokens 1024   # smoke test
    python bench/scaling.py --ops statistics --sizes '' --threads 1 --out /tmp/scaling --format png
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled model needs no network (set before transformers loads)

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "scaling-out"
DEFAULT_TOKENS = "1000,2000,5000,10000,20000,50000,100000"
DEFAULT_SIZES = "64x2,128x4,256x4,512x8,768x12,1024x16"
OPS = ("statistics", "evaluation")
MB = 2**20


# -- one point, in a fresh process ---------------------------------------------------------------------------------


def _rss() -> int:
    """Current resident set size in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _maxrss()


def _maxrss() -> int:
    """Peak resident set size in bytes (``ru_maxrss`` is in kB on Linux, bytes on macOS)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _reset_peak() -> bool:
    """Reset the peak RSS to the current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def llama_config(hidden: int, layers: int, vocab: int):
    """A Llama config of the given width and depth: 64-wide heads (at least 2), 4:1 grouped-query attention
    where the heads divide, SwiGLU MLP of ~8/3 × hidden rounded up to a multiple of 64."""
    from transformers import LlamaConfig

    heads = max(hidden // 64, 2)
    kv = heads // 4 if heads % 4 == 0 else heads
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=-(-8 * hidden // 3 // 64) * 64,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )


def measure(point: dict) -> dict:
    """Build the point's model and data, warm up, then time and measure one operation."""
    import torch

    from unlearn.data.chunking import TokenSplit, build_corpus
    from unlearn.data.sources import DataSpec
    from unlearn.eval.metrics import evaluate_split
    from unlearn.models.adapters import adapter_for
    from unlearn.models.hooks import collect_statistics
    from unlearn.models.load import DTYPES, load_model, quiet_transformers, resolve_dtype
    from unlearn.models.memory import analytic_estimate

    if point.get("threads"):
        torch.set_num_threads(point["threads"])
    torch.manual_seed(0)
    seq_len, batch_size = point["seq_len"], point["batch_size"]
    if point["kind"] == "tokens":
        loaded = load_model(point["model"], point["dtype"], "cpu")
        model, dtype = loaded.model, loaded.dtype
        split = build_corpus(
            "bench",
            DataSpec(point["data"]),
            loaded.tokenizer,
            seq_len=seq_len,
            eval_tokens=point["tokens"],
            stats_tokens=0,
            seed=0,
        ).eval
    else:
        from transformers import AutoModelForCausalLM

        quiet_transformers()
        dtype = resolve_dtype(point["dtype"], "cpu")
        config = llama_config(point["hidden"], point["layers"], point["vocab"])
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(DTYPES[dtype])
        model.eval().requires_grad_(False)
        n_chunks = math.ceil(point["tokens"] / seq_len)
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(2, point["vocab"], (n_chunks, seq_len), generator=gen)
        split = TokenSplit(ids, torch.zeros_like(ids, dtype=torch.bool))
    adapter = adapter_for(model)
    needs = tuple(point["importance"].split(","))

    def run(chunks: TokenSplit) -> None:
        if point["op"] == "statistics":
            collect_statistics(model, adapter, chunks, batch_size=batch_size, kinds=("ff", "attn"), needs=needs)
        else:
            evaluate_split(model, chunks, batch_size=batch_size)

    run(TokenSplit(split.input_ids[:batch_size], split.special[:batch_size]))  # warm-up: one batch
    gc.collect()
    rss_before, maxrss_before = _rss(), _maxrss()
    reset = _reset_peak()
    if reset:
        maxrss_before = _maxrss()  # the RSS at the reset, in ru_maxrss's own accounting
    times = []
    for _ in range(point["repeats"]):
        start = time.perf_counter()
        run(split)
        times.append(time.perf_counter() - start)
    peak = _maxrss()
    growth = max(peak - maxrss_before, 0)
    seconds = min(times)
    batch = min(batch_size, len(split.input_ids))
    return {
        "op": point["op"],
        "dtype": dtype,
        "tokens": split.n_tokens,
        "params": sum(p.numel() for p in model.parameters()),
        "seconds": round(seconds, 4),
        "tok_s": round(split.n_tokens / seconds, 1),
        "rss_before_mb": round(rss_before / MB, 1),
        "peak_rss_mb": round(peak / MB, 1),
        "peak_growth_mb": round(growth / MB, 1),
        "peak_method": "clear_refs+ru_maxrss" if reset else "ru_maxrss delta (lower bound)",
        "estimate_mb": round(analytic_estimate(model, seq_len, "forward").bytes(batch) / MB, 1),
    }


# -- the sweep ------------------------------------------------------------------------------------------------------


def run_point(point: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--point", json.dumps(point)],
        capture_output=True,
        text=True,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"op": point["op"], "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log x (1.0: linear scaling); None with fewer than two points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2 or len({x for x, _ in pts}) < 2:
        return None
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    return round(sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts), 3)


def summarise(rows: list[dict], x: str) -> dict:
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return {}
    rates = [r["tok_s"] for r in ok]
    out = {
        f"time_vs_{x}_loglog_slope": loglog_slope([r[x] for r in ok], [r["seconds"] for r in ok]),
        "tok_s_min": min(rates),
        "tok_s_max": max(rates),
        "tok_s_max_over_min": round(max(rates) / min(rates), 3),
    }
    if x == "tokens":
        growth = [r["peak_growth_mb"] for r in ok]
        out |= {"peak_growth_mb_min": min(growth), "peak_growth_mb_max": max(growth)}
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    (ax_t, ax_r), (ax_m, ax_p) = axes
    markers = {"statistics": "o", "evaluation": "s"}
    for op, rows in result["by_tokens"].items():
        rows = [r for r in rows if "error" not in r]
        if not rows:
            continue
        xs = [r["tokens"] for r in rows]
        ax_t.loglog(xs, [r["seconds"] for r in rows], marker=markers[op], label=op)
        ax_r.semilogx(xs, [r["tok_s"] for r in rows], marker=markers[op], label=op)
        ax_m.semilogx(xs, [r["peak_growth_mb"] for r in rows], marker=markers[op], label=f"{op}: measured")
        if not any(line.get_label().startswith("estimate") for line in ax_m.lines):  # the same for every op
            ax_m.semilogx(xs, [r["estimate_mb"] for r in rows], ls=":", color="grey", label="estimate (forward)")
        # a linear reference through the first point
        ax_t.loglog(xs, [rows[0]["seconds"] * x / xs[0] for x in xs], ls=":", color="grey", lw=1)
    for op, rows in result["by_size"].items():
        rows = [r for r in rows if "error" not in r]
        if not rows:
            continue
        ax_p.loglog([r["params"] for r in rows], [r["seconds"] for r in rows], marker=markers[op], label=op)
        if len(ax_p.lines) == 1:  # label the sizes once
            for r in rows:
                ax_p.annotate(
                    r["size"], (r["params"], r["seconds"]), fontsize=7, xytext=(3, -9), textcoords="offset points"
                )
    settings = result["settings"]
    ax_t.set(xlabel="tokens", ylabel="seconds", title="time vs token budget (dotted: linear)")
    ax_r.set(xlabel="tokens", ylabel="tokens / s", title="throughput vs token budget", ylim=(0, None))
    ax_m.set(xlabel="tokens", ylabel="MB", title="peak RSS growth during the pass", ylim=(0, None))
    ax_p.set(xlabel="parameters", ylabel="seconds", title=f"time vs model size ({settings['size_tokens']} tokens)")
    for ax in axes.flat:
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(
        f"{settings['model']} ({result['dtype']}), seq_len {settings['seq_len']}, batch {settings['batch_size']}, "
        f"{result['threads']} thread(s)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        hidden, _, layers = item.lower().partition("x")
        sizes.append((int(hidden), int(layers)))
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="model of the token-budget sweep")
    ap.add_argument("--dtype", default="auto", help="auto, bf16 or fp32 (both sweeps)")
    ap.add_argument("--data", default="python-stdlib")
    ap.add_argument("--tokens", default=DEFAULT_TOKENS, help="comma-separated token budgets ('' to skip)")
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated HIDDENxLAYERS Llama sizes ('' to skip)")
    ap.add_argument("--size-tokens", type=int, default=4096, help="token budget of the model-size sweep")
    ap.add_argument("--vocab", type=int, default=49152, help="vocabulary of the model-size sweep (SmolLM2's)")
    ap.add_argument("--ops", default=",".join(OPS), help="comma-separated: statistics, evaluation")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--importance", default="abs", help="statistics collected (comma-separated, plus 'mean')")
    ap.add_argument("--repeats", type=int, default=1, help="timed passes per point (best kept)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the plot and JSON")
    ap.add_argument("--format", choices=("svg", "png"), default="svg")
    ap.add_argument("--point", help=argparse.SUPPRESS)  # internal: measure one point in this process
    args = ap.parse_args()

    if args.point:
        print(json.dumps(measure(json.loads(args.point))))
        return

    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    if unknown := set(ops) - set(OPS):
        ap.error(f"unknown ops {sorted(unknown)}: use {', '.join(OPS)}")
    budgets = [int(float(t)) for t in args.tokens.split(",") if t.strip()]
    sizes = parse_sizes(args.sizes)
    common = dict(
        dtype=args.dtype,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        importance=args.importance,
        repeats=args.repeats,
        threads=args.threads,
    )
    points = [
        dict(common, kind="tokens", op=op, tokens=t, model=args.model, data=args.data) for t in budgets for op in ops
    ]
    points += [
        dict(common, kind="size", op=op, tokens=args.size_tokens, hidden=h, layers=n, vocab=args.vocab)
        for h, n in sizes
        for op in ops
    ]
    by_tokens = {op: [] for op in ops}
    by_size = {op: [] for op in ops}
    load_start = os.getloadavg()
    for i, point in enumerate(points, 1):
        what = f"{point['tokens']} tokens" if point["kind"] == "tokens" else f"{point['hidden']}x{point['layers']}"
        print(f"[{i}/{len(points)}] {point['op']}: {what}", file=sys.stderr, flush=True)
        row = run_point(point)
        if point["kind"] == "tokens":
            by_tokens[point["op"]].append(row)
        else:
            row = {"size": what, "hidden": point["hidden"], "layers": point["layers"], **row}
            by_size[point["op"]].append(row)
        if "error" in row:
            print(f"    failed: {row['error']}", file=sys.stderr)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = {r["dtype"] for rows in (*by_tokens.values(), *by_size.values()) for r in rows if "dtype" in r}
    result = {
        "settings": {
            "model": args.model,
            "data": args.data,
            "seq_len": args.seq_len,
            "batch_size": args.batch_size,
            "importance": args.importance,
            "kinds": ["ff", "attn"],
            "repeats": args.repeats,
            "size_tokens": args.size_tokens,
            "vocab": args.vocab,
        },
        "dtype": ",".join(sorted(dtypes)) or args.dtype,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "by_tokens": by_tokens,
        "by_size": by_size,
        "summary": {
            "by_tokens": {op: summarise(rows, "tokens") for op, rows in by_tokens.items()},
            "by_size": {op: summarise(rows, "params") for op, rows in by_size.items()},
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    figure = args.out / f"scaling.{args.format}"
    plot(result, figure)
    result["plot"] = str(figure)
    (args.out / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
