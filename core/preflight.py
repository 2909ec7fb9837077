"""Preflight: the seeds' four gates and a capacity gate, run on a recipe in minutes before anyone trains it for days.

1. **proof of life** — a few optimizer steps, then no gate (MAG/MAC gate, the memory's
   data-dependent gates) is dead by what makes a gate dead: no finite, non-zero gradient
   reaching its parameters, a bf16/fp16 parameter whose updates round away, over 90 % of its
   pre-activations saturated (|z| > 4), or over 90 % pinned in the linear region (|z| < 0.1)
   where its design does not put it — a MAG/MAC gate whose gain holds it there (the
   TNT-Atlas seed's gain 0.5/sqrt(576), |z| ~ 0.02 for its whole run).  A memory gate whose
   designed init is inside the linear region (the lr gate's lr_init = lr_max / 2, z = 0)
   is not dead for sitting there.  And the outer gradient's norm stays finite and below
   1e6 over those steps: an inner step that overshoots (Muon at theta <= 1, Huber beyond
   its threshold) compounds chunk by chunk to 1e10-1e13 while the loss sits at chance and
   the clipped updates look normal.
2. **baton pass** — the memory's state carries information across chunk boundaries (and TNT
   shard boundaries): the gradient of a late token's logits with respect to an early token's
   embedding, the two farther apart than attention and convolutions can reach, is non-zero
   with the state carried and exactly zero with the state reset at every chunk.  A state that
   is dropped or detached at a boundary fails here, before any training.
2b. **capacity** (no training either) — each memory of the untrained model stores 4 random
    unit key/value pairs at its initial gates: read back with the keys, cosine >= 0.5
    (``miraslab.memory_capacity``).  Every deep memory of the paper recipes reads them back
    at -0.05 to 0.27, the delta rules at 0.98 (docs/diagnostics.md).
3. **memory ablation** — after a short training burst, resetting the memory at every chunk
   costs more than a threshold (1 % of the loss, or 5 accuracy points on a task with answers).
   A task without answers (text) cannot show it in minutes, so the burst runs on an MQAR probe
   whose queries sit beyond the attention's reach (with the window capped at 16 tokens).
4. **seed competition** — with ``init_from`` (a miraslab checkpoint or a Hugging Face Llama
   directory) or the recipe's ``[model.init]``, the same burst from those weights beats the
   burst from a random init on validation loss; skipped without either.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from .components import build_component
from .data.batch import IGNORE, TrainingBatch
from .data.documents import documents_apart, documents_separator
from .errors import RunStopped
from .memory.gate_projections import GateProjections, inverse_activation
from .memory.knockout import memories_of, memory_ablation, shard_lengths
from .model.memory_gate import MemoryGate
from .observation import observe, recorded_gates, stop_observing
from .recipe.resolve import load_recipe
from .recipe.schema import Recipe

LINEAR_REGION = 0.1  # |z| below this: sigmoid / tanh are linear there
SATURATION = 4.0  # |z| above this: sigmoid's slope below 0.018, no gradient flows
DEAD_SHARE = 0.9
MIN_CARRY_SHARE = 0.01
CAPACITY_PAIRS = 4  # random unit pairs each memory must store at its initial gates
MIN_CAPACITY_COSINE = 0.5  # the delta rule reads 4 such pairs back at ~0.96-0.99
MIN_CARRY_POINTS = 0.05
EXPLODED_GRAD_NORM = 1e6  # the outer gradient's norm before clipping; healthy recipes log 0.01-10


@attrs.frozen
class GateResult:
    name: str
    status: str  # "pass", "fail" or "skip"
    summary: str
    numbers: dict[str, Any] = attrs.field(factory=dict)

    def line(self) -> str:
        return f"{self.status.upper():4}  {self.name}: {self.summary}"


def run_preflight(
    recipe_path: Path,
    sets: Sequence[str] = (),
    *,
    life_steps: int = 5,
    burst_steps: int = 300,
    init_from: Path | None = None,
    gates: Sequence[str] = ("proof_of_life", "baton_pass", "capacity", "memory_ablation", "seed_competition"),
) -> list[GateResult]:
    recipe = load_recipe(recipe_path, list(sets))
    results = []
    with tempfile.TemporaryDirectory(prefix="miraslab-preflight-") as scratch:
        work = Path(scratch)
        for name in gates:
            if name == "proof_of_life":
                results.append(proof_of_life(recipe_path, sets, work / "life", life_steps))
            elif name == "baton_pass":
                results.append(baton_pass(recipe))
            elif name == "capacity":
                results.append(capacity_gate(recipe))
            elif name == "memory_ablation":
                results.append(memory_ablation_gate(recipe_path, sets, work / "burst", burst_steps))
            elif name == "seed_competition":
                results.append(seed_competition(recipe_path, sets, work / "seed", burst_steps, init_from))
            else:
                raise ValueError(f"unknown preflight gate {name!r}")
    return results


def _train(recipe: Recipe, out: Path, steps: int, init_from: Path | None = None) -> tuple[Any, dict]:
    from .train.trainer import Trainer

    trainer = Trainer(recipe, out, max_steps=steps, show_progress=False, init_from=init_from)
    return trainer, trainer.run()


def _burst_sets(recipe: Recipe, steps: int, evaluate: bool = True) -> list[str]:
    """A short run of ``steps`` that ends with an evaluation and the memory-use metric."""
    warmup = min(recipe.train.warmup_steps, max(1, steps // 10))
    # the schedule of a burst, not of the full run (a staged recipe keeps its stages: max_steps cuts it)
    length = [] if recipe.train.stages else [f"train.steps={steps}"]
    return [
        *length,
        f"train.warmup_steps={warmup}",
        f"train.eval_every={steps if evaluate else 0}",
        f"train.checkpoint_every={steps}",
        f"train.log_every={max(1, steps // 10)}",
        f"train.memory_use={'true' if evaluate else 'false'}",
        "train.memory_use_min_share=0.0",
    ]


# --- 1. proof of life ---------------------------------------------------------------------


def _gate_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (MemoryGate, GateProjections))]


def _designed_preactivation(module: torch.nn.Module, gate: str | None) -> float | None:
    """Where the gate's design puts its pre-activation before training: a memory gate's bias
    (``lr_init = lr_max / 2`` is z = 0 by design); None for a MAG/MAC gate, whose design is
    gain x RMS-normalised input, order 1."""
    if gate is None or not isinstance(module, GateProjections):
        return None
    return inverse_activation(module.definitions[gate])


def gate_activity(model: torch.nn.Module, batch: TrainingBatch) -> dict[str, dict[str, Any]]:
    """Per gate, from one forward and backward of ``batch``: the shares of pre-activations in
    the linear region and in saturation, the gradient norm of its parameters, their lowest
    precision, its designed pre-activation and its gain (a MAG/MAC gate's)."""
    observe(model)
    model.zero_grad(set_to_none=True)
    logits = model(batch.inputs).float()
    F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1), ignore_index=IGNORE
    ).backward()
    found: dict[str, dict[str, Any]] = {}
    for name, module, gate, _, pre in recorded_gates(model):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        z = pre.detach().float().abs()
        found[f"{name}.{gate}" if gate else name] = {
            "linear_share": float((z < LINEAR_REGION).float().mean()),
            "saturated_share": float((z > SATURATION).float().mean()),
            "mean_abs_preactivation": float(z.mean()),
            "grad_norm": math.sqrt(sum(float(g.float().square().sum()) for g in grads)) if grads else 0.0,
            "low_precision": any(p.dtype in (torch.bfloat16, torch.float16) for p in module.parameters()),
            "designed_preactivation": _designed_preactivation(module, gate),
            "gain": module.gain if isinstance(module, MemoryGate) else None,
        }
    stop_observing(model)
    model.zero_grad(set_to_none=True)
    return found


