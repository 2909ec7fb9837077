"""The pluggy registry: discovery, typed registration, and its errors."""

from __future__ import annotations

import types

import attrs
import pytest

import miraslab
from miraslab.errors import PluginError, RegistryError
from miraslab.registry import KINDS, Registry, Source, get_registry, unknown_name_message


@attrs.frozen
class ToyParams:
    rate: float = miraslab.param(0.5, gt=0, lt=1, doc="a toy rate")


def toy_plugin(**hooks) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{name: miraslab.hookimpl(fn) for name, fn in hooks.items()})


def test_every_builtin_axis_is_registered_from_the_miraslab_distribution(registry):
    expected = {
        "memory": {"linear", "mlp", "gated_mlp"},
        "bias": {"l2", "lp", "huber", "dot", "omega"},
        "retention": {"none", "decay", "lq_norm", "kl", "elastic_net"},
        "algorithm": {"gd", "momentum", "muon"},
        "features": {"identity", "polynomial"},
    }
    for kind, names in expected.items():
        assert names <= set(registry.names(kind)), kind
        for name in names:
            assert registry.get(kind, name).source.distribution == "miraslab"


def test_there_is_one_hook_per_component_kind_and_the_trainer_events():
    hooks = {name for name in dir(get_registry().hook()) if not name.startswith("_")}
    assert {"register_memories", "register_monitors", "register_tasks", "register_layouts"} <= hooks
    assert {"on_train_start", "on_step_end", "on_eval", "on_checkpoint", "loss_terms"} <= hooks
    assert len(KINDS) == 10


def test_a_plugin_registers_components_through_the_register_callable(register_plugin):
    def register_retentions(register):
        register("toy_forget", lambda params: params, ToyParams)

    register_plugin(toy_plugin(register_retentions=register_retentions), "toy")
    info = get_registry().get("retention", "toy_forget")
    assert info.params is ToyParams and info.source.plugin == "toy"


def test_unregistering_a_plugin_removes_its_components(register_plugin):
    def register_retentions(register):
        register("toy_forget", lambda params: params, ToyParams)

    register_plugin(toy_plugin(register_retentions=register_retentions), "toy")
    get_registry().unregister_plugin("toy")
    with pytest.raises(RegistryError):
        get_registry().get("retention", "toy_forget")


def test_a_duplicate_name_is_an_error_naming_both_sources(register_plugin):
    def register_retentions(register):
        register("decay", lambda params: params, ToyParams)

    with pytest.raises(RegistryError) as info:
        register_plugin(toy_plugin(register_retentions=register_retentions), "intruder", "intruder-dist")
    message = str(info.value)
    assert "retention 'decay' is registered twice" in message
    assert "plugin 'retention.decay' (distribution miraslab" in message
    assert "plugin 'intruder' (distribution intruder-dist" in message
    assert "intruder" not in {s.plugin for s in get_registry().sources}


def test_an_unknown_name_lists_what_is_registered_closest_first():
    with pytest.raises(RegistryError) as info:
        get_registry().get("bias", "omgea")
    message = str(info.value)
    assert message.startswith("unknown bias 'omgea'; did you mean 'omega'? registered: omega, ")
    assert {"l2", "lp", "huber", "dot"} <= set(message.split("registered: ")[1].split(", "))


def test_unknown_name_message_without_a_close_match_still_lists_everything():
    message = unknown_name_message("memory", "zzz", ["mlp", "linear"])
    assert "did you mean" not in message and "linear" in message and "mlp" in message


def test_a_hook_implementation_matching_no_spec_is_rejected(register_plugin):
    def register_memoryes(register):  # misspelled
        pass

    with pytest.raises(
        PluginError, match=r"plugin 'typo' .* is not a valid miraslab plugin.*register_memoryes"
    ):
        register_plugin(toy_plugin(register_memoryes=register_memoryes), "typo")
    assert get_registry().pm.get_plugin("typo") is None


def test_a_plugin_whose_hook_raises_is_named_with_its_distribution(register_plugin):
    def register_memories(register):
        raise RuntimeError("boom")

    with pytest.raises(PluginError) as info:
        register_plugin(toy_plugin(register_memories=register_memories), "broken", "broken-dist")
    assert "plugin 'broken' (distribution broken-dist 0.0) raised in its register_memories hook" in str(
        info.value
    )
    assert "RuntimeError: boom" in str(info.value)


def test_params_must_be_an_attrs_class(register_plugin):
    def register_memories(register):
        register("bad", lambda params: params, dict)

    with pytest.raises(RegistryError, match="params must be an attrs class"):
        register_plugin(toy_plugin(register_memories=register_memories), "bad-params")


def test_two_plugins_with_one_name_are_refused(registry):
    plugin = toy_plugin()
    registry.register_plugin(plugin, Source("same", "a", "1"))
    with pytest.raises(RegistryError, match="two plugins are named 'same'"):
        registry.register_plugin(toy_plugin(), Source("same", "b", "1"))


def test_a_fresh_registry_is_independent_of_the_process_wide_one(registry):
    assert registry is not get_registry()
    assert Registry().names("memory") == []
