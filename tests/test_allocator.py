"""keep_freed_memory: freed blocks stay in the process, so reallocating them does not fault.

Counted in minor page faults (getrusage), not time: each fresh page from the kernel is one.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)

PROGRAM = r"""
import resource, sys
import torch
from miraslab.train.allocator import keep_freed_memory

print(keep_freed_memory())
faults = 0
for step in range(7):  # a step's activations: forty 4 MB blocks and a 64 MB one, then all freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(1_000_000) for _ in range(40)] + [torch.ones(16_000_000)]
    del blocks
    if step >= 3:  # the heap grows over the first steps in any case
        faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(faults)
"""


def run(keep: bool) -> tuple[str, int]:
    env = {**os.environ, "MIRASLAB_KEEP_FREED_MEMORY": "1" if keep else "0"}
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


def test_reallocating_a_steps_memory_does_not_fault_again():
    applied, kept = run(keep=True)
    assert applied == "True"
    off, released = run(keep=False)
    assert off == "False"
    big_block_pages = 64_000_000 // 4096
    # glibc's defaults map the 64 MB block afresh every step (measured here: 15,626 faults
    # per step, and more while its adaptive threshold settles); kept, nothing faults
    assert released >= 4 * big_block_pages, released
    assert kept < big_block_pages // 10, kept
