"""Build the report document (sections, tables, figures) from run folders; html.py and markdown.py render it.

Every section appears only when its data exists, and missing or oddly typed keys are skipped, never fatal: a
report of a run folder written by an older or newer version still renders what it can.
"""

from __future__ import annotations

import time

from . import plots
from .common import A, M, MF, pareto_labels, parent_cell, plain, recovery_class, sid
from .records import audit_section, earlier_section, manifest_section
from .trace import trace_cell, trace_section
from .data import (
    Cell,
    Details,
    Document,
    Para,
    Plot,
    Run,
    RunPart,
    Section,
    Table,
    derived_cell,
    flatten,
    control_run,
    get,
    num,
    text,
    value_cell,
)

METRIC_ORDER = ("top1", "top10", "skip50_top1", "skip50_top10", "loss", "perplexity")


def build(runs: list[Run]) -> Document:
    parts = [_run_part(r) for r in runs]
    comparison = _comparison(runs) if len(runs) > 1 else []
    title = f"unlearn report: {runs[0].name}" if len(runs) == 1 else f"unlearn report: {len(runs)} runs"
    return Document(title, runs, comparison, parts, time.strftime("%Y-%m-%d %H:%M:%S %z"))


# ----------------------------------------------------------------------------------------------------------------
# one run


def _run_part(run: Run) -> RunPart:
    sections = [_problems(run)] if run.problems else []
    makers = (_metrics, _tradeoff, _training, _pruned, trace_section, _suites, audit_section, earlier_section)
    for make in (*makers, manifest_section):
        section = make(run)
        if section is not None and section.blocks:
            sections.append(section)
    return RunPart(run, sections, _header(run))


def _problems(run: Run) -> Section:
    """The malformed values of a report rendered without verification: the reader sees them before any number."""
    sec = Section("Problems in this run's records", sid(run, "problems"))
    sec.blocks.append(Para("The values below are malformed: the figures that use them cannot be trusted.", cls="warn"))
    t = Table(["file and value", "problem"], name="problems")
    for i, p in enumerate(run.problems):
        where, _, what = p.rpartition(": ")
        t.add(f"problem.{i}", [Cell(where, run=run.index, code=True), Cell(what, run=run.index, cls="warn")])
    sec.blocks.append(t)
    return sec


def _header(run: Run) -> list[tuple[str, Cell]]:
    m = run.manifest
    items = [
        ("run folder", Cell(str(run.path), run=run.index, code=True)),
        ("method", plain(run, run.method)),
        ("model", Cell(text(get(m, "model", "spec")) or text(run.config.get("model")) or "–", run=run.index)),
        ("created", plain(run, m.get("created"))),
        ("stop reason", plain(run, m.get("stop_reason") or run.metrics.get("stop_reason"))),
    ]
    for which in ("forget", "retain", "utility"):
        source = text(get(m, "data", which, "source")) or text(get(run.config, which, "source"))
        fmt = text(get(run.config, which, "format"))
        if source is not None:
            shown = source + (f" ({fmt})" if fmt and fmt != "text" else "")
            if which == "retain" and get(m, "data", which, "eval_on_method_text") is True:
                # a retain metric on the method's own distribution says little about English at large
                shown += " — measured on held-out chunks of the text the method itself used (its own distribution)"
            elif which == "utility":
                shown += " — general text that no step of the method used"
            items.append((f"{which} data", Cell(shown, run=run.index, code=True)))
    parent = m.get("parent")
    if isinstance(parent, dict):
        items.append(("parent run", parent_cell(run, parent)))
    return items


def _corpora(before: dict) -> list[str]:
    names = [k for k in ("forget", "retain", "utility") if isinstance(before.get(k), dict)]
    return names + [k for k, v in before.items() if isinstance(v, dict) and k not in names and not k.endswith("_drop")]


def _metric_names(d: dict) -> list[str]:
    known = [k for k in METRIC_ORDER if num(d.get(k)) is not None]
    return known + [k for k, v in d.items() if k not in known and k != "n_tokens" and num(v) is not None]


