"""Sensitivity of selective pruning to the fraction pruned per step and the importance function (the paper's
sensitivity figure; issue 20, section 3).

For each fraction f per step, one `unlearn.sweep` over the importance functions (with the random control) of the
published method (`--preset paper`: zero ablation, no healing) on the default scenario (forget python-stdlib,
retain general-english, bundled model), with steps = total / f so that every curve ends at the same share of the
feed-forward neurons. Prints one JSON object: per (fraction, importance) the final forget / retain drops (top-1 and
skip50 top-1), the steps and the seconds, plus the machine's CPU level; writes each fraction's trade-off figure
(every importance's curve, from the sweep's own per-step records) as SVG into --figures.

    python bench/sensitivity.py --out /tmp/sens --figures docs/figures            # as measured in the docs
    python bench/sensitivity.py --quick --out /tmp/sens                          # a smaller, faster grid
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import unlearn
from unlearn.models.load import cpu_level
from unlearn.report import plots
from unlearn.report.build import tradeoff_points
from unlearn.report.data import load_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the sweeps (points already done are skipped)")
    ap.add_argument("--figures", help="folder for one SVG trade-off figure per fraction")
    ap.add_argument("--fractions", default="0.01,0.02,0.04", help="feed-forward fractions pruned per step")
    ap.add_argument("--importances", default="freq,abs,rms,std,random", help="importance functions")
    ap.add_argument("--total", type=float, default=0.08, help="share of the feed-forward neurons pruned in all")
    ap.add_argument("--stats-tokens", type=int, default=4096)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument(
        "--quick", action="store_true", help="fractions 0.02,0.04; 2048 statistics / 1024 evaluation tokens"
    )
    args = ap.parse_args()
    if args.quick:
        args.fractions, args.stats_tokens, args.eval_tokens = "0.02,0.04", 2048, 1024
    importances = args.importances.split(",")
    rows, start = [], time.perf_counter()
    for frac in map(float, args.fractions.split(",")):
        steps = max(1, round(args.total / frac))
        base = {
            "preset": "paper",
            "method_config": {"ff_frac": frac, "steps": steps},
            "stats_tokens": args.stats_tokens,
            "eval_tokens": args.eval_tokens,
            "val_tokens": 0,
            "save_model": False,
            "report": False,
            "out_dir": args.out,
            "name": f"ff_frac={frac}",
        }
        t0 = time.perf_counter()
        record = unlearn.sweep(base, {"importance": importances})
        seconds = time.perf_counter() - t0
        sweep_dir = Path(args.out) / base["name"]
        series = []
        for row in record["points"]:
            run = load_run(sweep_dir / row["run_dir"])
            series.append({"label": row["params"]["importance"], "points": tradeoff_points(run)})
            rows.append(
                {
                    "ff_frac": frac,
                    "importance": row["params"]["importance"],
                    "steps": steps,
                    "forget_drop_top1": row["forget_drop"]["top1"],
                    "retain_drop_top1": row["retain_drop"]["top1"],
                    "forget_drop_skip50": row["forget_drop"]["skip50_top1"],
                    "retain_drop_skip50": row["retain_drop"]["skip50_top1"],
                    "pareto_top1": row["pareto"]["top1"],
                    "seconds": round(run.manifest["timings_s"]["total"], 1),
                }
            )
        if args.figures:
            Path(args.figures).mkdir(parents=True, exist_ok=True)
            svg = plots.tradeoff(series)
            (Path(args.figures) / f"sensitivity-ff{frac}.svg").write_text(svg, encoding="utf-8")
        print(f"ff_frac={frac}: {len(importances)} points in {seconds:.0f} s", file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "cpu_level": cpu_level(),
                "total_share": args.total,
                "stats_tokens": args.stats_tokens,
                "eval_tokens": args.eval_tokens,
                "seconds": round(time.perf_counter() - start, 1),
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
