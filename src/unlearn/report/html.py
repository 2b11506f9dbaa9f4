"""``unlearn report``: a self-contained HTML page (figures inline as SVG, no scripts, no external resources) and a
Markdown summary of one or several run folders.

Every number in a table carries ``data-value`` (its full-precision JSON value), ``data-src`` (a JSON list of
pointers such as ``metrics.json#/after/forget/top1`` into the run folder's files), ``data-op`` for derived
values (``diff`` = a − b, ``relchange`` = (a − b) / b, ``drop`` = (b − a) / b, ``neg`` = −a) and ``data-run``
(the index of its run; each run's ``<article>`` has ``data-run-dir``). Table rows carry ``data-key``.
``bench/report_screenshot.py`` renders a report in headless Chromium and recomputes every such number.
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path

from ..version import __version__
from ..errors import UnlearnError
from .data import Cell, Details, DefList, Document, Para, Plot, Section, Table, load_run

CSS = """
:root { --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --head: #f6f8fa; --high: #ffd7d5; --warn: #fff1c2; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg);
       margin: 0 auto; padding: 16px 28px 40px; max-width: 1200px; }
h1 { font-size: 1.6em; margin: 0.4em 0 0.2em; }
h2 { font-size: 1.35em; margin: 1.6em 0 0.5em; padding-bottom: 0.2em; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.1em; margin: 1.4em 0 0.5em; }
nav ul { margin: 0.3em 0; padding-left: 1.2em; }
nav li { margin: 0.1em 0; }
.muted, caption, figcaption, .note { color: var(--muted); font-size: 0.92em; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0.6em 0; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.scroll { overflow-x: auto; margin: 0.6em 0 1em; }
table { border-collapse: collapse; font-size: 0.95em; }
caption { caption-side: bottom; text-align: left; padding-top: 4px; max-width: 900px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; vertical-align: top; }
thead th { background: var(--head); text-align: left; }
table[data-table="comparison"] td { white-space: nowrap; }
table[data-table="audit"] td:nth-child(-n+2), table[data-table="earlier"] td:first-child { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.high { background: var(--high); font-weight: 600; }
td.warn, p.warn { background: var(--warn); }
code { font: 0.9em ui-monospace, "DejaVu Sans Mono", monospace; overflow-wrap: anywhere; }
pre { background: var(--head); border: 1px solid var(--line); padding: 8px 10px; overflow-x: auto;
      font: 0.85em/1.35 ui-monospace, "DejaVu Sans Mono", monospace; }
figure { margin: 0.8em 0 1.2em; }
figure svg { max-width: 100%; height: auto; display: block; }
details { margin: 0.5em 0; }
summary { cursor: pointer; color: var(--muted); }
article.run { margin-top: 1.5em; }
footer { margin-top: 3em; color: var(--muted); font-size: 0.85em; }
"""


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def _cell(c: Cell, tag: str = "td") -> str:
    attrs = []
    classes = [k for k in c.cls.split() if k]
    if c.value is not None and "num" not in classes:
        classes.insert(0, "num")
        attrs.append(f'data-value="{_e(repr(c.value))}"')
        attrs.append(f'data-src="{_e(json.dumps(list(c.src)))}"')
        if c.op:
            attrs.append(f'data-op="{_e(c.op)}"')
        if c.run is not None:
            attrs.append(f'data-run="{c.run}"')
    if classes:
        attrs.insert(0, f'class="{_e(" ".join(classes))}"')
    body = f"<code>{_e(c.text)}</code>" if c.code else _e(c.text)
    return f"<{tag}{' ' if attrs else ''}{' '.join(attrs)}>{body}</{tag}>"


def _table(t: Table, run: int | None) -> str:
    head = "".join(f'<th scope="col">{_e(c)}</th>' for c in t.columns)
    rows = []
    for key, cells in t.rows:
        rows.append(f'<tr data-key="{_e(key)}">' + "".join(_cell(c) for c in cells) + "</tr>")
    run_attr = f' data-run="{run}"' if run is not None else ""
    caption = f"<caption>{_e(t.caption)}</caption>" if t.caption else ""
    return (
        f'<div class="scroll"><table data-table="{_e(t.name)}"{run_attr}>{caption}<thead><tr>{head}</tr></thead>'
        f"<tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>"
    )


def _deflist(d: DefList) -> str:
    items = "".join(f"<dt>{_e(k)}</dt>{_cell(c, 'dd')}" for k, c in d.items)
    return f'<dl class="facts">{items}</dl>'


def _blocks(blocks: list, run: int | None) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Table):
            out.append(_table(b, run))
        elif isinstance(b, Plot):
            out.append(f'<figure class="plot">{b.svg}<figcaption>{_e(b.caption)}</figcaption></figure>')
        elif isinstance(b, Para):
            out.append(f'<p class="{_e(b.cls or "note")}">{_e(b.text)}</p>')
        elif isinstance(b, DefList):
            out.append(_deflist(b))
        elif isinstance(b, Details):
            inner = f"<pre>{_e(b.pre)}</pre>" if b.pre is not None else ""
            out.append(f"<details><summary>{_e(b.summary)}</summary>{inner}{_blocks(b.blocks, run)}</details>")
    return "\n".join(out)


def _section(s: Section, run: int | None) -> str:
    h = f"h{s.level}"
    return f'<section id="{_e(s.id)}">\n<{h}>{_e(s.title)}</{h}>\n{_blocks(s.blocks, run)}\n</section>'


def render_html(doc: Document) -> str:
    """The report page as one string (UTF-8, no scripts, no external resources)."""
    nav = []
    for s in doc.comparison:
        nav.append(f'<li><a href="#{_e(s.id)}">{_e(s.title)}</a></li>')
    for part in doc.parts:
        links = ", ".join(f'<a href="#{_e(s.id)}">{_e(s.title.split(":")[0])}</a>' for s in part.sections)
        nav.append(f'<li><a href="#run{part.run.index}">{_e(part.run.name)}</a>: {links}</li>')
    body = [
        f"<header>\n<h1>{_e(doc.title)}</h1>",
        f'<p class="muted">Generated {_e(doc.generated)} by unlearn {_e(__version__)}.</p>',
        f"<nav><ul>{''.join(nav)}</ul></nav>\n</header>",
        "<main>",
    ]
    body += [_section(s, None) for s in doc.comparison]
    for part in doc.parts:
        r = part.run
        body.append(
            f'<article class="run" id="run{r.index}" data-run="{r.index}" data-run-dir="{_e(r.path.resolve())}">'
        )
        body.append(f"<h2>{_e(r.name)}</h2>")
        body.append(_deflist(DefList(part.summary)))
        body += [_section(s, r.index) for s in part.sections]
        body.append("</article>")
    body.append("</main>")
    body.append(
        "<footer>Numbers in tables carry their exact JSON value in <code>data-value</code> and its source "
        "in <code>data-src</code>; figures are inline SVG. Markdown version: report.md.</footer>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="unlearn {_e(__version__)}">\n'
        f"<title>{_e(doc.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


# ----------------------------------------------------------------------------------------------------------------
# the API


def _default_out() -> Path:
    base = Path("reports") / time.strftime("%Y%m%d-%H%M%S")
    out, n = base, 2
    while out.exists():
        out = base.with_name(f"{base.name}-{n}")
        n += 1
    return out


def _write_files(out_dir: Path, files: dict[str, str]) -> dict[str, Path]:
    """Write every file to a temporary name first, then move them all into place (no half-written report)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UnlearnError(f"output folder {out_dir} is a file: choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnlearnError(f"cannot create output folder {out_dir}: {exc.strerror}") from exc
    tmps = {}
    try:
        for name, content in files.items():
            tmp = out_dir / f".{name}.{os.getpid()}.tmp"
            tmps[name] = tmp
            with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(content)
        for name, tmp in tmps.items():
            os.replace(tmp, out_dir / name)
    except OSError as exc:
        raise UnlearnError(f"cannot write the report to {out_dir}: {exc.strerror}") from exc
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
    return {name: out_dir / name for name in files}


def report(
    run_dirs: list[str | Path] | str | Path, out: str | Path | None = None, *, verify: bool = True
) -> dict[str, Path]:
    """Write ``report.html`` and ``report.md`` for one or several finished run folders.

    One run: into the run folder itself; several: into ``reports/<timestamp>/`` (under the current folder) with a
    comparison table and overlaid trade-off curves; ``out`` overrides either. Every run folder is read and the
    whole report rendered before anything is written, and both files are written to temporary names and moved
    into place, so bad input leaves no report behind. Raises :class:`UnlearnError` (one line naming the file)
    for a missing folder, a missing ``metrics.json`` / ``manifest.json`` or malformed JSON. With ``verify`` (the
    default) each folder's files must also hash as its manifest records and hold well-formed values (finite
    numbers, the metrics a report reads); without it the report is rendered anyway, the problems listed at the
    top of each run's part. Returns ``{"html": path, "md": path}``.
    """
    from .build import build
    from .checks import malformed
    from .markdown import render_markdown

    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise UnlearnError("no run folder given: pass at least one RUN_DIR")
    runs = [load_run(p, i) for i, p in enumerate(run_dirs)]
    for run in runs:
        run.problems = malformed(run)
        if verify:
            from ..runs.ledger import require_intact

            require_intact(run.path)
            if run.problems:
                more = f" (and {len(run.problems) - 1} more)" if len(run.problems) > 1 else ""
                raise UnlearnError(
                    f"{run.problems[0]}{more}: the run's records are malformed; --no-verify renders them anyway, "
                    "the problems listed in the report"
                )
    out_dir = Path(out) if out is not None else runs[0].path if len(runs) == 1 else _default_out()
    doc = build(runs)
    written = _write_files(out_dir, {"report.html": render_html(doc), "report.md": render_markdown(doc)})
    return {"html": written["report.html"], "md": written["report.md"]}


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """``report.html`` and ``report.md`` of one finished run folder, written into that folder by the command that
    just wrote or checked it (a run, an audit): not verified again."""
    return report([run_dir], out=run_dir, verify=False)
