"""The report's record sections: the audit, earlier requests (sequential unlearning) and the manifest."""

from __future__ import annotations

import json
from . import plots
from .data import (
    Cell,
    Details,
    DefList,
    Plot,
    Run,
    Section,
    Table,
    derived_cell,
    flatten,
    fmt_pct,
    get,
    num,
    text,
    value_cell,
)
from .common import A, HIGH_RECOVERY, M, MF, WARN_RECOVERY, parent_cell, plain, recovery_class, sid


def audit_section(run: Run) -> Section | None:
    audit = run.audit
    if audit is None:
        return None
    sec = Section("Audit: can the forgotten data be recovered?", sid(run, "audit"))
    metric = text(audit.get("metric")) or "top1"
    sec.blocks.append(DefList(_audit_facts(run, audit, metric)))
    attacks = audit.get("attacks")
    table, lens = _attack_table(run, attacks if isinstance(attacks, list) else [], metric)
    if table.rows:
        sec.blocks.append(table)
    sec.blocks += lens
    for key in ("settings", "timings_s"):
        if isinstance(audit.get(key), dict) and audit[key]:
            sec.blocks.append(Details(f"audit {key}", pre=json.dumps(audit[key], indent=2, default=str)))
    return sec


def _audit_facts(run: Run, audit: dict, metric: str) -> list:
    """The audited and original models, the probes, the metric and the largest recovery."""
    facts = []
    for who, label in (("model", "audited model"), ("original", "original model")):
        spec, sha = text(get(audit, who, "spec")), text(get(audit, who, "sha256"))
        if spec or sha:
            facts.append(
                (label, Cell((spec or "?") + (f" (sha256 {sha[:16]}…)" if sha else ""), run=run.index, code=True))
            )
    for which in ("forget", "retain", "control"):
        d = audit.get(which)
        if isinstance(d, dict):
            bits = [text(d.get("source")) or "?"]
            if text(d.get("format")):
                bits.append(f"format {d['format']}")
            for k in ("n_probes", "n_tokens"):
                if num(d.get(k)) is not None:
                    bits.append(f"{d[k]:,} {k[2:]}")
            facts.append((f"{which} probes", Cell(", ".join(bits), run=run.index)))
    facts.append(("metric", Cell(metric, run=run.index)))
    mr = audit.get("max_recovery")
    if isinstance(mr, dict) and num(mr.get("recovery")) is not None:
        c = value_cell(run, A, "max_recovery", "recovery", pct=True, cls=recovery_class(mr["recovery"]))
        c.text = f"{c.text} ({text(mr.get('attack')) or '?'})"
        facts.append(("max recovery", c))
    return facts


