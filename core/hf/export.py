"""``miraslab export RUN --hf DIR``: a directory ``AutoModelForCausalLM.from_pretrained`` loads.

    DIR/config.json               MiraslabConfig: the resolved recipe and its provenance (what
                                  supplied each component), auto_map to the two files below
    DIR/model.safetensors         the checkpoint's weights (the tied head stored once)
    DIR/generation_config.json    the end-of-document token ends ``generate()``
    DIR/configuration_miraslab.py, modeling_miraslab.py
                                  two-line modules importing the classes from the installed miraslab
    DIR/tokenizer.json, tokenizer_config.json   the run's tokenizer (text tasks)

The modeling files import miraslab rather than carrying a copy of it: a recipe may use any
layout, memory rule or third-party plugin, which only the installed miraslab (and its
plugins) can build, and the export stays a few kilobytes of code that cannot drift from
the model it was trained with.  ``trust_remote_code=True`` is what lets transformers import
them; :func:`register_auto_classes` registers the classes instead, for code that would
rather not pass it.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import MiraslabError
from ..recipe.resolve import recipe_to_dict

CONFIGURATION_FILE = "configuration_miraslab.py"
MODELING_FILE = "modeling_miraslab.py"
SHIM = '''"""Written by `miraslab export`: the model is built by the installed miraslab (pip install 'miraslab[hf]')."""

from miraslab.hf.{module} import {name}

__all__ = ["{name}"]
'''


def register_auto_classes() -> None:
    """Let ``AutoConfig`` / ``AutoModelForCausalLM`` load an export without ``trust_remote_code``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .config import MiraslabConfig
    from .modeling import MiraslabForCausalLM

    AutoConfig.register("miraslab", MiraslabConfig, exist_ok=True)
    AutoModelForCausalLM.register(MiraslabConfig, MiraslabForCausalLM, exist_ok=True)


def export_model(
    model: torch.nn.Module,
    recipe: Any,
    out: Path,
    tokenizer: Any = None,
    eos_token: str | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a miraslab LanguageModel) with its recipe and tokenizer to ``out``.

    ``provenance`` (a run's, see ``miraslab.train.provenance``; by default what supplies the
    recipe's components here) goes into the config, so loading the export names what to install.
    """
    from ..train.provenance import provenance as current_provenance
    from .config import MiraslabConfig
    from .modeling import MiraslabForCausalLM

    out = Path(out)
    _check_target(out)
    eos_id = tokenizer.token_to_id(eos_token) if tokenizer is not None and eos_token else None
    config = MiraslabConfig(
        recipe=recipe_to_dict(recipe),
        provenance=provenance or current_provenance(recipe),
        eos_token_id=eos_id,
        bos_token_id=eos_id,  # a document starts after the separator, as in training
        dtype="float32",
        auto_map={
            "AutoConfig": f"{CONFIGURATION_FILE[:-3]}.MiraslabConfig",
            "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.MiraslabForCausalLM",
        },
    )
    wrapped = MiraslabForCausalLM(config, model=model.float().eval())
    wrapped.generation_config.eos_token_id = eos_id
    # a load with trust_remote_code marks the config class as remote code; saving would then
    # copy miraslab's own sources beside the shims: the export names the installed miraslab
    config._auto_class = None
    with _written_in_place_of(out) as partial:
        wrapped.save_pretrained(partial)
        (partial / CONFIGURATION_FILE).write_text(SHIM.format(module="config", name="MiraslabConfig"))
        (partial / MODELING_FILE).write_text(SHIM.format(module="modeling", name="MiraslabForCausalLM"))
        if tokenizer is not None:
            _save_tokenizer(tokenizer, partial, eos_token)
    return out


# what every export holds: a directory without them is not one (and is not replaced)
EXPORT_MARKERS = ("config.json", "model.safetensors")
_PARTIAL = ".{name}.partial-{pid}"


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise MiraslabError(f"{out}: is a file, not a directory; choose an empty or new --hf directory")
    if out.is_dir() and any(out.iterdir()) and not all((out / name).is_file() for name in EXPORT_MARKERS):
        raise MiraslabError(f"{out}: exists and is not an export; choose an empty or new --hf directory")


@contextmanager
def _written_in_place_of(out: Path) -> Iterator[Path]:
    """A hidden sibling to write the export in, renamed over ``out`` once complete.

    As checkpoints are: a kill or a full disk mid-export leaves ``out`` as it was (absent, or
    the previous export), never a directory with a config.json and no weights.
    """
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MiraslabError(f"{out}: cannot create its parent directory: {exc.strerror or exc}") from None
    _remove_stale_partials(out)
    partial = parent / _PARTIAL.format(name=out.name, pid=os.getpid())
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    old = parent / f".{out.name}.old-{os.getpid()}"
    try:
        yield partial
        if out.is_dir() and any(out.iterdir()):  # a previous export: moved aside, then removed
            os.replace(out, old)
        elif out.is_dir():
            out.rmdir()
        os.replace(partial, out)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if old.is_dir() and not out.exists():  # the previous export goes back where it was
            os.replace(old, out)
        full = exc.errno == errno.ENOSPC
        problem = "the disk is full" if full else (exc.strerror or str(exc))
        raise MiraslabError(
            f"{out}: the export could not be written ({problem}); nothing was left in its place"
            + ("; free some space and export again" if full else "")
        ) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _remove_stale_partials(out: Path) -> None:
    """Partial exports left by a killed export (its process gone) are removed."""
    for stale in out.parent.glob(_PARTIAL.format(name=out.name, pid="*")):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _save_tokenizer(tokenizer: Any, out: Path, eos_token: str | None) -> None:
    from transformers import PreTrainedTokenizerFast

    special = {"eos_token": eos_token, "bos_token": eos_token, "pad_token": eos_token} if eos_token else {}
    # split_special_tokens: the spelling of the separator inside text is text, as in training
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, split_special_tokens=True, **special)
    fast.save_pretrained(out)


def export_run(run_dir: Path, out: Path, checkpoint: Path | None = None) -> Path:
    """Export a training run's latest (or given) checkpoint; see the module docstring."""
    from ..train.run_dir import load_run

    return export_loaded(load_run(run_dir, checkpoint), out, run_dir)


def export_loaded(loaded: Any, out: Path, run_dir: Path) -> Path:
    """Export a run already loaded from ``run_dir`` (a ``LoadedRun``): its model, recipe,
    tokenizer and the run's provenance."""
    from ..train.provenance import read_provenance

    separator = getattr(loaded.recipe.data.task.params, "separator", None)
    return export_model(
        loaded.model, loaded.recipe, out, loaded.tokenizer, separator or None, read_provenance(Path(run_dir))
    )
