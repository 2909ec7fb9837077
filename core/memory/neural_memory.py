"""One neural memory over given q, k, v: feature map, Q-K projection, gates and the engine."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..data.documents import PackedDocuments
from .gate_projections import GateProjections
from .paths.chunked_per_token import per_token_problem
from .paths.memory_op import memory_op
from .paths.per_token_documents import per_token_documents
from .qk_projection import qk_project
from .rule.build import build_features, build_rule
from .rule.state import MemoryState
from .spec import MemorySpec


@dataclasses.dataclass
class NeuralMemoryState:
    memory: MemoryState | None = None
    qk: torch.Tensor | None = None  # (B, H, d, d): sum of unit k k^T for the Q-K projection

    def detach(self) -> NeuralMemoryState:
        return NeuralMemoryState(
            self.memory.detach() if self.memory is not None else None,
            self.qk.detach() if self.qk is not None else None,
        )


def state_norms(state: MemoryState, initial: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Statistics of the memory (M) and momentum (S) after a call, over batch and heads:
    Frobenius norm (mean per head), element std and largest magnitude; with ``initial``
    (the weights the call started from), how far M moved: ``M_moved`` = ||W_end - W_init|| /
    ||W_init|| (the 58M seed's "M stayed static"), ``M_change`` = ||W_end - W_init||."""

    def per_head(weights: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(w.detach().float().pow(2).sum(dim=(-1, -2)) for w in weights.values()).sqrt()

    def describe(prefix: str, weights: dict[str, torch.Tensor]) -> dict[str, float]:
        flat = torch.cat([w.detach().float().reshape(-1) for w in weights.values()])
        return {
            f"{prefix}_norm": float(per_head(weights).mean()),
            f"{prefix}_std": float(flat.std()) if flat.numel() > 1 else 0.0,
            f"{prefix}_max": float(flat.abs().max()),
        }

    stats = describe("M", state.weights)
    if state.momentum is not None:
        stats |= describe("S", state.momentum)
    if initial is not None:
        start = {name: w.detach().float().expand_as(state.weights[name]) for name, w in initial.items()}
        change = per_head({name: state.weights[name].detach().float() - start[name] for name in start})
        stats["M_change"] = float(change.mean())
        base = per_head(start)
        if bool((base > 0).all()):  # a zero W_init (the linear memory's) has no relative change
            stats["M_moved"] = float((change / base).mean())
    return stats


class NeuralMemory(nn.Module):
    """y_t = M_t(phi(q_t)) with M written by the rule; gates come from the layer input x."""

    def __init__(self, dim: int, heads: int, head_dim: int, spec: MemorySpec):
        """``spec``: the memory's ``[model.memory]``; ``heads`` and ``head_dim`` its resolved shape."""
        super().__init__()
        self.spec = spec
        self.features = build_features(spec.features, head_dim)
        self.rule = build_rule(spec, heads, self.features.out_dim, head_dim)
        self.gates = GateProjections(dim, heads, self.rule.gate_defs(), head_dim, spec.gates.rank)
        self.record = False  # keep the norms of the last state for monitors
        self.last_norms: dict[str, float] = {}
        # None, or an ablation ("reset": the state starts fresh at every chunk, or every
        # reset_span tokens when set; "zero": the read is zeros) set by
        # miraslab.memory.knockout.memory_ablation for evaluation
        self.ablation: str | None = None
        self.reset_span: int | None = None

    @property
    def chunk_size(self) -> int:
        return self.spec.chunk_size

    @property
    def step_chunk(self) -> int:
        """Tokens per chunk of the token loop (``paths.memory_op``): a state's ``offset``
        returns to 0 every this many decode steps (1 for per-token steps)."""
        return 1 if self.spec.inner_steps == "per_token" else self.spec.chunk_size

    def documents_reason(self) -> str | None:
        """Why this memory cannot run packed documents (``data.reset_at_documents`` without one
        row per document), as a sentence; None when it can: per-token steps on the chunked path,
        restarted at each document (``paths.per_token_documents``)."""
        spec = self.spec
        if spec.inner_steps != "per_token":
            return (
                f"model.memory.inner_steps = {spec.inner_steps!r} takes a chunk's gradients at the chunk's "
                "start, so a document must open a chunk of a row of its own"
            )
        if spec.path != "chunked":
            return f"model.memory.path = {spec.path!r}: packed documents restart on the chunked path only"
        if spec.qk_projection:
            return "model.memory.qk_projection sums the keys of the whole row"
        if (problem := per_token_problem(*self.rule.parts)) is not None:  # at chunk 1 too: no chunked form
            return f"model.memory.inner_steps = 'per_token' runs this rule token by token ({problem})"
        return None

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        x: torch.Tensor,
        state: NeuralMemoryState | None = None,
        path: str | None = None,
        documents: PackedDocuments | None = None,
    ):
        """``documents``: the rows hold packed documents, each written and read from the
        initial state (see :meth:`documents_reason`); a ``state`` is continued by each row's
        leading document only (``data.carry_state``)."""
        if documents is not None:
            return self._packed_documents(q, k, v, x, state, path, documents)
        # no NeuralMemoryState() for a missing state: dynamo cannot trace a dataclass's default factory
        qk_in, memory_in = (state.qk, state.memory) if state is not None else (None, None)
        qk_state = None
        spec = self.spec
        if path is None:
            # one token is a decode step: the token loop's step is that token's update alone,
            # where the chunked path would set a chunk up around it (the same result)
            path = "recurrent" if q.shape[2] == 1 else spec.path
        if spec.qk_projection:
            q, qk_state = qk_project(q, k, qk_in, spec.chunk_size)
            if spec.qk_norm:
                q = F.normalize(q, dim=-1)
        q, k = self.features(q, query=True), self.features(k)
        gates = self.gates(x)
        if self.ablation == "reset":
            y, memory_state = self._fresh_every_chunk(q, k, v, gates, path or spec.path, self.reset_span)
        else:
            y, memory_state = memory_op(
                self.rule,
                q,
                k,
                v,
                gates,
                memory_in,
                spec.chunk_size,
                path,
                spec.compile_chunks,
                spec.inner_steps,
                spec.kernel,
                spec.reads,
            )
        if self.ablation == "zero":
            y = torch.zeros_like(y)
        return self._observed(y, memory_state, memory_in, qk_state)

    def _observed(
        self,
        y: torch.Tensor,
        memory_state: MemoryState,
        memory_in: MemoryState | None,
        qk_state: torch.Tensor | None,
    ) -> tuple[torch.Tensor, NeuralMemoryState]:
        """The call's result; when observed (``record``), the new state's norms against its start."""
        if self.record:
            initial = memory_in.weights if memory_in is not None else self.rule.arch.init
            self.last_norms = state_norms(memory_state, dict(initial))
        return y, NeuralMemoryState(memory_state, qk_state)

    def _packed_documents(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        x: torch.Tensor,
        state: NeuralMemoryState | None,
        path: str | None,
        documents: PackedDocuments,
    ):
        spec = self.spec
        reason = self.documents_reason() or (f"path {path!r}" if path not in (None, "chunked") else None)
        if reason is None and self.ablation is not None:
            reason = f"the ablation {self.ablation!r}"
        if reason is not None:
            raise ValueError(f"NeuralMemory: packed documents cannot run here: {reason}")
        memory_in = state.memory if state is not None else None
        q, k = self.features(q, query=True), self.features(k)
        gates = self.gates(x)
        y, memory_state = per_token_documents(
            self.rule,
            q,
            k,
            v,
            gates,
            documents,
            spec.chunk_size,
            return_state=True,
            kernel=spec.kernel,
            state=memory_in,
        )
        return self._observed(y, memory_state, memory_in, None)

    def _fresh_every_chunk(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        gates: dict[str, torch.Tensor],
        path: str,
        span: int | None = None,
    ) -> tuple[torch.Tensor, MemoryState]:
        """Each chunk (or each ``span`` tokens, e.g. a TNT shard) of the call, from its first
        token, written and read from the initial state: nothing carries from one to the next,
        nor from an earlier call."""
        outputs, state = [], None
        span = span or self.spec.chunk_size
        for start in range(0, q.shape[2], span):
            part = slice(start, start + span)
            piece_gates = {name: gate[:, :, part] for name, gate in gates.items()}
            y, state = memory_op(
                self.rule,
                q[:, :, part],
                k[:, :, part],
                v[:, :, part],
                piece_gates,
                None,
                self.spec.chunk_size,
                path,
                inner_steps=self.spec.inner_steps,
                kernel=self.spec.kernel,
                reads=self.spec.reads,
            )
            outputs.append(y)
        return torch.cat(outputs, dim=2), state

    def retrieve(self, q: torch.Tensor, state: NeuralMemoryState | None) -> torch.Tensor:
        """Read with the state's current weights, without writing (MAC's h_t = M*_{t-1}(q_t))."""
        if self.spec.qk_projection and state is not None and state.qk is not None:
            q = q @ state.qk.to(q.dtype)
            if self.spec.qk_norm:
                q = F.normalize(q, dim=-1)
        q = self.features(q, query=True)
        memory_state = state.memory if state is not None and state.memory is not None else None
        if memory_state is None or self.ablation == "reset":  # reset: nothing carried in
            memory_state = self.rule.initial_state(q.shape[0])
        y = self.rule.read(memory_state.weights, q)
        return torch.zeros_like(y) if self.ablation == "zero" else y
