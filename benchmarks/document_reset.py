"""What running packed documents apart costs (``data.reset_at_documents``): padding and time.

``split_documents`` turns each packed row into one row per document, padded to the longest
document of the batch.  This measures, for documents of log-normal length (web text's shape:
many short, a long tail), the extra token positions and the time of a training step
(forward and backward) of a small memory model, against the packed batch:

    python benchmarks/document_reset.py                       # a table
    python benchmarks/document_reset.py --json reset.json     # and the numbers
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from miraslab.data.batch import TrainingBatch
from miraslab.data.documents import documents_apart
from miraslab.model.language_model import build_model
from miraslab.model.spec import ModelSpec
from miraslab.params import structure

SEP = 1


def packed_rows(rows: int, seq_len: int, median: float, sigma: float, seed: int) -> torch.Tensor:
    """Rows of seq_len + 1 tokens packed from documents of log-normal length, each opened by SEP."""
    generator = torch.Generator().manual_seed(seed)
    stream: list[int] = []
    while len(stream) < rows * (seq_len + 1):
        length = max(1, round(median * math.exp(sigma * float(torch.randn((), generator=generator)))))
        stream += [SEP, *torch.randint(2, 256, (length,), generator=generator).tolist()]
    return torch.tensor(stream[: rows * (seq_len + 1)]).view(rows, seq_len + 1)


def step_seconds(model: torch.nn.Module, batch: TrainingBatch, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        logits = model(batch.inputs)
        F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="sum").backward()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--medians", type=float, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--layout", default="mal")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    torch.manual_seed(0)
    spec = {"vocab_size": 256, "d_model": 64, "n_layers": 2, "n_heads": 4, "layout": args.layout}
    model = build_model(structure({**spec, "memory": {"chunk_size": 16}}, ModelSpec))
    step_seconds(
        model, TrainingBatch.of(packed_rows(args.rows, args.seq_len, 64, args.sigma, 1)), 1
    )  # warm-up
    results = []
    for median in args.medians:
        packed = TrainingBatch.of(packed_rows(args.rows, args.seq_len, median, args.sigma, seed=0))
        apart = documents_apart(packed, SEP)
        packed_s, apart_s = (step_seconds(model, b, args.repeats) for b in (packed, apart))
        results.append(
            {
                "median_doc_tokens": median,
                "documents": apart.rows,
                "padded_shape": list(apart.inputs.shape),
                "extra_positions": apart.inputs.numel() / packed.inputs.numel() - 1,
                "packed_step_s": packed_s,
                "apart_step_s": apart_s,
                "time_ratio": apart_s / packed_s,
            }
        )
    print(
        f"{args.layout}, {args.rows} rows of {args.seq_len}, log-normal document lengths (sigma {args.sigma})"
    )
    print("| median doc | documents | padded batch | extra positions | packed step | apart step | time |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        shape = "x".join(map(str, r["padded_shape"]))
        print(
            f"| {r['median_doc_tokens']:g} | {r['documents']} | {shape} | {r['extra_positions']:+.0%} | "
            f"{r['packed_step_s'] * 1e3:.0f} ms | {r['apart_step_s'] * 1e3:.0f} ms | {r['time_ratio']:.2f}x |"
        )
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"args": vars(args), "results": results}, file, indent=2)


if __name__ == "__main__":
    main()
