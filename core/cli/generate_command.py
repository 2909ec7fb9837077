"""``miraslab generate RUN --prompt TEXT``: stream text from a trained run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import MiraslabError
from ..limits import MAX_SEED, check_count


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("generate", help="generate text from a trained run")
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory written by miraslab train")
    parser.add_argument("--prompt", default="", help="text to continue")
    parser.add_argument("--max-tokens", type=int, default=100, help="new tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint directory instead of the run's latest")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="run each token through every block as one compiled function (CUDA graphs on CUDA); "
        "a line on stderr says which step ran",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..generation import check_prompt, check_sampling

    check_sampling(args.temperature, args.top_k, args.top_p, args.max_tokens)
    if args.seed is not None:  # torch.Generator takes a 64-bit seed
        check_count(args.seed, "--seed", minimum=-(2**63), maximum=MAX_SEED)
    check_prompt(args.prompt)
    # a memory whose weights decay toward zero holds denormal floats after a long context,
    # whose arithmetic is many times slower on x86 CPUs; they change no logit: flush them
    # (and stop after, for a caller that runs this command in its own process)
    torch.set_flush_denormal(True)
    try:
        return _generate(args)
    finally:
        torch.set_flush_denormal(False)


def _generate(args: argparse.Namespace) -> int:
    import torch

    from ..generation import generate
    from ..train.run_dir import load_run

    loaded = load_run(args.run_dir, args.checkpoint)
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        raise MiraslabError(f"{args.run_dir}: the run has no tokenizer.json; its task is not text")
    separator = _separator_id(loaded.recipe, tokenizer)
    ids = tokenizer.encode(args.prompt).ids if args.prompt else []
    if not ids:  # an empty prompt starts a new document
        ids = [separator] if separator is not None else [0]
    prompt = torch.tensor([ids])
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    generated: list[int] = []
    shown = ""
    for token in generate(
        loaded.model,
        prompt,
        args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_token=separator,
        reset_token=separator if loaded.recipe.data.reset_at_documents else None,
        compile=args.compile,
        report=(lambda line: print(line, file=sys.stderr, flush=True)) if args.compile else None,
    ):
        if token == separator:
            break
        generated.append(token)
        text = tokenizer.decode(generated)
        if text.startswith(shown):  # print only what is new (a multi-byte character may need two tokens)
            sys.stdout.write(text[len(shown) :])
            sys.stdout.flush()
            shown = text
    sys.stdout.write("\n")
    return 0


def _separator_id(recipe: Any, tokenizer: Any) -> int | None:
    params = recipe.data.task.params
    separator = getattr(params, "separator", None)
    return tokenizer.token_to_id(separator) if separator else None
