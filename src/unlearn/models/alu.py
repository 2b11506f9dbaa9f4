"""An agent pipeline around generation: the inference-time policy of the ``alu`` method (after "Agents are all you
need for LLM unlearning", Sanyal et al. 2025). The weights stay as they are; ``model.generate`` runs a short chain
of steps per row instead of one generation:

* **draft**: the model's own generation, exactly as plain ``generate`` gives it;
* **check**: a checker decides whether the draft touches a forget target: ``match`` (a target token or phrase occurs
  in the draft, or in prompt and draft with ``check_prompt``), ``embed`` (the guard's embedding detector on prompt
  and draft) or ``model`` (the model itself, or another local model, asked whether the text contains information
  about the targets: the logit of " yes" minus that of " no"); each flags a score above ``threshold``;
* **rewrite**: a flagged row is generated again with the targets banned (the target tokens never produced, a
  phrase's last token never after the rest of it) and, optionally, an instruction before the prompt; the rewrite
  is checked again, up to ``rewrites`` rounds, the bans growing with what each round matched;
* **refuse**: a row still flagged (or flagged at all, without rewrite) gets the configured refusal instead.

A draft that passes the check is returned unchanged. The policy is kept beside the plain checkpoint as
``policy.json`` (and ``policy.safetensors`` for the ``embed`` checker's vectors). Attached to a model
(:meth:`AluPolicy.install`) it is one instance attribute, ``model.generate``; plain forward passes, and so every
next-token metric, see the unchanged model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import LogitsProcessor

from ..errors import UnlearnError
from . import component_files, policies
from .adapters import adapter_for
from .guard import GuardPolicy, pool
from .policies import POLICY_FILE, TENSORS_FILE

FORMAT = 1
STEPS = ("draft", "check", "rewrite", "refuse")
PIPELINES = (("draft", "check", "rewrite"), ("draft", "check", "refuse"), ("draft", "check", "rewrite", "refuse"))
CHECKERS = ("match", "embed", "model")
TENSORS = ("mean", "forget_centroid", "retain_centroid")
SAVED = ("steps", "checker", "threshold", "targets", "names", "ban", "rewrites", "check_prompt", "instruction")
SAVED += ("refusal", "special", "question", "checker_model", "checker_tokens", "info")


def find(row: list[int], targets: list[list[int]]) -> list[int]:
    """The indices of the ``targets`` (token id sequences) that occur in ``row`` as a contiguous run."""
    present = set(row)
    found = []
    for i, target in enumerate(targets):
        if not set(target) <= present:
            continue
        n = len(target)
        if n == 1 or any(row[j : j + n] == target for j in range(len(row) - n + 1)):
            found.append(i)
    return found


def cut(row: list[int], eos: set[int]) -> list[int]:
    """A generated row up to and including its first end-of-sequence token (the whole row if it has none)."""
    for i, t in enumerate(row):
        if t in eos:
            return row[: i + 1]
    return row


def padded(rows: list[list[int]], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` as one batch (ids [B, T], attention mask [B, T]), padded with ``pad`` on the left or the right."""
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        at = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, at], mask[i, at] = torch.tensor(r, dtype=torch.long), 1
    return ids, mask


