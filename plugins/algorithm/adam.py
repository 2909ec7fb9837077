"""Adam as the memory's optimizer (Kingma & Ba 2015, Algorithm 1), with data-dependent betas:

    m_t = beta1_t m_{t-1} + (1 - beta1_t) g_t
    v_t = beta2_t v_{t-1} + (1 - beta2_t) g_t^2                  (elementwise)
    m^_t = m_t / (1 - P1_t),  v^_t = v_t / (1 - P2_t),  P_t = beta_t P_{t-1}, P_0 = 1
    W_t = alpha_t W_{t-1} - theta_t m^_t / (sqrt(v^_t) + eps)

theta_t ("lr"), beta1_t and beta2_t are per-head gates; alpha_t the retention's decay on
W_{t-1}.  Bias correction is applied: the weights an exponential average with gates beta_s
puts on g_1..g_t, (1 - beta_s) prod_{r>s} beta_r, sum to 1 - prod_{s<=t} beta_s exactly, so
dividing by that makes m^ and v^ averages from the first token on (without it the first
steps are ~(1 - beta1) / sqrt(1 - beta2) times too small, and a memory reset at every
sequence start lives in those first steps).  With data-dependent betas the usual 1 - beta^t
becomes the running products P1, P2, carried as per-head state.  With constant gates this is
torch.optim.Adam token by token.
"""

from __future__ import annotations

import attrs
import torch

import miraslab
from miraslab.api import AlgorithmState, GateDef, Gates, LearningAlgorithm, StateDef, Weights


@attrs.frozen
class AdamParams:
    # the step is ~theta per weight entry whatever the gradient's size
    lr_init: float = miraslab.param(0.01, gt=0, doc="theta_t at initialisation")
    lr_max: float = miraslab.param(0.1, gt=0, doc="upper bound of theta_t")
    beta1: float = miraslab.param(0.9, gt=0, lt=1, doc="beta1_t (first moment) at initialisation")
    beta2: float = miraslab.param(0.99, gt=0, lt=1, doc="beta2_t (second moment) at initialisation")
    eps: float = miraslab.param(1e-8, gt=0, doc="added to sqrt(v^) in the denominator")
    normalized: bool = miraslab.param(
        True, doc="divide each gradient by the squared norm of the memory's inputs (normalised LMS)"
    )

    def cross_check(self) -> None:
        if self.lr_init >= self.lr_max:
            raise miraslab.api.ParamValueError("lr_init", f"a number < lr_max ({self.lr_max})", self.lr_init)


def root(x: torch.Tensor) -> torch.Tensor:
    """sqrt(x) for x >= 0 whose backward stays finite at x = 0 (a gradient entry that is exactly 0)."""
    return x.clamp_min(torch.finfo(x.dtype).tiny).sqrt()


class Adam(LearningAlgorithm):
    """Adam with data-dependent lr theta_t and betas beta1_t, beta2_t, bias-corrected."""

    stateful = True

    def __init__(self, params: AdamParams):
        super().__init__()
        self.params = params
        self.normalized = params.normalized

    def gates(self) -> list[GateDef]:
        return [
            GateDef("lr", "sigmoid", init=self.params.lr_init, scale=self.params.lr_max),
            GateDef("beta1", "log_sigmoid", init=self.params.beta1),
            GateDef("beta2", "log_sigmoid", init=self.params.beta2),
        ]

    def state_defs(self) -> list[StateDef]:
        return [
            StateDef("first", "entry"),  # m_t
            StateDef("second", "entry"),  # v_t
            StateDef("beta1_product", "head", init=1.0),  # P1_t = prod beta1
            StateDef("beta2_product", "head", init=1.0),  # P2_t = prod beta2
        ]

    def update(self, grad: Weights, state: AlgorithmState, gates: Gates) -> tuple[Weights, AlgorithmState]:
        beta1, beta2 = torch.exp(gates["beta1"]), torch.exp(gates["beta2"])  # (B, H)
        product1, product2 = beta1 * state["beta1_product"], beta2 * state["beta2_product"]
        theta = self.lr(gates)[..., None, None]
        b1, b2 = beta1[..., None, None], beta2[..., None, None]
        fix1, fix2 = (1 - product1)[..., None, None], (1 - product2)[..., None, None]
        first = {n: b1 * state["first"][n] + (1 - b1) * g for n, g in grad.items()}
        second = {n: b2 * state["second"][n] + (1 - b2) * g * g for n, g in grad.items()}
        step = {n: -theta * (first[n] / fix1) / (root(second[n] / fix2) + self.params.eps) for n in grad}
        new = {"first": first, "second": second, "beta1_product": product1, "beta2_product": product2}
        return step, new

    def reference_step(self, weight, state, grad, gates, alpha):
        """One token on plain tensors, for the kit; the state is (m, v, P1, P2) (None: 0, 0, 1, 1)."""
        m, v, p1, p2 = (0.0, 0.0, 1.0, 1.0) if state is None else state
        beta1, beta2 = torch.exp(gates["beta1"])[..., None, None], torch.exp(gates["beta2"])[..., None, None]
        m, v = beta1 * m + (1 - beta1) * grad, beta2 * v + (1 - beta2) * grad**2
        p1, p2 = beta1 * p1, beta2 * p2
        step = gates["lr"][..., None, None] * (m / (1 - p1)) / (torch.sqrt(v / (1 - p2)) + self.params.eps)
        return alpha[..., None, None] * weight - step, (m, v, p1, p2)


@miraslab.hookimpl
def register_algorithms(register):
    register("adam", Adam, AdamParams)
