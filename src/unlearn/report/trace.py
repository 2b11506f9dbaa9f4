"""The report's parametric-trace section: how much of the MLP directions most aligned with the forget data the
unlearned model still holds (``metrics.json#/parametric_trace``, see :mod:`unlearn.eval.trace`)."""

from __future__ import annotations

from .common import M, sid
from .data import Cell, Para, Run, Section, Table, num, value_cell

TRACE = "parametric_trace"
_COLUMNS = {
    "alignment_before": "alignment before",
    "alignment_after": "alignment after",
    "cosine": "cosine",
    "norm_ratio": "norm ratio",
    "projection": "projection (remaining)",
}
_SHOWN = 20  # forget-specific tokens quoted


def trace_section(run: Run) -> Section | None:
    trace = run.metrics.get(TRACE)
    if not isinstance(trace, dict) or not isinstance(trace.get("vectors"), list) or not trace["vectors"]:
        return None
    sec = Section("Parametric trace", sid(run, "trace"))
    summary = _summary(trace)
    if summary:
        sec.blocks.append(Para(summary))
    means = Table(["over the vectors", *_COLUMNS.values()], name="trace_means")
    means.add("trace.mean", [Cell("mean", run=run.index)] + [value_cell(run, M, TRACE, key) for key in _COLUMNS])
    sec.blocks.append(means)
    vectors = Table(["layer", "neuron", "promoted before", *_COLUMNS.values()], name="trace_vectors")
    for i, v in enumerate(trace["vectors"]):
        if not isinstance(v, dict):
            continue
        promotes = v.get("promotes") if isinstance(v.get("promotes"), list) else []
        cells = [value_cell(run, M, TRACE, "vectors", i, key) for key in ("layer", "neuron")]
        cells.append(Cell(", ".join(repr(t) for t in promotes if isinstance(t, str)), run=run.index, code=True))
        vectors.add(f"trace.{i}", cells + [value_cell(run, M, TRACE, "vectors", i, key) for key in _COLUMNS])
    tokens = trace.get("forget_tokens") if isinstance(trace.get("forget_tokens"), list) else []
    tokens = [t for t in tokens if isinstance(t, str)]
    vectors.caption = (
        "Each feed-forward neuron's value vector (its column of the MLP output projection) read through the final "
        "norm and the unembedding; alignment: the mean logit of the forget-specific tokens minus the mean over the "
        "vocabulary, in standard deviations. Cosine, norm ratio ‖v′‖/‖v‖ and projection ⟨v′, v⟩/‖v‖² compare the "
        "vector after unlearning (v′) with the one before (v); 0 where it was zeroed."
        + (f" Forget-specific tokens: {', '.join(repr(t) for t in tokens[:_SHOWN])}" if tokens else "")
        + (" …" if len(tokens) > _SHOWN else ".")
    )
    sec.blocks.append(vectors)
    return sec


def _summary(trace: dict) -> str | None:
    k, cosine, ratio, projection = (num(trace.get(key)) for key in ("k", "cosine", "norm_ratio", "projection"))
    if None in (k, cosine, ratio, projection):
        return None
    text = (
        f"Of the {k} MLP directions most aligned with the forget data before unlearning, {projection:.0%} remains "
        f"on average (projection onto the original direction; mean cosine {cosine:.2f}, mean norm ratio {ratio:.2f})"
    )
    before, after = num(trace.get("alignment_before")), num(trace.get("alignment_after"))
    if before is not None and after is not None:
        text += f"; their alignment with the forget tokens went from {before:.2f} to {after:.2f} standard deviations"
    if cosine > 0.95 and ratio > 0.9:
        text += ". The directions are still in the weights: the knowledge may be suppressed rather than erased"
    return text + " (ConceptVectors, Hong et al. 2024)."


def trace_cell(run: Run) -> Cell:
    """The comparison table's cell: the mean share of the concept vectors that remains."""
    return value_cell(run, M, TRACE, "projection", pct=True)
