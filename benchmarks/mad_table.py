"""The MAD table: each MAD task × {transformer, swa, titans-mag, atlas, gated-deltanet}.

    python benchmarks/mad_table.py                       # the full table, reduced width (long: see docs/benchmarks.md)
    python benchmarks/mad_table.py --tasks compression --models transformer --steps 2   # a smoke run
    python benchmarks/mad_table.py --json mad.json --out runs/mad-table                 # keep runs and numbers
    python benchmarks/mad_table.py --show-sets           # the --set lines that put each model on a task
    python benchmarks/mad_table.py --from-json mad.json --plot mad.png   # table and bar chart again, no training

Every run is a task recipe of recipes/mad/ with the model's architecture laid over it by
``--set`` alone: the layout, the attention's persistent tokens and the memory's axes are read
from the model's own recipe (recipes/papers/ or recipes/baselines/), and the width, depth,
attention window and chunk size stay the MAD recipe's, then shrunk by this script's options.
Each run trains with the recipe's schedule for ``--steps`` steps, then its accuracy is
measured on ``--eval-examples`` validation examples of the task (per token, over the scored
positions: mad-lab's metric).  The table prints beside the ATLAS paper's MAD results.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

# _paper_models: a helper beside this script (its directory is on sys.path)
from _paper_models import add_init_options, inits_phrase, storing_inits
from _paper_models import model_sets as recipe_model_sets

import miraslab
from miraslab.evaluation import evaluate
from miraslab.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
# task -> its recipe, in the order of the table's columns
TASKS = {
    "in-context-recall": "recipes/mad/in-context-recall.toml",
    "fuzzy-recall": "recipes/mad/fuzzy-recall.toml",
    "noisy-recall": "recipes/mad/noisy-recall.toml",
    "selective-copying": "recipes/mad/selective-copying.toml",
    "compression": "recipes/mad/compression.toml",
    "memorization": "recipes/mad/memorization.toml",
}
MODELS = {
    "transformer": "recipes/baselines/transformer.toml",
    "swa": "recipes/baselines/swa.toml",
    "titans-mag": "recipes/papers/titans-mag.toml",
    "atlas": "recipes/papers/atlas.toml",
    "gated-deltanet": "recipes/papers/gated-deltanet.toml",
}
# ATLAS (Behrouz et al., arXiv 2505.23735), Table 4, "MAD synthetic benchmark": five tasks,
# plain in-context recall is not among them.  Accuracy %, at the paper's own model sizes; the
# averages are the paper's, the per-task values from a secondary summary (their means match).
ATLAS_TASKS = ("compression", "noisy-recall", "fuzzy-recall", "selective-copying", "memorization")
ATLAS_PAPER = {
    "Transformer": {"compression": 49.4, "noisy-recall": 100.0, "fuzzy-recall": 48.2,
                    "selective-copying": 95.9, "memorization": 83.8, "average": 75.46},
    "Titans": {"compression": 49.6, "noisy-recall": 100.0, "fuzzy-recall": 49.7,
               "selective-copying": 99.4, "memorization": 83.5, "average": 76.44},
    "Atlas": {"compression": 51.6, "noisy-recall": 100.0, "fuzzy-recall": 54.9,
              "selective-copying": 99.6, "memorization": 91.4, "average": 79.50},
}  # fmt: skip


def model_sets(model: str, storing: bool = False) -> list[str]:
    """The --set lines that turn a MAD recipe's model into the table's ``model`` (a deep memory
    at the inits that store, with ``storing``: ``_paper_models.storing_inits``)."""
    path = REPO / MODELS[model]
    return recipe_model_sets(path) + (storing_inits(path) if storing else [])


def reduced_sets(args: argparse.Namespace) -> list[str]:
    sets = [
        f"train.steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        f"train.lr={args.lr}",
        f"train.log_every={max(args.steps // 10, 1)}",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        f"seed={args.seed}",
    ]
    for key, value in (("d_model", args.d_model), ("n_layers", args.n_layers), ("n_heads", args.n_heads)):
        if value:
            sets.append(f"model.{key}={value}")
    if args.train_examples is not None:
        sets.append(f"data.task.train_examples={args.train_examples}")
    return sets + list(args.sets)


def run_one(task: str, model: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    sets = model_sets(model, args.storing_inits) + reduced_sets(args)
    recipe = miraslab.load_recipe(REPO / TASKS[task], sets)
    out = root / f"{task}--{model}"
    started = time.perf_counter()
    Trainer(recipe, out, show_progress=False).run()
    seconds = time.perf_counter() - started
    run = miraslab.load_run(out)
    task_data = miraslab.build_component(run.recipe.data.task)
    batches = task_data.batches(
        "val", seq_len=run.recipe.data.seq_len, batch_size=args.batch_size, seed=run.recipe.seed
    )
    result = evaluate(
        run.model, [next(batches) for _ in range(math.ceil(args.eval_examples / args.batch_size))]
    )
    return {
        "task": task,
        "model": model,
        "accuracy": result["accuracy"],
        "answers": result["answers"],
        "train_seconds": round(seconds, 1),
        "steps": args.steps,
    }


def markdown(results: list[dict[str, Any]], tasks: list[str], models: list[str]) -> str:
    accuracy = {(r["task"], r["model"]): 100 * r["accuracy"] for r in results}
    five = [t for t in ATLAS_TASKS if t in tasks]
    head = ["model", *tasks, f"avg of ATLAS's {len(five)}" if five else "", "avg of all"]
    lines = ["| " + " | ".join(h for h in head if h) + " |", "|" + "---|" * len([h for h in head if h])]
    for model in models:
        cells = [f"{accuracy[(t, model)]:.1f}" for t in tasks]
        if five:
            cells.append(f"{sum(accuracy[(t, model)] for t in five) / len(five):.2f}")
        cells.append(f"{sum(accuracy[(t, model)] for t in tasks) / len(tasks):.2f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    for name, row in ATLAS_PAPER.items():
        cells = [f"{row[t]:.1f}" if t in row else "–" for t in tasks]
        if five:
            cells.append(f"{row['average']:.2f} (all five)")
        cells.append("–")
        lines.append(f"| ATLAS paper: {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], tasks: list[str], models: list[str], title: str, path: Path) -> Path:
    """Grouped bars: one group per task, one bar per model, accuracy in %."""
    from matplotlib.figure import Figure

    accuracy = {(r["task"], r["model"]): 100 * r["accuracy"] for r in results}
    figure = Figure(figsize=(max(7.0, 1.6 * len(tasks)), 4.2), dpi=100, layout="constrained")
    axis = figure.subplots()
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        xs = [t + (i - (len(models) - 1) / 2) * width for t in range(len(tasks))]
        axis.bar(xs, [accuracy[(task, model)] for task in tasks], width, label=model)
    axis.set_xticks(range(len(tasks)), tasks, rotation=15)
    axis.set(ylabel="accuracy (%)", ylim=(0, 100))
    axis.set_title(title, fontsize="medium")
    figure.legend(*axis.get_legend_handles_labels(), loc="outside lower center", ncols=min(len(models), 5))
    figure.savefig(path, format="png")
    return path


def header(settings: dict[str, Any]) -> str:
    return (
        f"MAD accuracy (%), {settings['steps']} steps at batch {settings['batch_size']}, lr {settings['lr']}, "
        f"d_model {settings['d_model']}, {settings['eval_examples']} validation examples, seed {settings['seed']}"
        + inits_phrase(settings.get("storing_inits", False), settings.get("sets", []))
    )


def report(payload: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the table (and draw it, with --plot) from the results of a run or of --from-json."""
    results, title = payload["results"], header(payload["settings"])
    tasks = [t for t in TASKS if any(r["task"] == t for r in results)]
    models = [m for m in MODELS if any(r["model"] == m for r in results)]
    print(f"{title}:\n")
    print(markdown(results, tasks, models))
    if args.plot:
        plot(results, tasks, models, title, args.plot)
        print(f"\nplot: {args.plot}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps per run (mad-lab: 20 000)")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step (mad-lab: 128)")
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="peak learning rate (mad-lab: 5e-4 over 20 000 steps)"
    )
    parser.add_argument(
        "--d-model", type=int, default=64, help="width (the MAD recipes: 128); 0 keeps the recipe's"
    )
    parser.add_argument("--n-layers", type=int, default=0, help="blocks; 0 keeps the recipe's (2)")
    parser.add_argument("--n-heads", type=int, default=0, help="heads; 0 keeps the recipe's (4)")
    parser.add_argument(
        "--train-examples",
        type=int,
        default=None,
        help="training set size (default: each task's, as mad-lab)",
    )
    parser.add_argument("--eval-examples", type=int, default=1280, help="validation examples (mad-lab: 1280)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--show-sets", action="store_true", help="print each model's --set lines and exit")
    add_init_options(parser)
    parser.add_argument("--plot", type=Path, help="also draw the accuracies as grouped bars (PNG)")
    parser.add_argument(
        "--from-json",
        type=Path,
        help="print (and --plot) the table of an earlier --json file; trains nothing",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.show_sets:
        for model in args.models:
            print(f"{model}: " + " ".join(f"--set {s}" for s in model_sets(model, args.storing_inits)))
        return 0
    if args.from_json:
        report(json.loads(args.from_json.read_text()), args)
        return 0
    torch.set_num_threads(args.threads)
    root = args.out or Path(tempfile.mkdtemp(prefix="mad-table-"))
    results = []
    try:
        for task in args.tasks:
            for model in args.models:
                result = run_one(task, model, args, root)
                print(
                    f"{task:>18} {model:<15} accuracy {100 * result['accuracy']:5.1f} %  "
                    f"({result['answers']} answers, trained {result['train_seconds']} s)",
                    file=sys.stderr,
                    flush=True,
                )
                results.append(result)
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    settings = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "d_model": args.d_model or "recipe",
        "n_layers": args.n_layers or "recipe",
        "n_heads": args.n_heads or "recipe",
        "train_examples": args.train_examples if args.train_examples is not None else "task default",
        "eval_examples": args.eval_examples,
        "seed": args.seed,
        "threads": args.threads,
        "storing_inits": args.storing_inits,
        "sets": list(args.sets),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}, torch {torch.__version__}",
    }
    payload = {"settings": settings, "results": results, "atlas_paper": ATLAS_PAPER}
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2))
    report(payload, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
