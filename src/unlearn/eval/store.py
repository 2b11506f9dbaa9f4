"""``eval/<suite>.json``: a suite's per-sample values and summaries, written atomically and reused on re-runs.

The file holds one entry per *part* (a data file of the suite, e.g. TOFU's forget set) with a fingerprint of
everything that determines its values — the model's weights, the data file's bytes, the suite settings. A part
whose fingerprint matches is reused, unless ``overwrite``; the file is rewritten after every part, so an
interrupted evaluation keeps the parts it finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from ..version import __version__
from ..errors import UnlearnError
from ..models.save import file_sha256  # noqa: F401 - the suites hash their data files with it


def fingerprint(*values) -> str:
    """sha256 of the JSON encoding of ``values`` (sorted keys): equal inputs, equal fingerprint."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:32]


def write_json_atomic(path: Path, data) -> None:
    """Write JSON to a temporary file next to ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, ensure_ascii=False)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultStore:
    """One suite's results file. ``model`` identifies the evaluated model (its weights' sha256 decides reuse)."""

    def __init__(self, path: str | Path, suite: str, model: dict, *, overwrite: bool = False):
        self.path = Path(path)
        self.data = {"suite": suite, "unlearn_version": __version__, "model": model, "parts": {}, "summary": {}}
        self.reused: list[str] = []
        if self.path.exists() and not overwrite:
            try:
                old = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise UnlearnError(f"cannot read earlier results {self.path}: {exc} (use --overwrite)") from exc
            if old.get("suite") == suite and old.get("model", {}).get("sha256") == model.get("sha256"):
                self.data["parts"] = old.get("parts", {})

    def get(self, part: str, fp: str) -> dict | None:
        entry = self.data["parts"].get(part)
        if entry is not None and entry.get("fingerprint") == fp:
            self.reused.append(part)
            return entry
        return None

    def put(self, part: str, fp: str, entry: dict) -> dict:
        self.data["parts"][part] = {"fingerprint": fp, **entry}
        write_json_atomic(self.path, self.data)
        return self.data["parts"][part]

    def finish(self, summary: dict, keep: list[str], extra: dict | None = None) -> dict:
        """Drop parts not in ``keep`` (left from other settings), store the summary (and ``extra`` top-level
        entries) and write the file."""
        self.data["parts"] = {k: v for k, v in self.data["parts"].items() if k in keep}
        self.data.update(extra or {})
        self.data["summary"] = summary
        write_json_atomic(self.path, self.data)
        return self.data
