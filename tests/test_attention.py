"""Attention: every backend equals the naive reference; the visibility rule; RoPE; and the
Attention module's persistent tokens, prefix, sliding window and KV cache.

Tolerances, relative to the expected tensor's largest magnitude (tests/tolerance.py): a
backend in float32 against the reference in float64, 1e-5; the Attention module in float32,
one call against many calls through the cache, 1e-5.  RoPE's relative-position check is
float64.
"""

from __future__ import annotations

import sys
import warnings

import attrs
import pytest
import torch
from tolerance import assert_close_to_scale

import miraslab
from miraslab.errors import RecipeError
from miraslab.model.attention import Attention, KVCache
from miraslab.model.attention_backend import (
    AttentionBackend,
    keys_end_at_queries,
    reference_attention,
    visibility_mask,
)
from miraslab.model.rope import RotaryEmbedding
from miraslab.model.spec import AttentionSpec
from miraslab.params import structure

CPU = torch.device("cpu")
BACKENDS = ["sdpa", "flex", "xformers"]
BACKEND_TOL = 1e-5
MODULE_TOL = 1e-5

# eager flex attention tells once per process that it materialises the scores; expected here
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile:UserWarning")


def build_backend(name: str, **params: object) -> AttentionBackend:
    info = miraslab.get_registry().get("attention", name)
    return info.build(info.params(**params))


def attention_spec(**table: object) -> AttentionSpec:
    return structure(table, AttentionSpec)


def random_qkv(n_queries: int, n_keys: int, batch: int = 2, heads: int = 3, head_dim: int = 8):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads, n_queries, head_dim, generator=generator)
    k = torch.randn(batch, heads, n_keys, head_dim, generator=generator)
    v = torch.randn(batch, heads, n_keys, head_dim, generator=generator)
    return q, k, v


def position_free(count: int) -> torch.Tensor:
    return torch.full((count,), -1, dtype=torch.long)


def assert_backend_matches_reference(backend, q_pos, k_pos, window):
    q, k, v = random_qkv(len(q_pos), len(k_pos))
    out = backend(q, k, v, q_pos, k_pos, window)
    expected = reference_attention(q.double(), k.double(), v.double(), q_pos, k_pos, window)
    assert out.dtype == torch.float32
    assert_close_to_scale(out, expected, BACKEND_TOL, "attention output")


@pytest.fixture(params=BACKENDS)
def backend(request) -> AttentionBackend:
    backend = build_backend(request.param)
    reason = backend.unavailable_reason(CPU)
    if reason is not None:
        pytest.skip(reason)
    return backend


# --- backends against the reference ------------------------------------------------------


def test_backend_matches_reference_on_full_causal_attention(backend):
    positions = torch.arange(10)
    assert_backend_matches_reference(backend, positions, positions, window=0)


@pytest.mark.parametrize("window", [1, 3])
def test_backend_matches_reference_on_a_sliding_window(backend, window):
    positions = torch.arange(10)
    assert_backend_matches_reference(backend, positions, positions, window)


@pytest.mark.parametrize("window", [0, 3])
def test_backend_matches_reference_with_persistent_and_prefix_keys(backend, window):
    positions = torch.arange(7)
    k_pos = torch.cat([position_free(2 + 3), positions])  # 2 persistent, 3 prefix
    assert_backend_matches_reference(backend, positions, k_pos, window)


@pytest.mark.parametrize("n_queries", [1, 3])
@pytest.mark.parametrize("window", [0, 4])
@pytest.mark.parametrize("n_free", [0, 2])
def test_backend_matches_reference_when_decoding_after_a_longer_history(backend, n_queries, window, n_free):
    # the queries are the last tokens of a 12-token sequence whose past comes from a cache
    q_pos = torch.arange(12 - n_queries, 12)
    k_pos = torch.cat([position_free(n_free), torch.arange(12)])
    assert_backend_matches_reference(backend, q_pos, k_pos, window)


# --- the visibility rule ----------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 2, 5])
def test_window_w_lets_each_query_see_itself_and_the_w_minus_1_tokens_before_it(window):
    positions = torch.arange(9)
    mask = visibility_mask(positions, positions, window)
    for i in range(9):
        visible = mask[i].nonzero().flatten().tolist()
        assert visible == list(range(max(0, i - window + 1), i + 1))


def test_window_zero_is_full_causal_attention():
    positions = torch.arange(6)
    mask = visibility_mask(positions, positions, window=0)
    assert torch.equal(mask, torch.ones(6, 6, dtype=torch.bool).tril())


