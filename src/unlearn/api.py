"""The Python API. Every CLI command is one call here: :func:`run`, :func:`evaluate`, :func:`audit`, ..."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__, distributed
from .audit.runner import audit  # noqa: F401 - re-exported: `unlearn audit`
from .config import DataConfig, RunConfig, load_config_file, parse_config
from .data.chunking import Corpus, build_corpus, tokens_sha256
from .data.sources import BUILTIN, iter_documents
from .errors import UnlearnError, from_os_error
from .eval.metrics import evaluate_split, relative_drop
from .methods import get_method, registry
from .models.adapters import adapter_for
from .models.hooks import Ablation, ablated, collect_statistics
from .models.load import LoadedModel, cpu_level, load_model, state_dict_hash
from .models.save import check_foldable, fold, save_checkpoint
from .progress import Reporter
from .report.rundir import RunFolder, find_interrupted

HEADLINE = ("top1", "top10", "loss")


@dataclass
class RunResult:
    run_dir: Path | None
    metrics: dict
    manifest: dict
    config: RunConfig

    @property
    def before(self) -> dict:
        return self.metrics["before"]

    @property
    def after(self) -> dict:
        return self.metrics["after"]


@dataclass
class MethodContext:
    """What a method sees: the model, both corpora, and callbacks for statistics, evaluation and stopping."""

    loaded: LoadedModel
    adapter: object
    forget: Corpus
    retain: Corpus
    config: RunConfig
    reporter: Reporter
    baseline: dict = field(default_factory=dict)
    baseline_val: dict = field(default_factory=dict)
    timings: dict = field(default_factory=lambda: {"statistics": 0.0, "evaluation": 0.0})
    folder: RunFolder | None = None  # the run's work folder (process 0), where checkpoints go
    resumed: dict | None = None  # the last checkpoint of the interrupted run being resumed
    model_sha256: str = ""

    def save_checkpoint(self, state: dict) -> None:
        """Keep the method's state (replacing the previous one) so that ``--resume`` can continue from it."""
        if self.folder is not None:
            self.folder.save_checkpoint({"model_sha256": self.model_sha256, **state})

    @property
    def model(self):
        return self.loaded.model

    def corpus(self, which: str) -> Corpus:
        return self.forget if which == "forget" else self.retain

    def statistics(self, which: str, ablation: Ablation, kinds, needs=("freq", "abs", "rms", "std", "mean")) -> dict:
        """Per-neuron statistics (those ``needs`` asks for) on the ``which`` corpus's statistics split, with
        ``ablation`` applied."""
        split = self.corpus(which).stats
        start = time.perf_counter()
        with (
            self.reporter.task(f"statistics: {which}", split.n_tokens) as advance,
            ablated(self.model, self.adapter, ablation),
        ):
            stats = collect_statistics(
                self.model,
                self.adapter,
                split,
                batch_size=self.config.batch_size,
                kinds=kinds,
                needs=needs,
                progress=advance,
            )
        self.timings["statistics"] += time.perf_counter() - start
        return stats

    def training_split(self, which: str, n_tokens: int):
        """Up to ``n_tokens`` of training chunks of the ``which`` corpus: its statistics chunks followed by the
        chunks after them in the same shuffled stream (never the evaluation or validation chunks); fewer if the
        text has no more (never fewer than the statistics chunks)."""
        corpus = self.corpus(which)
        if n_tokens <= corpus.stats.n_tokens:
            return corpus.stats
        cfg = self.config.model_copy(update={"stats_tokens": n_tokens})
        data = cfg.forget if which == "forget" else cfg.retain
        with self.reporter.stage(f"tokenising {n_tokens} training tokens of the {which} corpus"):
            return _corpus(which, data, self.loaded.tokenizer, cfg, stats_at_most=True).stats

    def evaluate(self, ablation: Ablation | None = None, label: str = "", split: str = "eval", model=None) -> dict:
        """Metrics on both corpora's ``split`` (held-out ``eval`` or ``val``idation chunks) of ``model`` (default:
        the working model) with ``ablation``, with relative drops against the original once its baseline exists."""
        start = time.perf_counter()
        out = {}
        model = model if model is not None else self.model
        with ablated(model, self.adapter, ablation) if ablation else contextlib.nullcontext():
            for which in ("forget", "retain"):
                out[which] = self._score(model, getattr(self.corpus(which), split), f"{label or split}: {which}")
        base = self.baseline if split == "eval" else self.baseline_val
        if base:
            for which in ("forget", "retain"):
                out[f"{which}_drop"] = _drops(base[which], out[which])
        self.timings["evaluation"] += time.perf_counter() - start
        return out

    def evaluate_utility(self, model=None, label: str = "") -> dict:
        """Metrics of ``model`` (default: the working model) on the utility corpus's evaluation chunks."""
        start = time.perf_counter()
        out = self._score(model if model is not None else self.model, self.utility.eval, f"{label}: utility")
        self.timings["evaluation"] += time.perf_counter() - start
        return out

    def _score(self, model, chunks, description: str) -> dict:
        """Next-token metrics of ``model`` on ``chunks``, with a progress bar."""
        with self.reporter.task(description, chunks.n_tokens) as advance:
            return evaluate_split(
                model, chunks, batch_size=self.config.batch_size, skip_k=self.config.skip_k, progress=advance
            )

    original: object | None = None  # a frozen copy of the model before unlearning (for a KL budget)
    utility: Corpus | None = None  # general text that no step of the method sees: evaluated before and after

    @property
    def budgeted(self) -> bool:
        return self.config.stop.active

    def check_budget(self, ablation: Ablation | None = None, model=None) -> tuple[str | None, dict | None]:
        """Measure the budget on the validation chunks: (a reason to stop or None, the validation metrics).

        The reason starts with "budget" when the retain budget is exceeded (the step must be undone) and with
        "target" when the forget target is reached (the step is kept).
        """
        if not self.budgeted:
            return None, None
        if not self.baseline_val:
            self.baseline_val = self.evaluate(label="validation before", split="val")
        metrics = self.evaluate(ablation, label="validation", split="val", model=model)
        stop = self.config.stop
        if stop.max_retain_kl is not None:
            from .eval.suites.lm import specificity_kl

            current = model if model is not None else self.model
            with ablated(current, self.adapter, ablation) if ablation else contextlib.nullcontext():
                kl = specificity_kl(current, self.original, self.retain.val, max(1, self.config.batch_size // 2))
            metrics["retain_kl"] = kl
            if kl > stop.max_retain_kl:
                return f"budget: validation retain KL(original ‖ model) {kl:.4f} > {stop.max_retain_kl}", metrics
        metric = stop.metric
        if metric not in metrics["retain_drop"]:
            raise UnlearnError(f"unknown budget metric {metric!r}: use one of {', '.join(metrics['retain_drop'])}")
        if stop.max_retain_drop is not None:
            drop = metrics["retain_drop"][metric]
            if drop > stop.max_retain_drop:
                return f"budget: validation retain {metric} dropped {drop:.1%} > {stop.max_retain_drop:.1%}", metrics
        if stop.forget_target_drop is not None:
            drop = metrics["forget_drop"][metric]
            if drop >= stop.forget_target_drop:
                return (
                    f"target: validation forget {metric} dropped {drop:.1%} >= {stop.forget_target_drop:.1%}",
                    metrics,
                )
        return None, metrics


LONG_RUN_S = 600  # a run expected to take longer says so before its slow part


def estimated_seconds(ctx: MethodContext, method_cfg, seconds_per_token: float) -> float | None:
    """The method's expected time and the evaluation after it, from the forward passes it will make (a training
    step's forward and backward count as three forward passes) and the measured ``seconds_per_token`` of a
    forward pass; None for a method whose work is not known in advance."""
    cfg = ctx.config
    evaluated = sum(c.eval.n_tokens for c in (ctx.forget, ctx.retain, ctx.utility) if c is not None)
    stats = ctx.forget.stats.n_tokens + ctx.retain.stats.n_tokens
    if hasattr(method_cfg, "heal_steps"):  # selective pruning: statistics and an evaluation per step, then healing
        per_step = stats + ctx.forget.eval.n_tokens + ctx.retain.eval.n_tokens
        scored = 2 if method_cfg.heal_forget_weight else 1
        heal = method_cfg.heal_steps * method_cfg.heal_batch_size * cfg.seq_len * scored * 3
        tokens = method_cfg.steps * per_step + heal * (1.3 if method_cfg.heal_checkpointing else 1.0)
    elif hasattr(method_cfg, "grad_accum"):  # a trained method: forget and retain micro-batches per step
        tokens = method_cfg.steps * method_cfg.grad_accum * method_cfg.batch_size * cfg.seq_len * 2 * 3
    else:
        return None
    return (tokens + evaluated) * seconds_per_token


def _announce_long_run(ctx: MethodContext, method_cfg, baseline_seconds: float) -> None:
    """Say first when the run is expected to take more than ten minutes (the rate: the baseline evaluation's)."""
    measured = sum(c.eval.n_tokens for c in (ctx.forget, ctx.retain, ctx.utility) if c is not None)
    if not measured or baseline_seconds <= 0:
        return
    eta = estimated_seconds(ctx, method_cfg, baseline_seconds / measured)
    if eta is not None and eta > LONG_RUN_S:
        ctx.reporter.log(
            f"this run will take about {eta / 60:.0f} more minutes on this machine (estimated from the baseline "
            f"evaluation's {measured / baseline_seconds:.0f} tokens/s)"
        )


def _drops(before: dict, after: dict) -> dict:
    """Relative drop of every accuracy metric (not of loss or perplexity)."""
    return {k: relative_drop(before[k], after[k]) for k in after if k not in ("loss", "perplexity", "n_tokens")}


def coerce_config(config: RunConfig | dict | str | Path | None) -> RunConfig:
    if config is None:
        return RunConfig()
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, (str, Path)):
        return parse_config(load_config_file(config))
    return parse_config(dict(config))


def _check_data_exists(data: DataConfig) -> None:
    """Fail fast (before loading a model) on a missing local file, folder or glob, or malformed QA records."""
    if data.eval_source and data.eval_source not in BUILTIN:
        next(iter_documents(data.eval_spec()), None)
    spec = data.spec()
    if spec.source in BUILTIN or spec.source.startswith("hf:"):
        return
    if data.format == "qa":
        from .data.formats import load_qa

        load_qa(spec.source)
        return
    next(iter_documents(spec), None)


def versions() -> dict:
    import accelerate
    import safetensors
    import transformers

    return {
        "unlearn": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "safetensors": safetensors.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_level": cpu_level(),
        "threads": torch.get_num_threads(),
    }


def _corpora(loaded: LoadedModel, cfg: RunConfig, reporter: Reporter) -> tuple[Corpus, Corpus, Corpus | None]:
    out = []
    for which, data in (("forget", cfg.forget), ("retain", cfg.retain)):
        with reporter.stage(f"tokenising {which} corpus {data.source}"):
            out.append(_corpus(which, data, loaded.tokenizer, cfg))
    utility = None
    if cfg.utility is not None:  # evaluation chunks only: no step of the method sees this text
        with reporter.stage(f"tokenising utility corpus {cfg.utility.source}"):
            utility = build_corpus(
                "utility",
                cfg.utility.spec(),
                loaded.tokenizer,
                seq_len=cfg.seq_len,
                eval_tokens=cfg.eval_tokens,
                stats_tokens=0,
                seed=cfg.seed,
            )
    return out[0], out[1], utility


def _corpus(which: str, data: DataConfig, tokenizer, cfg: RunConfig, stats_at_most: bool = False) -> Corpus:
    if data.format == "qa":
        return _qa_corpus(which, data, tokenizer, cfg)
    corpus = build_corpus(
        which,
        data.spec(),
        tokenizer,
        seq_len=cfg.seq_len,
        eval_tokens=0 if data.eval_source else cfg.eval_tokens,
        stats_tokens=cfg.stats_tokens,
        seed=cfg.seed,
        val_tokens=cfg.val_tokens,
        stats_at_most=stats_at_most,
    )
    if data.eval_source:  # report on held-out text: other files than the method sees
        held = _eval_chunks(which, data, tokenizer, cfg)
        seen = [held, corpus.stats] + ([corpus.val] if corpus.val is not None else [])
        both = torch.cat([split.input_ids for split in seen])
        corpus = dataclasses.replace(corpus, eval=held, sha256=tokens_sha256(both))
    return corpus


def _qa_corpus(which: str, data: DataConfig, tokenizer, cfg) -> Corpus:
    from .data.chunking import build_qa_corpus
    from .data.formats import load_qa
    from .eval.scoring import Template

    return build_qa_corpus(
        which,
        data.spec(),
        load_qa(data.source, hf_config=data.hf_config, hf_split=data.hf_split),
        tokenizer,
        Template(tokenizer, "auto"),
        seq_len=cfg.seq_len,
        eval_tokens=cfg.eval_tokens,
        stats_tokens=cfg.stats_tokens,
        seed=cfg.seed,
        val_tokens=cfg.val_tokens,
    )


def run(
    config: RunConfig | dict | str | Path | None = None, *, console=None, resume: str | Path | None = None
) -> RunResult:
    """Unlearn the forget corpus from a model with the configured method; write and return the run.

    ``config`` is a :class:`RunConfig`, a dict of its fields, or the path of a YAML file. ``console`` (a
    ``rich.console.Console``) turns on progress bars. Raises :class:`UnlearnError` for bad input, and then
    leaves nothing in ``out_dir``. The run is built in ``out_dir/.NAME.incomplete`` and renamed to
    ``out_dir/NAME`` when complete; an interrupted run (Ctrl-C, a crash, ``kill -9``) leaves that work folder
    with the method's last checkpoint, and ``resume="out_dir/NAME"`` (with no ``config``) continues it: the
    result equals an uninterrupted run's.
    """
    t0 = time.perf_counter()
    work = None
    if resume is not None:
        if config is not None:
            raise UnlearnError("--resume continues a run with its own saved config: give no other settings")
        work = find_interrupted(resume)
        config = work / "config.yaml"
    cfg, parent, method, method_cfg = _validated(config, resuming=work is not None)
    reporter = Reporter(console)
    folder = RunFolder(cfg.out_dir, cfg.name, method.name)
    main = distributed.is_main()  # only process 0 writes the run folder
    if work is not None:
        folder.resume(work)
    elif main:
        folder.start(cfg.model_dump())
    try:
        return _run(cfg, parent, method, method_cfg, folder, reporter, t0)
    except KeyboardInterrupt:
        if main and folder.tmp is not None:
            reporter.log(f"interrupted: continue with `{folder.resume_hint}`")
        raise
    except OSError as exc:  # e.g. the disk is full: nothing half-written stays
        if main:
            folder.discard()
        raise from_os_error(exc, "writing the run folder") from exc
    except Exception:
        if main:
            folder.discard()
        raise


def _run(cfg, parent, method, method_cfg, folder: RunFolder, reporter: Reporter, t0: float) -> RunResult:
    device = distributed.setup(cfg.device)  # under accelerate launch: join the process group
    main = distributed.is_main()
    torch.manual_seed(cfg.seed)

    timings = {}
    start = time.perf_counter()
    with reporter.stage(f"loading model {cfg.model}"):
        loaded = load_model(cfg.model, cfg.dtype, device, log=reporter.log, device_map=cfg.device_map)
    adapter = adapter_for(loaded.model)
    if cfg.batch_size == "auto":  # resolved once, and kept in the work folder's config for --resume
        from .models.memory import auto_batch_size

        cfg = cfg.model_copy(update={"batch_size": auto_batch_size(loaded.model, cfg.seq_len, mode="forward")})
        reporter.log(f"batch size auto: {cfg.batch_size} chunks of {cfg.seq_len} tokens")
        if main and folder.tmp is not None:
            folder.write_config(cfg.model_dump())
    if getattr(method_cfg, "ablation", None) == "mean":
        check_foldable(loaded.model, adapter, [k for k in ("ff", "attn") if method_cfg.fraction(k) > 0])
    timings["load_model"] = time.perf_counter() - start
    model_hash = state_dict_hash(loaded.model)
    _check_parent_model(parent, model_hash)

    start = time.perf_counter()
    forget, retain, utility = _corpora(loaded, cfg, reporter)
    timings["data"] = time.perf_counter() - start

    ctx = MethodContext(loaded, adapter, forget, retain, cfg, reporter, folder=folder if main else None)
    ctx.utility = utility
    ctx.resumed = folder.load_checkpoint()
    if ctx.resumed is not None and ctx.resumed.get("model_sha256") != model_hash:
        raise UnlearnError(f"the model {cfg.model} changed since the interrupted run started: it cannot be resumed")
    ctx.model_sha256 = model_hash
    if cfg.stop.max_retain_kl is not None:  # the KL budget compares against the model as it was
        import copy

        ctx.original = copy.deepcopy(loaded.model).eval().requires_grad_(False)
    start = time.perf_counter()
    ctx.baseline = ctx.evaluate(label="before")
    if utility is not None:
        ctx.baseline["utility"] = ctx.evaluate_utility(label="before")
    timings["baseline_evaluation"] = time.perf_counter() - start
    _announce_long_run(ctx, method_cfg, timings["baseline_evaluation"])
    start = time.perf_counter()  # earlier requests on the parent model, before the method changes anything
    earlier = _earlier_requests(parent, loaded.tokenizer, reporter)
    _measure_earlier(
        earlier,
        loaded.model,
        "before",
        cfg,
        reporter,
        [(forget.eval, ctx.baseline["forget"]), (retain.eval, ctx.baseline["retain"])],
    )
    timings["earlier_requests"] = time.perf_counter() - start
    scratch = tempfile.TemporaryDirectory(prefix="unlearn-eval-")  # suite results, moved into the run folder
    suites = {"before": {}, "after": {}}
    start = time.perf_counter()
    for spec in cfg.evals:
        suites["before"][spec.suite] = _run_eval(spec, loaded, model_hash, cfg, Path(scratch.name) / "before", reporter)
    timings["suites_before"] = time.perf_counter() - start

    start = time.perf_counter()
    result = method.run(ctx, method_cfg)
    timings["method"] = time.perf_counter() - start
    if result.model is not None:  # a trained method: its model replaces the working copy
        loaded.model = result.model
        loaded.dtype = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[
            next(result.model.parameters()).dtype
        ]
    after = result.final if result.final is not None else ctx.evaluate(result.ablation, label="after")
    # the unlearned model as it is saved: hooks folded into the weights (the working copy is changed in place)
    model = fold(loaded.model, adapter, result.ablation) if result.ablation else loaded.model
    if utility is not None:  # general text no step used: on the model as it is saved
        after = {**after, "utility": ctx.evaluate_utility(model=model, label="after")}
        after["utility_drop"] = _drops(ctx.baseline["utility"], after["utility"])
    out_hash = state_dict_hash(model) if cfg.save_model or cfg.evals else None  # once: suites and manifest
    start = time.perf_counter()
    _measure_earlier(
        earlier, model, "after", cfg, reporter, [(forget.eval, after["forget"]), (retain.eval, after["retain"])]
    )
    timings["earlier_requests"] += time.perf_counter() - start
    start = time.perf_counter()
    unlearned = LoadedModel(model, loaded.tokenizer, loaded.spec, loaded.source, loaded.dtype, loaded.device)
    for spec in cfg.evals:
        suites["after"][spec.suite] = _run_eval(spec, unlearned, out_hash, cfg, Path(scratch.name) / "after", reporter)
    timings["suites_after"] = time.perf_counter() - start

    with folder if main else contextlib.nullcontext(), scratch:
        start = time.perf_counter()
        files = save_checkpoint(model, loaded.tokenizer, folder.path("model")) if cfg.save_model and main else {}
        if cfg.evals and main:
            shutil.copytree(Path(scratch.name) / "after" / "eval", folder.path("eval"))
            shutil.copytree(Path(scratch.name) / "before" / "eval", folder.path("eval", "before"))
        timings["save"] = time.perf_counter() - start
        timings.update({k: round(v, 3) for k, v in ctx.timings.items()})
        timings["total"] = time.perf_counter() - t0
        ablation = result.ablation or Ablation()
        metrics = {
            "before": ctx.baseline,
            "validation_before": ctx.baseline_val or None,
            "steps": result.steps,
            "after": after,
            "stop_reason": result.stop_reason,
        }
        if result.log:
            metrics["train_log"] = result.log
        if cfg.evals:
            metrics["suites"] = suites
        if parent is not None:
            metrics["earlier_requests"] = _earlier_entries(earlier)
        manifest = {
            "unlearn_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seed": cfg.seed,
            "method": method.name,
            "parent": parent["record"] if parent is not None else None,
            "model": {
                "spec": cfg.model,
                "source": loaded.source,
                "dtype": loaded.dtype,
                "device": loaded.device,
                "family": adapter.family,
                "sha256_before": model_hash,
                "sha256_after": out_hash if cfg.save_model else None,
                "files": files,
            },
            "data": {
                c.name: {
                    "source": c.spec.describe(),
                    "eval_source": getattr(cfg, c.name).eval_source,
                    "sha256_tokens": c.sha256,
                    "sha256_eval_tokens": _tokens_sha256(c.eval),
                    "segments": c.n_segments,
                    "eval_tokens": c.eval.n_tokens,
                    "stats_tokens": c.stats.n_tokens,
                    "val_tokens": c.val.n_tokens if c.val is not None else 0,
                    # evaluated on held-out chunks of the very text the method used (its own distribution)
                    "eval_on_method_text": c.name != "utility" and not getattr(cfg, c.name).eval_source,
                }
                for c in (forget, retain, utility)
                if c is not None
            },
            "pruned_neurons_per_layer": ablation.counts(adapter.n_layers(loaded.model)),
            "pruned_total": {k: ablation.total(k) for k in ("ff", "attn")},
            "stop_reason": result.stop_reason,
            "method_facts": result.extra,
            "processes": distributed.world_size(),
            "versions": versions(),
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
        }
        if main:
            folder.write_config(cfg.model_dump())
            folder.write_json("metrics.json", metrics)
            folder.write_json("pruned_neurons.json", ablation.indices())
            manifest["files"] = _run_file_hashes(folder)  # manifest.json itself is written last
            folder.write_json("manifest.json", manifest)
    if not main:
        return RunResult(None, metrics, manifest, cfg)
    if cfg.report:  # derived from the files above: a failure leaves a complete run, rebuilt by `unlearn report`
        try:
            write_report(folder.final)
        except Exception as exc:  # noqa: BLE001
            reporter.log(f"warning: report not written ({exc}); rebuild it with `unlearn report {folder.final}`")
    return RunResult(folder.final, metrics, manifest, cfg)


def _validated(config, resuming: bool = False) -> tuple[RunConfig, dict | None, object, object]:
    """Every check that needs no model: the config, the method's settings, the data, the evaluation suites, the
    run folder and a ``--from`` parent. Returns the resolved config, the parent, the method and its config."""
    cfg, parent = _parent_run(coerce_config(config))  # a sequential request: verified parent, its model
    if cfg.preset is not None:
        from .methods.presets import apply_preset

        given = cfg.method if "method" in cfg.model_fields_set else None
        name, settings = apply_preset(cfg.preset, given, cfg.method_config)
        cfg = cfg.model_copy(update={"method": name, "method_config": settings})
    method = get_method(cfg.method)
    method_cfg = method.make_config(cfg.method_config)
    if not method.budget and cfg.stop.active:
        raise UnlearnError(f"{method.name} is a single edit: it cannot stop on a budget (drop --budget)")
    cfg = cfg.model_copy(update={"method": method.name, "method_config": method_cfg.model_dump()})
    for data in (cfg.forget, cfg.retain, cfg.utility):
        if data is not None:
            _check_data_exists(data)
    _check_evals(cfg)
    if cfg.device_map is not None:
        from .methods.training import TrainConfig

        if isinstance(method_cfg, TrainConfig):
            raise UnlearnError(
                f"--device-map serves statistics and evaluation; {method.name} trains: shard it with "
                "--launcher accelerate and an FSDP or DeepSpeed config (configs/accelerate/)"
            )
        if distributed.launched():
            raise UnlearnError("--device-map spreads one model over all devices: run it in one process")
    if not resuming and distributed.is_main():  # process 0 makes the folder (the others may see its work folder)
        RunFolder(cfg.out_dir, cfg.name, method.name).check()
    return cfg, parent, method, method_cfg


def launch(
    config: RunConfig | dict | str | Path | None = None,
    *,
    num_processes: int | None = 2,
    accelerate_config: str | Path | None = None,
    console=None,
) -> RunResult:
    """:func:`run` data parallel in ``num_processes`` processes started by ``accelerate launch``.

    The config is checked here first (bad input fails before any process starts), then handed to the processes
    as a YAML file. Selective-pruning statistics and evaluations are split by batch across the processes and
    their sums added, so the result equals a single-process run; trained methods train with DDP, or FSDP /
    DeepSpeed as ``accelerate_config`` (an ``accelerate config`` file; see ``configs/accelerate/``) says. On
    CPUs the processes talk over gloo. Returns the run written by process 0.
    """
    import sys

    import yaml

    cfg, _parent, method, _mc = _validated(config)
    if num_processes is not None and num_processes < 1:
        raise UnlearnError(f"--num-processes must be at least 1, got {num_processes}")
    if accelerate_config is not None:
        _check_accelerate_config(Path(accelerate_config))
    if distributed.launched():
        raise UnlearnError("already inside a multi-process launch: call run(), not launch()")
    name = RunFolder(cfg.out_dir, cfg.name, method.name).free_name()  # fixed here: the processes must agree
    cfg = cfg.model_copy(update={"name": name})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1"]
    if accelerate_config is not None:
        cmd += ["--config_file", str(accelerate_config)]
    else:  # torchrun-style local processes; each joins over gloo on CPUs or NCCL on GPUs (distributed.setup)
        cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"] + (
            ["--multi_gpu"] if (num_processes or 1) > 1 else []
        )
    if num_processes is not None:
        cmd += ["--num_processes", str(num_processes)]
    with tempfile.TemporaryDirectory(prefix="unlearn-launch-") as tmp:
        config_file = Path(tmp) / "config.yaml"
        config_file.write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False), encoding="utf-8")
        cmd += ["-m", "unlearn", "run", "--config", str(config_file)] + ([] if console else ["--quiet"])
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if console is not None and console.is_terminal:
            env["UNLEARN_FORCE_TERMINAL"] = "1"
        code, errors = _run_launcher(cmd, env)
    run_dir = Path(cfg.out_dir) / name
    if errors:  # the processes' own one-line error (each process reports the same one)
        raise UnlearnError(errors[0])
    if code != 0 or not (run_dir / "manifest.json").is_file():
        raise UnlearnError(f"the launched run failed (exit code {code}): its processes' messages are above")
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    return RunResult(run_dir, metrics, manifest, coerce_config(run_dir / "config.yaml"))


