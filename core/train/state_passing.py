"""State passing across training steps (``[data] carry_state = true``): truncated BPTT.

Row b of every training batch continues row b of the step before (``miraslab.data.streams``),
so the model can start each step from the state it ended the last one with: every block's
memory state and, where the layout has one, its attention's KV window
(``LanguageModel(ids, state=..., return_state=True)``).  The state is detached between steps:
gradients flow within a step's segment only (truncated backpropagation through time, as in
Buitrago Ruiz & Gu, arXiv 2507.02782, "state passing").  Two steps carried this way compute
what one forward over the two segments concatenated computes (tests/test_state_passing.py).
With ``data.reset_at_documents`` too, the forward is given the rows' document starts: a row's
leading document continues the carried state, every later one restarts, and the state kept is
the one after the row's last document (tests/test_carried_documents.py).

The trainer holds one :class:`CarriedState`; with micro-batches each micro-batch's rows carry
their own state (slot = its index in the step), and under torchrun each process its own rows'.
A checkpoint keeps every process's state (gathered to process 0: its tensors beside the RNG
state, its shape in the meta), so a resume with as many processes continues bitwise.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from ..errors import RecipeError

STATE_KEY = "carried_state"  # the checkpoint meta's key, and the prefix of its tensors


def detach_state(value: Any) -> Any:
    """``value`` (tensors in tuples, lists, dicts and dataclasses) with every tensor detached."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(detach_state(item) for item in value)
    if isinstance(value, dict):
        return {key: detach_state(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value,
            **{f.name: detach_state(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init},
        )
    return value


def encode_state(value: Any, tensors: dict[str, torch.Tensor], prefix: str = STATE_KEY) -> Any:
    """JSON for ``value``'s shape, its tensors added to ``tensors`` under ``<prefix>/<n>``."""
    if isinstance(value, torch.Tensor):
        name = f"{prefix}/{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous()
        return {"tensor": name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    if isinstance(value, (tuple, list)):
        return {type(value).__name__: [encode_state(item, tensors, prefix) for item in value]}
    if isinstance(value, dict):
        return {"dict": {str(key): encode_state(item, tensors, prefix) for key, item in value.items()}}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = type(value)
        return {
            "dataclass": f"{kind.__module__}:{kind.__qualname__}",
            "fields": {
                f.name: encode_state(getattr(value, f.name), tensors) for f in dataclasses.fields(value)
            },
        }
    raise TypeError(f"carried state: cannot store a {type(value).__name__}")


def decode_state(tree: Any, tensors: dict[str, torch.Tensor], device: torch.device | str) -> Any:
    """The value ``encode_state`` described; dataclasses only from miraslab's own modules."""
    if "tensor" in tree:
        return tensors[tree["tensor"]].to(device)
    if "value" in tree:
        return tree["value"]
    if "tuple" in tree or "list" in tree:
        items = [decode_state(item, tensors, device) for item in tree.get("tuple", tree.get("list"))]
        return tuple(items) if "tuple" in tree else items
    if "dict" in tree:
        return {key: decode_state(item, tensors, device) for key, item in tree["dict"].items()}
    module, _, name = tree["dataclass"].partition(":")
    if not module.startswith("miraslab."):
        raise RecipeError([f"checkpoint: the carried state names {tree['dataclass']}, not a miraslab class"])
    kind = importlib.import_module(module)
    for part in name.split("."):
        kind = getattr(kind, part)
    values = {key: decode_state(item, tensors, device) for key, item in tree["fields"].items()}
    built = kind(**{f.name: values[f.name] for f in dataclasses.fields(kind) if f.init})
    for f in dataclasses.fields(kind):
        if not f.init:
            setattr(built, f.name, values[f.name])
    return built


class CarriedState:
    """Each micro-batch slot's model state, carried from one training step to the next."""

    def __init__(self) -> None:
        self.states: dict[int, Any] = {}

    @staticmethod
    def require_packed(packed: bool, model: Any, stage: str) -> None:
        """A carried row restarts at its documents only packed: never run them apart."""
        if not packed:
            raise RecipeError(
                [
                    f"data.carry_state and data.reset_at_documents: stage {stage} cannot run "
                    f"documents packed ({model.documents_reason()}); set one of them to false"
                ]
            )

    def forward(
        self,
        model: torch.nn.Module,
        inputs: torch.Tensor,
        slot: int = 0,
        documents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The logits of ``inputs`` from the slot's carried state; keeps the new state, detached.
        ``documents`` (B, T) bool, the packed documents' starts (``data.reset_at_documents``):
        each row's leading document continues the state, every later one starts afresh."""
        packed = {} if documents is None else {"documents": documents}
        logits, state = model(inputs, state=self.states.get(slot), return_state=True, **packed)
        self.states[slot] = detach_state(state)
        return logits

    def snapshot(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
        """Every process's state for a checkpoint, gathered to process 0: its meta entry and its
        tensors there, None on the others.  Called on every process (a collective under torchrun)."""
        rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        tensors: dict[str, torch.Tensor] = {}
        prefix = f"{STATE_KEY}/{rank}"
        mine = (
            {str(slot): encode_state(state, tensors, prefix) for slot, state in self.states.items()},
            tensors,
        )
        gathered = [mine]
        if world_size > 1:
            gathered = [None] * world_size if rank == 0 else None
            dist.gather_object(mine, gathered, dst=0)
        if rank != 0:
            return None
        every: dict[str, torch.Tensor] = {}
        for _, part in gathered:
            every.update(part)
        return {"world_size": world_size, "ranks": [tree for tree, _ in gathered]}, every

    @classmethod
    def restore(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], device: Any) -> CarriedState:
        """This process's state from a checkpoint written by ``snapshot``."""
        rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        saved = meta.get(STATE_KEY)
        carried = cls()
        if saved is None:  # saved before any step
            return carried
        if saved["world_size"] != world_size:
            raise RecipeError(
                [
                    f"data.carry_state: the checkpoint carries the state of {saved['world_size']} processes' rows; "
                    f"resume it with {saved['world_size']} processes, not {world_size}"
                ]
            )
        for slot, tree in saved["ranks"][rank].items():
            carried.states[int(slot)] = decode_state(tree, tensors, device)
        return carried


def streamed_rows(task: Any) -> Callable[..., Any]:
    """The task's ``batches`` for rows that continue from step to step (a text task's ``streamed_batches``)."""
    streamed = getattr(task, "streamed_batches", None)
    if streamed is None:
        raise RecipeError(
            [f"data.carry_state: task {type(task).__name__} has no stream of documents to continue; use text"]
        )
    return streamed
