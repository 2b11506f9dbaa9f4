"""Trained methods: each loss pinned on hand-computable inputs; every method trains a tiny model end to end,
reproducibly, with full fine-tuning and with LoRA; bad parameters give one-line errors."""

from __future__ import annotations

import json
import math
import sysconfig
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

import unlearn
from unlearn.cli import main
from unlearn.methods import losses as L
from unlearn.methods.training import parse_lora

TRAINED = ("gradient-ascent", "graddiff", "npo", "simnpo", "ihl", "rmu")


def _logits(rows):
    """[1, T, V] logits from rows of probabilities."""
    return torch.tensor([rows], dtype=torch.float32).log()


def test_nll_and_sequence_logprob():
    logits = _logits([[0.25] * 4, [0.5, 0.25, 0.125, 0.125], [0.25] * 4])
    labels = torch.tensor([[-100, 1, 0]])  # position 0 predicts label 1 (p=0.25), position 1 predicts 0 (p=0.5)
    assert float(L.nll(logits, labels)) == pytest.approx(-(math.log(0.25) + math.log(0.5)) / 2)
    logp, n = L.sequence_logprob(logits, labels)
    assert float(logp[0]) == pytest.approx(math.log(0.125)) and int(n[0]) == 2
    masked = torch.tensor([[-100, -100, 0]])
    assert float(L.nll(logits, masked)) == pytest.approx(-math.log(0.5))


def test_kl_to_reference():
    p, q = [0.5, 0.5], [0.9, 0.1]
    labels = torch.tensor([[0, 0]])
    assert float(L.kl_to_reference(_logits([p, p]), _logits([p, p]), labels)) == pytest.approx(0.0, abs=1e-7)
    expected = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # KL(ref=q || model=p)
    assert float(L.kl_to_reference(_logits([p, p]), _logits([q, q]), labels)) == pytest.approx(expected, rel=1e-5)


def test_npo_and_simnpo():
    beta = 0.1
    zero = torch.tensor([-3.0])
    assert float(L.npo(zero, zero, beta)) == pytest.approx((2 / beta) * math.log(2))  # log π = log π_ref
    # log π − log π_ref = −10: −(2/β) log σ(1) = (2/β) log(1 + e^−1)
    assert float(L.npo(torch.tensor([-13.0]), torch.tensor([-3.0]), beta)) == pytest.approx(20 * math.log1p(math.e**-1))
    # SimNPO (open-unlearning): −(2/β) log σ(β (−log π/|y| − δ)) with log π = −4, |y| = 2, β = 2.5, δ = 1
    # → σ(2.5 · (2 − 1)) = σ(2.5)
    got = L.simnpo(torch.tensor([-4.0]), torch.tensor([2]), 2.5, 1.0)
    assert float(got) == pytest.approx(-(2 / 2.5) * math.log(1 / (1 + math.exp(-2.5))))