def test_position_free_keys_are_visible_to_every_query_whatever_the_window():
    q_pos = torch.arange(20, 26)
    k_pos = torch.cat([position_free(3), torch.arange(26)])
    mask = visibility_mask(q_pos, k_pos, window=2)
    assert mask[:, :3].all()
    assert mask[:, 3:].sum(dim=1).tolist() == [2] * 6


@pytest.mark.parametrize(
    ("q_pos", "k_pos", "expected"),
    [
        (torch.arange(6), torch.arange(6), True),  # one causal call
        (torch.arange(5, 11), torch.arange(5, 11), True),  # a later call with no cache
        (torch.arange(7, 10), torch.arange(10), True),  # decoding after a cache
        (torch.arange(6), torch.cat([position_free(2), torch.arange(6)]), False),  # persistent keys
        (torch.arange(2, 5), torch.arange(10), False),  # queries not at the end of the keys
        (torch.tensor([3, 5]), torch.tensor([0, 1, 3, 5]), False),  # a gap in the keys
    ],
)
def test_keys_end_at_queries_recognises_the_layout_kernel_masks_assume(q_pos, k_pos, expected):
    assert keys_end_at_queries(q_pos, k_pos) is expected


# --- rotary embeddings ------------------------------------------------------------------


def test_rope_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(head_dim=8)
    q, k = torch.randn(2, 1, 1, 1, 8, dtype=torch.float64).unbind(0)

    def score(m: int, n: int) -> torch.Tensor:
        return (rope(q, torch.tensor([m])) * rope(k, torch.tensor([n]))).sum()

    torch.testing.assert_close(score(7, 3), score(107, 103), atol=1e-5, rtol=0)
    assert not torch.allclose(score(7, 3), score(3, 7), atol=1e-3)


def test_rope_is_the_identity_at_position_zero_and_keeps_norms():
    rope = RotaryEmbedding(head_dim=8)
    x = torch.randn(1, 2, 5, 8)
    torch.testing.assert_close(rope(x, torch.zeros(5, dtype=torch.long)), x)
    torch.testing.assert_close(rope(x, torch.arange(5)).norm(dim=-1), x.norm(dim=-1))


def test_rope_rotates_in_float32_even_for_a_bfloat16_model():
    rope = RotaryEmbedding(head_dim=8).to(torch.bfloat16)
    x = torch.randn(1, 1, 4, 8).to(torch.bfloat16)
    positions = torch.tensor([0, 300, 4000, 50000])
    assert torch.equal(rope(x, positions), rope(x.float(), positions).to(torch.bfloat16))


# --- the Attention module ---------------------------------------------------------------


def make_attention(**table: object) -> Attention:
    torch.manual_seed(0)
    return Attention(dim=16, heads=2, spec=attention_spec(**table))


def run_in_pieces(attention: Attention, x: torch.Tensor, pieces: list[int], prefix=None):
    outputs, cache, start = [], None, 0
    for size in pieces:
        y, cache = attention(x[:, start : start + size], prefix=prefix, cache=cache, return_cache=True)
        outputs.append(y)
        start += size
    assert start == x.shape[1]
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("pieces", [[1] * 12, [5, 1, 3, 2, 1]], ids=["token_by_token", "uneven"])
@pytest.mark.parametrize("window", [0, 3])
@pytest.mark.parametrize("persistent_tokens", [0, 2])
@pytest.mark.parametrize("with_prefix", [False, True])
def test_one_call_equals_piecewise_calls_through_the_cache(pieces, window, persistent_tokens, with_prefix):
    attention = make_attention(window=window, persistent_tokens=persistent_tokens)
    x = torch.randn(2, 12, 16)
    prefix = torch.randn(2, 3, 16) if with_prefix else None
    with torch.no_grad():
        whole = attention(x, prefix=prefix)
        piecewise = run_in_pieces(attention, x, pieces, prefix=prefix)
    assert_close_to_scale(piecewise, whole, MODULE_TOL, "piecewise")


def test_cache_never_holds_more_than_window_minus_1_tokens():
    attention = make_attention(window=4, persistent_tokens=2)
    x = torch.randn(1, 16, 16)
    cache, seen = None, 0
    for size in [1, 5, 2, 7, 1]:
        _, cache = attention(x[:, seen : seen + size], cache=cache, return_cache=True)
        seen += size
        assert len(cache) == min(seen, 3)
        assert cache.keys.shape == cache.values.shape == (1, 2, len(cache), 8)
        assert cache.positions.tolist() == list(range(seen - len(cache), seen))
        assert cache.next_position == seen


