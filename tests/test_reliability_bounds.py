"""Every input bounded: a file or a count a hostile user gives is one line, in bounded memory and time.

Cases 1-5, 8, 9 and 12 of issue 40 (a second audit, tried as a hostile user would): each was an
allocation without end, a hang, a quadratic load or an ``unexpected ...`` line.
"""

from __future__ import annotations

import gc
import os
import resource
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from training_cases import cli, one_line, text_workspace, train_small_run

from miraslab.ablation import load_matrix
from miraslab.errors import MiraslabError, RecipeError
from miraslab.recipe.resolve import load_recipe

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux's")
ADDRESS_SPACE_CAP = 3 << 30  # torch alone maps about 1 GB; every case here stayed far below 3 GB


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return text_workspace(tmp_path_factory.mktemp("bounds"))


@pytest.fixture(scope="module")
def small_run(workspace) -> Path:
    return train_small_run(workspace)


def capped_cli(*argv: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``miraslab ARGV`` in a process whose address space is capped: an unbounded read or
    allocation is then a MemoryError (an ``unexpected`` line), not a machine swapping."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    return subprocess.run(
        [sys.executable, "-m", "miraslab", *argv],
        cwd=cwd,
        env=env,
        preexec_fn=cap,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# 1. a recipe's extends naming /dev/zero read without limit; a FIFO blocked forever


@linux_only
def test_extends_naming_dev_zero_is_one_line_under_an_address_space_cap(tmp_path):
    (tmp_path / "zero.toml").write_text('extends = "/dev/zero"\n')
    result = capped_cli("recipe", "validate", "zero.toml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert one_line(result.stderr) == (
        "error: /dev/zero: is not a regular file (a device, FIFO or socket), expected a .toml recipe file"
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_extends_naming_a_fifo_is_refused_without_opening_it(tmp_path):
    os.mkfifo(tmp_path / "pipe.toml")  # opening it would block until a writer came
    (tmp_path / "r.toml").write_text('extends = "pipe.toml"\n')
    with pytest.raises(RecipeError, match=r"pipe\.toml: is not a regular file"):
        load_recipe(tmp_path / "r.toml")


def test_a_recipe_larger_than_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr("miraslab.recipe.loading.MAX_TOML_BYTES", 1000)
    big = tmp_path / "big.toml"
    big.write_text("# padding\n" * 200)
    with pytest.raises(
        RecipeError, match=r"big\.toml: 2,000 bytes, more than the 1,000 a \.toml recipe file"
    ):
        load_recipe(big)


# 2. a matrix with seeds = 1000000000 built every cell in memory


@linux_only
def test_a_billion_seeds_is_one_line_under_an_address_space_cap(workspace, tmp_path):
    shutil.copy(workspace / "tiny.toml", tmp_path / "tiny.toml")
    (tmp_path / "m.toml").write_text('base = "tiny.toml"\nseeds = 1000000000\n')
    result = capped_cli("ablate", "m.toml", "--list", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert one_line(result.stderr) == (
        "error: m.toml: seeds: 1,000,000,000 is more than the limit of 100,000; "
        "a matrix holds at most that many cells"
    )


def test_a_matrix_of_a_million_cells_is_refused_before_any_cell_is_built(workspace, tmp_path):
    shutil.copy(workspace / "tiny.toml", tmp_path / "tiny.toml")
    values = ", ".join(str(i) for i in range(1, 1001))
    (tmp_path / "m.toml").write_text(
        f'base = "tiny.toml"\n[axes]\n"train.steps" = [{values}]\n"train.log_every" = [{values}]\n'
    )
    with pytest.raises(MiraslabError, match=r"axes: the matrix has 1,000,000 cells .* limit of 100,000"):
        load_matrix(tmp_path / "m.toml")


# 3 and 4. recipe loading and the matrix duplicate-cell check were quadratic


def best_of_three(load) -> float:
    """The fastest of three loads, the garbage collector paused (its passes grow with the heap)."""
    times = []
    for _ in range(3):
        gc.collect()
        gc.disable()
        try:
            started = time.perf_counter()
            load()
            times.append(time.perf_counter() - started)
        finally:
            gc.enable()
    return min(times)


def junk_recipe(directory: Path, keys: int) -> Path:
    path = directory / f"junk-{keys}.toml"
    path.write_text('extends = "tiny.toml"\n[junk]\n' + "".join(f"k{i} = {i}\n" for i in range(keys)))
    return path


def test_recipe_loading_is_linear_in_its_keys(workspace):
    """Was 33 s for 20k keys and 124 s for 40k: quadratic.  Linear: 4x the keys take about 4x the
    time; the bound of 8x leaves room for a loaded machine, and a quadratic load takes 16x."""

    def load(keys: int) -> None:
        with pytest.raises(RecipeError, match="junk: unknown key"):
            load_recipe(junk_recipe(workspace, keys))

    load(1000)  # the registry and plugins load once, outside the measurement
    small, large = best_of_three(lambda: load(10_000)), best_of_three(lambda: load(40_000))
    assert large < 8 * small, f"10k keys {small:.2f} s, 40k keys {large:.2f} s"
    assert large < 10, f"40k keys took {large:.1f} s (about 0.2 s on a desktop; 124 s before)"


def square_matrix(directory: Path, side: int) -> Path:
    values = ", ".join(str(i) for i in range(1, side + 1))
    path = directory / f"square-{side}.toml"
    path.write_text(
        f'base = "tiny.toml"\n[axes]\n"train.steps" = [{values}]\n"train.log_every" = [{values}]\n'
    )
    return path


def test_matrix_loading_is_linear_in_its_cells(workspace):
    """A 150 x 150 matrix against a 300 x 300 one: 4x the cells in about 4x the time (the duplicate
    check scanned every earlier cell: a 1000 x 1000 matrix ran past 60 s)."""
    small = best_of_three(lambda: load_matrix(square_matrix(workspace, 150)))
    large = best_of_three(lambda: load_matrix(square_matrix(workspace, 300)))
    assert len(load_matrix(square_matrix(workspace, 300)).cells) == 90_000
    assert large < 8 * small, f"22.5k cells {small:.2f} s, 90k cells {large:.2f} s"


# 5. probe --seq-len and eval --batches had no bound


@linux_only
def test_probe_with_a_billion_token_context_is_one_line_under_an_address_space_cap(small_run):
    result = capped_cli("probe", str(small_run), "--niah", "--seq-len", "1000000000", cwd=small_run.parent)
    assert result.returncode == 2, result.stderr
    assert one_line(
        result.stderr
    ) == "error: --seq-len: 1,000,000,000 is more than the limit of 16,777,216; " + (
        "docs/recipes.md lists the limits"
    )


@linux_only
def test_a_context_within_the_limit_but_not_this_memory_is_refused_before_it_is_drawn(small_run):
    result = capped_cli("probe", str(small_run), "--niah", "--seq-len", "10000000", cwd=small_run.parent)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert (
        line.startswith("error: --seq-len: 10,000,000 needs at least") and "more than this machine's" in line
    )


@linux_only
def test_eval_with_a_billion_batches_is_one_line_under_an_address_space_cap(small_run):
    result = capped_cli("eval", str(small_run), "--batches", "1000000000", cwd=small_run.parent)
    assert result.returncode == 2, result.stderr
    assert one_line(result.stderr) == (
        "error: --batches: 1,000,000,000 is more than the limit of 100,000; docs/recipes.md lists the limits"
    )


@linux_only
def test_generating_a_billion_tokens_is_one_line(small_run):
    result = capped_cli("generate", str(small_run), "--max-tokens", "1000000000", cwd=small_run.parent)
    assert result.returncode == 2, result.stderr
    assert "--max-tokens: 1,000,000,000 is more than the limit of 1,000,000" in one_line(result.stderr)


# 8. a seed past 64 bits validated, then train said `unexpected ValueError: Overflow`


def test_a_seed_past_64_bits_is_refused_when_the_recipe_is_read(workspace, capsys):
    code, err = cli(
        capsys, "recipe", "validate", str(workspace / "tiny.toml"), "--set", "seed=1180591620717411303424"
    )
    assert code == 2
    assert one_line(err) == (
        "error: --set: seed: expected an integer in [0, 18446744073709551615], got 1180591620717411303424"
    )


# 9. a non-UTF-8 checkpoints/latest was `unexpected UnicodeDecodeError` from four commands


@pytest.mark.parametrize(
    "command",
    [["eval"], ["generate", "--max-tokens", "1"], ["export", "--hf", "{tmp}/hf"], ["train", "--resume"]],
    ids=["eval", "generate", "export", "resume"],
)
def test_a_latest_that_is_not_utf8_is_one_line_naming_it(small_run, tmp_path, capsys, command):
    run = shutil.copytree(small_run, tmp_path / "run")
    (run / "checkpoints" / "latest").write_bytes(b"\xff\xfe step-\x80\n")
    argv = [part.replace("{tmp}", str(tmp_path)) for part in command]
    argv = [*argv, str(run)] if command[0] == "train" else [argv[0], str(run), *argv[1:]]
    code, err = cli(capsys, *argv)
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"error: {run / 'checkpoints' / 'latest'}: does not name a checkpoint directory")
    assert "resume from step-00000002" in line


# 12. recipe validate accepted values that can never train


def test_a_run_of_1e21_steps_is_refused_by_recipe_validate(workspace, capsys):
    code, err = cli(
        capsys,
        "recipe",
        "validate",
        str(workspace / "tiny.toml"),
        "--set",
        "train.steps=1000000000000000000000",
    )
    assert code == 2
    assert one_line(err) == (
        "error: --set: train.steps: expected an integer in [1, 1000000000], got 1000000000000000000000"
    )


def test_a_warmup_longer_than_the_run_is_refused_by_recipe_validate(workspace, tmp_path, capsys):
    recipe = tmp_path / "long-warmup.toml"
    recipe.write_text(f'extends = "{workspace / "tiny.toml"}"\n[train]\nsteps = 10\nwarmup_steps = 50\n')
    code, err = cli(capsys, "recipe", "validate", str(recipe))
    assert code == 2
    line = one_line(err)
    assert line.startswith("error: ") and "long-warmup.toml: train.warmup_steps: " in line
    assert line.endswith(
        "50 warmup steps in a run of 10 steps never reach train.lr; make warmup_steps at most 10"
    )


def test_a_run_shortened_with_set_keeps_its_recipes_warmup(workspace):
    """``--set train.steps=2`` (a smoke test, an ablation cell) under a recipe's warmup of 3 trains."""
    assert load_recipe(workspace / "tiny.toml", ["train.steps=2"]).train.warmup_steps == 3


def test_a_runs_own_recipe_loads_whatever_its_warmup(small_run):
    from miraslab.train.run_dir import RunDir

    assert RunDir(small_run).load_recipe().train.total_steps == 2  # its warmup_steps = 3 is stored


TOKENIZER_AS_FIFO = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from miraslab.train.run_dir import load_run
    run = Path(sys.argv[1])
    (run / "tokenizer.json").unlink()
    os.mkfifo(run / "tokenizer.json")
    try:
        load_run(run)
    except Exception as error:
        print(type(error).__name__, error)
""")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_tokenizer_json_that_is_a_fifo_is_one_line_not_a_hang(small_run, tmp_path):
    run = shutil.copytree(small_run, tmp_path / "run")
    result = subprocess.run(
        [sys.executable, "-c", TOKENIZER_AS_FIFO, str(run)], capture_output=True, text=True, timeout=120
    )
    assert "tokenizer.json: is not a regular file" in result.stdout, result.stdout + result.stderr
