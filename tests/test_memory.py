"""Automatic batch size (unlearn.models.memory) on tiny random models; the available memory is monkeypatched."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, tiny_model

from unlearn.errors import UnlearnError
from unlearn.models import memory
from unlearn.models.memory import analytic_estimate, auto_batch_size, available_memory

SEQ = 64
HEADROOM = 0.2


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def fits(monkeypatch, free: int) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda device: free)


def free_for(model, batch: int, mode: str = "forward") -> int:
    """Available memory at which exactly ``batch`` samples fit after the headroom."""
    return int(analytic_estimate(model, SEQ, mode).bytes(batch) / (1 - HEADROOM)) + 1


@pytest.mark.parametrize("mode", ["forward", "train"])
def test_monotonic_in_available_memory_and_powers_of_two(model, monkeypatch, mode):
    one = free_for(model, 1, mode)
    chosen = []
    for factor in (1, 1.5, 2, 3, 5, 8, 13, 40, 100, 1000):
        fits(monkeypatch, int(one * factor))
        chosen.append(auto_batch_size(model, SEQ, device="cpu", mode=mode, headroom=HEADROOM, max_batch=64))
    assert chosen == sorted(chosen)
    assert chosen[0] == 1 and chosen[-1] == 64
    assert all(b >= 1 and b & (b - 1) == 0 for b in chosen)


def test_exact_fit_and_cap(model, monkeypatch):
    fits(monkeypatch, free_for(model, 8))
    assert auto_batch_size(model, SEQ, device="cpu", headroom=HEADROOM) == 8
    fits(monkeypatch, free_for(model, 8) - 2 * analytic_estimate(model, SEQ).per_sample)
    assert auto_batch_size(model, SEQ, device="cpu", headroom=HEADROOM) == 4
    fits(monkeypatch, 2**50)
    assert auto_batch_size(model, SEQ, device="cpu", max_batch=48) == 32  # a power of two below the cap
    assert auto_batch_size(model, SEQ, device="cpu", max_batch=1) == 1


def test_train_smaller_than_forward(model, monkeypatch):
    fwd, train = analytic_estimate(model, SEQ, "forward"), analytic_estimate(model, SEQ, "train")
    assert train.per_sample > fwd.per_sample and train.fixed > fwd.fixed
    fits(monkeypatch, free_for(model, 16, "forward"))
    b_fwd = auto_batch_size(model, SEQ, device="cpu", mode="forward", headroom=HEADROOM)
    b_train = auto_batch_size(model, SEQ, device="cpu", mode="train", headroom=HEADROOM)
    assert b_fwd == 16 and 1 <= b_train < b_fwd


def test_headroom_and_seq_len_shrink_the_batch(model, monkeypatch):
    fits(monkeypatch, free_for(model, 16))
    assert auto_batch_size(model, SEQ, device="cpu", headroom=0.6) < auto_batch_size(model, SEQ, device="cpu")
    assert auto_batch_size(model, 4 * SEQ, device="cpu") < auto_batch_size(model, SEQ, device="cpu")


def test_batch_one_not_fitting_raises_one_line(model, monkeypatch):
    fits(monkeypatch, free_for(model, 1, "train") - analytic_estimate(model, SEQ, "train").per_sample)
    with pytest.raises(UnlearnError) as err:
        auto_batch_size(model, SEQ, device="cpu", mode="train", headroom=HEADROOM)
    message = str(err.value)
    assert "\n" not in message and "batch size 1" in message and "train" in message
    fits(monkeypatch, 0)
    with pytest.raises(UnlearnError, match="batch size 1"):
        auto_batch_size(model, SEQ, device="cpu")


@pytest.mark.parametrize(
    "kwargs", [{"mode": "backward"}, {"headroom": 1.0}, {"headroom": -0.1}, {"max_batch": 0}, {"seq_len": 0}]
)
def test_bad_arguments(model, monkeypatch, kwargs):
    fits(monkeypatch, 2**40)
    args = {"seq_len": SEQ, "device": "cpu", **kwargs}
    with pytest.raises(UnlearnError):
        auto_batch_size(model, args.pop("seq_len"), **args)


@pytest.mark.parametrize("family", FAMILIES)
def test_estimate_reads_every_family(family):
    m = tiny_model(family)
    fwd, train = analytic_estimate(m, SEQ, "forward"), analytic_estimate(m, SEQ, "train")
    assert 0 < fwd.per_sample < train.per_sample
    assert train.fixed >= memory.ADAMW_BYTES * sum(p.numel() for p in m.parameters())
    # every sample holds at least its fp32 logits
    assert fwd.per_sample >= SEQ * m.config.vocab_size * 4


def test_estimate_scales_with_dtype_and_eager_attention():
    m = tiny_model("llama")
    fp32 = analytic_estimate(m, SEQ).per_sample
    assert analytic_estimate(m.to(torch.bfloat16), SEQ).per_sample < fp32
    eager = tiny_model("llama", attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    # eager attention keeps heads × seq² scores: the gap grows with the square of seq_len
    gap = [analytic_estimate(eager, s).per_sample - analytic_estimate(m.float(), s).per_sample for s in (32, 64)]
    assert gap[0] > 0 and gap[1] == 4 * gap[0]


def test_estimate_does_not_touch_the_model(model, monkeypatch):
    fits(monkeypatch, 2**34)
    before = [(p.requires_grad, p.grad) for p in model.parameters()]
    auto_batch_size(model, SEQ, device="cpu", mode="train")
    assert [(p.requires_grad, p.grad) for p in model.parameters()] == before


def test_available_memory_cpu_and_fallback(monkeypatch):
    free = available_memory("cpu")
    assert isinstance(free, int) and free > 0
    monkeypatch.setattr(memory, "_meminfo_available", lambda: None)
    assert available_memory("cpu") > 0  # sysconf (or psutil) instead of /proc/meminfo
    monkeypatch.setattr(memory, "_cpu_available", lambda: None)
    with pytest.raises(UnlearnError, match="batch size explicitly"):
        available_memory("cpu")


def test_cgroup_limit_lowers_available(monkeypatch):
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 8 * 2**30)
    monkeypatch.setattr(memory, "_cgroup_available", lambda: 2**30)
    assert available_memory("cpu") == 2**30
    monkeypatch.setattr(memory, "_cgroup_available", lambda: None)
    assert available_memory("cpu") == 8 * 2**30


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_probe_measures_and_restores():
    m = tiny_model("llama").cuda()
    flags = [p.requires_grad for p in m.parameters()]
    fwd = memory.measured_estimate(m, SEQ, "forward")
    train = memory.measured_estimate(m, SEQ, "train")
    assert fwd.how == train.how == "probe"
    assert 0 < fwd.per_sample < train.per_sample
    assert [p.requires_grad for p in m.parameters()] == flags and all(p.grad is None for p in m.parameters())
    b_fwd = auto_batch_size(m, SEQ, mode="forward", max_batch=1024)
    b_train = auto_batch_size(m, SEQ, mode="train", max_batch=1024)
    assert 1 <= b_train <= b_fwd


_ALLOCATOR_PROBE = """
import ctypes, sys
from unlearn.models.memory import release_freed, return_large_frees_to_os
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) * 1024
def block(size):
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)  # touch every page
    return p
if sys.argv[1] == "fixed":
    assert return_large_frees_to_os()
libc.free(block(16 << 20))  # one 16 MiB block freed: glibc's default then serves blocks up to 16 MiB from its heap
start = rss()
blocks = [block(8 << 20) for _ in range(24)]
pins = [block(256 << 10) for _ in range(2)]  # blocks above them keep the heap from shrinking back
for p in blocks:
    libc.free(p)
if sys.argv[1] == "trimmed":
    assert release_freed()
print(rss() - start)
"""


@pytest.mark.skipif(
    __import__("platform").libc_ver()[0] != "glibc" or not __import__("pathlib").Path("/proc/self/status").exists(),
    reason="glibc's malloc on Linux only",
)
def test_large_frees_go_back_to_the_system():
    """With the fixed mmap threshold freed 8 MiB blocks leave the process; with glibc's default they stay, until
    the heap is trimmed (what bf16 training does after every step)."""
    import subprocess
    import sys

    def kept(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _ALLOCATOR_PROBE, mode], capture_output=True, text=True, check=True)
        return int(out.stdout)

    assert kept("default") > 150 << 20  # most of the 192 MiB stays resident
    assert kept("fixed") < 20 << 20
    assert kept("trimmed") < 20 << 20
