"""Weight decay by declaration: which parameters decay follows the documented rules in
miraslab.train.optim (gates, norm modules, ``bias`` names, a module's ``no_weight_decay``),
never a tensor's rank; ``recipe show --params`` lists the groups."""

from __future__ import annotations

import json

import torch
from torch import nn

from miraslab.model.language_model import build_model
from miraslab.recipe.resolve import load_recipe
from miraslab.train.optim import build_optimizer, parameter_groups, parameter_table

QUICKSTART = "recipes/quickstart.toml"


class _Block(nn.Module):
    """A third party's module: a matrix, a per-head gain of rank 3, a declared shift, a norm."""

    no_weight_decay = ("shift",)

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.gain = nn.Parameter(torch.ones(2, 1, 4))  # rank 3 and undeclared: it decays
        self.shift = nn.Parameter(torch.zeros(2, 1, 4))  # rank 3 and declared: it does not
        self.norm = nn.LayerNorm(4)
        self.out_bias = nn.Parameter(torch.zeros(4))


def test_the_rules_not_the_rank_decide():
    model = nn.Sequential(_Block())
    found = {info.name: (info.group, info.why) for info in parameter_table(model)}
    assert found == {
        "0.proj.weight": ("decayed", "weight"),
        "0.proj.bias": ("undecayed", "bias"),
        "0.gain": ("decayed", "weight"),
        "0.shift": ("undecayed", "declared"),
        "0.norm.weight": ("undecayed", "norm"),
        "0.norm.bias": ("undecayed", "norm"),
        "0.out_bias": ("undecayed", "bias"),
    }


def test_adamw_groups_follow_the_table_and_decay_only_the_decayed():
    recipe = load_recipe(QUICKSTART, ["train.weight_decay=0.5", "train.gate_lr_multiplier=3"])
    model = build_model(recipe)
    optimizer = build_optimizer(model, recipe.train)
    names = {id(p): n for n, p in model.named_parameters()}
    table = {info.name: info for info in parameter_table(model)}
    for group in optimizer.param_groups:
        assert {table[names[id(p)]].group for p in group["params"]} == {group["name"]}
        assert group["weight_decay"] == (0.5 if group["name"] == "decayed" else 0.0)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(table)
    # every norm weight, conv bias and gate of the built-in model is exempt; every linear weight decays
    for name, info in table.items():
        if name.endswith("norm.weight") or name.endswith("conv.bias"):
            assert info.group == "undecayed", name
        if ".gates." in name:
            assert info.group == "gates", name
        if name.endswith(("q_proj.weight", "ffn.w1.weight", "init.w")):
            assert info.group == "decayed", name
    # AdamW applies it: one step from zero gradients moves a decayed weight, not a norm
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    params = dict(model.named_parameters())
    before = {n: params[n].detach().clone() for n in ("norm.weight", "embed.weight")}
    optimizer.step()
    assert torch.equal(params["norm.weight"], before["norm.weight"])
    assert not torch.equal(params["embed.weight"], before["embed.weight"])


def test_polynomial_coefficients_are_declared_gains():
    recipe = load_recipe(QUICKSTART, ["model.memory.features=polynomial"])
    groups = parameter_groups(build_model(recipe), recipe.train)
    model = build_model(recipe)
    table = {info.name: info for info in parameter_table(model)}
    coefficients = [info for name, info in table.items() if name.endswith("coefficients")]
    assert coefficients and all((i.group, i.why) == ("undecayed", "declared") for i in coefficients)
    assert [g["name"] for g in groups] == ["decayed", "undecayed", "gates"]


def test_recipe_show_params_lists_the_groups(capsys):
    from miraslab.cli import main

    assert main(["recipe", "show", QUICKSTART, "--params"]) == 0
    text = capsys.readouterr().out
    assert "weight decay (train.weight_decay = " in text
    assert "blocks.*.attn_norm.weight" in text and "norm" in text
    assert main(["recipe", "show", QUICKSTART, "--params", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    groups = report["weight_decay"]["groups"]
    assert set(groups) == {"decayed", "undecayed", "gates"}
    assert groups["undecayed"]["tensors"]["norm.weight"]["why"] == "norm"
    total = sum(g["params"] for g in groups.values())
    assert total == report["param_count"]
