"""Pick a batch size that fits in memory: ``auto_batch_size(model, seq_len, device=..., mode=...)``.

The peak memory of one batch is modelled as ``fixed + batch × per_sample`` on top of what is already allocated
(the loaded model). The largest power of two batch size whose estimate fits in ``(1 − headroom)`` of the
available memory is chosen, capped at ``max_batch``.

* **CUDA** — measured. One warm-up pass at batch 1, then one at batch 1 and one at batch 2 of ``seq_len``
  tokens on the actual model (see below), each after ``torch.cuda.reset_peak_memory_stats``; the peak
  (``torch.cuda.max_memory_allocated``) above the memory allocated before the pass gives ``per_sample`` (the
  increase from batch 1 to 2) and ``fixed`` (the rest of batch 1's peak, e.g. parameter gradients). The
  available memory is ``torch.cuda.mem_get_info``'s free memory plus what torch's caching allocator holds unused.
* **CPU** — analytic, from the model config: peak RSS of a process is too coarse, too noisy and too dependent
  on the allocator to measure a per-sample slope. Per token (elements; ``h`` hidden size, ``q``/``kv`` query
  and key-value widths, ``ff`` MLP width, ``V`` vocabulary, ``L`` layers, ``E`` bytes per element of the
  model's dtype):

  - one decoder layer creates ``A = 6h + 3q + 4kv + 4ff`` elements (two norms, residual adds and outputs, q/k/v
    and their rotary copies, attention output, gate/up/activation/product of the MLP), plus ``2 × heads × seq``
    attention scores and probabilities with eager attention (SDPA's fused kernels keep no score matrix);
  - ``forward`` (inference, no autograd graph): a layer's tensors are freed when the next one runs, so one
    layer's ``A + 2h`` elements are live at a time, plus the logits in the model dtype and two fp32 copies
    (the ``.float()`` upcast and a log-softmax temporary, as evaluation and scoring do): ``V × (E + 8)`` bytes;
  - ``train`` (forward + backward): autograd keeps every layer's activations until the backward pass, so
    ``L × A`` elements plus one layer's gradients ``A``, and the logits, their fp32 log-softmax and its gradient
    in fp32 and in the model dtype: ``V × (2E + 12)`` bytes. ``fixed`` holds the gradients and the two AdamW
    moments of the trainable parameters in fp32 (12 bytes each; all parameters when none requires a gradient,
    as for a freshly loaded model, which ``unlearn`` trains in fp32) and the temporaries of the embedding and
    LM-head gradients (``3 × V × h`` fp32 values; measured: ~330 MB for SmolLM2-135M at batch 1).

  Every intermediate is counted as if live at once, so the per-sample terms err high: on SmolLM2-135M at
  ``seq_len`` 256 the forward estimate for a batch of 8 (bf16) is 1012 MB against a measured peak RSS growth
  of 766 MB during ``evaluate_split``, and the train estimate 607 MB per sample against a measured 492 MB
  (fp32, growth from batch 1 to 4). The available memory is ``MemAvailable`` from ``/proc/meminfo``, lowered
  to a cgroup memory limit where one applies, with ``os.sysconf`` and ``psutil`` as fallbacks.

The probe passes (CUDA) are forward passes under ``torch.inference_mode`` with an fp32 log-sum-exp over the
logits for ``forward``, and forward + fp32 log-softmax NLL + backward for ``train`` (every parameter made to
require a gradient for the pass if none does; the flags and gradients are restored afterwards).

Not included anywhere: a second model held alongside (a reference copy for KL-regularised training), optimizer
state other than AdamW's two moments, and memory that other processes take after the estimate.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import UnlearnError

MODES = ("forward", "train")
ADAMW_BYTES = 12  # per trainable parameter, fp32: gradient + two moments


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a batch needs beyond what is allocated now: ``fixed + batch × per_sample``; ``how``: probe or config."""

    fixed: int
    per_sample: int
    how: str

    def bytes(self, batch: int) -> int:
        return self.fixed + batch * self.per_sample


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# -- available memory ---------------------------------------------------------------------------------------------


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """Memory left under this process's cgroup limit (v2, then v1); ``None`` where no limit applies."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 2**60:  # "no limit" (v1 writes a huge number)
            return None
        return max(int(limit) - usage, 0)
    return None


def _cpu_available() -> int | None:
    free = _meminfo_available()
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            free = None
    if free is None:
        try:
            import psutil

            free = int(psutil.virtual_memory().available)
        except Exception:  # noqa: BLE001 - optional dependency, any failure means "unknown"
            free = None
    limit = _cgroup_available()
    if free is None:
        return limit
    return free if limit is None else min(free, limit)


def available_memory(device: str | torch.device) -> int:
    """Bytes that new allocations on ``device`` can still take (CPU: MemAvailable / cgroup; CUDA: free + cached)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    if device.type != "cpu":
        raise UnlearnError(f"automatic batch size supports cpu and cuda devices, not {device.type!r}: set a number")
    free = _cpu_available()
    if free is None:
        raise UnlearnError("cannot tell how much memory is available on this machine: set the batch size explicitly")
    return free


