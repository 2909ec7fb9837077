"""Where documents come from: local files and hub datasets, read with HF ``datasets``.

A source is a list of *shards* (a file, or a shard of a hub dataset), each an ordered
stream of document texts.  Shards are the unit the document order shuffles and seeks
in, so a source must give the same documents in the same order every time it is read.

``datasets`` is imported only when documents are read: building a task, listing plugins
and validating recipes stay fast.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain, islice
from pathlib import Path
from typing import Any

from ..errors import RecipeError

# file suffix -> the HF datasets builder that reads it
BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SUPPORTED = ".txt, .json, .jsonl or .parquet"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def task_error(key: str, message: str) -> RecipeError:
    """One line naming the recipe key of the task: ``data.task.<key>: <message>``."""
    return RecipeError([f"data.task.{key}: {message}"])


class DocumentSource(ABC):
    """Documents as shards of texts, read the same way every time."""

    @property
    @abstractmethod
    def num_shards(self) -> int: ...

    @abstractmethod
    def documents(self, shard: int) -> Iterator[str]:
        """The texts of one shard, in their stored order."""

    @abstractmethod
    def describe(self) -> str:
        """A phrase for messages: what these documents are."""

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """JSON data that changes when the documents may have changed (cache keys)."""


class LocalFiles(DocumentSource):
    """One shard per file: .txt (by ``sample_by``), .json/.jsonl (one row per document), .parquet."""

    def __init__(self, files: Sequence[Path], *, text_field: str, sample_by: str, pattern: str):
        self.files = list(files)
        self.text_field = text_field
        self.sample_by = sample_by
        self.pattern = pattern
        # files read by each builder, and each file's builder and index among them
        self._groups: dict[str, list[str]] = {}
        self._place: list[tuple[str, int]] = []
        for path in self.files:
            group = self._groups.setdefault(BUILDERS[path.suffix.lower()], [])
            self._place.append((BUILDERS[path.suffix.lower()], len(group)))
            group.append(str(path))
        self._streams: dict[str, Any] = {}

    @property
    def num_shards(self) -> int:
        return len(self.files)

    def documents(self, shard: int) -> Iterator[str]:
        builder, index = self._place[shard]
        # the text builder always names its column "text", whatever text_field says
        field = "text" if builder == "text" else self.text_field
        yield from texts_of(self._file_rows(builder, index), field, where=str(self.files[shard]))

    def _file_rows(self, builder: str, index: int) -> Any:
        """The rows of one file: a shard of one stream over all the files ``builder`` reads.

        One ``load_dataset`` per builder, then ``shard``: a load costs ~0.1 s, a shard ~1 ms.
        """
        files = self._groups[builder]
        if builder not in self._streams:
            self._streams[builder] = self._load(builder, files)
        stream = self._streams[builder]
        if stream.n_shards != len(files):  # not one shard per file: read this file on its own
            return self._load(builder, [files[index]])
        return stream.shard(num_shards=len(files), index=index, contiguous=True)

    def _load(self, builder: str, files: list[str]) -> Any:
        import datasets

        options = {"sample_by": self.sample_by} if builder == "text" else {}
        try:
            return datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **options)
        except Exception as exc:  # e.g. ArrowInvalid for a .parquet that is not one: name the files
            reason = (str(exc).strip().splitlines() or [""])[0]
            where = files[0] if len(files) == 1 else f"{len(files)} {builder} files ({files[0]}, ...)"
            raise task_error(
                "dataset", f"cannot read {where} as {builder}: {type(exc).__name__}: {reason}"
            ) from None

    def describe(self) -> str:
        count = f"{len(self.files)} file{'s' if len(self.files) != 1 else ''}"
        return f'{count} from "{self.pattern}"'

    def fingerprint(self) -> dict[str, Any]:
        files = []
        for path in self.files:
            stat = path.stat()
            files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        return {"files": files, "text_field": self.text_field, "sample_by": self.sample_by}


class HubDataset(DocumentSource):
    """The "train" split of a Hugging Face hub dataset, streamed; its shards are the hub's."""

    def __init__(self, name: str, *, config: str, text_field: str):
        offline = hub_offline()
        if offline:
            raise task_error(
                "dataset",
                f'"{name}" is a Hugging Face hub dataset, but {offline} is set (offline); '
                f'use "stdlib" or local files (a path or glob of {SUPPORTED} files)',
            )
        self.name = name
        self.config = config
        self.text_field = text_field
        self._stream: Any = None

    def _dataset(self) -> Any:
        if self._stream is None:
            import datasets

            try:
                self._stream = datasets.load_dataset(
                    self.name, self.config or None, split="train", streaming=True
                )
            except Exception as exc:  # offline, unknown name, missing config: all one line
                reason = (str(exc).strip().splitlines() or [""])[0]
                local = (
                    "" if Path(self.name).exists() else f'; no local file or directory is named "{self.name}"'
                )
                raise task_error(
                    "dataset",
                    f'cannot stream hub dataset "{self.name}"{self._config_phrase()}: '
                    f'{type(exc).__name__}: {reason}{local}; offline runs use "stdlib" or local files',
                ) from None
        return self._stream

    def _config_phrase(self) -> str:
        return f' (config "{self.config}")' if self.config else ""

    @property
    def num_shards(self) -> int:
        return int(self._dataset().n_shards)

    def documents(self, shard: int) -> Iterator[str]:
        stream = self._dataset()
        if stream.n_shards > 1:
            stream = stream.shard(num_shards=stream.n_shards, index=shard, contiguous=True)
        yield from texts_of(stream, self.text_field, where=f"{self.name} shard {shard}")

    def describe(self) -> str:
        return f'hub dataset "{self.name}"{self._config_phrase()}'

    def fingerprint(self) -> dict[str, Any]:
        return {"hub": self.name, "config": self.config, "text_field": self.text_field}


