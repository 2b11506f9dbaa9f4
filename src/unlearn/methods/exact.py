"""Exact unlearning by sharded adapters (S3T, Chowdhury et al. 2024; SISA's shards and slices).

``unlearn learn --shards N --slices K`` puts every record in one of N shards and one of K slices (seeded hashes
of its content, :mod:`~unlearn.methods.sharding`). Shard i trains K LoRA adapters in sequence: adapter j on the
records of slices 0..j of the shard (as S3T trains its j-th layer on slices 1..j), on top of the base weights
plus adapters 0..j-1, which stay frozen. The served model is the base plus the mean over shards of each shard's
summed adapter deltas, saved as a plain checkpoint beside ``shards.json`` and the adapters.

A deletion request (``unlearn run --method exact --delete records.jsonl``) drops, in every shard that holds a
deleted record, the adapters from that record's slice on, and trains them again without the deleted records
with the same seeds and order — so the result equals, bit for bit on the CPU, learning without those records
from the start. It makes no approximate edit, so it honours no stopping budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..config import DataConfig
from ..errors import UnlearnError
from . import sharding as S
from .registry import MethodResult, register
from .training import TrainConfig, fine_tune, lora_spec, wrap_lora


class ShardSettings(BaseModel):
    """How ``unlearn learn --shards`` trains (recorded in ``shards.json``; a deletion retrains with the same)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    shards: int = Field(ge=1, le=1024, description="disjoint data shards, each with its own adapters")
    slices: int = Field(1, ge=1, le=64, description="sequential slices per shard, one LoRA adapter each")
    epochs: float = Field(3.0, gt=0, le=1000, description="passes over a slice adapter's rows (unless steps)")
    steps: int | None = Field(None, ge=1, le=100_000, description="optimizer steps per slice adapter")
    lr: float = Field(5e-5, gt=0, lt=1, description="peak learning rate (AdamW)")
    batch_size: int = Field(8, ge=1, description="rows per optimizer step")
    lora: str = Field("r=8", description="every slice adapter: 'r=8[,alpha=16,dropout=0,targets=a;b]'")
    seq_len: int = Field(256, ge=8, le=32768, description="tokens per row")
    seed: int = Field(0, ge=-(2**63), lt=2**64, description="seed of the shard and slice assignment and of training")

    _lora_syntax = field_validator("lora")(lambda v: lora_spec(v))

    def steps_for(self, rows: int) -> int:
        return self.steps or max(1, math.ceil(self.epochs * rows / self.batch_size))


def train_shards(model, base: dict, rows: S.Rows, st: ShardSettings, adapters: dict, start: dict, job):
    """Train, in every shard ``i`` of ``start``, the adapters of slices ``start[i]`` .. K-1 (earlier ones are
    taken from ``adapters``), each from the base weights ``base`` (float32) plus its shard's earlier adapters, on
    the records of ``rows``. ``adapters`` is updated in place; returns each trained slice's facts and the
    training log. ``job``: the reporter and whether to train under bf16 autocast."""
    cells = S.plan(rows.records, st.seed, st.shards, st.slices)
    facts, log = {}, []
    for shard, first in sorted(start.items()):
        for j in range(first, st.slices):
            adapters.pop((shard, j), None)
            keys = [k for s in range(j + 1) for k in cells.get((shard, s), [])]
            if not keys:  # nothing learnt in this shard up to here
                continue
            model.load_state_dict(base)
            for s in range(j):
                if (shard, s) in adapters:
                    S.add_adapter(model, adapters[(shard, s)])
            split = rows.split(keys)
            seed = S.slice_seed(st.seed, shard, j)
            with job.reporter.stage(f"shard {shard} slice {j}: {len(keys)} records, {len(split.input_ids)} rows"):
                adapter, entries, steps = _train_adapter(model, split, st, seed, job)
            adapters[(shard, j)] = adapter
            log += [{"shard": shard, "slice": j, **e} for e in entries]
            facts[(shard, j)] = {"records": len(keys), "rows": len(split.input_ids), "steps": steps, "seed": seed}
    return facts, log


