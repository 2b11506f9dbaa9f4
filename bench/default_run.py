"""End to end: wall time and peak memory of the default `unlearn run` (targets: ≤ 3 min, ≤ 3 GiB on 2 cores).

Prints one JSON object. Runs ``unlearn run`` (plus any arguments given after ``--``) as a child process into a
temporary output folder, offline, and reads the child's peak resident memory from ``getrusage``; the stage
timings come from the run's own ``manifest.json``. ``--cold`` first points ``UNLEARN_CACHE`` at an empty
folder, so the GGUF conversion of the bundled model is included (a first run on a fresh machine).

    python bench/default_run.py                      # warm cache: the usual case
    python bench/default_run.py --cold               # include the one-off GGUF conversion
    python bench/default_run.py -- --steps 2         # any `unlearn run` arguments after --
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", action="store_true", help="start from an empty model cache (GGUF conversion)")
    ap.add_argument("run_args", nargs="*", help="extra `unlearn run` arguments (after --)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="unlearn-bench-") as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        if args.cold:
            env["UNLEARN_CACHE"] = str(Path(tmp) / "cache")
        out = Path(tmp) / "runs"
        cmd = [sys.executable, "-m", "unlearn", "run", "--out", str(out), "--name", "bench", "--quiet"]
        start = time.perf_counter()
        proc = subprocess.run(cmd + args.run_args, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"unlearn run failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        manifest = json.loads((out / "bench" / "manifest.json").read_text())
        metrics = json.loads((out / "bench" / "metrics.json").read_text())
    print(
        json.dumps(
            {
                "command": "unlearn run " + " ".join(args.run_args),
                "cold_cache": args.cold,
                "wall_s": round(wall, 1),
                "peak_rss_gib": round(peak_kib / 2**20, 2),
                "target_wall_s": 180,
                "target_peak_gib": 3.0,
                "meets_targets": wall <= 180 and peak_kib / 2**20 <= 3.0,
                "stage_timings_s": manifest["timings_s"],
                "forget_top1_drop": round(metrics["after"]["forget_drop"]["top1"], 4),
                "retain_top1_drop": round(metrics["after"]["retain_drop"]["top1"], 4),
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
