"""MAD memorization (Poli et al. 2024, athms/mad-lab, ``generate_kv_map`` and
``generate_memorization_instance`` in ``mad/data/instances.py``).

One key-value map is fixed for the whole run by its seed: the (V − 1) // 2 keys [0, K) are
mapped one-to-one onto distinct values of [K, V − 1), uniformly (mad-lab zips a shuffled key
list with a shuffled value list).  An example is L / 2 pairs, each a key uniform over the
keys followed by the insert token (V − 1), at which the model must write the key's value;
the value itself never appears in the inputs, so it can only come from the weights::

    inputs:  k1 ⟨ins⟩ k2 ⟨ins⟩ k3 ⟨ins⟩ …
    labels:   .  v1    .  v2    .  v3   …

With ``frac_noise`` a pair is, with that probability, two noise tokens from the top of
[0, V − 1) instead (never all pairs), and nothing is scored there.  mad-lab trains on a fixed
set of 256 such examples (``train_examples``) and tests on 1 280 fresh ones over the same map:
every key of the map has been seen in training (256 × 16 draws over 127 keys), so the test
measures what was memorised, not the examples.  ``val_set = "train"`` evaluates on the
training examples themselves instead.  Training and validation score the same.
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
    noise_mask,
    train_examples_param,
    val_examples_param,
)

KEY_VALUE_MAP = 2  # the stream, beside train's and val's, that the seed's map is drawn from


@attrs.frozen
class MemorizationParams:
    vocab_size: int = miraslab.param(
        256, ge=4, doc="tokens: keys, values, noise and the insert token (V − 1)"
    )
    seq_len: int = miraslab.param(
        32, ge=2, doc="tokens per example (even: key, insert); must equal data.seq_len"
    )
    noise_vocab_size: int = miraslab.param(
        0, ge=0, doc="tokens reserved for noise, just below the insert token"
    )
    frac_noise: float = miraslab.param(0.0, ge=0, lt=1, doc="share of pairs replaced by two noise tokens")
    train_examples: int = train_examples_param(256)
    val_examples: int = val_examples_param()
    val_set: str = miraslab.param(
        "fresh",
        choices=("fresh", "train"),
        doc="validate on fresh examples over the same map (mad-lab's test set) or on the training examples",
    )

    @property
    def symbols(self) -> int:
        return self.vocab_size - 1 - self.noise_vocab_size

    def cross_check(self) -> None:
        if self.seq_len % 2:
            raise ParamValueError("seq_len", "an even length (key, insert token pairs)", self.seq_len)
        if self.symbols < 2:
            raise ParamValueError(
                "vocab_size",
                f"at least {self.noise_vocab_size + 3} (a key and a value besides noise and the "
                "insert token)",
                self.vocab_size,
            )
        check_noise(self)
        if self.val_set == "train" and self.train_examples == 0:
            raise ParamValueError(
                "val_set", '"fresh" when train_examples is 0 (no fixed training set)', "train"
            )


def key_value_map(params: MemorizationParams, seed: int) -> np.ndarray:
    """``value_of[key]`` for the run's seed: distinct values of [K, symbols) for the K keys."""
    keys = params.symbols // 2
    rng = np.random.default_rng([seed, KEY_VALUE_MAP])
    return rng.permutation(np.arange(keys, params.symbols))[:keys]


def memorization(
    params: MemorizationParams, value_of: np.ndarray, rng: np.random.Generator, rows: int
) -> Examples:
    pairs = params.seq_len // 2
    keys = rng.integers(0, len(value_of), (rows, pairs))
    noise = noise_mask(rng, rows, pairs, params.frac_noise)
    noise_tokens = (
        rng.integers(params.symbols, params.vocab_size - 1, (rows, pairs, 2)) if noise.any() else None
    )
    tokens = np.stack([keys, np.full_like(keys, params.vocab_size - 1)], axis=-1)
    answers = np.stack([np.full_like(keys, IGNORE), value_of[keys]], axis=-1)
    if noise_tokens is not None:
        tokens = np.where(noise[..., None], noise_tokens, tokens)
        answers = np.where(noise[..., None], IGNORE, answers)
    return {"inputs": tokens.reshape(rows, -1), "labels": answers.reshape(rows, -1)}


class MemorizationTask(MadTask):
    """MAD memorization: a fixed key-value map, learnt into the weights."""

    name = "mad_memorization"

    def generate(self, rng, rows, *, training, seed):
        return memorization(self.params, key_value_map(self.params, seed), rng, rows)

    def stream(self, split: str) -> int:
        return super().stream("train" if self.params.val_set == "train" else split)

    def set_size(self, split: str) -> int:
        if split == "val" and self.params.val_set == "train":
            return self.params.train_examples
        return super().set_size(split)


@miraslab.hookimpl
def register_tasks(register):
    register("mad_memorization", MemorizationTask, MemorizationParams)
