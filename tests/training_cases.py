"""A tiny corpus and recipe for trainer tests: a few seconds per run on CPU."""

from __future__ import annotations

import os
import random
import textwrap
from pathlib import Path

WORDS = [
    "the",
    "memory",
    "stores",
    "keys",
    "and",
    "values",
    "while",
    "attention",
    "reads",
    "a",
    "window",
    "of",
    "recent",
    "tokens",
]


def write_corpus(directory: Path, paragraphs: int = 400) -> Path:
    """Paragraphs of pseudo-sentences (blank-line separated: one document each)."""
    generator = random.Random(0)
    lines = []
    for index in range(paragraphs):
        sentence = " ".join(generator.choice(WORDS) for _ in range(generator.randint(8, 30)))
        lines.append(f"document {index}: {sentence}.\n")
    path = directory / "corpus.txt"
    path.write_text("\n".join(lines))
    return path


def write_recipe(directory: Path, corpus: Path, extra: str = "", layout: str = "mag") -> Path:
    text = textwrap.dedent(f"""
        name = "tiny"
        seed = 3
        [model]
        vocab_size = 320
        d_model = 32
        n_layers = 2
        n_heads = 2
        layout = "{layout}"
        [model.attention]
        window = 16
        [model.memory]
        chunk_size = 8
        [data]
        task = {{ name = "text", dataset = "{corpus}", vocab_size = 320, val_fraction = 0.1 }}
        seq_len = 32
        [train]
        steps = 12
        batch_size = 4
        lr = 3e-3
        warmup_steps = 3
        log_every = 1
        eval_every = 6
        eval_batches = 2
        checkpoint_every = 6
    """) + textwrap.dedent(extra)
    path = directory / "tiny.toml"
    path.write_text(text)
    return path


# A one-layer memory model on MQAR small enough to train in a second (tasks with answers).
MQAR_RECIPE = """
name = "mqar-tiny"
[model]
vocab_size = 64
d_model = 16
n_layers = 1
n_heads = 2
layout = "mal"
[model.attention]
window = 4
[model.memory]
memory = "linear"
retention = "none"
algorithm = "gd"
chunk_size = 8
[data]
task = { name = "mqar", vocab_size = 64, seq_len = 32, num_kv_pairs = 4, min_query_distance = 9 }
seq_len = 32
[train]
steps = 4
batch_size = 4
lr = 1e-3
warmup_steps = 0
log_every = 1
eval_every = 2
eval_batches = 2
checkpoint_every = 4
"""


# recipes/mqar/delta-proof.toml shrunk to 30 steps at seq 64 (about 3 s): the memory already
# carries well over a nat of the loss, so a report calls it used
SHORT_PROOF = [
    "train.lr=1e-2",
    "train.warmup_steps=5",
    "data.seq_len=64",
    "data.task.seq_len=64",
    "data.task.num_kv_pairs=4",
    "data.task.min_query_distance=20",
    "train.steps=30",
    "train.eval_every=30",
    "train.eval_batches=2",
]


# --- the hostile-input tests' shared set-up (tests/test_reliability_*.py) ----------------------


def text_workspace(directory: Path) -> Path:
    """``directory`` with a corpus and ``tiny.toml`` over it, its tokenizer cached inside."""
    os.environ["MIRASLAB_CACHE"] = str(directory / "cache")
    write_corpus(directory)
    write_recipe(directory, directory / "corpus.txt")
    return directory


def train_small_run(workspace: Path) -> Path:
    """Two steps of ``workspace``'s tiny recipe, a run directory to point commands at."""
    from miraslab.recipe.resolve import load_recipe
    from miraslab.train.trainer import Trainer

    out = workspace / "run"
    recipe = load_recipe(workspace / "tiny.toml", ["train.steps=2", "train.eval_every=0"])
    Trainer(recipe, out, show_progress=False).run()
    return out


def cli(capsys, *argv: str) -> tuple[int, str]:
    """The exit code of ``miraslab ARGV`` and what went to stderr."""
    from miraslab.cli import main

    code = main(list(argv))
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    """The one ``error:`` line of ``err``, and not an unexpected one."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "unexpected" not in lines[0], err
    return lines[0]
