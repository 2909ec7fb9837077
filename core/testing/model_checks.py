"""The kit for what sits around the memory: block layouts, attention backends and mixers.

Layouts are checked inside a tiny float64 language model (``tiny_model``): decoding token by
token equals the full forward (``DECODE_TOLERANCE``), no position sees a later token (exactly),
and the loss reaches every parameter.  An attention backend must compute
``reference_attention`` under the visibility rule (``ATTENTION_TOLERANCE``, float32 backend
against the float64 oracle).  A mixer keeps the read-outs' shape, acts per token and passes
gradients to every read-out and parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

import miraslab

from .. import api
from ..registry import Registry, get_registry
from .failure import KitFailure, expect_close

DECODE_TOLERANCE = 1e-10
ATTENTION_TOLERANCE = 1e-5
VOCAB = 40


def tiny_model(
    layout: str | Mapping[str, Any] = "lmm", registry: Registry | None = None, **overrides: Any
) -> Any:
    """A 2-layer float64 language model of width 32 with ``layout`` and any ``[model]`` keys."""
    torch.manual_seed(0)
    table = {
        "vocab_size": VOCAB,
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 2,
        "layout": layout,
        "attention": {"window": 4, "persistent_tokens": 2},
        "memory": {"chunk_size": 3},
        **overrides,
    }
    with api.use_registry(registry or api.get_registry()):
        return miraslab.build_model(api.structure(table, api.ModelSpec)).double()


def check_decode_equals_forward(model: Any, what: str = "model", seq: int = 15, prefix: int = 4) -> None:
    """Logits of a prefix in one call then one token a call equal one call over all ``seq``."""
    ids = torch.randint(0, VOCAB, (2, seq), generator=torch.Generator().manual_seed(0))
    full = model(ids)
    logits, state = model(ids[:, :prefix], return_state=True)
    pieces = [logits]
    for t in range(prefix, seq):
        logits, state = model(ids[:, t : t + 1], state=state, return_state=True)
        pieces.append(logits)
    expect_close(
        f"{what}: decoding token by token vs the full forward", torch.cat(pieces, 1), full, DECODE_TOLERANCE
    )


def check_causal(model: Any, what: str = "model", seq: int = 12, changed_at: int = 7) -> None:
    """Changing token ``changed_at`` changes no logit before it, and does change its own."""
    ids = torch.randint(0, VOCAB, (1, seq), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[0, changed_at] = (ids[0, changed_at] + 1) % VOCAB
    before, after = model(ids), model(changed)
    expect_close(
        f"{what}: logits before a changed token", after[:, :changed_at], before[:, :changed_at], 1e-12
    )
    if not (before[:, changed_at] - after[:, changed_at]).abs().max() > 1e-6:
        raise KitFailure(f"{what}: the logits at a changed token do not change (is the input read?)")


def check_gradients_reach_model(model: Any, what: str = "model", seq: int = 13) -> None:
    model.zero_grad(set_to_none=True)
    logits = model(torch.randint(0, VOCAB, (2, seq), generator=torch.Generator().manual_seed(2)))
    if logits.shape != (2, seq, VOCAB):
        raise KitFailure(f"{what}: logits of shape {tuple(logits.shape)}, expected {(2, seq, VOCAB)}")
    logits.logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    if missing:
        raise KitFailure(f"{what}: the loss does not reach {', '.join(missing)}")


def check_model(model: Any, what: str = "model") -> None:
    check_decode_equals_forward(model, what)
    check_causal(model, what)
    check_gradients_reach_model(model, what)


def check_layout(
    name: str, options: Mapping[str, Any] | None = None, registry: Registry | None = None, **overrides: Any
) -> None:
    """A block layout inside ``tiny_model``: decode == forward, causal, every parameter trained."""
    model = tiny_model({"name": name, **dict(options or {})}, registry, **overrides)
    check_model(model, f"layout {name!r}")


def check_attention_backend(
    name: str, options: Mapping[str, Any] | None = None, registry: Registry | None = None, device: str = "cpu"
) -> str | None:
    """The backend equals ``reference_attention`` for a causal prefix, a KV cache (queries at the
    end of the keys), a sliding window and position-free keys.  Returns the backend's reason
    when it cannot run on ``device`` (nothing is checked then), else None."""
    registry = registry or get_registry()
    info = registry.get("attention", name)
    backend = info.build(api.make_component("attention", name, dict(options or {}), registry).params)
    where = torch.device(device)
    reason = backend.unavailable_reason(where)
    if reason is not None:
        return reason
    generator = torch.Generator().manual_seed(0)
    long = torch.long
    cases = {
        "causal": (torch.arange(9), torch.arange(9), 0),
        "cached (3 queries after 6 keys)": (torch.arange(6, 9), torch.arange(9), 0),
        "window 3": (torch.arange(9), torch.arange(9), 3),
        "2 position-free keys, window 4": (torch.arange(7), torch.cat([torch.full((2,), -1, dtype=long), torch.arange(7)]), 4),
    }  # fmt: skip
    for case, (q_pos, k_pos, window) in cases.items():
        q = torch.randn(2, 2, len(q_pos), 8, generator=generator)
        k, v = (torch.randn(2, 2, len(k_pos), 8, generator=generator) for _ in range(2))
        got = backend(q.to(where), k.to(where), v.to(where), q_pos.to(where), k_pos.to(where), window)
        expected = api.reference_attention(q.double(), k.double(), v.double(), q_pos, k_pos, window)
        expect_close(f"attention {name!r}, {case}", got.double().cpu(), expected, ATTENTION_TOLERANCE)
    return None


def check_mixer(
    name: str, options: Mapping[str, Any] | None = None, registry: Registry | None = None, n_memories: int = 3
) -> None:
    """``forward(reads)`` keeps a read-out's shape, acts per token (position t of the output
    depends only on position t of the reads) and reaches every read-out and parameter."""
    registry = registry or get_registry()
    info = registry.get("mixer", name)
    params = api.make_component("mixer", name, dict(options or {}), registry).params
    mixer = info.build(params, dim=8, n_memories=n_memories).double()
    generator = torch.Generator().manual_seed(0)
    reads = [
        torch.randn(2, 6, 8, generator=generator, dtype=torch.double, requires_grad=True)
        for _ in range(n_memories)
    ]
    out = mixer(reads)
    if out.shape != reads[0].shape:
        raise KitFailure(
            f"mixer {name!r}: output {tuple(out.shape)}, expected the reads' {tuple(reads[0].shape)}"
        )
    per_token = torch.cat([mixer([r[:, t : t + 1] for r in reads]) for t in range(6)], dim=1)
    expect_close(f"mixer {name!r}: token by token vs all at once", per_token, out, DECODE_TOLERANCE)
    out.pow(2).sum().backward()
    missing = [f"read {i}" for i, r in enumerate(reads) if r.grad is None or not r.grad.abs().sum() > 0]
    missing += [n for n, p in mixer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    if missing:
        raise KitFailure(f"mixer {name!r}: the output does not depend on {', '.join(missing)}")
