"""``[model.memory] conv_init = "shift_keys"``: keys start on the previous token, queries and
values on the current one, with W_k = W_q (H3's shift), so the memory starts as a bigram lookup."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO

import miraslab
from miraslab.errors import RecipeError
from miraslab.memory.qkv_projections import MemoryInputs


def test_shift_keys_makes_each_key_the_query_of_the_token_before():
    torch.manual_seed(0)
    inputs = MemoryInputs(dim=16, heads=2, head_dim=8, conv_kernel=4, conv_init="shift_keys")
    x = torch.randn(3, 20, 16, dtype=torch.float64)
    q, k, v, _ = inputs.double()(x)
    # k_{t+1} and q_t are the same function of x_t (exactly, up to float64 rounding)
    torch.testing.assert_close(k[:, :, 1:], q[:, :, :-1], rtol=0, atol=1e-12)
    # the first key reads the zeros in front: silu(b_k), normalised, not 0 (whose gradient is 1/eps)
    first = torch.nn.functional.silu(inputs.conv.bias[16:32].reshape(2, 8)).double()
    torch.testing.assert_close(k[0, :, 0], first / first.norm(dim=-1, keepdim=True), rtol=0, atol=1e-12)
    changed = x.clone()
    changed[:, 5] += 1.0
    moved = (inputs(changed)[2] - v).abs().amax(dim=(0, 1, 3)) > 1e-9
    assert moved.nonzero().flatten().tolist() == [5]  # a value is its own token's alone
    default = MemoryInputs(dim=16, heads=2, head_dim=8, conv_kernel=4).double()
    q0, k0, _, _ = default(x)
    assert (k0[:, :, 1:] - q0[:, :, :-1]).abs().max() > 0.1  # PyTorch's init does not


def test_shift_keys_needs_a_tap_one_token_back():
    with pytest.raises(RecipeError, match=r"model.memory.conv_kernel: expected at least 2 with conv_init"):
        miraslab.load_recipe(
            REPO / "recipes" / "quickstart.toml",
            ["model.memory.conv_init=shift_keys", "model.memory.conv_kernel=1"],
        )
