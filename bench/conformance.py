"""Conformance: every metric and loss beside its reference implementation, on the same model and inputs.

Runs the **reference code itself** — the pinned, MIT-licensed files in ``../shared/reference/`` (open-unlearning's
MIAs, privleak, forget quality, model utility, memorisation metrics and trainer losses; TOFU's ROUGE,
forget-quality and model-utility code) — imported from there at run time, never copied. Both sides get the
same model (the bundled SmolLM2-135M-Instruct in float32, or ``--model``) and the same token ids; each row is
one metric or loss::

    {"name", "ours", "reference", "abs_diff", "tolerance", "ok", "note"}

then ``{"all_ok": ..., "rows": N}``. Tolerance: 1e-4 relative (of the larger magnitude, at least 1e-4 absolute
for values near 0) unless the row says why not. Needs ``pip install omegaconf natsort`` (imports of the
reference files) besides the test extras.

    python bench/conformance.py                 # prints one JSON object per line
    python bench/conformance.py --n 6           # fewer texts and questions: faster
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TOLERANCE = 1e-4


# ------------------------------------------------------------------------------------------------- reference code


def reference_modules(ref: Path) -> types.SimpleNamespace:
    """open-unlearning's metric and trainer modules, and TOFU's aggregation functions, from ``ref``."""
    src = ref / "open-unlearning" / "src"
    sys.path.insert(0, str(src))
    # evals/__init__.py imports lm-eval and the benchmark runners: load the metrics package without it
    evals = types.ModuleType("evals")
    evals.__path__ = [str(src / "evals")]
    sys.modules.setdefault("evals", evals)
    # trainer/__init__.py imports every trainer and the Hydra-driven runner: load the package without it
    trainer = types.ModuleType("trainer")
    trainer.__path__ = [str(src / "trainer")]
    sys.modules.setdefault("trainer", trainer)
    import evals.metrics.mia.utils as mia_utils
    import evals.metrics.memorization as memorization
    import evals.metrics.privacy as privacy
    import evals.metrics.utility as utility
    import trainer.utils as trainer_utils
    from evals.metrics.mia import (
        GradNormAttack,
        LOSSAttack,
        MinKPlusPlusAttack,
        MinKProbAttack,
        ReferenceAttack,
        ZLIBAttack,
    )

    sys.path.insert(0, str(ref / "tofu"))
    import utils as tofu_utils  # TOFU's utils.py: get_model_utility, get_forget_quality

    return types.SimpleNamespace(
        mia_utils=mia_utils,
        memorization=memorization,
        privacy=privacy,
        utility=utility,
        trainer_utils=trainer_utils,
        attacks={
            "loss": LOSSAttack,
            "zlib": ZLIBAttack,
            "min_k": MinKProbAttack,
            "min_k_plus_plus": MinKPlusPlusAttack,
            "gradnorm": GradNormAttack,
            "reference": ReferenceAttack,
        },
        tofu_utils=tofu_utils,
        tofu_rouge=function_from(ref / "tofu" / "evaluate_util.py", "eval_rouge_recall"),
        trainers=src / "trainer" / "unlearn",
    )


def function_from(path: Path, name: str):
    """One function of a reference file, run from the file's own source text (its module imports frameworks
    this benchmark does not need, e.g. hydra)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    from rouge_score import rouge_scorer

    namespace = {"rouge_scorer": rouge_scorer, "np": np, "torch": torch}
    exec(compile(ast.Module([node], []), str(path), "exec"), namespace)  # noqa: S102 - the pinned reference file
    return namespace[name]


