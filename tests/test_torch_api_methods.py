"""Every registered method through the public PyTorch API: a plain nn.Sequential gives the core's numbers,
and what the API cannot take is refused clearly at attach time."""

import copy
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_api_helpers import METHOD_SEED, core_and_plain_mlp, method_cfg, plain_optimizer

from rl_plasticity import SGD, Adam, Plasticity
from rl_plasticity.core.builders import build_learner
from rl_plasticity.core.methods import METHODS

pytestmark = pytest.mark.usefixtures("one_thread")


def _same(a, b) -> bool:
    """Equal values, the core's replica axis of 1 aside."""
    if isinstance(a, torch.Tensor):
        return a.numel() == b.numel() and torch.equal(a.reshape(-1), b.reshape(-1))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


def _train_both(methods, optimizer, steps=60, epoch_every=0, switch_every=0):
    core, plain, layers = core_and_plain_mlp()
    cfg = method_cfg(optimizer, methods)
    learner = build_learner(core.parameters(), core.groups, cfg, [torch.Generator().manual_seed(METHOD_SEED)],
                            nets=[core])
    opt = plain_optimizer(plain.parameters(), optimizer)
    plasticity = Plasticity(plain, opt, init="lecun", seed=METHOD_SEED, **methods)
    if optimizer["name"] == "upgd":
        opt.generator = plasticity.generator  # the core's learner draws the noise from the methods' generator
    data = torch.Generator().manual_seed(3)
    for t in range(1, steps + 1):
        x, y = torch.randn(16, 5, generator=data), torch.randn(16, 2, generator=data)
        learner.update(F.mse_loss(core(x), y))
        opt.zero_grad()
        (F.mse_loss(plain(x), y) + plasticity.loss_term()).backward()
        opt.step()
        plasticity.step()
        if epoch_every and t % epoch_every == 0:
            learner.end_epoch()
            plasticity.end_epoch()
        if switch_every and t % switch_every == 0:
            learner.task_switch()
            plasticity.task_switch()
    for p, c in zip(layers, core.layers):
        assert torch.equal(p.weight, c.weight[0]) and torch.equal(p.bias, c.bias[0])
    with torch.no_grad():  # the same function too (plasticity injection's frozen heads are part of it)
        x = torch.randn(4, 5, generator=data)
        assert torch.equal(plain(x), core(x))
    for m in learner.methods:
        assert _same(m.state_dict(), plasticity.methods[m.name].state_dict()), m.name
    assert plasticity.stats() == {k.replace("layer0", "0").replace("layer1", "2"): v  # group names: the modules'
                                  for k, v in learner.stats().items()}
    for name, tensors in learner.optimizer.state.items():
        assert all(torch.equal(opt.state[p][name], t[0]) for p, t in zip(plain.parameters(), tensors)), name
    return plasticity


ADAM, SGDM = {"name": "adam", "lr": 1e-2}, {"name": "sgd", "lr": 1e-2, "momentum": 0.9}
UPGD_ = {"name": "upgd", "lr": 1e-2, "weight_decay": 1e-3, "upgd": {"beta_utility": 0.9, "sigma": 0.01}}
IDBD_ = {"name": "idbd", "lr": 1e-2, "idbd": {"meta_step_size": 0.1}}
AUTOSTEP = {"name": "autostep", "lr": 1e-2, "weight_decay": 1e-3, "autostep": {"meta_step_size": 0.1, "tau": 100.0}}
META_ADAM = {"name": "meta_adam", "lr": 1e-2, "betas": (0.9, 0.99), "meta_adam": {"meta_step_size": 0.05}}


