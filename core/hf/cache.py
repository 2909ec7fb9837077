"""Every block's decode state as a transformers ``Cache``, so ``generate()`` carries it.

A miraslab block keeps its own state between calls: the memory's weights and momentum
(``MemoryState``), the attention's post-RoPE keys and values (``KVCache``, only the last
``window - 1`` for sliding windows), MAC's segment state, TNT's memories.  transformers
only needs to hand that state from one forward to the next, know how many tokens it has
seen, and, for beam search, pick rows of the batch.  Each block is one cache layer; the
state is never rebuilt from keys and values, so the memory's recurrence is exactly the one
``miraslab generate`` runs.  Single-token calls go through a
:class:`~miraslab.model.decode_step.DecodeStep` that holds the state meanwhile; it hands the
state back to the layers before anything else reads or reorders them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..api import KVCache
from ..model.decode_step import DecodeStep

# full attention's slots beyond the context when decoding starts; doubled when they run out
DECODE_SLOTS = 256

BatchFn = Callable[[torch.Tensor], torch.Tensor]


def map_batch(state: Any, fn: BatchFn) -> Any:
    """``state`` with ``fn`` applied to every tensor with a batch dimension (the first).

    A KV cache's ``positions`` (one per cached token, shared by the batch) are kept as
    they are; everything else a block state holds is batch-first.
    """
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, KVCache):
        return dataclasses.replace(state, keys=fn(state.keys), values=fn(state.values))
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        changes = {f.name: map_batch(getattr(state, f.name), fn) for f in dataclasses.fields(state) if f.init}
        return dataclasses.replace(state, **changes)
    if isinstance(state, dict):
        return {key: map_batch(value, fn) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(map_batch(value, fn) for value in state)
    return state


class BlockStateLayer(CacheLayerMixin):
    """One block's decode state; keys and values never pass through ``update``."""

    is_compileable = False
    is_croppable = False  # a memory's weights cannot be rolled back a token (no assisted decoding)
    supports_early_init = False

    def __init__(self) -> None:
        super().__init__()
        self.state: Any = None
        self.seen = 0  # tokens this block has read

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise NotImplementedError("a miraslab block keeps its own keys and values")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("a miraslab block keeps its own keys and values")

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1

    def offload(self) -> None:  # the state is small beside the weights: it stays where it is
        return None

    def prefetch(self) -> None:
        return None

    def reset(self) -> None:
        self.state, self.seen = None, 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.state = map_batch(self.state, lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.state = map_batch(self.state, lambda t: t[indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.state = map_batch(self.state, lambda t: t.repeat_interleave(repeats, dim=0))


class MiraslabCache(Cache):
    """The decode state of a miraslab model, one :class:`BlockStateLayer` per block."""

    def __init__(self, n_layers: int):
        super().__init__(layers=[BlockStateLayer() for _ in range(n_layers)])
        self.decoder: DecodeStep | None = None  # holds the state while decoding token by token

    def step(self, model: torch.nn.Module, token: torch.Tensor, compile: bool) -> torch.Tensor:
        """The logits (B, 1, V) after ``token`` (B, 1), through the decode step."""
        if self.decoder is None:
            capacity = self.get_seq_length() + DECODE_SLOTS
            self.decoder = DecodeStep(model, self.decode_state(), capacity, compile=compile)
        logits = self.decoder.step(token)
        for layer in self.layers:
            layer.seen += 1
        return logits[:, None]

    def settle(self) -> None:
        """The decode step's state back into the layers (it stops holding it)."""
        if self.decoder is not None:
            decoder, self.decoder = self.decoder, None
            self.store(decoder.decode_state())

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.settle()
        super().reorder_cache(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.settle()
        super().batch_select_indices(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.settle()
        super().batch_repeat_interleave(repeats)

    def reset(self) -> None:
        self.decoder = None
        super().reset()

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].seen if self.layers else 0

    def decode_state(self) -> Any:
        """The ``DecodeState`` the model continues from, or None before the first call."""
        from ..model.language_model import DecodeState

        self.settle()
        if not self.layers or self.layers[0].state is None:
            return None
        return DecodeState([layer.state for layer in self.layers], self.layers[0].seen)

    def store(self, state: Any) -> None:
        """Keep the ``DecodeState`` a forward returned."""
        for layer, block_state in zip(self.layers, state.blocks, strict=True):
            layer.state, layer.seen = block_state, state.position
