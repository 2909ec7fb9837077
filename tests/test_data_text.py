"""The ``text`` task: documents, tokenizer, packing, order, resume and process sharding.

Everything runs offline on tiny corpora written to tmp_path (or a few standard-library
files), with the real ``datasets`` and ``tokenizers``; a fixture makes any network
connection fail, so a test that touched the hub would fail rather than hang.
"""

from __future__ import annotations

import json
import socket
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import miraslab
from miraslab.cli import main
from miraslab.data.default_corpus import EXCLUDED_DIRECTORIES, StdlibCorpus, stdlib_root
from miraslab.data.document_order import DocumentOrder
from miraslab.data.sources import HubDataset
from miraslab.data.tokenizer_training import cached_tokenizer
from miraslab.errors import RecipeError
from miraslab.plugins.task.text import TextParams, TextTask, is_local

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "memory",
    "gate",
    "retention",
    "chunk",
    "shard",
    "token",
    "über",
    "記憶",
    "∇ℓ",
]
DOCS = [
    f"document {i}: " + " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(4 + i % 9)) for i in range(40)
]
SMALL = {"vocab_size": 300, "val_fraction": 0.25}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network, and a fresh miraslab cache for each test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("tests must not use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("MIRASLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS)))
    return path


def text_task(dataset: str | Path, **params: object) -> TextTask:
    return TextTask(TextParams(dataset=str(dataset), **{**SMALL, **params}))  # type: ignore[arg-type]


def take(batches, n: int) -> list[torch.Tensor]:
    return [next(batches) for _ in range(n)]


def all_documents(task: TextTask) -> list[str]:
    return [text for shard in range(task.source.num_shards) for text in task.source.documents(shard)]


def order_of(task: TextTask, split: str, seed: int) -> DocumentOrder:
    p = task.params
    return DocumentOrder(
        task.source, split, seed=seed, val_fraction=p.val_fraction, shuffle_buffer=p.shuffle_buffer
    )


# --- the default corpus ------------------------------------------------------------------


def test_default_corpus_is_the_sorted_standard_library_without_tests_or_packages() -> None:
    corpus = StdlibCorpus()
    relative = [f.relative_to(stdlib_root()).as_posix() for f in corpus.files]
    assert relative == sorted(relative)
    assert "os.py" in relative and "json/decoder.py" in relative
    assert not any(set(r.split("/")[:-1]) & EXCLUDED_DIRECTORIES for r in relative)
    assert next(corpus.documents(relative.index("os.py"))).startswith('r"""OS routines')


def test_max_documents_keeps_the_first_documents_of_the_corpus() -> None:
    task = TextTask(TextParams(max_documents=3))
    first = StdlibCorpus().files[:3]
    assert all_documents(task) == [f.read_text(encoding="utf-8") for f in first]


# --- reading local files with HF datasets ------------------------------------------------


def test_jsonl_parquet_and_txt_files_are_read_as_documents(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[:3]))
    pq.write_table(pa.table({"text": DOCS[3:6], "n": [3, 4, 5]}), tmp_path / "b.parquet")
    (tmp_path / "c.txt").write_text("first paragraph\nstill first\n\nsecond paragraph\n")
    task = text_task(tmp_path / "*")
    assert task.source.num_shards == 3
    assert all_documents(task) == [*DOCS[:6], "first paragraph\nstill first", "second paragraph\n"]


def test_txt_sample_by_document_reads_each_file_whole(tmp_path: Path) -> None:
    (tmp_path / "book.txt").write_text("one\n\ntwo\n")
    assert all_documents(text_task(tmp_path / "book.txt", sample_by="document")) == ["one\n\ntwo\n"]


def test_a_directory_means_every_supported_file_inside_it(tmp_path: Path, jsonl: Path) -> None:
    (tmp_path / "notes.md").write_text("not data")
    assert all_documents(text_task(tmp_path)) == DOCS


def test_hub_datasets_are_streamed_shard_by_shard(tmp_path: Path) -> None:
    # load_dataset treats a local dataset directory like a hub repository, offline
    for part in range(3):
        pq.write_table(pa.table({"text": DOCS[part * 2 : part * 2 + 2]}), tmp_path / f"part-{part}.parquet")
    hub = HubDataset(str(tmp_path), config="", text_field="text")
    assert hub.num_shards == 3
    assert [list(hub.documents(shard)) for shard in range(3)] == [DOCS[0:2], DOCS[2:4], DOCS[4:6]]


def test_hub_names_are_not_mistaken_for_local_paths() -> None:
    assert not is_local("HuggingFaceFW/fineweb-edu")
    assert is_local("data/*.parquet") and is_local("corpus.jsonl") and is_local("files:HuggingFaceFW")