@pytest.mark.parametrize("methods, optimizer, schedule", [
    ({"l2_init": {"strength": 1e-2}}, ADAM, {}),
    ({"parseval": {"strength": 1e-3, "scale": 1.0}}, SGDM, {}),
    ({"weight_clipping": {"kappa": 1.0}}, ADAM, {}),
    ({"weight_clipping": {"kappa": 1.0, "clip_output_layer": False}}, SGDM, {}),
    ({"hare_tortoise": {"ema": 0.9, "reset_every": 3}}, ADAM, {"epoch_every": 7}),
    ({"hare_tortoise": {"ema": 0.9, "reset_every": 9, "reset_on": "steps", "reset_optimizer_state": True}}, ADAM,
     {}),
    ({"reset": {"what": "head"}}, ADAM, {"switch_every": 20}),
    ({"reset": {"what": "network", "when": "steps", "every": 25}}, SGDM, {}),
    ({"reset": {"what": "last_layers", "last_layers": 2, "init": "fresh"}}, ADAM, {"switch_every": 20}),
    # composed: a reset tells CBP its units are new, the tortoise follows CBP's replacements
    ({"cbp": {"replacement_rate": 0.05, "maturity_threshold": 5}, "reset": {"what": "last_layers"},
      "hare_tortoise": {"ema": 0.9, "reset_on": "task_switch"}}, ADAM, {"switch_every": 20}),
    ({"redo": {"threshold": 0.5, "every": 7}, "snp": {"shrink": 1e-3, "noise_std": 1e-3},
      "weight_clipping": {"kappa": 2.0}}, SGDM, {}),
    ({"swr": {"rate": 0.05, "every": 10}}, ADAM, {}),
    ({"swr": {"rate": 0.5, "every": 7, "utility": "magnitude", "selection": "threshold", "reinit": "mean",
              "utility_decay": 0.9}}, SGDM, {}),
    ({"cbp": {"replacement_rate": 0.05, "maturity_threshold": 5}, "swr": {"rate": 0.03, "every": 6,
                                                                          "utility_decay": 0.5}}, SGDM, {}),
    # plasticity injection: into the output layer, into the last 2 layers and into the whole net, a zero head
    ({"reset": {"what": "injection", "last_layers": 1}}, ADAM, {"switch_every": 20}),
    ({"reset": {"what": "injection", "last_layers": 2}}, ADAM, {"switch_every": 20}),
    ({"reset": {"what": "injection", "last_layers": 3, "init": "zero"}, "weight_clipping": {"kappa": 2.0}}, SGDM,
     {"switch_every": 15}),
    # the step-size optimizers: a method's re-initialised units and weights get a fresh parameter's state
    ({"cbp": {"replacement_rate": 0.05, "maturity_threshold": 5}}, UPGD_, {}),
    ({"reset": {"what": "head", "init": "zero"}, "swr": {"rate": 0.05, "every": 10}}, UPGD_, {"switch_every": 20}),
    ({"cbp": {"replacement_rate": 0.05, "maturity_threshold": 5}, "swr": {"rate": 0.05, "every": 10}}, IDBD_, {}),
    ({"redo": {"threshold": 0.5, "every": 7}, "reset": {"what": "head"}}, AUTOSTEP, {"switch_every": 20}),
    ({"cbp": {"replacement_rate": 0.05, "maturity_threshold": 5}, "swr": {"rate": 0.05, "every": 10}}, META_ADAM,
     {}),
    ({"reset": {"what": "injection"}, "swr": {"rate": 0.05, "every": 10}}, META_ADAM, {"switch_every": 20}),
])
def test_each_method_on_a_plain_sequential_matches_the_core(methods, optimizer, schedule):
    """Same weights, data and seed: the core's MLP and learner and an nn.Sequential through `Plasticity` end with
    the same weights, method state, statistics and optimizer state."""
    plasticity = _train_both(methods, optimizer, **schedule)
    stats = plasticity.stats()
    for name in methods:
        if name in ("cbp", "redo", "reset", "hare_tortoise", "swr"):  # the run exercised the method's resets
            assert any(v > 0 for k, v in stats.items() if k.startswith(f"{name}/")), (name, stats)


def test_every_registered_method_is_accepted_by_name():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = Adam(model.parameters())
    for name in METHODS:
        assert list(Plasticity(model, opt, **{name: True}).methods) == [name]


