"""``miraslab eval RUN [--task NAME] [--set task.x=...] [--memory MODE] [--json]``: accuracy of a
trained run, with its memory as trained or ablated (see ``miraslab.memory.ablation``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    from . import add_set_option

    parser = sub.add_parser(
        "eval", help="accuracy of a trained run on its task (or another), overall and by distance"
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
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate_by_memory
    from ..memory.ablation import MODES
    from ..train.run_dir import load_run
    from .run_evaluation import run_task, validation_batches

    loaded = load_run(args.run_dir, args.checkpoint)
    recipe, task = run_task(args.run_dir, loaded, args.task, args.sets)
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
