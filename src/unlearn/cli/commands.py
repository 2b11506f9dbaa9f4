"""The other commands: ``learn``, ``suites``, ``methods``, ``report`` and ``audit``."""

from __future__ import annotations

import json

import click

from ..errors import UnlearnError
from ..config import RunConfig
from ..config import DataConfig
from ..audit.runner import ATTACKS
from .group import Number, choices, console_for, key_values, main
from ..methods.exact import ShardSettings
from ..methods.training import TrainConfig


@main.command("learn")
@click.option(
    "--model", default="smollm2-135m", show_default=True, help="Model to fine-tune (same forms as run --model)."
)
@click.option("--data", required=True, help="QA records (question, answer) or text: file, folder, glob or built-in.")
@click.option("--out", "out_dir", required=True, help="Folder for the fine-tuned checkpoint (must not exist).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "qa", "text"]),
    default="auto",
    show_default=True,
    help="qa: chat template, loss on answers; auto: qa when records have question and answer fields.",
)
@click.option(
    "--epochs", type=Number(float, gt=0), default=3.0, show_default=True, help="Passes over the data (unless --steps)."
)
@click.option("--steps", type=Number(int, ge=1), help="Optimizer steps (overrides --epochs).")
@click.option(
    "--lr", type=Number.like(TrainConfig, "lr"), default=5e-5, show_default=True, help="Peak learning rate (AdamW)."
)
@click.option("--batch-size", type=Number(int, ge=1), default=8, show_default=True, help="Rows per optimizer step.")
@click.option(
    "--seq-len",
    type=Number.like(RunConfig, "seq_len"),
    default=256,
    show_default=True,
    help="Tokens per row (QA rows are padded).",
)
@click.option(
    "--tokens", type=Number(int, ge=1), default=65536, show_default=True, help="Text data: tokens to train on."
)
@click.option("--lora", help="Train LoRA adapters and merge them: 'r=16[,alpha=32,dropout=0,targets=a;b]'.")
@click.option("--seed", type=Number.like(RunConfig, "seed"), default=0, show_default=True)
@click.option("--dtype", type=choices(RunConfig, "dtype"), default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--shards",
    type=Number.like(ShardSettings, "shards"),
    help="Learn for exact unlearning: N disjoint shards of the records, LoRA adapters each (docs/exact.md).",
)
@click.option(
    "--slices",
    type=Number.like(ShardSettings, "slices"),
    default=1,
    show_default=True,
    help="With --shards: sequential slices per shard, one LoRA adapter each (a deletion retrains from its slice on).",
)
def learn_cmd(
    model, data, out_dir, fmt, epochs, steps, lr, batch_size, seq_len, tokens, lora, seed, dtype, device, shards, slices
):
    """Fine-tune a model on data with the unlearning methods' training loop (e.g. to build TOFU-style targets).

    With --shards N (and --slices K) every record goes to one shard and slice and each slice trains its own LoRA
    adapter: `unlearn run --method exact --delete RECORDS --model OUT` then forgets records exactly."""
    from .. import api

    if epochs <= 0 or (steps is not None and steps < 1) or batch_size < 1 or seq_len < 8 or tokens < 1 or lr <= 0:
        raise UnlearnError("--epochs, --steps, --lr, --batch-size and --tokens must be positive, --seq-len at least 8")
    result = api.learn(
        model,
        data,
        out_dir,
        format=fmt,
        epochs=epochs,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seq_len=seq_len,
        tokens=tokens,
        lora=lora,
        seed=seed,
        dtype=dtype,
        device=device,
        shards=shards,
        slices=slices,
        console=console_for(),
    )
    log = result["log"]
    click.echo(
        f"learnt {result['data']['rows']} rows of {data} ({result['data']['format']}) in {len(log)} steps"
        f"{f' ({shards} shards x {slices} slices, shards.json)' if shards else ''}: "
        f"loss {log[0]['loss']:.4f} -> {log[-1]['loss']:.4f}; checkpoint: {result['path']}"
    )


def _print_registry(info: dict, params: str, as_json: bool, extra=None) -> None:
    """Print a registry (methods or suites): name and summary, optional extra lines, then each parameter."""
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    for name, entry in info.items():
        click.echo(f"{name}: {entry['summary']}")
        if extra:
            click.echo(f"    {extra(entry)}")
        for key, p in entry[params].items():
            click.echo(f"    {key} = {p['default']!r}  {p['description'] or ''}")


