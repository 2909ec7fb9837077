"""Is the memory being used? Per layer, every logged step: what the seeds needed on day one.

- ``gate_mean/std/min/max`` of the MAG/MAC gate sigmoid(gain * norm(memory)): the Atlas 300M
  seed watched this fall from 50 % to 0.7 % over 76k steps (memory bypassed);
- ``gate_saturated`` (share of gate values below 0.01 or above 0.99), ``gate_linear`` (share
  of pre-activations with |z| < ``linear_region``, 0.1: where the sigmoid is ~linear; the
  TNT-Atlas seed's tanh gates sat there, |x| ~ 0.017, dead) and ``gate_saturating`` (|z| >
  ``saturation``, 4);
- ``gain``: the effective learnable gain;
- for each data-dependent gate of the memory (lr, decay, momentum, omega, ...): its value's
  ``_mean/_std/_min/_max`` and the shares of its pre-activations in the linear region
  (``_linear``) and in saturation (``_saturated``);
- the memory and momentum states after the batch: ``M_norm/M_std/M_max``, ``S_norm/...``, and
  how far M moved within the sequence, ``M_moved`` = ||W_end - W_init|| / ||W_init|| (the 58M
  seed's "M stayed static"; ``M_change`` is the numerator, for a zero W_init);
- ``memory_share``: ||memory branch output|| / ||block output||, how much of the residual
  stream the memory writes;
- ``mixer_alpha`` of an M3 mixer (TNT).

Keys look like ``memory/L0/gate_mean``.  The cost is a few reductions per gate and memory on
the last micro-batch of a logged step (docs/diagnostics.md gives the measured overhead).
"""

from __future__ import annotations

import math

import attrs
import torch

import miraslab
from miraslab.api import gate_observations, memory_observations, observe


@attrs.frozen
class MemoryStatsParams:
    linear_region: float = miraslab.param(0.1, gt=0, doc="|pre-activation| below this counts as linear")
    saturation: float = miraslab.param(4.0, gt=0, doc="|pre-activation| above this counts as saturated")


def _layer(name: str) -> str:
    parts = name.split(".")
    return f"L{parts[1]}" if parts[0] == "blocks" and len(parts) > 1 else parts[0]


def _memory_tag(name: str) -> str:
    """Which memory of a block: "memory", "global_memory" or "local_memories.0"."""
    parts = [p for p in name.split(".")[2:] if p != "gates"]
    if len(parts) >= 2 and parts[-1].isdigit():
        return ".".join(parts[-2:])
    return parts[-1] if parts else "memory"


class MemoryStats:
    """Gate statistics, memory state norms and mixer balance, added to each logged step."""

    def __init__(self, params: MemoryStatsParams):
        self.params = params
        self.output_norms: dict[str, float] = {}  # module name -> norm of its last output
        self.hooks: list = []

    @miraslab.hookimpl
    def on_train_start(self, run):
        observe(run.model)
        for handle in self.hooks:
            handle.remove()
        self.hooks = []
        blocks = getattr(run.model, "blocks", ())
        for index, block in enumerate(blocks):
            branch = getattr(block, "memory", None)
            if branch is None:
                continue
            self.hooks.append(block.register_forward_hook(self._keep_norm(f"blocks.{index}")))
            self.hooks.append(branch.register_forward_hook(self._keep_norm(f"blocks.{index}.memory")))

    def _keep_norm(self, name: str):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            if isinstance(out, torch.Tensor):
                self.output_norms[name] = float(out.detach().float().norm())

        return hook

    @miraslab.hookimpl
    def on_step_end(self, run, metrics):
        for seen in gate_observations(run.model):
            prefix = f"memory/{_layer(seen.module)}"
            pre = seen.preactivation.float()
            if seen.gate is None:  # a MAG/MAC gate
                gate = seen.values.detach().float()
                metrics[f"{prefix}/gate_mean"] = float(gate.mean())
                metrics[f"{prefix}/gate_std"] = float(gate.std())
                metrics[f"{prefix}/gate_min"] = float(gate.min())
                metrics[f"{prefix}/gate_max"] = float(gate.max())
                metrics[f"{prefix}/gate_saturated"] = float(((gate < 0.01) | (gate > 0.99)).float().mean())
                metrics[f"{prefix}/gate_linear"] = float(
                    (pre.abs() < self.params.linear_region).float().mean()
                )
                metrics[f"{prefix}/gate_saturating"] = float(
                    (pre.abs() > self.params.saturation).float().mean()
                )
                metrics[f"{prefix}/gain"] = seen.gain
                continue
            key = f"{prefix}/{_memory_tag(seen.module)}/{seen.gate}"
            value = seen.values.float()
            metrics[f"{key}_mean"] = float(value.mean())
            metrics[f"{key}_std"] = float(value.std()) if value.numel() > 1 else 0.0
            metrics[f"{key}_min"] = float(value.min())
            metrics[f"{key}_max"] = float(value.max())
            metrics[f"{key}_linear"] = float((pre.abs() < self.params.linear_region).float().mean())
            metrics[f"{key}_saturated"] = float((pre.abs() > self.params.saturation).float().mean())
        for seen in memory_observations(run.model):
            prefix = f"memory/{_layer(seen.module)}/{_memory_tag(seen.module)}"
            for key, value in seen.norms.items():
                metrics[f"{prefix}/{key}"] = value if math.isfinite(value) else repr(value)
        for name, module in run.model.named_modules():
            if hasattr(module, "alpha") and name.endswith("mixer"):
                metrics[f"memory/{_layer(name)}/mixer_alpha"] = module.alpha
        for name, norm in self.output_norms.items():
            if not name.endswith(".memory") and f"{name}.memory" in self.output_norms and norm > 0:
                metrics[f"memory/{_layer(name)}/memory_share"] = self.output_norms[f"{name}.memory"] / norm


@miraslab.hookimpl
def register_monitors(register):
    register("memory_stats", MemoryStats, MemoryStatsParams)