def why_dead(gate: dict[str, Any]) -> str | None:
    """What makes a gate dead, or None: judged by what stops it from working, not by where it
    sits.  A gate sitting at its designed init (the lr gate's sigmoid at z = 0) is alive if
    gradient reaches it and its parameters can move."""
    if not 0 < gate["grad_norm"] < math.inf:
        return f"gradient norm {gate['grad_norm']:.3g}: no gradient reaches its projection"
    if gate["low_precision"]:
        return "a bf16/fp16 parameter: updates of ~1e-5 round away, it cannot move"
    designed = gate["designed_preactivation"]
    if gate["saturated_share"] > DEAD_SHARE and (designed is None or abs(designed) <= SATURATION):
        return (
            f"{gate['saturated_share']:.0%} saturated (|z| > {SATURATION:g}, mean |z| "
            f"{gate['mean_abs_preactivation']:.3g}): no gradient flows through it"
        )
    if gate["linear_share"] > DEAD_SHARE and (designed is None or abs(designed) >= LINEAR_REGION):
        cause = (
            f"its gain {gate['gain']:.3g} holds it there (a gain that cannot move it out in a run)"
            if gate["gain"] is not None
            else f"its design puts it at z = {designed:.3g}"
        )
        return f"{gate['linear_share']:.0%} linear (mean |z| {gate['mean_abs_preactivation']:.3g}): {cause}"
    return None


