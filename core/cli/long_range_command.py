"""``miraslab eval RUN --long-range [--twin RUN] [--window W] [--text FILE ...]``: loss by
position and by recall class (beyond-window recall hits, near hits, other), with the memory
carried, reset at every chunk, its read zeroed, and for a twin run; see ``miraslab.long_range``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import MiraslabError

PLOT = "long_range.png"


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "long-range evaluation",
        "loss beyond the attention window, by position and by recall class, under four conditions",
    )
    group.add_argument(
        "--long-range",
        action="store_true",
        help="loss by position bucket and by token class (beyond-window recall hits, near hits, other) "
        "with the memory carried, reset, zeroed and for --twin; writes RUN/long_range.png",
    )
    group.add_argument(
        "--twin", type=Path, metavar="RUN", help="a run to compare on the same tokens (same tokenizer)"
    )
    group.add_argument(
        "--window",
        type=int,
        metavar="W",
        help="the window W of the classes and buckets (default: model.attention.window; "
        "model.memory.chunk_size for a model without attention; required with full attention)",
    )
    group.add_argument(
        "--text",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="local text files instead of the validation split: each tokenised with the run's "
        "tokenizer and cut into rows of the run's seq_len",
    )
    group.add_argument(
        "--resamples",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples over rows (default 1000)",
    )
    group.add_argument(
        "--bootstrap-seed", type=int, default=0, metavar="S", help="bootstrap seed (default 0)"
    )
    group.add_argument(
        "--plot", type=Path, metavar="PNG", help=f"where the picture goes (default RUN/{PLOT})"
    )


def check_options(args: argparse.Namespace) -> None:
    """Long-range options given without --long-range, or out of range: one-line errors."""
    if not args.long_range:
        for flag, value in (("--twin", args.twin), ("--window", args.window), ("--text", args.text),
                            ("--plot", args.plot)):  # fmt: skip
            if value is not None:
                raise MiraslabError(f"{flag} applies to --long-range, which is not given")
        return
    if args.memory != "carried":
        raise MiraslabError(
            "--memory: --long-range evaluates every memory condition itself; leave --memory out"
        )
    if args.window is not None and args.window < 1:
        raise MiraslabError(f"--window: expected an integer >= 1, got {args.window}")
    if args.resamples < 1:
        raise MiraslabError(f"--resamples: expected an integer >= 1, got {args.resamples}")


def run(args: argparse.Namespace) -> int:
    from ..long_range import long_range_evaluation, model_window, plot_long_range
    from ..train.run_dir import load_run
    from .evaluation_data import run_task, validation_batches

    loaded = load_run(args.run_dir, args.checkpoint)
    window, source = _window(args.window, model_window(loaded.model))
    twin = _twin(args.twin, loaded) if args.twin is not None else None
    if args.text:
        if args.task or args.sets:
            raise MiraslabError(
                "--text: evaluates the files with the run's own tokenizer; leave --task and --set out"
            )
        batches = _file_batches(args.text, loaded)
        source_name = ", ".join(str(path) for path in args.text)
    else:
        recipe, task = run_task(args.run_dir, loaded, args.task, [*_run_tokenizer(args, loaded), *args.sets])
        batches = validation_batches(task, recipe, args.batches)
        source_name = f"{recipe.data.task.name} validation split, {args.batches} batches"
    result = long_range_evaluation(
        loaded.model, batches, window, twin=twin, resamples=args.resamples, seed=args.bootstrap_seed
    )
    head = {
        "run": str(args.run_dir),
        "step": loaded.step,
        "twin": str(args.twin) if args.twin is not None else None,
        "data": source_name,
        "window_from": source,
    }
    plot = args.plot or Path(args.run_dir) / PLOT
    title = f"{Path(args.run_dir).name} at step {loaded.step}" + (
        f" vs twin {args.twin.name}" if twin else ""
    )
    plot_long_range(result, plot, title)
    output = head | result | {"plot": str(plot)}
    if args.json:
        print(json.dumps(output, indent=2))
    else:
        print(_table(output))
    return 0


def _run_tokenizer(args: argparse.Namespace, loaded: Any) -> list[str]:
    """``task.tokenizer=RUN/tokenizer.json`` for a text run, so that another dataset given with
    ``--set task.dataset=...`` is read with the run's tokenizer, not one trained on it."""
    path = Path(args.run_dir) / "tokenizer.json"
    own = loaded.tokenizer is not None and not args.task and loaded.recipe.data.task.name == "text"
    if not own or any(item.startswith("task.tokenizer=") for item in args.sets):
        return []
    return [f"task.tokenizer={json.dumps(str(path))}"]


