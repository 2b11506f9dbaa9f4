"""The ``unlearn`` command line: a thin layer over :mod:`unlearn.api`.

Bad input (anything raising :class:`UnlearnError`) prints one line, ``error: ...``, and exits with code 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import click

from .config import DEVICE_MAPS, RunConfig
from .errors import ENVIRONMENT, UnlearnError, from_os_error
from .methods.selective_pruning import SelectivePruningConfig

PCT = "(a fraction such as 0.05 or a percentage such as 5%)"
DEFAULTS = RunConfig()
SP = {k: f.default for k, f in SelectivePruningConfig.model_fields.items()}


def _fraction(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise UnlearnError(f"{flag} expects a fraction or percentage, got {value!r}") from None


def _int_or_auto(value: str | None, flag: str):
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise UnlearnError(f"{flag} expects a whole number or auto, got {value!r}") from None


def _console():
    """Progress on stderr; None (no progress) in the processes of a multi-process launch other than process 0."""
    from .distributed import is_main

    if not is_main():
        return None
    from rich.console import Console

    # a launched process writes into a pipe that `unlearn run --launcher` forwards to its terminal
    return Console(stderr=True, force_terminal=True if os.environ.get("UNLEARN_FORCE_TERMINAL") else None)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _fail_os(exc: OSError) -> None:
    """A full disk, a read-only or forbidden path: one line; any other OSError is a bug and keeps its traceback."""
    if exc.errno not in ENVIRONMENT:
        raise exc
    _fail(str(from_os_error(exc)))


@contextlib.contextmanager
def _one_line_errors():
    """Usage errors, UnlearnError, a full disk or a forbidden path, Ctrl-C: one line and exit code 2."""
    try:
        yield
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _fail("aborted")
    except click.ClickException as exc:
        _fail(exc.format_message().replace("\n", " "))
    except UnlearnError as exc:
        _fail(str(exc).replace("\n", " "))
    except OSError as exc:
        _fail_os(exc)
    except KeyboardInterrupt:
        _fail("interrupted")


class _Command(click.Command):
    """Turn usage errors and UnlearnError into one line and exit code 2."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        with _one_line_errors():
            return super().main(*args, **kwargs)


class _Group(click.Group):
    command_class = _Command

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        with _one_line_errors():
            rv = super().main(*args, **kwargs)
        if isinstance(rv, int) and rv:
            sys.exit(rv)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="unlearn-lm", prog_name="unlearn")
def main():
    """Make a causal language model forget — a capability, a body of knowledge or specific data — and prove it.

    \b
    unlearn run        unlearn (defaults: forget Python code, keep English prose, on the bundled SmolLM2-135M)
    unlearn eval       evaluate any model: suites (TOFU, MUSE, RWKU, MCQ, LM, MIA) or next-token metrics
    unlearn learn      fine-tune a model on QA or text data (to build unlearning targets)
    unlearn methods    the registered unlearning methods and their parameters
    unlearn suites     the evaluation suites, their data parts and settings
    unlearn audit      attack an unlearned model: how much of the forgotten material comes back?
    unlearn ledger     the chain of unlearning requests behind a run folder, every hash re-verified
    unlearn report     an HTML + Markdown report of one or several run folders (plots, tables, audit)
    """


def _set(d: dict, key: str, value) -> None:
    if value is not None:
        d[key] = value


