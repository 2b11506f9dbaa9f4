"""The ``run`` command: its options, the config they build, and the summary it prints."""

from __future__ import annotations

import json

import click

from ..config import DEVICE_MAPS, DataConfig, RunConfig
from ..errors import UnlearnError
from ..methods.selective_pruning import SelectivePruningConfig
from .group import (
    DEFAULTS,
    PCT,
    SP,
    Number,
    choices,
    console_for,
    fraction,
    int_or_auto,
    key_values,
    main,
    set_if_given,
)


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
@click.option("--delete", metavar="RECORDS", help="Records to delete exactly from a sharded model: --method exact.")
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
    "--forget-format", type=choices(DataConfig, "format"), help="qa: question/answer records, loss on answers."
)
@click.option("--retain-format", type=choices(DataConfig, "format"), help="Like --forget-format, for retain data.")
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
    type=choices(SelectivePruningConfig, "importance"),
    help=f"Selective pruning: neuron importance (default {SP['importance']}).",
)
@click.option(
    "--ff-frac",
    type=Number.like(SelectivePruningConfig, "ff_frac"),
    help=f"Selective pruning: fraction of feed-forward neurons pruned per step (default {SP['ff_frac']}).",
)
@click.option(
    "--attn-frac",
    type=Number.like(SelectivePruningConfig, "attn_frac"),
    help=f"Selective pruning: fraction of attention neurons pruned per step (default {SP['attn_frac']}).",
)
@click.option(
    "--steps",
    type=Number.like(SelectivePruningConfig, "steps"),
    help=f"Pruning steps (the most, with a budget; default {SP['steps']}).",
)
@click.option(
    "--scope",
    type=choices(SelectivePruningConfig, "scope"),
    help=f"Rank neurons across all layers or per layer (default {SP['scope']}).",
)
@click.option(
    "--ablation",
    type=choices(SelectivePruningConfig, "ablation"),
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
@click.option("--dtype", type=choices(RunConfig, "dtype"), help="auto: bf16 on GPU or bf16-capable CPU, else fp32.")
@click.option("--device", help="auto, cpu or cuda.")
@click.option(
    "--device-map",
    type=click.Choice(DEVICE_MAPS),
    help="Spread a model bigger than one device over the GPUs, then CPU and disk (selective pruning, evaluation).",
)
@click.option(
    "--seq-len", type=Number.like(RunConfig, "seq_len"), help=f"Tokens per chunk (default {DEFAULTS.seq_len})."
)
@click.option(
    "--stats-tokens",
    type=Number.like(RunConfig, "stats_tokens"),
    help=f"Tokens per corpus for the method's statistics (default {DEFAULTS.stats_tokens}).",
)
@click.option(
    "--eval-tokens",
    type=Number.like(RunConfig, "eval_tokens"),
    help=f"Held-out tokens per corpus for the reported metrics (default {DEFAULTS.eval_tokens}).",
)
@click.option(
    "--val-tokens",
    type=Number.like(RunConfig, "val_tokens"),
    help=f"Validation tokens per corpus that budgets and targets watch (default {DEFAULTS.val_tokens}).",
)
@click.option(
    "--skip-k",
    type=Number.like(RunConfig, "skip_k"),
    help=f"Skip-k accuracy ignores the k most frequent tokens (default {DEFAULTS.skip_k}).",
)
@click.option(
    "--batch-size",
    help=f"Chunks per forward pass (default {DEFAULTS.batch_size}), or auto: the largest that fits in memory.",
)
@click.option(
    "--seed", type=Number.like(RunConfig, "seed"), help=f"Seed for the choice of chunks (default {DEFAULTS.seed})."
)
@click.option("--out", "out_dir", help="Folder that receives run folders (default runs).")
@click.option("--name", help="Run folder name (default: timestamp-method).")
@click.option(
    "--eval",
    "evals",
    multiple=True,
    metavar="SUITE:DATA[,DATA]",
    help="Also evaluate with a suite before and after, e.g. --eval mcq:mmlu/test/geo.csv, or an lm-evaluation-harness "
    "task: --eval lm-eval:arc_easy (repeatable; settings, references and local task folders via --config evals).",
)
@click.option(
    "--control",
    type=click.Choice(["random"]),
    help="Selective pruning: also run the random control into NAME-control-random and draw it in the report.",
)
@click.option("--no-save-model", is_flag=True, help="Do not write the unlearned checkpoint.")
@click.option("--no-report", is_flag=True, help="Do not write report.html / report.md (`unlearn report` can later).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON instead of a table.")
@click.option("--quiet", is_flag=True, help="No progress bars (warnings and errors still show).")
@click.option(
    "--no-verify",
    is_flag=True,
    help="With --from: build on the parent run even if its files no longer match its manifest (the new manifest "
    "records that the parent was not verified).",
)
@click.option(
    "--sign",
    metavar="KEY",
    type=click.Path(),
    help="Sign the finished run folder with this Ed25519 private key (`unlearn keygen`): `unlearn ledger --pubkey` "
    "then detects any later edit, the newest manifest's included.",
)
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
    "--num-processes",
    type=Number(int, ge=1),
    help="Processes for --launcher accelerate (default 2, or the accelerate config's).",
)
@click.option(
    "--accelerate-config",
    type=click.Path(),
    help="An `accelerate config` file for --launcher accelerate: DDP, FSDP or DeepSpeed (see configs/accelerate/).",
)
def run(**opts):
    """Unlearn a corpus from a model and write a run folder (config, metrics, model, manifest).

    With no options: forget Python code (the standard library's source), keep English prose (Python's
    reference documentation without its code), on the bundled SmolLM2-135M-Instruct, offline on the CPU.
    """
    from .. import api

    values = settings(opts)
    console = None if opts["quiet"] else console_for()
    launcher, n, accelerate_config = opts["launcher"], opts["num_processes"], opts["accelerate_config"]
    if opts["resume"] is not None:
        if values or launcher != "none":
            raise UnlearnError("--resume continues a run with its own saved config: give no other settings")
        result = api.run(console=console, resume=opts["resume"], sign=opts["sign"], verify=not opts["no_verify"])
    elif launcher == "accelerate":
        n = n if n is not None else (None if accelerate_config else 2)
        result = api.launch(
            values,
            num_processes=n,
            accelerate_config=accelerate_config,
            console=console,
            sign=opts["sign"],
            verify=not opts["no_verify"],
        )
    elif n is not None or accelerate_config is not None:
        raise UnlearnError("--num-processes and --accelerate-config need --launcher accelerate")
    else:
        result = api.run(values, console=console, sign=opts["sign"], verify=not opts["no_verify"])
    if result.run_dir is None:  # a process other than 0 of a multi-process launch: process 0 reports
        return
    if opts["as_json"]:
        click.echo(json.dumps({"run_dir": str(result.run_dir), **result.metrics}, indent=2))
    else:
        _print_summary(result)


