"""Shared fixtures: a small byte-level BPE tokenizer trained on the fly and tiny random models of every family.

Nothing here downloads anything. ``tiny_checkpoint(family)`` saves a model + tokenizer folder that
``unlearn`` and stock ``transformers`` load like any hub checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import sysconfig
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

FAMILIES = ("llama", "mistral", "qwen2", "gemma", "phi3", "gpt2", "gpt_neox", "opt")
MOE_FAMILIES = ("qwen2_moe", "qwen3_moe", "mixtral", "olmoe")  # mixture-of-experts: 4 experts, top-2
SPECIAL = ["<|endoftext|>", "<|pad|>"]
# what a finished run folder holds (before any audit)
RUN_FOLDER_FILES = [
    "config.yaml",
    "manifest.json",
    "metrics.json",
    "model",
    "pruned_neurons.json",
    "report.html",
    "report.md",
]
# small budgets that keep a CLI run on a tiny model to a second or two
SMALL = [
    "--seq-len",
    "32",
    "--eval-tokens",
    "256",
    "--val-tokens",
    "128",
    "--stats-tokens",
    "256",
    "--batch-size",
    "4",
    "--dtype",
    "fp32",
    "--device",
    "cpu",
]


def invoke(*args: str) -> tuple[int, str, str]:
    """Run the ``unlearn`` command line in-process: (exit code, stdout, stderr); other exceptions propagate."""
    from click.testing import CliRunner

    from unlearn.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def ctrl_c_at_evaluation(mp: pytest.MonkeyPatch, n: int) -> None:
    """Make the ``n``-th evaluation of a run raise KeyboardInterrupt (evaluation 1 is the baseline, then one per
    pruning step): an interruption at a known point of the method."""
    from unlearn.methods.context import MethodContext

    real, calls = MethodContext.evaluate, {"n": 0}

    def evaluate(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    mp.setattr(MethodContext, "evaluate", evaluate)


def tree_hash(path: Path) -> str:
    """sha256 over the relative names and bytes of every file under ``path``."""
    digest = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            digest.update(p.relative_to(path).as_posix().encode() + p.read_bytes())
    return digest.hexdigest()


def assert_refused(label: str, code: int, out: str, err: str, needle: str, out_dir: Path) -> None:
    """Bad input: exit code 2, one stderr line ``error: ...`` mentioning ``needle``, no traceback, nothing in
    ``out_dir`` (not even a hidden temporary folder)."""
    lines = err.strip().splitlines()
    assert code == 2, f"{label}: exit {code}, stderr {err!r}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{label}: {err!r}"
    assert needle.lower() in lines[0].lower(), f"{label}: {lines[0]!r} does not mention {needle!r}"
    assert "Traceback" not in err + out, f"{label}: traceback in the output"
    left = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    assert not left, f"{label}: left {left} in {out_dir}"


def _training_text() -> list[str]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    texts = [(lib / name).read_text(encoding="utf-8") for name in ("textwrap.py", "shlex.py")]
    texts.append(inspect.cleandoc(__doc__) * 20)
    return texts


@functools.lru_cache(maxsize=1)
def _tokenizer_files(directory: str) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=SPECIAL[0], bos_token=SPECIAL[0], pad_token=SPECIAL[1]
    )
    fast.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return Path(_tokenizer_files(str(tmp_path_factory.mktemp("tokenizer"))))


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def tiny_config(family: str, vocab_size: int = 400, **extra):
    """A 2-layer, 32-wide config of ``family`` (random init, a few hundred kB)."""
    from transformers import AutoConfig

    common = dict(vocab_size=vocab_size, pad_token_id=1, bos_token_id=0, eos_token_id=0)
    # the decoder families with grouped-query attention share one shape
    gqa = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    per_family = {
        "llama": gqa,
        "mistral": dict(gqa, sliding_window=None),
        "qwen2": gqa,
        "gemma": dict(gqa, head_dim=8),
        "phi3": dict(gqa, original_max_position_embeddings=512),
        "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=512),
        "gpt_neox": dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=512,
        ),
        "opt": dict(
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            word_embed_proj_dim=32,
            max_position_embeddings=512,
        ),
        # mixture-of-experts families: 4 experts of width 16, top-2 routing
        "qwen2_moe": dict(
            gqa, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=24
        ),
        "qwen3_moe": dict(gqa, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, head_dim=8),
        "mixtral": dict(gqa, num_local_experts=4, num_experts_per_tok=2, intermediate_size=16),
        "olmoe": dict(gqa, num_experts=4, num_experts_per_tok=2, intermediate_size=16),
    }
    return AutoConfig.for_model(family, **common, **per_family[family], **extra)


def tiny_model(family: str, seed: int = 0, **extra):
    """A random-init tiny causal LM in fp32 eval mode; biases (where present) are randomised too."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **extra), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model.eval().requires_grad_(False)


