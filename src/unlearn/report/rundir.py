"""The run folder: written under a temporary name and renamed into place only when complete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from ..errors import UnlearnError


class RunFolder:
    """Context manager: yields a temporary folder; renames it to ``out_dir/name`` on success, deletes it on error."""

    def __init__(self, out_dir: str | Path, name: str | None, method: str):
        self.out_dir = Path(out_dir)
        self.name = name
        self.explicit = name is not None
        self.method = method
        self.tmp: Path | None = None
        self.final: Path | None = None

    def check(self) -> None:
        """Fail early (before any expensive work) if the run folder cannot be created."""
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise UnlearnError(f"output folder {self.out_dir} is a file: choose another --out")
        if self.explicit and (self.out_dir / self.name).exists():
            raise UnlearnError(f"run folder {self.out_dir / self.name} already exists: choose another --name")

    def __enter__(self) -> RunFolder:
        self.check()
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=".incomplete-", dir=self.out_dir))
        except OSError as exc:
            raise UnlearnError(f"cannot create output folder {self.out_dir}: {exc.strerror}") from exc
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        name = self.name or time.strftime("%Y%m%d-%H%M%S") + f"-{self.method}"
        final = self.out_dir / name
        n = 2
        while not self.explicit and final.exists():
            final = self.out_dir / f"{name}-{n}"
            n += 1
        try:
            _normal_permissions(self.tmp)
            os.rename(self.tmp, final)
        except OSError as exc:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise UnlearnError(f"cannot create run folder {final}: {exc.strerror}") from exc
        self.final = final
        return False

    def path(self, *parts: str) -> Path:
        return self.tmp.joinpath(*parts)

    def write_json(self, rel: str, data) -> None:
        self.path(rel).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")

    def write_yaml(self, rel: str, data) -> None:
        self.path(rel).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def _normal_permissions(root: Path) -> None:
    """mkdtemp and some writers create owner-only files: give the finished folder the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~umask)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~umask)
