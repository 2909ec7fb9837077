"""A new run's first weights from a Llama-family checkpoint: ``--init-from`` a Hugging Face
directory (with ``[model.init]``'s options, if any), else ``[model.init]``.

The checkpoint is read and mapped before the run directory is made (one that does not fit
leaves nothing behind); once the model is built its tensors are copied in, and what was
mapped and what not is said, written beside the run (``miraslab.hf.llama_init``) and logged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import attrs
import torch

from ..hf.llama_init import SeedReport, is_hf_directory, seed_tensors_for, write_report
from ..model.spec import ModelSpec, SeedInitSpec
from .distributed import full_model_state_dict, load_full_state_dicts
from .run_dir import RunDir

SeedWeights = tuple[dict[str, torch.Tensor], SeedReport]


def seed_init_of(init: SeedInitSpec | None, init_from: Path | None) -> SeedInitSpec | None:
    """The seed checkpoint a run starting from step 0 takes its weights from; None for an
    ``--init-from`` miraslab checkpoint, or none at all."""
    if init_from is None:
        return init
    if not is_hf_directory(init_from):
        return None
    return attrs.evolve(init or SeedInitSpec(from_=""), from_=str(Path(init_from).absolute()))


def seed_weights(model: ModelSpec, init: SeedInitSpec | None, init_from: Path | None) -> SeedWeights | None:
    """The seed checkpoint's tensors for ``model`` (step 0's), mapped and checked."""
    init = seed_init_of(init, init_from)
    return seed_tensors_for(model, init) if init is not None else None


def load_seed(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    seeded: SeedWeights,
    say: Callable[[str], None],
    run_dir: RunDir | None,
    step: int,
) -> None:
    """Copy the checkpoint's tensors in, and say what was mapped and what not; rank 0 (the one
    given ``run_dir``) writes the report beside the run and logs it."""
    tensors, report = seeded
    state = full_model_state_dict(model)
    state.update(tensors)
    load_full_state_dicts(model, optimizer, state, None)
    say(report.summary())
    if run_dir is not None:
        write_report(report, run_dir.path)
        run_dir.log(
            {
                "step": step,
                "event": "seed_init",
                "source": report.source,
                "mapped": len(report.mapped),
                "kept": len(report.kept),
                "unused": len(report.unused),
            }
        )
