"""Reliability: a catalogue of bad inputs (each refused with one line and exit code 2, leaving no run folder
and the input untouched), a fuzz test of the config loader, and edge cases of data and models.

The catalogue adds to ``test_cli._bad_inputs`` (none of its cases is repeated here): unreadable and binary
files, config values of the wrong type or out of range, broken model folders, malformed records, a full disk
while the run is written, and hub downloads that fail or cannot happen (offline, no cache).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import assert_refused, invoke, tiny_model, tree_hash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unlearn.api import coerce_config
from unlearn.config import RunConfig
from unlearn.errors import UnlearnError

HUB_ID = "acme/tiny-model"
CLOSED_PORT = "http://127.0.0.1:9"  # the hub's address in these tests: nothing listens, a request fails at once
Patch = Callable[[pytest.MonkeyPatch], Iterator[None]]


@dataclass
class Case:
    """A command line that must be refused: ``needles`` all appear in the error line; ``patch`` (a generator
    taking a monkeypatch) sets up the world the command runs in, e.g. a full disk."""

    args: list[str]
    needles: tuple[str, ...]
    patch: Patch | None = None


def _case(args: list[str], *needles: str, patch: Patch | None = None) -> Case:
    return Case(args, needles, patch)


# ---------------------------------------------------------------------------------------------------------------
# simulated environments: a full disk, an unreadable file, the Hugging Face hub


def _enospc(name: str = "") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)


def disk_full_on_weights(mp: pytest.MonkeyPatch) -> Iterator[None]:
    """The disk fills up half-way through the model's safetensors file."""
    import transformers.modeling_utils as modeling_utils

    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise _enospc(str(filename))

    mp.setattr(modeling_utils, "safe_save_file", save_file)
    yield


def disk_full_on_tokenizer(mp: pytest.MonkeyPatch) -> Iterator[None]:
    """The weights fit, the tokenizer files do not."""
    from transformers import PreTrainedTokenizerBase

    def save_pretrained(self, directory, *args, **kwargs):
        raise _enospc(str(Path(directory) / "tokenizer.json"))

    mp.setattr(PreTrainedTokenizerBase, "save_pretrained", save_pretrained)
    yield


def disk_full_on(name: str) -> Patch:
    """Writing a file called ``name`` (with Path.write_text, as the run folder's files are) fails: disk full."""

    def patch(mp: pytest.MonkeyPatch) -> Iterator[None]:
        write_text = Path.write_text

        def full(self, data, *args, **kwargs):
            if self.name == name:
                raise _enospc(str(self))
            return write_text(self, data, *args, **kwargs)

        mp.setattr(Path, "write_text", full)
        yield

    return patch


def disk_full_on_mkdtemp(mp: pytest.MonkeyPatch) -> Iterator[None]:
    """Not even a temporary folder can be created."""
    import tempfile

    def mkdtemp(*args, **kwargs):
        raise _enospc(str(kwargs.get("dir", "")))

    mp.setattr(tempfile, "mkdtemp", mkdtemp)
    yield


def disk_full_on_json(mp: pytest.MonkeyPatch) -> Iterator[None]:
    """``json.dump`` into a file runs out of space after the first bytes (``eval --output``)."""

    def full(obj, fh, *args, **kwargs):
        fh.write("{")
        raise _enospc(getattr(fh, "name", ""))

    mp.setattr(json, "dump", full)
    yield


def unreadable(path: Path) -> Patch:
    """``path`` cannot be read: mode 000 for a normal user; root reads anything, so there reading it is refused."""

    def patch(mp: pytest.MonkeyPatch) -> Iterator[None]:
        if os.geteuid() != 0:
            path.chmod(0)
            try:
                yield
            finally:
                path.chmod(0o644)
            return

        def denied(original):
            def read(self, *args, **kwargs):
                if self.resolve() == path.resolve():
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
                return original(self, *args, **kwargs)

            return read

        mp.setattr(Path, "read_bytes", denied(Path.read_bytes))
        mp.setattr(Path, "read_text", denied(Path.read_text))
        yield

    return patch


class _Unreachable:
    """An HfApi with no network: a call that may only read the local cache works, every other one fails at
    once (the real client would retry with back-off)."""

    def __init__(self):
        import huggingface_hub

        self.api = huggingface_hub.HfApi(endpoint=CLOSED_PORT)

    def __getattr__(self, name: str):
        def call(*args, **kwargs):
            from huggingface_hub.utils import httpx

            if kwargs.get("local_files_only"):
                return getattr(self.api, name)(*args, **kwargs)
            raise httpx.ConnectError(f"{name}: [Errno 101] Network is unreachable")

        return call


