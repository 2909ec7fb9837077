"""``miraslab probe RUN --memory-ablation | --niah | --capacity [--json]``: does a trained run use its memory?

``--memory-ablation``: the loss (and, for a task with answers, the accuracy) on the same
validation batches with the memory as trained, started afresh at every TNT shard (TNT models),
at every chunk, and with its read zeroed (``miraslab.memory.knockout``).  ``--niah``: needle
retrieval accuracy by depth and by distance on the ``niah`` task, written in the run's own
vocabulary (its tokenizer for a text run), under the same memory modes when both are given.
``--capacity`` (also on an untrained model, ``miraslab probe --recipe RECIPE --capacity``):
can each memory store N key/value pairs with its own rule, gates and chunking
(``miraslab.memory_capacity``)?
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import MiraslabError
from ..limits import MAX_BATCHES, MAX_SEQ_LEN, check_count, check_evaluation_fits

MODE_NAMES = {
    "carried": "carried",
    "reset_shard": "reset every shard",
    "reset": "reset every chunk",
    "zero": "read zeroed",
}
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def add_parser(sub: Any) -> None:
    from . import add_set_option

    parser = sub.add_parser(
        "probe",
        help="memory ablations, needle-in-a-haystack retrieval and memory capacity on a trained run",
    )
    parser.add_argument(
        "run_dir", type=Path, metavar="RUN", nargs="?", help="a run directory written by miraslab train"
    )
    parser.add_argument(
        "--recipe",
        type=Path,
        help="for --capacity: an untrained model built from this recipe instead of a RUN",
    )
    parser.add_argument(
        "--memory-ablation",
        action="store_true",
        help="loss and accuracy with the memory carried, reset every TNT shard, reset every chunk, read zeroed",
    )
    parser.add_argument("--niah", action="store_true", help="needle retrieval accuracy by depth and distance")
    parser.add_argument(
        "--capacity",
        action="store_true",
        help="read-back of N key/value pairs written into each memory, beside a linear delta rule",
    )
    parser.add_argument("--pairs", type=int, help="--capacity: the largest N (default 4 x the key width)")
    parser.add_argument("--trials", type=int, default=4, help="--capacity: draws of pairs per N")
    parser.add_argument(
        "--rows", type=int, default=4, help="--capacity: validation sequences the task pairs come from"
    )
    parser.add_argument(
        "--plot", type=Path, help="--capacity: the PNG (default RUN/capacity.png, or capacity-NAME.png)"
    )
    parser.add_argument("--task", help="for --memory-ablation: a task instead of the run's own (e.g. mqar)")
    add_set_option(parser)  # for --memory-ablation's task; task.x=... is short for data.task.x=...
    parser.add_argument("--batches", type=int, default=8, help="validation batches (per depth for --niah)")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint directory instead of the run's latest")
    parser.add_argument(
        "--needle", default="passkey", choices=("passkey", "number", "uuid"), help="--niah needle"
    )
    parser.add_argument(
        "--haystack",
        choices=("noise", "random", "text"),
        help="--niah haystack (default: the run's text for a text run, else noise)",
    )
    parser.add_argument(
        "--depths", help="--niah needle depths in [0, 1], comma-separated (default 0,0.25,0.5,0.75,1)"
    )
    parser.add_argument("--seq-len", type=int, help="--niah context length (default: the run's data.seq_len)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..memory.knockout import modes_of
    from ..train.run_dir import load_run

    if not (args.memory_ablation or args.niah or args.capacity):
        raise MiraslabError("probe: choose what to measure, --memory-ablation, --niah and/or --capacity")
    for name in ("rows", "trials", "pairs"):  # before any model is built
        if getattr(args, name) is not None:
            check_count(getattr(args, name), f"--{name}", maximum=MAX_BATCHES)
    if (args.run_dir is None) == (args.recipe is None):
        raise MiraslabError(
            "probe: give a RUN directory or --recipe RECIPE (for --capacity), not both or neither"
        )
    if args.recipe is not None:
        if args.memory_ablation or args.niah:
            raise MiraslabError(
                "probe --recipe: only --capacity runs on an untrained model; give a RUN for the rest"
            )
        return capacity_command(args)
    check_count(args.batches, "--batches", maximum=MAX_BATCHES)
    if args.seq_len is not None:
        check_count(args.seq_len, "--seq-len", maximum=MAX_SEQ_LEN)
    depths = parse_depths(args.depths)
    loaded = load_run(args.run_dir, args.checkpoint)
    check_evaluation_fits(loaded.recipe, args.batches, args.seq_len)  # before any batch is drawn
    modes = modes_of(loaded.model) if args.memory_ablation else ("carried",)
    output: dict[str, Any] = {"run": str(args.run_dir), "step": loaded.step}
    if args.memory_ablation:
        output["memory_ablation"] = memory_ablation_probe(args, loaded, modes)
    if args.niah:
        output["niah"] = niah_probe(args, loaded, modes, depths)
    if args.capacity:
        from .evaluation_data import run_task

        recipe, task = run_task(args.run_dir, loaded, args.task, args.sets)
        plot = args.plot or Path(args.run_dir) / "capacity.png"
        output["capacity"] = capacity_probe(
            args, loaded.model, recipe, task, plot, f"{args.run_dir} at step {loaded.step}"
        )
    if args.json:
        print(json.dumps(output, indent=2))
        return 0
    if "memory_ablation" in output:
        print_memory_ablation(args.run_dir, loaded.step, output["memory_ablation"])
    if "niah" in output:
        print_niah(args.run_dir, loaded.step, output["niah"])
    if "capacity" in output:
        print_capacity(output["capacity"])
    return 0


def capacity_command(args: argparse.Namespace) -> int:
    """``probe --recipe RECIPE --capacity``: the recipe's model at its initialisation."""
    import torch

    from ..components import build_component
    from ..model.language_model import build_model
    from ..recipe.resolve import load_recipe
    from .evaluation_data import check_vocabulary

    recipe = load_recipe(args.recipe, [f"data.{s}" if s.startswith("task.") else s for s in args.sets])
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model)
    task = build_component(recipe.data.task)
    check_vocabulary(task, recipe)
    plot = args.plot or Path(f"capacity-{recipe.name}.png")
    output = {"recipe": str(args.recipe), "step": 0}
    title = f"{recipe.name}, untrained" + (f" ({'; '.join(args.sets)})" if args.sets else "")
    output["capacity"] = capacity_probe(args, model, recipe, task, plot, title)
    if args.json:
        print(json.dumps(output, indent=2))
    else:
        print_capacity(output["capacity"])
    return 0


