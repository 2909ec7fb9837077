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
    from ..components import build_component
    from ..errors import MiraslabError
    from ..evaluation import evaluate
    from ..memory.ablation import MODES, memory_ablation
    from ..recipe.resolve import load_recipe
    from ..train.run_dir import load_run

    if args.batches < 1:
        raise MiraslabError(f"--batches: expected an integer >= 1, got {args.batches}")
    loaded = load_run(args.run_dir, args.checkpoint)
    sets = [f'data.task={{ name = "{args.task}" }}'] if args.task else []
    sets += [f"data.{item}" if item.startswith("task.") else item for item in args.sets]
    recipe = load_recipe(args.run_dir / "recipe.toml", sets) if sets else loaded.recipe
    task = build_component(recipe.data.task)
    if task.vocab_size() > recipe.model.vocab_size:
        raise MiraslabError(
            f"data.task.vocab_size: the task's {task.vocab_size()} tokens do not fit the run's "
            f"model.vocab_size ({recipe.model.vocab_size})"
        )
    val = task.batches(
        "val", seq_len=recipe.data.seq_len, batch_size=recipe.train.batch_size, seed=recipe.seed
    )
    batches = [next(val) for _ in range(args.batches)]  # every mode evaluates the same ones
    modes = MODES if args.memory == "all" else (args.memory,)
    results = {}
    for mode in modes:
        with memory_ablation(loaded.model, mode):
            results[mode] = {"memory": mode, **evaluate(loaded.model, batches)}
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
