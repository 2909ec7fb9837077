"""``miraslab tokenizer train RECIPE [--set ...] [--out PATH] [--json]``.

Trains the tokenizer the recipe's task would train at the start of a run (or finds it in
the cache), so a long run or many processes start without that wait.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..components import build_component
from ..data.cache import cache_root
from ..errors import MiraslabError
from ..recipe.resolve import load_recipe


def add_parser(sub: Any) -> None:
    from . import add_set_option

    parser = sub.add_parser("tokenizer", help="train the tokenizer of a recipe's task")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    train = actions.add_parser(
        "train",
        help="train the tokenizer a recipe's task uses (or reuse it from the cache); print where it is",
    )
    train.add_argument("file", help="recipe .toml file")
    add_set_option(train)
    train.add_argument(
        "--out", metavar="PATH", help="also save the tokenizer.json here (a file or directory)"
    )
    train.add_argument("--json", action="store_true", help="print a JSON object")
    train.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.file, args.sets)
    task = build_component(recipe.data.task)
    path = task.tokenizer_path()
    existed = path is not None and path.is_file()
    if not existed:
        print(f"training the tokenizer of task {recipe.data.task.name!r}...", file=sys.stderr)
    tokenizer = task.tokenizer()
    if tokenizer is None:
        raise MiraslabError(
            f"task {recipe.data.task.name!r} has its own vocabulary ({task.vocab_size()} tokens); "
            "it has no tokenizer to train"
        )
    out = _save_copy(tokenizer, args.out) if args.out else None
    if not existed:
        how = "trained now"
    elif path is not None and path.resolve().is_relative_to(cache_root().resolve()):
        how = "reused from the cache"
    else:
        how = "given by the recipe"
    report = {
        "path": str(path) if path else None,
        "vocab_size": tokenizer.get_vocab_size(),
        "how": how,
        "out": str(out) if out else None,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"tokenizer: {report['path']} ({how})")
        print(f"vocab size: {report['vocab_size']}")
        if out:
            print(f"saved a copy: {out}")
    return 0


def _save_copy(tokenizer: Any, where: str) -> Path:
    out = Path(where)
    if out.is_dir() or where.endswith(("/", os.sep)):
        out = out / "tokenizer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out))
    return out
