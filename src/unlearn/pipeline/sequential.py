"""Sequential requests: the earlier requests of a ``--from`` chain, re-measured before and after this one."""

from __future__ import annotations

import json
import torch
from ..config import RunConfig
from ..errors import UnlearnError
from ..eval.metrics import evaluate_split
from ..progress import Reporter
from ..pipeline.corpora import check_data_exists, eval_chunks, split_sha256
from ..pipeline.validate import coerce_config


def _earlier_request(link, tokenizer, reporter: Reporter) -> dict:
    """One earlier request: its recorded top-1 numbers and its evaluation chunks, rebuilt from its config.yaml
    (once its own files and its child's record of its manifest check out)."""
    from ..runs.ledger import MANIFEST, check_run_files, sha256_bytes

    problems = check_run_files(link.run_dir, link.manifest)
    if link.record is not None and link.record.get("manifest_sha256") != sha256_bytes(link.raw):
        problems.append(f"{link.run_dir / MANIFEST}: sha256 does not match the one its child recorded")
    if problems:
        raise UnlearnError(f"failed verification: {problems[0]}")
    past = coerce_config(link.run_dir / "config.yaml")
    try:
        metrics = json.loads((link.run_dir / "metrics.json").read_text(encoding="utf-8"))
        recorded = {w: {k: float(metrics[k][w]["top1"]) for k in ("before", "after")} for w in ("forget", "retain")}
    except (OSError, ValueError, KeyError, TypeError):
        raise UnlearnError(f"{link.run_dir / 'metrics.json'} is missing or has no before/after top1") from None
    data = link.manifest.get("data") or {}
    chunks = {}
    for which, spec in (("forget", past.forget), ("retain", past.retain)):
        check_data_exists(spec)
        with reporter.stage(f"tokenising {which} data of earlier request {link.name}"):
            chunks[which] = eval_chunks(which, spec, tokenizer, past)
        expected = (data.get(which) or {}).get("sha256_eval_tokens")
        if expected and expected != split_sha256(chunks[which]):
            raise UnlearnError(f"{which} data {spec.source} changed since that request: its evaluation chunks differ")
    return {"chunks": chunks, "recorded": recorded, "skip_k": past.skip_k}


def earlier_requests(parent: dict | None, tokenizer, reporter: Reporter) -> list[dict]:
    """The requests behind a sequential run, root first, each ready to be measured; one whose data or files are
    gone carries the reason instead (a warning, not a failure)."""
    if parent is None:
        return []
    from ..runs.ledger import walk

    out = []
    for link in reversed(walk(parent["dir"])):
        data = (link.manifest or {}).get("data") or {}
        entry = {
            "run": link.name,
            "forget_source": (data.get("forget") or {}).get("source"),
            "retain_source": (data.get("retain") or {}).get("source"),
            "metric": "top1",
        }
        item = {"entry": entry, "chunks": None, "measured": {"forget": {}, "retain": {}}}
        try:
            if link.manifest is None:
                raise UnlearnError(link.error)
            item.update(_earlier_request(link, tokenizer, reporter))
        except (UnlearnError, OSError) as exc:
            entry["error"] = " ".join(str(exc).split())
            reporter.warn(f"warning: earlier request {link.name} not measured: {entry['error']}")
        out.append(item)
    return out


def measure_earlier(items: list[dict], model, when: str, cfg: RunConfig, reporter: Reporter, own=()) -> None:
    """Next-token metrics of ``model`` on every earlier request's evaluation chunks, stored under ``when``.

    Chunks identical to one of this run's own evaluation splits take this run's measurement of the same model
    (``own``: pairs of split and metrics) instead of evaluating them again."""
    for item in items:
        for which, split in (item["chunks"] or {}).items():
            same = [m for s, m in own if item["skip_k"] == cfg.skip_k and _same_split(s, split)]
            if same:
                item["measured"][which][when] = dict(same[0])
                continue
            with reporter.task(f"{item['entry']['run']}: {which}"[-28:], split.n_tokens) as advance:
                item["measured"][which][when] = evaluate_split(
                    model, split, batch_size=cfg.batch_size, skip_k=item["skip_k"], progress=advance
                )


def _same_split(a, b) -> bool:
    return a.input_ids.shape == b.input_ids.shape and bool(
        torch.equal(a.input_ids, b.input_ids) and torch.equal(a.special, b.special)
    )


def earlier_entries(items: list[dict]) -> list[dict]:
    """``metrics.json["earlier_requests"]``: per request, top-1 as it was recorded (``original``,
    ``after_request``) and as measured now (``before``: the parent model, ``after``: this run's), plus every
    metric measured now."""
    out = []
    for item in items:
        entry = dict(item["entry"])
        if "error" not in entry:
            for which in ("forget", "retain"):
                now = item["measured"][which]
                entry[which] = {
                    "original": item["recorded"][which]["before"],
                    "after_request": item["recorded"][which]["after"],
                    "before": now["before"]["top1"],
                    "after": now["after"]["top1"],
                }
            entry["metrics"] = item["measured"]
        out.append(entry)
    return out
