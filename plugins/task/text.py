"""The ``text`` task: language modelling on documents, packed to the context length.

Documents come from this Python's standard library (``dataset = "stdlib"``, the offline
default), from local .txt/.json/.jsonl/.parquet files (a path, directory or glob, read with
HF ``datasets`` streaming), or from a Hugging Face hub dataset (streamed; needs the
network).  They are tokenised with a ``tokenizer.json`` of your own, or with a byte-level
BPE trained on the training split and cached (``miraslab tokenizer train`` does it ahead of
time).  The order is seeded and resumes exactly; see ``miraslab.data.document_order`` and
``miraslab.data.packing`` for how.

Relative paths are relative to the directory the command runs in.
"""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

import miraslab
from miraslab.api import (
    BUILDERS,
    SUPPORTED,
    Batches,
    DocumentOrder,
    DocumentSource,
    FirstDocuments,
    HubDataset,
    LocalFiles,
    PackedBatches,
    ParamValueError,
    StdlibCorpus,
    StreamedBatches,
    Task,
    cache_key,
    cached_tokenizer,
    check_split,
    protect_special_tokens,
    task_error,
    tokenizer_cache_path,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

FILES_PREFIX = "files:"  # forces a local reading of a name that could be a hub dataset
GLOB_CHARACTERS = "*?["
# the tokenizer learns from the same documents whatever the recipe's seed, so runs that
# differ only in seed share one tokenizer
TOKENIZER_ORDER_SEED = 0


@attrs.frozen
class TextParams:
    dataset: str = miraslab.param(
        "stdlib",
        doc='"stdlib" (this Python\'s standard-library sources, offline), a local file, directory or '
        f'glob of {SUPPORTED} files ("files:" forces a local path), or a Hugging Face hub dataset name',
    )
    config: str = miraslab.param("", doc='hub dataset configuration, e.g. "sample-10BT"')
    text_field: str = miraslab.param(
        "text", doc="field holding the text in .json/.jsonl/.parquet and hub rows"
    )
    sample_by: str = miraslab.param(
        "paragraph",
        choices=("document", "paragraph", "line"),
        doc="one document of a .txt file: the whole file, a blank-line separated paragraph, or a line",
    )
    tokenizer: str = miraslab.param(
        "", doc="a tokenizer.json (or a directory holding one); empty trains a byte-level BPE and caches it"
    )
    vocab_size: int = miraslab.param(
        8192, ge=257, doc="vocabulary of a trained tokenizer (256 bytes, merges and the separator)"
    )
    tokenizer_documents: int = miraslab.param(
        10_000, ge=1, doc="training-split documents a tokenizer is trained on"
    )
    separator: str = miraslab.param(
        "<|endoftext|>", doc="special token between packed documents; must be a token of the tokenizer"
    )
    val_fraction: float = miraslab.param(
        0.02, ge=0, lt=1, doc="share of documents held out for validation, chosen by a hash of their text"
    )
    shuffle_buffer: int = miraslab.param(
        10_000, ge=1, doc="documents shuffled together inside a file or shard (the files are shuffled too)"
    )
    max_documents: int = miraslab.param(
        0, ge=0, doc="use only the first N documents (before the val split); 0 uses all"
    )

    def cross_check(self) -> None:
        if not self.dataset.strip():
            raise ParamValueError("dataset", '"stdlib", a local path or glob, or a hub dataset name', "")
        if not self.separator:
            raise ParamValueError("separator", "a special token such as <|endoftext|>", "")


class TextTask(Task):
    """Language modelling on text documents (HF datasets + tokenizers), packed and resumable."""

    def __init__(self, params: TextParams):
        self.params = params
        # cheap checks now (files exist, offline), so a bad recipe fails before any training
        self.source = document_source(params)
        self._tokenizer_file = tokenizer_file(params.tokenizer) if params.tokenizer else None
        self._tokenizer: Tokenizer | None = None
        self._separator_id = -1

    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            tokenizer = self._load_tokenizer() if self._tokenizer_file else self._trained_tokenizer()
            separator = tokenizer.token_to_id(self.params.separator)
            if separator is None:
                raise task_error(
                    "separator",
                    f'"{self.params.separator}" is not a token of {self.tokenizer_path()}; '
                    'set separator to its end-of-document token (e.g. "</s>")',
                )
            self._tokenizer, self._separator_id = tokenizer, separator
        return self._tokenizer

    def tokenizer_path(self) -> Path:
        if self._tokenizer_file:
            return self._tokenizer_file
        return tokenizer_cache_path(
            self._tokenizer_material(),
            vocab_size=self.params.vocab_size,
            special_tokens=[self.params.separator],
        )

    def vocab_size(self) -> int:
        return self.tokenizer().get_vocab_size()

    def document_separator(self) -> int:
        """The separator: it closes each packed document and opens the next (``data.reset_at_documents``)."""
        self.tokenizer()
        return self._separator_id

    def batches(
        self,
        split: str,
        *,
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        state: dict[str, Any] | None = None,
        streamed: bool = False,
    ) -> Batches:
        check_split(split)
        tokenizer = self.tokenizer()

        def encode(texts: list[str]) -> list[list[int]]:
            return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]

        rows = StreamedBatches if streamed else PackedBatches
        return rows(
            self._order(split, seed),
            encode,
            self._separator_id,
            seq_len=seq_len,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
            state=state,
            fingerprint=self._data_fingerprint(tokenizer),
        )

    def streamed_batches(self, split: str, **options: Any) -> Batches:
        """Rows that continue the previous batch's rows, for ``data.carry_state``."""
        return self.batches(split, **options, streamed=True)

    def _order(self, split: str, seed: int) -> DocumentOrder:
        return DocumentOrder(
            self.source,
            split,
            seed=seed,
            val_fraction=self.params.val_fraction,
            shuffle_buffer=self.params.shuffle_buffer,
        )

    def _load_tokenizer(self) -> Tokenizer:
        from tokenizers import Tokenizer

        try:
            loaded = Tokenizer.from_file(str(self._tokenizer_file))
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [""])[0]
            raise task_error("tokenizer", f'cannot load "{self._tokenizer_file}": {reason}') from None
        return protect_special_tokens(loaded)

    def _trained_tokenizer(self) -> Tokenizer:
        order = self._order("train", TOKENIZER_ORDER_SEED)
        tokenizer, _, _ = cached_tokenizer(
            self._tokenizer_material(),
            lambda: islice(order.epoch_documents(0), self.params.tokenizer_documents),
            vocab_size=self.params.vocab_size,
            special_tokens=[self.params.separator],
        )
        return tokenizer

    def _tokenizer_material(self) -> dict[str, Any]:
        """Everything the training texts depend on (the cache key of a trained tokenizer)."""
        p = self.params
        return {
            "source": self.source.fingerprint(),
            "split": "train",
            "val_fraction": p.val_fraction,
            "shuffle_buffer": p.shuffle_buffer,
            "order_seed": TOKENIZER_ORDER_SEED,
            "documents": p.tokenizer_documents,
        }

    def _data_fingerprint(self, tokenizer: Tokenizer) -> str:
        """What a saved position depends on: the documents, their order, the tokens."""
        p = self.params
        return cache_key(
            {
                "dataset": p.dataset,
                "config": p.config,
                "text_field": p.text_field,
                "sample_by": p.sample_by,
                "max_documents": p.max_documents,
                "val_fraction": p.val_fraction,
                "shuffle_buffer": p.shuffle_buffer,
                "separator": p.separator,
                "tokenizer": cache_key({"json": tokenizer.to_str()}),
            }
        )


