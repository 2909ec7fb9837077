"""The ``niah`` task: a single needle in a haystack (RULER's S-NIAH), read back token by token.

Each example is decoded from the definition (needle marker at depth × haystack length, its
symbols after it, the query marker and the teacher-forced answer at the end, labels one
position before each answer symbol is written) rather than with the generator's helpers.
"""

from __future__ import annotations

import pytest
import torch

import miraslab
from miraslab.errors import RecipeError
from miraslab.plugins.task.niah import NiahParams, NiahTask

V, L = 64, 64
DIGITS, DASH, NEEDLE, QUERY, FILLER = range(10), 16, 17, 18, 19  # the documented id layout


def niah(**params: object) -> NiahTask:
    return NiahTask(NiahParams(**{"vocab_size": V, "seq_len": L, **params}))  # type: ignore[arg-type]


def batches(task: NiahTask, *, batch_size: int = 8, seed: int = 0, split: str = "train", **kwargs: object):
    return task.batches(split, seq_len=task.params.seq_len, batch_size=batch_size, seed=seed, **kwargs)


def batch(task: NiahTask, **kwargs: object) -> dict[str, torch.Tensor]:
    return next(batches(task, **kwargs))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("needle", "n"), [("passkey", 5), ("number", 7)])
def test_the_needle_sits_at_its_depth_and_the_query_asks_for_it_symbol_by_symbol(needle: str, n: int) -> None:
    depths = (0.0, 0.25, 0.5, 1.0)
    example = batch(niah(needle=needle, depths=depths), batch_size=4)
    haystack = L - (1 + n) - n  # the needle marker and n symbols, the query marker and n − 1 symbols
    for row, depth in enumerate(depths):
        inputs, labels, distance = (example[k][row].tolist() for k in ("inputs", "labels", "distance"))
        at = round(depth * haystack)
        assert inputs[at] == NEEDLE and inputs.count(NEEDLE) == 1
        symbols = inputs[at + 1 : at + 1 + n]
        assert all(s in DIGITS for s in symbols) and symbols[0] != 0  # no leading zero
        query = L - n
        assert inputs[query] == QUERY and inputs[query + 1 :] == symbols[:-1]
        asked = [t for t in range(L) if labels[t] != -100]
        assert asked == list(range(query, L)) and [labels[t] for t in asked] == symbols
        # each symbol asked (query + j) that far after it was written (at + 1 + j)
        assert [distance[t] for t in asked] == [query - at - 1] * n
        assert sum(distance) == (query - at - 1) * n  # 0 everywhere else
        filler = inputs[:at] + inputs[at + 1 + n : query]
        assert len(filler) == haystack and min(filler) >= FILLER


def test_the_noise_haystack_repeats_one_period_and_the_random_one_draws_every_filler() -> None:
    noise = batch(niah(depths=(1.0,), seq_len=256), batch_size=2)["inputs"][:, :200]
    period = noise[0, :16]
    assert torch.equal(noise[0], period.repeat(13)[:200]) and torch.equal(noise[0], noise[1])
    assert len(set(period.tolist())) == 16 and min(period.tolist()) >= FILLER
    fillers = batch(niah(depths=(1.0,), haystack="random", seq_len=256), batch_size=16)["inputs"][:, :200]
    assert set(fillers.flatten().tolist()) == set(range(FILLER, V))


def test_a_uuid_is_32_hex_digits_in_8_4_4_4_12_and_only_the_digits_are_asked() -> None:
    example = batch(niah(needle="uuid", depths=(0.0,), seq_len=96), batch_size=1)
    inputs, labels = example["inputs"][0].tolist(), example["labels"][0].tolist()
    assert inputs[0] == NEEDLE
    written = inputs[1:37]
    assert [i for i, t in enumerate(written) if t == DASH] == [8, 13, 18, 23]
    digits = [t for t in written if t != DASH]
    assert len(digits) == 32 and all(0 <= t < 16 for t in digits)
    query = 96 - 36
    assert inputs[query] == QUERY and inputs[query + 1 :] == written[:-1]
    assert [labels[t] for t in range(96) if labels[t] != -100] == digits
    assert all(labels[query + j] == -100 for j in (8, 13, 18, 23))  # a dash is predictable, not asked