def test_cache_keeps_every_token_without_a_window():
    attention = make_attention(window=0)
    _, cache = attention(torch.randn(1, 5, 16), return_cache=True)
    _, cache = attention(torch.randn(1, 4, 16), cache=cache, return_cache=True)
    assert len(cache) == 9
    assert cache.positions.tolist() == list(range(9))


def test_first_call_without_a_cache_starts_at_position_zero():
    attention = make_attention(window=0)
    x = torch.randn(1, 4, 16)
    _, cache = attention(x, return_cache=True)
    assert cache.positions.tolist() == [0, 1, 2, 3] and cache.next_position == 4
    empty = torch.zeros(1, 2, 0, 8)
    from_empty_cache = attention(x, cache=KVCache(empty, empty, torch.zeros(0, dtype=torch.long), 0))
    assert_close_to_scale(from_empty_cache, attention(x), MODULE_TOL, "from an empty cache")


def test_every_query_sees_the_persistent_tokens_even_with_a_window_of_1():
    attention = make_attention(window=1, persistent_tokens=2)
    x = torch.randn(1, 6, 16)
    with torch.no_grad():
        before = attention(x)
        attention.persistent_tokens.add_(1.0)
        after = attention(x)
    assert ((after - before).abs().amax(dim=-1) > 1e-3).all()


def test_gradients_reach_every_persistent_token():
    attention = make_attention(window=3, persistent_tokens=3)
    attention(torch.randn(2, 8, 16)).pow(2).sum().backward()
    grad = attention.persistent_tokens.grad
    assert grad is not None and (grad.abs().sum(dim=-1) > 0).all()


def test_an_odd_explicit_head_dim_with_rope_is_a_recipe_error():
    with pytest.raises(RecipeError, match=r"model\.attention\.head_dim: rotary embeddings need an even"):
        Attention(dim=10, heads=2, spec=attrs.evolve(attention_spec(rope=True), head_dim=5))


def test_the_default_head_width_is_made_even_for_rope_and_need_not_divide_the_width():
    attention = Attention(dim=10, heads=2, spec=attention_spec(rope=True))
    assert attention.head_dim == 4 and attention.out_proj.in_features == 8
    assert attention(torch.randn(1, 3, 10)).shape == (1, 3, 10)


# --- backends that cannot run here say why ------------------------------------------------


def test_xformers_needs_a_cuda_device():
    reason = build_backend("xformers").unavailable_reason(CPU)
    assert reason == "xformers needs a CUDA device; this run is on cpu"


def test_xformers_says_how_to_install_it_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "xformers", None)  # makes `import xformers` fail
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    reason = build_backend("xformers").unavailable_reason(torch.device("cuda"))
    assert reason == "xformers is not installed: pip install 'miraslab[xformers]'"


def test_attention_with_an_unavailable_backend_is_a_recipe_error_naming_the_key():
    attention = Attention(dim=16, heads=2, spec=attention_spec(backend="xformers"))
    with pytest.raises(RecipeError) as error:
        attention(torch.randn(1, 4, 16))
    assert error.value.problems == [
        "model.attention.backend: xformers needs a CUDA device; this run is on cpu"
    ]


def flex_or_skip(**params: object) -> AttentionBackend:
    flex = build_backend("flex", **params)
    reason = flex.unavailable_reason(CPU)
    if reason is not None:
        pytest.skip(reason)
    return flex


def test_flex_on_cpu_refuses_training_but_serves_inference():
    flex_or_skip()
    attention = make_attention(backend="flex", window=3, persistent_tokens=2)
    x = torch.randn(1, 6, 16)
    with pytest.raises(RecipeError, match=r"model\.attention\.backend: flex_attention has no backward pass"):
        attention(x)
    reference = make_attention(backend="sdpa", window=3, persistent_tokens=2)
    with torch.no_grad():
        assert_close_to_scale(attention(x), reference(x), MODULE_TOL, "flex")


def test_flex_falls_back_to_eager_when_compiling_fails(monkeypatch):
    from torch.nn.attention.flex_attention import flex_attention

    real_compile = torch.compile

    def compile_without_a_compiler(fn, **kwargs):
        if fn is not flex_attention:  # eager flex_attention compiles its own helpers
            return real_compile(fn, **kwargs)

        def compiled(*args, **kw):
            raise RuntimeError("no working C++ compiler found")

        return compiled

    flex = flex_or_skip(compile=True)
    monkeypatch.setattr(torch, "compile", compile_without_a_compiler)
    positions = torch.arange(6)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*falling back to eager"):
        assert_backend_matches_reference(flex, positions, positions, window=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # eager from now on: no second warning
        assert_backend_matches_reference(flex, positions, positions, window=0)