class FakeHub:
    """The Hugging Face hub as ``transformers`` sees it: the files of a local checkpoint, "downloaded" into a
    private cache (the layout huggingface_hub writes) until ``fail(filename)`` returns an exception to raise.
    Every real request goes to a closed local port, so nothing leaves the machine."""

    def __init__(self, checkpoint: Path, cache: Path, fail: Callable[[str], Exception | None]):
        self.checkpoint, self.cache, self.fail = checkpoint, cache, fail

    def install(self, mp: pytest.MonkeyPatch) -> Iterator[None]:
        import transformers.utils.hub as hub
        from huggingface_hub import constants

        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        mp.setattr(constants, "ENDPOINT", CLOSED_PORT)
        mp.setattr(constants, "HF_HUB_CACHE", str(self.cache))
        mp.setattr(hub, "_hf_api", _Unreachable())
        mp.setattr(hub, "hf_hub_download", self.download)
        mp.setattr(hub, "snapshot_download", self.snapshot)
        yield

    def download(self, repo_id: str, filename: str, *, cache_dir=None, **_) -> str:
        from huggingface_hub.errors import EntryNotFoundError

        repo = Path(cache_dir or self.cache) / f"models--{repo_id.replace('/', '--')}"
        commit = "0" * 40
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        error = self.fail(filename)
        if error is not None:
            (repo / "blobs").mkdir(exist_ok=True)
            (repo / "blobs" / f"{filename}.incomplete").write_bytes(b"\0" * 64)  # what a broken download leaves
            raise error
        if not (self.checkpoint / filename).is_file():
            raise EntryNotFoundError(f"{filename} is not in {repo_id}")
        shutil.copy(self.checkpoint / filename, snapshot / filename)
        return str(snapshot / filename)

    def snapshot(self, repo_id: str, *, allow_patterns=(), cache_dir=None, **_) -> str:
        from huggingface_hub.errors import EntryNotFoundError

        for filename in allow_patterns or []:
            with contextlib.suppress(EntryNotFoundError):
                self.download(repo_id, filename, cache_dir=cache_dir)
        return str(Path(cache_dir or self.cache) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / ("0" * 40))


def _connection_reset(filename: str) -> Exception | None:
    from huggingface_hub.utils import httpx

    return httpx.ConnectError("[Errno 104] Connection reset by peer")


def _cut_during_weights(filename: str) -> Exception | None:
    from huggingface_hub.utils import httpx

    if filename.endswith(".safetensors"):
        return httpx.RemoteProtocolError("peer closed connection without sending complete message body")
    return None


def _incomplete_weights(filename: str) -> Exception | None:
    if filename.endswith(".safetensors"):
        return OSError(
            "Consistency check failed: file should be of size 1048576 but has size 65536 (model.safetensors).\n"
            "This is usually due to network issues while downloading the file."
        )
    return None


def _repo_not_found(filename: str) -> Exception | None:
    from huggingface_hub.errors import RepositoryNotFoundError
    from huggingface_hub.utils import httpx

    request = httpx.Request("GET", f"https://huggingface.co/{HUB_ID}/resolve/main/{filename}")
    return RepositoryNotFoundError(
        "404 Client Error: Repository Not Found", response=httpx.Response(404, request=request)
    )


def offline_without_cache(cache: Path) -> Patch:
    def patch(mp: pytest.MonkeyPatch) -> Iterator[None]:
        from huggingface_hub import constants

        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        mp.setattr(constants, "HF_HUB_CACHE", str(cache))
        yield

    return patch


# ---------------------------------------------------------------------------------------------------------------
# the catalogue


def _copy_model(env, name: str, drop: tuple[str, ...] = ()) -> Path:
    path = env["tmp"] / name
    shutil.copytree(env["model"], path, ignore=shutil.ignore_patterns(*drop))
    return path


