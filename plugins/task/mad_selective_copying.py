"""MAD selective copying (Poli et al. 2024, athms/mad-lab, ``generate_copying_instance`` with
``selective=True`` in ``mad/data/instances.py``).

N tokens uniform over [0, V − 2) are scattered among L − 2N − 1 blanks (V − 2), then the copy
token (V − 1) and N more blanks, during which the model must write the N tokens in order::

    inputs:  _ a _ _ b _ c … _ z ⟨copy⟩ _ _ _ … _
    labels:  . . . . . . . … . .    .   a b c … z

As in mad-lab (``np.insert`` at ``randint(0, N)`` indices), each blank goes into one of the N
gaps before a token, uniformly, so the last token always sits just before the copy token.
mad-lab draws those indices from NumPy's global generator; here they come from the example's
own, so an example is reproducible.  ``selective = false`` is mad-lab's plain copying task:
the tokens first, the blanks after.  ``distance`` at an answer is the number of tokens from
the token in the input to where it is written.  Training and validation score the same.
"""

from __future__ import annotations

import attrs
import numpy as np

import miraslab
from miraslab.api import ParamValueError

from ._mad_common import IGNORE, Examples, MadTask, train_examples_param, val_examples_param


@attrs.frozen
class SelectiveCopyingParams:
    vocab_size: int = miraslab.param(
        16, ge=3, doc="tokens: V − 2 to copy, the blank (V − 2) and copy (V − 1) tokens"
    )
    seq_len: int = miraslab.param(256, ge=4, doc="tokens per example; must equal data.seq_len")
    num_tokens_to_copy: int = miraslab.param(16, ge=1, doc="tokens to copy, scattered among the blanks")
    selective: bool = miraslab.param(True, doc="scatter the tokens among the blanks (false: plain copying)")
    train_examples: int = train_examples_param(12800)
    val_examples: int = val_examples_param()

    def cross_check(self) -> None:
        if self.seq_len <= 2 * self.num_tokens_to_copy + 1:
            raise ParamValueError(
                "seq_len",
                f"more than {2 * self.num_tokens_to_copy + 1} (the tokens, the copy token, room to write them)",
                self.seq_len,
            )


def selective_copying(params: SelectiveCopyingParams, rng: np.random.Generator, rows: int) -> Examples:
    length, n, vocab = params.seq_len, params.num_tokens_to_copy, params.vocab_size
    blank, copy = vocab - 2, vocab - 1
    blanks = length - 2 * n - 1
    tokens = rng.integers(0, vocab - 2, (rows, n))
    if params.selective:
        before = rng.multinomial(blanks, np.full(n, 1 / n), size=rows)  # blanks in the gap before each token
        where = np.cumsum(before, axis=1) + np.arange(n)
    else:
        where = np.broadcast_to(np.arange(n), (rows, n))
    inputs = np.full((rows, length), blank, dtype=np.int64)
    np.put_along_axis(inputs, where, tokens, axis=1)
    inputs[:, length - n - 1] = copy
    labels = np.full((rows, length), IGNORE, dtype=np.int64)
    labels[:, length - n :] = tokens
    distance = np.zeros((rows, length), dtype=np.int64)
    distance[:, length - n :] = np.arange(length - n, length) - where
    return {"inputs": inputs, "labels": labels, "distance": distance}


class SelectiveCopyingTask(MadTask):
    """MAD selective copying: copy the tokens scattered among blanks, in order."""

    name = "mad_selective_copying"

    def generate(self, rng, rows, *, training, seed):
        return selective_copying(self.params, rng, rows)


@miraslab.hookimpl
def register_tasks(register):
    register("mad_selective_copying", SelectiveCopyingTask, SelectiveCopyingParams)
