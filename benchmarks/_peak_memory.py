"""Peak memory of one forward+backward, measured as peak-RSS growth in a fresh child process.

torch has no allocator statistics on CPU and tracemalloc does not see its allocations,
so the child measures the process's resident set instead (Linux ``/proc/self/status``):

1. build the module and run one forward+backward on a one-chunk input (libraries
   initialise lazily, parameter gradients get allocated);
2. create the measured input, ``malloc_trim(0)`` (memory freed so far goes back to the
   OS instead of hiding growth), reset the peak (``echo 5 > /proc/self/clear_refs`` sets
   VmHWM to the current RSS) and read the baseline VmRSS;
3. run one forward+backward and read VmHWM.

The reported number is VmHWM - baseline: the activations, autograd graph, temporaries
and allocator overhead of that step, not the weights or the input.  A fresh process
per configuration keeps one configuration from inheriting another's heap.

The child runs with glibc's mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``,
unless already set): every tensor of 64 KiB or more gets its own mapping, returned to the
OS when the tensor is freed, so RSS follows the live tensors.  With glibc's default
(a threshold that grows as large blocks are freed) freed tensors stay in the heap and the
same step measured 800-1500 MiB instead of 625 MiB from run to run (deep memory, recurrent
path, seq 256): that measures heap fragmentation, not the layer.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from _subjects import CHUNK, Case, build, make_input, make_step

_STATUS = Path("/proc/self/status")
MMAP_THRESHOLD = 64 * 1024


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in {_STATUS}")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:  # then VmHWM is the process's lifetime peak, still >= the warm-up's
        return False


def _trim_heap() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _measure_step(module: torch.nn.Module, seq: int) -> dict[str, float | bool]:
    x = make_input(seq)
    step = make_step(module, x)
    gc.collect()
    _trim_heap()
    reset = _reset_peak()
    baseline = _status_kib("VmRSS")
    step()
    peak = _status_kib("VmHWM")
    return {"peak_growth_mib": (peak - baseline) / 1024, "baseline_rss_mib": baseline / 1024, "reset": reset}


def measure_in_this_process(key: str, lengths: list[int], threads: int) -> dict[int, dict[str, float | bool]]:
    """Steps 1-3 above for each length in turn; run this only in a fresh process.

    With the fixed mmap threshold a measured step's tensors are unmapped when freed, so
    the lengths of one configuration can share a process without inheriting each other's
    memory (checked: within 1 % of one process per length).
    """
    torch.set_num_threads(threads)
    module = build(Case.from_key(key))
    make_step(module, make_input(CHUNK))()
    return {seq: _measure_step(module, seq) for seq in lengths}


def measure(key: str, lengths: list[int], threads: int) -> dict[int, dict[str, float | bool]]:
    """Peak-RSS growth of one forward+backward of ``key`` at each length, in a fresh interpreter."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import _peak_memory; "
        "print(json.dumps(_peak_memory.measure_in_this_process("
        "sys.argv[2], [int(n) for n in sys.argv[3].split(',')], int(sys.argv[4]))))"
    )
    here = str(Path(__file__).resolve().parent)
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD)),
    }
    done = subprocess.run(
        [sys.executable, "-c", code, here, key, ",".join(map(str, lengths)), str(threads)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"peak-memory child for {key} failed:\n{done.stderr[-2000:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return {int(seq): value for seq, value in found.items()}


def measure_all(jobs: dict[str, list[int]], threads: int) -> dict[tuple[str, int], dict[str, float | bool]]:
    """One child per configuration key, one after the other: two at a time oversubscribe the
    cores with spinning OpenMP threads and took 3x longer than in turn."""
    out = {}
    for key, lengths in jobs.items():
        for seq, value in measure(key, sorted(lengths), threads).items():
            out[(key, seq)] = value
    return out
