"""Every CUDA path against the CPU float64 oracle: layouts, attention backends, memory rules,
decoding, a compiled step, flash-linear-attention's kernels and packed documents.

Marked ``cuda``: skipped, with the reason, where no CUDA GPU is present (tests/conftest.py);
``python benchmarks/gpu_check.py`` runs them on one.  Not yet run on a GPU.

Each case builds one seeded tiny model, runs it on CUDA and, as the oracle, a float64 copy
on the CPU, then compares logits and every parameter's gradient of the same loss.
Tolerances, as a share of the expected tensor's largest magnitude (tests/tolerance.py):

- float32 on CUDA (TF32 off for matmuls and cuDNN): logits 1e-4, gradients 1e-3 (the
  memory's inner loop sits inside the backward: one more level of rounding per layer);
- bfloat16 autocast, as a share of the expected tensor's norm (||got - expected|| / ||expected||:
  a single element is no measure at 8 bits): logits 3e-2, gradients 3e-1 (the CPU's bf16
  autocast gives 0.9-1.6 % and up to 16 % on a gate's bias; a wrong or missing gradient is
  off by 100 %).  The Huber bias switches from its l2 to its l1 step at ||M k - v|| = delta,
  and bf16 rounding moves tokens across that switch: its bf16 gradients are only required
  to be finite (67 % off on the CPU, every one of them a correct gradient of its branch);
- decoding token by token on CUDA against the one-call forward on CUDA, float32: 1e-4;
- a ``torch.compile``d step against the eager step on CUDA, float32: 1e-4;
- the compiled decode step (CUDA graphs) against the one-call forward on CUDA, float32: 1e-4;
- FLA's Triton kernels against our per-token path on CUDA: float32 2e-3 (Triton's fp32
  dots may use TF32; in a model: logits 2e-3, gradients 1e-2), bfloat16 inputs 3e-2.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from tolerance import assert_close_to_scale

import miraslab
from miraslab.errors import RecipeError
from miraslab.model.language_model import build_model
from miraslab.model.spec import ModelSpec
from miraslab.params import structure

pytestmark = [pytest.mark.cuda, pytest.mark.filterwarnings("ignore:flex_attention called without")]

# MIRASLAB_CUDA_TESTS_ON=cpu runs these tests' own logic on the CPU (float32 against float64,
# bf16 autocast on the CPU): a check of the tests, not of CUDA
CUDA = torch.device(os.environ.get("MIRASLAB_CUDA_TESTS_ON", "cuda"))
VOCAB, SEQ, BATCH = 48, 24, 2
LAYOUTS = ("attention", "swa", "lmm", "mag", "mal", "mac")
BACKENDS = ("sdpa", "flex", "xformers")
TOLERANCE = {  # (logits, gradients): fp32 as a share of the scale, bf16 of the norm
    "fp32": (1e-4, 1e-3),
    "bf16": (3e-2, 3e-1),
}
FLA_TOLERANCE = {"fp32": (2e-3, 1e-2), "bf16": TOLERANCE["bf16"]}  # Triton's fp32 dots may be TF32
DECODE_TOL = COMPILE_TOL = 1e-4

BASE_MEMORY = {"memory": "mlp", "bias": "l2", "retention": "decay", "algorithm": "momentum"}
PER_TOKEN = {
    "deltanet": {
        "memory": "linear",
        "bias": "l2",
        "retention": "none",
        "algorithm": "gd",
        "inner_steps": "per_token",
    },
    "gated-deltanet": {
        "memory": "linear",
        "bias": "l2",
        "retention": {"name": "decay", "gradient_at": "decayed"},
        "algorithm": "gd",
        "inner_steps": "per_token",
    },
}


def memory_rules() -> dict[str, dict]:
    """One memory per registered component of each Miras axis (the others at Titans' defaults, or
    gd where a retention needs plain gradient steps), and the two per-token delta rules: a
    plugin installed beside the built-ins is covered too."""
    registry = miraslab.get_registry()
    rules = {}
    for axis in ("memory", "bias", "retention", "algorithm"):
        for name in registry.names(axis):
            for variant in ({**BASE_MEMORY, axis: name}, {**BASE_MEMORY, "algorithm": "gd", axis: name}):
                try:
                    with torch.device("meta"):  # builds the modules, as a recipe's check does
                        build_model(structure(tiny_table(memory=variant), ModelSpec))
                except RecipeError:
                    continue
                if variant not in rules.values():  # the base memory once, not once per axis
                    rules[f"{axis}={name}"] = variant
                break
    return {**rules, **PER_TOKEN}


def tiny_table(layout: str = "lmm", backend: str = "sdpa", memory: dict | None = None) -> dict:
    return {
        "vocab_size": VOCAB,
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 2,
        "layout": layout,
        "attention": {"backend": backend, "window": 6, "persistent_tokens": 2},
        "memory": {"chunk_size": 4, **(memory or BASE_MEMORY)},
    }


RULES = memory_rules()


def build(table: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    try:
        return build_model(structure(table, ModelSpec))
    except RecipeError as error:  # a combination the registry refuses: not a CUDA question
        pytest.skip(f"not a valid memory: {error}")


def ids(seed: int = 0, seq: int = SEQ) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, seq), generator=torch.Generator().manual_seed(seed))


def loss_and_grads(model: torch.nn.Module, tokens: torch.Tensor, autocast: bool = False):
    model.zero_grad(set_to_none=True)
    context = torch.autocast(CUDA.type, torch.bfloat16) if autocast else contextlib.nullcontext()
    with context:
        logits = model(tokens)
    logits.float().logsumexp(-1).mean().backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(autouse=True)
def no_tf32():
    """Full float32 matmuls and convolutions, so float32 means float32 (both default to TF32 on some cards)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def skip_unavailable_backend(name: str) -> None:
    info = miraslab.get_registry().get("attention", name)
    reason = info.build(info.params()).unavailable_reason(CUDA)
    if reason is not None:
        pytest.skip(f"attention backend {name}: {reason}")


