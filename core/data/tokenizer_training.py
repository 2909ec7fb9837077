"""A byte-level BPE tokenizer trained on the data, cached by what it was trained on.

Byte-level (GPT-2 style) so any text, in any script or with any bytes, encodes without an
unknown token and decodes back to itself.  The separator token is a special token: it is
never a merge, and text that happens to contain its spelling is encoded as plain text
(``encode_special_tokens``), so documents cannot forge a document boundary.

The trained ``tokenizer.json`` lives in the miraslab cache (``$MIRASLAB_CACHE``, default
``~/.cache/miraslab``) under ``tokenizers/<hash>``, where the hash covers the data source,
the vocabulary size and every training setting: a second run with the same recipe reuses
it, a changed setting trains a new one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import MiraslabError
from .cache import build_once, cached_entry

if TYPE_CHECKING:
    from tokenizers import Tokenizer

TRAINER_VERSION = "miraslab.byte-level-bpe/1"
FILENAME = "tokenizer.json"


def train_byte_level_bpe(
    texts: Iterable[str], *, vocab_size: int, special_tokens: Sequence[str]
) -> Tokenizer:
    """A byte-level BPE with ``vocab_size`` tokens at most (fewer when the texts are tiny)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,
    )
    tokenizer.train_from_iterator(bounded_training_texts(texts), trainer)
    return protect_special_tokens(tokenizer)


# BPE training time grows with the square of a word's length: a line with no whitespace is
# one word, and 2 MB of it took over 5 minutes. Runs longer than this are cut into words of it.
MAX_WORD_CHARS = 64
# and it grows with the text (about 2 s per million characters): a document gives the trainer
# its first this many characters, which are as good a sample of its bytes as all of it
MAX_TRAINING_CHARS_PER_DOCUMENT = 1 << 20
_LONG_RUN = re.compile(rf"\S{{{MAX_WORD_CHARS + 1},}}")


def bounded_training_texts(texts: Iterable[str]) -> Iterator[str]:
    """The texts in pieces of bounded size with no run of non-whitespace over MAX_WORD_CHARS.

    A document gives its first MAX_TRAINING_CHARS_PER_DOCUMENT characters, split as packing
    splits it (``document_pieces``); a long run is cut into words of MAX_WORD_CHARS.
    """
    from .packing import document_pieces

    for text in texts:
        text = text[:MAX_TRAINING_CHARS_PER_DOCUMENT]
        for start, end in document_pieces(text):
            piece, last = text[start:end], 0
            for run in _LONG_RUN.finditer(piece):
                if run.start() > last:
                    yield piece[last : run.start()]
                yield from (run[0][i : i + MAX_WORD_CHARS] for i in range(0, len(run[0]), MAX_WORD_CHARS))
                last = run.end()
            if last < len(piece) or not piece:
                yield piece[last:]


def protect_special_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """Encode the spelling of a special token inside text as text (not saved in tokenizer.json)."""
    tokenizer.encode_special_tokens = True
    return tokenizer


def tokenizer_cache_path(
    material: Mapping[str, Any], *, vocab_size: int, special_tokens: Sequence[str]
) -> Path:
    """Where the tokenizer trained on ``material`` is cached (it may not exist yet)."""
    return cached_entry("tokenizers", _key_material(material, vocab_size, special_tokens)) / FILENAME


def cached_tokenizer(
    material: Mapping[str, Any],
    texts: Callable[[], Iterable[str]],
    *,
    vocab_size: int,
    special_tokens: Sequence[str],
) -> tuple[Tokenizer, Path, bool]:
    """The cached tokenizer for ``material``, training it on ``texts()`` if there is none.

    ``material`` must name everything the texts depend on (source, split, order, count).
    Returns the tokenizer, its file and whether this call trained it.
    """

    key_material = _key_material(material, vocab_size, special_tokens)
    entry = cached_entry("tokenizers", key_material)

    def build(directory: Path) -> None:
        trained = train_byte_level_bpe(texts(), vocab_size=vocab_size, special_tokens=special_tokens)
        trained.save(str(directory / FILENAME))

    trained_now = build_once(entry, build, key_material)
    path = entry / FILENAME
    advice = f"delete {entry} and it is trained again"
    return protect_special_tokens(read_tokenizer(path, advice)), path, trained_now


def read_tokenizer(path: Path, advice: str = "") -> Tokenizer:
    """A ``tokenizer.json`` (JSON only: the tokenizers library never unpickles); one line if it is bad."""
    from tokenizers import Tokenizer

    from ..bounded_read import MAX_JSON_BYTES, FileRefused, check_regular_file

    try:  # the library reads whatever the path names: a FIFO would block, /dev/zero never end
        check_regular_file(path, MAX_JSON_BYTES, "tokenizer.json")
    except FileRefused as exc:
        raise MiraslabError(f"{exc}" + (f"; {advice}" if advice else "")) from None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the library raises a bare Exception for any malformed file
        reason = (str(exc).strip().splitlines() or ["empty"])[0][:200]
        raise MiraslabError(
            f"{path}: not a readable tokenizer.json ({reason})" + (f"; {advice}" if advice else "")
        ) from None


def _key_material(
    material: Mapping[str, Any], vocab_size: int, special_tokens: Sequence[str]
) -> dict[str, Any]:
    import tokenizers

    return {
        "trainer": TRAINER_VERSION,
        "tokenizers": tokenizers.__version__,  # BPE training may differ between versions
        "vocab_size": vocab_size,
        "special_tokens": list(special_tokens),
        **material,
    }