def _metrics(run: Run) -> Section | None:
    before, after = run.metrics.get("before"), run.metrics.get("after")
    if not isinstance(before, dict):
        return None
    sec = Section("Metrics before and after", sid(run, "metrics"))
    t = Table(["corpus", "metric", "before", "after", "Δ (after − before)", "relative change"], name="metrics")
    tokens = []
    for which in _corpora(before):
        for metric in _metric_names(before[which]):
            b = ("metrics.json", "before", which, metric)
            a = ("metrics.json", "after", which, metric)
            drop = num(get(after, f"{which}_drop", metric))
            if not num(get(before, which, metric)):  # 0: no relative change
                rel = Cell("–", run=run.index, cls="num")
            elif drop is not None:  # the run's own relative drop, shown as a signed change
                rel = derived_cell(run, "neg", (M, "after", f"{which}_drop", metric), pct=True, signed=True)
            else:
                rel = derived_cell(run, "relchange", a, b, pct=True, signed=True)
            t.add(
                f"{which}.{metric}",
                [
                    Cell(which, run=run.index),
                    Cell(metric, run=run.index),
                    value_cell(run, *b),
                    value_cell(run, *a),
                    derived_cell(run, "diff", a, b),
                    rel,
                ],
            )
        if num(get(before, which, "n_tokens")) is not None:
            tokens.append(f"{which} {get(before, which, 'n_tokens'):,}")
    sec.blocks.append(t)
    caption = "Held-out evaluation chunks"
    if tokens:
        caption += " (" + ", ".join(tokens) + " scored tokens)"
    sec.blocks.append(
        Para(
            caption + ". Relative change = (after − before) / before; for accuracies it is minus the "
            "run's relative drop."
        )
    )
    return sec


def _steps(run: Run) -> list[tuple[int, dict]]:
    """(index in metrics.json's ``steps``, step) of every well-formed step."""
    steps = run.metrics.get("steps")
    return [(i, s) for i, s in enumerate(steps) if isinstance(s, dict)] if isinstance(steps, list) else []


def _budget(run: Run) -> tuple[str, float | None]:
    stop = run.config.get("stop") if isinstance(run.config.get("stop"), dict) else {}
    metric = stop.get("metric") if isinstance(stop.get("metric"), str) else "top1"
    return metric, num(stop.get("max_retain_drop"))


def tradeoff_points(run: Run, metric: str = "top1") -> list[tuple]:
    """(step, retain drop, forget drop, reverted) of every step with held-out drops, and a last point labelled
    "healed" for the final model of a run that healed after its steps (prune-then-heal)."""
    pts = []
    for i, s in _steps(run):
        f, r = num(get(s, "forget_drop", metric)), num(get(s, "retain_drop", metric))
        if f is not None and r is not None:
            pts.append((s.get("step", i + 1), r, f, bool(s.get("reverted"))))
    if pts and isinstance(get(run.manifest, "method_facts", "before_heal"), dict):
        f, r = (
            num(get(run.metrics, "after", "forget_drop", metric)),
            num(get(run.metrics, "after", "retain_drop", metric)),
        )
        if f is not None and r is not None:
            pts.append(("healed", r, f, False))
    return pts


def _tradeoff(run: Run) -> Section | None:
    steps = _steps(run)
    if not steps:
        return None
    pts = tradeoff_points(run)
    metric, budget = _budget(run)
    sec = Section("Trade-off per step", sid(run, "tradeoff"))
    if pts:
        series, note = [{"label": run.name, "points": pts}], ""
        control = control_run(run)
        if control is not None:
            series.append({"label": f"random control ({control.name})", "points": tradeoff_points(control)})
            note = " The random control prunes as many neurons per step, chosen at random."
        sec.blocks.append(
            Plot(
                plots.tradeoff(series, budget=budget),
                "Relative top-1 drop of forget against retain after each step (held-out chunks), "
                "from (0, 0) = the original model. Up and to the left is better." + note,
            )
        )
    has_pruned = any(isinstance(s.get("pruned_total"), dict) for _, s in steps)
    has_val = any(isinstance(s.get("validation"), dict) for _, s in steps)
    has_reverted = any(s.get("reverted") for _, s in steps)
    cols = ["step"]
    if has_pruned:
        cols += ["pruned FF (total)", "pruned attention (total)"]
    cols += ["forget top1", "retain top1", "forget top1 drop", "retain top1 drop"]
    if has_val:
        cols += [f"validation forget {metric} drop", f"validation retain {metric} drop"]
    if has_reverted:
        cols.append("note")
    t = Table(cols, name="steps")
    for i, s in steps:
        cells = [value_cell(run, M, "steps", i, "step")]
        if has_pruned:
            cells += [value_cell(run, M, "steps", i, "pruned_total", k) for k in ("ff", "attn")]
        cells += [value_cell(run, M, "steps", i, w, "top1") for w in ("forget", "retain")]
        cells += [value_cell(run, M, "steps", i, f"{w}_drop", "top1", pct=True) for w in ("forget", "retain")]
        if has_val:
            cells += [
                value_cell(run, M, "steps", i, "validation", f"{w}_drop", metric, pct=True)
                for w in ("forget", "retain")
            ]
        if has_reverted:
            reverted = bool(s.get("reverted"))
            cells.append(Cell("reverted (over budget)" if reverted else "", run=run.index, cls="warn" * reverted))
        t.add(f"step.{s.get('step', i + 1)}", cells)
    sec.blocks.append(t)
    return sec


