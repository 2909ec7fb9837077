"""What an attention backend computes, and the naive oracle every backend is tested against.

A backend computes softmax attention of queries over keys under one visibility rule, stated
on token positions rather than on indices so that a KV cache, a sliding window and
position-free tokens (Titans' persistent memory, MAC's retrieved memory) are one case::

    visible(i, j) = k_pos[j] < 0                                   # position-free: always
                    or (k_pos[j] <= q_pos[i]                       # causal
                        and (window == 0 or q_pos[i] - k_pos[j] < window))

    out_i = sum_j softmax_j(q_i . k_j * scale + (0 if visible(i, j) else -inf)) v_j

so ``window = w`` lets each query see itself and the ``w - 1`` tokens before it.

Packed documents (``data.reset_at_documents`` run packed) add one clause per batch row:
query i sees sequence key j only when both belong to the same document (``q_doc[b, i] ==
k_doc[b, j]``), a block-diagonal mask; position-free keys stay visible to every query.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def is_visible(q_pos: Tensor, k_pos: Tensor, window: int) -> Tensor:
    """The visibility rule, elementwise on broadcastable position tensors (also a flex mask_mod)."""
    visible = k_pos <= q_pos
    if window > 0:
        visible = visible & (q_pos - k_pos < window)
    return visible | (k_pos < 0)


def visibility_mask(q_pos: Tensor, k_pos: Tensor, window: int) -> Tensor:
    """(Tq, Tk) boolean mask, True where query i may attend to key j (see module docstring)."""
    return is_visible(q_pos[:, None], k_pos[None, :], window)


def reference_attention(
    q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor, window: int, scale: float | None = None
) -> Tensor:
    """softmax(q k^T * scale + mask) v, materialised in full: the oracle for tests.

    q: (B, H, Tq, d); k, v: (B, H, Tk, d); returns (B, H, Tq, d).  A query with no visible
    key would give NaN here; it cannot happen in miraslab, where a query always sees itself.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    scores = q @ k.transpose(-2, -1) * scale
    scores = scores.masked_fill(~visibility_mask(q_pos, k_pos, window), float("-inf"))
    return scores.softmax(dim=-1) @ v


def keys_end_at_queries(q_pos: Tensor, k_pos: Tensor) -> bool:
    """True when the keys are consecutive positions p0, p0+1, ... (no position-free tokens)
    and the queries are the last ``Tq`` of them.

    That is the layout "causal" and "bottom-right" kernel masks assume, so a backend may use
    them instead of a materialised mask.  Reading the answer synchronises with the device once.
    """
    n_queries, n_keys = q_pos.shape[0], k_pos.shape[0]
    if n_queries > n_keys or n_keys == 0:
        return False
    consecutive = k_pos[:1] + torch.arange(n_keys, device=k_pos.device)
    aligned = (k_pos == consecutive).all() & (q_pos == consecutive[n_keys - n_queries :]).all()
    return bool(aligned & (k_pos[0] >= 0))


