"""Robustness of forgetting (issue 23): for each method, the retain damage of its run and the recovery under
every audit attack, side by side, on the default scenario and on TOFU-mini.

Per method and scenario, one ``unlearn.run`` (default scenario) or the run folder ``bench/tofu_mini.py`` left
(TOFU-mini), then two audits of its model:

* **standard**: the audit's attacks with their default settings (``relearn`` 20 steps at lr 5e-5 on held-out
  forget data and on control data, ``quantize`` int8/int4, ``logit-lens``, ``ablate`` direction ablation, a bounded
  GCG-style ``suffix`` search, and on TOFU-mini ``relearn:oracle`` against the reference model that never saw
  the forget authors, whose ``oracle_gap`` is 0 when the method relearns no faster than that model);
* **strong**: ``relearn-sweep`` at 100 steps, lr 1e-4, full fine-tuning and LoRA.

Targets (issue 23): retain top-1 drop ≤ 5 %, skip50 top-1 drop ≤ 8 %; recovery ≤ 15 % under ``relearn:forget``,
≤ 30 % under the strong relearning, ≤ 5 % under quantisation and the logit lens. ``targets`` says which hold.

Prints one JSON object on stdout (progress on stderr):

    python bench/robustness.py --methods default,prune-heal --work /tmp/robust > robust.json
    python bench/tofu_mini.py --methods npo --work /tmp/tofu        # TOFU-mini: the target, reference and runs
    python bench/robustness.py --scenario tofu-mini --tofu-work /tmp/tofu --methods npo --work /tmp/robust-tofu

Variants of a method are rows too: ``--variants '{"undo": {"method_config": {"undo_alpha": 0.1}}}'`` runs the
default method with those settings under the label ``undo`` (``"method"`` or ``"preset"`` pick another base).
``--attacks relearn`` and ``--no-strong`` screen a variant cheaply: where the default relearning already brings back
more than its limit, the stronger one (more steps, a higher learning rate) is not expected to bring back less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

import unlearn
from unlearn.models.load import cpu_level

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tofu_mini import fail, log  # noqa: E402

PRESETS = ("default", "prune-heal", "paper")  # labels run as `unlearn run` presets ("default": no preset at all)
STANDARD = ["relearn", "quantize", "logit-lens", "ablate", "suffix"]
STRONG = {"sweep_steps": [100], "sweep_lr": [1e-4], "sweep_modes": ["full", "lora"]}
LIMITS = {"relearn:forget": 0.15, "strong": 0.30, "quantize": 0.05, "logit-lens": 0.05}
QUICK = {"relearn_steps": 2, "suffix_steps": 2, "suffix_probes": 1, "relearn_tokens": 512}


def run_config(label: str, work: Path, quick: bool, variant: dict | None = None) -> dict:
    """The ``unlearn.run`` config of ``label`` in the default scenario: a preset, a method with its defaults, or a
    ``variant`` ({"method" or "preset", "method_config"})."""
    cfg: dict = {"out_dir": str(work / "runs"), "name": label, "seed": 0}
    if variant is not None:
        cfg.update({k: v for k, v in variant.items() if k in ("method", "preset", "method_config")})
    elif label in PRESETS[1:]:
        cfg["preset"] = label
    elif label != "default":
        cfg["method"] = label
    if quick:
        cfg.update(eval_tokens=512, stats_tokens=1024, val_tokens=0)
    return cfg


def default_run(label: str, work: Path, quick: bool, variant: dict | None = None) -> Path:
    """The run folder of ``label`` in the default scenario (run now, or reused)."""
    run_dir = work / "runs" / label
    if (run_dir / "manifest.json").is_file():
        log(f"{label}: reusing {run_dir}")
        return run_dir
    log(f"{label}: unlearn.run")
    return Path(unlearn.run(run_config(label, work, quick, variant)).run_dir)


def tofu_run(label: str, tofu_work: Path) -> Path:
    """The run folder ``bench/tofu_mini.py`` left for method ``label``."""
    run_dir = tofu_work / "runs" / label
    if not (run_dir / "manifest.json").is_file():
        fail(f"no TOFU-mini run of {label} in {tofu_work}: run bench/tofu_mini.py --work {tofu_work} --methods {label}")
    return run_dir


def audited(run_dir: Path, out: Path, attacks: list[str], settings: dict, **kw) -> dict:
    """The audit record of ``run_dir`` under ``attacks`` (reused from ``out`` when it is there)."""
    path = out / "audit.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return unlearn.audit(str(run_dir), attacks=attacks, settings=settings, out=out, console=None, **kw)


def recoveries(record: dict, strong: bool = False) -> dict:
    """``{attack:variant: recovery}`` of an audit record (strong: its relearn-sweep points, prefixed)."""
    out = {}
    for r in record["attacks"]:
        key = f"{r['attack']}:{r['variant']}"
        out[f"strong:{key}" if strong else key] = None if r["recovery"] is None else round(r["recovery"], 4)
        if r.get("oracle_gap") is not None:
            out[f"{key}:oracle_gap"] = round(r["oracle_gap"], 4)
    return out


def targets(row: dict) -> dict:
    """Which of issue 23's targets the row meets (None where it was not measured)."""

    def at_most(keys, limit):
        values = [v for k, v in row["recovery"].items() if keys(k) and v is not None and not k.endswith("oracle_gap")]
        return None if not values else max(values) <= limit

    return {
        "retain_top1_le_5pct": row["retain_drop_top1"] is not None and row["retain_drop_top1"] <= 0.05,
        "retain_skip50_le_8pct": row["retain_drop_skip50"] is not None and row["retain_drop_skip50"] <= 0.08,
        "relearn_le_15pct": at_most(lambda k: k == "relearn:forget", LIMITS["relearn:forget"]),
        "strong_relearn_le_30pct": at_most(lambda k: k.startswith("strong:"), LIMITS["strong"]),
        "quantize_le_5pct": at_most(lambda k: k.startswith("quantize:"), LIMITS["quantize"]),
        "logit_lens_le_5pct": at_most(lambda k: k.startswith("logit-lens:"), LIMITS["logit-lens"]),
    }


