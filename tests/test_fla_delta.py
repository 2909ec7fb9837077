"""The flash-linear-attention adapter (``paths.fla_delta``) held to our recurrent path.

FLA's Triton kernels need a GPU; on the CPU the adapter is driven through FLA's own
pure-PyTorch reference recurrences (``fla/ops/*/naive.py`` of the installed package,
loaded by file: ``import fla.ops`` needs triton), wrapped to the kernels' signatures.
Those references compute in float32 whatever they are given, so the float64 oracle
(our recurrent path) is met at float32's tolerance: 2e-5 absolute on reads and states
of order 1.  A convention error (scale, transposed state, beta or g) is of order 1.

Install for these tests: ``pip install fla-core einops`` (no triton, no CUDA needed; in
the ``test`` extra).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import itertools
from pathlib import Path

import pytest
import torch
from memory_cases import make_rule, random_inputs

from miraslab.data.documents import PackedDocuments
from miraslab.errors import MiraslabError, RecipeError
from miraslab.memory.layer import MemoryLayer
from miraslab.memory.paths import fla_delta
from miraslab.memory.paths.memory_op import memory_op

ATOL = 2e-5  # float32 arithmetic inside FLA's references, against our float64 recurrence


def _naive_file(relative: str) -> Path | None:
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.exists() else None


@functools.cache
def _naive_module(relative: str):
    path = _naive_file(relative)
    spec = importlib.util.spec_from_file_location(f"_fla_naive_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports torch and einops only
    return module


def _why_no_references() -> str | None:
    if importlib.util.find_spec("einops") is None:
        return "einops is not installed (FLA's reference files import it): pip install einops"
    for relative in ("ops/delta_rule/naive.py", "ops/gated_delta_rule/naive.py"):
        if _naive_file(relative) is None:
            return f"flash-linear-attention's fla/{relative} is not installed: pip install fla-core"
    return None


needs_references = pytest.mark.skipif(_why_no_references() is not None, reason=str(_why_no_references()))

CHUNK = 8  # the reference chunk form's block: several blocks and a ragged tail at SEQ
SEQ = 21


def reference_kernels() -> fla_delta.FLAKernels:
    """FLA's naive recurrences behind the four kernel signatures ([B, T, H, d], state [B, H, K, V])."""
    delta = _naive_module("ops/delta_rule/naive.py")
    gated = _naive_module("ops/gated_delta_rule/naive.py")

    def chunk_gated(q, k, v, g, beta, scale, initial_state, output_final_state):
        return gated.naive_chunk_gated_delta_rule(
            q, k, v, g, beta, chunk_size=CHUNK, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state,
        )  # fmt: skip

    def recurrent_gated(q, k, v, g, beta, scale, initial_state, output_final_state):
        return gated.naive_recurrent_gated_delta_rule(
            q, k, v, beta, g, scale=scale, initial_state=initial_state, output_final_state=output_final_state
        )

    def chunk_delta(q, k, v, beta, scale, initial_state, output_final_state):
        # FLA has no chunked delta-rule reference with an initial state: its gated one at g = 0
        g = torch.zeros_like(beta)
        return chunk_gated(q, k, v, g, beta, scale, initial_state, output_final_state)

    def recurrent_delta(q, k, v, beta, scale, initial_state, output_final_state):
        # delta_rule_recurrence is head-first and scales q by d_k^-1/2 itself
        d_key = q.shape[-1]
        heads_first = [x.transpose(1, 2) for x in (q * (scale * d_key**0.5), k, v, beta)]
        out, state = delta.delta_rule_recurrence(*heads_first, initial_state, output_final_state)
        return out.transpose(1, 2), state

    return fla_delta.FLAKernels(
        chunk_delta,
        chunk_gated,
        recurrent_delta,
        recurrent_gated,
        version="naive",
        devices=frozenset({"cpu"}),
        dtypes=frozenset({torch.float32, torch.float64}),
    )


RULES = {
    "delta": ({"retention": "none"}, False),
    "delta-normalized": ({"retention": "none"}, True),
    "gated-delta": ({"retention": "decay", "gradient_at": "decayed"}, False),
}


