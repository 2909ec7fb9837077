"""Bad input is one line naming the key or file, found before anything is allocated.

Cases of issue 20 that were tracebacks, allocation failures or silently accepted values.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from training_cases import text_workspace, train_small_run, write_recipe

from miraslab.errors import MiraslabError, RecipeError
from miraslab.generation import check_prompt, check_sampling
from miraslab.recipe.resolve import load_recipe
from miraslab.train.run_dir import load_run
from miraslab.train.trainer import Trainer


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return text_workspace(tmp_path_factory.mktemp("inputs"))


def write_recipe_for_layout(layout: str) -> Path:
    directory = Path(os.environ["MIRASLAB_CACHE"]).parent / layout
    directory.mkdir(exist_ok=True)
    return write_recipe(directory, directory.parent / "corpus.txt", layout=layout)


def refusal(recipe: Path, *sets: str) -> str:
    started = time.time()
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe, sets)
    assert time.time() - started < 5, "checked before building anything"
    return str(error.value)


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("model.n_heads=0", "model.n_heads: expected an integer >= 1, got 0"),  # was ZeroDivisionError
        ("model.tnt.local_chunks=[0]", "model.tnt.local_chunks: expected a list of integers >= 1"),
        ("model.vocab_size=10000000000", "model.vocab_size: a model with vocab_size 10000000000"),
        ("model.d_model=99999999999999999999", "model.d_model: a model with"),  # was 30 lines of C++ frames
        ("model.d_model=10000000", "model.d_model: a model with"),  # was an allocation failure
        ("model.n_layers=1000000", "model.n_layers: expected at most 4096"),
    ],
)
def test_an_absurd_size_is_one_line_naming_the_key(workspace, assignment, expected):
    message = refusal(workspace / "tiny.toml", assignment)
    assert expected in message and "\n" not in message


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("data.seq_len=100000000", "data.seq_len: one micro-batch of 4 x 100000000 tokens"),
        ("train.batch_size=100000000", "train.micro_batch_size (or train.batch_size): one micro-batch"),
        ("model.attention.persistent_tokens=100000000", "parameters need"),
    ],
)
def test_a_run_that_cannot_fit_this_machine_is_refused_before_it_is_built(
    workspace, tmp_path, assignment, expected
):
    recipe = load_recipe(workspace / "tiny.toml", [assignment])
    started = time.time()
    with pytest.raises(RecipeError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        Trainer(recipe, tmp_path / "run", show_progress=False).run()
    assert time.time() - started < 10
    assert not (tmp_path / "run" / "recipe.toml").exists()


def test_a_recipe_nested_5000_deep_is_one_line(tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text('name = "deep"\nmodel = ' + "{a = " * 5000 + "1" + "}" * 5000 + "\n")
    assert "nested too deeply" in refusal(deep)
    tables = tmp_path / "tables.toml"
    tables.write_text("[x" + ".a" * 5000 + "]\nv = 1\n")
    assert "x.a.a.a...: tables are nested too deeply" in refusal(tables)


def test_a_stage_that_changes_parameter_shapes_is_refused_when_the_recipe_is_read(workspace):
    extra = (
        '\n[[train.stages]]\nsteps = 6\n[[train.stages]]\nsteps = 6\noverrides = { "model.d_model" = 48 }\n'
    )
    (workspace / "staged").mkdir(exist_ok=True)
    recipe = write_recipe(workspace / "staged", workspace / "corpus.txt", extra)
    message = refusal(recipe)
    assert (
        "a stage may not change parameter shapes" in message
        and "k_proj.weight from [32, 32] to [48, 48]" in message
    )


def test_garbage_parquet_is_one_line_naming_the_file(workspace, tmp_path):
    garbage = tmp_path / "data.parquet"
    garbage.write_bytes(os.urandom(4096))
    recipe = write_recipe(tmp_path, garbage)
    with pytest.raises(RecipeError, match=f"cannot read {garbage} as parquet: ArrowInvalid"):
        Trainer(load_recipe(recipe), tmp_path / "run", show_progress=False).run()


@pytest.fixture(scope="module")
def small_run(workspace) -> Path:
    return train_small_run(workspace)


@pytest.mark.parametrize(
    "content", [b"", b"{not json", b"\x80\x04\x95pickle"], ids=["empty", "corrupt", "pickle"]
)
def test_a_bad_tokenizer_json_in_a_run_is_one_line(small_run, tmp_path, content):
    run = shutil.copytree(small_run, tmp_path / "run")
    (run / "tokenizer.json").write_bytes(content)
    with pytest.raises(MiraslabError, match=r"tokenizer\.json: not a readable tokenizer\.json") as error:
        load_run(run)
    assert "\n" not in str(error.value)


def test_a_corrupt_cached_tokenizer_says_what_to_delete(small_run, tmp_path):
    cached = next((Path(os.environ["MIRASLAB_CACHE"]) / "tokenizers").glob("*/tokenizer.json"))
    saved = cached.read_bytes()
    cached.write_text("{garbage")
    try:
        recipe = load_recipe(small_run.parent / "tiny.toml", ["train.steps=1"])
        with pytest.raises(MiraslabError, match=f"not a readable tokenizer.json .*; delete {cached.parent}"):
            Trainer(recipe, tmp_path / "run", show_progress=False).run()
    finally:
        cached.write_bytes(saved)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"temperature": float("nan")}, "--temperature: expected a finite number >= 0"),
        ({"temperature": -1.0}, "--temperature: expected a finite number >= 0"),  # was greedy
        ({"top_k": -5}, "--top-k: expected an integer >= 0"),  # was every token
        ({"top_p": 0.0}, "--top-p"),
        ({"max_tokens": -1}, "--max-tokens"),
    ],
)
def test_sampling_settings_that_mean_nothing_are_refused(settings, expected):
    values = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_tokens": 1} | settings
    with pytest.raises(MiraslabError, match=expected):
        check_sampling(**values)


def test_a_prompt_that_is_not_utf8_is_one_line(small_run):
    with pytest.raises(MiraslabError, match="--prompt: expected UTF-8 text"):
        check_prompt(b"caf\xe9".decode("utf-8", errors="surrogateescape"))  # how argv holds such bytes
    result = subprocess.run(
        [sys.executable, "-m", "miraslab", "generate", os.fsencode(small_run), "--prompt", b"caf\xe9"],
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUTF8": "1"},
    )
    assert result.returncode == 2
    assert result.stderr.decode().count("\n") == 1, result.stderr.decode()


def test_prefill_reads_a_long_prompt_in_blocks_with_the_same_logits(workspace, monkeypatch):
    import torch

    from miraslab import generation
    from miraslab.model.language_model import build_model

    recipe = load_recipe(write_recipe_for_layout("attention"), ["model.attention.persistent_tokens=2"])
    torch.manual_seed(0)
    model = build_model(recipe).double().eval()
    prompt = torch.randint(0, 320, (1, 100))
    with torch.no_grad():
        whole, _ = model(prompt, return_state=True)
        lengths: list[int] = []
        forward = model.forward
        monkeypatch.setattr(model, "forward", lambda x, **kw: lengths.append(x.shape[1]) or forward(x, **kw))
        monkeypatch.setattr(generation, "PREFILL_BLOCK", 32)
        blocked, _ = generation.prefill(model, prompt)
    assert lengths == [32, 32, 32, 4]  # the old prefill built a 100 x 100 mask in one call
    torch.testing.assert_close(blocked[:, -1], whole[:, -1], rtol=0, atol=1e-12)  # float64 rounding


def test_generating_from_nonfinite_weights_is_one_line(workspace):
    import math

    import torch

    from miraslab.generation import generate
    from miraslab.model.language_model import build_model

    model = build_model(load_recipe(workspace / "tiny.toml")).eval()
    with torch.no_grad():
        model.embed.weight[0, 0] = math.nan  # was a multinomial traceback
    with pytest.raises(MiraslabError, match="the model's output is not finite"):
        list(generate(model, torch.tensor([[0, 1, 2]]), 3))
