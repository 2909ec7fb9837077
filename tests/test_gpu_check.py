"""benchmarks/gpu_check.py on the CPU: its arguments, its table and its JSON (``--dry-run``:
every piece at toy sizes; the tests piece is checked on a JUnit report written here)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="tests.test_cuda" name="test_decoding_on_cuda_equals_the_forward[mag-titans]" time="0.5"/>
<testcase classname="tests.test_cuda" name="test_decoding_on_cuda_equals_the_forward[lmm-deltanet]" time="0.7">
  <failure message="AssertionError: decode vs forward: max|got - expected| is 3e-03&#10;more">trace</failure>
</testcase>
<testcase classname="tests.test_cuda" name="test_every_layout_and_attention_backend_matches_the_cpu_oracle[fp32-xformers-mag]" time="0">
  <skipped type="pytest.skip" message="attention backend xformers: not installed">skip</skipped>
</testcase>
</testsuite></testsuites>
"""


def test_dry_run_is_the_cpu_at_toy_sizes():
    args = gpu_check.parse_args(["--dry-run"])
    assert (args.device, args.tiny) == ("cpu", True)


def test_the_cpu_without_tiny_is_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--device", "cpu"])
    assert "--device cpu runs only the toy sizes" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_without_a_gpu_is_refused_with_what_to_do(capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args([])
    assert "no CUDA GPU here" in capsys.readouterr().err


def test_junit_outcomes_become_one_row_per_test_function():
    cases = gpu_check.parse_junit(JUNIT)
    assert [c["outcome"] for c in cases] == ["passed", "failed", "skipped"]
    assert cases[1]["message"] == "AssertionError: decode vs forward: max|got - expected| is 3e-03"
    rows = {r["name"]: r for r in gpu_check.test_rows({"cases": cases})}
    decode = rows["decoding_on_cuda_equals_the_forward"]
    assert decode["result"] == "1 failed, 1 passed"
    assert decode["note"].startswith("test_decoding_on_cuda_equals_the_forward[lmm-deltanet]: AssertionError")
    assert rows["every_layout_and_attention_backend_matches_the_cpu_oracle"]["note"].endswith("not installed")


def test_the_dry_run_prints_one_table_and_writes_every_number(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--dry-run", "--skip", "tests", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    names = [row["name"] for row in record["rows"]]
    assert names == [
        *(f"miraslab {config}" for config in gpu_check.LAYER_CONFIGS),
        *(["titans-pytorch deep", "titans-pytorch linear"] if gpu_check.titans_available() else []),
        *gpu_check.TRAINING_RECIPES,
        "two-process all-reduce",
    ]
    for row in record["rows"][:-1]:  # every measured row has its speed and its share of the peak
        assert row["tokens_per_s"] > 0 and "note" not in row, row
        assert 0 < row.get("share_of_peak", row.get("mfu")) < 10
    training = {row["name"]: row for row in record["rows"] if row["section"] == "training"}
    assert training["gated-deltanet"]["parameters"] > 0 and training["titans-mag"]["flops_per_token"] > 0
    assert training["gated-deltanet"]["memory_kernel"] == "miraslab"  # FLA's kernels need CUDA
    assert record["fla"] == {"runs": False, "detail": "not on a CPU (FLA's kernels are Triton, CUDA only)"}
    assert record["nccl"] == gpu_check.NCCL_LINE and record["matmul_peak_tflops"] > 0
    printed = capsys.readouterr().out
    assert printed.count("section  ") == 1 and "memory layer miraslab gated-delta-per-token" in printed
    assert "two-process NCCL needs two GPUs" in printed


def test_model_flops_count_the_linear_maps_and_the_attention_window():
    from miraslab.model.language_model import build_model
    from miraslab.recipe.resolve import load_recipe

    recipe = load_recipe(REPO / "recipes" / "papers" / "titans-mag.toml", gpu_check.TINY_SHAPE.train_sets)
    model = build_model(recipe.model)
    per_token, linear = gpu_check.model_flops_per_token(model, seq=1024)
    layers = recipe.model.n_layers
    window = recipe.model.attention.window
    assert linear == sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert per_token == 6 * linear + layers * 12 * recipe.model.d_model * min(1024, window)
