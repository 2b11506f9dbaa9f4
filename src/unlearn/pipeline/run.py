"""One unlearning run in labelled phases: validate, load, corpora, baseline, earlier requests, suites before,
the method, evaluation after, save, report."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
import torch
from .. import distributed
from ..version import __version__
from ..config import RunConfig
from ..errors import DiskFull, UnlearnError, from_os_error
from ..models.adapters import adapter_for
from ..models.hooks import Ablation
from ..models.inspect import promoted_tokens
from ..eval.trace import concept_vectors, trace_remaining
from ..models.load import LoadedModel, check_seq_len, load_model, state_dict_hash
from ..models.save import check_foldable, check_space, fold, model_bytes, save_checkpoint
from ..progress import Reporter
from ..runs.folder import MANIFEST, RunFolder, find_interrupted, is_run_folder
from ..methods.context import MethodContext, drops
from ..pipeline.corpora import data_record, run_corpora
from ..pipeline.evaluate import evaluate_suite
from ..pipeline.sequential import earlier_entries, earlier_requests, measure_earlier
from ..pipeline.validate import check_parent_model, validated_config
from ..runs.manifest import run_file_hashes, versions
from ..runs.signing import load_private_key, sign as sign_folder


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


def announce_long_run(ctx: MethodContext, method_cfg, baseline_seconds: float) -> None:
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


def run(
    config: RunConfig | dict | str | Path | None = None,
    *,
    console=None,
    resume: str | Path | None = None,
    sign: str | Path | None = None,
    verify: bool = True,
) -> RunResult:
    """Unlearn the forget corpus from a model with the configured method; write and return the run.

    ``config`` is a :class:`RunConfig`, a dict of its fields, or the path of a YAML file. ``console`` (a
    ``rich.console.Console``) turns on progress bars. Raises :class:`UnlearnError` for bad input, and then
    leaves nothing in ``out_dir``. The run is built in ``out_dir/.NAME.incomplete`` and renamed to
    ``out_dir/NAME`` when complete; an interrupted run (Ctrl-C, a crash, ``kill -9``) leaves that work folder
    with the method's last checkpoint, and ``resume="out_dir/NAME"`` (with no ``config``) continues it: the
    result equals an uninterrupted run's. ``sign``: an Ed25519 private key file (``unlearn keygen``); the
    finished folder, report included, is signed with it (``signature.json``). ``verify=False`` builds on a
    ``from_run`` parent whose files no longer match its manifest (the new manifest's ``parent`` says so).
    """
    t0 = time.perf_counter()
    work = None
    if resume is not None:
        if config is not None:
            raise UnlearnError("--resume continues a run with its own saved config: give no other settings")
        work = find_interrupted(resume)
        config = work / "config.yaml"
    cfg, parent, method, method_cfg = validated_config(config, resuming=work is not None, verify=verify)
    key = load_private_key(sign) if sign is not None else None  # a bad key fails before any work
    reporter = Reporter(console)
    folder = RunFolder(cfg.out_dir, cfg.name, method.name)
    main = distributed.is_main()  # only process 0 writes the run folder
    if work is not None:
        folder.resume(work)
    elif main:
        folder.start(cfg.model_dump())
    fresh = main and work is None  # a failed fresh run leaves nothing; a resumed one keeps its work folder
    try:
        if cfg.control is not None and main:
            _control(cfg, folder.name, console)
        result = _run(cfg, parent, method, method_cfg, folder, reporter, t0)
    except KeyboardInterrupt:
        if main and folder.tmp is not None:
            reporter.warn(f"interrupted: continue with `{folder.resume_hint}`")
        raise
    except OSError as exc:  # e.g. the disk is full: nothing half-written stays
        if fresh:
            folder.discard()
        error = from_os_error(exc, "writing the run folder")
        raise type(error)(f"{error}{_fate(folder, main, fresh)}") from exc
    except DiskFull as exc:
        if fresh:
            folder.discard()
        raise DiskFull(f"{exc}{_fate(folder, main, fresh)}") from exc
    except Exception:
        if fresh:
            folder.discard()
        raise
    if key is not None and result.run_dir is not None:
        sign_folder(result.run_dir, key)
    return result


def _control(cfg: RunConfig, name: str, console) -> None:
    """Selective pruning's random control (``control: random``): the same run with the neurons chosen at random,
    into the sibling folder ``NAME-control-random`` (kept if already complete); the run's report draws it."""
    target = Path(cfg.out_dir) / f"{name}-control-{cfg.control}"
    if not is_run_folder(target):
        method_config = {**cfg.method_config, "importance": cfg.control}
        values = cfg.model_dump() | {"name": target.name, "control": None, "report": False}
        run({**values, "method_config": method_config}, console=console)


def _fate(folder: RunFolder, main: bool, fresh: bool) -> str:
    """What became of the work folder after a failed write: said, so that no one looks for it in vain."""
    if not main or folder.tmp is None:
        return ""
    if fresh:
        return f" (the unfinished run folder {folder.tmp} was removed: run again)"
    return f" (the work folder {folder.tmp} is kept: continue with `{folder.resume_hint}`)"


@dataclass
class _State:
    """What the phases of one run hand each other."""

    cfg: RunConfig
    parent: dict | None
    method: object
    method_cfg: object
    folder: RunFolder
    reporter: Reporter
    t0: float
    main: bool = True
    timings: dict = field(default_factory=dict)
    loaded: LoadedModel | None = None
    adapter: object = None
    model_hash: str = ""
    corpora: tuple = ()
    ctx: MethodContext | None = None
    earlier: list = field(default_factory=list)
    suites: dict = field(default_factory=lambda: {"before": {}, "after": {}})
    result: object = None
    after: dict = field(default_factory=dict)
    model: object = None
    out_hash: str | None = None
    promotes: dict = field(default_factory=dict)  # the tokens each pruned feed-forward neuron promotes
    concepts: object = None  # the parametric trace's concept vectors, copied from the model before the method
    trace: dict | None = None

    @contextlib.contextmanager
    def timed(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start


def _run(cfg, parent, method, method_cfg, folder: RunFolder, reporter: Reporter, t0: float) -> RunResult:
    """The run's phases, in order; each reads and fills the shared state."""
    device = distributed.setup(cfg.device)  # under accelerate launch: join the process group
    state = _State(cfg, parent, method, method_cfg, folder, reporter, t0, main=distributed.is_main())
    torch.manual_seed(cfg.seed)
    _prepare(state, device)  # model, corpora, the method's context
    with tempfile.TemporaryDirectory(prefix="unlearn-eval-") as scratch:  # suite results, moved into the run folder
        _before(state, Path(scratch))  # baseline, earlier requests and suites on the model as it was
        _unlearn(state)  # the method
        _after(state, Path(scratch))  # the same measurements on the unlearned model
        metrics, manifest = _save(state, Path(scratch))  # model, metrics, manifest: the run folder
    if not state.main:
        return RunResult(None, metrics, manifest, state.cfg)
    if cfg.report:  # derived from the files above: a failure leaves a complete run, rebuilt by `unlearn report`
        try:
            write_report(folder.final)
        except Exception as exc:  # noqa: BLE001
            reporter.warn(f"warning: report not written ({exc}); rebuild it with `unlearn report {folder.final}`")
    return RunResult(folder.final, metrics, manifest, state.cfg)


def _prepare(state: _State, device) -> None:
    """Load the model (resolving ``batch_size: auto``), hash it, tokenise the corpora, build the method's context."""
    cfg, reporter, folder = state.cfg, state.reporter, state.folder
    with state.timed("load_model"):
        with reporter.stage(f"loading model {cfg.model}"):
            loaded = load_model(cfg.model, cfg.dtype, device, log=reporter.log, device_map=cfg.device_map)
        adapter = adapter_for(loaded.model)
        if cfg.batch_size == "auto":  # resolved once, and kept in the work folder's config for --resume
            from ..models.memory import auto_batch_size

            cfg = cfg.model_copy(update={"batch_size": auto_batch_size(loaded.model, cfg.seq_len, mode="forward")})
            reporter.log(f"batch size auto: {cfg.batch_size} chunks of {cfg.seq_len} tokens")
            if state.main and folder.tmp is not None:
                folder.write_config(cfg.model_dump())
        method_cfg = state.method_cfg
        if getattr(method_cfg, "ablation", None) == "mean":
            check_foldable(loaded.model, adapter, [k for k in adapter.kinds() if method_cfg.fraction(k) > 0])
    check_seq_len(loaded, cfg.seq_len)
    if cfg.save_model and state.main:  # the disk must hold the unlearned model: known now, not after the work
        check_space(folder.tmp or Path(cfg.out_dir), model_bytes(loaded.model), f"the unlearned model in {cfg.out_dir}")
    model_hash = state_dict_hash(loaded.model)
    check_parent_model(state.parent, model_hash)
    with state.timed("data"):
        forget, retain, utility = run_corpora(loaded, cfg, reporter)
    ctx = MethodContext(loaded, adapter, forget, retain, cfg, reporter, folder=folder if state.main else None)
    ctx.utility = utility
    ctx.resumed = folder.load_checkpoint()
    if ctx.resumed is not None and ctx.resumed.get("model_sha256") != model_hash:
        raise UnlearnError(f"the model {cfg.model} changed since the interrupted run started: it cannot be resumed")
    ctx.model_sha256 = model_hash
    if cfg.stop.max_retain_kl is not None:  # the KL budget compares against the model as it was
        import copy

        ctx.original = copy.deepcopy(loaded.model).eval().requires_grad_(False)
    state.cfg, state.loaded, state.adapter, state.model_hash = cfg, loaded, adapter, model_hash
    state.corpora, state.ctx = (forget, retain, utility), ctx


def _before(state: _State, scratch: Path) -> None:
    """The original model's metrics, earlier requests and suites, before the method changes anything."""
    ctx, cfg, (forget, retain, utility) = state.ctx, state.cfg, state.corpora
    with state.timed("baseline_evaluation"):
        ctx.baseline = ctx.evaluate(label="before")
        if utility is not None:
            ctx.baseline["utility"] = ctx.evaluate_utility(label="before")
    announce_long_run(ctx, state.method_cfg, state.timings["baseline_evaluation"])
    if state.main:  # read before the method changes any weight (a trained method trains the loaded model in place)
        with state.timed("parametric_trace"):
            state.concepts = concept_vectors(state.loaded.model, state.adapter, forget.stats, retain.stats)
    with state.timed("earlier_requests"):  # earlier requests on the parent model
        state.earlier = earlier_requests(state.parent, state.loaded.tokenizer, state.reporter)
        measure_earlier(
            state.earlier,
            state.loaded.model,
            "before",
            cfg,
            state.reporter,
            [(forget.eval, ctx.baseline["forget"]), (retain.eval, ctx.baseline["retain"])],
        )
    with state.timed("suites_before"):
        for spec in cfg.evals:
            state.suites["before"][spec.suite] = _run_eval(
                spec, state.loaded, state.model_hash, cfg, scratch / "before", state.reporter
            )


def _unlearn(state: _State) -> None:
    """Run the method; a trained method's model replaces the working copy."""
    with state.timed("method"):
        result = state.method.run(state.ctx, state.method_cfg)
    loaded = state.loaded
    if result.model is not None:
        loaded.model = result.model
        loaded.dtype = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[
            next(result.model.parameters()).dtype
        ]
    if result.ablation is not None and state.main:  # read before the pruned columns are folded away
        ff = result.ablation.indices().get("ff") or {}
        if ff:
            promotes = promoted_tokens(loaded.model, state.adapter, loaded.tokenizer, ff)
            state.promotes = {"promotes": {"ff": promotes}}
    state.result = result


def _after(state: _State, scratch: Path) -> None:
    """The unlearned model as it is saved (hooks folded into the weights), measured as the original was."""
    ctx, cfg, result, loaded = state.ctx, state.cfg, state.result, state.loaded
    forget, retain, utility = state.corpora
    after = result.final if result.final is not None else ctx.evaluate(result.ablation, label="after")
    # folding changes the working copy in place
    model = fold(loaded.model, state.adapter, result.ablation) if result.ablation else loaded.model
    if utility is not None:  # general text no step used: on the model as it is saved
        after = {**after, "utility": ctx.evaluate_utility(model=model, label="after")}
        after["utility_drop"] = drops(ctx.baseline["utility"], after["utility"])
    state.out_hash = state_dict_hash(model) if cfg.save_model or cfg.evals else None  # once: suites and manifest
    with state.timed("earlier_requests"):
        measure_earlier(
            state.earlier,
            model,
            "after",
            cfg,
            state.reporter,
            [(forget.eval, after["forget"]), (retain.eval, after["retain"])],
        )
    with state.timed("suites_after"):
        unlearned = LoadedModel(model, loaded.tokenizer, loaded.spec, loaded.source, loaded.dtype, loaded.device)
        for spec in cfg.evals:
            state.suites["after"][spec.suite] = _run_eval(
                spec, unlearned, state.out_hash, cfg, scratch / "after", state.reporter
            )
    if state.concepts is not None:  # what is left of the concept vectors in the model as it is saved
        with state.timed("parametric_trace"):
            state.trace = trace_remaining(model, state.adapter, state.concepts, loaded.tokenizer)
    state.after, state.model = after, model


def _save(state: _State, scratch: Path) -> tuple[dict, dict]:
    """Write the run folder (process 0): model, suite results, config, metrics, pruned neurons, then the
    manifest with every file's hash; it becomes ``out_dir/NAME`` only when all of it is written."""
    cfg, folder, main = state.cfg, state.folder, state.main
    with folder if main else contextlib.nullcontext():
        with state.timed("save"):
            files = {}
            if cfg.save_model and main:
                files = save_checkpoint(state.model, state.loaded.tokenizer, folder.path("model"))
            if cfg.evals and main:
                shutil.copytree(scratch / "after" / "eval", folder.path("eval"))
                shutil.copytree(scratch / "before" / "eval", folder.path("eval", "before"))
        state.timings.update({k: round(v, 3) for k, v in state.ctx.timings.items()})
        state.timings["total"] = time.perf_counter() - state.t0
        ablation = state.result.ablation or Ablation()
        metrics = _metrics(state)
        manifest = _manifest(state, ablation, files)
        if main:
            folder.write_config(cfg.model_dump())
            folder.write_json("metrics.json", metrics)
            folder.write_json("pruned_neurons.json", {**ablation.indices(), **state.promotes})
            manifest["files"] = run_file_hashes(folder)  # manifest.json itself is written last
            folder.write_json(MANIFEST, manifest)
    return metrics, manifest


def _metrics(state: _State) -> dict:
    result = state.result
    metrics = {
        "before": state.ctx.baseline,
        "validation_before": state.ctx.baseline_val or None,
        "steps": result.steps,
        "after": state.after,
        "stop_reason": result.stop_reason,
    }
    if result.log:
        metrics["train_log"] = result.log
    if state.cfg.evals:
        metrics["suites"] = state.suites
    if state.parent is not None:
        metrics["earlier_requests"] = earlier_entries(state.earlier)
    if state.trace is not None:
        metrics["parametric_trace"] = state.trace
    if state.cfg.control is not None:  # the sibling folder of the random control
        metrics["control"] = {state.cfg.control: f"{state.folder.name}-control-{state.cfg.control}"}
    return metrics


def _manifest(state: _State, ablation: Ablation, files: dict) -> dict:
    cfg, loaded, result = state.cfg, state.loaded, state.result
    return {
        "unlearn_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": cfg.seed,
        "method": state.method.name,
        "parent": state.parent["record"] if state.parent is not None else None,
        "model": {
            "spec": cfg.model,
            "source": loaded.source,
            "dtype": loaded.dtype,
            "device": loaded.device,
            "family": state.adapter.family,
            "sha256_before": state.model_hash,
            "sha256_after": state.out_hash if cfg.save_model else None,
            "files": files,
        },
        "data": {c.name: data_record(cfg, c) for c in state.corpora if c is not None},
        "pruned_neurons_per_layer": ablation.counts(state.adapter.n_layers(loaded.model)),
        "pruned_total": {k: ablation.total(k) for k in dict.fromkeys(("ff", "attn", *state.adapter.kinds()))},
        "stop_reason": result.stop_reason,
        "method_facts": result.extra,
        "processes": distributed.world_size(),
        "versions": versions(),
        "timings_s": {k: round(v, 3) for k, v in state.timings.items()},
    }


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


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """``report.html`` and ``report.md`` of one finished run folder, written into that folder."""
    from ..report.html import write_report as write

    return write(run_dir)
