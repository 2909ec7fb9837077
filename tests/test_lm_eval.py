"""lm-evaluation-harness scores an export with the model's own log-probabilities.

A tiny text run is trained and exported; the test writes a multiple-choice task and a
perplexity task (YAML + JSON lines) and runs the harness offline through its Python API
(``lm_eval.simple_evaluate``, the ``hf`` model, ``trust_remote_code``), then through
``miraslab eval RUN --lm-eval``.

The oracle does not use transformers or the harness: the run loaded by miraslab, its own
tokenizer, ``log_softmax`` in float64 of one unpadded forward per continuation.  The
harness batches requests (batch size 4, right-padded), so equal scores also say the
padding does not reach the earlier logits.  Tolerance: both are the same float32 logits,
so each continuation's summed log-probability agrees to 1e-4 (a few dozen terms of ~1e-6
rounding each); accuracies are compared exactly, after checking that no decision is
closer than the tolerance.
"""

from __future__ import annotations

import json
import math
import re
import textwrap

import pytest

pytest.importorskip("transformers")
pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # lm-eval's transformers backend (its [hf] extra)

import lm_eval
import torch
from hf_cases import train_tiny_text_run

import miraslab
from miraslab.cli import main
from miraslab.hf.harness import task_manager

TOLERANCE = 1e-4

# contexts and choices in the tiny corpus' words; choices of unequal length, so acc_norm
# (log-likelihood per character) can decide otherwise than acc
MULTIPLE_CHOICE = [
    {"context": "the memory stores", "choices": ["keys", "values", "a window of recent tokens"], "answer": 0},
    {"context": "attention reads a", "choices": ["window", "memory", "the keys and values"], "answer": 0},
    {"context": "document 7: the", "choices": ["memory", "tokens", "reads", "attention"], "answer": 0},
    {"context": "keys and", "choices": ["values", "attention reads", "a"], "answer": 0},
    {"context": "a window of recent", "choices": ["tokens", "keys", "stores the memory"], "answer": 0},
    {"context": "while attention", "choices": ["reads", "of", "the memory stores"], "answer": 0},
]
TEXTS = [
    "the memory stores keys and values",
    "while attention reads a window of recent tokens",
    "document 3: a window of the memory",
]


def task_yaml(name: str, data: str, cache: str, body: str) -> str:
    head = f"""
        task: {name}
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
          cache_dir: {cache}
        test_split: test
    """
    return textwrap.dedent(head) + textwrap.dedent(body)


MULTIPLE_CHOICE_BODY = """
    output_type: multiple_choice
    doc_to_text: "{{context}}"
    doc_to_choice: "{{choices}}"
    doc_to_target: "{{answer}}"
    metric_list:
      - metric: acc
      - metric: acc_norm
"""
ROLLING_BODY = """
    output_type: loglikelihood_rolling
    doc_to_text: ""
    doc_to_target: "{{text}}"
    metric_list:
      - metric: word_perplexity
      - metric: byte_perplexity
      - metric: bits_per_byte
"""


