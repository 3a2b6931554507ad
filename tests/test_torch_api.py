"""The public PyTorch API: plain nn.Modules trained with the core's methods give the core's numbers."""

import copy
import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_api_helpers import METHOD_SEED, copy_weights, core_and_plain_convnet, method_cfg, plain_optimizer

from rl_plasticity import (SGD, Adam, Plasticity, UnitsNotFound, UnitSpec, attach_cbp, attach_redo,
                           attach_shrink_perturb, find_unit_specs)
from rl_plasticity.core.builders import build_learner
from rl_plasticity.core.methods import ContinualBackprop, ReDo, ShrinkPerturb
from rl_plasticity.core.networks import MLP
from rl_plasticity.core.units import ParamUnits

pytestmark = pytest.mark.usefixtures("one_thread")


def _train_both(core_net, plain, plain_layers, cfg, methods, x_shape, y_dim, steps, init):
    learner = build_learner(core_net.parameters(), core_net.groups, cfg, [torch.Generator().manual_seed(METHOD_SEED)])
    opt = plain_optimizer(plain.parameters(), cfg["optimizer"])
    plasticity = Plasticity(plain, opt, init=init, seed=METHOD_SEED, **methods)
    data = torch.Generator().manual_seed(3)
    for _ in range(steps):
        x, y = torch.randn(*x_shape, generator=data), torch.randn(x_shape[0], y_dim, generator=data)
        learner.update(F.mse_loss(core_net(x), y))
        opt.zero_grad()
        F.mse_loss(plain(x), y).backward()
        opt.step()
        plasticity.step()
    return learner, opt, plasticity


def _assert_identical(learner, opt, plasticity, plain_layers, core_layers, plain_params):
    for plain, core in zip(plain_layers, core_layers):
        assert torch.equal(plain.weight, core.weight[0]) and torch.equal(plain.bias, core.bias[0])
    for method in learner.methods:
        core_state, api_state = method.state_dict(), plasticity.methods[method.name].state_dict()
        assert list(core_state) == list(api_state)
        for key, value in core_state.items():
            if isinstance(value, list):
                assert all(torch.equal(a, b) for a, b in zip(value, api_state[key])), (method.name, key)
            elif isinstance(value, torch.Tensor):
                assert torch.equal(value, api_state[key]), (method.name, key)
            else:
                assert value == api_state[key], (method.name, key)
    for name, tensors in learner.optimizer.state.items():
        assert all(torch.equal(opt.state[p][name], t[0]) for p, t in zip(plain_params, tensors)), name


@pytest.mark.parametrize("optimizer, methods", [
    ({"name": "adam", "lr": 1e-2, "betas": [0.99, 0.99], "weight_decay": 1e-4},
     {"cbp": {"replacement_rate": 0.05, "maturity_threshold": 5}}),
    ({"name": "sgd", "lr": 1e-2, "momentum": 0.9},
     {"cbp": {"replacement_rate": 0.05, "maturity_threshold": 5, "utility": "adaptable_contribution"}}),
    ({"name": "adam", "lr": 1e-2},
     {"redo": {"threshold": 0.5, "every": 7}, "snp": {"shrink": 1e-3, "noise_std": 1e-3}}),
])
def test_core_mlp_and_plain_sequential_train_bit_identically(optimizer, methods):
    """Same weights, data and seeds: the core's MLP + learner and an nn.Sequential through the public API
    give exactly the same weights, replacements, method state and optimizer state. The forward passes
    are the same F.linear calls, the optimizer runs the core's code, the methods are the core's."""
    core = MLP([6, 8, 8, 2], activation="relu", init="lecun")
    core.reset_parameters([torch.Generator().manual_seed(1)])
    plain = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    layers = [plain[0], plain[2], plain[4]]
    copy_weights(layers, core.layers)
    cfg = method_cfg(optimizer, methods)
    learner, opt, plasticity = _train_both(core, plain, layers, cfg, methods, (16, 6), 2, steps=150, init="lecun")
    if "cbp" in methods:
        assert plasticity.stats()["cbp/0/replacements"] > 10  # the run exercised replacement
        assert plasticity.stats() == {k.replace("layer0", "0").replace("layer1", "2"): v
                                      for k, v in learner.stats().items()}
    if "redo" in methods:
        assert sum(v for k, v in plasticity.stats().items() if k.startswith("redo")) > 0
    _assert_identical(learner, opt, plasticity, layers, core.layers, list(plain.parameters()))


