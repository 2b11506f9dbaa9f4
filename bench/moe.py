"""Unlearning on a mixture-of-experts model (issue 21): UOE against its inner method on every parameter and against
selective pruning of expert neurons, on a tiny random-init MoE that first learns a small corpus.

1. A byte-level BPE tokenizer (``--vocab``) is trained on the corpus: Python code (standard-library modules) and
   English prose (WikiText-2's test split, ``../shared/data/text``).
2. A Qwen2-MoE-style model is built from a config (``--layers`` layers, ``--experts`` experts of width ``--width``,
   top-2 routing, a shared expert, hidden ``--hidden``; random init) and learns the corpus with ``unlearn learn``.
3. Each method forgets the code and keeps the prose (``unlearn run``, the same chunks for every method) and the
   routing of the held-out code and prose chunks is compared with the learnt model's: the share of (token, layer)
   routing decisions whose top-2 set changed and of tokens routed differently in at least one layer.

Prints one JSON object (progress on stderr); ``--out`` keeps the models and run folders.

    python bench/moe.py --out /tmp/moe > bench/results/moe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import time
from pathlib import Path

import torch

import unlearn
from unlearn.data.chunking import build_corpus
from unlearn.data.sources import DataSpec
from unlearn.models.adapters import adapter_for
from unlearn.models.experts import routing, routing_shift
from unlearn.models.load import cpu_level

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "wikitext2_test.txt"
CODE = ("argparse.py", "textwrap.py", "shlex.py", "json/decoder.py", "json/encoder.py", "csv.py", "string.py")
SEQ_LEN, EVAL_TOKENS, STATS_TOKENS, BATCH = 128, 4096, 4096, 8
TRAINED = {"steps": 30, "lr": 1e-3, "batch_size": 8}


def methods(inner: str) -> dict[str, dict]:
    """Each unlearning run: method and settings (the trained ones share steps, learning rate and batch)."""
    uoe = {**TRAINED, "inner": inner}
    return {
        f"uoe ({inner}, anchor 100: default)": {"method": "uoe", "method_config": uoe},
        f"uoe ({inner}, anchor 1)": {"method": "uoe", "method_config": {**uoe, "anchor_weight": 1.0}},
        f"uoe ({inner}, no anchor)": {"method": "uoe", "method_config": {**uoe, "anchor_weight": 0}},
        f"uoe ({inner}, router frozen, no anchor)": {
            "method": "uoe",
            "method_config": {**uoe, "anchor_weight": 0, "train_router": False},
        },
        f"{inner}, all parameters": {"method": inner, "method_config": dict(TRAINED)},
        "selective pruning, 2 % of expert neurons": {
            "method": "selective-pruning",
            "method_config": {"ff_frac": 0, "expert_frac": 0.02},
        },
    }


def corpora(work: Path, prose_chars: int) -> tuple[Path, Path, Path]:
    """The code, prose and learning (both) files."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    code, prose, both = work / "code.txt", work / "prose.txt", work / "learn.txt"
    code.write_text("\n\n".join((lib / n).read_text(encoding="utf-8") for n in CODE), encoding="utf-8")
    prose.write_text(TEXT.read_text(encoding="utf-8")[:prose_chars], encoding="utf-8")
    both.write_text(code.read_text(encoding="utf-8") + "\n\n" + prose.read_text(encoding="utf-8"), encoding="utf-8")
    return code, prose, both


def tiny_moe(work: Path, texts: list[str], args) -> Path:
    """A random-init Qwen2-MoE-style checkpoint with its own BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|pad|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=special[0], bos_token=special[0], pad_token=special[1]
    )
    config = AutoConfig.for_model(
        "qwen2_moe",
        vocab_size=len(fast),
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=args.width,
        moe_intermediate_size=args.width,
        shared_expert_intermediate_size=args.width,
        num_experts=args.experts,
        num_experts_per_tok=2,
        max_position_embeddings=512,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(args.seed)
    path = work / "random"
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def held_out(model_dir: Path, source: Path):
    """The evaluation chunks of ``source`` exactly as the runs below split it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    spec = DataSpec(str(source))
    return build_corpus(
        "x", spec, tok, seq_len=SEQ_LEN, eval_tokens=EVAL_TOKENS, stats_tokens=STATS_TOKENS, seed=0
    ).eval


