"""The Python API. Every CLI command is one call here: :func:`run`, :func:`evaluate`, :func:`methods`."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .config import DataConfig, RunConfig, load_config_file, parse_config
from .data.chunking import Corpus, build_corpus
from .data.sources import BUILTIN, DataSpec, iter_documents
from .errors import UnlearnError
from .eval.metrics import evaluate_split, relative_drop
from .methods import get_method, registry
from .models.adapters import adapter_for
from .models.hooks import Ablation, ablated, collect_statistics
from .models.load import LoadedModel, load_model, state_dict_hash
from .models.save import check_foldable, fold, save_checkpoint
from .progress import Reporter
from .report.rundir import RunFolder

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

    def evaluate(self, ablation: Ablation | None = None, label: str = "", split: str = "eval") -> dict:
        """Metrics on both corpora's ``split`` (held-out ``eval`` or ``val``idation chunks), with relative drops
        against the unpruned model once its baseline exists."""
        start = time.perf_counter()
        out = {}
        with ablated(self.model, self.adapter, ablation or Ablation()):
            for which in ("forget", "retain"):
                chunks = getattr(self.corpus(which), split)
                with self.reporter.task(f"{label or split}: {which}", chunks.n_tokens) as advance:
                    out[which] = evaluate_split(
                        self.model,
                        chunks,
                        batch_size=self.config.batch_size,
                        skip_k=self.config.skip_k,
                        progress=advance,
                    )
        base = self.baseline if split == "eval" else self.baseline_val
        if base:
            for which in ("forget", "retain"):
                out[f"{which}_drop"] = {
                    k: relative_drop(base[which][k], out[which][k])
                    for k in out[which]
                    if k not in ("loss", "perplexity", "n_tokens")
                }
        self.timings["evaluation"] += time.perf_counter() - start
        return out

    @property
    def budgeted(self) -> bool:
        stop = self.config.stop
        return stop.max_retain_drop is not None or stop.forget_target_drop is not None

    def check_budget(self, ablation: Ablation) -> tuple[str | None, dict | None]:
        """Measure the budget on the validation chunks: (a reason to stop or None, the validation metrics).

        The reason starts with "budget" when the retain budget is exceeded (the step must be undone) and with
        "target" when the forget target is reached (the step is kept).
        """
        if not self.budgeted:
            return None, None
        if not self.baseline_val:
            self.baseline_val = self.evaluate(label="validation before", split="val")
        metrics = self.evaluate(ablation, label="validation", split="val")
        stop = self.config.stop
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


def coerce_config(config: RunConfig | dict | str | Path | None) -> RunConfig:
    if config is None:
        return RunConfig()
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, (str, Path)):
        return parse_config(load_config_file(config))
    return parse_config(dict(config))


def _check_data_exists(spec: DataSpec) -> None:
    """Fail fast (before loading a model) on a missing local file, folder or glob."""
    if spec.source in BUILTIN or spec.source.startswith("hf:"):
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
    }


def _corpora(loaded: LoadedModel, cfg: RunConfig, reporter: Reporter) -> tuple[Corpus, Corpus]:
    out = []
    for which, data in (("forget", cfg.forget), ("retain", cfg.retain)):
        with reporter.stage(f"tokenising {which} corpus {data.source}"):
            out.append(
                build_corpus(
                    which,
                    data.spec(),
                    loaded.tokenizer,
                    seq_len=cfg.seq_len,
                    eval_tokens=cfg.eval_tokens,
                    stats_tokens=cfg.stats_tokens,
                    seed=cfg.seed,
                    val_tokens=cfg.val_tokens,
                )
            )
    return out[0], out[1]


def run(config: RunConfig | dict | str | Path | None = None, *, console=None) -> RunResult:
    """Unlearn the forget corpus from a model with the configured method; write and return the run.

    ``config`` is a :class:`RunConfig`, a dict of its fields, or the path of a YAML file. ``console`` (a
    ``rich.console.Console``) turns on progress bars. Raises :class:`UnlearnError` for bad input; nothing is
    left in ``out_dir`` unless the run completes.
    """
    t0 = time.perf_counter()
    cfg = coerce_config(config)
    reporter = Reporter(console)
    method = get_method(cfg.method)
    method_cfg = method.make_config(cfg.method_config)
    cfg = cfg.model_copy(update={"method": method.name, "method_config": method_cfg.model_dump()})
    for data in (cfg.forget, cfg.retain):
        _check_data_exists(data.spec())
    folder = RunFolder(cfg.out_dir, cfg.name, method.name)
    folder.check()
    torch.manual_seed(cfg.seed)

    timings = {}
    start = time.perf_counter()
    with reporter.stage(f"loading model {cfg.model}"):
        loaded = load_model(cfg.model, cfg.dtype, cfg.device, log=reporter.log)
    adapter = adapter_for(loaded.model)
    if getattr(method_cfg, "ablation", None) == "mean":
        check_foldable(loaded.model, adapter, [k for k in ("ff", "attn") if method_cfg.fraction(k) > 0])
    timings["load_model"] = time.perf_counter() - start
    model_hash = state_dict_hash(loaded.model)

    start = time.perf_counter()
    forget, retain = _corpora(loaded, cfg, reporter)
    timings["data"] = time.perf_counter() - start

    ctx = MethodContext(loaded, adapter, forget, retain, cfg, reporter)
    start = time.perf_counter()
    ctx.baseline = ctx.evaluate(label="before")
    timings["baseline_evaluation"] = time.perf_counter() - start

    start = time.perf_counter()
    result = method.run(ctx, method_cfg)
    timings["method"] = time.perf_counter() - start
    after = result.final if result.final is not None else ctx.evaluate(result.ablation, label="after")

    with folder:
        start = time.perf_counter()
        files = {}
        out_hash = None
        if cfg.save_model:
            model = fold(loaded.model, adapter, result.ablation) if result.ablation else loaded.model
            files = save_checkpoint(model, loaded.tokenizer, folder.path("model"))
            out_hash = state_dict_hash(model)
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
        manifest = {
            "unlearn_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seed": cfg.seed,
            "method": method.name,
            "model": {
                "spec": cfg.model,
                "source": loaded.source,
                "dtype": loaded.dtype,
                "device": loaded.device,
                "family": adapter.family,
                "sha256_before": model_hash,
                "sha256_after": out_hash,
                "files": files,
            },
            "data": {
                c.name: {
                    "source": c.spec.describe(),
                    "sha256_tokens": c.sha256,
                    "segments": c.n_segments,
                    "eval_tokens": c.eval.n_tokens,
                    "stats_tokens": c.stats.n_tokens,
                    "val_tokens": c.val.n_tokens if c.val is not None else 0,
                }
                for c in (forget, retain)
            },
            "pruned_neurons_per_layer": ablation.counts(adapter.n_layers(loaded.model)),
            "pruned_total": {k: ablation.total(k) for k in ("ff", "attn")},
            "stop_reason": result.stop_reason,
            "versions": versions(),
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
        }
        folder.write_yaml("config.yaml", cfg.model_dump())
        folder.write_json("metrics.json", metrics)
        folder.write_json("pruned_neurons.json", ablation.indices())
        folder.write_json("manifest.json", manifest)
    return RunResult(folder.final, metrics, manifest, cfg)


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
        _check_data_exists(d.spec())
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
