"""compile_chunks: the chunked path's per-chunk step under torch.compile.

It must equal the eager layer (outputs, carried state, every gradient), run compiled for
every whole chunk, the first included, compile one graph for every sequence length (and
every starting state: initial, carried, detached), and
fall back to eager with one warning when compiling fails.  Each test uses a shape of its
own: dynamo's cache is process-wide, and a graph another test compiled would hide a
recompile (or a failure) here.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch._dynamo.utils
import torch._inductor.config
from torch.profiler import ProfilerActivity, profile

from miraslab.memory.layer import MemoryLayer
from miraslab.memory.paths import compiled as compiled_path

pytestmark = pytest.mark.compile

CASES = {
    "titans-deep": {"memory": {"name": "mlp", "expansion": 2}},
    # Newton-Schulz on the materialised chunk-end state, inside the compiled step
    "atlas-gated-mlp-muon": {"memory": "gated_mlp", "algorithm": {"name": "muon", "ns_steps": 2}},
    # the Omega window: buffered keys of the previous chunk, a band per chunk
    "omega-huber": {
        "memory": {"name": "mlp", "expansion": 2},
        "bias": {"name": "omega", "window": 3, "inner": "huber"},
    },
    # affine inner maps: each bias read in the dual form on the constant input 1
    "ttt-mlp-bias": {"memory": {"name": "mlp", "expansion": 2, "bias": True}, "algorithm": "momentum"},
    # a bias whose gradient is not affine in W: a matrix memory takes the per-chunk step too
    "linear-huber-kl": {"memory": "linear", "bias": "huber", "retention": "kl", "algorithm": "gd"},
}


def pair(dim: int, chunk_size: int = 4, **options) -> tuple[MemoryLayer, MemoryLayer]:
    """An eager layer and a compile_chunks layer with the same weights, in float64."""
    torch.manual_seed(0)
    eager = MemoryLayer.from_options(dim, heads=2, chunk_size=chunk_size, **options).double()
    compiled = MemoryLayer.from_options(
        dim, heads=2, chunk_size=chunk_size, compile_chunks=True, **options
    ).double()
    compiled.load_state_dict(eager.state_dict())
    return eager, compiled


def compiled_regions(run) -> int:
    """How many times ``run()`` entered a torch.compile'd region (the profiler's record)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("Torch-Compiled Region"))


def assert_two_calls_equal_eager(
    eager: MemoryLayer, compiled: MemoryLayer, x: torch.Tensor, cut: int, whole_chunks: int
) -> None:
    """Two calls, ``x[:, :cut]`` then the rest from where the first left off: outputs,
    carried state and every parameter's gradient equal eager to 1e-10 (float64; the
    compiled graph may sum in another order); each of the ``whole_chunks`` ran compiled."""

    def run(layer: MemoryLayer):
        y1, state = layer(x[:, :cut], return_state=True)
        y2, state = layer(x[:, cut:], state=state, return_state=True)
        y = torch.cat([y1, y2], dim=1)
        y.square().sum().backward()
        return y, state

    y_eager, state_eager = run(eager)
    compiled(x[:, :cut])  # compile outside the profiled pass: its tracing runs ops too
    outputs = {}
    regions = compiled_regions(lambda: outputs.update(zip(("y", "state"), run(compiled), strict=True)))
    assert regions == whole_chunks
    torch.testing.assert_close(outputs["y"], y_eager, rtol=1e-10, atol=1e-10)
    memory_eager, memory = state_eager.memory.memory, outputs["state"].memory.memory
    for name, w in memory_eager.weights.items():
        torch.testing.assert_close(memory.weights[name], w, rtol=1e-10, atol=1e-10)
    assert memory.offset == memory_eager.offset
    for (name, p_eager), (_, p) in zip(eager.named_parameters(), compiled.named_parameters(), strict=True):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, p_eager.grad, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_compiled_chunks_equal_eager_across_calls(options):
    """14 tokens from scratch (3 whole chunks and 2 tokens), then 13 from mid-chunk (2,
    then 2 whole chunks, then 3): 5 whole chunks compiled."""
    eager, compiled = pair(12, **options)
    x = torch.randn(2, 27, 12, dtype=torch.float64)
    assert_two_calls_equal_eager(eager, compiled, x, cut=14, whole_chunks=5)


def test_channelwise_sub_chunks_compiled_equal_eager():
    """Decay and momentum per value channel: whole chunks of 64 tokens take the sub-chunked
    step (four sub-chunks of 16).  200 tokens (3 whole chunks and 8), then 189 from
    mid-chunk (56 as sub-chunk pieces of 48 and 8, 2 whole chunks, 5).  Heads of 32
    channels and four sub-chunks: the shape at which inductor had miscompiled the decay
    gate's gradient (see ``batched.times_transposed``; chunks of 32 did not show it)."""
    options = {"memory": "linear", "gates": {"channelwise_decay": True, "channelwise_momentum": True}}
    eager, compiled = pair(64, chunk_size=64, retention="decay", algorithm="momentum", **options)
    x = torch.randn(2, 389, 64, dtype=torch.float64)
    assert_two_calls_equal_eager(eager, compiled, x, cut=200, whole_chunks=5)


def test_one_graph_serves_every_sequence_length():
    """Lengths 12, 20, 9 and 33 (and a call from mid-chunk) compile one graph in all: each
    chunk's inputs are laid out so their strides do not depend on the length, and the
    first chunk's state (initial, or carried over and detached) like every later one's."""
    _, layer = pair(10, memory={"name": "mlp", "expansion": 3})
    stats = torch._dynamo.utils.counters["stats"]
    before = stats["unique_graphs"]
    state = None
    for length in (12, 20, 9, 33):
        x = torch.randn(2, length, 10, dtype=torch.float64)
        y, state = layer(x, state=state, return_state=True)
        y.sum().backward()
        state = state.detach()
    assert stats["unique_graphs"] - before == 1
    assert compiled_path._failed == set()


