"""The data side of training: the task interface, document order, packing and tokenizers.

``task``               what the trainer asks of a task: :class:`Task` and its :class:`Batches`
``batch``              a batch as trained on: inputs and targets, of a text row or a task with answers
``sources``            where documents come from: local files and hub datasets via HF ``datasets``
``default_corpus``     the offline default corpus: this Python's standard-library sources
``document_order``     train/val split, seeded shuffling, epochs and resumable positions
``packing``            documents packed into fixed-length rows, sharded over processes
``tokenizer_training`` a byte-level BPE trained on the data, cached by what it was trained on
``cache``              the miraslab cache directory and its race-free writes
"""

from .task import Batches, Task

__all__ = ["Batches", "Task"]
