"""The MemoryLayer module: (batch, seq, dim) -> (batch, seq, dim), usable without recipes."""

from __future__ import annotations

import math

import pytest
import torch
from tolerance import assert_close_to_scale

from miraslab.memory.layer import MemoryLayer
from miraslab.memory.qk_projection import qk_project


def layer(**options) -> MemoryLayer:
    torch.manual_seed(0)
    return MemoryLayer.from_options(16, heads=2, chunk_size=4, **options).double()


LAYER_CASES = {
    "titans": {},
    "deltanet": {"memory": "linear", "retention": "none", "algorithm": "gd"},
    "atlas": {
        "bias": {"name": "omega", "window": 3},
        "algorithm": "muon",
        "features": {"name": "polynomial", "mode": "elementwise"},
    },
    "tensor-features": {"memory": {"name": "mlp", "residual": False}, "features": "polynomial"},
    "qk-projection": {"qk_projection": True, "conv_kernel": 2},
    "channelwise-window": {"bias": {"name": "omega", "window": 3}, "gates": {"channelwise_window": True}},
    "channelwise-decays": {
        "memory": "linear",
        "retention": {"name": "decay", "gradient_at": "decayed"},
        "gates": {"channelwise_decay": True, "channelwise_momentum": True},
    },
}


@pytest.mark.parametrize("options", LAYER_CASES.values(), ids=LAYER_CASES.keys())
def test_calls_in_pieces_continue_exactly(options):
    """Tolerance: float64, atol 1e-10."""
    module = layer(**options)
    x = torch.randn(2, 11, 16, dtype=torch.double)
    full = module(x)
    first, state = module(x[:, :5], return_state=True)
    pieces = [first]
    for t in range(5, 11):  # then token by token, on the recurrent path
        y, state = module(x[:, t : t + 1], state=state, return_state=True, path="recurrent")
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-10, rtol=0)
    assert state.position == 11