def _catalogue(env, scratch: Path) -> dict[str, Case]:
    """Bad inputs that ``test_cli._bad_inputs`` does not cover, with the words their error line must hold."""
    tmp, b = env["tmp"], env["base"]

    def write(name: str, content: str | bytes) -> str:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return str(path)

    def config(name: str, values) -> list[str]:
        """A run whose settings come from a config file (no flags that would override them)."""
        content = values if isinstance(values, (str, bytes)) else yaml.safe_dump(values)
        path = write(f"configs/{name}.yaml", content)
        return ["run", "--model", str(env["model"]), "--out", str(env["out"]), "--config", path]

    (tmp / "empty-folder").mkdir()
    weights = (env["model"] / "model.safetensors").read_bytes()
    broken_config = _copy_model(env, "broken-config")
    (broken_config / "config.json").write_text("{ this is not JSON", encoding="utf-8")
    list_config = _copy_model(env, "list-config")
    (list_config / "config.json").write_text("[1, 2, 3]", encoding="utf-8")
    alien = _copy_model(env, "alien")
    (alien / "config.json").write_text(json.dumps({"model_type": "frobnitz", "hidden_size": 32}), encoding="utf-8")
    typeless = _copy_model(env, "typeless")
    (typeless / "config.json").write_text(json.dumps({"hidden_size": 32}), encoding="utf-8")
    truncated = _copy_model(env, "truncated")
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    garbage = _copy_model(env, "garbage")
    (garbage / "model.safetensors").write_bytes(os.urandom(len(weights)))
    weightless = _copy_model(env, "weightless", drop=("*.safetensors",))
    tokenizerless = _copy_model(env, "tokenizerless", drop=("tokenizer*", "special_tokens_map.json", "*.jinja"))
    encoder = _copy_model(env, "encoder")
    bert = {"model_type": "bert", "vocab_size": 400, "hidden_size": 32, "num_hidden_layers": 2}
    (encoder / "config.json").write_text(json.dumps({**bert, "num_attention_heads": 4}), encoding="utf-8")
    reshaped = _copy_model(env, "reshaped")
    cfg = json.loads((reshaped / "config.json").read_text(encoding="utf-8"))
    (reshaped / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 48}), encoding="utf-8")
    locked_data = write("locked.txt", "some text\n" * 200)
    locked_config = write("configs/locked.yaml", "seed: 1\n")
    learned = env["out"] / "learned"
    hub_cache = scratch / "hub-cache"

    def hub(fail) -> Patch:
        return FakeHub(env["model"], hub_cache, fail).install

    run_ok = ["--name", "full", "--ff-frac", "0.25", "--attn-frac", "0", "--steps", "1"]
    return {
        # files
        "forget folder without files": _case(b + ["--forget", str(tmp / "empty-folder")], "has no files"),
        "binary forget file": _case(
            b + ["--forget", write("blob.bin", bytes(range(256)) * 64)], "blob.bin", "not UTF-8 text"
        ),
        "UTF-16 forget file": _case(
            b + ["--forget", write("utf16.txt", ("some prose " * 300).encode("utf-16"))], "utf16.txt", "not UTF-8"
        ),
        "unreadable forget file": _case(
            b + ["--forget", locked_data], "locked.txt", "permission denied", patch=unreadable(Path(locked_data))
        ),
        "non-UTF-8 JSONL records": _case(
            b + ["--forget", write("latin1.jsonl", '{"text": "caf\xe9"}\n'.encode("latin-1"))], "not UTF-8"
        ),
        "config file is a folder": _case(b + ["--config", str(tmp / "empty-folder")], "is a folder"),
        "config file not UTF-8": _case(config("latin1", "name: caf\xe9\n".encode("latin-1")), "not UTF-8"),
        "binary config file": _case(config("binary", b"\x00\x01\x02seed: 1\n"), "not valid YAML"),
        "unreadable config file": _case(
            b + ["--config", locked_config], "permission denied", patch=unreadable(Path(locked_config))
        ),
        # configs: types, unknown (nested) keys, ranges
        "config: seq_len not a number": _case(config("seq-len-text", {"seq_len": "long"}), "seq_len"),
        "config: seq_len above the maximum": _case(config("seq-len-max", {"seq_len": 100_000}), "seq_len"),
        "config: batch_size a fraction": _case(config("batch-frac", {"batch_size": 2.5}), "batch_size"),
        "config: eval_tokens zero": _case(config("eval-zero", {"eval_tokens": 0}), "eval_tokens"),
        "config: stats_tokens negative": _case(config("stats-neg", {"stats_tokens": -256}), "stats_tokens"),
        "config: val_tokens negative": _case(config("val-neg", {"val_tokens": -1}), "val_tokens"),
        "config: seed infinite": _case(config("seed-inf", "seed: .inf\n"), "seed"),
        "config: unknown key in forget": _case(
            config("nested", {"forget": {"source": str(env["code"]), "colour": "red"}}), "forget.colour"
        ),
        "config: unknown key in stop": _case(
            config("nested-stop", {"stop": {"max_retain_drop": 0.1, "patience": 3}}), "stop.patience"
        ),
        "config: forget target drop zero": _case(
            config("target-zero", {"stop": {"forget_target_drop": 0}}), "forget_target_drop"
        ),
        "config: method_config a list": _case(config("mc-list", {"method_config": ["ff_frac"]}), "method_config"),
        "config: unknown method_config key": _case(
            config("mc-unknown", {"method_config": {"ff_frac": 0.1, "colour": "red"}}), "colour"
        ),
        "config: forget a number": _case(config("forget-num", {"forget": 42}), "forget"),
        "config: evals entry without data": _case(config("evals", {"evals": [{"suite": "mcq"}]}), "evals.0.data"),
        "config: save_model not a boolean": _case(config("save", {"save_model": "maybe"}), "save_model"),
        # numbers out of range on the command line
        "batch size zero": _case(b + ["--batch-size", "0"], "batch_size"),
        "eval tokens zero": _case(b + ["--eval-tokens", "0"], "--eval-tokens"),
        "stats tokens negative": _case(b + ["--stats-tokens", "-1"], "--stats-tokens"),
        "val tokens negative": _case(b + ["--val-tokens", "-5"], "--val-tokens"),
        "skip-k negative": _case(b + ["--skip-k", "-1"], "--skip-k"),
        "seq_len above the maximum": _case(b + ["--seq-len", "40000"], "--seq-len"),
        "seed beyond 64 bits": _case(b + ["--seed", str(2**64)], "seed"),
        "learn: seq_len above the maximum": _case(
            ["learn", "--model", str(env["model"]), "--data", str(env["code"]), "--out", str(learned)]
            + ["--seq-len", "40000", "--dtype", "fp32"],
            "--seq-len",
        ),
        "fraction not a number": _case(b + ["--ff-frac", "nan"], "--ff-frac", "finite"),
        "budget infinite": _case(b + ["--max-retain-drop", "inf"], "--max-retain-drop", "finite"),
        "forget target of 0%": _case(b + ["--forget-target-drop", "0%"], "forget_target_drop"),
        "KL budget negative": _case(b + ["--budget", "kl=-1"], "kl"),
        # trained methods' parameters (--set)
        "learning rate zero": _case(b + ["--method", "gradient-ascent", "--set", "lr=0"], "lr"),
        "learning rate of 1": _case(b + ["--method", "npo", "--set", "lr=1"], "lr"),
        "negative retain weight": _case(b + ["--method", "graddiff", "--set", "alpha=-1"], "alpha"),
        "training steps not a number": _case(b + ["--method", "gradient-ascent", "--set", "steps=many"], "steps"),
        "LoRA rank zero": _case(b + ["--method", "gradient-ascent", "--lora", "r=0"], "r"),
        # model paths
        "config.json not JSON": _case(b + ["--model", str(broken_config)], "config.json"),
        "config.json a JSON list": _case(b + ["--model", str(list_config)], "config.json"),
        "unknown model_type": _case(b + ["--model", str(alien)], "frobnitz"),
        "config.json without model_type": _case(b + ["--model", str(typeless)], "model_type"),
        "truncated safetensors": _case(b + ["--model", str(truncated)], "model.safetensors"),
        "corrupt safetensors": _case(b + ["--model", str(garbage)], "model.safetensors"),
        "model folder without weights": _case(b + ["--model", str(weightless)], "no file named model.safetensors"),
        "model folder without tokenizer": _case(b + ["--model", str(tokenizerless)], "tokenizer"),
        "encoder-only architecture": _case(b + ["--model", str(encoder)], "bert"),
        "weights of another shape": _case(b + ["--model", str(reshaped)], "shape"),
        "gguf that is not GGUF": _case(b + ["--model", write("fake.gguf", "not a gguf file\n" * 50)], "GGUF"),
        "model path a plain file": _case(b + ["--model", str(env["code"])], "is a file"),
        # records
        "JSONL line that is not JSON": _case(
            b + ["--forget", write("broken.jsonl", '{"text": "a"}\n{"text": \n')], "broken.jsonl:2", "invalid JSON"
        ),
        "JSON file that is not JSON": _case(b + ["--forget", write("broken.json", '[{"text": "a"},')], "invalid JSON"),
        "JSONL record a list": _case(b + ["--forget", write("list.jsonl", '["text", "a"]\n')], "expected an object"),
        "CSV without the field": _case(
            b + ["--forget", write("rows.csv", "text\nhello\n"), "--forget-field", "body"], "'body'"
        ),
        "QA records without answer": _case(
            b + ["--forget", write("qa-noanswer.jsonl", '{"question": "Who?"}\n'), "--forget-format", "qa"],
            "'answer'",
        ),
        "QA records without question": _case(
            b + ["--retain", write("qa-noquestion.jsonl", '{"answer": "Me"}\n'), "--retain-format", "qa"],
            "'question'",
        ),
        "QA record with an empty answer": _case(
            b + ["--forget", write("qa-empty.jsonl", '{"question": "Who?", "answer": " "}\n'), "--forget-format", "qa"],
            "empty",
        ),
        "parquet file that is not parquet": _case(b + ["--forget", write("fake.parquet", "a,b\n1,2\n")], "parquet"),
        # output
        "--out is a file": _case(b + ["--out", str(env["code"])], "is a file"),
        "--from a folder that is no run": _case(b + ["--from", str(tmp / "empty-folder")], "empty-folder"),
        # a full disk while the results are written
        "disk full: model weights": _case(b + run_ok, "no space left", patch=disk_full_on_weights),
        "disk full: tokenizer files": _case(b + run_ok, "no space left", patch=disk_full_on_tokenizer),
        "disk full: metrics.json": _case(b + run_ok, "no space left", patch=disk_full_on("metrics.json")),
        "disk full: temporary folder": _case(b + run_ok, "no space left", patch=disk_full_on_mkdtemp),
        "disk full: learn checkpoint": _case(
            ["learn", "--model", str(env["model"]), "--data", str(env["code"]), "--out", str(learned)]
            + ["--steps", "1", "--batch-size", "2", "--seq-len", "16", "--tokens", "64", "--dtype", "fp32"],
            "no space left",
            patch=disk_full_on_weights,
        ),
        "disk full: eval --output": _case(
            ["eval", "--model", str(env["model"]), "--data", str(env["code"]), "--seq-len", "32"]
            + ["--eval-tokens", "64", "--dtype", "fp32", "--output", str(env["out"] / "metrics.json")],
            "no space left",
            patch=disk_full_on_json,
        ),
        "eval --output is a folder": _case(
            ["eval", "--model", str(env["model"]), "--data", str(env["code"]), "--seq-len", "32"]
            + ["--eval-tokens", "64", "--dtype", "fp32", "--output", str(tmp / "empty-folder")],
            "empty-folder",
            "is a folder",
        ),
        # hub models that cannot be downloaded
        "hub offline, not cached": _case(
            b + ["--model", HUB_ID], HUB_ID, "HF_HUB_OFFLINE", patch=offline_without_cache(scratch / "empty-cache")
        ),
        "hub connection reset": _case(b + ["--model", HUB_ID], HUB_ID, "again", patch=hub(_connection_reset)),
        "hub download cut during the weights": _case(
            b + ["--model", HUB_ID], HUB_ID, "interrupted", patch=hub(_cut_during_weights)
        ),
        "hub download incomplete file": _case(
            b + ["--model", HUB_ID], HUB_ID, "interrupted", patch=hub(_incomplete_weights)
        ),
        "hub repository not found": _case(b + ["--model", HUB_ID], HUB_ID, "not found", patch=hub(_repo_not_found)),
    }


