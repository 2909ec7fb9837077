"""Memory-utilisation loss: penalise a memory branch whose output falls below a share of its
block's output, so the model cannot route around its memory,

    L_share = weight * sum over blocks of relu(floor - ||m|| / ||x_out||)

where ``m`` is the block's memory layer output and ``x_out`` the block's output (the ratio
memory_stats logs as ``memory_share``).  Zero while every block's share is above ``floor``;
added to the training loss and logged as ``memory_share_floor``.
"""

from __future__ import annotations

import attrs
import torch

import miraslab


@attrs.frozen
class MemoryShareFloorParams:
    floor: float = miraslab.param(0.05, gt=0, doc="share of the block output below which the penalty starts")
    weight: float = miraslab.param(1.0, ge=0, doc="penalty per unit of share below the floor")


class MemoryShareFloor:
    """Adds weight * relu(floor - ||memory out|| / ||block out||) per block to the loss."""

    def __init__(self, params: MemoryShareFloorParams):
        self.params = params
        self.outputs: dict[tuple[int, str], torch.Tensor] = {}  # (block, "memory" | "block") -> output
        self.hooks: list = []

    @miraslab.hookimpl
    def on_train_start(self, run):
        for handle in self.hooks:
            handle.remove()
        self.hooks = []
        for index, block in enumerate(getattr(run.model, "blocks", ())):
            branch = getattr(block, "memory", None)
            if branch is not None:
                self.hooks.append(block.register_forward_hook(self._keep(index, "block")))
                self.hooks.append(branch.register_forward_hook(self._keep(index, "memory")))

    def _keep(self, index: int, part: str):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            if isinstance(out, torch.Tensor) and out.requires_grad:  # a training forward
                self.outputs[index, part] = out

        return hook

    @miraslab.hookimpl
    def loss_terms(self, run, outputs):
        shares = [
            self.outputs[index, "memory"].float().norm()
            / self.outputs[index, "block"].float().norm().clamp_min(1e-12)
            for index, part in list(self.outputs)
            if part == "block" and (index, "memory") in self.outputs
        ]
        self.outputs = {}  # each micro-batch's own forward
        if not shares:
            return None
        below = torch.stack([torch.relu(self.params.floor - share) for share in shares]).sum()
        return {"memory_share_floor": self.params.weight * below}


@miraslab.hookimpl
def register_monitors(register):
    register("memory_share_floor", MemoryShareFloor, MemoryShareFloorParams)
