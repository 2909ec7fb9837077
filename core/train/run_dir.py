"""A training run's directory, and loading a run back.

RUN/recipe.toml        the fully resolved recipe (the run is reproducible from it)
RUN/tokenizer.json     the task's tokenizer, copied so the run does not depend on a cache
RUN/metrics.jsonl      one JSON object per logged step, validation pass and stage switch
RUN/checkpoints/       step-NNNNNNNN/ (safetensors + json), latest
RUN/summary.json       written when the run ends
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import attrs
import torch

from ..errors import MiraslabError
from ..recipe.resolve import load_recipe, recipe_to_dict
from ..recipe.schema import Recipe
from ..recipe.toml_writer import dumps

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
        self.path.mkdir(parents=True, exist_ok=True)
        self.recipe_path.write_text(dumps(recipe_to_dict(recipe)))

    def load_recipe(self) -> Recipe:
        if not self.recipe_path.exists():
            raise MiraslabError(f"{self.path}: no {RECIPE_FILE} here; is this a miraslab run directory?")
        return load_recipe(self.recipe_path)

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(_finite(record)) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Forget what was logged after ``step`` (a resume from there logs it again)."""
        if not self.metrics_path.exists():
            return
        kept = [
            line
            for line in self.metrics_path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def write_summary(self, summary: dict[str, Any]) -> None:
        (self.path / SUMMARY_FILE).write_text(json.dumps(_finite(summary), indent=2) + "\n")


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
    model = build_model(recipe)
    state = load_checkpoint(Path(checkpoint) if checkpoint else run.path)
    model.load_state_dict(state.model)
    model.to(device).eval()
    tokenizer = None
    if (run.path / TOKENIZER_FILE).exists():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(run.path / TOKENIZER_FILE))
    return LoadedRun(model, tokenizer, recipe, state.step)
