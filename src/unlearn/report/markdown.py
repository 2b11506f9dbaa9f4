"""The report as GitHub-flavoured Markdown (for pull requests): the same sections and tables as report.html;
figures are only in the HTML page (Markdown hosts strip inline SVG), so each is replaced by a one-line note."""

from __future__ import annotations

from .data import Cell, Details, DefList, Document, Para, Plot, Section, Table


def _md(s: str) -> str:
    return str(s).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("*", "\\*")


def _cell(c: Cell) -> str:
    if c.code and c.text not in ("", "–"):
        return "`" + str(c.text).replace("`", "'").replace("|", "\\|") + "`"
    t = _md(c.text)
    return f"**{t}**" if c.cls == "high" and t else t


def _table(t: Table) -> list[str]:
    lines = ["| " + " | ".join(_md(c) for c in t.columns) + " |"]
    numeric = [any(i < len(cells) and cells[i].value is not None for _, cells in t.rows) for i in range(len(t.columns))]
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    for _, cells in t.rows:
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if t.caption:
        lines += ["", f"*{_md(t.caption)}*"]
    return lines + [""]


def _blocks(blocks: list) -> list[str]:
    out = []
    for b in blocks:
        if isinstance(b, Table):
            out += _table(b)
        elif isinstance(b, Plot):
            out += [f"*Figure in report.html: {_md(b.caption)}*", ""]
        elif isinstance(b, Para):
            out += [_md(b.text), ""]
        elif isinstance(b, DefList):
            out += [f"- **{_md(k)}**: {_cell(c)}" for k, c in b.items] + [""]
        elif isinstance(b, Details):
            out += ["<details>", f"<summary>{_md(b.summary)}</summary>", ""]
            if b.pre is not None:
                fence = "````" if "```" in b.pre else "```"
                out += [fence, b.pre.rstrip("\n"), fence, ""]
            out += _blocks(b.blocks)
            out += ["</details>", ""]
    return out


def _section(s: Section, level: int) -> list[str]:
    return ["#" * level + " " + _md(s.title), "", *_blocks(s.blocks)]


def render_markdown(doc: Document) -> str:
    lines = [f"# {_md(doc.title)}", "", f"Generated {doc.generated}; figures: report.html.", ""]
    for s in doc.comparison:
        lines += _section(s, 2)
    for part in doc.parts:
        lines += [f"## {_md(part.run.name)}", ""]
        lines += _blocks([DefList(part.summary)])
        for s in part.sections:
            lines += _section(s, 3)
    return "\n".join(lines).rstrip("\n") + "\n"