@pytest.mark.parametrize("kwargs, message", [
    ({"l2init": True}, r"unknown plasticity method 'l2init' \(did you mean 'l2_init'\?\); valid methods: cbp, redo"),
    ({"parseval": {"strenght": 1e-3}}, r"unknown Parseval option 'strenght' \(did you mean 'strength'\?\)"),
    ({"hare_tortoise": {"ema": 1.5}}, r"ema"),
    ({"swr": {"rat": 0.1}}, r"unknown SWR option 'rat' \(did you mean 'rate'\?\); valid options: rate, every"),
    ({"swr": {"selection": "lowest"}}, r"selection"),
    ({"swr": True, "init": lambda layer, rows, g: torch.zeros(rows, 3)}, r"init as a name .* or use reinit='mean'"),
    ({"reset": {"what": "injection", "last_layers": 3}}, r"last_layers \(3\) exceeds the 2"),
    ({"reset": {"what": "injection"}, "cbp": True}, r"reset what='injection' and cbp cannot act together"),
    ({"reset": {"what": "last_layers", "last_layers": 4}}, r"last_layers \(4\) exceeds the 2 Linear/Conv layers"),
    ({"weight_clipping": True, "init": lambda layer, rows, g: torch.zeros(rows, 3)}, r"init as a name"),
])
def test_bad_input_is_refused_at_attach_naming_what_is_valid(kwargs, message):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with pytest.raises(ValueError, match=message):
        Plasticity(model, Adam(model.parameters()), **kwargs)