# -- estimates ----------------------------------------------------------------------------------------------------


def _config_dims(model: nn.Module) -> dict[str, int | str]:
    """Hidden, query, key-value and MLP widths, heads, layers, vocabulary of a ``transformers`` config."""
    config = getattr(model, "config", None)
    if config is None:
        raise UnlearnError("automatic batch size needs a transformers model with a config: set the batch size")
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()

    def first(*names, default=None):
        for name in names:
            value = getattr(config, name, None)
            if value is not None:
                return value
        return default

    hidden = first("hidden_size", "n_embd", "d_model")
    layers = first("num_hidden_layers", "n_layer", "num_layers")
    vocab = first("vocab_size")
    if not hidden or not layers or not vocab:
        raise UnlearnError(
            f"cannot read layer sizes from the {type(config).__name__} config: set the batch size explicitly"
        )
    heads = first("num_attention_heads", "n_head", default=1)
    head_dim = first("head_dim", default=hidden // max(heads, 1))
    kv_heads = first("num_key_value_heads", "multi_query_group_num", default=heads)
    ff = first("intermediate_size", "ffn_dim", "n_inner", default=None) or 4 * hidden
    return {
        "hidden": int(hidden),
        "q": int(heads * head_dim),
        "kv": int(kv_heads * head_dim),
        "ff": int(ff),
        "heads": int(heads),
        "layers": int(layers),
        "vocab": int(vocab),
        "attn": str(getattr(config, "_attn_implementation", None) or "eager"),
    }


def _trainable_count(model: nn.Module) -> int:
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad] or params
    return sum(p.numel() for p in trainable)


def analytic_estimate(model: nn.Module, seq_len: int, mode: str = "forward") -> MemoryEstimate:
    """The config-based estimate described in the module docstring (used on CPU)."""
    if mode not in MODES:
        raise UnlearnError(f"unknown memory mode {mode!r}: use forward or train")
    d = _config_dims(model)
    e = next(model.parameters()).element_size()
    h = d["hidden"]
    layer = 6 * h + 3 * d["q"] + 4 * d["kv"] + 4 * d["ff"]  # elements per token
    layer_bytes = layer * e
    if d["attn"] == "eager":  # scores and probabilities, heads × seq per token
        layer_bytes += 2 * d["heads"] * seq_len * e
    if mode == "forward":
        per_token = layer_bytes + 2 * h * e + d["vocab"] * (e + 8)
        fixed = 0
    else:
        per_token = (d["layers"] + 1) * layer_bytes + 2 * h * e + d["vocab"] * (2 * e + 12)
        fixed = ADAMW_BYTES * _trainable_count(model) + 3 * d["vocab"] * h * 4
    return MemoryEstimate(fixed=int(fixed), per_sample=int(per_token * seq_len), how="config")