def assert_like_the_oracle(table: dict, precision: str, tolerance: dict = TOLERANCE) -> None:
    model = build(table)
    # the same seeded weights, float64 on the CPU, on miraslab's own paths and sdpa (flex has
    # no backward on the CPU, xformers no CPU kernels; every backend equals sdpa's reference)
    native = {
        **table,
        "memory": {**table["memory"], "kernel": "native"},
        "attention": {**table["attention"], "backend": "sdpa"},
    }
    oracle = build(native).double()
    tokens = ids()
    want_logits, want_grads = loss_and_grads(oracle, tokens)
    got_logits, got_grads = loss_and_grads(model.to(CUDA), tokens.to(CUDA), autocast=precision == "bf16")
    logits_tol, grad_tol = tolerance[precision]
    close = assert_close_to_scale if precision == "fp32" else assert_close_in_norm
    close(got_logits.cpu(), want_logits, logits_tol, f"{precision} logits")
    assert got_grads.keys() == want_grads.keys()
    switches = table["memory"]["bias"] == "huber"  # see the module docstring
    for name, grad in want_grads.items():
        if precision == "bf16" and switches:
            assert torch.isfinite(got_grads[name]).all(), f"bf16 d loss / d {name}: non-finite values"
            continue
        close(got_grads[name].cpu(), grad, grad_tol, f"{precision} d loss / d {name}")


def assert_close_in_norm(got: torch.Tensor, expected: torch.Tensor, tol: float, name: str) -> None:
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    error = ((got.double() - expected).norm() / expected.norm().clamp_min(1e-30)).item()
    assert error <= tol, f"{name}: ||got - expected|| is {error:.2e} of ||expected||, above {tol:.0e}"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_and_attention_backend_matches_the_cpu_oracle(layout, backend, precision):
    skip_unavailable_backend(backend)
    assert_like_the_oracle(tiny_table(layout, backend), precision)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("rule", list(RULES))
def test_every_memory_rule_matches_the_cpu_oracle(rule, precision):
    """miraslab's own paths (``kernel = "native"``); FLA's kernels in the next test."""
    assert_like_the_oracle(tiny_table("lmm", memory={**RULES[rule], "kernel": "native"}), precision)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("rule", list(PER_TOKEN))
def test_the_delta_rules_on_fla_kernels_match_the_cpu_oracle(rule, precision):
    fla_or_skip()
    assert_like_the_oracle(
        tiny_table("lmm", memory={**PER_TOKEN[rule], "kernel": "fla"}), precision, FLA_TOLERANCE
    )