def _training(run: Run) -> Section | None:
    log = run.metrics.get("train_log")
    if not isinstance(log, list) or not log or not all(isinstance(e, dict) for e in log):
        return None
    metric, budget = _budget(run)
    validation = []
    for _, s in _steps(run):
        f = num(get(s, "validation", "forget_drop", metric))
        r = num(get(s, "validation", "retain_drop", metric))
        if num(s.get("step")) is not None and (f is not None or r is not None):
            validation.append({"step": s["step"], "forget": f, "retain": r})
    sec = Section("Training", sid(run, "training"))
    caption = "Training loss per optimizer step"
    if validation:
        caption += f"; right: relative {metric} drops on the validation chunks at each budget check"
    sec.blocks.append(Plot(plots.training(log, validation or None, metric, budget), caption + "."))
    terms = [k for k in log[0] if k != "step" and num(log[0][k]) is not None]
    t = Table(["term", "first step", "last step"], name="train_log")
    last = len(log) - 1
    for term in terms:
        t.add(
            f"train.{term}",
            [
                Cell(term, run=run.index),
                value_cell(run, M, "train_log", 0, term),
                value_cell(run, M, "train_log", last, term),
            ],
        )
    t.caption = f"{len(log)} optimizer steps"
    sec.blocks.append(t)
    return sec


def _pruned(run: Run) -> Section | None:
    counts = run.manifest.get("pruned_neurons_per_layer")
    if not isinstance(counts, dict):
        return None
    counts = {k: v for k, v in counts.items() if isinstance(v, list) and any(num(x) for x in v)}
    if not counts:
        return None
    sec = Section("Pruned neurons per layer", sid(run, "pruned"))
    sec.blocks.append(
        Plot(
            plots.pruned_per_layer(counts),
            "Neurons pruned in each layer (feed-forward: inputs of "
            "the MLP output projection; attention: inputs of the "
            "attention output projection).",
        )
    )
    total = Table(["kind", "pruned", "of layers"], name="pruned_total")
    for kind, v in counts.items():
        total.add(
            f"pruned.{kind}",
            [Cell(kind, run=run.index), value_cell(run, MF, "pruned_total", kind), Cell(str(len(v)), run=run.index)],
        )
    sec.blocks.append(total)
    per_layer = Table(["layer", *counts], name="pruned_per_layer")
    for layer in range(max(len(v) for v in counts.values())):
        per_layer.add(
            f"layer.{layer}",
            [Cell(str(layer), run=run.index)]
            + [value_cell(run, MF, "pruned_neurons_per_layer", kind, layer) for kind in counts],
        )
    sec.blocks.append(Details("per-layer counts", blocks=[per_layer]))
    sec.blocks += _promoted(run)
    return sec


def _promoted(run: Run, shown: int = 8) -> list:
    """What the pruned feed-forward neurons promote: per layer, the tokens most often among their neurons' top
    tokens (read through the unembedding), and the same over all layers."""
    from collections import Counter

    layers = get(run.pruned, "promotes", "ff")
    if not isinstance(layers, dict) or not layers:
        return []
    overall, rows = Counter(), []
    for layer, neurons in sorted(layers.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0):
        if not isinstance(neurons, dict):
            continue
        counts = Counter(
            t
            for tokens in neurons.values()
            if isinstance(tokens, list)
            for t in tokens
            if isinstance(t, str) and t.strip() and "\ufffd" not in t  # no blanks or partial UTF-8 bytes
        )
        overall.update(counts)
        rows.append((str(layer), len(neurons), counts))
    if not rows:
        return []
    quote = lambda tokens: ", ".join(repr(t) for t, _ in tokens.most_common(shown))  # noqa: E731
    t = Table(["layer", "pruned feed-forward neurons", "tokens they promote most often"], name="promoted")
    for layer, n, counts in rows:
        t.add(
            f"promoted.{layer}",
            [Cell(layer, run=run.index), Cell(str(n), run=run.index), Cell(quote(counts), run=run.index, code=True)],
        )
    t.caption = (
        "Each pruned neuron's output weights read through the final norm and the unembedding (as the logit lens "
        "reads a hidden state): its 10 most promoted tokens; per layer, the tokens most often among them (blank "
        "tokens and partial UTF-8 bytes left out)."
    )
    summary = Para(f"What was pruned: these neurons promote {quote(overall)}.")
    return [summary, Details("tokens the pruned neurons promote, per layer", blocks=[t])]