def capacity_probe(
    args: argparse.Namespace, model: Any, recipe: Any, task: Any, plot: Path, title: str
) -> dict[str, Any]:
    from ..data.batch import TrainingBatch
    from ..memory_capacity import plot_capacity, probe_capacity

    batch = next(task.batches("val", seq_len=recipe.data.seq_len, batch_size=args.rows, seed=recipe.seed))
    result = probe_capacity(
        model, TrainingBatch.of(batch).inputs, most=args.pairs, trials=args.trials, seed=recipe.seed
    )
    if not result["layers"]:
        raise MiraslabError(f"probe --capacity: {title} has no neural memory to probe")
    result["title"] = title
    result["task"] = recipe.data.task.name
    result["plot"] = str(plot_capacity(result, plot, title))
    return result


def print_capacity(result: dict[str, Any]) -> None:
    from ..memory_capacity import format_capacity

    for line in format_capacity(result, f"{result['title']} on {result['task']} validation data"):
        print(line)
    print(f"  plot: {result['plot']}")


def parse_depths(text: str | None) -> tuple[float, ...]:
    if text is None:
        return DEFAULT_DEPTHS
    try:
        depths = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        depths = ()
    if not depths or not all(0 <= d <= 1 for d in depths):
        raise MiraslabError(
            f"--depths: expected numbers in [0, 1] separated by commas, e.g. 0,0.5,1; got {text!r}"
        )
    return depths


def memory_ablation_probe(args: argparse.Namespace, loaded: Any, modes: tuple[str, ...]) -> dict[str, Any]:
    from ..data.batch import IGNORE, TrainingBatch
    from ..evaluation import evaluate_by_memory
    from .evaluation_data import run_task, validation_batches

    recipe, task = run_task(args.run_dir, loaded, args.task, args.sets)
    batches = validation_batches(task, recipe, args.batches)
    # documents run apart have IGNORE targets only at their pads: still text, not answers
    answered = not recipe.data.reset_at_documents and any(
        bool((TrainingBatch.of(b).targets == IGNORE).any()) for b in batches
    )
    results = evaluate_by_memory(loaded.model, batches, modes)
    carried = results["carried"]["loss"]
    by_mode = {}
    for mode, result in results.items():
        entry = {"loss": result["loss"], "loss_change": result["loss"] - carried}
        if answered:
            entry["accuracy"] = result["accuracy"]
        by_mode[mode] = entry
    probe: dict[str, Any] = {
        "task": recipe.data.task.name,
        "batches": args.batches,
        "answers": results["carried"]["answers"],
        "modes": by_mode,
    }
    if "reset" in results:  # the trainer's memory-use metric, on these batches
        probe["carry_gain"] = by_mode["reset"]["loss_change"]
        probe["carry_gain_share"] = probe["carry_gain"] / carried if carried else 0.0
        probe["read_gain"] = by_mode["zero"]["loss_change"]
    if "reset_shard" in results:
        probe["shard_carry_gain"] = by_mode["reset_shard"]["loss_change"]
    return probe


