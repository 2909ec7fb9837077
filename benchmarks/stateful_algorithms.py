"""Cost of the general path (algorithms with state of their own) beside the factored paths.

    OMP_NUM_THREADS=1 python benchmarks/stateful_algorithms.py [--chunk 2] [--repeats 5]

The memory op alone, forward + backward of sum(y^2), at the quickstart's size (recipes/
quickstart.toml: batch 32, 128 tokens, 2 heads of width 32, a linear memory with the l2 bias,
no retention, chunk 2), for gd and momentum (their factored paths) and nesterov, adam,
adagrad and dmgd (the general path).  Prints the median milliseconds per call and the ratio
to gd; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from miraslab import api
from miraslab.testing import RuleCase

ALGORITHMS = ("gd", "momentum", "nesterov", "adam", "adagrad", "dmgd")


def time_one(name: str, chunk: int, repeats: int, batch: int = 32, seq: int = 128, d: int = 32) -> float:
    rule = RuleCase("linear", "l2", "none", name, heads=2, d=d).build().float()
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(batch, 2, seq, d), dim=-1).requires_grad_()
    k = torch.nn.functional.normalize(torch.randn(batch, 2, seq, d), dim=-1).requires_grad_()
    v = torch.randn(batch, 2, seq, d, requires_grad=True)
    projections = api.GateProjections(8, 2, rule.gate_defs(), d, rank=2)
    x = torch.randn(batch, seq, 8)
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        start = time.perf_counter()
        y, _ = api.memory_op(rule, q, k, v, projections(x), chunk_size=chunk)
        y.pow(2).sum().backward()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}, chunk {args.chunk}")
    base = None
    for name in ALGORITHMS:
        ms = time_one(name, args.chunk, args.repeats)
        base = base or ms
        print(f"{name:9s} {ms:8.1f} ms  x{ms / base:.1f}")


if __name__ == "__main__":
    main()