@pytest.mark.parametrize("memory", ["titans", *PER_TOKEN])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_decoding_on_cuda_equals_the_forward(layout, memory):
    model = build(tiny_table(layout, memory=PER_TOKEN.get(memory, BASE_MEMORY))).to(CUDA)
    tokens, prefix = ids().to(CUDA), 5
    with torch.no_grad():  # decoding: FLA's fused recurrent kernels where they run
        full = model(tokens)
        logits, state = model(tokens[:, :prefix], return_state=True)
        pieces = [logits]
        for t in range(prefix, tokens.shape[1]):
            logits, state = model(tokens[:, t : t + 1], state=state, return_state=True)
            pieces.append(logits)
    assert_close_to_scale(torch.cat(pieces, 1), full, DECODE_TOL, f"{layout}/{memory}: decode vs forward")


@pytest.mark.parametrize(("layout", "memory"), [("mag", "titans"), ("lmm", "gated-deltanet")])
def test_a_compiled_training_step_on_cuda_equals_the_eager_one(layout, memory):
    model = build(tiny_table(layout, memory=PER_TOKEN.get(memory, BASE_MEMORY))).to(CUDA)
    tokens = ids().to(CUDA)
    want_logits, want_grads = loss_and_grads(model, tokens)
    got_logits, got_grads = loss_and_grads(torch.compile(model), tokens)
    assert_close_to_scale(got_logits, want_logits, COMPILE_TOL, "compiled logits")
    for name, grad in want_grads.items():
        assert_close_to_scale(got_grads[name], grad, COMPILE_TOL, f"compiled d loss / d {name}")


@pytest.mark.parametrize(
    ("layout", "memory"), [("mag", "titans"), ("attention", "titans"), ("lmm", "gated-deltanet")]
)
def test_the_compiled_decode_step_on_cuda_runs_cuda_graphs_and_equals_the_forward(layout, memory):
    """Nineteen steps after a 5-token prompt: window 6 wraps the ring, chunks of 4 close, so
    both graphs (inside a chunk, closing it) are recorded and replayed."""
    from miraslab.generation import prefill
    from miraslab.model.decode_step import DecodeStep

    torch._dynamo.reset()
    model = build(tiny_table(layout, memory=PER_TOKEN.get(memory, BASE_MEMORY))).to(CUDA).eval()
    tokens, prefix = ids().to(CUDA), 5
    with torch.no_grad():
        full = model(tokens)
        logits, state = prefill(model, tokens[:, :prefix])
        decoder = DecodeStep(model, state, tokens.shape[1], compile=True)
        pieces = [logits[:, -1]] + [
            decoder.step(tokens[:, t : t + 1]) for t in range(prefix, tokens.shape[1] - 1)
        ]
    want = "compiled (CUDA graphs)" if CUDA.type == "cuda" else "compiled"
    assert decoder.mode == want, decoder.describe()
    got = torch.stack(pieces, 1)
    assert_close_to_scale(
        got, full[:, prefix - 1 : -1], DECODE_TOL, f"{layout}/{memory}: compiled decode vs forward"
    )


# --- flash-linear-attention's kernels (the [gpu] extra) against our own per-token path ---


def fla_or_skip():
    from miraslab.memory.paths import fla_delta

    found = fla_delta.kernels()
    if isinstance(found, str):
        pytest.skip(found)
    return fla_delta


def per_token_case(name: str, dtype: torch.dtype, seq: int = 200):
    from memory_cases import make_rule, random_inputs

    retention = PER_TOKEN[name]["retention"]
    options = {"memory": {"init": "normal"}}
    if isinstance(retention, dict):
        options["retention"] = {"gradient_at": "decayed"}
        retention = "decay"
    rule = make_rule("linear", "l2", retention, "gd", heads=4, d=64, options=options)
    q, k, v, gates, _ = random_inputs(rule, seq=seq, d=64)
    move = {"device": CUDA, "dtype": dtype}
    return (
        rule.to(**move),
        q.to(**move),
        k.to(**move),
        v.to(**move),
        {n: g.to(**move) for n, g in gates.items()},
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("path", ["chunked", "recurrent"])
@pytest.mark.parametrize("name", list(PER_TOKEN))
def test_fla_kernels_on_cuda_equal_our_per_token_path(name, path, dtype):
    fla_or_skip()
    from miraslab.memory.paths.memory_op import memory_op

    rule, q, k, v, gates = per_token_case(name, dtype)
    tol = 2e-3 if dtype == torch.float32 else 3e-2
    want, want_state = memory_op(
        rule, q, k, v, gates, None, 64, "chunked", inner_steps="per_token", kernel="native"
    )
    with torch.no_grad():
        got, got_state = memory_op(
            rule, q, k, v, gates, None, 64, path, inner_steps="per_token", kernel="fla"
        )
    assert_close_to_scale(got.float(), want.float(), tol, f"{name} {path} reads")
    assert_close_to_scale(got_state.weights["w"], want_state.weights["w"], tol, f"{name} {path} state")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(PER_TOKEN))
