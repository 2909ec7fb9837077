"""Speed and peak memory of miraslab's MemoryLayer, beside titans-pytorch's NeuralMemory.

    python benchmarks/memory_layer.py [--quick] [--json out.json] [--threads 2] [--allocator glibc]
    python benchmarks/memory_layer.py --profile [deep|linear|delta]

Measures, at dim 256, batch 2, 4 heads of width 64, chunk 64 (see README.md):
forward+backward tokens/s (median over interleaved repeats), peak-RSS growth of one
forward+backward (fresh child process per configuration), the CPU's fp32 matmul GFLOP/s
in the same run, and the fraction of it the chunked linear-memory layer reaches.  The timing
process keeps freed memory as miraslab's trainer does (``--allocator glibc``: glibc's defaults).
The per-token delta rules (``inner_steps = "per_token"``) are also timed with
flash-linear-attention's pure-PyTorch chunked references in their place when it is
installed (``pip install -e '.[benchmarks]'``; its Triton kernels need a GPU, so only
``fla/ops/*/naive.py`` is loaded, without importing ``fla``).
Targets are printed with pass/fail; nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# _peak_memory, _flops, _subjects: helpers beside this script (its directory is on sys.path)
import _peak_memory
import torch
from _flops import counted_flops, linear_chunked_flops, matmul_gflops, per_token_chunked_flops
from _subjects import (
    BATCH,
    CHUNK,
    CHUNK_READS,
    CHUNK_READS_LABEL,
    COMPILED_CHUNKS,
    DIM,
    FLA,
    FLA_CONFIGS,
    FLA_PATH,
    HEAD_DIM,
    HEADS,
    MIRASLAB,
    MIRASLAB_CONFIGS,
    TITANS,
    TITANS_CONFIGS,
    Case,
    base_config,
    build,
    fla_unavailable,
    fla_version,
    label,
    make_input,
    make_step,
    runs_chunk_step,
    titans_available,
    titans_version,
)

TARGET_SEQ = 1024  # the issue's targets are stated at seq 1024 ...
RECURRENT_TARGET_SEQ = 2048  # ... and chunked vs recurrent at seq 2048


@dataclass
class Plan:
    lengths: tuple[int, ...]
    recurrent_lengths: tuple[int, ...]
    repeats: int  # timed forward+backward passes per (case, length), after one warm-up
    recurrent_repeats: int  # the token loop is slow: fewer passes, spread over the rounds
    threads: int
    memory: bool = True
    titans: bool = True
    fla: bool = True  # flash-linear-attention's naive chunked delta rules, when installed
    compiled_chunks: bool = True  # also time the configurations that run a chunk step, compiled
    configs: tuple[str, ...] = tuple(MIRASLAB_CONFIGS)  # the miraslab configurations measured

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        if args.quick:
            plan = cls((256, 1024), (256,), 5, 5, args.threads)  # the token loop at 256 is cheap
        else:
            plan = cls((256, 512, 1024, 2048), (256, 2048), 11, 3, args.threads)
        if args.lengths:
            plan.lengths = tuple(args.lengths)
            plan.recurrent_lengths = tuple(n for n in plan.recurrent_lengths if n in plan.lengths) or (
                min(plan.lengths),
            )
        if args.repeats:
            plan.repeats = args.repeats
            plan.recurrent_repeats = min(plan.recurrent_repeats, args.repeats)
        plan.memory = not args.no_memory
        plan.titans = titans_available() and not args.no_titans
        skipped = "--no-fla" if args.no_fla else fla_unavailable()
        plan.fla = skipped is None
        if skipped is not None:
            print(f"FLA rows skipped: {skipped}", flush=True)
        plan.compiled_chunks = not args.no_compiled_chunks and not args.compile
        if args.configs:
            plan.configs = tuple(args.configs)
        return plan


@dataclass
class Job:
    case: Case
    seq: int
    samples: dict[int, float] = field(default_factory=dict)  # round -> seconds per forward+backward
    faults: dict[int, int] = field(default_factory=dict)  # round -> minor page faults in that pass
    peak: dict[str, float | bool] | None = None
    flops: int | None = None  # matmul FLOPs torch executed (FlopCounterMode)

    @property
    def times(self) -> list[float]:
        return list(self.samples.values())

    @property
    def tokens_per_s(self) -> float:
        return BATCH * self.seq / statistics.median(self.times)


def make_jobs(plan: Plan) -> list[Job]:
    jobs = []
    for config in plan.configs:
        jobs += [Job(Case(MIRASLAB, config, "chunked"), n) for n in plan.lengths]
        jobs += [Job(Case(MIRASLAB, config, "recurrent"), n) for n in plan.recurrent_lengths]
        if plan.compiled_chunks and runs_chunk_step(config):
            jobs += [Job(Case(MIRASLAB, config, COMPILED_CHUNKS), n) for n in plan.lengths]
    if plan.titans:
        for name in TITANS_CONFIGS:
            config, mode = name.split("/")
            jobs += [Job(Case(TITANS, config, mode), n) for n in plan.lengths]
    if plan.fla:
        for config, (_, _, layer) in FLA_CONFIGS.items():
            if layer in plan.configs:
                jobs += [Job(Case(FLA, config, FLA_PATH), n) for n in plan.lengths]
    return jobs


def memory_jobs(jobs: list[Job]) -> dict[str, list[int]]:
    """Lengths to measure peak memory at, per configuration key.

    The recurrent path only at its shortest length: it keeps every token's materialised
    weights for backward (625 MiB for deep memory at seq 256, so ~5 GiB at 2048), and
    page-faulting that in on this shared VM took minutes.  Not the compiled chunk step:
    each child would compile it again.
    """
    wanted: dict[str, list[int]] = {}
    for job in jobs:
        if job.case.path == COMPILED_CHUNKS:
            continue
        wanted.setdefault(job.case.key, []).append(job.seq)
    return {
        key: [min(lengths)] if key.endswith("/recurrent") else sorted(lengths)
        for key, lengths in wanted.items()
    }


def cpu_stall_us() -> int | None:
    """Linux PSI: total microseconds in which some runnable task waited for a CPU."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return int(first.rsplit("total=", 1)[1])


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- timing


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed(step: Callable[[], None]) -> tuple[float, int]:
    """Seconds and minor page faults of one pass."""
    gc.disable()  # as timeit does: a collection inside one sample is noise, not the layer's cost
    try:
        faults, start = _minor_faults(), time.perf_counter()
        step()
        return time.perf_counter() - start, _minor_faults() - faults
    finally:
        gc.enable()


