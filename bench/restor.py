"""RESTOR on the bundled model: corrupt real-world facts, unlearn the corruption, measure recovery of the clean facts.

Following Rezaei et al. 2024 ("RESTOR: Knowledge Recovery in Machine Unlearning", arXiv:2411.00204), on facts built
offline from TOFU's real-world files (``world_facts_perturbed.jsonl`` and ``real_authors_perturbed.jsonl``: a
question about a real entity, its true answer and wrong ``perturbed_answer``s). Prints one JSON object (settings,
timings, one row per model) on stdout and a Markdown table on stderr; ``--out FILE`` also writes the JSON there.

1. **Facts.** The records of both files, shuffled with ``--seed``: the first ``--facts`` are corrupted (their
   misinformation = ``perturbed_answer[0]``), the next ``--retain-facts`` are the methods' retain data (true
   answers) and the next ``--heldout-facts`` are the suite's ``retain`` part (facts nothing trains on: collateral
   damage of corruption and unlearning). The suite's ``forget`` part is the corrupted facts with their true answer
   and their ``corrupt_answer``.
2. **Clean** = the bundled model. **Corrupted** = ``unlearn.learn`` on the corrupted facts (question, wrong answer;
   QA format: chat template, loss on the answer) for ``--epochs`` at ``--lr``.
3. **Unlearned**: each of ``--methods`` runs with ``unlearn.run`` on the corrupted model, forget = the corrupting
   QA records, retain = the retain facts, with the small budgets of ``METHOD_CONFIGS``.
4. The ``restor`` suite on every model, the clean model's results as ``reference`` and the corrupted model's as
   ``original``: corruption rate, answer probabilities, greedy-answer accuracy and ROUGE-L against the true and the
   corrupt answer, recovery = (model − corrupted) / (clean − corrupted), restored rate, agreement with the clean
   model's answers.

Every step reuses a finished piece of ``--work`` (a learnt model, a run folder, evaluated suite parts) when the
settings saved there are the same, so an interrupted benchmark resumes. Run it under the shared lock:

    flock /tmp/heavy.lock python bench/restor.py --out bench/results/restor.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled model needs no network (set before transformers loads)

import unlearn  # noqa: E402
from tofu_mini import fail, log, read_jsonl, write_jsonl  # noqa: E402 - this folder's TOFU helpers

DEFAULT_TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"
SOURCES = ("world_facts_perturbed.jsonl", "real_authors_perturbed.jsonl")
TRAINED = {"steps": 20, "batch_size": 4}
# Small budgets for a 135M model on 2 CPU cores, as bench/tofu_mini.py: 20 optimizer steps of 4 forget (+ 4 retain)
# rows = two passes over 40 corrupted facts; gradient ascent and GradDiff at 2e-5 (they diverge fast), the bounded
# NPO-family losses at 5e-5; selective pruning 3 steps of 0.5 % of FF and attention neurons.
METHOD_CONFIGS: dict[str, dict] = {
    "gradient-ascent": {**TRAINED, "lr": 2e-5},
    "graddiff": {**TRAINED, "lr": 2e-5},
    "npo": {**TRAINED, "lr": 5e-5},
    "simnpo": {**TRAINED, "lr": 5e-5},
    "selective-pruning": {"ff_frac": 0.005, "attn_frac": 0.005, "steps": 3},
}
COLUMNS = [  # (key of a row, header)
    ("corruption_rate", "corruption rate"),
    ("p_true", "P(true)"),
    ("p_corrupt", "P(corrupt)"),
    ("accuracy_true", "acc. true"),
    ("accuracy_corrupt", "acc. corrupt"),
    ("rougeL_true", "ROUGE-L true"),
    ("recovery_p_true", "recovery P(true)"),
    ("recovery_accuracy", "recovery acc."),
    ("restored_rate", "restored"),
    ("clean_agreement", "clean agreement"),
    ("heldout_p_true", "held-out P(true)"),
    ("heldout_accuracy", "held-out acc."),
    ("heldout_clean_agreement", "held-out clean agreement"),
    ("time_s", "time (s)"),
]


def select_facts(tofu: Path, n_forget: int, n_retain: int, n_heldout: int, seed: int) -> dict[str, list[dict]]:
    """The facts of every role, disjoint, as records for training (``*_train``) and for the suite."""
    pool = [r for name in SOURCES for r in read_jsonl(tofu / name) if r.get("perturbed_answer")]
    random.Random(seed).shuffle(pool)
    need = n_forget + n_retain + n_heldout
    if need > len(pool):
        fail(f"--facts + --retain-facts + --heldout-facts = {need} > the {len(pool)} facts of {', '.join(SOURCES)}")
    forget = pool[:n_forget]
    retain = pool[n_forget : n_forget + n_retain]
    heldout = pool[n_forget + n_retain : need]
    fact = lambda r: {"question": r["question"], "answer": r["answer"], "corrupt_answer": r["perturbed_answer"][0]}  # noqa: E731
    return {
        "corrupt_train": [{"question": r["question"], "answer": r["perturbed_answer"][0]} for r in forget],
        "retain_train": [{"question": r["question"], "answer": r["answer"]} for r in retain],
        "forget": [fact(r) for r in forget],
        "retain": [fact(r) for r in heldout],
    }


def corrupt(args, data: str, out: Path) -> dict:
    """The corrupted model: the clean one fine-tuned on the misinformation (or a finished ``out`` reused)."""
    if (out / "learn.json").is_file():
        log(f"corrupted: reusing {out}")
        record = json.loads((out / "learn.json").read_text(encoding="utf-8"))
    else:
        log(f"corrupted: learning {data} -> {out}")
        record = unlearn.learn(
            args.model,
            data,
            out,
            format="qa",
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            seed=args.seed,
            dtype=args.dtype,
            device=args.device,
        )
    losses = [e["loss"] for e in record["log"]]
    return {
        "steps": len(losses),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "time_s": record["timings_s"]["total"],
    }


def evaluate(model: str, data: list[str], out: Path, args, *, clean: str | None, corrupted: str | None) -> dict:
    start = time.perf_counter()
    result = unlearn.evaluate_suite(
        model,
        "restor",
        data,
        settings={"max_new_tokens": args.max_new_tokens},
        reference=clean,
        original=corrupted,
        out=out,
        batch_size=args.eval_batch_size,
        dtype=args.dtype,
        device=args.device,
    )
    log(f"  evaluated {model} in {time.perf_counter() - start:.0f} s (reused: {result['reused'] or 'none'})")
    return result


def row_of(result: dict, time_s: float | None) -> dict:
    s = result["summary"]
    f, r = s["forget"], s.get("retain", {})
    r4 = lambda x: None if x is None else round(float(x), 4)  # noqa: E731
    row = {k: r4(f.get(k)) for k in ("corruption_rate", "p_true", "p_corrupt", "accuracy_true", "accuracy_corrupt")}
    row["rougeL_true"], row["rougeL_corrupt"] = r4(f.get("rougeL_true")), r4(f.get("rougeL_corrupt"))
    for key in ("recovery_p_true", "recovery_accuracy", "restored_rate", "clean_agreement", "clean_rougeL"):
        row[key] = r4(s.get(key))
    row["recovery"] = {k: r4(v) for k, v in (f.get("recovery") or {}).items()}
    row["heldout_p_true"], row["heldout_accuracy"] = r4(r.get("p_true")), r4(r.get("accuracy_true"))
    row["heldout_corruption_rate"] = r4(r.get("corruption_rate"))
    row["heldout_clean_agreement"] = r4(r.get("clean_agreement"))
    row["time_s"] = None if time_s is None else round(time_s, 1)
    row["results"] = result["path"]
    return row


def method_spec(label: str) -> tuple[str, dict]:
    """``NAME`` or ``NAME:KEY=VALUE:KEY=VALUE`` (values read as JSON where they parse): the method and its settings,
    ``METHOD_CONFIGS``' with the given ones on top."""
    name, *pairs = label.split(":")
    cfg = dict(METHOD_CONFIGS.get(name, {}))
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--methods entry {label!r}: write NAME:KEY=VALUE:KEY=VALUE")
        try:
            cfg[key] = json.loads(value)
        except ValueError:
            cfg[key] = value
    return name, cfg