def exploded_gradient(metrics: Sequence[dict[str, Any]]) -> str | None:
    """Why the outer gradient is not healthy, or None: a logged gradient norm that is
    non-finite or above ``EXPLODED_GRAD_NORM``."""
    norms = [(m["step"], m["grad_norm"]) for m in metrics if "grad_norm" in m]
    bad = [(step, norm) for step, norm in norms if not norm < EXPLODED_GRAD_NORM]
    if not bad:
        return None
    step, norm = bad[0]
    return (
        f"the outer gradient norm is {norm:.3g} at step {step} (at most {max(n for _, n in norms):.3g}; "
        f"healthy recipes log 0.01-10): an inner step that overshoots makes it grow chunk by chunk"
    )


def _val_batch(recipe: Recipe, rows: int = 4) -> TrainingBatch:
    task = build_component(recipe.data.task)
    val = task.batches("val", seq_len=recipe.data.seq_len, batch_size=rows, seed=recipe.seed)
    separator = documents_separator(task) if recipe.data.reset_at_documents else None
    return documents_apart(TrainingBatch.of(next(val)), separator)  # as the trainer sees it


def proof_of_life(recipe_path: Path, sets: Sequence[str], out: Path, steps: int) -> GateResult:
    recipe = load_recipe(recipe_path, list(sets))
    # every step's gradient norm logged: one spike is enough to fail
    recipe = load_recipe(
        recipe_path, [*sets, *_burst_sets(recipe, steps, evaluate=False), "train.log_every=1"]
    )
    try:
        trainer, _ = _train(recipe, out, steps)
    except RunStopped as error:
        if error.cause != "diverged":  # the trainer stops a run whose loss or gradient is non-finite
            raise
        return GateResult("proof_of_life", "fail", f"within {steps} steps, {error}", {"steps": steps})
    if (exploded := exploded_gradient(trainer.run_dir.metrics())) is not None:
        return GateResult("proof_of_life", "fail", f"after {steps} steps, {exploded}", {"steps": steps})
    model = trainer.raw
    if not _gate_modules(model):
        return GateResult("proof_of_life", "skip", "the model has no gates")
    found = gate_activity(model, _val_batch(recipe))
    dead = {name: cause for name, v in found.items() if (cause := why_dead(v)) is not None}
    numbers = {"gates": found, "steps": steps, "dead": dead}
    if dead:
        problems = [f"{name} {cause}" for name, cause in dead.items()]
        return GateResult(
            "proof_of_life",
            "fail",
            f"after {steps} steps, dead gates: "
            + "; ".join(problems[:4])
            + (f"; and {len(problems) - 4} more" if len(problems) > 4 else ""),
            numbers,
        )
    worst = max(found.items(), key=lambda item: item[1]["linear_share"])
    at_init = [n for n, v in found.items() if v["linear_share"] > DEAD_SHARE]
    note = f"; {', '.join(at_init)} at its designed init, receiving gradient" if at_init else ""
    return GateResult(
        "proof_of_life",
        "pass",
        f"after {steps} steps every gate ({len(found)}) receives gradient, none saturated or pinned "
        f"in its linear region against its design (most linear: {worst[0]} "
        f"{worst[1]['linear_share']:.0%}){note}",
        numbers,
    )


# --- 2. baton pass ------------------------------------------------------------------------


def _reach(recipe: Recipe) -> int:
    """Tokens within which attention and the short convolutions can carry information."""
    model = recipe.model
    window = model.attention.window
    if not window and model.layout.name == "mac":  # MAC attends within a segment
        window = getattr(model.layout.params, "segment", 0) or model.memory.chunk_size
    if not window and model.layout.name == "lmm":  # no attention at all
        window = 0
    elif not window:
        window = 10**9  # full causal attention reaches everything
    per_layer = window + max(model.memory.conv_kernel, 1)
    return model.n_layers * per_layer


def carried_influence(model: torch.nn.Module, length: int, source: int, target: int, mode: str) -> float:
    """|d logits[target] / d embedding[source]| under a memory ablation ``mode``."""
    embedding = model.embed
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, embedding.num_embeddings, (1, length), generator=generator)
    captured: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["x"] = output
        return output

    handle = embedding.register_forward_hook(keep)
    try:
        with memory_ablation(model, mode):
            logits = model(tokens).float()
        direction = torch.randn(logits.shape[-1], generator=generator)
        (logits[0, target] * direction).sum().backward()
    finally:
        handle.remove()
    grad = captured["x"].grad
    model.zero_grad(set_to_none=True)
    return float(grad[0, source].norm()) if grad is not None else 0.0