def _suites(run: Run) -> Section | None:
    suites = run.metrics.get("suites")
    if not isinstance(suites, dict):
        return None
    before, after = suites.get("before"), suites.get("after")
    before = before if isinstance(before, dict) else {}
    after = after if isinstance(after, dict) else {}
    sec = Section("Evaluation suites", sid(run, "suites"))
    for suite in list(after) + [s for s in before if s not in after]:
        keys = [k for k, _ in flatten(after.get(suite, {}))]
        keys += [k for k, _ in flatten(before.get(suite, {})) if k not in keys]
        t = Table(["metric", "before", "after", "Δ (after − before)"], name=f"suite:{suite}")
        t.caption = f"{suite} (eval/before/{suite}.json → eval/{suite}.json)"
        for k in keys:
            if not k:
                continue
            b, a = (M, "suites", "before", suite, *k), (M, "suites", "after", suite, *k)
            t.add(
                f"{suite}." + ".".join(map(str, k)),
                [
                    Cell(".".join(map(str, k)), run=run.index),
                    value_cell(run, *b),
                    value_cell(run, *a),
                    derived_cell(run, "diff", a, b),
                ],
            )
        if t.rows:
            sec.blocks.append(t)
    return sec


# ----------------------------------------------------------------------------------------------------------------
# several runs


def _max_recovery_cell(run: Run) -> Cell:
    audit = run.audit
    if audit is None:
        return Cell("–", run=run.index)
    mr = audit.get("max_recovery")
    if isinstance(mr, dict) and num(mr.get("recovery")) is not None:
        c = value_cell(run, A, "max_recovery", "recovery", pct=True, cls=recovery_class(mr["recovery"]))
        c.text += f" ({text(mr.get('attack')) or '?'})"
        return c
    best = None  # no summary: the attack with the highest recovery
    for i, atk in enumerate(audit.get("attacks") if isinstance(audit.get("attacks"), list) else []):
        r = num(get(atk, "recovery"))
        if r is not None and (best is None or r > best[1]):
            best = (i, r)
    if best is None:
        return Cell("–", run=run.index)
    c = value_cell(run, A, "attacks", best[0], "recovery", pct=True, cls=recovery_class(best[1]))
    name, variant = text(get(audit, "attacks", best[0], "attack")), text(get(audit, "attacks", best[0], "variant"))
    c.text += f" ({name or '?'}:{variant or ''})"
    return c


def _drop_cell(run: Run, which: str) -> Cell:
    if num(get(run.metrics, "after", f"{which}_drop", "top1")) is not None:
        return value_cell(run, M, "after", f"{which}_drop", "top1", pct=True)
    if not num(get(run.metrics, "before", which, "top1")):
        return Cell("–", run=run.index)
    return derived_cell(run, "drop", (M, "after", which, "top1"), (M, "before", which, "top1"), pct=True)


def _comparison(runs: list[Run]) -> list[Section]:
    cols = ["run", "method", "forget top1 before", "forget top1 after", "forget top1 drop"]
    cols += ["retain top1 before", "retain top1 after", "retain top1 drop", "pruned FF", "pruned attention"]
    cols += ["trace remaining", "Pareto front"]
    fronts = pareto_labels(runs)
    audited = any(r.audit is not None for r in runs)
    if audited:
        cols.append("max audit recovery")
    t = Table(cols, name="comparison")
    for i, run in enumerate(runs):
        cells = [Cell(run.name, run=run.index), Cell(run.method, run=run.index)]
        for which in ("forget", "retain"):
            cells += [
                value_cell(run, M, "before", which, "top1"),
                value_cell(run, M, "after", which, "top1"),
                _drop_cell(run, which),
            ]
        cells += [value_cell(run, MF, "pruned_total", k) for k in ("ff", "attn")] + [trace_cell(run)]
        cells.append(Cell(fronts[i], run=run.index))
        if audited:
            cells.append(_max_recovery_cell(run))
        t.add(f"run.{run.index}", cells)
    t.caption = (
        "Held-out top-1 accuracy; drop = (before − after) / before. Pareto front: no other run here forgets at least "
        "as much with at most as much retain damage (top-1, or skip50 top-1) and does better on one of the two. "
        "Trace remaining: the mean share of the MLP directions most aligned with the forget data that the model "
        "still holds (its parametric trace section)."
    )
    sec = Section("Comparison", "comparison", [t], level=2)
    series = [{"label": r.name, "points": tradeoff_points(r)} for r in runs]
    series = [s for s in series if s["points"]]
    if series:
        sec.blocks.append(
            Plot(
                plots.tradeoff(series),
                "Trade-off curves of all runs: forget against retain top-1 drop after each step, from (0, 0).",
            )
        )
    return [sec]
