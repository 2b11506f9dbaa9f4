"""End to end: wall time and peak memory of the default `unlearn run`, with its stage breakdown.

Targets (issue 16): `unlearn run` ≤ 4 min on a 2-core AVX2-only CPU (fp32) and ≤ 2 min on AVX-512-BF16/AMX
(bf16); peak memory ≤ 3 GiB. The CPU's level, the dtype and the thread count are printed with the timings,
since every timing depends on them.

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

from unlearn.models.load import cpu_level


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
    level = manifest["versions"].get("cpu_level") or cpu_level()
    target = 120 if level in ("amx_bf16", "avx512_bf16") else 240
    timings = dict(manifest["timings_s"])
    heal = (manifest.get("method_facts") or {}).get("heal_seconds")
    if heal is not None:
        timings["healing (in method)"] = heal
    after = metrics["after"]
    print(
        json.dumps(
            {
                "command": "unlearn run " + " ".join(args.run_args),
                "cold_cache": args.cold,
                "cpu_level": level,
                "dtype": manifest["model"]["dtype"],
                "threads": manifest["versions"].get("threads"),
                "cpu_count": os.cpu_count(),
                "wall_s": round(wall, 1),
                "peak_rss_gib": round(peak_kib / 2**20, 2),
                "target_wall_s": target,
                "target_peak_gib": 3.0,
                "meets_targets": wall <= target and peak_kib / 2**20 <= 3.0,
                "stage_timings_s": timings,
                "top1_drop": {
                    w: round(after[f"{w}_drop"]["top1"], 4)
                    for w in ("forget", "retain", "utility")
                    if f"{w}_drop" in after
                },
                "skip50_top1_drop": {
                    w: round(after[f"{w}_drop"]["skip50_top1"], 4)
                    for w in ("forget", "retain", "utility")
                    if f"{w}_drop" in after
                },
                "python": platform.python_version(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
