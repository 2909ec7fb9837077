"""The ``niah`` task: single needle in a haystack (S-NIAH), as in RULER and Titans.

Hsieh et al. 2024, "RULER: What's the real context size of your long-context language
models?" (S-NIAH-1/2/3: a passkey in a repeated-noise haystack, a number and a uuid in an
essay haystack), used by Behrouz et al. 2025, "Titans", table 2.  One example of ``seq_len``
tokens reads::

    inputs:  h h h h [needle d1 d2 … dn] h h h h h h … h [query] d1 d2 … d(n−1)
    labels:  -100 …                                 -100  d1    d2 d3 … dn

The needle (a marker, then n symbols) sits at ``depth`` × (haystack length) tokens into the
haystack; at the end the query asks for it and the answer is teacher-forced: the logits at
the query's last token must give d1, those at d1 give d2, and so on (as MQAR's values, the
last symbol is never written there).  ``distance`` at each answer is how far its symbol was
written before (answer position − the symbol's needle position), the same for every symbol
of one needle.  A uuid's dashes are written but not asked (label -100).

Needles: ``passkey`` (5 digits, Mohtashami & Jaggi 2023), ``number`` (7 digits) and ``uuid``
(32 hex digits, 8-4-4-4-12), drawn uniformly; a number never starts with 0.

Haystacks: ``noise`` (one fixed period of filler tokens repeated, RULER's "The grass is
green. The sky is blue. ..."), ``random`` (uniform filler tokens) or ``text`` (rows of a text
task's documents, the essay haystack).  Without a ``tokenizer`` every token is an id of this
task's own vocabulary (below); with one (e.g. a text run's tokenizer.json) the markers and the
noise are its tokens of RULER's sentences and each needle symbol is its token of that
character, so a text model reads a needle in its own vocabulary.

Token ids without a tokenizer: digits 0–9 and hex a–f are 0–15, the uuid dash 16, the needle
marker 17, the query marker 18, filler tokens [19, vocab_size).

Each global batch is drawn from its own generator keyed by (seed, split, step), as ``mqar``
does; a text haystack is the text task's batches in order, and its position resumes with the
state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

import miraslab
from miraslab.api import (
    ParamValueError,
    RecipeError,
    SeededBatches,
    SeededTask,
    Task,
    make_component,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

IGNORE = -100  # F.cross_entropy's default ignore_index
HEX = "0123456789abcdef"
DASH, NEEDLE_MARK, QUERY_MARK, FIRST_FILLER = 16, 17, 18, 19
NOISE_PERIOD = 16  # tokens in one period of the id noise haystack
UUID_GROUPS = (8, 4, 4, 4, 12)
DEFAULT_LENGTH = {"passkey": 5, "number": 7, "uuid": 32}
# RULER's templates (niah.py and its noise haystack), read through a tokenizer
NOISE_TEXT = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
TEMPLATES = {
    "passkey": ("The pass key is ", ". Remember it. ", " What is the pass key? The pass key is "),
    "number": (
        "One of the special magic numbers is: ",
        ". ",
        " What is the special magic number mentioned in the provided text? The special magic number "
        "mentioned in the provided text is: ",
    ),
    "uuid": (
        "One of the special magic uuids is: ",
        ". ",
        " What is the special magic uuid mentioned in the provided text? The special magic uuid "
        "mentioned in the provided text is: ",
    ),
}


@attrs.frozen
class NiahParams:
    vocab_size: int = miraslab.param(
        256, ge=FIRST_FILLER + 4, doc="token ids [0, V) without a tokenizer (with one, its vocabulary)"
    )
    seq_len: int = miraslab.param(256, ge=8, doc="context length of each example; must equal data.seq_len")
    needle: str = miraslab.param(
        "passkey", choices=tuple(DEFAULT_LENGTH), doc="what is hidden: 5 digits, 7 digits or a uuid"
    )
    needle_length: int = miraslab.param(
        0, ge=0, doc="digits of a passkey or number needle; 0 is 5 (passkey) or 7 (number); a uuid has 32"
    )
    depths: tuple[float, ...] = miraslab.param(
        factory=tuple,
        ge=0,
        le=1,
        doc="where the needle sits in the haystack (0 first, 1 last), row i at depths[i % n]; empty: uniform",
    )
    haystack: str = miraslab.param(
        "noise",
        choices=("noise", "random", "text"),
        doc="a repeated noise period (RULER's S-NIAH-1), uniform fillers, or a text task's documents",
    )
    tokenizer: str = miraslab.param(
        "",
        doc="a tokenizer.json: markers, noise and needle symbols as its tokens (needed by a text haystack)",
    )
    dataset: str = miraslab.param("stdlib", doc="the text haystack's documents, as the text task's dataset")

    @property
    def symbols(self) -> int:
        return self.needle_length or DEFAULT_LENGTH[self.needle]

    @property
    def written(self) -> int:
        """Tokens of the needle as written: its symbols, and a uuid's four dashes."""
        return self.symbols + (len(UUID_GROUPS) - 1 if self.needle == "uuid" else 0)

    def cross_check(self) -> None:
        if self.needle == "uuid" and self.needle_length not in (0, 32):
            raise ParamValueError(
                "needle_length", "0 or 32 for a uuid (8-4-4-4-12 hex digits)", self.needle_length
            )
        if self.haystack == "text" and not self.tokenizer:
            raise ParamValueError("tokenizer", 'a tokenizer.json for haystack = "text"', "")
        shortest = 2 * self.written + 2  # marker + needle, query marker + answer − 1, one haystack token
        if not self.tokenizer and self.seq_len < shortest:
            raise ParamValueError(
                "seq_len",
                f"at least {shortest} for a {self.needle} needle, its query and a haystack",
                self.seq_len,
            )


