"""``[model.init]``: a miraslab model's initial weights from a local Llama-family checkpoint.

    [model.init]
    from = "checkpoints/SmolLM2-135M"      # config.json + *.safetensors (save_pretrained's layout)

Each decoder layer i of the checkpoint fills block i where the block has the same part
(the names the built-in layouts use), the rest of the model keeps its random init:

    embed_tokens                -> embed            lm_head (or the tied embedding) -> head
    layers.i.input_layernorm    -> blocks.i.attn_norm (mix_norm in MAG / MAC)
    layers.i.self_attn.q/k/v/o  -> blocks.i.attn.q/k/v_proj, attn.out_proj
    layers.i.post_attention_layernorm -> blocks.i.ffn_norm
    layers.i.mlp.gate/up/down   -> blocks.i.ffn.w1 / w3 / w2      (SwiGLU: w2 (silu(w1 x) * w3 x))
    norm                        -> norm

Grouped-query attention is expanded: kv head j serves query heads j*g .. (j+1)*g - 1
(g = heads / kv heads, transformers' ``repeat_kv``), so its rows are repeated g times.
The conventions are the same as transformers' Llama: RoPE pairs channel i with i + d/2
(``rotate_half``) with theta_i = base^(-2i/d); RMSNorm is ``weight * x / sqrt(mean(x^2) + eps)``;
attention scales by 1/sqrt(head_dim).  So with layout ``attention`` and the checkpoint's
sizes, the model computes the checkpoint's logits (tests/test_seed_init.py).

``memory_from_mlp = true`` also starts each memory's W_init from the same layer's MLP
(ad hoc level stacking): the memory's w1, w3, w2 (``mlp`` and ``gated_mlp`` memories) take
gate_proj, up_proj, down_proj, copied into every memory head.

Only safetensors and JSON are read (no pickle); transformers is not needed to load.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from ..bounded_read import MAX_JSON_BYTES, FileRefused, read_bounded_text
from ..errors import RecipeError
from ..memory.rule.axes import MemoryArchitecture
from ..model.attention import default_head_dim
from ..model.spec import ModelSpec, SeedInitSpec

LLAMA_MODEL_TYPES = ("llama",)
REPORT_FILE = "seed_init.json"

# a decoder layer's tensors and the block parameters they fill, first present wins
LAYER_TENSORS = {
    "input_layernorm.weight": ("attn_norm.weight", "mix_norm.weight"),
    "self_attn.q_proj.weight": ("attn.q_proj.weight",),
    "self_attn.k_proj.weight": ("attn.k_proj.weight",),
    "self_attn.v_proj.weight": ("attn.v_proj.weight",),
    "self_attn.o_proj.weight": ("attn.out_proj.weight",),
    "post_attention_layernorm.weight": ("ffn_norm.weight",),
    "mlp.gate_proj.weight": ("ffn.w1.weight",),
    "mlp.up_proj.weight": ("ffn.w3.weight",),
    "mlp.down_proj.weight": ("ffn.w2.weight",),
}
# a memory's W_init names and the MLP tensor each starts from (memory_from_mlp)
MEMORY_FROM_MLP = {"w1": "mlp.gate_proj.weight", "w3": "mlp.up_proj.weight", "w2": "mlp.down_proj.weight"}


@attrs.define
class SeedReport:
    """What a seed initialisation mapped, left at its random init, and did not use."""

    source: str
    mapped: list[dict[str, Any]] = attrs.field(factory=list)  # {"miraslab", "hf", "shape", "note"?}
    kept: list[str] = attrs.field(factory=list)  # the model's tensors left at their random init
    unused: list[str] = attrs.field(factory=list)  # the checkpoint's tensors with no place in the model
    differences: list[str] = attrs.field(factory=list)  # conventions that differ (strict = false)

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def summary(self) -> str:
        line = (
            f"weights from {self.source}: {len(self.mapped)} tensors mapped, {len(self.kept)} left at "
            f"their random init, {len(self.unused)} of the checkpoint's unused"
        )
        if self.kept:
            line += f" ({_parts(self.kept)})"
        if self.differences:
            line += f"; differences loaded anyway: {'; '.join(self.differences)}"
        return line


def _parts(names: list[str]) -> str:
    """ "memory 26, gate 4": how many tensors of each part of a block (or of the model)."""
    counts = Counter(
        name.split(".")[2] if name.startswith("blocks.") else name.split(".")[0] for name in names
    )
    return ", ".join(f"{part} {count}" for part, count in counts.items())


# --- reading the checkpoint ---------------------------------------------------------------


@attrs.frozen
class Checkpoint:
    """A Hugging Face model directory: its config.json and tensors (names without "model.")."""

    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    stored_as: dict[str, tuple[Path, str]]  # name -> (its file, its name there)

    def where(self, name: str) -> str:
        file, stored = self.stored_as[name]
        return f"{file}: {stored}"


def read_checkpoint(directory: Path) -> Checkpoint:
    """The config and tensors of a Hugging Face model directory (safetensors only)."""
    from safetensors.torch import load_file

    where = "model.init.from"
    if not directory.is_dir():
        raise RecipeError(
            [f"{where}: {directory}: no such directory (expected a Hugging Face model directory)"]
        )
    config_path = directory / "config.json"
    if not config_path.exists():
        raise RecipeError([f"{where}: {directory}: no config.json (save the model with save_pretrained)"])
    try:
        config = json.loads(read_bounded_text(config_path, MAX_JSON_BYTES, "config.json"))
    except FileRefused as exc:
        raise RecipeError([f"{where}: {exc}"]) from None
    except ValueError as exc:
        raise RecipeError([f"{where}: {config_path}: not readable JSON ({exc})"]) from None
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(
            {
                directory / name
                for name in json.loads(read_bounded_text(index, MAX_JSON_BYTES, "index"))[
                    "weight_map"
                ].values()
            }
        )
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in directory.glob("*.bin"))
        hint = (
            f" ({', '.join(pickled)} is a pickle, never loaded: re-save with safe_serialization=True)"
            if pickled
            else ""
        )
        raise RecipeError([f"{where}: {directory}: no *.safetensors weights{hint}"])
    tensors: dict[str, torch.Tensor] = {}
    stored_as: dict[str, tuple[Path, str]] = {}
    for file in files:
        try:
            loaded = load_file(str(file))
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise RecipeError([f"{where}: {file}: not a readable safetensors file ({exc})"]) from None
        for name, tensor in loaded.items():
            # a LlamaForCausalLM saves model.layers...; a bare LlamaModel saves layers...
            short = name.removeprefix("model.")
            tensors[short], stored_as[short] = tensor, (file, name)
    return Checkpoint(config, tensors, stored_as)


def is_hf_directory(path: Path) -> bool:
    """A Hugging Face model directory (config.json), not a miraslab checkpoint or run."""
    path = Path(path)
    return (path / "config.json").is_file() and not (path / "manifest.json").exists()


# --- conventions --------------------------------------------------------------------------


def _rope(config: dict[str, Any]) -> tuple[float, str]:
    """(theta, rope type): transformers 5 keeps them in rope_parameters, earlier configs at the top."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    return float(theta), kind


