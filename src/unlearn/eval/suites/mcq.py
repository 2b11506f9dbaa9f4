"""Multiple choice (MMLU, Hendrycks et al. 2021; WMDP, Li et al. 2024): accuracy by two standard scorings.

* **letter** (MMLU's original protocol): the question and lettered choices, then ``Answer:``; the prediction is
  the letter among `` A``, `` B``, ... with the highest log-probability.
* **likelihood** (lm-evaluation-harness style): ``Question: … Answer:`` followed by each choice's text; the
  prediction is the choice with the highest total log-probability (``accuracy_likelihood``) or the highest
  log-probability per character (``accuracy_likelihood_norm``, lm-eval's ``acc_norm``).

Few-shot examples (0–5) come from ``shots_from``, by default the MMLU ``dev`` file of the same subject
(``…/dev/X.csv`` next to ``…/test/X.csv``), else from the other questions of the same file (question i gets the
next ``shots`` questions, cyclically). Prompts are plain text, as lm-evaluation-harness uses by default.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ...data.formats import load_mc
from ...errors import UnlearnError
from .. import functional as F
from .base import Suite, SuiteConfig, SuiteContext, mean, register

LETTERS = string.ascii_uppercase


class McqConfig(SuiteConfig):
    shots: int = Field(0, ge=0, le=5, description="few-shot examples before each question (0-5)")
    shots_from: str | None = Field(
        None, description="file of example questions (default: MMLU dev file, else same file)"
    )
    template: str = Field("plain", description="always plain text prompts for multiple choice")
    scoring: Literal["letter", "likelihood", "likelihood_norm"] = Field(
        "letter", description="which scoring the headline 'accuracy' reports (all three are always computed)"
    )


def _subject(path: str) -> str:
    return Path(path).stem.replace("_", " ")


def _letter_block(item, answer: bool) -> str:
    lines = [item.question] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices)]
    return "\n".join(lines) + "\nAnswer:" + (f" {LETTERS[item.answer]}\n\n" if answer else "")


def shot_file(path: str, cfg: McqConfig) -> str | None:
    """Where the few-shot examples of ``path``'s questions come from (None: no shots)."""
    if cfg.shots == 0:
        return None
    if cfg.shots_from:
        return cfg.shots_from
    p = Path(path)
    dev = p.parent.parent / "dev" / p.name if p.parent.name == "test" else None
    return str(dev) if dev is not None and dev.is_file() else path


def mc_samples(scorer, items, shots_pool, same_file: bool, subject: str, shots: int, label: str) -> list[dict]:
    header = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    if shots and len(shots_pool) < shots + same_file:
        raise UnlearnError(
            f"{shots} shots need at least {shots + same_file} example questions, found {len(shots_pool)}"
        )
    letter_prompts, lik_prompts = [], []
    for i, item in enumerate(items):
        if same_file:
            ex = [shots_pool[(i + 1 + j) % len(shots_pool)] for j in range(shots)]
        else:
            ex = shots_pool[:shots]
        letter_prompts.append(header + "".join(_letter_block(e, True) for e in ex) + _letter_block(item, False))
        lik_prompts.append(
            "".join(f"Question: {e.question}\nAnswer: {e.choices[e.answer]}\n\n" for e in ex)
            + f"Question: {item.question}\nAnswer:"
        )
    pairs = []
    for item, lp, kp in zip(items, letter_prompts, lik_prompts):
        pairs += [(lp, f" {LETTERS[i]}") for i in range(len(item.choices))]
        pairs += [(kp, f" {c}") for c in item.choices]
    scores = dict(zip(pairs, scorer.score(pairs, label=label)))
    samples = []
    for item, lp, kp in zip(items, letter_prompts, lik_prompts):
        letter = [float(scores[(lp, f" {LETTERS[i]}")].logprobs.sum()) for i in range(len(item.choices))]
        lik = [float(scores[(kp, f" {c}")].logprobs.sum()) for c in item.choices]
        norm = [v / max(len(c), 1) for v, c in zip(lik, item.choices)]
        samples.append(
            {
                "id": item.id,
                "answer": item.answer,
                "letter_logprobs": letter,
                "choice_logprobs": lik,
                "pred_letter": int(np.argmax(letter)),
                "pred_likelihood": int(np.argmax(lik)),
                "pred_likelihood_norm": int(np.argmax(norm)),
            }
        )
    return samples


def run(ctx: SuiteContext, cfg: McqConfig) -> dict:
    summary: dict = {}
    for part, path in ctx.files.items():
        items = load_mc(path, limit=cfg.limit)
        shots_path = shot_file(path, cfg)
        pool, same = (load_mc(shots_path) if shots_path else []), shots_path == path

        def compute(items=items, pool=pool, same=same, path=path, part=part):
            samples = mc_samples(ctx.scorer, items, pool, same, _subject(path), cfg.shots, f"scoring {part}")
            answers = [s["answer"] for s in samples]
            out = {
                f"accuracy_{k}": F.mc_accuracy([s[f"{v}_logprobs"] for s in samples], answers)
                for k, v in (("letter", "letter"), ("likelihood", "choice"))
            }
            out["accuracy_likelihood_norm"] = mean(float(s["pred_likelihood_norm"] == s["answer"]) for s in samples)
            out["accuracy"] = out[f"accuracy_{cfg.scoring}"]
            out["chance"] = mean(1 / len(it.choices) for it in items)
            out["n"] = len(samples)
            return {"summary": out, "samples": samples}

        summary[part] = ctx.part(part, compute, extra=(shots_path and ctx.data_key_of(shots_path),))["summary"]
    if len(summary) > 1:
        summary["mean_accuracy"] = mean(s["accuracy"] for s in summary.values())
    return summary


register(
    Suite(
        name="mcq",
        summary="multiple choice (MMLU CSV, WMDP JSONL): letter and choice-likelihood accuracy, 0-5 shots",
        config_cls=McqConfig,
        parts={},
        run=run,
        free_parts=True,
        loaders={"*": lambda path, cfg: load_mc(path, limit=cfg.limit)},
    )
)
