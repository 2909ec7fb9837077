"""Q-K projection (TNT, arXiv 2511.07343 eq. 7): a query is projected onto the span of the
keys seen so far,

    q'_t = sum_{tau <= t} (k_tau k_tau^T / ||k_tau||^2) q_t

so a local memory, which only ever stored keys, is asked in their space.  Computed as
causal linear attention with unit keys as both keys and values: a (d x d) running state
between chunks, a masked matmul inside each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def qk_project(
    q: torch.Tensor, k: torch.Tensor, state: torch.Tensor | None = None, chunk_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k (B, H, T, d) -> projected q (B, H, T, d) and the state sum k^ k^T (B, H, d, d)."""
    unit = F.normalize(k, dim=-1)
    batch, heads, total, dim = q.shape
    if state is None:
        state = q.new_zeros(batch, heads, dim, dim)
    outputs = []
    for start in range(0, total, chunk_size):
        qc, kc = q[:, :, start : start + chunk_size], unit[:, :, start : start + chunk_size]
        length = qc.shape[2]
        causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        scores = (qc @ kc.transpose(-1, -2)).masked_fill(~causal, 0.0)
        outputs.append(qc @ state.to(qc.dtype) + scores @ kc)  # state is symmetric
        state = state + kc.transpose(-1, -2) @ kc
    return torch.cat(outputs, dim=2), state