@attrs.frozen
class NeedleVocabulary:
    """The token ids a needle, its query and a haystack are written with."""

    symbols: np.ndarray  # the id of each of HEX's characters
    dash: int
    needle_prefix: np.ndarray
    needle_suffix: np.ndarray
    query: np.ndarray
    noise: np.ndarray  # one period of the noise haystack
    fillers: np.ndarray  # what a random haystack draws from

    @classmethod
    def of_ids(cls, vocab_size: int) -> NeedleVocabulary:
        fillers = np.arange(FIRST_FILLER, vocab_size)
        period = np.random.default_rng(0).permutation(fillers)[:NOISE_PERIOD]  # the same in every run
        none = np.array([], dtype=np.int64)
        return cls(
            np.arange(len(HEX)), DASH, np.array([NEEDLE_MARK]), none, np.array([QUERY_MARK]), period, fillers
        )

    @classmethod
    def of_tokenizer(cls, tokenizer: Tokenizer, needle: str) -> NeedleVocabulary:
        def encode(text: str) -> np.ndarray:
            return np.array(tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)

        def single(character: str) -> int:
            ids = encode(character)
            if len(ids) != 1:
                raise RecipeError(
                    [f"data.task.tokenizer: {character!r} is not one token of it; the niah needles need one"]
                )
            return int(ids[0])

        symbols = np.array([single(c) for c in HEX])
        prefix, suffix, query = (encode(text) for text in TEMPLATES[needle])
        special = [tokenizer.token_to_id(t) for t in tokenizer.get_vocab() if t.startswith("<|")]
        reserved = np.concatenate([symbols, [single("-")], [i for i in special if i is not None]])
        fillers = np.setdiff1d(np.arange(tokenizer.get_vocab_size()), reserved)
        return cls(symbols, single("-"), prefix, suffix, query, encode(NOISE_TEXT), fillers)


def needle_symbols(params: NiahParams, rng: np.random.Generator, rows: int) -> np.ndarray:
    """(rows, n) indices into HEX: the needle's digits or hex digits."""
    n = params.symbols
    if params.needle == "uuid":
        return rng.integers(0, 16, size=(rows, n))
    digits = rng.integers(0, 10, size=(rows, n))
    digits[:, 0] = rng.integers(1, 10, size=rows)  # a number has no leading 0
    return digits


def written_needle(
    params: NiahParams, symbols: np.ndarray, vocab: NeedleVocabulary
) -> tuple[np.ndarray, np.ndarray]:
    """The needle's tokens as written, (rows, m), and which of those columns are symbols (m,)."""
    ids = vocab.symbols[symbols]
    if params.needle != "uuid":
        return ids, np.ones(ids.shape[1], dtype=bool)
    pieces, asked, start = [], [], 0
    for index, width in enumerate(UUID_GROUPS):
        if index:
            pieces.append(np.full((ids.shape[0], 1), vocab.dash))
            asked.append(False)
        pieces.append(ids[:, start : start + width])
        asked += [True] * width
        start += width
    return np.concatenate(pieces, axis=1), np.array(asked)


def haystack_length(params: NiahParams, vocab: NeedleVocabulary) -> int:
    """Tokens of haystack in a row: what the needle and the query leave of seq_len."""
    needle = len(vocab.needle_prefix) + params.written + len(vocab.needle_suffix)
    return params.seq_len - needle - (len(vocab.query) + params.written - 1)