class Visibility:
    """One attention call's visibility rule in the forms kernels take: the mask builder every
    backend shares.

    ``aligned`` says whether the keys are the queries' consecutive history (then a kernel's own
    causal, bottom-right or sliding-window mask states the rule, index ``j`` of the keys being
    index ``i + shift`` of the queries); ``mask()`` is the boolean (Tq, Tk) mask for every
    other case and ``visible(q_index, k_index)`` the rule on indices (a flex ``mask_mod``).

    With packed documents (``q_doc`` (B, Tq) and ``k_doc`` (B, Tk), each token's document) the
    rule also depends on the batch row: ``documents`` is True, ``causal`` False, ``mask()`` is
    (B, 1, Tq, Tk) (it broadcasts over heads) and ``visible`` takes the row as a third index.
    """

    def __init__(
        self,
        q_pos: Tensor,
        k_pos: Tensor,
        window: int,
        q_doc: Tensor | None = None,
        k_doc: Tensor | None = None,
    ):
        if (q_doc is None) != (k_doc is None):
            raise ValueError("Visibility: give both q_doc and k_doc, or neither")
        self.q_pos, self.k_pos, self.window = q_pos, k_pos, window
        self.q_doc, self.k_doc = q_doc, k_doc
        self.n_queries, self.n_keys = q_pos.shape[0], k_pos.shape[0]
        self.shift = self.n_keys - self.n_queries  # key j at position p0 + j, query i at p0 + shift + i
        self._aligned: bool | None = None

    @property
    def aligned(self) -> bool:
        """:func:`keys_end_at_queries`, asked once (it synchronises with the device)."""
        if self._aligned is None:
            self._aligned = keys_end_at_queries(self.q_pos, self.k_pos)
        return self._aligned

    @property
    def documents(self) -> bool:
        """Whether packed documents restrict the rule per batch row (a block-diagonal mask)."""
        return self.q_doc is not None

    @property
    def causal(self) -> bool:
        """The plain causal case: keys are exactly the queries' own positions, no window, no documents."""
        # cheap shape tests first: the position check synchronises with the device
        return self.window == 0 and self.n_queries == self.n_keys and not self.documents and self.aligned

    def mask(self) -> Tensor:
        """(Tq, Tk) boolean mask, True where query i may attend to key j; (B, 1, Tq, Tk) with documents."""
        mask = visibility_mask(self.q_pos, self.k_pos, self.window)
        if self.q_doc is None or self.k_doc is None:
            return mask
        same = (self.q_doc[:, :, None] == self.k_doc[:, None, :]) | (self.k_pos < 0)
        return (mask & same).unsqueeze(1)

    def visible(self, q_index: Tensor, k_index: Tensor, b_index: Tensor | None = None) -> Tensor:
        """The rule on query and key indices, elementwise (what a flex ``mask_mod`` computes);
        with documents, ``b_index`` is the batch row."""
        if self.aligned:
            visible = is_visible(q_index + self.shift, k_index, self.window)
        else:
            visible = is_visible(self.q_pos[q_index], self.k_pos[k_index], self.window)
        if self.q_doc is None or self.k_doc is None:
            return visible
        if b_index is None:
            raise ValueError("Visibility.visible: packed documents need the batch row (b_index)")
        same = self.q_doc[b_index, q_index] == self.k_doc[b_index, k_index]
        return visible & (same | (self.k_pos[k_index] < 0))


class AttentionBackend(nn.Module):
    """Base class of attention backend plugins (``register_attentions``).

    ``forward(q, k, v, q_pos, k_pos, window)`` computes exactly :func:`reference_attention`
    with the default scale 1/sqrt(d): q (B, H, Tq, d); k, v (B, H, Tk, d); positions are
    LongTensors (Tq,) and (Tk,) on the same device, ``k_pos < 0`` marking position-free keys;
    ``q_doc`` (B, Tq) and ``k_doc`` (B, Tk), when given, each token's packed document.
    A backend implements ``attend(q, k, v, visibility)``, given the call's :class:`Visibility`
    (or overrides ``forward`` itself).
    """

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        q_pos: Tensor,
        k_pos: Tensor,
        window: int,
        q_doc: Tensor | None = None,
        k_doc: Tensor | None = None,
    ) -> Tensor:
        return self.attend(q, k, v, Visibility(q_pos, k_pos, window, q_doc, k_doc))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, visibility: Visibility) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement attend (or forward)")

    def documents_reason(self) -> str | None:
        """Why this backend cannot mask packed documents, or None: ``attend`` receives them in
        its Visibility; a backend that overrides ``forward`` instead must override this too."""
        if type(self).forward is not AttentionBackend.forward:
            return f"attention backend {type(self).__name__} overrides forward, which takes no documents"
        return None

    def unavailable_reason(self, device: torch.device) -> str | None:
        """None when this backend can run on ``device``; otherwise a sentence saying why not
        and what to do (shown to the user as ``model.attention.backend: <reason>``)."""
        return None

    def backward_unavailable_reason(self, device: torch.device) -> str | None:
        """Like :meth:`unavailable_reason`, for backends that run forward-only on some
        devices: None when gradients can flow through this backend on ``device``."""
        return None