@main.command("suites")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def suites_cmd(as_json):
    """List the evaluation suites, their parts (file names in a benchmark folder) and settings."""
    from .. import api

    def parts(st) -> str:
        return "parts: " + (
            st["parts"] if isinstance(st["parts"], str) else ", ".join(f"{k}={v}" for k, v in st["parts"].items())
        )

    _print_registry(api.suites(), "settings", as_json, parts)


@main.command("methods")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def methods_cmd(as_json):
    """List the registered unlearning methods and their parameters (defaults and meaning), then the presets."""
    from .. import api
    from ..methods.presets import PRESETS

    _print_registry(api.methods(), "parameters", as_json)
    if as_json:
        return
    click.echo("\npresets (--preset NAME):")
    for name, preset in PRESETS.items():
        settings = ", ".join(f"{k}={v}" for k, v in preset["method_config"].items())
        click.echo(f"  {name}: {preset['summary']}\n    {preset['method']}: {settings}")


@main.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(), metavar="RUN_DIR [RUN_DIR ...]")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(),
    help="Folder for report.html and report.md (default: the run folder; with several runs reports/TIMESTAMP).",
)
@click.option(
    "--no-verify",
    is_flag=True,
    help="Render even runs whose files do not match their manifest or hold malformed values (listed in the report).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the written paths as JSON.")
def report_cmd(run_dirs, out_dir, no_verify, as_json):
    """Write report.html (self-contained, figures inline) and report.md for one or several run folders: metrics
    before/after, the trade-off per step, pruned neurons per layer, suites, audit, earlier requests, manifest;
    with several runs also a comparison table and overlaid trade-off curves. Each run folder is first checked:
    its files against its manifest's hashes, its values for NaN, missing or mistyped metrics."""
    from .. import api

    paths = api.report(list(run_dirs), out=out_dir, verify=not no_verify)
    if as_json:
        click.echo(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    else:
        click.echo(f"report: {paths['html']} (markdown: {paths['md']})")


@main.command("audit")
@click.argument("run_dir", required=False)
@click.option("--model", help="The unlearned model (a checkpoint folder or hub id), if RUN_DIR is not given.")
@click.option("--original", help="The model before unlearning (default: the run's input model).")
@click.option("--forget", help="Forget data (default: the run's): file, folder, glob, built-in or hf:NAME.")
@click.option("--retain", help="Retain data (default: the run's).")
@click.option("--forget-format", type=choices(DataConfig, "format"), help="Format of --forget (default: detected).")
@click.option("--retain-format", type=choices(DataConfig, "format"), help="Format of --retain (default: detected).")
@click.option("--control", help="Unrelated data for the control relearning (default: the retain data).")
@click.option(
    "--reference", help="relearn:oracle: a model (or run folder) that never saw the forget data (--set reference=)."
)
@click.option(
    "--attack",
    "attacks",
    multiple=True,
    type=click.Choice(list(ATTACKS)),
    help="Run only these attacks (repeatable; default all but the opt-in ones).",
)
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="An audit setting (repeatable; see below).")
@click.option("--out", "out_dir", help="Write OUT/audit.json (default: the run folder, else audits/<model>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing audit.json.")
@click.option("--seq-len", type=Number.like(RunConfig, "seq_len"), help="Tokens per chunk (default: the run's).")
@click.option(
    "--eval-tokens",
    type=Number.like(RunConfig, "eval_tokens"),
    help="Tokens of evaluation rows per corpus (default: the run's).",
)
@click.option("--seed", type=Number.like(RunConfig, "seed"), help="Seed for the choice of chunks (default: the run's).")
@click.option("--batch-size", type=Number(int, ge=1), help="Rows per forward pass (default: the run's).")
@click.option("--dtype", type=choices(RunConfig, "dtype"), help="Default: the run's.")
@click.option("--device", default="auto", show_default=True)
@click.option("--no-verify", is_flag=True, help="Audit a run folder even if its files do not match its manifest.")
@click.option("--json", "as_json", is_flag=True, help="Print the audit record as JSON instead of a table.")
def audit_cmd(
    run_dir,
    model,
    original,
    forget,
    retain,
    forget_format,
    retain_format,
    control,
    reference,
    attacks,
    settings,
    out_dir,
    overwrite,
    seq_len,
    eval_tokens,
    seed,
    batch_size,
    dtype,
    device,
    no_verify,
    as_json,
):
    """Attack an unlearned model and measure how much of the forgotten material comes back.

    Each attack reports the forget metric before unlearning, after unlearning and after the attack, and the
    recovery = (after attack - after unlearning) / (before - after unlearning), clipped to [0, 1].

    \b
    relearn     fine-tune 20 steps on held-out forget data, and on the retain data as a control
    quantize    round-trip the linear weights through int8 and 4-bit integers (per channel, symmetric)
    logit-lens  read the forget tokens off every layer's hidden state (final norm + unembedding)
    prompt      step-by-step, role-play, prefix-injection (and, for QA data, paraphrase and
                affirmative-suffix) prompts
    in-context  forget material placed before each probe, on the unlearned and the original model
    opt-in      only with --attack: ablate, relearn:oracle (with --reference), suffix, relearn-sweep

    \b
    Settings (--set KEY=VALUE): metric (top1|top10), relearn_steps (20), relearn_lr (5e-5),
    relearn_batch_size (4), relearn_tokens (4096), quant_bits ([8, 4]), quant_group_size (0 = per channel),
    shots (text 1 chunk, QA 3 records), topic (for the text prompts); the opt-in attacks' ablate_*,
    reference, oracle_checkpoints, suffix_* and sweep_* (docs/audit.md).

    \b
    unlearn audit runs/NAME                      # everything from the run folder; writes runs/NAME/audit.json
    unlearn audit --model M --original O --forget F --retain R
    """
    from .. import api

    if run_dir and model:
        raise UnlearnError("give either RUN_DIR or --model, not both")
    if not (run_dir or model):
        raise UnlearnError("give a run folder (RUN_DIR) or --model")
    if run_dir:
        _check_run_dir(run_dir)
    settings = {**key_values(settings, "--set"), **({"reference": reference} if reference else {})}
    result = api.audit(
        run_dir or model,
        original=original,
        forget=_audit_data(forget, forget_format),
        retain=_audit_data(retain, retain_format),
        control=control,
        attacks=list(attacks) or None,
        settings=settings,
        out=out_dir,
        overwrite=overwrite,
        seq_len=seq_len,
        eval_tokens=eval_tokens,
        seed=seed,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        console=console_for(),
        verify=not no_verify,
    )
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    _print_audit(result)