def test_core_convnet_and_plain_sequential_train_bit_identically():
    """Conv channels as units, pooling between layers and a Flatten into the first linear layer:
    the groups, the taps (the pooled maps the next layer reads) and the outgoing views all match."""
    core, plain, layers = core_and_plain_convnet()
    methods = {"cbp": {"replacement_rate": 0.1, "maturity_threshold": 3, "utility": "contribution"}}
    cfg = method_cfg({"name": "sgd", "lr": 1e-2, "momentum": 0.9}, methods)
    learner, opt, plasticity = _train_both(core, plain, layers, cfg, methods, (4, 1, 24, 24), 2, steps=40,
                                           init="kaiming")
    assert [g.name for g in plasticity.groups] == ["0", "3", "6", "10", "12"]
    assert all(v > 0 for v in plasticity.stats().values())
    _assert_identical(learner, opt, plasticity, layers, core.layers, list(plain.parameters()))


def test_adam_matches_torch_adam_with_a_scheduler_and_resumes_exactly():
    torch.manual_seed(0)
    a, b = nn.Linear(5, 4), nn.Linear(5, 4)
    b.load_state_dict(a.state_dict())
    ours, theirs = Adam(a.parameters(), lr=1e-2, weight_decay=1e-3), torch.optim.Adam(b.parameters(), lr=1e-2,
                                                                                      weight_decay=1e-3)
    sched_ours = torch.optim.lr_scheduler.StepLR(ours, step_size=5, gamma=0.5)
    sched_theirs = torch.optim.lr_scheduler.StepLR(theirs, step_size=5, gamma=0.5)
    x = torch.randn(32, 5)

    def step(net, opt, sched):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
        sched.step()

    for _ in range(12):
        step(a, ours, sched_ours)
        step(b, theirs, sched_theirs)
    assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"] == 1e-2 * 0.25
    # torch's bias corrections are scalars per tensor, ours per element and in another order: equal to
    # float rounding, which Adam's normalised steps (about lr each) carry forward (~1e-7 per step here).
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-5)

    saved = copy.deepcopy(ours.state_dict())
    resumed_net = copy.deepcopy(a)
    resumed = Adam(resumed_net.parameters(), lr=1.0)
    resumed.load_state_dict(saved)
    resumed_sched = torch.optim.lr_scheduler.StepLR(resumed, step_size=5, gamma=0.5)
    resumed_sched.load_state_dict(sched_ours.state_dict())
    for _ in range(3):
        step(a, ours, sched_ours)
        step(resumed_net, resumed, resumed_sched)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), resumed_net.parameters()))


@pytest.mark.parametrize("optimizer_class", [Adam, SGD])
def test_a_reset_unit_updates_like_a_fresh_parameter(optimizer_class):
    """After 50 steps, reset row 1: its next update equals a fresh optimizer's first update on that row."""
    kwargs = {"lr": 0.1, "betas": (0.9, 0.999)} if optimizer_class is Adam else {"lr": 0.1, "momentum": 0.9}
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(3, 4))
    opt = optimizer_class([w], **kwargs)
    for _ in range(50):
        w.grad = torch.randn(3, 4)
        opt.step()
    opt.reset_units(ParamUnits(w, lambda t: t.unsqueeze(0)), torch.tensor([[False, True, False]]))
    grad = torch.randn(3, 4)
    before = w.detach().clone()
    w.grad = grad.clone()
    opt.step()
    fresh = nn.Parameter(before[1].clone())
    fresh_opt = optimizer_class([fresh], **kwargs)
    fresh.grad = grad[1].clone()
    fresh_opt.step()
    assert torch.equal(w[1], fresh)
    assert not torch.equal(w[0] - before[0], fresh - before[1])  # the other rows kept their history


