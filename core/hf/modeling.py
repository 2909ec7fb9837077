"""``MiraslabForCausalLM``: a miraslab language model behind the transformers API.

The wrapped module is miraslab's own ``LanguageModel`` (``self.model``), built from the
recipe in the config, so its logits are the ones miraslab computes, and ``generate()``
decodes through the same recurrent path as ``miraslab generate``: the prompt is read in
one call, then one token per call with the blocks' state in a :class:`MiraslabCache`, through
the decode step ``miraslab generate`` uses (compiled when ``config.compile_decode`` is set).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..model.language_model import LanguageModel
from ..recipe.resolve import recipe_from_dict
from .cache import MiraslabCache
from .config import MiraslabConfig

# transformers 5 renamed the output's ``past_key_values`` to ``cache`` (5.2x); fill whichever it has
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
# how forward refuses padding; the lm-eval shortcut recognises it (harness.py)
PADDING_REFUSED = "a miraslab model reads every token, in order"


class MiraslabPreTrainedModel(PreTrainedModel):
    config_class = MiraslabConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    # the memory's weights cannot be rolled back to an earlier token: no assisted decoding
    _is_stateful = True

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Keep miraslab's own initialisation (every tensor comes from the export)."""

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """transformers' loading, then the buffers that are not saved, rebuilt.

        ``from_pretrained`` builds the model on the meta device and fills in the saved
        tensors; a non-persistent buffer (the polynomial feature map's index tables) comes
        back as uninitialised memory, so it is taken from a model built on the CPU.
        """
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded.model
        persistent = set(model.state_dict())
        unsaved = [name for name, _ in model.named_buffers() if name not in persistent]
        if unsaved:
            with torch.device("cpu"):
                fresh = dict(LanguageModel(model.spec).named_buffers())
            with torch.no_grad():
                for name, buffer in model.named_buffers():
                    if name in unsaved:
                        buffer.copy_(fresh[name])
        return loaded

    @classmethod
    def is_remote_code(cls) -> bool:
        # loaded through the export's shim, the class is still the installed miraslab's: saving
        # must not copy miraslab's sources as if they were the hub's code (see export.py)
        return False

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model makes its own MiraslabCache


class MiraslabForCausalLM(MiraslabPreTrainedModel, GenerationMixin):
    def __init__(self, config: MiraslabConfig, model: LanguageModel | None = None):
        super().__init__(config)
        if model is None:
            if getattr(config, "provenance", None):  # name the package to install, not "unknown memory"
                from ..train.provenance import check_recorded

                check_recorded(config.provenance, getattr(config, "name_or_path", "") or "the export")
            model = LanguageModel(recipe_from_dict(config.recipe).model)
        self.model = model
        if config.tie_word_embeddings:
            self._tied_weights_keys = {"model.head.weight": "model.embed.weight"}
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.embed

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.model.head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if input_ids is None or inputs_embeds is not None:
            raise ValueError("a miraslab model reads token ids (input_ids), not inputs_embeds")
        if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask.all()):
            # the memory writes every token it reads: a padding token would change its state
            raise ValueError(
                f"{PADDING_REFUSED}: attention_mask has padding (zeros); "
                "give sequences without padding (right padding is fine for scoring, use batch size 1 to generate)"
            )
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if cache is not None and not isinstance(cache, MiraslabCache):
            if cache.get_seq_length() > 0:
                raise ValueError(
                    f"a miraslab model continues from a MiraslabCache, got a {type(cache).__name__}"
                )
            cache = None
        if use_cache and cache is None:
            cache = MiraslabCache(len(self.model.blocks))
        # a token after the prompt, without gradients (generate): the decode step
        stepping = input_ids.shape[1] == 1 and not torch.is_grad_enabled()
        if cache is not None and stepping and (cache.decoder is not None or cache.get_seq_length() > 0):
            logits = cache.step(self.model, input_ids, bool(getattr(self.config, "compile_decode", False)))
        elif cache is not None:
            logits, state = self.model(input_ids, state=cache.decode_state(), return_state=True)
            cache.store(state)
        else:
            logits = self.model(input_ids)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache})
