"""Watch a run in TensorBoard: every logged metric, the recipe, the report's plots.

- every numeric metric of each logged step and validation pass, as a scalar under its
  ``metrics.jsonl`` key (``loss``, ``val_loss``, ``memory/L0/gate_mean``, ...) at its step;
- the resolved recipe as hyper-parameters (dotted keys, the HParams tab) and as TOML text
  (the Text tab, tag ``recipe``);
- at the end of the run, the PNGs of ``miraslab report`` (written to RUN/report) as images
  ``report/loss``, ``report/gates``, ``report/memory_norms``, ... at the last step.

Events go to ``log_dir`` (default RUN/tensorboard): ``tensorboard --logdir RUN/tensorboard``.
A resumed run writes into the same directory with ``purge_step`` at the checkpoint's step + 1,
so TensorBoard drops what the abandoned run logged after its checkpoint, as ``metrics.jsonl``
does, and the curve continues.  Only rank 0 writes under torchrun.  The events are flushed at
each checkpoint and the writer is closed when the run ends.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs

import miraslab
from miraslab.api import MiraslabError, recipe_to_dict, recipe_toml
from miraslab.plugins.monitor._tracking import Tracker, flat_hparams, report_plots

# registered as hyper-parameter metrics: the HParams tab shows their last value beside the recipe
HPARAM_METRICS = ("loss", "val_loss")


@attrs.frozen
class TensorBoardParams:
    log_dir: str = miraslab.param("", doc="where the event files go ('' = RUN/tensorboard)")
    plots: bool = miraslab.param(True, doc="send the report's plots (written to RUN/report) at the end")


class TensorBoard(Tracker):
    """Writes the run's metrics, recipe and plots as TensorBoard events (rank 0 only)."""

    package = monitor = "tensorboard"
    writer: Any = None

    def __init__(self, params: TensorBoardParams):
        super().__init__(params)
        if params.log_dir and (problem := _uncreatable(Path(params.log_dir))):
            raise MiraslabError(f"tensorboard: log_dir: {params.log_dir}: {problem}; choose another log_dir")

    def start(self, run):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        log_dir = Path(self.params.log_dir) if self.params.log_dir else Path(run.out_dir) / "tensorboard"
        # a resume: drop the abandoned run's events after the checkpoint (metrics.jsonl drops them too)
        resumed = log_dir.is_dir() and any(log_dir.glob("events.out.tfevents.*"))
        self.close()
        try:  # SummaryWriter creates the directory in a thread of its own, where an error is lost
            log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise MiraslabError(
                f"tensorboard: log_dir: {log_dir}: cannot be created ({error.strerror or error}); "
                "choose another log_dir"
            ) from None
        self.writer = SummaryWriter(str(log_dir), purge_step=run.step + 1 if resumed else None)
        if run.recipe is None:  # driven without a recipe (the conformance kit)
            return
        # through the writer's own file, not add_hparams (which opens a second event file)
        for summary in hparams(flat_hparams(recipe_to_dict(run.recipe)), dict.fromkeys(HPARAM_METRICS, 0.0)):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("recipe", "```toml\n" + recipe_toml(run.recipe) + "```", global_step=run.step)

    def send(self, step, values):
        if self.writer is None:
            return
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)

    @miraslab.hookimpl
    def on_checkpoint(self, run, path):
        if self.writer is not None:
            self.writer.flush()

    @miraslab.hookimpl
    def on_train_end(self, run, summary):
        if self.writer is None:
            return
        if self.params.plots:
            from matplotlib.image import imread

            for name, path in report_plots(run).items():
                self.writer.add_image(f"report/{name}", imread(path), global_step=run.step, dataformats="HWC")
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@miraslab.hookimpl
def register_monitors(register):
    register("tensorboard", TensorBoard, TensorBoardParams)


def _uncreatable(path: Path) -> str:
    """Why ``path`` cannot be created as a directory, seen without creating anything ("" when it can):
    a run must not train for an hour to fail at its first event."""
    for ancestor in (path, *path.absolute().parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                return f"{ancestor} is a file, not a directory"
            if not os.access(ancestor, os.W_OK | os.X_OK):
                return f"{ancestor} is not writable"
            return ""
    return ""
