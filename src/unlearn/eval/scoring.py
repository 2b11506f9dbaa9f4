"""Batched, cached model access for the evaluation suites: teacher-forced scoring and greedy generation.

Every metric of a suite is computed from two primitives, each batched and cached so that metrics sharing an input
share the model call (answer probability, truth ratio, exact memorisation and extraction strength all read the
same per-token scores of one (prompt, answer) pair):

* :meth:`Scorer.score` — per-token log-probabilities of a continuation given a prompt, whether each token is the
  model's argmax, and (for Min-K%++) the mean and standard deviation of log p over the vocabulary at each
  position. Right padding, sorted by length.
* :meth:`Scorer.generate` — greedy continuations, left padded, cut at stop strings.

:class:`Template` turns questions into prompts: the tokenizer's chat template for chat models (or when asked),
otherwise ``Question: … Answer:``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..errors import UnlearnError


@dataclass(frozen=True)
class TokenScores:
    """Teacher-forced scores of a continuation's tokens (numpy arrays of equal length)."""

    logprobs: np.ndarray  # log p(token | prefix)
    correct: np.ndarray  # bool: the token is the model's argmax
    mu: np.ndarray | None = None  # E_{z~p} log p(z) at each position (Min-K%++)
    sigma: np.ndarray | None = None  # std of log p(z) under p at each position

    @property
    def n(self) -> int:
        return len(self.logprobs)


class Template:
    """How questions become prompts. ``chat``: the tokenizer's chat template (user turn + generation prompt);
    ``plain``: ``Question: {q}\\nAnswer:`` with the answer after a space; ``auto``: chat when the tokenizer has a
    chat template."""

    def __init__(self, tokenizer, mode: Literal["auto", "chat", "plain"] = "auto"):
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if mode == "chat" and not has_chat:
            raise UnlearnError("--template chat: this tokenizer has no chat template (use plain)")
        if mode not in ("auto", "chat", "plain"):
            raise UnlearnError(f"unknown template {mode!r}: use auto, chat or plain")
        self.tokenizer = tokenizer
        self.chat = mode == "chat" or (mode == "auto" and has_chat)
        self.mode = "chat" if self.chat else "plain"

    def qa(self, question: str, shots: list[tuple[str, str]] = ()) -> str:
        """The prompt that the answer follows; ``shots`` are (question, answer) examples placed before it."""
        if self.chat:
            messages = []
            for q, a in shots:
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            messages.append({"role": "user", "content": question})
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        lines = [f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots]
        return "".join(lines) + f"Question: {question}\nAnswer:"

    def answer(self, text: str) -> str:
        """The answer text as it follows :meth:`qa`'s prompt (a space after ``Answer:`` in the plain format)."""
        return text if self.chat else " " + text

    def response(self, question: str, text: str, shots: list[tuple[str, str]] = ()) -> str:
        """What is scored after :meth:`qa`'s prompt for the answer ``text``, as open-unlearning builds a QA item
        (``preprocess_chat_instance``): the whole conversation rendered and the prompt cut off, so in the chat
        format the assistant turn's closing tokens are scored with the answer."""
        if not self.chat:
            return " " + text
        messages = []
        for q, a in shots:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": text}]
        full = self.tokenizer.apply_chat_template(messages, tokenize=False)
        prompt = self.qa(question, shots)
        return full[len(prompt) :] if full.startswith(prompt) else text

    @property
    def stop(self) -> tuple[str, ...]:
        """Where a generated answer ends (besides the end-of-sequence token)."""
        return () if self.chat else ("\nQuestion:", "\n\n")