def test_torch_adam_resets_moments_and_warns_once():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    cbp = attach_cbp(net, opt, replacement_rate=0.5, maturity_threshold=2, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(10):
            opt.zero_grad()
            net(torch.randn(8, 4)).square().mean().backward()
            opt.step()
            replaced_before = cbp.stats()["cbp/0/replacements"]
            cbp.step()
    assert cbp.stats()["cbp/0/replacements"] > replaced_before > 0
    step_warnings = [w for w in caught if "step count" in str(w.message)]
    assert len(step_warnings) == 1 and "rl_plasticity.Adam" in str(step_warnings[0].message)
    # The units replaced at the last step have zero moments in and out (fresh incoming and outgoing zeros).
    replaced = (cbp.methods["cbp"].age[0][0] == 0).nonzero().flatten()
    assert len(replaced) > 0
    for name in ("exp_avg", "exp_avg_sq"):
        assert torch.all(opt.state[net[0].weight][name][replaced] == 0)
        assert torch.all(opt.state[net[2].weight][name][:, replaced] == 0)


def test_groups_found_in_conv_norm_flatten_chains_and_norms_reset_with_units():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.0),
                        nn.Flatten(), nn.Linear(4 * 3 * 3, 5), nn.LayerNorm(5), nn.Tanh(),
                        nn.Sequential(nn.Linear(5, 5), nn.ReLU()), nn.Linear(5, 2))
    assert find_unit_specs(net) == [UnitSpec("0", "6", "1"), UnitSpec("6", "9.0", "7"), UnitSpec("9.0", "10")]
    opt = Adam(net.parameters(), lr=1e-2)
    cbp = attach_cbp(net, opt, replacement_rate=1.0, maturity_threshold=1, transfer_mean_to_bias=False, seed=0)
    with torch.no_grad():
        net[1].weight.fill_(3.0), net[1].running_var.fill_(5.0), net[7].weight.fill_(2.0)
    for _ in range(2):  # step 2: every unit is mature, rate 1 replaces all of them
        opt.zero_grad()
        net(torch.randn(6, 1, 8, 8)).square().mean().backward()
        opt.step()
        cbp.step()
    assert torch.all(net[1].weight == 1) and torch.all(net[1].running_var == 1) and torch.all(net[1].bias == 0)
    assert torch.all(net[7].weight == 1) and torch.all(net[7].bias == 0)
    assert torch.all(net[10].weight == 0)  # outgoing weights of the last group
    assert torch.all(opt.state[net[1].weight]["exp_avg"] == 0)  # the norm's Adam state is the units' too


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 1)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_a_custom_module_gets_one_clear_error_and_works_when_declared():
    model = TwoLayer()
    with pytest.raises(UnitsNotFound, match=r"wired in its own forward\(\).*groups=\[\('fc1', 'fc2'\)"):
        attach_cbp(model, Adam(model.parameters()))
    with pytest.raises(ValueError, match="no module named 'fc3'"):
        attach_cbp(model, Adam(model.parameters()), groups=[("fc1", "fc3")])
    # Declared, it trains exactly like the same layers in an nn.Sequential.
    seq = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 1))
    seq.load_state_dict({k.replace("fc1", "0").replace("fc2", "2").replace("head", "4"): v
                         for k, v in model.state_dict().items()})
    runs = []
    for net, groups in ((model, [("fc1", "fc2"), ("fc2", "head")]), (seq, None)):
        opt = Adam(net.parameters(), lr=1e-2)
        cbp = attach_cbp(net, opt, groups=groups, replacement_rate=0.2, maturity_threshold=3, seed=1, auto_step=True)
        data = torch.Generator().manual_seed(0)
        for _ in range(30):
            opt.zero_grad()
            net(torch.randn(8, 3, generator=data)).square().mean().backward()
            opt.step()  # auto_step: cbp.step() runs from the optimizer's step hook
        runs.append((list(net.parameters()), sum(cbp.stats().values())))
    assert runs[0][1] == runs[1][1] > 0
    assert all(torch.equal(p, q) for p, q in zip(runs[0][0], runs[1][0]))


