"""A decode step: one token through every block, eager or as one compiled function.

After the prompt (``generation.prefill``), each new token runs the model's forward with the
decode state; :class:`DecodeStep` makes that cheap:

* attention caches become :class:`~miraslab.model.attention.RingKVCache` slots, written in
  place (no concatenation and trimming per token; one shape for the whole decode);
* the memory reads and writes one token through the token loop's step
  (``paths.recurrent.step``);
* with ``compile=True`` the whole step, every block, is one ``torch.compile``d function
  (``fullgraph``, static shapes) over the state held in preallocated tensors, which it
  overwrites in place: no Python per layer.  On CUDA it is compiled with
  ``mode="reduce-overhead"`` (CUDA graphs; the state's tensors are marked static, so that
  the graph writes them where they are), on the CPU with the default mode.  When compiling
  fails the step runs eagerly, and :attr:`DecodeStep.mode` says which ran.

The state's integers cannot be graph inputs without a graph per value: a memory's ``offset``
into its chunk and the blocks' ``position`` counters.  The step reads ``offset`` only to
close the chunk after the token that fills it (``paths.recurrent.step``), and the counters
not at all, so the compiled function is given fixed stand-ins (offset ``chunk - 1`` when the
token closes the chunk, 0 otherwise; position 0): two graphs cover every token, and the
true integers are kept here, advanced by one token per call.  A state holding integers of
any other kind (MAC's segments, TNT's shards, a plugin's own state) decodes through the
model's forward, as before, and :attr:`DecodeStep.mode` says why.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..memory.layer import LayerState
from ..memory.neural_memory import NeuralMemory, NeuralMemoryState
from ..memory.rule.state import MemoryState
from .attention import Attention, KVCache, RingKVCache
from .language_model import DecodeState

# the dataclasses a step may hold, and the integers in them it knows: token counters it
# advances, a memory's offset into its chunk, the ring's count of position-free slots
_KNOWN = (DecodeState, LayerState, NeuralMemoryState, MemoryState, RingKVCache)
_POSITION_FIELDS = {DecodeState: "position", LayerState: "position"}
_INTEGERS = {
    (DecodeState, "position"),
    (LayerState, "position"),
    (MemoryState, "offset"),
    (RingKVCache, "free"),
}


def _fields(value: Any) -> Iterator[tuple[str, Any]]:
    for field in dataclasses.fields(value):
        yield field.name, getattr(value, field.name)


def tensor_paths(state: Any, path: tuple = ()) -> list[tuple]:
    """Where each tensor of a decode state sits: a key per level (a field name, a dict key or
    an index), in a fixed order (dataclass fields, dict keys, items)."""
    if isinstance(state, torch.Tensor):
        return [path]
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return [p for name, value in _fields(state) for p in tensor_paths(value, (*path, ("field", name)))]
    if isinstance(state, dict):
        return [p for key in state for p in tensor_paths(state[key], (*path, ("item", key)))]
    if isinstance(state, (list, tuple)):
        return [p for index, value in enumerate(state) for p in tensor_paths(value, (*path, ("item", index)))]
    return []


def _at(state: Any, path: tuple) -> Any:
    for kind, key in path:
        state = getattr(state, key) if kind == "field" else state[key]
    return state


def _rebuild(state: Any, tensor: Callable[[torch.Tensor], torch.Tensor], dataclass_fn: Callable) -> Any:
    """``state`` with every tensor mapped by ``tensor`` and every dataclass by ``dataclass_fn``
    (given the dataclass and its mapped fields)."""
    if isinstance(state, torch.Tensor):
        return tensor(state)
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        changes = {name: _rebuild(value, tensor, dataclass_fn) for name, value in _fields(state)}
        return dataclass_fn(state, changes)
    if isinstance(state, dict):
        return {key: _rebuild(value, tensor, dataclass_fn) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_rebuild(value, tensor, dataclass_fn) for value in state)
    return state


def _unsupported(value: Any, where: str) -> str | None:
    """Why a state cannot be stepped by the compiled function (an integer it cannot advance,
    a type it does not know), or None."""
    if isinstance(value, (torch.Tensor, type(None), bool, float, str)):
        return None
    if isinstance(value, int):
        return f"{where} is an integer the step does not know how to advance"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if not isinstance(value, _KNOWN):
            return f"{where} is a {type(value).__name__}"
        fields = ((name, field) for name, field in _fields(value) if (type(value), name) not in _INTEGERS)
        items: Any = ((f".{name}", field) for name, field in fields)
    elif isinstance(value, dict):
        items = ((f"[{key!r}]", item) for key, item in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"[{index}]", item) for index, item in enumerate(value))
    else:
        return f"{where} is a {type(value).__name__}"
    for key, item in items:
        if (reason := _unsupported(item, where + key)) is not None:
            return reason
    return None


def _dataclasses(state: Any) -> list[Any]:
    """Every dataclass instance in a decode state, innermost first."""
    found: list[Any] = []
    _rebuild(state, lambda t: t, lambda value, _: found.append(value))
    return found


def _memory_states(state: Any) -> list[MemoryState]:
    return [value for value in _dataclasses(state) if isinstance(value, MemoryState)]


def with_ring_caches(model: nn.Module, state: DecodeState, capacity: int) -> DecodeState:
    """``state`` with each block's attention cache moved into ring slots (KVCache -> RingKVCache);
    ``capacity``: the most tokens a full-attention cache will hold."""
    blocks = []
    for index, (block, block_state) in enumerate(zip(model.blocks, state.blocks, strict=True)):
        attentions = [m for m in block.modules() if isinstance(m, Attention)]

        def convert(cache: Any, attentions: list[Attention] = attentions, index: int = index) -> Any:
            if not isinstance(cache, KVCache):
                return cache
            if len(attentions) != 1:
                raise ValueError(f"layer {index}: a KV cache, but {len(attentions)} attention modules")
            return attentions[0].ring_cache(cache, cache.keys.shape[0], capacity, cache.keys)

        blocks.append(_map_caches(block_state, convert))
    return DecodeState(blocks, state.position)


def _map_caches(state: Any, convert: Callable[[Any], Any]) -> Any:
    """``convert`` applied to every item of a block's state (a tuple or list of parts, or one)."""
    if isinstance(state, tuple):
        return tuple(_map_caches(value, convert) for value in state)
    if isinstance(state, list):
        return [_map_caches(value, convert) for value in state]
    return convert(state)