def test_packed_documents_through_fla_cu_seqlens_on_cuda_equal_our_packed_path(name, dtype):
    """FLA's variable-length chunk kernels (``cu_seqlens``) against our chunk-grid layout of the
    same packed documents (each held to its documents alone on the CPU, float64)."""
    fla_or_skip()
    from miraslab.memory.paths.per_token_documents import per_token_documents

    rule, q, k, v, gates = per_token_case(name, dtype)
    starts = torch.zeros(q.shape[0], q.shape[2], dtype=torch.bool, device=CUDA)
    starts[0, [1, 70, 71, 150]] = True  # documents of 1 to 79 tokens, across FLA's blocks of 64
    tol = 2e-3 if dtype == torch.float32 else 3e-2
    want, want_state = per_token_documents(rule, q, k, v, gates, starts, 64, True, kernel="native")
    got, got_state = per_token_documents(rule, q, k, v, gates, starts, 64, True, kernel="fla")
    assert_close_to_scale(got.float(), want.float(), tol, f"{name} documents reads")
    assert_close_to_scale(got_state.weights["w"], want_state.weights["w"], tol, f"{name} documents state")


@pytest.mark.parametrize("name", list(PER_TOKEN))
def test_fla_state_continues_on_our_path_on_cuda_and_back(name):
    fla_or_skip()
    from miraslab.memory.paths.memory_op import memory_op

    rule, q, k, v, gates = per_token_case(name, torch.float32)
    cut = 77

    def op(piece, state, kernel):
        return memory_op(
            rule, q[:, :, piece], k[:, :, piece], v[:, :, piece], {n: g[:, :, piece] for n, g in gates.items()},
            state, 64, "chunked", inner_steps="per_token", kernel=kernel,
        )  # fmt: skip

    want, _ = op(slice(None), None, "native")
    for first, second in (("fla", "native"), ("native", "fla")):
        y1, middle = op(slice(0, cut), None, first)
        y2, _ = op(slice(cut, None), middle, second)
        assert_close_to_scale(torch.cat([y1, y2], 2), want, 2e-3, f"{first} then {second}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ("attention", "swa", "lmm", "mag", "mal"))
def test_packed_documents_match_the_cpu_oracle(layout, backend):
    """``model(ids, documents=...)`` on CUDA (the block-diagonal mask of each backend, the memory
    restarted on its chunk grid), float32, against the float64 CPU oracle of the same call
    (itself each document alone: tests/test_packed_documents.py)."""
    skip_unavailable_backend(backend)
    table = tiny_table(layout, backend, memory={**PER_TOKEN["gated-deltanet"], "kernel": "native"})
    model = build(table)
    oracle = build({**table, "attention": {**table["attention"], "backend": "sdpa"}}).double()
    tokens = ids()
    starts = torch.zeros_like(tokens, dtype=torch.bool)
    starts[0, [3, 4, 9, 17]] = True
    starts[1, [0, 13]] = True
    results = []
    for net, device in ((oracle, torch.device("cpu")), (model.to(CUDA), CUDA)):
        net.zero_grad(set_to_none=True)
        logits = net(tokens.to(device), documents=starts.to(device))
        logits.float().logsumexp(-1).mean().backward()
        results.append(
            (
                logits.detach().cpu(),
                {n: p.grad.cpu() for n, p in net.named_parameters() if p.grad is not None},
            )
        )
    (want_logits, want_grads), (got_logits, got_grads) = results
    logits_tol, grad_tol = TOLERANCE["fp32"]
    assert_close_to_scale(got_logits, want_logits, logits_tol, "packed documents: logits")
    assert got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        assert_close_to_scale(got_grads[name], grad, grad_tol, f"packed documents: d loss / d {name}")
