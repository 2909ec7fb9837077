"""The Python the README and docs/ show runs as printed and does what its text says.

Each block is executed verbatim; where a block uses a name it leaves to the reader
(``q``, ``prompt_ids``), the test provides it as the surrounding text describes.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from markdown_blocks import python_blocks
from tolerance import assert_close_to_scale

import miraslab

REPO = Path(__file__).resolve().parents[1]


def run_block(path: str, index: int, **given: object) -> dict:
    """Execute the ``index``-th Python block of ``path`` (a page of the repository) in the
    current directory; returns the names it defined."""
    namespace: dict = {"__name__": "docs_example", **given}
    exec(compile(python_blocks(REPO / path)[index], f"{path} (python block {index + 1})", "exec"), namespace)
    return namespace


@pytest.fixture
def in_repo(monkeypatch):
    """Run from the repository root, where the pages' relative paths (recipes/...) point."""
    monkeypatch.chdir(REPO)


def test_the_readme_example_builds_a_layer_and_a_model_that_returns_its_state(in_repo):
    ns = run_block("README.md", 0)
    assert ns["y"].shape == (2, 1024, 256)
    assert ns["logits"].shape[:2] == (1, 32)
    assert ns["state"] is not None


def test_the_memory_layer_example_continues_exactly_where_the_chunked_pass_stopped(in_repo):
    """docs/memory.md: a chunked pass over 1000 tokens, then token-by-token recurrent
    steps, gives what one chunked pass over all 1024 gives (fp32: 1e-4 of the output's largest
    magnitude, see tests/tolerance.py)."""
    torch.manual_seed(0)
    ns = run_block("docs/memory.md", 0)
    with torch.no_grad():
        whole = ns["layer"](ns["x"])
    assert_close_to_scale(ns["y"], whole[:, :1000], 1e-4, "chunked pass")
    assert_close_to_scale(ns["y_t"], whole[:, -1:], 1e-4, "after 24 decoding steps")


def test_the_memory_op_example_runs_on_the_gates_its_comment_lists(in_repo):
    """docs/memory.md's functional op, given q, k, v and gates shaped as its comment says."""
    block = python_blocks(REPO / "docs" / "memory.md")[1]
    listed = re.findall(r'"(\w+)": \(B, H, T\)', block)  # the gates the comment describes, in order
    batch, heads, length, width = 2, 4, 100, 64
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, length, width, generator=generator) for _ in range(3))
    q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    gates = {
        "lr": 0.1 * torch.rand(batch, heads, length, generator=generator),
        "decay": torch.log(0.9 + 0.1 * torch.rand(batch, heads, length, generator=generator)),
    }
    ns = run_block("docs/memory.md", 1, q=q, k=k, v=v, gates=gates)
    assert sorted(gate.name for gate in ns["rule"].gate_defs()) == sorted(listed) == sorted(gates)
    assert ns["y"].shape == (batch, heads, length, width)

    def tokens(part: slice, state):  # the block's call on some of the tokens
        inputs = [x[:, :, part] for x in (q, k, v)]
        part_gates = {name: g[:, :, part] for name, g in gates.items()}
        return ns["memory_op"](ns["rule"], *inputs, part_gates, state=state, chunk_size=64, path="chunked")

    # the returned state continues the sequence: two calls equal one
    first, state = tokens(slice(None, 60), None)
    second, _ = tokens(slice(60, None), state)
    assert_close_to_scale(torch.cat([first, second], dim=2), ns["y"], 1e-5, "two calls")  # fp32


def test_the_models_example_decodes_with_the_state_it_returns(in_repo):
    prompt_ids, next_id = torch.randint(0, 32000, (1, 8)), torch.tensor([7])
    ns = run_block("docs/models.md", 0, prompt_ids=prompt_ids, next_id=next_id)
    assert ns["logits"].shape[:2] == (1, 1)
    assert ns["state"] is not None


def test_the_diagnostics_example_reads_the_gate_of_a_quickstart_run(tmp_path, monkeypatch):
    """docs/diagnostics.md reads runs/quickstart-text/metrics.jsonl as the text demo
    writes it: a real (two-step) quickstart run, then the block, run where the run is."""
    env = {**os.environ, "MIRASLAB_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "miraslab", "train", str(REPO / "recipes" / "quickstart_text.toml"),
               "--out", "runs/quickstart-text", "--max-steps", "2"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_block("docs/diagnostics.md", 0)
    pairs = ast.literal_eval(printed.getvalue())
    assert pairs and all(isinstance(step, int) and 0 < gate < 1 for step, gate in pairs)


def test_the_observation_example_reads_gates_and_norms_through_the_api(in_repo):
    """docs/diagnostics.md's observation block: its own asserts check the gates and norms."""
    ns = run_block("docs/diagnostics.md", 1)
    assert ns["gates"]["lr"].min() > 0


def test_the_plugins_page_runs_the_kit_as_it_shows(in_repo):
    """docs/plugins.md's kit block on built-ins: each call raises KitFailure if a check fails."""
    run_block("docs/plugins.md", 1)


def test_the_plugins_page_seeded_task_resumes_and_asks_every_copied_token(in_repo):
    """docs/plugins.md's SeededTask: a resumed iterator continues with the batch that came next
    (the block asserts it), rows are the first half twice, and the labels ask exactly the copy."""
    ns = run_block("docs/plugins.md", 2)
    first = ns["first"]
    inputs, labels = first["inputs"], first["labels"]
    assert inputs.shape == labels.shape == (8, 32) and inputs.dtype == torch.int64
    assert torch.equal(inputs[:, :16], inputs[:, 16:])
    assert torch.equal(labels[:, 15:31], inputs[:, 16:]) and bool((labels[:, :15] == -100).all())
    assert ns["batches"].state_dict()["format"] == "acme.copy/1"


def test_the_api_page_builds_a_layer_from_a_registry_of_its_own(in_repo):
    """docs/api.md: an uninstalled plugin registered on a Registry() swapped in for one block."""
    ns = run_block("docs/api.md", 1)
    assert "plain_gd" in ns["registry"].names("algorithm")
    assert "plain_gd" not in miraslab.get_registry().names("algorithm")  # the process registry is untouched
    assert ns["layer"](torch.randn(1, 5, 16)).shape == (1, 5, 16)


def test_the_api_page_writes_a_stateful_algorithm_the_kit_holds_to_its_reference(in_repo):
    """docs/api.md: RMSProp written from the StateDef section passes the kit, reference included."""
    ns = run_block("docs/api.md", 0)
    assert ns["report"].reference.startswith(
        "algorithm 'rmsprop': the recurrent path held to its reference_step"
    )
    assert "rmsprop" not in miraslab.get_registry().names("algorithm")


PAGES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("path", PAGES)
def test_every_python_block_of_the_page_is_run_by_a_test_here(path):
    """A block added to any page needs a test (above, or docs/plugins.md's in
    tests/test_third_party_plugin.py); counted so none goes unrun, a new page's included."""
    runs = {
        "README.md": 1,
        "docs/api.md": 2,
        "docs/memory.md": 2,
        "docs/models.md": 1,
        "docs/diagnostics.md": 2,
        "docs/plugins.md": 3,
    }
    assert len(python_blocks(REPO / path)) == runs.get(path, 0)