def test_a_frozen_layer_under_grad_mode_builds_no_graph():
    """Nothing requires grad (frozen weights, an input without grad), grad mode on: the first
    chunk's state is not made to require grad, so no chunk records a backward graph and one
    graph (without grad) serves them all.  Tolerance 1e-10 (float64)."""
    eager, layer = pair(11, memory={"name": "mlp", "expansion": 2})
    for module in (eager, layer):
        module.requires_grad_(False)
    stats = torch._dynamo.utils.counters["stats"]
    before = stats["unique_graphs"]
    x = torch.randn(2, 16, 11, dtype=torch.float64)
    y = layer(x)
    assert not y.requires_grad
    assert stats["unique_graphs"] - before == 1
    torch.testing.assert_close(y, eager(x), rtol=1e-10, atol=1e-10)


def test_a_rule_parameter_alone_requiring_grad_keeps_one_graph():
    """Everything frozen but elastic-net retention's learned threshold, which the chunk-end
    step uses: the chunk ends require grad, so the first chunk's state is made to as well,
    one graph serves every chunk and the threshold's gradient equals eager.  Tolerance
    1e-10 (float64)."""
    eager, layer = pair(9, memory={"name": "mlp", "expansion": 2}, retention="elastic_net")
    thresholds = []
    for module in (eager, layer):
        module.requires_grad_(False)
        thresholds.append(module.memory.rule.retention.log_threshold.requires_grad_(True))
    stats = torch._dynamo.utils.counters["stats"]
    before = stats["unique_graphs"]
    x = torch.randn(2, 16, 9, dtype=torch.float64)
    layer(x).square().sum().backward()
    assert stats["unique_graphs"] - before == 1
    eager(x).square().sum().backward()
    torch.testing.assert_close(thresholds[1].grad, thresholds[0].grad, rtol=1e-10, atol=1e-10)


def test_a_failed_compile_runs_eagerly_after_one_warning(monkeypatch):
    """No working C++ compiler (a real inductor failure, caches off so nothing compiled
    before can stand in): one RuntimeWarning, then the eager result.  Tolerance 1e-13
    (float64): the step then runs eagerly on the first chunk's state as laid out for the
    graph (contiguous weights, not the learned ones expanded over the batch), which can
    round a matmul's last bit differently."""
    monkeypatch.setattr(compiled_path, "_failed", set())
    eager, compiled = pair(14, memory={"name": "mlp", "expansion": 5})
    x = torch.randn(2, 16, 14, dtype=torch.float64)
    broken = {"cpp.cxx": ("/nonexistent/c++",), "force_disable_caches": True}
    with torch._inductor.config.patch(broken), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = compiled(x), compiled(x)
    ours = [w for w in caught if "compile_chunks" in str(w.message)]
    assert len(ours) == 1 and "InvalidCxxCompiler" in str(ours[0].message)
    assert issubclass(ours[0].category, RuntimeWarning)
    expected = eager(x)
    torch.testing.assert_close(first, expected, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(second, expected, rtol=1e-13, atol=1e-13)


def test_inside_a_whole_model_compile_the_step_is_traced_inline():
    """torch.compile(layer, fullgraph=True) with compile_chunks on: no nested compile, no
    graph break.  Tolerance 1e-10 (float64)."""
    eager, compiled = pair(6, memory={"name": "mlp", "expansion": 2})
    x = torch.randn(1, 12, 6, dtype=torch.float64)
    whole = torch.compile(compiled, fullgraph=True, dynamic=False)  # static, as train.compile
    torch.testing.assert_close(whole(x), eager(x), rtol=1e-10, atol=1e-10)


def test_recipes_and_the_layer_take_the_option():
    from miraslab.memory.spec import MemorySpec

    layer = MemoryLayer(16, 2, MemorySpec(compile_chunks=True))
    assert layer.memory.spec.compile_chunks
    assert not MemoryLayer.from_options(16, heads=2).memory.spec.compile_chunks


def tnt_model(compile_chunks: bool) -> torch.nn.Module:
    """A two-layer TNT model (global chunk 4, local chunk 2, shards of 6) in float64."""
    from miraslab.model.language_model import build_model
    from miraslab.model.spec import ModelSpec
    from miraslab.params import structure

    torch.manual_seed(0)
    table = {
        "vocab_size": 40,
        "d_model": 20,  # a shape of its own: see the module docstring
        "n_layers": 2,
        "n_heads": 2,
        "layout": "lmm",
        "memory": {"memory": {"name": "mlp", "expansion": 2}, "compile_chunks": compile_chunks},
        "tnt": {"global_chunk": 4, "local_chunks": [2], "shard_length": 6, "mixer": "sum"},
    }
    return build_model(structure(table, ModelSpec)).double()


def test_a_tnt_recipe_with_compile_chunks_compiles_its_chunk_step():
    """TNT's global and local memories take compile_chunks like the plain layer: the chunk
    step runs compiled, and the model equals eager to 1e-10 (float64)."""
    eager, compiled = tnt_model(False), tnt_model(True)
    compiled.load_state_dict(eager.state_dict())
    ids = torch.randint(0, 40, (1, 12))
    compiled(ids)  # compile outside the profiled pass: its tracing runs ops too
    outputs = []
    assert compiled_regions(lambda: outputs.append(compiled(ids))) > 0
    torch.testing.assert_close(outputs[0], eager(ids), rtol=1e-10, atol=1e-10)