@main.command()
@click.option("--config", "config_file", type=click.Path(), help="YAML file of settings; flags override it.")
@click.option("--model", help="smollm2-135m (bundled, default), a checkpoint folder, a .gguf file or a hub id.")
@click.option(
    "--from",
    "from_run",
    metavar="RUN_DIR",
    help="A previous run folder: unlearn its saved model further (a sequential request; its files are verified "
    "first and left unchanged, and earlier requests are re-measured).",
)
@click.option(
    "--forget",
    help="Forget corpus: file, folder, glob, hf:NAME or a built-in: python-stdlib (default), english-prose, "
    "general-english.",
)
@click.option("--retain", help="Retain corpus: same forms as --forget (default general-english).")
@click.option(
    "--utility",
    help="General text that no step of the method uses, evaluated before and after: the summary's utility row "
    "(same forms as --forget; default general-english-heldout; none = no utility row).",
)
@click.option(
    "--forget-field", "forget_fields", multiple=True, help="Record field(s) holding forget text (default text)."
)
@click.option(
    "--retain-field", "retain_fields", multiple=True, help="Record field(s) holding retain text (default text)."
)
@click.option(
    "--forget-format", type=click.Choice(["text", "qa"]), help="qa: question/answer records, loss on answers."
)
@click.option("--retain-format", type=click.Choice(["text", "qa"]), help="Like --forget-format, for retain data.")
@click.option("--method", help="Unlearning method (default selective-pruning); see `unlearn methods`.")
@click.option(
    "--preset",
    help="A named method configuration: paper (the published selective pruning, no healing) or prune-heal "
    "(prune less per step, heal longer on more retain text than the default); flags such as --steps or --set "
    "override it. See `unlearn methods`.",
)
@click.option(
    "--set",
    "method_params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any method parameter, e.g. --set importance=rms (repeatable).",
)
@click.option(
    "--importance",
    type=click.Choice(["freq", "abs", "rms", "std"]),
    help=f"Selective pruning: neuron importance (default {SP['importance']}).",
)
@click.option(
    "--ff-frac",
    type=float,
    help=f"Selective pruning: fraction of feed-forward neurons pruned per step (default {SP['ff_frac']}).",
)
@click.option(
    "--attn-frac",
    type=float,
    help=f"Selective pruning: fraction of attention neurons pruned per step (default {SP['attn_frac']}).",
)
@click.option("--steps", type=int, help=f"Pruning steps (the most, with a budget; default {SP['steps']}).")
@click.option(
    "--scope",
    type=click.Choice(["global", "layer"]),
    help=f"Rank neurons across all layers or per layer (default {SP['scope']}).",
)
@click.option(
    "--ablation",
    type=click.Choice(["zero", "mean"]),
    help=f"Set pruned neurons to 0 or their retain mean (default {SP['ablation']}).",
)
@click.option(
    "--lora", help="Trained methods: train LoRA adapters (merged on save), e.g. r=16 or r=8,targets=q_proj;v_proj."
)
@click.option(
    "--collect", type=click.Choice(["every", "once"]), help="Collect statistics before every step (default) or once."
)
@click.option(
    "--max-retain-drop", help=f"Budget: stop before retain (on validation chunks) drops more than this {PCT}."
)
@click.option("--forget-target-drop", help=f"Stop once forget (on validation chunks) has dropped this much {PCT}.")
@click.option("--budget-metric", help="Metric for the budget and target (default top1).")
@click.option(
    "--budget",
    "budgets",
    multiple=True,
    metavar="SPEC",
    help="retain:top1=5% = --budget-metric top1 --max-retain-drop 5%; forget:top1=80% sets the target; "
    "utility=0.95 keeps 95% of the retain metric (= a 5% retain drop budget); kl=0.05 bounds the mean "
    "KL(original ‖ model) on retain text.",
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "bf16", "fp32", "fp16"]),
    help="auto: bf16 on GPU or bf16-capable CPU, else fp32.",
)
@click.option("--device", help="auto, cpu or cuda.")
@click.option(
    "--device-map",
    type=click.Choice(DEVICE_MAPS),
    help="Spread a model bigger than one device over the GPUs, then CPU and disk (selective pruning, evaluation).",
)
@click.option("--seq-len", type=int, help=f"Tokens per chunk (default {DEFAULTS.seq_len}).")
@click.option(
    "--stats-tokens", type=int, help=f"Tokens per corpus for the method's statistics (default {DEFAULTS.stats_tokens})."
)
@click.option(
    "--eval-tokens",
    type=int,
    help=f"Held-out tokens per corpus for the reported metrics (default {DEFAULTS.eval_tokens}).",
)
@click.option(
    "--val-tokens",
    type=int,
    help=f"Validation tokens per corpus that budgets and targets watch (default {DEFAULTS.val_tokens}).",
)
@click.option(
    "--skip-k", type=int, help=f"Skip-k accuracy ignores the k most frequent tokens (default {DEFAULTS.skip_k})."
)
@click.option(
    "--batch-size",
    help=f"Chunks per forward pass (default {DEFAULTS.batch_size}), or auto: the largest that fits in memory.",
)
@click.option("--seed", type=int, help=f"Seed for the choice of chunks (default {DEFAULTS.seed}).")
@click.option("--out", "out_dir", help="Folder that receives run folders (default runs).")
@click.option("--name", help="Run folder name (default: timestamp-method).")
@click.option(
    "--eval",
    "evals",
    multiple=True,
    metavar="SUITE:DATA[,DATA]",
    help="Also evaluate with a suite before and after, e.g. --eval mcq:mmlu/test/geo.csv (repeatable; settings "
    "and references via --config evals).",
)
@click.option("--no-save-model", is_flag=True, help="Do not write the unlearned checkpoint.")
@click.option("--no-report", is_flag=True, help="Do not write report.html / report.md (`unlearn report` can later).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON instead of a table.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option(
    "--resume",
    metavar="RUN_DIR",
    help="Continue an interrupted run (Ctrl-C, crash, kill -9) from its last checkpoint, with its saved config: "
    "RUN_DIR is the run folder it would have written (OUT/NAME). No other settings.",
)
@click.option(
    "--launcher",
    type=click.Choice(["none", "accelerate"]),
    default="none",
    show_default=True,
    help="accelerate: run data parallel in --num-processes processes (accelerate launch; gloo on CPUs). The "
    "same as `accelerate launch -m unlearn run ...`.",
)
@click.option(
    "--num-processes", type=int, help="Processes for --launcher accelerate (default 2, or the accelerate config's)."
)
@click.option(
    "--accelerate-config",
    type=click.Path(),
    help="An `accelerate config` file for --launcher accelerate: DDP, FSDP or DeepSpeed (see configs/accelerate/).",
)
def run(
    config_file,
    model,
    from_run,
    forget,
    retain,
    utility,
    forget_fields,
    retain_fields,
    forget_format,
    retain_format,
    method,
    preset,
    method_params,
    importance,
    ff_frac,
    attn_frac,
    steps,
    scope,
    ablation,
    lora,
    collect,
    max_retain_drop,
    forget_target_drop,
    budget_metric,
    budgets,
    dtype,
    device,
    device_map,
    seq_len,
    stats_tokens,
    eval_tokens,
    val_tokens,
    skip_k,
    batch_size,
    seed,
    out_dir,
    name,
    evals,
    no_save_model,
    no_report,
    as_json,
    quiet,
    resume,
    launcher,
    num_processes,
    accelerate_config,
):
    """Unlearn a corpus from a model and write a run folder (config, metrics, model, manifest).

    With no options: forget Python code (the standard library's source), keep English prose (Python's
    reference documentation without its code), on the bundled SmolLM2-135M-Instruct, offline on the CPU.
    """
    from . import api
    from .config import load_config_file

    values = load_config_file(config_file) if config_file else {}
    for key, val in (
        ("model", model),
        ("from_run", from_run),
        ("method", method),
        ("preset", preset),
        ("dtype", dtype),
        ("device", device),
        ("device_map", device_map),
        ("seq_len", seq_len),
        ("stats_tokens", stats_tokens),
        ("eval_tokens", eval_tokens),
        ("val_tokens", val_tokens),
        ("skip_k", skip_k),
        ("batch_size", _int_or_auto(batch_size, "--batch-size")),
        ("seed", seed),
        ("out_dir", out_dir),
        ("name", name),
    ):
        _set(values, key, val)
    for which, source, fields, fmt in (
        ("forget", forget, forget_fields, forget_format),
        ("retain", retain, retain_fields, retain_format),
    ):
        if source is not None or fields or fmt:
            data = dict(values.get(which) or {})
            _set(data, "source", source)
            _set(data, "format", fmt)
            if fields:
                data["fields"] = list(fields)
            if "source" not in data:
                data["source"] = "python-stdlib" if which == "forget" else "general-english"
            values[which] = data
    if utility is not None:
        values["utility"] = None if utility.strip().lower() == "none" else {"source": utility}
    if no_save_model:
        values["save_model"] = False
    if no_report:
        values["report"] = False
    for item in evals:
        suite, sep, data = item.partition(":")
        if not sep or not suite or not data:
            raise UnlearnError(f"--eval expects SUITE:DATA, got {item!r}")
        values["evals"] = [*(values.get("evals") or []), {"suite": suite, "data": data.split(",")}]
    mc = dict(values.get("method_config") or {})
    for key, val in (
        ("importance", importance),
        ("ff_frac", ff_frac),
        ("attn_frac", attn_frac),
        ("steps", steps),
        ("scope", scope),
        ("ablation", ablation),
        ("lora", lora),
    ):
        _set(mc, key, val)
    if collect:
        mc["recollect"] = collect == "every"
    mc.update(_key_values(method_params, "--set"))
    if mc:
        values["method_config"] = mc
    stop = dict(values.get("stop") or {})
    for item in budgets:
        if item.startswith("kl="):  # a bound on KL(original ‖ model) on the retain validation chunks
            try:
                stop["max_retain_kl"] = float(item[3:])
            except ValueError:
                raise UnlearnError(f"--budget kl=X needs a number, got {item!r}") from None
            continue
        if item.startswith("utility="):  # keep ≥ this share of the retain metric = a retain drop budget
            share = _fraction(item.split("=", 1)[1], "--budget utility")
            if not 0 < share < 1:
                raise UnlearnError(
                    f"--budget utility=X needs 0 < X < 1 (the share of retain performance kept), got {share}"
                )
            stop["max_retain_drop"] = 1 - share
            continue
        which, sep, rest = item.partition(":")
        metric, eq, amount = rest.partition("=")
        if which not in ("retain", "forget") or not sep or not eq or not metric:
            raise UnlearnError(f"--budget expects retain:METRIC=X% or forget:METRIC=X%, got {item!r}")
        if stop.get("metric", metric) != metric or (budget_metric and budget_metric != metric):
            raise UnlearnError("--budget: the retain budget and the forget target must watch the same metric")
        stop["metric"] = metric
        key = "max_retain_drop" if which == "retain" else "forget_target_drop"
        stop[key] = _fraction(amount, "--budget")
    _set(stop, "max_retain_drop", _fraction(max_retain_drop, "--max-retain-drop"))
    _set(stop, "forget_target_drop", _fraction(forget_target_drop, "--forget-target-drop"))
    _set(stop, "metric", budget_metric)
    if stop:
        values["stop"] = stop
    console = None if quiet else _console()
    if resume is not None:
        if values or launcher != "none":
            raise UnlearnError("--resume continues a run with its own saved config: give no other settings")
        result = api.run(console=console, resume=resume)
    elif launcher == "accelerate":
        n = num_processes if num_processes is not None else (None if accelerate_config else 2)
        result = api.launch(values, num_processes=n, accelerate_config=accelerate_config, console=console)
    elif num_processes is not None or accelerate_config is not None:
        raise UnlearnError("--num-processes and --accelerate-config need --launcher accelerate")
    else:
        result = api.run(values, console=console)
    if result.run_dir is None:  # a process other than 0 of a multi-process launch: process 0 reports
        return
    if as_json:
        click.echo(json.dumps({"run_dir": str(result.run_dir), **result.metrics}, indent=2))
    else:
        _print_summary(result)