class BanProcessor(LogitsProcessor):
    """A ``LogitsProcessor`` that bans token sequences per row: ``bans[k]`` (token id lists) for the rows of prompt
    ``k`` (beams or samples of one prompt follow it). A one-token sequence is never produced; a longer one never
    completed (its last token is banned right after the rest of it)."""

    def __init__(self, bans: list[list[list[int]]]):
        self.bans = [[list(b) for b in row if b] for row in bans]
        self.longest = max((len(b) for row in self.bans for b in row), default=1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, vocab = scores.shape
        if rows % len(self.bans):
            raise UnlearnError(f"the alu ban has {len(self.bans)} rows, generation {rows}")
        per = rows // len(self.bans)
        recent = input_ids[:, -(self.longest - 1) :].tolist() if self.longest > 1 else [[]] * rows
        out = scores.clone()
        low = torch.finfo(scores.dtype).min
        for r in range(rows):
            for ban in self.bans[r // per]:
                k = len(ban) - 1
                if ban[-1] < vocab and (k == 0 or recent[r][len(recent[r]) - k :] == ban[:-1]):
                    out[r, ban[-1]] = low
        return out


def setting(name: str, kwargs: dict, model: nn.Module):
    """A generation setting as ``generate`` resolves it: the keyword argument (even None), else the
    ``generation_config`` argument's, else the model's generation config."""
    if name in kwargs:
        return kwargs[name]
    given = kwargs.get("generation_config")
    if given is not None and getattr(given, name, None) is not None:
        return getattr(given, name)
    return getattr(getattr(model, "generation_config", None), name, None)


def ids_of(value) -> set[int]:
    """Token ids of a setting that is None, one id, a list of ids or a tensor of them."""
    if value is None:
        return set()
    if torch.is_tensor(value):
        value = value.flatten().tolist()
    return {int(v) for v in value} if isinstance(value, (list, tuple, set)) else {int(value)}


@dataclass(eq=False)
class AluPolicy:
    """The pipeline (``steps``), the ``checker`` and its ``threshold``, the ``targets`` (token id lists, ``names``
    their text), how rewrites ban (``ban``: ``matched`` or ``all``; ``rewrites`` rounds), the ``instruction`` put
    before a rewritten prompt and the ``refusal`` (token ids), and the checker's parts: ``detector`` (``embed``),
    ``question`` (``model``: ``prefix``, ``suffix``, ``yes``, ``no`` ids in the checker's vocabulary) and
    ``checker_model`` (a local model's path; None: the model itself)."""

    steps: list[str]
    checker: str
    threshold: float
    targets: list[list[int]]
    names: list[str] = field(default_factory=list)
    ban: str = "matched"
    rewrites: int = 1
    check_prompt: bool = False
    instruction: list[int] = field(default_factory=list)
    refusal: list[int] = field(default_factory=list)
    special: list[int] = field(default_factory=list)
    detector: GuardPolicy | None = None
    question: dict = field(default_factory=dict)
    checker_model: str | None = None
    checker_tokens: int = 256
    batch_size: int = 4
    info: dict = field(default_factory=dict)
    file: str = POLICY_FILE
    tokenizer: object = field(default=None, repr=False)  # the model's own (only an external checker needs it)
    judge: tuple | None = field(default=None, repr=False)  # (model, tokenizer) of an external checker, once loaded
    last_trace: list = field(default_factory=list, init=False, repr=False)
    _model: nn.Module | None = field(default=None, init=False, repr=False)
    _previous: object = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if tuple(self.steps) not in PIPELINES:
            raise UnlearnError(f"inconsistent alu policy: steps {self.steps} are not one of {PIPELINES}")
        if self.checker not in CHECKERS:
            raise UnlearnError(f"inconsistent alu policy: unknown checker {self.checker!r}")
        if self.checker == "embed" and self.detector is None:
            raise UnlearnError("inconsistent alu policy: the embed checker has no detector")
        if self.checker == "model" and not {"prefix", "suffix", "yes", "no"} <= set(self.question):
            raise UnlearnError("inconsistent alu policy: the model checker has no question")
        if "refuse" in self.steps and not self.refusal:
            raise UnlearnError("inconsistent alu policy: the refuse step has no refusal")
        if any(not t for t in self.targets):
            raise UnlearnError("inconsistent alu policy: an empty target")

    # -- checking ------------------------------------------------------------------------------------------------
    def scores(self, model: nn.Module, rows: list[list[int]]) -> torch.Tensor:
        """The checker's score of each text (token ids of the model's vocabulary); above ``threshold``: flagged."""
        special = set(self.special)
        rows = [[t for t in r if t not in special] or r[:1] for r in rows]
        if self.checker == "match":
            return torch.tensor([float(len(find(r, self.targets))) for r in rows])
        out = []
        for i in range(0, len(rows), self.batch_size):
            part = rows[i : i + self.batch_size]
            out.append(self._embed(model, part) if self.checker == "embed" else self._ask(model, part))
        return torch.cat(out) if out else torch.zeros(0)

    @torch.no_grad()
    def _embed(self, model: nn.Module, rows: list[list[int]]) -> torch.Tensor:
        """The embedding detector's scores (one right-padded forward up to its block)."""
        seen = {}

        def hook(_module, _args, output):
            seen["h"] = output[0] if isinstance(output, tuple) else output
            raise _Done

        ids, mask = padded(rows, 0, left=False)
        device = next(model.parameters()).device
        handle = adapter_for(model).blocks(model)[self.detector.layer].register_forward_hook(hook)
        try:
            getattr(model, "base_model", model)(input_ids=ids.to(device), attention_mask=mask.to(device))
        except _Done:
            pass
        finally:
            handle.remove()
        return self.detector.scores(pool(seen["h"], mask)).cpu()

    @torch.no_grad()
    def _ask(self, model: nn.Module, rows: list[list[int]]) -> torch.Tensor:
        """The model checker's scores: logit(" yes") − logit(" no") after the question about each text."""
        judge, tokens = self._judge(model)
        q = self.question
        seqs = [q["prefix"] + t[-self.checker_tokens :] + q["suffix"] for t in tokens(rows)]
        ids, mask = padded(seqs, 0, left=False)
        device = next(judge.parameters()).device
        logits = judge(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        last = logits[torch.arange(len(seqs), device=logits.device), mask.sum(1).to(logits.device) - 1].float()
        return (last[:, q["yes"]] - last[:, q["no"]]).cpu()

    def _judge(self, model: nn.Module):
        """(the checking model, texts → its token ids): the model itself, or the external checker (its text
        decoded with the model's tokenizer and encoded with the checker's)."""
        if self.checker_model is None:
            return model, lambda rows: rows
        if self.judge is None:
            self.judge = load_checker(self.checker_model, model)
        judge, judge_tok = self.judge
        own = self.tokenizer if self.tokenizer is not None else own_tokenizer(model)
        self.tokenizer = own

        def tokens(rows):
            texts = [own.decode(r, skip_special_tokens=True) for r in rows]
            return [judge_tok(t, add_special_tokens=False)["input_ids"] for t in texts]

        return judge, tokens

    # -- the pipeline --------------------------------------------------------------------------------------------
    def generate(self, *args, **kwargs):
        """``generate`` of the attached model with the pipeline: the same arguments and the same layout (prompt
        ids + new tokens, right-padded with the pad token). ``last_trace`` says per row which steps fired."""
        model = self._model
        plain = self._plain()
        if len(args) > 1:
            raise UnlearnError("generate under the alu policy: pass every argument but the input ids by name")
        if kwargs.get("streamer") is not None:
            raise UnlearnError("generate under the alu policy cannot stream: a draft may be replaced")
        ids = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
        if ids is None or ids.dim() != 2:
            raise UnlearnError("generate under the alu policy needs input_ids [batch, length]")
        out = plain(*args, **kwargs)
        if not torch.is_tensor(out):
            raise UnlearnError("generate under the alu policy returns token ids only (no return_dict_in_generate)")
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        width, per = ids.shape[1], len(out) // len(ids)
        eos = ids_of(setting("eos_token_id", kwargs, model))
        pad = setting("pad_token_id", kwargs, model)
        pad = int(pad) if pad is not None else min(eos, default=0)
        limit = setting("max_new_tokens", kwargs, model)
        limit = int(limit) if limit is not None else int(setting("max_length", kwargs, model) or 20) - width
        prompts = [ids[i // per][mask[i // per].bool()].tolist() for i in range(len(out))]
        answers = [cut(r, eos) for r in out[:, width:].tolist()]
        rest = {k: v for k, v in kwargs.items() if k not in ("input_ids", "inputs", "attention_mask")}
        self.last_trace = self.pipeline(
            model, lambda p, b: self._rewrite(plain, rest, p, b, limit, pad), prompts, answers, eos, pad, limit
        )
        if all(t["final"] == "draft" for t in self.last_trace):
            return out
        new, _ = padded(answers, pad, left=False)
        return torch.cat([out[:, :width], new.to(out.device)], dim=1)

    def pipeline(self, model, rewrite, prompts, answers, eos: set[int], pad: int, limit: int) -> list[dict]:
        """Run check, rewrite and refuse on the drafts ``answers`` (replaced in place) of ``prompts``;
        ``rewrite(prompts, bans)`` generates again. The trace: per row the steps that fired, the step whose answer
        is returned (``final``), the checker's scores, the targets matched and whether the last check flagged."""
        trace = [{"fired": ["draft"], "final": "draft", "scores": [], "matched": []} for _ in answers]
        active = self._check(model, list(range(len(answers))), prompts, answers, eos, pad, trace)
        bans: dict[int, set] = {i: set() for i in active}
        for _ in range(self.rewrites if "rewrite" in self.steps else 0):
            if not active:
                break
            for i in active:
                bans[i] |= self._bans(prompts[i], answers[i], eos, pad)
            new = rewrite([prompts[i] for i in active], [sorted(bans[i]) for i in active])
            for i, answer in zip(active, new):
                answers[i] = cut(answer, eos)
                trace[i]["fired"].append("rewrite")
                trace[i]["final"] = "rewrite"
            active = self._check(model, active, prompts, answers, eos, pad, trace)
        if "refuse" in self.steps:
            refusal = self.refusal[:limit] + sorted(eos)[:1]
            for i in active:
                answers[i] = refusal[: max(limit, 0)]
                trace[i]["fired"].append("refuse")
                trace[i]["final"] = "refuse"
        return trace

    def _text(self, prompt: list[int], answer: list[int], eos: set[int], pad: int, whole: bool) -> list[int]:
        """What is checked: the answer without its end or padding, after the prompt when ``whole``."""
        end = len(answer)
        while end and (answer[end - 1] in eos or answer[end - 1] == pad):
            end -= 1
        return (prompt if whole else []) + answer[:end]

    def _check(self, model, rows: list[int], prompts, answers, eos, pad, trace) -> list[int]:
        """Check the answers of ``rows``; record it in ``trace``; the rows flagged."""
        if not rows:
            return []
        whole = self.check_prompt or self.checker != "match"
        texts = [self._text(prompts[i], answers[i], eos, pad, whole) for i in rows]
        scores = self.scores(model, texts).tolist()
        flagged = []
        for i, text, score in zip(rows, texts, scores):
            trace[i]["fired"].append("check")
            trace[i]["scores"].append(round(score, 4))
            trace[i]["matched"] = [self.names[k] if k < len(self.names) else k for k in find(text, self.targets)]
            trace[i]["flagged"] = score > self.threshold
            if trace[i]["flagged"]:
                flagged.append(i)
        return flagged

    def _bans(self, prompt, answer, eos, pad) -> set[tuple[int, ...]]:
        """The targets a rewrite of this row bans: every one, or those matched (every one when none is)."""
        matched = find(self._text(prompt, answer, eos, pad, self.check_prompt), self.targets)
        chosen = matched if self.ban == "matched" and matched else range(len(self.targets))
        return {tuple(self.targets[k]) for k in chosen}

    def _rewrite(self, plain, kwargs: dict, prompts, bans, limit: int, pad: int) -> list[list[int]]:
        """Generate again for ``prompts`` (the instruction after their leading special tokens) with ``bans``."""
        rows, special = [], set(self.special)
        for p in prompts:
            lead = next((i for i, t in enumerate(p) if t not in special), len(p))
            rows.append(p[:lead] + self.instruction + p[lead:])
        ids, mask = padded(rows, pad, left=True)
        device = next(self._model.parameters()).device
        processors = [*(kwargs.get("logits_processor") or []), BanProcessor(bans)]
        args = {**kwargs, "logits_processor": processors, "max_new_tokens": max(limit, 0), "num_return_sequences": 1}
        args.pop("max_length", None)
        out = plain(input_ids=ids.to(device), attention_mask=mask.to(device), **args)
        return out[:, ids.shape[1] :].tolist()

    # -- the component -------------------------------------------------------------------------------------------
    def _plain(self):
        """The ``generate`` the policy wraps (another instance attribute it replaced, else the class's)."""
        return self._previous if self._previous is not None else type(self._model).generate.__get__(self._model)

    def install(self, model: nn.Module) -> None:
        if self.checker == "embed":
            n_layers = adapter_for(model).n_layers(model)
            if not 0 <= self.detector.layer < n_layers:
                raise UnlearnError(f"the alu checker reads layer {self.detector.layer}, the model has {n_layers}")
        if self.checker == "model" and self.checker_model is None:
            vocab = model.get_output_embeddings().weight.shape[0]
            if max(self.question["yes"], self.question["no"]) >= vocab:
                raise UnlearnError("the alu checker's yes/no tokens are outside the model's vocabulary")
        self.remove()
        self._model, self._previous = model, model.__dict__.get("generate")
        model.generate = self.generate

    def remove(self) -> None:
        model = self._model
        if model is not None and model.__dict__.get("generate") == self.generate:
            if self._previous is not None:
                model.generate = self._previous
            else:
                del model.generate
        self._model, self._previous = None, None

    def record(self) -> dict:
        """What ``policy.json`` says (everything but the embed checker's vectors)."""
        layer = None if self.detector is None else self.detector.layer
        tensors = TENSORS_FILE if self.detector is not None else None
        kept = {name: getattr(self, name) for name in SAVED}
        return {"format": FORMAT, "kind": "alu", **kept, "layer": layer, "tensors": tensors}

    def save(self, directory: Path) -> list[str]:
        tensors = {n: getattr(self.detector, n) for n in TENSORS} if self.detector is not None else {}
        return component_files.write(directory, POLICY_FILE, self.record(), TENSORS_FILE, tensors)

    def describe(self) -> str:
        return f"alu policy ({' → '.join(self.steps)}; {self.checker} checker, {len(self.targets)} targets)"


class _Done(Exception):
    """Raised by the embed checker's hook once its block has run."""


def own_tokenizer(model: nn.Module):
    """The tokenizer saved with ``model`` (where it was loaded from)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model.name_or_path)
    except Exception as exc:  # noqa: BLE001 - transformers raises anything for a missing tokenizer
        raise UnlearnError(f"the alu checker needs the model's tokenizer: none at {model.name_or_path!r}") from exc


def load_checker(path: str, model: nn.Module) -> tuple:
    """(model, tokenizer) of the external checker at ``path`` (a checkpoint folder), in ``model``'s dtype and on
    its device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weight = next(model.parameters())
    try:
        judge = AutoModelForCausalLM.from_pretrained(path, dtype=weight.dtype).to(weight.device).eval()
        return judge.requires_grad_(False), AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - transformers raises anything for a missing or bad checkpoint
        raise UnlearnError(f"cannot load the alu checker model {path}: {exc}".splitlines()[0]) from exc


def build(meta: dict, tensors: dict) -> AluPolicy:
    """The alu policy of a ``policy.json`` record of kind ``alu`` and its tensors."""
    if meta.get("format") != FORMAT:
        raise ValueError(f"format {meta.get('format')!r} of the alu policy, this version reads {FORMAT}")
    detector = None
    if meta["checker"] == "embed":
        vectors = {n: tensors[n] for n in TENSORS}
        detector = GuardPolicy(
            int(meta["layer"]),
            **vectors,
            threshold=float(meta["threshold"]),
            tokens=[],
            phrases=[],
            penalty=float("inf"),
        )
    ints = lambda key: [int(t) for t in meta.get(key) or []]  # noqa: E731
    return AluPolicy(
        steps=list(meta["steps"]),
        checker=meta["checker"],
        threshold=float(meta["threshold"]),
        targets=[[int(t) for t in target] for target in meta["targets"]],
        names=[str(n) for n in meta.get("names", [])],
        ban=meta.get("ban", "matched"),
        rewrites=int(meta.get("rewrites", 1)),
        check_prompt=bool(meta.get("check_prompt", False)),
        instruction=ints("instruction"),
        refusal=ints("refusal"),
        special=ints("special"),
        detector=detector,
        question=dict(meta.get("question") or {}),
        checker_model=meta.get("checker_model"),
        checker_tokens=int(meta.get("checker_tokens", 256)),
        info=dict(meta.get("info") or {}),
    )


policies.register("alu", build)
