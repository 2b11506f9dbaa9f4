"""Turn documents into fixed-length token chunks with disjoint evaluation, validation and statistics splits.

Documents are cut into segments (long files at paragraph breaks), segments are shuffled with the seed (within
the first 64 MB of text), tokenised in that order and concatenated with a separator token, and the token
stream is cut into chunks of ``seq_len``. The first ``ceil(eval_tokens / seq_len)`` chunks form the evaluation
split, the next ``ceil(val_tokens / seq_len)`` the validation split (what budgeted stopping watches, so the
evaluation split stays untouched by any decision), the next ``ceil(stats_tokens / seq_len)`` the statistics
split: the splits never share a token, and only a segment on a border can contribute to two of them. Only as
many segments are tokenised as the budgets need.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

import torch

from ..errors import UnlearnError
from .sources import DataSpec, iter_documents

SEGMENT_CHARS = 2000  # ~500 tokens: a chunk draws on a few documents, not one long file
MAX_READ_CHARS = 64_000_000  # shuffle within the first 64 MB of a huge source


@dataclass
class TokenSplit:
    """``input_ids`` is [n_chunks, seq_len]; ``special`` marks special tokens (separators, BOS, pad)."""

    input_ids: torch.Tensor
    special: torch.Tensor

    @property
    def n_tokens(self) -> int:
        return self.input_ids.numel()

    def batches(self, batch_size: int):
        for i in range(0, len(self.input_ids), batch_size):
            yield self.input_ids[i : i + batch_size], self.special[i : i + batch_size]


@dataclass
class Corpus:
    """A data spec tokenised into an evaluation and a statistics split."""

    name: str
    spec: DataSpec
    eval: TokenSplit
    stats: TokenSplit
    n_segments: int
    sha256: str  # of the token ids of all splits (what the run actually saw)
    val: TokenSplit | None = None


def tokens_sha256(ids: torch.Tensor) -> str:
    """sha256 of token ids (int64, row-major): what manifests record of the data a run saw."""
    return hashlib.sha256(ids.numpy().tobytes()).hexdigest()


def segments(text: str, max_chars: int = SEGMENT_CHARS) -> list[str]:
    """Split a long document at blank lines (or line breaks) into pieces of at most about ``max_chars``.

    Paragraphs longer than ``max_chars`` are split at line breaks; a single line longer than that stays whole.
    """
    if len(text) <= max_chars:
        return [text]
    pieces, current, size = [], [], 0
    for block in text.split("\n\n"):
        lines = block.split("\n") if len(block) > max_chars else [block]
        for j, line in enumerate(lines):
            sep = "\n" if j else "\n\n"
            if current and size + len(sep) + len(line) > max_chars:
                pieces.append("".join(current))
                current, size = [], 0
            if current:
                current.append(sep)
                size += len(sep)
            current.append(line)
            size += len(line)
    if current:
        pieces.append("".join(current))
    return [p for p in pieces if p.strip()]


def separator_id(tokenizer) -> int | None:
    """BOS if the tokenizer starts every text with it, else EOS, else nothing."""
    probe = tokenizer("a").input_ids
    if tokenizer.bos_token_id is not None and probe and probe[0] == tokenizer.bos_token_id:
        return tokenizer.bos_token_id
    return tokenizer.eos_token_id


def special_ids(tokenizer) -> torch.Tensor:
    ids = set(tokenizer.all_special_ids)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tokenizer, name, None) is not None:
            ids.add(getattr(tokenizer, name))
    return torch.tensor(sorted(ids), dtype=torch.long)


def build_corpus(
    name: str,
    spec: DataSpec,
    tokenizer,
    *,
    seq_len: int,
    eval_tokens: int,
    stats_tokens: int,
    seed: int,
    val_tokens: int = 0,
    stats_at_most: bool = False,
) -> Corpus:
    """Tokenise just enough of ``spec`` for both budgets; errors name the corpus if it is empty or too short.

    With ``stats_at_most`` the statistics split may come out shorter than ``stats_tokens`` (whatever full chunks
    the text has after the evaluation and validation chunks, at least one)."""
    if seq_len < 8:
        raise UnlearnError(f"seq_len must be at least 8, got {seq_len}")
    n_eval = math.ceil(eval_tokens / seq_len) if eval_tokens > 0 else 0
    n_stats = math.ceil(stats_tokens / seq_len) if stats_tokens > 0 else 0
    n_val = math.ceil(val_tokens / seq_len) if val_tokens > 0 else 0
    needed = (n_eval + n_val + n_stats) * seq_len
    segs, read = [], 0
    for doc_id, text in iter_documents(spec):
        segs += [(doc_id, s) for s in segments(text) if s.strip()]
        read += len(text)
        if read >= MAX_READ_CHARS:
            break
    if not segs:
        raise UnlearnError(f"{name} corpus {spec.describe()} is empty: it has no text")
    random.Random(seed).shuffle(segs)
    sep = separator_id(tokenizer)
    stream: list[int] = []
    used = 0
    for _, seg in segs:
        ids = tokenizer(seg, add_special_tokens=False).input_ids
        stream += ([sep] if sep is not None else []) + ids
        used += 1
        if len(stream) >= needed:
            break
    if stats_at_most and len(stream) < needed and len(stream) // seq_len > n_eval + n_val:
        n_stats = len(stream) // seq_len - n_eval - n_val
        needed = (n_eval + n_val + n_stats) * seq_len
    if len(stream) < needed:
        raise UnlearnError(
            f"{name} corpus {spec.describe()} is too short: {len(stream)} tokens, but {needed} are needed "
            f"({n_eval} evaluation + {f'{n_val} validation + ' if n_val else ''}{n_stats} statistics chunks of "
            f"{seq_len}); lower the token budgets or add text"
        )
    ids = torch.tensor(stream[:needed], dtype=torch.long).view(n_eval + n_val + n_stats, seq_len)
    special = torch.isin(ids, special_ids(tokenizer))
    return Corpus(
        name=name,
        spec=spec,
        eval=TokenSplit(ids[:n_eval], special[:n_eval]),
        stats=TokenSplit(ids[n_eval + n_val :], special[n_eval + n_val :]),
        val=TokenSplit(ids[n_eval : n_eval + n_val], special[n_eval : n_eval + n_val]) if n_val else None,
        n_segments=used,
        sha256=tokens_sha256(ids),
    )


def qa_order(n: int, seed: int) -> list[int]:
    """The order in which :func:`build_qa_corpus` takes ``n`` records (its splits are prefixes of it)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def build_qa_corpus(
    name: str,
    spec: DataSpec,
    items: list,
    tokenizer,
    template,
    *,
    seq_len: int,
    eval_tokens: int,
    stats_tokens: int,
    seed: int,
    val_tokens: int = 0,
) -> Corpus:
    """Question–answer records as one row each: the prompt (``template.qa(question)``) then the response
    (``template.response``: in the chat format with the assistant turn's closing tokens) and EOS,
    right-padded to ``seq_len``. Prompt and padding are marked special, so training, statistics and metrics
    see only the answer tokens.

    QA data is what is to be forgotten (or learnt) itself, so the splits are not disjoint: all of them draw
    from the same records, shuffled with the seed — the first ``ceil(budget / seq_len)`` rows each. Held-out
    behaviour (paraphrases, neighbours) is what the evaluation suites measure.
    """
    if not items:
        raise UnlearnError(f"{name} data {spec.describe()} has no question-answer records")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    rows, scored = [], []
    for i in qa_order(len(items), seed):
        # as open-unlearning builds a QA item: prompt and response tokenised together, split where the prompt's
        # own tokens end (no stray word-start token with SentencePiece tokenizers), EOS appended unless present
        text = template.qa(items[i].question)
        prompt = tokenizer(text, add_special_tokens=not template.chat).input_ids
        full = tokenizer(
            text + template.response(items[i].question, items[i].answer), add_special_tokens=not template.chat
        )
        answer = full.input_ids[len(prompt) :]
        eos = tokenizer.eos_token_id
        answer += [eos] if eos is not None and (not answer or answer[-1] != eos) else []
        ids = (prompt + answer)[:seq_len]
        if len(prompt) >= len(ids):
            raise UnlearnError(f"{name}: question {items[i].id or i} leaves no room for its answer in {seq_len} tokens")
        rows.append(ids + [pad] * (seq_len - len(ids)))
        scored.append([False] * len(prompt) + [True] * (len(ids) - len(prompt)) + [False] * (seq_len - len(ids)))
    ids = torch.tensor(rows, dtype=torch.long)
    special = ~torch.tensor(scored)

    def split(tokens: int) -> TokenSplit:
        n = min(len(rows), math.ceil(tokens / seq_len)) if tokens > 0 else 0
        return TokenSplit(ids[:n], special[:n])

    return Corpus(
        name=name,
        spec=spec,
        eval=split(eval_tokens),
        stats=split(stats_tokens),
        val=split(val_tokens) if val_tokens else None,
        n_segments=len(rows),
        sha256=tokens_sha256(ids),
    )