def convention_differences(config: dict[str, Any], spec: ModelSpec) -> list[str]:
    """Where the checkpoint computes something the recipe's model would not, one line each."""
    out = []
    model_type = config.get("model_type")
    if model_type not in LLAMA_MODEL_TYPES:
        out.append(
            f"model_type is {model_type!r}; [model.init] reads Llama-family checkpoints "
            f"({', '.join(LLAMA_MODEL_TYPES)})"
        )
    heads = config.get("num_attention_heads")
    if heads != spec.n_heads:
        out.append(
            f"num_attention_heads is {heads}, the recipe's model.n_heads {spec.n_heads}; "
            f"set model.n_heads = {heads}"
        )
    width = config.get("head_dim") or config.get("hidden_size", 0) // max(heads or 1, 1)
    ours = spec.attention.head_dim or default_head_dim(spec.d_model, spec.n_heads, spec.attention.rope)
    if width != ours:
        out.append(
            f"head_dim is {width}, the recipe's model.attention.head_dim {ours}; "
            f"set model.attention.head_dim = {width}"
        )
    if config.get("hidden_act", "silu") != "silu":
        out.append(f"hidden_act is {config['hidden_act']!r}; the SwiGLU feed-forward uses silu")
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            out.append(f"{key} is true; miraslab's projections have no bias")
    eps = config.get("rms_norm_eps", 1e-6)
    if eps != spec.norm_eps:
        out.append(
            f"rms_norm_eps is {eps:g}, the recipe's model.norm_eps {spec.norm_eps:g}; "
            f"set model.norm_eps = {eps:g}"
        )
    theta, kind = _rope(config)
    if kind != "default":
        out.append(f"rope type is {kind!r}; miraslab's RoPE is the default (unscaled) one")
    if not spec.attention.rope:
        out.append("the checkpoint uses RoPE, the recipe's model.attention.rope is false")
    elif theta != spec.attention.rope_base:
        out.append(
            f"rope_theta is {theta:g}, the recipe's model.attention.rope_base {spec.attention.rope_base:g}; "
            f"set model.attention.rope_base = {theta:g}"
        )
    if spec.tie_embeddings and not config.get("tie_word_embeddings", False):
        out.append(
            "tie_word_embeddings is false (its own lm_head), the recipe's model.tie_embeddings is true; "
            "set model.tie_embeddings = false"
        )
    return out