def test_inverted_hinge():
    logits = _logits([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    # position 0 predicts token 0 (1 + 0.5 − 0.3 = 1.2), position 1 predicts token 2 (1 + 0.2 − 0.5 = 0.7)
    assert float(L.inverted_hinge(logits, torch.tensor([[-100, 0, 2]]))) == pytest.approx((1.2 + 0.7) / 2, rel=1e-5)


def test_rmu_terms():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    control = torch.tensor([1.0, 0.0])
    mask = torch.tensor([[True, False]])
    assert float(L.rmu_forget(h, control, mask)) == pytest.approx((0 + 4) / 2)  # only token 0: (0² + 2²)/2
    assert float(L.rmu_retain(h, h + 1, torch.tensor([[True, True]]))) == pytest.approx(1.0)


def test_parse_lora():
    assert parse_lora("r=8") == {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}
    got = parse_lora("r=4,alpha=8,dropout=0.1,targets=q_proj;v_proj")
    assert got["target_modules"] == ["q_proj", "v_proj"] and got["lora_alpha"] == 8.0
    for bad in ("r=0", "rank=4", "r", "dropout=1"):
        with pytest.raises(ValueError):
            parse_lora(bad)


@pytest.mark.parametrize("method", TRAINED)
def test_every_trained_method_changes_the_model_and_saves_a_plain_checkpoint(run_tiny, method):
    result = run_tiny(method, method, {"steps": 2, "lr": 1e-3, "batch_size": 2})
    m = result.manifest
    assert m["model"]["sha256_after"] != m["model"]["sha256_before"]
    assert [s["step"] for s in result.metrics["train_log"]] == [1, 2]
    assert all(math.isfinite(s["loss"]) for s in result.metrics["train_log"])
    model = AutoModelForCausalLM.from_pretrained(result.run_dir / "model").eval()
    from unlearn.data.chunking import build_corpus
    from unlearn.data.sources import DataSpec
    from unlearn.eval.metrics import evaluate_split

    tok = __import__("transformers").AutoTokenizer.from_pretrained(result.run_dir / "model")
    spec = DataSpec(result.config.forget.source)
    corpus = build_corpus("forget", spec, tok, seq_len=32, eval_tokens=128, stats_tokens=256, seed=0)
    again = evaluate_split(model, corpus.eval, batch_size=4)
    assert again["loss"] == pytest.approx(result.after["forget"]["loss"], abs=1e-4)


def test_rmu_trains_only_the_chosen_projections(run_tiny, tiny_checkpoint):
    result = run_tiny("rmu", "rmu", {"steps": 2, "lr": 1e-2, "layer": 1, "update_layers": [1]})
    assert result.manifest["method_facts"]["update_layers"] == [1]
    before = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("llama"))
    after = AutoModelForCausalLM.from_pretrained(result.run_dir / "model")
    changed = {n for n, p in after.state_dict().items() if not torch.equal(p, before.state_dict()[n])}
    assert changed == {"model.layers.1.mlp.down_proj.weight"}


def test_training_is_reproducible_and_lora_merges(run_tiny):
    a = run_tiny("a", "npo", {"steps": 3, "lr": 1e-3, "batch_size": 2})
    b = run_tiny("b", "npo", {"steps": 3, "lr": 1e-3, "batch_size": 2})
    assert a.metrics["train_log"] == b.metrics["train_log"]
    assert a.manifest["model"]["sha256_after"] == b.manifest["model"]["sha256_after"]
    # activation checkpointing recomputes the same activations: the same losses
    c = run_tiny("c", "npo", {"steps": 3, "lr": 1e-3, "batch_size": 2, "checkpointing": True})
    for x, y in zip(a.metrics["train_log"], c.metrics["train_log"], strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
    lora = run_tiny("lora", "graddiff", {"steps": 2, "lr": 1e-2, "lora": "r=4,targets=q_proj;down_proj"})
    saved = AutoModelForCausalLM.from_pretrained(lora.run_dir / "model")
    assert not any("lora" in k for k in saved.state_dict())
    assert lora.manifest["model"]["sha256_after"] != lora.manifest["model"]["sha256_before"]


@pytest.mark.parametrize(
    "method,params,message",
    [
        ("npo", ["--set", "beta=-1"], "beta"),
        ("simnpo", ["--set", "delta=-0.5"], "delta"),
        ("rmu", ["--set", "layer=99"], "layer 99 does not exist"),
        ("graddiff", ["--set", "lora=r=4,targets=act_fn"], "not a linear layer"),
        ("graddiff", ["--set", "lora=rank=4"], "lora"),
        ("npo", ["--set", "retain_loss=mse"], "retain_loss"),
        ("gradient-ascent", ["--set", "steps=0"], "steps"),
    ],
)
def test_bad_method_parameters(tmp_path, tiny_checkpoint, text_files, method, params, message):
    code, prose = text_files
    args = ["run", "--model", str(tiny_checkpoint("llama")), "--forget", str(code), "--retain", str(prose)]
    args += ["--method", method, *params, "--out", str(tmp_path / "runs"), "--seq-len", "32", "--stats-tokens", "256"]
    args += ["--eval-tokens", "128", "--val-tokens", "0", "--dtype", "fp32"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_methods_lists_trained_methods():
    info = unlearn.methods()
    assert set(TRAINED) <= set(info)
    assert info["npo"]["parameters"]["beta"]["default"] == 0.1
    assert json.dumps(info, default=str)


def _qa_budgets(qa) -> dict:
    """Run settings for the 6-question QA file as forget data: one 96-token row per question, all of them."""
    return dict(forget={"source": str(qa), "format": "qa"}, stats_tokens=6 * 96, eval_tokens=6 * 96, seq_len=96)


def _qa_file(tmp_path):
    rows = [{"question": f"What does module {n} do?", "answer": f"Module {n} handles {n} tasks."} for n in "abcdef"]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_learn_fits_qa_answers_and_refuses_an_existing_folder(tmp_path, tiny_checkpoint):
    qa = _qa_file(tmp_path)
    out = tmp_path / "learnt"
    r = CliRunner().invoke(
        main,
        [
            "learn",
            "--model",
            str(tiny_checkpoint("llama")),
            "--data",
            str(qa),
            "--out",
            str(out),
            "--steps",
            "30",
            "--lr",
            "1e-2",
            "--batch-size",
            "3",
            "--seq-len",
            "96",
            "--dtype",
            "fp32",
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.stderr
    record = json.loads((out / "learn.json").read_text())
    assert record["data"] == {**record["data"], "format": "qa", "rows": 6}
    assert record["log"][-1]["loss"] < 0.5 * record["log"][0]["loss"]  # it learnt the answers
    assert AutoModelForCausalLM.from_pretrained(out) is not None
    again = CliRunner().invoke(
        main,
        ["learn", "--model", str(tiny_checkpoint("llama")), "--data", str(qa), "--out", str(out)],
        catch_exceptions=False,
    )
    assert again.exit_code == 2 and "already exists" in again.stderr


def test_qa_format_unlearning_scores_answers_only(run_tiny, tmp_path):
    qa = _qa_file(tmp_path)
    result = run_tiny(
        "qa",
        "npo",
        {"steps": 2, "lr": 1e-3, "batch_size": 2},
        **_qa_budgets(qa),
    )
    assert result.manifest["data"]["forget"]["segments"] == 6
    # answers only: each row scores its answer tokens and EOS, not the prompt or padding
    assert 0 < result.before["forget"]["n_tokens"] < 6 * 96 / 2


def test_dpo_loss():
    z = torch.tensor([-2.0])  # open-unlearning's compute_dpo_loss: −(2/β) log σ(β (...))
    assert float(L.dpo(z, z, z, z, 0.1)) == pytest.approx(20 * math.log(2))
    # chosen gains 5 nats over the reference, rejected loses 5: −(2/0.1) log σ(0.1 · 10) = 20 log(1 + e^−1)
    got = L.dpo(torch.tensor([3.0]), torch.tensor([-7.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.1)
    assert float(got) == pytest.approx(20 * math.log1p(math.e**-1))


def test_idk_dpo_prefers_refusals_on_qa_forget_data(run_tiny, tmp_path):
    qa = _qa_file(tmp_path)
    result = run_tiny(
        "idk",
        "idk-dpo",
        {"steps": 4, "lr": 1e-2, "batch_size": 3},
        **_qa_budgets(qa),
    )
    log = result.metrics["train_log"]
    # the policy starts as the reference: −(2/β) log σ(0) with β = 0.1
    assert log[0]["forget_loss"] == pytest.approx(20 * math.log(2), abs=2e-3)
    assert log[-1]["forget_loss"] < log[0]["forget_loss"]
    with pytest.raises(unlearn.UnlearnError, match="idk-dpo needs question-answer forget data"):
        run_tiny("idk-text", "idk-dpo", {"steps": 1})


def test_budget_stops_training_and_restores_the_last_state_within_budget(tmp_path, tiny_checkpoint):
    lib = Path(sysconfig.get_paths()["stdlib"])  # retain text on which the tiny model's top-10 is not 0
    args = ["run", "--model", str(tiny_checkpoint("llama")), "--forget", str(lib / "textwrap.py")]
    args += ["--retain", str(lib / "argparse.py")]
    args += ["--out", str(tmp_path / "runs"), "--seq-len", "32", "--stats-tokens", "256", "--eval-tokens", "128"]
    args += ["--val-tokens", "128", "--dtype", "fp32", "--method", "gradient-ascent", "--set", "steps=40"]
    args += ["--set", "lr=0.05", "--set", "eval_every=2", "--budget", "retain:top10=1%", "--name", "b", "--json"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["stop_reason"].startswith("budget: validation retain top10 dropped")
    last = m["steps"][-1]
    assert last["validation"]["retain_drop"]["top10"] > 0.01  # the check that stopped it
    kept = [s for s in m["steps"][:-1]]
    for s in kept:
        assert s["validation"]["retain_drop"]["top10"] <= 0.01
    # the saved model is the restored state: its validation retain top1 is within budget again
    assert "restored the state after step" in m["stop_reason"]
    bad = CliRunner().invoke(main, args[:-5] + ["--budget", "retain=5%", "--name", "c"], catch_exceptions=False)
    assert bad.exit_code == 2 and "--budget expects" in bad.stderr
    bad = CliRunner().invoke(main, args[:-5] + ["--budget", "utility=1.5", "--name", "c"], catch_exceptions=False)
    assert bad.exit_code == 2 and "utility=X needs 0 < X < 1" in bad.stderr
    ok = CliRunner().invoke(
        main, args[:-5] + ["--budget", "utility=99%", "--name", "u", "--json"], catch_exceptions=False
    )
    assert ok.exit_code == 0 and json.loads(ok.stdout)["stop_reason"].startswith("budget: validation retain top1")


def test_fila_factors_and_initialisation_keep_the_model_unchanged(run_tiny):
    from unlearn.methods.fila import EPS, fila_factors

    torch.manual_seed(0)
    w = torch.randn(6, 4)
    # equal row importance: FILA is the plain truncated SVD; full rank reproduces W (up to the 1e-5 in 1/(r+eps))
    b, a = fila_factors(w, torch.ones(6, 4), 4)
    assert torch.allclose(b @ a, w, atol=1e-4)
    b1, a1 = fila_factors(w, torch.ones(6, 4), 1)
    u, s, vh = torch.linalg.svd(w)
    assert torch.allclose(b1 @ a1, s[0] * u[:, :1] @ vh[:1], atol=1e-4)
    # the authors' split with LoRA scaling s: A = (S/s)^½ Vᵀ, B = U (S/s)^½ / (r + 1e-5), so s·B·A ≈ W
    imp = torch.full((6, 4), 0.25)  # row sums 1: r = 1
    b2, a2 = fila_factors(w, imp, 2, scaling=4.0)
    torch.testing.assert_close(a2.norm(dim=1), (s[:2] / 4).sqrt(), rtol=1e-5, atol=0)
    torch.testing.assert_close(b2.norm(dim=0), (s[:2] / 4).sqrt() / (1 + EPS), rtol=1e-5, atol=0)
    torch.testing.assert_close(4.0 * b2 @ a2, s[0] * u[:, :1] @ vh[:1] + s[1] * u[:, 1:2] @ vh[1:2], atol=1e-4, rtol=0)
    # a row with huge importance is reproduced first by a rank-1 factorisation
    imp = torch.ones(6, 4)
    imp[2] = 1e6
    b1, a1 = fila_factors(w, imp, 1)
    assert torch.allclose((b1 @ a1)[2], w[2], atol=1e-3)

    result = run_tiny("fila", "ihl", {"steps": 1, "lr": 1e-12, "lora": "r=2,targets=q_proj;down_proj", "fila": True})
    before = result.before["forget"]["loss"]
    assert result.after["forget"]["loss"] == pytest.approx(before, abs=1e-3)  # W − BA + BA: unchanged at start
    with pytest.raises(unlearn.UnlearnError, match="fila initialises LoRA adapters"):
        run_tiny("fila-bad", "ihl", {"fila": True})


def test_rmu_with_lora_adapts_only_its_projections(run_tiny, tiny_checkpoint):
    result = run_tiny("rmu-lora", "rmu", {"steps": 2, "lr": 1e-2, "layer": 1, "update_layers": [1], "lora": "r=2"})
    before = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("llama")).state_dict()
    after = AutoModelForCausalLM.from_pretrained(result.run_dir / "model").state_dict()
    assert {n for n, p in after.items() if not torch.equal(p, before[n])} == {"model.layers.1.mlp.down_proj.weight"}


@pytest.mark.parametrize(
    "method,params",
    [
        ("gradient-ascent", ["--set", "lr=0.05", "--set", "eval_every=1"]),
        ("selective-pruning", ["--set", "ff_frac=0.1", "--set", "attn_frac=0"]),
    ],
)
def test_kl_budget(tmp_path, tiny_checkpoint, method, params):
    lib = Path(sysconfig.get_paths()["stdlib"])
    args = ["run", "--model", str(tiny_checkpoint("llama")), "--forget", str(lib / "textwrap.py")]
    args += ["--retain", str(lib / "argparse.py"), "--out", str(tmp_path / "runs"), "--seq-len", "32"]
    args += ["--stats-tokens", "256", "--eval-tokens", "128", "--val-tokens", "128", "--dtype", "fp32"]
    args += ["--method", method, "--set", "steps=5", *params, "--budget", "kl=1e-9", "--json"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["stop_reason"].startswith("budget: validation retain KL(original ‖ model)")
    assert m["steps"][-1]["validation"]["retain_kl"] > 1e-9
    # the state kept is the one before the first change: the model is the original again (and is not healed)
    assert m["after"]["retain"]["loss"] == pytest.approx(m["before"]["retain"]["loss"], abs=1e-5)
    if method == "selective-pruning":
        assert m["stop_reason"].endswith("nothing pruned, so not healed")


def test_lora_flag(tmp_path, tiny_checkpoint, text_files):
    code, prose = text_files
    args = ["run", "--model", str(tiny_checkpoint("llama")), "--forget", str(code), "--retain", str(prose)]
    args += ["--out", str(tmp_path / "runs"), "--seq-len", "32", "--stats-tokens", "256", "--eval-tokens", "128"]
    args += ["--val-tokens", "0", "--dtype", "fp32", "--method", "npo", "--set", "steps=1", "--lora", "r=4"]
    r = CliRunner().invoke(main, [*args, "--name", "l", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    saved = json.loads((tmp_path / "runs" / "l" / "manifest.json").read_text())
    assert saved["model"]["sha256_after"] != saved["model"]["sha256_before"]
    assert "lora: r=4" in (tmp_path / "runs" / "l" / "config.yaml").read_text()
    r = CliRunner().invoke(main, [*args[:-2], "--lora", "r=0", "--name", "m"], catch_exceptions=False)
    assert r.exit_code == 2 and "lora" in r.stderr.lower()


def test_sam_takes_the_gradient_at_the_sharpest_nearby_weights():
    """One SAM step (sam_rho) equals AdamW fed the gradient taken at w + ρ·g/‖g‖, applied from w; without
    sam_rho the same step differs."""
    import copy

    from conftest import bigram_split, tiny_model

    from unlearn.methods.training import TrainConfig, fine_tune
    from unlearn.progress import Reporter

    model = tiny_model("llama")
    split = bigram_split(range(3, 60), rows=4, width=16, seed=0)
    ids = split.input_ids
    rho, lr = 0.5, 1e-3

    def gradient(m):
        m.zero_grad()
        m(input_ids=ids, labels=ids).loss.backward()
        return [p.grad.clone() for p in m.parameters()]

    manual = copy.deepcopy(model).float().train().requires_grad_(True)
    g = gradient(manual)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in g]))
    with torch.no_grad():
        for p, x in zip(manual.parameters(), g):
            p.add_(x, alpha=rho / float(norm))
    g_sharp = gradient(manual)
    with torch.no_grad():
        for p, x in zip(manual.parameters(), g):
            p.sub_(x, alpha=rho / float(norm))
        for p, x in zip(manual.parameters(), g_sharp):
            p.grad = x
    torch.nn.utils.clip_grad_norm_(list(manual.parameters()), 1.0)
    torch.optim.AdamW(manual.parameters(), lr=lr, weight_decay=0.0).step()

    def one_step(sam_rho):
        cfg = TrainConfig(steps=1, lr=lr, batch_size=4, sam_rho=sam_rho)
        return fine_tune(copy.deepcopy(model), split, cfg, seed=0, reporter=Reporter()).model

    sam, plain = one_step(rho), one_step(0.0)
    for a, b in zip(sam.parameters(), manual.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert max(float((a - c).detach().abs().max()) for a, c in zip(sam.parameters(), plain.parameters())) > 1e-4
    with pytest.raises(ValueError, match="grad_accum 1"):
        TrainConfig(sam_rho=0.1, grad_accum=2)
