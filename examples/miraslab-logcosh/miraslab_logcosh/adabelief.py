"""AdaBelief (Zhuang et al. 2020, arXiv 2010.07468, Algorithm 2) as a memory's learning
algorithm: Adam whose second moment tracks the gradient's deviation from its own mean (the
"belief" in the step) rather than its square, written from docs/api.md ("Algorithm state").

    m_t = beta1 m_{t-1} + (1 - beta1) g_t
    s_t = beta2 s_{t-1} + (1 - beta2) (g_t - m_t)^2 + eps
    W_t = alpha_t W_{t-1} - theta_t (m_t / (1 - beta1^t)) / (sqrt(s_t / (1 - beta2^t)) + eps)

theta_t is a data-dependent gate ("lr"); beta1 and beta2 are constants, so the bias
corrections 1 - beta^t are the paper's, carried as one running product per head (state
"p1", "p2"). The paper's weight decay is the retention's alpha_t here.
"""

from __future__ import annotations

import attrs

import miraslab
from miraslab.api import GateDef, LearningAlgorithm, StateDef


@attrs.frozen
class AdaBeliefParams:
    lr_init: float = miraslab.param(0.01, gt=0, doc="theta_t at initialisation")
    lr_max: float = miraslab.param(0.1, gt=0, doc="upper bound of theta_t")
    beta1: float = miraslab.param(0.9, gt=0, lt=1, doc="decay of the mean gradient m_t")
    beta2: float = miraslab.param(0.999, gt=0, lt=1, doc="decay of the belief s_t")
    eps: float = miraslab.param(1e-8, gt=0, doc="added to s_t and to the step's denominator")

    def cross_check(self) -> None:
        if self.lr_init >= self.lr_max:
            raise miraslab.api.ParamValueError("lr_init", f"a number < lr_max ({self.lr_max})", self.lr_init)


class AdaBelief(LearningAlgorithm):
    """Adam with the second moment of the gradient's surprise (g_t - m_t)^2 (AdaBelief)."""

    stateful = True

    def __init__(self, params: AdaBeliefParams):
        super().__init__()
        self.params = params

    def gates(self) -> list[GateDef]:
        return [GateDef("lr", "sigmoid", init=self.params.lr_init, scale=self.params.lr_max)]

    def state_defs(self) -> list[StateDef]:
        return [
            StateDef("mean", "entry"),
            StateDef("belief", "entry"),
            StateDef("p1", "head", init=1.0),  # beta1^t
            StateDef("p2", "head", init=1.0),  # beta2^t
        ]

    def update(self, grad, state, gates):
        p = self.params
        theta = self.lr(gates)[..., None, None]
        p1, p2 = state["p1"] * p.beta1, state["p2"] * p.beta2
        c1, c2 = (1 - p1)[..., None, None], (1 - p2)[..., None, None]
        mean, belief, step = {}, {}, {}
        for n, g in grad.items():
            mean[n] = p.beta1 * state["mean"][n] + (1 - p.beta1) * g
            belief[n] = p.beta2 * state["belief"][n] + (1 - p.beta2) * (g - mean[n]) ** 2 + p.eps
            step[n] = -theta * (mean[n] / c1) / ((belief[n] / c2).sqrt() + p.eps)
        return step, {"mean": mean, "belief": belief, "p1": p1, "p2": p2}

    def reference_step(self, weight, state, grad, gates, alpha):
        """One token on plain tensors (the paper's Algorithm 2); the state is (m, s, t)."""
        p = self.params
        m, s, t = (0.0, 0.0, 0) if state is None else state
        m = p.beta1 * m + (1 - p.beta1) * grad
        s = p.beta2 * s + (1 - p.beta2) * (grad - m) ** 2 + p.eps
        t += 1
        m_hat, s_hat = m / (1 - p.beta1**t), s / (1 - p.beta2**t)
        step = gates["lr"][..., None, None] * m_hat / (s_hat.sqrt() + p.eps)
        return alpha[..., None, None] * weight - step, (m, s, t)


@miraslab.hookimpl
def register_algorithms(register):
    register("adabelief", AdaBelief, AdaBeliefParams)