def shift(original, model_dir: Path, splits: dict, target: tuple[int, int] | None) -> dict:
    """Routing shift of the model in ``model_dir`` against ``original`` (routings of ``splits``); with ``target``
    (UOE's layer and expert) also the share of tokens choosing it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    adapter = adapter_for(model)
    return {
        name: routing_shift(original[name], routing(model, adapter, split, BATCH), target)
        for name, split in splits.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="work folder (models, run folders)")
    ap.add_argument("--inner", default="npo", help="UOE's inner method, also run on every parameter")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--width", type=int, default=128, help="each expert's (and the shared expert's) width")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--learn-epochs", type=float, default=6.0)
    ap.add_argument("--learn-tokens", type=int, default=65536, help="tokens of the corpus to learn")
    ap.add_argument("--prose-chars", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a smoke test: 2 layers, 4 experts, few steps (seconds)")
    args = ap.parse_args()
    if args.quick:
        args.layers, args.experts, args.hidden, args.width, args.vocab = 2, 4, 32, 32, 512
        args.learn_epochs, args.learn_tokens, args.prose_chars = 0.5, 8192, 60_000
        TRAINED["steps"] = 2
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    code, prose, both = corpora(args.out, args.prose_chars)
    random_dir = tiny_moe(args.out, [code.read_text(), prose.read_text()], args)
    learnt = args.out / "learnt"
    if not learnt.exists():
        print("learning the corpus", file=sys.stderr)
        unlearn.learn(
            str(random_dir), str(both), learnt, epochs=args.learn_epochs, lr=2e-3, batch_size=BATCH,
            seq_len=SEQ_LEN, tokens=args.learn_tokens, dtype="fp32", device="cpu", seed=args.seed,
        )  # fmt: skip
    learn_record = json.loads((learnt / "learn.json").read_text())
    splits = {"forget": held_out(learnt, code), "retain": held_out(learnt, prose)}
    from transformers import AutoModelForCausalLM

    original_model = AutoModelForCausalLM.from_pretrained(learnt, dtype=torch.float32).eval()
    original = {n: routing(original_model, adapter_for(original_model), s, BATCH) for n, s in splits.items()}
    rows = {}
    for name, spec in methods(args.inner).items():
        print(f"running {name}", file=sys.stderr)
        start = time.perf_counter()
        result = unlearn.run(
            {
                "model": str(learnt),
                "forget": {"source": str(code)},
                "retain": {"source": str(prose)},
                "seq_len": SEQ_LEN,
                "eval_tokens": EVAL_TOKENS,
                "stats_tokens": STATS_TOKENS,
                "val_tokens": 0,
                "batch_size": BATCH,
                "dtype": "fp32",
                "device": "cpu",
                "report": False,
                "out_dir": str(args.out / "runs"),
                "name": name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "").replace("%", "pc"),
                "seed": args.seed,
                **spec,
            }
        )
        facts = result.manifest["method_facts"]
        target = (facts["targets"][0]["layer"], facts["targets"][0]["expert"]) if "targets" in facts else None
        rows[name] = {
            "forget_top1_drop": round(result.after["forget_drop"]["top1"], 4),
            "retain_top1_drop": round(result.after["retain_drop"]["top1"], 4),
            "forget_loss": [round(result.before["forget"]["loss"], 4), round(result.after["forget"]["loss"], 4)],
            "retain_loss": [round(result.before["retain"]["loss"], 4), round(result.after["retain"]["loss"], 4)],
            "routing_shift": shift(original, result.run_dir / "model", splits, target),
            "targets": facts.get("targets"),
            "trained": facts.get("trained"),
            "pruned": result.manifest["pruned_total"],
            "seconds": round(time.perf_counter() - start, 1),
        }
    out = {
        "machine": {"cpu_level": cpu_level(), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")},
        "model": {
            "family": "qwen2_moe",
            "layers": args.layers,
            "experts": args.experts,
            "top_k": 2,
            "hidden": args.hidden,
            "width": args.width,
            "vocab": args.vocab,
            "parameters": sum(p.numel() for p in original_model.parameters()),
        },
        "learn": {
            "steps": len(learn_record["log"]),
            "loss_first": learn_record["log"][0]["loss"],
            "loss_last": learn_record["log"][-1]["loss"],
            "seconds": learn_record["timings_s"]["total"],
        },
        "original": {
            "forget_affinity": original["forget"].summary(),
            "retain_affinity": original["retain"].summary(),
        },
        "trained_settings": TRAINED,
        "methods": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