def rule_and_inputs(name: str, seq: int = SEQ, seed: int = 0):
    parts, normalized = RULES[name]
    options = {"memory": {"init": "normal"}, "algorithm": {"normalized": normalized}}  # W_init != 0
    if "gradient_at" in parts:
        options["retention"] = {"gradient_at": parts["gradient_at"]}
    rule = make_rule("linear", "l2", parts["retention"], "gd", d=8, options=options)
    q, k, v, gates, _ = random_inputs(rule, seq=seq, d=8, seed=seed)
    if normalized:  # keys of varied norms: beta = theta / ||k||^2
        k = k * torch.linspace(0.5, 2.0, seq, dtype=k.dtype)[:, None]
    return rule, q, k, v, gates


def run(rule, q, k, v, gates, state=None, path="chunked", kernel="native"):
    return memory_op(rule, q, k, v, gates, state, 4, path, inner_steps="per_token", kernel=kernel)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a.double(), b.double(), rtol=0, atol=ATOL)


def spying(kernels: fla_delta.FLAKernels, calls: list[str]) -> fla_delta.FLAKernels:
    """``kernels`` noting in ``calls`` which of the four ran."""

    def spy(name):
        def call(*args, **kwargs):
            calls.append(name)
            return getattr(kernels, name)(*args, **kwargs)

        return call

    names = ("chunk_delta", "chunk_gated", "recurrent_delta", "recurrent_gated")
    return dataclasses.replace(kernels, **{name: spy(name) for name in names})


@needs_references
@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize(
    ("path", "grad", "seq", "form"),
    [
        ("chunked", True, SEQ, "chunk"),  # training
        ("recurrent", True, SEQ, "chunk"),  # FLA's fused recurrent gated rule has no backward
        ("chunked", False, SEQ, "recurrent"),  # fewer tokens than FLA's block of 64: a decode step
        ("chunked", False, 70, "chunk"),  # a long prompt
        ("recurrent", False, 70, "recurrent"),
    ],
)
def test_fla_kernels_equal_our_recurrent_path_in_float64(name, path, grad, seq, form):
    rule, q, k, v, gates = rule_and_inputs(name, seq=seq)
    want, want_state = run(rule, q, k, v, gates, path="recurrent")
    calls = []
    with fla_delta.use_kernels(spying(reference_kernels(), calls)), torch.set_grad_enabled(grad):
        got, got_state = run(rule, q, k, v, gates, path=path, kernel="fla")
    assert len(calls) == 1 and calls[0].startswith(form)
    assert close(got, want)
    assert close(got_state.weights["w"], want_state.weights["w"])
    assert got_state.offset == 0 and got_state.weights["w"].dtype == torch.float64


@needs_references
@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize("first", ["fla", "native"])
def test_a_state_from_one_backend_continues_on_the_other(name, first):
    rule, q, k, v, gates = rule_and_inputs(name)
    want, want_state = run(rule, q, k, v, gates, path="recurrent")
    second = "native" if first == "fla" else "fla"
    cut = 13

    def part(x, piece):
        return x[:, :, piece]

    head, tail = slice(0, cut), slice(cut, None)
    with fla_delta.use_kernels(reference_kernels()):
        y1, middle = run(rule, *(part(x, head) for x in (q, k, v)), {n: part(g, head) for n, g in gates.items()}, kernel=first)  # fmt: skip
        y2, end = run(
            rule, *(part(x, tail) for x in (q, k, v)), {n: part(g, tail) for n, g in gates.items()}, middle, kernel=second
        )  # fmt: skip
    assert close(torch.cat([y1, y2], dim=2), want)
    assert close(end.weights["w"], want_state.weights["w"])


