"""The ``tensorboard`` and ``wandb`` monitors, read back with each tool's own reader.

A tiny recipe trains a few steps with both (W&B offline, its server address a closed local
port, so that a request could reach nothing); TensorBoard's ``EventAccumulator`` and W&B's own record
schema (``wandb_internal_pb2.Record``, read from the offline run's ``.wandb`` log) must give
back exactly what the run's ``metrics.jsonl`` holds, the resolved recipe and the report's
plots.  The W&B environment is set for each training run only (``MonkeyPatch.context``).
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from training_cases import write_corpus, write_recipe

from miraslab.errors import MiraslabError
from miraslab.recipe.resolve import load_recipe
from miraslab.train.run_dir import RunDir
from miraslab.train.trainer import RunContext, Trainer

# memory_stats first: the tracking monitors must still see what it adds (their hooks run last)
MONITORS = """
[[monitors]]
name = "memory_stats"
[[monitors]]
name = "tensorboard"
[[monitors]]
name = "wandb"
"""
REPORT_PLOTS = {"loss", "gates", "memory_norms", "memory_use", "w_init"}
REPO = Path(__file__).resolve().parents[1]


def wandb_environment(patch: pytest.MonkeyPatch, directory: Path) -> None:
    """Offline, silent, nothing written under $HOME, and any request to a closed port."""
    patch.setenv("WANDB_MODE", "offline")
    patch.setenv("WANDB_SILENT", "true")
    patch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    patch.delenv("WANDB_API_KEY", raising=False)
    # wandb-core writes its own debug logs under the XDG cache, not WANDB_CACHE_DIR
    homes = ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR", "XDG_CACHE_HOME")
    for name in homes:
        patch.setenv(name, str(directory / "wandb-home" / name.lower()))
    patch.setenv("WANDB_DISABLE_GIT", "true")
    patch.setenv("WANDB_DISABLE_CODE", "true")


def train(directory: Path, recipe: Path | None = None, sets: tuple[str, ...] = (), **options) -> Path:
    """Train the tiny recipe with both monitors (or ``recipe``, a resume's) into directory/run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MIRASLAB_CACHE", str(directory / "cache"))
        wandb_environment(patch, directory)
        if recipe is None:
            recipe = write_recipe(directory, write_corpus(directory), MONITORS)
        try:
            Trainer(load_recipe(recipe, sets), directory / "run", show_progress=False, **options).run()
        finally:
            # wandb-core may still be writing the .wandb file when finish() returns; its
            # shutdown (what ends a training process) completes it
            if "wandb" in sys.modules:
                sys.modules["wandb"].teardown()
    return directory / "run"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    return train(tmp_path_factory.mktemp("tracking"), sets=("train.eval_every=4",), max_steps=4)


# --- what the run logged itself -------------------------------------------------------


def logged(run_dir: Path) -> dict[tuple[str, int], float]:
    """(key, step) -> value of every numeric metric in metrics.jsonl, the step itself aside."""
    values = {}
    for record in RunDir(run_dir).metrics():
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                assert (key, record["step"]) not in values, f"{key} logged twice at step {record['step']}"
                values[key, record["step"]] = float(value)
    return values


# --- TensorBoard, through its own reader ----------------------------------------------


def accumulator(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0}
    )
    events.Reload()
    return events


def tensorboard_scalars(events) -> dict[tuple[str, int], float]:
    values = {}
    for tag in events.Tags()["scalars"]:
        for event in events.Scalars(tag):
            assert (tag, event.step) not in values, f"{tag} twice at step {event.step}"
            values[tag, event.step] = event.value
    return values


def test_tensorboard_holds_every_logged_metric_at_its_step(run):
    """Same (key, step) pairs as metrics.jsonl, values equal to float32 (TensorBoard's scalar)."""
    expected, got = logged(run), tensorboard_scalars(accumulator(run))
    assert set(got) == set(expected)
    assert ("memory/L0/gate_mean", 4) in got and ("val_loss", 4) in got and ("loss", 1) in got
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-30), key


