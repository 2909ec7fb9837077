"""``miraslab preflight RECIPE [--set ...] [--json]``: the seeds' four gates and a capacity gate, in minutes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import attrs

GATES = ("proof_of_life", "baton_pass", "capacity", "memory_ablation", "seed_competition")


def add_parser(sub: Any) -> None:
    from . import add_set_option

    parser = sub.add_parser(
        "preflight",
        help="check a recipe's memory before a long run: gates alive, state carried, memory used",
        description="Runs the gates of docs/diagnostics.md; exits 1 if any fails.",
    )
    parser.add_argument("recipe", type=Path, help="recipe .toml file")
    add_set_option(parser)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--life-steps", type=int, default=5, metavar="N", help="optimizer steps before the gate check"
    )
    parser.add_argument(
        "--burst-steps", type=int, default=300, metavar="N", help="training steps before the memory ablation"
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        metavar="CHECKPOINT",
        help="checkpoint (or Hugging Face Llama directory) for the seed competition; default: [model.init]",
    )
    parser.add_argument(
        "--gate", dest="gates", action="append", choices=GATES, help="run only this gate (repeatable)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..limits import MAX_STEPS, check_count
    from ..preflight import run_preflight

    for name in ("life_steps", "burst_steps"):
        check_count(getattr(args, name), f"--{name.replace('_', '-')}", maximum=MAX_STEPS)
    results = run_preflight(
        args.recipe,
        args.sets,
        life_steps=args.life_steps,
        burst_steps=args.burst_steps,
        init_from=args.init_from,
        gates=args.gates or GATES,
    )
    failed = [r for r in results if r.status == "fail"]
    if args.json:
        print(json.dumps({"passed": not failed, "gates": [attrs.asdict(r) for r in results]}, indent=2))
    else:
        for result in results:
            print(result.line())
        print(f"preflight {'failed: ' + ', '.join(r.name for r in failed) if failed else 'passed'}")
    return 1 if failed else 0