@needs_references
def test_the_delta_rule_takes_chunk_delta_rule_in_bf16_and_the_gated_rule_at_g_0_in_fp32():
    """FLA's chunk_delta_rule refuses float32 inputs; bf16 inputs are held at bf16's tolerance
    (3e-2 of the scale: q, k, v and beta rounded to 8 bits)."""
    rule, q, k, v, gates = rule_and_inputs("delta")
    want, _ = run(rule, q, k, v, gates, path="recurrent")
    calls = []
    kernels = dataclasses.replace(
        spying(reference_kernels(), calls), dtypes=frozenset({torch.float32, torch.bfloat16})
    )
    results = {}
    with fla_delta.use_kernels(kernels):
        for dtype in (torch.float32, torch.bfloat16):
            inputs = [x.to(dtype) for x in (q, k, v)]
            results[dtype], _ = run(rule, *inputs, {n: g.to(dtype) for n, g in gates.items()}, kernel="fla")
    assert calls == ["chunk_gated", "chunk_delta"]
    assert close(results[torch.float32], want)
    scale = want.abs().max()
    assert (results[torch.bfloat16].double() - want).abs().max() <= 3e-2 * scale


@needs_references
def test_fla_state_is_our_matrix_transposed():
    rule, q, k, v, gates = rule_and_inputs("gated-delta")
    _, state = run(rule, q, k, v, gates, path="recurrent")
    qf, kf, vf, beta, g = fla_delta.fla_inputs(rule, q, k, v, gates)
    initial = fla_delta.fla_state(rule.initial_state(q.shape[0]).weights["w"])
    _, final = reference_kernels().recurrent_gated(qf, kf, vf, g, beta, 1.0, initial, True)
    assert final.shape == (2, rule.arch.heads, rule.arch.d_in, rule.arch.d_out)  # [B, H, K, V]
    assert close(fla_delta.weights_from_fla(final), state.weights["w"])


@needs_references
@pytest.mark.parametrize("name", ["delta", "gated-delta"])
def test_gradients_through_the_fla_chunk_kernels_equal_ours(name):
    def grads(kernel):
        torch.manual_seed(0)
        layer = MemoryLayer.from_options(
            16,
            heads=2,
            memory="linear",
            bias="l2",
            retention={"name": "decay", "gradient_at": "decayed"} if name == "gated-delta" else "none",
            algorithm="gd",
            inner_steps="per_token",
            chunk_size=4,
            kernel=kernel,
        ).double()
        x = torch.randn(2, SEQ, 16, dtype=torch.double, generator=torch.Generator().manual_seed(1))
        y = layer(x)
        y.pow(2).sum().backward()
        return y.detach(), {n: p.grad for n, p in layer.named_parameters()}

    want_y, want = grads("native")
    with fla_delta.use_kernels(reference_kernels()):
        got_y, got = grads("fla")
    assert close(got_y, want_y)
    for name_, grad in want.items():  # every gate projection gets the same gradient (2e-4: fp32 sums)
        assert torch.allclose(got[name_], grad, rtol=1e-4, atol=2e-4), name_


@pytest.mark.parametrize(
    ("parts", "options", "reason"),
    [
        (("mlp", "l2", "none", "gd"), {}, "single matrix memory"),
        (("linear", "dot", "none", "gd"), {}, "s W k + b"),
        (("linear", "l2", "none", "momentum"), {}, "one plain gradient step"),
        (("linear", "l2", "decay", "gd"), {"retention": {"gradient_at": "previous"}}, "decayed state"),
    ],
)
def test_rules_outside_the_delta_family_stay_on_our_path(parts, options, reason):
    rule = make_rule(*parts, d=8, options=options)
    assert reason in fla_delta.rule_problem(rule)


def test_channelwise_gates_stay_on_our_path():
    rule = make_rule("linear", "l2", "none", "gd", d=8, channelwise_lr=True)
    assert "one value per head" in fla_delta.rule_problem(rule)


def test_auto_runs_our_path_on_the_cpu_and_says_why_once(capsys):
    rule, q, k, v, gates = rule_and_inputs("gated-delta")
    fla_delta._announced.clear()
    want, _ = run(rule, q, k, v, gates, kernel="native")
    got, _ = run(rule, q, k, v, gates, kernel="auto")
    run(rule, q, k, v, gates, kernel="auto")
    assert torch.equal(got, want)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "miraslab: per-token memory on miraslab's own chunked path (model.memory.kernel = 'native')",
        "miraslab: per-token memory on miraslab's own chunked path (model.memory.kernel = 'auto': "
        "the tensors are on cpu, FLA's kernels run on CUDA)",
    ]


