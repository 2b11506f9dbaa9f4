"""unlearn sweep: grid parsing, the Pareto front on hand-made points, an end-to-end sweep on the tiny model (one
run folder per point, sweep.json, the comparison report with its Pareto column), resuming by skipping finished
points, and bad input refused before any work."""

from __future__ import annotations

import json

import pytest

import unlearn
from unlearn.eval.metrics import pareto_front
from unlearn.pipeline import sweep as sweep_module
from unlearn.pipeline.sweep import grid_points, parse_grid, point_name

from conftest import invoke, small_run_config


def test_grid_parsing_and_points():
    grid = parse_grid(["ff_frac=0.005,0.01", "importance=abs,rms,freq"])
    assert grid == {"ff_frac": [0.005, 0.01], "importance": ["abs", "rms", "freq"]}
    points = grid_points(grid)
    assert len(points) == 6 and points[0] == {"ff_frac": 0.005, "importance": "abs"}
    assert point_name(points[-1]) == "ff_frac=0.01,importance=freq"
    sample = grid_points(grid, sample=3, seed=1)
    assert len(sample) == 3 and sample == grid_points(grid, sample=3, seed=1) and all(p in points for p in sample)
    assert len(grid_points(grid, sample=100)) == 6
    for bad, needle in [
        (["ff_frac"], "KEY=VALUE"),
        (["ff_frac="], "KEY=VALUE"),
        (["a=1", "a=2"], "given twice"),
        (["a=1,1"], "repeats"),
        ([], "at least one"),
    ]:
        with pytest.raises(unlearn.UnlearnError, match=needle):
            parse_grid(bad)


def test_pareto_front_by_hand():
    # (forget drop, retain drop): 0 and 2 are optimal; 1 is dominated by 0; 3 ties 0 exactly (neither dominates);
    # 4 lacks a value
    pts = [(0.8, 0.05), (0.7, 0.06), (0.9, 0.2), (0.8, 0.05), (None, 0.0)]
    assert pareto_front(pts) == {0, 2, 3}
    assert pareto_front([(0.5, 0.1)]) == {0}


def test_sweep_on_the_tiny_model_then_resumed(tmp_path, tiny_checkpoint, text_files, monkeypatch):
    code, prose = text_files
    cfg = small_run_config(tiny_checkpoint("llama"), code, prose, tmp_path / "runs", name="sw", save_model=False)
    grid = {"ff_frac": [0.02, 0.1], "importance": ["abs", "random"]}
    record = unlearn.sweep(cfg, grid)
    sweep_dir = tmp_path / "runs" / "sw"
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == sorted(point_name(p) for p in grid_points(grid))
    saved = json.loads((sweep_dir / "sweep.json").read_text())
    assert saved["points"] == record["points"] and len(saved["points"]) == 4
    for row in saved["points"]:
        metrics = json.loads((sweep_dir / row["run_dir"] / "metrics.json").read_text())
        assert row["forget_drop"]["top1"] == metrics["after"]["forget_drop"]["top1"]
        config = (sweep_dir / row["run_dir"] / "config.yaml").read_text()
        assert f"importance: {row['params']['importance']}" in config
    for m in ("top1", "skip50_top1"):
        drops = [(r["forget_drop"][m], r["retain_drop"][m]) for r in saved["points"]]
        assert {i for i, r in enumerate(saved["points"]) if r["pareto"][m]} == pareto_front(drops)
    html = (sweep_dir / "report.html").read_text(encoding="utf-8")
    assert "Pareto front" in html and all(r["run_dir"] in html for r in saved["points"])

    # run again with one more value: only the new points run
    calls = []
    real_run = sweep_module.run
    monkeypatch.setattr(sweep_module, "run", lambda c, **kw: calls.append(c["name"]) or real_run(c, **kw))
    again = unlearn.sweep(cfg, {"ff_frac": [0.02, 0.1, 0.05], "importance": ["abs", "random"]})
    assert sorted(calls) == ["ff_frac=0.05,importance=abs", "ff_frac=0.05,importance=random"]
    assert len(again["points"]) == 6


def test_sweep_cli_and_bad_input(tmp_path, tiny_checkpoint, text_files):
    code, prose = text_files
    model, out = str(tiny_checkpoint("llama")), tmp_path / "runs"
    base = ["sweep", "--model", model, "--forget", str(code), "--retain", str(prose), "--out", str(out)]
    base += ["--dtype", "fp32", "--seq-len", "32", "--stats-tokens", "256", "--eval-tokens", "128"]
    base += ["--val-tokens", "0", "--batch-size", "4", "--no-save-model", "--quiet"]
    code_, stdout, _ = invoke(*base, "--name", "cli", "--grid", "ff_frac=0.02,0.1", "--no-report")
    assert code_ == 0 and stdout.count("forget top1 drop") == 2
    assert (out / "cli" / "sweep.json").is_file() and not (out / "cli" / "report.html").exists()
    # a bad value of one point is refused before any point runs
    code_, _, err = invoke(*base, "--name", "bad", "--grid", "ff_frac=0.02,7")
    assert code_ == 2 and "error:" in err and len(err.strip().splitlines()) == 1
    assert not any((out / "bad").glob("*/manifest.json"))
    code_, _, err = invoke(*base, "--name", "bad2", "--grid", "ff_frac")
    assert code_ == 2 and "KEY=VALUE" in err


def test_random_control_beside_the_run(tmp_path, tiny_checkpoint, text_files):
    code, prose = text_files
    out = tmp_path / "runs"
    cfg = small_run_config(tiny_checkpoint("llama"), code, prose, out, name="sp", control="random", report=True)
    cfg["method_config"] = {"ff_frac": 0.05, "steps": 2}
    result = unlearn.run(cfg)
    control = out / "sp-control-random"
    assert result.metrics["control"] == {"random": "sp-control-random"}
    ccfg = (control / "config.yaml").read_text()
    assert "importance: random" in ccfg and "control: null" in ccfg and not (control / "report.html").exists()
    cm = json.loads((control / "metrics.json").read_text())
    assert [s["pruned_total"] for s in cm["steps"]] == [s["pruned_total"] for s in result.metrics["steps"]]
    html = (result.run_dir / "report.html").read_text(encoding="utf-8")
    assert "random control (sp-control-random)" in html
    # only selective pruning has a random control; refused before any work
    code_, _, err = invoke(
        "run", "--model", str(tiny_checkpoint("llama")), "--forget", str(code), "--retain", str(prose),
        "--out", str(out), "--name", "npo", "--method", "npo", "--control", "random",
    )  # fmt: skip
    assert code_ == 2 and "prunes no neurons" in err and not (out / "npo").exists()
