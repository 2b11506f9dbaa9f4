"""Signed run folders: an Ed25519 signature over every file of a finished run, the manifest included.

The hash chain of :mod:`unlearn.runs.ledger` protects every parent of a run (each child records its parent's
manifest sha256) but not the newest run, the head: anyone who can write the folder can edit its manifest and
its files together. A signature closes that gap for whoever holds the public key.

``signature.json`` lists the sha256 of every file in the run folder when it was signed (``manifest.json``,
``config.yaml``, ``metrics.json``, the model, the report, an audit, suite results, ...) and signs that list with
the private key. Verifying with the public key then fails, naming the file, when any signed file changed or
went missing, when a file was added after signing, or when the signature file itself was edited.

What a valid signature proves: the folder is byte for byte what the key holder signed. What it does not prove:
that the model forgot well (the metrics and the audit say how well), that the signer ran the run honestly, or
anything once the private key has leaked. Keep the private key off the machines whose runs it signs where you
can, and give reviewers the public key through a channel they trust.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnlearnError
from ..models.save import file_sha256
from .folder import SIGNATURE

FORMAT = "unlearn-signature/1"


@dataclass(frozen=True)
class PrivateKey:
    path: Path
    key: object  # cryptography's Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return key_id(self.key.public_key())


@dataclass(frozen=True)
class PublicKey:
    path: Path
    key: object  # cryptography's Ed25519PublicKey

    @property
    def key_id(self) -> str:
        return key_id(self.key)


def key_id(public_key) -> str:
    """The first 16 hex digits of the sha256 of the raw 32-byte public key: how records and messages name a key."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def keygen(path: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: the private key to ``path`` (PEM, readable by its owner only) and the public
    key to ``path.pub``. Refuses to replace either file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private, public = Path(path), Path(f"{path}.pub")
    for p in (private, public):
        if p.exists() or p.is_symlink():
            raise UnlearnError(f"{p} already exists: choose another key path (a key is never overwritten)")
    if not private.parent.is_dir():
        raise UnlearnError(f"folder {private.parent} not found: create it first or choose another key path")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        with open(public, "xb") as f:
            f.write(pub)
    except OSError as exc:
        private.unlink(missing_ok=True)
        raise UnlearnError(f"cannot write the key pair at {private}: {exc.strerror}") from exc
    return private, public


