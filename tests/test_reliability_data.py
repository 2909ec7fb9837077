"""Memory and time bounded by the data, not its shape: one long document, a line with no spaces.

Cases of issue 20 that failed before the fix: a 50 MB one-line corpus was OOM-killed (packing
encoded 32 copies of the one document at once), and tokenizer training on a line with no
whitespace took minutes per MB.
"""

from __future__ import annotations

import os
import random
import string
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from miraslab.data import packing
from miraslab.data.document_order import DocumentOrder
from miraslab.data.packing import PackedBatches, document_pieces
from miraslab.data.sources import DocumentSource
from miraslab.data.tokenizer_training import MAX_WORD_CHARS, bounded_training_texts, train_byte_level_bpe

LETTERS = (string.ascii_letters.encode() * 5)[:256]  # a letter for each byte value


def letters(n: int) -> str:
    """``n`` random ASCII letters, no whitespace (fast: os.urandom through a table)."""
    return os.urandom(n).translate(LETTERS).decode()


class OneDocument(DocumentSource):
    def __init__(self, text: str):
        self.text = text

    @property
    def num_shards(self) -> int:
        return 1

    def documents(self, shard: int) -> Iterator[str]:
        yield self.text

    def describe(self) -> str:
        return "one document"

    def fingerprint(self) -> dict[str, Any]:
        return {}


def order_of(text: str) -> DocumentOrder:
    return DocumentOrder(OneDocument(text), "train", seed=0, val_fraction=0.0, shuffle_buffer=1)


def test_packing_encodes_a_bounded_number_of_characters_ahead_of_one_long_document():
    calls: list[int] = []

    def encode(texts: list[str]) -> list[list[int]]:
        calls.append(sum(map(len, texts)))
        return [[ord(c) % 7 for c in text] for text in texts]

    # a one-document corpus wraps onto itself: the old code encoded 32 copies of it at once
    batches = PackedBatches(order_of(letters(3_000_000)), encode, 99, seq_len=63, batch_size=4)
    next(batches)
    assert max(calls) <= packing.LOOKAHEAD_CHARS + packing.MAX_PIECE_CHARS


def test_document_pieces_cover_the_text_cut_before_whitespace():
    text = " ".join(letters(random.Random(n).randint(1, 30)) for n in range(200_000))
    spans = document_pieces(text, limit=10_000)
    assert "".join(text[a:b] for a, b in spans) == text
    assert all(b - a <= 10_000 for a, b in spans)
    assert all(text[a] == " " for a, _ in spans[1:])  # each piece after the first starts at a space


def test_a_long_document_tokenised_in_pieces_gives_the_whole_documents_tokens(monkeypatch):
    words = " ".join(letters(random.Random(n).randint(1, 12)) for n in range(40_000))
    tokenizer = train_byte_level_bpe([words[:20_000]], vocab_size=300, special_tokens=["</s>"])
    whole = tokenizer.encode(words, add_special_tokens=False).ids

    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]

    monkeypatch.setattr(packing, "document_pieces", lambda text: document_pieces(text, 5_000))
    batches = PackedBatches(order_of(words), encode, 299, seq_len=len(whole), batch_size=1)
    assert next(batches)[0].tolist() == [*whole, 299]  # then the separator


def test_a_resume_inside_a_piece_continues_the_same_stream(monkeypatch):
    monkeypatch.setattr(packing, "document_pieces", lambda text: document_pieces(text, 1_000))

    def encode(texts: list[str]) -> list[list[int]]:
        return [[ord(c) for c in text] for text in texts]

    order = order_of(letters(7_777))
    straight = PackedBatches(order, encode, 0, seq_len=300, batch_size=2)
    for _ in range(5):
        next(straight)
    state = straight.state_dict()
    assert state["piece"] > 0
    resumed = PackedBatches(order, encode, 0, seq_len=300, batch_size=2, state=state)
    for _ in range(30):  # across pieces, the separator and the wrap to the next epoch
        assert next(resumed).tolist() == next(straight).tolist()


def test_tokenizer_training_texts_have_no_word_longer_than_the_bound():
    text = "short words " + letters(1_000) + " tail"
    texts = list(bounded_training_texts([text]))
    assert "".join(texts) == text  # cut, nothing lost or reordered
    assert max(len(word) for text in texts for word in text.split()) <= MAX_WORD_CHARS


TRAIN_TOKENIZER = textwrap.dedent("""
    import os, string, sys
    from miraslab.data.tokenizer_training import train_byte_level_bpe
    table = (string.ascii_letters.encode() * 5)[:256]
    line = os.urandom(2_000_000).translate(table).decode()
    train_byte_level_bpe([line], vocab_size=320, special_tokens=["</s>"])
""")


def test_tokenizer_training_on_a_2_mb_line_without_whitespace_ends_in_seconds():
    # before: over 300 s (BPE training time grew with the square of the one word's length)
    subprocess.run([sys.executable, "-c", TRAIN_TOKENIZER], check=True, timeout=60)


CAPPED_TRAINING = textwrap.dedent("""
    import resource, sys
    from miraslab.recipe.resolve import load_recipe
    from miraslab.train.trainer import Trainer

    cap = 3 << 30  # address space, so the tokenizer's thread pool counts too
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    recipe = load_recipe(sys.argv[1], ["train.eval_every=0"])
    print(Trainer(recipe, sys.argv[2], show_progress=False, max_steps=2).run()["step"])
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux's")
def test_a_50_mb_one_line_corpus_trains_under_a_3_gb_address_space_cap(tmp_path):
    from training_cases import write_recipe

    corpus = tmp_path / "one-line.txt"
    with corpus.open("w") as handle:
        for _ in range(50):
            handle.write(letters(1_000_000))
        handle.write("\n")
    recipe = write_recipe(tmp_path, corpus)
    recipe.write_text(recipe.read_text().replace("val_fraction = 0.1", "val_fraction = 0.0"))
    env = {
        **os.environ,
        "MIRASLAB_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",
    }
    result = subprocess.run(
        [sys.executable, "-c", CAPPED_TRAINING, str(recipe), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "2"
