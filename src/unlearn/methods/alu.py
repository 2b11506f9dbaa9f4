"""ALU-style unlearning by an agent pipeline around generation ("Agents are all you need for LLM unlearning",
Sanyal et al. 2025): the weights stay as they are; ``model.generate`` drafts, checks the draft against the forget
targets, and rewrites or refuses what touches them.

1. **Targets.** The chunks of both corpora (``tokens`` each) are split into calibration and held-out chunks
   (``held_out``). Over the calibration chunks the guard's selection (:func:`unlearn.methods.guard.forbidden`: the
   smoothed log-ratio of forget to retain rates, ``min_count``, ``min_ratio``, ``exclude_common``) picks the
   ``n_tokens`` tokens and ``n_phrases`` phrases of 2..``ngram`` tokens typical of the forget data; the user's
   ``targets`` strings (a few spellings of each) come first.
2. **Checker.** ``match``: the number of distinct targets in the text, flagged above ``threshold`` (0.5: any
   one). ``embed``: the guard's detector (:func:`unlearn.methods.guard.fit_detector`) fitted on the calibration
   chunks. ``model``: the model itself, or the local model ``checker_model``, asked ``question`` about the text; its
   score logit(" yes") − logit(" no"), the threshold calibrated for balanced accuracy on calibration prompts (or
   ``retain_quantile``, or ``threshold``). The held-out chunks measure the checker.
3. **Policy** (:class:`unlearn.models.alu.AluPolicy`): ``model.generate`` replaced by the pipeline ``steps``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..data.chunking import TokenSplit
from ..errors import UnlearnError
from ..models import components
from ..models.alu import PIPELINES, AluPolicy
from ..models.guard import GuardPolicy
from ..models.load import load_model
from ..models.policies import POLICY_FILE, TENSORS_FILE
from .guard import GuardConfig, accuracy_at, calibrate, fit_detector, forbidden, prompts
from .registry import MethodResult, register

UNCHANGED = "unchanged model: alu acts on generation only"
SELECTION = ("tokens", "n_tokens", "ngram", "n_phrases", "min_ratio", "min_count", "smoothing", "exclude_common")


class AluConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    steps: list[Literal["draft", "check", "rewrite", "refuse"]] = Field(
        ["draft", "check", "rewrite"],
        description="the pipeline: [draft, check, rewrite], [draft, check, refuse] or [draft, check, rewrite, refuse]",
    )
    checker: Literal["match", "embed", "model"] = Field(
        "match", description="match: targets in the draft; embed: the guard's detector; model: a yes/no question"
    )
    targets: list[str] = Field([], description="forget targets given as text, besides those found in the data")
    tokens: int = Field(32768, ge=64, le=100_000_000, description="training tokens of each corpus read")
    n_tokens: int = Field(32, ge=0, le=100_000, description="target tokens from the data (the highest log-ratio)")
    ngram: int = Field(3, ge=1, le=8, description="longest target phrase from the data in tokens")
    n_phrases: int = Field(32, ge=0, le=100_000, description="target phrases of 2..ngram tokens from the data")
    min_ratio: float = Field(10.0, ge=1, description="a data target is this many times more frequent in forget text")
    min_count: int = Field(3, ge=1, description="a data target occurs at least this often in forget text")
    smoothing: float = Field(1.0, gt=0, description="α added to every count in the log-ratio")
    exclude_common: int = Field(50, ge=0, description="the most frequent tokens of both corpora never targets")
    ban: Literal["matched", "all"] = Field(
        "matched", description="a rewrite bans the targets matched in prompt/draft (all when none is) or all"
    )
    rewrites: int = Field(1, ge=1, le=8, description="rewrite rounds; each is checked again, its matches banned too")
    check_prompt: bool = Field(False, description="match reads the prompt as well as the draft")
    instruction: str = Field(
        "", description="put before a rewritten prompt ({targets}: the target names); empty: no instruction"
    )
    refusal: str = Field(" I don't know.", min_length=1, description="the answer of the refuse step")
    checker_model: str | None = Field(None, description="model checker: a local model to ask; default: the model")
    question: str = Field(
        "Does the following text contain information about: {targets}?",
        min_length=1,
        description="model checker: the question before the text",
    )
    question_targets: int = Field(16, ge=1, description="model checker and instruction: target names shown at most")
    checker_tokens: int = Field(256, ge=8, description="model checker: the last tokens of a text it reads")
    calibration_chunks: int = Field(64, ge=2, description="chunks per corpus that calibrate and measure the checker")
    layer: int | None = Field(None, ge=0, description="embed checker: the detector's block; default: the middle")
    threshold: float | None = Field(None, description="flag a score above this; default: calibrated (match: 0.5)")
    retain_quantile: float | None = Field(
        None, gt=0, lt=1, description="embed/model: the threshold as this quantile of the retain prompts' scores"
    )
    min_prompt: int = Field(16, ge=2, description="shortest calibration prompt in tokens")
    held_out: float = Field(0.25, gt=0, lt=1, description="share of chunks kept from targets and calibration")
    seed: int | None = Field(None, ge=0, lt=2**63, description="seed of prompt lengths and the held-out split")

    @model_validator(mode="after")
    def _consistent(self):
        if tuple(self.steps) not in PIPELINES:
            raise ValueError("steps must be " + " or ".join("[" + ", ".join(p) + "]" for p in PIPELINES))
        if self.threshold is not None and self.retain_quantile is not None:
            raise ValueError("set threshold or retain_quantile, not both")
        if self.checker == "match" and self.retain_quantile is not None:
            raise ValueError("retain_quantile calibrates the embed and model checkers, not match")
        if self.checker_model is not None and self.checker != "model":
            raise ValueError("checker_model needs checker: model")
        if not self.targets and not (self.n_tokens or self.n_phrases):
            raise ValueError("no targets: give targets or keep n_tokens or n_phrases above 0")
        return self


def spellings(tokenizer, text: str) -> list[list[int]]:
    """Token ids of a user target as it may appear: as given, with a leading space, lower-case and capitalised."""
    bare = text.strip()
    forms = dict.fromkeys([text, bare, bare.lower(), bare.capitalize()])
    forms = dict.fromkeys([f for form in forms for f in (form, " " + form) if f.strip()])
    found = [tokenizer(f, add_special_tokens=False)["input_ids"] for f in forms]
    return [list(ids) for ids in dict.fromkeys(tuple(ids) for ids in found if ids)]


def find_targets(tokenizer, splits: dict, cfg: AluConfig) -> list[dict]:
    """The targets: the user's (every spelling) then the data's tokens and phrases; ``{"ids", "text", "source"}``
    each (the data's with their counts and log-ratio)."""
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    found = [{"ids": ids, "source": "user", "of": t} for t in cfg.targets for ids in spellings(tokenizer, t)]
    if cfg.n_tokens or cfg.n_phrases:
        selection = GuardConfig(**{k: getattr(cfg, k) for k in SELECTION})
        tokens, phrases = forbidden(splits["forget"], splits["retain"], selection, special)
        found += [{**item, "source": "data"} for item in tokens + phrases]
    seen, out = set(), []
    for item in found:
        if tuple(item["ids"]) not in seen:
            seen.add(tuple(item["ids"]))
            out.append({**item, "text": tokenizer.decode(item["ids"])})
    if not out:
        raise UnlearnError("alu found no targets in the data: give targets, or lower min_ratio or min_count")
    return out


def shown(targets: list[dict], k: int) -> str:
    """The first ``k`` distinct target names (user targets first) as one line for a question or an instruction."""
    names = [t["of"] if t["source"] == "user" else t["text"].strip() for t in targets]
    return ", ".join(list(dict.fromkeys(n for n in names if n))[:k])


def split_rows(split: TokenSplit, share: float, gen: torch.Generator, which: str) -> tuple[list[int], list[int]]:
    """(calibration rows, held-out rows) of a split's chunks."""
    n = len(split.input_ids)
    if n < 3:
        raise UnlearnError(f"alu needs at least 3 {which} chunks for targets, calibration and a held-out check")
    order = torch.randperm(n, generator=gen).tolist()
    n_held = min(n - 2, max(1, round(n * share)))
    return order[n_held:], order[:n_held]


def texts(split: TokenSplit, rows: list[int], cfg: AluConfig, gen: torch.Generator) -> list[list[int]]:
    """Up to ``calibration_chunks`` of the chunks ``rows`` cut to random lengths, as token id lists."""
    ids, mask = prompts(split, rows[: cfg.calibration_chunks], cfg.min_prompt, gen)
    return [r[m.bool()].tolist() for r, m in zip(ids, mask)]


def question(tokenizer, targets: list[dict], cfg: AluConfig) -> dict:
    """The model checker's question in ``tokenizer``'s ids: ``prefix`` (the question, then the text), ``suffix``
    and the ``yes`` and ``no`` tokens whose logits decide."""
    prefix = cfg.question.replace("{targets}", shown(targets, cfg.question_targets)) + "\n\nText: "
    answer = [tokenizer(w, add_special_tokens=False)["input_ids"][:1] for w in (" yes", " no")]
    if not all(answer) or answer[0] == answer[1]:
        raise UnlearnError("the alu model checker needs distinct first tokens for ' yes' and ' no'")
    return {
        "prefix": tokenizer(prefix)["input_ids"],
        "suffix": tokenizer("\nAnswer (yes or no):", add_special_tokens=False)["input_ids"],
        "yes": answer[0][0],
        "no": answer[1][0],
        "text": prefix + "<text>\nAnswer (yes or no):",
    }


def detector(model, adapter, splits: dict, cfg: AluConfig, seed: int, batch_size: int) -> GuardPolicy:
    """The embed checker: the guard's detector fitted on ``splits`` (the calibration chunks)."""
    n_layers = adapter.n_layers(model)
    layer = n_layers // 2 if cfg.layer is None else cfg.layer
    if layer >= n_layers:
        raise UnlearnError(f"alu layer {layer} is out of range: the model has {n_layers} layers (0-{n_layers - 1})")
    settings = {k: getattr(cfg, k) for k in ("threshold", "retain_quantile", "min_prompt", "held_out")}
    vectors, threshold, _ = fit_detector(model, adapter, layer, splits, GuardConfig(**settings), seed, batch_size)
    return GuardPolicy(layer, *vectors, threshold=threshold, tokens=[], phrases=[], penalty=float("inf"))


def fit_policy(model, adapter, tokenizer, splits: dict, cfg: AluConfig, seed: int, batch_size: int = 8, judge=None):
    """The alu policy of ``model`` for the ``forget`` and ``retain`` token splits of ``splits``, and the facts to
    record. ``judge``: (model, tokenizer) of an external checker model."""
    gen = torch.Generator().manual_seed(seed)
    rows = {w: split_rows(s, cfg.held_out, gen, w) for w, s in splits.items()}
    calib = {w: TokenSplit(s.input_ids[rows[w][0]], s.special[rows[w][0]]) for w, s in splits.items()}
    targets = find_targets(tokenizer, calib, cfg)
    names = shown(targets, cfg.question_targets)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    parts = checker_parts(model, adapter, tokenizer, calib, targets, cfg, seed, batch_size, judge)
    policy = AluPolicy(
        steps=list(cfg.steps),
        checker=cfg.checker,
        threshold=parts.pop("threshold", 0.5 if cfg.threshold is None else cfg.threshold),
        targets=[t["ids"] for t in targets],
        names=[t["text"] for t in targets],
        ban=cfg.ban,
        rewrites=cfg.rewrites,
        check_prompt=cfg.check_prompt,
        instruction=encode(cfg.instruction.replace("{targets}", names)) if cfg.instruction else [],
        refusal=encode(cfg.refusal),
        special=sorted(set(getattr(tokenizer, "all_special_ids", None) or [])),
        checker_tokens=cfg.checker_tokens,
        batch_size=max(1, batch_size // 2),
        tokenizer=tokenizer,
        **parts,
    )
    scored = {}
    for which, split in splits.items():
        for part, chosen in zip(("calibration", "held_out"), rows[which]):
            scored[which, part] = policy.scores(model, texts(split, chosen, cfg, gen))
    if cfg.checker == "model" and cfg.threshold is None:
        policy.threshold = calibrate(scored["forget", "calibration"], scored["retain", "calibration"], cfg)
    accuracy = {
        part: accuracy_at(scored["forget", part], scored["retain", part], policy.threshold)
        for part in ("calibration", "held_out")
    }
    how = "threshold" if cfg.threshold is not None else "retain_quantile" if cfg.retain_quantile else "calibrated"
    policy.info = {"seed": seed, "calibration": how if cfg.checker != "match" else "any target", "checker": accuracy}
    facts = {
        "steps": list(cfg.steps),
        "checker": cfg.checker,
        "threshold": round(policy.threshold, 6),
        "checker_accuracy": accuracy,
        "targets": targets,
        "counts": {s: sum(t["source"] == s for t in targets) for s in ("user", "data")},
        "question": policy.question.get("text"),
        "checker_model": policy.checker_model,
    }
    return policy, facts


def checker_parts(model, adapter, tokenizer, calib, targets, cfg: AluConfig, seed, batch_size, judge) -> dict:
    """The checker's own parts of the policy: the embed checker's ``detector`` and threshold, the model checker's
    ``question`` (and ``checker_model`` and ``judge``)."""
    if cfg.checker == "embed":
        found = detector(model, adapter, calib, cfg, seed, batch_size)
        return {"detector": found, "threshold": found.threshold}
    if cfg.checker == "model":
        if judge is None:
            return {"question": question(tokenizer, targets, cfg)}
        return {"question": question(judge[1], targets, cfg), "checker_model": judge[2], "judge": judge[:2]}
    return {}


@register(
    "alu",
    AluConfig,
    "agent pipeline at generation (ALU): the model drafts, a checker (target match, the guard's embedding detector "
    "or a yes/no question to a model) flags drafts about the forget data, which are generated again with the "
    "targets banned or refused; weights unchanged, next-token metrics those of the unchanged model",
    budget=False,
)
def alu(ctx, cfg: AluConfig) -> MethodResult:
    """Find the targets and calibrate the checker on the run's training chunks, and attach the pipeline; the model
    comes back with its weights unchanged and ``model.generate`` replaced, so only generation changes."""
    model = ctx.model
    if any(c.file == POLICY_FILE for c in components.attached(model)):
        raise UnlearnError("the model already carries a generation policy: alu on top of one is not supported")
    seed = ctx.config.seed % 2**63 if cfg.seed is None else cfg.seed
    splits = {which: ctx.training_split(which, cfg.tokens) for which in ("forget", "retain")}
    judge = None
    if cfg.checker_model is not None:
        with ctx.reporter.stage(f"loading the checker model {cfg.checker_model}"):
            loaded = load_model(cfg.checker_model, ctx.loaded.dtype, ctx.loaded.device)
        judge = (loaded.model, loaded.tokenizer, loaded.source)
    with ctx.reporter.stage("fitting the alu pipeline"):
        policy, facts = fit_policy(
            model, ctx.adapter, ctx.loaded.tokenizer, splits, cfg, seed, ctx.config.batch_size, judge
        )
    components.attach(model, policy)
    held = facts["checker_accuracy"]["held_out"]
    files = [f"model/{POLICY_FILE}"] + ([f"model/{TENSORS_FILE}"] if policy.detector is not None else [])
    return MethodResult(
        ablation=None,
        model=model,
        steps=[],
        stop_reason=(
            f"alu pipeline {' → '.join(cfg.steps)}: {len(policy.targets)} targets, {cfg.checker} checker balanced "
            f"accuracy {held['balanced_accuracy']:.3f} on held-out prompts; next-token metrics: {UNCHANGED}"
        ),
        extra={**facts, "next_token_metrics": UNCHANGED, "policy_files": files},
    )
