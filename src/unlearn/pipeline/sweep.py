"""A sweep: one run per point of a grid (or of a seeded random sample of it) over any method's parameters, each
point its own run folder in the sweep's folder, then ``sweep.json`` with the Pareto fronts of forget drop against
retain drop and one comparison report of every point. Points whose run folder is complete are skipped, so an
interrupted sweep continues where it stopped when run again."""

from __future__ import annotations

import itertools
import json
import random
import time
from pathlib import Path

from ..config import RunConfig
from ..errors import UnlearnError
from ..eval.metrics import pareto_front
from ..runs.folder import is_run_folder
from .run import run
from .validate import coerce_config, validated_config

SWEEP_FILE = "sweep.json"
FRONT_METRICS = ("top1", "skip50_top1")


def parse_grid(items: list[str] | tuple[str, ...]) -> dict[str, list]:
    """``["ff_frac=0.005,0.01", "importance=abs,rms"]`` → ``{"ff_frac": [0.005, 0.01], "importance": [...]}``;
    each value read as YAML (numbers, booleans, null, strings)."""
    import yaml

    grid: dict[str, list] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise UnlearnError(f"--grid expects KEY=VALUE[,VALUE...], got {item!r}")
        if key in grid:
            raise UnlearnError(f"--grid {key} given twice: list all its values in one --grid")
        values = [yaml.safe_load(v) if v.strip() else v for v in raw.split(",")]
        if len(set(map(repr, values))) != len(values):
            raise UnlearnError(f"--grid {key} repeats a value: {raw}")
        grid[key] = values
    if not grid:
        raise UnlearnError("a sweep needs at least one --grid KEY=VALUE[,VALUE...]")
    return grid


def grid_points(grid: dict[str, list], sample: int | None = None, seed: int = 0) -> list[dict]:
    """Every combination of the grid's values in order, or ``sample`` of them drawn without replacement with
    ``seed`` (a random search over the grid)."""
    keys = list(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    if sample is not None:
        if sample < 1:
            raise UnlearnError(f"--sample must be at least 1, got {sample}")
        points = random.Random(seed).sample(points, min(sample, len(points)))
    return points


def point_name(point: dict) -> str:
    """The run folder name of a point: ``ff_frac=0.01,importance=abs`` (characters a path cannot hold replaced)."""
    text = ",".join(f"{k}={v}" for k, v in point.items())
    return "".join(c if c.isalnum() or c in "=,._-+" else "_" for c in text)


def point_config(base: RunConfig, point: dict, sweep_dir: Path) -> dict:
    """The run config of one point: run-level keys (e.g. ``seed``, ``stats_tokens``) set on the run, any other key
    a parameter of the method."""
    values = base.model_dump()
    method_config = dict(values.get("method_config") or {})
    for key, value in point.items():
        if key in RunConfig.model_fields and key not in ("method_config", "out_dir", "name"):
            values[key] = value
        else:
            method_config[key] = value
    values.update(method_config=method_config, out_dir=str(sweep_dir), name=point_name(point))
    return values


def sweep(
    config: RunConfig | dict | str | Path | None,
    grid: dict[str, list],
    *,
    sample: int | None = None,
    console=None,
    report: bool = True,
) -> dict:
    """Run ``config`` once per point of ``grid`` (``sample``: that many points drawn at random with the config's
    seed) into ``out_dir/name`` (default name ``sweep-<timestamp>``). Every point's config is validated before the
    first run, so bad input fails before any work. Points whose run folder is already complete are skipped.
    Writes ``sweep.json`` (the grid, each point's folder, parameters and after-unlearning drops, and the Pareto
    front of forget drop against retain drop per metric) and, with ``report``, one comparison report of all
    points. Returns the contents of ``sweep.json``."""
    base = coerce_config(config)
    sweep_dir = Path(base.out_dir) / (base.name or time.strftime("sweep-%Y%m%d-%H%M%S"))
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise UnlearnError(f"the sweep folder {sweep_dir} is a file")
    points = grid_points(grid, sample, base.seed)
    configs = [point_config(base, p, sweep_dir) for p in points]
    todo = [c for c in configs if not is_run_folder(sweep_dir / c["name"])]
    for c in todo:  # every point's settings, data and method config checked before the first run
        validated_config(c)
    for i, c in enumerate(todo, 1):
        if console is not None:
            console.print(f"sweep point {i}/{len(todo)}: {c['name']}")
        run(c, console=console)
    record = _record(grid, points, sweep_dir, sample, base.seed)
    (sweep_dir / SWEEP_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if report and len(points) > 0:
        from ..report.html import report as write_report

        paths = write_report([sweep_dir / point_name(p) for p in points], sweep_dir)
        record["report"] = str(paths["html"])
    return record


def _record(grid: dict, points: list[dict], sweep_dir: Path, sample: int | None, seed: int) -> dict:
    rows = []
    for p in points:
        folder = sweep_dir / point_name(p)
        after = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["after"]
        rows.append(
            {
                "run_dir": folder.name,
                "params": p,
                "forget_drop": {m: after["forget_drop"].get(m) for m in FRONT_METRICS},
                "retain_drop": {m: after["retain_drop"].get(m) for m in FRONT_METRICS},
            }
        )
    fronts = {m: pareto_front([(r["forget_drop"][m], r["retain_drop"][m]) for r in rows]) for m in FRONT_METRICS}
    for i, r in enumerate(rows):
        r["pareto"] = {m: i in fronts[m] for m in FRONT_METRICS}
    return {"grid": grid, "sample": sample, "seed": seed, "points": rows}
