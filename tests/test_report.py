"""`unlearn report`: every section from real (tiny) run folders plus hand-written audit.json and earlier requests,
every rendered number recomputed from the JSON files, the page rendered in headless Chromium, the CLI and its
one-line errors, and tolerance of missing keys."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import unlearn
from unlearn.cli import main
from unlearn.errors import UnlearnError
from unlearn.models.save import file_sha256
from unlearn.report.html import report, write_report

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("report_screenshot", ROOT / "bench" / "report_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shot = _bench()

AUDIT = {
    "model": {"spec": "runs/sp/model", "sha256": "ab" * 32},
    "original": {"spec": "tiny-llama", "sha256": "cd" * 32},
    "forget": {"source": "code.txt", "format": "text", "n_probes": 32, "n_tokens": 8192},
    "retain": {"source": "prose.txt", "format": "text", "n_probes": 32, "n_tokens": 8192},
    "metric": "top1",
    "attacks": [
        {
            "attack": "relearn",
            "variant": "forget",
            "description": "fine-tune 20 steps on held-out forget data",
            "before": 0.61,
            "after_unlearning": 0.28,
            "after_attack": 0.45,
            "recovery": 0.5151515151515151,
            "retain": {"before": 0.43, "after_unlearning": 0.40, "after_attack": 0.41},
            "original_attacked": None,
            "details": {},
        },
        {
            "attack": "quantize",
            "variant": "int8",
            "before": 0.61,
            "after_unlearning": 0.28,
            "after_attack": 0.2931,
            "recovery": 0.0396969696969697,
            "retain": {"before": 0.43, "after_unlearning": 0.40, "after_attack": 0.3987},
            "original_attacked": 0.6087,
        },
        {
            "attack": "quantize",
            "variant": "int4",
            "before": 0.3,
            "after_unlearning": 0.3,
            "after_attack": 0.31,
            "recovery": None,
            "retain": None,
        },
        {
            "attack": "logit-lens",
            "variant": "best-layer",
            "before": 0.61,
            "after_unlearning": 0.28,
            "after_attack": 0.3512,
            "recovery": 0.2151515151515152,
            "details": {
                "per_layer": {"unlearned": [0.01, 0.09, 0.35, 0.3], "original": [0.01, 0.1, 0.4, 0.61]},
                "best_layer": 3,
            },
        },
    ],
    "max_recovery": {"attack": "relearn:forget", "recovery": 0.5151515151515151},
    "settings": {"relearn_steps": 20},
    "timings_s": {"relearn": 1.25, "total": 3.5},
}
EARLIER = [
    {
        "run": "first-request",
        "forget_source": "python-stdlib",
        "retain_source": "english-prose",
        "metric": "top1",
        "forget": {"original": 0.61, "after_request": 0.28, "before": 0.29, "after": 0.33},
        "retain": {"original": 0.43, "after_request": 0.40, "before": 0.40, "after": 0.38},
    },
    {
        "run": "lost-request",
        "forget_source": "gone.txt",
        "retain_source": "x",
        "metric": "top1",
        "error": "gone.txt not found",
    },
]
PARENT = {
    "run_dir": "/somewhere/runs/first-request",
    "run_name": "first-request",
    "manifest_sha256": "ef" * 32,
    "model_sha256": "01" * 32,
}


def _edit(path: Path, **updates) -> None:
    data = json.loads(path.read_text())
    data.update(updates)
    path.write_text(json.dumps(data, indent=2))


@pytest.fixture
def pruned_run(run_tiny, tmp_path):
    """A selective-pruning run with a budget (validation checks), an MCQ suite, an audit and earlier requests."""
    geo = tmp_path / "geo.csv"
    geo.write_text("question,choice0,choice1,answer\nWhich?,red,green,1\nWhat?,blue,yellow,0\n", encoding="utf-8")
    result = run_tiny(
        "sp",
        "selective-pruning",
        {"steps": 3, "ff_frac": 0.1, "attn_frac": 0.1, "heal_steps": 0},
        val_tokens=128,
        stop={"max_retain_drop": 0.9},
        evals=[{"suite": "mcq", "data": [str(geo)]}],
    )
    d = result.run_dir
    (d / "audit.json").write_text(json.dumps(AUDIT, indent=2))
    _edit(d / "metrics.json", earlier_requests=EARLIER)
    manifest = json.loads((d / "manifest.json").read_text())
    files = {**manifest["files"], "metrics.json": file_sha256(d / "metrics.json")}  # as a run with them writes it
    _edit(d / "manifest.json", parent=PARENT, files=files)
    return d


@pytest.fixture
def trained_run(run_tiny):
    """Gradient ascent with a retain budget: a train_log, validation checks and held-out drops every 2 steps."""
    result = run_tiny(
        "ga",
        "gradient-ascent",
        {"steps": 4, "lr": 1e-2, "eval_every": 2},
        val_tokens=128,
        stop={"max_retain_drop": 0.9},
    )
    return result.run_dir


def _cited(html_text: str) -> set[str]:
    return {p for cell in shot.parse(html_text).cells for p in json.loads(cell["src"])}


def _section_ids(html_text: str) -> set[str]:
    return set(re.findall(r'<section id="([^"]+)"', html_text))


def test_report_of_a_pruning_run_has_every_section_and_its_numbers_are_the_json_numbers(pruned_run):
    paths = unlearn.api.write_report(pruned_run)
    assert paths == {"html": pruned_run / "report.html", "md": pruned_run / "report.md"}
    page = paths["html"].read_text(encoding="utf-8")
    assert _section_ids(page) == {
        f"run0-{s}" for s in ("metrics", "tradeoff", "pruned", "trace", "suites", "audit", "earlier", "manifest")
    }
    checked, errors = shot.check_numbers(page)
    assert errors == [] and checked > 100
    assert shot.structure_problems(page) == []
    assert "<script" not in page and not re.search(r'\s(?:src|href)="(?!#|data:)', page)
    # figures: trade-off, pruned per layer, logit lens; text stays text (searchable)
    assert page.count("<svg") == 3 and "retain top1 drop (%)" in page and "logit-lens: best-layer" in page

    metrics = json.loads((pruned_run / "metrics.json").read_text())
    cited = _cited(page)
    for when in ("before", "after"):
        for which in ("forget", "retain"):
            for k in ("top1", "top10", "loss", "perplexity"):
                assert f"metrics.json#/{when}/{which}/{k}" in cited
    for i, _ in enumerate(metrics["steps"]):  # the trade-off points, one per step
        for k in ("forget_drop", "retain_drop"):
            assert f"metrics.json#/steps/{i}/{k}/top1" in cited
        assert f"metrics.json#/steps/{i}/validation/retain_drop/top1" in cited
    for when in ("before", "after"):
        for k in metrics["suites"][when]["mcq"]["geo"]:
            assert f"metrics.json#/suites/{when}/mcq/geo/{k}" in cited
    for i in range(len(AUDIT["attacks"])):
        for k in ("before", "after_unlearning", "after_attack"):
            assert f"audit.json#/attacks/{i}/{k}" in cited
    for k in ("original", "after_request", "before", "after"):
        assert f"metrics.json#/earlier_requests/0/forget/{k}" in cited
    manifest = json.loads((pruned_run / "manifest.json").read_text())
    for kind, counts in manifest["pruned_neurons_per_layer"].items():
        for layer in range(len(counts)):
            assert f"manifest.json#/pruned_neurons_per_layer/{kind}/{layer}" in cited

    # audit: high recovery marked, a null recovery shown as n/a; earlier requests: undoing marked, errors shown
    assert re.search(r'<td class="num high"[^>]*data-src="\[&quot;audit.json#/attacks/0/recovery', page)
    assert re.search(r'<tr data-key="quantize:int4">.*?<td class="num">n/a</td>', page)
    assert re.search(r'<tr data-key="earlier.0.forget">.*?<td class="num warn"[^>]*data-op="diff"', page)
    assert "not measured: gone.txt not found" in page
    assert "first-request (/somewhere/runs/first-request)" in page and PARENT["manifest_sha256"] in page
    assert "<summary>resolved configuration (config.yaml)</summary><pre>" in page and "max_retain_drop: 0.9" in page

    md = paths["md"].read_text(encoding="utf-8")
    assert "| forget | top1 |" in md and "### Audit: can the forgotten data be recovered?" in md
    assert "### Earlier requests (sequential unlearning)" in md and "| relearn | forget |" in md
    assert "<svg" not in md and "Figure in report.html" in md


def test_report_of_a_trained_run_shows_the_loss_curve_and_validation_checks(trained_run):
    report([trained_run])
    page = (trained_run / "report.html").read_text(encoding="utf-8")
    assert {"run0-metrics", "run0-training", "run0-tradeoff", "run0-trace", "run0-manifest"} <= _section_ids(page)
    assert "run0-pruned" not in _section_ids(page) and "run0-audit" not in _section_ids(page)
    assert "training loss" in page and "validation checks" in page and "forget_loss" in page
    log = json.loads((trained_run / "metrics.json").read_text())["train_log"]
    cited = _cited(page)
    assert f"metrics.json#/train_log/{len(log) - 1}/loss" in cited
    checked, errors = shot.check_numbers(page)
    assert errors == [] and checked > 40
    # the check is not vacuous: a JSON number that no longer matches the page is reported
    metrics = json.loads((trained_run / "metrics.json").read_text())
    metrics["train_log"][0]["loss"] += 1e-9
    (trained_run / "metrics.json").write_text(json.dumps(metrics))
    _, errors = shot.check_numbers(page)
    assert len(errors) == 1 and "metrics.json#/train_log/0/loss" in errors[0]
    assert shot._shown_ok("-54.2%", -0.5421) and not shot._shown_ok("-54.3%", -0.5421)
    assert shot._shown_ok("8,192", 8192) and shot._shown_ok("-2.532e-04", -2.5321e-4)
    assert not shot._shown_ok("0.0081", 0.0082)


def test_report_renders_in_headless_chromium_and_the_browser_shows_the_json_numbers(
    pruned_run, trained_run, tmp_path, capsys
):
    if shot.chromium() is None:
        pytest.skip("chromium is not installed")
    paths = report([pruned_run, trained_run], out=tmp_path / "both")
    page = paths["html"].read_text(encoding="utf-8")
    png, dom_file = tmp_path / "report.png", tmp_path / "dom.html"
    # the documented script: Chromium's DOM dump and screenshot, log, structure and number checks
    assert shot.main([str(paths["html"]), "--png", str(png), "--dom", str(dom_file)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] and summary["chromium_exit"] == 0 and summary["problems"] == []
    assert summary["number_errors"] == [] and summary["screenshot"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    dom = dom_file.read_text(encoding="utf-8")
    checked, errors = shot.check_numbers(dom)
    assert errors == []
    assert checked == summary["cells_checked"] == len(shot.parse(page).cells) > 200  # every number cell survived
    assert 'data-table="comparison"' in dom and dom.count("<svg") == 6
    assert shot.log_problems('[1:1:INFO:CONSOLE:1] "Uncaught ReferenceError: x", source: file:///r.html (1)')


def test_cli_report_on_one_and_on_two_run_folders(pruned_run, trained_run, tmp_path, monkeypatch):
    r = CliRunner().invoke(main, ["report", str(pruned_run)], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == f"report: {pruned_run / 'report.html'} (markdown: {pruned_run / 'report.md'})"
    assert "Comparison" not in (pruned_run / "report.html").read_text()

    monkeypatch.chdir(tmp_path)  # several runs without --out: reports/<timestamp>/ under the current folder
    r = CliRunner().invoke(main, ["report", str(pruned_run), str(trained_run), "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    written = json.loads(r.stdout)
    html_path = Path(written["html"])
    assert html_path.parent.parent == Path("reports") and html_path.is_file() and Path(written["md"]).is_file()
    page = html_path.read_text()
    table = re.search(r'<table data-table="comparison">.*?</table>', page, re.S).group(0)
    assert re.findall(r'<tr data-key="(run\.\d)">', table) == ["run.0", "run.1"]
    assert ">sp<" in table and ">ga<" in table and "51.5% (relearn:forget)" in table
    assert table.count("metrics.json#/parametric_trace/projection") == 2  # the trace column, both runs
    assert shot.check_numbers(page)[1] == []
    md = Path(written["md"]).read_text()
    assert "## Comparison" in md and "| sp | selective-pruning |" in md

    out = tmp_path / "chosen"
    r = CliRunner().invoke(main, ["report", str(trained_run), "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0 and (out / "report.html").is_file() and (out / "report.md").is_file()


def _bad_cases(good: Path, tmp: Path) -> dict:
    def folder(name, **files):
        d = tmp / name
        d.mkdir()
        for fname, content in files.items():
            (d / fname.replace("_", ".")).write_text(content)
        return d

    metrics = (good / "metrics.json").read_text()
    manifest = (good / "manifest.json").read_text()
    (tmp / "a-file").write_text("x")
    return {
        "missing": (tmp / "nope", "run folder"),
        "file": (tmp / "a-file", "not a folder"),
        "no metrics": (folder("m0", manifest_json=manifest), "metrics.json: missing"),
        "no manifest": (folder("m1", metrics_json=metrics), "manifest.json: missing"),
        "malformed metrics": (folder("m2", metrics_json="{", manifest_json=manifest), "metrics.json: malformed JSON"),
        "list manifest": (folder("m3", metrics_json=metrics, manifest_json="[]"), "manifest.json: expected a JSON"),
        "malformed audit": (
            folder("m4", metrics_json=metrics, manifest_json=manifest, audit_json='{"attacks": [}'),
            "audit.json: malformed JSON at line 1",
        ),
    }


def test_bad_input_is_one_line_exit_2_and_writes_nothing(trained_run, tmp_path):
    before = (trained_run / "report.html").exists()
    for case, (path, message) in _bad_cases(trained_run, tmp_path).items():
        out = tmp_path / f"out-{case.replace(' ', '-')}"
        r = CliRunner().invoke(main, ["report", str(trained_run), str(path), "--out", str(out)], catch_exceptions=False)
        assert r.exit_code == 2, case
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and message in r.stderr, (case, r.stderr)
        assert str(path.name) in r.stderr and r.stdout == ""
        assert not out.exists(), case  # nothing written, not even the folder
        with pytest.raises(UnlearnError, match=re.escape(message)):
            report([path])
    assert (trained_run / "report.html").exists() == before
    r = CliRunner().invoke(main, ["report"], catch_exceptions=False)
    assert r.exit_code == 2 and r.stderr.startswith("error: Missing argument") and r.stderr.count("\n") == 1


def test_a_failed_report_keeps_the_previous_one_and_leaves_no_temporary_files(trained_run, monkeypatch):
    write_report(trained_run)
    old = (trained_run / "report.html").read_text()
    (trained_run / "audit.json").write_text("{ not json")
    with pytest.raises(UnlearnError, match="audit.json: malformed JSON"):
        write_report(trained_run)
    assert (trained_run / "report.html").read_text() == old

    from unlearn.report import html as html_mod  # (unlearn.report, the attribute, is the API function)

    (trained_run / "audit.json").unlink()
    real = html_mod.os.replace

    def failing(src, dst):
        if str(dst).endswith("report.md"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(html_mod.os, "replace", failing)
    with pytest.raises(UnlearnError, match="cannot write the report .*No space left"):
        write_report(trained_run)
    assert not list(trained_run.glob(".report*.tmp"))


def test_missing_and_odd_keys_are_skipped_not_fatal(tmp_path):
    d = tmp_path / "odd"
    d.mkdir()
    metrics = {
        "before": {"forget": {"top1": 0.5, "loss": 2.0, "n_tokens": 64}, "retain": {"top1": 0.0}},
        "after": {"forget": {"top1": 0.25}, "forget_drop": {"top1": 0.5}},
        "steps": [
            "junk",
            {"step": 1, "forget_drop": {"top1": 0.3}, "retain_drop": {"top1": 0.01}},
            {"step": 2, "forget_drop": {"top1": 0.6}, "retain_drop": {"top1": 0.2}, "reverted": True},
            "junk",
        ],
        "train_log": [{"step": 1, "loss": 1.5}, {"step": 2, "loss": None}],
        "suites": {"before": {"s": {"a": 1, "b": {"c": None, "d": "text", "e": [1, 2]}}}, "after": "oops"},
        "earlier_requests": [{"run": "r", "forget": {"original": 0.5}}, 7],
        "parametric_trace": {"k": "x", "forget_tokens": "no", "vectors": [5, {"layer": 1, "cosine": None}]},
    }
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "manifest.json").write_text(
        json.dumps({"pruned_neurons_per_layer": {"ff": [0, 3, "x"], "attn": []}, "model": "weird", "parent": None})
    )
    (d / "audit.json").write_text(
        json.dumps({"attacks": [{"attack": "x"}, 5, {"recovery": None}], "max_recovery": None})
    )
    (d / "config.yaml").write_text("stop: [unclosed\n")
    with pytest.raises(UnlearnError, match="not an unlearn run manifest"):
        report(d)  # verified by default: this is no run folder
    paths = report(d, verify=False)
    page = paths["html"].read_text()
    assert "Problems in this run&#x27;s records" in page or "Problems in this run's records" in page
    assert {
        "run0-metrics",
        "run0-tradeoff",
        "run0-training",
        "run0-pruned",
        "run0-trace",
        "run0-suites",
        "run0-audit",
        "run0-earlier",
        "run0-manifest",
    } <= _section_ids(page)
    assert "reverted (over budget)" in page and "none (first request)" in page
    checked, errors = shot.check_numbers(page)
    assert errors == [] and checked > 10
    assert shot.structure_problems(page) == []


def test_matplotlib_is_imported_only_when_a_report_is_drawn():
    """No module of the package imports matplotlib at import time (the CLI starts without it)."""
    for path in (ROOT / "src" / "unlearn").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        in_functions = {
            id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)
        }
        for node in top:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(n.split(".")[0] == "matplotlib" for n in names):
                assert id(node) in in_functions, f"{path}:{node.lineno} imports matplotlib at import time"


def test_tradeoff_marks_the_healed_model():
    """A prune-then-heal run's trade-off curve ends at the healed model (labelled "healed"); a run without healing
    has only its steps, and both plot."""
    from unlearn.report import plots
    from unlearn.report.build import tradeoff_points
    from unlearn.report.data import Run

    metrics = {
        "steps": [
            {"step": 1, "forget_drop": {"top1": 0.4}, "retain_drop": {"top1": 0.05}},
            {"step": 2, "forget_drop": {"top1": 0.8}, "retain_drop": {"top1": 0.2}},
        ],
        "after": {"forget_drop": {"top1": 0.9}, "retain_drop": {"top1": 0.02}},
    }
    healed = Run(0, Path("healed"), metrics, {"method_facts": {"before_heal": {}}}, None, None, {})
    plain = Run(1, Path("plain"), metrics, {"method_facts": {}}, None, None, {})
    assert tradeoff_points(healed) == [(1, 0.05, 0.4, False), (2, 0.2, 0.8, False), ("healed", 0.02, 0.9, False)]
    assert tradeoff_points(plain) == [(1, 0.05, 0.4, False), (2, 0.2, 0.8, False)]
    svg = plots.tradeoff([{"label": "healed", "points": tradeoff_points(healed)}])
    assert svg.lstrip().startswith("<svg") or "<svg" in svg[:500]
