"""Training safeguards against a hybrid bypassing its memory, set per step by the trainer.

A sliding-window attention trained at one large window answers most of what a hybrid's
memory could, and the memory stays under-trained (SWAX, arXiv 2509.24552, sec. 4).  With
``model.attention.train_window = [low, high]`` every training step draws its window from
low..high — every attention of the model the same window that step — and evaluation and
decoding use the nominal ``model.attention.window``.  The draw is a function of the recipe's
seed and the step alone, so a resumed run draws the same windows.

The other safeguard, ``model.attention.branch_dropout``, needs no step: the attention drops
its context for a share of tokens itself (``miraslab.model.attention.drop_context``).
"""

from __future__ import annotations

import random

from torch import nn

from .attention import Attention


def window_at_step(low: int, high: int, seed: int, step: int) -> int:
    """The window of training step ``step``: uniform over low..high, fixed by (seed, step)."""
    return random.Random(f"train_window:{seed}:{step}").randint(low, high)


def set_training_windows(model: nn.Module, seed: int, step: int) -> int | None:
    """Give every attention with a train_window its window for ``step``; the window, or None."""
    chosen = None
    for module in model.modules():
        if isinstance(module, Attention) and module.train_window:
            chosen = window_at_step(*module.train_window, seed, step)
            module.step_window = chosen
    return chosen