def test_without_depths_the_needle_lands_anywhere_and_its_digits_are_uniform_without_a_leading_zero() -> None:
    example = batch(niah(seq_len=128, needle="number"), batch_size=256)
    at = (example["inputs"] == NEEDLE).int().argmax(dim=1)
    assert at.min() < 15 and at.max() > 100 and len(set(at.tolist())) > 60
    digits = example["labels"][example["labels"] != -100].reshape(256, 7)
    assert digits[:, 0].min() == 1 and set(digits[:, 1:].flatten().tolist()) == set(DIGITS)


def test_batches_are_a_function_of_seed_split_and_step_and_resume() -> None:
    task = niah()
    first = batches(task)
    a, b = next(first), next(first)
    assert same(next(batches(task)), a) and not same(a, b)
    assert not same(batch(task, split="val"), a) and not same(batch(task, seed=1), a)
    assert same(next(batches(task, state=first.state_dict())), next(first))
    halves = [next(batches(task, rank=r, world_size=2)) for r in range(2)]
    assert same({k: torch.cat([h[k] for h in halves]) for k in a}, a)
    with pytest.raises(RecipeError, match="niah settings changed"):
        batches(niah(needle="number"), state=first.state_dict())


def byte_level_tokenizer(path, texts: list[str]):
    """A small byte-level BPE (every byte a token, as the text task trains), saved at ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.save(str(path))
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def test_a_tokenizer_writes_rulers_sentences_and_each_symbol_as_its_character(tmp_path) -> None:
    tokenizer = byte_level_tokenizer(
        tmp_path / "tokenizer.json", ["The grass is green. What is the pass key?"] * 20
    )
    task = niah(tokenizer=str(tmp_path / "tokenizer.json"), seq_len=160, depths=(0.5,))
    assert task.vocab_size() == tokenizer.get_vocab_size()
    example = batch(task, batch_size=2)
    text = tokenizer.decode(example["inputs"][0].tolist())
    asked = example["labels"][0][example["labels"][0] != -100].tolist()
    answer = tokenizer.decode(asked)
    assert len(asked) == 5 and answer.isdigit()
    assert f"The pass key is {answer}. Remember it." in text
    assert text.endswith(f"What is the pass key? The pass key is {answer[:-1]}")
    assert text.startswith("The grass is green. The sky is blue.")


def test_a_text_haystack_is_the_documents_of_a_text_task(tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"zebra giraffe document {i} stands here." for i in range(60)))
    tokenizer = byte_level_tokenizer(tmp_path / "tokenizer.json", [corpus.read_text()])
    task = niah(haystack="text", tokenizer=str(tmp_path / "tokenizer.json"), dataset=str(corpus), seq_len=128)
    stream = batches(task, batch_size=2)
    text = tokenizer.decode(next(stream)["inputs"][0].tolist())
    assert "zebra giraffe document" in text and "The pass key is" in text
    assert same(next(batches(task, batch_size=2, state=stream.state_dict())), next(stream))


def test_the_niah_task_is_built_from_a_recipe_through_the_registry(write_recipe) -> None:
    path = write_recipe(
        "niah.toml", '[data]\nseq_len = 64\ntask = { name = "niah", seq_len = 64, vocab_size = 64 }\n'
    )
    task = miraslab.build_component(miraslab.load_recipe(path).data.task)
    assert isinstance(task, NiahTask) and task.vocab_size() == 64 and task.tokenizer() is None


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('needle = "uuid", seq_len = 64', "seq_len"),  # a uuid and its answer need 74 tokens
        ('needle = "uuid", needle_length = 8', "needle_length"),
        ('haystack = "text"', "tokenizer"),
        ("depths = [0.5, 1.5]", "depths"),
    ],
)
def test_a_setting_the_task_cannot_meet_is_one_line_naming_its_key(
    write_recipe, table: str, key: str
) -> None:
    path = write_recipe("bad.toml", f'[data]\ntask = {{ name = "niah", {table} }}\n')
    with pytest.raises(RecipeError) as caught:
        miraslab.load_recipe(path)
    assert f"data.task.{key}" in str(caught.value) and "\n" not in str(caught.value)


def test_a_data_seq_len_other_than_the_tasks_is_an_error_naming_both() -> None:
    with pytest.raises(RecipeError, match=r"data.seq_len: expected the niah task's seq_len \(64\), got 32"):
        niah().batches("train", seq_len=32, batch_size=4, seed=0)
