"""EleutherAI's lm-evaluation-harness on an export: ``miraslab eval RUN --lm-eval TASKS``.

The harness loads the export exactly as ``lm_eval --model hf --model_args
pretrained=DIR,trust_remote_code=True`` does, so the scores are the ones a user gets from
the harness's own command.  What it asks of the model:

- loglikelihood tasks (multiple choice, perplexity) batch several requests, right-padded
  and without an ``attention_mask``: a causal model's logits before the padding do not
  depend on it, so any ``--batch-size`` gives the unpadded scores (tests/test_lm_eval.py);
- generation tasks left-pad a batch with a mask, which the model refuses (the memory
  writes every token it reads): run them with batch size 1;
- the context is cut to ``max_position_embeddings``, the run's training ``seq_len``; the
  memory has no such limit, ``--max-length`` raises it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import MiraslabError


def require_lm_eval() -> None:
    """Fail with one line when the [eval] extra (the harness and its transformers backend) is missing."""
    try:
        import accelerate  # noqa: F401  (the harness's hf model imports it)
        import lm_eval  # noqa: F401
    except ImportError:
        raise MiraslabError(
            "--lm-eval needs lm-evaluation-harness with its transformers backend: pip install 'miraslab[eval]'"
        ) from None


def task_manager(tasks: Sequence[str], include: Path | None = None) -> tuple[Any, list[str]]:
    """A ``TaskManager`` that knows ``tasks`` (names or globs), and the task names they match.

    Indexing the harness's ~15,000 built-in tasks takes seconds: when every task is found in
    ``include`` alone, the built-in ones are not indexed.
    """
    from lm_eval.tasks import TaskManager

    if include is not None and not Path(include).is_dir():
        raise MiraslabError(f"--lm-eval-include: {include} is not a directory of task YAML files")
    managers = []
    if include is not None:
        managers.append(lambda: TaskManager(include_path=str(include), include_defaults=False))
    managers.append(lambda: TaskManager(include_path=str(include) if include is not None else None))
    for make in managers:
        manager = make()
        missing = [task for task in tasks if not manager.match_tasks([task])]
        if not missing:
            return manager, manager.match_tasks(list(tasks))
    where = f" in {include} or" if include is not None else ""
    raise MiraslabError(
        f"--lm-eval: no task named {', '.join(missing)}{where} among lm-eval's tasks "
        f"(lm_eval ls tasks lists them; --lm-eval-include DIR adds a directory of task YAML files)"
    )


def evaluate_export(
    hf_dir: Path,
    tasks: Sequence[str],
    include: Path | None = None,
    limit: float | None = None,
    batch_size: int = 1,
    max_length: int | None = None,
    device: str | None = None,
    manager: tuple[Any, list[str]] | None = None,
) -> dict[str, Any]:
    """The harness's ``simple_evaluate`` on the export in ``hf_dir``: its result, less the samples.

    ``manager`` is ``task_manager(tasks, include)``'s answer, where the caller has it already.
    """
    import lm_eval
    import torch

    from .modeling import PADDING_REFUSED

    manager, names = manager or task_manager(tasks, include)
    model_args: dict[str, Any] = {"pretrained": str(hf_dir), "trust_remote_code": True}
    if max_length is not None:
        model_args["max_length"] = max_length
    try:
        result = lm_eval.simple_evaluate(
            model="hf",
            model_args=model_args,
            tasks=names,
            task_manager=manager,
            batch_size=batch_size,
            # the harness's hf model asks for cuda unless told otherwise, even where there is none
            device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
            limit=limit,
            log_samples=False,
        )
    except ValueError as exc:
        if not str(exc).startswith(PADDING_REFUSED):
            raise
        # a generation task's batch, left-padded: the memory would have read the padding first
        raise MiraslabError(
            f"--batch-size {batch_size}: lm-eval left-pads the prompts of a generation task, which a "
            "miraslab model refuses (its memory reads every token); use --batch-size 1"
        ) from None
    if result is None:  # only a non-zero rank of a distributed run returns nothing
        raise MiraslabError("lm-eval returned no results")
    result.pop("samples", None)
    return result


def results_json(result: dict[str, Any]) -> str:
    """The harness's result as JSON; its configs hold functions and numpy values, written as text."""
    from lm_eval.utils import handle_non_serializable

    return json.dumps(result, indent=2, default=handle_non_serializable)


def results_table(result: dict[str, Any]) -> str:
    """The harness's own markdown table of the scores (and of the groups, when there are any)."""
    from lm_eval.utils import make_table

    table = make_table(result)
    return table + ("\n" + make_table(result, "groups") if result.get("groups") else "")