def test_model_without_hidden_layers_and_step_before_forward_are_clear_errors():
    with pytest.raises(UnitsNotFound, match="no hidden layer"):
        attach_cbp(nn.Sequential(nn.Linear(3, 1)), Adam(nn.Linear(3, 1).parameters()))
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    cbp = attach_cbp(net, Adam(net.parameters()))
    with torch.no_grad():
        net(torch.randn(2, 3))  # acting / evaluation: not captured
    with pytest.raises(RuntimeError, match="forward pass with autograd on"):
        cbp.step()


def test_unknown_or_bad_options_fail_at_attach_naming_the_valid_ones():
    """The methods are built on the first step(): their options are checked at attach time instead."""
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = Adam(net.parameters())
    with pytest.raises(ValueError, match=r"unknown CBP option 'replacment_rate' \(did you mean 'replacement_rate'\?\)"
                                         r"; valid options: replacement_rate, maturity_threshold, decay_rate, utility"):
        attach_cbp(net, opt, replacment_rate=0.1)
    with pytest.raises(ValueError, match="unknown ReDo option 'treshold'.*valid options: threshold, every"):
        attach_redo(net, opt, treshold=0.1)
    with pytest.raises(ValueError, match="unknown SNP option 'enabled'; valid options: shrink, noise_std"):
        Plasticity(net, opt, cbp=True, snp={"enabled": True})
    with pytest.raises(ValueError, match=r"CBP replacement_rate must be .*, got -1"):
        attach_cbp(net, opt, replacement_rate=-1)
    with pytest.raises(ValueError, match="CBP utility must be one of"):
        Plasticity(net, opt, cbp={"utility": "contributon"})
    with pytest.raises(ValueError, match="SNP shrink must be"):
        attach_shrink_perturb(net, shrink=1.5)
    # The declared options are exactly the constructors' keywords (what the methods get on first use).
    for cls in (ContinualBackprop, ReDo, ShrinkPerturb):
        keywords = list(inspect.signature(cls).parameters)[-len(cls.defaults) + 1:]
        assert keywords == [k for k in cls.defaults if k != "enabled"]
    assert attach_cbp(net, opt, decay_rate=0.9, utility="random").methods["cbp"].decay_rate == 0.9
    with pytest.raises(ValueError, match="need at least one hidden layer"):
        Plasticity(net, opt, redo=True, groups=[])


def test_state_dict_round_trip_continues_exactly():
    def make():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = Adam(net.parameters(), lr=1e-2, betas=(0.99, 0.99))
        return net, opt, attach_cbp(net, opt, replacement_rate=0.1, maturity_threshold=3, utility="random", seed=5)

    def train(net, opt, cbp, data, steps):
        for _ in range(steps):
            opt.zero_grad()
            net(torch.randn(8, 4, generator=data)).square().mean().backward()
            opt.step()
            cbp.step()

    net, opt, cbp = make()
    data = torch.Generator().manual_seed(1)
    train(net, opt, cbp, data, 20)
    saved = copy.deepcopy({"net": net.state_dict(), "opt": opt.state_dict(), "cbp": cbp.state_dict(),
                           "data": data.get_state()})
    train(net, opt, cbp, data, 20)

    net2, opt2, cbp2 = make()
    net2.load_state_dict(saved["net"])
    opt2.load_state_dict(saved["opt"])
    cbp2.load_state_dict(saved["cbp"])
    data2 = torch.Generator()
    data2.set_state(saved["data"])
    train(net2, opt2, cbp2, data2, 20)
    assert cbp.stats() == cbp2.stats() and cbp.stats()["cbp/0/replacements"] > 0
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), net2.parameters()))
