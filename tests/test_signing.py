"""Signed run folders and the checks before a run folder is used, on the tiny llama.

A signed chain of two requests verifies with the public key; editing any byte of any file of either folder
(manifests and the signature included) makes ``unlearn ledger --pubkey`` fail naming that file. Without a key
the ledger says the head is unsigned and prints its manifest hash. ``audit``, ``report`` and ``sign`` refuse a
folder whose files no longer match its manifest (unless ``--no-verify``); ``report`` refuses malformed values.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
from conftest import invoke

import unlearn
from unlearn.errors import UnlearnError
from unlearn.runs.signing import SIGNATURE, load_private_key, load_public_key

SP = {"ff_frac": 0.1, "attn_frac": 0.0, "steps": 1}


@pytest.fixture
def keys(tmp_path):
    code, out, err = invoke("keygen", str(tmp_path / "keys" / "reviewer"))
    assert code == 2 and "not found" in err  # the folder must exist: no key is written anywhere else
    (tmp_path / "keys").mkdir()
    code, out, err = invoke("keygen", str(tmp_path / "keys" / "reviewer"))
    assert code == 0, err
    private, public = tmp_path / "keys" / "reviewer", tmp_path / "keys" / "reviewer.pub"
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600 and public.is_file()
    code, _, err = invoke("keygen", str(private))
    assert code == 2 and "already exists" in err  # never overwritten
    return private, public


@pytest.fixture
def signed_chain(run_tiny, keys):
    """Two requests, a and then b on a's model, each signed."""
    private, _ = keys
    a = run_tiny("a", "selective-pruning", SP)
    b = run_tiny("b", "selective-pruning", SP, from_run=str(a.run_dir), model=str(a.run_dir / "model"))
    for run in (a, b):
        record = unlearn.sign(run.run_dir, private)
        assert (run.run_dir / SIGNATURE).is_file() and "manifest.json" in record["files"]
    return a, b


def test_signed_chain_verifies_and_any_edited_byte_names_its_file(signed_chain, keys):
    a, b = signed_chain
    _, public = keys
    result = unlearn.ledger(b.run_dir, pubkey=public)
    assert result["verified"], result["problems"]
    assert [r["signature"] for r in result["requests"]] == ["verified", "verified"]
    code, out, err = invoke("ledger", str(b.run_dir), "--pubkey", str(public))
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("verified: 2 requests, all hashes match, every signature valid")

    files = sorted(p for run in (a, b) for p in run.run_dir.rglob("*") if p.is_file())
    assert {"manifest.json", SIGNATURE, "model.safetensors", "report.html"} <= {p.name for p in files}
    for path in files:
        original = path.read_bytes()
        i = len(original) // 2
        path.write_bytes(original[:i] + bytes([original[i] ^ 0x01]) + original[i + 1 :])
        try:
            result = unlearn.ledger(b.run_dir, pubkey=public)
            assert not result["verified"], f"editing {path} went unnoticed"
            assert any(str(path) in p for p in result["problems"]), (path, result["problems"])
            code, _, err = invoke("ledger", str(b.run_dir), "--pubkey", str(public))
            assert code == 1 and err.startswith("error: verification failed"), (path, err)
        finally:
            path.write_bytes(original)
    assert unlearn.ledger(b.run_dir, pubkey=public)["verified"]


def test_an_added_file_and_another_key_fail_verification(signed_chain, keys, tmp_path):
    _, b = signed_chain
    _, public = keys
    extra = b.run_dir / "notes.txt"
    extra.write_text("approved\n", encoding="utf-8")
    problems = unlearn.ledger(b.run_dir, pubkey=public)["problems"]
    assert any(str(extra) in p and "added after signing" in p for p in problems)
    extra.unlink()
    (tmp_path / "other").mkdir()
    _, other = unlearn.keygen(tmp_path / "other" / "key")
    problems = unlearn.ledger(b.run_dir, pubkey=other)["problems"]
    assert len(problems) == 2 and all("signed with another key" in p for p in problems)


def test_unsigned_head_is_said_plainly_with_its_hash(run_tiny, keys):
    a = run_tiny("a", "selective-pruning", SP)
    code, out, err = invoke("ledger", str(a.run_dir))
    assert code == 0, err
    head = unlearn.ledger(a.run_dir)["head"]
    assert head["signed"] is False and len(head["manifest_sha256"]) == 64
    text = " ".join(out.split())
    assert "is unsigned" in text and head["manifest_sha256"] in text
    # a tampered head manifest: hashes cannot tell (nothing records the head's hash) ...
    manifest = a.run_dir / "manifest.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["method"] = "nothing-to-see"
    manifest.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    assert unlearn.ledger(a.run_dir)["verified"]
    # ... a signature made before the edit can
    private, public = keys
    code, _, err = invoke("ledger", str(a.run_dir), "--pubkey", str(public))
    assert code == 1 and "signature.json: missing" in err
    manifest.write_text(json.dumps({**data, "method": "selective-pruning"}, indent=2) + "\n", encoding="utf-8")
    unlearn.sign(a.run_dir, private)
    data["method"] = "nothing-to-see"
    manifest.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    code, _, err = invoke("ledger", str(a.run_dir), "--pubkey", str(public))
    assert code == 1 and f"{manifest}: changed after signing" in err
    code, out, _ = invoke("ledger", str(a.run_dir))
    assert "is signed" in " ".join(out.split())


