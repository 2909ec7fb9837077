"""The TNT trainer: stages, AdamW, accumulation, clipping, precision, checkpoints, events.

One optimizer step:

    for each micro-batch:  loss = CE(model(x), y) / n_micro + hook loss terms;  backward
    clip the global gradient norm;  AdamW step with lr = peak(stage) * schedule(step)

Trainer events (``on_train_start``, ``loss_terms``, ``on_step_end``, ``on_eval``,
``on_checkpoint``, ``on_train_end``) are pluggy hooks: monitors named in the recipe are
registered for the run, so a monitor can log, add a loss term or stop the run without
editing this file.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import random
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from ..components import build_component
from ..data.batch import IGNORE, TrainingBatch
from ..data.documents import documents_apart, documents_apart_in_buckets, documents_separator
from ..errors import MiraslabError, RecipeError, RunStopped
from ..evaluation import evaluate, evaluate_by_memory
from ..hf.llama_init import SeedReport, is_hf_directory, seed_tensors_for, write_report
from ..long_range import recall_carry_gain
from ..memory.ablation import memories_of
from ..memory_use import memory_is_used, plot_memory_use, verdict
from ..model.attention_safeguards import set_training_windows
from ..model.language_model import LanguageModel
from ..model.spec import SeedInitSpec
from ..recipe.resolve import recipe_from_dict, recipe_to_dict
from ..recipe.schema import Recipe
from ..recipe.size_check import training_problems
from ..recipe.toml_writer import dumps
from ..registry import get_registry
from .allocator import keep_freed_memory
from .checkpoint import (
    CheckpointError,
    checkpoint_dir,
    drop_later_checkpoints,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from .distributed import Distributed, full_model_state_dict, full_state_dicts, load_full_state_dicts
from .optim import build_optimizer, freeze_except, schedule_factor, set_learning_rate
from .progress import TrainingProgress
from .resume_check import check_model_tensors, check_resumable
from .rng_state import capture_rng_state, restore_rng_state
from .run_dir import TOKENIZER_FILE, RunDir
from .run_lock import RunLock
from .stages import Stage, plan_stages, stage_at
from .state_passing import STATE_KEY, CarriedState, streamed_rows

MEMORY_USE_PLOT = "memory_use.png"


@attrs.define
class RunContext:
    """What event hooks see of the run."""

    recipe: Recipe
    out_dir: Path
    model: torch.nn.Module
    step: int = 0
    stage: str = ""
    stop_reason: str | None = None
    stop_cause: str = "stopped"
    optimizer: Any = None  # the optimizer stepping ``model`` (the precision guard reads its state)
    rank: int = 0  # under torchrun; monitors that write files (tensorboard, wandb) write on rank 0
    world_size: int = 1

    def request_stop(self, reason: str, cause: str = "stopped") -> None:
        """Stop after this step; ``cause`` (a key of ``STOP_EXIT_CODES``) picks the exit code."""
        if self.stop_reason is None:
            self.stop_reason, self.stop_cause = reason, cause


class Trainer:
    def __init__(
        self,
        recipe: Recipe,
        out_dir: Path,
        *,
        resume: bool = False,
        resume_from: Path | None = None,
        init_from: Path | None = None,
        max_steps: int | None = None,
        show_progress: bool = True,
    ):
        self.recipe, self.run_dir = recipe, RunDir(out_dir)
        self.resume, self.resume_from, self.max_steps = (
            resume or resume_from is not None,
            resume_from,
            max_steps,
        )
        self.show_progress = show_progress
        self.init_from = init_from  # a new run starting from these weights (not a resume)
        self.last_checkpoint: Path | None = None  # the newest checkpoint of this run known good
        self.train = recipe.train
        self.stages = plan_stages(recipe)
        self.dist = Distributed.from_environment(self.train.device)
        self.model: torch.nn.Module | None = None  # what forward runs (maybe wrapped)
        self.raw: LanguageModel | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.stage: Stage | None = None
        self.step, self.tokens = 0, 0
        self.carried = CarriedState() if recipe.data.carry_state else None  # data.carry_state
        self.registry = get_registry()
        self.last_eval: dict[str, Any] | None = None  # the memory-use verdict at the end reads it
        self.low_carry_evals = 0  # evaluations in a row below train.memory_use_min_share
        self.separator: int | None = None  # opens each packed document, when they run apart

    # --- setup ------------------------------------------------------------------------

    def _precision_context(self):
        precision = self.train.precision
        if precision == "auto":
            precision = "bf16" if self.dist.device.type == "cuda" else "fp32"
        if precision == "bf16":
            return torch.autocast(device_type=self.dist.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _enter_stage(self, stage: Stage) -> None:
        """Build the model and optimizer for ``stage``, carrying weights and moments over.

        The model is rebuilt at every stage (its recipe may change chunk sizes) and wrapped
        again (which parameters train may change); state moves through the unsharded,
        name-keyed form, so this works the same under DDP and FSDP.
        """
        previous = self.stage
        carried = full_state_dicts(self.model, self.optimizer) if self.optimizer is not None else None
        with torch.random.fork_rng(
            devices=[]
        ):  # initial weights from the seed, without touching the run's RNG
            torch.manual_seed(self.recipe.seed)
            raw = LanguageModel(stage.recipe.model).to(self.dist.device)
        frozen = freeze_except(raw, stage.spec.train_only)
        if self.train.activation_checkpointing:
            _checkpoint_blocks(raw)
        # carried state: a memory's learned initial state is unused once a row carries one
        model: torch.nn.Module = self.dist.wrap(raw, self.train.distributed, self.carried is not None)
        optimizer = build_optimizer(raw, stage.recipe.train)  # after sharding: FSDP2 replaces parameters
        if carried is not None:
            try:
                load_full_state_dicts(model, optimizer, *carried)
            except (RuntimeError, ValueError, KeyError) as exc:
                raise RecipeError(
                    [
                        f"train.stages[{stage.index}].overrides: a stage may not change "
                        f"parameter shapes ({str(exc).splitlines()[0]})"
                    ]
                ) from None
        if self.train.compile:
            model = _compiled(model, self.progress)
        self.raw, self.model, self.optimizer, self.stage = raw, model, optimizer, stage
        if previous is not None or stage.index > 0:
            detail = f", training only {', '.join(stage.spec.train_only)}" if stage.spec.train_only else ""
            self.progress.event(
                f"stage {stage.name} from step {self.step}{detail} ({len(frozen)} tensors frozen)"
            )
            if self.dist.is_main:
                self.run_dir.log(
                    {
                        "step": self.step,
                        "event": "stage",
                        "stage": stage.name,
                        "train_only": list(stage.spec.train_only),
                    }
                )

    def _task_and_vocabulary(self) -> Any:
        component = self.recipe.data.task
        saved = self.run_dir.path / TOKENIZER_FILE
        params = component.params
        if (
            self.resume
            and saved.is_file()
            and attrs.has(type(params))
            and getattr(params, "tokenizer", None) == ""
        ):
            # a resumed run reads the tokenizer it was trained with, not the cache's (which may be gone)
            component = attrs.evolve(component, params=attrs.evolve(params, tokenizer=str(saved)))
        task = build_component(component)
        vocab = task.vocab_size()
        if vocab > self.recipe.model.vocab_size:
            raise RecipeError(
                [
                    f"model.vocab_size: expected at least the task's vocabulary ({vocab}), got "
                    f"{self.recipe.model.vocab_size}; set --set model.vocab_size={vocab}"
                ]
            )
        return task

    def _seed_init(self) -> SeedInitSpec | None:
        """The Llama-family checkpoint a run starting from step 0 takes its weights from: an
        --init-from Hugging Face directory (with [model.init]'s options, if any), else
        [model.init]; None for a miraslab checkpoint or none at all."""
        init = self.recipe.model.init
        if self.init_from is not None:
            if not is_hf_directory(self.init_from):
                return None
            base = init or SeedInitSpec(from_="")
            return attrs.evolve(base, from_=str(Path(self.init_from).absolute()))
        return init

    def _seed_weights(self) -> tuple[dict[str, torch.Tensor], SeedReport] | None:
        """The seed checkpoint's tensors for the model of step 0, mapped and checked."""
        init = self._seed_init()
        return seed_tensors_for(stage_at(self.stages, 0).recipe.model, init) if init is not None else None

    def _load_seed(self, tensors: dict[str, torch.Tensor], report: SeedReport) -> None:
        """Copy the checkpoint's tensors in, and say (and save) what was mapped and what not."""
        state = full_model_state_dict(self.model)
        state.update(tensors)
        load_full_state_dicts(self.model, self.optimizer, state, None)
        self.progress.event(report.summary())
        if self.dist.is_main:
            write_report(report, self.run_dir.path)
            self.run_dir.log(
                {
                    "step": self.step,
                    "event": "seed_init",
                    "source": report.source,
                    "mapped": len(report.mapped),
                    "kept": len(report.kept),
                    "unused": len(report.unused),
                }
            )

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        total = self.train.total_steps
        last = min(total, self.max_steps) if self.max_steps is not None else total
        self.progress = TrainingProgress(last, 0, self.show_progress and self.dist.is_main)
        if self.dist.device.type == "cpu":
            keep_freed_memory()  # each step reuses the last one's memory instead of faulting it in again
        lock = None
        try:
            if self.dist.is_main:  # one process trains in a run directory at a time
                lock = RunLock.acquire(self.run_dir.path)
            return self._run(last)
        finally:
            if lock is not None:
                lock.release()
            self.progress.close()
            self.dist.close()

    def _run(self, last: int) -> dict[str, Any]:
        for stage in self.stages:  # before anything is built: a size that cannot fit is one line
            if problems := training_problems(stage.recipe, self.dist.world_size):
                raise RecipeError(problems)
        # before the run directory is written: a monitor that cannot be built (a missing package) is one line
        built = [(component.name, build_component(component)) for component in self.recipe.monitors]
        task = self._task_and_vocabulary()
        if self.recipe.data.reset_at_documents:
            self.separator = documents_separator(task)
        checkpoint = self._resume_point() if self.resume else None
        # read before the run directory is made: a checkpoint that does not fit leaves nothing behind
        seeded = self._seed_weights() if checkpoint is None else None
        if checkpoint is not None:
            self.step, self.tokens = checkpoint.step, _saved_int(checkpoint, "tokens")
            if self.dist.is_main:
                self.run_dir.truncate_metrics(self.step, warn=self.progress.event)
        elif self.resume:  # stopped before its first checkpoint: the run starts again from step 0
            self.progress.event(f"{self.run_dir.path}: no checkpoint was written yet; training from step 0")
            if self.dist.is_main:
                self.run_dir.truncate_metrics(-1, warn=self.progress.event)
                self._save_tokenizer(task, replace=False)
        elif self.dist.is_main:
            self.run_dir.create(self.recipe)
            self._save_tokenizer(task, replace=True)
        self.dist.barrier()

        self._enter_stage(stage_at(self.stages, self.step))
        if checkpoint is not None:
            check_model_tensors(checkpoint.path, self.raw.state_dict(), checkpoint.model)
            load_full_state_dicts(
                self.model,
                self.optimizer,
                checkpoint.model,
                checkpoint.optimizer,
            )
            restore_rng_state(checkpoint)
            if self.carried is not None:
                self.carried = CarriedState.restore(checkpoint.meta, checkpoint.tensors, self.dist.device)
        elif seeded is not None:
            self._load_seed(*seeded)
        elif self.init_from is not None and not self.resume:
            initial = load_checkpoint(self.init_from)
            check_model_tensors(initial.path, self.raw.state_dict(), initial.model)
            load_full_state_dicts(self.model, self.optimizer, initial.model, None)
            self.progress.event(f"weights from {initial.path} (optimizer, schedule and data start afresh)")
        data_state = checkpoint.meta.get("data") if checkpoint is not None else None
        try:
            batches = self._batches(task, "train", data_state)
        except (KeyError, TypeError, ValueError) as error:  # a crafted or damaged data state
            problem = f"its data state cannot be restored ({type(error).__name__}: {error})"
            raise CheckpointError(checkpoint.path if checkpoint else self.run_dir.path, problem) from None
        if self.train.eval_every:  # an empty validation split is found now, not at the first evaluation
            self._probe_validation(task)
        context = RunContext(self.recipe, self.run_dir.path, self.raw, self.step, self.stage.name)
        context.optimizer = self.optimizer
        context.rank, context.world_size = self.dist.rank, self.dist.world_size
        monitors = self._register_monitors(built)
        hook = self.registry.hook()
        hook.on_train_start(run=context)
        self.progress.event(
            f"training {self.recipe.name or 'model'}: steps {self.step}..{last} of {self.train.total_steps}, "
            f"{sum(p.numel() for p in self.raw.parameters()):,} parameters, {self.dist.world_size} process(es) "
            f"on {self.dist.device.type}, run directory {self.run_dir.path}"
        )
        started, window_start, window_tokens = time.time(), time.time(), 0
        history: list[float] = []
        best_val = math.inf
        saved_at = self.step if checkpoint is not None else -1
        try:  # the monitors stay registered through the end hook, a stop's included
            while self.step < last and context.stop_reason is None:
                stage = stage_at(self.stages, self.step)
                if stage is not self.stage:
                    self._enter_stage(stage)
                    context.model, context.stage, context.optimizer = self.raw, stage.name, self.optimizer
                metrics = self._optimizer_step(batches, context, hook)
                window_tokens += metrics.pop("_tokens")
                history.append(metrics["loss"])
                context.step = self.step
                if not math.isfinite(metrics["loss"]):
                    context.request_stop(f"the loss is {metrics['loss']} at step {self.step}", "diverged")
                elif not math.isfinite(metrics["grad_norm"]):  # this step's update is already non-finite
                    context.request_stop(
                        f"the gradient norm is {metrics['grad_norm']} at step {self.step}", "diverged"
                    )
                log_now = self.step % self.train.log_every == 0 or self.step == last
                if log_now:
                    now = time.time()
                    metrics["tokens_per_s"] = window_tokens / max(now - window_start, 1e-9)
                    window_start, window_tokens = now, 0
                    hook.on_step_end(run=context, metrics=metrics)
                    if self.dist.is_main:
                        self.run_dir.log(metrics)
                    self.progress.update(self.step, metrics)
                if self.train.eval_every and self.step % self.train.eval_every == 0:
                    val = self._evaluate(task, context, hook)
                    best_val = min(best_val, val["val_loss"])
                if (
                    context.stop_reason is None
                    and (
                        (self.train.checkpoint_every and self.step % self.train.checkpoint_every == 0)
                        or self.step == last
                    )
                    and self._save(batches, hook, context)
                ):
                    saved_at = self.step
            if context.stop_reason is None and saved_at != self.step:
                self._save(batches, hook, context)
            summary = {
                "name": self.recipe.name,
                "step": self.step,
                "total_steps": self.train.total_steps,
                "tokens": self.tokens,
                "final_loss": history[-1] if history else None,
                "best_val_loss": best_val if math.isfinite(best_val) else None,
                "wall_seconds": time.time() - started,
                "stopped_by": context.stop_reason,
                "parameters": sum(p.numel() for p in self.raw.parameters()),
            }
            if self.last_eval is not None and "memory_use/carry_gain" in self.last_eval:
                summary["memory_use"] = {k: v for k, v in self.last_eval.items() if k != "event"}
                summary["memory_used"] = memory_is_used(self.last_eval)
            if self.dist.is_main:
                self.run_dir.write_summary(summary)
            self.progress.event(_summary_line(summary, self.run_dir.path))
            if self.dist.is_main and "memory_use" in summary:
                self._report_memory_use()
            hook.on_train_end(run=context, summary=summary)
        finally:
            for name in monitors:
                self.registry.pm.unregister(name=name)
        if context.stop_reason is not None:
            if self.last_checkpoint is not None:
                kept = f"the last good checkpoint is {self.last_checkpoint}"
            else:
                kept = (
                    f"no checkpoint was written; `miraslab train --resume {self.run_dir.path}` "
                    "starts the run again from step 0"
                )
            raise RunStopped(
                f"run stopped at step {self.step}: {context.stop_reason}; {kept}", context.stop_cause
            )
        return summary

    def _optimizer_step(self, batches: Any, context: RunContext, hook: Any) -> dict[str, Any]:
        stage_train = self.stage.recipe.train
        lr = set_learning_rate(self.optimizer, stage_train.lr, schedule_factor(self.step, self.train))
        set_training_windows(self.raw, self.recipe.seed, self.step)  # model.attention.train_window (SWAX)
        batch = TrainingBatch.of(next(batches))
        micro = self.train.micro_batch_size or batch.rows
        if batch.rows % micro:
            raise RecipeError(
                [
                    f"train.micro_batch_size: expected a divisor of the per-process batch "
                    f"({batch.rows}), got {micro}"
                ]
            )
        # with data.reset_at_documents each micro-batch's documents run apart, in length
        # buckets: more forward passes, the same sums (on the host, before the copy)
        buckets = self.recipe.data.document_buckets
        pieces = [
            part
            for piece in batch.split(micro)
            for part in documents_apart_in_buckets(piece, self.separator, buckets, exact=self.dist.enabled)
        ]
        # the loss is the mean over the batch's labelled targets: each micro-batch's sum over
        # its own, divided by the batch's count (a synthetic task's rows may differ in count);
        # counted on the host, before the copy to the device, so a step adds no sync
        counts = [piece.labelled for piece in pieces]
        labelled = max(sum(counts), 1)
        total_loss, extras = 0.0, {}
        self.model.train()
        for index, (piece, count) in enumerate(zip(pieces, counts, strict=True)):
            piece = piece.to(self.dist.device)
            with self.dist.no_sync(self.model, last=index == len(pieces) - 1), self._precision_context():
                logits = (
                    self.carried.forward(self.model, piece.inputs, index)
                    if self.carried is not None
                    else self.model(piece.inputs)
                )
                loss_sum = F.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]), piece.targets.reshape(-1), reduction="sum"
                )
                loss = loss_sum / max(count, 1)
                objective = loss_sum / labelled
                for terms in hook.loss_terms(run=context, outputs={"logits": logits, "loss": loss}):
                    for name, value in (terms or {}).items():
                        objective = objective + value / len(pieces)
                        extras[name] = extras.get(name, 0.0) + float(value.detach()) / len(pieces)
                objective.backward()
            total_loss += float(loss_sum.detach()) / labelled
        clip = self.stage.recipe.train.grad_clip
        parameters = [p for p in self.raw.parameters() if p.grad is not None]
        if clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, clip))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters])))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        step_tokens = self.train.batch_size * self.recipe.data.seq_len
        self.tokens += step_tokens
        metrics = {
            "step": self.step,
            "tokens": self.tokens,
            "loss": self.dist.mean(total_loss),
            "lr": lr,
            "grad_norm": grad_norm,
            "stage": self.stage.name,
            "_tokens": step_tokens,
        }
        metrics.update({name: self.dist.mean(value) for name, value in extras.items()})
        return metrics

    def _batches(self, task: Any, split: str, state: dict | None = None) -> Any:
        rows = streamed_rows(task) if split == "train" and self.carried is not None else task.batches
        return rows(
            split,
            seq_len=self.recipe.data.seq_len,
            batch_size=self.train.batch_size,
            seed=self.recipe.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            state=state,
        )

    def _evaluate(self, task: Any, context: RunContext, hook: Any) -> dict[str, Any]:
        val = self._batches(task, "val")  # a fresh iterator: every pass sees the same batches
        batches = [
            documents_apart(TrainingBatch.of(next(val)).to(self.dist.device), self.separator)
            for _ in range(self.train.eval_batches)
        ]
        # the memory-use metric: the same batches with the memory's carried state taken away,
        # on the unwrapped model (a compiled one would compile each ablation anew)
        modes = ("reset", "zero") if self.train.memory_use and memories_of(self.raw) else ()
        with self._precision_context():
            result = evaluate(self.model, batches)
            ablated = evaluate_by_memory(self.raw, batches, modes)
        loss = self.dist.mean(result["loss"])
        metrics = {"step": self.step, "event": "eval", "val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
        # a task with answers (documents run apart have IGNORE only at their pads)
        answers = self.separator is None and any(bool((batch.targets == IGNORE).any()) for batch in batches)
        if answers:
            metrics["val_accuracy"] = self.dist.mean(result["accuracy"])
        if ablated:
            reset, zero = (self.dist.mean(ablated[mode]["loss"]) for mode in ("reset", "zero"))
            metrics["memory_use/carry_gain"] = reset - loss  # nats the carried state is worth
            metrics["memory_use/carry_gain_share"] = (reset - loss) / loss
            metrics["memory_use/read_gain"] = zero - loss
            if answers:  # the proof a recall task gives: accuracy without the carried state
                metrics["memory_use/reset_accuracy"] = self.dist.mean(ablated["reset"]["accuracy"])
                metrics["memory_use/zero_accuracy"] = self.dist.mean(ablated["zero"]["accuracy"])
            else:  # text: the carry gain on beyond-window recall hits (miraslab.long_range)
                with self._precision_context():
                    metrics.update(
                        {k: self.dist.mean(v) for k, v in recall_carry_gain(self.raw, batches).items()}
                    )
        hook.on_eval(run=context, metrics=metrics)
        if self.dist.is_main:
            self.run_dir.log(metrics)
        line = f"step {self.step}: val_loss {loss:.4f}, val_ppl {metrics['val_ppl']:.2f}"
        if "val_accuracy" in metrics:
            line += f", val_accuracy {metrics['val_accuracy']:.1%}"
        if "memory_use/carry_gain" in metrics:
            line += (
                f", memory carry gain {metrics['memory_use/carry_gain']:+.4f} nats "
                f"({metrics['memory_use/carry_gain_share']:+.1%})"
            )
        self.progress.event(line)
        self.last_eval = metrics
        self._check_carry_gain(metrics, context)
        return metrics

    def _report_memory_use(self) -> None:
        """The run's last word: is its memory used (one sentence) and the picture over the run."""
        self.progress.event(verdict(self.last_eval))
        try:
            plot = plot_memory_use(self.run_dir.metrics(), self.run_dir.path / MEMORY_USE_PLOT)
        except (OSError, ImportError) as error:  # the run is saved; a missing picture is not fatal
            self.progress.event(f"memory-use plot not written: {error}")
            return
        if plot is not None:
            self.progress.event(f"plot: {plot}")

    def _check_carry_gain(self, metrics: dict[str, Any], context: RunContext) -> None:
        """Warn or stop once the carry gain has stayed below its floor for the patience."""
        floor = self.train.memory_use_min_share
        share = metrics.get("memory_use/carry_gain_share")
        if not floor or share is None:
            return
        self.low_carry_evals = self.low_carry_evals + 1 if share < floor else 0
        if self.low_carry_evals < self.train.memory_use_patience:
            return
        diagnosis = (
            f"memory_use/carry_gain_share {share:.2%} below train.memory_use_min_share {floor:.2%} for "
            f"{self.low_carry_evals} evaluations (carry gain {metrics['memory_use/carry_gain']:+.4f} nats at "
            f"step {self.step}): the memory carries nothing across chunks"
        )
        if self.dist.is_main:
            self.run_dir.log({"step": self.step, "event": "memory_use_warning", "message": diagnosis})
        if self.train.memory_use_action == "stop":
            context.request_stop(diagnosis, "memory_unused")
        else:
            self.progress.event(f"warning: {diagnosis}")

    def _resume_point(self) -> Any:
        """The checkpoint to resume from, checked against the recipe; None if the run has none yet."""
        if self.resume_from is None and not has_checkpoint(self.run_dir.path):
            return None
        checkpoint = load_checkpoint(self.resume_from or self.run_dir.path)
        notes = check_resumable(
            checkpoint.path,
            _with_defaults(checkpoint.meta.get("recipe")),
            checkpoint.meta.get("recipe_sha256"),
            recipe_to_dict(self.recipe),
            _recipe_hash(self.recipe),
        )
        for note in notes:
            self.progress.event(note)
        if self.dist.is_main:
            dropped = drop_later_checkpoints(self.run_dir.path, checkpoint.path)
            if dropped:
                self.progress.event(
                    f"resuming from {checkpoint.path.name}: removed the later checkpoints of the abandoned "
                    f"run, {', '.join(dropped)}"
                )
        self.dist.barrier()
        self.last_checkpoint = checkpoint.path
        return checkpoint

    def _probe_validation(self, task: Any) -> None:
        """Draw one validation batch, leaving every global generator as it was."""
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            next(self._batches(task, "val"))
        random.setstate(python_state)
        np.random.set_state(numpy_state)

    def _save_tokenizer(self, task: Any, *, replace: bool) -> None:
        path = self.run_dir.path / TOKENIZER_FILE
        if replace or not path.exists():
            tokenizer = task.tokenizer()
            if tokenizer is not None:
                tokenizer.save(str(path))

    def _parameters_finite(self) -> bool:
        """Whether every parameter and buffer is finite, on every process (one sync)."""
        tensors = [
            t.to_local() if hasattr(t, "to_local") else t
            for t in (*self.raw.parameters(), *self.raw.buffers())
        ]
        flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point() and t.numel()]
        finite = bool(torch.stack(flags).all()) if flags else True
        return self.dist.mean(float(finite)) == 1.0

    def _save(self, batches: Any, hook: Any, context: RunContext) -> bool:
        """Write a checkpoint, or stop the run when its state is not finite; whether it wrote one."""
        if not self._parameters_finite():
            context.request_stop(f"the parameters hold non-finite values at step {self.step}", "diverged")
            return False
        model_state, optimizer_state = full_state_dicts(self.model, self.optimizer)
        carried = self.carried.snapshot() if self.carried is not None else None  # every process's rows
        if self.dist.is_main:
            tensors, rng_meta = capture_rng_state()
            meta = {
                "tokens": self.tokens,
                "stage": self.stage.index,
                "data": batches.state_dict(),
                "recipe_sha256": _recipe_hash(self.recipe),
                "recipe": recipe_to_dict(self.recipe),  # a resume names the keys that changed
                "world_size": self.dist.world_size,
                **rng_meta,
            }
            if carried is not None:
                meta[STATE_KEY] = carried[0]
                tensors.update(carried[1])
            path = save_checkpoint(
                self.run_dir.path,
                self.step,
                model=model_state,
                optimizer=optimizer_state,
                tensors=tensors,
                meta=meta,
                keep=self.train.keep_checkpoints,
            )
            hook.on_checkpoint(run=context, path=path)
        self.dist.barrier()
        self.last_checkpoint = checkpoint_dir(self.run_dir.path, self.step)
        return True

    def _register_monitors(self, built: list[tuple[str, Any]]) -> list[str]:
        names = []
        for index, (component, monitor) in enumerate(built):
            name = f"monitor-{index}-{component}"
            self.registry.pm.register(monitor, name=name)
            names.append(name)
        return names


