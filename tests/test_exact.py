"""Exact unlearning by sharded adapters (S3T): ``unlearn learn --shards`` and ``unlearn run --method exact``.

The central test: learning on records R, then deleting D, gives the very weights (every tensor ``torch.equal``)
that learning on R without D from the start gives, with the same seed, on a tiny random Llama on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SMALL, assert_refused, invoke

import unlearn
from unlearn.methods import sharding as S

LEARN = dict(shards=2, slices=2, steps=2, batch_size=4, seq_len=48, lr=1e-2, lora="r=4", dtype="fp32", device="cpu")


def _records(n: int) -> list[dict]:
    return [{"question": f"Who wrote book {i}?", "answer": f"Author {i} wrote it in {1900 + i}."} for i in range(n)]


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _deletion(model: Path, delete: Path, out: Path, prose: Path, **extra):
    return unlearn.run(
        {
            "model": str(model),
            "method": "exact",
            "forget": {"source": str(delete), "format": "qa"},
            "retain": {"source": str(prose)},
            "utility": None,
            "seq_len": 48,
            "stats_tokens": 48,
            "eval_tokens": 96,
            "val_tokens": 0,
            "batch_size": 4,
            "dtype": "fp32",
            "device": "cpu",
            "out_dir": str(out),
            "report": False,
            **extra,
        }
    )


@pytest.fixture
def learnt(tmp_path, tiny_checkpoint):
    """A tiny Llama learnt on 10 QA records in 2 shards x 2 slices, and the records."""
    records = _records(10)
    data = _jsonl(tmp_path / "facts.jsonl", records)
    out = tmp_path / "learnt"
    unlearn.learn(str(tiny_checkpoint("llama")), str(data), out, **LEARN)
    return out, records


def test_deleting_records_equals_learning_without_them_bit_for_bit(tmp_path, tiny_checkpoint, text_files, learnt):
    folder, records = learnt
    manifest = S.read_manifest(folder)
    placed = {r["sha256"]: (r["shard"], r["slice"]) for r in manifest["records"]}
    keys = [S.record_key("qa", type("QA", (), r)) for r in records]
    # delete one record of a last slice: only that shard's last adapter trains again
    victim = next(i for i, k in enumerate(keys) if placed[k][1] == 1)
    delete = _jsonl(tmp_path / "delete.jsonl", [records[victim]])
    result = _deletion(folder, delete, tmp_path / "runs", text_files[1], name="del")
    facts = result.manifest["method_facts"]
    assert facts["deleted_records"] == 1 and facts["retrained_slices"] == [f"{placed[keys[victim]][0]}.1"]

    rest = _jsonl(tmp_path / "rest.jsonl", [r for i, r in enumerate(records) if i != victim])
    scratch = tmp_path / "scratch"
    unlearn.learn(str(tiny_checkpoint("llama")), str(rest), scratch, **LEARN)
    after, again = _weights(result.run_dir / "model"), _weights(scratch)
    assert after.keys() == again.keys()
    assert all(torch.equal(after[k], again[k]) for k in after)
    assert not all(torch.equal(after[k], _weights(folder)[k]) for k in after)  # the deletion changed the model
    adapters, fresh = S.read_adapters(result.run_dir / "model"), S.read_adapters(scratch)
    assert {c: S.adapter_sha256(a) for c, a in adapters.items()} == {c: S.adapter_sha256(a) for c, a in fresh.items()}
    new = S.read_manifest(result.run_dir / "model")
    assert new["records"] == S.read_manifest(scratch)["records"] and new["deleted"] == [keys[victim]]

    # a second request, from the run folder: deleting the same record again is refused, another one is exact
    code, out, err = invoke("run", "--from", str(result.run_dir), "--delete", str(delete), *_cli_budgets(tmp_path))
    assert_refused("twice", code, out, err, "deleted by an earlier request", tmp_path / "runs2")
    other = next(i for i, k in enumerate(keys) if placed[k][1] == 0)
    second = _deletion(
        result.run_dir / "model", _jsonl(tmp_path / "d2.jsonl", [records[other]]), tmp_path / "runs", text_files[1]
    )
    rest2 = _jsonl(tmp_path / "rest2.jsonl", [r for i, r in enumerate(records) if i not in (victim, other)])
    unlearn.learn(str(tiny_checkpoint("llama")), str(rest2), tmp_path / "scratch2", **LEARN)
    after2, again2 = _weights(second.run_dir / "model"), _weights(tmp_path / "scratch2")
    assert all(torch.equal(after2[k], again2[k]) for k in after2)


def _cli_budgets(tmp_path: Path) -> list[str]:
    small = [*SMALL]
    small[small.index("--seq-len") + 1] = "48"
    return [*small, "--utility", "none", "--no-report", "--out", str(tmp_path / "runs2"), "--retain", "english-prose"]


def test_cli_learns_shards_deletes_and_refuses_what_it_cannot_delete(tmp_path, tiny_checkpoint, text_files):
    records = _records(6)
    data = _jsonl(tmp_path / "facts.jsonl", records)
    out, model = tmp_path / "learnt", tiny_checkpoint("llama")
    args = ["--steps", "1", "--batch-size", "4", "--seq-len", "48", "--lora", "r=2", "--dtype", "fp32"]
    code, stdout, err = invoke("learn", "--model", str(model), "--data", str(data), "--out", str(out), *args,
                               "--shards", "3", "--slices", "2", "--device", "cpu")  # fmt: skip
    assert code == 0, err
    assert "3 shards x 2 slices" in stdout
    assert {"shards.json", "adapters.safetensors", "learn.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    manifest = json.loads((out / "shards.json").read_text())
    assert len(manifest["records"]) == 6 and manifest["settings"]["shards"] == 3

    code, stdout, err = invoke("methods")
    assert code == 0 and "exact:" in stdout

    runs = tmp_path / "runs2"
    budgets = _cli_budgets(tmp_path)
    code, o, e = invoke("run", "--model", str(model), "--method", "exact", "--delete", str(data), *budgets)
    assert_refused("not sharded", code, o, e, "has no shards.json", runs)
    stranger = _jsonl(tmp_path / "stranger.jsonl", [{"question": "Who?", "answer": "Nobody."}])
    code, o, e = invoke("run", "--model", str(out), "--delete", str(stranger), *budgets)
    assert_refused("unknown record", code, o, e, "is not a record the model learnt", runs)
    code, o, e = invoke("run", "--model", str(out), "--delete", str(data), "--method", "npo", *budgets)
    assert_refused("other method", code, o, e, "--delete is a request to method exact", runs)
    code, o, e = invoke("learn", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "x"),
                        "--slices", "2")  # fmt: skip
    assert_refused("slices alone", code, o, e, "--shards", tmp_path / "x")

    delete = _jsonl(tmp_path / "delete.jsonl", records[:2])
    code, stdout, err = invoke("run", "--model", str(out), "--delete", str(delete), "--name", "gone", *budgets)
    assert code == 0, err
    assert "deleted 2 records" in stdout
    run_model = runs / "gone" / "model"
    assert len(json.loads((run_model / "shards.json").read_text())["records"]) == 4
    code, _, err = invoke("ledger", str(runs / "gone"))
    assert code == 0, err


def test_placement_and_order_do_not_depend_on_the_other_records():
    keys = [S.record_key("text", f"record {i}") for i in range(40)]
    placed = {k: S.place(k, 7, 3, 2) for k in keys}
    assert {p[0] for p in placed.values()} == {0, 1, 2} and {p[1] for p in placed.values()} == {0, 1}
    assert S.place(keys[0], 8, 3, 2) != placed[keys[0]] or S.place(keys[1], 8, 3, 2) != placed[keys[1]]
    order = S.ordered(keys, 7, 0, 0)
    assert S.ordered(keys[5:], 7, 0, 0) == [k for k in order if k in keys[5:]]
    assert S.slice_seed(7, 0, 1) != S.slice_seed(7, 1, 0)


def test_text_records_become_their_own_padded_rows(tokenizer):
    records = [S.Record(S.record_key("text", t), f"f:{i}", t) for i, t in enumerate(["short text", "word " * 40])]
    rows = S.Rows(records, "text", tokenizer, 16)
    first, second = rows.of(records[0].key), rows.of(records[1].key)
    assert first.input_ids.shape == (1, 16) and second.input_ids.shape[0] >= 2
    n = len(tokenizer("short text", add_special_tokens=False).input_ids) + 1  # the separator first
    assert first.special[0, n:].all() and not first.special[0, 1:n].any()
    both = rows.split([records[1].key, records[0].key])
    assert torch.equal(both.input_ids[-1], first.input_ids[0])


def test_text_records_in_one_shard_of_three_slices_delete_exactly(tmp_path, tiny_checkpoint, text_files):
    texts = [f"Record {i} tells how the river town number {i} traded salt and wool " * 3 for i in range(6)]
    records = [{"text": t} for t in texts]
    data = _jsonl(tmp_path / "notes.jsonl", records)
    settings = {**LEARN, "shards": 1, "slices": 3, "seq_len": 16}
    unlearn.learn(str(tiny_checkpoint("llama")), str(data), tmp_path / "learnt", **settings)
    placed = {r["sha256"]: r["slice"] for r in S.read_manifest(tmp_path / "learnt")["records"]}
    victim = min(range(6), key=lambda i: placed[S.record_key("text", texts[i])])  # the earliest slice: most retrain
    delete = _jsonl(tmp_path / "delete.jsonl", [records[victim]])
    result = _deletion(
        tmp_path / "learnt", delete, tmp_path / "runs", text_files[1],
        forget={"source": str(delete), "format": "text"}, seq_len=16, eval_tokens=16, stats_tokens=16,
    )  # fmt: skip
    first = placed[S.record_key("text", texts[victim])]
    assert result.manifest["method_facts"]["retrained_slices"] == [f"0.{j}" for j in range(first, 3)]
    rest = _jsonl(tmp_path / "rest.jsonl", [r for i, r in enumerate(records) if i != victim])
    unlearn.learn(str(tiny_checkpoint("llama")), str(rest), tmp_path / "scratch", **settings)
    after, again = _weights(result.run_dir / "model"), _weights(tmp_path / "scratch")
    assert all(torch.equal(after[k], again[k]) for k in after)
