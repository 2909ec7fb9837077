"""The documented limits on every count a user gives, and the one check that enforces them.

A count (steps, seeds, cells, batches, a sequence length, tokens to generate) is checked here
before anything is allocated for it, on every command: against a documented limit (far past
any real use; docs/recipes.md lists them) and, where the count is multiplied into memory,
against what this machine can hold.  ``--seq-len 1000000000`` is then one line naming the flag,
not an allocation of 238 GiB.
"""

from __future__ import annotations

from typing import Any

from .errors import MiraslabError

MAX_STEPS = 10**9  # optimizer steps; the longest published runs take a few million
MAX_SEED = 2**64 - 1  # torch.manual_seed's range: a larger seed overflows inside torch
MAX_CELLS = 100_000  # cells of one ablation matrix (seeds included), built before any runs
MAX_BATCHES = 100_000  # evaluation batches, drawn and held together so every mode sees the same
MAX_NEW_TOKENS = 1_000_000  # tokens `generate` may produce
MAX_SEQ_LEN = 1 << 24  # tokens in one sequence given on the command line (16,777,216)


def check_count(
    value: int,
    where: str,
    *,
    maximum: int,
    minimum: int = 1,
    bytes_each: int = 0,
    advice: str = "",
) -> int:
    """``value`` if it lies in [minimum, maximum] and ``value * bytes_each`` fits this machine.

    ``where`` names the flag or key (``--batches``, ``seeds``); ``advice`` says what to do when
    it is too large.  Every refusal is one line.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise MiraslabError(f"{where}: expected an integer from {minimum:,} to {maximum:,}, got {value!r}")
    if value < minimum:
        raise MiraslabError(f"{where}: expected an integer >= {minimum:,}, got {value:,}")
    tail = f"; {advice}" if advice else ""
    if value > maximum:
        raise MiraslabError(
            f"{where}: {value:,} is more than the limit of {maximum:,}{tail or '; docs/recipes.md lists the limits'}"
        )
    if bytes_each:
        from .recipe.size_check import _bytes, machine_memory

        needed, memory = value * bytes_each, machine_memory()
        if needed > memory:
            raise MiraslabError(
                f"{where}: {value:,} needs at least {_bytes(needed)}, more than this machine's "
                f"{_bytes(memory)} of memory{tail}"
            )
    return value


TOKEN_ID_BYTES = 16  # an int64 input and target per token of a batch held for evaluation


def check_evaluation_fits(recipe: Any, batches: int, seq_len: int | None = None) -> None:
    """``eval``/``probe``: one forward pass over a batch of the run's rows, and the ``batches``
    held together (every memory mode sees the same), fit this machine; checked before any is drawn.

    ``seq_len``: a ``--seq-len`` given instead of the run's ``data.seq_len``.
    """
    rows, model = recipe.train.batch_size, recipe.model
    if seq_len is not None:  # lower bound: fp32 logits and one residual per layer, per token
        forward = (model.vocab_size + model.d_model * model.n_layers) * 4
        check_count(
            seq_len,
            "--seq-len",
            maximum=MAX_SEQ_LEN,
            bytes_each=rows * forward,
            advice="choose a shorter one",
        )
    tokens = rows * (seq_len or recipe.data.seq_len)
    check_count(
        batches, "--batches", maximum=MAX_BATCHES, bytes_each=tokens * TOKEN_ID_BYTES, advice="ask for fewer"
    )
