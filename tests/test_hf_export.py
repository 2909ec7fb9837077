"""``miraslab export RUN --hf DIR``: transformers loads the export, its logits and its
``generate()`` are miraslab's, and the Cache carries the memory and attention state.

Tolerances: the exported model is the same float32 computation on the same weights, so
its logits equal miraslab's to 1e-6 of their largest magnitude; decoding token by token
through the Cache runs the recurrent path against one chunked call, equal to 1e-4 of the
scale (tests/tolerance.py).
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch
from hf_cases import LAYOUT_CASES, tiny_model_table, train_tiny_text_run
from tolerance import assert_close_to_scale
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.cache_utils import Cache

import miraslab
from miraslab.cli import main
from miraslab.generation import generate
from miraslab.hf.cache import MiraslabCache
from miraslab.hf.export import export_model
from miraslab.recipe.resolve import recipe_from_dict


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No hub in these tests; set per test, so the setting does not leak into other modules."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def exported(case: str, tmp_path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(miraslab model, the transformers model loaded back from its export)."""
    recipe = recipe_from_dict({"model": tiny_model_table(case)})
    torch.manual_seed(0)
    model = miraslab.build_model(recipe).eval()
    export_model(model, recipe, tmp_path / "hf")
    return model, AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()


@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_the_exported_model_gives_miraslabs_logits_and_greedy_tokens(case, tmp_path):
    model, hf = exported(case, tmp_path)
    ids = torch.randint(0, 64, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_close_to_scale(hf(ids).logits, model(ids), 1e-6, f"{case}: logits")  # fp32, same weights
    greedy = hf.generate(ids[:1, :5], max_new_tokens=7, do_sample=False)
    assert greedy[0, 5:].tolist() == list(generate(model, ids[:1, :5], 7, temperature=0))


@pytest.mark.parametrize("case", ["mag", "mac", "tnt"])
def test_decoding_through_the_cache_equals_the_full_forward(case, tmp_path):
    _, hf = exported(case, tmp_path)
    ids = torch.randint(0, 64, (2, 13), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = hf(ids, use_cache=False).logits
        out = hf(ids[:, :6], use_cache=True)
        cache, steps = out.cache if "cache" in out else out.past_key_values, [out.logits]
        assert isinstance(cache, Cache) and isinstance(cache, MiraslabCache)
        for t in range(6, 13):
            out = hf(ids[:, t : t + 1], cache=cache)
            steps.append(out.logits)
        assert cache.get_seq_length() == 13
    assert_close_to_scale(torch.cat(steps, dim=1), full, 1e-4, f"{case}: cached decode")


def test_beam_search_reorders_the_state_of_every_block(tmp_path):
    """num_beams selects rows of the Cache: the state stays consistent (the best beam's
    score is the model's own log-probability of its tokens)."""
    _, hf = exported("mag", tmp_path)
    prompt = torch.tensor([[3, 9, 4]])
    out = hf.generate(prompt, max_new_tokens=4, num_beams=3, do_sample=False, output_scores=True,
                      return_dict_in_generate=True, length_penalty=0.0)  # fmt: skip
    sequence = out.sequences[:1]
    with torch.no_grad():
        logp = torch.log_softmax(hf(sequence, use_cache=False).logits.double(), -1)
    expected = sum(float(logp[0, t - 1, sequence[0, t]]) for t in range(3, sequence.shape[1]))
    assert abs(float(out.sequences_scores[0]) - expected) < 1e-4


def test_padding_is_refused_in_one_line(tmp_path):
    _, hf = exported("lmm", tmp_path)
    with pytest.raises(ValueError, match="reads every token"):
        hf(torch.ones(2, 4, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))


@pytest.fixture(scope="module")
def text_export(tmp_path_factory):
    """A real run of the tiny text recipe, exported with the CLI."""
    directory = tmp_path_factory.mktemp("text-run")
    run = train_tiny_text_run(directory)
    assert main(["export", str(run), "--hf", str(directory / "hf")]) == 0
    return run, directory / "hf"


def test_export_writes_a_directory_transformers_loads_with_its_tokenizer(text_export):
    run, hf_dir = text_export
    names = {p.name for p in hf_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert {"configuration_miraslab.py", "modeling_miraslab.py"} <= names
    assert "import miraslab" in (hf_dir / "modeling_miraslab.py").read_text().replace(
        "from miraslab", "import miraslab"
    )
    tokenizer = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=True)
    loaded = miraslab.load_run(run)
    text = "the memory stores keys"
    assert tokenizer(text)["input_ids"] == loaded.tokenizer.encode(text).ids
    assert tokenizer.eos_token == "<|endoftext|>"


def test_greedy_generate_equals_miraslab_generate_token_for_token(text_export, capsys):
    run, hf_dir = text_export
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=True)
    prompt = "the memory"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    tokens = hf.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :]
    hf_text = tokenizer.decode(tokens, skip_special_tokens=True)
    assert main(["generate", str(run), "--prompt", prompt, "--max-tokens", "12", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == prompt + hf_text + "\n"


def test_exporting_into_a_directory_holding_other_files_is_refused(text_export, tmp_path, capsys):
    run, _ = text_export
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["export", str(run), "--hf", str(tmp_path)]) == 2
    assert "is not an export" in capsys.readouterr().err


def test_generate_steps_through_the_decode_step_compiled_when_the_config_asks(tmp_path):
    """``config.compile_decode``: the same greedy tokens as miraslab's eager decode, through
    one compiled step (float32 logits agree to rounding; the tokens are compared)."""
    torch._dynamo.reset()
    model, hf = exported("mag", tmp_path)
    prompt = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(6))
    expected = list(generate(model, prompt, 6, temperature=0))
    hf.config.compile_decode = True
    cache = MiraslabCache(len(hf.model.blocks))
    out = hf.generate(prompt, max_new_tokens=6, do_sample=False, past_key_values=cache)
    assert out[0, 5:].tolist() == expected
    assert cache.decoder is not None and cache.decoder.mode == "compiled", cache.decoder
