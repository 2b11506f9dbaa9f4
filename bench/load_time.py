"""Model load time from the conversion cache, each load in a fresh process (nothing warm in-process).

Prints one JSON object. First makes sure the converted checkpoint exists (one load; a GGUF source such as the
bundled model is converted on first use, and that conversion is timed when it happens), then times ``--runs``
loads, each in a new ``python -c 'from unlearn.models.load import load_model; load_model(...)'`` process:

* ``load_model_s``: ``load_model(model, dtype, device)`` inside the process (imports of ``transformers``
  included: ``unlearn`` defers them to the first load);
* ``import_s``: ``from unlearn.models.load import load_model`` (``torch`` and the ``unlearn`` package);
* ``process_s``: the whole process as the parent sees it (interpreter start-up and teardown included).

Each is reported as min and median against the target (``--target``, default 5 s for ``load_model``). Then one
more fresh process replays ``load_model`` step by step (imports, cache lookup, tokenizer, config, weights,
``.to(device)``) to show where the time goes, and with ``--cprofile`` one more runs ``load_model`` under
cProfile and lists the functions with the largest cumulative time.

The page cache is not dropped between runs (that needs root): the runs measure loads from a warm disk cache,
the usual case on a workstation; the first load after a reboot reads the checkpoint from disk as well.

    python bench/load_time.py                         # bundled SmolLM2-135M, 5 fresh loads
    python bench/load_time.py --runs 2 --cprofile
    python bench/load_time.py --fresh-cache           # also time the GGUF conversion (~40 s) into a temporary cache
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# one timed load, in a fresh process: prints a JSON line
LOAD = """
import time
t0 = time.perf_counter()
from unlearn.models.load import load_model
t1 = time.perf_counter()
loaded = load_model({model!r}, {dtype!r}, {device!r})
t2 = time.perf_counter()
import json
print(json.dumps({{"import_s": t1 - t0, "load_model_s": t2 - t1, "dtype": loaded.dtype, "source": loaded.source}}))
"""

# the first load: the cache lookup (a conversion when the cache is absent) timed apart from the load itself
FIRST = """
import time
from unlearn.models.load import load_model, resolve_source
t0 = time.perf_counter()
resolve_source({model!r})
t1 = time.perf_counter()
loaded = load_model({model!r}, {dtype!r}, {device!r})
t2 = time.perf_counter()
import json
print(json.dumps({{"resolve_s": t1 - t0, "load_model_s": t2 - t1, "dtype": loaded.dtype, "source": loaded.source}}))
"""

# load_model's steps one by one (keep in step with src/unlearn/models/load.py)
STEPS = """
import time
steps = {{}}
def step(name, t=[time.perf_counter()]):
    now = time.perf_counter()
    steps[name] = round(now - t[0], 4)
    t[0] = now
import torch
step("import torch")
import unlearn
from unlearn.models import load
step("import unlearn")
import transformers
step("import transformers")
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
step("transformers Auto classes")
load.quiet_transformers()
device = load.resolve_device({device!r})
dtype = load.resolve_dtype({dtype!r}, device)
step("resolve device and dtype")
source = load.resolve_source({model!r})
step("resolve_source (cache lookup)")
tokenizer = AutoTokenizer.from_pretrained(source)
step("tokenizer")
config = AutoConfig.from_pretrained(source)
step("config")
model = AutoModelForCausalLM.from_pretrained(source, dtype=load.DTYPES[dtype])
step("model weights (from_pretrained)")
model.to(device).eval()
model.requires_grad_(False)
step("to(device), eval")
import json, os
files = {{f: os.path.getsize(os.path.join(source, f)) for f in sorted(os.listdir(source))}}
print(json.dumps({{"steps": steps, "dtype": dtype, "checkpoint_files": files,
    "stored_dtype": str(getattr(config, "torch_dtype", None) or getattr(config, "dtype", None))}}))