def run_timing(plan: Plan, jobs: list[Job]) -> tuple[list[float], dict[int, float]]:
    """Interleaved rounds: every round times each job once, in a shuffled order, beside a
    matmul probe, so machine-load drift hits all implementations alike.

    Returns all matmul GFLOP/s samples and each round's median of them."""
    steps: dict[int, Callable[[], None]] = {}
    for i, job in enumerate(jobs):
        module = build(job.case)
        steps[i] = make_step(module, make_input(job.seq))
        # warm-up: the recurrent path's per-token cost does not depend on the length, so a
        # short input warms it as well as a long one
        short = job.case.path == "recurrent" and job.seq > 2 * CHUNK
        (make_step(module, make_input(2 * CHUNK)) if short else steps[i])()
    matmul = matmul_gflops(repeats=20)
    # recurrent passes go to evenly spaced rounds
    every = max(1, plan.repeats // max(1, plan.recurrent_repeats))
    recurrent_rounds = set(range(0, plan.repeats, every)[: plan.recurrent_repeats])
    rng = random.Random(0)
    per_round: dict[int, float] = {}
    for r in range(plan.repeats):
        started = time.perf_counter()
        probe = matmul_gflops(repeats=3)
        matmul += probe
        per_round[r] = statistics.median(probe)
        order = [i for i, job in enumerate(jobs) if job.case.path != "recurrent" or r in recurrent_rounds]
        rng.shuffle(order)
        for i in order:
            jobs[i].samples[r], jobs[i].faults[r] = _timed(steps[i])
        gc.collect()
        log(f"  round {r + 1}/{plan.repeats}: {time.perf_counter() - started:.1f} s")
    matmul += matmul_gflops(repeats=10)
    return matmul, per_round


def count_flops(jobs: list[Job]) -> None:
    """Matmul FLOPs per pass (FlopCounterMode), outside the timed runs; not for the token loop."""
    for job in jobs:
        if job.case.path in ("recurrent", COMPILED_CHUNKS):
            continue
        try:
            job.flops = counted_flops(make_step(build(job.case), make_input(job.seq)))
        except Exception as error:  # a counter failure must not lose the timings
            log(f"  FLOP count failed for {job.case.key}: {error}")
    for job in jobs:  # compiling the chunk step keeps its matmuls: the eager pass's count
        if job.case.path == COMPILED_CHUNKS and (
            eager := _find(jobs, MIRASLAB, job.case.config, "chunked", job.seq)
        ):
            job.flops = eager.flops


# --------------------------------------------------------------------------- report


def _find(jobs: list[Job], impl: str, config: str, path: str, seq: int | None) -> Job | None:
    for job in jobs:
        if (job.case.impl, job.case.config, job.case.path, job.seq) == (impl, config, path, seq):
            return job
    return None


def _ratio(a: Job | None, b: Job | None) -> float | None:
    """Speed of ``a`` relative to ``b``: the median over rounds of time_b / time_a within a round.

    Pairing the two passes of one round (seconds apart) cancels most of the load drift a
    ratio of two medians would keep; jobs with no round in common fall back to that.
    """
    if a is None or b is None or not a.samples or not b.samples:
        return None
    common = sorted(set(a.samples) & set(b.samples))
    if not common:
        return a.tokens_per_s / b.tokens_per_s
    # per token: the two jobs may differ in length
    return statistics.median((b.samples[r] / b.seq) / (a.samples[r] / a.seq) for r in common)


def titans_ratios(jobs: list[Job], job: Job) -> dict[str, float]:
    """Speed of a miraslab chunked row relative to the matching titans-pytorch (and FLA) rows;
    a chunk-level-reads row also relative to its configuration with per-token reads."""
    if job.case.impl != MIRASLAB or job.case.path not in ("chunked", COMPILED_CHUNKS):
        return {}
    base = base_config(job.case.config)
    partners = {"deep": ("batch64", "default"), "linear": ("batch64",)}.get(base, ())
    out = {}
    for mode in partners:
        ratio = _ratio(job, _find(jobs, TITANS, base, mode, job.seq))
        if ratio is not None:
            out[f"vs titans {base} {mode}"] = ratio
    if base != job.case.config:  # what the per-token reads cost: the same layer, the same path
        ratio = _ratio(job, _find(jobs, MIRASLAB, base, job.case.path, job.seq))
        if ratio is not None:
            out[f"vs miraslab {base} (token reads)"] = ratio
    for fla_config, (_, function, layer) in FLA_CONFIGS.items():
        if job.case.config == layer and job.case.path == "chunked":
            ratio = _ratio(job, _find(jobs, FLA, fla_config, FLA_PATH, job.seq))
            if ratio is not None:
                out[f"vs fla {function}"] = ratio
    return out


def memory_growth(jobs: list[Job], job: Job) -> float | None:
    """peak(seq) / peak(previous measured seq) of the same case."""
    same = sorted(
        (j for j in jobs if j.case == job.case and j.peak is not None and j.seq < job.seq),
        key=lambda j: j.seq,
    )
    if not same or job.peak is None:
        return None
    return float(job.peak["peak_growth_mib"]) / float(same[-1].peak["peak_growth_mib"])


def linear_formula_flops(job: Job) -> dict[str, int] | None:
    if job.case.impl != MIRASLAB or job.case.path != "chunked":
        return None
    if job.case.config in ("delta-per-token", "gated-delta-per-token"):
        gates = 1 if job.case.config == "delta-per-token" else 2  # lr / lr, decay
        return per_token_chunked_flops(BATCH, job.seq, DIM, HEADS, HEAD_DIM, CHUNK, gates)
    if job.case.config not in ("linear", "delta"):
        return None
    momentum = MIRASLAB_CONFIGS[job.case.config]["algorithm"] == "momentum"
    gates = 3 if job.case.config == "linear" else 1  # decay, lr, momentum / lr
    return linear_chunked_flops(BATCH, job.seq, DIM, HEADS, HEAD_DIM, CHUNK, momentum, gates)


def _iqr(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


def rows(jobs: list[Job], matmul_per_round: dict[int, float]) -> list[dict[str, Any]]:
    out = []
    for job in jobs:
        if not job.times:
            continue
        median = statistics.median(job.times)
        formula = linear_formula_flops(job)
        row: dict[str, Any] = {
            "impl": job.case.impl,
            "config": job.case.config,
            "label": label(job.case.config) if job.case.impl == MIRASLAB else job.case.config,
            # which weights a miraslab token reads; chunk-level reads are other semantics
            "semantics": (
                CHUNK_READS_LABEL
                if job.case.config in CHUNK_READS
                else "per-token reads"
                if job.case.impl == MIRASLAB
                else None
            ),
            "path": job.case.path,
            "seq": job.seq,
            "batch": BATCH,
            "tokens_per_s": job.tokens_per_s,
            "median_s": median,
            "times_s": job.times,
            "rounds": list(job.samples),
            "minor_faults_per_pass": statistics.median(job.faults.values()) if job.faults else None,
            "spread": iqr / median if (iqr := _iqr(job.times)) is not None else None,
            "peak_growth_mib": job.peak["peak_growth_mib"] if job.peak else None,
            "peak_growth_vs_previous_seq": memory_growth(jobs, job),
            "counted_flops": job.flops,
            "counted_gflops_per_s": job.flops / median / 1e9 if job.flops else None,
            "ratios": titans_ratios(jobs, job),
        }
        if formula is not None:
            row["formula_flops"] = formula
            row["formula_gflops_per_s"] = formula["total"] / median / 1e9
            # against the matmul probe of the same round, then the median over rounds
            row["matmul_fraction"] = statistics.median(
                formula["total"] / t / 1e9 / matmul_per_round[r] for r, t in job.samples.items()
            )
        out.append(row)
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(table: list[dict[str, Any]]) -> None:
    width = max(8, *(len(row["label"]) + 2 for row in table))
    header = (
        f"{'impl':<15}{'config':<{width}}{'path':<10}{'seq':>6}{'tok/s':>10}{'n':>3}{'iqr':>6}"
        f"{'faults':>7}{'peak MiB':>10}{'x prev':>8}{'GF/s':>7}{'%mm':>6}  vs titans-pytorch / fla"
    )
    print(header)
    print("-" * len(header))
    for row in table:
        ratios = ", ".join(
            f"{v:.2f}x {k.removeprefix('vs titans ').removeprefix('vs ')}" for k, v in row["ratios"].items()
        )
        fraction = row.get("matmul_fraction")
        spread = "-" if row["spread"] is None else f"{row['spread']:.0%}"
        print(
            f"{row['impl']:<15}{row['label']:<{width}}{row['path']:<10}{row['seq']:>6}"
            f"{row['tokens_per_s']:>10.0f}{len(row['times_s']):>3}{spread:>6}"
            f"{_fmt(row['minor_faults_per_pass'], '.0f'):>7}"
            f"{_fmt(row['peak_growth_mib'], '.1f'):>10}{_fmt(row['peak_growth_vs_previous_seq'], '.2f'):>8}"
            f"{_fmt(row['counted_gflops_per_s'], '.1f'):>7}"
            f"{_fmt(fraction * 100 if fraction is not None else None, '.0f'):>6}  {ratios}"
        )
    print(
        "tok/s: median forward+backward tokens/s (batch x seq / time) over n rounds; iqr: interquartile "
        "range / median; faults: median minor page faults per pass;\npeak MiB: peak-RSS growth of one forward+backward in a fresh process; x prev: peak / "
        "peak at the previous length;\nGF/s: matmul FLOPs executed (FlopCounterMode) / time; %mm: formula "
        "FLOPs / time / the same round's matmul GFLOP/s (linear memory only);\nvs titans-pytorch: "
        "median over rounds of the per-round speed ratio; path compiled: chunked with compile_chunks=True\n"
        "(the per-chunk step under torch.compile, compiled in the warm-up pass; peak memory not measured)."
    )
    if any(row["config"] in CHUNK_READS for row in table):
        print(
            '*: OTHER SEMANTICS (model.memory.reads = "chunk"): every token of a chunk reads the chunk-start '
            "weights, as titans-pytorch does,\nnot its own W_t; the writes are the same.  vs miraslab ... "
            "(token reads): what the per-token reads cost; vs titans: what the implementation costs."
        )


@dataclass
class Target:
    name: str
    wanted: str
    measured: float | None
    passed: bool | None
    note: str = ""


def _nearest(lengths: list[int], wanted: int) -> int | None:
    return min(lengths, key=lambda n: (abs(n - wanted), -n)) if lengths else None


def targets(jobs: list[Job], table: list[dict[str, Any]]) -> list[Target]:
    out: list[Target] = []
    chunked = sorted({j.seq for j in jobs if j.case.path == "chunked"})
    seq = _nearest(chunked, TARGET_SEQ)
    at = "" if seq == TARGET_SEQ else f" (measured at seq {seq}, not {TARGET_SEQ})"

    def speed(config: str, mode: str, wanted: float, text: str, path: str = "chunked") -> None:
        ours = _find(jobs, MIRASLAB, config, path, seq) if seq else None
        if ours is None and path != "chunked":
            return
        ratio = _ratio(ours, _find(jobs, TITANS, config, mode, seq)) if seq else None
        passed = None
        if ratio is not None:
            passed = ratio >= wanted if wanted > 1 else ratio > wanted  # "faster than" is strict
        note = at if ratio is not None else " (titans-pytorch not measured)"
        out.append(Target(text, f"{'>=' if wanted > 1 else '>'} {wanted:g}x", ratio, passed, note))

    speed("deep", "batch64", 2.0, "deep memory vs titans-pytorch deep batch_size=64")
    speed("deep", "default", 1.0, "deep memory vs titans-pytorch deep default")
    speed("linear", "batch64", 1.5, "linear memory vs titans-pytorch linear batch_size=64")
    compiled = "deep memory, compile_chunks, vs titans-pytorch (eager) deep"
    speed("deep", "batch64", 2.0, f"{compiled} batch_size=64", COMPILED_CHUNKS)
    speed("deep", "default", 1.0, f"{compiled} default", COMPILED_CHUNKS)

    for fla_config, (_, function, layer) in FLA_CONFIGS.items():
        ours = _find(jobs, MIRASLAB, layer, "chunked", seq) if seq else None
        ratio = _ratio(ours, _find(jobs, FLA, fla_config, FLA_PATH, seq)) if ours else None
        if ours is None:
            continue
        note = at if ratio is not None else " (flash-linear-attention not measured)"
        out.append(
            Target(
                f"{layer} chunked vs FLA's {function} (pure PyTorch) in the same layer",
                ">= 1x",
                ratio,
                None if ratio is None else ratio >= 1.0,
                note,
            )
        )
    for layer in ("delta-per-token", "gated-delta-per-token"):  # what exact per-token steps cost
        ratio = _ratio(
            _find(jobs, MIRASLAB, layer, "chunked", seq), _find(jobs, MIRASLAB, "delta", "chunked", seq)
        )
        if ratio is not None:
            out.append(Target(f"{layer} vs delta (mini-batch steps), chunked", "(reported)", ratio, None, at))

    linear_row = next(
        (
            r
            for r in table
            if (r["impl"], r["config"], r["path"], r["seq"]) == (MIRASLAB, "linear", "chunked", seq)
        ),
        None,
    )
    fraction = linear_row.get("matmul_fraction") if linear_row else None
    out.append(
        Target(
            "chunked linear layer, share of matmul GFLOP/s",
            ">= 40 %",
            fraction,
            None if fraction is None else fraction >= 0.40,
            at,
        )
    )

    measured_configs = [
        c for c in MIRASLAB_CONFIGS if any(j.case == Case(MIRASLAB, c, "chunked") for j in jobs)
    ]
    for config in measured_configs:
        both = sorted(
            {j.seq for j in jobs if j.case.config == config and j.case.path == "recurrent"}
            & {j.seq for j in jobs if j.case.config == config and j.case.path == "chunked"}
        )
        n = _nearest(both, RECURRENT_TARGET_SEQ)
        note = "" if n == RECURRENT_TARGET_SEQ else f" (measured at seq {n}, not {RECURRENT_TARGET_SEQ})"
        for path, text in (("chunked", "chunked"), (COMPILED_CHUNKS, "chunked with compile_chunks")):
            ours = _find(jobs, MIRASLAB, config, path, n)  # None when n is
            if ours is None and path != "chunked":
                continue
            ratio = _ratio(ours, _find(jobs, MIRASLAB, config, "recurrent", n))
            out.append(
                Target(
                    f"{config}: {text} vs recurrent",
                    ">= 10x",
                    ratio,
                    None if ratio is None else ratio >= 10,
                    note,
                )
            )

    for config in measured_configs:
        measured = sorted(
            (
                j
                for j in jobs
                if (j.case.impl, j.case.config, j.case.path) == (MIRASLAB, config, "chunked") and j.peak
            ),
            key=lambda j: j.seq,
        )
        exponent, note = None, " (peak memory not measured)"
        if len(measured) >= 2:
            lo, hi = measured[-2], measured[-1]
            growth = float(hi.peak["peak_growth_mib"]) / float(lo.peak["peak_growth_mib"])
            exponent = math.log(growth) / math.log(hi.seq / lo.seq)
            note = f" (seq {lo.seq} -> {hi.seq}: peak x{growth:.2f} for x{hi.seq / lo.seq:g} tokens)"
        out.append(
            Target(
                f"{config}: peak memory growth exponent (1 linear, 2 quadratic)",
                "<= 1.1",
                exponent,
                None if exponent is None else exponent <= 1.1,
                note,
            )
        )
    return out


def print_targets(found: list[Target]) -> None:
    print("\nTargets (2 CPU cores, dim 256, batch 2, seq 1024, chunk 64):")
    for t in found:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[t.passed]
        value = (
            "-"
            if t.measured is None
            else f"{t.measured * 100:.1f} %"
            if "%" in t.wanted
            else f"{t.measured:.2f}"
        )
        print(f"  {verdict}  {t.name}: {value} (target {t.wanted}){t.note}")


def environment(plan: Plan) -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    try:
        repo = Path(__file__).resolve().parent.parent
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "threads": plan.threads,
        "titans_pytorch": titans_version(),
        "flash_linear_attention": fla_version() if plan.fla else None,
        "git_commit": commit or None,
        "shape": {"batch": BATCH, "dim": DIM, "heads": HEADS, "head_dim": HEAD_DIM, "chunk": CHUNK},
    }


# --------------------------------------------------------------------------- profile


def _backward_nodes(prof: torch.profiler.profile) -> list[tuple[str, float]]:
    """Total CPU ms per autograd node: which backward formulas cost most (e.g. SliceBackward0)."""
    prefix = "autograd::engine::evaluate_function: "
    totals: dict[str, float] = {}
    for event in prof.events():
        if event.name.startswith(prefix):
            name = event.name.removeprefix(prefix)
            totals[name] = totals.get(name, 0.0) + event.cpu_time_total / 1e3
    return sorted(totals.items(), key=lambda item: -item[1])


def profile(config: str, seq: int, threads: int, rows_shown: int = 10) -> None:
    """Where one chunked forward+backward spends its time: torch ops, then Python functions."""
    import cProfile
    import pstats

    torch.set_num_threads(threads)
    step = make_step(build(Case(MIRASLAB, config, "chunked")), make_input(seq))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(f"unprofiled forward+backward: median {statistics.median(times[1:]) * 1e3:.0f} ms over 4 passes")
    passes = 3  # several passes, so one preempted pass on a shared machine weighs less
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(passes):
            step()
    print(
        f"torch.profiler, miraslab {config} chunked, seq {seq}, batch {BATCH}, {passes} passes: "
        f"top {rows_shown} by self CPU time"
    )
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows_shown))
    print("same, grouped by input shapes")
    print(
        prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=rows_shown
        )
    )
    print(f"backward nodes, top {rows_shown} by total CPU time (including the ops they call)")
    for name, ms in _backward_nodes(prof)[:rows_shown]:
        print(f"  {ms / passes:9.1f} ms per pass  {name}")
    profiler = cProfile.Profile()
    profiler.runcall(step)
    print("cProfile (Python functions), by cumulative time")
    pstats.Stats(profiler).strip_dirs().sort_stats("cumulative").print_stats(20)


