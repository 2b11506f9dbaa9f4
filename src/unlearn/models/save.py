"""Fold ablation masks into the weights and save a plain Hugging Face checkpoint.

Zero ablation zeroes the pruned input columns of the output projection. Mean ablation also adds the constant
``W[:, pruned] @ mean[pruned]`` to the projection's bias; where the architecture has no bias there, the
config flag that adds one (``mlp_bias`` / ``attention_bias`` / ``enable_bias``) is switched on, the model is
rebuilt from that config and every other bias the flag creates is set to zero — so stock ``transformers``
loads the result and computes exactly what the hooked model computed. Expert neurons of a mixture-of-experts model
take zero ablation only: their columns of the fused ``down_proj`` are set to 0 (:mod:`.experts`).
With either ablation the rows that compute a pruned feed-forward or expert neuron (its gate and up projections)
are zeroed too, so no gradient can bring the neuron back.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..errors import DiskFull, UnlearnError, from_os_error
from . import components
from .adapters import EXPERT, Adapter, has_bias, weight_columns
from .experts import zero_neurons
from .hooks import Ablation


def needs_bias(ablation: Ablation) -> set[str]:
    """Kinds whose ablation adds a non-zero constant (mean ablation with a non-zero mean somewhere)."""
    return {kind for (kind, _), fill in ablation.fill.items() if bool((fill != 0).any())}


def check_foldable(model: nn.Module, adapter: Adapter, kinds) -> None:
    """Raise if mean ablation of ``kinds`` cannot be stored in this architecture's checkpoint format."""
    for kind in kinds:
        if kind == EXPERT:
            raise UnlearnError("mean ablation of expert neurons cannot be stored in a checkpoint: use ablation 'zero'")
        if has_bias(adapter.out_proj(model, 0, kind)):
            continue
        flag = adapter.bias_flag(kind)
        if flag in (None, "always") or not hasattr(model.config, flag):
            proj = "MLP" if kind == "ff" else "attention"
            raise UnlearnError(
                f"mean ablation needs a bias on the {proj} output projection, which {adapter.family} checkpoints "
                f"cannot store: use ablation 'zero'"
            )


def _with_bias_flags(model: nn.Module, adapter: Adapter, kinds) -> nn.Module:
    """Rebuild ``model`` with the config flags that give the output projections of ``kinds`` a bias."""
    from transformers import AutoModelForCausalLM

    config = model.config.__class__.from_dict(model.config.to_dict())
    for kind in kinds:
        setattr(config, adapter.bias_flag(kind), True)
    new = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    new.to(next(model.parameters()).device)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.endswith(".bias") for k in missing):
        raise UnlearnError(f"cannot add biases to {adapter.family}: unexpected layout ({(missing + unexpected)[:3]})")
    with torch.no_grad():
        for key in missing:
            new.get_parameter(key).zero_()
    new.eval().requires_grad_(False)
    return new


@torch.no_grad()
def fold(model: nn.Module, adapter: Adapter, ablation: Ablation) -> nn.Module:
    """Return a model with ``ablation`` folded into its weights (``model`` itself when no bias must be added).

    The input ``model`` may be modified in place; call this on the run's working copy only.
    """
    biased = needs_bias(ablation)
    to_add = {k for k in biased if k == EXPERT or not has_bias(adapter.out_proj(model, 0, k))}
    if to_add:
        check_foldable(model, adapter, to_add)
        rebuilt = _with_bias_flags(model, adapter, to_add)
        components.carry(model, rebuilt)  # an inference-time component (a feature clamp) stays with the model
        model = rebuilt
    for (kind, layer), mask in ablation.pruned.items():
        if not mask.any():
            continue
        module = adapter.out_proj(model, layer, kind)
        if kind == EXPERT:
            zero_neurons(module, mask.nonzero().squeeze(1))
            continue
        w = weight_columns(module, adapter.conv1d)  # [out, in] view
        idx = mask.nonzero().squeeze(1).to(w.device)
        fill = ablation.fill[(kind, layer)].to(w.device)[idx]
        if kind in biased:
            module.bias.add_((w[:, idx].double() @ fill.double()).to(module.bias.dtype))
        w[:, idx] = 0
        if kind == "ff":
            silence_inputs(adapter.ff_inputs(model, layer), idx, w.shape[1], adapter.conv1d)
    return model


def silence_inputs(projections: list[nn.Module], idx: torch.Tensor, width: int, conv1d: bool) -> None:
    """Zero the rows (and bias entries) of ``projections`` that make neurons ``idx``, so a pruned neuron computes
    act(0)·0 = 0 and, with its output column zero too, sits where every gradient through it is zero: fine-tuning
    cannot revive it by re-reading its still-computed feature. The model's outputs do not change. (On the default
    run the relearning attack's recovery moved only from 55.1 % to 54.6 %: it relearns through the other neurons.)"""
    for proj in projections:
        rows = weight_columns(proj, conv1d)  # [k·width, in]; a fused gate_up has k = 2
        for k in range(rows.shape[0] // width):
            rows[idx + k * width] = 0
            if has_bias(proj):
                proj.bias[idx + k * width] = 0


def save_checkpoint(model: nn.Module, tokenizer, path: Path) -> dict[str, str]:
    """``save_pretrained`` model and tokenizer, and the files of any inference-time component attached to the
    model (:mod:`.components`, e.g. ``clamp.json``); return sha256 of every file written. A disk too full for the
    weights is refused before the first byte; one that fills up while writing is reported with the path and the
    bytes needed (the caller removes the half-written folder)."""
    from .load import quiet_transformers

    quiet_transformers()  # no "Writing model shards" bar between our own progress lines
    needed = model_bytes(model)
    try:
        path.mkdir(parents=True, exist_ok=True)
        check_space(path, needed, f"writing the model to {path}")
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        components.save_attached(model, path)
    except OSError as exc:  # a full disk above all
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(path, needed) from exc
        raise from_os_error(exc, f"writing the model to {path}") from exc
    except Exception as exc:  # safetensors reports a full disk as its own error type
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            raise _no_space(path, needed) from exc
        raise
    return {p.name: file_sha256(p) for p in sorted(path.iterdir()) if p.is_file()}


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights as saved (each shared tensor once)."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel()) if t.device.type != "meta" else id(t)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds ``path`` (or would: its nearest existing ancestor)."""
    base = Path(path).absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    return shutil.disk_usage(base).free


def check_space(path: Path, needed: int, doing: str) -> None:
    """:class:`UnlearnError` when the filesystem of ``path`` has less than ``needed`` bytes (+1 %, +16 MB) free."""
    free = free_bytes(path)
    if free < needed * 1.01 + 16e6:
        raise DiskFull(
            f"not enough disk space for {doing}: it needs about {_mb(needed)}, {_mb(free)} free; free some space "
            "or write elsewhere"
        )


def _no_space(path: Path, needed: int) -> DiskFull:
    return DiskFull(
        f"no space left on device while writing the model to {path}: it needs about {_mb(needed)}, "
        f"{_mb(free_bytes(path))} free; free some space or write elsewhere"
    )


def check_writable(path: Path, flag: str) -> None:
    """Fail before any work when nothing can be created at ``path``: its nearest existing ancestor must be a
    folder that takes a new entry (tried, then removed; permission bits say little to root or on /proc)."""
    base = Path(path).absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise UnlearnError(f"{flag} {path}: {base} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".unlearn-write-check-", dir=base))
    except OSError as exc:
        raise UnlearnError(f"{flag} {path}: cannot write in {base} ({exc.strerror}): choose another folder") from exc


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
