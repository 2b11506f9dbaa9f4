"""The opt-in audit attacks (direction ablation, relearning against a reference, adversarial suffix, relearning
sweep), each on tiny models where the outcome is known."""

from __future__ import annotations

import ast
import copy
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_model

import unlearn
from unlearn.audit.ablation import _site_hooks, direction_scan
from unlearn.audit.attacks import recovery
from unlearn.audit.base import ATTACKS
from unlearn.audit.oracle import oracle_gap, reference_spec
from unlearn.audit.probes import build_probes
from unlearn.audit.runner import make_config
from unlearn.audit.suffix import gcg, with_suffix
from unlearn.audit.sweep import first_tokens
from unlearn.cli import main
from unlearn.config import DataConfig
from unlearn.data.chunking import TokenSplit
from unlearn.errors import UnlearnError
from unlearn.eval.metrics import evaluate_split
from unlearn.models.adapters import adapter_for

SMALL = dict(seq_len=32, eval_tokens=256, batch_size=8, dtype="fp32", device="cpu")
PROBES = dict(seq_len=32, eval_tokens=256, train_tokens=4096, seed=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    """A tiny llama that has learnt some code (the original), the code and prose files, their probes, and the
    tokens much commoner in the held-out code than in the held-out prose."""
    from transformers import AutoModelForCausalLM

    tmp = tmp_path_factory.mktemp("robust")
    lib = Path(sysconfig.get_paths()["stdlib"])
    code, prose = tmp / "code.txt", tmp / "prose.txt"
    code.write_text("\n\n".join((lib / n).read_text(encoding="utf-8") for n in ("textwrap.py", "shlex.py")))
    docs = []
    for n in ("argparse.py", "logging/__init__.py", "subprocess.py"):
        nodes = ast.walk(ast.parse((lib / n).read_text(encoding="utf-8")))
        docs += [ast.get_docstring(x) for x in nodes if isinstance(x, (ast.FunctionDef, ast.ClassDef, ast.Module))]
    prose.write_text("\n\n".join(d for d in docs if d))
    random_init = tmp / "random-init"
    tiny_model("llama").save_pretrained(random_init)
    tokenizer.save_pretrained(random_init)
    original = tmp / "original"
    unlearn.learn(str(random_init), str(code), original, steps=100, lr=1e-2, batch_size=8, seq_len=32,
                  tokens=4096, dtype="fp32", device="cpu")  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(original, dtype=torch.float32).eval().requires_grad_(False)
    forget = build_probes("forget", DataConfig(source=str(code)), tokenizer, None, **PROBES)
    retain = build_probes("retain", DataConfig(source=str(prose)), tokenizer, None, **PROBES)
    counts = [torch.bincount(p.train.input_ids[~p.train.special], minlength=len(tokenizer)).float() for p in
              (forget, retain)]  # fmt: skip
    f, r = (c / c.sum() for c in counts)
    code_tokens = ((f > 3 * r) & (f > 0.002)).nonzero().flatten()
    return dict(tmp=tmp, code=code, prose=prose, random_init=str(random_init), original=str(original), model=model,
                forget=forget, retain=retain, code_tokens=code_tokens, tokenizer=tokenizer)  # fmt: skip


def _direction() -> torch.Tensor:
    v = torch.randn(32, generator=torch.Generator().manual_seed(5))
    return v / v.norm()


def _shifted(world, tmp_path, alpha: float = 20.0) -> str:
    """'Unlearnt' by a direction: the input embeddings of the code tokens moved along one direction (what the
    direction ablation at site 0, the embeddings, can undo). Saved as a checkpoint."""
    model = copy.deepcopy(world["model"])
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[world["code_tokens"]] += alpha * emb.norm(dim=1).mean() * _direction()
    model.save_pretrained(tmp_path / "shifted")
    world["tokenizer"].save_pretrained(tmp_path / "shifted")
    return str(tmp_path / "shifted")


def _audit(world, model, tmp_path, attacks, **settings):
    return unlearn.audit(model, original=world["original"], forget=str(world["code"]), retain=str(world["prose"]),
                         out=tmp_path / "-".join(attacks), attacks=attacks, settings=settings, **SMALL)  # fmt: skip


def test_the_new_attacks_are_opt_in():
    assert {n for n, a in ATTACKS.items() if not a.default} == {"ablate", "relearn:oracle", "suffix", "relearn-sweep"}
    assert all(ATTACKS[n].default for n in ("relearn", "quantize", "logit-lens", "prompt", "in-context"))
    with pytest.raises(UnlearnError, match="sweep_tokens"):
        make_config({"relearn_tokens": 1024, "sweep_tokens": [2048]})
    with pytest.raises(UnlearnError, match="LoRA"):
        make_config({"sweep_lora": "rank=4"})
    with pytest.raises(UnlearnError, match="ablate_layers"):
        make_config({"ablate_layers": [-1]})


# ---- direction ablation ----------------------------------------------------------------------------------------
def _scan(world, model):
    def score(m, _site):
        return evaluate_split(m, world["forget"].plain, batch_size=8, skip_k=0)["loss"]

    return direction_scan(model, adapter_for(model), world["forget"].train, world["retain"].train, score,
                          batch_size=8)  # fmt: skip


@pytest.mark.parametrize("site", [0, 1, 2])
def test_ablation_undoes_a_direction_added_at_its_site(world, site):
    model = world["model"]
    before = evaluate_split(model, world["forget"].plain, batch_size=8, skip_k=0)["loss"]
    seen = {}
    capture = model.register_forward_pre_hook(lambda _m, _a, kw: seen.update(ids=kw["input_ids"]), with_kwargs=True)
    v, code_tokens = _direction(), world["code_tokens"]
    # "unlearning": the residual stream at ``site`` is pushed along v wherever the token is a code token
    push = _site_hooks(model, adapter_for(model), [site],
                       lambda _s, h: h + 10 * v * torch.isin(seen["ids"], code_tokens).unsqueeze(-1))  # fmt: skip
    try:
        after = evaluate_split(model, world["forget"].plain, batch_size=8, skip_k=0)["loss"]
        scan = _scan(world, model)
    finally:
        for h in (capture, *push):
            h.remove()
    assert after > before + 0.3  # the push hurts the forget loss
    rec = [recovery(before, after, s["scores"]) for s in scan]
    assert [s["site"] for s in scan] == [0, 1, 2]
    assert rec[site] > 0.7 and rec[site] == max(rec)
    assert all(r < 0.1 for r in rec[:site])  # before the push, the direction is only the data's own difference
    assert scan[site]["norm"] > 2  # ≈ 10 × the share of code tokens


def test_ablation_cannot_undo_a_logit_mask(world):
    model = copy.deepcopy(world["model"])
    before = evaluate_split(model, world["forget"].plain, batch_size=8, skip_k=0)["loss"]
    with torch.no_grad():  # "unlearning" in the output embedding: no residual direction to remove
        model.get_output_embeddings().weight[world["code_tokens"]] *= -1
    after = evaluate_split(model, world["forget"].plain, batch_size=8, skip_k=0)["loss"]
    assert after > before + 0.3
    assert all(recovery(before, after, s["scores"]) < 0.1 for s in _scan(world, model))


def test_ablate_attack_on_a_saved_model(world, tmp_path):
    shifted = _shifted(world, tmp_path)
    (entry,) = _audit(world, shifted, tmp_path, ["ablate"])["attacks"]
    assert (entry["attack"], entry["variant"]) == ("ablate", "best-layer")
    assert entry["after_unlearning"] < entry["before"] - 0.05
    details = entry["details"]
    assert details["sites"] == [0, 1, 2] and len(details["per_site"]["forget"]) == 3
    assert details["best_layer"] == 0 and entry["recovery"] > 0.4
    assert entry["after_attack"] == details["per_site"]["forget"][0] == max(details["per_site"]["forget"])
    assert entry["retain"]["after_attack"] == details["per_site"]["retain"][0]
    (only,) = _audit(world, shifted, tmp_path / "some", ["ablate"], ablate_layers=[1, 2])["attacks"]
    assert only["details"]["sites"] == [1, 2] and only["details"]["per_site"]["forget"] == \
        details["per_site"]["forget"][1:]  # fmt: skip
    with pytest.raises(UnlearnError, match="out of range"):
        _audit(world, shifted, tmp_path / "bad", ["ablate"], ablate_layers=[3])


# ---- relearning against a reference ----------------------------------------------------------------------------
def test_oracle_gap_formula():
    assert oracle_gap([0.2, 0.4], [0.2, 0.4], 0.6) == 0.0  # relearns exactly as the reference does
    assert oracle_gap([0.6, 0.6], [0.2, 0.4], 0.6) == pytest.approx((1.0 + 0.5) / 2)
    assert oracle_gap([0.3], [0.6], 0.6) is None  # the original is no better than the reference


def test_reference_from_the_setting_or_the_runs_evaluations(tmp_path):
    run = tmp_path / "ref-run"
    (run / "model").mkdir(parents=True)
    for name in ("manifest.json", "config.yaml"):
        (run / name).write_text("{}")
    evals = [SimpleNamespace(reference=None), SimpleNamespace(reference="x/eval/tofu.json"),
             SimpleNamespace(reference="models/retain-only"), SimpleNamespace(reference="models/other")]  # fmt: skip

    def job(reference, run_dir=tmp_path):
        setup = SimpleNamespace(run_dir=run_dir, run_cfg=SimpleNamespace(evals=evals))
        return SimpleNamespace(cfg=SimpleNamespace(reference=reference), setup=setup)

    assert reference_spec(job(None)) == "models/retain-only"  # the first model, not a saved result
    assert reference_spec(job("mine")) == "mine"
    assert reference_spec(job(str(run))) == str(run / "model")  # a run folder stands for its model
    assert reference_spec(job(None, run_dir=None)) is None


def test_relearn_oracle_against_itself_is_zero_and_skipped_without_reference(world, tmp_path):
    shifted = _shifted(world, tmp_path)
    settings = dict(relearn_steps=4, relearn_lr=3e-3, relearn_tokens=1024, oracle_checkpoints=2)
    (entry,) = _audit(world, shifted, tmp_path / "self", ["relearn:oracle"], reference=shifted, **settings)["attacks"]
    d = entry["details"]
    assert (entry["attack"], entry["variant"]) == ("relearn", "oracle") and d["steps"] == [0, 2, 4]
    assert d["forget"]["unlearned"] == d["forget"]["reference"] and d["oracle_gap"] == entry["oracle_gap"] == 0.0
    assert d["forget"]["unlearned"][0] == entry["after_unlearning"] and d["forget"]["unlearned"][-1] == \
        entry["after_attack"]  # fmt: skip
    assert d["loss"]["unlearned"] == d["loss"]["reference"] and len(d["loss"]["unlearned"]) == 4
    # the random-init model never saw the code: its curve starts at its own score, and the gap follows
    (vs,) = _audit(world, shifted, tmp_path / "rand", ["relearn:oracle"], reference=world["random_init"],
                   **settings)["attacks"]  # fmt: skip
    f = vs["details"]["forget"]
    assert f["unlearned"] == d["forget"]["unlearned"] and f["reference"][0] < vs["after_unlearning"]
    assert vs["details"]["oracle_gap"] == pytest.approx(oracle_gap(f["unlearned"], f["reference"], vs["before"]))
    assert vs["details"]["oracle_gap"] > 0
    (skipped,) = _audit(world, shifted, tmp_path / "none", ["relearn:oracle"], **settings)["attacks"]
    assert skipped["recovery"] is None and skipped["after_attack"] is None
    assert "--reference" in skipped["description"] and skipped["description"].startswith("skipped")


def test_reference_option_on_the_command_line(world, tmp_path):
    shifted = _shifted(world, tmp_path)

    def audit(reference, out):
        args = ["audit", "--model", shifted, "--original", world["original"], "--forget", str(world["code"]),
                "--retain", str(world["prose"]), "--reference", reference, "--attack", "relearn:oracle", "--out",
                str(out), "--seq-len", "32", "--eval-tokens", "256", "--dtype", "fp32", "--device", "cpu",
                "--set", "relearn_steps=2", "--set", "relearn_tokens=256", "--set", "oracle_checkpoints=1"]  # fmt: skip
        return CliRunner().invoke(main, args, catch_exceptions=False)

    res = audit(shifted, tmp_path / "cli")
    assert res.exit_code == 0, res.stderr
    assert "relearn:oracle" in res.stdout
    res = audit(str(tmp_path / "nowhere"), tmp_path / "cli2")
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "--reference" in res.stderr
    assert not (tmp_path / "cli2").exists()  # refused before any model was loaded


# ---- adversarial suffix ----------------------------------------------------------------------------------------
def test_with_suffix_keeps_the_scored_tokens():
    ids = torch.tensor([[5, 6, 7, 8, 9, 1], [5, 6, 7, 8, 1, 1]])
    special = torch.tensor([[1, 1, 0, 0, 0, 1], [1, 1, 1, 0, 1, 1]], dtype=torch.bool)
    qa = with_suffix(TokenSplit(ids, special), [40, 41], "qa", pad_id=1)
    assert qa.input_ids[0].tolist() == [5, 6, 40, 41, 7, 8, 9, 1]
    assert qa.input_ids[1].tolist() == [5, 6, 7, 40, 41, 8, 1, 1]
    text = with_suffix(TokenSplit(ids, special), [40, 41], "text", pad_id=1, target_tokens=2)
    assert text.input_ids[0].tolist() == [40, 41, 5, 6, 7, 8] and text.special[0, :2].all()

    def scored(split):
        return [row[~s].tolist() for row, s in zip(split.input_ids, split.special)]

    assert scored(qa) == [[7, 8, 9], [8]] and scored(text) == [[7, 8], [8]]


def test_suffix_search_lowers_the_target_loss():
    model = tiny_model("llama")
    with torch.no_grad():  # sharper logits: the context matters more than in a near-uniform random model
        model.lm_head.weight.mul_(8)
        model.model.embed_tokens.weight.mul_(8)
    ids = torch.randint(2, 380, (4, 24), generator=torch.Generator().manual_seed(0))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, :8] = True  # an 8-token question, a 16-token answer
    split = TokenSplit(ids, special)
    kw = dict(kind="qa", pad_id=1, banned=[0, 1], length=8, steps=40, candidates=16, target_tokens=16, seed=0,
              init=5, batch_size=64)  # fmt: skip
    found = gcg(model, split, topk=16, **kw)
    blind = gcg(model, split, topk=400, **kw)  # candidates drawn from the whole vocabulary: no gradient
    assert len(found["loss"]) == 40 and found["loss"] == sorted(found["loss"], reverse=True)
    assert found["best_loss"] < found["initial_loss"] - 0.05
    assert found["initial_loss"] - found["best_loss"] > blind["initial_loss"] - blind["best_loss"]
    assert found["suffix"] != [5] * 8 and not {0, 1} & set(found["suffix"])
    # the reported loss is the suffixed rows' loss, scored independently
    rows = with_suffix(split, found["suffix"], "qa", pad_id=1, target_tokens=16)
    assert evaluate_split(model, rows, batch_size=8, skip_k=0)["loss"] == pytest.approx(found["best_loss"], rel=1e-4)