# --- the tokenizer ------------------------------------------------------------------------


def test_tokenizer_trains_once_and_is_then_reused_from_the_cache() -> None:
    calls = []

    def texts() -> list[str]:
        calls.append(1)
        return DOCS

    first, path, trained = cached_tokenizer(
        {"corpus": "DOCS"}, texts, vocab_size=300, special_tokens=["<|eot|>"]
    )
    again, same_path, trained_again = cached_tokenizer(
        {"corpus": "DOCS"}, texts, vocab_size=300, special_tokens=["<|eot|>"]
    )
    assert (trained, trained_again, len(calls)) == (True, False, 1)
    assert same_path == path and again.get_vocab() == first.get_vocab()


def test_text_task_caches_its_trained_tokenizer_under_miraslab_cache(tmp_path: Path) -> None:
    task = TextTask(TextParams(max_documents=6, vocab_size=400))
    task.tokenizer()
    path = task.tokenizer_path()
    assert path.is_relative_to(tmp_path / "cache" / "tokenizers") and path.is_file()
    written = path.stat().st_mtime_ns
    rebuilt = TextTask(TextParams(max_documents=6, vocab_size=400))
    assert rebuilt.tokenizer_path() == path and rebuilt.vocab_size() == task.vocab_size()
    assert path.stat().st_mtime_ns == written  # reused, not retrained
    assert TextTask(TextParams(max_documents=6, vocab_size=500)).tokenizer_path() != path


def test_trained_tokenizer_round_trips_any_text_and_cannot_be_forged_a_separator(jsonl: Path) -> None:
    tokenizer = text_task(jsonl).tokenizer()
    text = "über 記憶 ∇ℓ\ttabs and \x00 bytes <|endoftext|> spelled out"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    assert tokenizer.token_to_id("<|endoftext|>") not in ids


def test_a_given_tokenizer_file_or_directory_is_used(tmp_path: Path, jsonl: Path) -> None:
    trained = text_task(jsonl).tokenizer()
    (tmp_path / "tok").mkdir()
    trained.save(str(tmp_path / "tok" / "tokenizer.json"))
    for given in (tmp_path / "tok" / "tokenizer.json", tmp_path / "tok"):
        task = text_task(jsonl, tokenizer=str(given))
        assert task.tokenizer().get_vocab() == trained.get_vocab()
        assert task.tokenizer_path() == tmp_path / "tok" / "tokenizer.json"


# --- packing --------------------------------------------------------------------------------


def test_packing_keeps_every_token_and_puts_the_separator_between_documents(jsonl: Path) -> None:
    task = text_task(jsonl)
    tokenizer = task.tokenizer()
    separator = tokenizer.token_to_id("<|endoftext|>")
    epoch = list(order_of(task, "train", seed=3).epoch_documents(0))
    expected = [t for doc in epoch for t in [*tokenizer.encode(doc, add_special_tokens=False).ids, separator]]
    rows = torch.cat(take(task.batches("train", seq_len=6, batch_size=3, seed=3), 60)).flatten().tolist()
    assert len(rows) > len(expected)
    assert rows[: len(expected)] == expected
    pieces = [tokenizer.decode(p) for p in _split_on(rows[: len(expected)], separator)]
    assert pieces == epoch


def _split_on(ids: list[int], separator: int) -> list[list[int]]:
    pieces: list[list[int]] = [[]]
    for token in ids:
        if token == separator:
            pieces.append([])
        else:
            pieces[-1].append(token)
    return pieces[:-1]  # the stream ends with a separator


def test_batches_have_batch_size_rows_of_seq_len_plus_one_tokens(jsonl: Path) -> None:
    task = text_task(jsonl)
    batch = next(task.batches("train", seq_len=5, batch_size=4, seed=0))
    assert batch.shape == (4, 6) and batch.dtype == torch.long
    assert batch.min() >= 0 and batch.max() < task.vocab_size()


# --- order, epochs and splits ------------------------------------------------------------


def test_the_same_seed_gives_the_same_batches_and_another_seed_does_not(jsonl: Path) -> None:
    task = text_task(jsonl)

    def run(seed: int) -> torch.Tensor:
        return torch.stack(take(task.batches("train", seq_len=8, batch_size=2, seed=seed), 5))

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_each_epoch_has_every_document_once_in_a_new_order(jsonl: Path) -> None:
    order = order_of(text_task(jsonl), "train", seed=0)
    first, second = list(order.epoch_documents(0)), list(order.epoch_documents(1))
    assert sorted(first) == sorted(second) and len(set(first)) == len(first)
    assert first != second
    stream = [text for _, text in islice(order.documents(), 3 * len(first))]
    assert stream == first + second + list(order.epoch_documents(2))  # never stops


