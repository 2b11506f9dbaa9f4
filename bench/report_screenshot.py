"""Render an ``unlearn report`` page in headless Chromium and check it against the run folders' JSON files.

    python bench/report_screenshot.py runs/NAME/report.html                 # screenshot next to the report
    python bench/report_screenshot.py reports/X/report.html --png /tmp/r.png --height 6000
    python bench/report_screenshot.py report.html --run-dir runs/a --run-dir runs/b   # a report moved elsewhere
    python bench/report_screenshot.py runs/NAME/report.html --dom /tmp/dom.html      # also keep the browser's DOM

What it does:

1. ``chromium --headless --dump-dom`` loads the page from disk (offline, a throw-away profile) and prints the
   DOM as the browser built it; ``--screenshot`` writes a PNG (default ``report.png`` beside the report,
   1280 × 4000 pixels).
2. Checks the browser's log for console messages (the report has no scripts, so any is an error) and failed
   loads; checks the HTML itself: balanced tags, unique ids, no ``<script>``, no external ``src``/``href``.
3. For every element with ``data-value`` in the browser's DOM: resolves its ``data-src`` JSON pointers in the
   run folder (``data-run`` → the ``<article data-run-dir>`` of that run, or ``--run-dir``), applies
   ``data-op`` (``diff`` a − b, ``relchange`` (a − b)/b, ``drop`` (b − a)/b, ``neg`` −a) and requires the
   result to equal ``data-value`` exactly, and the shown text to round to it.

Prints a JSON summary; exit code 0 when everything holds, 1 otherwise, 2 when Chromium is missing.
``tests/test_report.py`` reuses these functions.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
OPS = {
    "diff": lambda a, b: a - b,
    "relchange": lambda a, b: (a - b) / b,
    "drop": lambda a, b: (b - a) / b,
    "neg": lambda a: -a,
}


def chromium() -> str | None:
    """The Chromium (or Chrome) executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def render(
    report: str | Path, png: str | Path | None = None, width: int = 1280, height: int = 4000, timeout: float = 120
) -> dict:
    """Load ``report`` in headless Chromium: {"dom", "returncode", "png", "png_returncode", "log_problems"}."""
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("chromium not found")
    url = Path(report).resolve().as_uri()
    out = {"png": None, "png_returncode": None}
    with tempfile.TemporaryDirectory(prefix="report-chromium-") as profile:
        base = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"]
        proc = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=timeout)
        out.update(dom=proc.stdout, returncode=proc.returncode, log_problems=log_problems(proc.stderr))
        if png is not None:
            shot = subprocess.run(
                [*base, f"--screenshot={Path(png).resolve()}", f"--window-size={width},{height}", url],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            out.update(png=str(png), png_returncode=shot.returncode)
            out["log_problems"] += log_problems(shot.stderr)
    return out


def log_problems(stderr: str) -> list[str]:
    """Console messages (any: the report has no scripts), uncaught errors and failed loads in Chromium's log."""
    pat = re.compile(r":CONSOLE|Uncaught|net::ERR_|Failed to load resource|Refused to")
    return [line.strip() for line in stderr.splitlines() if pat.search(line)]


class _Collector(HTMLParser):
    """Collects cells with data-value, the run folders of <article data-run-dir>, and structural problems."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.cells: list[dict] = []
        self.run_dirs: dict[int, str] = {}
        self.problems: list[str] = []
        self.ids: set[str] = set()
        self.stack: list[tuple[str, dict | None]] = []  # (tag, cell being collected)
        self.tables: list[str] = []

    def handle_starttag(self, tag, attrs):
        self._element(tag, dict(attrs), closes=tag in VOID)

    def handle_startendtag(self, tag, attrs):
        self._element(tag, dict(attrs), closes=True)

    def _element(self, tag, a, closes):
        if tag == "script":
            self.problems.append("a <script> element")
        for attr in ("src", "href"):
            v = a.get(attr) or a.get(f"xlink:{attr}")
            if v and not v.startswith(("#", "data:")):
                self.problems.append(f"external resource <{tag} {attr}={v!r}>")
        if "id" in a:
            if a["id"] in self.ids:
                self.problems.append(f"duplicate id {a['id']!r}")
            self.ids.add(a["id"])
        if tag == "article" and "data-run-dir" in a:
            self.run_dirs[int(a.get("data-run", "0"))] = a["data-run-dir"]
        if tag == "table":
            self.tables.append(a.get("data-table", ""))
        cell = None
        if "data-value" in a:
            cell = {
                "tag": tag,
                "value": a["data-value"],
                "src": a.get("data-src"),
                "op": a.get("data-op"),
                "run": a.get("data-run"),
                "text": "",
                "table": self.tables[-1] if self.tables else None,
            }
            self.cells.append(cell)
        if not closes:
            self.stack.append((tag, cell))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1][0] != tag:
            self.problems.append(f"unbalanced </{tag}> (open: {self.stack[-1][0] if self.stack else 'nothing'})")
            # recover: pop to the matching tag if there is one
            tags = [t for t, _ in self.stack]
            if tag in tags:
                del self.stack[len(tags) - 1 - tags[::-1].index(tag) :]
            return
        self.stack.pop()
        if tag == "table" and self.tables:
            self.tables.pop()

    def handle_data(self, data):
        for _, cell in self.stack:
            if cell is not None:
                cell["text"] += data

    def close(self):
        super().close()
        if self.stack:
            self.problems.append(f"unclosed elements: {', '.join(t for t, _ in self.stack)}")


def parse(html_text: str) -> _Collector:
    p = _Collector()
    p.feed(html_text)
    p.close()
    return p


def structure_problems(html_text: str) -> list[str]:
    """Balanced tags, unique ids, no scripts, no external resources (on the report file as written)."""
    return parse(html_text).problems


def _number(s: str):
    return int(s) if re.fullmatch(r"-?\d+", s) else float(s)


def _resolve(doc, pointer: str):
    file, _, path = pointer.partition("#")
    obj = doc[file]
    for raw in path.split("/")[1:] if path else []:
        key = raw.replace("~1", "/").replace("~0", "~")
        obj = obj[int(key)] if isinstance(obj, list) else obj[key]
    return obj


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _shown_ok(text: str, value) -> bool:
    """The cell's text (e.g. ``0.6148``, ``-54.2%``, ``8,192``, ``1.234e-04``) rounds to ``value``."""
    m = re.match(r"\s*([+-]?[\d,]*\.?\d+(?:e[+-]?\d+)?)(%?)", text)
    if not m:
        return False
    shown = float(m.group(1).replace(",", ""))
    mantissa, _, exp = m.group(1).lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    tol = 0.5 * 10 ** (-decimals) * 10 ** int(exp or 0) * (1 + 1e-9) + 1e-12
    expected = value * 100 if m.group(2) else value
    return abs(shown - expected) <= tol


def check_numbers(dom: str, run_dirs: list[str | Path] | None = None) -> tuple[int, list[str]]:
    """Recompute every ``data-value`` cell from the run folders' JSON files: (cells checked, problems)."""
    p = parse(dom)
    dirs = {i: Path(d) for i, d in enumerate(run_dirs)} if run_dirs else {k: Path(v) for k, v in p.run_dirs.items()}
    cache: dict[int, dict] = {}
    errors = []
    for cell in p.cells:
        where = f"<{cell['tag']}> {cell['text'].strip()!r} ({cell['src']})"
        try:
            run = int(cell["run"])
            if run not in cache:
                files = {}
                for name in ("metrics.json", "manifest.json", "audit.json"):
                    f = dirs[run] / name
                    files[name] = json.loads(f.read_text(encoding="utf-8")) if f.exists() else None
                cache[run] = files
            operands = [_resolve(cache[run], ptr) for ptr in json.loads(cell["src"])]
            expected = OPS[cell["op"]](*operands) if cell["op"] else operands[0]
            value = _number(cell["value"])
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as exc:
            errors.append(f"{where}: cannot recompute: {type(exc).__name__}: {exc}")
            continue
        if not _same(value, expected):
            errors.append(f"{where}: data-value {cell['value']} != {expected!r} from the JSON")
        elif not _shown_ok(cell["text"], expected):
            errors.append(f"{where}: shown text does not round to {expected!r}")
    return len(p.cells), errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", help="report.html written by `unlearn report`")
    ap.add_argument("--png", help="screenshot path (default: report.png beside the report)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=4000)
    ap.add_argument("--run-dir", action="append", help="run folders in report order (default: from the page)")
    ap.add_argument("--dom", help="also save the DOM as Chromium built it to this file")
    args = ap.parse_args(argv)
    report = Path(args.report)
    if chromium() is None:
        print("chromium not found", file=sys.stderr)
        return 2
    png = Path(args.png) if args.png else report.with_name("report.png")
    result = render(report, png, args.width, args.height)
    if args.dom:
        Path(args.dom).write_text(result["dom"], encoding="utf-8")
    checked, errors = check_numbers(result["dom"], args.run_dir)
    problems = structure_problems(report.read_text(encoding="utf-8")) + result["log_problems"]
    ok_png = result["png_returncode"] == 0 and png.exists() and png.stat().st_size > 0
    summary = {
        "report": str(report),
        "chromium_exit": result["returncode"],
        "screenshot": str(png) if ok_png else None,
        "cells_checked": checked,
        "number_errors": errors,
        "problems": problems,
        "ok": result["returncode"] == 0 and ok_png and checked > 0 and not errors and not problems,
    }
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