def test_run_sign_flag_signs_the_finished_folder(env, keys):
    private, public = keys
    code, _, err = invoke(*env["base"], "--name", "signed", "--sign", str(private), "--quiet")
    assert code == 0, err
    run_dir = env["out"] / "signed"
    record = json.loads((run_dir / SIGNATURE).read_text(encoding="utf-8"))
    assert {"report.html", "manifest.json", "model/model.safetensors"} <= set(record["files"])
    assert unlearn.ledger(run_dir, pubkey=public)["verified"]


@pytest.mark.parametrize(
    "which, content, needle",
    [
        ("key", None, "not found"),
        ("key", b"not a key", "not a PEM private key"),
        ("pub", None, "a public key"),  # the public key given where the private one goes
    ],
)
def test_a_bad_key_is_refused_before_any_work(env, keys, tmp_path, which, content, needle):
    private, public = keys
    key = tmp_path / "bad.key"
    if content is not None:
        key.write_bytes(content)
    if which == "pub":
        key = public
    code, out, err = invoke(*env["base"], "--sign", str(key))
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not env["out"].exists() or not any(env["out"].iterdir())


def test_key_files_are_checked(keys, tmp_path):
    private, public = keys
    assert load_private_key(private).key_id == load_public_key(public).key_id
    with pytest.raises(UnlearnError, match="a private key"):
        load_public_key(private)
    (tmp_path / "rsa.pem").write_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(UnlearnError, match="not a PEM public key"):
        load_public_key(tmp_path / "rsa.pem")


def test_sign_refuses_a_folder_that_no_longer_matches_its_manifest(run_tiny, keys):
    private, _ = keys
    a = run_tiny("a", "selective-pruning", SP)
    (a.run_dir / "metrics.json").write_text("{}", encoding="utf-8")
    code, _, err = invoke("sign", str(a.run_dir), "--key", str(private))
    assert code == 2 and "metrics.json" in err and "does not match its manifest" in err
    assert not (a.run_dir / SIGNATURE).exists()
    code, _, err = invoke("sign", str(a.run_dir), "--key", str(private), "--no-verify")
    assert code == 0, err


def test_audit_and_report_verify_the_folder_first(run_tiny, tmp_path):
    a = run_tiny("a", "selective-pruning", SP)
    weights = a.run_dir / "model" / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 0x01]))
    report = (a.run_dir / "report.html").read_bytes()
    code, _, err = invoke("audit", str(a.run_dir), "--attack", "quantize")
    assert code == 2 and str(weights) in err and "does not match its manifest" in err
    assert not (a.run_dir / "audit.json").exists()
    code, _, err = invoke("report", str(a.run_dir))
    assert code == 2 and str(weights) in err
    assert (a.run_dir / "report.html").read_bytes() == report
    code, _, err = invoke("report", str(a.run_dir), "--no-verify")
    assert code == 0, err


def test_audit_names_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "plain").mkdir()
    for folder, needle in ((tmp_path / "nope", "not found"), (tmp_path / "plain", "is not a run folder")):
        code, _, err = invoke("audit", str(folder))
        assert code == 2 and needle in err and "--original" not in err.split(":")[1], err


def test_report_refuses_malformed_values_and_shows_them_without_verification(run_tiny):
    a = run_tiny("a", "selective-pruning", SP)
    path = a.run_dir / "metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8"))
    metrics["after"]["forget"]["top1"] = float("nan")
    del metrics["before"]["retain"]["loss"]
    metrics["after"]["retain"]["top10"] = "high"
    path.write_text(json.dumps(metrics), encoding="utf-8")  # json writes NaN
    manifest = json.loads((a.run_dir / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"].pop("metrics.json")  # as if an older run: only the values are left to check
    (a.run_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    code, _, err = invoke("report", str(a.run_dir))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "metrics.json#/after/forget/top1: nan is not a finite number" in err and "(and 2 more)" in err
    code, _, err = invoke("report", str(a.run_dir), "--no-verify")
    assert code == 0, err
    md = (a.run_dir / "report.md").read_text(encoding="utf-8")
    assert "Problems in this run's records" in md
    for needle in (
        "/after/forget/top1",
        "/before/retain/loss",
        "missing",
        "/after/retain/top10",
        "a text, not a number",
    ):
        assert needle in md


def test_run_from_verifies_the_parent_unless_told_not_to(run_tiny):
    a = run_tiny("a", "selective-pruning", SP)
    metrics = a.run_dir / "metrics.json"
    metrics.write_text(metrics.read_text(encoding="utf-8").replace('"before"', '"before" ', 1), encoding="utf-8")
    with pytest.raises(UnlearnError, match=r"metrics.json: sha256 does not match.*--no-verify"):
        run_tiny("b", "selective-pruning", SP, from_run=str(a.run_dir), model=str(a.run_dir / "model"))
    b = unlearn.run({**_request_on(a), "name": "b"}, verify=False)  # built on it all the same; the chain says so
    assert b.manifest["parent"]["verified"] is False
    problems = unlearn.ledger(b.run_dir)["problems"]
    assert any(str(metrics) in p for p in problems)


def _request_on(parent) -> dict:
    """The parent's own settings, for a request on top of its model."""
    import yaml

    cfg = yaml.safe_load((parent.run_dir / "config.yaml").read_text(encoding="utf-8"))
    cfg.pop("name")
    return {**cfg, "from_run": str(parent.run_dir), "model": str(parent.run_dir / "model")}