def _check_accelerate_config(path: Path) -> None:
    """An accelerate config file that exists, is a YAML mapping, and asks for nothing this machine lacks."""
    import importlib.util

    import yaml

    if not path.is_file():
        raise UnlearnError(f"accelerate config file not found: {path}")
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UnlearnError(f"accelerate config {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(settings, dict):
        raise UnlearnError(f"accelerate config {path} must hold a mapping of settings")
    kind = str(settings.get("distributed_type", "NO")).upper()
    if kind in ("FSDP", "DEEPSPEED") and not torch.cuda.is_available():
        raise UnlearnError(f"accelerate config {path} asks for {kind}, which needs GPUs: use DDP (MULTI_GPU) on CPUs")
    if kind == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise UnlearnError(f"accelerate config {path} asks for DeepSpeed: pip install deepspeed")


def _run_launcher(cmd: list[str], env: dict) -> tuple[int, list[str]]:
    """Run ``accelerate launch``, passing its stderr (process 0's progress) through until a process reports an
    ``error: ...`` line; the launcher's own report of the failed processes that follows is dropped. Returns the
    exit code and the errors reported."""
    import re
    import subprocess
    import sys

    errors: list[str] = []
    pending = b""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # we print the summary
    try:
        for chunk in iter(lambda: proc.stderr.read1(65536), b""):
            if errors:
                continue  # drain: the launcher's traceback of the failed processes
            pending += chunk
            found = re.search(rb"(?:^|\n)error: ([^\n]*)\n", pending)
            if found:
                sys.stderr.buffer.write(pending[: found.start()])
                errors.append(found.group(1).decode("utf-8", "replace"))
            else:  # forward all but a possibly incomplete last line (it could be the start of an error)
                cut = pending.rfind(b"\n") + 1
                sys.stderr.buffer.write(pending[:cut])
                pending = pending[cut:]
            sys.stderr.flush()
        if not errors:
            sys.stderr.buffer.write(pending)
    finally:
        code = proc.wait()
    return code, errors


def _parent_run(cfg: RunConfig) -> tuple[RunConfig, dict | None]:
    """A sequential request (``from_run``): verify the parent run folder against its manifest and point the
    config at its saved model (in the dtype it was saved in, so that the hash chain links). ``(cfg, None)``
    for a request on a model that no run produced."""
    if cfg.from_run is None:
        return cfg, None
    from .report.ledger import parent_record, read_manifest, verify_run

    given = cfg.from_run
    parent_dir = Path(given).expanduser().resolve()
    manifest, raw = read_manifest(parent_dir, "--from run folder")
    saved = manifest["model"]
    model_dir = parent_dir / "model"
    if not saved.get("files") or not saved.get("sha256_after"):  # a saved model's files are verified below
        raise UnlearnError(f"run {given} has no saved model to unlearn further (was it run with --no-save-model?)")
    if "model" in cfg.model_fields_set and Path(cfg.model).expanduser().resolve() != model_dir:
        raise UnlearnError(f"--from {given} unlearns that run's model ({model_dir}): drop --model {cfg.model}")
    problems = verify_run(parent_dir, manifest)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise UnlearnError(f"parent run {given} failed verification: {problems[0]}{more}")
    dtype = saved.get("dtype") or cfg.dtype
    if cfg.dtype not in ("auto", dtype):
        raise UnlearnError(
            f"--from {given}: its model was saved in {dtype} and is unlearnt further as saved: drop --dtype {cfg.dtype}"
        )
    out = Path(cfg.out_dir).expanduser().resolve()
    if out == parent_dir or parent_dir in out.parents:
        raise UnlearnError(f"--out {cfg.out_dir} is inside the parent run folder {given}, which must stay unchanged")
    cfg = cfg.model_copy(update={"from_run": str(parent_dir), "model": str(model_dir), "dtype": dtype})
    return cfg, {"dir": parent_dir, "manifest": manifest, "record": parent_record(parent_dir, manifest, raw)}


def _check_parent_model(parent: dict | None, model_hash: str) -> None:
    """The loaded parent model must be the one its run saved (what the child's ``sha256_before`` links to)."""
    if parent is not None and model_hash != parent["manifest"]["model"]["sha256_after"]:
        raise UnlearnError(
            f"the model loaded from {parent['dir'] / 'model'} does not hash to the sha256_after its manifest records"
        )


def _tokens_sha256(split) -> str:
    return tokens_sha256(split.input_ids)


def _run_file_hashes(folder: RunFolder) -> dict[str, str]:
    from .models.save import file_sha256
    from .report.ledger import RUN_FILES

    return {name: file_sha256(folder.path(name)) for name in RUN_FILES}


def _eval_chunks(which: str, data: DataConfig, tokenizer, cfg: RunConfig):
    """The evaluation split a run with ``cfg`` measured on ``data`` (the first chunks; nothing else tokenised)."""
    if data.format == "qa":
        return _qa_corpus(which, data, tokenizer, cfg.model_copy(update={"stats_tokens": 0, "val_tokens": 0})).eval
    spec = data.eval_spec() or data.spec()
    corpus = build_corpus(
        which, spec, tokenizer, seq_len=cfg.seq_len, eval_tokens=cfg.eval_tokens, stats_tokens=0, seed=cfg.seed
    )
    return corpus.eval


def _earlier_request(link, tokenizer, reporter: Reporter) -> dict:
    """One earlier request: its recorded top-1 numbers and its evaluation chunks, rebuilt from its config.yaml
    (once its own files and its child's record of its manifest check out)."""
    from .report.ledger import MANIFEST, check_run_files, sha256_bytes

    problems = check_run_files(link.run_dir, link.manifest)
    if link.record is not None and link.record.get("manifest_sha256") != sha256_bytes(link.raw):
        problems.append(f"{link.run_dir / MANIFEST}: sha256 does not match the one its child recorded")
    if problems:
        raise UnlearnError(f"failed verification: {problems[0]}")
    past = coerce_config(link.run_dir / "config.yaml")
    try:
        metrics = json.loads((link.run_dir / "metrics.json").read_text(encoding="utf-8"))
        recorded = {w: {k: float(metrics[k][w]["top1"]) for k in ("before", "after")} for w in ("forget", "retain")}
    except (OSError, ValueError, KeyError, TypeError):
        raise UnlearnError(f"{link.run_dir / 'metrics.json'} is missing or has no before/after top1") from None
    data = link.manifest.get("data") or {}
    chunks = {}
    for which, spec in (("forget", past.forget), ("retain", past.retain)):
        _check_data_exists(spec)
        with reporter.stage(f"tokenising {which} data of earlier request {link.name}"):
            chunks[which] = _eval_chunks(which, spec, tokenizer, past)
        expected = (data.get(which) or {}).get("sha256_eval_tokens")
        if expected and expected != _tokens_sha256(chunks[which]):
            raise UnlearnError(f"{which} data {spec.source} changed since that request: its evaluation chunks differ")
    return {"chunks": chunks, "recorded": recorded, "skip_k": past.skip_k}


def _earlier_requests(parent: dict | None, tokenizer, reporter: Reporter) -> list[dict]:
    """The requests behind a sequential run, root first, each ready to be measured; one whose data or files are
    gone carries the reason instead (a warning, not a failure)."""
    if parent is None:
        return []
    from .report.ledger import walk

    out = []
    for link in reversed(walk(parent["dir"])):
        data = (link.manifest or {}).get("data") or {}
        entry = {
            "run": link.name,
            "forget_source": (data.get("forget") or {}).get("source"),
            "retain_source": (data.get("retain") or {}).get("source"),
            "metric": "top1",
        }
        item = {"entry": entry, "chunks": None, "measured": {"forget": {}, "retain": {}}}
        try:
            if link.manifest is None:
                raise UnlearnError(link.error)
            item.update(_earlier_request(link, tokenizer, reporter))
        except (UnlearnError, OSError) as exc:
            entry["error"] = " ".join(str(exc).split())
            reporter.log(f"warning: earlier request {link.name} not measured: {entry['error']}")
        out.append(item)
    return out


def _measure_earlier(items: list[dict], model, when: str, cfg: RunConfig, reporter: Reporter, own=()) -> None:
    """Next-token metrics of ``model`` on every earlier request's evaluation chunks, stored under ``when``.

    Chunks identical to one of this run's own evaluation splits take this run's measurement of the same model
    (``own``: pairs of split and metrics) instead of evaluating them again."""
    for item in items:
        for which, split in (item["chunks"] or {}).items():
            same = [m for s, m in own if item["skip_k"] == cfg.skip_k and _same_split(s, split)]
            if same:
                item["measured"][which][when] = dict(same[0])
                continue
            with reporter.task(f"{item['entry']['run']}: {which}"[-28:], split.n_tokens) as advance:
                item["measured"][which][when] = evaluate_split(
                    model, split, batch_size=cfg.batch_size, skip_k=item["skip_k"], progress=advance
                )


def _same_split(a, b) -> bool:
    return a.input_ids.shape == b.input_ids.shape and bool(
        torch.equal(a.input_ids, b.input_ids) and torch.equal(a.special, b.special)
    )


def _earlier_entries(items: list[dict]) -> list[dict]:
    """``metrics.json["earlier_requests"]``: per request, top-1 as it was recorded (``original``,
    ``after_request``) and as measured now (``before``: the parent model, ``after``: this run's), plus every
    metric measured now."""
    out = []
    for item in items:
        entry = dict(item["entry"])
        if "error" not in entry:
            for which in ("forget", "retain"):
                now = item["measured"][which]
                entry[which] = {
                    "original": item["recorded"][which]["before"],
                    "after_request": item["recorded"][which]["after"],
                    "before": now["before"]["top1"],
                    "after": now["after"]["top1"],
                }
            entry["metrics"] = item["measured"]
        out.append(entry)
    return out


def _check_evals(cfg: RunConfig) -> None:
    """Validate the run's evaluation suites (names, settings, data) before any expensive work."""
    from .eval.suites import get_suite, resolve_parts

    seen = set()
    for spec in cfg.evals:
        suite = get_suite(spec.suite)
        if spec.suite in seen:
            raise UnlearnError(f"suite {spec.suite!r} listed twice in evals: merge its data into one entry")
        seen.add(spec.suite)
        suite.check_data(resolve_parts(suite, spec.data), suite.make_config(spec.settings))


def _run_eval(spec, loaded: LoadedModel, sha: str, cfg: RunConfig, out: Path, reporter: Reporter) -> dict:
    """One suite on the run's model (before or after unlearning); the summary (the file goes under ``out``)."""
    result = evaluate_suite(
        cfg.model,
        spec.suite,
        spec.data,
        settings=spec.settings,
        reference=spec.reference,
        original=cfg.model,
        out=out,
        batch_size=cfg.batch_size,
        dtype=cfg.dtype,
        device=cfg.device,
        console=reporter.console,
        loaded=loaded,
        sha256=sha,
    )
    return result["summary"]


_D = RunConfig()


def evaluate(
    model: str,
    data: list[str | DataConfig],
    *,
    eval_tokens: int = _D.eval_tokens,
    seq_len: int = _D.seq_len,
    batch_size: int = _D.batch_size,
    skip_k: int = _D.skip_k,
    seed: int = _D.seed,
    dtype: str = "auto",
    device: str = "auto",
    console=None,
) -> dict[str, dict]:
    """Next-token metrics of ``model`` on each corpus in ``data`` (the same chunks a run with this seed evaluates)."""
    reporter = Reporter(console)
    specs = [d if isinstance(d, DataConfig) else DataConfig(source=d) for d in data]
    if not specs:
        raise UnlearnError("no data to evaluate: pass at least one --data")
    for d in specs:
        _check_data_exists(d)
    with reporter.stage(f"loading model {model}"):
        loaded = load_model(model, dtype, device, log=reporter.log)
    out = {}
    for d in specs:
        corpus = build_corpus(
            d.source, d.spec(), loaded.tokenizer, seq_len=seq_len, eval_tokens=eval_tokens, stats_tokens=0, seed=seed
        )
        with reporter.task(f"evaluate: {d.source}"[:28], corpus.eval.n_tokens) as advance:
            out[d.source] = evaluate_split(
                loaded.model, corpus.eval, batch_size=batch_size, skip_k=skip_k, progress=advance
            )
    return out


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text.strip("/")).strip("-.")[-80:] or "model"