def unlearned(label: str, name: str, cfg: dict, files: dict, args, work: Path) -> tuple[str, dict]:
    """Run ``name`` with ``cfg`` on the corrupted model, in ``runs/<label>`` (or reuse that finished run folder when
    it ran with the same settings): (the saved model, the run's time and stop reason)."""
    run_dir = work / "runs" / re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)
    marker = run_dir / "bench-method.json"
    if (run_dir / "manifest.json").is_file():
        if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) != cfg:
            fail(f"{run_dir} ran {name} with other settings than {cfg}: choose another --work")
        log(f"{label}: reusing {run_dir}")
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    else:
        log(f"{name}: unlearning with {cfg}")
        rows = max(args.facts, args.retain_facts)
        result = unlearn.run(
            {
                "model": files["corrupted"],
                "dtype": args.dtype,
                "device": args.device,
                "forget": {"source": files["corrupt_train"], "format": "qa"},
                "retain": {"source": files["retain_train"], "format": "qa"},
                "method": name,
                "method_config": cfg,
                "seq_len": args.seq_len,
                "stats_tokens": rows * args.seq_len,
                "eval_tokens": args.facts * args.seq_len,
                "val_tokens": 0,
                "batch_size": args.batch_size,
                "seed": args.seed,
                "report": False,
                "out_dir": str(work / "runs"),
                "name": run_dir.name,
            }
        )
        manifest, metrics = result.manifest, result.metrics
        marker.write_text(json.dumps(cfg) + "\n", encoding="utf-8")
    return str(run_dir / "model"), {"time_s": manifest["timings_s"]["total"], "stop_reason": metrics.get("stop_reason")}


