"""What the memory-layer benchmark measures: miraslab layers and titans-pytorch NeuralMemory.

Every subject is named by a key ``impl/config/path`` so a child process (peak memory) can
rebuild exactly the module the parent times.  All subjects share one shape: dim 256,
batch 2, 4 heads of width 64, chunk 64.
"""

from __future__ import annotations

import importlib.util
import os
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
    "delta": {"memory": "linear", "retention": "none", "algorithm": "gd"},  # the delta rule, mini-batch steps
    # the published per-token rules at chunk 64 (chunk-parallel: one triangular solve per chunk)
    "delta-per-token": {
        "memory": "linear",
        "retention": "none",
        "algorithm": "gd",
        "inner_steps": "per_token",
    },
    "gated-delta-per-token": {
        "memory": "linear",
        "retention": {"name": "decay", "gradient_at": "decayed"},
        "algorithm": "gd",
        "inner_steps": "per_token",
    },
    # linear with alpha and eta per value channel: the exact per-channel decay matrices, through autograd
    "linear-channelwise": {
        "memory": "linear",
        "retention": "decay",
        "algorithm": "momentum",
        "gates": {"channelwise_decay": True, "channelwise_momentum": True},
    },
}
# OTHER SEMANTICS: deep and linear with chunk-level reads (model.memory.reads = "chunk"): every
# token of a chunk reads the chunk-start weights, as titans-pytorch does; the writes are the
# same.  Against deep / linear they say what the per-token reads cost, against titans-pytorch
# (same reads) what the implementation costs.
CHUNK_READS = {"deep-chunk-reads": "deep", "linear-chunk-reads": "linear"}  # config -> base config
for _config, _base in CHUNK_READS.items():
    MIRASLAB_CONFIGS[_config] = {**MIRASLAB_CONFIGS[_base], "reads": "chunk"}
CHUNK_READS_LABEL = "chunk-level reads (other semantics: titans-pytorch's)"


def label(config: str) -> str:
    """How the table names a miraslab configuration: chunk-level reads say so."""
    return f"{CHUNK_READS[config]} (chunk-level reads)*" if config in CHUNK_READS else config


def base_config(config: str) -> str:
    """The configuration with per-token reads a chunk-level-reads one is compared with."""
    return CHUNK_READS.get(config, config)


COMPILED_CHUNKS = "compiled"  # the path name of MemoryLayer.from_options(path="chunked", compile_chunks=True)

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

MIRASLAB, TITANS, FLA = "miraslab", "titans-pytorch", "fla"

# flash-linear-attention's pure-PyTorch chunked references (its Triton kernels need a GPU), run
# inside the matching miraslab per-token layer in place of its memory op: the same
# projections, convolution, gates and read-out around it.  config -> (file, function, layer config)
FLA_CONFIGS: dict[str, tuple[str, str, str]] = {
    "delta": ("ops/delta_rule/naive.py", "delta_rule_chunkwise", "delta-per-token"),
    "gated-delta": ("ops/gated_delta_rule/naive.py", "naive_chunk_gated_delta_rule", "gated-delta-per-token"),
}
FLA_PATH = "naive-chunkwise"


@dataclass(frozen=True)
class Case:
    impl: str  # MIRASLAB, TITANS or FLA
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


def _fla_file(relative: str) -> str | None:
    """The path of a module inside the installed ``fla`` package, found without importing
    ``fla`` (its ``__init__`` imports triton, which a CPU-only install lacks)."""
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = f"{next(iter(spec.submodule_search_locations))}/{relative}"
    return path if os.path.exists(path) else None


def fla_unavailable() -> str | None:
    """Why the FLA rows cannot run here (None: they can)."""
    if importlib.util.find_spec("fla") is None:
        return "flash-linear-attention is not installed (pip install -e '.[benchmarks]')"
    for relative, function, _ in FLA_CONFIGS.values():
        try:
            _fla_function(relative, function)
        except Exception as error:  # an API change upstream: say so and skip
            return f"fla {relative}:{function} does not load: {type(error).__name__}: {error}"
    return None


def fla_version() -> str | None:
    if importlib.util.find_spec("fla") is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flash-linear-attention")
    except PackageNotFoundError:
        return None


def _fla_function(relative: str, name: str) -> Callable:
    path = _fla_file(relative)
    if path is None:
        raise FileNotFoundError(relative)
    spec = importlib.util.spec_from_file_location(f"_fla_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports torch and einops only
    return getattr(module, name)


class FLAMemory(nn.Module):
    """A miraslab NeuralMemory's gates with FLA's naive chunked delta rule as the memory op.

    q and k arrive l2-normalised (the layer's qk_norm); FLA scales q by d^-1/2 itself, which
    costs the same.  beta is the layer's learning-rate gate, the gated rule's g its log decay."""

    def __init__(self, memory: nn.Module, config: str):
        super().__init__()
        relative, function, _ = FLA_CONFIGS[config]
        self.gates, self.gated = memory.gates, config == "gated-delta"
        self.op = _fla_function(relative, function)

    def forward(self, q, k, v, x, state=None, path=None):
        gates = self.gates(x)
        if self.gated:  # FLA's layout: (B, T, H, d)
            layout = [t.transpose(1, 2) for t in (q, k, v, gates["decay"], gates["lr"])]
            y, _ = self.op(*layout, chunk_size=CHUNK)
            return y.transpose(1, 2), None
        y, _ = self.op(q, k, v, gates["lr"], chunk_size=CHUNK)
        return y, None


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

    layer = MemoryLayer.from_options(DIM, heads=HEADS, chunk_size=CHUNK, **MIRASLAB_CONFIGS[config])
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
        module = MemoryLayer.from_options(DIM, heads=HEADS, chunk_size=CHUNK, path=path, **options)
    elif case.impl == FLA:
        from miraslab.memory.layer import MemoryLayer

        options = MIRASLAB_CONFIGS[FLA_CONFIGS[case.config][2]]
        module = MemoryLayer.from_options(DIM, heads=HEADS, chunk_size=CHUNK, **options)
        module.memory = FLAMemory(module.memory, case.config)
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