def single_needle(
    params: NiahParams,
    rng: np.random.Generator,
    rows: int,
    vocab: NeedleVocabulary,
    haystack: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """``rows`` examples: inputs, labels and distance, each (rows, seq_len) int64.

    ``haystack`` (rows, H) replaces the generated one (a text haystack)."""
    length, hay = params.seq_len, haystack_length(params, vocab)
    needle, asked = written_needle(params, needle_symbols(params, rng, rows), vocab)
    if haystack is None:
        if params.haystack == "random":
            haystack = vocab.fillers[rng.integers(0, len(vocab.fillers), size=(rows, hay))]
        else:
            haystack = np.broadcast_to(np.resize(vocab.noise, hay), (rows, hay))  # every row from phase 0
    if params.depths:
        depth = np.resize(np.asarray(params.depths, dtype=np.float64), rows)
    else:
        depth = rng.random(rows)
    offset = np.rint(depth * hay).astype(np.int64)  # haystack tokens before the needle

    def repeated(tokens: np.ndarray) -> np.ndarray:
        return np.broadcast_to(tokens, (rows, len(tokens)))

    block = np.concatenate([repeated(vocab.needle_prefix), needle, repeated(vocab.needle_suffix)], axis=1)
    tail = np.concatenate([repeated(vocab.query), needle[:, :-1]], axis=1)
    inputs = np.empty((rows, length), dtype=np.int64)
    for row in range(rows):  # the needle block inserted at its offset into the haystack row
        o = offset[row]
        inputs[row, : hay + block.shape[1]] = np.concatenate(
            [haystack[row, :o], block[row], haystack[row, o:]]
        )
    inputs[:, hay + block.shape[1] :] = tail

    # the answer to needle column j is predicted at the tail's position before it is written
    answer_at = length - tail.shape[1] + len(vocab.query) - 1 + np.arange(needle.shape[1])
    written_at = offset[:, None] + len(vocab.needle_prefix) + np.arange(needle.shape[1])[None, :]
    labels = np.full((rows, length), IGNORE, dtype=np.int64)
    distance = np.zeros((rows, length), dtype=np.int64)
    labels[:, answer_at[asked]] = needle[:, asked]
    distance[:, answer_at[asked]] = (answer_at[None, :] - written_at)[:, asked]
    return {"inputs": inputs, "labels": labels, "distance": distance}


class NiahBatches(SeededBatches):
    """Each step's needles from its own generator; a text haystack is the text task's rows."""

    task: NiahTask

    def prepare(self, state: dict[str, Any] | None) -> None:
        self.vocab = self.task.vocabulary()
        text = self.task.text
        # every process reads the whole global batch of haystack rows and keeps its own
        self._text = (
            text.batches(
                self.split,
                seq_len=haystack_length(self.task.params, self.vocab),
                batch_size=self.batch_size,
                seed=self.seed,
                state=state.get("text") if state is not None else None,
            )
            if text is not None
            else None
        )

    def draw(self, step: int) -> dict[str, np.ndarray]:
        rng = self.generator(step)
        haystack = None
        if self._text is not None:
            haystack = next(self._text)[:, :-1].numpy()  # a text row is seq_len + 1 tokens
        examples = single_needle(self.task.params, rng, self.batch_size, self.vocab, haystack)
        return {name: array[self.rows] for name, array in examples.items()}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "text": self._text.state_dict() if self._text is not None else None}


class NiahTask(SeededTask):
    """Single needle in a haystack (RULER's S-NIAH): a passkey, number or uuid recalled at the end."""

    name = "niah"
    state_format = "miraslab.niah/1"
    batches_class = NiahBatches

    def __init__(self, params: NiahParams):
        super().__init__(params)
        self.text: Task | None = None
        self._tokenizer: Tokenizer | None = None
        if params.haystack == "text":  # the text task checks its files now, before any training
            table = {"dataset": params.dataset, "tokenizer": params.tokenizer}
            self.text = miraslab.build_component(
                make_component("task", "text", table, miraslab.get_registry())
            )

    def tokenizer(self) -> Tokenizer | None:
        if self._tokenizer is None and self.text is not None:
            self._tokenizer = self.text.tokenizer()
        elif self._tokenizer is None and self.params.tokenizer:
            from tokenizers import Tokenizer

            try:
                self._tokenizer = Tokenizer.from_file(self.params.tokenizer)
            except Exception as exc:
                reason = (str(exc).strip().splitlines() or [""])[0]
                raise RecipeError(
                    [f'data.task.tokenizer: cannot load "{self.params.tokenizer}": {reason}']
                ) from None
        return self._tokenizer

    def vocab_size(self) -> int:
        tokenizer = self.tokenizer()
        return tokenizer.get_vocab_size() if tokenizer is not None else self.params.vocab_size

    def vocabulary(self) -> NeedleVocabulary:
        tokenizer = self.tokenizer()
        if tokenizer is None:
            return NeedleVocabulary.of_ids(self.params.vocab_size)
        return NeedleVocabulary.of_tokenizer(tokenizer, self.params.needle)

    def check_seq_len(self, seq_len: int) -> None:
        super().check_seq_len(seq_len)
        vocab = self.vocabulary()
        if haystack_length(self.params, vocab) < 1:
            raise RecipeError(
                [
                    f"data.task.seq_len: {seq_len} tokens do not hold the {self.params.needle} needle and its "
                    f"query ({seq_len - haystack_length(self.params, vocab)} tokens) and a haystack"
                ]
            )


@miraslab.hookimpl
def register_tasks(register):
    register("niah", NiahTask, NiahParams)
