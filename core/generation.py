"""Sampling from a model through its recurrent decode path.

The prompt is read in blocks of ``PREFILL_BLOCK`` tokens, each with the decode state of the
blocks before (chunked memory, attention over the prompt so far); then each new token is
one :class:`~miraslab.model.decode_step.DecodeStep` with the decode state, whose size does
not grow with the context for memory and sliding-window layouts, so the cost per token
does not depend on the prompt length.  (Full-attention layers keep a KV cache of the whole
context, as they must.)  ``compile=True`` runs that step as one compiled function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from .errors import MiraslabError
from .limits import MAX_NEW_TOKENS, check_count
from .model.decode_step import DecodeStep


def check_sampling(temperature: float, top_k: int, top_p: float, max_tokens: int = 0) -> None:
    """Refuse settings that would otherwise quietly mean something else (-1 as greedy, -5 as all)."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise MiraslabError(f"--temperature: expected a finite number >= 0 (0 is greedy), got {temperature}")
    if top_k < 0:
        raise MiraslabError(f"--top-k: expected an integer >= 0 (0 keeps every token), got {top_k}")
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise MiraslabError(f"--top-p: expected a number in (0, 1], got {top_p}")
    check_count(max_tokens, "--max-tokens", minimum=0, maximum=MAX_NEW_TOKENS)


def check_prompt(prompt: str) -> str:
    """The prompt as text; bytes that are not UTF-8 (the shell passes them through) are refused."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        raise MiraslabError(
            f"--prompt: expected UTF-8 text, got bytes that are not UTF-8 at character {error.start}"
        ) from None
    return prompt


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


# the prompt is read in blocks of this many tokens, each carrying the state of the ones
# before: attention's mask and scores are then (block, context) instead of (T, T), which
# for a 35k-token prompt was 12 GB; the logits equal one call's to rounding
PREFILL_BLOCK = 1024


def prefill(model: torch.nn.Module, prompt: torch.Tensor) -> tuple[torch.Tensor, object]:
    """The last block's logits and the decode state after reading ``prompt`` (1, T)."""
    state = None
    for start in range(0, max(prompt.shape[1], 1), PREFILL_BLOCK):
        logits, state = model(prompt[:, start : start + PREFILL_BLOCK], state=state, return_state=True)
    return logits, state


def current_document(prompt: torch.Tensor, reset_token: int | None) -> torch.Tensor:
    """The tail of ``prompt`` (1, T) from its last ``reset_token`` on: what a model that reads
    documents apart sees of it (the whole prompt when there is none)."""
    if reset_token is None:
        return prompt
    opens = (prompt[0] == reset_token).nonzero()
    return prompt[:, int(opens[-1]) :] if len(opens) else prompt


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
    reset_token: int | None = None,
    compile: bool = False,
    report: Callable[[str], None] | None = None,
) -> Iterator[int]:
    """Yield up to ``max_tokens`` new token ids after ``prompt`` (1, T).

    ``reset_token`` (the separator of a model trained with ``data.reset_at_documents``) opens
    a new document: the state restarts from the initial one before it is read, in the prompt
    or when it is sampled, so decoding sees each document alone, as training did.

    ``compile``: each token through every block as one compiled function (CUDA graphs on
    CUDA; eager when compiling fails); ``report`` is given one line saying which step ran."""
    check_sampling(temperature, top_k, top_p, max_tokens)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=prompt.device).manual_seed(seed)
    document = current_document(prompt, reset_token)
    logits, state = prefill(model, document)
    if max_tokens and not bool(torch.isfinite(logits[:, -1]).all()):
        raise MiraslabError(
            "the model's output is not finite: its weights hold NaN or inf (a checkpoint from a diverged run?)"
        )
    # full attention holds every token of the context: the document and what follows it
    decoder = DecodeStep(model, state, document.shape[1] + max_tokens, compile=compile)
    if report is not None:
        report(decoder.describe())
    next_logits = logits[:, -1]
    for remaining in range(max_tokens, 0, -1):
        token = sample_next(next_logits, temperature, top_k, top_p, generator)
        yield int(token[0])
        if stop_token is not None and int(token[0]) == stop_token:
            return
        if reset_token is not None and int(token[0]) == reset_token:
            # a new document starts at this token: read from the initial state
            logits, state = prefill(model, token.view(1, 1))
            decoder = DecodeStep(model, state, remaining, compile=compile)
            next_logits = logits[:, -1]
            continue
        next_logits = decoder.step(token.view(1, 1))
