"""Per-token inner steps (``inner_steps = "per_token"``): the chunked path equals the published
per-token recurrences at every chunk size, and the recurrent path.

Oracles are written here, independently of the engine, as the papers state them:

* DeltaNet (Schlag et al. 2021; Yang et al. arXiv 2406.06484):
  S_t = S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,  o_t = S_t q_t
* Gated DeltaNet (arXiv 2412.06464 eq. 10): S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T
* the delta rule with the gradient at S_{t-1} (Titans without momentum, decay ``gradient_at = "previous"``):
  S_t = alpha_t S_{t-1} - beta_t (S_{t-1} k_t - v_t) k_t^T
* gated linear attention (dot bias): S_t = alpha_t S_{t-1} + beta_t v_t k_t^T
* Titans' momentum (arXiv 2501.00663 eq. 13-14): Z_t = eta_t Z_{t-1} - theta_t grad_t, S_t = alpha_t S_{t-1} + Z_t
* channel-wise gates: alpha_t, eta_t or beta_t per value channel, i.e. diag(.) on the left.

Tolerance: float64, atol 1e-10 (the paths differ only in summation order; the mini-batch
semantics differ from these by more than 1e-2 at chunk 16, checked below).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import REPO
from memory_cases import make_rule, random_inputs

from miraslab.errors import RecipeError
from miraslab.memory.layer import MemoryLayer
from miraslab.memory.paths.chunked_per_token import chunked_per_token, per_token_problem
from miraslab.memory.paths.memory_op import memory_op
from miraslab.memory.paths.tokens import Tokens
from miraslab.recipe.resolve import load_recipe

ATOL = 1e-10
SEQ, SPLIT = 150, 53  # not a multiple of 16 or 64; the split continues mid-chunk


def _diag(gate: torch.Tensor) -> torch.Tensor:
    """(B, H) -> a scalar per head; (B, H, d) -> diag(gate) on the left of a (d x d) state."""
    return gate[..., None, None] if gate.dim() == 2 else gate[..., None]


def published(q, k, v, theta, start, kind, alpha=None, eta=None, normalized=False, momentum0=None):
    """The per-token recurrences of the module docstring: outputs, final S (and momentum Z).

    ``kind``: "delta" (gradient at the decayed state: DeltaNet / Gated DeltaNet), "previous"
    (gradient at S_{t-1}) or "hebbian" (dot bias).  theta, alpha, eta (B, H, T) or (B, H, T, d).
    """
    seq = k.shape[2]
    state, z = start.clone(), momentum0.clone() if momentum0 is not None else None
    outs = []
    for t in range(seq):
        kt, vt = k[:, :, t, :, None], v[:, :, t, :, None]  # columns
        b = _diag(theta[:, :, t])
        if normalized:
            b = b / (kt * kt).sum((-1, -2), keepdim=True)
        a = _diag(alpha[:, :, t]) if alpha is not None else 1.0
        if kind == "delta" and z is None:  # S_t = a S (I - b k k^T) + b v k^T, b per row on the left
            state = a * state - b * (a * state) @ kt @ kt.mT + b * vt @ kt.mT
        elif kind == "delta":  # momentum, gradient at a S_{t-1}
            z = _diag(eta[:, :, t]) * z - b * ((a * state) @ kt - vt) @ kt.mT
            state = a * state + z
        else:
            error = state @ kt - vt if kind == "previous" else -vt
            update = -b * error @ kt.mT
            if z is not None:
                z = _diag(eta[:, :, t]) * z + update
                update = z
            state = a * state + update
        outs.append((state @ q[:, :, t, :, None]).squeeze(-1))
    return torch.stack(outs, dim=2), state, z


# (bias, retention, algorithm, gradient_at, channel-wise gates, normalized, oracle kind)
CASES = {
    "deltanet": ("l2", "none", "gd", "previous", (), False, "delta"),
    "gated-deltanet": ("l2", "decay", "gd", "decayed", (), False, "delta"),
    "delta-decay-previous": ("l2", "decay", "gd", "previous", (), False, "previous"),
    "gated-deltanet-channelwise": ("l2", "decay", "gd", "decayed", ("decay",), False, "delta"),
    "delta-channelwise-lr-decay": ("l2", "decay", "gd", "previous", ("decay", "lr"), False, "previous"),
    "delta-normalized": ("l2", "decay", "gd", "decayed", (), True, "delta"),
    "gated-linear-attention": ("dot", "decay", "gd", "previous", (), False, "hebbian"),
    "hebbian-channelwise": ("dot", "decay", "gd", "previous", ("decay",), False, "hebbian"),
    "momentum-delta": ("l2", "decay", "momentum", "previous", (), False, "previous"),
    "momentum-gated-channelwise": (
        "l2",
        "decay",
        "momentum",
        "decayed",
        ("decay", "momentum"),
        False,
        "delta",
    ),
}


def case_rule(name: str, d: int = 8):
    bias, retention, algorithm, gradient_at, channelwise, normalized, kind = CASES[name]
    options = {
        "memory": {"init": "normal"},  # a non-zero W_init: the carried state matters
        "algorithm": {"normalized": normalized},
        "retention": {"gradient_at": gradient_at} if retention == "decay" else {},
    }
    if algorithm == "momentum":
        options["algorithm"] |= {"lr_init": 0.3, "lr_max": 0.6}
    rule = make_rule("linear", bias, retention, algorithm, d=d, options=options, channelwise=channelwise)
    return rule, kind, normalized


def case_inputs(rule, normalized: bool, seq: int = SEQ, seed: int = 0):
    q, k, v, gates, _ = random_inputs(rule, seq=seq, d=8, seed=seed)
    if normalized:  # keys of varied norms: the normalised step divides by ||k||^2
        k = k * torch.linspace(0.5, 2.0, seq, dtype=k.dtype)[:, None]
    return q, k, v, gates


def oracle(rule, kind, normalized, q, k, v, gates):
    start = rule.initial_state(q.shape[0])
    alpha = torch.exp(gates["decay"]) if "decay" in gates else None
    eta = torch.exp(gates["momentum"]) if "momentum" in gates else None
    z0 = start.momentum["w"] if start.momentum is not None else None
    return published(q, k, v, gates["lr"], start.weights["w"], kind, alpha, eta, normalized, z0)


@pytest.mark.parametrize("name", list(CASES))
def test_per_token_chunked_is_the_published_recurrence_at_every_chunk_size(name):
    rule, kind, normalized = case_rule(name)
    q, k, v, gates = case_inputs(rule, normalized)
    expected, final, final_z = oracle(rule, kind, normalized, q, k, v, gates)
    for chunk in (1, 16, 64):
        y, state = chunked_per_token(rule, Tokens(q, k, v, gates), rule.initial_state(2), chunk)
        torch.testing.assert_close(y, expected, atol=ATOL, rtol=0, msg=f"{name}, chunk {chunk}")
        torch.testing.assert_close(state.weights["w"], final, atol=ATOL, rtol=0)
        if final_z is not None:
            torch.testing.assert_close(state.momentum["w"], final_z, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["gated-deltanet", "gated-deltanet-channelwise", "momentum-delta"])
def test_per_token_chunked_continues_from_a_carried_state(name):
    """Two calls (split mid-chunk) equal one, and the recurrent path at chunk 1 equals both."""
    rule, kind, normalized = case_rule(name)
    q, k, v, gates = case_inputs(rule, normalized)
    expected, final, _ = oracle(rule, kind, normalized, q, k, v, gates)
    part = (slice(0, SPLIT), slice(SPLIT, SEQ))
    cut = [(q[:, :, p], k[:, :, p], v[:, :, p], {n: g[:, :, p] for n, g in gates.items()}) for p in part]
    y1, state = chunked_per_token(rule, Tokens(*cut[0]), rule.initial_state(2), 16)
    y2, state = chunked_per_token(rule, Tokens(*cut[1]), state, 16)
    torch.testing.assert_close(torch.cat([y1, y2], dim=2), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(state.weights["w"], final, atol=ATOL, rtol=0)
    y_rec, rec_state = memory_op(rule, q, k, v, gates, chunk_size=1, path="recurrent")
    torch.testing.assert_close(y_rec, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(rec_state.weights["w"], final, atol=ATOL, rtol=0)


def test_mini_batch_semantics_differ_at_chunk_16():
    """The oracle tells the two semantics apart: at chunk 16 mini-batch is another model."""
    rule, kind, normalized = case_rule("deltanet")
    q, k, v, gates = case_inputs(rule, normalized, seq=48)
    expected, _, _ = oracle(rule, kind, normalized, q, k, v, gates)
    y, _ = memory_op(rule, q, k, v, gates, chunk_size=16)
    assert (y - expected).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["deltanet", "gated-deltanet-channelwise", "momentum-gated-channelwise"])
def test_per_token_gradients_equal_autograd_through_the_recurrent_path(name):
    """d/dq, d/dk, d/dv, every gate and W_init (float64, atol 1e-9) at chunk 16, 37 tokens."""
    rule, _, normalized = case_rule(name)
    q, k, v, gates = case_inputs(rule, normalized, seq=37, seed=1)
    leaves = {"q": q, "k": k, "v": v, **{f"gate {n}": g.detach() for n, g in gates.items()}}
    leaves = {n: t.detach().clone().requires_grad_() for n, t in leaves.items()}
    weight = torch.randn(2, 2, 37, 8, dtype=torch.double, generator=torch.Generator().manual_seed(3))

    def grads(run):
        rule.zero_grad()
        g = {n[5:]: t for n, t in leaves.items() if n.startswith("gate ")}
        y, state = run(leaves["q"], leaves["k"], leaves["v"], g)
        ((y * weight).sum() + state.weights["w"].pow(2).sum()).backward()
        out = {n: t.grad.clone() for n, t in leaves.items()}
        out["W_init"] = rule.arch.init["w"].grad.clone()
        for t in leaves.values():
            t.grad = None
        return out

    chunked = grads(lambda q, k, v, g: chunked_per_token(rule, Tokens(q, k, v, g), rule.initial_state(2), 16))
    recurrent = grads(lambda q, k, v, g: memory_op(rule, q, k, v, g, chunk_size=1, path="recurrent"))
    for n in recurrent:
        assert recurrent[n].abs().max() > 0, n
        torch.testing.assert_close(chunked[n], recurrent[n], atol=1e-9, rtol=0, msg=n)


def test_decode_continues_a_per_token_chunked_prefix_exactly():
    """Chunked prefix at chunk 64, then token-by-token decoding: the full sequence's reads."""
    rule, kind, normalized = case_rule("gated-deltanet")
    q, k, v, gates = case_inputs(rule, normalized, seq=80)
    expected, _, _ = oracle(rule, kind, normalized, q, k, v, gates)
    y, state = chunked_per_token(rule, Tokens(q, k, v, gates).at(slice(70)), rule.initial_state(2), 64)
    outs = [y]
    for t in range(70, 80):
        y, state = memory_op(
            rule,
            q[:, :, t : t + 1],
            k[:, :, t : t + 1],
            v[:, :, t : t + 1],
            {n: g[:, :, t : t + 1] for n, g in gates.items()},
            state,
            chunk_size=1,
            path="recurrent",
        )
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, dim=2), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        (("mlp", "l2", "decay", "gd"), "not a single matrix"),
        (("linear", "lp", "decay", "gd"), "not affine in the prediction"),
        (("linear", "omega", "decay", "gd"), "Omega window"),
        (("linear", "l2", "decay", "muon"), "non-linear step"),
        (("linear", "l2", "kl", "gd"), "non-linear step"),
    ],
)
def test_combinations_without_an_exact_chunk_parallel_form_are_refused(parts, reason):
    rule = make_rule(*parts)
    problem = per_token_problem(rule.arch, rule.bias, rule.retention, rule.algorithm)
    assert problem is not None and reason in problem
    q, k, v, gates, _ = random_inputs(rule, seq=5)
    with pytest.raises(ValueError, match=reason):
        chunked_per_token(rule, Tokens(q, k, v, gates), rule.initial_state(2), 4)


