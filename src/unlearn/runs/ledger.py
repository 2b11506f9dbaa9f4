"""The compliance ledger: the chain of unlearning requests behind a run folder, re-verified from the files on disk.

A run started with ``--from PARENT`` records its parent in ``manifest.json``::

    "parent": {"run_dir": ..., "run_name": ..., "manifest_sha256": ..., "model_sha256": ...}

``manifest_sha256`` is the sha256 of the parent's ``manifest.json`` bytes, so a changed ancestor manifest
breaks the link below it (a hash chain). Every manifest also holds the sha256 of each saved model file
(``model.files``) and of the run folder's own files (``files``: config.yaml, metrics.json,
pruned_neurons.json). :func:`ledger` walks the chain from a run folder to its root and checks all of them.
Runs written before parents were recorded have no ``parent`` key: they are roots.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import UnlearnError
from ..models.save import file_sha256
from .folder import MANIFEST

RUN_FILES = ("config.yaml", "metrics.json", "pruned_neurons.json")  # hashed into the manifest's "files"
MAX_DEPTH = 10_000  # a longer chain can only be a loop of copied folders


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(run_dir: Path, what: str = "run folder") -> tuple[dict, bytes]:
    """The parsed manifest of ``run_dir`` and its exact bytes; :class:`UnlearnError` if it is not a run folder."""
    path = Path(run_dir) / MANIFEST
    if not Path(run_dir).is_dir():
        raise UnlearnError(f"{what} {run_dir} not found (or not a folder)")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UnlearnError(f"{run_dir} is not a run folder: it has no {MANIFEST}") from None
    except OSError as exc:
        raise UnlearnError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise UnlearnError(f"{path} is not valid JSON: is {run_dir} a run folder?") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), dict):
        raise UnlearnError(f"{path} is not an unlearn run manifest (no 'model' entry)")
    return manifest, raw


def parent_record(run_dir: Path, manifest: dict, raw: bytes) -> dict:
    """What a child's manifest records about its parent ``run_dir`` (an absolute path)."""
    return {
        "run_dir": str(run_dir),
        "run_name": Path(run_dir).name,
        "manifest_sha256": sha256_bytes(raw),
        "model_sha256": manifest["model"].get("sha256_after"),
    }


def check_model_files(run_dir: Path, manifest: dict) -> list[str]:
    """Problems with the saved model: a file listed in the manifest that is missing or whose sha256 differs,
    or a file in ``model/`` the manifest does not list."""
    files = manifest["model"].get("files") or {}
    folder = Path(run_dir) / "model"
    problems = []
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{path}: missing (manifest.json lists it)")
        elif file_sha256(path) != expected:
            problems.append(f"{path}: sha256 does not match manifest.json (the file changed after the run)")
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.name not in files:
                problems.append(f"{path}: not listed in manifest.json (added after the run)")
    return problems


def check_run_files(run_dir: Path, manifest: dict) -> list[str]:
    """Problems with the run folder's own files hashed in the manifest's ``files`` (absent in older runs)."""
    problems = []
    for name, expected in (manifest.get("files") or {}).items():
        path = Path(run_dir) / name
        if not path.is_file():
            problems.append(f"{path}: missing (manifest.json lists it)")
        elif file_sha256(path) != expected:
            problems.append(f"{path}: sha256 does not match manifest.json (the file changed after the run)")
    return problems


def verify_run(run_dir: Path, manifest: dict) -> list[str]:
    """Every file of one run folder against its manifest."""
    return check_model_files(run_dir, manifest) + check_run_files(run_dir, manifest)


def require_intact(run_dir: Path, what: str = "run folder") -> dict:
    """The manifest of ``run_dir`` once every file it lists hashes as recorded; :class:`UnlearnError` naming the
    first file that does not (the commands that read a run folder check it first, unless ``--no-verify``)."""
    manifest, _ = read_manifest(run_dir, what)
    problems = verify_run(run_dir, manifest)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UnlearnError(
            f"{what} {run_dir} does not match its manifest: {problems[0]}{more}; `unlearn ledger` lists every "
            "problem, --no-verify goes on anyway"
        )
    return manifest


@dataclass
class Link:
    """One run of a chain. ``record`` is what its child recorded about it (None for the run the walk started
    at); ``error`` says why it could not be read (then ``manifest`` is None and the walk stops there)."""

    run_dir: Path
    manifest: dict | None
    raw: bytes | None
    record: dict | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.run_dir.name


def locate(record: dict, child_dir: Path) -> Path:
    """The folder of a recorded parent: its recorded path, else a folder of its name beside the child (a runs
    folder moved or copied as a whole)."""
    recorded = Path(str(record.get("run_dir") or "?"))
    if record.get("run_dir") and (recorded / MANIFEST).is_file():
        return recorded
    beside = Path(child_dir).parent / str(record.get("run_name") or recorded.name)
    return beside if (beside / MANIFEST).is_file() else recorded


