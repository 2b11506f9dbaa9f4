"""The method contract: what a registered method sees (the model, both corpora, callbacks for statistics,
evaluation and stopping) and the relative drops it reports."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ..config import RunConfig
from ..data.chunking import Corpus
from ..errors import UnlearnError
from ..eval.metrics import evaluate_split, relative_drop
from ..models.hooks import Ablation, ablated, collect_statistics
from ..models.load import LoadedModel
from ..progress import Reporter
from ..runs.folder import RunFolder
from ..pipeline.corpora import corpus_for


@dataclass
class TrainingData:
    """A corpus as training sees it: its training chunks (a token split, or a method's own rows)."""

    stats: object
    name: str = ""


@dataclass
class Training:
    """What :func:`~unlearn.methods.training.train` reads: the model, the training chunks of both corpora
    (``forget.stats``, ``retain.stats``; no retain corpus for plain fine-tuning), the seed, and the run's hooks
    for evaluation, budgets and checkpoints (absent where there is no run: ``unlearn learn``, the audit's
    relearning). :meth:`MethodContext.training` builds one from a method's context."""

    model: object
    forget: Corpus | TrainingData
    retain: Corpus | TrainingData | None
    seed: int
    reporter: Reporter
    evaluate: Callable | None = None  # evaluate(label=..., model=...) -> metrics, every eval_every steps
    budgeted: bool = False  # whether check_budget is called (every eval_every or 5 steps)
    check_budget: Callable | None = None
    save_checkpoint: Callable | None = None  # save_checkpoint(state) every checkpoint_every steps
    checkpoint_every: int = 0
    resumed: dict | None = None  # the state saved by an interrupted run


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

    def training(self, **overrides) -> Training:
        """This context as :func:`~unlearn.methods.training.train` reads it, with some of it replaced (e.g. a copy
        of the model, another forget split, no checkpoints)."""
        view = Training(
            model=self.model,
            forget=self.forget,
            retain=self.retain,
            seed=self.config.seed,
            reporter=self.reporter,
            evaluate=self.evaluate,
            budgeted=self.budgeted,
            check_budget=self.check_budget,
            save_checkpoint=self.save_checkpoint,
            checkpoint_every=self.config.checkpoint_every,
            resumed=self.resumed,
        )
        return dataclasses.replace(view, **overrides)

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
            return corpus_for(which, data, self.loaded.tokenizer, cfg, stats_at_most=True).stats

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
                out[f"{which}_drop"] = drops(base[which], out[which])
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
            from ..eval.suites.lm import specificity_kl

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


def drops(before: dict, after: dict) -> dict:
    """Relative drop of every accuracy metric (not of loss or perplexity)."""
    return {k: relative_drop(before[k], after[k]) for k in after if k not in ("loss", "perplexity", "n_tokens")}
