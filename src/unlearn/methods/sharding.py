"""The data side of exact unlearning by sharded adapters (S3T): learnt records and their content keys, the
shard and slice each one falls in, their token rows, the order and seed of every slice's training, the
``shards.json`` manifest, the LoRA adapters file and the arithmetic that puts adapters into weights.

Everything here depends on a record only through its content key (sha256 of its text), never on the other
records or on their number: a record's shard and slice are seeded hashes of its key, a slice's records are
ordered by a seeded hash of their keys, and a slice trains with a seed derived from (seed, shard, slice). So a
model learnt on the records R without D is, slice by slice, what the same learning on R gives for every slice
that never saw D — which is what makes retraining only the affected slices exact.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.chunking import TokenSplit, separator_id, special_ids
from ..data.sources import DataSpec, iter_documents
from ..errors import UnlearnError

SHARDS_FILE = "shards.json"
ADAPTERS_FILE = "adapters.safetensors"
FORMAT_VERSION = 1
COMBINE = "base + mean over the shards that hold records of the sum of each shard's slice deltas (scaling·B·A)"


@dataclass(frozen=True)
class Record:
    """One learnt record: its content key, where it was read (``path:line``), and its QA item or text."""

    key: str
    where: str
    item: object


def record_key(fmt: str, item) -> str:
    """sha256 of a record's content: a QA record's question and answer, or a text record's text."""
    content = ["qa", item.question, item.answer] if fmt == "qa" else ["text", item]
    return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode("utf-8")).hexdigest()


def read_records(source: str, fmt: str, fields: tuple[str, ...] = ("text",)) -> list[Record]:
    """Every record of ``source`` in file order: QA records (question, answer) or text records (a record of a
    structured file, a file of a folder or glob)."""
    if fmt == "qa":
        from ..data.formats import load_qa

        return [Record(record_key("qa", it), it.id, it) for it in load_qa(source)]
    out = [Record(record_key("text", text), where, text) for where, text in iter_documents(DataSpec(source, fields))]
    if not out:
        raise UnlearnError(f"{source}: no records")
    return out


