"""One process or many under torchrun: process group, device, wrapping, and rank-0 duty.

The same command runs on a laptop CPU (one process), a GPU, or many nodes under torchrun:
``torchrun --nproc_per_node=N -m miraslab train RECIPE``.  gloo is the backend on CPU,
nccl on CUDA.  DDP replicates the model; ``train.distributed = "fsdp"`` shards it with
FSDP2 (``fully_shard`` per block, then the root).
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import attrs
import torch
import torch.distributed as dist
from torch import nn


@attrs.define
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device_preference: str = "auto") -> Distributed:
        """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the group."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device_preference == "cuda" or (device_preference == "auto" and torch.cuda.is_available())
        if device_preference == "cuda" and not torch.cuda.is_available():
            from ..errors import MiraslabError

            raise MiraslabError('train.device: "cuda" was asked for but no CUDA device is available')
        if use_cuda:
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        else:
            device = torch.device("cpu")
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group(
                backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None
            )
        return cls(rank, world_size, local_rank, device)

    def wrap(self, model: nn.Module, strategy: str, find_unused_parameters: bool = False) -> nn.Module:
        """DDP or FSDP2 around the model when there are several processes; DDP looks for
        parameters a step did not use when told to (a carried state leaves W_init unused)."""
        if not self.enabled:
            return model
        if strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in getattr(model, "blocks", []):
                fully_shard(block)
            return fully_shard(model)
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )

    def no_sync(self, model: nn.Module, last: bool):
        """Skip the gradient all-reduce on every micro-batch but the last (DDP)."""
        if last or not self.enabled or not hasattr(model, "no_sync"):
            return nullcontext()
        return model.no_sync()

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state on the CPU, keyed by parameter name.

    The same format whatever the strategy (one process, DDP, FSDP2 gathers the shards), so a
    run can resume under another one.  A collective under FSDP: every rank calls it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_model_state_dict(model: nn.Module) -> dict:
    """The unsharded model state on the CPU (no optimizer: reading one would initialise its state)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optimizer_state: dict | None
) -> None:
    """Put unsharded state back into a (possibly wrapped or sharded) model and its optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

    options = StateDictOptions(full_state_dict=True)
    if optimizer_state is None:
        set_model_state_dict(model, model_state, options=options)
    else:
        set_state_dict(
            model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state, options=options
        )


def parameters_finite(model: nn.Module, distributed: Distributed) -> bool:
    """Whether every parameter and buffer is finite, on every process (one sync)."""
    tensors = [t.to_local() if hasattr(t, "to_local") else t for t in (*model.parameters(), *model.buffers())]
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point() and t.numel()]
    finite = bool(torch.stack(flags).all()) if flags else True
    return distributed.mean(float(finite)) == 1.0