# --- the mapping --------------------------------------------------------------------------


def _kv_expansion(config: dict[str, Any]) -> int:
    heads = config.get("num_attention_heads", 1)
    kv = config.get("num_key_value_heads") or heads
    return heads // kv if kv and heads % kv == 0 else 1


def seed_tensors(model: nn.Module, init: SeedInitSpec) -> tuple[dict[str, torch.Tensor], SeedReport]:
    """The tensors of ``model``'s state dict the checkpoint ``init.from`` gives, and the report.

    Raises a RecipeError naming the file when the conventions differ (``strict``) or a tensor's
    shape does not fit, before anything is copied.
    """
    directory = Path(init.from_)
    checkpoint = read_checkpoint(directory)
    config, tensors = checkpoint.config, checkpoint.tensors
    spec: ModelSpec = model.spec
    report = SeedReport(source=str(directory))
    differences = convention_differences(config, spec)
    if differences and init.strict:
        raise RecipeError(
            [
                f"{directory / 'config.json'}: {d} (or model.init.strict = false loads it anyway)"
                for d in differences
            ]
        )
    report.differences = differences

    targets = model.state_dict()
    groups = _kv_expansion(config)
    kv_heads = config.get("num_key_value_heads") or config.get("num_attention_heads")
    plan: list[tuple[str, str, torch.Tensor, str]] = []  # (hf name, miraslab name, tensor, note)

    def expand(weight: torch.Tensor) -> torch.Tensor:  # transformers' repeat_kv, on the weight's rows
        return weight.unflatten(0, (kv_heads, -1)).repeat_interleave(groups, dim=0).flatten(0, 1)

    def place(
        hf: str,
        candidates: tuple[str, ...],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        note: str = "",
    ) -> None:
        if hf not in tensors:
            return
        for name in candidates:
            if name in targets:
                plan.append((hf, name, transform(tensors[hf]) if transform else tensors[hf], note))
                return

    place("embed_tokens.weight", ("embed.weight",))
    place("norm.weight", ("norm.weight",))
    if not spec.tie_embeddings:
        if "lm_head.weight" in tensors:
            place("lm_head.weight", ("head.weight",))
        else:
            place("embed_tokens.weight", ("head.weight",), note="the checkpoint's tied embedding")
    layers = config.get("num_hidden_layers", 0)
    for i in range(min(layers, spec.n_layers)):
        for part, ours in LAYER_TENSORS.items():
            expanded = groups > 1 and part in ("self_attn.k_proj.weight", "self_attn.v_proj.weight")
            place(
                f"layers.{i}.{part}",
                tuple(f"blocks.{i}.{name}" for name in ours),
                expand if expanded else None,
                f"{kv_heads} kv heads repeated for {groups * kv_heads} heads" if expanded else "",
            )
    if init.memory_from_mlp:
        plan += _memory_plan(model, checkpoint, min(layers, spec.n_layers))

    mismatched = [(hf, name, t) for hf, name, t, _ in plan if tuple(t.shape) != tuple(targets[name].shape)]
    if mismatched:
        hf, name, tensor = mismatched[0]
        more = f" (and {len(mismatched) - 1} more tensors)" if len(mismatched) > 1 else ""
        raise RecipeError(
            [
                f"{checkpoint.where(hf)} has shape {list(tensor.shape)}, the model's {name} "
                f"{list(targets[name].shape)}{more}; make the recipe's sizes the checkpoint's "
                f"(config.json: hidden_size {config.get('hidden_size')}, intermediate_size "
                f"{config.get('intermediate_size')}, vocab_size {config.get('vocab_size')})"
            ]
        )

    out: dict[str, torch.Tensor] = {}
    used = set()
    for hf, name, tensor, note in plan:
        out[name] = tensor.to(targets[name].dtype)
        used.add(hf)
        entry = {"miraslab": name, "hf": hf, "shape": list(targets[name].shape)}
        report.mapped.append({**entry, "note": note} if note else entry)
    if spec.tie_embeddings and "embed.weight" in out:
        out["head.weight"] = out["embed.weight"]  # the same tensor in the model
    report.kept = [name for name in targets if name not in out]
    report.unused = sorted(set(tensors) - used)
    return out, report


