"""Gradient descent: W_t = alpha_t W_{t-1} - theta_t grad l (the delta rule with l2 and a linear memory).

theta_t = lr_max * sigmoid(w . x_t + b), per head, or per value channel when
``model.memory.gates.channelwise_lr`` is on.
"""

from __future__ import annotations

import attrs

import miraslab

from ._learning_rate import LearningRateAlgorithm, lr_params, normalized_param


@attrs.frozen
class GDParams(lr_params(0.1, 1.0)):
    normalized: bool = normalized_param()


class GradientDescent(LearningRateAlgorithm):
    """One gradient step per token with a data-dependent learning rate theta_t."""

    def reference_step(self, weight, state, grad, gates, alpha):
        """One token on plain tensors, for the kit: W_t = alpha_t W_{t-1} - theta_t g_t (no state)."""
        theta = gates["lr"][..., None, None]
        return alpha[..., None, None] * weight - theta * grad, None


@miraslab.hookimpl
def register_algorithms(register):
    register("gd", GradientDescent, GDParams)