def _print_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from .eval.metrics import relative_drop

    before, after = result.metrics["before"], result.metrics["after"]
    table = Table(title=f"{result.config.method} on {result.config.model}", title_justify="left")
    table.add_column("corpus")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("change", justify="right")
    data = result.manifest.get("data", {})
    own = [w for w in ("forget", "retain") if data.get(w, {}).get("eval_on_method_text")]
    for which in [w for w in ("forget", "retain", "utility") if w in before]:
        for metric in ("top1", "top10", "loss"):
            b, a = before[which][metric], after[which][metric]
            change = f"{(a - b) / b:+.1%}" if metric == "loss" else f"-{relative_drop(b, a):.1%}".replace("--", "+")
            label = f"{which} ({getattr(result.config, which).source}){' *' if which in own else ''}"
            table.add_row(label if metric == "top1" else "", metric, f"{b:.4f}", f"{a:.4f}", change)
    console = Console()
    console.print(table)
    if "retain" in own:
        note = "utility: text no step of the method used" if "utility" in before else "pass --utility DATA"
        console.print(
            f"* measured on held-out chunks of the text the method itself used (its own distribution); {note}",
            highlight=False,
        )
    pruned = result.manifest["pruned_total"]
    console.print(
        f"pruned: {pruned['ff']} feed-forward, {pruned['attn']} attention neurons; "
        f"stopped: {result.metrics['stop_reason']}",
        highlight=False,
    )
    console.print("time: " + _stage_times(result.manifest), highlight=False)
    for suite in result.metrics.get("suites", {}).get("after", {}):
        console.print(f"suite {suite}: eval/{suite}.json (before: eval/before/{suite}.json)", highlight=False)
    _print_earlier(console, result.metrics.get("earlier_requests"))
    console.print(f"run folder: {result.run_dir}", highlight=False)


