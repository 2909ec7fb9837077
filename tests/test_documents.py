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
