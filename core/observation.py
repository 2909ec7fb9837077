"""What a monitor may read of a model's memory after a forward: the observation API.

Monitors, regularisers and preflight switch observation on with :func:`observe` and read
with :func:`gate_observations` and :func:`memory_observations`, instead of setting flags on
engine objects (which would break whenever those objects change).  Observing costs a
detached copy of each gate's pre-activations and a few norms per memory, on every forward
while it is on; ``keep_graph=True`` keeps the MAG/MAC gate values with their graph, for a
loss term that must reach the gate.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs
import torch
from torch import nn

from .memory.gate_projections import GateProjections
from .memory.neural_memory import NeuralMemory
from .model.memory_gate import MemoryGate


@attrs.frozen
class GateObservation:
    """One gate's last forward: a MAG/MAC memory gate (``gate`` None) or a memory's
    data-dependent gate (``gate`` its name: lr, decay, momentum, ...)."""

    module: str  # the module's name in the model, e.g. blocks.0.memory.memory.gates
    gate: str | None
    activation: str  # sigmoid, log_sigmoid or softplus
    preactivation: torch.Tensor  # detached
    values: torch.Tensor  # the gate's values, a log_sigmoid gate's as alpha (a MAG/MAC gate's with
    # its graph when observed with keep_graph)
    gain: float | None = None  # a memory gate's learned gain


@attrs.frozen
class MemoryObservation:
    """One memory's state after its last forward: norms of M and S and how far M moved."""

    module: str
    norms: dict[str, float]


def _observable(model: nn.Module) -> Iterator[nn.Module]:
    for module in model.modules():
        if isinstance(module, MemoryGate | GateProjections | NeuralMemory):
            yield module


def observe(model: nn.Module, *, keep_graph: bool = False) -> None:
    """Keep what every gate and memory of ``model`` computes on each forward, until :func:`stop_observing`."""
    for module in _observable(model):
        module.record = True
        if keep_graph and isinstance(module, MemoryGate):
            module.keep_graph = True


def stop_observing(model: nn.Module) -> None:
    for module in _observable(model):
        module.record = False
        if isinstance(module, MemoryGate):
            module.keep_graph = False


def gate_observations(model: nn.Module) -> Iterator[GateObservation]:
    """Every gate the last observed forward computed, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, MemoryGate) and module.last_gate is not None:
            pre = module.last_preactivation
            if pre is None:  # kept with its graph only: the pre-activation follows from the values
                pre = torch.logit(module.last_gate.detach().float())
            yield GateObservation(name, None, "sigmoid", pre, module.last_gate, module.gain)
        elif isinstance(module, GateProjections):
            for gate, pre in module.last_preactivations.items():
                definition = module.definitions[gate]
                squash = (
                    torch.nn.functional.softplus if definition.activation == "softplus" else torch.sigmoid
                )
                values = definition.scale * squash(pre)  # a log_sigmoid gate's alpha, not log alpha
                yield GateObservation(name, gate, definition.activation, pre, values)


def memory_observations(model: nn.Module) -> Iterator[MemoryObservation]:
    """Every memory's state norms from the last observed forward."""
    for name, module in model.named_modules():
        if isinstance(module, NeuralMemory) and module.last_norms:
            yield MemoryObservation(name, dict(module.last_norms))


def recorded_gates(
    model: nn.Module,
) -> Iterator[tuple[str, nn.Module, str | None, torch.Tensor | None, torch.Tensor]]:
    """Every sigmoid-type gate the last observed forward computed: (module name, module,
    the memory gate's name or None for a MAG/MAC gate, the gate's values or None, its
    pre-activations).  Softplus gates are left out: they have no linear region to be stuck in."""
    for name, module in model.named_modules():
        if isinstance(module, MemoryGate) and module.last_preactivation is not None:
            yield name, module, None, module.last_gate, module.last_preactivation
        elif isinstance(module, GateProjections):
            for gate, pre in module.last_preactivations.items():
                if module.definitions[gate].activation != "softplus":
                    yield name, module, gate, None, pre
