"""A training run's directory, and loading a run back.

RUN/recipe.toml        the fully resolved recipe (the run is reproducible from it)
RUN/provenance.json    the distribution and version that supplied each component, see provenance
RUN/tokenizer.json     the task's tokenizer, copied so the run does not depend on a cache
RUN/metrics.jsonl      one JSON object per logged step, validation pass and stage switch
RUN/checkpoints/       step-NNNNNNNN/ (safetensors + json), latest
RUN/summary.json       written when the run ends
RUN/.lock              held (flock) by the process training in the run, see run_lock
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

from ..errors import MiraslabError
from ..recipe.resolve import load_recipe, recipe_toml
from ..recipe.schema import Recipe
from .provenance import check_provenance, write_provenance
from .run_lock import make_run_dir
from .state_files import fsync_dir

RECIPE_FILE = "recipe.toml"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def recipe_path(self) -> Path:
        return self.path / RECIPE_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def create(self, recipe: Recipe) -> None:
        """A new run: refuse to mix with another run's files."""
        if self.recipe_path.exists():
            raise MiraslabError(
                f"{self.path}: already holds a run; continue it with `miraslab train --resume {self.path}` "
                "or choose another --out"
            )
        make_run_dir(self.path)
        self.recipe_path.write_text(recipe_toml(recipe))
        write_provenance(self.path, recipe)

    def load_recipe(self) -> Recipe:
        """The run's recipe, after checking its components' distributions are installed (provenance)."""
        if not self.recipe_path.exists():
            raise MiraslabError(f"{self.path}: no {RECIPE_FILE} here; is this a miraslab run directory?")
        check_provenance(self.path)
        return load_recipe(self.recipe_path, stored=True)

    def log(self, record: dict[str, Any]) -> None:
        line = json.dumps(_finite(record)) + "\n"
        try:
            with self.metrics_path.open("a") as handle:
                handle.write(line)
        except OSError as error:
            raise _disk_error(self.metrics_path, "cannot append a line", error, self.path) from None

    def truncate_metrics(self, step: int, warn: Callable[[str], None] | None = None) -> None:
        """Forget what was logged after ``step`` (a resume from there logs it again).

        Rewritten as a new file renamed over the old one, so a kill at any moment leaves
        either the old file or the new one, never a partial one.
        """
        kept = [line for line, record in self._records(warn) if record.get("step", 0) <= step]
        for stale in self.path.glob(f".{METRICS_FILE}.tmp-*"):  # left by a rewrite that was killed
            stale.unlink(missing_ok=True)
        if not self.metrics_path.exists():
            return
        tmp = self.metrics_path.with_name(f".{METRICS_FILE}.tmp-{os.getpid()}")
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.writelines(line + "\n" for line in kept)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.metrics_path)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise _disk_error(
                self.metrics_path, "cannot rewrite it for the resume", error, self.path
            ) from None
        fsync_dir(self.path)

    def metrics(self, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
        return [record for _, record in self._records(warn)]

    def _records(self, warn: Callable[[str], None] | None) -> list[tuple[str, dict[str, Any]]]:
        """Each line of metrics.jsonl with its record; a torn last line (a kill or a full disk
        mid-write) is dropped with a warning, a bad line before it is an error."""
        if not self.metrics_path.exists():
            return []
        try:
            text = self.metrics_path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            text = self.metrics_path.read_bytes().decode("utf-8", errors="replace")
        lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
        records = []
        for index, (number, line) in enumerate(lines):
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError:
                if index == len(lines) - 1:
                    shown = f"{line[:40]!r}"
                    (warn or _warn)(
                        f"warning: {self.metrics_path}: dropped its torn last line {number} ({shown})"
                    )
                    break
                raise MiraslabError(
                    f"{self.metrics_path}: line {number} is not a JSON object ({line[:40]!r}); "
                    "repair or remove that line, then resume"
                ) from None
            records.append((line, record))
        return records

    def write_summary(self, summary: dict[str, Any]) -> None:
        try:
            (self.path / SUMMARY_FILE).write_text(json.dumps(_finite(summary), indent=2) + "\n")
        except OSError as error:
            raise _disk_error(self.path / SUMMARY_FILE, "cannot write it", error, self.path) from None


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def _disk_error(path: Path, action: str, error: OSError, run: Path) -> MiraslabError:
    """One line for a failed write; a full disk says so and that the checkpoints are untouched."""
    if error.errno == errno.ENOSPC:
        return MiraslabError(
            f"{path}: {action}: the disk is full; the checkpoints in {run / 'checkpoints'} are kept, "
            f"free some space and continue with `miraslab train --resume {run}`"
        )
    return MiraslabError(f"{path}: {action}: {error.strerror or error}")


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN/inf: write them as strings so the file stays valid JSON."""
    return {k: (repr(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


@attrs.frozen
class LoadedRun:
    model: torch.nn.Module
    tokenizer: Any
    recipe: Recipe
    step: int


def load_run(
    path: str | Path, checkpoint: str | Path | None = None, device: str | torch.device = "cpu"
) -> LoadedRun:
    """The model (weights of the latest checkpoint, in eval mode), tokenizer and recipe of a run."""
    from ..model.language_model import build_model
    from .checkpoint import load_checkpoint

    run = RunDir(Path(path))
    recipe = run.load_recipe()
    from .resume_check import check_model_tensors

    model = build_model(recipe)
    state = load_checkpoint(Path(checkpoint) if checkpoint else run.path)
    check_model_tensors(state.path, model.state_dict(), state.model)
    model.load_state_dict(state.model)
    model.to(device).eval()
    tokenizer = None
    if (run.path / TOKENIZER_FILE).exists():
        from ..data.tokenizer_training import read_tokenizer

        tokenizer = read_tokenizer(run.path / TOKENIZER_FILE)
    return LoadedRun(model, tokenizer, recipe, state.step)
