"""The ``eval`` command: next-token metrics of any model on a corpus, or a named suite."""

from __future__ import annotations

import contextlib
import json
import os

import click

from ..errors import UnlearnError, from_os_error
from ..config import RunConfig
from ..config import DataConfig
from .group import DEFAULTS, Number, choices, console_for, key_values, main, set_if_given


@main.command("eval")
@click.option(
    "--model",
    required=True,
    help="smollm2-135m, a checkpoint folder (e.g. runs/NAME/model), a run folder, .gguf file or hub id.",
)
@click.option(
    "--suite",
    help="Evaluation suite: tofu, muse, rwku, restor, mcq, lm, mia, or lm-eval:TASK[,TASK] for lm-evaluation-harness "
    "tasks (--data: folders of local task YAMLs; see `unlearn suites`). Without it: next-token "
    "metrics of each --data corpus.",
)
@click.option(
    "--data",
    "data",
    multiple=True,
    required=True,
    help="Repeatable. With --suite: a benchmark folder, a file, or PART=PATH; else a corpus (as run --forget).",
)
@click.option("--field", "fields", multiple=True, help="Record field(s) holding the text (default text).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="A suite setting (repeatable).")
@click.option("--limit", type=Number(int, ge=1), help="Suite: only the first N records of each part.")
@click.option("--shots", type=Number(int, ge=0), help="Suite mcq: few-shot examples per question (0-5).")
@click.option(
    "--template",
    type=click.Choice(["auto", "chat", "plain"]),
    help="Suite: QA prompts with the tokenizer's chat template or plain 'Question: ... Answer:' (default auto).",
)
@click.option(
    "--reference",
    help="Suite: reference model or its eval/<suite>.json (TOFU forget quality, PrivLeak; RESTOR: the clean model).",
)
@click.option(
    "--original",
    help="Suite: the model before unlearning (specificity, fluency; RESTOR: the corrupted one); default from the run.",
)
@click.option("--out", "out_dir", help="Suite: results go to OUT/eval/<suite>.json (default: the run folder).")
@click.option("--overwrite", is_flag=True, help="Suite: recompute parts already in the results file.")
@click.option(
    "--eval-tokens",
    type=Number.like(RunConfig, "eval_tokens"),
    default=DEFAULTS.eval_tokens,
    show_default=True,
    help="Tokens per corpus (a run's default: the same held-out chunks it reported).",
)
@click.option(
    "--seq-len",
    type=Number.like(RunConfig, "seq_len"),
    default=DEFAULTS.seq_len,
    show_default=True,
    help="Tokens per chunk.",
)
@click.option(
    "--batch-size",
    type=Number(int, ge=1),
    default=DEFAULTS.batch_size,
    show_default=True,
    help="Sequences per forward pass.",
)
@click.option(
    "--skip-k",
    type=Number.like(RunConfig, "skip_k"),
    default=DEFAULTS.skip_k,
    show_default=True,
    help="Skip-k accuracy ignores the k most frequent tokens.",
)
@click.option(
    "--seed",
    type=Number.like(RunConfig, "seed"),
    default=DEFAULTS.seed,
    show_default=True,
    help="Same seed as a run = the run's evaluation chunks.",
)
@click.option("--dtype", type=choices(RunConfig, "dtype"), default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--output", type=click.Path(), help="Also write the metrics to this JSON file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def eval_cmd(
    model,
    suite,
    data,
    fields,
    settings,
    limit,
    shots,
    template,
    reference,
    original,
    out_dir,
    overwrite,
    eval_tokens,
    seq_len,
    batch_size,
    skip_k,
    seed,
    dtype,
    device,
    output,
    as_json,
):
    """Evaluate a model: an evaluation suite (TOFU, MUSE, RWKU, multiple choice, LM, membership inference) or
    next-token metrics (top-1, top-10, skip-k, loss, perplexity) on corpora."""
    from .. import api

    if eval_tokens < 1 or seq_len < 8 or batch_size < 1 or skip_k < 0:
        raise UnlearnError("--eval-tokens and --batch-size must be positive, --seq-len at least 8, --skip-k >= 0")
    if output and os.path.isdir(output):  # before any work, not after it
        raise UnlearnError(f"--output {output} is a folder: give a file name, e.g. {os.path.join(output, 'eval.json')}")
    if suite:
        values = key_values(settings, "--set")
        for key, val in (("limit", limit), ("shots", shots), ("template", template)):
            set_if_given(values, key, val)
        if suite == "lm":
            values = {"eval_tokens": eval_tokens, "seq_len": seq_len, "skip_k": skip_k, "seed": seed, **values}
            if fields:
                values.setdefault("field", fields[0])
        parts = {"reference": reference, "original": original, "out": out_dir, "overwrite": overwrite}
        devices = {"batch_size": batch_size, "dtype": dtype, "device": device}
        result = api.evaluate_suite(
            model, suite, list(data), settings=values, **parts, **devices, console=console_for()
        )
        _write_output(output, result)
        if as_json:
            click.echo(json.dumps(result, indent=2, default=str))
        else:
            _print_suite(result)
        return
    suite_only = {"--set": settings, "--limit": limit, "--shots": shots, "--reference": reference}
    suite_only.update({"--original": original, "--out": out_dir, "--template": template, "--overwrite": overwrite})
    unused = [f for f, v in suite_only.items() if v]
    if unused:
        raise UnlearnError(f"{unused[0]} needs --suite")
    specs = [DataConfig(source=d, fields=list(fields) or ["text"]) for d in data]
    results = api.evaluate(
        model,
        specs,
        eval_tokens=eval_tokens,
        seq_len=seq_len,
        batch_size=batch_size,
        skip_k=skip_k,
        seed=seed,
        dtype=dtype,
        device=device,
        console=console_for(),
    )
    _write_output(output, {"model": model, "results": results})
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    _print_corpora(model, results)


def _print_corpora(model: str, results: dict) -> None:
    """The next-token metrics of each corpus as a table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model}", title_justify="left")
    keys = [k for k in next(iter(results.values())) if k != "n_tokens"] + ["n_tokens"]
    table.add_column("corpus")
    for k in keys:
        table.add_column(k, justify="right")
    for name, m in results.items():
        table.add_row(name, *[f"{m[k]:.4f}" if isinstance(m[k], float) else str(m[k]) for k in keys])
    Console().print(table)


def _write_output(output: str | None, data) -> None:
    if not output:
        return
    tmp = f"{output}.tmp"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=str)
        os.replace(tmp, output)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)  # no half-written file stays behind
        raise from_os_error(exc, f"writing {output}") from exc


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            rows += _flatten(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


def _print_suite(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['suite']} on {result['model']['spec']}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in _flatten(result["summary"]):
        shown = "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
        table.add_row(key, shown)
    console = Console()
    console.print(table)
    reused = f" (reused: {', '.join(result['reused'])})" if result["reused"] else ""
    console.print(f"per-sample results: {result['path']}{reused}", highlight=False, soft_wrap=True)