def measure(label: str, run_dir: Path, work: Path, args, audit_kw: dict, extra: dict) -> dict:
    """One method's row: its run's drops, every attack's recovery (audit settings ``extra`` added), the targets."""
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    after = metrics.get("after") or {}
    base = {**(QUICK if args.quick else {}), **extra}
    attacks = args.attacks + (["relearn:oracle"] if args.scenario == "tofu-mini" else [])
    start = time.perf_counter()
    folder = "standard" if args.attacks == STANDARD else "+".join(args.attacks)
    standard = audited(run_dir, work / "audits" / label / folder, attacks, dict(base), **audit_kw)
    strong_settings = {**base, **STRONG, **({"sweep_steps": [2]} if args.quick else {})}
    strong = {"attacks": []}
    if args.strong:
        strong = audited(run_dir, work / "audits" / label / "strong", ["relearn-sweep"], strong_settings, **audit_kw)
    row = {
        "run": str(run_dir),
        "forget_drop_top1": (after.get("forget_drop") or {}).get("top1"),
        "retain_drop_top1": (after.get("retain_drop") or {}).get("top1"),
        "retain_drop_skip50": (after.get("retain_drop") or {}).get("skip50_top1"),
        "utility_drop_top1": (after.get("utility_drop") or {}).get("top1"),
        "utility_drop_skip50": (after.get("utility_drop") or {}).get("skip50_top1"),
        "recovery": {**recoveries(standard), **recoveries(strong, strong=True)},
        "audit_s": round(time.perf_counter() - start, 1),
    }
    gaps = [v for k, v in row["recovery"].items() if k.endswith("oracle_gap")]
    row["oracle_gap"] = gaps[0] if gaps else None
    row["targets"] = targets(row)
    return row


def table(rows: dict) -> str:
    keys = sorted({k for r in rows.values() if "recovery" in r for k in r["recovery"]})
    head = ["method", "retain top-1", "retain skip50", *keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in rows.items():
        if "error" in r:
            lines.append(f"| {label} | error: {r['error']} |")
            continue
        cells = [r["retain_drop_top1"], r["retain_drop_skip50"], *(r["recovery"].get(k) for k in keys)]
        lines.append(f"| {label} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=("default", "tofu-mini"), default="default")
    ap.add_argument("--methods", default="default", help="comma-separated methods or presets (default, prune-heal, …)")
    ap.add_argument("--work", type=Path, default=Path("bench_out/robustness"), help="work folder (reused)")
    ap.add_argument("--tofu-work", type=Path, help="tofu-mini: the --work folder of bench/tofu_mini.py")
    ap.add_argument("--variants", type=json.loads, default={}, help='{"label": {"method_config": …}}')
    ap.add_argument("--attacks", default=",".join(STANDARD), help="the standard audit's attacks (comma-separated)")
    ap.add_argument("--no-strong", dest="strong", action="store_false", help="skip the strong relearning sweep")
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    args = ap.parse_args()
    t0 = time.perf_counter()
    args.attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    labels = [m.strip() for m in args.methods.split(",") if m.strip()] + list(args.variants)
    if args.variants and args.scenario != "default":
        fail("--variants runs the default scenario; for TOFU-mini give bench/tofu_mini.py --method-config")
    registered = unlearn.methods()
    unknown = [m for m in labels if m not in registered and m not in PRESETS and m not in args.variants]
    if unknown:
        fail(f"unknown method(s) {', '.join(unknown)}: use {', '.join([*PRESETS, *registered])}")
    audit_kw: dict = {}
    extra: dict = {}
    if args.scenario == "tofu-mini":
        if args.tofu_work is None:
            fail("--scenario tofu-mini needs --tofu-work (the work folder of bench/tofu_mini.py)")
        extra["reference"] = str(args.tofu_work / "reference")
        # TOFU-mini runs score every forget row; the audit keeps half of them as probes and relearns on the rest
        settings = json.loads((args.tofu_work / "settings.json").read_text(encoding="utf-8"))
        audit_kw["eval_tokens"] = 20 * settings["forget_authors"] // 2 * settings["seq_len"]  # 20 QA per author
    args.work.mkdir(parents=True, exist_ok=True)
    rows: dict = {}
    for label in labels:
        start = time.perf_counter()
        try:
            if args.scenario == "default":
                run_dir = default_run(label, args.work, args.quick, args.variants.get(label))
            else:
                run_dir = tofu_run(label, args.tofu_work)
            rows[label] = measure(label, run_dir, args.work, args, audit_kw, extra)
        except Exception as exc:  # noqa: BLE001 - one method failing must not stop the others
            traceback.print_exc(file=sys.stderr)
            rows[label] = {"error": f"{type(exc).__name__}: {exc}"}
        rows[label]["time_s"] = round(time.perf_counter() - start, 1)
        log(f"{label}: {rows[label]}")
    print(table(rows), file=sys.stderr)
    out = {
        "scenario": args.scenario,
        "quick": args.quick,
        "limits": LIMITS,
        "attacks": args.attacks,
        "strong": STRONG if args.strong else None,
        "variants": args.variants,
        "rows": rows,
        "cpu": cpu_level(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "unlearn_version": unlearn.__version__,
        "total_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
