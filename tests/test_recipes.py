"""Every shipped recipe validates, builds shrunk with --set, trains a step's worth of
forward and backward on CPU, and the seed recipes match their reported parameter counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import REPO

from miraslab.model.counting import parameter_report
from miraslab.model.language_model import build_model
from miraslab.recipe.resolve import load_recipe

# recipes/ablations/ holds matrices, not recipes (tests/test_ablation_matrix.py checks them)
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.toml") if not {"base", "ablations"} & set(p.parts))
SHRINK = [
    "model.vocab_size=64",
    "model.d_model=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.d_ff=0",
    "model.memory.heads=0",
    "model.memory.head_dim=0",
    "model.memory.chunk_size=8",
]
# the parameter counts the seed documents report (../shared/seeds/)
REPORTED = {
    "atlas-300m-omega": 389_531_760,
    "tnt-atlas-58m": 58e6,
    "atlas-mag-omega-tiny": 33.7e6,
    "atlas-mag-omega-small": 54.4e6,
    "atlas-mag-omega-medium": 67.0e6,
    "atlas-mag-omega-base": 195.1e6,
}


def shrink(path: Path) -> list[str]:
    text = path.read_text()
    sets = list(SHRINK)
    if "[model.tnt]" in text or "tnt" in path.name:
        # 64: a multiple of the stage-2 local chunk in recipes/papers/tnt.toml too
        sets += ["model.tnt.shard_length=64", "model.tnt.local_chunks=[4]", "model.tnt.global_chunk=8"]
    return sets


def test_there_are_recipes_for_every_seed_paper_model_and_baseline():
    names = {p.stem for p in RECIPES}
    assert set(REPORTED) <= names
    assert {
        "titans-mac",
        "titans-mag",
        "titans-mal",
        "titans-lmm",
        "atlas",
        "omeganet",
        "moneta",
        "yaad",
        "memora",
        "deltanet",
        "gated-deltanet",
        "tnt",
        "transformer",
        "swa",
    } <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_names_its_source_in_a_header_comment(path):
    assert path.read_text().startswith("# ")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_builds_shrunk_and_runs_forward_and_backward(path):
    recipe = load_recipe(path, shrink(path))
    torch.manual_seed(0)
    model = build_model(recipe)
    ids = torch.randint(0, 64, (2, 24))
    logits = model(ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", sorted(REPORTED))
def test_seed_recipes_are_within_5_percent_of_the_reported_parameter_count(name):
    recipe = load_recipe(REPO / "recipes" / "seeds" / f"{name}.toml")
    count = parameter_report(recipe)["param_count"]
    assert abs(count - REPORTED[name]) / REPORTED[name] < 0.05, count
