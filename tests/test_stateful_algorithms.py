"""Learning algorithms with state of their own (``LearningAlgorithm.stateful``): nesterov, adam,
adagrad and dmgd on the general path (``paths.general``).

Each built-in is held to a per-token oracle written here from its paper's equations (and
nesterov, adam, adagrad to torch.optim itself at constant gates); the chunked path to the
recurrent one at several chunk sizes and across a split call.  Tolerance: 1e-9 (absolute, on
values of order 1), float64 throughout: the paths run the same sums in the same order or differ
only in summation order.
"""

from __future__ import annotations

import math

import pytest
import torch

from miraslab import api
from miraslab.errors import RecipeError
from miraslab.memory.paths import chunked, chunked_affine, general
from miraslab.memory.paths.chunked_per_token import inner_steps_problem
from miraslab.memory.rule.axes import check_parts
from miraslab.testing import RuleCase, check_component, random_inputs

TOL = 1e-9
STATEFUL = ("nesterov", "adam", "adagrad", "dmgd")
SEQ = 11  # a multiple of none of the chunk sizes below


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.dtype == expected.dtype == torch.float64, what
    error = (actual - expected).abs().max().item()
    assert error <= TOL, f"{what}: max |difference| {error:.3g} > {TOL}"


# --- hand-written oracles: one token of each rule, from its paper's equations -----------------


def nesterov_oracle(w, state, g, gates, alpha):
    theta, eta = gates["lr"][..., None, None], gates["momentum"].exp()[..., None, None]
    b = g if state is None else eta * state + g  # b_t = eta_t b_{t-1} + g_t
    return alpha * w - theta * (g + eta * b), b


def adam_oracle(w, state, g, gates, alpha, eps=1e-8):
    m, v, p1, p2 = (torch.zeros_like(g), torch.zeros_like(g), 1.0, 1.0) if state is None else state
    b1, b2 = gates["beta1"].exp()[..., None, None], gates["beta2"].exp()[..., None, None]
    m, v, p1, p2 = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g, p1 * b1, p2 * b2
    step = gates["lr"][..., None, None] * (m / (1 - p1)) / ((v / (1 - p2)).sqrt() + eps)
    return alpha * w - step, (m, v, p1, p2)


def adagrad_oracle(w, state, g, gates, alpha, eps=1e-8, row=False):
    squares = (g * g).mean(-1, keepdim=True) if row else g * g
    big_g = squares if state is None else state + squares  # G_t = G_{t-1} + g_t^2
    return alpha * w - gates["lr"][..., None, None] * g / (big_g.sqrt() + eps), big_g


def dmgd_oracle(readout):
    def step(w, state, g, gates, alpha):
        theta, eta = gates["lr"][..., None, None], gates["momentum"].exp()[..., None, None]
        b = g if state is None else eta * state + g
        return alpha * w - theta * (b @ readout.transpose(-1, -2)), b  # readout (H, d, d) per head

    return step


def oracle_run(rule, oracle, q, k, v, gates, window: int = 1, omega: float = 1.0):
    """Chunk 1 on a linear memory with the l2 bias: g_t = (W_{t-1} k_t - v_t) k_t^T / ||k_t||^2
    (normalised LMS), alpha_t the retention's decay; outputs y_t = W_t q_t and the final W.
    With an (ungated) Omega window, g_t = sum_{j = t-window+1..t} omega^(t-j) g_j, each g_j
    at W_{t-1} (ATLAS's Omega rule)."""
    w = rule.initial_state(q.shape[0]).weights["w"]
    state, outputs = None, []
    for t in range(q.shape[2]):
        token = {n: x[:, :, t] for n, x in gates.items()}
        g = torch.zeros_like(w)
        for j in range(max(0, t - window + 1), t + 1):
            kj, vj = k[:, :, j], v[:, :, j]
            error = torch.einsum("bhoi,bhi->bho", w, kj) - vj
            g = (
                g
                + omega ** (t - j)
                * error[..., :, None]
                * kj[..., None, :]
                / kj.pow(2).sum(-1)[..., None, None]
            )
        log_alpha = rule.retention.log_alpha({n: x[:, :, t : t + 1] for n, x in gates.items()})
        alpha = log_alpha[:, :, 0].exp()[..., None, None] if log_alpha is not None else 1.0
        w, state = oracle(w, state, g, token, alpha)
        outputs.append(torch.einsum("bhoi,bhi->bho", w, q[:, :, t]))
    return torch.stack(outputs, dim=2), w


