"""Per-token decode time of titans-mag beside a transformer of the same size, by context length.

    python benchmarks/decode.py [--contexts 1024 4096 16384] [--json decode.json] [--threads 1]

For each model and context L: prefill L random tokens (``generation.prefill``), then time
``--steps`` single-token steps three ways, each continuing the same prefilled state:
``forward`` (the model's forward per token with the state a prefill returns: what
``generate`` ran before the decode step), ``eager`` (``DecodeStep``: ring KV caches, the
memory's token step) and ``compiled`` (``DecodeStep(compile=True)``: the whole step one
``torch.compile``d function).  Each first runs a warm-up of one memory chunk and two tokens,
so that both compiled graphs (a token inside a chunk, a token that closes it) exist; then
the steps are timed in ``--rounds`` rounds, each timing ``steps / rounds`` tokens of every
(model, mode) in a shuffled order, so that load from other processes hits them alike.
Prints ms per token (median over rounds of each round's mean), titans-mag / transformer per
context and mode (the median over rounds of the ratio within a round), and the same from
each one's fastest round; targets (issue 37) are printed with pass/fail, nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
# a small model: the paper recipes' CPU size (recipes/base/paper-size.toml's comment)
SIZE = ["model.d_model=128", "model.n_layers=2", "model.n_heads=4"]
MODELS = {"titans-mag": "recipes/papers/titans-mag.toml", "transformer": "recipes/baselines/transformer.toml"}
MODES = ("forward", "eager", "compiled")


class Stepper:
    """One model decoding from a prefilled state in one mode; ``run(n)`` times n tokens."""

    def __init__(self, model: torch.nn.Module, logits: torch.Tensor, state: object, mode: str, capacity: int):
        from miraslab.model.decode_step import DecodeStep

        self.model, self.state, self.mode = model, state, mode
        self.token = logits[:, -1:].argmax(-1)
        self.decoder = None
        if mode != "forward":
            self.decoder = DecodeStep(model, state, capacity, compile=mode == "compiled")
        self.samples: list[float] = []  # ms per token, one per round

    @property
    def ran(self) -> str:
        """What ran, asked after the timing: a compile that fails on its first call falls back."""
        return self.decoder.describe() if self.decoder is not None else "forward"

    def step(self, token: torch.Tensor) -> torch.Tensor:
        if self.decoder is not None:
            return self.decoder.step(token)
        logits, self.state = self.model(token, state=self.state, return_state=True)
        return logits[:, -1]

    def run(self, tokens: int) -> float:
        start = time.perf_counter()
        for _ in range(tokens):
            self.token = self.step(self.token).argmax(-1, keepdim=True)
        return (time.perf_counter() - start) / tokens * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--steps", type=int, default=64, help="timed single-token steps per row")
    parser.add_argument(
        "--rounds", type=int, default=8, help="the steps are timed in this many interleaved rounds"
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="a recipe override for both models"
    )
    parser.add_argument(
        "--keep-denormals", action="store_true", help="do not flush denormal floats (miraslab generate does)"
    )
    parser.add_argument("--json", default="", help="write the table here")
    args = parser.parse_args()

    import miraslab

    torch.set_num_threads(args.threads)
    flushed = not args.keep_denormals and torch.set_flush_denormal(True)  # as miraslab generate runs
    torch.manual_seed(0)
    sets = SIZE + args.sets
    print(
        f"decode, {' '.join(sets)}, {args.steps} steps, {args.threads} thread(s), torch {torch.__version__}"
    )
    rows = []
    for context in args.contexts:
        from miraslab.generation import prefill

        prompt = torch.randint(0, 1000, (1, context))
        steppers = {}
        torch._dynamo.reset()  # each context compiles its own graphs (full attention's cache grows)
        for name, recipe in MODELS.items():
            model = miraslab.build_model(ROOT / recipe, sets).eval()
            with torch.no_grad():
                logits, state = prefill(model, prompt)
            warm = model.spec.memory.chunk_size + 2  # both compiled graphs: in a chunk, closing it
            for mode in args.modes:
                stepper = Stepper(model, logits, state, mode, context + warm + args.steps)
                with torch.no_grad():
                    stepper.run(warm)
                steppers[name, mode] = stepper
        # rounds interleave every (model, mode), so that load from other processes hits them alike
        per_round = max(1, args.steps // args.rounds)
        for _ in range(args.rounds):
            order = list(steppers.values())
            random.shuffle(order)
            for stepper in order:
                with torch.no_grad():
                    stepper.samples.append(stepper.run(per_round))
        for (name, mode), stepper in steppers.items():
            ms = statistics.median(stepper.samples)
            spread = (max(stepper.samples) - min(stepper.samples)) / ms
            rows.append(
                {
                    "model": name,
                    "context": context,
                    "mode": mode,
                    "ms_per_token": ms,
                    "spread": spread,
                    "samples": stepper.samples,
                    "ran": stepper.ran,
                }
            )
            print(
                f"  {name:<12} L={context:<6} {mode:<9} {ms:8.2f} ms/token (range/median {spread:.2f})   [{stepper.ran}]",
                flush=True,
            )

    def samples(name: str, context: int, mode: str) -> list[float]:
        return next(
            r["samples"] for r in rows if (r["model"], r["context"], r["mode"]) == (name, context, mode)
        )

    # ratio: the median over rounds of the two models' times in the same round (load drift
    # cancels); best: each model's fastest round, the least disturbed by other processes
    print(
        f"\n{'context':>8} {'mode':<9} {'titans-mag ms':>14} {'transformer ms':>15} {'ratio':>6}"
        f" {'best titans-mag':>16} {'best transformer':>17} {'ratio':>6}"
    )
    ratios = {}
    for context in args.contexts:
        for mode in args.modes:
            mag, attention = samples("titans-mag", context, mode), samples("transformer", context, mode)
            ratio = statistics.median(a / b for a, b in zip(mag, attention, strict=True))
            best = min(mag) / min(attention)
            ratios[context, mode] = ratio, best
            print(
                f"{context:>8} {mode:<9} {statistics.median(mag):>14.2f} {statistics.median(attention):>15.2f}"
                f" {ratio:>6.2f} {min(mag):>16.2f} {min(attention):>17.2f} {best:>6.2f}"
            )
    print()
    for context, bound in ((4096, 1.0), (1024, 1.5)):
        if (context, "compiled") in ratios:
            ratio, best = ratios[context, "compiled"]
            verdict = "PASS" if ratio <= bound else "FAIL"
            print(
                f"target: compiled titans-mag <= {bound}x the transformer at {context}: {ratio:.2f}x {verdict}"
                f" (best rounds: {best:.2f}x)"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "sets": sets,
                    "steps": args.steps,
                    "threads": args.threads,
                    "denormals_flushed": flushed,
                    "torch": torch.__version__,
                    "machine": platform.machine(),
                    "python": sys.version.split()[0],
                    "rows": rows,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