def _attack_table(run: Run, attacks: list, metric: str) -> tuple[Table, list]:
    """One row per attack (forget metric before, after unlearning, after the attack; recovery) and the logit-lens
    plots of the attacks that read every layer."""
    cols = ["attack", "variant", "before", "after unlearning", "after attack", "recovery", "retain after attack"]
    with_original = any(num(get(a, "original_attacked")) is not None for a in attacks)
    if with_original:
        cols.append("original model attacked")
    cols.append("description")
    t = Table(cols, name="audit")
    lens = []
    for i, atk in enumerate(attacks):
        if not isinstance(atk, dict):
            continue
        rec = num(atk.get("recovery"))
        rec_cell = value_cell(run, A, "attacks", i, "recovery", pct=True, cls=recovery_class(rec))
        if rec is None:
            rec_cell.text = "n/a"
        name, variant = text(atk.get("attack")) or "?", text(atk.get("variant")) or ""
        t.add(
            f"{name}:{variant}",
            [
                Cell(name, run=run.index),
                Cell(variant, run=run.index),
                value_cell(run, A, "attacks", i, "before"),
                value_cell(run, A, "attacks", i, "after_unlearning"),
                value_cell(run, A, "attacks", i, "after_attack"),
                rec_cell,
                value_cell(run, A, "attacks", i, "retain", "after_attack"),
                *([value_cell(run, A, "attacks", i, "original_attacked")] if with_original else []),
                Cell(text(atk.get("description")) or "", run=run.index),
            ],
        )
        per_layer = get(atk, "details", "per_layer")
        if isinstance(per_layer, dict) and any(isinstance(v, list) and v for v in per_layer.values()):
            series = {k: v for k, v in per_layer.items() if isinstance(v, list)}
            lens.append(
                Plot(
                    plots.logit_lens(series, get(atk, "details", "best_layer"), metric, f"{name}: {variant}"),
                    f"{name} ({variant}): forget {metric} read off every layer (1 = the first block), "
                    "unlearned vs original.",
                )
            )
    if t.rows:
        t.caption = (
            f"Forget {metric} before unlearning, after unlearning and after each attack; recovery = share of "
            f"the forgotten gap the attack wins back ((after attack − after unlearning) / (before − after "
            f"unlearning)); ≥ {fmt_pct(HIGH_RECOVERY)} is marked red, ≥ {fmt_pct(WARN_RECOVERY)} amber"
            + ("; the original model under the same attack for comparison." if with_original else ".")
        )
    return t, lens


def earlier_section(run: Run) -> Section | None:
    reqs = run.metrics.get("earlier_requests")
    if not isinstance(reqs, list) or not reqs:
        return None
    sec = Section("Earlier requests (sequential unlearning)", sid(run, "earlier"))
    cols = [
        "request",
        "corpus",
        "metric",
        "original model",
        "after that request",
        "before this run",
        "after this run",
        "Δ this run",
    ]
    t = Table(cols, name="earlier")
    for i, req in enumerate(reqs):
        if not isinstance(req, dict):
            continue
        metric = text(req.get("metric")) or "top1"
        if text(req.get("error")):  # the run could not measure this request (its data or files are gone)
            cells = [Cell(text(req.get("run")) or f"#{i + 1}", run=run.index)]
            cells.append(Cell(f"not measured: {req['error']}", run=run.index, cls="warn"))
            t.add(f"earlier.{i}.error", cells + [Cell("", run=run.index) for _ in cols[2:]])
            continue
        for which in ("forget", "retain"):
            if not isinstance(req.get(which), dict):
                continue
            src = text(req.get(f"{which}_source"))
            delta = derived_cell(
                run, "diff", (M, "earlier_requests", i, which, "after"), (M, "earlier_requests", i, which, "before")
            )
            if which == "forget" and delta.value is not None and delta.value > 0:
                delta.cls = "warn"  # this run brought back some of what an earlier request removed
            t.add(
                f"earlier.{i}.{which}",
                [
                    Cell(text(req.get("run")) or f"#{i + 1}", run=run.index),
                    Cell(which + (f" ({src})" if src else ""), run=run.index),
                    Cell(metric, run=run.index),
                    *[
                        value_cell(run, M, "earlier_requests", i, which, k)
                        for k in ("original", "after_request", "before", "after")
                    ],
                    delta,
                ],
            )
    if t.rows:
        t.caption = (
            "Each earlier request's forget and retain data: as its own run recorded them before (original "
            "model) and right after that request, and as measured on this run's model before and after this "
            "run. A forget value that rises in this run (amber) means this request undid part of an earlier one."
        )
        sec.blocks.append(t)
    return sec


def manifest_section(run: Run) -> Section | None:
    sec = Section("Manifest", sid(run, "manifest"))
    items = _manifest_facts(run)
    if items:
        sec.blocks.append(DefList(items))
    sec.blocks += _manifest_tables(run)
    if run.config_text is not None:
        sec.blocks.append(Details("resolved configuration (config.yaml)", pre=run.config_text))
    return sec