def _stage_times(manifest: dict) -> str:
    """Each stage's seconds, e.g. "load 4 s, statistics 51 s, ..., total 212 s" (stages under half a second left
    out); "evaluation" is every evaluation after the baseline (per step and after unlearning)."""
    t = manifest.get("timings_s", {})
    heal = (manifest.get("method_facts") or {}).get("heal_seconds", 0.0)
    stages = {
        "load": t.get("load_model", 0.0),
        "data": t.get("data", 0.0),
        "baseline evaluation": t.get("baseline_evaluation", 0.0),
        "statistics": t.get("statistics", 0.0),
        "healing": heal,
        "evaluation": t.get("evaluation", 0.0) - t.get("baseline_evaluation", 0.0),
        "suites": t.get("suites_before", 0.0) + t.get("suites_after", 0.0),
        "save": t.get("save", 0.0),
    }
    parts = [f"{name} {sec:.0f} s" for name, sec in stages.items() if sec >= 0.5]
    return ", ".join(parts + [f"total {t.get('total', 0.0):.0f} s"])


def _print_earlier(console, entries: list[dict] | None) -> None:
    """A sequential run's earlier requests: top-1 when each was made, and on the parent and the new model."""
    if not entries:
        return
    from rich.table import Table

    table = Table(title="earlier requests (top1)", title_justify="left")
    for col in ("request", "corpus", "original", "after request", "before", "after"):
        table.add_column(col, justify="left" if col in ("request", "corpus") else "right")
    for e in entries:
        if "error" in e:
            table.add_row(e["run"], "", "", "", "", f"not measured: {e['error']}")
            continue
        for which in ("forget", "retain"):
            v = e[which]
            table.add_row(
                e["run"] if which == "forget" else "",
                f"{which} ({e[f'{which}_source']})",
                *(f"{v[k]:.4f}" for k in ("original", "after_request", "before", "after")),
            )
    console.print(table)


