"""A resumed text run reads its own tokenizer.json, as the docs promise, not the cache's."""

from __future__ import annotations

import shutil

import pytest
from training_cases import write_corpus, write_recipe

import miraslab
from miraslab.errors import MiraslabError
from miraslab.train.run_dir import RunDir
from miraslab.train.trainer import Trainer


def test_a_resume_does_not_need_the_tokenizer_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MIRASLAB_CACHE", str(cache))
    recipe = miraslab.load_recipe(write_recipe(tmp_path, write_corpus(tmp_path)))
    out = tmp_path / "run"
    Trainer(recipe, out, show_progress=False, max_steps=6).run()
    shutil.rmtree(cache)  # a cleaned cache, or the run copied to another machine
    Trainer(RunDir(out).load_recipe(), out, resume=True, show_progress=False).run()
    assert not any(cache.rglob("tokenizer.json")), "the resume trained a tokenizer again"
    steps = [m["step"] for m in RunDir(out).metrics() if "loss" in m]
    assert steps == list(range(1, 13))


def test_an_infinite_init_std_is_refused_when_the_recipe_is_read(tmp_path):
    path = write_recipe(tmp_path, tmp_path / "unused.txt")
    with pytest.raises(MiraslabError, match=r"model\.init_std"):
        miraslab.load_recipe(path, ["model.init_std=inf"])