def test_shuffle_buffer_one_keeps_the_file_order_within_each_file(jsonl: Path) -> None:
    train = list(order_of(text_task(jsonl, shuffle_buffer=1), "train", seed=5).epoch_documents(0))
    assert train == [d for d in DOCS if d in set(train)]


def test_train_and_val_documents_are_disjoint_and_together_all_documents(jsonl: Path) -> None:
    task = text_task(jsonl)
    train = set(order_of(task, "train", seed=0).epoch_documents(0))
    val = set(order_of(task, "val", seed=0).epoch_documents(0))
    assert train and val and not train & val
    assert train | val == set(DOCS)
    assert val == set(order_of(task, "val", seed=9).epoch_documents(0))  # the split ignores the seed


# --- exact resume -------------------------------------------------------------------------


@pytest.mark.parametrize("done", [0, 1, 7])
def test_resuming_from_state_dict_continues_exactly(jsonl: Path, done: int) -> None:
    task = text_task(jsonl)
    original = task.batches("train", seq_len=31, batch_size=3, seed=2)
    take(original, done)
    state = json.loads(json.dumps(original.state_dict()))  # as a checkpoint stores it
    resumed = text_task(jsonl).batches("train", seq_len=31, batch_size=3, seed=2, state=state)
    assert all(torch.equal(a, b) for a, b in zip(take(original, 12), take(resumed, 12), strict=True))
    assert resumed.state_dict() == original.state_dict()
    assert resumed.state_dict()["position"][0] >= 1  # the comparison crossed into a new epoch


def test_resuming_with_another_batch_shape_continues_the_same_token_stream(jsonl: Path) -> None:
    task = text_task(jsonl)
    original = task.batches("train", seq_len=9, batch_size=4, seed=0)
    next(original)
    state = original.state_dict()
    reshaped = task.batches("train", seq_len=4, batch_size=2, seed=0, state=state)  # 10 tokens a step
    assert torch.equal(next(reshaped).flatten(), next(original)[:1].flatten())


def test_resuming_with_another_seed_is_an_error(jsonl: Path) -> None:
    task = text_task(jsonl)
    batches = task.batches("train", seq_len=4, batch_size=2, seed=0)
    next(batches)
    with pytest.raises(RecipeError, match="seed 0"):
        task.batches("train", seq_len=4, batch_size=2, seed=1, state=batches.state_dict())


# --- processes ------------------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [2, 4])
def test_each_rank_yields_its_rows_of_the_single_process_batch(jsonl: Path, world_size: int) -> None:
    task = text_task(jsonl)
    single = take(task.batches("train", seq_len=7, batch_size=4, seed=0), 6)
    per_rank = [
        take(task.batches("train", seq_len=7, batch_size=4, seed=0, rank=r, world_size=world_size), 6)
        for r in range(world_size)
    ]
    for step, whole in enumerate(single):
        assert torch.equal(torch.cat([rank[step] for rank in per_rank]), whole)


def test_the_data_state_is_shared_by_all_ranks_and_resumes_on_another_world_size(jsonl: Path) -> None:
    task = text_task(jsonl)
    ranks = [task.batches("train", seq_len=7, batch_size=4, seed=0, rank=r, world_size=2) for r in range(2)]
    for batches in ranks:
        take(batches, 3)
    assert ranks[0].state_dict() == ranks[1].state_dict()
    single = task.batches("train", seq_len=7, batch_size=4, seed=0)
    take(single, 3)
    resumed = task.batches("train", seq_len=7, batch_size=4, seed=0, state=ranks[1].state_dict())
    assert torch.equal(next(resumed), next(single))


def test_a_batch_size_that_does_not_split_among_processes_is_an_error(jsonl: Path) -> None:
    with pytest.raises(
        RecipeError, match=r"train.batch_size: expected a multiple of the number of processes \(3\)"
    ):
        text_task(jsonl).batches("train", seq_len=4, batch_size=4, seed=0, rank=0, world_size=3)


# --- errors a researcher reads ------------------------------------------------------------


def test_a_glob_that_matches_no_file_is_a_one_line_error(tmp_path: Path) -> None:
    pattern = str(tmp_path / "data" / "*.parquet")
    with pytest.raises(RecipeError) as error:
        text_task(pattern)
    assert str(error.value) == f'data.task.dataset: no files match "{pattern}"'


