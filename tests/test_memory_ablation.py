"""memory_ablation: the state reset at every chunk, or the read zeroed, for evaluation.

Oracle for "reset": the same layer called on each chunk alone (a fresh state per call),
which carries nothing by construction; float64, exact up to summation order (1e-12).
"""

from __future__ import annotations

import pytest
import torch

import miraslab
from miraslab.errors import MiraslabError
from miraslab.memory.knockout import memory_ablation


def layer(**options) -> miraslab.MemoryLayer:
    torch.manual_seed(0)
    return miraslab.MemoryLayer.from_options(16, heads=2, chunk_size=4, conv_kernel=0, **options).double()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"memory": "linear", "retention": "none", "algorithm": "gd"},
        {"bias": {"name": "omega", "window": 3}},
    ],
    ids=["titans", "delta-rule", "omega"],
)
def test_reset_equals_each_chunk_run_alone(options):
    module = layer(**options)
    x = torch.randn(2, 14, 16, dtype=torch.float64)  # chunks of 4, 4, 4 and 2
    with memory_ablation(module, "reset") as changed:
        reset = module(x)
    alone = torch.cat([module(x[:, start : start + 4]) for start in range(0, 14, 4)], dim=1)
    assert changed == 1
    torch.testing.assert_close(reset, alone, rtol=0, atol=1e-12)
    assert (module(x) - reset)[:, 4:].abs().max() > 1e-3  # carried, later chunks differ
    torch.testing.assert_close(module(x)[:, :4], reset[:, :4], rtol=0, atol=1e-12)  # the first does not


def test_zero_reads_nothing_and_the_mode_is_restored_afterwards():
    module = layer()
    x = torch.randn(2, 8, 16, dtype=torch.float64)
    carried = module(x)
    with memory_ablation(module, "zero"):
        zeroed = module(x)
    assert torch.equal(zeroed, module.out(torch.zeros(2, 8, module.out.in_features, dtype=torch.float64)))
    assert torch.equal(module(x), carried)


def test_a_model_without_memory_or_an_unknown_mode_is_one_line():
    no_memory = memory_ablation(torch.nn.Linear(2, 2), "reset")
    with pytest.raises(MiraslabError, match="the model has no neural memory to ablate"), no_memory:
        pass
    with (
        pytest.raises(MiraslabError, match="expected one of carried, reset, zero"),
        memory_ablation(layer(), "x"),
    ):
        pass
