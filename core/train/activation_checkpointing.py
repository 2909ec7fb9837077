"""``train.activation_checkpointing``: each block recomputed in the backward pass instead of
keeping its activations (memory for time: about one more forward per step)."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from ..model.language_model import LanguageModel


def checkpoint_blocks(model: LanguageModel) -> None:
    """Wrap each block's forward in ``torch.utils.checkpoint`` where it trains; decoding (a state
    in or out) and no-grad forwards run as before."""
    for block in model.blocks:
        if getattr(block, "_checkpointed", False):
            continue
        forward = block.forward

        def checkpointed(x, state=None, return_state=False, documents=None, _forward=forward):
            packed = {} if documents is None else {"documents": documents}  # packed documents' starts
            if state is not None or return_state or not torch.is_grad_enabled():
                return _forward(x, state, return_state, **packed)
            return checkpoint(_forward, x, use_reentrant=False, **packed)

        block.forward = checkpointed
        block._checkpointed = True
