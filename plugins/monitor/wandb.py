"""Watch a run in Weights & Biases: every logged metric, the recipe, the report's plots.

- every numeric metric of each logged step and validation pass under its ``metrics.jsonl``
  key, at its step (``wandb.log(..., step=step)``);
- the resolved recipe as the run's config (nested as in recipe.toml), with
  ``miraslab.run_dir`` and ``miraslab.start_step``;
- at the end of the run, the PNGs of ``miraslab report`` (written to RUN/report) as images
  ``report/loss``, ``report/gates``, ... at the last step, and summary.json's numbers in the
  run summary as ``summary/final_loss``, ``summary/best_val_loss``, ...

``mode = "offline"`` (the default) writes the W&B run under ``dir`` (default the run
directory: RUN/wandb/offline-run-*) and never touches the network; upload it later with
``wandb sync RUN/wandb/offline-run-*``.  ``mode = "online"`` streams it (after ``wandb
login``), ``"disabled"`` sends nothing.  A resumed run is a new W&B run in the same
``group`` (default: the run directory's name), starting at the checkpoint's step: W&B refuses
steps below a run's last one, and the abandoned run may have logged past its checkpoint, so
each training session gets its own W&B run and the group lines their curves up by step.
Only rank 0 logs under torchrun.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

import miraslab
from miraslab.api import recipe_to_dict
from miraslab.plugins.monitor._tracking import Tracker, report_plots


@attrs.frozen
class WandbParams:
    project: str = miraslab.param("miraslab", doc="the W&B project")
    entity: str = miraslab.param("", doc="the W&B entity, user or team ('' = your default)")
    run_name: str = miraslab.param("", doc="the W&B run's name ('' = the run directory's name)")
    group: str = miraslab.param("", doc="the W&B group ('' = the run directory's name: a resume joins it)")
    tags: tuple[str, ...] = miraslab.param((), doc="W&B tags")
    mode: str = miraslab.param(
        "offline", choices=("offline", "online", "disabled"), doc="offline: files only, no network"
    )
    dir: str = miraslab.param("", doc="where the W&B run's files go ('' = the run directory: RUN/wandb/)")
    plots: bool = miraslab.param(True, doc="send the report's plots (written to RUN/report) at the end")


class Wandb(Tracker):
    """Logs the run's metrics, recipe and plots to a W&B run (rank 0 only)."""

    package = monitor = "wandb"
    run: Any = None

    def start(self, run):
        import wandb

        out_dir = Path(run.out_dir)
        files = Path(self.params.dir) if self.params.dir else out_dir
        files.mkdir(parents=True, exist_ok=True)
        config = recipe_to_dict(run.recipe) if run.recipe is not None else {}
        config["miraslab"] = {"run_dir": str(out_dir), "start_step": run.step}
        self.finish(0)
        self.run = wandb.init(
            project=self.params.project,
            entity=self.params.entity or None,
            name=self.params.run_name or out_dir.name,
            group=self.params.group or out_dir.name,
            tags=list(self.params.tags) or None,
            mode=self.params.mode,
            dir=str(files),
            config=config,
        )

    def send(self, step, values):
        if self.run is not None:
            self.run.log(values, step=step)

    @miraslab.hookimpl
    def on_train_end(self, run, summary):
        if self.run is None:
            return
        if self.params.plots:
            import wandb

            images = {f"report/{name}": wandb.Image(str(path)) for name, path in report_plots(run).items()}
            if images:
                self.run.log(images, step=run.step)
        self.run.summary.update(
            {
                f"summary/{key}": value
                for key, value in summary.items()
                if isinstance(value, bool | int | float | str) or value is None
            }
        )
        self.finish(0 if summary.get("stopped_by") is None else 1)

    def finish(self, exit_code: int) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


@miraslab.hookimpl
def register_monitors(register):
    register("wandb", Wandb, WandbParams)
