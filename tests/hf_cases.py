"""Tiny models and runs for the transformers / lm-eval tests: d_model 32, a few tokens, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from training_cases import write_corpus, write_recipe

# every recipe shape the export must carry: each layout, TNT's hierarchy, a feature map with
# non-persistent buffers (rebuilt after from_pretrained's meta-device load), an untied head,
# a memory with biases
LAYOUT_CASES = {
    "attention": {"layout": "attention"},
    "swa": {"layout": "swa"},
    "lmm": {"layout": "lmm"},
    "mag": {"layout": "mag", "attention": {"window": 8, "persistent_tokens": 2}},
    "mal": {"layout": "mal"},
    "mac": {"layout": "mac"},
    "tnt": {"layout": "mag", "tnt": {"global_chunk": 8, "local_chunks": [4], "shard_length": 8}},
    # affine inner maps: each bias's W_init travels with the weights
    "mlp_bias": {
        "layout": "lmm",
        "memory": {"chunk_size": 4, "memory": {"name": "mlp", "expansion": 2, "bias": True}},
    },
    "polynomial_untied": {
        "layout": "lmm",
        "tie_embeddings": False,
        "memory": {"chunk_size": 4, "memory": "linear", "features": {"name": "polynomial", "degree": 2}},
    },
}


def tiny_model_table(case: str) -> dict:
    table = {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 2}
    table["attention"] = {"window": 8}
    table["memory"] = {"chunk_size": 4}
    for key, value in LAYOUT_CASES[case].items():
        table[key] = {**table[key], **value} if isinstance(value, dict) and key in table else value
    return table


def train_tiny_text_run(directory: Path, steps: int = 2, extra: str = "", layout: str = "mag") -> Path:
    """A real two-step run of the trainer tests' tiny text recipe, with its tokenizer."""
    corpus = write_corpus(directory)
    recipe = write_recipe(directory, corpus, extra=extra, layout=layout)
    out = directory / "run"
    env = {**os.environ, "MIRASLAB_CACHE": str(directory / "cache")}
    command = [
        sys.executable,
        "-m",
        "miraslab",
        "train",
        str(recipe),
        "--out",
        str(out),
        "--max-steps",
        str(steps),
    ]
    result = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out
