"""The ``sweep`` command: the ``run`` command's options plus a grid, one run per point."""

from __future__ import annotations

import json

import click

from .group import Number, console_for, main
from .run import run as run_command, settings

# run options a sweep does not take: a sweep starts fresh runs in one process and prints its own summary
NOT_FOR_SWEEPS = {"resume", "launcher", "num_processes", "accelerate_config", "sign", "no_verify", "as_json"}


@main.command("sweep")
@click.option(
    "--grid",
    "grid",
    multiple=True,
    metavar="KEY=V1,V2,...",
    help="Values of one parameter (repeatable; every combination is a point): a method parameter, e.g. "
    "ff_frac=0.005,0.01,0.02 or importance=abs,rms,freq, or a run setting such as seed=0,1.",
)
@click.option(
    "--sample",
    type=Number(int, ge=1),
    help="Random search: run this many points drawn from the grid with --seed, not all of them.",
)
@click.option("--json", "as_json", is_flag=True, help="Print sweep.json instead of a table.")
def sweep_cmd(grid, sample, as_json, **opts):
    """Run a grid (or a random sample of it) of method parameters: each point a run folder in --out/--name
    (default runs/sweep-TIMESTAMP), then sweep.json with the Pareto fronts of forget drop against retain drop
    (top-1 and skip50 top-1) and one comparison report of all points. Run it again to continue an interrupted
    sweep: points whose run folder is complete are skipped. Takes every `unlearn run` option but --resume,
    --launcher, --sign and --no-verify.
    """
    from .. import api

    record = api.sweep(
        settings(opts),
        api.parse_grid(grid),
        sample=sample,
        console=None if opts["quiet"] else console_for(),
        report=not opts["no_report"],
    )
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    for row in record["points"]:
        front = [m for m, on in row["pareto"].items() if on]
        f, r = row["forget_drop"]["top1"], row["retain_drop"]["top1"]
        click.echo(
            f"{row['run_dir']}: forget top1 drop {_pct(f)}, retain top1 drop {_pct(r)}"
            + (f"  [Pareto: {', '.join(front)}]" if front else "")
        )
    if "report" in record:
        click.echo(f"report: {record['report']}")


def _pct(x) -> str:
    return "–" if x is None else f"{x:.1%}"


sweep_cmd.params.extend(p for p in run_command.params if p.name not in NOT_FOR_SWEEPS)