def _oom_errors() -> tuple[type[BaseException], ...]:
    errors = [getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)]
    return tuple({e for e in errors if e is not None}) or (RuntimeError,)


class _TooBig(Exception):
    """The probe itself ran out of memory at ``batch``."""

    def __init__(self, batch: int):
        super().__init__(batch)
        self.batch = batch


def _probe_pass(model: nn.Module, ids: torch.Tensor, mode: str) -> None:
    if mode == "forward":
        with torch.inference_mode():
            logits = model(input_ids=ids, use_cache=False).logits
            torch.logsumexp(logits.float(), dim=-1)
        return
    logits = model(input_ids=ids, use_cache=False).logits
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    loss = -lp.gather(-1, ids[:, 1:].unsqueeze(-1)).mean()
    loss.backward()


def measured_estimate(model: nn.Module, seq_len: int, mode: str = "forward", device=None) -> MemoryEstimate:
    """The CUDA probe described in the module docstring: peaks at batch 1 and 2 with ``max_memory_allocated``."""
    if mode not in MODES:
        raise UnlearnError(f"unknown memory mode {mode!r}: use forward or train")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    vocab = _config_dims(model)["vocab"]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    trainable = sum(p.numel() for p, f in zip(params, flags) if f) or sum(p.numel() for p in params)
    was_training = model.training
    if mode == "train" and not any(flags):
        model.requires_grad_(True)  # a frozen model would build no graph: train everything, as training does
    oom = _oom_errors()
    peaks = []
    try:
        model.eval()  # no dropout: the probe measures memory, not training dynamics
        for batch in (1, 1, 2):  # the first pass warms up kernels and library workspaces
            ids = torch.zeros(batch, seq_len, dtype=torch.long, device=device).random_(0, vocab)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            try:
                _probe_pass(model, ids, mode)
                torch.cuda.synchronize(device)
            except oom as exc:
                raise _TooBig(batch) from exc
            peaks.append(torch.cuda.max_memory_allocated(device) - base)
            for p in params:
                p.grad = None
            del ids
    finally:
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad
        model.train(was_training)
        torch.cuda.empty_cache()
    one, two = peaks[1], peaks[2]
    per_sample = two - one if two > one else one  # noise or a flat peak: assume batch 1 is all per-sample
    fixed = max(one - per_sample, 0)
    if mode == "train":
        fixed += (ADAMW_BYTES - 4) * trainable  # the two AdamW moments the probe never allocates
    return MemoryEstimate(fixed=int(fixed), per_sample=int(per_sample), how="probe")


# -- the choice ---------------------------------------------------------------------------------------------------