def _digest(*parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def place(key: str, seed: int, shards: int, slices: int) -> tuple[int, int]:
    """The (shard, slice) of the record with content ``key``: seeded hashes, independent of every other record."""
    return _digest(seed, "shard", key) % shards, _digest(seed, "slice", key) % slices


def slice_seed(seed: int, shard: int, slice_: int) -> int:
    """The seed that slice ``slice_`` of shard ``shard`` trains with (its LoRA initialisation and batch order)."""
    return _digest(seed, "train", shard, slice_) % 2**63


def ordered(keys, seed: int, shard: int, slice_: int) -> list[str]:
    """A slice's record keys in training order: sorted by a seeded hash, so removing one leaves the others' order."""
    return sorted(keys, key=lambda k: (_digest(seed, "order", shard, slice_, k), k))


def plan(records: list[Record], seed: int, shards: int, slices: int) -> dict[tuple[int, int], list[str]]:
    """Every (shard, slice) holding records: its distinct record keys in training order."""
    cells: dict[tuple[int, int], set[str]] = {}
    for r in records:
        cells.setdefault(place(r.key, seed, shards, slices), set()).add(r.key)
    return {cell: ordered(keys, seed, *cell) for cell, keys in sorted(cells.items())}


class Rows:
    """Token rows of records, one record at a time (a record never shares a row with another): a QA record is
    one row (prompt and padding unscored, as ``unlearn learn`` builds QA rows), a text record its tokens after a
    separator, cut into ``seq_len`` rows, the last one padded (padding unscored)."""

    def __init__(self, records: list[Record], fmt: str, tokenizer, seq_len: int):
        from ..eval.scoring import Template

        self.records, self.fmt, self.tokenizer, self.seq_len = records, fmt, tokenizer, seq_len
        self.template = Template(tokenizer, "auto") if fmt == "qa" else None
        self.copies: dict[str, list[Record]] = {}
        for r in records:  # identical records share a key: every copy is learnt (and deleted) together
            self.copies.setdefault(r.key, []).append(r)
        self._cache: dict[str, TokenSplit] = {}

    def of(self, key: str) -> TokenSplit:
        if key not in self._cache:
            parts = [self._rows(r) for r in self.copies[key]]
            self._cache[key] = TokenSplit(
                torch.cat([p.input_ids for p in parts]), torch.cat([p.special for p in parts])
            )
        return self._cache[key]

    def split(self, keys: list[str]) -> TokenSplit:
        """The rows of ``keys``, in that order."""
        parts = [self.of(k) for k in keys]
        return TokenSplit(torch.cat([p.input_ids for p in parts]), torch.cat([p.special for p in parts]))

    def _rows(self, record: Record) -> TokenSplit:
        tok, n = self.tokenizer, self.seq_len
        if self.fmt == "qa":
            from ..data.chunking import build_qa_corpus

            spec = DataSpec(record.where)
            corpus = build_qa_corpus(
                record.where, spec, [record.item], tok, self.template, seq_len=n, eval_tokens=0, stats_tokens=n, seed=0
            )
            return corpus.stats
        sep = separator_id(tok)
        ids = ([sep] if sep is not None else []) + tok(record.item, add_special_tokens=False).input_ids
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        rows = math.ceil(len(ids) / n)
        padded = torch.tensor(ids + [pad] * (rows * n - len(ids)), dtype=torch.long).view(rows, n)
        special = torch.isin(padded, special_ids(tok))
        special.view(-1)[len(ids) :] = True
        return TokenSplit(padded, special)


def read_manifest(folder: Path) -> dict:
    """``folder/shards.json``, checked for the entries exact unlearning reads."""
    path = Path(folder) / SHARDS_FILE
    if not path.is_file():
        raise UnlearnError(f"exact needs a model learnt with `unlearn learn --shards N`: {folder} has no {SHARDS_FILE}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UnlearnError(f"{path} cannot be read as JSON ({type(exc).__name__}): it is damaged") from None
    need = ("version", "base", "data", "settings", "records", "adapters")
    if not isinstance(manifest, dict) or any(k not in manifest for k in need):
        raise UnlearnError(f"{path} is not a shards manifest of `unlearn learn --shards` (needs {', '.join(need)})")
    if manifest["version"] != FORMAT_VERSION:
        raise UnlearnError(f"{path} has format version {manifest['version']}; this unlearn reads {FORMAT_VERSION}")
    return manifest


def write_shards(folder: Path, manifest: dict, adapters: dict) -> None:
    """``shards.json`` and the adapters file (every adapter's A, B and scaling) into ``folder``."""
    from safetensors.torch import save_file

    tensors = {}
    for (shard, slice_), adapter in sorted(adapters.items()):
        for name, (a, b, scaling) in sorted(adapter.items()):
            prefix = f"{shard}.{slice_}.{name}"
            tensors |= {f"{prefix}.A": a, f"{prefix}.B": b, f"{prefix}.scaling": torch.tensor(scaling)}
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / ADAPTERS_FILE))
    (folder / SHARDS_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def read_adapters(folder: Path) -> dict[tuple[int, int], dict]:
    """The adapters saved by :func:`write_shards`: {(shard, slice): {module: (A, B, scaling)}}."""
    from safetensors import safe_open

    path = Path(folder) / ADAPTERS_FILE
    out: dict[tuple[int, int], dict] = {}
    try:
        with safe_open(str(path), "pt") as fh:
            for key in fh.keys():
                shard, slice_, rest = key.split(".", 2)
                name, part = rest.rsplit(".", 1)
                entry = out.setdefault((int(shard), int(slice_)), {}).setdefault(name, {})
                entry[part] = fh.get_tensor(key)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type
        raise UnlearnError(f"the adapters of {folder} cannot be read ({path.name}: {type(exc).__name__})") from exc
    return {
        cell: {n: (p["A"], p["B"], float(p["scaling"])) for n, p in sorted(adapter.items())}
        for cell, adapter in sorted(out.items())
    }


def adapter_sha256(adapter: dict) -> str:
    """sha256 over an adapter's module names, scalings and tensor bytes."""
    digest = hashlib.sha256()
    for name, (a, b, scaling) in sorted(adapter.items()):
        digest.update(f"{name}|{scaling!r}".encode())
        for t in (a, b):
            digest.update(t.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _delta(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    d = (b.float() @ a.float()) * scaling
    return d if d.shape == weight.shape else d.T  # GPT-2's Conv1D keeps its weight transposed


@torch.no_grad()
def add_adapter(model, adapter: dict) -> None:
    """Add an adapter's deltas to ``model``'s float32 weights, module by module in name order."""
    for name, (a, b, scaling) in sorted(adapter.items()):
        weight = model.get_submodule(name).weight
        weight.add_(_delta(weight, a, b, scaling))


@torch.no_grad()
def combine(model, adapters: dict[tuple[int, int], dict]) -> None:
    """The served model: ``model`` (the base, float32) plus, per module, the sum over shards and slices (in
    order) of the deltas divided by the number of shards that hold an adapter."""
    shards = sorted({shard for shard, _ in adapters})
    totals: dict[str, torch.Tensor] = {}
    for cell in sorted(adapters):
        for name, (a, b, scaling) in sorted(adapters[cell].items()):
            d = _delta(model.get_submodule(name).weight, a, b, scaling)
            totals[name] = d if name not in totals else totals[name] + d
    for name, total in sorted(totals.items()):
        model.get_submodule(name).weight.add_(total / len(shards))
