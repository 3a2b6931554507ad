"""The step-size optimizers as torch optimizers (rl_plasticity.UPGD, IDBD, Autostep, MetaAdam): on a plain
nn.Sequential they give the core optimizer's numbers on the core's own net, alone, across param groups and
across a save and load; bad options are refused naming the option."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch_api_helpers import METHOD_SEED, core_and_plain_mlp, method_cfg, plain_optimizer

import rl_plasticity
from rl_plasticity.core.builders import build_optimizer
from rl_plasticity.core.units import ParamUnits

pytestmark = pytest.mark.usefixtures("one_thread")

SECTIONS = {
    "upgd": {"name": "upgd", "lr": 1e-2, "weight_decay": 1e-2, "upgd": {"beta_utility": 0.9, "sigma": 0.05}},
    "idbd": {"name": "idbd", "lr": 1e-2, "weight_decay": 1e-3, "idbd": {"meta_step_size": 0.1}},
    "autostep": {"name": "autostep", "lr": 1e-2, "autostep": {"meta_step_size": 0.1, "tau": 50.0}},
    "meta_adam": {"name": "meta_adam", "lr": 1e-2, "weight_decay": 1e-3, "betas": (0.9, 0.99),
                  "meta_adam": {"meta_step_size": 0.05, "trace_decay": 0.9}},
}


def _batches(steps):
    data = torch.Generator().manual_seed(3)
    return [(torch.randn(16, 5, generator=data), torch.randn(16, 2, generator=data)) for _ in range(steps)]


def _core_run(section, batches):
    core, _, _ = core_and_plain_mlp()
    params = list(core.parameters())
    opt = build_optimizer(params, method_cfg(section, {})["optimizer"], [torch.Generator().manual_seed(METHOD_SEED)])
    for x, y in batches:
        opt.step(list(torch.autograd.grad(F.mse_loss(core(x), y), params)))
    return core, opt


def _plain_step(plain, opt, x, y):
    opt.zero_grad()
    F.mse_loss(plain(x), y).backward()
    opt.step()


def _plain_optimizer(params, section):
    opt = plain_optimizer(params, section)
    if section["name"] == "upgd":
        opt.generator = torch.Generator().manual_seed(METHOD_SEED)
    return opt


def _assert_same(core, core_opt, layers, opt):
    for p, c in zip(layers, core.layers):
        assert torch.equal(p.weight, c.weight[0]) and torch.equal(p.bias, c.bias[0])
    plain_params = [q for layer in layers for q in (layer.weight, layer.bias)]
    for name, tensors in core_opt.state.items():
        assert all(torch.equal(opt.state[q][name], t[0]) for q, t in zip(plain_params, tensors)), name


@pytest.mark.parametrize("name", list(SECTIONS))
def test_each_optimizer_matches_the_core_optimizer(name):
    """Same weights and data (and noise seed for UPGD): the same weights and state after every step."""
    batches = _batches(40)
    core, core_opt = _core_run(SECTIONS[name], batches)
    _, plain, layers = core_and_plain_mlp()
    opt = _plain_optimizer(plain.parameters(), SECTIONS[name])
    assert isinstance(opt, torch.optim.Optimizer)
    for x, y in batches:
        _plain_step(plain, opt, x, y)
    _assert_same(core, core_opt, layers, opt)
    start = dict(core_and_plain_mlp()[1].named_parameters())
    assert any(not torch.equal(q, start[n]) for n, q in plain.named_parameters())  # it trained


@pytest.mark.parametrize("name", list(SECTIONS))
def test_param_groups_and_a_save_and_load_change_nothing(name):
    """One group per layer (UPGD's eta still spans them all), stopped half way through a state_dict round trip,
    ends where the core optimizer does. UPGD without noise: each group draws its own (the core one draw)."""
    section = copy.deepcopy(SECTIONS[name])
    if name == "upgd":
        section["upgd"]["sigma"] = 0.0
    batches = _batches(30)
    core, core_opt = _core_run(section, batches)
    _, plain, layers = core_and_plain_mlp()
    opt = _plain_optimizer([{"params": list(layer.parameters())} for layer in layers], section)
    for x, y in batches[:15]:
        _plain_step(plain, opt, x, y)
    saved = copy.deepcopy(opt.state_dict())
    resumed = _plain_optimizer([{"params": list(layer.parameters())} for layer in layers], section)
    resumed.load_state_dict(saved)
    if name == "upgd":
        resumed.generator = opt.generator
    for x, y in batches[15:]:
        _plain_step(plain, resumed, x, y)
    _assert_same(core, core_opt, layers, resumed)


def test_a_reset_unit_gets_a_fresh_step_size():
    _, plain, layers = core_and_plain_mlp()
    opt = rl_plasticity.IDBD(plain.parameters(), lr=1e-2, meta_step_size=0.5)
    for x, y in _batches(10):
        _plain_step(plain, opt, x, y)
    beta = opt.state[layers[0].weight]["beta"]
    assert not torch.allclose(beta, torch.full_like(beta, torch.log(torch.tensor(1e-2)).item()))
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, 3] = True
    opt.reset_units(ParamUnits(layers[0].weight, lambda t: t.unsqueeze(0)), mask)
    assert torch.all(beta[3] == torch.log(torch.tensor(1e-2)))
    assert torch.all(opt.state[layers[0].weight]["h"][3] == 0)
    assert not torch.all(beta[2] == torch.log(torch.tensor(1e-2)))  # the other units keep theirs


@pytest.mark.parametrize("cls, kwargs, message", [
    ("IDBD", {"lr": 0.0}, "lr"),
    ("Autostep", {"tau": 0.5}, "tau"),
    ("UPGD", {"sigma": -1.0}, "sigma"),
    ("MetaAdam", {"betas": (0.9, 1.0)}, "betas"),
    ("MetaAdam", {"trace_decay": 1.0}, "trace_decay"),
])
def test_bad_options_are_refused_naming_them(cls, kwargs, message):
    _, plain, _ = core_and_plain_mlp()
    with pytest.raises(ValueError, match=message):
        getattr(rl_plasticity, cls)(plain.parameters(), **kwargs)
