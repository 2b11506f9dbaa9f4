"""The report's figures as inline SVG strings (matplotlib, imported only when a report is drawn).

Figures are built with matplotlib's object API (``Figure``), not ``pyplot``: no GUI backend, no global state,
nothing changed for a caller who uses matplotlib themselves. Text stays text in the SVG (searchable,
selectable), and element ids are salted per figure so several SVGs can share one HTML page.
"""

from __future__ import annotations

import functools
import io
import itertools
import re

_counter = itertools.count()
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]


def _styled(draw):
    """Run a drawing function under the report's matplotlib settings (fonts are fixed when artists are made)."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib.style

        # matplotlib's defaults, whatever the caller's own style, plus a smaller font
        with matplotlib.style.context(["default", {"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8}]):
            return draw(*args, **kwargs)

    return wrapper


def _figure(width: float = 6.4, height: float = 4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig) -> str:
    """The figure as an ``<svg>`` element (no XML prolog, no metadata block with external namespaces)."""
    import matplotlib

    buf = io.StringIO()
    n = next(_counter)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"unlearn-report-{n}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.S)
    # ids unique within the page: every id and every reference to one gets this figure's prefix
    svg = re.sub(r'\bid="([^"]+)"', rf'id="fig{n}-\1"', svg)
    svg = re.sub(r'href="#([^"]+)"', rf'href="#fig{n}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#fig{n}-\1)", svg)
    return svg.replace("<svg ", '<svg role="img" ', 1)


def _style(ax, xlabel: str, ylabel: str, title: str = "") -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


@_styled
def tradeoff(series: list[dict], metric: str = "top1", budget: float | None = None) -> str:
    """Forget drop against retain drop (in %), one point per step, each series starting at (0, 0).

    ``series``: [{"label", "points": [(step, retain_drop, forget_drop, reverted)]}] with drops as fractions.
    """
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    top = 0.0
    for i, s in enumerate(series):
        color = COLORS[i % len(COLORS)]
        kept = [(0, 0.0, 0.0)] + [(st, r * 100, f * 100) for st, r, f, rev in s["points"] if not rev]
        xs, ys = [p[1] for p in kept], [p[2] for p in kept]
        ax.plot(xs, ys, "-o", color=color, markersize=4, linewidth=1.5, label=s["label"])
        top = max([top, *xs, *ys])
        if len(series) == 1:  # step numbers; steps that land on the same point share one label ("2-4")
            groups: list[list] = []
            for st, x, y in kept[1:]:
                if groups and (groups[-1][1], groups[-1][2]) == (x, y):
                    groups[-1][3] = st
                else:
                    groups.append([st, x, y, None])
            for first, x, y, last in groups:
                label = f"{first}-{last}" if last is not None else str(first)
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8, color="#444")
        for st, r, f, rev in s["points"]:
            if rev:
                ax.plot([r * 100], [f * 100], "x", color="#d62728", markersize=8, mew=2)
                ax.annotate(
                    f"{st} (reverted)",
                    (r * 100, f * 100),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize=8,
                    color="#d62728",
                )
                top = max(top, r * 100, f * 100)
    lim = max(top * 1.08, 1.0)
    ax.plot([0, lim], [0, lim], "--", color="#aaaaaa", linewidth=0.8, label="equal drop")
    if budget is not None:
        ax.axvline(budget * 100, color="#ff7f0e", linestyle=":", linewidth=1.2, label="retain budget (validation)")
    ax.set_xlim(left=min(0.0, ax.get_xlim()[0]))
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    _style(ax, f"retain {metric} drop (%)", f"forget {metric} drop (%)")
    ax.legend(loc="best", fontsize=8, frameon=False)
    return _svg(fig)


@_styled
def training(
    log: list[dict], validation: list[dict] | None = None, metric: str = "top1", budget: float | None = None
) -> str:
    """Loss terms per optimizer step; beside it the validation drops (%) per check when there are any.

    ``log``: [{"step", term: value}]; ``validation``: [{"step", "forget", "retain"}] with drops as fractions.
    """
    fig = _figure(9.6 if validation else 6.4, 3.8)
    axes = fig.subplots(1, 2 if validation else 1, squeeze=False)[0]
    ax = axes[0]
    terms = [k for k in log[0] if k not in ("step", "lr")] if log else []
    for i, term in enumerate(terms):
        pts = [(e.get("step"), e.get(term)) for e in log]
        pts = [(s, v) for s, v in pts if _isnum(s) and _isnum(v)]
        if pts:
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                color=COLORS[i % len(COLORS)],
                linewidth=1.4,
                label=term,
                marker="o" if len(pts) < 30 else None,
                markersize=3,
            )
    from matplotlib.ticker import MaxNLocator

    _style(ax, "optimizer step", "loss", "training loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="best", fontsize=8, frameon=False)
    if validation:
        ax = axes[1]
        steps = [v["step"] for v in validation]
        for i, which in enumerate(("forget", "retain")):
            pts = [(s, v[which] * 100) for s, v in zip(steps, validation, strict=True) if _isnum(v.get(which))]
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                "-o",
                color=COLORS[i],
                markersize=4,
                linewidth=1.4,
                label=f"{which} {metric} drop",
            )
        if budget is not None:
            ax.axhline(budget * 100, color="#ff7f0e", linestyle=":", linewidth=1.2, label="retain budget")
        _style(ax, "optimizer step", "relative drop (%)", "validation checks")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="best", fontsize=8, frameon=False)
    return _svg(fig)


@_styled
def pruned_per_layer(counts: dict[str, list]) -> str:
    """Grouped bars: pruned neurons per layer for each kind (``ff``, ``attn``)."""
    import numpy as np

    labels = {"ff": "feed-forward", "attn": "attention"}
    kinds = [k for k, v in counts.items() if v]
    n = max(len(counts[k]) for k in kinds)
    fig = _figure(max(6.4, min(12.0, 2.0 + 0.3 * n)), 3.4)
    ax = fig.add_subplot()
    width = 0.8 / len(kinds)
    x = np.arange(n)
    for i, kind in enumerate(kinds):
        vals = [v if _isnum(v) else 0 for v in counts[kind]] + [0] * (n - len(counts[kind]))
        ax.bar(
            x + (i - (len(kinds) - 1) / 2) * width,
            vals,
            width,
            color=COLORS[i % len(COLORS)],
            label=labels.get(kind, kind),
        )
    ax.set_xticks(x)
    ax.set_xticklabels([str(i) for i in range(n)], fontsize=7 if n > 24 else 8)
    ax.set_xlim(-0.6, n - 0.4)
    _style(ax, "layer", "pruned neurons")
    ax.legend(loc="best", fontsize=8, frameon=False)
    return _svg(fig)


@_styled
def logit_lens(per_layer: dict[str, list], best_layer=None, metric: str = "top1", title: str = "") -> str:
    """Forget metric read off every layer (numbered from 1, like the audit's ``best_layer``): one line per model."""
    fig = _figure(6.4, 3.2)
    ax = fig.add_subplot()
    for i, (name, vals) in enumerate(per_layer.items()):
        pts = [(j, v) for j, v in enumerate(vals, 1) if _isnum(v)]
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            "-o",
            color=COLORS[i % len(COLORS)],
            markersize=3,
            linewidth=1.4,
            label=name,
        )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if _isnum(best_layer):
        ax.axvline(best_layer, color="#7f7f7f", linestyle=":", linewidth=1.0, label=f"best layer {best_layer}")
    _style(ax, "layer", f"forget {metric}", title)
    ax.legend(loc="best", fontsize=8, frameon=False)
    return _svg(fig)


def _isnum(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
