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
    from collections.abc import Callable, Mapping

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
def on_eval(run: RunContext, metrics: dict[str, Any]) -> None:
    """Called after each validation pass with its metrics."""


@hookspec
def on_checkpoint(run: RunContext, path: Any) -> None:
    """Called after a checkpoint has been written completely."""


@hookspec
def on_train_end(run: RunContext, summary: Mapping[str, Any]) -> None:
    """Called once when the run ends, finished or stopped by a check (``summary["stopped_by"]``),
    after ``summary.json`` and the memory-use plot are written; not after a crash."""
