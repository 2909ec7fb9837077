"""The input side of a Titans memory branch (Titans sec. 4.4): x -> q, k, v per head.

Linear projections, a short causal depthwise convolution over time (kernel 4 by default:
on associative recall it made the difference between 74 % and 100 % in a prototype
here), SiLU, and l2-normalised queries and keys.

With packed documents the convolution reaches no token of an earlier document: a document's
first K-1 tokens see zeros before it, as when it runs alone (the taps that crossed the
boundary are taken back out, at those few tokens only).  A carried convolution state (the
last inputs of the call before, ``data.carry_state``) reaches only a row's leading document,
when that continues; the state handed on holds only the inputs of each row's last document.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.documents import PackedDocuments
from .kernels.short_conv import causal_conv
from .kernels.split_heads import split_heads


class MemoryInputs(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        conv_kernel: int = 4,
        activation: str = "silu",
        qk_norm: bool = True,
        conv_init: str = "default",
    ):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.activation, self.qk_norm, self.conv_kernel = activation, qk_norm, conv_kernel
        inner = 3 * heads * head_dim
        self.qkv = nn.Linear(dim, inner, bias=False)
        if conv_kernel:
            self.conv = nn.Conv1d(inner, inner, conv_kernel, groups=inner, bias=True)
        if conv_init == "shift_keys":
            self._shift_keys()

    @torch.no_grad()
    def _shift_keys(self) -> None:
        """H3's shift (Fu et al. 2023, sec. 3.1) as an init: k_t from x_{t-1}, q_t and v_t from
        x_t, W_k = W_q.  Token t then writes the pair x_{t-1} -> x_t, and at a later x_{t-1}
        the query matches that key and reads x_t: the memory starts as a bigram lookup (an
        induction head) that training may keep or unlearn."""
        if self.conv_kernel < 2:
            raise ValueError(
                f"conv_init 'shift_keys' needs conv_kernel >= 2 (a tap one token back), got {self.conv_kernel}"
            )
        width = self.heads * self.head_dim
        self.qkv.weight[width : 2 * width] = self.qkv.weight[:width]
        taps = self.conv.weight  # (3 * width, 1, K): tap K-1 multiplies the current token
        taps.zero_()
        # b_k = b_q keeps k_{t+1} = q_t; a bias at all keeps the first key (zeros in front) off 0,
        # where the l2 normalisation's gradient is 1/eps
        self.conv.bias[width : 2 * width] = self.conv.bias[:width]
        taps[:width, 0, -1] = 1.0  # queries: the current token
        taps[width : 2 * width, 0, -2] = 1.0  # keys: the token before
        taps[2 * width :, 0, -1] = 1.0  # values: the current token

    def _convolve(
        self, qkv: torch.Tensor, past: torch.Tensor | None, activate: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Causal depthwise convolution (and SiLU); the last kernel-1 inputs carry over to the next call."""
        if not self.conv_kernel:
            return (F.silu(qkv) if activate else qkv), None
        return causal_conv(qkv, self.conv.weight.squeeze(1), self.conv.bias, past, silu=activate)

    def _convolve_documents(
        self, qkv: torch.Tensor, documents: PackedDocuments, past: torch.Tensor | None, activate: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The convolution within each packed document: for lag j, the token at position p < j
        of its document (and not at the row's start, where the taps read zeros or ``past``) had
        w_{K-1-j} x_{t-j} of the document before added; it is subtracted again.  ``past`` (B, C,
        K-1) reaches the rows whose leading document continues it (zeros for the others), and
        a later document's first tokens that it reached are corrected as above."""
        if not self.conv_kernel:
            return (F.silu(qkv) if activate else qkv), None
        taps = self.conv.weight.squeeze(1)  # (C, K)
        kernel = self.conv_kernel
        if past is not None:
            past = past * documents.continues[:, None, None].to(past.dtype)
        y, carry = causal_conv(qkv, taps, self.conv.bias, past, silu=False)
        for lag, rows, tokens in documents.cached(
            ("conv_crossings", kernel), lambda: _crossings(documents, kernel)
        ):
            crossed = qkv[rows, tokens - lag] * taps[:, kernel - 1 - lag].to(qkv.dtype)
            y = y.index_put((rows, tokens), -crossed, accumulate=True)
        if past is not None:
            for lag, rows, tokens in documents.cached(
                ("conv_past_crossings", kernel), lambda: _past_crossings(documents, kernel)
            ):
                crossed = past[rows, :, kernel - 1 + tokens - lag] * taps[:, kernel - 1 - lag].to(qkv.dtype)
                y = y.index_put((rows, tokens), -crossed, accumulate=True)
        carry = torch.where(_in_last_document(documents, kernel), carry, 0)
        return (F.silu(y) if activate else y), carry

    def forward(
        self,
        x: torch.Tensor,
        conv_state: torch.Tensor | None = None,
        convolve: bool = True,
        documents: PackedDocuments | None = None,
    ):
        """x (B, T, dim) -> q, k, v (B, H, T, head_dim) and the convolution's carry.

        ``convolve=False`` skips the convolution: each token's q, k, v then depend on that
        token alone (MAC's retrieval queries, which must not mix tokens of a segment).
        ``documents``: x's rows hold packed documents, each convolved alone; ``conv_state``
        then continues each row's leading document.
        """
        activate = self.activation == "silu"
        if convolve and documents is not None:
            qkv, carry = self._convolve_documents(self.qkv(x), documents, conv_state, activate)
        elif convolve:
            qkv, carry = self._convolve(self.qkv(x), conv_state, activate)
        else:
            qkv, carry = self.qkv(x), conv_state
            qkv = F.silu(qkv) if activate else qkv
        q, k, v = split_heads(qkv, self.heads, self.qk_norm)
        return q, k, v, carry


def _crossings(documents: PackedDocuments, kernel: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """For each lag 1 .. K-1, the (row, token) pairs whose tap of that lag reaches an earlier document."""
    found = []
    for lag in range(1, kernel):
        leaked = documents.position < lag
        leaked[:, :lag] = False  # at a row's start the tap reads the zeros in front
        rows, tokens = leaked.nonzero(as_tuple=True)
        if rows.numel():
            found.append((lag, rows, tokens))
    return found


def _past_crossings(documents: PackedDocuments, kernel: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """For each lag 1 .. K-1, the (row, token) pairs, token < lag, of a document that opens
    inside the row (not its leading one), whose tap of that lag reads the carried past."""
    found = []
    for lag in range(1, kernel):
        rows, tokens = (documents.segment[:, :lag] > 0).nonzero(as_tuple=True)
        if rows.numel():
            found.append((lag, rows, tokens))
    return found


def _in_last_document(documents: PackedDocuments, kernel: int) -> torch.Tensor:
    """(B, 1, K-1) bool: whether each input the convolution carries on (the row's last K-1,
    the past's first where the row is shorter) is in the row's last document.  The past
    reaching a row's leading document only, it counts there when that document is the last."""
    segment = documents.segment
    inside = segment == segment[:, -1:]
    if segment.shape[1] < kernel - 1:
        before = (segment[:, -1:] == 0).expand(-1, kernel - 1 - segment.shape[1])
        inside = torch.cat([before, inside], dim=1)
    return inside[:, None, inside.shape[1] - (kernel - 1) :]
