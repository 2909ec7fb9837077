"""MAD fuzzy in-context recall (Poli et al. 2024, athms/mad-lab,
``generate_fuzzy_in_context_recall_instance`` in ``mad/data/instances.py``).

Keys and values are motifs: runs of 1 … ``k_motif_size`` distinct key tokens from [0, S/2)
and 1 … ``v_motif_size`` distinct value tokens from [S/2, S), with S = V − 1 − noise (the top
token V − 1 pads; without ``multi_query`` V − 2 pads and V − 1 is the copy token).  The
motif sizes of each pair are uniform; in validation every key has the full ``k_motif_size``
(mad-lab's test rows "always prompt at the maximum key motif size").  A key keeps one value
motif through the sequence.  One probe pair is placed at a uniform point of the body, pairs
follow until the body is full, the probe pair is repeated at the end, and the row is left
-padded to length::

    inputs:  pad pad k1 k1 v1 | k2 v2 v2 v2 | … | kp kp kp vp vp | … | k1 k1 v1 | … kp kp kp vp
    labels:   .   .   .  .  . |  .  .  .  . | … |  .  .  .  .  . | … |  . v1  . | …  .  . vp vp

A value motif is scored (each of its tokens, predicted from the token before it) when its
key appeared before in the sequence (multi_query) or only at the final probe.  Training
labels are, as in mad-lab, every next token.  Key and value tokens come from disjoint
ranges, so a row splits into its pairs unambiguously; that is what makes keys "fuzzy": (1,)
and (1, 2) are different keys that share a prefix.  ``distance`` at an answer is the number of
tokens between the starts of the two occurrences of the pair.

One deviation: mad-lab draws the probe's position over a range that can lie past the end of
the body, and then the final probe asks a key never shown; here the position is drawn inside
the body (no later than one widest pair before its end), so every scored answer can be
recalled.
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
    train_examples_param,
    train_labels_param,
    val_examples_param,
)


@attrs.frozen
class FuzzyRecallParams:
    vocab_size: int = miraslab.param(16, ge=4, doc="tokens: keys, values, noise, the pad (and copy) token")
    seq_len: int = miraslab.param(128, ge=8, doc="tokens per example; must equal data.seq_len")
    k_motif_size: int = miraslab.param(3, ge=1, doc="most tokens a key has (training draws 1 … this many)")
    v_motif_size: int = miraslab.param(3, ge=1, doc="most tokens a value has (1 … this many)")
    multi_query: bool = miraslab.param(
        True,
        doc="score every repeated key (mad-lab's benchmark); false: only the final probe, after a copy token",
    )
    noise_vocab_size: int = miraslab.param(0, ge=0, doc="tokens reserved for noise, below the pad token")
    frac_noise: float = miraslab.param(
        0.0, ge=0, lt=1, doc="share of pairs replaced by noise of the same length"
    )
    train_examples: int = train_examples_param(12800)
    val_examples: int = val_examples_param()
    train_labels: str = train_labels_param()

    @property
    def symbols(self) -> int:
        return self.vocab_size - self.noise_vocab_size - (1 if self.multi_query else 2)

    def cross_check(self) -> None:
        keys, values = self.symbols // 2, self.symbols - self.symbols // 2
        if keys < self.k_motif_size or values < self.v_motif_size:
            raise ParamValueError(
                "vocab_size",
                f"at least {self.vocab_size - self.symbols + 2 * max(self.k_motif_size, self.v_motif_size)} "
                f"so that a motif's tokens are distinct ({keys} key and {values} value tokens now)",
                self.vocab_size,
            )
        widest = self.k_motif_size + self.v_motif_size
        if self.seq_len < 3 * widest:
            raise ParamValueError(
                "seq_len",
                f"at least {3 * widest} (room for the probe pair twice and a pair besides)",
                self.seq_len,
            )
        check_noise(self)


def fuzzy_example(
    params: FuzzyRecallParams, rng: np.random.Generator, *, training: bool
) -> tuple[list[int], list[int], list[int]]:
    """One example as lists of length seq_len + 1: the stream, its targets and distances
    (``targets[t]`` is what position t − 1 predicts, mad-lab's convention before its shift)."""
    widest_k, widest_v = params.k_motif_size, params.v_motif_size
    length, symbols = params.seq_len, params.symbols
    n_keys = symbols // 2
    pad = params.vocab_size - (1 if params.multi_query else 2)
    # enough draws for the most pairs a body can hold (each pair at least 2 tokens)
    most = length // 2 + 1
    sizes_k = rng.integers(1, widest_k + 1, most + 1) if training else np.full(most + 1, widest_k)
    sizes_v = rng.integers(1, widest_v + 1, most + 1)
    is_noise = (rng.random(most) < params.frac_noise).tolist()
    key_tokens = rng.random((most + 1, n_keys)).argsort(axis=1).tolist()  # a motif: the first few
    value_tokens = (rng.random((most + 1, symbols - n_keys)).argsort(axis=1) + n_keys).tolist()
    noise = rng.integers(
        symbols, symbols + max(params.noise_vocab_size, 1), (most, widest_k + widest_v)
    ).tolist()
    sizes_k, sizes_v = sizes_k.tolist(), sizes_v.tolist()

    probe_k = tuple(key_tokens[most][: sizes_k[most]])
    probe_v = tuple(value_tokens[most][: sizes_v[most]])
    probe_size = len(probe_k) + len(probe_v)
    body_end = length - probe_size - (widest_k + widest_v)  # pairs start while the body is shorter
    # no later than a widest pair before the body's end, so the loop below always reaches it
    probe_at = int(rng.integers(0, body_end - (widest_k + widest_v) + 1))

    stream: list[int] = []
    targets: list[int] = []
    back: list[int] = []
    value_of: dict[tuple[int, ...], tuple[int, ...]] = {probe_k: probe_v}
    last_start: dict[tuple[int, ...], int] = {}
    probe_added = False

    def add_pair(key: tuple[int, ...], value: tuple[int, ...]) -> None:
        start = len(stream)
        scored = params.multi_query and key in last_start
        stream.extend(key + value)
        targets.extend([IGNORE] * len(key) + (list(value) if scored else [IGNORE] * len(value)))
        gap = start - last_start[key] if scored else 0
        back.extend([0] * len(key) + [gap] * len(value))
        last_start[key] = start

    draw = 0
    while len(stream) < body_end:
        if len(stream) >= probe_at and not probe_added:
            add_pair(probe_k, probe_v)
            probe_added = True
        elif is_noise[draw]:
            size = sizes_k[draw] + sizes_v[draw]
            stream.extend(noise[draw][:size])
            targets.extend([IGNORE] * size)
            back.extend([0] * size)
        else:
            key = tuple(key_tokens[draw][: sizes_k[draw]])
            value = value_of.setdefault(key, tuple(value_tokens[draw][: sizes_v[draw]]))
            probe_added = probe_added or key == probe_k
            add_pair(key, value)
        draw += 1

    # the final probe, scored whatever multi_query says
    if not params.multi_query:
        stream.append(params.vocab_size - 1)
        targets.append(IGNORE)
        back.append(0)
    start = len(stream)
    stream.extend(probe_k + probe_v)
    targets.extend([IGNORE] * len(probe_k) + list(probe_v))
    back.extend([0] * len(probe_k) + [start - last_start[probe_k]] * len(probe_v))

    missing = length + 1 - len(stream)
    return [pad] * missing + stream, [IGNORE] * missing + targets, [0] * missing + back


def fuzzy_in_context_recall(
    params: FuzzyRecallParams, rng: np.random.Generator, rows: int, *, training: bool
) -> Examples:
    examples = [fuzzy_example(params, rng, training=training) for _ in range(rows)]
    stream, targets, back = (np.array(part, dtype=np.int64) for part in zip(*examples, strict=True))
    labels = targets[:, 1:]
    if training and params.train_labels == "next_token":
        labels = next_token_labels(stream, params.seq_len)
    return {"inputs": stream[:, :-1], "labels": labels, "distance": back[:, 1:]}


class FuzzyRecallTask(MadTask):
    """MAD fuzzy in-context recall: keys and values of several tokens each."""

    name = "mad_fuzzy_recall"

    def generate(self, rng, rows, *, training, seed):
        return fuzzy_in_context_recall(self.params, rng, rows, training=training)


@miraslab.hookimpl
def register_tasks(register):
    register("mad_fuzzy_recall", FuzzyRecallTask, FuzzyRecallParams)