@pytest.fixture(scope="module")
def offline():
    """No hub; set only while this module's harness runs, so it does not leak into other modules."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def run_and_tasks(tmp_path_factory, offline):
    """A trained tiny text run, its export, and a directory holding the two tasks."""
    directory = tmp_path_factory.mktemp("lm-eval")
    run = train_tiny_text_run(directory, steps=12)
    assert main(["export", str(run), "--hf", str(directory / "hf")]) == 0
    tasks = directory / "tasks"
    tasks.mkdir()
    cache = directory / "datasets"
    for name, rows, body in (
        ("tiny_choice", MULTIPLE_CHOICE, MULTIPLE_CHOICE_BODY),
        ("tiny_text", [{"text": text} for text in TEXTS], ROLLING_BODY),
    ):
        data = tasks / f"{name}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        (tasks / f"{name}.yaml").write_text(task_yaml(name, str(data), str(cache), body))
    return run, directory / "hf", tasks


@pytest.fixture(scope="module")
def harness(run_and_tasks):
    """The harness's result on both tasks through its Python API, with every sample's responses."""
    _, hf_dir, tasks = run_and_tasks
    manager, names = task_manager(["tiny_choice", "tiny_text"], tasks)
    return lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(hf_dir), "trust_remote_code": True},
        tasks=names,
        task_manager=manager,
        batch_size=4,  # several requests per forward, right-padded to the longest
        device="cpu",
        bootstrap_iters=0,
    )


@pytest.fixture(scope="module")
def oracle(run_and_tasks):
    """log p(continuation | context) from the miraslab model, float64, one unpadded sequence each."""
    run, _, _ = run_and_tasks
    loaded = miraslab.load_run(run)
    model, tokenizer = loaded.model.float().eval(), loaded.tokenizer

    def logprob(context: list[int], continuation: list[int]) -> float:
        ids = torch.tensor([context + continuation])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids)[0].double(), dim=-1)
        return sum(float(logp[len(context) + i - 1, token]) for i, token in enumerate(continuation))

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text).ids

    return logprob, encode, tokenizer.token_to_id("<|endoftext|>")


def oracle_choices(oracle, item: dict) -> list[float]:
    logprob, encode, _ = oracle
    # the harness joins context and choice with its target_delimiter, one space
    return [logprob(encode(item["context"]), encode(" " + choice)) for choice in item["choices"]]


def argmax_with_margin(scores: list[float]) -> int:
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
    assert scores[ranked[0]] - scores[ranked[1]] > 10 * TOLERANCE, f"a near tie decides: {scores}"
    return ranked[0]


def test_multiple_choice_loglikelihoods_and_accuracy_are_the_models_own(harness, oracle):
    samples = sorted(harness["samples"]["tiny_choice"], key=lambda sample: sample["doc_id"])
    assert len(samples) == len(MULTIPLE_CHOICE)
    acc, acc_norm = [], []
    for sample, item in zip(samples, MULTIPLE_CHOICE, strict=True):
        expected = oracle_choices(oracle, item)
        got = [float(ll) for ll, _greedy in sample["filtered_resps"]]
        assert got == pytest.approx(expected, abs=TOLERANCE), item["context"]
        acc.append(argmax_with_margin(expected) == item["answer"])
        per_char = [ll / len(choice) for ll, choice in zip(expected, item["choices"], strict=True)]
        acc_norm.append(argmax_with_margin(per_char) == item["answer"])
    scores = harness["results"]["tiny_choice"]
    assert scores["acc,none"] == sum(acc) / len(acc)
    assert scores["acc_norm,none"] == sum(acc_norm) / len(acc_norm)


def test_perplexities_are_the_models_own(harness, oracle):
    """A rolling log-likelihood reads the text after the tokenizer's bos (here the separator);
    each text fits one window of max_length (the training seq_len, 32)."""
    logprob, encode, separator = oracle
    total = 0.0
    for text in TEXTS:
        assert len(encode(text)) < 32
        total += logprob([separator], encode(text))
    words = sum(len(re.split(r"\s+", text)) for text in TEXTS)
    characters = sum(len(text.encode()) for text in TEXTS)
    scores = harness["results"]["tiny_text"]
    # relative tolerance: a total over three texts, exponentiated
    assert scores["word_perplexity,none"] == pytest.approx(math.exp(-total / words), rel=1e-5)
    assert scores["byte_perplexity,none"] == pytest.approx(math.exp(-total / characters), rel=1e-5)
    assert scores["bits_per_byte,none"] == pytest.approx(-total / characters / math.log(2), rel=1e-5)


def test_the_cli_shortcut_exports_scores_and_keeps_the_result_in_the_run(run_and_tasks, oracle, capsys):
    run, _, tasks = run_and_tasks
    argv = ["eval", str(run), "--lm-eval", "tiny_choice", "--lm-eval-include", str(tasks)]
    assert main([*argv, "--limit", "4", "--device", "cpu", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((run / "lm_eval" / "results.json").read_text())
    assert (
        printed["step"] == 12
        and printed["checkpoint"] == "latest"
        and printed["n-samples"]["tiny_choice"]["effective"] == 4
    )
    first = MULTIPLE_CHOICE[:4]  # batch size 1: nothing padded
    right = [argmax_with_margin(oracle_choices(oracle, item)) == item["answer"] for item in first]
    assert printed["results"]["tiny_choice"]["acc,none"] == sum(right) / len(right)


def test_the_shortcut_refuses_in_one_line(run_and_tasks, capsys, tmp_path):
    run, _, tasks = run_and_tasks
    generation = tasks.parent / "generation"
    generation.mkdir(exist_ok=True)
    body = """
        output_type: generate_until
        doc_to_text: "{{context}}"
        doc_to_target: "{{choices[answer]}}"
        generation_kwargs: {until: ["."], max_gen_toks: 3, do_sample: false}
        metric_list: [{metric: exact_match}]
    """
    data = tasks / "tiny_choice.jsonl"
    (generation / "tiny_generation.yaml").write_text(task_yaml("tiny_generation", data, tmp_path, body))
    cases = [
        (["--lm-eval", "tiny_chioce", "--lm-eval-include", str(tasks)], "no task named tiny_chioce in"),
        (["--limit", "3"], "--limit applies to --lm-eval TASKS"),
        (["--lm-eval", "tiny_choice", "--memory", "zero"], "--memory applies to miraslab's own evaluation"),
        # a generation task's prompts are left-padded in a batch; the memory would read the padding
        (["--lm-eval", "tiny_generation", "--lm-eval-include", str(generation), "--batch-size", "2",
          "--limit", "2", "--device", "cpu"], "use --batch-size 1"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(["eval", str(run), *argv]) == 2, argv
        # the harness's progress bars share stderr (and end without a newline); miraslab's answer is one line
        errors = re.findall(r"error: .*", capsys.readouterr().err)
        assert len(errors) == 1 and message in errors[0], errors