def walk(run_dir: str | Path) -> list[Link]:
    """The chain from ``run_dir`` (first) up to its root (last). ``run_dir`` itself must be a run folder
    (:class:`UnlearnError` otherwise); an ancestor that cannot be found or read ends the chain with an error."""
    start = Path(run_dir)
    manifest, raw = read_manifest(start)
    chain = [Link(start, manifest, raw)]
    seen = {start.resolve()}
    while chain[-1].manifest is not None and chain[-1].manifest.get("parent"):
        record = chain[-1].manifest["parent"]
        if not isinstance(record, dict):
            chain.append(Link(Path("?"), None, None, {}, f"{chain[-1].run_dir / MANIFEST}: malformed 'parent'"))
            break
        path = locate(record, chain[-1].run_dir)
        if path.resolve() in seen or len(chain) > MAX_DEPTH:
            chain.append(Link(path, None, None, record, f"{path}: the chain of parents loops back to it"))
            break
        seen.add(path.resolve())
        try:
            parent, parent_raw = read_manifest(path, "parent run folder")
        except UnlearnError as exc:
            chain.append(Link(path, None, None, record, str(exc)))
            break
        chain.append(Link(path, parent, parent_raw, record))
    return chain


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def compact_method_config(method: str | None, config: dict | None) -> str:
    """``key=value`` for the parameters that differ from the method's defaults (all of them for an unknown
    method); ``defaults`` when none differs."""
    if not config:
        return "defaults" if config == {} else "?"
    defaults = {}
    try:
        from ..methods import get_method

        defaults = {k: f.default for k, f in get_method(method or "").config_cls.model_fields.items()}
    except (UnlearnError, KeyError):
        pass
    changed = [f"{k}={v}" for k, v in config.items() if k not in defaults or defaults[k] != v]
    return " ".join(changed) or "defaults"


def _entry(link: Link, problems: list[str]) -> dict:
    m = link.manifest or {}
    model = m.get("model") or {}
    data = m.get("data") or {}
    config = _read_yaml(link.run_dir / "config.yaml") if link.manifest is not None else {}
    return {
        "run": link.name,
        "run_dir": str(link.run_dir),
        "created": m.get("created"),
        "method": m.get("method"),
        "method_config": config.get("method_config"),
        "forget_source": (data.get("forget") or {}).get("source"),
        "retain_source": (data.get("retain") or {}).get("source"),
        "model": {
            "spec": model.get("spec"),
            "sha256_before": model.get("sha256_before"),
            "sha256_after": model.get("sha256_after"),
        },
        "data": {
            which: {k: (data.get(which) or {}).get(k) for k in ("source", "sha256_tokens")}
            for which in ("forget", "retain")
        },
        "manifest_sha256": sha256_bytes(link.raw) if link.raw is not None else None,
        "parent": m.get("parent"),
        "verified": not problems,
        "problems": problems,
    }


def _link_problems(child: Link, parent: Link) -> list[str]:
    """The hash chain between a child and its parent."""
    record = parent.record or {}
    where = child.run_dir / MANIFEST
    if parent.manifest is None:
        return [f"{where}: parent {record.get('run_name') or parent.name}: {parent.error}"]
    problems = []
    if record.get("manifest_sha256") != sha256_bytes(parent.raw):
        problems.append(
            f"{parent.run_dir / MANIFEST}: sha256 does not match the one its child {child.name} recorded "
            f"(the parent's manifest changed after the child ran)"
        )
    after = parent.manifest["model"].get("sha256_after")
    if record.get("model_sha256") != after:
        problems.append(f"{where}: parent model_sha256 differs from {parent.name}'s model sha256_after")
    if child.manifest["model"].get("sha256_before") != after:
        problems.append(
            f"{where}: model sha256_before differs from {parent.name}'s sha256_after (not the parent's model)"
        )
    return problems


def ledger(run_dir: str | Path, pubkey: str | Path | None = None) -> dict:
    """The chain of unlearning requests behind ``run_dir`` (root first), each re-verified.

    Checks every saved model file and the run folder's own files against each manifest, each child's
    ``parent.manifest_sha256`` against its parent's manifest bytes and each child's model ``sha256_before``
    against its parent's ``sha256_after``. With ``pubkey`` (an Ed25519 public key file) it also checks every
    request's signature (:mod:`unlearn.runs.signing`): the only check that covers the newest manifest, the head.
    Returns ``{"run_dir", "requests", "verified", "problems", "head", "signatures_checked"}``; each request has
    its own ``problems``, ``verified`` and ``signature`` (``verified``, ``failed``, ``signed, not checked`` or
    ``unsigned``); ``head`` names the newest request, its manifest sha256 and whether it is signed. Raises
    :class:`UnlearnError` if ``run_dir`` is not a run folder or ``pubkey`` is not a public key.
    """
    from .signing import load_public_key, read_signature, verify

    public = load_public_key(pubkey) if pubkey is not None else None
    chain = walk(run_dir)
    found = [link for link in chain if link.manifest is not None]
    per_run: dict[int, list[str]] = {}
    signatures: dict[int, str] = {}
    for i, link in enumerate(found):
        per_run[i] = verify_run(link.run_dir, link.manifest)
        record, problem = read_signature(link.run_dir)
        if public is not None:
            failed = verify(link.run_dir, public)
            per_run[i] += failed
            signatures[i] = "failed" if failed else "verified"
        else:
            signatures[i] = "unsigned" if record is None and problem is None else "signed, not checked"
    for i, link in enumerate(chain[:-1]):  # a link's problems are reported on the child that recorded it
        per_run.setdefault(i, []).extend(_link_problems(link, chain[i + 1]))
    requests = [{**_entry(link, per_run.get(i, [])), "signature": signatures[i]} for i, link in enumerate(found)]
    requests.reverse()
    problems = [p for entry in requests for p in entry["problems"]]
    head = found[0]
    record, _ = read_signature(head.run_dir)
    return {
        "run_dir": str(run_dir),
        "requests": requests,
        "verified": not problems,
        "problems": problems,
        "signatures_checked": public is not None,
        "head": {
            "run": head.name,
            "manifest_sha256": sha256_bytes(head.raw),
            "signed": record is not None,
            "key_id": record["key_id"] if record else None,
        },
    }