def seed_tensors_for(spec: ModelSpec, init: SeedInitSpec) -> tuple[dict[str, torch.Tensor], SeedReport]:
    """:func:`seed_tensors` for the model ``spec`` builds, built on the meta device (no weights)."""
    from ..model.language_model import LanguageModel

    with torch.device("meta"):
        model = LanguageModel(spec)
    return seed_tensors(model, init)


def _memory_plan(
    model: nn.Module, checkpoint: Checkpoint, layers: int
) -> list[tuple[str, str, torch.Tensor, str]]:
    """Each memory's W_init from its layer's MLP, the same (d_out, d_in) copy in every head."""
    plan = []
    for i in range(layers):
        for path, module in model.blocks[i].named_modules():
            if not isinstance(module, MemoryArchitecture):
                continue
            prefix = f"blocks.{i}.{path}.init." if path else f"blocks.{i}.init."
            for key, weight in module.init.items():
                if key not in MEMORY_FROM_MLP:
                    raise RecipeError(
                        [
                            f"model.init.memory_from_mlp: the memory's W_init {key!r} has no MLP counterpart "
                            f"(w1, w3, w2 take gate, up, down); use memory mlp or gated_mlp, or set it false"
                        ]
                    )
                hf = f"layers.{i}.{MEMORY_FROM_MLP[key]}"
                if hf not in checkpoint.tensors:
                    continue
                source = checkpoint.tensors[hf]
                heads = weight.shape[0]
                if tuple(source.shape) != tuple(weight.shape[1:]):
                    raise RecipeError(
                        [
                            f"{checkpoint.where(hf)} has shape {list(source.shape)}, one head of "
                            f"{prefix}{key} {list(weight.shape[1:])}; memory_from_mlp needs memory heads as wide as the "
                            "model (model.memory.heads = 1) and a hidden width of intermediate_size "
                            "(model.memory.memory.expansion)"
                        ]
                    )
                plan.append(
                    (
                        hf,
                        prefix + key,
                        source.unsqueeze(0).expand(heads, *source.shape),
                        f"copied into {heads} head(s)",
                    )
                )
    return plan


def seed_model(model: nn.Module, init: SeedInitSpec) -> SeedReport:
    """Copy the checkpoint's tensors into ``model`` (a LanguageModel, unwrapped) in place."""
    tensors, report = seed_tensors(model, init)
    with torch.no_grad():
        state = model.state_dict()
        for name, tensor in tensors.items():
            state[name].copy_(tensor)
    return report


def write_report(report: SeedReport, run_dir: Path) -> Path:
    path = Path(run_dir) / REPORT_FILE
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return path