def niah_sets(args: argparse.Namespace, loaded: Any, depth: float) -> list[str]:
    """Overrides that put the niah task, in the run's vocabulary, into the run's recipe."""
    recipe = loaded.recipe
    seq_len = args.seq_len or recipe.data.seq_len
    tokenizer = Path(args.run_dir) / "tokenizer.json"
    sets = [
        f"data.seq_len={seq_len}",
        f"task.seq_len={seq_len}",
        f"task.needle={json.dumps(args.needle)}",
        f"task.depths=[{depth!r}]",
        f"task.vocab_size={recipe.model.vocab_size}",
    ]
    haystack = args.haystack or ("text" if loaded.tokenizer is not None else "noise")
    if loaded.tokenizer is not None:
        sets.append(f"task.tokenizer={json.dumps(str(tokenizer))}")
        dataset = getattr(recipe.data.task.params, "dataset", None)
        if haystack == "text" and dataset is not None:
            sets.append(f"task.dataset={json.dumps(dataset)}")
    elif haystack == "text":
        raise MiraslabError(f"--haystack text: {args.run_dir} has no tokenizer.json (its task is not text)")
    return [*sets, f"task.haystack={json.dumps(haystack)}"]


def niah_probe(
    args: argparse.Namespace, loaded: Any, modes: tuple[str, ...], depths: tuple[float, ...]
) -> dict[str, Any]:
    import torch

    from ..data.batch import IGNORE, TrainingBatch
    from ..evaluation import evaluate_by_memory
    from .evaluation_data import run_task, validation_batches

    by_depth = []
    hits: dict[tuple[int, int], dict[str, float]] = {}  # distance bucket -> mode -> answers right
    asked: dict[tuple[int, int], int] = {}
    for depth in depths:
        recipe, task = run_task(args.run_dir, loaded, "niah", niah_sets(args, loaded, depth))
        batches = [TrainingBatch.of(b) for b in validation_batches(task, recipe, args.batches)]
        distances = torch.cat([b.extras["distance"][b.targets != IGNORE].double() for b in batches])
        results = evaluate_by_memory(loaded.model, batches, modes)
        by_depth.append(
            {
                "depth": depth,
                "distance": float(distances.mean()),
                "answers": results["carried"]["answers"],
                "accuracy": {mode: result["accuracy"] for mode, result in results.items()},
            }
        )
        for mode, result in results.items():
            for bucket in result["by_distance"]:
                key = (bucket["from"], bucket["to"])
                right = hits.setdefault(key, dict.fromkeys(modes, 0.0))
                right[mode] += bucket["accuracy"] * bucket["answers"]
                if mode == "carried":
                    asked[key] = asked.get(key, 0) + bucket["answers"]
    params = recipe.data.task.params
    return {
        "needle": params.needle,
        "haystack": params.haystack,
        "seq_len": params.seq_len,
        "batches_per_depth": args.batches,
        "accuracy": {mode: overall(by_depth, mode) for mode in modes},
        "by_depth": by_depth,
        "by_distance": [
            {
                "from": low,
                "to": high,
                "answers": asked[low, high],
                "accuracy": {mode: right / asked[low, high] for mode, right in hits[low, high].items()},
            }
            for low, high in sorted(asked)
        ],
    }


def overall(by_depth: list[dict[str, Any]], mode: str) -> float:
    """Accuracy over every depth's answers."""
    answers = sum(d["answers"] for d in by_depth)
    return sum(d["accuracy"][mode] * d["answers"] for d in by_depth) / max(answers, 1)


def print_memory_ablation(run_dir: Path, step: int, probe: dict[str, Any]) -> None:
    print(
        f"{run_dir} at step {step} on {probe['task']}, {probe['batches']} validation batches "
        f"({probe['answers']:,} answers): the memory ablated"
    )
    answered = "accuracy" in probe["modes"]["carried"]
    print(f"  {'memory':<18} {'loss':>9} {'change':>9}" + (f" {'accuracy':>9}" if answered else ""))
    for mode, entry in probe["modes"].items():
        change = "" if mode == "carried" else f"{entry['loss_change']:+9.4f}"
        line = f"  {MODE_NAMES[mode]:<18} {entry['loss']:9.4f} {change:>9}"
        print(line + (f" {entry['accuracy']:9.1%}" if answered else ""))
    if "carry_gain" in probe:
        print(
            f"  carry gain {probe['carry_gain']:+.4f} nats ({probe['carry_gain_share']:+.1%} of the loss), "
            f"read gain {probe['read_gain']:+.4f} nats"
        )
    else:
        print("  the model has no neural memory to ablate")


def print_niah(run_dir: Path, step: int, probe: dict[str, Any]) -> None:
    modes = list(probe["accuracy"])
    print(
        f"{run_dir} at step {step}: {probe['needle']} needles in a {probe['haystack']} haystack of "
        f"{probe['seq_len']} tokens, {probe['batches_per_depth']} batches per depth"
    )
    header = "".join(f" {MODE_NAMES[m]:>18}" for m in modes)
    print(f"  {'depth':>5} {'distance':>8}{header}")
    for row in probe["by_depth"]:
        cells = "".join(f" {row['accuracy'][m]:18.1%}" for m in modes)
        print(f"  {row['depth']:5.2f} {row['distance']:8.1f}{cells}")
    print(f"  {'all':>5} {'':>8}" + "".join(f" {probe['accuracy'][m]:18.1%}" for m in modes))
    for bucket in probe["by_distance"]:
        cells = "".join(f" {bucket['accuracy'][m]:18.1%}" for m in modes)
        print(f"  distance {bucket['from']:>5}-{bucket['to'] - 1:<5}{cells}  ({bucket['answers']:,} answers)")
