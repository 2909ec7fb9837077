"""The hook specifications every miraslab plugin implements against.

Component hooks follow the simonw/llm pattern: the hook receives a typed ``register``
callable and calls it once per component, rather than returning values.  Trainer-event
hooks are called on every registered plugin, and on the monitors a recipe builds (the
trainer registers those for the duration of a run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from contextlib import AbstractContextManager

    import torch

PROJECT = "miraslab"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Register(Protocol):
    """``register(name, factory, params)`` adds one component of the hook's kind.

    ``factory`` builds the component from an instance of ``params`` (an attrs class,
    frozen, with validated fields) plus the keyword context its kind documents.
    """

    def __call__(self, name: str, factory: Callable[..., Any], params: type) -> None: ...


# --- components: one hook per kind -------------------------------------------------


@hookspec
def register_memories(register: Register) -> None:
    """Memory architectures (Miras axis 1): ``factory(params, heads=, d_in=, d_out=)`` builds a
    ``miraslab.memory.rule.axes.MemoryArchitecture``."""


@hookspec
def register_biases(register: Register) -> None:
    """Attentional biases, the memory's inner objective (Miras axis 2): ``factory(params)`` builds an
    ``AttentionalBias``."""


@hookspec
def register_retentions(register: Register) -> None:
    """Retention gates (Miras axis 3): ``factory(params)`` builds a ``Retention``."""


@hookspec
def register_algorithms(register: Register) -> None:
    """Memory learning algorithms (Miras axis 4): ``factory(params)`` builds a ``LearningAlgorithm``."""


@hookspec
def register_features(register: Register) -> None:
    """Key/query feature maps phi: ``factory(params, dim=)`` builds a ``FeatureMap``."""


@hookspec
def register_mixers(register: Register) -> None:
    """Ways of combining several memories' outputs: ``factory(params, dim=, n_memories=)``."""


@hookspec
def register_layouts(register: Register) -> None:
    """Block layouts (attention, swa, lmm, mag, mal, mac): ``factory(params, context=BlockContext)``
    builds a ``miraslab.model.block.Block``."""


@hookspec
def register_attentions(register: Register) -> None:
    """Attention backends (sdpa, flex, xformers): ``factory(params)`` builds an
    ``miraslab.model.attention_backend.AttentionBackend``."""


@hookspec
def register_tasks(register: Register) -> None:
    """Data sources and synthetic tasks: ``factory(params)`` builds a ``miraslab.data.task.Task``."""


@hookspec
def register_monitors(register: Register) -> None:
    """Diagnostics, kill switches and regularizers: ``factory(params)``.

    A monitor instance may implement the trainer-event hooks below as methods marked
    with ``@miraslab.hookimpl``; the trainer registers it for the run.
    """


# --- trainer events ----------------------------------------------------------------


class RunContext(Protocol):
    """What the trainer exposes to event hooks."""

    step: int
    model: torch.nn.Module
    out_dir: Any
    recipe: Any  # the resolved recipe (``miraslab.api.recipe_to_dict`` gives it as plain data)
    rank: int  # this process's rank under torchrun (0 alone); a monitor that writes files writes on 0
    world_size: int

    def request_stop(self, reason: str, cause: str = "stopped") -> None:
        """Stop after this step with ``reason``; ``cause`` (a key of
        ``miraslab.errors.STOP_EXIT_CODES``) picks the command's exit code."""

    def say(self, line: str) -> None:
        """Print one line as the trainer prints its own (above the progress bar; quiet with
        ``--quiet`` and on every rank but 0)."""

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to the run's ``metrics.jsonl`` (rank 0 writes it), e.g.
        ``{"step": run.step, "event": "my_warning", "message": ...}``."""

    def records(self) -> list[dict[str, Any]]:
        """Every record ``metrics.jsonl`` holds so far, a resumed run's earlier ones included."""

    def mean(self, value: float) -> float:
        """``value``'s mean over the processes under torchrun (itself alone): a monitor that
        measures on its rank's batches calls it on every rank, in the same order."""

    def precision(self) -> AbstractContextManager:
        """The run's precision as a context for a forward pass (bf16 autocast on CUDA by
        default, nothing on CPU): a monitor's own forwards run as the trainer's do."""


@hookspec
def on_train_start(run: RunContext) -> None:
    """Called once, before the first step (also after a resume)."""


@hookspec
def loss_terms(run: RunContext, outputs: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
    """Extra loss terms (e.g. gate polarisation) added to the training loss this step."""


@hookspec
def on_step_end(run: RunContext, metrics: dict[str, Any]) -> None:
    """Called after every optimizer step; may add entries to ``metrics`` or stop the run."""


@hookspec
def on_eval(run: RunContext, metrics: dict[str, Any], batches: Sequence[Any]) -> str | None:
    """Called after each validation pass, before its record is logged.

    ``metrics`` holds ``val_loss`` and ``val_ppl`` (and ``val_accuracy`` on a task with
    answers); ``batches`` are the pass's ``TrainingBatch``es on the run's device, so a monitor
    can measure more on the same data (the unwrapped ``run.model`` under ``run.precision()``)
    and add entries to ``metrics``.  A phrase returned is added to the pass's progress line;
    what a monitor says or logs here comes after the pass's own line and record."""


@hookspec
def on_summary(run: RunContext, summary: dict[str, Any]) -> None:
    """Called once when the run ends (finished or stopped by a check), before ``summary.json``
    is written: may add entries to ``summary``."""


@hookspec
def on_checkpoint(run: RunContext, path: Any) -> None:
    """Called after a checkpoint has been written completely."""


@hookspec
def on_train_end(run: RunContext, summary: Mapping[str, Any]) -> None:
    """Called once when the run ends, finished or stopped by a check (``summary["stopped_by"]``),
    after ``summary.json`` is written (the built-in ``memory_use`` monitor's plot first: it is
    ``tryfirst``); not after a crash."""
