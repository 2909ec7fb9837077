"""MAD in-context recall and noisy in-context recall (Poli et al. 2024, athms/mad-lab,
``generate_in_context_recall_instance`` in ``mad/data/instances.py``).

A sequence of L tokens is L/2 − 1 key-value pairs followed by one more pair, the probe::

    inputs:  k v k v k v … k v            kp vp     (multi_query, mad-lab's benchmark setting)
    labels:  v . v . . . … v .            vp .      (at a key seen before: the value it had)

Keys are uniform (with repeats) over [0, S/2), values over [S/2, S), S = V − noise_vocab_size
(less the copy token, V − 1, when ``multi_query`` is false); each key keeps one value through
the sequence, drawn uniformly the first time it appears.  A pair slot is noise with
probability ``frac_noise`` (two tokens uniform over the noise vocabulary [S, S + noise)),
never all of them.  The probe repeats a key shown earlier, drawn uniformly from those shown.
Validation labels (mad-lab's test targets) are the value after every key that appeared
before (multi_query) or after the probe only; training labels are, as in mad-lab, every next
token (``train_labels = "answers"`` scores the validation answers instead).

Layout against mad-lab: its multi-query instance holds L − 1 inputs (the L-token stream less
its last token, the probe's value); here rows are the whole L-token stream, and the extra
last position is never scored, so every scored position is mad-lab's.  ``distance`` at an
answer is the number of tokens back to the most recent earlier pair with the same key.

The noisy variant is the same generator with mad-lab's noisy defaults (V 32 of which 16 are
noise tokens, 20 % noise).
"""

from __future__ import annotations

import attrs
import numpy as np

import miraslab
from miraslab.api import ParamValueError

from ._mad_common import (
    IGNORE,
    Examples,
    MadTask,
    check_noise,
    next_token_labels,
    noise_mask,
    train_examples_param,
    train_labels_param,
    val_examples_param,
)


def recall_params(name: str, *, vocab: int, noise_tokens: int, noise_share: float) -> type:
    """The params class of a recall task: in-context and noisy recall differ only in the
    defaults of ``vocab_size``, ``noise_vocab_size`` and ``frac_noise``."""

    @attrs.frozen
    class RecallParams:
        vocab_size: int = miraslab.param(vocab, ge=3, doc="tokens: keys, values, noise (and the copy token)")
        seq_len: int = miraslab.param(128, ge=4, doc="tokens per example (even); must equal data.seq_len")
        multi_query: bool = miraslab.param(
            True,
            doc="score every repeated key (mad-lab's benchmark); false: only the final probe, after a copy token",
        )
        noise_vocab_size: int = miraslab.param(
            noise_tokens, ge=0, doc="tokens reserved for noise, the top of the vocabulary"
        )
        frac_noise: float = miraslab.param(
            noise_share, ge=0, lt=1, doc="share of pair slots filled with noise"
        )
        train_examples: int = train_examples_param(12800)
        val_examples: int = val_examples_param()
        train_labels: str = train_labels_param()

        def cross_check(self) -> None:
            if self.seq_len % 2:
                raise ParamValueError("seq_len", "an even length (pairs of tokens)", self.seq_len)
            symbols = self.vocab_size - self.noise_vocab_size - (0 if self.multi_query else 1)
            if symbols < 2:
                raise ParamValueError(
                    "vocab_size",
                    f"at least {self.vocab_size - symbols + 2}: two tokens for keys and values besides "
                    f"{self.noise_vocab_size} noise tokens"
                    + ("" if self.multi_query else " and the copy token"),
                    self.vocab_size,
                )
            check_noise(self)

    RecallParams.__name__ = RecallParams.__qualname__ = name
    return RecallParams


InContextRecallParams = recall_params("InContextRecallParams", vocab=16, noise_tokens=0, noise_share=0.0)
# mad-lab's noisy defaults: V 32 of which 16 are noise tokens, 20 % noise
NoisyRecallParams = recall_params("NoisyRecallParams", vocab=32, noise_tokens=16, noise_share=0.2)


def in_context_recall(params, rng: np.random.Generator, rows: int, *, training: bool) -> Examples:
    """``rows`` examples: inputs, labels and distance, each (rows, seq_len)."""
    length = params.seq_len
    slots = length // 2 - 1  # pairs before the probe
    copy = 0 if params.multi_query else 1
    symbols = params.vocab_size - params.noise_vocab_size - copy
    n_keys = symbols // 2
    row = np.arange(rows)

    keys = rng.integers(0, n_keys, (rows, slots))
    value_of = rng.integers(n_keys, symbols, (rows, n_keys))  # each key's value in its example
    noise = noise_mask(rng, rows, slots, params.frac_noise)
    noise_tokens = rng.integers(symbols, symbols + max(params.noise_vocab_size, 1), (rows, slots, 2))

    # which pairs repeat a key shown before (noise pairs show nothing), and how far back
    last_seen = np.full((rows, n_keys), -1)
    repeated = np.zeros((rows, slots), dtype=bool)
    back = np.zeros((rows, slots), dtype=np.int64)
    for j in range(slots):
        key, real = keys[:, j], ~noise[:, j]
        previous = last_seen[row, key]
        repeated[:, j] = real & (previous >= 0)
        back[:, j] = np.where(repeated[:, j], 2 * (j - previous), 0)
        last_seen[row[real], key[real]] = j

    # the probe: a key shown before, uniform over the distinct keys shown
    scores = np.where(last_seen >= 0, rng.random((rows, n_keys)), -1.0)
    probe = scores.argmax(axis=1)
    probe_at = 2 * slots + copy

    pairs = np.stack([keys, value_of[row[:, None], keys]], axis=-1)
    pairs = np.where(noise[..., None], noise_tokens, pairs)
    stream = np.empty((rows, length + copy), dtype=np.int64)
    stream[:, : 2 * slots] = pairs.reshape(rows, -1)
    if copy:
        stream[:, 2 * slots] = params.vocab_size - 1
    stream[:, probe_at] = probe
    stream[:, probe_at + 1] = value_of[row, probe]

    # labels[t] is predicted from inputs[: t + 1]: the answer sits at the key's position
    answers = np.full((rows, length), IGNORE, dtype=np.int64)
    distance = np.zeros((rows, length), dtype=np.int64)
    if params.multi_query:
        answers[:, 0 : 2 * slots : 2] = np.where(repeated, pairs[..., 1], IGNORE)
        distance[:, 0 : 2 * slots : 2] = back
    answers[:, probe_at] = stream[:, probe_at + 1]
    distance[:, probe_at] = probe_at - 2 * last_seen[row, probe]

    labels = answers
    if training and params.train_labels == "next_token":
        labels = next_token_labels(stream, length)
    return {"inputs": stream[:, :length], "labels": labels, "distance": distance}


class InContextRecallTask(MadTask):
    """MAD in-context recall: recall the value paired with a key earlier in the sequence."""

    name = "mad_in_context_recall"

    def generate(self, rng, rows, *, training, seed):
        return in_context_recall(self.params, rng, rows, training=training)


class NoisyRecallTask(InContextRecallTask):
    """MAD noisy in-context recall: in-context recall with noise pairs between the pairs."""

    name = "mad_noisy_recall"


@miraslab.hookimpl
def register_tasks(register):
    register("mad_in_context_recall", InContextRecallTask, InContextRecallParams)
    register("mad_noisy_recall", NoisyRecallTask, NoisyRecallParams)