def test_fla_forced_on_the_cpu_is_an_error_naming_the_key():
    rule, q, k, v, gates = rule_and_inputs("delta")
    gpu_only = (
        dataclasses.replace(reference_kernels(), devices=frozenset({"cuda"}))
        if _why_no_references() is None
        else None
    )
    if gpu_only is None:  # without the references: the installed package (or its absence) decides
        with pytest.raises(ValueError, match=r"model\.memory\.kernel = 'fla': "):
            run(rule, q, k, v, gates, kernel="fla")
        return
    with (
        fla_delta.use_kernels(gpu_only),
        pytest.raises(ValueError, match=r"model\.memory\.kernel = 'fla': .* on cpu"),
    ):
        run(rule, q, k, v, gates, kernel="fla")


def test_fla_forced_for_a_rule_it_cannot_run_is_refused_at_construction():
    with pytest.raises(
        RecipeError, match=r"model\.memory\.kernel = 'fla': FLA's kernels hold a single matrix"
    ):
        MemoryLayer.from_options(
            16, heads=2, memory="mlp", algorithm="gd", inner_steps="per_token", chunk_size=1, kernel="fla"
        )


def test_an_unknown_kernel_is_refused():
    with pytest.raises(
        MiraslabError, match=r"kernel: expected one of \"auto\", \"fla\", \"native\", got \"triton\""
    ):
        MemoryLayer.from_options(
            16, heads=2, memory="linear", algorithm="gd", inner_steps="per_token", kernel="triton"
        )


def variable_length(kernels: fla_delta.FLAKernels) -> fla_delta.FLAKernels:
    """``kernels`` with FLA's variable-length contract (its chunk kernels' docstrings): one row
    [1, total, H, d], ``cu_seqlens`` (N + 1 offsets), ``initial_state`` and the final state
    [N, H, K, V], each sequence run alone.  FLA's references have no ``cu_seqlens``, so this
    runs them once per sequence."""

    def split(kernel):
        def call(q, k, v, *, beta, scale, initial_state, output_final_state, cu_seqlens, g=None):
            assert q.shape[0] == 1 and cu_seqlens[0] == 0 and cu_seqlens[-1] == q.shape[1]
            assert initial_state.shape[0] == cu_seqlens.numel() - 1
            outs, finals = [], []
            for n, (a, b) in enumerate(itertools.pairwise(cu_seqlens.tolist())):
                part = {"beta": beta[:, a:b]} | ({"g": g[:, a:b]} if g is not None else {})
                out, final = kernel(
                    q[:, a:b], k[:, a:b], v[:, a:b], **part, scale=scale,
                    initial_state=initial_state[n : n + 1], output_final_state=output_final_state,
                )  # fmt: skip
                outs.append(out)
                finals.append(final)
            return torch.cat(outs, dim=1), torch.cat(finals, dim=0)

        return call

    return dataclasses.replace(
        kernels, chunk_delta=split(kernels.chunk_delta), chunk_gated=split(kernels.chunk_gated)
    )


def test_cu_seqlens_opens_every_row_and_every_marked_start():
    starts = torch.tensor([[False, False, True, False], [False, True, False, True]])
    assert fla_delta.cu_seqlens(starts).tolist() == [0, 2, 4, 5, 7, 8]