"""

# load_model under cProfile: the top functions by cumulative time
PROFILE = """
import cProfile, io, json, pstats
profiler = cProfile.Profile()
profiler.enable()
from unlearn.models.load import load_model
load_model({model!r}, {dtype!r}, {device!r})
profiler.disable()
out = io.StringIO()
stats = pstats.Stats(profiler, stream=out)
rows = []
for (file, line, name), (cc, nc, tt, ct, callers) in stats.stats.items():
    rows.append((ct, tt, nc, f"{{file.split('site-packages/')[-1]}}:{{line}}({{name}})"))
rows.sort(reverse=True)
print(json.dumps([{{"cumulative_s": round(ct, 3), "own_s": round(tt, 3), "calls": nc, "function": f}}
    for ct, tt, nc, f in rows[:{top}]]))
"""


def child(code: str, env: dict) -> tuple[dict | list, float]:
    """Run ``python -c code`` in a fresh process; (its JSON output, wall seconds of the whole process)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:]) or "no output"
        raise SystemExit(f"child process failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1]), wall


def spread(values: list[float]) -> dict:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "runs": len(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=5, help="fresh-process loads timed")
    ap.add_argument("--target", type=float, default=5.0, help="target seconds for load_model from the cache")
    ap.add_argument("--fresh-cache", action="store_true", help="convert into a new temporary cache (times it)")
    ap.add_argument("--cprofile", action="store_true", help="also list the top functions of load_model")
    ap.add_argument("--top", type=int, default=20, help="functions listed by --cprofile")
    args = ap.parse_args()

    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")  # the bundled model needs no network
    tmp = None
    if args.fresh_cache:
        tmp = tempfile.mkdtemp(prefix="unlearn-cache-")
        env["UNLEARN_CACHE"] = tmp
    fmt = dict(model=args.model, dtype=args.dtype, device=args.device)
    try:
        from unlearn.models.load import cache_dir

        if tmp:
            os.environ["UNLEARN_CACHE"] = tmp  # so that cache_dir() below names the temporary cache
        models = cache_dir() / "models"
        before = set(os.listdir(models)) if models.is_dir() else set()
        load_avg_start = os.getloadavg()
        first, first_wall = child(FIRST.format(**fmt), env)
        after = set(os.listdir(models)) if models.is_dir() else set()
        converted = sorted(after - before)
        runs = [child(LOAD.format(**fmt), env) for _ in range(args.runs)]
        steps, steps_wall = child(STEPS.format(**fmt), env)
        profile = child(PROFILE.format(**fmt, top=args.top), env)[0] if args.cprofile else None
        load_avg_end = os.getloadavg()
        source = Path(first["source"])
        cache_bytes = sum(f.stat().st_size for f in source.rglob("*") if f.is_file()) if source.is_dir() else None
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    load_s = [r["load_model_s"] for r, _ in runs]
    result = {
        "model": args.model,
        "dtype": first["dtype"],
        "device": args.device,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_start": [round(x, 2) for x in load_avg_start],
        "load_average_end": [round(x, 2) for x in load_avg_end],
        "source": str(source),
        "cache_mb": round(cache_bytes / 2**20, 1) if cache_bytes is not None else None,
        "cache_was_absent": bool(converted),
        "conversion_s": round(first["resolve_s"], 3) if converted else None,
        "first_load": {"load_model_s": round(first["load_model_s"], 3), "process_s": round(first_wall, 3)},
        "load_model_s": spread(load_s),
        "import_s": spread([r["import_s"] for r, _ in runs]) if runs else None,
        "process_s": spread([wall for _, wall in runs]) if runs else None,
        "target_s": args.target,
        "meets_target": bool(load_s) and statistics.median(load_s) <= args.target,
        "breakdown": {**steps, "process_s": round(steps_wall, 3)},
    }
    if profile is not None:
        result["cprofile_top"] = profile
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
