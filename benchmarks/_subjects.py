"""What the memory-layer benchmark measures: miraslab layers and titans-pytorch NeuralMemory.

Every subject is named by a key ``impl/config/path`` so a child process (peak memory) can
rebuild exactly the module the parent times.  All subjects share one shape: dim 256,
batch 2, 4 heads of width 64, chunk 64.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

BATCH, DIM, HEADS, HEAD_DIM, CHUNK = 2, 256, 4, 64, 64

# miraslab MemoryLayer keyword arguments per configuration (the chunked path keeps a read per token).
MIRASLAB_CONFIGS: dict[str, dict[str, Any]] = {
    "deep": {"memory": {"name": "mlp", "expansion": 4}, "retention": "decay", "algorithm": "momentum"},
    "linear": {"memory": "linear", "retention": "decay", "algorithm": "momentum"},
    "delta": {"memory": "linear", "retention": "none", "algorithm": "gd"},  # the delta rule
    # linear with alpha and eta per value channel: the exact per-channel decay matrices, through autograd
    "linear-channelwise": {
        "memory": "linear",
        "retention": "decay",
        "algorithm": "momentum",
        "channelwise_decay": True,
        "channelwise_momentum": True,
    },
}

COMPILED_CHUNKS = "compiled"  # the path name of MemoryLayer(path="chunked", compile_chunks=True)

# titans-pytorch NeuralMemory keyword arguments, spelled out in full (see README.md for why).
# batch_size=64 commits the weights after every 64-token chunk, like miraslab's chunked path;
# without batch_size every chunk's gradient is taken at the call's initial weights.
_TITANS_COMMON: dict[str, Any] = {"dim": DIM, "chunk_size": CHUNK, "dim_head": HEAD_DIM, "heads": HEADS}
TITANS_CONFIGS: dict[str, dict[str, Any]] = {
    "deep/batch64": {
        **_TITANS_COMMON,
        "batch_size": 64,
        "default_model_kwargs": {"depth": 2, "expansion_factor": 4.0},
    },
    "deep/default": {**_TITANS_COMMON, "default_model_kwargs": {"depth": 2, "expansion_factor": 4.0}},
    "linear/batch64": {
        **_TITANS_COMMON,
        "batch_size": 64,
        "default_model_kwargs": {"depth": 1, "expansion_factor": 4.0},  # depth 1: M(x) = x W
        "mem_model_norm_add_residual": False,  # no LayerNorm + residual around the matrix
    },
}

MIRASLAB, TITANS = "miraslab", "titans-pytorch"


@dataclass(frozen=True)
class Case:
    impl: str  # MIRASLAB or TITANS
    config: str  # a MIRASLAB_CONFIGS key, or "deep" / "linear" for titans-pytorch
    path: str  # miraslab: "chunked" / "compiled" / "recurrent"; titans-pytorch: "batch64" / "default"

    @property
    def key(self) -> str:
        return f"{self.impl}/{self.config}/{self.path}"

    @classmethod
    def from_key(cls, key: str) -> Case:
        impl, config, path = key.split("/")
        return cls(impl, config, path)


def titans_available() -> bool:
    return importlib.util.find_spec("titans_pytorch") is not None


def titans_version() -> str | None:
    if not titans_available():
        return None
    from importlib.metadata import version

    return version("titans-pytorch")


COMPILE = False  # --compile: torch.compile every chunked / titans-pytorch module (both sides alike)


class CompiledOrEager(nn.Module):
    """torch.compile(module); the eager module (noted in ``fell_back``) if compiling fails."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module, self.compiled, self.fell_back = module, torch.compile(module), ""

    def forward(self, *args, **kwargs):
        if not self.fell_back:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # report it in the table instead of aborting the run
                self.fell_back = f"{type(exc).__name__}"
                print(
                    f"  torch.compile failed, eager instead: {type(exc).__name__}: {str(exc)[:200]}",
                    flush=True,
                )
        return self.module(*args, **kwargs)


def runs_chunk_step(config: str) -> bool:
    """Whether ``config``'s chunked path runs a step per chunk, which ``compile_chunks``
    compiles; the others take the batched matrix-memory pass, left eager."""
    from miraslab.memory.layer import MemoryLayer
    from miraslab.memory.paths.chunked import per_chunk_step

    layer = MemoryLayer(DIM, heads=HEADS, chunk_size=CHUNK, **MIRASLAB_CONFIGS[config])
    return per_chunk_step(layer.memory.rule)


def build(case: Case) -> nn.Module:
    """A freshly initialised module for ``case`` (seeded, so parent and child agree)."""
    torch.manual_seed(0)
    if case.impl == MIRASLAB:
        from miraslab.memory.layer import MemoryLayer

        options = dict(MIRASLAB_CONFIGS[case.config])
        path = case.path
        if path == COMPILED_CHUNKS:
            path, options["compile_chunks"] = "chunked", True
        module = MemoryLayer(DIM, heads=HEADS, chunk_size=CHUNK, path=path, **options)
    else:
        from titans_pytorch import NeuralMemory

        module = NeuralMemory(**TITANS_CONFIGS[f"{case.config}/{case.path}"])
    if COMPILE and case.path != "recurrent":  # the token loop would unroll: left eager
        return CompiledOrEager(module)
    return module


def make_input(seq: int, seed: int = 1) -> torch.Tensor:
    """(BATCH, seq, DIM) input that requires grad, as a layer inside a model receives it.

    With a leaf input every projection's backward also computes dX, so the backward of
    each matmul costs exactly twice its forward (the FLOP formula relies on it).
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, seq, DIM, generator=generator).requires_grad_()


def make_step(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One training step's worth of work: forward and backward of a scalar loss."""

    def step() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        out = module(x)
        if isinstance(out, tuple):  # titans-pytorch returns (retrieved, state)
            out = out[0]
        out.sum().backward()

    return step
