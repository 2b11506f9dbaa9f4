"""Evaluation of any model: next-token metrics on a corpus, or a named suite with its cached results."""

from __future__ import annotations

import time
from pathlib import Path
from ..config import DataConfig, RunConfig
from ..data.chunking import build_corpus
from ..errors import UnlearnError
from ..eval.metrics import evaluate_split
from ..models.load import LoadedModel, check_model_spec, check_seq_len, load_model, state_dict_hash
from ..progress import Reporter
from ..runs.folder import MANIFEST, is_run_folder
from ..pipeline.corpora import check_data_exists


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
        check_data_exists(d)
    with reporter.stage(f"loading model {model}"):
        loaded = load_model(model, dtype, device, log=reporter.log)
    check_seq_len(loaded, seq_len)
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


def slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text.strip("/")).strip("-.")[-80:] or "model"


def _run_folder_of(model: str) -> Path | None:
    """The run folder that holds ``model`` (``runs/NAME/model``) or is ``model`` itself, if it is one."""
    p = Path(model)
    if p.is_dir() and is_run_folder(p):
        return p
    return p.parent if p.is_dir() and is_run_folder(p.parent) else None


def _original_of(run_dir: Path) -> str | None:
    import json

    try:
        m = json.loads((run_dir / MANIFEST).read_text(encoding="utf-8"))["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return m.get("spec") if m.get("spec") == "smollm2-135m" else m.get("source") or m.get("spec")


def _check_models(reference: str | None, original: str | None) -> None:
    """The reference and original models exist (or look like hub ids): named now, not after the evaluation that
    needs them (a saved ``eval/<suite>.json`` is checked when it is read, also before any evaluation)."""
    for spec, flag in ((reference, "--reference"), (original, "--original")):
        if spec and not spec.endswith(".json"):
            check_model_spec(spec, flag)


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
    from ..eval.scoring import Scorer, Template
    from ..eval.store import ResultStore
    from ..eval.suites import ModelHandle, SuiteContext, resolve_parts
    from ..eval.suites.base import suite_and_settings

    reporter = Reporter(console)
    s, settings = suite_and_settings(suite, settings)
    cfg = s.make_config(settings)
    if batch_size < 1:
        raise UnlearnError("batch size must be at least 1")
    files = resolve_parts(s, list(data))
    s.check_data(files, cfg)
    run_dir = _run_folder_of(model) if loaded is None else None
    out_dir = Path(out) if out is not None else run_dir or Path("evals") / slug(model)
    if out_dir.exists() and not out_dir.is_dir():
        raise UnlearnError(f"output folder {out_dir} is a file: choose another --out")
    if original is None and run_dir is not None and "original" in s.uses:
        original = _original_of(run_dir)
    _check_models(reference, original)

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
