"""miraslab models as Hugging Face ``transformers`` models (``pip install 'miraslab[hf]'``).

- :mod:`.config`: ``MiraslabConfig``, a ``PreTrainedConfig`` holding the resolved recipe;
- :mod:`.cache`: ``MiraslabCache``, every block's decode state (memory, KV cache) as a ``Cache``;
- :mod:`.modeling`: ``MiraslabForCausalLM``, the miraslab model behind ``generate()``;
- :mod:`.export`: ``miraslab export RUN --hf DIR``, a directory ``from_pretrained`` loads;
- :mod:`.llama_init`: ``[model.init]``, weights from a local Llama-family checkpoint;
- :mod:`.harness`: ``miraslab eval RUN --lm-eval TASKS``, lm-evaluation-harness on an export.

The first four need ``transformers``; ``llama_init`` reads only JSON and safetensors (the
trainer imports it), and the rest of miraslab needs neither.
"""

from __future__ import annotations

from ..errors import MiraslabError


def require_transformers() -> None:
    """Fail with one line (not an ImportError traceback) when the [hf] extra is missing."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise MiraslabError("this needs Hugging Face transformers: pip install 'miraslab[hf]'") from None