@needs_references
@pytest.mark.parametrize("name", list(RULES))
def test_packed_documents_through_fla_cu_seqlens_equal_each_document_alone(name):
    """Rows of 21 tokens, documents of 1 to 12 tokens (the other rows without a marked start):
    FLA's variable-length form, no padding, held to our recurrent path over each document
    alone from the initial state, reads and each row's last state, at the references'
    float32 tolerance (ATOL)."""
    from miraslab.memory.paths.per_token_documents import per_token_documents

    rule, q, k, v, gates = rule_and_inputs(name)
    rows = q.shape[0]
    assert rows >= 2
    starts = torch.zeros(rows, SEQ, dtype=torch.bool)
    starts[0, [5, 6, 18]] = True
    calls = []
    with fla_delta.use_kernels(spying(variable_length(reference_kernels()), calls)):
        y, state = per_token_documents(rule, q, k, v, gates, starts, 4, return_state=True, kernel="fla")
    assert calls == ["chunk_gated"]  # one call for the whole batch (the delta rule: the gated one at g = 0)
    for row in range(rows):
        bounds = [0, *starts[row].nonzero().squeeze(1).tolist(), SEQ]
        for a, b in itertools.pairwise(bounds):
            one = slice(row, row + 1)
            part = {n: g[one, :, a:b] for n, g in gates.items()}
            want, want_state = run(
                rule, q[one, :, a:b], k[one, :, a:b], v[one, :, a:b], part, path="recurrent"
            )
            assert close(y[one, :, a:b], want), (row, a, b)
        assert close(state.weights["w"][one], want_state.weights["w"]), row


@needs_references
@pytest.mark.parametrize("name", list(RULES))
def test_a_carried_state_starts_each_continuing_rows_first_fla_sequence(name):
    """``data.carry_state`` with documents: FLA's initial state per sequence is the carried
    state for the first sequence of a row that continues (row 0), W_init for every other (row
    1 opens with a marked start), held to our recurrent path over each document alone, the
    leading one from the carried state, reads and each row's last state, at ATOL."""
    from miraslab.memory.paths.per_token_documents import per_token_documents

    rule, q, k, v, gates = rule_and_inputs(name)
    before = rule_and_inputs(name, seq=6, seed=1)[1:]
    _, carried = run(rule, *before, path="recurrent")
    starts = torch.zeros(q.shape[0], SEQ, dtype=torch.bool)
    starts[0, [5, 6, 18]] = True
    starts[1, [0, 9]] = True
    with fla_delta.use_kernels(variable_length(reference_kernels())):
        y, state = per_token_documents(
            rule, q, k, v, gates, starts, 4, return_state=True, kernel="fla", state=carried
        )
    for row in range(q.shape[0]):
        bounds = [0, *starts[row, 1:].nonzero().add(1).squeeze(1).tolist(), SEQ]
        for a, b in itertools.pairwise(bounds):
            one = slice(row, row + 1)
            leading = a == 0 and not starts[row, 0]
            part = {n: g[one, :, a:b] for n, g in gates.items()}
            from_state = carried.map(lambda t, one=one: t[one]) if leading else None
            want, want_state = run(
                rule, q[one, :, a:b], k[one, :, a:b], v[one, :, a:b], part, from_state, path="recurrent"
            )
            assert close(y[one, :, a:b], want), (row, a, b)
        assert close(state.weights["w"][one], want_state.weights["w"]), row


@needs_references
def test_a_layer_forced_onto_fla_packs_documents_through_cu_seqlens():
    """``kernel = "fla"`` no longer sends packed documents apart: the layer runs them packed,
    through FLA's variable-length form, with the reads of the native packed layer (float64)."""
    torch.manual_seed(0)
    options = {
        "memory": "linear",
        "retention": "none",
        "algorithm": "gd",
        "inner_steps": "per_token",
        "chunk_size": 4,
    }
    with fla_delta.use_kernels(variable_length(reference_kernels())):
        fla = MemoryLayer.from_options(16, heads=2, kernel="fla", **options).double()
        native = MemoryLayer.from_options(16, heads=2, kernel="native", **options).double()
        native.load_state_dict(fla.state_dict())
        assert fla.memory.documents_reason() is None
        x = torch.randn(2, SEQ, 16, dtype=torch.float64)
        starts = torch.zeros(2, SEQ, dtype=torch.bool)
        starts[1, [3, 11]] = True
        got, _ = fla(x, documents=PackedDocuments(starts))
        want, _ = native(x, documents=PackedDocuments(starts))
    assert close(got, want)
