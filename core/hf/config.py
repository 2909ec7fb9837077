"""The transformers configuration of an exported miraslab model: the resolved recipe itself.

The recipe is the whole architecture (layout, memory rule, attention), so it is stored as
is, under ``recipe``; the few standard fields that tools read (``vocab_size``,
``hidden_size``, ...) are copied from its ``[model]`` table.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class MiraslabConfig(PretrainedConfig):
    model_type = "miraslab"

    def __init__(
        self, recipe: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None, **kwargs: Any
    ):
        self.recipe = recipe or {}
        self.provenance = provenance  # the distribution and version behind each component
        model = self.recipe.get("model", {})
        kwargs.setdefault("vocab_size", model.get("vocab_size"))
        kwargs.setdefault("hidden_size", model.get("d_model"))
        kwargs.setdefault("num_hidden_layers", model.get("n_layers"))
        kwargs.setdefault("num_attention_heads", model.get("n_heads"))
        kwargs.setdefault("tie_word_embeddings", model.get("tie_embeddings", True))
        # read by lm-evaluation-harness as the context it may pass; the memory has no limit,
        # this is the training length
        kwargs.setdefault("max_position_embeddings", self.recipe.get("data", {}).get("seq_len", 2048))
        self.use_cache = kwargs.pop("use_cache", True)  # generate() decodes with the blocks' state
        # generate()'s single-token steps as one compiled function (miraslab.model.decode_step)
        self.compile_decode = kwargs.pop("compile_decode", False)
        super().__init__(**kwargs)