@pytest.mark.parametrize("options", LAYER_CASES.values(), ids=LAYER_CASES.keys())
def test_gradients_reach_every_parameter_of_the_layer(options):
    module = layer(**options)
    module(torch.randn(2, 9, 16, dtype=torch.double)).pow(2).sum().backward()
    missing = [n for n, p in module.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_the_decode_state_does_not_grow_with_the_context():
    module = layer(bias={"name": "omega", "window": 3})
    x = torch.randn(1, 40, 16, dtype=torch.double)
    _, short = module(x[:, :8], return_state=True)
    _, long = module(x, return_state=True)

    def size(state) -> int:
        tensors = [
            state.conv,
            *state.memory.memory.weights.values(),
            *state.memory.memory.start.values(),
            *(state.memory.memory.momentum or {}).values(),
            state.memory.memory.window_keys,
            state.memory.memory.window_values,
        ]
        return sum(t.numel() for t in tensors if t is not None)

    assert size(short) == size(long)


def test_qk_projection_is_the_sum_of_past_unit_key_projectors():
    q, k = torch.randn(2, 3, 10, 4, dtype=torch.double), torch.randn(2, 3, 10, 4, dtype=torch.double)
    projected, state = qk_project(q, k, chunk_size=3)
    unit = k / k.norm(dim=-1, keepdim=True)
    for t in range(10):
        projector = (unit[:, :, : t + 1].unsqueeze(-1) @ unit[:, :, : t + 1].unsqueeze(-2)).sum(2)
        torch.testing.assert_close(projected[:, :, t], (projector @ q[:, :, t].unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(state, (unit.transpose(-1, -2) @ unit))


def test_polynomial_tensor_features_give_the_polynomial_kernel():
    from miraslab.memory.rule.build import build_features
    from miraslab.params import make_component
    from miraslab.registry import get_registry

    phi = build_features(make_component("features", "polynomial", {"degree": 3}, get_registry()), 5).double()
    with torch.no_grad():
        phi.coefficients.copy_(torch.tensor([0.5, 2.0, 0.25, 0.1]))
    q, k = torch.randn(7, 5, dtype=torch.double), torch.randn(7, 5, dtype=torch.double)
    dot = (q * k).sum(-1)
    expected = 0.5 + 2.0 * dot + 0.25 * dot**2 + 0.1 * dot**3
    torch.testing.assert_close((phi(q, query=True) * phi(k)).sum(-1), expected)
    assert phi.out_dim == 1 + 5 + math.comb(6, 2) + math.comb(7, 3)


def test_polynomial_coefficients_start_at_one_over_i_factorial():
    from miraslab.memory.rule.build import build_features
    from miraslab.params import make_component
    from miraslab.registry import get_registry

    phi = build_features(make_component("features", "polynomial", {"degree": 2}, get_registry()), 4)
    torch.testing.assert_close(phi.coefficients, torch.tensor([1.0, 1.0, 0.5]))


def test_under_bf16_autocast_gate_parameters_stay_fp32_and_can_take_tiny_steps():
    """The TNT-Atlas seed: a bf16 gain near 5.0 could not take a 1e-5 step. Ours stay fp32."""
    torch.manual_seed(0)
    module = MemoryLayer.from_options(
        32, heads=2, chunk_size=8, algorithm="muon", bias={"name": "omega", "window": 2}
    )
    x = torch.randn(2, 24, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = module(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    y.float().pow(2).mean().backward()
    bias = module.memory.gates.proj["decay"].bias
    assert bias.dtype == torch.float32 and bias.grad is not None and bias.grad.abs().sum() > 0
    before = bias.detach().clone()
    with torch.no_grad():
        bias -= 1e-5 * torch.sign(bias.grad)
    assert (bias != before).all()


BF16_CASES = {
    "mlp": {"memory": "mlp"},
    "linear": {"memory": "linear"},
    "linear-channelwise-decays": {
        "memory": "linear",
        "gates": {"channelwise_decay": True, "channelwise_momentum": True},
    },
}


@pytest.mark.parametrize("options", BF16_CASES.values(), ids=BF16_CASES.keys())
def test_bf16_autocast_output_and_gradients_are_close_to_fp32(options):
    """Forward and backward under autocast through every hand-written backward on the way
    (convolution, head split, batched or per-chunk passes, read-out norm): a dtype mismatch in
    one raises here.  Tolerance: bf16 matmuls keep ~3 significant digits; relative error of
    the output and of the input gradient < 5e-2.  At this size that bound does not tell fp32
    from bf16 accumulation of the state; test_linear_chunks_backward checks the state's dtype."""
    torch.manual_seed(0)
    module = MemoryLayer.from_options(32, heads=2, chunk_size=8, **options)
    x = torch.randn(2, 24, 32, requires_grad=True)
    exact = module(x)
    (grad_exact,) = torch.autograd.grad(exact.square().sum(), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        approx = module(x).float()
    (grad_approx,) = torch.autograd.grad(approx.square().sum(), x)
    assert (approx - exact).norm() / exact.norm() < 5e-2
    assert (grad_approx - grad_exact).norm() / grad_exact.norm() < 5e-2


def test_layer_accepts_component_tables_and_rejects_nonsense_combinations():
    from miraslab.errors import RecipeError

    with pytest.raises(RecipeError, match="do not compose"):
        MemoryLayer.from_options(16, heads=2, retention="kl", algorithm="muon")
    with pytest.raises(RecipeError, match="residual = true needs"):
        MemoryLayer.from_options(16, heads=2, features={"name": "polynomial", "degree": 2})


COMPILE_CASES = {
    "linear": ({"chunk_size": 4}, 16, 12),
    # no momentum: the batched pass has no S to return (a None output made dynamo fall back
    # to eager for the whole layer)
    "delta-rule": ({"chunk_size": 4, "retention": "none", "algorithm": "gd"}, 16, 12),
    "deep": ({"chunk_size": 4, "memory": {"name": "mlp", "expansion": 2}}, 16, 12),
    # the Omega rule's gate names are read in the forward (a plugin building GateDefs there broke the graph)
    "omega": ({"chunk_size": 4, "bias": {"name": "omega", "window": 3}}, 16, 12),
    # one sub-chunk: compiling unrolls the sub-chunk loop, and its time grows faster than the
    # graph (two sub-chunks: two minutes)
    "channelwise-decays": (
        {"chunk_size": 16, "gates": {"channelwise_decay": True, "channelwise_momentum": True}},
        16,
        16,
    ),
    # width 8, one chunk: where inductor had got every gradient before the memory wrong (the
    # head split wrote q, k and v with out= into one buffer; see split_heads)
    "channelwise-momentum": ({"chunk_size": 4, "gates": {"channelwise_momentum": True}}, 8, 4),
    # the per-token path (paths.chunked_per_token): its triangular solve and chunk recurrence,
    # l2 bias, with a length that is not a multiple of the chunk (the zero-padded last chunk)
    "per-token-delta-rule": (
        {"chunk_size": 4, "inner_steps": "per_token", "retention": "none", "algorithm": "gd"},
        16,
        10,
    ),
    "per-token-gated-delta-rule": (
        {
            "chunk_size": 4,
            "inner_steps": "per_token",
            "retention": {"name": "decay", "gradient_at": "decayed"},
            "algorithm": "gd",
        },
        16,
        12,
    ),
    "per-token-momentum": (
        {
            "chunk_size": 4,
            "inner_steps": "per_token",
            "retention": {"name": "decay", "gradient_at": "decayed"},
        },
        16,
        10,
    ),
}
# float32 compiled against eager, relative to each tensor's largest magnitude: the worst
# case measured was 1.0e-6 (x's gradient, channel-wise momentum); with the head split as it
# was before the fix above, the gradients before the memory were off by 6 to 13 times their
# scale.  100x headroom over rounding, far below a miscompilation.
COMPILE_TOL = 1e-4


@pytest.mark.compile
@pytest.mark.parametrize("options, dim, seq", COMPILE_CASES.values(), ids=COMPILE_CASES.keys())
def test_the_layer_compiles_without_graph_breaks_and_matches_eager(options, dim, seq):
    """fullgraph=True raises on a graph break; the custom autograd Functions (short
    convolution, head split, batched matrix-memory pass, dual-form read, chunk end) and the
    sub-chunk loop must trace; outputs and the gradients of the input and of every
    parameter match eager in float32, the dtype training compiles: ``max|compiled - eager|
    <= COMPILE_TOL * max|eager|`` per tensor (tests/tolerance.py says why not element-wise)."""
    # dynamo's cache is process-wide: every case compiles the same functions (the per-token
    # chunk step) anew, and after recompile_limit (8) of them fullgraph=True fails
    torch._dynamo.reset()
    torch.manual_seed(0)
    rule = {"memory": "linear", "retention": "decay", "algorithm": "momentum"}
    layer = MemoryLayer.from_options(dim, heads=2, **{**rule, **options})
    x = torch.randn(2, seq, dim, requires_grad=True)
    inputs = [x, *layer.parameters()]
    eager = layer(x)
    grads_eager = torch.autograd.grad(eager.square().sum(), inputs)
    compiled = torch.compile(layer, fullgraph=True, dynamic=False)(x)  # static, as train.compile
    grads_compiled = torch.autograd.grad(compiled.square().sum(), inputs)
    assert_close_to_scale(compiled, eager, COMPILE_TOL, "output")
    names = ["x", *(name for name, _ in layer.named_parameters())]
    for name, got, expected in zip(names, grads_compiled, grads_eager, strict=True):
        assert_close_to_scale(got, expected, COMPILE_TOL, name)


# one case: a dynamic compile with its backward takes minutes here (momentum's: 250 s)
DYNAMIC_CASES = {name: COMPILE_CASES[name][0] for name in ("per-token-gated-delta-rule",)}


@pytest.mark.compile
@pytest.mark.parametrize("options", DYNAMIC_CASES.values(), ids=DYNAMIC_CASES.keys())
def test_the_per_token_layer_compiles_once_for_every_sequence_length(options):
    """``dynamic=True``: one graph (``unique_graphs`` 1, and no recompile, which
    ``error_on_recompile`` would raise) serves seq 10, 16 and 12 at chunk 4 (three and four
    chunks; a zero-padded last chunk and multiples of the chunk), with outputs and every
    gradient matching eager to COMPILE_TOL.  Under compile the per-token path runs its
    chunk recurrence through ``scan`` (the number of chunks is a symbolic size, not an
    unrolled loop), always pads (one ``F.pad``), picks each chunk's end row by a gather and
    returns a gathered copy of the unpadded reads, so no guard falls on the length.

    Only the per-token path is length-dynamic: the mini-batch chunked path (every memory
    with inner_steps = "mini_batch") loops over chunks in Python, so dynamo unrolls the loop
    and compiles a graph per number of chunks (and more: seq 9, 10, 12, 13 at chunk 4 gave
    four graphs for a linear memory), and a deep memory's dual-form read fails to trace
    with symbolic shapes on torch 2.13 (``lift_tracked_freevar_to_input``); train.compile
    therefore stays static (``dynamic=False``), a graph per shape."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    rule = {"memory": "linear", "retention": "decay", "algorithm": "momentum"}
    layer = MemoryLayer.from_options(16, heads=2, **{**rule, **options})
    torch._dynamo.reset()  # dynamo's cache is process-wide: count this test's graphs alone
    counters.clear()
    compiled_layer = torch.compile(layer, fullgraph=True, dynamic=True)
    names = ["x", *(name for name, _ in layer.named_parameters())]
    for index, seq in enumerate((10, 16, 12)):
        x = torch.randn(2, seq, 16, requires_grad=True)
        inputs = [x, *layer.parameters()]
        eager = layer(x)
        grads_eager = torch.autograd.grad(eager.square().sum(), inputs)
        with torch._dynamo.config.patch(error_on_recompile=index > 0):
            compiled = compiled_layer(x)
        grads_compiled = torch.autograd.grad(compiled.square().sum(), inputs)
        assert_close_to_scale(compiled, eager, COMPILE_TOL, f"output, seq {seq}")
        for name, got, expected in zip(names, grads_compiled, grads_eager, strict=True):
            assert_close_to_scale(got, expected, COMPILE_TOL, f"{name}, seq {seq}")
    assert counters["stats"]["unique_graphs"] == 1


def test_the_memory_table_reaches_every_memory_whole():
    """The plain layer and each of TNT's memories keep the [model.memory] spec they were built
    from (TNT's at its own chunk sizes), so a key added to MemorySpec cannot be dropped on the
    way from the recipe to the rule."""
    import attrs

    from miraslab.memory.hierarchical_memory import HierarchicalMemory
    from miraslab.memory.spec import GatesSpec, MemorySpec, TNTSpec

    spec = MemorySpec(conv_kernel=2, qk_norm=False, gates=GatesSpec(channelwise_lr=True, rank=4))
    assert MemoryLayer(16, 2, spec).memory.spec == spec
    tnt = TNTSpec(global_chunk=4, local_chunks=(2,), shard_length=4)
    hierarchy = HierarchicalMemory(16, 2, spec, tnt)
    assert hierarchy.global_memory.spec == attrs.evolve(spec, chunk_size=4, qk_projection=False)
    assert [m.spec for m in hierarchy.local_memories] == [
        attrs.evolve(spec, chunk_size=2, qk_projection=True)
    ]
