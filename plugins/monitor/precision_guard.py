"""Precision guard: updates smaller than the resolution of a parameter's dtype do nothing.

A float with value p is stored to a spacing of ``ulp(p) = 2^floor(log2|p|) * eps(dtype)``;
an update below half of it rounds away.  The TNT-Atlas seed kept a learnable gain at 5.0
in bf16, whose spacing there is 0.03, while AdamW moved it by about 1e-5 a step: the gain
never changed, and nothing said so.  After each logged step this monitor estimates the next
update of every parameter from AdamW's moments,

    u = lr * m_hat / (sqrt(v_hat) + eps) + lr * weight_decay * p,

and flags a parameter when more than ``share`` of its elements have ``|u| < ulp(p) / 2``.
Parameters kept in fp32 (the trainer's own, bf16 autocast included) have spacing 1.2e-7 at 1.0
and pass; bf16 or fp16 parameters are where it fires.  ``action = "warn"`` logs a
``precision_warning`` record (once per parameter); ``"stop"`` ends the run (cause ``precision``).
Optimizers without AdamW's ``exp_avg`` / ``exp_avg_sq`` state are not checked.
"""

from __future__ import annotations

import sys

import attrs
import torch

import miraslab

SAMPLE = 65536  # elements looked at per parameter: a strided sample keeps the check cheap


@attrs.frozen
class PrecisionGuardParams:
    share: float = miraslab.param(
        0.5, gt=0, le=1, doc="flag a parameter when this share of its updates rounds away"
    )
    action: str = miraslab.param("warn", choices=("warn", "stop"), doc="log a warning, or stop the run")


def resolution(values: torch.Tensor) -> torch.Tensor:
    """The spacing of ``values``' dtype at each value, as float32."""
    finfo = torch.finfo(values.dtype)
    magnitude = values.detach().float().abs().clamp_min(finfo.tiny)
    return torch.exp2(torch.floor(torch.log2(magnitude))) * finfo.eps


def swallowed_share(parameter: torch.Tensor, state: dict, group: dict) -> tuple[float, float] | None:
    """(share of elements whose next AdamW update rounds away, median |update|), or None."""
    if "exp_avg" not in state or "exp_avg_sq" not in state:
        return None
    step = float(state.get("step", 1))
    if step < 1:
        return None
    stride = max(1, parameter.numel() // SAMPLE)
    p = parameter.detach().reshape(-1)[::stride]
    m = state["exp_avg"].reshape(-1)[::stride].float()
    v = state["exp_avg_sq"].reshape(-1)[::stride].float()
    beta1, beta2 = group["betas"]
    lr = float(group["lr"])
    update = lr * (m / (1 - beta1**step)) / ((v / (1 - beta2**step)).sqrt() + group["eps"])
    update = update + lr * group.get("weight_decay", 0.0) * p.float()
    moving = update != 0
    if not bool(moving.any()):
        return None
    lost = update.abs() < resolution(p) / 2
    return float(lost[moving].float().mean()), float(update[moving].abs().median())


class PrecisionGuard:
    """Warns (or stops) when a parameter's AdamW updates are below its dtype's resolution."""

    def __init__(self, params: PrecisionGuardParams):
        self.params = params
        self.warned: set[str] = set()

    @miraslab.hookimpl
    def on_step_end(self, run, metrics):
        optimizer = getattr(run, "optimizer", None)
        if optimizer is None:
            return
        names = {id(p): name for name, p in run.model.named_parameters()}
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                name = names.get(id(parameter))
                if name is None or name in self.warned:
                    continue
                found = swallowed_share(parameter, optimizer.state.get(parameter, {}), group)
                if found is None or found[0] <= self.params.share:
                    continue
                lost, typical = found
                value = float(parameter.detach().float().abs().median())
                message = (
                    f"precision: {name} ({str(parameter.dtype).removeprefix('torch.')}) at |value| {value:.3g} "
                    f"resolves {float(resolution(torch.tensor([value], dtype=parameter.dtype))[0]):.3g}; its typical "
                    f"update {typical:.2g} is below half of that ({lost:.0%} of its updates round away) at step {run.step}"
                )
                if self.params.action == "stop":
                    run.request_stop(message, "precision")
                    return
                self.warned.add(name)
                metrics.setdefault("precision_warning", []).append(message)
                print(f"warning: {message}", file=sys.stderr)
        if self.warned:
            metrics["precision/params_below_resolution"] = len(self.warned)


@miraslab.hookimpl
def register_monitors(register):
    register("precision_guard", PrecisionGuard, PrecisionGuardParams)