def _oracle_for(name: str, rule, options: dict):
    if name == "dmgd":
        with torch.no_grad():  # a readout away from its identity start, so P enters the check
            rule.algorithm.readout["w"].add_(0.2 * torch.randn_like(rule.algorithm.readout["w"]))
        return dmgd_oracle(rule.algorithm.readout["w"].detach())
    if name == "adagrad":
        return lambda *a: adagrad_oracle(*a, row=options.get("accumulate") == "row")
    return {"nesterov": nesterov_oracle, "adam": adam_oracle}[name]


@pytest.mark.parametrize(
    "name, options",
    [("nesterov", {}), ("adam", {}), ("adagrad", {}), ("adagrad", {"accumulate": "row"}), ("dmgd", {})],
)
@pytest.mark.parametrize("retention", ["none", "decay"])
def test_the_recurrent_path_equals_the_hand_written_oracle(name, options, retention):
    rule = RuleCase("linear", "l2", retention, {"name": name, **options}).build()
    oracle = _oracle_for(name, rule, options)
    q, k, v, gates, _ = random_inputs(rule, seq=SEQ, scale=2.0)  # |k| = 2: the normalisation matters
    with torch.no_grad():
        y, state = api.memory_op(rule, q, k, v, gates, chunk_size=1, path="recurrent")
        expected_y, expected_w = oracle_run(rule, oracle, q, k, v, gates)
    _close(y, expected_y, f"{name} outputs")
    _close(state.weights["w"], expected_w, f"{name} final weights")


@pytest.mark.parametrize("name", STATEFUL)
def test_with_an_omega_window_the_recurrent_path_equals_the_oracle(name):
    bias = {"name": "omega", "window": 3, "gated": False, "decay_base": 0.5}
    rule = RuleCase("linear", bias, "decay", name).build()
    oracle = _oracle_for(name, rule, {})
    q, k, v, gates, _ = random_inputs(rule, seq=SEQ, scale=2.0)
    with torch.no_grad():
        y, state = api.memory_op(rule, q, k, v, gates, chunk_size=1, path="recurrent")
        expected_y, expected_w = oracle_run(rule, oracle, q, k, v, gates, window=3, omega=0.5)
    _close(y, expected_y, f"{name} with Omega, outputs")
    _close(state.weights["w"], expected_w, f"{name} with Omega, final weights")


# --- torch.optim at constant gates ----------------------------------------------------------------


def _torch_optim_run(rule, optimizer, k, v, steps):
    """torch.optim on W (all batch elements and heads at once: their losses are independent),
    one step per token on that token's bias loss, as chunk 1 takes them."""
    w = torch.nn.Parameter(rule.initial_state(k.shape[0]).weights["w"].clone())
    opt = optimizer([w])
    for t in range(steps):
        opt.zero_grad()
        pred = torch.einsum("bhoi,bhi->bho", w, k[:, :, t]).unsqueeze(2)
        rule.bias.loss(pred, v[:, :, t].unsqueeze(2), {}).sum().backward()
        opt.step()
    return w.detach()


def _constant_gates(rule, batch: int, seq: int, values: dict[str, float]) -> dict[str, torch.Tensor]:
    defs = {d.name: d for d in rule.gate_defs()}
    assert set(defs) == set(values), defs
    return {
        n: torch.full(
            (batch, rule.arch.heads, seq),
            math.log(x) if defs[n].activation == "log_sigmoid" else x,
            dtype=torch.float64,
        )
        for n, x in values.items()
    }