def baton_pass(recipe: Recipe) -> GateResult:
    from .model.language_model import build_model

    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model)
    memories = memories_of(model)
    if not memories:
        return GateResult("baton_pass", "skip", "the model has no neural memory")
    reach = _reach(recipe)
    chunk = max(m.chunk_size for m in memories)
    shards = set(shard_lengths(model).values())
    boundary = max([chunk, *shards])  # the farthest boundary the state must cross
    if reach >= 10**9:
        return GateResult("baton_pass", "skip", "full attention reaches every token: no boundary to isolate")
    length = boundary + reach + chunk + 2
    source, target = 0, length - 1
    carried = carried_influence(model, length, source, target, "carried")
    reset = carried_influence(model, length, source, target, "reset")
    local = carried_influence(model, length, target - 1, target, "carried")
    numbers = {"carried": carried, "reset": reset, "local": local, "length": length, "reach": reach}
    where = f"token {source} -> token {target} ({target - source} apart, attention reaches {reach})"
    if carried > 0 and reset == 0 and (local == 0 or carried / local > 1e-7):
        return GateResult(
            "baton_pass",
            "pass",
            f"{where}: gradient {carried:.3g} with the state carried across "
            f"{target // chunk} chunk boundaries{' and a TNT shard boundary' if shards else ''}, "
            f"0 with it reset ({carried / local:.2g} of the neighbouring token's)",
            numbers,
        )
    return GateResult(
        "baton_pass",
        "fail",
        f"{where}: gradient {carried:.3g} with the state carried, {reset:.3g} with it reset at every "
        "chunk: "
        + ("nothing crosses the boundary" if carried == 0 else "something other than the memory carries it"),
        numbers,
    )


# --- capacity: does the memory store pairs at its initial gates? ---------------------------


def capacity_gate(recipe: Recipe) -> GateResult:
    """Each memory of the untrained model writes ``CAPACITY_PAIRS`` random unit key/value pairs
    with its own rule, chunking and gates at their biases, then reads them back with the keys
    (``miraslab.memory_capacity``).  A memory whose read-back cosine stays below
    ``MIN_CAPACITY_COSINE`` cannot store pairs at its initial gates: training must first open
    them, and no loss says so."""
    from .memory_capacity import at_count, probe_capacity
    from .model.language_model import build_model

    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model)
    if not memories_of(model):
        return GateResult("capacity", "skip", "the model has no neural memory")
    result = probe_capacity(
        model, _val_batch(recipe, rows=1).inputs, most=CAPACITY_PAIRS, seed=recipe.seed, kinds=("random",)
    )
    rows = {layer["layer"]: at_count(layer, "random", CAPACITY_PAIRS) for layer in result["layers"]}
    numbers = {"pairs": CAPACITY_PAIRS, "threshold": MIN_CAPACITY_COSINE, "layers": rows}
    short = {name: row for name, row in rows.items() if row["cosine"] < MIN_CAPACITY_COSINE}
    worst_name, worst = min(rows.items(), key=lambda item: item[1]["cosine"])
    delta = worst["reference_cosine"]
    if short:
        names = ", ".join(list(short)[:3]) + (f" and {len(short) - 3} more" if len(short) > 3 else "")
        return GateResult(
            "capacity",
            "fail",
            f"{names} cannot store {CAPACITY_PAIRS} random pairs at the initial gates: lowest read-back "
            f"cosine {worst['cosine']:.3f}, {worst['initial_cosine']:.3f} with nothing written (a linear "
            f"delta rule {delta:.3f}, needs {MIN_CAPACITY_COSINE}): its writes do not move its read at "
            "this step size (model.memory.algorithm.lr_init); the curve: miraslab probe --recipe RECIPE --capacity",
            numbers,
        )
    return GateResult(
        "capacity",
        "pass",
        f"every memory ({len(rows)}) stores {CAPACITY_PAIRS} random pairs at its initial gates: lowest "
        f"read-back cosine {worst['cosine']:.3f} ({worst_name}; a linear delta rule {delta:.3f}, "
        f"needs {MIN_CAPACITY_COSINE})",
        numbers,
    )


# --- 3. memory ablation -------------------------------------------------------------------


