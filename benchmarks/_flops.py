"""FLOPs of the chunked linear-memory MemoryLayer: an explicit formula and a counter cross-check.

Formula (2 FLOPs per multiply-add; B batch, T tokens, D model width, H heads, d head width,
L chunk, N = T / L chunks, G gate projections):

  forward, projections                       2·B·T·D·(3·H·d)   q, k, v
                                           + 2·B·T·D·(H·G)     gates (decay, lr, momentum)
                                           + 2·B·T·(H·d)·D     output
  forward, per chunk and (batch, head)       2·L·d²            K W0ᵀ: inner-loss prediction (δ = 2(K W0ᵀ − V))
                                           + 2·L³ · m          L x L coefficient products
                                                               (m = 2 with momentum: D_eta (θΓ), D_alpha C;
                                                                m = 1 without: D_alpha (θΓ))
                                           + 2·L·d² · r        reads from the chunk-start state:
                                                               Q W0ᵀ (and Q S0ᵀ with momentum: r = 2)
                                           + 2·L²·d · 2        dual form: Q Kᵀ, then (coef ∘ Q Kᵀ) Δ
                                           + 2·L·d² · r        chunk-end materialisation: Δᵀ diag(c) K
                                                               for W (and for the momentum S)
  backward                                   2 x forward       (dX and dW of every matmul; the input
                                                               requires grad, as inside a model)
  total                                      3 x forward

The depthwise convolution and elementwise work (gates, decay matrices, norms) are not
counted: they are not matmuls.  ``counted_flops`` runs torch's FlopCounterMode over one
forward+backward as a cross-check (mm, addmm, bmm only; it miscounts the backward of a
grouped convolution, so convolutions are left out there too).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def linear_chunked_flops(
    batch: int, seq: int, dim: int, heads: int, head_dim: int, chunk: int, momentum: bool, gates: int
) -> dict[str, int]:
    """Forward+backward matmul FLOPs of a chunked linear-memory layer, by term."""
    b, t, d_model, h, d, length = batch, seq, dim, heads, head_dim, chunk
    chunks = -(-t // length)  # a last partial chunk is counted as a whole one (upper bound)
    per_chunk = b * h * chunks
    state_maps = 2 if momentum else 1  # W, and S with momentum
    forward = {
        "projections": 2 * b * t * d_model * (3 * h * d)
        + 2 * b * t * d_model * (h * gates)
        + 2 * b * t * h * d * d_model,
        "inner_prediction": per_chunk * 2 * length * d * d,
        "coefficients": per_chunk * 2 * length**3 * (2 if momentum else 1),
        "reads_from_start_state": per_chunk * 2 * length * d * d * state_maps,
        "dual_form": per_chunk * 2 * length * length * d * 2,
        "chunk_end_state": per_chunk * 2 * length * d * d * state_maps,
    }
    total = {name: 3 * value for name, value in forward.items()}  # forward + 2x for backward
    total["total"] = sum(total.values())
    return total


def per_token_chunked_flops(
    batch: int, seq: int, dim: int, heads: int, head_dim: int, chunk: int, gates: int
) -> dict[str, int]:
    """Forward+backward matmul FLOPs of the per-token (UT form) chunked linear-memory layer.

    Per chunk and (batch, head): K Kᵀ and Q Kᵀ (2·L²·d each), the unit-triangular solve
    with d_k + d_v right-hand columns (L²·2d), Δᵀ = W0 Wkᵀ (2·L·d²), the chunk-end
    W0 − Δᵀ diag(c) K (2·L·d²), the reads Q W0ᵀ (2·L·d²) and P Δ (2·L²·d); backward 2x.
    """
    b, t, d_model, h, d, length = batch, seq, dim, heads, head_dim, chunk
    per_chunk = b * h * -(-t // length)
    forward = {
        "projections": 2 * b * t * d_model * (3 * h * d)
        + 2 * b * t * d_model * (h * gates)
        + 2 * b * t * h * d * d_model,
        "scores": per_chunk * 2 * length * length * d * 2,
        "triangular_solve": per_chunk * length * length * 2 * d,
        "corrections": per_chunk * 2 * length * d * d,
        "chunk_end_state": per_chunk * 2 * length * d * d,
        "reads": per_chunk * (2 * length * d * d + 2 * length * length * d),
    }
    total = {name: 3 * value for name, value in forward.items()}
    total["total"] = sum(total.values())
    return total


_MATMULS = ("aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten.matmul")


def counted_flops(step: Callable[[], None]) -> int:
    """Matmul FLOPs torch executes in ``step`` (forward and backward), per FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        step()
    by_op = counter.get_flop_counts().get("Global", {})
    return int(sum(v for op, v in by_op.items() if str(op).split(".default")[0] in _MATMULS))


def matmul_gflops(size: int = 1024, repeats: int = 5) -> list[float]:
    """fp32 (size x size) @ (size x size) GFLOP/s samples, into a preallocated output."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)  # warm the kernel and the pages
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        samples.append(2 * size**3 / (time.perf_counter() - start) / 1e9)
    return samples