@pytest.mark.parametrize(
    "name, gate_values, optimizer",
    [
        (
            "nesterov",
            {"lr": 0.05, "momentum": 0.8},
            lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True, dampening=0),
        ),
        (
            "adam",
            {"lr": 0.05, "beta1": 0.8, "beta2": 0.9},
            lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.9), eps=1e-8),
        ),
        ("adagrad", {"lr": 0.05}, lambda p: torch.optim.Adagrad(p, lr=0.05, eps=1e-8)),
    ],
)
def test_at_constant_gates_the_recurrent_path_is_torch_optim(name, gate_values, optimizer):
    rule = RuleCase("linear", "l2", "none", {"name": name, "normalized": False}).build()
    q, k, v, _, _ = random_inputs(rule, seq=SEQ, scale=2.0)
    gates = _constant_gates(rule, q.shape[0], SEQ, gate_values)
    with torch.no_grad():
        _, state = api.memory_op(rule, q, k, v, gates, chunk_size=1, path="recurrent")
    _close(state.weights["w"], _torch_optim_run(rule, optimizer, k, v, SEQ), f"{name} vs torch.optim")


# --- the chunked path: Titans' mini-batch semantics on the general path ---------------------------


def _algorithm_tensors(state) -> list[torch.Tensor]:
    out = []
    for value in state.algorithm_state.values():
        out += list(value.values()) if isinstance(value, dict) else [value]
    return out


@pytest.mark.parametrize(
    "memory, bias",
    [("linear", "l2"), ("mlp", "l2"), ("linear", {"name": "omega", "window": 3})],
    ids=["linear", "mlp", "omega"],
)
@pytest.mark.parametrize("name", STATEFUL)
def test_the_chunked_path_equals_the_recurrent_path_in_one_call_and_split(name, memory, bias):
    rule = RuleCase(memory, bias, "decay", name).build()
    q, k, v, gates, _ = random_inputs(rule, seq=SEQ, scale=2.0)
    split = 4  # mid-chunk at chunk 5, on a chunk boundary at chunks 1 and 2
    with torch.no_grad():
        for chunk in (1, 2, 5):
            y_rec, s_rec = api.memory_op(rule, q, k, v, gates, chunk_size=chunk, path="recurrent")
            y_chk, s_chk = api.memory_op(rule, q, k, v, gates, chunk_size=chunk, path="chunked")
            first = {n: x[:, :, :split] for n, x in gates.items()}
            rest = {n: x[:, :, split:] for n, x in gates.items()}
            y1, carried = api.memory_op(
                rule, q[:, :, :split], k[:, :, :split], v[:, :, :split], first, chunk_size=chunk
            )
            y2, s_split = api.memory_op(
                rule, q[:, :, split:], k[:, :, split:], v[:, :, split:], rest, carried, chunk_size=chunk
            )
            where = f"{name} {memory} chunk {chunk}"
            _close(y_chk, y_rec, f"{where}: outputs")
            _close(torch.cat([y1, y2], dim=2), y_rec, f"{where}: outputs over two calls")
            for final in (s_chk, s_split):
                for n in s_rec.weights:
                    _close(final.weights[n], s_rec.weights[n], f"{where}: weights {n}")
                for a, b in zip(_algorithm_tensors(final), _algorithm_tensors(s_rec), strict=True):
                    _close(a, b, f"{where}: the algorithm's state")


