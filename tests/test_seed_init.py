"""``[model.init]``: a miraslab model started from a local Llama-family checkpoint.

The checkpoints are tiny random ``LlamaForCausalLM`` models built and saved here, offline.
Tolerance: the seeded attention model is the same float32 computation as transformers' Llama
on the same weights (RoPE's angles in float32 on both sides), so its logits equal the
checkpoint's to 3e-5 of their largest magnitude (2e-6 measured; tests/tolerance.py); a wrong
pairing of RoPE channels, a misplaced norm or kv head is off by a sizeable fraction of it
(an unseeded model by 0.99).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch
from markdown_blocks import fenced_blocks
from tolerance import assert_close_to_scale
from transformers import LlamaConfig, LlamaForCausalLM

from miraslab.cli import main
from miraslab.errors import RecipeError
from miraslab.hf.llama_init import REPORT_FILE, seed_model
from miraslab.model.language_model import LanguageModel
from miraslab.preflight import seed_competition
from miraslab.recipe.resolve import load_recipe, recipe_from_dict
from miraslab.train.checkpoint import load_checkpoint
from miraslab.train.run_dir import RunDir
from miraslab.train.trainer import Trainer

VOCAB, WIDTH, HIDDEN, LAYERS, HEADS = 96, 64, 128, 2, 4
# the checkpoints' conventions, which the recipes below state as theirs
MODEL = {
    "vocab_size": VOCAB,
    "d_model": WIDTH,
    "n_layers": LAYERS,
    "n_heads": HEADS,
    "d_ff": HIDDEN,
    "norm_eps": 1e-5,
    "attention": {"rope_base": 5000.0},
}
CHECKPOINTS = {
    "gqa_untied": {"num_key_value_heads": 2, "tie_word_embeddings": False},
    "mha_tied": {"num_key_value_heads": HEADS, "tie_word_embeddings": True},
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def save_llama(directory, kv_heads: int, tied: bool) -> LlamaForCausalLM:
    """A random Llama with weights large enough that attention is far from uniform and every
    RMSNorm weight differs from 1 (a swapped or dropped norm then changes the logits)."""
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        intermediate_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=kv_heads,
        rms_norm_eps=1e-5,
        rope_theta=5000.0,
        tie_word_embeddings=tied,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.copy_(1 + 0.5 * torch.randn_like(parameter))
            else:
                parameter.normal_(0, 1.5 / parameter.shape[-1] ** 0.5)
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def llama(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    options = CHECKPOINTS[request.param]
    model = save_llama(directory, options["num_key_value_heads"], options["tie_word_embeddings"])
    return directory, model, options["tie_word_embeddings"]


@pytest.fixture(scope="module")
def gqa_llama(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gqa")
    return directory, save_llama(directory, 2, tied=False)


def seeded(directory, tied: bool = False, **model: object):
    table = {**MODEL, "layout": "attention", "tie_embeddings": tied, **model}
    table["init"] = {"from": str(directory), **table.get("init", {})}
    recipe = recipe_from_dict({"model": table})
    torch.manual_seed(1)
    network = LanguageModel(recipe.model).eval()
    return network, seed_model(network, recipe.model.init)


def test_an_attention_model_seeded_from_a_llama_checkpoint_gives_its_logits(llama):
    directory, hf, tied = llama
    model, report = seeded(directory, tied=tied)
    ids = torch.randint(0, VOCAB, (2, 37), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = hf(ids).logits
        assert_close_to_scale(model(ids), expected, 3e-5, "seeded logits")
        unseeded = LanguageModel(model.spec).eval()(ids)
    assert (unseeded - expected).abs().max() > 0.1 * expected.abs().max()  # the check can fail
    assert report.kept == [] and report.unused == [] and report.differences == []
    mapped = {entry["miraslab"]: entry["hf"] for entry in report.mapped}
    assert mapped["blocks.1.attn.out_proj.weight"] == "layers.1.self_attn.o_proj.weight"
    assert mapped["blocks.0.ffn.w3.weight"] == "layers.0.mlp.up_proj.weight"
    assert mapped["head.weight" if not tied else "embed.weight"] == (
        "lm_head.weight" if not tied else "embed_tokens.weight"
    )


def test_from_is_relative_to_the_recipe_file_that_sets_it(gqa_llama, tmp_path, monkeypatch):
    directory, _ = gqa_llama
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (tmp_path / "hf").symlink_to(directory)
    (recipes / "seeded.toml").write_text('[model]\nlayout = "attention"\n[model.init]\nfrom = "../hf"\n')
    monkeypatch.chdir(recipes)  # not where the path is relative to
    assert load_recipe(recipes / "seeded.toml").model.init.from_ == str(tmp_path / "hf")
    monkeypatch.chdir(tmp_path)  # --set is relative to the working directory
    assert load_recipe(recipes / "seeded.toml", ["model.init.from=hf"]).model.init.from_ == str(
        tmp_path / "hf"
    )


def test_a_shape_mismatch_is_refused_in_one_line_naming_the_tensor_and_both_shapes(gqa_llama):
    directory, _ = gqa_llama
    with pytest.raises(RecipeError) as caught:
        seeded(directory, d_ff=192)
    message = str(caught.value)
    assert "\n" not in message
    assert (
        f"{directory / 'model.safetensors'}: model.layers.0.mlp.gate_proj.weight has shape [128, 64]"
        in message
    )
    assert "the model's blocks.0.ffn.w1.weight [192, 64] (and 5 more tensors)" in message


def test_a_convention_that_differs_is_refused_unless_strict_is_false(gqa_llama):
    directory, _ = gqa_llama
    with pytest.raises(RecipeError) as caught:
        seeded(directory, norm_eps=1e-6)
    assert str(caught.value) == (
        f"{directory / 'config.json'}: rms_norm_eps is 1e-05, the recipe's model.norm_eps 1e-06; "
        "set model.norm_eps = 1e-05 (or model.init.strict = false loads it anyway)"
    )
    _, report = seeded(directory, norm_eps=1e-6, init={"strict": False})
    assert len(report.mapped) == 21 and report.differences == [
        "rms_norm_eps is 1e-05, the recipe's model.norm_eps 1e-06; set model.norm_eps = 1e-05"
    ]


def test_memory_from_mlp_starts_each_memorys_w_init_from_the_same_layers_mlp(gqa_llama):
    """A gated_mlp memory one head wide, expansion intermediate / d_model: its W_init (w1, w3, w2)
    is the layer's (gate, up, down), exactly."""
    directory, hf = gqa_llama
    memory = {"heads": 1, "memory": {"name": "gated_mlp", "expansion": HIDDEN // WIDTH}, "chunk_size": 8}
    model, report = seeded(
        directory,
        layout="mag",
        attention={"rope_base": 5000.0, "window": 8},
        memory=memory,
        init={"memory_from_mlp": True},
    )
    for layer in range(LAYERS):
        init = model.blocks[layer].memory.memory.rule.arch.init
        mlp = hf.model.layers[layer].mlp
        for ours, theirs in (("w1", mlp.gate_proj), ("w3", mlp.up_proj), ("w2", mlp.down_proj)):
            assert torch.equal(init[ours][0], theirs.weight), f"layer {layer} {ours}"
    assert not any(".arch.init." in name for name in report.kept)
    with pytest.raises(
        RecipeError, match=r"one head of blocks\.0\.memory\.memory\.rule\.arch\.init\.w1 \[256, 64\]"
    ):
        seeded(
            directory,
            layout="mag",
            attention={"rope_base": 5000.0, "window": 8},
            memory={**memory, "memory": {"name": "gated_mlp", "expansion": 4}},
            init={"memory_from_mlp": True},
        )
    with pytest.raises(RecipeError, match="the memory's W_init 'w' has no MLP counterpart"):
        seeded(
            directory,
            layout="mag",
            attention={"rope_base": 5000.0, "window": 8},
            memory={**memory, "memory": "linear"},
            init={"memory_from_mlp": True},
        )


def write_mqar_recipe(directory, seed_from=None) -> object:
    """A MAG memory recipe of the checkpoints' sizes on MQAR (token ids below their vocabulary)."""
    init = f'[model.init]\nfrom = "{seed_from}"\n' if seed_from else ""
    text = (
        textwrap.dedent(f"""
        [model]
        vocab_size = {VOCAB}
        d_model = {WIDTH}
        n_layers = {LAYERS}
        n_heads = {HEADS}
        d_ff = {HIDDEN}
        norm_eps = 1e-5
        tie_embeddings = false
        layout = "mag"
        [model.attention]
        window = 8
        rope_base = 5000.0
        [model.memory]
        chunk_size = 8
        [data]
        task = {{ name = "mqar", vocab_size = {VOCAB}, seq_len = 32, num_kv_pairs = 4, min_query_distance = 9 }}
        seq_len = 32
        [train]
        steps = 3
        batch_size = 4
        lr = 1e-3
        warmup_steps = 0
        log_every = 1
        eval_every = 3
        eval_batches = 1
        checkpoint_every = 3
    """)
        + init
    )
    path = directory / "mqar.toml"
    path.write_text(text)
    return path


def test_a_memory_recipe_seeded_from_it_trains_and_reports_its_memory_as_kept(gqa_llama, tmp_path):
    directory, _ = gqa_llama
    recipe = load_recipe(write_mqar_recipe(tmp_path, directory))
    summary = Trainer(recipe, tmp_path / "run", show_progress=False).run()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines if "loss" in line]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert summary["step"] == 3
    report = json.loads((tmp_path / "run" / REPORT_FILE).read_text())
    mapped = {entry["miraslab"] for entry in report["mapped"]}
    assert {"blocks.0.mix_norm.weight", "blocks.1.attn.k_proj.weight", "blocks.1.ffn.w2.weight"} <= mapped
    assert "blocks.0.memory.memory.rule.arch.init.w1" in report["kept"]
    assert "blocks.1.gate.log_gain" in report["kept"]
    assert next(line for line in lines if line.get("event") == "seed_init")["mapped"] == len(mapped)


def test_a_seeded_run_resumes_with_its_seed_moved(gqa_llama, tmp_path):
    """model.init.* is safe to change on resume: the run's own checkpoint replaces the seed."""
    import shutil

    directory, _ = gqa_llama
    moved = shutil.copytree(directory, tmp_path / "moved")
    recipe = load_recipe(write_mqar_recipe(tmp_path, directory))
    Trainer(recipe, tmp_path / "run", show_progress=False, max_steps=2).run()
    saved = tmp_path / "run" / "recipe.toml"
    saved.write_text(saved.read_text().replace(str(directory), str(moved)))
    summary = Trainer(
        RunDir(tmp_path / "run").load_recipe(), tmp_path / "run", resume=True, show_progress=False
    ).run()
    assert summary["step"] == 3


def test_a_run_from_an_hf_init_from_starts_from_the_checkpoints_weights(gqa_llama, tmp_path):
    """--init-from a Hugging Face directory reads it as [model.init]; step 0's checkpoint holds it."""
    directory, hf = gqa_llama
    recipe = load_recipe(write_mqar_recipe(tmp_path))
    Trainer(recipe, tmp_path / "run", show_progress=False, init_from=directory, max_steps=0).run()
    weights = load_checkpoint(tmp_path / "run").model
    assert torch.equal(weights["embed.weight"], hf.model.embed_tokens.weight)
    expected_k = (
        hf.model.layers[1].self_attn.k_proj.weight.unflatten(0, (2, -1)).repeat_interleave(2, 0).flatten(0, 1)
    )
    assert torch.equal(weights["blocks.1.attn.k_proj.weight"], expected_k)
    assert (tmp_path / "run" / REPORT_FILE).is_file()


def test_the_preflight_seed_competition_runs_from_model_init_against_the_same_recipe_unseeded(
    gqa_llama, tmp_path
):
    directory, _ = gqa_llama
    recipe_path = write_mqar_recipe(tmp_path, directory)
    result = seed_competition(recipe_path, [], tmp_path / "gate", 2, None)
    assert result.status in ("pass", "fail") and str(directory) in result.summary
    assert (tmp_path / "gate" / "seeded" / REPORT_FILE).is_file()
    assert not (tmp_path / "gate" / "random" / REPORT_FILE).exists()
    skipped = seed_competition(write_mqar_recipe(tmp_path / "gate"), [], tmp_path / "skip", 2, None)
    assert skipped.status == "skip"


def test_a_run_whose_recipe_does_not_fit_the_checkpoint_is_refused_before_its_directory_exists(
    gqa_llama, tmp_path
):
    directory, _ = gqa_llama
    recipe = load_recipe(write_mqar_recipe(tmp_path, directory), ["model.d_ff=192"])
    with pytest.raises(RecipeError, match=r"gate_proj\.weight has shape \[128, 64\]"):
        Trainer(recipe, tmp_path / "run", show_progress=False).run()
    assert not (tmp_path / "run" / "recipe.toml").exists()  # the same --out works once it is fixed


def test_recipe_validate_reads_the_checkpoint_and_says_what_it_maps(gqa_llama, tmp_path, capsys):
    directory, _ = gqa_llama
    path = write_mqar_recipe(tmp_path, directory)
    assert main(["recipe", "validate", str(path)]) == 0
    assert (
        f"weights from {directory}: 21 tensors mapped, 30 left at their random init"
        in capsys.readouterr().out
    )
    assert main(["recipe", "validate", str(path), "--set", "model.attention.rope_base=10000.0"]) == 2
    assert "rope_theta is 5000, the recipe's model.attention.rope_base 10000" in capsys.readouterr().err


def test_the_ecosystem_pages_recipe_loads_with_from_relative_to_its_file(tmp_path):
    """docs/ecosystem.md's [model.init] recipe, saved where its bash block keeps it."""
    page = Path(__file__).resolve().parents[1] / "docs" / "ecosystem.md"
    text = next(
        text for language, text in fenced_blocks(page) if language == "toml" and "[model.init]" in text
    )
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "smollm2-mag.toml").write_text(text)
    recipe = load_recipe(tmp_path / "recipes" / "smollm2-mag.toml")
    assert recipe.model.init.from_ == str(tmp_path / "checkpoints" / "SmolLM2-135M")
    assert recipe.model.init.strict and not recipe.model.init.memory_from_mlp
    assert (recipe.model.d_model, recipe.model.n_heads, recipe.model.d_ff) == (576, 9, 1536)
