"""A memory rule: the four Miras parts together, and the gradients of the inner loss.

The gradient of the attentional bias with respect to a linear map ``z = W h`` inside the
memory is, per token, the outer product ``delta h^T`` with ``delta = dl/dz``.  The engine
never materialises per-token gradient matrices: it keeps the factors ``(h, delta)`` and
turns them into reads and states with matmuls.  ``delta`` comes from autograd, so any
architecture written against ``linear(name, h)`` works, and with ``create_graph`` the
outer loss trains everything that produced q, k, v and the gates.  A map's bias ``b`` is
the weight of the constant input 1 (``MemoryArchitecture.affine``): its factors are
``(1, delta)`` with the map's own delta.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .axes import (
    AttentionalBias,
    GateDef,
    Gates,
    LearningAlgorithm,
    MemoryArchitecture,
    Retention,
    Weights,
    at_least_fp32,
    check_parts,
)
from .state import MemoryState

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (h, delta), (B, H, N, d)


class MemoryRule(nn.Module):
    def __init__(
        self,
        arch: MemoryArchitecture,
        bias: AttentionalBias,
        retention: Retention,
        algorithm: LearningAlgorithm,
        channelwise: Iterable[str] = (),
    ):
        """``channelwise``: which gates have one value per value channel, some of
        ``parts.CHANNELWISE``: "lr", "window", "decay", "momentum"."""
        super().__init__()
        self.arch, self.bias, self.retention, self.algorithm = arch, bias, retention, algorithm
        self.channelwise = frozenset(channelwise)
        problems = check_parts(arch, bias, retention, algorithm, self.channelwise)
        if problems:
            raise ValueError("; ".join(problems))
        algorithm.attach(arch)
        # read once: the forward asks for them, and torch.compile cannot trace a plugin
        # building its (frozen attrs) GateDefs there
        self._bias_gate_names = tuple(d.name for d in bias.gates())
        # name -> one value per value channel: what memory_op checks its gates against
        self.gate_layout = {d.name: d.channelwise for d in self.gate_defs()}

    @property
    def parts(self) -> tuple[MemoryArchitecture, AttentionalBias, Retention, LearningAlgorithm]:
        """The four Miras axes, in the order the checks take them."""
        return self.arch, self.bias, self.retention, self.algorithm

    @property
    def channelwise_lr(self) -> bool:
        return "lr" in self.channelwise

    @property
    def channelwise_window(self) -> bool:
        return "window" in self.channelwise

    @property
    def channelwise_decay(self) -> bool:
        """alpha_t per value channel: the state's log_decay and lr_sum are then (B, H, d_v)."""
        return "decay" in self.channelwise

    @property
    def channelwise_rows(self) -> bool:
        """A decay (alpha or eta) per value channel: the coefficients get a channel dimension."""
        return bool(self.channelwise & {"decay", "momentum"})

    @property
    def window(self) -> int:
        return self.bias.window

    def chunk_sums(self) -> dict[str, Callable[[Gates], torch.Tensor]]:
        """The chunk sums the axes declare (``Retention.chunk_sums``, ``LearningAlgorithm.chunk_sums``)."""
        return {**self.retention.chunk_sums(), **self.algorithm.chunk_sums()}

    @property
    def nonlinear(self) -> bool:
        return self.retention.nonlinear or self.algorithm.nonlinear

    def gate_defs(self) -> list[GateDef]:
        defs = [*self.bias.gates(), *self.retention.gates(), *self.algorithm.gates()]
        role_gates = {
            "lr": "lr",
            "window": self.bias.window_gate,
            "decay": self.retention.decay_gate,
            "momentum": self.algorithm.momentum_gate,
        }
        wide = {role_gates[role] for role in self.channelwise}
        return [GateDef(d.name, d.activation, d.init, d.scale, True) if d.name in wide else d for d in defs]

    def source_weights(self, theta: torch.Tensor, source_gates: Gates) -> torch.Tensor | None:
        """Per source and value channel, what multiplies dl/dy: a channel-wise theta (given per
        source, (B, H, N or 1, d_v)) and channel-wise window gates gamma; None if neither."""
        weight = theta if self.channelwise_lr else None
        if self.channelwise_window:
            gamma = source_gates[self.bias.window_gate]
            weight = gamma if weight is None else weight * gamma
        return weight

    def bias_gate_names(self) -> list[str]:
        return list(self._bias_gate_names)

    def initial_state(self, batch: int) -> MemoryState:
        learned = {name: w.unsqueeze(0).expand(batch, *w.shape) for name, w in self.arch.init.items()}
        weights, extra = self.retention.initial(learned)
        sample = next(iter(weights.values()))
        rows = (sample.shape[2],) if self.channelwise_decay else ()  # a matrix memory's value channels
        zeros = sample.new_zeros(
            batch, sample.shape[1], *rows, dtype=torch.promote_types(sample.dtype, torch.float32)
        )
        momentum = {n: torch.zeros_like(w) for n, w in weights.items()} if self.algorithm.momentum else None
        decayed = (
            {n: torch.zeros_like(w) for n, w in weights.items()}
            if self.retention.needs_decayed_update
            else None
        )
        return MemoryState(
            start=weights,
            weights=weights,
            momentum=momentum,
            extra=extra,
            offset=0,
            log_decay=zeros,
            sums={name: zeros.clone() for name in self.chunk_sums()},
            decayed_update=decayed,
            aux_log_decay=zeros.clone() if decayed is not None else None,
            algorithm_state=self._initial_algorithm_state(weights, zeros)
            if self.algorithm.stateful
            else None,
        )

    def _initial_algorithm_state(self, weights: Weights, head: torch.Tensor) -> dict[str, Any]:
        """A stateful algorithm's state at t = 0, shaped as its ``StateDef``s say (at least fp32)."""
        state: dict[str, Any] = {}
        for d in self.algorithm.state_defs():
            if d.shape == "head":
                state[d.name] = torch.full_like(head, d.init)
                continue
            state[d.name] = {
                n: torch.full(
                    (*w.shape[:-1], w.shape[-1] if d.shape == "entry" else 1),
                    d.init,
                    dtype=torch.promote_types(w.dtype, torch.float32),
                    device=w.device,
                )
                for n, w in weights.items()
            }
        return state

    def read(self, weights: Weights, x: torch.Tensor) -> torch.Tensor:
        """y = M_W(x) with materialised weights, x: (B, H, N, d_in)."""
        return self.apply_arch(x, lambda name, h: h @ weights[name].transpose(-1, -2).to(h.dtype))

    def apply_arch(self, x: torch.Tensor, linear) -> torch.Tensor:
        """``M(x)`` with ``linear`` (one matmul per inner weight) and the maps' biases added."""
        return self.arch(x, self.arch.affine(linear))

    def factors(
        self,
        weights: Weights,
        keys: torch.Tensor,
        values: torch.Tensor,
        gates: Gates,
        weight_scale: torch.Tensor | None = None,
        out_weight: torch.Tensor | None = None,
    ) -> Factors:
        """Per-source ``(h, delta)`` of ``grad l(W; k_j, v_j)`` for every linear map of M.

        ``weight_scale`` (B, H, N) evaluates source j at ``scale_j * W`` (the gated delta
        rule's decayed point), or (B, H, N, d_out) at ``diag(scale_j) W`` (a channel-wise
        decay); ``out_weight`` (B, H, N[, d_v]) multiplies dl/dy per source (a channel-wise
        learning rate).
        """

        rows_scale = None
        if weight_scale is not None:
            rows_scale = weight_scale if weight_scale.dim() == keys.dim() else weight_scale.unsqueeze(-1)

        def linear(name: str, h: torch.Tensor) -> torch.Tensor:
            z = h @ weights[name].transpose(-1, -2).to(h.dtype)
            return z * rows_scale.to(z.dtype) if rows_scale is not None else z

        def transposed(
            name: str, delta: torch.Tensor
        ) -> torch.Tensor:  # delta -> delta W (back through z = W h)
            if rows_scale is not None:
                delta = delta * rows_scale.to(delta.dtype)
            return delta @ weights[name].to(delta.dtype)

        def dloss(pred: torch.Tensor) -> torch.Tensor:
            dpred = self.bias.gradient(pred, values, gates)
            if dpred is None:
                dpred = self._autograd_dloss(pred, values, gates)
            if out_weight is not None:
                dpred = dpred * (out_weight if out_weight.dim() == dpred.dim() else out_weight.unsqueeze(-1))
            return dpred

        analytic = self.arch.analytic_factors(keys, self.arch.affine(linear), transposed, dloss)
        if analytic is None:
            pairs = self._autograd_factors(keys, linear, dloss)
        else:
            pairs = dict(analytic)
            for name, bias in self.arch.biases.items():  # a bias's input is 1, its delta the map's
                if bias not in pairs and name in pairs:
                    h, delta = pairs[name]
                    pairs[bias] = (h.new_ones(*h.shape[:-1], 1), delta)
        names = list(pairs)
        deltas = [pairs[n][1] for n in names]
        if self.algorithm.normalized:
            energy = sum(at_least_fp32(pairs[n][0]).pow(2).sum(-1) for n in names)  # (B, H, N)
            scale = (1.0 / energy.clamp_min(1e-6)).unsqueeze(-1)  # exactly 1 for unit keys
            deltas = [d * scale.to(d.dtype) for d in deltas]
        create_graph = torch.is_grad_enabled()
        out: Factors = {}
        for name, delta in zip(names, deltas, strict=True):
            h = pairs[name][0]
            out[name] = (h if create_graph else h.detach(), delta if create_graph else delta.detach())
        return out

    def _autograd_dloss(self, pred: torch.Tensor, values: torch.Tensor, gates: Gates) -> torch.Tensor:
        """dl/dpred by autograd, for a bias without an analytic gradient."""
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not pred.requires_grad:
                pred = pred.detach().requires_grad_()
            loss = self.bias.loss(pred, values, gates)
            (dpred,) = torch.autograd.grad(loss.sum(), pred, create_graph=create_graph)
        return dpred

    def _autograd_factors(self, keys: torch.Tensor, linear, dloss) -> Factors:
        """(h, delta) of every linear map by autograd: any architecture written against ``linear``."""
        taps: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        create_graph = torch.is_grad_enabled()

        def tapped(name: str, h: torch.Tensor) -> torch.Tensor:
            z = linear(name, h)
            if not z.requires_grad:  # inference: a local graph just for the inner gradient
                z = z.detach().requires_grad_()
            taps[name] = (h, z)
            return z

        with torch.enable_grad():
            pred = self.apply_arch(keys, tapped)  # a bias is tapped too, with its input 1
            dpred = dloss(pred)
            names = list(taps)
            deltas = torch.autograd.grad(
                pred,
                [taps[n][1] for n in names],
                grad_outputs=dpred,
                create_graph=create_graph,
                allow_unused=True,
            )
        return {
            n: (taps[n][0], torch.zeros_like(taps[n][1]) if d is None else d)
            for n, d in zip(names, deltas, strict=True)
        }
