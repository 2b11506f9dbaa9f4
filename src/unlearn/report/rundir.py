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

    def __enter__(self) -> RunFolder:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UnlearnError(f"cannot create output folder {self.out_dir}: {exc.strerror}") from exc
        if self.explicit and (self.out_dir / self.name).exists():
            raise UnlearnError(f"run folder {self.out_dir / self.name} already exists: choose another --name")
        self.tmp = Path(tempfile.mkdtemp(prefix=".incomplete-", dir=self.out_dir))
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