def trainer_loss(ref, cls_name: str, module: str, attrs: dict, model, inputs):
    """A reference trainer's ``compute_loss`` on one batch, run on a plain object holding the trainer's settings
    (the Trainer machinery around it is not needed)."""
    import importlib

    importlib.import_module("trainer.unlearn.base")  # transformers' Trainer first, with no stand-in around
    # rmu.py imports deepspeed at the top for its multi-GPU path only: an empty stand-in while the file loads
    stand_in = module == "rmu" and "deepspeed" not in sys.modules
    if stand_in:
        sys.modules["deepspeed"] = types.ModuleType("deepspeed")
    try:
        cls = getattr(importlib.import_module(f"trainer.unlearn.{module}"), cls_name)
    finally:
        if stand_in:
            del sys.modules["deepspeed"]
    fake = types.SimpleNamespace(**attrs, model=model)
    methods = ("compute_retain_loss", "forward_with_cache", "get_control_vector", "compute_activation_loss")
    for method in (*methods, "final_loss_value"):
        if hasattr(cls, method):
            setattr(fake, method, types.MethodType(getattr(cls, method), fake))
    with torch.no_grad():
        return float(cls.compute_loss(fake, model, inputs))


# ---------------------------------------------------------------------------------------------------------- rows


ROWS: list[dict] = []