def auto_batch_size(
    model: nn.Module,
    seq_len: int,
    *,
    device: str | torch.device | None = None,
    mode: str = "forward",
    max_batch: int = 64,
    headroom: float = 0.2,
) -> int:
    """The largest power-of-two batch size (≤ ``max_batch``) whose estimated peak fits in memory.

    ``mode``: ``forward`` (statistics, evaluation, scoring) or ``train`` (forward + backward + AdamW state).
    ``headroom``: fraction of the available memory left unused as a safety margin. ``device`` defaults to the
    model's. The estimate (measured on CUDA, from the config on CPU) is described in the module docstring.
    Raises :class:`UnlearnError` if even batch size 1 does not fit.
    """
    if mode not in MODES:
        raise UnlearnError(f"unknown memory mode {mode!r}: use forward or train")
    if seq_len < 1:
        raise UnlearnError(f"seq_len must be positive, got {seq_len}")
    if max_batch < 1:
        raise UnlearnError(f"max_batch must be at least 1, got {max_batch}")
    if not 0 <= headroom < 1:
        raise UnlearnError(f"headroom must be in [0, 1), got {headroom}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if device.type == "cuda":
        try:
            estimate = measured_estimate(model, seq_len, mode, device)
        except _TooBig as exc:
            if exc.batch == 1:
                raise UnlearnError(
                    f"batch size 1 of {seq_len} tokens does not fit in {device} memory ({mode}): "
                    "lower seq_len or use a smaller model or dtype"
                ) from None
            return 1  # batch 1 ran, 2 did not
    else:
        estimate = analytic_estimate(model, seq_len, mode)
    free = available_memory(device)
    budget = int(free * (1 - headroom))
    if estimate.bytes(1) > budget:
        raise UnlearnError(
            f"batch size 1 of {seq_len} tokens needs ~{_gib(estimate.bytes(1))} for {mode} on {device.type}, "
            f"but only {_gib(budget)} of {_gib(free)} available may be used (headroom {headroom:.0%}): "
            "lower seq_len or free memory"
        )
    batch = 1
    while batch * 2 <= max_batch and estimate.bytes(batch * 2) <= budget:
        batch *= 2
    return batch


# -- the process's allocator ----------------------------------------------------------------------------------------


def return_large_frees_to_os(threshold: int = 1 << 20) -> bool:
    """Make glibc serve every allocation of ``threshold`` bytes or more with its own ``mmap``, so freeing it
    gives the memory back to the system at once.

    glibc's default raises this threshold each time a large block is freed (up to 32 MiB), after which tensors
    of that size come from the heap and their freed pages stay in the process: a training step's activations
    and logits then pile up as resident memory the next step does not reuse (measured on healing SmolLM2-135M
    on the CPU: peak RSS 3.25 GiB with the default against 2.84 GiB with a fixed 1 MiB threshold, same speed).
    Process-wide, so the CLI calls it for its own process; a no-op (False) where the C library is not glibc.
    """
    return _glibc_call("mallopt", -3, int(threshold))  # -3: M_MMAP_THRESHOLD (malloc.h)


def _glibc_call(name: str, *args) -> bool:
    """glibc's ``name(*args)`` as a truth value; False where the C library is not glibc (or lacks it)."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        return bool(getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)(*args))
    except (OSError, AttributeError):
        return False


AFTER_TRAINING_THRESHOLD = 32 << 20  # glibc's own ceiling for its moving threshold (64-bit)


TRAINING_THRESHOLD = 1 << 20
BF16_TRAINING_THRESHOLD = 4 << 20


@contextlib.contextmanager
def large_frees_returned(threshold: int = TRAINING_THRESHOLD):
    """Training: every block of ``threshold`` bytes or more is its own ``mmap`` (:func:`return_large_frees_to_os`),
    so each step's activations leave the process when freed and the peak stays low. Afterwards the threshold is
    32 MiB — where glibc's moving threshold ends up — because a fresh ``mmap`` per tensor slows inference: measured
    on SmolLM2-135M, 2-core AVX2 CPU, evaluation at 264 tok/s with a 1 MiB threshold against 327 tok/s without it.

    Training under bf16 autocast uses :data:`BF16_TRAINING_THRESHOLD` with :func:`release_freed` after every
    step: there every matrix product casts its float32 weight to a fresh bf16 copy (1.8 MB for each of
    SmolLM2-135M's MLP projections), and at 1 MiB each copy was a fresh ``mmap`` and its page faults. Measured on
    the default run, 2-core AVX-512-BF16 CPU: healing 68.6 s at 1 MiB (peak 2.99 GiB), 48.8 s at 4 MiB (peak
    3.13 GiB), 53.1 s at 4 MiB with the heap trimmed after every step (peak 2.93 GiB). In float32 the same
    setting peaked at 3.41 GiB, so float32 training keeps 1 MiB."""
    changed = return_large_frees_to_os(threshold)
    try:
        yield changed
    finally:
        if changed:
            return_large_frees_to_os(AFTER_TRAINING_THRESHOLD)


def release_freed() -> bool:
    """Give the heap's freed memory back to the system (glibc ``malloc_trim``); False where that is not glibc."""
    return _glibc_call("malloc_trim", 0)