class _Wired(nn.Module):
    """Layers wired in forward(), with a parameter outside any layer."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(3, 4), nn.Linear(4, 1)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.out(torch.relu(self.fc(x))) * self.scale


@pytest.mark.parametrize("model, methods, message", [
    (_Wired(), {"swr": True}, r"swr cannot re-initialise the parameters of 'the model' \(_Wired.*Linear, Conv1d/2d/3d, "
                              r"LayerNorm and BatchNorm"),
    (nn.Sequential(nn.ReLU()), {"swr": {"reset_optimizer_state": False}}, r"swr found no Linear/Conv/norm layer"),
    (_Wired(), {"reset": {"what": "injection"}}, r"needs an nn.Sequential, not a _Wired; use last_layers=1"),
    (nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)), {"reset": {"what": "injection"}},
     r"exceeds the 1 last layers .* the Flatten before them belongs to the encoder \(conv layers cannot be"),
    (nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 1)), {"reset": {"what": "injection",
                                                                                 "last_layers": 1}},
     r"a Conv2d output layer, and injection needs an nn.Linear output layer with a bias"),
    (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1, bias=False)), {"reset": {"what": "injection"}},
     r"a Linear output layer without a bias"),
])
def test_a_model_a_method_cannot_act_on_is_refused_saying_why(model, methods, message):
    with pytest.raises(ValueError, match=message):
        Plasticity(model, SGD(model.parameters(), lr=0.1) if list(model.parameters()) else None, **methods)


def test_injection_into_the_output_layer_of_any_model_and_its_checkpoint():
    """last_layers=1 needs no Sequential; the frozen map travels in state_dict and the function is unchanged
    at the moment of injection."""
    torch.manual_seed(0)
    model = _Wired()
    opt = SGD(model.parameters(), lr=0.1)
    p = Plasticity(model, opt, reset={"what": "injection", "last_layers": 1}, seed=0)
    x = torch.randn(5, 3)
    before = model(x)
    p.task_switch()
    assert torch.allclose(model(x), before, atol=1e-6) and p.stats()["reset/resets"] == 1.0
    model2 = _Wired()  # not a deepcopy, which would copy the hooks too
    model2.load_state_dict(model.state_dict())
    p2 = Plasticity(model2, SGD(model2.parameters(), lr=0.1), reset={"what": "injection", "last_layers": 1})
    p2.load_state_dict(p.state_dict())
    assert torch.equal(model2(x), model(x))
    p.remove()
    assert not torch.allclose(model(x), before, atol=1e-6)  # detached: the frozen map is no longer added


def test_a_model_without_hidden_layers_or_an_optimizer_is_refused_per_method():
    linear = nn.Linear(3, 1)
    for name in ("cbp", "redo"):
        with pytest.raises(ValueError, match="no hidden layer"):
            Plasticity(nn.Sequential(linear), Adam(linear.parameters()), **{name: True})
    with pytest.raises(ValueError, match="Parseval regularisation acts on hidden layers"):
        Plasticity(linear, parseval=True)
    with pytest.raises(ValueError, match="reset resets the optimizer state.*pass the optimizer"):
        Plasticity(linear, reset=True)
    with pytest.raises(ValueError, match="swr resets the optimizer state.*pass the optimizer"):
        Plasticity(linear, swr=True)
    Plasticity(linear, swr={"reset_optimizer_state": False})
    Plasticity(linear, l2_init=True, weight_clipping=True)  # no hidden layer needed


def test_conv_models_take_the_layer_methods():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    opt = SGD(model.parameters(), lr=0.1)
    p = Plasticity(model, opt, parseval=True, weight_clipping={"kappa": 1.0}, reset={"what": "network"}, seed=0)
    x = torch.randn(2, 1, 6, 6)
    opt.zero_grad()
    (model(x).square().mean() + p.loss_term()).backward()
    opt.step()
    p.step()
    p.task_switch()
    assert p.stats()["reset/resets"] == 1.0
    assert model[0].weight.abs().max() <= 1.0 / 3.0  # weights redrawn from U(+-1/sqrt(fan_in)), the torch init


@pytest.mark.parametrize("methods, call", [
    ({"hare_tortoise": True}, "end_epoch()"),
    ({"reset": True}, "task_switch()"),
    ({"reset": {"what": "injection"}, "swr": True}, "task_switch()"),
    ({"l2_init": True}, "loss_term()"),
])
def test_a_method_whose_call_never_comes_warns_once(methods, call):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = SGD(model.parameters(), lr=0.1)
    p = Plasticity(model, opt, **methods)
    p.hook_warning_steps = 3

    def train(steps):
        for _ in range(steps):
            opt.zero_grad()
            model(torch.ones(2, 3)).sum().backward()
            opt.step()
            p.step()

    with pytest.warns(UserWarning, match=r"3 step\(\) calls and no " + re.escape(call)):
        train(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(5)  # once only


def test_a_loop_making_the_calls_does_not_warn():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = SGD(model.parameters(), lr=0.1)
    p = Plasticity(model, opt, hare_tortoise=True, l2_init=True, reset={"what": "head"})
    p.hook_warning_steps = 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            opt.zero_grad()
            (model(torch.ones(2, 3)).sum() + p.loss_term()).backward()
            opt.step()
            p.step()
            p.end_epoch()
            p.task_switch()


def test_state_dict_round_trip_of_the_snapshot_methods():
    """L2 Init's theta_0 and the tortoise are the weights at the first forward pass, and travel in state_dict."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    start = [q.detach().clone() for q in model.parameters()]
    opt = SGD(model.parameters(), lr=0.1)
    p = Plasticity(model, opt, l2_init=True, hare_tortoise={"ema": 0.5})
    for _ in range(3):
        opt.zero_grad()
        (model(torch.ones(2, 3)).sum() + p.loss_term()).backward()
        opt.step()
        p.step()
    assert _same(p.methods["l2_init"].initial, start)
    model2 = copy.deepcopy(model)
    p2 = Plasticity(model2, SGD(model2.parameters(), lr=0.1), l2_init=True, hare_tortoise={"ema": 0.5})
    p2.load_state_dict(p.state_dict())
    assert _same(p2.methods["l2_init"].initial, start)
    assert _same(p2.methods["hare_tortoise"].tortoise, p.methods["hare_tortoise"].tortoise)