def test_tensorboard_holds_the_resolved_recipe_as_hparams_and_text(run):
    from google.protobuf.json_format import MessageToDict
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = accumulator(run)
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = {key: MessageToDict(value) for key, value in start.session_start_info.hparams.items()}
    assert hparams["model.d_model"] == 32 and hparams["train.lr"] == 3e-3
    assert hparams["data.task.name"] == "text" and hparams["model.layout.name"] == "mag"
    assert [hparams[f"monitors[{i}].name"] for i in range(3)] == ["memory_stats", "tensorboard", "wandb"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    assert [metric.name.tag for metric in experiment.experiment.metric_infos] == ["loss", "val_loss"]
    (text,) = events.Tensors("recipe/text_summary")
    recipe_toml = (run / "recipe.toml").read_text()
    assert text.tensor_proto.string_val[0].decode() == f"```toml\n{recipe_toml}```"


def test_tensorboard_holds_the_reports_plots_at_the_last_step(run):
    from matplotlib.image import imread

    events = accumulator(run)
    assert {tag.removeprefix("report/") for tag in events.Tags()["images"]} == REPORT_PLOTS
    for name in REPORT_PLOTS:
        (image,) = events.Images(f"report/{name}")
        height, width, _ = imread(run / "report" / f"{name}.png").shape
        assert (image.step, image.height, image.width) == (4, height, width)
        assert image.encoded_image_string.startswith(b"\x89PNG")


# --- W&B: its offline run, read with its own record schema ----------------------------


def wandb_records(run_file: Path) -> Iterator:
    """The records of a .wandb file: a LevelDB log (32 KiB blocks of chunks, each with a
    7-byte header: crc32c, length, type full/first/middle/last) after a 7-byte W&B header,
    each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", run_file
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        room = block - position % block
        if room < 7:  # a block's tail too short for a header is padding
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:  # zero padding up to the end of a preallocated block
            position += room
            continue
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wandb_run(run_dir: Path, index: int = 0) -> dict:
    """The ``index``-th offline W&B run of the run directory, in the order they started: its
    run record, history by step, summary and exit code."""
    runs = sorted(
        (read_wandb_run(path) for path in (run_dir / "wandb").glob("offline-run-*")), key=lambda r: r[0]
    )
    found = runs[index][1]
    found["runs"] = len(runs)
    return found


def read_wandb_run(directory: Path) -> tuple[int, dict]:
    (run_file,) = directory.glob("run-*.wandb")
    found: dict = {"dir": directory, "history": {}, "summary": {}}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            found["run"] = record.run
            found["config"] = {item.key: json.loads(item.value_json) for item in record.run.config.update}
        elif kind == "history":
            row = {
                item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in record.history.item
            }
            found["history"].setdefault(row["_step"], {}).update(row)
        elif kind == "summary":
            for item in record.summary.update:
                found["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "exit":
            found["exit_code"] = record.exit.exit_code
    # by start time: two runs begun within a second have directory names that sort by their random ids
    return found["run"].start_time.ToNanoseconds(), found


def test_wandb_holds_every_logged_metric_at_its_step(run):
    """Same values as metrics.jsonl, exactly (both write each float's shortest repr)."""
    history = wandb_run(run)["history"]
    got = {(key, step): value for step, row in history.items() for key, value in row.items()}
    got = {key: value for key, value in got.items() if not key[0].startswith(("_", "report/"))}
    assert got == logged(run)


def test_wandb_run_is_offline_with_the_recipe_as_config_and_the_plots(run):
    found = wandb_run(run)
    assert found["run"].project == "miraslab" and found["run"].display_name == "run"
    assert found["run"].run_group == "run" and found["exit_code"] == 0
    config = found["config"]
    assert config["model"]["d_model"] == 32 and config["train"]["lr"] == 3e-3
    assert [m["name"] for m in config["monitors"]] == ["memory_stats", "tensorboard", "wandb"]
    assert config["miraslab"] == {"run_dir": str(run), "start_step": 0}
    last = found["history"][4]
    assert {key.split("/")[1] for key in last if key.startswith("report/")} == REPORT_PLOTS
    for name in REPORT_PLOTS:
        assert last[f"report/{name}/_type"] == "image-file"
        assert (found["dir"] / "files" / last[f"report/{name}/path"]).is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert found["summary"]["summary/final_loss"] == summary["final_loss"]
    assert found["summary"]["summary/best_val_loss"] == summary["best_val_loss"]
    # offline: the closed port in WANDB_BASE_URL was never dialled
    internal = (found["dir"] / "logs" / "debug-internal.log").read_text()
    assert "127.0.0.1:9" not in internal and "connection refused" not in internal.lower()


# --- resume ---------------------------------------------------------------------------


def test_a_resume_continues_the_tensorboard_curve_and_starts_a_wandb_run_in_the_group(tmp_path):
    """Stop at step 3, resume from the step-2 checkpoint to step 4: TensorBoard's resumed file
    purges from step 3 and the curve equals metrics.jsonl again; W&B gets a second offline run
    in the same group whose history starts at step 3."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    monitors = (
        '[[monitors]]\nname = "tensorboard"\nplots = false\n[[monitors]]\nname = "wandb"\nplots = false\n'
    )
    recipe = write_recipe(tmp_path, write_corpus(tmp_path), monitors)
    run_dir = train(tmp_path, recipe, ("train.checkpoint_every=2", "train.eval_every=0"), max_steps=3)
    assert max(step for _, step in tensorboard_scalars(accumulator(run_dir))) == 3
    train(
        tmp_path, run_dir / "recipe.toml", resume_from=run_dir / "checkpoints" / "step-00000002", max_steps=4
    )

    # events.out.tfevents.<seconds>.<host>.<pid>.<counter>: by time, then by the writer's counter
    files = (run_dir / "tensorboard").glob("events.out.tfevents.*")
    _, resumed = sorted(files, key=lambda f: (int(f.name.split(".")[3]), int(f.name.split(".")[-1])))
    starts = [e for e in EventFileLoader(str(resumed)).Load() if e.HasField("session_log")]
    assert [(e.session_log.status, e.step) for e in starts][:1] == [(SessionLog.START, 3)]
    expected, got = logged(run_dir), tensorboard_scalars(accumulator(run_dir))
    assert set(got) == set(expected) and max(step for _, step in got) == 4
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-30), key

    before, after = wandb_run(run_dir, 0), wandb_run(run_dir, 1)
    assert after["runs"] == 2 and after["run"].run_group == before["run"].run_group == "run"
    assert after["config"]["miraslab"]["start_step"] == 2
    assert (min(after["history"]), max(after["history"]), max(before["history"])) == (3, 4, 3)


def test_a_run_stopped_by_a_check_still_closes_both(tmp_path):
    """The end hook runs for a stop too: W&B's run ends failed with the reason in its summary,
    TensorBoard's file holds the step the run stopped at."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from miraslab.errors import RunStopped

    stop = '[[monitors]]\nname = "kill_switch"\npatience = 1\ngate_floor = 0.99\n'
    tracking = (
        '[[monitors]]\nname = "tensorboard"\nplots = false\n[[monitors]]\nname = "wandb"\nplots = false\n'
    )
    recipe = write_recipe(tmp_path, write_corpus(tmp_path), stop + tracking)
    with pytest.raises(RunStopped, match="kill switch gate_floor"):
        train(tmp_path, recipe, max_steps=4)
    found = wandb_run(tmp_path / "run")
    assert found["exit_code"] == 1 and "kill switch gate_floor" in found["summary"]["summary/stopped_by"]
    assert set(tensorboard_scalars(accumulator(tmp_path / "run"))) == set(logged(tmp_path / "run"))
    assert max(found["history"]) == max(step for _, step in logged(tmp_path / "run")) < 4


# --- without the packages, and on other ranks ------------------------------------------


@pytest.mark.parametrize("package", ["tensorboard", "wandb"])
def test_a_missing_package_is_one_line_before_the_run_directory_is_written(tmp_path, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # import and find_spec see it as not installed
    monkeypatch.setenv("MIRASLAB_CACHE", str(tmp_path / "cache"))
    write_corpus(tmp_path)
    extra = f'[[monitors]]\nname = "{package}"\n'
    recipe = load_recipe(write_recipe(tmp_path, tmp_path / "corpus.txt", extra))
    with pytest.raises(MiraslabError) as caught:
        Trainer(recipe, tmp_path / "run", show_progress=False, max_steps=1).run()
    assert (
        str(caught.value)
        == f"monitor {package!r} needs the {package} package: pip install 'miraslab[tracking]'"
    )
    assert not (tmp_path / "run" / "recipe.toml").exists()


@pytest.mark.slow
def test_under_torchrun_one_process_writes_what_the_run_logged(tmp_path, monkeypatch):
    """Two processes on gloo: one event file and one W&B run, equal to metrics.jsonl."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    import subprocess

    recipe = write_recipe(tmp_path, write_corpus(tmp_path), MONITORS)
    monkeypatch.setenv("MIRASLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    wandb_environment(monkeypatch, tmp_path)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "miraslab", "train",
               str(recipe), "--out", str(tmp_path / "run"), "--max-steps", "4", "--quiet"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "run"
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    expected, got = logged(run_dir), tensorboard_scalars(accumulator(run_dir))
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-30), key
    found = wandb_run(run_dir)
    assert found["runs"] == 1
    history = {(k, step): v for step, row in found["history"].items() for k, v in row.items()}
    assert {key: v for key, v in history.items() if not key[0].startswith(("_", "report/"))} == expected


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_only_rank_0_writes(tmp_path, monkeypatch, name):
    pytest.importorskip(name)
    from miraslab.components import build_component

    monkeypatch.setenv("WANDB_MODE", "offline")
    write_corpus(tmp_path)
    recipe = load_recipe(write_recipe(tmp_path, tmp_path / "corpus.txt", f'[[monitors]]\nname = "{name}"\n'))
    monitor = build_component(recipe.monitors[0])
    out = tmp_path / "run"
    out.mkdir()
    context = RunContext(recipe, out, model=None, step=0, rank=1, world_size=2)
    monitor.on_train_start(run=context)
    monitor.on_step_end(run=context, metrics={"step": 1, "loss": 1.0})
    monitor.on_train_end(run=context, summary={"stopped_by": None})
    assert list(out.iterdir()) == []


def test_the_wandb_monitor_is_offline_unless_the_recipe_says_otherwise(tmp_path):
    write_corpus(tmp_path)
    recipe = load_recipe(write_recipe(tmp_path, tmp_path / "corpus.txt", '[[monitors]]\nname = "wandb"\n'))
    assert recipe.monitors[0].params.mode == "offline"
    online = '[[monitors]]\nname = "wandb"\nmode = "online"\n'
    assert (
        load_recipe(write_recipe(tmp_path, tmp_path / "corpus.txt", online)).monitors[0].params.mode
        == "online"
    )
    with pytest.raises(MiraslabError, match=r"monitors\[0\]\.mode: expected one of"):
        load_recipe(write_recipe(tmp_path, tmp_path / "corpus.txt", online.replace("online", "cloud")))


def test_the_conformance_kit_skips_a_tracking_monitor_without_its_package(tmp_path, monkeypatch):
    from miraslab.testing import check_component

    monkeypatch.setitem(sys.modules, "wandb", None)
    reason = check_component("monitor", "wandb", out_dir=tmp_path)
    assert reason == "monitor 'wandb' needs the wandb package: pip install 'miraslab[tracking]'"


def test_the_ecosystem_pages_recipe_loads_with_both_monitors(tmp_path):
    """docs/ecosystem.md's tracked.toml, beside a recipes/ folder as the page says."""
    from markdown_blocks import fenced_blocks

    (block,) = [
        text
        for language, text in fenced_blocks(REPO / "docs" / "ecosystem.md")
        if language == "toml" and "wandb" in text
    ]
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    (tmp_path / "tracked.toml").write_text(block)
    recipe = load_recipe(tmp_path / "tracked.toml")
    assert [m.name for m in recipe.monitors] == ["memory_stats", "tensorboard", "wandb"]
    assert (
        recipe.monitors[2].params.mode == "offline"
        and recipe.name == load_recipe(REPO / "recipes" / "quickstart.toml").name
    )