@pytest.fixture
def tiny_checkpoint(tmp_path, tokenizer):
    """``tiny_checkpoint(family, **config)`` → a saved checkpoint folder (model + tokenizer)."""

    def make(family: str = "llama", seed: int = 0, **extra) -> Path:
        path = tmp_path / f"tiny-{family}-{seed}"
        if not path.exists():
            tiny_model(family, seed, **extra).save_pretrained(path)
            tokenizer.save_pretrained(path)
        return path

    return make


@pytest.fixture
def text_files(tmp_path):
    """Two small real corpora on disk: code (stdlib modules) and prose (stdlib docstrings)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    code = tmp_path / "code.txt"
    code.write_text(
        "\n\n".join((lib / n).read_text(encoding="utf-8") for n in ("textwrap.py", "shlex.py")), encoding="utf-8"
    )
    import ast

    docs = []
    for n in ("argparse.py", "logging/__init__.py", "subprocess.py"):
        tree = ast.parse((lib / n).read_text(encoding="utf-8"))
        docs += [
            ast.get_docstring(node)
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Module)) and ast.get_docstring(node)
        ]
    prose = tmp_path / "prose.txt"
    prose.write_text("\n\n".join(docs), encoding="utf-8")
    return code, prose


@pytest.fixture
def env(tmp_path, tiny_checkpoint, text_files):
    """A CLI ``run`` on the tiny llama: ``env["base"]`` is the command line, later flags override its own."""
    code, prose = text_files
    model = tiny_checkpoint("llama")
    out = tmp_path / "runs"
    base = ["run", "--model", str(model), "--forget", str(code), "--retain", str(prose), "--out", str(out), *SMALL]
    return {"model": model, "code": code, "prose": prose, "out": out, "base": base, "tmp": tmp_path}


@pytest.fixture
def run_tiny(tmp_path, tiny_checkpoint, text_files):
    """``run_tiny(name, method, method_config, **overrides)``: ``unlearn.run`` on the tiny llama with small budgets."""
    import unlearn

    code, prose = text_files
    ckpt = tiny_checkpoint("llama")

    def run(name, method, method_config, **overrides):
        cfg = dict(
            model=str(ckpt),
            dtype="fp32",
            device="cpu",
            forget={"source": str(code)},
            retain={"source": str(prose)},
            seq_len=32,
            stats_tokens=256,
            eval_tokens=128,
            val_tokens=0,
            batch_size=4,
            out_dir=str(tmp_path / "runs"),
            name=name,
            method=method,
            method_config=method_config,
        )
        return unlearn.run({**cfg, **overrides})

    return run


def small_run_config(model, code, prose, out, **extra) -> dict:
    """An ``unlearn.run`` config for a tiny model on small budgets (fp32 on the CPU, no report); ``extra``
    overrides or adds settings."""
    return {
        "model": str(model),
        "forget": {"source": str(code)},
        "retain": {"source": str(prose)},
        "seq_len": 32,
        "stats_tokens": 512,
        "eval_tokens": 256,
        "val_tokens": 0,
        "batch_size": 4,
        "dtype": "fp32",
        "device": "cpu",
        "out_dir": str(out),
        "report": False,
        **extra,
    }


def bigram_split(vocab, rows: int, width: int, seed: int):
    """A ``TokenSplit`` of chunks of random tokens of ``vocab`` (a range), each a bigram-rich walk (token t is
    often followed by t + 1): data for the guard-style selection of forbidden tokens and phrases."""
    from unlearn.data.chunking import TokenSplit

    g = torch.Generator().manual_seed(seed)
    lo, n = vocab[0], len(vocab)
    start = torch.randint(0, n, (rows, 1), generator=g)
    steps = torch.where(torch.rand(rows, width, generator=g) < 0.5, 1, torch.randint(0, n, (rows, width), generator=g))
    ids = lo + (start + steps.cumsum(1)) % n
    return TokenSplit(ids, torch.zeros_like(ids, dtype=torch.bool))


def left_padded(rows, pad: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows (lists or tensors) as a left-padded batch: (ids, attention mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = torch.as_tensor(r), 1
    return ids, mask