def _with_defaults(saved: Any) -> dict[str, Any] | None:
    """A checkpoint's recipe with the keys added to the schema since filled in by their defaults."""
    if not isinstance(saved, dict):
        return None
    try:
        return recipe_to_dict(recipe_from_dict(copy.deepcopy(saved)))
    except MiraslabError:  # a key since removed or renamed: compare as saved, the change is named
        return saved


def _saved_int(checkpoint: Any, key: str) -> int:
    try:
        return int(checkpoint.meta[key])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(checkpoint.path, f"meta.json holds no integer {key!r}") from None


def _recipe_hash(recipe: Recipe) -> str:
    return hashlib.sha256(dumps(recipe_to_dict(recipe)).encode()).hexdigest()


def _summary_line(summary: dict[str, Any], path: Path) -> str:
    loss = summary["final_loss"]
    val = summary["best_val_loss"]
    parts = [
        f"done: step {summary['step']}/{summary['total_steps']}",
        f"{summary['tokens']:,} tokens",
        f"{summary['wall_seconds']:.1f}s",
    ]
    if loss is not None:
        parts.append(f"final loss {loss:.4f}")
    if val is not None:
        parts.append(f"best val_loss {val:.4f}")
    return ", ".join(parts) + f"; run directory {path}"


def _checkpoint_blocks(model: LanguageModel) -> None:
    """Recompute each block in the backward pass instead of keeping its activations."""
    from torch.utils.checkpoint import checkpoint

    for block in model.blocks:
        if getattr(block, "_checkpointed", False):
            continue
        forward = block.forward

        def checkpointed(x, state=None, return_state=False, _forward=forward):
            if state is not None or return_state or not torch.is_grad_enabled():
                return _forward(x, state, return_state)
            return checkpoint(_forward, x, use_reentrant=False)

        block.forward = checkpointed
        block._checkpointed = True