def _train_adapter(model, split, st: ShardSettings, seed: int, job):
    """One slice adapter: fresh LoRA (seeded) on ``model``, trained on ``split``; (adapter, log, steps)."""
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(seed)
    wrapped = wrap_lora(model, st.lora)
    layers = {n.removeprefix("base_model.model."): m for n, m in wrapped.named_modules() if isinstance(m, LoraLayer)}
    steps = st.steps_for(len(split.input_ids))
    cfg = TrainConfig(steps=steps, lr=st.lr, batch_size=st.batch_size)
    result = fine_tune(
        wrapped,
        split,
        cfg,
        seed=seed,
        reporter=job.reporter,
        trainable=lambda m: [p for n, p in m.named_parameters() if "lora_" in n],
        autocast=job.autocast,
    )
    adapter = {
        name: (
            m.lora_A["default"].weight.detach().clone(),
            m.lora_B["default"].weight.detach().clone(),
            float(m.scaling["default"]),
        )
        for name, m in layers.items()
    }
    return adapter, result.log, steps


@dataclass
class Job:
    """What every slice's training shares besides its data: the reporter, and bf16 autocast (on where the base
    model was loaded in bf16, as ``unlearn learn`` trains; the weights stay float32 either way)."""

    reporter: object
    autocast: bool


def learn_shards(loaded, data: DataConfig, st: ShardSettings, base_sha256: str, reporter) -> MethodResult:
    """``unlearn learn --shards``: every slice adapter of every shard trained on ``data``'s records, combined.
    The result's model is the served model (float32); ``extra`` holds the manifest, adapters and train time."""
    records = S.read_records(data.source, data.format, tuple(data.fields))
    rows = S.Rows(records, data.format, loaded.tokenizer, st.seq_len)
    model = loaded.model.float()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    adapters: dict = {}
    start = time.perf_counter()
    job = Job(reporter, loaded.dtype == "bf16")
    facts, log = train_shards(model, base, rows, st, adapters, dict.fromkeys(range(st.shards), 0), job)
    seconds = round(time.perf_counter() - start, 3)
    model.load_state_dict(base)
    S.combine(model, adapters)
    base_record = {"spec": _spec(loaded.spec), "dtype": loaded.dtype, "sha256": base_sha256}
    source = {"source": _spec(data.source), "format": data.format, "fields": list(data.fields)}
    manifest = _manifest(base_record, source, st, rows, adapters, facts, deleted=[])
    extra = {"train_seconds": seconds, "shards": manifest, "adapters": adapters}
    return MethodResult(ablation=None, model=model, log=log, stop_reason="learnt", extra=extra)


def _spec(spec: str) -> str:
    """A local path made absolute (a deletion may run from another folder); a hub id or alias as given."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def _manifest(base: dict, data: dict, st: ShardSettings, rows: S.Rows, adapters: dict, facts: dict, deleted) -> dict:
    """``shards.json``: the base model, the data, the settings, where every learnt record went (by content key),
    every adapter (what it trained on and the sha256 of its weights), and the keys deleted so far."""
    records = [
        {"sha256": key, "shard": cell[0], "slice": cell[1], "copies": len(rows.copies[key])}
        for key in sorted(rows.copies)
        for cell in [S.place(key, st.seed, st.shards, st.slices)]
    ]
    cells = [
        {"shard": i, "slice": j, **facts[(i, j)], "sha256": S.adapter_sha256(adapters[(i, j)])}
        for i, j in sorted(adapters)
    ]
    return {
        "version": S.FORMAT_VERSION,
        "method": "exact unlearning by sharded, sliced LoRA adapters (S3T); adapter j of a shard learns its slices "
        "0..j on top of adapters 0..j-1",
        "combine": S.COMBINE,
        "base": base,
        "data": data,
        "settings": st.model_dump(),
        "records": records,
        "adapters": cells,
        "deleted": sorted(deleted),
    }


class ExactConfig(BaseModel):
    """Exact unlearning has nothing to tune: it retrains with the settings ``shards.json`` recorded."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def deletion_request(cfg) -> tuple[Path, dict, list[str]]:
    """The learnt folder (``cfg.model``), its shards manifest, and the content keys of the records to delete
    (``cfg.forget``): each must be a record the model learnt, else a one-line error naming it."""
    folder = Path(cfg.model).expanduser()
    manifest = S.read_manifest(folder)
    fmt, given = manifest["data"]["format"], cfg.forget
    if given.format != fmt:
        raise UnlearnError(
            f"records to delete {given.source}: the model learnt {fmt} records, these are read as {given.format} "
            f"records (--forget-format {fmt})"
        )
    learnt = {r["sha256"] for r in manifest["records"]}
    gone = set(manifest["deleted"])
    keys = set()
    for record in S.read_records(given.source, fmt, tuple(given.fields)):
        if record.key not in learnt:
            why = "was deleted by an earlier request" if record.key in gone else "is not a record the model learnt"
            raise UnlearnError(f"{record.where}: this record {why} (see {folder / S.SHARDS_FILE}): nothing to delete")
        keys.add(record.key)
    return folder, manifest, sorted(keys)


