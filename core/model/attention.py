"""Causal softmax attention with persistent tokens, prefix tokens, a sliding window and a KV cache.

For the tokens x_t of one call, at positions t = p0 .. p0 + T - 1 (p0 = 0 without a cache):

    q_t = rope(W_q x_t, t)      k_t = rope(W_k x_t, t)      v_t = W_v x_t
    K   = [W_k P ; W_k prefix ; cached keys   ; k_{p0..t}]
    V   = [W_v P ; W_v prefix ; cached values ; v_{p0..t}]
    y_t = W_o softmax(q_t K^T / sqrt(d) + mask_t) V          (per head)

P are the persistent tokens of Titans (arXiv 2501.00663, §3.3): learned, input-independent
tokens prepended to the keys.  They and the prefix tokens (retrieved memory in the MAC
layout) are position-free: no RoPE, and every query sees them.  mask_t lets query t see the
sequence tokens s with s <= t and, when ``window > 0``, t - s < window.

The cache carries the post-RoPE keys and values of past sequence tokens, only those a future
token can still see (the last ``window - 1``, or all of them when ``window = 0``), so one
call over a sequence and many calls over its pieces give the same outputs.

A decode step may carry a :class:`RingKVCache` instead: preallocated keys and values (the
persistent tokens' first, then a ring of ``window`` slots, or of a set capacity for full
attention) that one token at a time writes in place, at slot ``position % size``; the
visibility rule on the slots' stored positions keeps what a KVCache would keep, with no
concatenation, no trimming and no shape that changes from token to token.

Packed documents (``documents``, a :class:`~miraslab.data.documents.PackedDocuments`): query t
also sees only the sequence tokens of its own document (a block-diagonal mask; the persistent
and prefix tokens stay visible), and RoPE rotates it by its position inside its document, so
each document reads as it would alone.  With a cache as well (state passing across training
steps, ``data.carry_state``), the cached keys of a row's last document stay visible to the
row's leading partial document only, which is rotated on from where that document stopped;
a row whose first token opens a document sees none of them.  The cache then also says which
of its keys are in their row's last document and where that document's next token sits.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..components import build_component
from ..data.documents import PackedDocuments
from ..errors import RecipeError
from .attention_backend import AttentionBackend
from .rope import RotaryEmbedding
from .spec import AttentionSpec


@dataclasses.dataclass(eq=False)
class KVCache:
    """Keys and values of past sequence tokens (not persistent or prefix tokens)."""

    keys: torch.Tensor  # (B, H, S, d), RoPE applied
    values: torch.Tensor  # (B, H, S, d)
    positions: torch.Tensor  # (S,) LongTensor, the positions of those tokens
    next_position: int  # the position the next token will take
    # written with packed documents: (B, S) bool, the key is in its row's last document; and
    # (B,) long, the position inside that document the row's next token takes (its rotation)
    open_document: torch.Tensor | None = None
    document_position: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.keys.shape[-2]


# the position an empty ring slot holds: after every query, so causally invisible
EMPTY_SLOT = 2**62


@dataclasses.dataclass(eq=False)
class RingKVCache:
    """A decode step's keys and values in preallocated slots, written in place."""

    keys: torch.Tensor  # (B, H, free + size, d): position-free tokens' keys, then the ring
    values: torch.Tensor  # (B, H, free + size, d)
    positions: torch.Tensor  # (free + size,) LongTensor: -1 position-free, EMPTY_SLOT unwritten
    position: torch.Tensor  # () LongTensor: the position the next token takes
    free: int  # position-free slots in front (persistent tokens)

    @property
    def size(self) -> int:
        return self.keys.shape[2] - self.free

    def as_kv_cache(self, window: int) -> KVCache:
        """The KVCache a call over the same tokens would have returned (the slots in position
        order, only those a next token can see)."""
        ring = self.positions[self.free :]
        next_position = int(self.position)
        seen = (ring != EMPTY_SLOT) & ((ring > next_position - window) if window else True)
        order = ring.masked_fill(~seen, EMPTY_SLOT).argsort()[: int(seen.sum())] + self.free
        return KVCache(self.keys[:, :, order], self.values[:, :, order], self.positions[order], next_position)