def _has_answers(recipe: Recipe) -> bool:
    if recipe.data.reset_at_documents:  # text: its only IGNORE targets would be the pads
        return False
    batch = _val_batch(recipe, rows=2)
    return bool((batch.targets == IGNORE).any())


def mqar_probe_sets(recipe: Recipe) -> list[str]:
    """The recipe's model on MQAR, every query beyond attention's reach (window capped at 16)."""
    window = min(recipe.model.attention.window or 16, 16)
    layers = recipe.model.n_layers
    distance = layers * (window + max(recipe.model.memory.conv_kernel, 1)) + 1
    seq_len = max(128, 2 * distance + 32)
    seq_len += seq_len % 2
    return [
        f"model.attention.window={window}",
        "model.vocab_size=256",
        f"data.seq_len={seq_len}",
        f'data.task={{name = "mqar", vocab_size = 256, seq_len = {seq_len}, num_kv_pairs = 8, '
        f"min_query_distance = {distance}, random_non_queries = false}}",
        "train.batch_size=32",
        "train.lr=3e-3",
    ]


def memory_ablation_gate(recipe_path: Path, sets: Sequence[str], out: Path, steps: int) -> GateResult:
    recipe = load_recipe(recipe_path, list(sets))
    if not memories_of_recipe(recipe):
        return GateResult("memory_ablation", "skip", "the model has no neural memory")
    extra = [] if _has_answers(recipe) else mqar_probe_sets(recipe)
    probe = "the recipe's task" if not extra else "an MQAR probe (the task has no answers to recall)"
    burst = load_recipe(recipe_path, [*sets, *extra])
    burst = load_recipe(recipe_path, [*sets, *extra, *_burst_sets(burst, steps)])
    trainer, _ = _train(burst, out, steps)
    last = trainer.last_eval or {}
    gain, share = last.get("memory_use/carry_gain"), last.get("memory_use/carry_gain_share")
    if gain is None:
        return GateResult("memory_ablation", "fail", f"no memory-use metric after {steps} steps")
    numbers = {k: v for k, v in last.items() if k.startswith(("val_", "memory_use/"))}
    numbers["probe"] = "task" if not extra else "mqar"
    text = f"after {steps} steps on {probe}: carry gain {gain:+.4f} nats ({share:+.1%} of the loss)"
    passed = share >= MIN_CARRY_SHARE
    if "memory_use/reset_accuracy" in last:
        points = last["val_accuracy"] - last["memory_use/reset_accuracy"]
        text += (
            f", accuracy {last['val_accuracy']:.1%} carried and {last['memory_use/reset_accuracy']:.1%} reset"
        )
        passed = passed and points >= MIN_CARRY_POINTS
    threshold = f"needs {MIN_CARRY_SHARE:.0%} of the loss" + (
        f" and {100 * MIN_CARRY_POINTS:.0f} points" if "memory_use/reset_accuracy" in last else ""
    )
    return GateResult("memory_ablation", "pass" if passed else "fail", f"{text} ({threshold})", numbers)


def memories_of_recipe(recipe: Recipe) -> bool:
    from .model.language_model import build_model

    return bool(memories_of(build_model(attrs.evolve(recipe.model, n_layers=1))))


# --- 4. seed competition ------------------------------------------------------------------


def seed_competition(
    recipe_path: Path, sets: Sequence[str], out: Path, steps: int, init_from: Path | None
) -> GateResult:
    recipe = load_recipe(recipe_path, list(sets))
    if init_from is None and recipe.model.init is None:
        return GateResult(
            "seed_competition",
            "skip",
            "no --init-from checkpoint or [model.init] to compete with random init",
        )
    recipe = load_recipe(recipe_path, [*sets, *_burst_sets(recipe, steps)])
    source = init_from if init_from is not None else recipe.model.init.from_
    _, seeded = _train(recipe, out / "seeded", steps, init_from=init_from)
    # the random arm is the same recipe without its seed weights
    unseeded = attrs.evolve(recipe, model=attrs.evolve(recipe.model, init=None))
    _, fresh = _train(unseeded, out / "random", steps)
    a, b = seeded["best_val_loss"], fresh["best_val_loss"]
    numbers = {"seeded_val_loss": a, "random_val_loss": b, "steps": steps}
    verdict = "pass" if a < b else "fail"
    return GateResult(
        "seed_competition",
        verdict,
        f"after {steps} steps: val_loss {a:.4f} from {source}, {b:.4f} from random init",
        numbers,
    )