def test_suffix_attack_entry(world, tmp_path):
    shifted = _shifted(world, tmp_path)
    (entry,) = _audit(world, shifted, tmp_path, ["suffix"], suffix_steps=3, suffix_len=4, suffix_probes=2,
                      suffix_candidates=4)["attacks"]  # fmt: skip
    d = entry["details"]
    assert (entry["attack"], entry["variant"]) == ("suffix", "gcg-4") and len(d["suffix_ids"]) == 4
    assert len(d["loss"]) == 3 and d["search_loss"]["best"] <= d["search_loss"]["initial"]
    assert d["suffix"] == world["tokenizer"].decode(d["suffix_ids"])
    assert entry["original_attacked"] is not None and 0 <= entry["recovery"] <= 1


# ---- relearning sweep ------------------------------------------------------------------------------------------
def test_first_tokens():
    special = torch.zeros((4, 5), dtype=torch.bool)
    special[:, 0] = True  # 4 scored tokens per row
    split = TokenSplit(torch.arange(20).view(4, 5), special)
    assert [len(first_tokens(split, n).input_ids) for n in (1, 4, 5, 8, 9, 100)] == [1, 1, 2, 2, 3, 4]


def test_relearn_sweep_points(world, tmp_path):
    shifted = _shifted(world, tmp_path)
    grid = dict(relearn_tokens=512, sweep_steps=[2, 4], sweep_lr=[3e-3], sweep_tokens=[128, 512])
    entries = _audit(world, shifted, tmp_path / "grid", ["relearn-sweep"], **grid)["attacks"]
    assert [e["variant"] for e in entries] == [
        f"{mode}-{n}steps-lr0.003-{t}tok" for mode in ("full", "lora") for t in (128, 512) for n in (2, 4)
    ]
    assert all(e["attack"] == "relearn-sweep" and e["retain"] is not None for e in entries)
    assert [len(e["details"]["loss"]) for e in entries[:2]] == [2, 4] and entries[0]["details"]["tokens"] < 200
    # the 2-step point of a longer run is the 2-step run (constant learning rate): same model, same scores
    (alone,) = _audit(world, shifted, tmp_path / "alone", ["relearn-sweep"], relearn_tokens=512, sweep_steps=[2],
                      sweep_lr=[3e-3], sweep_tokens=[128], sweep_modes=["full"])["attacks"]  # fmt: skip
    assert alone["after_attack"] == entries[0]["after_attack"] and alone["retain"] == entries[0]["retain"]
    full, lora = entries[3], entries[7]  # 4 steps on 512 tokens: LoRA trains other weights than full tuning
    assert full["after_attack"] != lora["after_attack"] or full["details"]["loss"] != lora["details"]["loss"]