def machine() -> dict:
    """Python, cores and the CPU's bf16 level (AVX-512 BF16 / AMX or AVX2 only): timings differ several-fold."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text(encoding="utf-8").split())
    except OSError:
        flags = set()
    level = [f for f in ("amx_bf16", "avx512_bf16", "avx2") if f in flags]
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "cpu_flags": level}


def table(rows: dict) -> str:
    def fmt(key, v):
        if v is None:
            return "–"
        return f"{v:.0f}" if key == "time_s" else f"{v:.3f}"

    lines = ["| model | " + " | ".join(h for _, h in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:100]} |" + " |" * (len(COLUMNS) - 1))
        else:
            lines.append(f"| {name} | " + " | ".join(fmt(k, r.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tofu", type=Path, default=DEFAULT_TOFU, help="folder of TOFU's real-world JSONL files")
    ap.add_argument(
        "--work", type=Path, default=Path("/tmp/unlearn-restor"), help="work folder (reused when it matches)"
    )
    ap.add_argument("--out", type=Path, help="also write the JSON result to this file")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument(
        "--methods",
        default=",".join(METHOD_CONFIGS),
        help="comma-separated methods, each NAME or NAME:KEY=VALUE:... (settings on top of METHOD_CONFIGS')",
    )
    ap.add_argument("--facts", type=int, default=40, help="facts corrupted (and unlearnt)")
    ap.add_argument("--retain-facts", type=int, default=40, help="true facts the methods retain")
    ap.add_argument("--heldout-facts", type=int, default=40, help="untouched facts the suite's retain part scores")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=float, default=5.0, help="epochs of learning the misinformation")
    ap.add_argument("--lr", type=float, default=2e-4, help="learning rate of the corruption")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=72, help="tokens per QA row (the longest fact: 63)")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--eval-batch-size", type=int, default=20)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    t0 = time.perf_counter()
    specs = {label: method_spec(label) for label in (m.strip() for m in args.methods.split(",")) if label}
    registered = unlearn.methods()
    unknown = [name for name, _ in specs.values() if name not in registered]
    if unknown:
        fail(f"unknown method(s) {', '.join(unknown)}: use {', '.join(registered)}")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("work", "out")}
    settings["method_configs"] = {label: cfg for label, (_, cfg) in specs.items()}
    work, saved = args.work, args.work / "settings.json"
    if saved.is_file():
        old = json.loads(saved.read_text(encoding="utf-8"))
        differ = [k for k in settings if k not in ("methods", "method_configs") and old.get(k) != settings[k]]
        if differ:
            fail(f"work folder {work} holds other settings ({', '.join(differ)}): choose another --work")
    work.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")

    facts = select_facts(args.tofu, args.facts, args.retain_facts, args.heldout_facts, args.seed)
    files = {k: write_jsonl(work / "data" / f"{k}.jsonl", v) for k, v in facts.items()}
    data = [f"forget={files['forget']}", f"retain={files['retain']}"]
    files["corrupted"] = str(work / "corrupted")
    timings, rows = {}, {}

    log("clean: the bundled model")
    clean = evaluate(args.model, data, work / "evals" / "clean", args, clean=None, corrupted=None)
    rows["clean"] = row_of(clean, None)
    learn_info = corrupt(args, files["corrupt_train"], work / "corrupted")
    timings["corrupt"] = learn_info["time_s"]
    corrupted = evaluate(
        files["corrupted"], data, work / "evals" / "corrupted", args, clean=clean["path"], corrupted=None
    )
    rows["corrupted"] = row_of(corrupted, learn_info["time_s"])
    for label, (name, cfg) in specs.items():
        try:
            model, info = unlearned(label, name, cfg, files, args, work)
            result = evaluate(model, data, Path(model).parent, args, clean=clean["path"], corrupted=corrupted["path"])
            rows[label] = {**row_of(result, info["time_s"]), "stop_reason": info["stop_reason"], "config": cfg}
        except Exception as exc:  # one failing method must not hide the others' results
            traceback.print_exc(file=sys.stderr)
            rows[label] = {"error": f"{type(exc).__name__}: {exc}", "config": cfg}
        log(f"{label}: {rows[label]}")
    timings["total"] = round(time.perf_counter() - t0, 1)
    out = {
        "benchmark": "restor",
        "settings": settings,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "corruption": learn_info,
        "timings_s": timings,
        "rows": rows,
    }
    text = json.dumps(out, indent=1, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(table(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
