"""What running packed documents each as if alone costs (``data.reset_at_documents``).

Two ways: the rows stay packed and the model is given each document's start
(``model(ids, documents=doc_start)``: a block-diagonal attention mask, the memory restarted
on its chunk grid; the trainer's way where every part of the model can, e.g. a per-token
memory), or the documents run apart: ``split_documents`` turns each packed row into one row
per document, padded to the longest document of the batch; ``length_buckets``
(``data.document_buckets``, the trainer's way otherwise) groups them by length into a few
batches, each padded to its own longest, run as consecutive passes.  This measures, for
documents of log-normal length (web text's shape: many short, a long tail), the extra token
positions and the time of a training step (forward and backward) of a small memory model,
for the three, against the packed batch without starts:

    python benchmarks/document_reset.py                       # a table (per-token gated delta)
    python benchmarks/document_reset.py --inner-steps mini_batch --memory mlp --algorithm momentum
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
from miraslab.data.documents import DOC_START, documents_apart, documents_apart_in_buckets, mark_documents
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


def step_seconds(
    model: torch.nn.Module, parts: list[TrainingBatch], repeats: int, starts: bool = False
) -> float:
    """The best of ``repeats`` steps, each a forward and backward pass per part (as the trainer);
    ``starts``: the parts are packed rows given their documents' starts."""
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        for batch in parts:
            logits = model(batch.inputs, documents=batch.extras[DOC_START]) if starts else model(batch.inputs)
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
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--buckets", type=int, default=4, help="data.document_buckets")
    parser.add_argument("--memory", default="linear", help="model.memory.memory")
    parser.add_argument("--algorithm", default="gd", help="model.memory.algorithm")
    parser.add_argument("--inner-steps", default="per_token", help="model.memory.inner_steps")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    torch.manual_seed(0)
    spec = {"vocab_size": 256, "d_model": args.d_model, "n_layers": 2, "n_heads": 4, "layout": args.layout}
    memory = {
        "chunk_size": 16,
        "memory": args.memory,
        "algorithm": args.algorithm,
        "inner_steps": args.inner_steps,
    }
    model = build_model(structure({**spec, "memory": memory}, ModelSpec))
    reason = model.documents_reason()
    print(f"documents packed with their starts: {'yes' if reason is None else 'no, ' + reason}")
    warm = mark_documents(TrainingBatch.of(packed_rows(args.rows, args.seq_len, 64, args.sigma, 1)), SEP)
    step_seconds(model, [warm], 1)  # warm-up, both ways
    if reason is None:
        step_seconds(model, [warm], 1, starts=True)
    results = []
    for median in args.medians:
        packed = TrainingBatch.of(packed_rows(args.rows, args.seq_len, median, args.sigma, seed=0))
        marked = mark_documents(packed, SEP)
        apart = documents_apart(packed, SEP)
        buckets = documents_apart_in_buckets(packed, SEP, args.buckets)
        # the ways interleaved, one step of each per repeat, so a load change on the (shared)
        # machine touches all alike; the best of the repeats for each
        ways = [([packed], False), ([apart], False), (buckets, False)]
        ways += [([marked], True)] if reason is None else []
        best = [math.inf] * len(ways)
        for _ in range(args.repeats):
            for index, (parts, starts) in enumerate(ways):
                best[index] = min(best[index], step_seconds(model, parts, 1, starts=starts))
        packed_s, apart_s, buckets_s = best[:3]
        starts_s = best[3] if reason is None else math.nan
        results.append(
            {
                "median_doc_tokens": median,
                "documents": apart.rows,
                "padded_shape": list(apart.inputs.shape),
                "extra_positions": apart.inputs.numel() / packed.inputs.numel() - 1,
                "bucket_shapes": [list(b.inputs.shape) for b in buckets],
                "bucket_extra_positions": sum(b.inputs.numel() for b in buckets) / packed.inputs.numel() - 1,
                "packed_step_s": packed_s,
                "apart_step_s": apart_s,
                "buckets_step_s": buckets_s,
                "starts_step_s": starts_s,
                "starts_time_ratio": starts_s / packed_s,
                "time_ratio": apart_s / packed_s,
                "buckets_time_ratio": buckets_s / packed_s,
            }
        )
    print(
        f"{args.layout}, d_model {args.d_model}, memory {args.memory} {args.algorithm} {args.inner_steps}, "
        f"{args.rows} rows of {args.seq_len}, log-normal document lengths (sigma {args.sigma}), "
        f"{args.buckets} buckets"
    )
    print(
        "| median doc | documents | one padded batch | extra | buckets | extra | packed step "
        "| packed, starts | time | one batch | time | buckets | time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        shape = "x".join(map(str, r["padded_shape"]))
        shapes = " + ".join("x".join(map(str, b)) for b in r["bucket_shapes"])
        print(
            f"| {r['median_doc_tokens']:g} | {r['documents']} | {shape} | {r['extra_positions']:+.0%} | "
            f"{shapes} | {r['bucket_extra_positions']:+.0%} | {r['packed_step_s'] * 1e3:.0f} ms | "
            + (
                f"{r['starts_step_s'] * 1e3:.0f} ms | {r['starts_time_ratio']:.2f}x | "
                if reason is None
                else "apart | - | "
            )
            + f"{r['apart_step_s'] * 1e3:.0f} ms | {r['time_ratio']:.2f}x | {r['buckets_step_s'] * 1e3:.0f} ms | "
            f"{r['buckets_time_ratio']:.2f}x |"
        )
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"args": vars(args), "results": results}, file, indent=2)


if __name__ == "__main__":
    main()
