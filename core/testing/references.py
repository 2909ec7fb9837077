"""The kit checks the rule, not only its consistency: the engine against a component's own reference.

The path checks hold the chunked path to the recurrent one, and both run the same component
code, so an algorithm that is self-consistent but is not the rule its name claims (a first-order
approximation of Nesterov's momentum, say) passes them.  A component may therefore ship a plain
per-token reference of its update, written from its paper's equation on plain tensors, with no
engine; ``check_reference`` runs the engine's recurrent path (chunk 1: the per-token rule) on a
linear memory in float64 and holds it to a loop that applies the references:

* an algorithm's ``reference_step(weight, state, grad, gates, alpha) -> (weight, state)``:
  ``weight`` is W_{t-1} (B, H, d_out, d_in); ``state`` whatever the reference carries (None at
  the first token, then what it returned: S_{t-1} for momentum, a tuple for several tensors,
  adam's (m, v, P1, P2)); ``grad`` is g_t, the gradient of the bias at the gradient point,
  (B, H, d_out, d_in), already divided by ||k_t||^2 when the algorithm is ``normalized``; ``gates`` this token's gates {name: (B, H)}; ``alpha`` the
  retention's decay alpha_t (B, H).  Returns W_t and the state to carry.
* a bias's ``reference_gradient(weight, key, value, gates) -> grad``: the gradient of its loss
  with respect to W for the linear memory M(k) = W k: (B, H, d_out, d_in) from W (B, H, d_out,
  d_in), k (B, H, d_in), v (B, H, d_out) and this token's gates {name: (B, H)}.

The loop: alpha_t = exp(retention.log_alpha), the gradient point W_{t-1} (alpha_t W_{t-1} for
a retention with ``gradient_at_decayed``), g_t from the bias's reference (or, without one,
dl/dpred of its ``loss`` by autograd times k_t^T), the algorithm's step, then y_t = W_t q_t.
Tolerance: ``REFERENCE_TOLERANCE`` (1e-9) of the reference's largest magnitude (at least 1), as
for the paths: float64, a few tokens, the two differ only in the order of summation.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import api
from .failure import expect_close
from .memory_inputs import random_inputs

REFERENCE_TOLERANCE = 1e-9
REFERENCE_SEQ = 6
NO_REFERENCE = "consistency only: no reference_step"


def has_reference(kind: str, component: Any) -> bool:
    """Whether ``component`` of ``kind`` ships the reference the kit can hold the engine to."""
    method = {"algorithm": "reference_step", "bias": "reference_gradient"}.get(kind)
    return method is not None and callable(getattr(component, method, None))


def why_not_referenced(rule: Any) -> str | None:
    """Why ``check_reference`` cannot run on ``rule`` (None: it can)."""
    if not has_reference("algorithm", rule.algorithm):
        return f"algorithm {_name(rule.algorithm)} has no reference_step"
    if not rule.arch.linear_map:
        return "the reference loop runs a linear memory M(k) = W k"
    if rule.bias.window > 1:
        return f"bias {_name(rule.bias)} has a window of {rule.bias.window} tokens (the loop runs window 1)"
    if rule.retention.nonlinear or rule.retention.needs_decayed_update:
        return f"retention {_name(rule.retention)} has a chunk-end step (the loop runs a plain decay)"
    if rule.channelwise_lr or rule.channelwise_decay:
        return "channel-wise gates (the loop runs one gate per head)"
    return None


def check_reference(rule: Any, what: str = "rule", seq: int = REFERENCE_SEQ) -> None:
    """The engine's recurrent path at chunk 1 equals the components' references, token by token:
    every output y_t and the final weights, within ``REFERENCE_TOLERANCE``."""
    reason = why_not_referenced(rule)
    if reason is not None:
        raise ValueError(f"{what}: check_reference cannot run: {reason}")
    q, k, v, gates, _ = random_inputs(rule, seq=seq)
    with torch.no_grad():
        y, state = api.memory_op(rule, q, k, v, gates, chunk_size=1, path="recurrent")
        expected_y, expected_w = reference_loop(rule, q, k, v, gates)
    where = f"{what}: the engine (recurrent, chunk 1) vs the reference"
    expect_close(f"{where}, outputs over {seq} tokens", y, expected_y, REFERENCE_TOLERANCE)
    expect_close(f"{where}, final weights", state.weights["w"], expected_w, REFERENCE_TOLERANCE)


def reference_loop(rule: Any, q, k, v, gates) -> tuple[torch.Tensor, torch.Tensor]:
    """The outputs (B, H, T, d) and final weights of the plain per-token loop (module docstring)."""
    bias, retention, algorithm = rule.bias, rule.retention, rule.algorithm
    weight = rule.initial_state(q.shape[0]).weights["w"]
    carried = None
    outputs = []
    for t in range(q.shape[2]):
        token = {n: g[:, :, t] for n, g in gates.items()}
        log_alpha = retention.log_alpha({n: g.unsqueeze(2) for n, g in token.items()})
        alpha = torch.exp(log_alpha[:, :, 0]) if log_alpha is not None else torch.ones_like(q[:, :, t, 0])
        point = alpha[..., None, None] * weight if retention.gradient_at_decayed else weight
        grad = _bias_gradient(bias, point, k[:, :, t], v[:, :, t], token)
        if algorithm.normalized:  # normalised LMS: the squared norm of the memory's input
            grad = grad / k[:, :, t].pow(2).sum(-1).clamp_min(1e-6)[..., None, None]
        weight, carried = algorithm.reference_step(weight, carried, grad, token, alpha)
        outputs.append(torch.einsum("bhoi,bhi->bho", weight, q[:, :, t]))
    return torch.stack(outputs, dim=2), weight


def _bias_gradient(bias: Any, weight, key, value, gates) -> torch.Tensor:
    if has_reference("bias", bias):
        return bias.reference_gradient(weight, key, value, gates)
    pred = torch.einsum("bhoi,bhi->bho", weight, key).unsqueeze(2)
    seq_gates = {n: g.unsqueeze(2) for n, g in gates.items()}
    with torch.enable_grad():
        pred = pred.detach().requires_grad_()
        (dpred,) = torch.autograd.grad(bias.loss(pred, value.unsqueeze(2), seq_gates).sum(), pred)
    return dpred[:, :, 0, :, None] * key[:, :, None, :]


def _name(module: Any) -> str:
    return repr(getattr(module, "component_name", type(module).__name__))
