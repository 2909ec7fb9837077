"""Documents packed in a row run packed (``model(ids, documents=doc_start)``): every document's
logits are those of the document alone, for attention (full and sliding window, persistent
tokens), and for the per-token memory layouts (mal, mag, lmm: the short convolution within
each document, the memory restarted at each one on the chunk grid), with boundaries in the
middle of a chunk and documents shorter than the convolution; the gradients equal those of the
documents run apart.  A model part that cannot run packed says why, and ``forward_pieces``
falls back to one row per document.  Tolerances: float64, 1e-10 of the scale (one and the same
computation up to the order of additions and RoPE's rotation by a document's offset)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from document_cases import DELTA, GATED_DELTA, MOMENTUM, SEP, VOCAB, alone, tiny_model
from tolerance import assert_close_to_scale

from miraslab.data.batch import TrainingBatch
from miraslab.data.documents import DOC_START, documents_apart, mark_documents
from miraslab.train.activation_checkpointing import checkpoint_blocks
from miraslab.train.micro_batches import forward_pieces

CASES = {
    "attention": ("attention", DELTA, {}),
    "swa": ("swa", DELTA, {"window": 5}),
    "mal-delta": ("mal", DELTA, {"window": 5}),
    "mal-gated-delta": ("mal", GATED_DELTA, {}),
    "mag-momentum": ("mag", MOMENTUM, {"window": 6}),
    "lmm-gated-delta": ("lmm", GATED_DELTA, {}),
}


def packed_rows() -> torch.Tensor:
    """Two rows of 23 tokens: row 0 opens mid-document and holds documents of 1, 2, 7 and 9
    tokens (shorter than the convolution, across chunk boundaries); row 1 one of 23."""
    generator = torch.Generator().manual_seed(1)
    rows = torch.randint(2, VOCAB, (2, 23), generator=generator)
    rows[0, [4, 5, 7, 14]] = SEP
    rows[1, 0] = SEP
    return rows


@pytest.mark.parametrize("name", list(CASES))
def test_each_packed_document_reads_as_if_alone(name):
    model = tiny_model(*CASES[name])
    assert model.documents_reason() is None
    rows = packed_rows()
    with torch.no_grad():
        packed = model(rows, documents=rows == SEP)
        expected = alone(model, rows)
        assert_close_to_scale(packed, expected, 1e-10, f"{name} packed documents")
        # and without the starts the documents do see each other (the test can fail)
        assert (model(rows) - expected).abs().max() > 1e-6


@pytest.mark.parametrize("checkpointed", [False, True])
def test_gradients_equal_those_of_the_documents_run_apart(checkpointed):
    model = tiny_model("mal", GATED_DELTA, {"window": 5}).train()
    if checkpointed:  # train.activation_checkpointing: the starts reach the recomputed blocks
        checkpoint_blocks(model)
    batch = mark_documents(TrainingBatch.of(torch.cat([packed_rows(), packed_rows()[:, :1]], dim=1)), SEP)

    def gradients(logits: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").backward()
        return [p.grad.clone() for p in model.parameters()]

    packed = gradients(model(batch.inputs, documents=batch.extras[DOC_START]), batch.targets)
    apart_batch = documents_apart(batch, SEP)
    apart = gradients(model(apart_batch.inputs), apart_batch.targets)
    for got, expected in zip(packed, apart, strict=True):
        assert_close_to_scale(got, expected, 1e-10, "gradient")


@pytest.mark.parametrize(
    ("layout", "memory", "extra", "says"),
    [
        ("mal", {"inner_steps": "mini_batch"}, {}, "inner_steps = 'mini_batch'"),
        ("mal", {"path": "recurrent"}, {}, "path = 'recurrent'"),
        ("mal", {"qk_projection": True}, {}, "qk_projection"),
        ("mal", {"memory": "mlp", "chunk_size": 1}, {}, "token by token"),
        ("mac", {}, {}, "packs_documents"),
        ("mal", {}, {"tnt": {"global_chunk": 4, "local_chunks": [2], "shard_length": 8}}, "TNT"),
    ],
)
def test_a_part_that_cannot_run_packed_says_why(layout, memory, extra, says):
    model = tiny_model(layout, {**DELTA, **memory}, {}, **extra)
    reason = model.documents_reason()
    assert reason is not None and says in reason and reason.startswith("layer 0")
    rows = packed_rows()
    with pytest.raises(ValueError, match="packed documents cannot run here"):
        model(rows, documents=rows == SEP)
    # the trainer's pieces: one row per document instead
    pieces = forward_pieces(
        TrainingBatch.of(torch.cat([rows, rows[:, :1]], 1)), 0, SEP, 1, False, packed=False
    )
    assert pieces[0].rows == 6 and DOC_START in pieces[0].extras


def test_forward_pieces_keep_rows_packed_with_their_starts():
    rows = torch.cat([packed_rows(), packed_rows()[:, :1]], dim=1)
    pieces = forward_pieces(TrainingBatch.of(rows), 1, SEP, 4, False, packed=True)
    assert [p.rows for p in pieces] == [1, 1]
    assert torch.equal(pieces[0].extras[DOC_START], rows[:1, :-1] == SEP)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile:UserWarning")
def test_flex_masks_packed_documents_as_sdpa_does():
    pytest.importorskip("torch.nn.attention.flex_attention")
    sdpa = tiny_model("mal", GATED_DELTA, {"window": 5})
    flex = tiny_model("mal", GATED_DELTA, {"window": 5, "backend": "flex"})
    flex.load_state_dict(sdpa.state_dict())
    rows = packed_rows()
    with torch.no_grad():
        assert_close_to_scale(
            flex(rows, documents=rows == SEP), sdpa(rows, documents=rows == SEP), 1e-10, "flex documents"
        )