def _check_run_dir(run_dir: str) -> None:
    """RUN_DIR must be a finished run folder (or its model/); a checkpoint is audited with --model."""
    from pathlib import Path

    from ..runs.folder import MANIFEST, is_run_folder

    p = Path(run_dir)
    if not p.exists():
        raise UnlearnError(f"run folder {run_dir} not found")
    if not p.is_dir():
        raise UnlearnError(f"{run_dir} is not a folder: RUN_DIR is a run folder (a checkpoint goes in --model)")
    if not (is_run_folder(p) or (is_run_folder(p.parent) and p.name == "model")):
        raise UnlearnError(
            f"{run_dir} is not a run folder (no {MANIFEST} and config.yaml): to audit a checkpoint pass "
            f"--model {run_dir} --original MODEL_BEFORE_UNLEARNING"
        )


def _audit_data(source, fmt):
    """--forget/--retain and their formats as data settings (the format detected when not given)."""
    from ..config import DataConfig
    from ..pipeline.corpora import detect_format

    if source is None:
        if fmt:
            raise UnlearnError("--forget-format/--retain-format need --forget/--retain")
        return None
    return DataConfig(source=source, format=fmt or detect_format(source))


def _print_audit(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    metric = result["metric"]
    table = Table(
        title=f"audit of {result['model']['spec']} against {result['original']['spec']} "
        f"(forget {result['forget']['source']}, {metric})",
        title_justify="left",
    )
    for col in ("attack", "before", "unlearned", "attacked", "recovery", "original attacked", "retain attacked"):
        table.add_column(col, justify="left" if col == "attack" else "right")

    def fmt(v):
        return "-" if v is None else f"{v:.4f}"

    for a in result["attacks"]:
        rec = a["recovery"]
        style = None if rec is None or rec < 0.25 else ("yellow" if rec < 0.5 else "red")
        table.add_row(
            f"{a['attack']}:{a['variant']}",
            fmt(a["before"]),
            fmt(a["after_unlearning"]),
            fmt(a["after_attack"]),
            "-" if rec is None else f"{rec:.0%}",
            fmt(a["original_attacked"]),
            fmt((a["retain"] or {}).get("after_attack")),
            style=style,
        )
    console = Console()
    console.print(table)
    top = result["max_recovery"]
    if top:
        console.print(f"largest recovery: {top['attack']} {top['recovery']:.0%}", highlight=False)
    console.print(f"audit: {result['path']} ({result['timings_s']['total']:.0f} s)", highlight=False)


if __name__ == "__main__":
    main()