def test_bad_input_catalogue(env, tmp_path_factory, monkeypatch):
    """Every case: exit code 2, one ``error: ...`` line naming the problem, no traceback, nothing left in the
    output folder (not even a hidden temporary folder), no file under the test's folder changed."""
    scratch = tmp_path_factory.mktemp("scratch")  # caches live outside the folder whose hash must not change
    monkeypatch.setenv("UNLEARN_CACHE", str(scratch / "unlearn-cache"))
    cases = _catalogue(env, scratch)
    problems = []
    for label, case in cases.items():
        before = tree_hash(env["tmp"])
        with monkeypatch.context() as mp, contextlib.contextmanager(case.patch or _no_patch)(mp):
            try:
                code, out, err = invoke(*case.args)
            except Exception as exc:  # noqa: BLE001 - reported with the others below
                problems.append(f"{label}: raised {type(exc).__name__}: {exc}")
                continue
        try:
            for needle in case.needles:
                assert_refused(label, code, out, err, needle, env["out"])
            assert tree_hash(env["tmp"]) == before, f"{label}: changed files under {env['tmp']}"
        except AssertionError as exc:
            problems.append(str(exc).splitlines()[0])
        if env["out"].exists():
            shutil.rmtree(env["out"])  # an empty output folder is fine; start every case without one
    assert not problems, f"{len(problems)} of {len(cases)} cases failed:\n" + "\n".join(problems)


