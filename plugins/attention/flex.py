"""FlexAttention (``torch.nn.attention.flex_attention``, arXiv 2412.05496) with a block mask
built from the visibility rule, so whole key blocks outside a sliding window are skipped.

Eager flex attention materialises the score matrix (PyTorch says so once); ``compile = true``
wraps it in ``torch.compile`` for the fused kernel, and falls back to eager with a warning
when compiling fails.  In torch 2.13 flex attention runs forward on CPU but has no backward
pass there: on CPU it serves evaluation and generation, and training asks for ``sdpa``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import attrs
import torch

import miraslab
from miraslab.api import AttentionBackend, Visibility

# devices flex_attention accepts (torch 2.13), and those where it has no backward pass
_DEVICES = ("cuda", "cpu", "xpu", "hpu", "mps")
_FORWARD_ONLY_DEVICES = ("cpu", "mps")
_CACHED_BLOCK_MASKS = 8


@attrs.frozen
class FlexParams:
    compile: bool = miraslab.param(
        False, doc="wrap flex_attention in torch.compile (fused kernel); eager if compiling fails"
    )


def _flex() -> tuple[Callable[..., torch.Tensor], Callable[..., Any]]:
    """(flex_attention, create_block_mask), imported on first use: torch < 2.5 has neither."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    return flex_attention, create_block_mask


class FlexAttention(AttentionBackend):
    """softmax(q k^T / sqrt(d) + mask) v with flex_attention and a block-sparse mask."""

    def __init__(self, params: FlexParams):
        super().__init__()
        self.use_compile = params.compile
        self._compiled: Callable[..., torch.Tensor] | None = None
        # block masks of the aligned layout depend only on lengths and window, so every
        # layer and every training step with the same shapes reuses one
        self._block_masks: dict[tuple[int, int, int, torch.device], Any] = {}

    def unavailable_reason(self, device: torch.device) -> str | None:
        try:
            _flex()
        except ImportError as exc:
            return (
                f"flex_attention cannot be imported from torch {torch.__version__} ({exc}); "
                'it needs torch >= 2.5, or choose backend "sdpa"'
            )
        if device.type not in _DEVICES:
            return f'flex_attention does not run on {device.type} devices; choose backend "sdpa"'
        return None

    def backward_unavailable_reason(self, device: torch.device) -> str | None:
        if device.type in _FORWARD_ONLY_DEVICES:
            return (
                f"flex_attention has no backward pass on {device.type} in torch {torch.__version__}: "
                f'train with backend "sdpa" on {device.type} (flex there serves evaluation and generation only)'
            )
        return None

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visibility: Visibility
    ) -> torch.Tensor:
        return self._attend(q, k, v, block_mask=self._block_mask(visibility, q.device))

    def _block_mask(self, visibility: Visibility, device: torch.device) -> Any:
        _, create_block_mask = _flex()

        def mask_mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
            return visibility.visible(q_idx, kv_idx)

        shape = (visibility.n_queries, visibility.n_keys)
        if visibility.documents:  # packed documents: the block-diagonal mask differs per row, never cached

            def document_mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
                return visibility.visible(q_idx, kv_idx, b)

            rows = visibility.q_doc.shape[0]
            return create_block_mask(document_mod, rows, None, *shape, device=device)
        if not visibility.aligned:
            return create_block_mask(mask_mod, None, None, *shape, device=device)
        key = (*shape, visibility.window, device)
        if key not in self._block_masks:
            if len(self._block_masks) >= _CACHED_BLOCK_MASKS:  # decoding makes a new length per token
                self._block_masks.pop(next(iter(self._block_masks)))
            self._block_masks[key] = create_block_mask(mask_mod, None, None, *shape, device=device)
        return self._block_masks[key]

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: Any) -> torch.Tensor:
        flex_attention, _ = _flex()
        if self.use_compile:
            try:
                if self._compiled is None:
                    self._compiled = torch.compile(flex_attention)
                return self._compiled(q, k, v, block_mask=block_mask)
            except Exception as exc:  # no compiler, unsupported platform, an inductor bug: run eagerly
                self.use_compile = False
                first_line = (str(exc).strip().splitlines() or [""])[0]
                warnings.warn(
                    f"flex attention: torch.compile failed ({type(exc).__name__}: {first_line}); "
                    "falling back to eager flex_attention, which materialises the score matrix",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return flex_attention(q, k, v, block_mask=block_mask)


@miraslab.hookimpl
def register_attentions(register):
    register("flex", FlexAttention, FlexParams)
