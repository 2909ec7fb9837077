"""Muon as the memory's optimizer (ATLAS, arXiv 2505.23735 eq. 32):

    S_t = eta_t S_{t-1} - theta_t grad l          (momentum, linear inside a chunk)
    M_t = alpha_t M_{t-1} + NS_k(update)           (orthogonalised by k Newton-Schulz steps)

Inside a chunk the reads see the raw momentum steps (linear in the gradients).  At every
chunk end the chunk's accumulated update U = W_end - (prod alpha) W_start is replaced by
sum_i theta_i NS_k(U) (the theta_i decayed like the weights): each token's step has size
theta_i in the orthogonalised direction, so the step is bounded whatever the gradient's
size, which is what keeps Muon stable.  The bias of an affine map (a (d_out, 1) weight, where
Newton-Schulz would only normalise it) keeps its plain momentum steps, as Muon leaves vectors
to a plain optimizer.  With chunk size 1 this is Atlas's rule
M_t = alpha_t M_{t-1} - theta_t NS_k(S_t) (theta_t also scales the momentum's input, which
NS's scale invariance makes immaterial when theta is constant).
"""

from __future__ import annotations

import attrs
import torch
from torch.autograd.function import once_differentiable

import miraslab
from miraslab.api import ChunkEnd, Gates, Weights, at_least_fp32

from .momentum import Momentum, MomentumParams

# quintic Newton-Schulz coefficients (Keller Jordan's Muon): fast convergence of the singular values
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(update: torch.Tensor, steps: int, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise the last two dims of ``update`` (U S V^T -> U V^T)."""
    x = at_least_fp32(update)
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = x.transpose(-1, -2)
    lead, shape = x.shape[:-2], x.shape[-2:]
    # one dense copy: a transposed view would make every matmul below copy its operand
    flat = x.reshape(-1, *shape).contiguous()
    device = x.device.type
    # under autocast the matmuls run in its dtype, as they did through autograd; the sums stay in x's
    autocast = torch.is_autocast_enabled(device)
    matmul_dtype = torch.get_autocast_dtype(device) if autocast else x.dtype
    with torch.autocast(device_type=device, enabled=False):
        out = _NewtonSchulz.apply(flat, steps, eps, matmul_dtype).view(*lead, *shape)
    return out.transpose(-1, -2) if transposed else out


class _NewtonSchulz(torch.autograd.Function):
    """The normalisation and ``steps`` quintic iterations X' = a X + (b G + c G^2) X, G = X X^T,
    on (N, m, n) with m <= n, as one graph node: through autograd each step was a dozen nodes
    (atlas at chunk 2: 1,280 Newton-Schulz steps a training step).  The backward uses that G
    and P = b G + c G^2 are symmetric: for gP = gX' X^T and Q = gP + gP^T,

        gX = a gX' + P gX' + (b Q + c (Q G + (Q G)^T)) X

    four matmuls a step where autograd takes six.  ``matmul_dtype`` (autocast's): the forward's
    matmuls in it; the backward in x's dtype.  Tested against autograd and by gradcheck
    (tests/test_newton_schulz.py)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, steps: int, eps: float, matmul_dtype: torch.dtype) -> torch.Tensor:
        a, b, c = NS_COEFFICIENTS

        def mm(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
            return torch.bmm(p.to(matmul_dtype), q.to(matmul_dtype))

        norm = torch.linalg.matrix_norm(x, keepdim=True)
        scale = 1.0 / (norm + eps)
        saved = [x, norm, scale]
        y = x * scale
        for _ in range(steps):
            gram = mm(y, y.transpose(-1, -2))
            poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
            saved += [y, gram.to(x.dtype), poly.to(x.dtype)]
            y = mm(poly, y).to(x.dtype).add_(y, alpha=a)  # a X + P X (baddbmm would copy X first)
        ctx.save_for_backward(*saved)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        a, b, c = NS_COEFFICIENTS
        x, norm, scale, *steps = ctx.saved_tensors
        grad = grad.contiguous()
        for k in range(len(steps) // 3 - 1, -1, -1):
            y, gram, poly = steps[3 * k : 3 * k + 3]
            grad_poly = torch.bmm(grad, y.transpose(-1, -2))
            sym = grad_poly + grad_poly.transpose(-1, -2)  # Q
            qg = torch.bmm(sym, gram)
            sym = sym.mul_(b).add_(qg + qg.transpose(-1, -2), alpha=c)  # gG + gG^T
            grad = torch.bmm(poly, grad).add_(grad, alpha=a)  # a gX' + P gX'
            grad = grad.baddbmm_(sym, y)
        # y = x / (|x| + eps): grad_x = s g - s^2 <g, x> x / |x|  (0 where |x| = 0, as autograd's norm)
        inner = torch.linalg.vecdot(grad.flatten(-2), x.flatten(-2))[..., None, None]
        radial = (inner * scale * scale / norm).masked_fill_(norm == 0, 0.0)
        return grad.mul_(scale).sub_(x * radial), None, None, None


@attrs.frozen
class MuonParams(MomentumParams):
    ns_steps: int = miraslab.param(5, ge=1, doc="Newton-Schulz iterations k")


class Muon(Momentum):
    """Momentum whose chunk update is orthogonalised by Newton-Schulz (norm-preserving)."""

    nonlinear = True

    def chunk_sums(self):
        # the chunk's learning rates, decayed like the weights: the Newton-Schulz step's length
        return {"muon_lr": self._head_lr}

    def _head_lr(self, gates: Gates) -> torch.Tensor:
        theta = self.lr(gates)
        return theta.mean(-1) if theta.dim() == 4 else theta  # a channel-wise rate enters as its mean

    def chunk_end(self, end: ChunkEnd) -> Weights:
        decay = torch.exp(end.log_decay)[..., None, None]
        out = {}
        for name, w in end.weights.items():
            if name in end.biases:  # a vector: no direction to orthogonalise, the momentum step stays
                out[name] = w
                continue
            kept = decay * end.start[name]
            update = at_least_fp32(w - kept)
            step = end.sums["muon_lr"][
                ..., None, None
            ]  # the chunk's theta_i, as one step in a fixed direction
            out[name] = kept + (step * newton_schulz(update, self.params.ns_steps)).to(w.dtype)
        return out

    def reference_step(self, weight, state, grad, gates, alpha):
        """One token on plain tensors, for the kit (Atlas's rule at chunk 1); the state is S_{t-1}:

        S_t = eta_t S_{t-1} - theta_t g_t,   W_t = alpha_t W_{t-1} + theta_t NS_k(S_t)   (S_0 = 0)
        """
        theta, eta = self.rates(gates)
        momentum = -theta * grad if state is None else eta * state - theta * grad
        orthogonalised = newton_schulz(momentum, self.params.ns_steps)
        return alpha[..., None, None] * weight + theta * orthogonalised, momentum


@miraslab.hookimpl
def register_algorithms(register):
    register("muon", Muon, MuonParams)
