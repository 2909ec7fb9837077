"""Kill switches: stop a run whose memory is dying, with the check, layer, value and step.

Each check looks at the model after a logged step (every ``train.log_every`` steps) and
trips once its condition has held for ``patience`` steps; a threshold of 0 turns it off.

- ``gate_floor``: a MAG/MAC gate's mean below it (the Atlas 300M seed's gate fell from
  50 % to 0.7 %: the memory bypassed) — cause ``gate_collapse``;
- ``dead_share``: the share of a gate's pre-activations with ``|z| < linear_region`` above it
  (the TNT-Atlas seed's gates sat at |z| ~ 0.017, where sigmoid and tanh are linear: they gate
  nothing) — ``dead_gates``;
- ``saturated_share``: the share with ``|z| > saturation`` above it (no gradient flows back
  through them) — ``saturated_gates``;
- ``mixer_bounds``: TNT's M3 mixer alpha outside ``(low, high)`` (the seed's "alpha
  guardrails": one of the memories ignored) — ``mixer_extreme``;
- ``loss_spike``: the loss above ``loss_spike`` times its moving average over
  ``spike_window`` logged steps — ``loss_spike``.

Non-finite losses and gradients stop every run without a monitor (cause ``diverged``), and the
carry-gain floor is ``train.memory_use_min_share`` (``memory_unused``).  The run keeps its last
good checkpoint and the command exits with the cause's code (``miraslab.errors.STOP_EXIT_CODES``).
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs
import torch

import miraslab
from miraslab.api import observe, recorded_gates


@attrs.frozen
class KillSwitchParams:
    patience: int = miraslab.param(100, ge=1, doc="steps a condition must hold before the run stops")
    gate_floor: float = miraslab.param(
        0.0, ge=0, lt=1, doc="stop when a MAG/MAC gate's mean stays below (0: off)"
    )
    dead_share: float = miraslab.param(
        0.0, ge=0, le=1, doc="stop when more than this share of a gate's pre-activations is linear (0: off)"
    )
    linear_region: float = miraslab.param(0.1, gt=0, doc="|pre-activation| below this counts as linear")
    saturated_share: float = miraslab.param(
        0.0, ge=0, le=1, doc="stop when more than this share of a gate's pre-activations saturates (0: off)"
    )
    saturation: float = miraslab.param(4.0, gt=0, doc="|pre-activation| above this counts as saturated")
    mixer_low: float = miraslab.param(0.0, ge=0, lt=1, doc="stop when TNT's mixer alpha stays below (0: off)")
    mixer_high: float = miraslab.param(
        1.0, gt=0, le=1, doc="stop when TNT's mixer alpha stays above (1: off)"
    )
    loss_spike: float = miraslab.param(
        0.0, ge=0, doc="stop when the loss exceeds this times its moving average (0: off)"
    )
    spike_window: int = miraslab.param(
        50, ge=1, doc="logged steps in the loss's moving average (and its warm-up)"
    )


def _layer(name: str) -> str:
    parts = name.split(".")
    return f"L{parts[1]}" if parts[0] == "blocks" and len(parts) > 1 else name


def _gates(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor | None, torch.Tensor]]:
    """(where, gate values or None, pre-activations) of every gate the last step recorded."""
    for name, _, gate, values, pre in recorded_gates(model):
        yield f"{_layer(name)} {gate or 'gate'}", values, pre


class KillSwitch:
    """Stops the run once a configured condition has held for ``patience`` steps."""

    def __init__(self, params: KillSwitchParams):
        self.params = params
        self.since: dict[tuple[str, str], int] = {}  # (check, where) -> first step it held
        self.average: float | None = None
        self.seen = 0

    @miraslab.hookimpl
    def on_train_start(self, run):
        observe(run.model)

    @miraslab.hookimpl
    def on_step_end(self, run, metrics):
        p = self.params
        held: dict[tuple[str, str], tuple[str, str]] = {}  # (check, where) -> (cause, what was seen)
        for where, gate, pre in _gates(run.model):
            pre = pre.detach().float()
            if (
                gate is not None
                and p.gate_floor > 0
                and (mean := float(gate.detach().float().mean())) < p.gate_floor
            ):
                held["gate_floor", where] = (
                    "gate_collapse",
                    f"gate_mean {mean:.4g} below the floor {p.gate_floor:g}",
                )
            if p.dead_share > 0:
                share = float((pre.abs() < p.linear_region).float().mean())
                if share > p.dead_share:
                    held["dead_share", where] = (
                        "dead_gates",
                        f"{share:.1%} of pre-activations within ±{p.linear_region:g} (linear), above {p.dead_share:.0%}",
                    )
            if p.saturated_share > 0:
                share = float((pre.abs() > p.saturation).float().mean())
                if share > p.saturated_share:
                    held["saturated_share", where] = (
                        "saturated_gates",
                        f"{share:.1%} of pre-activations beyond ±{p.saturation:g}, above {p.saturated_share:.0%}",
                    )
        for name, module in run.model.named_modules():
            if name.endswith("mixer") and hasattr(module, "alpha"):
                alpha = float(module.alpha)
                if alpha < p.mixer_low or alpha > p.mixer_high:
                    held["mixer", _layer(name)] = (
                        "mixer_extreme",
                        f"mixer_alpha {alpha:.4g} outside ({p.mixer_low:g}, {p.mixer_high:g})",
                    )
        for key in [key for key in self.since if key not in held]:
            del self.since[key]  # the condition broke: its count starts again
        for key, (cause, seen) in held.items():
            first = self.since.setdefault(key, run.step)
            if run.step - first >= p.patience:
                run.request_stop(f"kill switch {key[0]}: {key[1]}: {seen} since step {first}", cause)
                return
        self._check_loss(run, metrics.get("loss"))

    def _check_loss(self, run, loss: float | None) -> None:
        p = self.params
        if not p.loss_spike or loss is None or loss != loss:  # NaN: the trainer's own stop
            return
        if self.average is not None and self.seen >= p.spike_window and loss > p.loss_spike * self.average:
            run.request_stop(
                f"kill switch loss_spike: loss {loss:.4g} is {loss / self.average:.1f}x its moving average "
                f"{self.average:.4g} (limit {p.loss_spike:g}x) at step {run.step}",
                "loss_spike",
            )
            return
        decay = 1.0 / min(self.seen + 1, p.spike_window)  # a plain mean until the window fills
        self.average = loss if self.average is None else (1 - decay) * self.average + decay * loss
        self.seen += 1


@miraslab.hookimpl
def register_monitors(register):
    register("kill_switch", KillSwitch, KillSwitchParams)