RUN_SETTINGS = (
    "model",
    "from_run",
    "method",
    "preset",
    "dtype",
    "device",
    "device_map",
    "seq_len",
    "stats_tokens",
    "eval_tokens",
    "val_tokens",
    "skip_k",
    "batch_size",
    "seed",
    "out_dir",
    "name",
    "control",
)
METHOD_FLAGS = ("importance", "ff_frac", "attn_frac", "steps", "scope", "ablation", "lora")


def settings(opts: dict) -> dict:
    """The run's settings: the config file's, with the flags given on top."""
    from ..config import load_config_file

    values = load_config_file(opts["config_file"]) if opts["config_file"] else {}
    opts = {**opts, "batch_size": int_or_auto(opts["batch_size"], "--batch-size")}
    for key in RUN_SETTINGS:
        set_if_given(values, key, opts[key])
    _data_settings(values, opts)
    if opts["delete"] is not None:  # a deletion request: exact unlearning, the records to delete as forget data
        from ..methods.exact import deletion_settings

        values |= deletion_settings(opts["delete"], values, given_forget=opts["forget"] is not None)
    mc = dict(values.get("method_config") or {})
    for key in METHOD_FLAGS:
        set_if_given(mc, key, opts[key])
    if opts["collect"]:
        mc["recollect"] = opts["collect"] == "every"
    mc.update(key_values(opts["method_params"], "--set"))
    if mc:
        values["method_config"] = mc
    stop = _stop_settings(dict(values.get("stop") or {}), opts)
    if stop:
        values["stop"] = stop
    return values


def _data_settings(values: dict, opts: dict) -> None:
    """--forget/--retain (with their fields and formats), --utility, --eval, and what to write."""
    for which in ("forget", "retain"):
        source, fields, fmt = opts[which], opts[f"{which}_fields"], opts[f"{which}_format"]
        if source is not None or fields or fmt:
            data = dict(values.get(which) or {})
            set_if_given(data, "source", source)
            set_if_given(data, "format", fmt)
            if fields:
                data["fields"] = list(fields)
            if "source" not in data:
                data["source"] = "python-stdlib" if which == "forget" else "general-english"
            values[which] = data
    utility = opts["utility"]
    if utility is not None:
        values["utility"] = None if utility.strip().lower() == "none" else {"source": utility}
    if opts["no_save_model"]:
        values["save_model"] = False
    if opts["no_report"]:
        values["report"] = False
    for item in opts["evals"]:
        suite, sep, data = item.partition(":")
        if not sep or not suite or not data:
            raise UnlearnError(f"--eval expects SUITE:DATA, got {item!r}")
        spec = (
            {"suite": f"{suite}:{data}", "data": []}
            if suite == "lm-eval"
            else {"suite": suite, "data": data.split(",")}
        )
        values["evals"] = [*(values.get("evals") or []), spec]


def _stop_settings(stop: dict, opts: dict) -> dict:
    """--budget (repeatable), --max-retain-drop, --forget-target-drop and --budget-metric on top of ``stop``."""
    budget_metric = opts["budget_metric"]
    for item in opts["budgets"]:
        if item.startswith("kl="):  # a bound on KL(original ‖ model) on the retain validation chunks
            try:
                stop["max_retain_kl"] = float(item[3:])
            except ValueError:
                raise UnlearnError(f"--budget kl=X needs a number, got {item!r}") from None
            continue
        if item.startswith("utility="):  # keep ≥ this share of the retain metric = a retain drop budget
            share = fraction(item.split("=", 1)[1], "--budget utility")
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
        stop[key] = fraction(amount, "--budget")
    set_if_given(stop, "max_retain_drop", fraction(opts["max_retain_drop"], "--max-retain-drop"))
    set_if_given(stop, "forget_target_drop", fraction(opts["forget_target_drop"], "--forget-target-drop"))
    set_if_given(stop, "metric", budget_metric)
    return stop


def _print_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..eval.metrics import relative_drop

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
    experts = f", {pruned['expert']} expert" if "expert" in pruned else ""  # mixture-of-experts models
    console.print(
        f"pruned: {pruned['ff']} feed-forward, {pruned['attn']} attention{experts} neurons; "
        f"stopped: {result.metrics['stop_reason']}",
        highlight=False,
    )
    console.print("time: " + _stage_times(result.manifest), highlight=False)
    for suite in result.metrics.get("suites", {}).get("after", {}):
        file = suite.partition(":")[0] if suite.startswith("lm-eval:") else suite
        console.print(f"suite {suite}: eval/{file}.json (before: eval/before/{file}.json)", highlight=False)
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