def row(name: str, ours, reference, tolerance: float = TOLERANCE, note: str = "") -> None:
    ours, reference = np.asarray(ours, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    diff = float(np.max(np.abs(ours - reference))) if ours.size else 0.0
    scale = float(max(np.max(np.abs(ours)), np.max(np.abs(reference)), 1.0)) if ours.size else 1.0
    ok = bool(ours.shape == reference.shape and diff <= tolerance * scale)
    shown = lambda a: float(a) if a.size == 1 else [round(float(x), 8) for x in a.ravel()[:4]]  # noqa: E731
    entry = {"name": name, "ours": shown(ours), "reference": shown(reference), "abs_diff": diff}
    entry |= {"tolerance": tolerance, "ok": ok, "note": note}
    ROWS.append(entry)
    print(json.dumps(entry), flush=True)


class Items(torch.utils.data.Dataset):
    """Pre-tokenised items in the reference's format: input_ids, labels (-100 = not scored), attention_mask,
    index."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collate(items):
    """Batch size 1: no padding, so nothing but the model's arithmetic can differ."""
    (it,) = items
    return {k: torch.tensor([v]) if k != "index" else torch.tensor([v]) for k, v in it.items()}


def text_item(tokenizer, text: str, index: int, eos: bool = False) -> dict:
    """Text as open-unlearning's pretraining data (``preprocess_pretraining_instance``): every token scored but
    the first; with ``eos`` an EOS token is appended (the reference's token-wise attacks drop the last scored
    token as the EOS they expect, so both sides then score the same tokens)."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    ids = ids + [tokenizer.eos_token_id] if eos else ids
    return {"input_ids": ids, "labels": [-100] + ids[1:], "attention_mask": [1] * len(ids), "index": index}


def qa_item(prompt_ids: list[int], answer_ids: list[int], index: int, eos_id: int | None = None) -> dict:
    ids = prompt_ids + answer_ids + ([eos_id] if eos_id is not None else [])
    labels = [-100] * len(prompt_ids) + ids[len(prompt_ids) :]
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids), "index": index}


# ----------------------------------------------------------------------------------------------------- sections


def mia_rows(ref, model, other, scorer, texts_in, texts_out) -> dict:
    """The six attacks of open-unlearning, per text and as AUC (the reference labels forget = 0, holdout = 1 and
    scores with higher = holdout; ours labels members = 1 with higher = member: the same AUC)."""
    from unlearn.eval import functional as F
    from unlearn.eval.scoring import Scorer
    from unlearn.eval.suites.mia import mia_samples

    tok = scorer.tokenizer
    ours = {w: mia_samples(scorer, t, k=0.2, max_tokens=None) for w, t in (("in", texts_in), ("out", texts_out))}
    grad = {w: scorer.grad_norms(t) for w, t in (("in", texts_in), ("out", texts_out))}
    other_scorer = Scorer(other, tok)
    ours_ref = {
        w: mia_samples(other_scorer, t, k=0.2, max_tokens=None) for w, t in (("in", texts_in), ("out", texts_out))
    }
    import zlib

    texts = {"in": texts_in, "out": texts_out}

    def scored_text(t):  # open-unlearning compresses the decoded scored tokens (all but the first)
        return tok.decode(tok(t, add_special_tokens=True)["input_ids"][1:], skip_special_tokens=True)

    mine = {
        "loss": lambda w: [-s["loss"] for s in ours[w]],
        "zlib": lambda w: [-s["loss"] / len(zlib.compress(scored_text(t).encode())) for s, t in zip(ours[w], texts[w])],
        "min_k": lambda w: [-s["min_k"] for s in ours[w]],
        "min_k_plus_plus": lambda w: [-s["min_k_plus_plus"] for s in ours[w]],
        "gradnorm": lambda w: grad[w],
        "reference": lambda w: [-(s["loss"] - r["loss"]) for s, r in zip(ours[w], ours_ref[w])],
    }
    for name, attack in ref.attacks.items():
        eos = name in ("min_k", "min_k_plus_plus", "gradnorm")  # the token-wise attacks drop a final EOS
        data = {
            "forget": Items([text_item(tok, t, i, eos) for i, t in enumerate(texts_in)]),
            "holdout": Items([text_item(tok, t, i, eos) for i, t in enumerate(texts_out)]),
        }
        extra = {"k": 0.2, "tokenizer": tok, "p": 2, "reference_model": other}
        model.requires_grad_(name == "gradnorm")  # GradNorm differentiates the loss
        out = ref.mia_utils.mia_auc(attack, model, data, collate, 1, **extra)
        model.requires_grad_(False).zero_grad(set_to_none=True)
        model.eval()
        theirs = {
            w: [out[p]["value_by_index"][str(i)]["score"] for i in range(len(data[p]))]
            for w, p in (("in", "forget"), ("out", "holdout"))
        }
        tol = 1e-3 if name == "gradnorm" else TOLERANCE
        note = {
            "gradnorm": "1e-3: a mean over every parameter tensor of float32 gradient norms from a full backward pass",
            "zlib": "our suite compresses the whole text (the Min-K%++ authors' run.py); open-unlearning the decoded "
            "scored tokens: here both use the latter, so the row checks the formula",
        }.get(name, "")
        row(f"mia {name} scores", mine[name]("in") + mine[name]("out"), theirs["in"] + theirs["out"], tol, note)
        mine_auc = F.auc([-x for x in mine[name]("in")], [-x for x in mine[name]("out")])
        row(f"mia {name} AUC", mine_auc, out["auc"], tol)
    return {"min_k_in": [s["min_k"] for s in ours["in"]], "ours": ours, "ours_ref": ours_ref}


def privleak_rows(ref, scorer, other_scorer, texts_in, texts_out) -> None:
    from unlearn.eval import functional as F
    from unlearn.eval.suites.mia import mia_aucs, mia_samples

    aucs = []
    for sc in (scorer, other_scorer):
        m = mia_samples(sc, texts_in, k=0.4, max_tokens=None)
        n = mia_samples(sc, texts_out, k=0.4, max_tokens=None)
        aucs.append(mia_aucs(m, n)["auc_min_k"])
    theirs = ref.privacy.privleak._metric_fn(
        None,
        pre_compute={"forget": {"agg_value": aucs[0]}},
        reference_logs={"retain_model_logs": {"retain": {"agg_value": aucs[1]}}},
        ref_value=0.5,
    )["agg_value"]
    row("MUSE PrivLeak (Min-K 40 % AUC, model vs reference)", F.privleak(aucs[0], aucs[1]), theirs)
    row(
        "PrivLeak of AUC 0.99 against 0.5228",
        F.privleak(0.99, 0.5228),
        ref.privacy.privleak._metric_fn(
            None,
            pre_compute={"forget": {"agg_value": 0.99}},
            reference_logs={"retain_model_logs": {"retain": {"agg_value": 0.5228}}},
            ref_value=0.5,
        )["agg_value"],
        note="the issue's worked example: -97.9",
    )


def tofu_rows(ref, model, other, scorer, other_scorer, questions) -> None:
    """TOFU: answer probability, truth ratio (forget and retain forms), Prob among options, forget quality,
    model utility, ROUGE-L recall, exact memorisation and extraction strength."""
    from unlearn.eval import functional as F

    tok = scorer.tokenizer
    template = lambda q: f"Question: {q}\nAnswer:"  # noqa: E731

    def scores(sc, pairs):
        return sc.score(pairs)

    ours_ans = scores(scorer, [(template(q["question"]), " " + q["answer"]) for q in questions])
    # the same token ids on the reference side: the prompt's and the scored answer's, exactly as our scorer used
    items = []
    for i, q in enumerate(questions):
        p_ids = scorer._prompt_ids(template(q["question"]))
        a_ids = scorer._cont_ids(" " + q["answer"])
        items.append(qa_item(p_ids, a_ids, i))
    ref_prob = ref.memorization.probability._metric_fn(model, data=Items(items), collators=collate, batch_size=1)
    row(
        "TOFU answer probability (exp of mean answer NLL)",
        [F.normalized_prob(s.logprobs) for s in ours_ans],
        [ref_prob["value_by_index"][i]["prob"] for i in range(len(items))],
    )

    def avg_losses(sc, key):
        out = []
        for q in questions:
            answers = q[key] if isinstance(q[key], list) else [q[key]]
            ss = sc.score([(template(q["question"]), " " + a) for a in answers])
            out.append([-float(np.mean(s.logprobs)) for s in ss])
        return out

    para, pert = avg_losses(scorer, "paraphrased_answer"), avg_losses(scorer, "perturbed_answer")
    ours_tr = [F.truth_ratio([-np.array([x]) for x in pl], -np.array([pa[0]])) for pa, pl in zip(para, pert)]
    correct = {str(i): {"avg_loss": pa[0]} for i, pa in enumerate(para)}
    wrong = {str(i): {"avg_loss": pl} for i, pl in enumerate(pert)}
    for form, aggregator, mine in (
        ("forget", "closer_to_1_better", F.truth_ratio_forget),
        ("retain", "true_better", F.truth_ratio_retain),
    ):
        theirs = ref.memorization.truth_ratio._metric_fn(
            None,
            pre_compute={"correct": {"value_by_index": correct}, "wrong": {"value_by_index": wrong}},
            aggregator=aggregator,
        )
        row(f"TOFU truth ratio ({form} form)", mine(ours_tr), theirs["agg_value"])
    options = ref.memorization.probability_w_options._metric_fn(
        None,
        pre_compute={
            "correct": {"value_by_index": {str(i): {"prob": math.exp(-pa[0])} for i, pa in enumerate(para)}},
            "wrong": {"value_by_index": {str(i): {"prob": [math.exp(-x) for x in pl]} for i, pl in enumerate(pert)}},
        },
    )
    mine_opt = [F.prob_among_choices(-np.array([pa[0]]), [-np.array([x]) for x in pl]) for pa, pl in zip(para, pert)]
    row(
        "TOFU Prob among options (real authors / world facts form)",
        np.mean(mine_opt),
        options["agg_value"],
        note="per-token mean NLL, so one-token arrays carry each answer's mean",
    )

    other_para, other_pert = (
        avg_losses(other_scorer, "paraphrased_answer"),
        avg_losses(other_scorer, "perturbed_answer"),
    )
    other_tr = [
        F.truth_ratio([-np.array([x]) for x in pl], -np.array([pa[0]])) for pa, pl in zip(other_para, other_pert)
    ]
    ks = ref.privacy.ks_test._metric_fn(
        None,
        pre_compute={"forget": {"value_by_index": {str(i): {"score": t} for i, t in enumerate(ours_tr)}}},
        reference_logs={
            "retain_model_logs": {"retain": {"value_by_index": {str(i): {"score": t} for i, t in enumerate(other_tr)}}}
        },
    )
    row("TOFU forget quality (open-unlearning ks_test)", F.forget_quality(ours_tr, other_tr), ks["agg_value"])

    def log(pa, pl):
        return {
            "avg_paraphrased_loss": {str(i): p[0] for i, p in enumerate(pa)},  # noqa: E731
            "average_perturb_loss": {str(i): x for i, x in enumerate(pl)},
        }

    tofu_fq = ref.tofu_utils.get_forget_quality(
        {"eval_log_forget.json": log(para, pert)}, {"eval_log_forget.json": log(other_para, other_pert)}
    )
    row(
        "TOFU forget quality (TOFU's get_forget_quality)",
        F.forget_quality(ours_tr, other_tr),
        tofu_fq["Forget Quality"],
    )

    nine = [0.41, 0.33, 0.72, 0.55, 0.61, 0.48, 0.39, 0.66, 0.52]
    theirs = ref.utility.hm_aggregate._metric_fn(
        None, pre_compute={str(i): {"agg_value": v} for i, v in enumerate(nine)}
    )
    row("TOFU model utility (harmonic mean of nine numbers)", F.harmonic_mean(nine), theirs["agg_value"])

    gen = [q["paraphrased_answer"] for q in questions]
    gold = [q["answer"] for q in questions]
    theirs = ref.tofu_rouge(gen, gold, list(range(len(gold))))["rougeL_recall"]
    row(
        "TOFU ROUGE-L recall (TOFU eval_rouge_recall)",
        [F.rouge_l(g, t)["recall"] for g, t in zip(gen, gold)],
        [theirs[i] for i in range(len(gold))],
    )

    eos_items = [
        qa_item(
            it["input_ids"][: it["labels"].count(-100)],
            it["input_ids"][it["labels"].count(-100) :],
            i,
            tok.eos_token_id,
        )
        for i, it in enumerate(items)
    ]
    em = ref.memorization.exact_memorization._metric_fn(model, data=Items(eos_items), collators=collate, batch_size=1)
    row(
        "exact memorisation",
        [F.exact_memorization(s.correct) for s in ours_ans],
        [em["value_by_index"][i]["score"] for i in range(len(items))],
        note="the reference drops a final EOS",
    )
    es = ref.memorization.extraction_strength._metric_fn(model, data=Items(eos_items), collators=collate, batch_size=1)
    row(
        "extraction strength",
        [F.extraction_strength(s.correct) for s in ours_ans],
        [es["value_by_index"][i]["score"] for i in range(len(items))],
        note="the reference drops a final EOS",
    )


def loss_rows(ref, model, other, tok, texts_in, texts_out) -> None:
    """The trained methods' losses on one forget and one retain batch (two texts each, no padding: equal
    lengths), ours vs open-unlearning's trainers."""
    from unlearn.methods import losses as L

    def batch(texts, n=48):
        ids = torch.tensor([tok(t, add_special_tokens=True)["input_ids"][:n] for t in texts[:2]])
        labels = ids.clone()
        labels[:, :8] = -100  # a prompt part that is not scored
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    f, r = batch(texts_in), batch(texts_out)
    logits = lambda m, b: m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits  # noqa: E731
    with torch.no_grad():
        lf, lr_, ref_f, ref_r = logits(model, f), logits(model, r), logits(other, f), logits(other, r)
        nll_f, nll_r = L.nll(lf, f["labels"]), L.nll(lr_, r["labels"])
        kl_r = L.kl_all_positions(lr_, ref_r)
        logp, n = L.sequence_logprob(lf, f["labels"])
        ref_logp, _ = L.sequence_logprob(ref_f, f["labels"])
    inputs = {"forget": f, "retain": r}
    base = {"gamma": 1.0, "alpha": 1.0, "ref_model": other}
    row("loss GradAscent", -nll_f, trainer_loss(ref, "GradAscent", "grad_ascent", {}, model, inputs))
    row(
        "loss GradDiff (NLL retain)",
        -nll_f + nll_r,
        trainer_loss(ref, "GradDiff", "grad_diff", {**base, "retain_loss_type": "NLL"}, model, inputs),
    )
    row(
        "loss GradDiff (KL retain)",
        -nll_f + kl_r,
        trainer_loss(ref, "GradDiff", "grad_diff", {**base, "retain_loss_type": "KL"}, model, inputs),
    )
    row(
        "loss NPO (β 0.1)",
        L.npo(logp, ref_logp, 0.1) + nll_r,
        trainer_loss(ref, "NPO", "npo", {**base, "beta": 0.1, "retain_loss_type": "NLL"}, model, inputs),
    )
    row(
        "loss SimNPO (β 2.5, δ 0.5)",
        L.simnpo(logp, n, 2.5, 0.5) + nll_r,
        trainer_loss(
            ref, "SimNPO", "simnpo", {**base, "beta": 2.5, "delta": 0.5, "retain_loss_type": "NLL"}, model, inputs
        ),
    )
    alt = batch(texts_out[2:4] if len(texts_out) >= 4 else texts_out)
    with torch.no_grad():
        la, ref_a = logits(model, alt), logits(other, alt)
        win, _ = L.sequence_logprob(la, alt["labels"])
        ref_win, _ = L.sequence_logprob(ref_a, alt["labels"])
    dpo_inputs = {"forget": {"original": f, "alternate": alt}, "retain": r}
    row(
        "loss DPO / IdK-DPO (β 0.1)",
        L.dpo(win, logp, ref_win, ref_logp, 0.1) + nll_r,
        trainer_loss(ref, "DPO", "dpo", {**base, "beta": 0.1, "retain_loss_type": "NLL"}, model, dpo_inputs),
    )

    peer_rows(ref, model, other, f, r, nll_r, base)

    layer = 3
    module = model.model.layers[layer]
    torch.manual_seed(0)
    control = torch.rand(1, 1, model.config.hidden_size)
    control = control / control.norm() * 20
    with torch.no_grad():
        hf = model(**{k: f[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True).hidden_states[
            layer + 1
        ]
        hr = model(**{k: r[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True).hidden_states[
            layer + 1
        ]
        hr_ref = other(**{k: r[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True).hidden_states[
            layer + 1
        ]
    ours = L.rmu_forget(hf, control[0, 0], f["labels"] != -100) + L.rmu_retain(hr, hr_ref, r["labels"] != -100)
    attrs = {
        **base,
        "retain_loss_type": "EMBED_DIFF",
        "steering_coeff": 20,
        "control_vec": control,
        "model_module": module,
        "ref_module": other.model.layers[layer],
    }
    row(
        "loss RMU (steering coefficient 20, layer 3)",
        ours,
        trainer_loss(ref, "RMU", "rmu", attrs, model, inputs),
        note="the project's default scales the coefficient to the model; here both use 20",
    )


def peer_rows(ref, model, other, f, r, nll_r, base) -> None:
    """WGA, SatImp, CE-U, UNDIAL and PDU (issue 21): ours vs open-unlearning's trainers on the same batches."""
    from unlearn.methods import losses as L

    nll_base = {**base, "retain_loss_type": "NLL"}
    inputs = {"forget": f, "retain": r}
    with torch.no_grad():
        lf = model(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits
    row(
        "loss WGA (β 1, NLL retain)",
        L.wga(lf, f["labels"], 1.0) + nll_r,
        trainer_loss(ref, "WGA", "wga", {**nll_base, "beta": 1.0}, model, inputs),
    )
    row(
        "loss SatImp (β₁ 5, β₂ 1, γ 0.1, NLL retain)",
        0.1 * L.satimp(lf, f["labels"], 5.0, 1.0) + nll_r,
        trainer_loss(ref, "SatImp", "satimp", {**nll_base, "gamma": 0.1, "beta1": 5.0, "beta2": 1.0}, model, inputs),
    )
    row(
        "loss CE-U (first answer token left out)",
        L.ce_unlearning(lf, f["labels"], 1),
        trainer_loss(ref, "CEU", "ceu", {"ignore_first_n_answer_tokens": 1}, model, {"forget": f}),
    )
    # UNDIAL: the reference averages over every position (prompt included) and indexes token V − 100 for a −100
    # label; on a batch whose every token is scored both read the same positions
    every = {**f, "labels": f["input_ids"].clone()}
    with torch.no_grad():
        ref_every = other(input_ids=every["input_ids"], attention_mask=every["attention_mask"]).logits
    row(
        "loss UNDIAL (β 10, every token scored, NLL retain)",
        L.undial(lf, ref_every, every["labels"], 10.0) + nll_r,
        trainer_loss(ref, "UNDIAL", "undial", {**nll_base, "beta": 10.0}, model, {"forget": every, "retain": r}),
        note="ours averages only scored positions; the reference every position: equal when all are scored",
    )
    # PDU: the reference takes the logit gap at the scored tokens themselves, ours at the positions predicting
    # them; shifting the labels one place right (and padding a position) gives ours the reference's positions
    pad = torch.full_like(f["labels"][:, :1], -100)
    gap = L.logit_gap(torch.cat([lf, lf[:, :1]], 1), torch.cat([pad, f["labels"]], 1))
    pdu = {**nll_base, "alpha": 2.0, "preferences": [1.0, 2.0], "retain_loss_eps": 1.5, "primal_dual": False}
    row(
        "loss PDU (λ 2, ε 1.5, the reference's positions)",
        gap + 2.0 * (nll_r - 1.5),
        trainer_loss(ref, "PDU", "pdu", {**pdu, "loss_names": ["f", "r"], "log": lambda entry: None}, model, inputs),
        note="ours reads the gap one position earlier (the logits that predict the scored tokens)",
    )


# ----------------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="model (default: the bundled SmolLM2-135M-Instruct)")
    ap.add_argument("--reference", type=Path, default=SHARED / "reference", help="the pinned reference files")
    ap.add_argument("--data", type=Path, default=SHARED / "data", help="../shared/data (MUSE-News, TOFU)")
    ap.add_argument("--n", type=int, default=8, help="texts per MIA side and TOFU questions")
    ap.add_argument("--tokens", type=int, default=96, help="tokens per MIA text (texts are cut at a token boundary)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)

    from unlearn.data.formats import load_texts
    from unlearn.eval.scoring import Scorer
    from unlearn.models.load import load_model

    ref = reference_modules(args.reference)
    loaded = load_model(args.model, "fp32", "cpu")
    model, tok = loaded.model, loaded.tokenizer
    other = copy.deepcopy(model)  # the "reference" / "retrained" model: the same weights, slightly moved
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02 * p.std().clamp_min(1e-3))
    scorer, other_scorer = Scorer(model, tok, batch_size=1), Scorer(other, tok, batch_size=1)

    def cut(texts):
        return [tok.decode(tok(t, add_special_tokens=False)["input_ids"][: args.tokens]) for t in texts[: args.n]]

    muse = args.data / "muse_news" / "privleak"
    texts_in, texts_out = cut(load_texts(str(muse / "forget.jsonl"))), cut(load_texts(str(muse / "holdout.jsonl")))
    questions = [json.loads(line) for line in (args.data / "tofu" / "forget01_perturbed.jsonl").open(encoding="utf-8")][
        : args.n
    ]

    mia_rows(ref, model, other, scorer, texts_in, texts_out)
    privleak_rows(ref, scorer, other_scorer, texts_in, texts_out)
    tofu_rows(ref, model, other, scorer, other_scorer, questions)
    loss_rows(ref, model, other, tok, texts_in, texts_out)
    print(
        json.dumps(
            {
                "all_ok": all(r["ok"] for r in ROWS),
                "rows": len(ROWS),
                "failed": [r["name"] for r in ROWS if not r["ok"]],
            }
        )
    )


if __name__ == "__main__":
    main()
