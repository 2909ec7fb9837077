"""Property-based: chunked equals the per-token loop over random shapes and chunk sizes.

Tolerance: float64, 1e-9 relative to the output scale.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from memory_cases import make_rule, random_inputs, tokens

from miraslab.memory.paths.memory_op import memory_op

COMBOS = [  # the four axes, then the channel-wise gates
    ("linear", "l2", "decay", "momentum", ()),
    ("mlp", "omega", "decay", "gd", ()),
    ("gated_mlp", "huber", "lq_norm", "momentum", ()),
    ("mlp", "lp", "none", "muon", ()),
    ("linear", "dot", "kl", "gd", ()),
    ("linear", "l2", "decay", "momentum", ("decay", "momentum")),
    ("linear", "omega", "elastic_net", "gd", ("decay", "window")),
]


@settings(max_examples=40, deadline=None)
@given(
    combo=st.sampled_from(COMBOS),
    batch=st.integers(1, 3),
    heads=st.integers(1, 3),
    seq=st.integers(1, 17),
    chunk=st.integers(1, 8),
    split=st.integers(0, 17),
    seed=st.integers(0, 2**16),
)
def test_chunked_equals_recurrent_for_any_shape_chunk_and_split(combo, batch, heads, seq, chunk, split, seed):
    torch.manual_seed(seed)
    *axes, channelwise = combo
    rule = make_rule(*axes, heads=heads, channelwise=channelwise)
    q, k, v, gates, _ = random_inputs(rule, batch=batch, seq=seq, seed=seed)
    expected, _ = memory_op(rule, q, k, v, gates, chunk_size=chunk, path="recurrent")
    split = min(split, seq)  # two calls, the second continuing the first's state
    first, state = memory_op(rule, *tokens(q, k, v, gates, slice(split)), chunk_size=chunk)
    second, _ = memory_op(rule, *tokens(q, k, v, gates, slice(split, None)), state, chunk_size=chunk)
    got = torch.cat([first, second], dim=2)
    scale = max(1.0, expected.abs().max().item())
    assert (got - expected).abs().max().item() <= 1e-9 * scale
