"""``miraslab train RECIPE [--set ...] [--out DIR] [--max-steps N]`` and ``miraslab train --resume DIR``."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from ..errors import MiraslabError


def add_parser(sub: Any) -> None:
    from . import add_set_option

    parser = sub.add_parser("train", help="train a recipe, or resume a run")
    parser.add_argument("recipe", nargs="?", help="recipe .toml file (omit with --resume)")
    add_set_option(parser)
    parser.add_argument("--out", type=Path, help="run directory (default runs/<name>-<time>)")
    parser.add_argument(
        "--resume", type=Path, metavar="DIR", help="continue the run in DIR from its latest checkpoint"
    )
    parser.add_argument(
        "--resume-from",
        type=Path,
        metavar="CHECKPOINT",
        help="with --resume: continue from this checkpoint directory instead of the latest",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        metavar="CHECKPOINT",
        help="a new run that starts from this checkpoint's weights (a fresh optimizer, schedule and data); "
        "a Hugging Face Llama-family directory is read as [model.init] from = CHECKPOINT",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        metavar="N",
        help="stop after optimizer step N without changing the schedule (resume later to go on)",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..limits import MAX_STEPS, check_count
    from ..recipe.resolve import load_recipe
    from ..train.run_dir import RunDir
    from ..train.trainer import Trainer

    if args.max_steps is not None:
        check_count(args.max_steps, "--max-steps", maximum=MAX_STEPS)
    if args.init_from is not None and args.resume is not None:
        raise MiraslabError("--init-from starts a new run: give a RECIPE and --out instead of --resume")
    if args.resume is not None:
        if args.recipe or args.sets or args.out:
            raise MiraslabError(
                "--resume DIR continues a run with its own recipe: drop the RECIPE, --set and --out"
            )
        recipe = RunDir(args.resume).load_recipe()
        out = args.resume
    else:
        if args.recipe is None:
            raise MiraslabError("give a RECIPE to train, or --resume DIR to continue a run")
        if args.resume_from is not None:
            raise MiraslabError("--resume-from goes with --resume DIR")
        recipe = load_recipe(args.recipe, args.sets)
        out = args.out or _default_out(recipe.name or Path(args.recipe).stem)
    trainer = Trainer(
        recipe,
        out,
        resume=args.resume is not None,
        resume_from=args.resume_from,
        init_from=args.init_from,
        max_steps=args.max_steps,
        show_progress=not args.quiet,
    )
    trainer.run()
    return 0


def _default_out(name: str) -> Path:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise MiraslabError("under torchrun every process must write to one place: pass --out DIR")
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