def _manifest_facts(run: Run) -> list:
    """When, which version, seed, method, model (hashes before and after) and the parent run of the chain."""
    m = run.manifest
    items = []
    for label, keys in (
        ("created", ("created",)),
        ("unlearn version", ("unlearn_version",)),
        ("seed", ("seed",)),
        ("method", ("method",)),
    ):
        v = get(m, *keys)
        if v is not None:
            items.append((label, value_cell(run, MF, *keys) if num(v) is not None else plain(run, v)))
    model = m.get("model") if isinstance(m.get("model"), dict) else {}
    for k in ("spec", "source", "dtype", "device", "family", "sha256_before", "sha256_after"):
        if text(model.get(k)) is not None:
            items.append(
                (
                    f"model {k.replace('_', ' ')}",
                    Cell(text(model[k]), run=run.index, code=k.startswith(("sha", "source"))),
                )
            )
    parent = m.get("parent")
    if isinstance(parent, dict):
        items.append(("parent run (chain link)", parent_cell(run, parent)))
        for k in ("manifest_sha256", "model_sha256"):
            if text(parent.get(k)):
                items.append((f"parent {k.replace('_', ' ')}", Cell(text(parent[k]), run=run.index, code=True)))
    elif "parent" in m:
        items.append(("parent run (chain link)", Cell("none (first request)", run=run.index)))
    return items


def _manifest_tables(run: Run) -> list:
    """The data, method facts, timings, package versions and file hashes of the manifest."""
    m = run.manifest
    blocks = []
    data = m.get("data")
    if isinstance(data, dict) and data:
        t = Table(
            ["corpus", "source", "sha256 of token ids", "segments", "eval tokens", "stats tokens", "val tokens"],
            name="data",
        )
        for which, d in data.items():
            if not isinstance(d, dict):
                continue
            t.add(
                f"data.{which}",
                [
                    Cell(which, run=run.index),
                    Cell(text(d.get("source")) or "–", run=run.index, code=True),
                    Cell(text(d.get("sha256_tokens")) or "–", run=run.index, code=True),
                    *[
                        value_cell(run, MF, "data", which, k)
                        for k in ("segments", "eval_tokens", "stats_tokens", "val_tokens")
                    ],
                ],
            )
        blocks.append(t)

    facts = m.get("method_facts")
    if isinstance(facts, dict) and facts:
        t = Table(["method fact", "value"], name="method_facts")
        for k, _ in flatten(facts):
            if k:
                t.add(
                    "fact." + ".".join(map(str, k)),
                    [Cell(".".join(map(str, k)), run=run.index), value_cell(run, MF, "method_facts", *k)],
                )
        # a method that records many facts (sae-clamp: every clamped feature's) folds them away
        blocks.append(t if len(t.rows) <= 40 else Details(f"method facts ({len(t.rows)} values)", blocks=[t]))

    timings = m.get("timings_s")
    if isinstance(timings, dict) and timings:
        t = Table(["stage", "seconds"], name="timings")
        for k, v in timings.items():
            if num(v) is not None:
                t.add(f"timing.{k}", [Cell(k, run=run.index), value_cell(run, MF, "timings_s", k)])
        blocks.append(t)

    versions = m.get("versions")
    if isinstance(versions, dict) and versions:
        blocks.append(Details("package versions", blocks=[DefList([(k, plain(run, v)) for k, v in versions.items()])]))
    for files, what, prefix in (
        (get(m, "model", "files"), "saved model files", "model/"),
        (m.get("files"), "run files", ""),
    ):
        if isinstance(files, dict) and files:
            t = Table(["file", "sha256"], name=f"{what.split()[0]}_files")
            for k, v in files.items():
                t.add(
                    f"file.{prefix}{k}",
                    [Cell(prefix + k, run=run.index, code=True), Cell(text(v) or "–", run=run.index, code=True)],
                )
            blocks.append(Details(f"{what} (sha256)", blocks=[t]))
    return blocks