@main.command("eval")
@click.option(
    "--model", required=True, help="smollm2-135m, a checkpoint folder (e.g. runs/NAME/model), .gguf file or hub id."
)
@click.option(
    "--suite",
    help="Evaluation suite: tofu, muse, rwku, mcq, lm or mia (see `unlearn suites`). Without it: next-token "
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
@click.option("--limit", type=int, help="Suite: only the first N records of each part.")
@click.option("--shots", type=int, help="Suite mcq: few-shot examples per question (0-5).")
@click.option(
    "--template",
    type=click.Choice(["auto", "chat", "plain"]),
    help="Suite: QA prompts with the tokenizer's chat template or plain 'Question: ... Answer:' (default auto).",
)
@click.option("--reference", help="Suite: reference model or its eval/<suite>.json (TOFU forget quality, PrivLeak).")
@click.option("--original", help="Suite: the model before unlearning (specificity, fluency); default from the run.")
@click.option("--out", "out_dir", help="Suite: results go to OUT/eval/<suite>.json (default: the run folder).")
@click.option("--overwrite", is_flag=True, help="Suite: recompute parts already in the results file.")
@click.option(
    "--eval-tokens",
    type=int,
    default=DEFAULTS.eval_tokens,
    show_default=True,
    help="Tokens per corpus (a run's default: the same held-out chunks it reported).",
)
@click.option("--seq-len", type=int, default=DEFAULTS.seq_len, show_default=True, help="Tokens per chunk.")
@click.option(
    "--batch-size", type=int, default=DEFAULTS.batch_size, show_default=True, help="Sequences per forward pass."
)
@click.option(
    "--skip-k",
    type=int,
    default=DEFAULTS.skip_k,
    show_default=True,
    help="Skip-k accuracy ignores the k most frequent tokens.",
)
@click.option(
    "--seed",
    type=int,
    default=DEFAULTS.seed,
    show_default=True,
    help="Same seed as a run = the run's evaluation chunks.",
)
@click.option("--dtype", type=click.Choice(["auto", "bf16", "fp32", "fp16"]), default="auto", show_default=True)
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
    from . import api
    from .config import DataConfig

    if eval_tokens < 1 or seq_len < 8 or batch_size < 1 or skip_k < 0:
        raise UnlearnError("--eval-tokens and --batch-size must be positive, --seq-len at least 8, --skip-k >= 0")
    if output and os.path.isdir(output):  # before any work, not after it
        raise UnlearnError(f"--output {output} is a folder: give a file name, e.g. {os.path.join(output, 'eval.json')}")
    if suite:
        values = _key_values(settings, "--set")
        for key, val in (("limit", limit), ("shots", shots), ("template", template)):
            _set(values, key, val)
        if suite == "lm":
            values = {"eval_tokens": eval_tokens, "seq_len": seq_len, "skip_k": skip_k, "seed": seed, **values}
            if fields:
                values.setdefault("field", fields[0])
        result = api.evaluate_suite(
            model,
            suite,
            list(data),
            settings=values,
            reference=reference,
            original=original,
            out=out_dir,
            overwrite=overwrite,
            batch_size=batch_size,
            dtype=dtype,
            device=device,
            console=_console(),
        )
        _write_output(output, result)
        if as_json:
            click.echo(json.dumps(result, indent=2, default=str))
        else:
            _print_suite(result)
        return
    unused = [
        f
        for f, v in (
            ("--set", settings),
            ("--limit", limit),
            ("--shots", shots),
            ("--reference", reference),
            ("--original", original),
            ("--out", out_dir),
            ("--template", template),
        )
        if v
    ]
    if unused or overwrite:
        raise UnlearnError(f"{(unused or ['--overwrite'])[0]} needs --suite")
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
        console=_console(),
    )
    _write_output(output, {"model": model, "results": results})
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
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