def _no_patch(mp: pytest.MonkeyPatch) -> Iterator[None]:
    yield


def test_catalogue_adds_new_cases(env, tmp_path_factory):
    """No command line of the catalogue repeats one of test_cli's, and together they hold at least 30 cases."""
    from test_cli import _bad_inputs

    old = {tuple(args) for args, _ in _bad_inputs(env).values()}
    new = _catalogue(env, tmp_path_factory.mktemp("scratch"))
    assert not [label for label, case in new.items() if tuple(case.args) in old]
    assert len(new) >= 30


def test_learn_api_refuses_out_of_range_numbers(env):
    import unlearn

    with pytest.raises(UnlearnError, match="seq_len"):
        unlearn.learn(str(env["model"]), str(env["code"]), env["out"] / "learned", seq_len=40_000, dtype="fp32")
    assert not env["out"].exists() or not any(env["out"].iterdir())


# ---------------------------------------------------------------------------------------------------------------
# fuzzing the config loader

FIELDS = sorted(RunConfig.model_fields) + ["source", "fields", "format", "metric", "max_retain_drop", "suite"]
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
keys = st.sampled_from(FIELDS) | st.text(max_size=12)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


def _load(tmp_path: Path, content: bytes):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(content)
    try:
        return coerce_config(path)
    except UnlearnError as exc:
        assert "\n" not in str(exc) and str(exc).strip(), repr(str(exc))
        return exc


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(keys, values, max_size=6))
def test_fuzz_config_mappings(tmp_path, data):
    assert isinstance(_load(tmp_path, yaml.safe_dump(data, allow_unicode=True).encode()), (RunConfig, UnlearnError))


