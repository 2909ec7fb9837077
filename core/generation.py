"""Sampling from a model through its recurrent decode path.

The prompt is read in one call (chunked memory, full attention over the prompt); then each
new token is one call with the decode state, whose size does not grow with the context for
memory and sliding-window layouts, so the cost per token does not depend on the prompt
length.  (Full-attention layers keep a KV cache of the whole context, as they must.)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of ``logits`` (B, V); temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probabilities = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already cover top_p of the mass
        drop = probabilities.cumsum(-1) - probabilities > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probabilities = torch.softmax(logits, dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    max_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop_token: int | None = None,
) -> Iterator[int]:
    """Yield up to ``max_tokens`` new token ids after ``prompt`` (1, T)."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=prompt.device).manual_seed(seed)
    logits, state = model(prompt, return_state=True)
    for _ in range(max_tokens):
        token = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
        yield int(token[0])
        if stop_token is not None and int(token[0]) == stop_token:
            return
        logits, state = model(token.view(1, 1), state=state, return_state=True)