def test_a_state_left_mid_chunk_by_mini_batch_steps_is_refused():
    rule, _, normalized = case_rule("deltanet")
    q, k, v, gates = case_inputs(rule, normalized, seq=5)
    _, state = memory_op(rule, q, k, v, gates, chunk_size=4)
    assert state.offset == 1
    with pytest.raises(ValueError, match="mini-batch chunk"):
        chunked_per_token(rule, Tokens(q, k, v, gates), dataclasses.replace(state), 4)


def test_the_layer_runs_per_token_steps_on_both_paths_and_decodes():
    """MemoryLayer.from_options(inner_steps="per_token") at chunk 16: chunked == recurrent, and a chunked
    prefix continued token by token (the decoding path) == one call (float64, atol 1e-10)."""
    torch.manual_seed(0)
    layer = MemoryLayer.from_options(
        16,
        heads=2,
        memory="linear",
        retention={"name": "decay", "gradient_at": "decayed"},
        algorithm="gd",
        chunk_size=16,
        inner_steps="per_token",
    ).double()
    x = torch.randn(2, 41, 16, dtype=torch.double)
    chunked = layer(x)
    torch.testing.assert_close(layer(x, path="recurrent"), chunked, atol=ATOL, rtol=0)
    y, state = layer(x[:, :30], return_state=True)
    outs = [y]
    for t in range(30, 41):
        y, state = layer(x[:, t : t + 1], state, return_state=True, path="recurrent")
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, dim=1), chunked, atol=ATOL, rtol=0)
    mini_batch = MemoryLayer.from_options(
        16,
        heads=2,
        memory="linear",
        retention={"name": "decay", "gradient_at": "decayed"},
        algorithm="gd",
        chunk_size=16,
    ).double()
    mini_batch.load_state_dict(layer.state_dict())
    assert (mini_batch(x) - chunked).abs().max() > 1e-6  # the key reaches the engine