class FirstDocuments(DocumentSource):
    """The first ``limit`` documents of a source (in stored order), held in memory.

    Each document becomes its own shard, so shuffling them is a full permutation.
    """

    def __init__(self, source: DocumentSource, limit: int):
        self.source = source
        self.limit = limit
        self._texts: list[str] | None = None

    def _all(self) -> list[str]:
        if self._texts is None:
            shards = (self.source.documents(shard) for shard in range(self.source.num_shards))
            self._texts = list(islice(chain.from_iterable(shards), self.limit))
        return self._texts

    @property
    def num_shards(self) -> int:
        return len(self._all())

    def documents(self, shard: int) -> Iterator[str]:
        return iter((self._all()[shard],))

    def describe(self) -> str:
        return f"the first {self.limit} documents of {self.source.describe()}"

    def fingerprint(self) -> dict[str, Any]:
        return {"first": self.limit, "of": self.source.fingerprint()}


def texts_of(rows: Iterable[dict[str, Any]], field: str, *, where: str) -> Iterator[str]:
    """The ``field`` of each row; rows where it is null are skipped (no text)."""
    iterator = iter(rows)
    index = 0
    while True:
        try:
            row = next(iterator)
        except StopIteration:
            return
        except Exception as exc:  # a malformed file: name it, in one line
            reason = (str(exc).strip().splitlines() or [""])[0]
            raise task_error("dataset", f"cannot read {where}: {type(exc).__name__}: {reason}") from None
        if index == 0 and field not in row:
            raise task_error(
                "text_field", f'no field "{field}" in {where}; its fields are: {", ".join(map(str, row))}'
            )
        value = row.get(field)
        if value is not None and not isinstance(value, str):
            raise task_error(
                "text_field", f'"{field}" in {where} (row {index}) holds {type(value).__name__}, not text'
            )
        if value is not None:
            yield value
        index += 1


def hub_offline() -> str:
    """The variable telling Hugging Face libraries not to use the network, or "" if none does."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return name
    return ""