# YAML that is easy to get wrong: dates that do not exist, explicit tags, anchors, flow syntax, tabs, NUL
TOKENS = st.sampled_from(
    [
        "2024-13-01",
        "2024-02-30",
        "!!int x",
        "!!float abc",
        "!!binary ???",
        ".nan",
        "-.inf",
        "1e999",
        "0x1F",
        "~",
        "",
        "[1, 2",
        "{a: 1}",
        "[[1, 2], 3]",
        "&a [*a]",
        "*undefined",
        "!!python/object:os.system x",
        "'quoted",
        "\t1",
        "? [1, 2]",
        "- item",
        "|\n  block",
        "\x00",
        "yes",
        "no",
        "-0",
        "1_000",
        "😀",
        "日本",
    ]
)
LINES = st.lists(
    st.tuples(st.sampled_from(["", "  ", "    ", "- ", "\t"]), keys, TOKENS | st.text(max_size=10)),
    max_size=8,
).map(lambda lines: "\n".join(f"{indent}{key}: {value}" for indent, key, value in lines))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode), LINES.map(str.encode)))
def test_fuzz_config_raw_text(tmp_path, content):
    assert isinstance(_load(tmp_path, content), (RunConfig, UnlearnError))


# ---------------------------------------------------------------------------------------------------------------
# edge cases of data and models


def _run_ok(*args: str) -> dict:
    """A run that must succeed: one pruning step of a quarter of the feed-forward neurons (later flags win)."""
    code, out, err = invoke(*args[:1], "--ff-frac", "0.25", "--attn-frac", "0", "--steps", "1", *args[1:], "--json")
    assert code == 0, err
    return json.loads(out)


