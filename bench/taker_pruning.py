"""Faithfulness: our ``paper`` preset against taker 1.2.3's own pruning code, step by step, on the same tokens.

Prints one JSON object. The data is the efficacy benchmark's (``bench/efficacy.py``): statistics on the
even-numbered standard-library modules and the first half of wikitext-2, evaluation on the odd-numbered modules
and the second half. Both sides prune the bundled model (bf16) for ``--steps`` steps of 2 % of the feed-forward
neurons with ``abs`` importance, re-collecting statistics on the pruned model before every step:

* ours: ``unlearn.run`` with ``--preset paper``;
* taker: in its own virtual environment (the one ``bench/taker_compare.py`` builds), per step
  ``taker.activations.get_midlayer_data`` on the retain ("focus") and forget ("cripple") statistics chunks, then
  ``taker.prune.score_and_prune`` with ``PruningConfig(ff_frac=0.02, ff_eps=1e-3, ff_scoring="abs",
  attn_frac=0)`` — the scoring, top-fraction selection and neuron deletion of taker's ``prune_and_evaluate``.
  taker is handed the exact token rows of our chunks (as in ``taker_compare.py``).

Each step's pruned set is scored on the same evaluation chunks by the same top-1 rule (the next token is the
argmax; positions whose target is a special token are not counted) in two ways: taker's set applied to our
model and scored by ``unlearn.eval.metrics`` (``taker_set_our_forward``: any difference from ours is the
pruning algorithm's), and taker's own pruned model scored by the same rule written out in the child
(``taker_own_forward``: taker's forward differs from the stock one by its hooks and bf16 rounding, by about
0.01 top-1 before anything is pruned, so relative drops are given for it). ``max_top1_diff`` is the largest
difference between ours and ``taker_set_our_forward`` over steps and corpora; the check passes at ≤ 0.01.
``pruned_overlap`` is the Jaccard overlap of the two final pruned sets: taker counts special tokens
(separators) in its statistics while ours leaves them out, and sums in bf16.

    python bench/taker_pruning.py                 # 3 steps (2, 4, 6 %), 10,240 tokens per split (~8 min)
    python bench/taker_pruning.py --steps 1 --tokens 2048
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

TOLERANCE = 0.01


def taker_child(spec_path: str) -> None:
    """In the taker venv: prune step by step, answering one JSON line per step on stdout."""
    reply_stream = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # taker prints freely

    def reply(obj: dict) -> None:
        reply_stream.write(json.dumps(obj) + "\n")

    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    from taker.activations import get_midlayer_data
    from taker.data_classes import EvalConfig, PruningConfig
    from taker.model import Model
    from taker.prune import score_and_prune

    opt = Model(spec["model"], dtype=spec["taker_dtype"], model_device="cpu", use_accelerator=False)
    rows = {k: torch.load(v, weights_only=True) for k, v in spec["rows"].items()}
    special = {k: torch.load(v, weights_only=True) for k, v in spec["special"].items()}
    decode = opt.tokenizer.decode
    lookup = {}  # taker tokenises each text with opt.get_ids: hand back the chunk's own ids

    def items(split: str):
        out = []
        for r in rows[split]:
            text = decode(r.tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False)
            lookup[text] = r.unsqueeze(0)
            out.append({"text": text})
        return out

    opt.get_ids = lambda text: lookup[text].to(opt.device)

    def collect(split: str):
        data = items(split)
        config = EvalConfig(
            "unlearn-faithful",
            dataset_custom_load_fn=lambda: {"train": data},
            dataset_split="train",
            is_train_mode=True,
            streaming=False,
        )
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            out = get_midlayer_data(
                opt, eval_config=config, sample_size=len(data) * rows[split].shape[1], calculate_attn=False
            )
        if out.texts_viewed != len(data):
            raise RuntimeError(f"taker processed {out.texts_viewed}/{len(data)} chunks: {printed.getvalue()[-500:]}")
        return out

    deleted = []
    original_delete = opt.hooks.delete_mlp_neurons

    def record_delete(criteria, layer=None):
        deleted.append(criteria.clone())
        return original_delete(criteria, layer)

    opt.hooks.delete_mlp_neurons = record_delete
    config = PruningConfig(
        spec["model"], ff_frac=spec["ff_frac"], ff_eps=1e-3, ff_scoring="abs", attn_frac=0.0, dtype=spec["taker_dtype"]
    )

    @torch.no_grad()
    def top1(split: str) -> float:
        hits = n = 0
        for r, s in zip(rows[split], special[split]):
            ids = r.unsqueeze(0)
            logits = opt.predictor(input_ids=ids, use_cache=False).logits[0, :-1].float()
            valid = ~s[1:]
            hits += int(((logits.argmax(-1) == r[1:]) & valid).sum())
            n += int(valid.sum())
        return hits / n

    reply({"ready": True, "before": {"forget": top1("forget_eval"), "retain": top1("retain_eval")}})
    for step in range(1, spec["steps"] + 1):
        focus, cripple = collect("retain_stats"), collect("forget_stats")
        opt.hooks.disable_all_collect_hooks()
        score_and_prune(opt, focus, cripple, config)
        pruned = torch.stack(deleted).any(0)
        reply(
            {
                "step": step,
                "forget": top1("forget_eval"),
                "retain": top1("retain_eval"),
                "pruned": {str(layer): pruned[layer].nonzero().flatten().tolist() for layer in range(len(pruned))},
            }
        )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--taker-child":
        taker_child(sys.argv[2])
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from efficacy import SHARED, write_data
    from taker_compare import TAKER_DTYPES, TAKER_VERSION, TakerChild, taker_venv

    import unlearn
    from unlearn.pipeline.corpora import corpus_for
    from unlearn.pipeline.validate import coerce_config
    from unlearn.eval.metrics import evaluate_split
    from unlearn.models.adapters import adapter_for
    from unlearn.models.hooks import Ablation, ablated
    from unlearn.models.load import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=10240, help="statistics and evaluation tokens per corpus")
    ap.add_argument("--out", help="folder for the data and our run (default: a temporary folder)")
    ap.add_argument("--venv", type=Path, help="taker venv (default: the one bench/taker_compare.py uses)")
    args = ap.parse_args()
    threads = torch.get_num_threads()
    _, python = taker_venv(args.venv)

    with tempfile.TemporaryDirectory(prefix="taker-pruning-") as tmp:
        out = Path(args.out or tmp)
        files = write_data(out / "data", SHARED)
        config = {
            "forget": {"source": str(files["forget-train.txt"]), "eval_source": str(files["forget-eval.txt"])},
            "retain": {
                "source": str(files["retain-train/wikitext2_test.txt"]),
                "eval_source": str(files["wikitext2_test.txt"]),
            },
            "stats_tokens": args.tokens,
            "eval_tokens": args.tokens,
            "dtype": "bf16",
            "preset": "paper",
            "method_config": {"steps": args.steps},
            "out_dir": str(out / "runs"),
            "name": "paper",
            "report": False,
        }
        ours = unlearn.run(config)
        cfg = coerce_config(ours.run_dir / "config.yaml")
        loaded = load_model(cfg.model, "bf16", "cpu")
        spec = {"rows": {}, "special": {}}
        evals = {}
        for which, data in (("forget", cfg.forget), ("retain", cfg.retain)):
            corpus = corpus_for(which, data, loaded.tokenizer, cfg)
            evals[which] = corpus.eval
            for part, split in (("stats", corpus.stats), ("eval", corpus.eval)):
                for key, tensor in (("rows", split.input_ids), ("special", split.special)):
                    path = out / f"{which}_{part}_{key}.pt"
                    torch.save(tensor, path)
                    spec[key][f"{which}_{part}"] = str(path)
        spec.update(
            model=loaded.source,
            taker_dtype=TAKER_DTYPES["bf16"],
            ff_frac=cfg.method_config["ff_frac"],
            steps=args.steps,
            threads=threads,
        )
        (out / "spec.json").write_text(json.dumps(spec))
        child = TakerChild(python, out / "spec.json", threads, out / "taker.log", script=Path(__file__))
        try:
            theirs = [child.read() for _ in range(args.steps + 1)]
        finally:
            child.close()
        ours_pruned = json.loads((ours.run_dir / "pruned_neurons.json").read_text())["ff"]

    # taker's pruned sets, evaluated by our evaluator on our model: differences are the algorithm's alone
    adapter = adapter_for(loaded.model)
    n_ff = adapter.n_neurons(loaded.model, "ff")
    steps, diffs = [], []
    mine_all = [ours.metrics["before"]] + ours.metrics["steps"]
    theirs_all = [{**theirs[0]["before"], "pruned": {}}] + theirs[1:]
    for mine, their in zip(mine_all, theirs_all):
        ablation = Ablation()
        for layer, idx in their["pruned"].items():
            if idx:
                ablation.add(("ff", int(layer)), torch.tensor(idx), torch.zeros(len(idx)), n_ff)
        row = {"step": their.get("step", 0)}
        with ablated(loaded.model, adapter, ablation):
            for which in ("forget", "retain"):
                same = evaluate_split(loaded.model, evals[which], batch_size=cfg.batch_size)["top1"]
                base_ours, base_taker = mine_all[0][which]["top1"], theirs_all[0][which]
                row[which] = {
                    "ours": round(mine[which]["top1"], 4),
                    "taker_set_our_forward": round(same, 4),
                    "taker_own_forward": round(their[which], 4),
                    "relative_drop": {
                        "ours": round(1 - mine[which]["top1"] / base_ours, 4),
                        "taker_own_forward": round(1 - their[which] / base_taker, 4),
                    },
                }
                diffs.append(abs(mine[which]["top1"] - same))
        steps.append(row)
    a = {(int(layer), i) for layer, idx in ours_pruned.items() for i in idx}
    b = {(int(layer), i) for layer, idx in theirs[-1]["pruned"].items() for i in idx}
    print(
        json.dumps(
            {
                "taker": TAKER_VERSION,
                "setting": "paper preset: abs, 2 % FF per step, zero ablation, bf16; stats re-collected every step",
                "tokens_per_split": args.tokens,
                "top1": steps,
                "max_top1_diff": round(max(diffs), 4),
                "tolerance": TOLERANCE,
                "passes": max(diffs) <= TOLERANCE,
                "pruned_overlap": round(len(a & b) / max(len(a | b), 1), 4),
                "pruned": {"ours": len(a), "taker": len(b)},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