def _step_into(
    model: nn.Module, token: torch.Tensor, state: DecodeState, buffers: list[torch.Tensor], paths: tuple
) -> torch.Tensor:
    """One token (B, 1) with ``state``, whose tensors are ``buffers`` at ``paths``
    (:func:`tensor_paths`); the state after it is written into those buffers; returns the
    logits (B, V).  What the compiled step runs.  The paths are found outside: walking the
    dataclasses here would make dynamo guard each call on their fields (Python guards)."""
    logits, after = model(token, state=state, return_state=True)
    for buffer, path in zip(buffers, paths, strict=True):
        value = _at(after, path)
        if value is buffer:  # written in place already (the ring caches)
            continue
        if value.shape != buffer.shape or value.dtype != buffer.dtype:
            raise ValueError(
                f"the decode state changed a tensor from {tuple(buffer.shape)} {buffer.dtype} "
                f"to {tuple(value.shape)} {value.dtype}"
            )
        buffer.copy_(value)
    return logits[:, -1]


class DecodeStep:
    """Continues ``state`` (a prefill's DecodeState) one token per call: ``step(token)`` takes
    token ids (B, 1) and returns the next logits (B, V); ``decode_state()`` the state reached.

    ``capacity``: the most tokens (prompt and generated) full attention will hold.
    ``compile``: run the step as one compiled function (see the module docstring).
    ``mode`` says what runs: ``"compiled (CUDA graphs)"``, ``"compiled"``, ``"eager"``, or
    ``"forward"`` (a state the step cannot hold; the model's forward per token)."""

    def __init__(self, model: nn.Module, state: DecodeState, capacity: int, compile: bool = False):
        self.model, self.capacity, self.compile = model, capacity, compile
        # full attention keeps every token: its ring must not wrap (see step)
        self.full_attention = any(m.window == 0 for m in model.modules() if isinstance(m, Attention))
        self._start(state)

    def _start(self, state: DecodeState) -> None:
        """Hold ``state`` in ring caches (or as it is, for the forward), compiled if asked."""
        model = self.model
        self._compiled: Callable | None = None
        self._canonical: dict[tuple[bool, ...], DecodeState] = {}
        memories = [m for m in model.modules() if isinstance(m, NeuralMemory)]
        try:
            ringed = with_ring_caches(model, state, self.capacity)
            reason = _unsupported(ringed, "the state")
            chunks = self._chunks(ringed)
        except ValueError as error:
            reason = str(error)
        if reason is None and any(m.ablation is not None or m.record for m in memories):
            reason = "a memory is ablated or recording its norms"
        if reason is not None:
            self.state, self.mode, self.reason = state, "forward", reason
            return
        self.state = ringed
        self.mode, self.reason, self.chunks = "eager", "", chunks
        if self.compile:
            self._compile()

    def _chunks(self, state: DecodeState) -> list[int]:
        """The token loop's chunk of each MemoryState in ``state``, in ``_memory_states`` order."""
        chunks = []
        for index, (block, block_state) in enumerate(zip(self.model.blocks, state.blocks, strict=True)):
            found = _memory_states(block_state)
            owners = [m for m in block.modules() if isinstance(m, NeuralMemory)]
            if found and len(owners) != 1:
                raise ValueError(f"layer {index}: {len(found)} memory states for {len(owners)} memories")
            chunks += [owners[0].step_chunk] * len(found) if found else []
        return chunks

    def _compile(self) -> None:
        # distinct storage per tensor: a closed chunk's start and weights are one tensor,
        # and an initial state's weights a broadcast view, neither of which can be written
        self.state = _rebuild(
            self.state,
            lambda t: t.clone(memory_format=torch.contiguous_format),
            lambda value, changes: dataclasses.replace(value, **changes),
        )
        # the live state's objects stay the same from here on (tensors and integers change in
        # place): found once, not walked every token
        self._memory_objects = _memory_states(self.state)
        self._counters = [
            (value, name) for value in _dataclasses(self.state) if (name := _POSITION_FIELDS.get(type(value)))
        ]
        self._paths = tuple(tensor_paths(self.state))
        self._buffers = [_at(self.state, path) for path in self._paths]
        cuda = any(t.is_cuda for t in self._buffers)
        try:
            if cuda:
                for tensor in self._buffers:
                    torch._dynamo.mark_static_address(tensor)
            options: dict[str, Any] = {"fullgraph": True, "dynamic": False}
            if cuda:
                options["mode"] = "reduce-overhead"
            self._compiled = torch.compile(_step_into, **options)
        except Exception as error:  # torch.compile unavailable here (platform, Python version)
            self._fall_back(error)
            return
        self.mode = "compiled (CUDA graphs)" if cuda else "compiled"

    def _fall_back(self, error: BaseException) -> None:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        self._compiled, self.mode, self.reason = None, "eager", f"compiling failed: {first}"
        warnings.warn(f"decode step: {self.reason}; decoding eagerly", RuntimeWarning, stacklevel=3)

    def describe(self) -> str:
        """One line saying which step runs (and why, when it is not the compiled one)."""
        return f"decode step: {self.mode}" + (f" ({self.reason})" if self.reason else "")

    @torch.no_grad()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        """The logits (B, V) after ``token`` (B, 1); the state advances one token."""
        if self.mode != "forward" and self.full_attention and self.state.position >= self.capacity:
            # more tokens than full attention's slots: twice the slots (recompiled for the new shape)
            self.capacity *= 2
            self._start(self.decode_state())
        if self.mode == "forward" or self._compiled is None:
            logits, self.state = self.model(token, state=self.state, return_state=True)
            return logits[:, -1]
        memory_states = self._memory_objects
        closes = tuple(
            (m.offset + 1) % chunk == 0 for m, chunk in zip(memory_states, self.chunks, strict=True)
        )
        canonical = self._canonical.get(closes)
        if canonical is None:
            canonical = self._canonical[closes] = self._with_integers(closes)
        try:
            logits = self._compiled(self.model, token, canonical, self._buffers, self._paths)
        except Exception as error:
            # compiling fails before the graph runs: the state is still the one before this token
            self._fall_back(error)
            return self.step(token)
        for memory, chunk in zip(memory_states, self.chunks, strict=True):
            memory.offset = (memory.offset + 1) % chunk
        for holder, name in self._counters:
            setattr(holder, name, getattr(holder, name) + 1)
        # CUDA graphs overwrite their outputs on the next replay
        return logits.clone() if self.mode == "compiled (CUDA graphs)" else logits

    def _with_integers(self, closes: tuple[bool, ...]) -> DecodeState:
        """The state over the same tensors, its integers the compiled step's stand-ins."""
        offsets = iter(chunk - 1 if close else 0 for close, chunk in zip(closes, self.chunks, strict=True))

        def stand_ins(value: Any, changes: dict[str, Any]) -> Any:
            if isinstance(value, MemoryState):
                changes["offset"] = next(offsets)
            if (name := _POSITION_FIELDS.get(type(value))) is not None:
                changes[name] = 0
            return dataclasses.replace(value, **changes)

        return _rebuild(self.state, lambda t: t, stand_ins)

    def decode_state(self) -> DecodeState:
        """The state reached, ring slots back as the KVCache a call over the same tokens
        returns (the model's forward continues from it).  Compiled, its memory tensors are the
        step's own, overwritten by the next step: copy it to keep it while stepping on."""
        if self.mode == "forward":
            return self.state
        blocks = []
        for block, block_state in zip(self.model.blocks, self.state.blocks, strict=True):
            attentions = [m for m in block.modules() if isinstance(m, Attention)]
            blocks.append(
                _map_caches(
                    block_state,
                    lambda c, a=attentions: c.as_kv_cache(a[0].window) if isinstance(c, RingKVCache) else c,
                )
            )
        return DecodeState(blocks, self.state.position)
