"""Affine inner maps: ``make_init(name, ..., bias=True)`` gives ``linear(name, h) = W h + b``
with ``b`` an inner weight the memory learns, on both paths.

The oracle is TTT-MLP's inner loop written out here with plain tensors (W1, b1, W2, b2 and
autograd of the l2 loss), under decay and momentum with mini-batch gradients.
Tolerances: float64, 1e-10 of the scale against the oracle; the kit's own (1e-9 paths, 1e-10
gradients) where it is used.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from memory_cases import make_rule, random_inputs, tokens

from miraslab.api import MemoryArchitecture, memory_op
from miraslab.errors import RecipeError
from miraslab.testing import (
    RuleCase,
    check_gradients_reach,
    check_inner_factors,
    check_memory_layer,
    check_model,
    check_rule,
    tiny_model,
)

ATOL = 1e-10
BIASED = {"expansion": 2, "bias": True}


def assert_close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    scale = max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= atol * scale, (a - b).abs().max().item()


def biased_mlp_rule(algorithm: str = "momentum", normalized: bool = False, retention: str = "decay"):
    rule = make_rule(
        "mlp",
        "l2",
        retention,
        algorithm,
        options={"memory": BIASED, "algorithm": {"normalized": normalized}},
    )
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # biases away from their zero start, so a missing one shows in the first read
        for name in ("w1_bias", "w2_bias"):
            rule.arch.init[name].copy_(0.5 * torch.randn(rule.arch.init[name].shape, generator=generator))
    return rule


def ttt_mlp(weights: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x + W2 gelu(W1 x + b1) + b2 for x (B, H, N, d); also the hidden activations."""
    hidden = F.gelu(x @ weights["W1"].transpose(-1, -2) + weights["b1"].transpose(-1, -2))
    return x + hidden @ weights["W2"].transpose(-1, -2) + weights["b2"].transpose(-1, -2), hidden


def oracle(init: dict, q, k, v, theta, alpha, eta, chunk: int, normalized: bool):
    """Mini-batch TTT-MLP with Titans' momentum and decay, token by token:
    g_t = grad of 1/2 ||M_start(k_t) - v_t||^2 (divided by ||k||^2 + 1 + ||hidden||^2 + 1 when
    ``normalized``: the inputs of the four weights, a bias's being 1), S_t = eta_t S - theta_t g_t,
    W_t = alpha_t W + S_t, y_t = M_{W_t}(q_t); the gradient point moves every ``chunk`` tokens."""
    weights = dict(init)
    start = dict(init)
    surprise = {n: torch.zeros_like(w) for n, w in init.items()}
    out = []
    for t in range(q.shape[2]):
        point = {n: w.detach().requires_grad_() for n, w in start.items()}
        pred, hidden = ttt_mlp(point, k[:, :, t : t + 1])
        loss = 0.5 * (pred - v[:, :, t : t + 1]).pow(2).sum()
        grads = dict(zip(point, torch.autograd.grad(loss, list(point.values())), strict=True))
        if normalized:
            energy = k[:, :, t].pow(2).sum(-1) + 1 + hidden[:, :, 0].pow(2).sum(-1) + 1
            grads = {n: g / energy[..., None, None] for n, g in grads.items()}
        for n in weights:
            surprise[n] = eta[:, :, t, None, None] * surprise[n] - theta[:, :, t, None, None] * grads[n]
            weights[n] = alpha[:, :, t, None, None] * weights[n] + surprise[n]
        out.append(ttt_mlp(weights, q[:, :, t : t + 1])[0])
        if (t + 1) % chunk == 0:
            start = dict(weights)
    return torch.cat(out, dim=2), weights


