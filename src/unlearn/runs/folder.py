"""The run folder: built in a hidden work folder and renamed into place only when complete.

``out_dir/.NAME.incomplete/`` holds the resolved ``config.yaml`` from the start and the method's latest
``checkpoint/`` while it works. A finished run removes the checkpoint and renames the work folder to
``out_dir/NAME`` (one atomic rename), so ``out_dir/NAME`` is either absent or complete — also after a crash or
``kill -9``. Bad input discovered on the way deletes the work folder; an interruption or crash leaves it, and
``unlearn run --resume out_dir/NAME`` continues from the last checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
import yaml

from ..errors import UnlearnError

MANIFEST = "manifest.json"  # written last: a folder with it (and its config) is a complete run
CONFIG = "config.yaml"
SIGNATURE = "signature.json"  # unlearn sign: every file of the finished folder, signed
SUFFIX = ".incomplete"
CHECKPOINT = "checkpoint"
CONFIG_HASH = "config.sha256"  # beside the checkpoint: the config it was made under


def work_dir(out_dir: Path, name: str) -> Path:
    return out_dir / f".{name}{SUFFIX}"


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` is a complete run folder (its manifest and config are there)."""
    return (path / MANIFEST).is_file() and (path / CONFIG).is_file()


def find_interrupted(path: str | Path) -> Path:
    """The work folder of an interrupted run, given ``out_dir/NAME`` or the work folder itself."""
    path = Path(path)
    if path.name.startswith(".") and path.name.endswith(SUFFIX):
        work = path
    else:
        work = work_dir(path.parent, path.name)
        if is_run_folder(path):
            raise UnlearnError(f"run {path} is complete: there is nothing to resume")
    if not (work / "config.yaml").is_file():
        raise UnlearnError(f"no interrupted run to resume at {path} (looked for {work}/config.yaml)")
    return work


class RunFolder:
    """``start(config)`` creates the work folder; ``save_checkpoint``/``load_checkpoint`` keep the method's
    state there; as a context manager it finishes the folder on success (checkpoint removed, renamed into
    place)."""

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
        if self.explicit and work_dir(self.out_dir, self.name).exists():
            raise UnlearnError(
                f"an interrupted run {self.name} is waiting in {work_dir(self.out_dir, self.name)}: continue it "
                f"with `unlearn run --resume {self.out_dir / self.name}` or delete that folder"
            )

    def free_name(self) -> str:
        """The given name, or ``<timestamp>-<method>[-N]``: the first such name with neither a run folder nor a
        work folder in ``out_dir``."""
        if self.explicit:
            return self.name
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{self.method}"
        name, n = stamp, 2
        while (self.out_dir / name).exists() or work_dir(self.out_dir, name).exists():
            name, n = f"{stamp}-{n}", n + 1
        return name

    def start(self, config: dict) -> None:
        """Create the work folder (the name is fixed now) and write the resolved config into it."""
        self.check()
        self.name = self.free_name()
        self.tmp = work_dir(self.out_dir, self.name)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir()
        except OSError as exc:
            raise UnlearnError(f"cannot create output folder {self.out_dir}: {exc.strerror}") from exc
        self.write_config(config)

    def write_config(self, config: dict) -> None:
        """``config.yaml``: the resolved settings, with the run's name (so --resume finishes the same folder)."""
        self.write_yaml("config.yaml", {**config, "name": self.name})

    def resume(self, work: Path) -> None:
        """Continue in the work folder of an interrupted run, if its config is still the one its checkpoint was
        made under."""
        self.tmp, self.out_dir = work, work.parent
        self.name = work.name[1 : -len(SUFFIX)]
        self.explicit = True
        if (self.out_dir / self.name).exists():
            raise UnlearnError(f"run folder {self.out_dir / self.name} already exists: cannot finish {work} there")
        recorded = work / CHECKPOINT / CONFIG_HASH
        if recorded.is_file() and recorded.read_text(encoding="utf-8").strip() != self._config_sha256():
            raise UnlearnError(
                f"{work / CONFIG} changed after the run was interrupted: its checkpoint was made under the config as "
                f"it was, and resuming would mix the two. Restore it, or delete {work} and start over (nothing "
                "was changed)"
            )

    def _config_sha256(self) -> str:
        import hashlib

        return hashlib.sha256(self.path(CONFIG).read_bytes()).hexdigest()

    @property
    def resume_hint(self) -> str:
        return f"unlearn run --resume {self.out_dir / self.name}"

    def discard(self) -> None:
        """Delete the work folder (bad input: nothing is left behind)."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # checkpoints: one file, replaced atomically, so a crash while writing keeps the previous one
    def save_checkpoint(self, state: dict) -> None:
        if self.tmp is None:
            return
        folder = self.tmp / CHECKPOINT
        folder.mkdir(exist_ok=True)
        (folder / CONFIG_HASH).write_text(self._config_sha256() + "\n", encoding="utf-8")
        part = folder / "state.pt.part"
        torch.save(state, part)
        os.replace(part, folder / "state.pt")

    def load_checkpoint(self) -> dict | None:
        path = None if self.tmp is None else self.tmp / CHECKPOINT / "state.pt"
        if path is None or not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - a damaged file: say which
            raise UnlearnError(
                f"checkpoint {path} cannot be read ({type(exc).__name__}); the work folder is kept as it was: delete "
                f"{path.parent} to restart the method from its first step, or {self.tmp} to start over"
            ) from exc

    def __enter__(self) -> RunFolder:
        if self.tmp is None:
            raise RuntimeError("RunFolder.start() first")
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            return False  # the run decides: discard (bad input) or keep for --resume (interruption)
        final = self.out_dir / self.name
        try:
            shutil.rmtree(self.tmp / CHECKPOINT, ignore_errors=True)
            _normal_permissions(self.tmp)
            if final.exists():
                raise OSError(17, "File exists")
            os.rename(self.tmp, final)
        except OSError as exc:
            self.discard()
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
