"""Fine-tuning a model on QA or text data (to build unlearning targets)."""

from __future__ import annotations

from ..validation import build

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from ..config import DataConfig, parse_config
from ..data.chunking import build_corpus
from ..errors import DiskFull, UnlearnError, from_os_error
from ..models.load import check_seq_len, load_model, state_dict_hash
from ..models.save import check_space, check_writable, model_bytes, save_checkpoint
from ..progress import Reporter
from ..pipeline.corpora import check_data_exists, detect_format, qa_corpus_for
from ..runs.manifest import versions


def learn(
    model: str,
    data: str,
    out: str | Path,
    *,
    format: str = "auto",
    epochs: float = 3.0,
    steps: int | None = None,
    lr: float = 5e-5,
    batch_size: int = 8,
    seq_len: int = 256,
    tokens: int = 65536,
    lora: str | None = None,
    seed: int = 0,
    dtype: str = "auto",
    device: str = "auto",
    shards: int | None = None,
    slices: int = 1,
    console=None,
) -> dict:
    """Fine-tune ``model`` on ``data`` (QA records through the chat template with the loss on answers, or running
    text) with the same training loop as the unlearning methods, and save a plain checkpoint to ``out``.

    ``steps`` defaults to ``epochs`` passes over the data (QA rows, or ``tokens`` of text in ``seq_len``
    chunks). ``out`` must not exist; it is written under a temporary name and renamed when complete. Returns
    the record saved as ``out/learn.json`` (settings, data hash, loss per step, timings).

    ``shards``: learn for exact unlearning (:mod:`unlearn.methods.exact`): each record (QA, or text: a record of
    a structured file, a file of a folder) goes to one of ``shards`` shards and ``slices`` slices; every slice
    trains its own LoRA adapter (``lora``, default r=8; ``epochs`` or ``steps`` per adapter), and ``out`` also
    holds ``shards.json`` and ``adapters.safetensors``."""
    from ..methods.training import TrainConfig, fine_tune

    t0 = time.perf_counter()
    out = Path(out)
    if out.exists():
        raise UnlearnError(f"output folder {out} already exists: choose another --out")
    check_writable(out, "--out")
    fmt = detect_format(data) if format == "auto" else format
    if fmt not in ("text", "qa"):
        raise UnlearnError(f"unknown data format {format!r}: use auto, text or qa")
    spec = DataConfig(source=data, format=fmt)
    check_data_exists(spec)
    cfg = parse_config(
        {"model": model, "dtype": dtype, "device": device, "seq_len": seq_len, "seed": seed, "batch_size": batch_size}
    )
    build(TrainConfig, {"lr": lr, "batch_size": batch_size, "lora": lora}, "learn setting")
    sharded = _shard_settings(shards, slices, epochs, steps, lr, batch_size, lora, seq_len, seed)
    reporter = Reporter(console)
    with reporter.stage(f"loading model {model}"):
        loaded = load_model(model, dtype, device, log=reporter.log)
    check_seq_len(loaded, seq_len)
    check_space(out.parent, model_bytes(loaded.model), f"the fine-tuned model in {out}")
    before = state_dict_hash(loaded.model)
    if sharded is not None:
        return _learn_shards(loaded, spec, sharded, before, out, reporter, t0)
    if fmt == "qa":  # every record: a budget no QA file reaches
        corpus = qa_corpus_for("data", spec, loaded.tokenizer, cfg.model_copy(update={"stats_tokens": 10**9}))
    else:
        corpus = build_corpus(
            "data", spec.spec(), loaded.tokenizer, seq_len=seq_len, eval_tokens=0, stats_tokens=tokens, seed=seed
        )
    rows = len(corpus.stats.input_ids)
    n_steps = steps or max(1, math.ceil(epochs * rows / batch_size))
    tcfg = TrainConfig(steps=n_steps, lr=lr, batch_size=batch_size, lora=lora)
    result = fine_tune(loaded.model, corpus.stats, tcfg, seed=seed, reporter=reporter)
    record = {
        "model": {"spec": model, "source": loaded.source, "sha256_before": before},
        "data": {"source": data, "format": fmt, "rows": rows, "sha256_tokens": corpus.sha256},
        "settings": {
            **tcfg.model_dump(),
            "epochs": epochs if steps is None else None,
            "seq_len": seq_len,
            "seed": seed,
        },
        "log": result.log,
        "versions": versions(),
    }
    _save(out, result, loaded.tokenizer, record, t0)
    return {**record, "path": str(out)}


def _shard_settings(shards, slices, epochs, steps, lr, batch_size, lora, seq_len, seed):
    """The validated settings of learning with shards; None without ``shards``."""
    if shards is None:
        if slices != 1:
            raise UnlearnError("--slices divides shards: give --shards N too")
        return None
    from ..methods.exact import ShardSettings

    values = dict(shards=shards, slices=slices, epochs=epochs, steps=steps, lr=lr, batch_size=batch_size)
    values |= dict(lora=lora or "r=8", seq_len=seq_len, seed=seed)
    return build(ShardSettings, values, "learn setting")


def _learn_shards(loaded, spec: DataConfig, settings, before: str, out: Path, reporter, t0: float) -> dict:
    """``learn`` with shards: the slice adapters, the served model, ``shards.json`` (see methods/exact.py)."""
    from ..methods.exact import learn_shards

    result = learn_shards(loaded, spec, settings, before, reporter)
    manifest = result.extra["shards"]
    record = {
        "model": {"spec": loaded.spec, "source": loaded.source, "sha256_before": before},
        "data": {
            "source": spec.source,
            "format": spec.format,
            "rows": sum(a["rows"] for a in manifest["adapters"] if a["slice"] == settings.slices - 1),
            "records": len(manifest["records"]),
        },
        "settings": settings.model_dump(),
        "log": result.log,
        "versions": versions(),
    }
    _save(out, result, loaded.tokenizer, record, t0)
    return {**record, "path": str(out)}


def _save(out: Path, result, tokenizer, record: dict, t0: float) -> None:
    """Write the fine-tuned model and ``learn.json`` under a temporary name, renamed to ``out`` when complete
    (with shards: ``shards.json`` and the adapters too)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.incomplete-", dir=out.parent))
    try:
        if "shards" in result.extra:
            from ..methods.sharding import write_shards

            write_shards(tmp, result.extra["shards"], result.extra["adapters"])
        files = save_checkpoint(result.model, tokenizer, tmp)
        record["model"].update(sha256_after=state_dict_hash(result.model), files=files)
        record["timings_s"] = {"train": result.extra["train_seconds"], "total": round(time.perf_counter() - t0, 3)}
        (tmp / "learn.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.rename(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        error = from_os_error(exc, "writing the fine-tuned model")
        raise type(error)(f"{error} (the unfinished output was removed: run again)") from exc
    except DiskFull as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DiskFull(f"{exc} (the unfinished output was removed: run again)") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
