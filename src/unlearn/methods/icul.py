"""In-context unlearning (ICUL; Pawelczyk et al. 2023, "In-Context Unlearning: Language Models as Few-Shot
Unlearners"): the weights stay as they are; every request is preceded by a context that shows the forget examples
with their answers replaced, then ordinary retain examples with their true answers.

1. **Examples.** From the run's training data of each corpus: with running text (the statistics chunks), each
   chunk's longest run of ordinary tokens cut into a prompt (``prompt_tokens``) and the continuation after it
   (``answer_tokens``); with question–answer records (``format: qa``), the records the run trains on (the
   statistics rows), question and answer.
2. **Choice.** ``shots_forget`` forget and ``shots_retain`` retain examples, drawn with ``seed``. A forget example
   shows another answer (``replace``): ``flipped``, the answer of the next forget example in the seeded order;
   ``retain``, the answer of a retain example not shown; ``refuse``, the ``refusal`` text.
3. **Context.** Forget examples first, then retain ones. Text examples are ``separator + prompt + answer``, and the
   context ends with the separator (the token the run puts between documents); QA examples are rendered as the run
   renders its questions (the chat template when the tokenizer has one, else ``Question: …\\nAnswer: …``).
   Examples are left out, retain ones first, until the context has at most ``max_context_tokens`` tokens.
4. **Intervention** (:class:`unlearn.models.icul.IculPolicy`): hooks that put the context before every new
   sequence, for generation and next-token scoring alike.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..data.chunking import qa_order, separator_id
from ..data.formats import load_qa
from ..errors import UnlearnError
from ..eval.scoring import Template
from ..models import components
from ..models.icul import IculPolicy
from ..models.policies import POLICY_FILE
from .registry import MethodResult, register


SHOWN = {"flipped": "flipped answers", "retain": "retain answers", "refuse": "refused"}  # for the stop reason


class IculConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    shots_forget: int = Field(4, ge=1, le=1024, description="forget examples shown with a replaced answer")
    shots_retain: int = Field(4, ge=0, le=1024, description="retain examples shown with their true answer")
    replace: Literal["flipped", "retain", "refuse"] = Field(
        "flipped",
        description="a forget example's answer: flipped (another forget example's), retain (a retain example's) "
        "or refuse (the refusal text)",
    )
    refusal: str = Field("I don't know.", description="the answer shown with replace: refuse")
    prompt_tokens: int = Field(16, ge=1, le=65536, description="running text: tokens of a chunk that are the prompt")
    answer_tokens: int = Field(16, ge=1, le=65536, description="running text: tokens of the answer after the prompt")
    max_context_tokens: int = Field(
        1024, ge=8, le=1_000_000, description="longest context: examples are left out, retain ones first, to fit"
    )
    seed: int | None = Field(None, ge=0, lt=2**63, description="seed of the examples chosen; default: the run's")

    @field_validator("refusal")
    @classmethod
    def _refusal(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


@dataclass
class Example:
    """One example of a corpus: running text (``prompt`` and ``answer`` are token ids) or a QA record (text).
    ``shown`` is the answer the context shows instead of ``answer`` (None: the true one)."""

    corpus: str
    index: int  # the chunk's row in the statistics split, or the record's number in the file
    kind: Literal["text", "qa"]
    prompt: list[int] | str
    answer: list[int] | str
    shown: list[int] | str | None = None


def text_examples(split, prompt_tokens: int, answer_tokens: int, corpus: str) -> list[Example]:
    """One example per chunk of ``split``: its longest run of ordinary (not special) tokens, the first
    ``prompt_tokens`` of them (fewer in a short run, leaving at least one) as the prompt and up to
    ``answer_tokens`` after them as the answer. Chunks with no run of two tokens give none."""
    out = []
    for row, (ids, special) in enumerate(zip(split.input_ids.tolist(), split.special.tolist())):
        start, first, length = 0, 0, 0
        for i, s in enumerate(special + [True]):  # a run ends at every special token and at the chunk's end
            if s:
                if i - start > length:
                    first, length = start, i - start
                start = i + 1
        best = ids[first : first + length]
        if len(best) >= 2:
            cut = min(prompt_tokens, len(best) - 1)
            out.append(Example(corpus, row, "text", best[:cut], best[cut : cut + answer_tokens]))
    return out


def qa_examples(data, run_config, corpus: str) -> list[Example]:
    """The QA records of ``data`` that the run trains on (the statistics rows, in the run's seeded order)."""
    items = load_qa(data.source, hf_config=data.hf_config, hf_split=data.hf_split)
    order = qa_order(len(items), run_config.seed)[: math.ceil(run_config.stats_tokens / run_config.seq_len)]
    return [Example(corpus, i, "qa", items[i].question, items[i].answer) for i in order]


def examples(ctx, which: str, cfg: IculConfig) -> list[Example]:
    """The examples of the run's ``which`` corpus (running text or QA records, as the run reads it)."""
    data = ctx.config.forget if which == "forget" else ctx.config.retain
    if data.format == "qa":
        return qa_examples(data, ctx.config, which)
    return text_examples(ctx.corpus(which).stats, cfg.prompt_tokens, cfg.answer_tokens, which)


def choose(forget: list[Example], retain: list[Example], cfg: IculConfig, seed: int) -> list[Example]:
    """The context's examples: ``shots_forget`` forget examples with ``shown`` set as ``replace`` says, then
    ``shots_retain`` retain examples (fewer where a corpus has fewer), drawn with ``seed``."""
    if not forget:
        raise UnlearnError("icul found no forget examples in the run's training data: raise stats_tokens")
    rng = random.Random(seed)
    forget, retain = rng.sample(forget, len(forget)), rng.sample(retain, len(retain))
    k, m = min(cfg.shots_forget, len(forget)), min(cfg.shots_retain, len(retain))
    if cfg.replace == "flipped":
        if len(forget) < 2:
            raise UnlearnError("icul replace: flipped needs at least 2 forget examples, the run's data has 1")
        donors = [forget[(i + 1) % len(forget)].answer for i in range(k)]
    elif cfg.replace == "retain":
        spare = retain[m:] or retain
        if not spare:
            raise UnlearnError("icul replace: retain needs retain examples, the run's retain data gave none")
        donors = [spare[i % len(spare)].answer for i in range(k)]
    else:
        donors = [cfg.refusal] * k
    shown = [Example(e.corpus, e.index, e.kind, e.prompt, e.answer, d) for e, d in zip(forget[:k], donors)]
    return shown + retain[:m]


def as_ids(answer: list[int] | str, tokenizer) -> list[int]:
    """An answer as token ids following a text prompt (a text answer gets a space before it unless it has one)."""
    if isinstance(answer, list):
        return answer
    text = answer if answer[:1].isspace() else " " + answer
    return tokenizer(text, add_special_tokens=False).input_ids


def as_text(value: list[int] | str, tokenizer) -> str:
    """Token ids decoded (and stripped) or text as it is."""
    return tokenizer.decode(value).strip() if isinstance(value, list) else value


def shown_answer(example: Example):
    """What the context shows as the example's answer."""
    return example.answer if example.shown is None else example.shown


def render(chosen: list[Example], tokenizer, template: Template) -> list[int]:
    """The context's token ids: each run of text examples as ``separator + prompt + answer`` with the separator
    again at its end, each run of QA examples as one conversation in ``template``."""
    sep = separator_id(tokenizer)
    sep_ids = [] if sep is None else [sep]
    ids: list[int] = []
    for kind, group in itertools.groupby(chosen, key=lambda e: e.kind):
        group = list(group)
        if kind == "text":
            for e in group:
                ids += sep_ids + list(e.prompt) + as_ids(shown_answer(e), tokenizer)
            ids += sep_ids
            continue
        shots = [(as_text(e.prompt, tokenizer), as_text(shown_answer(e), tokenizer)) for e in group]
        question, answer = shots[-1]
        text = template.qa(question, shots[:-1]) + template.response(question, answer, shots[:-1])
        text += "" if template.chat else "\n\n"
        ids += tokenizer(text, add_special_tokens=not template.chat).input_ids
    return ids


def fit(chosen: list[Example], tokenizer, template: Template, cap: int) -> tuple[list[Example], list[int]]:
    """The examples that fit in ``cap`` tokens and their context: retain examples are left out from the last,
    then forget ones, never the first forget example."""
    kept = list(chosen)
    while True:
        ids = render(kept, tokenizer, template)
        if len(ids) <= cap:
            return kept, ids
        retain = [i for i, e in enumerate(kept) if e.corpus == "retain"]
        if not retain and len(kept) == 1:
            raise UnlearnError(
                f"the icul context with one forget example is {len(ids)} tokens, more than max_context_tokens "
                f"{cap}: raise max_context_tokens or lower prompt_tokens / answer_tokens"
            )
        del kept[retain[-1] if retain else len(kept) - 1]


def describe(chosen: list[Example], tokenizer) -> list[dict]:
    """The examples as ``metrics.json`` records them: corpus, index, kind, prompt, shown and true answer."""
    return [
        {
            "corpus": e.corpus,
            "index": e.index,
            "kind": e.kind,
            "prompt": as_text(e.prompt, tokenizer),
            "shown": as_text(shown_answer(e), tokenizer),
            "answer": as_text(e.answer, tokenizer),
            "replaced": e.shown is not None,
        }
        for e in chosen
    ]


def build_policy(forget: list[Example], retain: list[Example], tokenizer, cfg: IculConfig, seed: int):
    """The icul policy of the examples of both corpora, and the facts to record."""
    template = Template(tokenizer, "auto")
    drawn = choose(forget, retain, cfg, seed)
    kept, ids = fit(drawn, tokenizer, template, cfg.max_context_tokens)
    counts = {which: sum(e.corpus == which for e in kept) for which in ("forget", "retain")}
    facts = {
        "seed": seed,
        "replace": cfg.replace,
        "formats": {which: sorted({e.kind for e in pool}) for which, pool in (("forget", forget), ("retain", retain))},
        "template": template.mode if any(e.kind == "qa" for e in kept) else None,
        "available": {"forget": len(forget), "retain": len(retain)},
        "counts": counts,
        "left_out": {which: sum(e.corpus == which for e in drawn) - counts[which] for which in counts},
        "context_tokens": len(ids),
        "context": tokenizer.decode(ids),
        "examples": describe(kept, tokenizer),
    }
    info = {k: facts[k] for k in ("seed", "replace", "template", "counts")}
    return IculPolicy(ids, text=facts["context"], info=info), facts


@register(
    "icul",
    IculConfig,
    "in-context unlearning: every request is preceded by a context of forget examples with replaced answers "
    "(flipped, retain or a refusal) and retain examples with their true ones; weights unchanged (ICUL)",
    budget=False,
)
def icul(ctx, cfg: IculConfig) -> MethodResult:
    """Build the context from the run's training data and attach it; the model comes back with its weights
    unchanged and the policy's hooks on, so the run's evaluation after and its saved folder include it."""
    model = ctx.model
    if any(c.file == POLICY_FILE for c in components.attached(model)):
        raise UnlearnError("the model already carries a generation policy: icul on top of one is not supported")
    seed = ctx.config.seed % 2**63 if cfg.seed is None else cfg.seed
    with ctx.reporter.stage("building the icul context"):
        pools = {which: examples(ctx, which, cfg) for which in ("forget", "retain")}
        policy, facts = build_policy(pools["forget"], pools["retain"], ctx.loaded.tokenizer, cfg, seed)
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and policy.length + ctx.config.seq_len > limit:
        raise UnlearnError(
            f"the icul context ({policy.length} tokens) and the run's seq_len ({ctx.config.seq_len}) exceed the "
            f"model's {limit} positions: lower max_context_tokens"
        )
    components.attach(model, policy)
    counts = facts["counts"]
    return MethodResult(
        ablation=None,
        model=model,
        steps=[],
        stop_reason=(
            f"icul policy: {counts['forget']} forget examples ({SHOWN[cfg.replace]}) and {counts['retain']} "
            f"retain examples in a {policy.length}-token context"
        ),
        extra={**facts, "policy_files": [f"model/{POLICY_FILE}"]},
    )
