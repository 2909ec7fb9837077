"""Documents packed in a row run apart (``data.reset_at_documents``): each document's logits
are those of the document alone, for attention, a memory layout and TNT, with the boundary in
the middle of a chunk; the loss is the token-weighted mean over the documents run alone; a
decode restarts at the separator.  Tolerances: float64, atol 1e-10 (one and the same
computation up to the order of additions)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import miraslab.generation as generation
from miraslab.data.batch import IGNORE, TrainingBatch
from miraslab.data.documents import (
    DOC_START,
    documents_apart,
    documents_separator,
    length_buckets,
    mark_documents,
    split_documents,
)
from miraslab.errors import RecipeError
from miraslab.model.language_model import build_model
from miraslab.model.spec import ModelSpec
from miraslab.params import structure
from miraslab.plugins.task.mqar import MqarParams, MqarTask

SEP = 1
VOCAB = 40
CHUNK = 3
TNT = {"global_chunk": 4, "local_chunks": [2], "shard_length": 6, "mixer": "m3"}
CASES = {
    "attention": ("attention", None),
    "mal": ("mal", None),
    "mac": ("mac", None),
    "mal-tnt": ("mal", TNT),
}


def tiny_model(layout: str, tnt: dict | None) -> torch.nn.Module:
    torch.manual_seed(0)
    table = {
        "vocab_size": VOCAB,
        "d_model": 16,
        "n_layers": 2,
        "n_heads": 2,
        "layout": layout,
        "attention": {"window": 0, "persistent_tokens": 2},
        "memory": {"chunk_size": CHUNK},
    }
    if tnt is not None:
        table["tnt"] = tnt
    return build_model(structure(table, ModelSpec)).double().eval()


def document(length: int, seed: int) -> torch.Tensor:
    """A document as the model reads it: the separator that opens it, then its text."""
    text = torch.randint(2, VOCAB, (length - 1,), generator=torch.Generator().manual_seed(seed))
    return torch.cat([torch.tensor([SEP]), text])


def text_batch(rows: list[torch.Tensor]) -> TrainingBatch:
    """Packed rows of seq_len + 1 tokens, as the text task yields them, marked."""
    return mark_documents(TrainingBatch.of(torch.stack(rows)), SEP)


def test_the_marks_and_the_split_rows():
    # row 0: the tail of a document from the row before, then two documents; row 1 continues
    # the last one (not a new document), then one more
    stream = torch.tensor([7, 8, SEP, 4, 5, 6, SEP, 9, 3, 2, 5, SEP, 6, 7])
    batch = text_batch([stream[:7], stream[6:13]])  # rows overlap by one token: inputs, then targets
    assert batch.extras[DOC_START].tolist() == [
        [False, False, True, False, False, False],
        [True, False, False, False, False, True],
    ]
    split = split_documents(batch)
    assert split.inputs.tolist() == [[7, 8, 0, 0, 0], [SEP, 4, 5, 6, 0], [SEP, 9, 3, 2, 5], [SEP, 0, 0, 0, 0]]
    ig = IGNORE
    assert split.targets.tolist() == [
        [8, SEP, ig, ig, ig],
        [4, 5, 6, SEP, ig],
        [9, 3, 2, 5, SEP],
        [6, ig, ig, ig, ig],
    ]
    assert split.labelled == batch.labelled  # the same targets, none lost or added
    assert documents_apart(batch, None) is batch


@pytest.mark.parametrize("case", CASES)
def test_each_document_gives_the_logits_it_gives_alone(case):
    model = tiny_model(*CASES[case])
    first, second = document(4, 0), document(8, 1)  # the second starts at token 4, mid-chunk (3)
    row = torch.cat([first, second, torch.tensor([SEP])])  # the targets' extra token
    split = split_documents(text_batch([row]))
    logits = model(split.inputs)
    for index, doc in enumerate((first, second)):
        alone = model(doc[None])
        torch.testing.assert_close(logits[index, : len(doc)], alone[0], atol=1e-10, rtol=0)
    # packed, the second document reads the first: the split is what makes them equal
    packed = model(row[None, :-1])[0, len(first) :]
    assert (packed - model(second[None])[0]).abs().max() > 1e-4


@pytest.mark.parametrize("case", ["mal", "mal-tnt"])
@torch.no_grad()
def test_the_loss_is_the_token_weighted_mean_over_documents_alone(case):
    model = tiny_model(*CASES[case])
    docs = [document(n, seed) for seed, n in enumerate((5, 2, 9, 4, 7))]
    stream = torch.cat([*docs, torch.tensor([SEP])])
    rows = [stream[:14], stream[14:]]  # rows of seq_len + 1 = 14; the third document is split across them
    batch = text_batch(rows)
    split = documents_apart(TrainingBatch.of(torch.stack(rows)), SEP)
    logits = model(split.inputs)
    loss = F.cross_entropy(logits.flatten(0, 1), split.targets.flatten(), reduction="sum") / batch.labelled
    # by hand: each piece of a document in a row runs alone (a row's leading continuation too)
    total, counted = 0.0, 0
    for row in rows:
        cuts = [0, *(row[:-1] == SEP).nonzero().flatten().tolist()[int(row[0] == SEP) :], len(row) - 1]
        for start, end in itertools.pairwise(cuts):
            alone = model(row[None, start:end])
            total += F.cross_entropy(alone[0], row[start + 1 : end + 1], reduction="sum")
            counted += end - start
    assert counted == batch.labelled
    torch.testing.assert_close(loss, total / counted, atol=1e-10, rtol=0)
    packed = model(batch.inputs)
    packed_loss = F.cross_entropy(packed.flatten(0, 1), batch.targets.flatten(), reduction="mean")
    assert abs(float(packed_loss - loss)) > 1e-6


def _documents(batch: TrainingBatch) -> list[tuple]:
    """Each row as (tokens, targets) without its end padding: one document run apart."""
    found = []
    for inputs, targets in zip(batch.inputs, batch.targets, strict=True):
        n = int((targets != IGNORE).sum())
        found.append((tuple(inputs[:n].tolist()), tuple(targets[:n].tolist())))
    return found


@pytest.mark.parametrize("buckets", [1, 2, 3, 4, 8])
def test_length_buckets_hold_every_document_once_with_less_padding(buckets):
    generator = torch.Generator().manual_seed(3)
    lengths = [2, 40, 3, 5, 17, 1, 33, 8, 8, 60, 4, 21, 2, 9]
    stream = torch.cat([*(document(n + 1, seed) for seed, n in enumerate(lengths)), torch.tensor([SEP])])
    rows = [stream[i * 64 : i * 64 + 65] for i in range(3)]  # 3 rows of 64: documents cross rows
    rows = [torch.cat([r, torch.randint(2, VOCAB, (65 - len(r),), generator=generator)]) for r in rows]
    batch = text_batch(rows)
    split = split_documents(batch)
    for exact in (False, True):
        parts = length_buckets(batch, buckets, exact=exact)
        if exact:  # fixed by the row count alone (distributed runs make as many passes)
            assert len(parts) == min(buckets, batch.rows)
        assert 1 <= len(parts) <= min(buckets, batch.rows)
        assert sorted(d for part in parts for d in _documents(part)) == sorted(_documents(split))
        assert sum(part.labelled for part in parts) == batch.labelled
        area = sum(part.inputs.numel() for part in parts)
        assert area <= split.inputs.numel()
        if buckets >= 3:
            assert area < 0.6 * split.inputs.numel()  # the long documents no longer pad the short
        for part in parts:  # a bucket pads only to its own longest
            assert int((part.targets != IGNORE).sum(1).max()) == part.inputs.shape[1]


def test_equal_documents_take_one_pass_unless_the_count_must_be_fixed():
    rows = [torch.cat([document(8, 2 * i), document(8, 2 * i + 1), torch.tensor([SEP])]) for i in range(4)]
    batch = text_batch(rows)
    assert [p.inputs.shape for p in length_buckets(batch, 4)] == [(8, 8)]
    assert [p.inputs.shape for p in length_buckets(batch, 4, exact=True)] == [(2, 8)] * 4


@torch.no_grad()
def test_the_loss_summed_over_buckets_is_the_one_padded_batch_loss():
    model = tiny_model(*CASES["mal"])
    docs = [document(n, seed) for seed, n in enumerate((5, 2, 9, 4, 7, 3, 11))]
    stream = torch.cat([*docs, torch.tensor([SEP])])
    batch = text_batch([stream[:14], stream[14:28], stream[28:42]])

    def summed(part: TrainingBatch) -> torch.Tensor:
        return F.cross_entropy(model(part.inputs).flatten(0, 1), part.targets.flatten(), reduction="sum")

    whole = summed(split_documents(batch))
    torch.testing.assert_close(sum(summed(p) for p in length_buckets(batch, 3)), whole, atol=1e-10, rtol=0)


@pytest.mark.parametrize("case", ["mal", "mal-tnt"])
def test_decode_restarts_at_the_separator(case, monkeypatch):
    model = tiny_model(*CASES[case])
    prompt = torch.cat([document(5, 0), document(4, 1)])[None]  # the second document is the current one
    script = [11, SEP, 12, 13]  # what is "sampled": the separator opens a third document
    seen: list[torch.Tensor] = []

    def scripted(logits, *args, **kwargs):
        seen.append(logits.clone())
        return torch.tensor([script[len(seen) - 1]])

    monkeypatch.setattr(generation, "sample_next", scripted)
    tokens = list(generation.generate(model, prompt, len(script), temperature=0, reset_token=SEP))
    assert tokens == script
    # the second document alone, then what followed it; after the separator, the third alone
    tail = torch.cat([prompt[0, 5:], torch.tensor(script[:1])])[None]
    expected = [model(tail)[0, -2], model(tail)[0, -1]]
    third = torch.tensor([script[1:]])
    expected += [model(third)[0, 0], model(third)[0, 1]]
    for got, want in zip(seen, expected, strict=True):
        torch.testing.assert_close(got[0], want, atol=1e-10, rtol=0)


def test_a_task_without_documents_is_refused():
    with pytest.raises(RecipeError, match=r"data\.reset_at_documents: expected a task that packs documents"):
        documents_separator(MqarTask(MqarParams()))