def test_the_gradient_point_is_the_chunk_start_state():
    """Inside a chunk every gradient is at the chunk-start weights: at chunk 3 the third token's
    update uses W_0, not W_2 (so chunk 3 differs from chunk 1)."""
    rule = RuleCase("linear", "l2", "none", "nesterov").build()
    q, k, v, gates, _ = random_inputs(rule, seq=3, scale=2.0)
    with torch.no_grad():
        _, one = api.memory_op(rule, q, k, v, gates, chunk_size=1, path="recurrent")
        _, three = api.memory_op(rule, q, k, v, gates, chunk_size=3, path="recurrent")
        w0 = rule.initial_state(2).weights["w"]
        grads = []
        for t in range(3):
            error = torch.einsum("bhoi,bhi->bho", w0, k[:, :, t]) - v[:, :, t]
            grads.append(error[..., :, None] * k[:, :, t, None, :] / 4.0)
        w, b = w0, None
        for t in range(3):
            w, b = nesterov_oracle(w, b, grads[t], {n: x[:, :, t] for n, x in gates.items()}, 1.0)
    _close(three.weights["w"], w, "chunk 3 with every gradient at W_0")
    assert (three.weights["w"] - one.weights["w"]).abs().max() > 1e-5  # far above TOL: a real difference


# --- the state is part of MemoryState ----------------------------------------------------------------


def test_the_algorithms_state_is_carried_by_memory_state_map_and_detach():
    rule = RuleCase("linear", "l2", "decay", "adam").build()
    q, k, v, gates, _ = random_inputs(rule, seq=5, requires_grad=True)
    _, state = api.memory_op(rule, q, k, v, gates, chunk_size=2)
    assert set(state.algorithm_state) == {"first", "second", "beta1_product", "beta2_product"}
    assert state.algorithm_state["first"]["w"].shape == state.weights["w"].shape
    assert state.algorithm_state["beta1_product"].shape == state.log_decay.shape  # (B, H): per head
    assert state.algorithm_state["first"]["w"].requires_grad
    detached = state.detach()
    assert not any(t.requires_grad for t in _algorithm_tensors(detached))
    halves = state.map(lambda t: t[:1])
    assert halves.algorithm_state["second"]["w"].shape[0] == 1


def test_a_row_state_has_one_value_per_output_row():
    rule = RuleCase("mlp", "l2", "none", {"name": "adagrad", "accumulate": "row"}).build()
    state = rule.initial_state(3)
    for name, w in state.weights.items():
        assert state.algorithm_state["squares"][name].shape == (*w.shape[:-1], 1)


# --- the outer loss trains what the algorithm adds ------------------------------------------------


@pytest.mark.parametrize("name", STATEFUL)
def test_the_outer_loss_reaches_the_algorithms_gates_and_parameters(name):
    rule = RuleCase("linear", "l2", "decay", name).build()
    q, k, v, _, projections = random_inputs(rule, seq=7, scale=2.0)
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    y, _ = api.memory_op(rule, q, k, v, projections(x), chunk_size=3)
    y.pow(2).sum().backward()
    grads = [p.grad for p in projections.parameters()] + [p.grad for p in rule.algorithm.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    if name == "dmgd":
        assert rule.algorithm.readout["w"].grad.abs().sum() > 0


def test_adam_stays_finite_where_a_gradient_entry_is_exactly_zero():
    """A zero key makes g_t = 0: sqrt(v^) at 0 would give the outer gradient inf * 0 = nan."""
    rule = RuleCase("linear", "l2", "none", "adam").build()
    q, k, v, _, projections = random_inputs(rule, seq=4)
    k = k.clone()
    k[:, :, 0] = 0.0
    y, _ = api.memory_op(rule, q, k, v, projections(torch.randn(2, 4, 8, dtype=torch.float64)), chunk_size=2)
    y.pow(2).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in projections.parameters())


# --- which path runs ----------------------------------------------------------------------------------


def _spy_on_the_general_path(monkeypatch) -> list[int]:
    calls = []
    original = general.general_piece

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(general, "general_piece", spy)
    return calls


