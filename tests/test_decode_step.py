"""The decode step (miraslab.model.decode_step): ring KV caches, eager and compiled steps equal
to the model's forward, generate's use of it, and its fallbacks.

Tolerances: float64 models throughout.  The eager step and the forward differ by the
chunked and recurrent paths' rounding: 1e-10 of the logits' scale.  The compiled step and
the eager one also differ by RoPE's angles, which are float32 by design (rope.py), where
inductor's vectorised sin and cos may differ from ATen's by an ulp: 1e-6 of the scale.
"""

from __future__ import annotations

import model_cases
import pytest
import torch
from tolerance import assert_close_to_scale

from miraslab.generation import generate, prefill
from miraslab.model.attention import Attention, RingKVCache
from miraslab.model.decode_step import DecodeStep
from miraslab.model.spec import AttentionSpec

EAGER_TOL = 1e-10
COMPILED_TOL = 1e-6


def tiny_model(layout: str, **memory) -> torch.nn.Module:
    """Two layers, window 4 and chunk 3: a short decode wraps the ring and closes chunks."""
    return model_cases.tiny_model(layout, memory={"chunk_size": 3, **memory}).eval()


MODELS = {
    "titans-mag": lambda: tiny_model(
        "mag", memory={"name": "mlp", "expansion": 2}, retention="decay", algorithm="momentum"
    ),
    "mal": lambda: tiny_model("mal"),
    "linear-lmm": lambda: tiny_model("lmm", memory="linear", retention="decay", algorithm="gd"),
    "transformer": lambda: tiny_model("attention"),
}


