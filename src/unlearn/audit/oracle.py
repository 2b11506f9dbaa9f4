"""Relearning against an oracle: the same relearning attack on a *reference* model that never saw the forget data.

Relearning brings back some of what any model can pick up from the relearning data itself; a reference model
(trained without the forget data, e.g. TOFU's retain-only model) shows how much. ``relearn:oracle`` runs the
relearning attack of :mod:`.registered` on the unlearned model and on the reference, scores the forget metric at
a few checkpoints (step 0 and ``oracle_checkpoints`` points along the way), and reports

``oracle_gap`` = mean over the checkpoints of (unlearned − reference) / (original − reference at step 0):

0 = the unlearned model relearns no faster than a model that never learnt the data; 1 = it stays as far above
the reference as the original was. The reference is the ``reference`` setting (``--reference``: a model or a run
folder), else a model that the run's evaluation suites name as their reference; without one the attack is
skipped with a note.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

from ..data.chunking import TokenSplit
from ..errors import UnlearnError
from .base import attack


def relearn_curve(model, split: TokenSplit, *, steps: int, lr: float, batch_size: int, seed: int, reporter,
                  at_steps, evaluate, lora: str | None = None):  # fmt: skip
    """Fine-tune a copy of ``model`` for ``steps`` steps on ``split`` (the audit's relearning: the methods' loop,
    constant learning rate; LoRA adapters with ``lora``, merged at the end) and ``evaluate(model)`` it after each
    of ``at_steps`` (≤ ``steps``). Returns (final model in the input's dtype, per-step log, {step: evaluation}).
    With a constant schedule the model after k steps of a longer run is the model a k-step run ends with."""
    from ..methods.context import Training, TrainingData
    from ..methods.training import TrainConfig, next_token_loss, train

    if len(split.input_ids) == 0:
        raise UnlearnError("no rows to relearn on")
    dtype = next(model.parameters()).dtype
    wanted = sorted({int(s) for s in at_steps if 0 < s < steps})
    every = math.gcd(*wanted, steps) if wanted else 0
    calls, found = [0], {}

    def checkpoint(label, model):
        calls[0] += 1
        step = calls[0] * every
        if step in wanted:
            found[step] = evaluate(copy.deepcopy(model).to(dtype).eval())
        return {}

    ctx = Training(model=copy.deepcopy(model), forget=TrainingData(split), retain=None, seed=seed, reporter=reporter,
                   evaluate=checkpoint)  # fmt: skip

    cfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, eval_every=every, lora=lora)
    result = train(ctx, cfg, next_token_loss)
    tuned = result.model.to(dtype).eval().requires_grad_(False)
    if steps in set(at_steps):
        found[steps] = evaluate(tuned)
    return tuned, result.log, found


def oracle_gap(unlearned: list[float], reference: list[float], original: float) -> float | None:
    """Mean of (unlearned − reference) over the checkpoints, over (original − reference at step 0, the first
    entry); None when the original is no better than the reference (nothing to measure against)."""
    gap = original - reference[0]
    if abs(gap) < 1e-12:
        return None
    return sum(u - r for u, r in zip(unlearned, reference)) / len(unlearned) / gap


def reference_spec(job) -> str | None:
    """The reference model: the ``reference`` setting, else the first model (not a saved ``.json`` result) that
    the audited run's evaluation suites name as their reference. A run folder stands for its saved model."""
    from ..runs.folder import is_run_folder

    spec = job.cfg.reference
    if spec is None and job.setup.run_dir is not None:
        spec = next((e.reference for e in job.setup.run_cfg.evals if e.reference and
                     not e.reference.endswith(".json")), None)  # fmt: skip
    if spec is None:
        return None
    path = Path(spec)
    return str(path / "model") if is_run_folder(path) and (path / "model").is_dir() else spec


def _saved_dtype(spec: str) -> str | None:
    """The dtype a run folder's manifest records for the model ``spec`` (its ``model/``) names, if any."""
    import json

    from ..runs.folder import MANIFEST

    try:
        return json.loads((Path(spec).parent / MANIFEST).read_text(encoding="utf-8"))["model"]["dtype"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _load_reference(job, spec: str):
    """The reference loaded as the run that saved it evaluated it (a run's model), else in the audit's dtype."""
    from ..models.load import check_model_spec, load_model

    check_model_spec(spec, "--reference")
    dtype = _saved_dtype(spec) if Path(spec).name == "model" else None
    with job.reporter.stage(f"loading reference {spec}"):
        ref = load_model(spec, dtype or job.setup.dtype, job.unlearned.device, log=job.reporter.log)
    if len(ref.tokenizer) != len(job.unlearned.tokenizer):
        raise UnlearnError(f"{spec} and {job.setup.model} have different tokenizers: the reference must share it")
    return ref


def _skipped(job, reason: str) -> dict:
    base, metric = job.base, job.metric
    return {
        "attack": "relearn",
        "variant": "oracle",
        "description": f"skipped: {reason}",
        "before": base["original"]["forget"][metric],
        "after_unlearning": base["unlearned"]["forget"][metric],
        "after_attack": None,
        "recovery": None,
        "retain": None,
        "original_attacked": None,
        "details": {"skipped": reason},
        "oracle_gap": None,
    }


@attack(
    "relearn:oracle",
    "the relearning attack on the unlearned model and on a reference that never saw the forget data: the gap",
    default=False,
)
def _oracle_attack(job) -> list[dict]:
    cfg, probes, metric = job.cfg, job.probes, job.metric
    spec = reference_spec(job)
    if spec is None:
        reason = "no reference model (a model that never saw the forget data): pass --reference MODEL"
        job.reporter.warn(f"relearn:oracle {reason}")
        return [_skipped(job, reason)]
    p = probes["forget"]
    if len(p.train.input_ids) == 0:
        raise UnlearnError(f"relearning needs forget data outside the evaluation rows, and {p.data.source} has "
                           "none left: lower --eval-tokens")  # fmt: skip
    ref = _load_reference(job, spec)
    n = cfg.oracle_checkpoints
    at = sorted({max(1, round(cfg.relearn_steps * i / n)) for i in range(1, n + 1)})
    curves, finals = {}, {}
    for name, model in (("unlearned", job.unlearned.model), ("reference", ref.model)):

        def evaluate(m, name=name):
            return {w: job.score(m, probes[w].plain, f"oracle {name}: {w}") for w in ("forget", "retain")}

        start = job.base["unlearned"] if name == "unlearned" else evaluate(model)
        tuned, log, found = relearn_curve(model, p.train, steps=cfg.relearn_steps, lr=cfg.relearn_lr,
                                          batch_size=cfg.relearn_batch_size, seed=job.setup.seed,
                                          reporter=job.reporter, at_steps=at, evaluate=evaluate)  # fmt: skip
        del tuned
        curves[name] = [{"step": 0, **start}] + [{"step": s, **found[s]} for s in at]
        finals[name] = log
    del ref
    steps = [c["step"] for c in curves["unlearned"]]
    series = {k: [c["forget"][metric] for c in v] for k, v in curves.items()}
    gap = oracle_gap(series["unlearned"], series["reference"], job.base["original"]["forget"][metric])
    last = curves["unlearned"][-1]
    entry = job.entry(
        "relearn",
        "oracle",
        last["forget"],
        retain=last["retain"],
        description=f"{cfg.relearn_steps} steps at lr {cfg.relearn_lr:g} on {p.train.n_tokens} tokens of "
        f"held-out forget data, also on the reference {spec}: oracle gap " + ("n/a" if gap is None else f"{gap:.2f}"),
        reference=spec,
        oracle_gap=gap,
        steps=steps,
        forget=series,
        forget_loss={k: [round(c["forget"]["loss"], 4) for c in v] for k, v in curves.items()},
        retain_metric={k: [c["retain"][metric] for c in v] for k, v in curves.items()},
        loss={k: [round(r["loss"], 4) for r in v] for k, v in finals.items()},
    )
    return [{**entry, "oracle_gap": gap}]  # also at the top: the attack's headline number
