"""A run in several processes started by ``accelerate launch`` (data parallel; FSDP / DeepSpeed on GPUs)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
import torch
from .. import distributed
from ..config import RunConfig
from ..errors import UnlearnError
from ..runs.folder import MANIFEST, RunFolder
from ..runs.signing import load_private_key, sign as sign_folder
from ..pipeline.run import RunResult
from ..pipeline.validate import coerce_config, validated_config


def launch(
    config: RunConfig | dict | str | Path | None = None,
    *,
    num_processes: int | None = 2,
    accelerate_config: str | Path | None = None,
    console=None,
    sign: str | Path | None = None,
    verify: bool = True,
) -> RunResult:
    """:func:`run` data parallel in ``num_processes`` processes started by ``accelerate launch``.

    The config is checked here first (bad input fails before any process starts), then handed to the processes
    as a YAML file. Selective-pruning statistics and evaluations are split by batch across the processes and
    their sums added, so the result equals a single-process run; trained methods train with DDP, or FSDP /
    DeepSpeed as ``accelerate_config`` (an ``accelerate config`` file; see ``configs/accelerate/``) says. On
    CPUs the processes talk over gloo. ``sign``: an Ed25519 private key file that signs the finished folder;
    ``verify``: as for :func:`run`. Returns the run written by process 0.
    """
    import sys

    import yaml

    cfg, _parent, method, _mc = validated_config(config, verify=verify)
    key = load_private_key(sign) if sign is not None else None
    if num_processes is not None and num_processes < 1:
        raise UnlearnError(f"--num-processes must be at least 1, got {num_processes}")
    if accelerate_config is not None:
        _check_accelerate_config(Path(accelerate_config))
    if distributed.launched():
        raise UnlearnError("already inside a multi-process launch: call run(), not launch()")
    name = RunFolder(cfg.out_dir, cfg.name, method.name).free_name()  # fixed here: the processes must agree
    cfg = cfg.model_copy(update={"name": name})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1"]
    if accelerate_config is not None:
        cmd += ["--config_file", str(accelerate_config)]
    else:  # torchrun-style local processes; each joins over gloo on CPUs or NCCL on GPUs (distributed.setup)
        cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"] + (
            ["--multi_gpu"] if (num_processes or 1) > 1 else []
        )
    if num_processes is not None:
        cmd += ["--num_processes", str(num_processes)]
    with tempfile.TemporaryDirectory(prefix="unlearn-launch-") as tmp:
        config_file = Path(tmp) / "config.yaml"
        config_file.write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False), encoding="utf-8")
        cmd += ["-m", "unlearn", "run", "--config", str(config_file)] + ([] if console else ["--quiet"])
        cmd += [] if verify else ["--no-verify"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if console is not None and console.is_terminal:
            env["UNLEARN_FORCE_TERMINAL"] = "1"
        code, errors = _run_launcher(cmd, env)
    run_dir = Path(cfg.out_dir) / name
    if errors:  # the processes' own one-line error (each process reports the same one)
        raise UnlearnError(errors[0])
    if code != 0 or not (run_dir / MANIFEST).is_file():
        raise UnlearnError(f"the launched run failed (exit code {code}): its processes' messages are above")
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    manifest = json.loads((run_dir / MANIFEST).read_text(encoding="utf-8"))
    if key is not None:
        sign_folder(run_dir, key)
    return RunResult(run_dir, metrics, manifest, coerce_config(run_dir / "config.yaml"))


def _check_accelerate_config(path: Path) -> None:
    """An accelerate config file that exists, is a YAML mapping, and asks for nothing this machine lacks."""
    import importlib.util

    import yaml

    if not path.is_file():
        raise UnlearnError(f"accelerate config file not found: {path}")
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UnlearnError(f"accelerate config {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(settings, dict):
        raise UnlearnError(f"accelerate config {path} must hold a mapping of settings")
    kind = str(settings.get("distributed_type", "NO")).upper()
    if kind in ("FSDP", "DEEPSPEED") and not torch.cuda.is_available():
        raise UnlearnError(f"accelerate config {path} asks for {kind}, which needs GPUs: use DDP (MULTI_GPU) on CPUs")
    if kind == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise UnlearnError(f"accelerate config {path} asks for DeepSpeed: pip install deepspeed")


def _run_launcher(cmd: list[str], env: dict) -> tuple[int, list[str]]:
    """Run ``accelerate launch``, passing its stderr (process 0's progress) through until a process reports an
    ``error: ...`` line; the launcher's own report of the failed processes that follows is dropped. Returns the
    exit code and the errors reported."""
    import re
    import subprocess
    import sys

    errors: list[str] = []
    pending = b""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # we print the summary
    try:
        for chunk in iter(lambda: proc.stderr.read1(65536), b""):
            if errors:
                continue  # drain: the launcher's traceback of the failed processes
            pending += chunk
            found = re.search(rb"(?:^|\n)error: ([^\n]*)\n", pending)
            if found:
                sys.stderr.buffer.write(pending[: found.start()])
                errors.append(found.group(1).decode("utf-8", "replace"))
            else:  # forward all but a possibly incomplete last line (it could be the start of an error)
                cut = pending.rfind(b"\n") + 1
                sys.stderr.buffer.write(pending[:cut])
                pending = pending[cut:]
            sys.stderr.flush()
        if not errors:
            sys.stderr.buffer.write(pending)
    finally:
        code = proc.wait()
    return code, errors
