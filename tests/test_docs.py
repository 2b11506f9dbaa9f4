"""The README and docs/: relative links resolve, anchors name real headings, the README stays short.

Pure text checks (no torch, no package import): fast enough for every test run.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 200

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) or [text](target "title"); text may hold one level of brackets and inline code
_INLINE_LINK = re.compile(
    r"(!?)\[((?:[^\[\]]|\[[^\[\]]*\])*)\]"  # [text], one level of nested brackets
    r"\(\s*<?([^\s()<>]*(?:\([^\s()]*\)[^\s()<>]*)*)>?(?:\s+\"[^\"]*\")?\s*\)"  # (target "title")
)
_REF_DEF = re.compile(r"^ {0,3}\[([^\]]+)\]:\s*<?(\S+?)>?(?:\s+[\"'(].*)?$")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=[\"']([^\"']+)[\"']", re.IGNORECASE)
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def markdown_files() -> list[Path]:
    return [README, ROOT / "bench" / "README.md", *sorted(DOCS.glob("*.md"))]


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, inline code spans blanked out."""
    out, fence = [], None
    for no, line in enumerate(text.split("\n"), 1):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * 3
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        out.append((no, line))
    return out


def _strip_code_spans(line: str) -> str:
    return _INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)


def github_slug(heading: str) -> str:
    """GitHub's heading anchor: inline markup dropped, lowercase, punctuation removed, spaces to hyphens."""
    parts = []
    for i, part in enumerate(re.split(r"(`+.+?`+)", heading)):
        if i % 2:  # a code span: its text, literally
            parts.append(part.strip("`"))
            continue
        part = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", part)  # links and images -> their text
        part = re.sub(r"<[^>]+>", "", part)  # inline HTML
        parts.append(re.sub(r"(\*\*|__|\*|~~)", "", part))
    text = "".join(parts).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w is Unicode-aware: letters, digits, underscore stay
    return text.replace(" ", "-")


@lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        found.update(_HTML_ANCHOR.findall(line))
        m = _HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return frozenset(found)


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every inline and reference-style link outside code."""
    text = path.read_text(encoding="utf-8")
    lines = _prose_lines(text)
    defs: dict[str, tuple[int, str]] = {}
    out = []
    for no, line in lines:
        m = _REF_DEF.match(line)
        if m:
            defs[m.group(1).strip().lower()] = (no, m.group(2))
            continue
        for lm in _INLINE_LINK.finditer(_strip_code_spans(line)):
            out.append((no, lm.group(3)))
    # reference-style links must name a definition; the definitions' targets are checked like inline ones
    for no, line in lines:
        if _REF_DEF.match(line):
            continue
        body = _INLINE_LINK.sub("", _strip_code_spans(line))
        for full, short in re.findall(r"\[((?:[^\[\]]|\[[^\[\]]*\])+)\]\[([^\]]*)\]", body):
            label = (short or full).strip().lower()
            assert label in defs, f"{path.relative_to(ROOT)}:{no}: reference link [{label}] has no definition"
    out.extend(defs.values())
    return out


def broken_links(path: Path) -> list[str]:
    problems = []
    for no, target in links(path):
        if not target or _EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}:{no}: ({target})"
        if not dest.exists():
            problems.append(f"{where}: {file_part} does not exist")
            continue
        if anchor:
            if dest.is_dir() or dest.suffix.lower() != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(dest):
                problems.append(f"{where}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    return problems


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert not broken_links(path), "\n".join(broken_links(path))


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move detail into docs/ (at most {MAX_README_LINES})"


def test_readme_starts_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    block = lines[lines.index("```bash") + 1 :][:2]
    assert block[0].startswith("pip install torch==") and block[0].endswith("&& unlearn run")
    assert block[1] == "python -m pytest"
    assert lines.index("```bash") < next(i for i, s in enumerate(lines) if s.startswith("## "))


def test_docs_index_links_every_page():
    index = DOCS / "README.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for _, t in links(index) if not _EXTERNAL.match(t)}
    pages = {p.resolve() for p in DOCS.glob("*.md") if p != index}
    missing = sorted(p.name for p in pages - linked)
    assert not missing, f"docs/README.md does not link: {', '.join(missing)}"


def test_each_doc_has_one_title():
    for path in sorted(DOCS.glob("*.md")):
        titles = [line for _, line in _prose_lines(path.read_text(encoding="utf-8")) if re.match(r"^# ", line)]
        assert len(titles) == 1, f"{path.relative_to(ROOT)}: {len(titles)} '# ' titles"
        opening = path.read_text(encoding="utf-8")
        assert opening.startswith("# "), f"{path.relative_to(ROOT)} does not open with its title"


# the checker itself must be able to fail


def test_slug_rules():
    assert github_slug("Interrupted runs and `--resume`") == "interrupted-runs-and---resume"
    slug = github_slug("Audit: can the forgotten material be brought back?")
    assert slug == "audit-can-the-forgotten-material-be-brought-back"
    assert github_slug("Efficacy: ≥ 80 % forget") == "efficacy--80--forget"
    assert github_slug("The run folder (`runs/<timestamp>/`, or `--name`)") == "the-run-folder-runstimestamp-or---name"
    assert github_slug("[Linked](x.md) *emphasis* snake_case") == "linked-emphasis-snake_case"


def test_checker_catches_broken_links(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## Same\n\n## Same\n", encoding="utf-8")
    page = tmp_path / "docs" / "b.md"
    page.write_text(
        "# B\n\n"
        "[ok](a.md) [ok](a.md#same-1) [ok](#b) [ext](https://example.com/x.md) `[code](missing.md)`\n"
        "[gone](missing.md) [bad anchor](a.md#nope) [up](../README.md)\n"
        "[ref][r] [dup](a.md#same-2)\n\n"
        "```\n[fenced](missing-too.md)\n```\n\n"
        "[r]: ../nowhere.md\n",
        encoding="utf-8",
    )
    anchors.cache_clear()
    problems = broken_links(page)
    anchors.cache_clear()
    assert len(problems) == 5, problems
    bad_links = ("missing.md does not exist", "#nope", "../README.md does not exist", "../nowhere.md does not exist")
    for bad in (*bad_links, "#same-2"):
        assert any(bad in p for p in problems), (bad, problems)