def check_request(cfg, method_cfg) -> None:
    """Before any model is loaded: the model must be a sharded one and every record to delete one it learnt."""
    deletion_request(cfg)


@register(
    "exact",
    ExactConfig,
    "exact unlearning of records learnt with `unlearn learn --shards N`: retrain only the affected slice adapters "
    "without them (S3T; equals learning without them, bit for bit on the CPU)",
    budget=False,
    check=check_request,
)
def exact(ctx, cfg: ExactConfig) -> MethodResult:
    folder, manifest, keys = deletion_request(ctx.config)
    st = ShardSettings(**manifest["settings"])
    base = _load_base(manifest["base"], ctx.loaded.device, ctx.reporter)
    data = manifest["data"]
    remaining = {r["sha256"] for r in manifest["records"]} - set(keys)
    records = [r for r in S.read_records(data["source"], data["format"], tuple(data["fields"])) if r.key in remaining]
    missing = remaining - {r.key for r in records}
    if missing:
        raise UnlearnError(
            f"the learnt data {data['source']} changed: {len(missing)} records the model learnt are no longer in "
            "it, and retraining needs every remaining record"
        )
    rows = S.Rows(records, data["format"], base.tokenizer, st.seq_len)
    adapters = _checked_adapters(folder, manifest)
    start: dict[int, int] = {}
    for r in manifest["records"]:
        if r["sha256"] in keys:  # the adapters of this slice on saw it: switched off, trained again
            start[r["shard"]] = min(start.get(r["shard"], st.slices), r["slice"])
    model = base.model.float()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    t0 = time.perf_counter()
    job = Job(ctx.reporter, manifest["base"]["dtype"] == "bf16")
    facts, log = train_shards(model, state, rows, st, adapters, start, job)
    seconds = round(time.perf_counter() - t0, 3)
    model.load_state_dict(state)
    S.combine(model, adapters)
    kept = {
        (a["shard"], a["slice"]): {k: a[k] for k in ("records", "rows", "steps", "seed")} for a in manifest["adapters"]
    }
    new = _manifest(manifest["base"], data, st, rows, adapters, {**kept, **facts}, [*manifest["deleted"], *keys])
    if ctx.folder is not None and ctx.config.save_model:  # beside the checkpoint: a later request deletes from it
        S.write_shards(ctx.folder.path("model"), new, adapters)
    retrained = [f"{i}.{j}" for i, j in sorted(facts)]
    extra = {
        "deleted_records": len(keys),
        "retrained_slices": retrained,
        "slices_total": len(manifest["adapters"]),
        "retrain_seconds": seconds,
    }
    reason = f"deleted {len(keys)} records: retrained {len(retrained)} of {st.shards * st.slices} slice adapters"
    return MethodResult(ablation=None, model=model, log=log, stop_reason=reason, extra=extra)


def _load_base(base: dict, device: str, reporter):
    """The base model the shards were learnt on, in its recorded dtype, checked against its recorded sha256."""
    from ..models.load import load_model, state_dict_hash

    with reporter.stage(f"loading the base model {base['spec']}"):
        loaded = load_model(base["spec"], base["dtype"], device, log=reporter.log)
    if state_dict_hash(loaded.model) != base["sha256"]:
        raise UnlearnError(
            f"the base model {base['spec']} no longer hashes to the sha256 shards.json records: exact retraining "
            "needs the very model the shards were learnt on"
        )
    return loaded


def _checked_adapters(folder: Path, manifest: dict) -> dict:
    """The saved adapters, each checked against the sha256 the manifest records for it."""
    adapters = S.read_adapters(folder)
    recorded = {(a["shard"], a["slice"]): a["sha256"] for a in manifest["adapters"]}
    if set(recorded) != set(adapters) or any(S.adapter_sha256(adapters[c]) != h for c, h in recorded.items()):
        raise UnlearnError(f"the adapters in {folder / S.ADAPTERS_FILE} do not match {S.SHARDS_FILE}: they changed")
    return adapters


def deletion_settings(records: str, values: dict, *, given_forget: bool = False) -> dict:
    """The run settings of ``--delete RECORDS``: method exact, and the records (format detected) as forget data."""
    from ..pipeline.corpora import detect_format

    method = values.get("method")
    if given_forget or (method is not None and method != "exact"):
        raise UnlearnError(
            f"--delete is a request to method exact: drop {'--forget' if given_forget else f'--method {method}'}"
        )
    forget = {**(values.get("forget") or {}), "source": records, "format": detect_format(records)}
    return {"method": "exact", "forget": forget}