def test_a_missing_tokenizer_file_is_an_error(jsonl: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r'^data.task.tokenizer: no file ".*missing.json"'):
        text_task(jsonl, tokenizer=str(tmp_path / "missing.json"))


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_an_absent_text_field_is_an_error_naming_the_file_and_its_fields(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"rows.{suffix}"
    if suffix == "jsonl":
        path.write_text(json.dumps({"content": "x", "id": 1}) + "\n")
    else:
        pq.write_table(pa.table({"content": ["x"], "id": [1]}), path)
    with pytest.raises(RecipeError) as error:
        text_task(path).tokenizer()
    assert str(error.value) == f'data.task.text_field: no field "text" in {path}; its fields are: content, id'


def test_a_hub_dataset_while_offline_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RecipeError) as error:
        text_task("HuggingFaceFW/fineweb-edu")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith('data.task.dataset: "HuggingFaceFW/fineweb-edu" is a Hugging Face hub dataset')


def test_an_empty_val_split_is_an_error_naming_val_fraction(jsonl: Path) -> None:
    batches = text_task(jsonl, val_fraction=0.0).batches("val", seq_len=4, batch_size=2, seed=0)
    with pytest.raises(
        RecipeError, match=r"^data.task.val_fraction: no document of .* falls in the val split"
    ):
        next(batches)


def test_a_separator_the_tokenizer_lacks_is_an_error(jsonl: Path, tmp_path: Path) -> None:
    text_task(jsonl).tokenizer().save(str(tmp_path / "tokenizer.json"))
    task = text_task(jsonl, tokenizer=str(tmp_path / "tokenizer.json"), separator="</s>")
    with pytest.raises(RecipeError, match=r'^data.task.separator: "</s>" is not a token of'):
        task.tokenizer()


# --- through recipes and the command line -----------------------------------------------


def test_the_text_task_is_built_from_a_recipe_through_the_registry(write_recipe, jsonl: Path) -> None:
    path = write_recipe(
        "lm.toml", f'[data]\ntask = {{ name = "text", dataset = "{jsonl}", vocab_size = 300 }}\n'
    )
    task = miraslab.build_component(miraslab.load_recipe(path).data.task)
    assert isinstance(task, TextTask) and task.vocab_size() <= 300


def test_tokenizer_train_command_trains_then_reuses_and_saves_a_copy(
    write_recipe, jsonl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe("lm.toml", f'[data]\ntask = {{ name = "text", dataset = "{jsonl}" }}\n')
    args = ["tokenizer", "train", str(recipe), "--set", "data.task.vocab_size=300", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert main([*args, "--out", str(tmp_path / "out") + "/"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert (first["how"], second["how"]) == ("trained now", "reused from the cache")
    assert first["path"] == second["path"] and first["vocab_size"] == second["vocab_size"] <= 300
    assert Path(second["out"]) == tmp_path / "out" / "tokenizer.json" and Path(second["out"]).is_file()


def test_tokenizer_train_command_reports_a_bad_dataset_in_one_line(
    write_recipe, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(
        "lm.toml", f'[data]\ntask = {{ name = "text", dataset = "{tmp_path}/none/*.txt" }}\n'
    )
    assert main(["tokenizer", "train", str(recipe)]) == 2
    assert capsys.readouterr().err == f'error: data.task.dataset: no files match "{tmp_path}/none/*.txt"\n'


def test_the_separator_marks_each_document_start_and_the_split_rows_are_the_documents(jsonl: Path) -> None:
    from miraslab.data.batch import IGNORE, TrainingBatch
    from miraslab.data.documents import DOC_START, mark_documents, split_documents

    task = text_task(jsonl)
    tokenizer, separator = task.tokenizer(), task.document_separator()
    assert separator == tokenizer.token_to_id("<|endoftext|>")
    epoch = list(order_of(task, "train", seed=3).epoch_documents(0))
    batches = task.batches("train", seq_len=120, batch_size=2, seed=3)
    marked = mark_documents(TrainingBatch.of(next(batches)), separator)
    starts = marked.extras[DOC_START]
    assert not starts[0, 0]  # the stream's first document has no separator before it
    assert not starts[1, 0] or marked.inputs[1, 0] == separator  # a continuation is not a start
    split = split_documents(marked)
    texts = [
        tokenizer.decode([t for t, y in zip(row, target, strict=True) if y != IGNORE and t != separator])
        for row, target in zip(split.inputs.tolist(), split.targets.tolist(), strict=True)
    ]
    whole = [t for i, t in enumerate(texts) if i < starts[0].sum()]  # row 0's segments, last one cut
    assert len(whole) >= 3 and whole == epoch[: len(whole)]
