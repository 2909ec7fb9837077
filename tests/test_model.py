"""Language models from recipes: every layout decodes exactly, attends causally, and TNT's
local memories reset at shard boundaries while the global memory carries."""

from __future__ import annotations

import pytest
import torch
from model_cases import tiny_model

from miraslab.testing import check_causal, check_decode_equals_forward, check_gradients_reach_model

LAYOUTS = ("attention", "swa", "lmm", "mag", "mal", "mac")
TNT = {"global_chunk": 4, "local_chunks": [2], "shard_length": 6, "mixer": "m3"}


CASES = [(layout, None) for layout in LAYOUTS] + [(layout, TNT) for layout in ("lmm", "mag", "mal", "mac")]
IDS = [f"{layout}{'-tnt' if tnt else ''}" for layout, tnt in CASES]


# the kit's model checks (miraslab.testing), on every layout with and without TNT


@pytest.mark.parametrize(("layout", "tnt"), CASES, ids=IDS)
def test_decoding_token_by_token_equals_the_full_forward(layout, tnt):
    """Tolerance: float64, 1e-10 of the logits' scale."""
    check_decode_equals_forward(tiny_model(layout, tnt), layout)


@pytest.mark.parametrize(("layout", "tnt"), CASES, ids=IDS)
def test_no_position_sees_a_later_token(layout, tnt):
    check_causal(tiny_model(layout, tnt), layout)


@pytest.mark.parametrize(("layout", "tnt"), CASES, ids=IDS)
def test_forward_and_backward_reach_every_parameter(layout, tnt):
    check_gradients_reach_model(tiny_model(layout, tnt), layout)


@pytest.mark.parametrize("layout", ["swa", "mag", "mal"])
def test_the_sliding_window_cache_never_exceeds_the_window(layout):
    model = tiny_model(layout)
    ids = torch.randint(0, 40, (1, 20))
    _, state = model(ids[:, :9], return_state=True)
    for t in range(9, 20):
        _, state = model(ids[:, t : t + 1], state=state, return_state=True)
        for block_state in state.blocks:
            caches = [
                s
                for s in (block_state if isinstance(block_state, tuple) else (block_state,))
                if hasattr(s, "keys")
            ]
            assert caches and all(len(cache) <= 4 for cache in caches)


def test_full_attention_keeps_the_whole_context():
    model = tiny_model("attention")
    _, state = model(torch.randint(0, 40, (1, 11)), return_state=True)
    assert all(len(cache) == 11 for cache in state.blocks)


def test_tied_embeddings_share_one_tensor_and_untied_do_not():
    tied, untied = tiny_model("lmm"), tiny_model("lmm", tie_embeddings=False)
    assert tied.head.weight is tied.embed.weight and untied.head.weight is not untied.embed.weight


def test_local_memories_reset_at_shard_boundaries_while_the_global_memory_carries():
    model = tiny_model("lmm", TNT)
    memory = model.blocks[0].memory
    x = torch.randn(1, 14, 32, dtype=torch.double)
    q, k, v, _ = memory.inputs(x)
    local = memory.local_memories[0]
    whole, _ = memory._run_local(local, q, k, v, x, None, 0, None)
    # a local memory started fresh at the boundary (token 6) reads exactly what the whole pass read
    fresh, _ = local(q[:, :, 6:12], k[:, :, 6:12], v[:, :, 6:12], x[:, 6:12])
    torch.testing.assert_close(whole[:, :, 6:12], fresh, atol=1e-12, rtol=0)
    # the first read after the boundary equals a read-out of W_init (after one write from that token)
    _, state_before = local(q[:, :, :6], k[:, :, :6], v[:, :, :6], x[:, :6])
    carried, _ = local(q[:, :, 6:7], k[:, :, 6:7], v[:, :, 6:7], x[:, 6:7], state_before)
    assert (whole[:, :, 6] - carried[:, :, 0]).abs().max() > 1e-6
    # the global memory does carry: its reads after token 6 depend on the tokens before it
    y_global, _ = memory.global_memory(q, k, v, x)
    y_late, _ = memory.global_memory(q[:, :, 6:], k[:, :, 6:], v[:, :, 6:], x[:, 6:])
    assert (y_global[:, :, 6:] - y_late).abs().max() > 1e-6


def test_m3_mixer_exposes_its_alpha():
    model = tiny_model("lmm", TNT)
    assert model.blocks[0].memory.mixer.alpha == pytest.approx(0.5)


def test_mag_gain_is_stored_as_its_logarithm():
    gate = tiny_model({"name": "mag", "gain_init": 5.0}).blocks[0].gate
    assert gate.log_gain.item() == pytest.approx(1.6094, abs=1e-4)  # log 5: bf16 resolves steps here
    assert gate.gain == pytest.approx(5.0)


def test_swa_without_a_window_is_refused():
    from miraslab.errors import RecipeError

    with pytest.raises(RecipeError, match="layout swa needs a window"):
        tiny_model("swa", attention={"window": 0})


def test_every_tnt_memory_takes_the_memory_tables_keys():
    """TNT's global and local memories are assembled like the plain layer's: compile_chunks,
    which TNT once dropped, reaches each of them."""
    from miraslab.memory.neural_memory import NeuralMemory

    model = tiny_model("lmm", TNT, memory={"chunk_size": 3, "compile_chunks": True})
    memories = [m for m in model.modules() if isinstance(m, NeuralMemory)]
    assert len(memories) == 4  # two layers, a global and a local memory each
    assert all(m.spec.compile_chunks for m in memories)