def test_deltanet_recipes_run_per_token_steps_and_a_deep_memory_is_refused_at_load(tmp_path):
    for name in ("deltanet", "gated-deltanet"):
        recipe = load_recipe(REPO / "recipes" / "papers" / f"{name}.toml")
        assert (recipe.model.memory.inner_steps, recipe.model.memory.chunk_size) == ("per_token", 64)
    deep = tmp_path / "deep.toml"
    deep.write_text(
        f'extends = "{REPO / "recipes" / "papers" / "deltanet.toml"}"\n[model.memory]\nmemory = "mlp"\n'
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(deep)
    message = str(info.value)
    assert "model.memory: inner_steps = 'per_token'" in message and "chunk_size 64" in message
    assert len(message.strip().splitlines()) == 1
    one = tmp_path / "deep1.toml"
    one.write_text(f'extends = "{deep}"\n[model.memory]\nchunk_size = 1\n')
    load_recipe(one)  # per-token at chunk 1 is the mini-batch step: every rule has it
    tnt = REPO / "recipes" / "papers" / "tnt.toml"  # a deep memory at TNT's own chunk sizes
    with pytest.raises(RecipeError, match="chunk_size 2048: memory 'mlp'"):
        load_recipe(tnt, ['model.memory.inner_steps="per_token"', "model.memory.chunk_size=1"])