class CompiledOrEager(torch.nn.Module):
    """``torch.compile(model)``, falling back to the eager model (once, with a warning) when
    compiling fails: no compiler toolchain, or code dynamo cannot trace."""

    def __init__(self, model: torch.nn.Module, progress: TrainingProgress, backend: Any = "inductor"):
        super().__init__()
        self.module = model
        # static shapes: each new shape (an evaluation batch, a stage's sequence length) gets a
        # graph of its own.  Under the default, the second shape recompiles with symbolic
        # sizes, and the memory's loops over chunks make that compile take minutes (a
        # memory layer at width 16, seq 12 then 20: over 9 minutes, against 18 s static)
        self.compiled = torch.compile(model, backend=backend, dynamic=False)
        self.progress = progress
        self.use_compiled = True

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.use_compiled:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:
                self.use_compiled = False
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                self.progress.event(
                    f"warning: torch.compile failed ({type(exc).__name__}: {first_line}); running eager"
                )
        return self.module(*args, **kwargs)


def _compiled(model: torch.nn.Module, progress: TrainingProgress) -> torch.nn.Module:
    try:
        return CompiledOrEager(model, progress)
    except Exception as exc:
        progress.event(f"warning: torch.compile is unavailable ({type(exc).__name__}: {exc}); running eager")
        return model
