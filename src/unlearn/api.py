"""The Python API. Every CLI command is one call here: :func:`run`, :func:`evaluate`, :func:`audit`, ...

This module is the public facade: the work happens in :mod:`unlearn.pipeline` (runs, launches, evaluation,
fine-tuning), :mod:`unlearn.audit` and :mod:`unlearn.report`."""

from __future__ import annotations

from pathlib import Path

from .audit.runner import audit
from .methods import registry
from .pipeline.evaluate import evaluate, evaluate_suite
from .pipeline.launch import launch
from .pipeline.learn import learn
from .pipeline.run import RunResult, run, write_report
from .pipeline.sweep import parse_grid, sweep
from .pipeline.validate import coerce_config

__all__ = [
    "RunResult",
    "audit",
    "coerce_config",
    "evaluate",
    "evaluate_suite",
    "keygen",
    "launch",
    "learn",
    "ledger",
    "load_guarded",
    "load_model",
    "methods",
    "parse_grid",
    "report",
    "run",
    "sign",
    "suites",
    "sweep",
    "write_report",
]


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


def load_model(model: str | Path, *, dtype: str = "auto", device: str = "auto", log=None):
    """Load a model as ``unlearn`` evaluates it: ``(model, tokenizer)``. ``model`` is anything ``--model`` takes, a
    run folder included (its saved ``model/``). A checkpoint that carries an inference-time component (the feature
    clamp of an ``sae-clamp`` run, ``clamp.json``; the policy of a ``guard`` run, ``policy.json``) gets it attached
    again, and ``log(message)`` (default: a line on stderr) says so; a plain
    ``AutoModelForCausalLM.from_pretrained`` of the same folder loads the weights without it."""
    import sys

    from .models.load import load_model as load

    loaded = load(str(model), dtype, device, log=log or (lambda message: print(message, file=sys.stderr)))
    return loaded.model, loaded.tokenizer


def load_guarded(run_dir: str | Path, *, dtype: str = "auto", device: str = "auto", log=None):
    """A ``guard``, ``icul`` or ``alu`` run's model with its generation policy attached, and its tokenizer:
    ``(model, tokenizer)``. The same as :func:`load_model` (which attaches the policy of any folder holding
    ``policy.json``), but it fails when there is no policy to attach. ``model.generate`` then generates under the
    policy; plain forward passes see what the policy does to next-token logits (see each method's docs)."""
    from .errors import UnlearnError
    from .models import components
    from .models.policies import POLICY_FILE

    model, tokenizer = load_model(run_dir, dtype=dtype, device=device, log=log)
    if not any(c.file == POLICY_FILE for c in components.attached(model)):
        raise UnlearnError(
            f"no generation policy in {run_dir}: its model folder has no {POLICY_FILE} "
            "(a guard, icul or alu run has one)"
        )
    return model, tokenizer


def ledger(run_dir: str | Path, pubkey: str | Path | None = None) -> dict:
    """The chain of unlearning requests behind a run folder, root first, with every hash re-verified, and with
    ``pubkey`` (an Ed25519 public key file) every signature: see :func:`unlearn.runs.ledger.ledger`."""
    from .runs.ledger import ledger as build

    return build(run_dir, pubkey)


def keygen(path: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair for signing run folders: ``path`` (private) and ``path.pub`` (public)."""
    from .runs.signing import keygen as make

    return make(path)


def sign(run_dir: str | Path, key: str | Path, *, verify: bool = True) -> dict:
    """Sign every file of the finished run folder ``run_dir`` with the Ed25519 private key file ``key``: writes
    ``run_dir/signature.json`` and returns its record (plus ``path``). With ``verify`` the folder's files must
    first hash as its manifest records (:class:`UnlearnError` naming the first that does not)."""
    from .runs.folder import SIGNATURE
    from .runs.ledger import read_manifest, require_intact
    from .runs.signing import load_private_key, sign as write

    private = load_private_key(key)
    if verify:
        require_intact(Path(run_dir))
    else:
        read_manifest(Path(run_dir))
    return {**write(run_dir, private), "path": str(Path(run_dir) / SIGNATURE)}


def report(
    run_dirs: list[str | Path] | str | Path, out: str | Path | None = None, *, verify: bool = True
) -> dict[str, Path]:
    """Write ``report.html`` (self-contained: figures inline as SVG) and ``report.md`` for one or several run
    folders: into the run folder for one, ``reports/<timestamp>/`` for several, or ``out``. Each folder is first
    checked against its manifest and for malformed values unless ``verify`` is False. Returns ``{"html": path,
    "md": path}``; see :func:`unlearn.report.html.report`."""
    from .report.html import report as write

    return write(run_dirs, out, verify=verify)