def default_head_dim(dim: int, heads: int, rope: bool) -> int:
    """dim // heads, rounded down to an even width when RoPE rotates pairs of channels."""
    width = dim // heads
    return width - width % 2 if rope else width


def drop_context(out: torch.Tensor, own: torch.Tensor, share: float, unit: str) -> torch.Tensor:
    """Attention-branch dropout: for a ``share`` of tokens (unit "token") or rows ("row"), the
    attention's output is what it reads over the token alone, softmax over one key = its own
    value; the context it would have read is gone, so a hybrid's memory has to supply it.
    out, own: (B, H, T, d)."""
    batch, _, length, _ = out.shape
    dropped = torch.rand(batch, 1, length if unit == "token" else 1, 1, device=out.device) < share
    return torch.where(dropped, own.to(out.dtype), out)


class Attention(nn.Module):
    """Multi-head attention over persistent tokens, an optional prefix and the causal past."""

    def __init__(self, dim: int, heads: int, spec: AttentionSpec):
        super().__init__()
        self.heads = heads
        self.head_dim = spec.head_dim or default_head_dim(dim, heads, spec.rope)
        self.window = spec.window
        # SWAX's stochastic window: set per training step by miraslab.model.attention_safeguards
        self.train_window = spec.train_window if spec.window > 0 else ()
        self.step_window: int | None = None
        self.branch_dropout, self.branch_dropout_unit = spec.branch_dropout, spec.branch_dropout_unit
        if self.head_dim < 1 or (spec.rope and self.head_dim % 2):
            raise RecipeError(
                [
                    f"model.attention.head_dim: rotary embeddings need an even head width >= 2, got "
                    f"{self.head_dim}; set another head_dim or rope = false"
                ]
            )
        inner = heads * self.head_dim
        self.q_proj = nn.Linear(dim, inner, bias=False)
        self.k_proj = nn.Linear(dim, inner, bias=False)
        self.v_proj = nn.Linear(dim, inner, bias=False)
        self.out_proj = nn.Linear(inner, dim, bias=False)
        self.rope = RotaryEmbedding(self.head_dim, spec.rope_base) if spec.rope else None
        # unit scale, like the normalised tokens they sit beside, so that their keys compete
        # for attention from the first step (and distinct, so they do not learn in lockstep)
        self.persistent_tokens = (
            nn.Parameter(torch.randn(spec.persistent_tokens, dim)) if spec.persistent_tokens else None
        )
        self.backend: AttentionBackend = build_component(spec.backend)

    def forward(
        self,
        x: torch.Tensor,
        prefix: torch.Tensor | None = None,
        cache: KVCache | None = None,
        return_cache: bool = False,
        aligned: torch.Tensor | None = None,
        documents: PackedDocuments | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, KVCache]:
        """x (B, T, dim), prefix (B, N, dim) -> (B, T, dim), and the next cache if asked.

        ``aligned`` (B, T, dim) are extra tokens at x's positions (MAC's retrieved memory):
        no RoPE, seen causally like the sequence tokens, and kept in the cache.
        ``documents``: x's rows hold packed documents, each attending only within itself
        (no ``aligned`` tokens); a cache continues each row's leading document.
        """
        self._check_backend(x)
        if isinstance(cache, RingKVCache):
            if prefix is not None or aligned is not None or documents is not None or x.shape[1] != 1:
                raise ValueError(
                    "Attention: a RingKVCache takes one token a call, without prefix, aligned tokens or documents"
                )
            y = self._ring_step(x, cache)
            return (y, cache) if return_cache else y
        if documents is not None and aligned is not None:
            raise ValueError("Attention: packed documents run without aligned tokens")
        if documents is None and cache is not None and cache.open_document is not None:
            raise ValueError(
                "Attention: a KV cache written with packed documents continues with packed documents"
            )
        batch, length, _ = x.shape
        start = cache.next_position if cache is not None else 0
        positions = torch.arange(start, start + length, device=x.device)

        q = self._split_heads(self.q_proj(x))
        k = self._split_heads(self.k_proj(x))
        v = own_values = self._split_heads(self.v_proj(x))
        window = self.step_window if self.training and self.step_window is not None else self.window
        # packed documents: each rotated from its own first token, as when it runs alone
        # (the position-free keys make a query's absolute rotation matter)
        rotation = positions if documents is None else self._document_rotation(documents, cache)
        if self.rope is not None:
            q, k = self.rope(q, rotation), self.rope(k, rotation)
        new_positions = positions
        if aligned is not None:
            k = torch.cat([self._split_heads(self.k_proj(aligned)), k], dim=2)
            v = torch.cat([self._split_heads(self.v_proj(aligned)), v], dim=2)
            new_positions = torch.cat([positions, positions])

        # the sequence's keys: the cached past, then this call's tokens
        if cache is not None:
            k = torch.cat([cache.keys, k], dim=2)
            v = torch.cat([cache.values, v], dim=2)
            seq_positions = torch.cat([cache.positions, new_positions])
        else:
            seq_positions = new_positions

        # position-free keys in front: persistent tokens, then the prefix (k_pos = -1)
        keys, values, key_positions = k, v, seq_positions
        free_tokens = self._position_free_tokens(batch, prefix)
        if free_tokens is not None:
            keys = torch.cat([self._split_heads(self.k_proj(free_tokens)), k], dim=2)
            values = torch.cat([self._split_heads(self.v_proj(free_tokens)), v], dim=2)
            key_positions = torch.cat([positions.new_full((free_tokens.shape[1],), -1), seq_positions])

        seq_doc = None  # with documents: (B, S + T) the document of each sequence key, -1 for none
        if documents is None:
            out = self.backend(q, keys, values, positions, key_positions, window)
        else:
            q_doc = seq_doc = documents.segment
            if cache is not None:  # the row's leading document (0) continues the cached last one
                open_document = cache.open_document
                if open_document is None:  # a cache written without documents: one document
                    open_document = torch.ones(batch, len(cache), dtype=torch.bool, device=x.device)
                carried = open_document & documents.continues[:, None]
                seq_doc = torch.cat([torch.where(carried, 0, -1), q_doc], dim=1)
            free = key_positions.shape[0] - seq_doc.shape[1]  # position-free keys first: seen by all
            k_doc = torch.cat([q_doc.new_full((batch, free), -1), seq_doc], dim=1)
            out = self.backend(q, keys, values, positions, key_positions, window, q_doc, k_doc)
        if self.training and self.branch_dropout > 0:
            out = drop_context(out, own_values, self.branch_dropout, self.branch_dropout_unit)
        y = self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))
        if not return_cache:
            return y

        # what the next token can still see: the last window - 1 positions, or all of them
        next_position = start + length
        keep = slice(None) if window == 0 else seq_positions > next_position - window
        next_cache = KVCache(
            keys=k[:, :, keep],
            values=v[:, :, keep],
            positions=seq_positions[keep],
            next_position=next_position,
        )
        if seq_doc is not None:  # what the row's next tokens may continue: its last document
            next_cache.open_document = (seq_doc == seq_doc[:, -1:])[:, keep]
            next_cache.document_position = rotation[:, -1] + 1
        return y, next_cache

    def ring_cache(self, cache: KVCache | None, batch: int, capacity: int, like: torch.Tensor) -> RingKVCache:
        """``cache`` (a call's KVCache, or None for no past) moved into preallocated slots:
        ``window`` of them, or ``capacity`` (the most tokens the context will hold) for full
        attention; ``like`` gives the dtype and device."""
        # full attention: at least 2 slots, so that the keys never look like the query's
        # own causal block (a check that reads positions back, see Visibility.causal)
        size = self.window if self.window > 0 else max(capacity, 2)
        held = len(cache) if cache is not None else 0
        if cache is not None and cache.open_document is not None:
            raise ValueError(
                "Attention.ring_cache: a KV cache written with packed documents keeps them per row"
            )
        if held > size or size < 1:
            raise ValueError(
                f"Attention.ring_cache: {held} cached tokens do not fit {size} slots (capacity {capacity})"
            )
        free = self.persistent_tokens.shape[0] if self.persistent_tokens is not None else 0
        keys = like.new_zeros(batch, self.heads, free + size, self.head_dim)
        values = torch.zeros_like(keys)
        positions = torch.full((free + size,), EMPTY_SLOT, dtype=torch.long, device=like.device)
        if free:  # the persistent tokens' keys depend on the weights alone: projected once
            tokens = self.persistent_tokens.unsqueeze(0).expand(batch, -1, -1).to(like.dtype)
            keys[:, :, :free] = self._split_heads(self.k_proj(tokens))
            values[:, :, :free] = self._split_heads(self.v_proj(tokens))
            positions[:free] = -1
        position = torch.tensor(cache.next_position if cache is not None else 0, device=like.device)
        if held:
            slots = free + cache.positions % size
            keys[:, :, slots] = cache.keys.to(like.dtype)
            values[:, :, slots] = cache.values.to(like.dtype)
            positions[slots] = cache.positions
        return RingKVCache(keys, values, positions, position, free)

    def _ring_step(self, x: torch.Tensor, cache: RingKVCache) -> torch.Tensor:
        """One token (B, 1, dim) through the ring: written at slot position % size, then
        attended with the slots.  With ``size = window`` the slot it overwrites held the
        token ``window`` back, the first one this token no longer sees."""
        batch = x.shape[0]
        position = cache.position.view(1)
        q = self._split_heads(self.q_proj(x))
        k = self._split_heads(self.k_proj(x))
        v = self._split_heads(self.v_proj(x))
        if self.rope is not None:
            q, k = self.rope(q, position), self.rope(k, position)
        slot = cache.free + position % cache.size
        cache.keys.index_copy_(2, slot, k.to(cache.keys.dtype))
        cache.values.index_copy_(2, slot, v.to(cache.values.dtype))
        cache.positions.index_copy_(0, slot, position)
        out = self.backend(q, cache.keys, cache.values, position, cache.positions, self.window)
        cache.position.add_(1)
        return self.out_proj(out.transpose(1, 2).reshape(batch, 1, -1))

    @staticmethod
    def _document_rotation(documents: PackedDocuments, cache: KVCache | None) -> torch.Tensor:
        """(B, T): each token's position inside its document; a row's leading document that
        continues the cache's goes on from where that one stopped."""
        if cache is None:
            return documents.position
        carried = cache.document_position
        if carried is None:  # a cache written without documents: its row was one document
            carried = torch.full_like(documents.continues, cache.next_position, dtype=torch.long)
        offset = torch.where(documents.continues, carried, 0)
        return documents.position + torch.where(documents.segment == 0, offset[:, None], 0)

    def empty_cache(self, x: torch.Tensor, position: int) -> KVCache:
        """A cache holding nothing whose next token is at ``position`` (a fresh MAC segment)."""
        empty = x.new_zeros(x.shape[0], self.heads, 0, self.head_dim)
        return KVCache(empty, empty, torch.zeros(0, dtype=torch.long, device=x.device), position)

    def _check_backend(self, x: torch.Tensor) -> None:
        reason = self.backend.unavailable_reason(x.device)
        needs_backward = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters())
        )
        if reason is None and needs_backward:
            reason = self.backend.backward_unavailable_reason(x.device)
        if reason is not None:
            raise RecipeError([f"model.attention.backend: {reason}"])

    def _position_free_tokens(self, batch: int, prefix: torch.Tensor | None) -> torch.Tensor | None:
        """(B, P + N, dim): persistent tokens then prefix tokens, or None when there are neither."""
        parts = []
        if self.persistent_tokens is not None:
            parts.append(self.persistent_tokens.unsqueeze(0).expand(batch, -1, -1))
        if prefix is not None:
            if prefix.dim() != 3 or prefix.shape[0] != batch or prefix.shape[2] != self.q_proj.in_features:
                raise ValueError(
                    f"prefix must be (batch={batch}, tokens, dim={self.q_proj.in_features}), "
                    f"got {tuple(prefix.shape)}"
                )
            parts.append(prefix)
        return torch.cat(parts, dim=1) if parts else None

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, H * d) -> (B, H, T, d)."""
        return t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