# --------------------------------------------------------------------------- main


def set_allocator(choice: str) -> str:
    """Tune this process's malloc as ``miraslab train`` does (for every subject alike); says what holds.

    Under glibc's defaults, whether a pass faults its temporaries back in as fresh pages
    depends on the blocks earlier passes freed (the mmap threshold adapts), so it changed
    with the shuffled order of the rounds: the same layer measured 4,000 faults and 9 %
    slower per pass in one process, none in another.
    """
    if choice == "glibc":
        return "glibc defaults"
    from miraslab.train.allocator import keep_freed_memory

    if keep_freed_memory():
        return "keeps freed memory (as miraslab train sets it)"
    return "glibc defaults (keeping freed memory needs Linux glibc and MIRASLAB_KEEP_FREED_MEMORY != 0)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="fewer and shorter runs (about 2 minutes)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (multiples of 64)")
    parser.add_argument("--repeats", type=int, help="timed passes per configuration and length")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--no-titans", action="store_true", help="skip titans-pytorch even if installed")
    parser.add_argument(
        "--no-fla",
        action="store_true",
        help="skip flash-linear-attention's naive chunked rules even if installed",
    )
    parser.add_argument(
        "--no-compiled-chunks",
        action="store_true",
        help="skip the rows of layers with compile_chunks=True (about 15 s of compiling)",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=tuple(MIRASLAB_CONFIGS),
        help="the miraslab configurations to measure (default: all)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the chunked layers and titans-pytorch alike (minutes of compiling first)",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="deep",
        choices=tuple(MIRASLAB_CONFIGS),
        help="instead of benchmarking, profile one chunked forward+backward (default: deep) at --profile-seq",
    )
    parser.add_argument("--profile-seq", type=int, default=1024)
    parser.add_argument(
        "--allocator",
        choices=("trainer", "glibc"),
        default="trainer",
        help="trainer (default): keep freed memory for reuse, as `miraslab train` does on Linux; "
        "glibc: its defaults, under which passes fault memory back in depending on what ran before",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    allocator = set_allocator(args.allocator)
    log(f"allocator: {allocator}")
    if args.profile:
        profile(args.profile, args.profile_seq, args.threads)
        return 0

    plan = Plan.from_args(args)
    if args.compile:
        import _subjects

        _subjects.COMPILE = True
        # every (configuration, length) compiles its own static graph, as a training run's
        # fixed shapes do: with the defaults the second length of a layer recompiles with a
        # symbolic length, and past 8 variants of one forward dynamo runs the rest eager
        torch._dynamo.config.automatic_dynamic_shapes = False
        torch._dynamo.config.recompile_limit = 64
        log("compiled: chunked layers and titans-pytorch run under torch.compile (the first pass compiles)")
    env = environment(plan)
    env["compiled"] = args.compile
    env["allocator"] = allocator
    jobs = make_jobs(plan)
    began = time.perf_counter()
    if plan.memory:
        wanted = memory_jobs(jobs)
        log(f"peak memory: {len(wanted)} child processes ...")
        peaks = _peak_memory.measure_all(wanted, plan.threads)
        for job in jobs:
            job.peak = peaks.get((job.case.key, job.seq))
        log(f"  {time.perf_counter() - began:.0f} s")
    log(f"timing: {plan.repeats} interleaved rounds ...")
    stall_before, timing_began = cpu_stall_us(), time.perf_counter()
    samples, per_round = run_timing(plan, jobs)
    stall_after, timing_s = cpu_stall_us(), time.perf_counter() - timing_began
    contention = None
    if stall_before is not None and stall_after is not None:
        contention = (stall_after - stall_before) / 1e6 / timing_s
    matmul = statistics.median(samples)
    log(f"counting FLOPs ... ({time.perf_counter() - began:.0f} s so far)")
    import _subjects

    _subjects.COMPILE = False  # counted on eager modules: the same matmuls, without compiling again
    count_flops(jobs)

    print(
        f"matmul: fp32 1024x1024 @ 1024x1024, {plan.threads} threads: {matmul:.1f} GFLOP/s "
        f"(median of {len(samples)}, range {min(samples):.0f}-{max(samples):.0f}, sampled in every round)"
    )
    if contention is not None:
        print(
            f"CPU contention while timing: some task waited for a CPU {contention:.0%} of the time "
            "(/proc/pressure/cpu; a few % when this benchmark runs alone)"
        )
    print(
        f"torch {env['torch']}, titans-pytorch {env['titans_pytorch'] or 'not installed'}, {env['cpu']}; "
        f"batch {BATCH}, dim {DIM}, heads {HEADS}x{HEAD_DIM}, chunk {CHUNK}; allocator: {allocator}\n"
    )
    table = rows(jobs, per_round)
    print_table(table)
    found = targets(jobs, table)
    print_targets(found)
    print(f"\nwall time {time.perf_counter() - began:.0f} s")
    if args.json:
        report = {
            "environment": env,
            "cpu_pressure_while_timing": contention,
            "plan": asdict(plan),
            "matmul_gflops": {
                "median": matmul,
                "samples": samples,
                "per_round_median": per_round,
                "size": 1024,
                "dtype": "float32",
            },
            "titans_pytorch_configs": TITANS_CONFIGS if plan.titans else None,
            "miraslab_configs": MIRASLAB_CONFIGS,
            "rows": table,
            "targets": [asdict(t) for t in found],
        }
        args.json.write_text(json.dumps(report, indent=2))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
