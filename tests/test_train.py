"""The trainer end to end on CPU: run directory, exact resume, stages, crashes, precision."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from checkpoint_faults import paused_command
from training_cases import write_corpus, write_recipe

from miraslab.errors import MiraslabError
from miraslab.recipe.resolve import load_recipe
from miraslab.train.checkpoint import load_checkpoint
from miraslab.train.run_dir import RunDir, load_run
from miraslab.train.trainer import Trainer


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("train")
    os.environ["MIRASLAB_CACHE"] = str(directory / "cache")  # the trained tokenizer is cached here
    write_corpus(directory)
    return directory


def recipe_path(workspace: Path, extra: str = "", layout: str = "mag") -> Path:
    return write_recipe(workspace, workspace / "corpus.txt", extra, layout)


def train(workspace: Path, out: Path, sets=(), extra: str = "", layout: str = "mag", **options) -> dict:
    recipe = load_recipe(recipe_path(workspace, extra, layout), sets)
    return Trainer(recipe, out, show_progress=False, **options).run()


def resume(out: Path, **options) -> dict:
    return Trainer(RunDir(out).load_recipe(), out, resume=True, show_progress=False, **options).run()


def losses(out: Path) -> list[tuple[int, float]]:
    return [(m["step"], m["loss"]) for m in RunDir(out).metrics() if "loss" in m]


def run_cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "miraslab", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def test_a_run_directory_holds_recipe_metrics_validation_checkpoints_and_summary(workspace, tmp_path):
    summary = train(workspace, tmp_path / "run")
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {
        "recipe.toml",
        "metrics.jsonl",
        "checkpoints",
        "summary.json",
        "tokenizer.json",
    }
    steps = [m for m in RunDir(run).metrics() if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 13))
    assert {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s"} <= set(steps[0])
    assert steps[-1]["tokens"] == 12 * 4 * 32
    evals = [m for m in RunDir(run).metrics() if m.get("event") == "eval"]
    assert [m["step"] for m in evals] == [6, 12] and all("val_ppl" in m for m in evals)
    assert summary["step"] == 12 and json.loads((run / "summary.json").read_text())["step"] == 12
    assert steps[-1]["loss"] < steps[0]["loss"]  # it learns
    assert load_recipe(run / "recipe.toml").name == "tiny"


def test_n_steps_then_resume_then_n_steps_equals_2n_straight_bitwise(workspace, tmp_path):
    train(workspace, tmp_path / "straight")
    train(workspace, tmp_path / "resumed", max_steps=6)
    assert load_checkpoint(tmp_path / "resumed").step == 6
    resume(tmp_path / "resumed")
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")  # exact float equality


def test_max_steps_does_not_change_the_schedule(workspace, tmp_path):
    train(workspace, tmp_path / "straight")
    train(workspace, tmp_path / "short", max_steps=4)
    lrs = {m["step"]: m["lr"] for m in RunDir(tmp_path / "straight").metrics() if "lr" in m}
    short = {m["step"]: m["lr"] for m in RunDir(tmp_path / "short").metrics() if "lr" in m}
    assert short == {step: lrs[step] for step in range(1, 5)}


def test_resume_drops_metrics_logged_after_the_checkpoint(workspace, tmp_path):
    train(workspace, tmp_path / "run", max_steps=6)
    RunDir(tmp_path / "run").log({"step": 9, "loss": 123.0})  # as if a crash came after step 9's log
    resume(tmp_path / "run")
    assert [s for s, _ in losses(tmp_path / "run")] == list(range(1, 13))


STAGES = """
[[train.stages]]
name = "big-chunks"
steps = 6
[[train.stages]]
name = "local-fine-tune"
steps = 6
train_only = ["local_memory"]
overrides = { "model.tnt.local_chunks" = [2], "train.lr" = 1e-3 }
[model.tnt]
global_chunk = 16
local_chunks = [8]
shard_length = 16
"""


def test_stages_switch_at_the_right_step_and_train_only_their_groups(workspace, tmp_path):
    train(workspace, tmp_path / "run", extra=STAGES)
    records = RunDir(tmp_path / "run").metrics()
    switch = [m for m in records if m.get("event") == "stage"]
    assert [(m["step"], m["stage"]) for m in switch] == [(6, "local-fine-tune")]
    stage_of = {m["step"]: m["stage"] for m in records if "loss" in m}
    assert stage_of[6] == "big-chunks" and stage_of[7] == "local-fine-tune"
    assert {m["step"]: m["lr"] for m in records if "lr" in m}[12] < 1e-3
    frozen_at_6 = load_run(tmp_path / "run", tmp_path / "run/checkpoints/step-00000006").model.state_dict()
    final = load_run(tmp_path / "run").model.state_dict()
    for name, tensor in final.items():
        changed = not torch.equal(tensor, frozen_at_6[name])
        assert changed == (".local_memories." in name), name


def test_resuming_inside_stage_2_continues_the_same_curve(workspace, tmp_path):
    train(workspace, tmp_path / "straight", extra=STAGES)
    train(workspace, tmp_path / "resumed", extra=STAGES, max_steps=9)
    resume(tmp_path / "resumed")
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")


def test_a_stage_override_of_an_unknown_key_is_a_recipe_error(workspace):
    from miraslab.errors import RecipeError

    bad = STAGES.replace('"train.lr" = 1e-3', '"model.memory.chunk_sise" = 4')
    with pytest.raises(
        RecipeError, match=r"train\.stages\[1\]\.overrides: model\.memory\.chunk_sise: unknown key"
    ):
        load_recipe(recipe_path(workspace, bad))


def test_gradient_accumulation_matches_the_whole_batch(workspace, tmp_path):
    """Tolerance: relative 1e-5 on every logged loss (float summation order differs)."""
    train(workspace, tmp_path / "whole")
    train(workspace, tmp_path / "accumulated", sets=["train.micro_batch_size=1"])
    for (_, a), (_, b) in zip(losses(tmp_path / "whole"), losses(tmp_path / "accumulated"), strict=True):
        assert abs(a - b) <= 1e-5 * abs(a)


def test_a_process_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(workspace, tmp_path):
    recipe = recipe_path(workspace)
    out = tmp_path / "killed"
    process = subprocess.Popen(
        paused_command("model.safetensors@12", "train", str(recipe), "--out", str(out), "--quiet"),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    for line in process.stderr:
        if "checkpoint paused" in line or time.time() > deadline:
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert load_checkpoint(out).step == 6  # the half-written step 12 never became "latest"
    assert not (out / "checkpoints" / "step-00000012").exists()
    resume(out)
    train(workspace, tmp_path / "straight")
    assert losses(out) == losses(tmp_path / "straight")


def test_a_corrupted_checkpoint_is_refused_with_a_clear_message(workspace, tmp_path):
    out = tmp_path / "run"
    train(workspace, out)
    weights = out / "checkpoints" / "step-00000012" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = run_cli("train", "--resume", str(out))
    assert result.returncode == 2
    assert "model.safetensors is corrupted" in result.stderr and "step-00000006" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_new_run_refuses_to_overwrite_another(workspace, tmp_path):
    train(workspace, tmp_path / "run", max_steps=1)
    with pytest.raises(MiraslabError, match="already holds a run"):
        train(workspace, tmp_path / "run")


def test_load_run_returns_the_model_tokenizer_and_recipe(workspace, tmp_path):
    train(workspace, tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    assert loaded.step == 12 and loaded.recipe.name == "tiny" and loaded.tokenizer.get_vocab_size() <= 320
    ids = torch.tensor([loaded.tokenizer.encode("the memory stores").ids])
    assert loaded.model(ids).shape == (1, ids.shape[1], 320)


def test_bf16_autocast_trains_on_cpu_with_fp32_master_weights(workspace, tmp_path):
    train(workspace, tmp_path / "bf16", sets=["train.precision=bf16"], max_steps=3)
    loaded = load_run(tmp_path / "bf16")
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in losses(tmp_path / "bf16"))


def test_activation_checkpointing_gives_the_same_losses(workspace, tmp_path):
    """Tolerance: relative 1e-5 (the recomputed forward is the same computation)."""
    train(workspace, tmp_path / "plain", max_steps=3)
    train(workspace, tmp_path / "checkpointed", sets=["train.activation_checkpointing=true"], max_steps=3)
    for (_, a), (_, b) in zip(losses(tmp_path / "plain"), losses(tmp_path / "checkpointed"), strict=True):
        assert abs(a - b) <= 1e-5 * abs(a)


def test_the_cli_trains_quietly_when_output_is_not_a_terminal(workspace, tmp_path):
    result = run_cli("train", str(recipe_path(workspace)), "--out", str(tmp_path / "run"), "--max-steps", "2")
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stderr and "━" not in result.stderr  # no progress bar
    assert "training tiny" in result.stderr and "done: step 2/12" in result.stderr


def test_generate_streams_text_from_a_run(workspace, tmp_path):
    train(workspace, tmp_path / "run")
    result = run_cli(
        "generate", str(tmp_path / "run"), "--prompt", "the memory", "--max-tokens", "12", "--seed", "1"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("the memory") and len(result.stdout) > len("the memory\n")
    again = run_cli(
        "generate", str(tmp_path / "run"), "--prompt", "the memory", "--max-tokens", "12", "--seed", "1"
    )
    assert again.stdout == result.stdout


def test_generate_compile_says_which_step_ran_and_gives_the_eager_text(workspace, tmp_path):
    """``--compile``: one line on stderr names the compiled step; greedy text is the eager one's."""
    train(workspace, tmp_path / "run")
    command = (
        "generate",
        str(tmp_path / "run"),
        "--prompt",
        "the memory",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
    )
    eager = run_cli(*command)
    compiled = run_cli(*command, "--compile")
    assert compiled.returncode == 0, compiled.stderr
    assert "decode step: compiled" in compiled.stderr.splitlines()
    assert compiled.stdout == eager.stdout