def decode_logits(model: torch.nn.Module, ids: torch.Tensor, prompt: int, compile: bool) -> torch.Tensor:
    """The logits (1, T - prompt, V) after each token from ``prompt`` on, through a DecodeStep."""
    with torch.no_grad():
        logits, state = prefill(model, ids[:, :prompt])
        decoder = DecodeStep(model, state, ids.shape[1], compile=compile)
        assert decoder.mode == ("compiled" if compile else "eager"), decoder.describe()
        steps = [logits[:, -1]] + [decoder.step(ids[:, t : t + 1]) for t in range(prompt, ids.shape[1] - 1)]
    return torch.stack(steps, dim=1)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_eager_step_equals_the_full_forward(name):
    model = MODELS[name]()
    ids = torch.randint(0, 40, (1, 14), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(ids)[:, 4:-1]
    assert_close_to_scale(decode_logits(model, ids, 5, compile=False), expected, EAGER_TOL, name)


@pytest.mark.parametrize("name", ["titans-mag", "mal", "linear-lmm"])
def test_the_compiled_step_equals_the_eager_step_and_the_forward(name):
    """Nine steps after a 5-token prompt: the ring wraps (window 4) and chunks of 3 close, so
    both compiled graphs (inside a chunk, closing it) run."""
    torch._dynamo.reset()
    model = MODELS[name]()
    ids = torch.randint(0, 40, (1, 14), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(ids)[:, 4:-1]
    eager = decode_logits(model, ids, 5, compile=False)
    compiled = decode_logits(model, ids, 5, compile=True)
    assert_close_to_scale(compiled, eager, COMPILED_TOL, f"{name} compiled vs eager")
    assert_close_to_scale(compiled, expected, COMPILED_TOL, f"{name} compiled vs forward")


def test_greedy_generate_gives_the_same_tokens_compiled_and_eager():
    torch._dynamo.reset()
    model = MODELS["titans-mag"]()
    prompt = torch.randint(0, 40, (1, 6), generator=torch.Generator().manual_seed(2))
    eager = list(generate(model, prompt, 10, temperature=0))
    lines: list[str] = []
    compiled = list(generate(model, prompt, 10, temperature=0, compile=True, report=lines.append))
    assert lines == ["decode step: compiled"]
    assert compiled == eager


def test_generate_decodes_eagerly_unless_asked_and_says_so():
    lines: list[str] = []
    list(generate(MODELS["mal"](), torch.tensor([[1, 2, 3]]), 3, temperature=0, report=lines.append))
    assert lines == ["decode step: eager"]


def test_a_compile_that_raises_falls_back_to_the_eager_step(monkeypatch):
    """torch.compile refused outright (a platform without a compiler), and a compiled
    function that fails on its first call (tracing errors surface there): the same tokens
    as the eager step, one warning, and the step says why."""
    model = MODELS["titans-mag"]()
    prompt = torch.randint(0, 40, (1, 6), generator=torch.Generator().manual_seed(3))
    eager = list(generate(model, prompt, 6, temperature=0))

    def refuse(*args, **kwargs):
        raise RuntimeError("torch.compile is not supported on this platform")

    def fails_when_called(*args, **kwargs):
        def compiled(*args, **kwargs):
            raise RuntimeError("dynamo: graph break in the step")

        return compiled

    for fake in (refuse, fails_when_called):
        monkeypatch.setattr(torch, "compile", fake)
        lines: list[str] = []
        with pytest.warns(RuntimeWarning, match="decoding eagerly"):
            tokens = list(generate(model, prompt, 6, temperature=0, compile=True, report=lines.append))
        assert tokens == eager
        if fake is refuse:
            assert lines == [
                "decode step: eager (compiling failed: torch.compile is not supported on this platform)"
            ]


def test_a_state_the_step_cannot_hold_decodes_through_the_forward():
    """MAC keeps segment positions in its own state: the model's forward per token, as before."""
    model = tiny_model("mac")
    ids = torch.randint(0, 40, (1, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(ids)[:, 4:-1]
        logits, state = prefill(model, ids[:, :5])
        decoder = DecodeStep(model, state, 12, compile=True)
        steps = [logits[:, -1]] + [decoder.step(ids[:, t : t + 1]) for t in range(5, 11)]
    assert decoder.mode == "forward" and "MACState" in decoder.reason, decoder.describe()
    assert_close_to_scale(torch.stack(steps, dim=1), expected, EAGER_TOL, "mac")


@pytest.mark.parametrize("window", [0, 4])
def test_the_ring_cache_attends_as_the_kv_cache_does(window):
    """One token a call into the ring (wrapping it three times at window 4) equals the same
    tokens through the KV cache, and the ring read back is that KV cache."""
    torch.manual_seed(0)
    attention = Attention(16, 2, AttentionSpec(window=window, persistent_tokens=2)).double().eval()
    x = torch.randn(1, 15, 16, dtype=torch.float64)
    with torch.no_grad():
        _, cache = attention(x[:, :3], return_cache=True)
        ring = attention.ring_cache(cache, 1, capacity=15, like=x)
        for t in range(3, 15):
            expected, cache = attention(x[:, t : t + 1], cache=cache, return_cache=True)
            got, ring = attention(x[:, t : t + 1], cache=ring, return_cache=True)
            assert isinstance(ring, RingKVCache)
            assert_close_to_scale(got, expected, EAGER_TOL, f"token {t}")
    back = ring.as_kv_cache(window)
    assert back.next_position == cache.next_position == 15
    assert torch.equal(back.positions, cache.positions)
    assert_close_to_scale(back.keys, cache.keys, EAGER_TOL, "keys")
    assert_close_to_scale(back.values, cache.values, EAGER_TOL, "values")


def test_the_decode_state_continues_through_the_forward():
    """``decode_state()`` is the state the forward takes: continuing from it equals stepping on."""
    model = MODELS["titans-mag"]()
    ids = torch.randint(0, 40, (1, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, state = prefill(model, ids[:, :5])
        decoder = DecodeStep(model, state, 10)
        for t in range(5, 8):
            decoder.step(ids[:, t : t + 1])
        via_forward, _ = model(ids[:, 8:9], state=decoder.decode_state(), return_state=True)
        assert_close_to_scale(decoder.step(ids[:, 8:9]), via_forward[:, -1], EAGER_TOL, "continued")


def test_full_attention_slots_double_when_the_context_outgrows_them():
    """Capacity 6 for 13 tokens: the ring would wrap and overwrite the context; it grows
    instead (twice, to 24 slots), and the logits stay the forward's."""
    model = MODELS["transformer"]()
    ids = torch.randint(0, 40, (1, 14), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = model(ids)[:, 4:-1]
        logits, state = prefill(model, ids[:, :5])
        decoder = DecodeStep(model, state, capacity=6)
        steps = [logits[:, -1]] + [decoder.step(ids[:, t : t + 1]) for t in range(5, 13)]
    assert decoder.capacity == 24
    assert_close_to_scale(torch.stack(steps, dim=1), expected, EAGER_TOL, "grown")