def test_long_document_blank_lines_and_scripts(env):
    """One document far longer than seq_len, blank and whitespace-only lines, CJK, Arabic and emoji text."""
    long = env["tmp"] / "long.txt"
    long.write_text(" ".join(f"word{i % 97}" for i in range(20_000)), encoding="utf-8")  # one line, no break
    mixed = env["tmp"] / "mixed.txt"
    paragraphs = ["日本語の文章です。東京は大きな都市です。", "مرحبا بالعالم، هذه جملة عربية.", "emoji 🙂🚀🌍 text"]
    mixed.write_text(("\n\n   \n\t\n".join(paragraphs) + "\n\n \n") * 60, encoding="utf-8")
    result = _run_ok(*env["base"], "--forget", str(long), "--retain", str(mixed), "--name", "edge")
    assert result["after"]["forget"]["n_tokens"] > 0 and result["after"]["retain"]["n_tokens"] > 0


def test_whitespace_only_corpus_is_refused(env):
    blank = env["tmp"] / "blank.txt"
    blank.write_text("\n\n   \n\t\t\n" * 50, encoding="utf-8")
    assert_refused("whitespace-only corpus", *invoke(*env["base"], "--forget", str(blank)), "empty", env["out"])


def test_non_utf8_folder_file_is_refused(env):
    """A latin-1 file inside a data folder is refused like a named one; a binary or whitespace-only file there
    is skipped."""
    folder = env["tmp"] / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("plain text " * 500, encoding="utf-8")
    (folder / "b.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (folder / "c.bin").write_bytes(bytes(range(256)))
    (folder / "d.txt").write_text(" \n\t\n\n", encoding="utf-8")  # whitespace only: no document
    code, out, err = invoke(*env["base"], "--retain", str(folder))
    assert_refused("latin-1 file in a folder", code, out, err, "b.txt", env["out"])
    (folder / "b.txt").unlink()
    _run_ok(*env["base"], "--retain", str(folder), "--name", "binary-skipped")


def test_tokenizer_without_bos_and_pad(env, tokenizer):
    """A tokenizer with neither BOS nor pad token (EOS only) runs; the saved model reloads."""
    path = env["tmp"] / "no-bos-pad"
    model = tiny_model("llama")
    model.config.bos_token_id = model.config.pad_token_id = None
    model.generation_config.bos_token_id = model.generation_config.pad_token_id = None
    model.save_pretrained(path)
    bare = tokenizer.__class__.from_pretrained(env["model"])
    bare.bos_token = None
    bare.pad_token = None
    assert bare.bos_token_id is None and bare.pad_token_id is None
    bare.save_pretrained(path)
    before = tree_hash(path)
    result = _run_ok(*env["base"], "--model", str(path), "--name", "nobos")
    assert result["after"]["forget"]["n_tokens"] > 0
    assert tree_hash(path) == before
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(env["out"] / "nobos" / "model")
    assert saved.bos_token_id is None and saved.pad_token_id is None


def test_tied_embeddings_round_trip(env, tokenizer):
    """tie_word_embeddings=True: run, save, reload; the saved checkpoint gives the logits the run's model gave."""
    from transformers import AutoModelForCausalLM

    path = env["tmp"] / "tied"
    model = tiny_model("llama", tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    _run_ok(*env["base"], "--model", str(path), "--name", "tied", "--set", "heal_steps=0")
    saved = env["out"] / "tied" / "model"
    reloaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).eval()
    assert reloaded.config.tie_word_embeddings
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    # the pruned model as the run evaluated it: the original with the pruned columns zeroed
    pruned = json.loads((env["out"] / "tied" / "pruned_neurons.json").read_text(encoding="utf-8"))
    assert set(pruned) == {"ff", "promotes"} and pruned["ff"] and set(pruned["promotes"]["ff"]) == set(pruned["ff"])
    with torch.no_grad():
        for layer, idx in pruned["ff"].items():
            model.model.layers[int(layer)].mlp.down_proj.weight[:, idx] = 0
    ids = torch.randint(2, 380, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_fp16_on_cpu(env):
    """--dtype fp16 on the CPU: slower than fp32, but it works (finite metrics) and pruning saves an fp16
    checkpoint (healing trains, and saves, float32 weights)."""
    import math

    result = _run_ok(*env["base"], "--dtype", "fp16", "--name", "half", "--set", "heal_steps=0")
    for when in ("before", "after"):
        assert all(math.isfinite(v) for which in ("forget", "retain") for v in result[when][which].values())
    manifest = json.loads((Path(result["run_dir"]) / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["model"]["dtype"] == "fp16"
    config = json.loads((Path(result["run_dir"]) / "model" / "config.json").read_text(encoding="utf-8"))
    assert config.get("dtype", config.get("torch_dtype")) == "float16"
