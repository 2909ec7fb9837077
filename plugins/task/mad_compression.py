"""MAD compression (Poli et al. 2024, athms/mad-lab, ``generate_compression_instance`` in
``mad/data/instances.py``), in the form a causal language model can be trained on.

mad-lab's example is L − 1 tokens uniform over [0, V − 1) and the compression token V − 1
(L tokens in all); with ``frac_noise`` each of the L − 1 is replaced, with that probability, by
a noise token from [V − 1 − noise, V − 1) (the other tokens then come from below them).  Its
targets are the L tokens themselves (noise included: the instance returns ``inputs, inputs``),
all scored.  mad-lab trains it with an encoder-decoder: the sequence is encoded, only the
compression token's last-layer vector is kept, and an MLP decodes every position from that
vector plus a position embedding.

miraslab's models are causal language models, so here the decoder is the model itself: after
the compression token the row holds L more compression tokens, and the model must write the
L tokens back, one per position (2L tokens a row, the last never scored)::

    inputs:  x1 x2 … x31 C | C  C  … C   C    C
    labels:   .  . …  .  x1| x2 x3 … x31 C    .        (L = 32: rows of 64 tokens)

The scored tokens are mad-lab's, so accuracies compare; what differs is what can reach them.
mad-lab's decoder sees the sequence only through the one compressed vector; here attention
can read the tokens back directly, so for attention layers this is copying, and it is a
compression test only for layers that read through a fixed-size state (a memory without
attention beside it).  Training and validation score the same.
"""

from __future__ import annotations

import attrs
import numpy as np

import miraslab
from miraslab.api import ParamValueError

from ._mad_common import IGNORE, Examples, MadTask, check_noise, train_examples_param, val_examples_param


@attrs.frozen
class CompressionParams:
    vocab_size: int = miraslab.param(
        16, ge=2, doc="tokens: V − 1 symbols (noise at their top) and the compression token"
    )
    seq_len: int = miraslab.param(
        32,
        ge=2,
        doc="mad-lab's length: L − 1 tokens and the compression token; rows are 2L (data.seq_len = 2L)",
    )
    noise_vocab_size: int = miraslab.param(
        0, ge=0, doc="symbols reserved for noise, just below the compression token"
    )
    frac_noise: float = miraslab.param(0.0, ge=0, lt=1, doc="share of the L − 1 tokens replaced by noise")
    train_examples: int = train_examples_param(12800)
    val_examples: int = val_examples_param()

    def cross_check(self) -> None:
        if self.vocab_size - 1 - self.noise_vocab_size < 1:
            raise ParamValueError(
                "vocab_size",
                f"at least {self.noise_vocab_size + 2} (a symbol besides noise and the compression token)",
                self.vocab_size,
            )
        check_noise(self)


def compression(params: CompressionParams, rng: np.random.Generator, rows: int) -> Examples:
    length, compress = params.seq_len, params.vocab_size - 1
    symbols = compress - params.noise_vocab_size
    tokens = rng.integers(0, symbols, (rows, length - 1))
    if params.frac_noise > 0:
        noisy = rng.random((rows, length - 1)) < params.frac_noise
        tokens = np.where(noisy, rng.integers(symbols, compress, (rows, length - 1)), tokens)
    sequence = np.concatenate([tokens, np.full((rows, 1), compress)], axis=1)
    inputs = np.concatenate([sequence, np.full((rows, length), compress)], axis=1)
    labels = np.full((rows, 2 * length), IGNORE, dtype=np.int64)
    labels[:, length - 1 : 2 * length - 1] = sequence  # at the compression token and after: x1 … C
    return {"inputs": inputs.astype(np.int64), "labels": labels}


class CompressionTask(MadTask):
    """MAD compression: write back a whole sequence after reading it."""

    name = "mad_compression"

    def input_length(self) -> int:
        return 2 * self.params.seq_len

    def generate(self, rng, rows, *, training, seed):
        return compression(self.params, rng, rows)


@miraslab.hookimpl
def register_tasks(register):
    register("mad_compression", CompressionTask, CompressionParams)