ENGINE_NAMES = {"W1": "w1", "b1": "w1_bias", "W2": "w2", "b2": "w2_bias"}


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("chunk", [1, 4])
def test_a_biased_mlp_memory_is_ttt_mlp_written_out_on_both_paths(chunk, normalized):
    rule = biased_mlp_rule(normalized=normalized)
    q, k, v, gates, _ = random_inputs(rule, seq=11)
    batch = q.shape[0]
    init = {
        mine: rule.arch.init[theirs].detach().expand(batch, -1, -1, -1)
        for mine, theirs in ENGINE_NAMES.items()
    }
    with torch.no_grad():
        theta, alpha, eta = gates["lr"], torch.exp(gates["decay"]), torch.exp(gates["momentum"])
    with torch.enable_grad():
        expected, final = oracle(
            init, q, k, v, theta.detach(), alpha.detach(), eta.detach(), chunk, normalized
        )
    with torch.no_grad():
        for path in ("chunked", "recurrent"):
            y, state = memory_op(rule, q, k, v, gates, chunk_size=chunk, path=path)
            assert_close(y, expected)
            for mine, theirs in ENGINE_NAMES.items():
                assert state.weights[theirs].shape == final[mine].shape
                assert_close(state.weights[theirs], final[mine])
            # a call continuing a carried state (mid-chunk at chunk 4) ends where one call does
            _, carried = memory_op(rule, *tokens(q, k, v, gates, slice(6)), chunk_size=chunk, path=path)
            rest, after = memory_op(
                rule, *tokens(q, k, v, gates, slice(6, None)), carried, chunk_size=chunk, path=path
            )
            assert_close(rest, expected[:, :, 6:])
            assert_close(after.weights["w2_bias"], final["b2"])


def test_the_bias_is_applied_by_the_engine_and_learned_inside_the_sequence():
    rule = biased_mlp_rule()
    state = rule.initial_state(2)
    zeros = {n: torch.zeros_like(w) for n, w in state.weights.items()}
    shift = torch.arange(4, dtype=torch.double).reshape(1, 1, 4, 1).expand(2, 2, 4, 1)
    x = torch.randn(2, 2, 3, 4, dtype=torch.double)
    # W1 = W2 = 0, b1 = 0: M(x) = x + W2 gelu(0) + b2 = x + b2
    assert_close(rule.read({**zeros, "w2_bias": shift}, x), x + shift.transpose(-1, -2))
    q, k, v, gates, _ = random_inputs(rule, seq=9)
    for path in ("chunked", "recurrent"):
        _, after = memory_op(rule, q, k, v, gates, chunk_size=4, path=path)
        for name in ("w1_bias", "w2_bias"):
            assert (after.weights[name] - state.weights[name]).abs().max() > 1e-4, (path, name)


def test_no_bias_keeps_the_weights_and_checkpoint_names_of_before():
    assert set(make_rule("mlp", "l2", "decay", "gd").arch.init) == {"w1", "w2"}
    assert set(make_rule("gated_mlp", "l2", "decay", "gd", options={"memory": BIASED}).arch.init) == {
        "w1", "w1_bias", "w3", "w3_bias", "w2", "w2_bias"
    }  # fmt: skip


def test_gradients_reach_every_bias_w_init():
    rule = biased_mlp_rule()
    check_gradients_reach(rule, what="biased mlp")  # every parameter of the rule, these among them
    assert {"arch.init.w1_bias", "arch.init.w2_bias"} <= {n for n, _ in rule.named_parameters()}
    assert rule.arch.init["w1_bias"].grad.abs().sum() > 0 and rule.arch.init["w2_bias"].grad.abs().sum() > 0


@pytest.mark.parametrize("memory", ["mlp", "gated_mlp"])
def test_the_engine_derives_the_bias_factors_from_the_maps_deltas(memory):
    """mlp's and gated_mlp's analytic_factors name only their weights; the engine adds (1, delta)
    for each bias, and the kit compares it all with autograd through forward (1e-10)."""
    rule = make_rule(memory, "l2", "decay", "momentum", options={"memory": BIASED})
    _, k, v, gates, _ = random_inputs(rule, seq=5)
    weights = rule.initial_state(2).weights

    def linear(name, h):
        return h @ weights[name].transpose(-1, -2)

    written = rule.arch.analytic_factors(
        k, rule.arch.affine(linear), lambda name, d: d @ weights[name], lambda pred: pred - v
    )
    assert not any(name.endswith("_bias") for name in written)
    factors = rule.factors(weights, k, v, gates)
    for name, bias in rule.arch.biases.items():
        h, delta = factors[bias]
        assert h.shape[-1] == 1 and bool((h == 1).all())
        assert_close(delta, factors[name][1], 0.0)
    check_inner_factors(rule, what=f"{memory}[bias]")


RULES = [
    ("decay", "momentum"),
    ("none", "gd"),
    ({"name": "decay", "gradient_at": "decayed"}, "gd"),
    ("lq_norm", "momentum"),
    ("elastic_net", "gd"),
    ("decay", {"name": "muon", "ns_steps": 3}),
]


