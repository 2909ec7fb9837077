"""The TNT trainer: stages, AdamW, accumulation, clipping, precision, checkpoints, events.

``_run`` reads top to bottom: check that the run fits, build its monitors and its task,
restore (a resume point, a seed checkpoint or the seed's weights), loop, finish.  One
optimizer step:

    for each micro-batch:  loss = CE(model(x), y) / n_micro + hook loss terms;  backward
    clip the global gradient norm;  AdamW step with lr = peak(stage) * schedule(step)

Trainer events (``on_train_start``, ``loss_terms``, ``on_step_end``, ``on_eval``,
``on_checkpoint``, ``on_summary``, ``on_train_end``) are pluggy hooks: the monitors a recipe
names, and the built-in ones every run has (``monitors``: the memory-use metric and its
floor), are registered for the run, so a monitor can log, add a loss term or stop the run
without editing this file.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data.batch import IGNORE, TrainingBatch
from ..data.documents import DOC_START, documents_apart, documents_separator
from ..errors import RecipeError
from ..evaluation import evaluate
from ..model.attention_safeguards import set_training_windows
from ..model.language_model import LanguageModel
from ..recipe.resolve import recipe_to_dict
from ..recipe.schema import Recipe
from ..recipe.size_check import training_problems
from ..registry import get_registry
from .activation_checkpointing import checkpoint_blocks
from .allocator import keep_freed_memory
from .checkpoint import Checkpoint, CheckpointError, checkpoint_dir, load_checkpoint, save_checkpoint
from .compiled_or_eager import compiled_or_eager
from .distributed import Distributed, full_state_dicts, load_full_state_dicts, parameters_finite
from .micro_batches import forward_pieces, packs_documents
from .monitors import build_monitors, registered
from .optim import build_optimizer, freeze_except, schedule_factor, set_learning_rate
from .progress import TrainingProgress
from .resume_check import check_model_tensors
from .resume_point import recipe_hash, resume_point, saved_int
from .rng_state import capture_rng_state, restore_rng_state
from .run_context import RunContext, autocast_for
from .run_dir import RunDir
from .run_lock import RunLock
from .run_task import build_task, probe_validation, save_tokenizer, task_batches
from .seed_init import SeedWeights, load_seed, seed_weights
from .stages import Stage, plan_stages, stage_at
from .state_passing import STATE_KEY, CarriedState
from .summary import stopped, summary_line

__all__ = ["RunContext", "Trainer"]


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
        self.precision = functools.partial(autocast_for, self.train.precision, self.dist.device)
        self.model: torch.nn.Module | None = None  # what forward runs (maybe wrapped)
        self.raw: LanguageModel | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.stage: Stage | None = None
        self.step, self.tokens = 0, 0
        self.carried = CarriedState() if recipe.data.carry_state else None  # data.carry_state
        self.registry = get_registry()
        self.last_eval: dict[str, Any] | None = None  # the last validation pass's (preflight reads it)
        self.separator: int | None = None  # opens each packed document, when they run apart
        self.packed_documents = False  # with a separator: documents stay packed, their starts passed

    # --- the run: restore, loop, finish ------------------------------------------------

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
        monitors = build_monitors(self.recipe)
        task = build_task(self.recipe, self.run_dir.path, self.resume)
        if self.recipe.data.reset_at_documents:
            self.separator = documents_separator(task)
        checkpoint = self._resume_point() if self.resume else None
        # read before the run directory is made: a checkpoint that does not fit leaves nothing behind
        first_model = stage_at(self.stages, 0).recipe.model
        seeded = (
            seed_weights(first_model, self.recipe.model.init, self.init_from) if checkpoint is None else None
        )
        self._prepare_run_dir(task, checkpoint)
        self._enter_stage(stage_at(self.stages, self.step))
        self._load_weights(checkpoint, seeded)
        batches = self._training_batches(task, checkpoint)
        if self.train.eval_every:  # an empty validation split is found now, not at the first evaluation
            probe_validation(task, self.recipe, self.dist)
        context = RunContext(
            self.recipe,
            self.run_dir.path,
            self.raw,
            self.step,
            self.stage.name,
            optimizer=self.optimizer,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            dist=self.dist,
            progress=self.progress,
            autocast=self.precision,
        )
        with registered(self.registry, monitors):  # through the end hook, a stop's included
            hook = self.registry.hook()
            hook.on_train_start(run=context)
            self.progress.event(
                f"training {self.recipe.name or 'model'}: steps {self.step}..{last} of {self.train.total_steps}, "
                f"{sum(p.numel() for p in self.raw.parameters()):,} parameters, {self.dist.world_size} process(es) "
                f"on {self.dist.device.type}, run directory {self.run_dir.path}"
            )
            started = time.time()
            history, best_val = self._loop(last, task, batches, context, hook, resumed=checkpoint is not None)
            summary = self._finish(history, best_val, time.time() - started, context, hook)
        if context.stop_reason is not None:
            raise stopped(
                self.step, context.stop_reason, context.stop_cause, self.last_checkpoint, self.run_dir.path
            )
        return summary

    def _resume_point(self) -> Checkpoint | None:
        checkpoint = resume_point(
            self.run_dir.path, self.resume_from, self.recipe, self.dist, self.progress.event
        )
        if checkpoint is not None:
            self.last_checkpoint = checkpoint.path
        return checkpoint

    def _prepare_run_dir(self, task: Any, checkpoint: Checkpoint | None) -> None:
        """A resume continues its metrics from the checkpoint's step; a new run gets a fresh directory."""
        if checkpoint is not None:
            self.step, self.tokens = checkpoint.step, saved_int(checkpoint, "tokens")
            if self.dist.is_main:
                self.run_dir.truncate_metrics(self.step, warn=self.progress.event)
        elif self.resume:  # stopped before its first checkpoint: the run starts again from step 0
            self.progress.event(f"{self.run_dir.path}: no checkpoint was written yet; training from step 0")
            if self.dist.is_main:
                self.run_dir.truncate_metrics(-1, warn=self.progress.event)
                save_tokenizer(task, self.run_dir.path, replace=False)
        elif self.dist.is_main:
            self.run_dir.create(self.recipe)
            save_tokenizer(task, self.run_dir.path, replace=True)
        self.dist.barrier()

    def _load_weights(self, checkpoint: Checkpoint | None, seeded: SeedWeights | None) -> None:
        """A resume's weights, optimizer and RNG; else a seed checkpoint's or --init-from's weights;
        else those the recipe's seed initialised."""
        if checkpoint is not None:
            check_model_tensors(checkpoint.path, self.raw.state_dict(), checkpoint.model)
            load_full_state_dicts(self.model, self.optimizer, checkpoint.model, checkpoint.optimizer)
            restore_rng_state(checkpoint)
            if self.carried is not None:
                self.carried = CarriedState.restore(checkpoint.meta, checkpoint.tensors, self.dist.device)
        elif seeded is not None:
            rank0_run_dir = self.run_dir if self.dist.is_main else None
            load_seed(self.model, self.optimizer, seeded, self.progress.event, rank0_run_dir, self.step)
        elif self.init_from is not None and not self.resume:
            initial = load_checkpoint(self.init_from)
            check_model_tensors(initial.path, self.raw.state_dict(), initial.model)
            load_full_state_dicts(self.model, self.optimizer, initial.model, None)
            self.progress.event(f"weights from {initial.path} (optimizer, schedule and data start afresh)")

    def _training_batches(self, task: Any, checkpoint: Checkpoint | None) -> Any:
        """The training batches, from where the checkpoint's data state left them."""
        data_state = checkpoint.meta.get("data") if checkpoint is not None else None
        try:
            return task_batches(
                task, "train", self.recipe, self.dist, data_state, streamed=self.carried is not None
            )
        except (KeyError, TypeError, ValueError) as error:  # a crafted or damaged data state
            problem = f"its data state cannot be restored ({type(error).__name__}: {error})"
            raise CheckpointError(checkpoint.path if checkpoint else self.run_dir.path, problem) from None

    def _loop(
        self, last: int, task: Any, batches: Any, context: RunContext, hook: Any, resumed: bool
    ) -> tuple[list[float], float]:
        """Optimizer steps up to ``last`` or a stop; logs, evaluations and checkpoints on their
        schedules, and a checkpoint at the end.  Returns the losses and the best val_loss."""
        window_start, window_tokens = time.time(), 0
        history: list[float] = []
        best_val = math.inf
        saved_at = self.step if resumed else -1
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
            if self.step % self.train.log_every == 0 or self.step == last:
                now = time.time()
                metrics["tokens_per_s"] = window_tokens / max(now - window_start, 1e-9)
                window_start, window_tokens = now, 0
                hook.on_step_end(run=context, metrics=metrics)
                if self.dist.is_main:
                    self.run_dir.log(metrics)
                self.progress.update(self.step, metrics)
            if self.train.eval_every and self.step % self.train.eval_every == 0:
                best_val = min(best_val, self._evaluate(task, context, hook)["val_loss"])
            every = self.train.checkpoint_every
            due = (every and self.step % every == 0) or self.step == last
            if context.stop_reason is None and due and self._save(batches, hook, context):
                saved_at = self.step
        if context.stop_reason is None and saved_at != self.step:
            self._save(batches, hook, context)
        return history, best_val

    def _finish(
        self, history: list[float], best_val: float, wall: float, context: RunContext, hook: Any
    ) -> dict[str, Any]:
        """summary.json (with what monitors add), the final line, and the end hook."""
        summary = {
            "name": self.recipe.name,
            "step": self.step,
            "total_steps": self.train.total_steps,
            "tokens": self.tokens,
            "final_loss": history[-1] if history else None,
            "best_val_loss": best_val if math.isfinite(best_val) else None,
            "wall_seconds": wall,
            "stopped_by": context.stop_reason,
            "parameters": sum(p.numel() for p in self.raw.parameters()),
        }
        hook.on_summary(run=context, summary=summary)
        if self.dist.is_main:
            self.run_dir.write_summary(summary)
        self.progress.event(summary_line(summary, self.run_dir.path))
        hook.on_train_end(run=context, summary=summary)
        return summary

    # --- the pieces: stages, steps, evaluations, checkpoints ---------------------------

    def _enter_stage(self, stage: Stage) -> None:
        """Build the model and optimizer for ``stage``, carrying weights and moments over.

        The model is rebuilt at every stage (its recipe may change chunk sizes) and wrapped
        again (which parameters train may change); state moves through the unsharded,
        name-keyed form, so this works the same under DDP and FSDP.
        """
        previous = self.stage
        carried = full_state_dicts(self.model, self.optimizer) if self.optimizer is not None else None
        # initial weights from the seed, without touching the run's RNG
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.recipe.seed)
            raw = LanguageModel(stage.recipe.model).to(self.dist.device)
        frozen = freeze_except(raw, stage.spec.train_only)
        if self.train.activation_checkpointing:
            checkpoint_blocks(raw)
        # carried state: a memory's learned initial state is unused once a row carries one
        model: torch.nn.Module = self.dist.wrap(raw, self.train.distributed, self.carried is not None)
        optimizer = build_optimizer(raw, stage.recipe.train)  # after sharding: FSDP2 replaces parameters
        if carried is not None:
            try:
                load_full_state_dicts(model, optimizer, *carried)
            except (RuntimeError, ValueError, KeyError) as exc:
                problem = f"a stage may not change parameter shapes ({str(exc).splitlines()[0]})"
                raise RecipeError([f"train.stages[{stage.index}].overrides: {problem}"]) from None
        if self.train.compile:
            model = compiled_or_eager(model, self.progress)
        self.raw, self.model, self.optimizer, self.stage = raw, model, optimizer, stage
        if self.separator is not None:  # data.reset_at_documents: packed where every part restarts
            self.packed_documents = packs_documents(
                raw, self.packed_documents, previous is None, self.progress
            )
            if self.carried is not None:  # refused at load; a guard
                self.carried.require_packed(self.packed_documents, raw, stage.name)
        if previous is not None or stage.index > 0:
            detail = f", training only {', '.join(stage.spec.train_only)}" if stage.spec.train_only else ""
            self.progress.event(
                f"stage {stage.name} from step {self.step}{detail} ({len(frozen)} tensors frozen)"
            )
            if self.dist.is_main:
                record = {"step": self.step, "event": "stage", "stage": stage.name}
                self.run_dir.log(record | {"train_only": list(stage.spec.train_only)})

    def _optimizer_step(self, batches: Any, context: RunContext, hook: Any) -> dict[str, Any]:
        """One optimizer step on the next batch: its forward pieces, loss terms, clip, AdamW."""
        stage_train = self.stage.recipe.train
        lr = set_learning_rate(self.optimizer, stage_train.lr, schedule_factor(self.step, self.train))
        set_training_windows(self.raw, self.recipe.seed, self.step)  # model.attention.train_window (SWAX)
        pieces = forward_pieces(
            TrainingBatch.of(next(batches)), self.train.micro_batch_size, self.separator,
            self.recipe.data.document_buckets, self.dist.enabled, packed=self.packed_documents,
        )  # fmt: skip
        # the loss is the mean over the batch's labelled targets: each micro-batch's sum over
        # its own, divided by the batch's count (a synthetic task's rows may differ in count);
        # counted on the host, before the copy to the device, so a step adds no sync
        counts = [piece.labelled for piece in pieces]
        labelled = max(sum(counts), 1)
        total_loss, extras = 0.0, {}
        self.model.train()
        for index, (piece, count) in enumerate(zip(pieces, counts, strict=True)):
            piece = piece.to(self.dist.device)
            with self.dist.no_sync(self.model, last=index == len(pieces) - 1), self.precision():
                documents = piece.extras.get(DOC_START) if self.packed_documents else None
                logits = (
                    self.carried.forward(self.model, piece.inputs, index, documents=documents)
                    if self.carried is not None
                    else self.model(piece.inputs, documents=documents)
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

    def _evaluate(self, task: Any, context: RunContext, hook: Any) -> dict[str, Any]:
        """One validation pass on fresh batches: loss (and accuracy), what monitors add on the
        same batches (the memory-use metric), one record and one line."""
        # a fresh iterator: every pass sees the same batches
        val = task_batches(task, "val", self.recipe, self.dist)
        batches = [
            documents_apart(TrainingBatch.of(next(val)).to(self.dist.device), self.separator)
            for _ in range(self.train.eval_batches)
        ]
        with self.precision():
            result = evaluate(self.model, batches)
        loss = self.dist.mean(result["loss"])
        metrics = {"step": self.step, "event": "eval", "val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
        # a task with answers (documents run apart have IGNORE only at their pads)
        if self.separator is None and any(bool((batch.targets == IGNORE).any()) for batch in batches):
            metrics["val_accuracy"] = self.dist.mean(result["accuracy"])
        with context.held_back():  # what monitors say of the pass follows its own record and line
            phrases = hook.on_eval(run=context, metrics=metrics, batches=batches)
            if self.dist.is_main:
                self.run_dir.log(metrics)
            line = f"step {self.step}: val_loss {loss:.4f}, val_ppl {metrics['val_ppl']:.2f}"
            if "val_accuracy" in metrics:
                line += f", val_accuracy {metrics['val_accuracy']:.1%}"
            self.progress.event(", ".join([line, *(phrase for phrase in phrases if phrase)]))
        self.last_eval = metrics
        return metrics

    def _save(self, batches: Any, hook: Any, context: RunContext) -> bool:
        """Write a checkpoint, or stop the run when its state is not finite; whether it wrote one."""
        if not parameters_finite(self.raw, self.dist):
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
                "recipe_sha256": recipe_hash(self.recipe),
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
