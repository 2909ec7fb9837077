"""One prepared GPU check: every CUDA path proved, and the speed table, in one command.

    pip install -e '.[test,gpu,benchmarks]'     # FLA's kernels, titans-pytorch (both optional)
    python benchmarks/gpu_check.py --json gpu_check.json

On one H100 it is meant to finish in under 8 minutes (not yet run on a GPU).  Four pieces:

1. ``tests``: the ``cuda``-marked tests (tests/test_cuda.py: every layout, attention backend
   and memory rule, forward and backward, float32 and bf16 autocast, against the CPU float64
   oracle; decoding equal to the forward; a compiled step; FLA's kernels against ours), run
   by pytest in a child process; one row per test function, with its pass/fail/skip count.
2. ``memory layer``: one forward+backward of ``MemoryLayer`` per configuration (bf16
   autocast), miraslab's own path and, for the per-token delta rules, FLA's kernels through
   ``model.memory.kernel = "fla"``; titans-pytorch's ``NeuralMemory`` beside them where
   installed.  tokens/s, peak memory (``torch.cuda.max_memory_allocated``), and the share of
   the bf16 matmul peak measured in this run (FLOPs: torch's FlopCounterMode over one
   native miraslab step of the same configuration, so every row of a configuration is
   charged the same work; a Triton kernel's FLOPs are invisible to the counter).
3. ``training``: one AdamW step (bf16 autocast) of the paper-size ``titans-mag`` and
   ``gated-deltanet`` recipes (d_model 768, 12 layers: the 125M class); tokens/s and MFU with
   PaLM's model FLOPs (6 N per token for the N weights of the linear maps, plus 12 L d T per
   token for L attention layers over T visible tokens; the memory's inner loop is not
   counted, so MFU is a lower bound).
4. ``nccl``: a line saying why two-process NCCL cannot be checked on one GPU.

``--device cpu --tiny`` runs every piece at toy sizes on the CPU in seconds (the tests are then
skipped by pytest with their reason): CI checks the arguments, the table and the JSON that way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from _flops import counted_flops
from _subjects import MIRASLAB_CONFIGS, TITANS_CONFIGS, titans_available, titans_version
from torch import nn

REPO = Path(__file__).resolve().parent.parent
NCCL_LINE = (
    "two-process NCCL needs two GPUs: not checked here; the gloo test "
    "(tests/test_train.py, slow tier) covers the distributed code on the CPU"
)
PER_TOKEN_CONFIGS = ("delta-per-token", "gated-delta-per-token")
LAYER_CONFIGS = ("deep", "linear", *PER_TOKEN_CONFIGS)
TRAINING_RECIPES = ("titans-mag", "gated-deltanet")


@dataclass(frozen=True)
class Shape:
    """The sizes of one run: the full GPU check, or the CPU's toy version (``--tiny``)."""

    batch: int
    seq: int
    dim: int
    heads: int
    chunk: int
    train_batch: int
    train_seq: int
    train_sets: tuple[str, ...]
    matmul: int
    warmup: int
    repeats: int
    train_repeats: int


