"""What the audit scores: the forget (or retain) evaluation split of a run, and attacked variants of it.

Every probe is a token row whose *context* is marked special (not scored) and whose *content* — a text chunk,
or a question's answer — is scored by next-token accuracy, exactly as the run's evaluation scores it. An attack
changes the context (a prompt template, facts placed before the question) and never the scored tokens, so its
metric compares one to one with the unattacked one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import DataConfig
from ..data.chunking import TokenSplit, build_corpus, build_qa_corpus, qa_order
from ..errors import UnlearnError
from .prompts import BUILTIN_TOPICS, QA_PROMPTS, TEXT_PROMPTS


@dataclass
class Probes:
    """One data set's evaluation rows (``plain``), a disjoint slice for relearning (``train``), and what attacks
    need to rebuild the rows: text chunks and spare chunks for context, or QA records and their neighbours."""

    which: str
    data: DataConfig
    kind: str  # "text" | "qa"
    plain: TokenSplit
    train: TokenSplit
    tokenizer: object
    template: object
    topic: str
    items: list = field(default_factory=list)  # qa: all records, in file order
    eval_index: list[int] = field(default_factory=list)  # qa: the records of the evaluation rows

    @property
    def n_probes(self) -> int:
        return len(self.plain.input_ids)

    def describe(self) -> dict:
        return {
            "source": self.data.source,
            "format": self.kind,
            "n_probes": self.n_probes,
            "n_tokens": int((~self.plain.special[:, 1:]).sum()),
            "train_rows": len(self.train.input_ids),
        }

    # ---- attacked variants -------------------------------------------------------------------------------
    def prompt_names(self) -> list[str]:
        if self.kind == "text":
            return list(TEXT_PROMPTS)
        has_paraphrase = any(self.items[i].paraphrased_question for i in self.eval_index)
        return [n for n in QA_PROMPTS if n != "paraphrase" or has_paraphrase]

    def prompted(self, name: str) -> TokenSplit:
        """The rows under prompt attack ``name``."""
        if self.kind == "text":
            user, prefix = TEXT_PROMPTS[name]
            user = user.format(topic=self.topic)
            if prefix is None:
                context = self._ids(user, special=False)
            else:
                context = self._ids(self.template.qa(user) + prefix.format(topic=self.topic), special=True)
            return self._text_rows([context] * self.n_probes)
        user, prefix = QA_PROMPTS[name]
        if prefix and not self.template.chat:  # "Answer: Sure, here is the answer:" then " " + answer
            prefix = " " + prefix.rstrip()
        rows = []
        for i in self.eval_index:
            item = self.items[i]
            question = item.paraphrased_question if name == "paraphrase" else item.question
            text = user.format(question=item.question, paraphrased_question=question or item.question)
            rows.append(self.template.qa(text) + (prefix or ""))
        return self._qa_rows(rows)

    def in_context(self, shots: int) -> TokenSplit:
        """Rows with forget material placed before them: ``shots`` spare chunks (text) or the ``shots`` records
        nearest in the file (QA, as earlier turns of the conversation; never the question itself)."""
        if self.kind == "text":
            spare = self.train.input_ids
            if len(spare) == 0:
                raise UnlearnError(f"{self.which}: no spare chunks for in-context attack: raise relearn_tokens")
            contexts = []
            for r in range(self.n_probes):
                chunks = [spare[(r * shots + k) % len(spare)] for k in range(shots)]
                contexts.append(torch.cat(chunks).tolist())
            return self._text_rows(contexts)
        rows = []
        for i in self.eval_index:
            near = sorted((j for j in range(len(self.items)) if j != i), key=lambda j: (abs(j - i), j))[:shots]
            examples = [(self.items[j].question, self.items[j].answer) for j in sorted(near)]
            rows.append(self.template.qa(self.items[i].question, examples))
        return self._qa_rows(rows)

    # ---- row building --------------------------------------------------------------------------------------
    def _ids(self, text: str, special: bool) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special and not self.template.chat).input_ids

    def _text_rows(self, contexts: list[list[int]]) -> TokenSplit:
        rows = []
        for context, ids, special in zip(contexts, self.plain.input_ids, self.plain.special):
            # the chunk's first token is no target without a context either: keep it unscored
            marks = [True] * len(context) + [True] + special[1:].tolist()
            rows.append((list(context) + ids.tolist(), marks))
        return _pad(rows, self._pad_id)

    def _qa_rows(self, prompts: list[str]) -> TokenSplit:
        """Each evaluation row's answer tokens (exactly those it scores) after a new prompt."""
        rows = []
        for prompt, ids, special in zip(prompts, self.plain.input_ids, self.plain.special):
            p = self.tokenizer(prompt, add_special_tokens=not self.template.chat).input_ids
            answer = ids[~special].tolist()
            rows.append((p + answer, [True] * len(p) + [False] * len(answer)))
        return _pad(rows, self._pad_id)

    @property
    def _pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


def _pad(rows: list[tuple[list[int], list[bool]]], pad_id: int) -> TokenSplit:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    special = torch.ones((len(rows), width), dtype=torch.bool)
    for r, (row, marks) in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        special[r, : len(marks)] = torch.tensor(marks)
    return TokenSplit(ids, special)


def default_topic(data: DataConfig) -> str:
    if data.source in BUILTIN_TOPICS:
        return BUILTIN_TOPICS[data.source]
    stem = Path(data.source.removeprefix("hf:")).stem.replace("_", " ").replace("-", " ").strip()
    return stem or "this material"


def build_probes(
    which: str,
    data: DataConfig,
    tokenizer,
    template,
    *,
    seq_len: int,
    eval_tokens: int,
    train_tokens: int,
    seed: int,
    topic: str | None = None,
) -> Probes:
    """The evaluation rows a run with these settings reports, and a disjoint slice of ``train_tokens`` tokens."""
    topic = topic or default_topic(data)
    if data.format == "text":
        corpus = build_corpus(
            which,
            data.spec(),
            tokenizer,
            seq_len=seq_len,
            eval_tokens=eval_tokens,
            stats_tokens=train_tokens,
            seed=seed,
        )
        return Probes(which, data, "text", corpus.eval, corpus.stats, tokenizer, template, topic)
    from ..data.formats import load_qa

    items = load_qa(data.source, hf_config=data.hf_config, hf_split=data.hf_split)
    common = dict(seq_len=seq_len, seed=seed, val_tokens=0)
    corpus = build_qa_corpus(
        which, data.spec(), items, tokenizer, template, eval_tokens=eval_tokens, stats_tokens=0, **common
    )
    order = qa_order(len(items), seed)
    n_eval = len(corpus.eval.input_ids)
    spare = [items[i] for i in order[n_eval : n_eval + math.ceil(train_tokens / seq_len)]]
    train = (
        build_qa_corpus(
            which, data.spec(), spare, tokenizer, template, eval_tokens=0, stats_tokens=train_tokens, **common
        ).stats
        if spare
        else TokenSplit(corpus.eval.input_ids[:0], corpus.eval.special[:0])
    )
    return Probes(which, data, "qa", corpus.eval, train, tokenizer, template, topic, items, order[:n_eval])
