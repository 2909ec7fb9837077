"""``miraslab eval RUN [--task NAME] [--set task.x=...] [--memory MODE] [--json]``: accuracy of a
trained run, with its memory as trained or ablated (see ``miraslab.memory.knockout``).

``miraslab eval RUN --lm-eval TASKS``: the run exported to a temporary directory and scored by
lm-evaluation-harness (``miraslab.hf.harness``), the result kept in ``RUN/lm_eval/results.json``."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from ..errors import MiraslabError
from ..limits import MAX_BATCHES, check_count, check_evaluation_fits
from . import long_range_command


def add_parser(sub: Any) -> None:
    from . import add_set_option

    parser = sub.add_parser(
        "eval",
        help="accuracy of a trained run on its task (or another), overall and by distance; or lm-eval tasks",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory written by miraslab train")
    parser.add_argument("--task", help="a task plugin to evaluate on instead of the run's own (e.g. mqar)")
    add_set_option(parser)  # task.x=... is short for data.task.x=...
    parser.add_argument("--batches", type=int, default=8, help="validation batches to evaluate (default 8)")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint directory instead of the run's latest")
    parser.add_argument(
        "--memory",
        default="carried",
        choices=("carried", "reset", "zero", "all"),
        help="the memory as trained (carried), its state reset at every chunk (reset), its read "
        "zeroed (zero), or all three on the same batches (all)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    long_range_command.add_options(parser)
    harness = parser.add_argument_group(
        "lm-evaluation-harness (pip install 'miraslab[eval]')",
        "score the run's export with lm-eval's tasks instead; the result goes to RUN/lm_eval/results.json",
    )
    harness.add_argument(
        "--lm-eval",
        metavar="TASKS",
        help="lm-eval task names or globs, comma-separated (e.g. lambada_openai)",
    )
    harness.add_argument(
        "--lm-eval-include",
        type=Path,
        metavar="DIR",
        help="a directory of task YAML files (lm-eval's --include_path)",
    )
    harness.add_argument(
        "--limit", type=float, metavar="N", help="the first N examples of each task (a fraction if below 1)"
    )
    harness.add_argument(
        "--batch-size",
        type=int,
        default=1,
        metavar="N",
        help="requests per forward (default 1; generation tasks need 1: the model refuses left padding)",
    )
    harness.add_argument(
        "--max-length",
        type=int,
        metavar="N",
        help="the longest context passed, in tokens (default: the run's training seq_len)",
    )
    harness.add_argument(
        "--device", help="where the harness runs the model (default: cuda if there is one, else cpu)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.lm_eval is not None:
        return run_lm_eval(args)
    for flag, value in (("--lm-eval-include", args.lm_eval_include), ("--limit", args.limit),
                        ("--max-length", args.max_length), ("--device", args.device)):  # fmt: skip
        if value is not None:
            raise MiraslabError(f"{flag} applies to --lm-eval TASKS, which is not given")
    long_range_command.check_options(args)
    if args.long_range:
        return long_range_command.run(args)
    from ..evaluation import evaluate_by_memory
    from ..memory.knockout import MODES
    from ..train.run_dir import load_run
    from .evaluation_data import run_task, validation_batches

    check_count(args.batches, "--batches", maximum=MAX_BATCHES)
    loaded = load_run(args.run_dir, args.checkpoint)
    recipe, task = run_task(args.run_dir, loaded, args.task, args.sets)
    check_evaluation_fits(recipe, args.batches)  # before any batch is drawn
    batches = validation_batches(task, recipe, args.batches)  # every mode evaluates the same ones
    modes = MODES if args.memory == "all" else (args.memory,)
    results = evaluate_by_memory(loaded.model, batches, modes)
    head = {"run": str(args.run_dir), "step": loaded.step, "task": recipe.data.task.name}
    if args.json:
        output = head | results[modes[0]] if len(modes) == 1 else head | {"by_memory": results}
        print(json.dumps(output, indent=2))
        return 0
    for mode, result in results.items():
        print(
            f"{args.run_dir} at step {loaded.step} on {head['task']}, memory {mode}: accuracy "
            f"{result['accuracy']:.1%} over {result['answers']:,} answers, loss {result['loss']:.4f}"
        )
        for bucket in result["by_distance"]:
            print(
                f"  distance {bucket['from']:>5}-{bucket['to'] - 1:<5} accuracy {bucket['accuracy']:6.1%}"
                f"  ({bucket['answers']:,} answers)"
            )
    return 0


def run_lm_eval(args: argparse.Namespace) -> int:
    """Export the run to a temporary directory, score it with lm-eval, keep the result in the run."""
    for flag, given in (("--task", args.task), ("--set", args.sets), ("--memory", args.memory != "carried"),
                        ("--long-range", args.long_range)):  # fmt: skip
        if given:
            raise MiraslabError(f"{flag} applies to miraslab's own evaluation, not to --lm-eval")
    if args.batch_size < 1:
        raise MiraslabError(f"--batch-size: expected an integer >= 1, got {args.batch_size}")
    tasks = [task.strip() for task in args.lm_eval.split(",") if task.strip()]
    if not tasks:
        raise MiraslabError("--lm-eval: expected task names, comma-separated (e.g. --lm-eval lambada_openai)")
    from ..hf import require_transformers
    from ..hf.harness import require_lm_eval

    require_transformers()
    require_lm_eval()
    from ..hf.export import export_loaded
    from ..hf.harness import evaluate_export, results_json, results_table, task_manager
    from ..train.run_dir import load_run

    found = task_manager(tasks, args.lm_eval_include)  # a misspelt task fails before the export
    loaded = load_run(args.run_dir, args.checkpoint)
    if loaded.tokenizer is None:
        raise MiraslabError(
            f"--lm-eval: {args.run_dir} has no tokenizer.json (its task is not text); lm-eval scores text"
        )
    with tempfile.TemporaryDirectory(prefix="miraslab-lm-eval-") as scratch:
        hf_dir = export_loaded(loaded, Path(scratch) / "hf", args.run_dir)
        result = evaluate_export(
            hf_dir, tasks, args.lm_eval_include, limit=args.limit, batch_size=args.batch_size,
            max_length=args.max_length, device=args.device, manager=found,
        )  # fmt: skip
    # config.model_args names the temporary export, gone by now: the run and checkpoint say what was scored
    checkpoint = str(args.checkpoint) if args.checkpoint else "latest"
    result = {"run": str(args.run_dir), "step": loaded.step, "checkpoint": checkpoint} | result
    out = Path(args.run_dir) / "lm_eval" / "results.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(results_json(result) + "\n")
    if args.json:
        print(results_json(result))
    else:
        print(f"{args.run_dir} at step {loaded.step}, lm-eval {', '.join(tasks)}:")
        print(results_table(result))
        print(f"wrote {out}")
    return 0