GPU_SHAPE = Shape(
    batch=4,
    seq=2048,
    dim=1024,
    heads=16,
    chunk=64,
    train_batch=8,
    train_seq=1024,
    train_sets=(),
    matmul=8192,
    warmup=3,
    repeats=10,
    train_repeats=5,
)
TINY_SHAPE = Shape(
    batch=1,
    seq=32,
    dim=32,
    heads=2,
    chunk=8,
    train_batch=1,
    train_seq=32,
    train_sets=("model.vocab_size=64", "model.d_model=32", "model.n_layers=1", "model.n_heads=2"),
    matmul=128,
    warmup=1,
    repeats=1,
    train_repeats=1,
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA (as the trainer runs); off on the CPU (float32 there)."""
    return torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")


@dataclass
class Timing:
    seconds: list[float]
    peak_bytes: int | None

    @property
    def median(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[len(ordered) // 2]


def timed(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> Timing:
    """Wall time of ``step`` per call, synchronised on both sides, after ``warmup`` calls
    (cuBLAS handles, autotuning, Triton compiles); peak allocated memory of the timed calls."""
    for _ in range(warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return Timing(seconds, peak)


def matmul_peak_tflops(device: torch.device, size: int, repeats: int = 20) -> float:
    """The measured bf16 (fp32 on the CPU) matmul rate: (size x size) @ (size x size) into a
    preallocated output, the best of ``repeats`` timed batches of 5."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)

    def step() -> None:
        for _ in range(5):
            torch.mm(a, b, out=out)

    timing = timed(step, device, warmup=2, repeats=repeats)
    return 5 * 2 * size**3 / min(timing.seconds) / 1e12


# --------------------------------------------------------------------------- 1. tests


def run_tests(python: str, select: str | None, timeout: float) -> dict[str, Any]:
    """The cuda-marked tests in a child pytest; outcomes per test from its JUnit XML."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "junit.xml"
        command = [
            python,
            "-m",
            "pytest",
            "-m",
            "cuda",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
        ]
        command += ["-k", select] if select else []
        command.append(str(REPO / "tests" / "test_cuda.py"))
        start = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"pytest ran past {timeout:.0f} s", "cases": [], "seconds": timeout}
        cases = parse_junit(report.read_text()) if report.exists() else []
    result = {"returncode": done.returncode, "cases": cases, "seconds": time.perf_counter() - start}
    if not cases:
        result["error"] = (done.stdout + done.stderr)[-2000:]
    return result


def parse_junit(text: str) -> list[dict[str, Any]]:
    cases = []
    for case in ElementTree.fromstring(text).iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (
                    (child.get("message") or "").strip().splitlines()[0][:300] if child.get("message") else ""
                )
                break
        name = case.get("name", "")
        cases.append(
            {
                "test": name.split("[")[0],
                "id": name,
                "outcome": outcome,
                "message": message,
                "seconds": float(case.get("time", 0.0)),
            }
        )
    return cases


def test_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per test function: how many of its cases passed, failed or were skipped, and why."""
    if "error" in result and not result["cases"]:
        return [
            {"section": "tests", "name": "pytest", "result": "did not run", "note": result["error"][-200:]}
        ]
    rows = []
    by_test: dict[str, list[dict[str, Any]]] = {}
    for case in result["cases"]:
        by_test.setdefault(case["test"], []).append(case)
    for test, cases in by_test.items():
        counts = Counter(c["outcome"] for c in cases)
        text = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        bad = [c for c in cases if c["outcome"] in ("failed", "error")]
        skipped = [c for c in cases if c["outcome"] == "skipped"]
        note = f"{bad[0]['id']}: {bad[0]['message']}" if bad else (skipped[0]["message"] if skipped else "")
        rows.append({"section": "tests", "name": test.removeprefix("test_"), "result": text, "note": note})
    return rows


# --------------------------------------------------------------------------- 2. memory layer


def layer_subjects(shape: Shape, fla_ok: bool) -> list[tuple[str, str, Callable[[], nn.Module]]]:
    """(implementation, configuration, builder) of every measured memory layer at ``shape``."""
    from miraslab.memory.layer import MemoryLayer

    head_dim = shape.dim // shape.heads

    def ours(config: str, kernel: str) -> Callable[[], nn.Module]:
        options = {**MIRASLAB_CONFIGS[config]}
        if config in PER_TOKEN_CONFIGS:
            options["kernel"] = kernel
        return lambda: MemoryLayer.from_options(
            shape.dim, heads=shape.heads, chunk_size=shape.chunk, **options
        )

    subjects = [("miraslab", config, ours(config, "native")) for config in LAYER_CONFIGS]
    if fla_ok:
        subjects += [("miraslab+fla", config, ours(config, "fla")) for config in PER_TOKEN_CONFIGS]
    if titans_available():
        from titans_pytorch import NeuralMemory

        for key in ("deep/batch64", "linear/batch64"):
            options = {
                **TITANS_CONFIGS[key],
                "dim": shape.dim,
                "heads": shape.heads,
                "dim_head": head_dim,
                "chunk_size": shape.chunk,
                "batch_size": shape.chunk,
            }
            subjects.append(
                ("titans-pytorch", key.split("/")[0], lambda options=options: NeuralMemory(**options))
            )
    return subjects


def layer_step(module: nn.Module, x: torch.Tensor, device: torch.device) -> Callable[[], None]:
    def step() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        with autocast(device):
            out = module(x)
        out = out[0] if isinstance(out, tuple) else out  # titans-pytorch returns (retrieved, state)
        out.float().sum().backward()

    return step


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_layers(
    shape: Shape, device: torch.device, peak_tflops: float, fla_ok: bool
) -> list[dict[str, Any]]:
    rows, flops_of = [], {}
    for impl, config, make in layer_subjects(shape, fla_ok):
        torch.manual_seed(0)
        row: dict[str, Any] = {
            "section": "memory layer",
            "name": f"{impl} {config}",
            "impl": impl,
            "config": config,
        }
        try:
            module = make().to(device)
            x = torch.randn(shape.batch, shape.seq, shape.dim, device=device, requires_grad=True)
            step = layer_step(module, x, device)
            if impl == "miraslab":  # the configuration's work, charged to every row of it
                flops_of[config] = counted_flops(step)
            timing = timed(step, device, shape.warmup, shape.repeats)
        except Exception as error:  # one row says what went wrong; the others still run
            row["note"] = "out of memory" if is_oom(error) else f"{type(error).__name__}: {str(error)[:160]}"
            rows.append(row)
            free(device)
            continue
        tokens = shape.batch * shape.seq
        row |= {"tokens_per_s": tokens / timing.median, "seconds": timing.seconds}
        row["peak_mib"] = timing.peak_bytes / 2**20 if timing.peak_bytes is not None else None
        work = flops_of.get(config) if impl != "titans-pytorch" else counted_flops(step)
        if work:
            row["flops"] = work
            row["share_of_peak"] = work / timing.median / (peak_tflops * 1e12)
        rows.append(row)
        del module, x, step
        free(device)
    return rows


# --------------------------------------------------------------------------- 3. training


def model_flops_per_token(model: nn.Module, seq: int) -> tuple[int, int]:
    """(PaLM model FLOPs per token, N): 6 N for the N weights of the linear maps, plus
    12 d T per attention layer over the T tokens it sees (its window, or the sequence)."""
    from miraslab.model.attention import Attention

    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    attention = 0
    for module in model.modules():
        if isinstance(module, Attention):
            visible = min(seq, module.window) if module.window else seq
            attention += 12 * module.heads * module.head_dim * visible
    return 6 * linear + attention, linear


def memory_kernel(model: nn.Module, fla_ok: bool) -> str | None:
    """Who runs the model's memories: "fla" where every per-token delta-rule memory is on FLA's
    kernels, "miraslab" otherwise (None: no memory)."""
    from miraslab.memory.neural_memory import NeuralMemory
    from miraslab.memory.paths import fla_delta

    memories = [m for m in model.modules() if isinstance(m, NeuralMemory)]
    if not memories:
        return None
    on_fla = [
        fla_ok
        and m.kernel != "native"
        and m.inner_steps == "per_token"
        and fla_delta.rule_problem(m.rule) is None
        for m in memories
    ]
    return "fla" if all(on_fla) else "miraslab"


def measure_training(
    shape: Shape, device: torch.device, peak_tflops: float, fla_ok: bool
) -> list[dict[str, Any]]:
    from miraslab.model.language_model import build_model
    from miraslab.recipe.resolve import load_recipe

    rows = []
    for name in TRAINING_RECIPES:
        row: dict[str, Any] = {"section": "training", "name": name}
        try:
            recipe = load_recipe(REPO / "recipes" / "papers" / f"{name}.toml", shape.train_sets)
            torch.manual_seed(0)
            model = build_model(recipe.model).to(device)
            fused = device.type == "cuda"
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
            vocab = recipe.model.vocab_size
            tokens = torch.randint(0, vocab, (shape.train_batch, shape.train_seq + 1), device=device)

            def step(model=model, optimizer=optimizer, tokens=tokens, vocab=vocab) -> None:
                optimizer.zero_grad(set_to_none=True)
                with autocast(device):
                    logits = model(tokens[:, :-1])
                loss = nn.functional.cross_entropy(
                    logits.float().reshape(-1, vocab), tokens[:, 1:].reshape(-1)
                )
                loss.backward()
                optimizer.step()

            timing = timed(step, device, shape.warmup, shape.train_repeats)
            per_token, linear = model_flops_per_token(model, shape.train_seq)
        except Exception as error:
            row["note"] = "out of memory" if is_oom(error) else f"{type(error).__name__}: {str(error)[:160]}"
            rows.append(row)
            free(device)
            continue
        tokens_per_s = shape.train_batch * shape.train_seq / timing.median
        row |= {
            "parameters": sum(p.numel() for p in model.parameters()),
            "linear_weights": linear,
            "batch": shape.train_batch,
            "seq": shape.train_seq,
            "tokens_per_s": tokens_per_s,
            "seconds": timing.seconds,
            "peak_mib": timing.peak_bytes / 2**20 if timing.peak_bytes is not None else None,
            "flops_per_token": per_token,
            "memory_kernel": memory_kernel(model, fla_ok),
            "mfu": per_token * tokens_per_s / (peak_tflops * 1e12),
        }
        rows.append(row)
        del model, optimizer, tokens, step
        free(device)
    return rows


# --------------------------------------------------------------------------- table, JSON, main


def environment(device: torch.device, fla_ok: bool, fla: str) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "titans_pytorch": titans_version(),
        "flash_linear_attention": fla if fla_ok else None,
        "git_commit": commit or None,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    """The one table: tests, memory layer, training and the NCCL line, one row each."""
    header = f"{'section':<13}{'name':<44}{'tokens/s':>11}{'peak MiB':>10}{'%peak':>7}  result / note (%peak: of the bf16 matmul peak; training: MFU)"
    lines = [header, "-" * len(header)]
    for row in rows:
        share = row.get("share_of_peak", row.get("mfu"))
        result = row.get("result", "")
        note = row.get("note", "")
        text = "; ".join(t for t in (result, note) if t)
        lines.append(
            f"{row['section']:<13}{row['name'][:43]:<44}{_fmt(row.get('tokens_per_s'), ',.0f'):>11}"
            f"{_fmt(row.get('peak_mib'), ',.0f'):>10}{_fmt(share * 100 if share is not None else None, '.1f'):>7}"
            f"  {text}"
        )
    return "\n".join(lines)


def fla_status(device: torch.device) -> tuple[bool, str]:
    """Whether FLA's kernels run here, and the version or why not."""
    if device.type != "cuda":
        return False, "not on a CPU (FLA's kernels are Triton, CUDA only)"
    from miraslab.memory.paths import fla_delta

    found = fla_delta.kernels()
    if isinstance(found, str):
        return False, found
    return True, found.version


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: the whole check in seconds (CI, CPU)")
    parser.add_argument("--dry-run", action="store_true", help="same as --device cpu --tiny")
    parser.add_argument("--json", type=Path, help="write every number to this JSON file")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=("tests", "layer", "training"),
        help="pieces to leave out",
    )
    parser.add_argument("-k", dest="select", help="pytest -k expression for the cuda tests")
    parser.add_argument("--tests-timeout", type=float, default=300.0, help="seconds for the tests piece")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.tiny = "cpu", True
    if args.device not in ("cuda", "cpu") and not args.device.startswith("cuda:"):
        parser.error(f"--device must be cuda, cuda:N or cpu, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(
            "--device cuda: no CUDA GPU here (torch.cuda.is_available() is False); use --device cpu --tiny"
        )
    if args.device == "cpu" and not args.tiny:
        parser.error("--device cpu runs only the toy sizes: add --tiny (or use --dry-run)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    shape = TINY_SHAPE if args.tiny else GPU_SHAPE
    started = time.perf_counter()
    fla_ok, fla = fla_status(device)
    peak = matmul_peak_tflops(device, shape.matmul)
    rows: list[dict[str, Any]] = []
    tests = None
    if "tests" not in args.skip:
        tests = run_tests(sys.executable, args.select, args.tests_timeout)
        rows += test_rows(tests)
    if "layer" not in args.skip:
        rows += measure_layers(shape, device, peak, fla_ok)
    if "training" not in args.skip:
        rows += measure_training(shape, device, peak, fla_ok)
    rows.append({"section": "nccl", "name": "two-process all-reduce", "result": "not run", "note": NCCL_LINE})
    env = environment(device, fla_ok, fla)
    print(
        f"{env['device']}: measured {'bf16' if device.type == 'cuda' else 'fp32'} matmul peak {peak:.1f} TFLOP/s; "
        f"flash-linear-attention: {fla}; titans-pytorch: {env['titans_pytorch'] or 'not installed'}"
    )
    print(table(rows))
    elapsed = time.perf_counter() - started
    print(f"finished in {elapsed:.0f} s")
    if args.json:
        record = {
            "environment": env,
            "shape": asdict(shape),
            "matmul_peak_tflops": peak,
            "fla": {"runs": fla_ok, "detail": fla},
            "tests": tests,
            "rows": rows,
            "nccl": NCCL_LINE,
            "seconds": elapsed,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    failed = any(c["outcome"] in ("failed", "error") for c in (tests or {}).get("cases", []))
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