@pytest.mark.parametrize("memory", ["mlp", "gated_mlp"])
@pytest.mark.parametrize(("retention", "algorithm"), RULES, ids=str)
def test_biased_memories_pass_the_kit_under_every_retention_and_algorithm_that_takes_them(
    memory, retention, algorithm
):
    """chunked == recurrent at chunks 1, 3 and 5 of 12 tokens, continuing a carried state,
    decoding, a short sequence, gradients, inner factors, finiteness (the kit's ``check_rule``)."""
    check_rule(RuleCase({"name": memory, **BIASED}, "l2", retention, algorithm))


def test_a_biased_memory_under_an_omega_window_and_a_channelwise_learning_rate():
    check_rule(RuleCase({"name": "mlp", **BIASED}, {"name": "omega", "window": 3}, "decay", "momentum"))
    check_rule(RuleCase({"name": "gated_mlp", **BIASED}, "huber", "decay", "gd", channelwise=("lr",)))


def test_per_token_steps_at_chunk_1_take_the_bias_too():
    rule = biased_mlp_rule()
    q, k, v, gates, _ = random_inputs(rule, seq=6)
    mini, _ = memory_op(rule, q, k, v, gates, chunk_size=1, path="recurrent")
    per_token, _ = memory_op(rule, q, k, v, gates, chunk_size=1, path="chunked", inner_steps="per_token")
    assert_close(per_token, mini)


def test_muon_orthogonalises_the_matrices_and_leaves_the_biases_their_momentum_steps():
    """After one chunk every gradient was taken at W_init under both algorithms (same gates), so
    the raw momentum steps are the same: muon replaces the matrices' by Newton-Schulz and keeps
    the biases' (a (d, 1) weight has no direction to orthogonalise)."""
    muon = biased_mlp_rule("muon", normalized=True)
    momentum = biased_mlp_rule("momentum", normalized=True)
    momentum.arch.load_state_dict(muon.arch.state_dict())  # the same W_init
    q, k, v, gates, _ = random_inputs(muon, seq=4)
    _, after_muon = memory_op(muon, q, k, v, gates, chunk_size=4, path="chunked")
    _, after_momentum = memory_op(momentum, q, k, v, gates, chunk_size=4, path="chunked")
    for name in ("w1_bias", "w2_bias"):
        assert_close(after_muon.weights[name], after_momentum.weights[name])
    for name in ("w1", "w2"):
        assert (after_muon.weights[name] - after_momentum.weights[name]).abs().max() > 1e-4


def test_kl_retention_refuses_a_biased_memory_with_the_reason():
    with pytest.raises(
        RecipeError, match=r"retention 'kl' cannot update the biases \['w1_bias', 'w2_bias'\]"
    ):
        make_rule("mlp", "l2", "kl", "gd", options={"memory": BIASED})
    make_rule("mlp", "l2", "kl", "gd")  # without biases it runs


class BiasedLinearMap(MemoryArchitecture):
    linear_map = True  # wrong with a bias: the matrix memory's fast paths have no bias

    def __init__(self, heads: int = 2, d: int = 4):
        super().__init__(heads, d, d)
        self.make_init("w", d, d, bias=True)

    def forward(self, x, linear):
        return linear("w", x)


def test_a_linear_map_architecture_with_a_bias_and_a_weight_declared_twice_are_refused():
    from miraslab.memory.rule.memory_rule import MemoryRule

    rule = make_rule("linear", "l2", "none", "gd")
    with pytest.raises(ValueError, match=r"declares linear_map .* but has a bias"):
        MemoryRule(BiasedLinearMap(), rule.bias, rule.retention, rule.algorithm)
    arch = BiasedLinearMap()
    with pytest.raises(ValueError, match="inner weight 'w_bias' is declared twice"):
        arch.make_init("w_bias", 4, 4)


def test_a_biased_memory_inside_the_memory_layer_and_a_tnt_model():
    """The layer's contracts (paths, decoding, causality, every parameter trained), and a TNT
    model whose local memories reset to their W_init (biases included) every shard."""
    check_memory_layer(memory={"name": "mlp", **BIASED}, retention="decay", algorithm="momentum")
    tnt = {"global_chunk": 4, "local_chunks": [2], "shard_length": 6, "mixer": "sum"}
    memory = {"chunk_size": 3, "memory": {"name": "gated_mlp", **BIASED}}
    check_model(tiny_model("mag", tnt=tnt, memory=memory), what="tnt with a biased gated_mlp")