@pytest.mark.slow
def test_torchrun_with_two_processes_reproduces_the_single_process_curve(workspace, tmp_path):
    """DDP on gloo, global batch 4 = 2 x 2. Tolerance: relative 1e-5 per logged loss."""
    train(workspace, tmp_path / "single")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "-m",
            "miraslab",
            "train",
            str(recipe_path(workspace)),
            "--out",
            str(tmp_path / "ddp"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    single, ddp = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert [s for s, _ in single] == [s for s, _ in ddp]
    for (_, a), (_, b) in zip(single, ddp, strict=True):
        assert abs(a - b) <= 1e-5 * abs(a)
    assert len(list((tmp_path / "ddp" / "checkpoints").glob("step-*"))) >= 1


@pytest.mark.compile
def test_torch_compile_trains_to_the_same_losses(workspace, tmp_path):
    """inductor on CPU. Tolerance: relative 1e-4 (fused kernels reorder float sums)."""
    small = ["model.n_layers=1", "data.seq_len=16", "train.eval_every=0"]
    train(workspace, tmp_path / "eager", sets=small, max_steps=2)
    train(workspace, tmp_path / "compiled", sets=[*small, "train.compile=true"], max_steps=2)
    for (_, a), (_, b) in zip(losses(tmp_path / "eager"), losses(tmp_path / "compiled"), strict=True):
        assert abs(a - b) <= 1e-4 * abs(a)


def test_a_model_torch_compile_cannot_handle_trains_eager_with_a_warning(capsys):
    from miraslab.train.compiled_or_eager import CompiledOrEager
    from miraslab.train.progress import TrainingProgress

    def failing_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    model = torch.nn.Linear(3, 2)
    wrapped = CompiledOrEager(model, TrainingProgress(1, 0), backend=failing_backend)
    x = torch.randn(4, 3)
    torch.testing.assert_close(wrapped(x), model(x))
    assert not wrapped.use_compiled
    assert "warning: torch.compile failed" in capsys.readouterr().err


def test_a_new_input_shape_compiles_a_static_graph_of_its_own():
    """An evaluation batch or a stage's sequence length of another shape must not turn the
    model's graph symbolic (under torch.compile's default a second shape does, and with the
    memory's loops over chunks that compile took minutes)."""
    from miraslab.train.compiled_or_eager import CompiledOrEager
    from miraslab.train.progress import TrainingProgress

    symbolic = []

    def recording_backend(graph, example_inputs):
        values = [node.meta.get("example_value") for node in graph.graph.nodes if node.op == "placeholder"]
        symbolic.append(
            any(
                isinstance(v, torch.SymInt)
                or (isinstance(v, torch.Tensor) and any(isinstance(n, torch.SymInt) for n in v.shape))
                for v in values
            )
        )
        return graph.forward

    model = torch.nn.Linear(3, 2)
    wrapped = CompiledOrEager(model, TrainingProgress(1, 0), backend=recording_backend)
    for rows in (4, 6, 4):
        x = torch.randn(rows, 3)
        torch.testing.assert_close(wrapped(x), model(x))
    assert symbolic == [False, False]
    assert wrapped.use_compiled


def test_a_stage_may_not_override_what_the_run_keeps(workspace):
    from miraslab.errors import RecipeError

    bad = STAGES.replace('"train.lr" = 1e-3', '"data.seq_len" = 64')
    with pytest.raises(RecipeError, match=r"overrides: data\.seq_len: a stage can override model\.\* keys"):
        load_recipe(recipe_path(workspace, bad))


def test_documents_run_apart_in_training_and_resume_the_same_curve(workspace, tmp_path):
    """data.reset_at_documents reaches the loss (step 1 differs from the packed run's) and a
    resumed run continues it bitwise."""
    apart = ["data.reset_at_documents=true"]
    train(workspace, tmp_path / "packed", max_steps=1)
    train(workspace, tmp_path / "straight", sets=apart)
    train(workspace, tmp_path / "resumed", sets=apart, max_steps=6)
    resume(tmp_path / "resumed")
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    assert losses(tmp_path / "straight")[0] != losses(tmp_path / "packed")[0]
    # length buckets change the passes, not the sums: one padded batch gives the same curve
    # (fp32, summed in another order: 1e-5 of the loss)
    train(workspace, tmp_path / "one_bucket", sets=[*apart, "data.document_buckets=1"])
    for (step, bucketed), (same, padded) in zip(
        losses(tmp_path / "straight"), losses(tmp_path / "one_bucket"), strict=True
    ):
        assert step == same and abs(bucketed - padded) <= 1e-5 * abs(padded)


def test_documents_packed_in_training_give_the_curve_of_the_documents_apart(workspace, tmp_path, monkeypatch):
    """A per-token memory runs data.reset_at_documents packed (its rows and their starts); the
    loss curve is the one of the same model run apart, one row per document (fp32, summed in
    another order: 1e-5 of the loss)."""
    sets = [
        "data.reset_at_documents=true",
        "model.memory.inner_steps=per_token",
        "model.memory.memory=linear",
    ]
    sets += ["model.memory.algorithm=gd"]
    import miraslab.train.trainer as trainer_module
    from miraslab.model.language_model import LanguageModel

    kinds, pieces = [], trainer_module.forward_pieces

    def recording(*args, packed=False):
        kinds.append(packed)
        return pieces(*args, packed=packed)

    monkeypatch.setattr(trainer_module, "forward_pieces", recording)
    train(workspace, tmp_path / "packed", sets=sets, layout="mal", max_steps=3)
    monkeypatch.setattr(LanguageModel, "documents_reason", lambda self: "forced apart")
    train(workspace, tmp_path / "apart", sets=sets, layout="mal", max_steps=3)
    assert kinds == [True] * 3 + [False] * 3
    for (step, got), (same, expected) in zip(
        losses(tmp_path / "packed"), losses(tmp_path / "apart"), strict=True
    ):
        assert step == same and abs(got - expected) <= 1e-5 * abs(expected)
