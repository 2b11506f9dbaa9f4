"""Statistics collection vs taker 1.2.3 (Pochinkov & Schoots' selective pruning library) on the same tokens.

Prints one JSON object. Both sides run the same checkpoint (the bundled model's converted safetensors folder,
found or produced by ``unlearn.models.load``) with the same torch and transformers versions, dtype, thread count
and token chunks (built by ``unlearn.data.chunking.build_corpus``):

* taker: ``taker.activations.get_midlayer_data`` — what taker's ``prune_and_evaluate`` calls to gather the FF
  (``mlp_pre_out``) and attention (``attn_pre_out``) neuron statistics — with the settings its pruning uses
  (``calculate_ff=True, calculate_attn=True``, no token skipping), on a ``taker.model.Model`` loaded from the
  checkpoint folder. It runs in a separate virtual environment (created once, then reused; default
  ``<unlearn cache>/bench/taker-1.2.3-venv``) in a child process that this script drives over a pipe. taker takes
  text: each chunk is handed over as one text (its decoded tokens), and ``Model.get_ids`` is replaced by a lookup
  that returns exactly that chunk's token ids, so taker sees the very same tokens without tokenising inside the
  timed region (``taker_settings.retokenized_exact`` says how many chunks taker's own tokenizer would have
  reproduced from the text). taker runs one chunk per forward pass (batch 1): that is how it is written.
* ours: ``unlearn.models.hooks.collect_statistics`` (FF + attention) collecting the statistics named by
  ``--importance`` (default: all of freq, abs, rms, std and mean, which covers what taker's collector produces)
  with ``--batch-size`` chunks per forward (default 1, taker's shape), and a plain forward of the model body
  (no LM head) on the same batches as the baseline.

taker warms up on its first two chunks, ours with one full pass; then ``--repeats`` rounds run taker, ours and the
plain forward in turn (interleaved, so drifting machine load hits all three alike) and each keeps its best time.
Only the collection is timed (model loading and the one-off venv set-up are not). ``agreement`` compares taker's
per-neuron statistics with ours (Pearson r and relative RMS difference over all neurons, per kind): taker's
``abs`` (pos_mass + |neg_mass| = E|x|), ``freq`` (pos_count), ``mean`` and ``var`` (taker's summary field ``std``
holds the sample variance, compared with our std squared). taker counts every token while ours leaves special
tokens (separators) out, so for ``agreement`` ours is collected once more, untimed, over every token;
``agreement_ours_without_special_tokens`` compares taker with the timed (special tokens left out) statistics.
What differences remain come from taker rounding its summaries to the model dtype and from bf16 sums.

The venv gets ``torch`` and ``transformers`` pinned to this environment's versions (so pip keeps the local CPU
torch wheel instead of pulling CUDA wheels, and both sides run identical modelling code) and ``taker==1.2.3``.
The child runs with WANDB_MODE=disabled, HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1 and HF_DATASETS_OFFLINE=1.

    python bench/taker_compare.py                           # 8192 tokens, bf16, batch 1, 3 repeats
    python bench/taker_compare.py --tokens 1024 --repeats 1  # quick check (first run also builds the venv)
    python bench/taker_compare.py --batch-size 8             # ours batched (taker always runs batch 1)
    python bench/taker_compare.py --importance abs --venv /tmp/taker-venv
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TAKER_VERSION = "1.2.3"
TARGET_SPEEDUP = 2.5
WARMUP_CHUNKS = 2
TAKER_DTYPES = {"bf16": "bfp16", "fp32": "fp32", "fp16": "fp16"}  # taker's names for the dtypes
CHILD_ENV = {
    "WANDB_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
PIN_FILE = "unlearn-bench-pins.json"


# ---------------------------------------------------------------------------------------------------------------
# child: runs inside the taker venv (imports only taker, torch and the standard library)
# ---------------------------------------------------------------------------------------------------------------


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def taker_child(spec_path: str) -> None:
    """Load the checkpoint with taker, then answer ``run`` (one timed pass) and ``finish`` (save, exit) on stdin."""
    # taker prints freely: keep the original stdout for our replies and send everything else to stderr
    reply_stream = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def reply(obj: dict) -> None:
        reply_stream.write(json.dumps(obj) + "\n")

    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    from taker.activations import get_midlayer_data
    from taker.data_classes import EvalConfig
    from taker.model import Model

    start = time.perf_counter()
    opt = Model(spec["model"], dtype=spec["taker_dtype"], model_device="cpu", use_accelerator=False)
    load_s = time.perf_counter() - start
    rows = torch.load(spec["ids"], weights_only=True)
    decode = opt.tokenizer.decode
    texts = [decode(r.tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False) for r in rows]
    exact = sum(torch.equal(opt.get_ids(t)[0].cpu(), r) for t, r in zip(texts, rows))
    items = [{"text": t} for t in texts]

    # taker tokenises each text in get_input_activations via opt.get_ids: hand back the chunk's own ids instead
    feed = {"pos": 0}

    def exact_ids(text: str):
        i = feed["pos"]
        feed["pos"] += 1
        if i >= len(texts) or texts[i] != text:
            raise RuntimeError(f"taker asked for an unexpected text at position {i}")
        return rows[i : i + 1].to(opt.device)

    opt.get_ids = exact_ids

    def collect(n_chunks: int):
        feed["pos"] = 0
        config = EvalConfig(
            "unlearn-bench",
            dataset_custom_load_fn=lambda: {"train": items[:n_chunks]},
            dataset_split="train",
            is_train_mode=True,
            streaming=False,
        )
        printed = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(printed):
            out = get_midlayer_data(
                opt, eval_config=config, sample_size=n_chunks * rows.shape[1], calculate_ff=True, calculate_attn=True
            )
        seconds = time.perf_counter() - t0
        # get_midlayer_data skips a text that raises, printing a line: make sure every chunk went through
        if feed["pos"] != n_chunks or out.texts_viewed != n_chunks or "Error" in printed.getvalue():
            raise RuntimeError(f"taker processed {feed['pos']}/{n_chunks} chunks: {printed.getvalue().strip()[-500:]}")
        return out, seconds

    collect(min(WARMUP_CHUNKS, len(rows)))
    reply(
        {
            "ready": True,
            "load_s": round(load_s, 2),
            "threads": torch.get_num_threads(),
            "retokenized_exact": int(exact),
            "chunks": len(rows),
            "dtype": str(opt.dtype).replace("torch.", ""),
            "attn_implementation": getattr(opt.predictor.config, "_attn_implementation", None),
            "n_hooks": len(opt.hooks.handles),
            "versions": {
                "taker": _dist_version("taker"),
                "torch": torch.__version__,
                "transformers": _dist_version("transformers"),
                "welford_torch": _dist_version("welford-torch"),
                "python": platform.python_version(),
            },
        }
    )
    last = None
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            last, seconds = collect(len(rows))
            reply({"seconds": seconds})
        elif command == "finish":
            if last is None:
                last, _ = collect(len(rows))
            summaries = {"ff": last.mlp.orig, "attn": last.attn.orig}
            stats = {
                kind: {
                    # taker's "abs" score is pos_mass + |neg_mass|; its "std" field holds the sample variance
                    "abs": (s.pos_mass + s.neg_mass.abs()).float().reshape(s.mean.shape[0], -1),
                    "freq": s.pos_count.float().reshape(s.mean.shape[0], -1),
                    "mean": s.mean.float().reshape(s.mean.shape[0], -1),
                    "var": s.std.float().reshape(s.mean.shape[0], -1),
                }
                for kind, s in summaries.items()
            }
            torch.save(stats, spec["out"])
            reply({"saved": spec["out"], "summary_dtype": str(last.mlp.orig.mean.dtype).replace("torch.", "")})
            return


# ---------------------------------------------------------------------------------------------------------------
# parent: builds the venv and the chunks, drives the child, times ours
# ---------------------------------------------------------------------------------------------------------------


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path, pins: list[str]) -> Path:
    """Create ``venv`` once and install ``pins`` into it (again only if the pins changed); return its python."""
    python = venv_python(venv)
    pin_file = venv / PIN_FILE
    if python.is_file() and pin_file.is_file() and json.loads(pin_file.read_text()) == pins:
        return python
    print(f"setting up taker venv in {venv} ({' '.join(pins)}) ...", file=sys.stderr)
    if not python.is_file():
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # torch alone first, so that pip takes the local CPU wheel and never resolves torch against CUDA builds
    torch_pin = [p for p in pins if p.startswith("torch==")]
    for step in (torch_pin, pins):
        done = subprocess.run([str(python), "-m", "pip", "install", *step], stdout=sys.stderr, stderr=sys.stderr)
        if done.returncode:
            raise SystemExit(f"pip install {' '.join(step)} failed in {venv} (exit {done.returncode})")
    pin_file.write_text(json.dumps(pins))
    return python


def taker_venv(venv: Path | None = None) -> tuple[Path, Path]:
    """(the taker venv, its python): ``venv`` or ``<unlearn cache>/bench/taker-VERSION-venv``, built once with
    ``torch`` and ``transformers`` pinned to this environment's versions and ``taker==VERSION``."""
    import torch
    import transformers

    from unlearn.models.load import cache_dir

    venv = venv or cache_dir() / "bench" / f"taker-{TAKER_VERSION}-venv"
    pins = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"]
    return venv, ensure_venv(venv, pins + [f"taker=={TAKER_VERSION}"])