class Scorer:
    """Scores and generates with one model; results are cached per input for the scorer's lifetime."""

    def __init__(self, model, tokenizer, *, batch_size: int = 8, max_length: int | None = None, progress=None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        cfg = model.config
        self.max_length = max_length or int(getattr(cfg, "max_position_embeddings", 0) or 2048)
        self.device = next(model.parameters()).device
        self.progress = progress  # callable(description, total) -> context manager yielding advance(n)
        self._scores: dict = {}
        self._generations: dict = {}
        self.stats = {"scored_tokens": 0, "score_s": 0.0, "generated_tokens": 0, "generate_s": 0.0}

    def timings(self) -> dict:
        """Seconds spent and throughput of scoring (tokens/s) and generation (new tokens/s)."""
        st = self.stats
        return {
            "score_s": round(st["score_s"], 3),
            "score_tokens_per_s": round(st["scored_tokens"] / st["score_s"], 1) if st["score_s"] else None,
            "generate_s": round(st["generate_s"], 3),
            "generate_tokens_per_s": round(st["generated_tokens"] / st["generate_s"], 1) if st["generate_s"] else None,
        }

    # -- tokenisation --------------------------------------------------------------------------------------------
    def _prompt_ids(self, prompt: str) -> list[int]:
        """Prompt token ids; text that already starts with a special token (a chat template) gets no extra BOS."""
        starts_special = any(prompt.startswith(t) for t in self.tokenizer.all_special_tokens if t)
        return self.tokenizer(prompt, add_special_tokens=not starts_special)["input_ids"]

    def _cont_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _split_ids(self, prompt: str, cont: str) -> tuple[list[int], list[int]]:
        """(prompt ids, continuation ids) of ``prompt + cont`` tokenised as one text, split at the length of the
        prompt tokenised alone."""
        p_ids = self._prompt_ids(prompt)
        starts_special = any(prompt.startswith(t) for t in self.tokenizer.all_special_tokens if t)
        full = (
            self.tokenizer(prompt + cont, add_special_tokens=not starts_special)["input_ids"]
            if prompt
            else (p_ids + self._cont_ids(cont))
        )
        return full[: len(p_ids)], full[len(p_ids) :]

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for cand in (tok.pad_token_id, tok.eos_token_id, 0):
            if cand is not None:
                return int(cand)
        return 0

    def task(self, description: str, total: int):
        if self.progress is None:
            return contextlib.nullcontext(lambda n=1: None)
        return self.progress(description, total)

    # -- scoring -------------------------------------------------------------------------------------------------
    def score(
        self, pairs: list[tuple[str, str]], *, distribution: bool = False, eos: bool = False, label: str = "scoring"
    ) -> list[TokenScores]:
        """Teacher-forced scores of each ``(prompt, continuation)``; ``distribution`` also computes μ and σ of
        log p over the vocabulary (Min-K%++). An empty prompt scores the continuation from its second token
        (or from BOS when the tokenizer adds one).

        Prompt and continuation are tokenised together and split where the prompt's own tokens end, as TOFU and
        open-unlearning build QA items: a continuation tokenised alone would gain a stray word-start token with
        SentencePiece tokenizers (Llama, Mistral, Gemma). ``eos`` appends the end-of-sequence token to the scored
        continuation unless it already ends with it (TOFU's and open-unlearning's answers)."""
        key = lambda p: (p[0], p[1], distribution, eos)  # noqa: E731
        todo = sorted({key(p) for p in pairs if key(p) not in self._scores})
        if todo:
            start = time.perf_counter()
            encoded = []
            for prompt, cont, _, _ in todo:
                p_ids, c_ids = self._split_ids(prompt, cont)
                if (
                    eos
                    and self.tokenizer.eos_token_id is not None
                    and (not c_ids or c_ids[-1] != self.tokenizer.eos_token_id)
                ):
                    c_ids = c_ids + [self.tokenizer.eos_token_id]
                if not c_ids:
                    raise UnlearnError(f"nothing to score: empty continuation after prompt {prompt[:40]!r}")
                if not p_ids:  # no BOS: the first token has no prediction, score from the second
                    p_ids, c_ids = c_ids[:1], c_ids[1:]
                    if not c_ids:
                        raise UnlearnError(f"text too short to score (one token): {cont[:40]!r}")
                overflow = len(p_ids) + len(c_ids) - self.max_length
                if overflow > 0:  # keep the continuation whole; cut the prompt from the left, then the tail
                    cut = min(overflow, len(p_ids) - 1)
                    p_ids = p_ids[cut:]
                    c_ids = c_ids[: self.max_length - len(p_ids)]
                encoded.append((p_ids, c_ids))
            rows = _pack(encoded)
            order = sorted(range(len(rows)), key=lambda r: -len(rows[r][0]))
            with self.task(label, len(todo)) as advance:
                for b in range(0, len(order), self.batch_size):
                    batch = [rows[r] for r in order[b : b + self.batch_size]]
                    for i, res in self._score_batch(batch, distribution):
                        self._scores[todo[i]] = res
                    advance(sum(len(members) for _, members in batch))
            self.stats["score_s"] += time.perf_counter() - start
        return [self._scores[key(p)] for p in pairs]

    @torch.inference_mode()
    def _score_batch(self, rows: list[tuple[list[int], list]], distribution: bool) -> list[tuple[int, TokenScores]]:
        width = max(len(seq) for seq, _ in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (seq, _) in enumerate(rows):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False).logits
        out = []
        for r, (seq, members) in enumerate(rows):
            for i, start, c in members:
                # logits at position t predict token t+1: the continuation's predictions start at start - 1
                lp = torch.log_softmax(logits[r, start - 1 : start + len(c) - 1].float(), dim=-1)
                target = torch.tensor(c, device=lp.device)
                token_lp = lp.gather(-1, target[:, None]).squeeze(-1)
                correct = lp.argmax(-1) == target
                mu = sigma = None
                if distribution:
                    probs = lp.exp()
                    # tokens of probability 0 add nothing (a guard's forbidden ones: lp² would overflow, 0·inf NaN)
                    lp0 = lp.masked_fill(probs == 0, 0)
                    mu_t = (probs * lp0).sum(-1)
                    sigma_t = ((probs * lp0.square()).sum(-1) - mu_t.square()).clamp_min(0).sqrt()
                    mu, sigma = mu_t.cpu().numpy(), sigma_t.cpu().numpy()
                out.append((i, TokenScores(token_lp.cpu().numpy(), correct.cpu().numpy(), mu, sigma)))
            self.stats["scored_tokens"] += len(seq)
        return out

    def grad_norms(self, texts: list[str], *, p: float = 2.0, label: str = "gradient norms") -> list[float]:
        """GradNorm (Wang et al. 2024, "Pandora's white-box"; open-unlearning's ``gradnorm.py``): for each text,
        the gradient of its mean token NLL with respect to every parameter, the ``p``-norm of each parameter's
        gradient, and their mean over parameters. One forward and backward pass per text, the model in training
        mode as in the reference; the model's parameters and ``requires_grad`` flags are restored afterwards."""
        if p not in (1, 2, float("inf")):
            raise UnlearnError(f"gradient norm p must be 1, 2 or inf, got {p}")
        params = list(self.model.parameters())
        flags = [q.requires_grad for q in params]
        was_training = self.model.training
        norms = []
        try:
            for q in params:
                q.requires_grad_(True)
            self.model.train()
            with self.task(label, len(texts)) as advance:
                for text in texts:
                    p_ids, c_ids = self._prompt_ids(""), self._cont_ids(text)
                    if not p_ids:
                        p_ids, c_ids = c_ids[:1], c_ids[1:]
                    seq = (p_ids + c_ids)[: self.max_length]
                    ids = torch.tensor([seq], device=self.device)
                    with torch.enable_grad():
                        logits = self.model(input_ids=ids, use_cache=False).logits[0, len(p_ids) - 1 : -1]
                        target = ids[0, len(p_ids) :]
                        lp = torch.log_softmax(logits, dim=-1).gather(-1, target[:, None]).squeeze(-1)
                        self.model.zero_grad(set_to_none=True)
                        (-lp.mean()).backward()
                    found = [q.grad.detach().norm(p=p) for q in params if q.grad is not None]
                    norms.append(float(torch.stack(found).float().mean()))
                    advance(1)
        finally:
            self.model.zero_grad(set_to_none=True)
            for q, flag in zip(params, flags):
                q.requires_grad_(flag)
            self.model.train(was_training)
        return norms

    # -- generation ----------------------------------------------------------------------------------------------
    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int,
        stop: tuple[str, ...] = (),
        raw: bool = False,
        label: str = "generating",
    ) -> list[str]:
        """Greedy continuations of ``prompts`` (batched, left padded), cut at the first of ``stop`` and stripped
        (``raw``: exactly as generated)."""
        key = lambda p: (p, max_new_tokens, tuple(stop), raw)  # noqa: E731
        todo = sorted({key(p) for p in prompts if key(p) not in self._generations})
        if todo:
            start = time.perf_counter()
            encoded = [self._prompt_ids(p)[-(self.max_length - max_new_tokens) :] for p, *_ in todo]
            order = sorted(range(len(todo)), key=lambda i: -len(encoded[i]))
            with self.task(label, len(order)) as advance:
                for b in range(0, len(order), self.batch_size):
                    idx = order[b : b + self.batch_size]
                    texts = self._generate_batch([encoded[i] for i in idx], max_new_tokens, () if raw else stop)
                    for i, text in zip(idx, texts):
                        self._generations[todo[i]] = text if raw else _cut(text, stop)
                    advance(len(idx))
            self.stats["generate_s"] += time.perf_counter() - start
        return [self._generations[key(p)] for p in prompts]

    @torch.inference_mode()
    def _generate_batch(self, batch: list[list[int]], max_new_tokens: int, stop: tuple[str, ...]) -> list[str]:
        from transformers import GenerationConfig

        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, p in enumerate(batch):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        eos = self.tokenizer.eos_token_id
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.pad_id,
            eos_token_id=eos,
            stop_strings=list(stop) or None,  # a sequence that printed a stop string is finished (padded after)
        )
        out = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            generation_config=config,
            tokenizer=self.tokenizer if stop else None,
        )
        new = out[:, width:].cpu()
        texts = []
        for row in new.tolist():
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            self.stats["generated_tokens"] += len(row)
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True))
        return texts


def _pack(encoded: list[tuple[list[int], list[int]]]) -> list[tuple[list[int], list]]:
    """Rows to run: ``(token ids, [(index, start of the continuation, continuation ids), ...])``. Single-token
    continuations of the same prompt (the letters of a multiple-choice question) share one row: one forward
    pass scores them all."""
    rows, shared = [], {}
    for i, (p, c) in enumerate(encoded):
        if len(c) == 1:
            row = shared.get(tuple(p))
            if row is None:
                row = shared[tuple(p)] = (p + c, [])
                rows.append(row)
            row[1].append((i, len(p), c))
        else:
            rows.append((p + c, [(i, len(p), c)]))
    return rows


def _cut(text: str, stop: tuple[str, ...]) -> str:
    """``text`` (without leading whitespace) up to the first stop string, stripped."""
    text = text.lstrip()
    end = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:end].strip()
