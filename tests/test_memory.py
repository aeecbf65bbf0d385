"""trainer.memory: freed activations stay mapped, so repeated training steps stop page-faulting them back in."""

import platform
import subprocess
import sys

import pytest

from trainer.memory import keep_freed_memory

STEPS = """
import resource, sys, torch
from trainer.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
conv = torch.nn.Conv2d(8, 8, 3, padding=1)
x = torch.randn(4, 8, 257, 64)
def step():  # a small training step: its activations are allocated and freed every time
    y = conv(torch.relu(conv(x)))
    y.square().mean().backward()
for _ in range(4):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) * resource.getpagesize() / 5 / 2**20)
"""


def _mib_faulted_per_step(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    return float(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_kept_memory_is_not_faulted_in_again_each_step():
    default, kept = _mib_faulted_per_step("default"), _mib_faulted_per_step("keep")  # each in a fresh process
    assert default > 4  # glibc's defaults: each step maps its ~10 MiB of activations afresh
    assert kept < 0.2 * default  # (a few pages still come and go)


@pytest.mark.skipif(platform.libc_ver()[0] == "glibc", reason="the fallback for other C libraries")
def test_another_libc_is_left_alone():
    assert not keep_freed_memory()