def document_source(params: TextParams) -> DocumentSource:
    """The documents ``params.dataset`` names, limited to ``max_documents``."""
    spec = params.dataset
    source: DocumentSource
    if spec == "stdlib":
        source = StdlibCorpus()
    elif is_local(spec):
        source = LocalFiles(
            local_files(spec), text_field=params.text_field, sample_by=params.sample_by, pattern=spec
        )
    else:
        source = HubDataset(spec, config=params.config, text_field=params.text_field)
    if params.config and not isinstance(source, HubDataset):
        raise task_error("config", f'only hub datasets have configurations; "{spec}" is not one')
    return FirstDocuments(source, params.max_documents) if params.max_documents else source


def is_local(spec: str) -> bool:
    """A path or glob rather than a hub dataset name ("owner/name" has neither suffix nor glob)."""
    if spec.startswith(FILES_PREFIX) or any(c in spec for c in GLOB_CHARACTERS):
        return True
    if spec.startswith(("/", "./", "../", "~")):
        return True
    path = Path(spec)
    return path.suffix.lower() in BUILDERS or path.exists()


def local_files(spec: str) -> list[Path]:
    """The files a local ``dataset`` names, sorted; an error when there are none."""
    import glob

    pattern = spec.removeprefix(FILES_PREFIX)
    expanded = os.path.expanduser(pattern)
    if any(c in expanded for c in GLOB_CHARACTERS):
        files = sorted(Path(p) for p in glob.glob(expanded, recursive=True) if Path(p).is_file())
    elif Path(expanded).is_dir():
        files = sorted(p for p in Path(expanded).rglob("*") if p.is_file() and p.suffix.lower() in BUILDERS)
        if not files:
            raise task_error("dataset", f'no {SUPPORTED} files in directory "{pattern}"')
    else:
        files = [Path(expanded)] if Path(expanded).is_file() else []
    if not files:
        raise task_error("dataset", f'no files match "{pattern}"')
    unsupported = [p for p in files if p.suffix.lower() not in BUILDERS]
    if unsupported:
        more = f" (and {len(unsupported) - 1} more)" if len(unsupported) > 1 else ""
        raise task_error("dataset", f'"{unsupported[0]}"{more} is not a {SUPPORTED} file')
    return files


def tokenizer_file(spec: str) -> Path:
    """The tokenizer.json ``tokenizer`` names (a file, or a directory holding one)."""
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise task_error("tokenizer", f'no file "{path}"; give a tokenizer.json, or "" to train one')
    return path


@miraslab.hookimpl
def register_tasks(register):
    register("text", TextTask, TextParams)