def _window(given: int | None, found: tuple[int, str] | None) -> tuple[int, str]:
    if given is not None:
        return given, "--window"
    if found is None:
        raise MiraslabError(
            "--window: the model attends over its whole context (model.attention.window = 0); give the W "
            "to classify by, e.g. --window 64"
        )
    return found


def _twin(path: Path, loaded: Any) -> Any:
    from ..train.run_dir import load_run

    twin = load_run(path)
    if twin.recipe.model.vocab_size != loaded.recipe.model.vocab_size or _tokenizer_text(
        twin
    ) != _tokenizer_text(loaded):
        raise MiraslabError(
            f"--twin: {path} reads other tokens than the run (its tokenizer or vocabulary differs); a twin "
            "must share the run's tokenizer"
        )
    return twin.model


def _tokenizer_text(loaded: Any) -> str | None:
    return loaded.tokenizer.to_str() if loaded.tokenizer is not None else None


def _file_batches(paths: list[Path], loaded: Any) -> list[Any]:
    from ..long_range import text_rows

    if loaded.tokenizer is None:
        raise MiraslabError("--text: the run has no tokenizer.json (its task is not text)")
    seq_len, batch_size = loaded.recipe.data.seq_len, loaded.recipe.train.batch_size
    batches, short = [], []
    for path in paths:
        if not path.is_file():
            raise MiraslabError(f"--text: {path} is not a file")
        ids = loaded.tokenizer.encode(path.read_text(errors="replace"), add_special_tokens=False).ids
        if len(ids) <= seq_len:  # a glob of a package's files holds a few short ones
            short.append(path)
            continue
        batches += text_rows(ids, seq_len, batch_size)
    if not batches:
        raise MiraslabError(
            f"--text: no file holds one row of {seq_len + 1} tokens (the run's data.seq_len + 1)"
        )
    if short:
        names = ", ".join(p.name for p in short[:3]) + (
            f" and {len(short) - 3} more" if len(short) > 3 else ""
        )
        print(
            f"--text: skipped {len(short)} file(s) shorter than one row of {seq_len + 1} tokens: {names}",
            file=sys.stderr,
        )
    return batches


def _cell(point: dict[str, Any]) -> str:
    if point["mean"] is None:
        return f"{'—':>22}"
    return f"{point['mean']:7.3f} [{point['low']:6.3f},{point['high']:6.3f}]"


def _table(output: dict[str, Any]) -> str:
    conditions = output["conditions"]
    lines = [
        f"{output['run']} at step {output['step']}, {output['data']}: W = {output['window']} "
        f"({output['window_from']}), {output['rows']} rows, {output['all']['tokens']:,} tokens; "
        f"loss in nats [{output['bootstrap']['level']:.0%} bootstrap over rows, "
        f"{output['bootstrap']['resamples']} resamples]",
        f"{'':>24}" + "".join(f"{name:>24}" for name in conditions),
    ]
    rows = [(f"{name} ({column['tokens']:,})", column) for name, column in output["classes"].items()]
    rows.append((f"all ({output['all']['tokens']:,})", output["all"]))
    rows += [(f"pos {b['from']}-{b['to']} ({b['tokens']:,})", b) for b in output["by_position"]]
    for label, column in rows:
        lines.append(f"{label:>24}" + "".join(f"{_cell(column['loss'][name]):>24}" for name in conditions))
    beyond = output["classes"]["beyond"]["gain"]
    for gain, meaning in (
        ("carry", "reset − carried"),
        ("read", "zeroed − carried"),
        ("twin", "twin − carried"),
    ):
        if gain in beyond:
            lines.append(
                f"beyond-window recall hits, {gain} gain ({meaning}): {_cell(beyond[gain]).strip()} nats"
            )
    lines.append(f"wrote {output['plot']}")
    return "\n".join(lines)