def _key_values(items, flag: str) -> dict:
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise UnlearnError(f"{flag} expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


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
@click.option("--epochs", type=float, default=3.0, show_default=True, help="Passes over the data (unless --steps).")
@click.option("--steps", type=int, help="Optimizer steps (overrides --epochs).")
@click.option("--lr", type=float, default=5e-5, show_default=True, help="Peak learning rate (AdamW).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Rows per optimizer step.")
@click.option("--seq-len", type=int, default=256, show_default=True, help="Tokens per row (QA rows are padded).")
@click.option("--tokens", type=int, default=65536, show_default=True, help="Text data: tokens to train on.")
@click.option("--lora", help="Train LoRA adapters and merge them: 'r=16[,alpha=32,dropout=0,targets=a;b]'.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "bf16", "fp32", "fp16"]), default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True)
def learn_cmd(model, data, out_dir, fmt, epochs, steps, lr, batch_size, seq_len, tokens, lora, seed, dtype, device):
    """Fine-tune a model on data with the unlearning methods' training loop (e.g. to build TOFU-style targets)."""
    from . import api

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
        console=_console(),
    )
    log = result["log"]
    click.echo(
        f"learnt {result['data']['rows']} rows of {data} ({result['data']['format']}) in {len(log)} steps: "
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
    from . import api

    def parts(st) -> str:
        return "parts: " + (
            st["parts"] if isinstance(st["parts"], str) else ", ".join(f"{k}={v}" for k, v in st["parts"].items())
        )

    _print_registry(api.suites(), "settings", as_json, parts)


@main.command("methods")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def methods_cmd(as_json):
    """List the registered unlearning methods and their parameters (defaults and meaning), then the presets."""
    from . import api
    from .methods.presets import PRESETS

    _print_registry(api.methods(), "parameters", as_json)
    if as_json:
        return
    click.echo("\npresets (--preset NAME):")
    for name, preset in PRESETS.items():
        settings = ", ".join(f"{k}={v}" for k, v in preset["method_config"].items())
        click.echo(f"  {name}: {preset['summary']}\n    {preset['method']}: {settings}")


@main.command("ledger")
@click.argument("run_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the ledger as JSON.")
def ledger_cmd(run_dir, as_json):
    """The chain of unlearning requests behind RUN_DIR (root first): what was forgotten, when, how, and the
    model and data hashes, with every hash re-verified against the files on disk.

    Exit code 0 when everything matches, 1 when a check fails, 2 when RUN_DIR is not a run folder.
    """
    from . import api

    result = api.ledger(run_dir)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        _print_ledger(result)
    if not result["verified"]:
        problems = result["problems"]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        click.echo(f"error: verification failed: {problems[0]}{more}", err=True)
        sys.exit(1)


def _short(sha: str | None) -> str:
    return sha[:16] if sha else "-"


def _print_ledger(result: dict) -> None:
    """One section per request, root first: what, when, how, the hashes and whether they verified."""
    from rich.console import Console
    from rich.table import Table

    from .report.ledger import compact_method_config

    table = Table(title=f"unlearning requests behind {result['run_dir']}", title_justify="left", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("request", overflow="fold")
    table.add_column("forgot / kept", overflow="fold")
    table.add_column("method", overflow="fold")
    table.add_column("sha256", overflow="fold", no_wrap=True)
    table.add_column("ok")
    for i, r in enumerate(result["requests"], 1):
        model, data = r["model"], r["data"]
        table.add_row(
            str(i),
            f"{r['run']}\n{r['created'] or '-'}",
            f"{r['forget_source']}\nkept: {r['retain_source']}",
            f"{r['method']}\n{compact_method_config(r['method'], r['method_config'])}",
            f"model  {_short(model['sha256_before'])}\n    →  {_short(model['sha256_after'])}\n"
            f"forget {_short(data['forget']['sha256_tokens'])}\nretain {_short(data['retain']['sha256_tokens'])}",
            "yes" if r["verified"] else "NO",
        )
    Console().print(table)
    n = len(result["requests"])
    if result["verified"]:
        click.echo(f"verified: {n} request{'s' if n != 1 else ''}, all hashes match")
        return
    for problem in result["problems"]:
        click.echo(f"problem: {problem}")
    click.echo(f"verification failed: {len(result['problems'])} problem(s) in {n} request(s)")


@main.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(), metavar="RUN_DIR [RUN_DIR ...]")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(),
    help="Folder for report.html and report.md (default: the run folder; with several runs reports/TIMESTAMP).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the written paths as JSON.")
def report_cmd(run_dirs, out_dir, as_json):
    """Write report.html (self-contained, figures inline) and report.md for one or several run folders: metrics
    before/after, the trade-off per step, pruned neurons per layer, suites, audit, earlier requests, manifest;
    with several runs also a comparison table and overlaid trade-off curves."""
    from . import api

    paths = api.report(list(run_dirs), out=out_dir)
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
@click.option("--forget-format", type=click.Choice(["text", "qa"]), help="Format of --forget (default: detected).")
@click.option("--retain-format", type=click.Choice(["text", "qa"]), help="Format of --retain (default: detected).")
@click.option("--control", help="Unrelated data for the control relearning (default: the retain data).")
@click.option(
    "--attack",
    "attacks",
    multiple=True,
    type=click.Choice(["relearn", "quantize", "logit-lens", "prompt", "in-context"]),
    help="Run only these attacks (repeatable; default all).",
)
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="An audit setting (repeatable; see below).")
@click.option("--out", "out_dir", help="Write OUT/audit.json (default: the run folder, else audits/<model>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing audit.json.")
@click.option("--seq-len", type=int, help="Tokens per chunk (default: the run's).")
@click.option("--eval-tokens", type=int, help="Tokens of evaluation rows per corpus (default: the run's).")
@click.option("--seed", type=int, help="Seed for the choice of chunks (default: the run's).")
@click.option("--batch-size", type=int, help="Rows per forward pass (default: the run's).")
@click.option("--dtype", type=click.Choice(["auto", "bf16", "fp32", "fp16"]), help="Default: the run's.")
@click.option("--device", default="auto", show_default=True)
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

    \b
    Settings (--set KEY=VALUE): metric (top1|top10), relearn_steps (20), relearn_lr (5e-5),
    relearn_batch_size (4), relearn_tokens (4096), quant_bits ([8, 4]), quant_group_size (0 = per channel),
    shots (text 1 chunk, QA 3 records), topic (for the text prompts).

    \b
    unlearn audit runs/NAME                      # everything from the run folder; writes runs/NAME/audit.json
    unlearn audit --model M --original O --forget F --retain R
    """
    from . import api
    from .config import DataConfig

    if run_dir and model:
        raise UnlearnError("give either RUN_DIR or --model, not both")
    if not (run_dir or model):
        raise UnlearnError("give a run folder (RUN_DIR) or --model")

    def data(source, fmt):
        if source is None:
            if fmt:
                raise UnlearnError("--forget-format/--retain-format need --forget/--retain")
            return None
        return DataConfig(source=source, format=fmt or api._detect_format(source))

    result = api.audit(
        run_dir or model,
        original=original,
        forget=data(forget, forget_format),
        retain=data(retain, retain_format),
        control=control,
        attacks=list(attacks) or None,
        settings=_key_values(settings, "--set"),
        out=out_dir,
        overwrite=overwrite,
        seq_len=seq_len,
        eval_tokens=eval_tokens,
        seed=seed,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        console=_console(),
    )
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    _print_audit(result)


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
