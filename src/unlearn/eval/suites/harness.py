"""lm-evaluation-harness tasks as a suite: ``--suite lm-eval:TASK[,TASK]`` runs any harness task on the model.

The model already loaded (the run's, or ``unlearn eval --model``'s) is handed to the harness's ``HFLM`` wrapper, so
the harness scores exactly the weights ``unlearn`` evaluates, in their dtype and on their device. Tasks come from
the harness's own registry (hub datasets: they need the internet or a warm ``datasets`` cache) or from ``--data``
folders of task YAML files (``include_path``: local tasks on local data, e.g. ``dataset_path: json``). Each task's
metrics (``acc,none``, ``acc_norm,none``, their standard errors, ...) are cached in ``eval/lm-eval.json`` under a
fingerprint of the model, the task files and the settings.

Needs the optional ``lm-eval`` package: ``pip install lm-eval``.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from pydantic import Field, field_validator

from ...errors import UnlearnError
from .base import Suite, SuiteConfig, SuiteContext, register

NAME = "lm-eval"


class HarnessConfig(SuiteConfig):
    tasks: list[str] = Field(default_factory=list, description="harness task names (from lm-eval:TASK[,TASK])")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples per task (default: the task's own)")
    seed: int = Field(0, ge=0, description="seed of the harness's few-shot sampling and shuffles")

    @field_validator("tasks")
    @classmethod
    def _named(cls, tasks: list[str]) -> list[str]:
        if not tasks or any(not t.strip() for t in tasks):
            raise ValueError("name the tasks: --suite lm-eval:TASK[,TASK]")
        return [t.strip() for t in tasks]


def _harness():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise UnlearnError("the lm-eval suite needs lm-evaluation-harness: pip install lm-eval") from exc
    return lm_eval, HFLM, TaskManager


def _task_files(folders: list[str]) -> str:
    """What identifies the local task definitions: the sha256 of every file under the ``--data`` folders."""
    from ..store import file_sha256, fingerprint

    found = sorted(str(p) for folder in folders for p in Path(folder).rglob("*") if p.is_file())
    return fingerprint([(f, file_sha256(f)) for f in found])


@functools.lru_cache(maxsize=4)
def _task_manager(folders: tuple[str, ...], files: str):
    """The harness's task index (about 6 s: it reads its ~15k task YAMLs), built once per process for the same
    ``--data`` folders and files (``files``, their fingerprint, keys the cache), not once per evaluation."""
    _, _, TaskManager = _harness()
    return TaskManager(include_path=list(folders) or None)


def run(ctx: SuiteContext, cfg: HarnessConfig) -> dict:
    lm_eval, HFLM, _ = _harness()
    folders = list(ctx.files.values())
    files = _task_files(folders)
    manager = _task_manager(tuple(folders), files)
    unknown = [t for t in cfg.tasks if t not in manager.all_tasks]
    if unknown:
        where = f" (nor in {', '.join(folders)})" if folders else ""
        raise UnlearnError(f"lm-eval has no task {unknown[0]!r}{where}: see `lm-eval ls tasks`")
    scorer = ctx.scorer
    model = None
    summary = {}
    for task in cfg.tasks:

        def compute(task=task):
            nonlocal model
            if model is None:  # the harness's wrapper around the loaded weights, built once
                model = HFLM(
                    pretrained=scorer.model,
                    tokenizer=scorer.tokenizer,
                    batch_size=scorer.batch_size,
                    device=str(scorer.device),
                    max_length=scorer.max_length,
                )
            out = lm_eval.simple_evaluate(
                model=model,
                tasks=[task],
                num_fewshot=cfg.num_fewshot,
                limit=cfg.limit,
                task_manager=manager,
                random_seed=cfg.seed,
                numpy_random_seed=cfg.seed,
                torch_random_seed=cfg.seed,
                fewshot_random_seed=cfg.seed,
                log_samples=False,
            )
            metrics = {
                k: float(v)
                for k, v in (out["results"].get(task) or {}).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
            }
            n = (out.get("n-samples") or {}).get(task, {}).get("effective")
            return {"summary": {**metrics, "n": n}, "samples": []}

        summary[task] = ctx.part(task, compute, data=files)["summary"]
    return summary


def _check_folder(path: str, cfg) -> None:
    if not Path(path).is_dir():
        raise UnlearnError(f"lm-eval --data {path}: a folder of task YAML files (include_path) is expected")


register(
    Suite(
        name=NAME,
        summary="lm-evaluation-harness tasks: --suite lm-eval:TASK[,TASK]; --data folders of local task YAMLs",
        config_cls=HarnessConfig,
        parts={},
        run=run,
        free_parts=True,
        data_optional=True,
        loaders={"*": _check_folder},
    )
)