def _read_key_file(path: str | Path, flag: str) -> bytes:
    p = Path(path)
    if not p.exists():
        raise UnlearnError(f"{flag} {p}: not found")
    if not p.is_file():
        raise UnlearnError(f"{flag} {p}: not a file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UnlearnError(f"{flag} {p}: cannot read it ({exc.strerror})") from exc
    if len(data) > 64 * 1024:
        raise UnlearnError(f"{flag} {p}: too large for a key file (is it the right file?)")
    return data


def load_private_key(path: str | Path, flag: str = "--key") -> PrivateKey:
    """The Ed25519 private key in ``path`` (PEM, as ``unlearn keygen`` writes it); :class:`UnlearnError` otherwise."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_key_file(path, flag)
    if b"PUBLIC KEY" in data:
        raise UnlearnError(f"{flag} {path}: a public key; signing needs the private key (`unlearn keygen` writes both)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise UnlearnError(f"{flag} {path}: the key is encrypted; unlearn reads unencrypted PEM keys") from None
    except (ValueError, Exception) as exc:  # noqa: BLE001 - cryptography raises several types for a bad file
        raise UnlearnError(f"{flag} {path}: not a PEM private key (make one with `unlearn keygen`)") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UnlearnError(f"{flag} {path}: a {type(key).__name__.removeprefix('_')}, not an Ed25519 key")
    return PrivateKey(Path(path), key)


def load_public_key(path: str | Path, flag: str = "--pubkey") -> PublicKey:
    """The Ed25519 public key in ``path`` (PEM, as ``unlearn keygen`` writes it to KEY.pub)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read_key_file(path, flag)
    if b"PRIVATE KEY" in data:
        raise UnlearnError(f"{flag} {path}: a private key; verifying needs the public key (KEY.pub)")
    try:
        key = serialization.load_pem_public_key(data)
    except Exception as exc:  # noqa: BLE001 - cryptography raises several types for a bad file
        raise UnlearnError(f"{flag} {path}: not a PEM public key (`unlearn keygen` writes one to KEY.pub)") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise UnlearnError(f"{flag} {path}: not an Ed25519 public key")
    return PublicKey(Path(path), key)


def folder_files(run_dir: Path) -> dict[str, str]:
    """sha256 of every file under ``run_dir`` but the signature itself, by path relative to it ('/'-separated)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(run_dir):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(run_dir).as_posix()
            if rel != SIGNATURE:
                out[rel] = file_sha256(path)
    return out


def _payload_bytes(record: dict) -> bytes:
    """The signed bytes: the record without its signature, as canonical JSON."""
    payload = {k: v for k, v in record.items() if k != "signature"}
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign(run_dir: str | Path, key: PrivateKey) -> dict:
    """Sign every file of the finished run folder ``run_dir`` with ``key``: writes ``signature.json`` (replacing an
    earlier one) and returns its record."""
    from ..eval.store import write_json_atomic

    run_dir = Path(run_dir)
    files = folder_files(run_dir)
    record = {
        "format": FORMAT,
        "algorithm": "ed25519",
        "key_id": key.key_id,
        "signed": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "files": files,
    }
    record["signature"] = base64.b64encode(key.key.sign(_payload_bytes(record))).decode("ascii")
    write_json_atomic(run_dir / SIGNATURE, record)
    return record


def read_signature(run_dir: Path) -> tuple[dict | None, str | None]:
    """The signature record of ``run_dir`` (None if it is unsigned) and a problem reading it, if any."""
    path = Path(run_dir) / SIGNATURE
    if not path.is_file():
        return None, None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None, f"{path}: unreadable or not JSON (the signature file was damaged or edited)"
    fields_ok = (
        isinstance(record, dict)
        and isinstance(record.get("files"), dict)
        and isinstance(record.get("signature"), str)
        and isinstance(record.get("key_id"), str)
    )
    if not fields_ok:
        return None, f"{path}: not an unlearn signature record (the signature file was damaged or edited)"
    return record, None


def verify(run_dir: str | Path, public: PublicKey) -> list[str]:
    """Problems with the signature of ``run_dir`` under ``public``; each names the file. Empty: every file is
    exactly as signed and nothing was added."""
    from cryptography.exceptions import InvalidSignature

    run_dir = Path(run_dir)
    path = run_dir / SIGNATURE
    record, problem = read_signature(run_dir)
    if problem:
        return [problem]
    if record is None:
        return [f"{path}: missing: the run is unsigned (sign it with `unlearn sign {run_dir} --key KEY`)"]
    if record["key_id"] != public.key_id:
        return [f"{path}: signed with another key (key id {record['key_id']}; {public.path} is {public.key_id})"]
    try:
        public.key.verify(base64.b64decode(record["signature"], validate=True), _payload_bytes(record))
    except (InvalidSignature, ValueError):
        return [f"{path}: the signature does not verify with {public.path} (the signature file was edited)"]
    problems = []
    present = folder_files(run_dir)
    for rel, expected in record["files"].items():
        if rel not in present:
            problems.append(f"{run_dir / rel}: missing (it was signed)")
        elif present[rel] != expected:
            problems.append(f"{run_dir / rel}: changed after signing (sha256 differs from the signed one)")
    for rel in present.keys() - record["files"].keys():
        problems.append(
            f"{run_dir / rel}: added after signing (not covered by the signature: check it, then sign the "
            f"folder again with `unlearn sign`)"
        )
    return problems