def _run_folder_of(model: str) -> Path | None:
    """The run folder that holds ``model`` (``runs/NAME/model``), if it is one."""
    p = Path(model)
    return p.parent if p.is_dir() and (p.parent / "manifest.json").is_file() else None


def _original_of(run_dir: Path) -> str | None:
    import json

    try:
        m = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return m.get("spec") if m.get("spec") == "smollm2-135m" else m.get("source") or m.get("spec")


def evaluate_suite(
    model: str,
    suite: str,
    data: list[str],
    *,
    settings: dict | None = None,
    reference: str | None = None,
    original: str | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    batch_size: int = _D.batch_size,
    dtype: str = "auto",
    device: str = "auto",
    console=None,
    loaded: LoadedModel | None = None,
    sha256: str | None = None,
) -> dict:
    """Run an evaluation suite (``tofu``, ``muse``, ``rwku``, ``mcq``, ``lm``, ``mia``) on ``model``.

    ``data`` lists benchmark folders, files or ``PART=PATH`` entries; ``settings`` the suite's settings (see
    ``unlearn suites``). ``reference`` (a model or its saved ``eval/<suite>.json``) serves forget quality,
    PrivLeak and reference attacks; ``original`` (default: the model a run folder started from) serves
    specificity and fluency. Results go to ``OUT/eval/<suite>.json`` (default ``OUT``: the run folder holding
    ``model``, else ``evals/<model>``), and parts computed earlier for the same model, data and settings are
    reused unless ``overwrite``. ``loaded`` evaluates a model already in memory (``sha256``: its weights' hash,
    when known). Returns the results file's content plus ``path``, ``reused`` and ``computed``.
    """
    from .eval.scoring import Scorer, Template
    from .eval.store import ResultStore
    from .eval.suites import ModelHandle, SuiteContext, get_suite, resolve_parts

    reporter = Reporter(console)
    s = get_suite(suite)
    cfg = s.make_config(settings)
    if batch_size < 1:
        raise UnlearnError("batch size must be at least 1")
    files = resolve_parts(s, list(data))
    s.check_data(files, cfg)
    run_dir = _run_folder_of(model) if loaded is None else None
    out_dir = Path(out) if out is not None else run_dir or Path("evals") / _slug(model)
    if out_dir.exists() and not out_dir.is_dir():
        raise UnlearnError(f"output folder {out_dir} is a file: choose another --out")
    if original is None and run_dir is not None and "original" in s.uses:
        original = _original_of(run_dir)

    def load(spec: str) -> LoadedModel:
        with reporter.stage(f"loading model {spec}"):
            return load_model(spec, dtype, device, log=reporter.log)

    ref = ModelHandle(reference, "reference", load, batch_size, reporter.task) if reference else None
    orig = ModelHandle(original, "original", load, batch_size, reporter.task) if original else None
    if loaded is None:
        loaded = load(model)
    start = time.perf_counter()
    scorer = Scorer(loaded.model, loaded.tokenizer, batch_size=batch_size, progress=reporter.task)
    template = Template(loaded.tokenizer, cfg.template)
    sha = sha256 or state_dict_hash(loaded.model)
    store = ResultStore(
        out_dir / "eval" / f"{s.name}.json",
        s.name,
        {"spec": model, "source": loaded.source, "sha256": sha, "dtype": loaded.dtype},
        overwrite=overwrite,
    )
    ctx = SuiteContext(s, cfg, scorer, template, store, files, sha, ref, orig, log=reporter.log)
    summary = s.run(ctx, cfg)
    result = store.finish(
        summary,
        keep=store.reused + ctx.computed,
        extra={
            "settings": cfg.model_dump(),
            "template": template.mode,
            "data": files,
            "reference": reference,
            "original": original,
            "timings_s": {"total": round(time.perf_counter() - start, 3), **scorer.timings()},
        },
    )
    return {**result, "path": str(store.path), "reused": store.reused, "computed": ctx.computed}