class TakerChild:
    """The taker process (``script --taker-child SPEC``, default this file): started with a spec file, then one
    JSON line back per command sent."""

    def __init__(self, python: Path, spec: Path, threads: int, log: Path, script: Path | None = None):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(CHILD_ENV)
        env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
        self.log_path = log
        self._log = open(log, "w")  # closed in close()
        self.proc = subprocess.Popen(
            [str(python), str(script or Path(__file__).resolve()), "--taker-child", str(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = self.log_path.read_text()[-3000:]
            raise SystemExit(f"taker child exited ({self.proc.returncode}) without answering; its log ends:\n{tail}")
        return json.loads(line)

    def send(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def agreement(ours: dict, theirs: dict, needs: tuple[str, ...]) -> dict:
    """Pearson r and relative RMS difference of per-neuron statistics, ours vs taker's, per kind."""
    import torch

    getters = {
        "abs": ("abs", lambda s: s.importance("abs")),
        "freq": ("freq", lambda s: s.importance("freq")),
        "mean": ("mean", lambda s: s.mean),
        "var": ("std", lambda s: s.importance("std").square()),
    }
    out: dict = {}
    for name, (need, get) in getters.items():
        if need not in needs:
            continue
        out[name] = {}
        for kind, stats in theirs.items():
            layers = sorted(layer for (k, layer) in ours if k == kind)
            a = torch.stack([get(ours[(kind, layer)]) for layer in layers]).double().flatten()
            b = stats[name].double().flatten()
            r = torch.corrcoef(torch.stack([a, b]))[0, 1]
            out[name][kind] = {
                "pearson": round(float(r), 5),
                "rel_rms_diff": round(float((a - b).norm() / b.norm().clamp_min(1e-30)), 5),
            }
    return out


def git_state() -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True, text=True)
    except OSError:
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--taker-child":
        taker_child(sys.argv[2])
        return

    import torch
    import transformers

    from stats_throughput import model_and_chunks  # the same model and chunks as the statistics benchmark
    from unlearn.data.chunking import TokenSplit
    from unlearn.models.adapters import adapter_for
    from unlearn.models.hooks import IMPORTANCE, body, collect_statistics

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="bf16", choices=sorted(TAKER_DTYPES))
    ap.add_argument("--data", default="python-stdlib")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=1, help="chunks per forward for ours (taker always uses 1)")
    ap.add_argument(
        "--importance",
        default="all",
        help="statistics ours collects: importance functions (comma-separated, plus 'mean'), or 'all'",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    ap.add_argument(
        "--venv", type=Path, default=None, help=f"taker venv (default <cache>/bench/taker-{TAKER_VERSION}-venv)"
    )
    args = ap.parse_args()

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    needs = IMPORTANCE + ("mean",) if args.importance == "all" else tuple(args.importance.split(","))
    kinds = ("ff", "attn")

    venv, python = taker_venv(args.venv)

    loaded, split = model_and_chunks(args.model, args.dtype, args.data, args.tokens, args.seq_len)
    model, adapter = loaded.model, adapter_for(loaded.model)
    n = split.n_tokens

    with tempfile.TemporaryDirectory(prefix="taker-compare-") as tmp:
        tmp = Path(tmp)
        torch.save(split.input_ids, tmp / "ids.pt")
        spec = {
            "model": loaded.source,
            "taker_dtype": TAKER_DTYPES[args.dtype],
            "ids": str(tmp / "ids.pt"),
            "out": str(tmp / "taker_stats.pt"),
            "threads": threads,
        }
        (tmp / "spec.json").write_text(json.dumps(spec))
        child = TakerChild(python, tmp / "spec.json", threads, tmp / "taker.log")
        try:
            info = child.read()

            result: dict = {}

            @torch.inference_mode()
            def forward_body():
                for ids, _ in split.batches(args.batch_size):
                    body(model)(input_ids=ids, use_cache=False)

            def ours():
                result["stats"] = collect_statistics(
                    model, adapter, split, batch_size=args.batch_size, kinds=kinds, needs=needs
                )

            ours()  # warm-ups (taker's ran in the child before it said it was ready)
            forward_body()
            timings: dict[str, list[float]] = {"taker": [], "unlearn_stats": [], "forward_body": []}
            for _ in range(args.repeats):
                timings["taker"].append(child.send("run")["seconds"])
                for key, fn in (("unlearn_stats", ours), ("forward_body", forward_body)):
                    start = time.perf_counter()
                    fn()
                    timings[key].append(time.perf_counter() - start)
            saved = child.send("finish")
            theirs = torch.load(saved["saved"], weights_only=True)
        finally:
            child.close()

    # taker counts every token (check_skips=False) and ours leaves special tokens out: for the agreement check
    # (untimed) collect ours once more over every token, so that both describe the very same token set
    every_token = TokenSplit(split.input_ids, torch.zeros_like(split.special))
    same_set = collect_statistics(model, adapter, every_token, batch_size=args.batch_size, kinds=kinds, needs=needs)

    t_taker, t_ours, t_body = (min(timings[k]) for k in ("taker", "unlearn_stats", "forward_body"))
    print(
        json.dumps(
            {
                "model": args.model,
                "checkpoint": loaded.source,
                "dtype": loaded.dtype,
                "threads": threads,
                "taker_threads": info["threads"],
                "cpu_count": os.cpu_count(),
                "processor": platform.processor() or platform.machine(),
                "data": args.data,
                "tokens": n,
                "chunks": len(split.input_ids),
                "seq_len": args.seq_len,
                "batch_size": args.batch_size,
                "repeats": args.repeats,
                "kinds": list(kinds),
                "unlearn_statistics": list(needs),
                "taker_tok_s": round(n / t_taker, 1),
                "unlearn_stats_tok_s": round(n / t_ours, 1),
                "forward_body_tok_s": round(n / t_body, 1),
                "speedup_vs_taker": round(t_taker / t_ours, 3),
                "unlearn_vs_forward": round(t_body / t_ours, 3),
                "target_speedup_vs_taker": TARGET_SPEEDUP,
                "meets_target": t_taker / t_ours >= TARGET_SPEEDUP,
                "timings_s": {k: [round(t, 4) for t in v] for k, v in timings.items()},
                "taker_settings": {
                    "model": f"taker.model.Model(checkpoint, dtype={spec['taker_dtype']!r}, model_device='cpu', "
                    "use_accelerator=False)",
                    "hook_config": "taker default (Model.default_config)",
                    "n_hooks": info["n_hooks"],
                    "collection": "taker.activations.get_midlayer_data(opt, eval_config=<in-memory dataset, one "
                    "chunk per text>, sample_size=tokens, calculate_ff=True, calculate_attn=True)",
                    "check_skips": False,
                    "batch_size": 1,
                    "tokenisation": "Model.get_ids replaced by a lookup returning each chunk's exact ids",
                    "retokenized_exact": f"{info['retokenized_exact']}/{info['chunks']}",
                    "dtype": info["dtype"],
                    "summary_dtype": saved["summary_dtype"],
                    "attn_implementation": info["attn_implementation"],
                    "warmup_chunks": WARMUP_CHUNKS,
                    "load_s": info["load_s"],
                },
                "unlearn_attn_implementation": getattr(model.config, "_attn_implementation", None),
                "special_tokens": int(split.special.sum()),
                "agreement": agreement(same_set, theirs, needs),
                "agreement_ours_without_special_tokens": agreement(result["stats"], theirs, needs),
                "versions": {
                    "unlearn": _dist_version("unlearn-lm"),
                    "unlearn_git": git_state(),
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "python": platform.python_version(),
                    "taker_venv": info["versions"],
                },
                "venv": str(venv),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
