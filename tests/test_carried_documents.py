"""State passing across steps with documents reset in the rows (``data.carry_state`` together
with ``data.reset_at_documents``): each row's leading partial document continues the carried
state (memory, momentum, KV window, convolution history), every later document starts from
the initial state, and the state handed on is the one after the row's last document.

Two carried steps with documents therefore compute what one forward over the concatenated
segment with documents computes, and each document what it computes alone.  Tolerances:
float64, 1e-10 of each tensor's scale (one computation up to the order of additions).
"""

from __future__ import annotations

import pytest
import torch
from document_cases import DELTA, GATED_DELTA, MOMENTUM, SEP, VOCAB, alone, tiny_model
from tolerance import assert_close_to_scale

from miraslab.train.state_passing import CarriedState, encode_state

STEP = 11  # tokens per step: not a multiple of the chunk
CASES = {
    "mal-gated-delta": ("mal", GATED_DELTA, {"window": 5}),
    "mag-momentum": ("mag", MOMENTUM, {"window": 6}),
    "lmm-gated-delta": ("lmm", GATED_DELTA, {}),
    "mal-delta-full-attention": ("mal", DELTA, {"window": 0}),
}


def stream() -> torch.Tensor:
    """Three rows of two steps: documents open in both steps, in mid-chunk, at the last token
    of step 1 (a one-token document carried on), at step 2's first token (no carry) and at
    its second (the convolution's carried taps reach a later document)."""
    generator = torch.Generator().manual_seed(3)
    rows = torch.randint(2, VOCAB, (3, 2 * STEP), generator=generator)
    rows[0, [3, 6, 9, 15, 20]] = SEP  # the document opened at 9 spans the step boundary
    rows[1, [2, 10, 11, 17]] = SEP
    rows[2, [5, 12]] = SEP
    return rows


def leaves(state) -> list[torch.Tensor]:
    encode_state(state, tensors := {})
    return list(tensors.values())


@pytest.mark.parametrize("name", list(CASES))
def test_two_carried_steps_with_documents_equal_one_forward_over_the_segment(name):
    model = tiny_model(*CASES[name])
    rows = stream()
    with torch.no_grad():
        whole, whole_state = model(rows, documents=rows == SEP, return_state=True)
        carried = CarriedState()
        first = carried.forward(model, rows[:, :STEP], documents=rows[:, :STEP] == SEP)
        second = carried.forward(model, rows[:, STEP:], documents=rows[:, STEP:] == SEP)
    assert_close_to_scale(torch.cat([first, second], 1), whole, 1e-10, f"{name} logits")
    got, expected = leaves(carried.states[0]), leaves(whole_state)
    assert len(got) == len(expected) > 0
    for index, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a.dtype == b.dtype, f"{name} state tensor {index}"
        if a.is_floating_point():
            assert_close_to_scale(a, b, 1e-10, f"{name} state tensor {index}")
        else:
            assert torch.equal(a, b), f"{name} state tensor {index}"


@pytest.mark.parametrize("name", list(CASES))
def test_each_document_of_carried_steps_reads_as_if_alone(name):
    model = tiny_model(*CASES[name])
    rows = stream()
    with torch.no_grad():
        carried = CarriedState()
        steps = [carried.forward(model, part, documents=part == SEP) for part in rows.split(STEP, 1)]
        expected = alone(model, rows)
        assert_close_to_scale(torch.cat(steps, 1), expected, 1e-10, f"{name} carried documents")
        # the test can fail: without the starts the documents see each other across them
        plain = CarriedState()
        unreset = torch.cat([plain.forward(model, part) for part in rows.split(STEP, 1)], 1)
        assert (unreset - expected).abs().max() > 1e-6


def test_the_carried_state_reaches_only_a_continuing_row():
    """Step 2 from a carried state against step 2 from none: the row whose first token opens a
    document (row 1) reads the same; the rows that continue (0, 2) read differently."""
    model = tiny_model(*CASES["mal-gated-delta"])
    rows = stream()
    second = rows[:, STEP:]
    with torch.no_grad():
        _, state = model(rows[:, :STEP], documents=rows[:, :STEP] == SEP, return_state=True)
        carried, _ = model(second, state=state, documents=second == SEP, return_state=True)
        fresh = model(second, documents=second == SEP)
    assert_close_to_scale(carried[1], fresh[1], 1e-10, "a row that opens a document")
    for row in (0, 2):
        assert (carried[row, 0] - fresh[row, 0]).abs().max() > 1e-6


def test_flex_masks_a_carried_window_as_sdpa_does():
    """The carried KV window's keys reach the leading document only, under flex's per-row
    ``mask_mod`` as under SDPA's boolean mask (float64, 1e-10 of the scale)."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    layout, memory, attention = CASES["mal-gated-delta"]
    sdpa = tiny_model(layout, memory, attention)
    flex = tiny_model(layout, memory, {**attention, "backend": "flex"})
    flex.load_state_dict(sdpa.state_dict())
    rows = stream()
    with torch.no_grad():
        outputs = []
        for model in (flex, sdpa):
            carried = CarriedState()
            outputs.append(
                torch.cat(
                    [carried.forward(model, part, documents=part == SEP) for part in rows.split(STEP, 1)], 1
                )
            )
    assert_close_to_scale(*outputs, 1e-10, "flex carried documents")