def suites() -> dict[str, dict]:
    """Registered evaluation suites: summary, parts (standard file names) and settings."""
    from .eval.suites import SUITES

    return {
        name: {
            "summary": st.summary,
            "parts": st.parts or "any number of files (one part each)",
            "uses": list(st.uses),
            "settings": {
                k: {"default": f.default, "description": f.description} for k, f in st.config_cls.model_fields.items()
            },
        }
        for name, st in sorted(SUITES.items())
    }


def methods() -> dict[str, dict]:
    """Registered methods with their summary and parameter defaults and descriptions."""
    return {
        name: {
            "summary": m.summary,
            "parameters": {
                k: {"default": f.default, "description": f.description} for k, f in m.config_cls.model_fields.items()
            },
        }
        for name, m in sorted(registry.REGISTRY.items())
    }


def _detect_format(source: str) -> str:
    """``qa`` when the first record of a structured file has question and answer fields, else ``text``."""
    from .data.sources import STRUCTURED, iter_records

    if source in BUILTIN or source.startswith("hf:") or Path(source).suffix.lower() not in STRUCTURED:
        return "text"
    first = next(iter_records(source), None)
    return "qa" if first and {"question", "answer"} <= set(first[1]) else "text"


def learn(
    model: str,
    data: str,
    out: str | Path,
    *,
    format: str = "auto",
    epochs: float = 3.0,
    steps: int | None = None,
    lr: float = 5e-5,
    batch_size: int = 8,
    seq_len: int = 256,
    tokens: int = 65536,
    lora: str | None = None,
    seed: int = 0,
    dtype: str = "auto",
    device: str = "auto",
    console=None,
) -> dict:
    """Fine-tune ``model`` on ``data`` (QA records through the chat template with the loss on answers, or running
    text) with the same training loop as the unlearning methods, and save a plain checkpoint to ``out``.

    ``steps`` defaults to ``epochs`` passes over the data (QA rows, or ``tokens`` of text in ``seq_len``
    chunks). ``out`` must not exist; it is written under a temporary name and renamed when complete. Returns
    the record saved as ``out/learn.json`` (settings, data hash, loss per step, timings).
    """
    from .methods.training import TrainConfig, fine_tune

    t0 = time.perf_counter()
    out = Path(out)
    if out.exists():
        raise UnlearnError(f"output folder {out} already exists: choose another --out")
    fmt = _detect_format(data) if format == "auto" else format
    if fmt not in ("text", "qa"):
        raise UnlearnError(f"unknown data format {format!r}: use auto, text or qa")
    spec = DataConfig(source=data, format=fmt)
    _check_data_exists(spec)
    cfg = parse_config(
        {"model": model, "dtype": dtype, "device": device, "seq_len": seq_len, "seed": seed, "batch_size": batch_size}
    )
    try:
        TrainConfig(lr=lr, batch_size=batch_size, lora=lora)
    except Exception as exc:  # noqa: BLE001 - pydantic's message, one line
        raise UnlearnError(f"invalid learn setting: {str(exc).splitlines()[-1].strip()}") from exc
    reporter = Reporter(console)
    with reporter.stage(f"loading model {model}"):
        loaded = load_model(model, dtype, device, log=reporter.log)
    before = state_dict_hash(loaded.model)
    if fmt == "qa":  # every record: a budget no QA file reaches
        corpus = _qa_corpus("data", spec, loaded.tokenizer, cfg.model_copy(update={"stats_tokens": 10**9}))
    else:
        corpus = build_corpus(
            "data", spec.spec(), loaded.tokenizer, seq_len=seq_len, eval_tokens=0, stats_tokens=tokens, seed=seed
        )
    rows = len(corpus.stats.input_ids)
    n_steps = steps or max(1, math.ceil(epochs * rows / batch_size))
    tcfg = TrainConfig(steps=n_steps, lr=lr, batch_size=batch_size, lora=lora)
    result = fine_tune(loaded.model, corpus.stats, tcfg, seed=seed, reporter=reporter)
    record = {
        "model": {"spec": model, "source": loaded.source, "sha256_before": before},
        "data": {"source": data, "format": fmt, "rows": rows, "sha256_tokens": corpus.sha256},
        "settings": {
            **tcfg.model_dump(),
            "epochs": epochs if steps is None else None,
            "seq_len": seq_len,
            "seed": seed,
        },
        "log": result.log,
        "versions": versions(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.incomplete-", dir=out.parent))
    try:
        files = save_checkpoint(result.model, loaded.tokenizer, tmp)
        record["model"].update(sha256_after=state_dict_hash(result.model), files=files)
        record["timings_s"] = {"train": result.extra["train_seconds"], "total": round(time.perf_counter() - t0, 3)}
        (tmp / "learn.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.rename(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise from_os_error(exc, "writing the fine-tuned model") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**record, "path": str(out)}


def ledger(run_dir: str | Path) -> dict:
    """The chain of unlearning requests behind a run folder, root first, with every hash re-verified: see
    :func:`unlearn.report.ledger.ledger`."""
    from .report.ledger import ledger as build

    return build(run_dir)


def report(run_dirs: list[str | Path] | str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Write ``report.html`` (self-contained: figures inline as SVG) and ``report.md`` for one or several run
    folders: into the run folder for one, ``reports/<timestamp>/`` for several, or ``out``. Returns ``{"html":
    path, "md": path}``; see :func:`unlearn.report.html.report`."""
    from .report.html import report as write

    return write(run_dirs, out)


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """``report.html`` and ``report.md`` of one finished run folder, written into that folder."""
    from .report.html import write_report as write

    return write(run_dir)
