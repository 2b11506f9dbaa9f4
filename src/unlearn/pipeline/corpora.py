"""Tokenised corpora of a run: forget, retain and utility chunks, QA corpora, held-out evaluation files, and
the checks that fail fast on missing data before a model is loaded."""

from __future__ import annotations

import dataclasses
from pathlib import Path
import torch
from ..config import DataConfig, RunConfig
from ..data.chunking import Corpus, build_corpus, tokens_sha256
from ..data.sources import BUILTIN, iter_documents
from ..models.load import LoadedModel
from ..progress import Reporter


def run_corpora(loaded: LoadedModel, cfg: RunConfig, reporter: Reporter) -> tuple[Corpus, Corpus, Corpus | None]:
    out = []
    for which, data in (("forget", cfg.forget), ("retain", cfg.retain)):
        with reporter.stage(f"tokenising {which} corpus {data.source}"):
            out.append(corpus_for(which, data, loaded.tokenizer, cfg))
    utility = None
    if cfg.utility is not None:  # evaluation chunks only: no step of the method sees this text
        with reporter.stage(f"tokenising utility corpus {cfg.utility.source}"):
            utility = build_corpus(
                "utility",
                cfg.utility.spec(),
                loaded.tokenizer,
                seq_len=cfg.seq_len,
                eval_tokens=cfg.eval_tokens,
                stats_tokens=0,
                seed=cfg.seed,
            )
    return out[0], out[1], utility


def corpus_for(which: str, data: DataConfig, tokenizer, cfg: RunConfig, stats_at_most: bool = False) -> Corpus:
    if data.format == "qa":
        return qa_corpus_for(which, data, tokenizer, cfg)
    corpus = build_corpus(
        which,
        data.spec(),
        tokenizer,
        seq_len=cfg.seq_len,
        eval_tokens=0 if data.eval_source else cfg.eval_tokens,
        stats_tokens=cfg.stats_tokens,
        seed=cfg.seed,
        val_tokens=cfg.val_tokens,
        stats_at_most=stats_at_most,
    )
    if data.eval_source:  # report on held-out text: other files than the method sees
        held = eval_chunks(which, data, tokenizer, cfg)
        seen = [held, corpus.stats] + ([corpus.val] if corpus.val is not None else [])
        both = torch.cat([split.input_ids for split in seen])
        corpus = dataclasses.replace(corpus, eval=held, sha256=tokens_sha256(both))
    return corpus


def qa_corpus_for(which: str, data: DataConfig, tokenizer, cfg) -> Corpus:
    from ..data.chunking import build_qa_corpus
    from ..data.formats import load_qa
    from ..eval.scoring import Template

    return build_qa_corpus(
        which,
        data.spec(),
        load_qa(data.source, hf_config=data.hf_config, hf_split=data.hf_split),
        tokenizer,
        Template(tokenizer, "auto"),
        seq_len=cfg.seq_len,
        eval_tokens=cfg.eval_tokens,
        stats_tokens=cfg.stats_tokens,
        seed=cfg.seed,
        val_tokens=cfg.val_tokens,
    )


def eval_chunks(which: str, data: DataConfig, tokenizer, cfg: RunConfig):
    """The evaluation split a run with ``cfg`` measured on ``data`` (the first chunks; nothing else tokenised)."""
    if data.format == "qa":
        return qa_corpus_for(which, data, tokenizer, cfg.model_copy(update={"stats_tokens": 0, "val_tokens": 0})).eval
    spec = data.eval_spec() or data.spec()
    corpus = build_corpus(
        which, spec, tokenizer, seq_len=cfg.seq_len, eval_tokens=cfg.eval_tokens, stats_tokens=0, seed=cfg.seed
    )
    return corpus.eval


def check_data_exists(data: DataConfig) -> None:
    """Fail fast (before loading a model) on a missing local file, folder or glob, or malformed QA records."""
    if data.eval_source and data.eval_source not in BUILTIN:
        next(iter_documents(data.eval_spec()), None)
    spec = data.spec()
    if spec.source in BUILTIN or spec.source.startswith("hf:"):
        return
    if data.format == "qa":
        from ..data.formats import load_qa

        load_qa(spec.source)
        return
    next(iter_documents(spec), None)


def detect_format(source: str) -> str:
    """``qa`` when the first record of a structured file has question and answer fields, else ``text``."""
    from ..data.sources import STRUCTURED, iter_records

    if source in BUILTIN or source.startswith("hf:") or Path(source).suffix.lower() not in STRUCTURED:
        return "text"
    first = next(iter_records(source), None)
    return "qa" if first and {"question", "answer"} <= set(first[1]) else "text"


def split_sha256(split) -> str:
    return tokens_sha256(split.input_ids)


def data_record(cfg: RunConfig, c) -> dict:
    """What a manifest records of one corpus of a run: its source, the sha256 of its tokens, its split sizes."""
    return {
        "source": c.spec.describe(),
        "eval_source": getattr(cfg, c.name).eval_source,
        "sha256_tokens": c.sha256,
        "sha256_eval_tokens": split_sha256(c.eval),
        "segments": c.n_segments,
        "eval_tokens": c.eval.n_tokens,
        "stats_tokens": c.stats.n_tokens,
        "val_tokens": c.val.n_tokens if c.val is not None else 0,
        # evaluated on held-out chunks of the very text the method used (its own distribution)
        "eval_on_method_text": c.name != "utility" and not getattr(cfg, c.name).eval_source,
    }