@pytest.mark.parametrize("name", ["gd", "momentum", "muon"])
@pytest.mark.parametrize("memory", ["linear", "mlp"])
def test_gd_momentum_and_muon_keep_their_factored_paths(name, memory, monkeypatch):
    """The general path never runs for them; the chunked path takes the batched matrix-memory
    pass (linear memory, gd or momentum) or the dual form piece by piece (the others)."""
    calls = _spy_on_the_general_path(monkeypatch)
    fast = []
    for module, function in ((chunked_affine, "whole_chunks"), (chunked, "_piece")):
        original = getattr(module, function)
        monkeypatch.setattr(
            module, function, lambda *a, f=original, n=function, **kw: fast.append(n) or f(*a, **kw)
        )
    rule = RuleCase(memory, "l2", "decay", name).build()
    assert not rule.algorithm.stateful
    q, k, v, gates, _ = random_inputs(rule, seq=6)
    with torch.no_grad():
        for path in ("chunked", "recurrent"):
            api.memory_op(rule, q, k, v, gates, chunk_size=2, path=path)
    assert calls == []
    expected = "whole_chunks" if memory == "linear" and name != "muon" else "_piece"
    assert fast and set(fast) == {expected}, fast


@pytest.mark.parametrize("name", STATEFUL)
def test_stateful_algorithms_take_the_general_path(name, monkeypatch):
    calls = _spy_on_the_general_path(monkeypatch)
    rule = RuleCase("linear", "l2", "decay", name).build()
    q, k, v, gates, _ = random_inputs(rule, seq=6)
    with torch.no_grad():
        api.memory_op(rule, q, k, v, gates, chunk_size=4, path="chunked")
        assert len(calls) == 2  # a piece per chunk: 4 + 2 tokens
        api.memory_op(rule, q, k, v, gates, chunk_size=4, path="recurrent")
        assert len(calls) == 2 + 6  # a piece of one token per step


# --- what the general path refuses ----------------------------------------------------------------


def test_channelwise_gates_are_refused_naming_the_key():
    with pytest.raises(RecipeError, match=r"adam.*model\.memory\.gates\.channelwise_lr = false"):
        RuleCase("linear", "l2", "decay", "adam", channelwise=("lr",)).build()


def test_per_token_steps_above_chunk_1_are_refused():
    rule = RuleCase("linear", "l2", "none", "adagrad").build()
    problem = inner_steps_problem(rule.parts, "per_token", 4)
    assert problem is not None and "carries state of its own" in problem
    assert inner_steps_problem(rule.parts, "per_token", 1) is None


# --- the conformance kit and a recipe ------------------------------------------------------------------


@pytest.mark.parametrize("name", STATEFUL)
def test_the_kit_passes_and_holds_each_to_its_reference(name):
    report = check_component("algorithm", name)
    assert report.reference.startswith(f"algorithm '{name}': the recurrent path held to its reference_step")


@pytest.mark.parametrize("name", STATEFUL)
def test_a_quickstart_recipe_trains_each_for_three_steps(name, tmp_path, capsys):
    from conftest import REPO

    from miraslab.cli import main

    sets = [f"model.memory.algorithm={name}", "train.steps=3", "train.batch_size=4", "train.eval_batches=1"]
    argv = ["train", str(REPO / "recipes" / "quickstart.toml"), "--out", str(tmp_path / name)]
    code = main([*argv, *[a for s in sets for a in ("--set", s)]])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    assert "done: step 3/3" in out + err


def test_a_state_shape_other_than_entry_row_or_head_is_refused():
    with pytest.raises(ValueError, match=r"state m: shape must be one of \('entry', 'row', 'head'\)"):
        api.StateDef("m", "column")


def test_a_stateful_algorithm_without_state_or_with_engine_momentum_is_refused():
    class NoState(api.LearningAlgorithm):
        stateful = True
        momentum = True

    problems = check_parts(*RuleCase("linear", "l2", "none", "gd").build().parts[:3], NoState())
    assert any("declares no state_defs()" in p for p in problems), problems
    assert any("also declares momentum or nonlinear" in p for p in problems), problems
