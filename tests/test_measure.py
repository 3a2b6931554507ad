"""rl_plasticity.measure / Measure: the core's metrics on a plain PyTorch model, against the core and by hand."""

import math

import pytest
import torch
from torch import nn
from torch_api_helpers import copy_weights, core_and_plain_convnet

from rl_plasticity import Measure, UnitsNotFound, measure
from rl_plasticity.core.metrics import DistanceFromInit, net_metrics
from rl_plasticity.core.networks import MLP

pytestmark = pytest.mark.usefixtures("one_thread")


def _compare_with_core(core, plain, layer_names, group_names, x, y):
    """Same weights, same inputs, same loss: Measure on the plain model equals net_metrics on the core net."""
    layers = [plain.get_submodule(n) for n in layer_names]
    copy_weights(layers, core.layers)
    distance, tracker = DistanceFromInit(core), Measure(plain, dormant="official", tau=0.1, grama_tau=0.5)
    with torch.no_grad():  # move away from the init, identically
        for p, c in zip(layers, core.layers):
            delta = torch.randn(p.weight.shape, generator=torch.Generator().manual_seed(p.weight.numel())) * 0.05
            p.weight.add_(delta)
            c.weight.add_(delta.unsqueeze(0))
    params = [p for c in core.layers for p in (c.weight, c.bias)]
    core_loss = nn.functional.mse_loss(core(x).squeeze(0), y)
    grads = dict(zip(params, torch.autograd.grad(core_loss, params)))
    nn.functional.mse_loss(plain(x), y).backward()
    ours = tracker(x)
    theirs = net_metrics(core, x, grads, distance, dormant="official", tau=0.1, grama_tau=0.5)
    names = {**{f"layer{i}": n for i, n in enumerate(layer_names)}, **dict(zip([g.name for g in core.groups],
                                                                               group_names))}
    expected = {f"{names[k.split('/')[0]]}/{k.split('/')[1]}": float(v[0]) for k, v in theirs.items()}
    assert ours.keys() == expected.keys()
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    return ours


def test_equals_the_core_metrics_on_the_toolkits_mlp():
    torch.manual_seed(0)
    core = MLP([6, 16, 16, 3])
    plain = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(64, 6), torch.randn(64, 3)
    ours = _compare_with_core(core, plain, ["0", "2", "4"], ["0", "2"], x, y)
    metrics = {k.split("/")[1] for k in ours}
    assert metrics == {"dormant_fraction", "tau_dormant_fraction", "stable_rank", "effective_rank", "feature_norm",
                       "grama_dormant_fraction", "mean_abs_weight", "grad_norm", "distance_from_init"}
    assert ours["4/distance_from_init"] > 0 and ours["0/stable_rank"] > 1


def test_equals_the_core_metrics_on_the_toolkits_convnet():
    torch.manual_seed(0)
    core, plain, _ = core_and_plain_convnet()
    x, y = torch.randn(8, 1, 24, 24), torch.randn(8, 2)
    _compare_with_core(core, plain, ["0", "3", "6", "10", "12", "14"], ["0", "3", "6", "10", "12"], x, y)


def _hand_model() -> nn.Sequential:
    """4 inputs -> 4 hidden (identity weights; unit 3 dead: zero weights, bias -1) -> 2 outputs."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.0])))
        model[0].bias.copy_(torch.tensor([0.0, 0.0, 0.0, -1.0]))
        model[2].weight.fill_(0.5)
        model[2].bias.zero_()
    return model


def test_hand_checkable_values():
    model = _hand_model()
    tracker = Measure(model)
    x = torch.eye(4)[:3] * 2  # inputs 2 e_0, 2 e_1, 2 e_2: units 0-2 each fire on one input, unit 3 never
    model[0].weight.grad = torch.zeros(4, 4)
    model[0].weight.grad[0] = 3.0  # unit 0 alone gets a gradient: |g| 3 x 4 weights
    model[2].weight.grad = torch.full((2, 4), 0.5)
    with torch.no_grad():
        model[2].weight.add_(0.25)  # distance from init: sqrt(8 x 0.25^2)
    out = tracker(x)
    assert out["0/dormant_fraction"] == 0.25  # active on 1/3 > 1% of inputs for units 0-2; unit 3 on none
    assert out["0/tau_dormant_fraction"] == 0.25
    assert out["0/stable_rank"] == 3 and out["0/effective_rank"] == pytest.approx(3.0)  # three equal singular values
    assert out["0/feature_norm"] == pytest.approx(2.0)  # each input's feature vector is 2 e_i
    assert out["0/grama_dormant_fraction"] == 0.75  # units 1-3 get no gradient
    assert out["0/grad_norm"] == pytest.approx(6.0)  # sqrt(4 x 9)
    assert out["2/grad_norm"] == pytest.approx(math.sqrt(8 * 0.25))
    assert out["0/mean_abs_weight"] == pytest.approx(0.75 / 4 * 1)  # three ones among 16 weights
    assert out["2/mean_abs_weight"] == pytest.approx(0.75)
    assert out["0/distance_from_init"] == 0.0
    assert out["2/distance_from_init"] == pytest.approx(math.sqrt(8 * 0.25**2))
    # The one-off function: no distance without the initial weights, with them the same values.
    assert "2/distance_from_init" not in measure(model, x)
    initial = _hand_model().state_dict()
    assert measure(model, x, initial=initial) == out


def test_explicit_grads_layers_groups_and_state_round_trip():
    model = _hand_model()
    x = torch.eye(4)[:3] * 2
    only_head = Measure(model, groups=[], layers=["2"])
    assert set(only_head(x)) == {"2/mean_abs_weight", "2/distance_from_init"}  # no .grad yet
    grads = {model[2].weight: torch.full((2, 4), 2.0)}
    assert only_head(x, grads=grads)["2/grad_norm"] == pytest.approx(math.sqrt(8 * 4.0))
    declared = Measure(model, groups=[("0", "2")])
    assert declared(x)["0/dormant_fraction"] == 0.25
    tracker = Measure(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    later = Measure(model)
    later.load_state_dict(tracker.state_dict())
    assert later(x)["0/distance_from_init"] == pytest.approx(4.0)  # 16 weights moved by 1
    with pytest.raises(ValueError, match=r"saved measurement state is for layers \['2'\]"):
        later.load_state_dict(only_head.state_dict())


def test_eval_mode_during_the_measurement_and_the_modes_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 1))
    model.train()
    model[3].eval()  # a mixed mode, kept as it was
    before = model[1].running_mean.clone()
    tracker = Measure(model)
    x = torch.randn(16, 3)
    assert tracker(x) == tracker(x)  # no dropout: the same features twice
    assert torch.equal(model[1].running_mean, before)  # batch norm's statistics untouched
    assert model.training and model[1].training and not model[3].training


def test_bad_input_names_what_is_valid():
    model = _hand_model()
    with pytest.raises(ValueError, match=r"'9' is not a Linear or Conv layer of Sequential; its weight layers are "
                                         r"\['0', '2'\]"):
        Measure(model, layers=["9"])
    with pytest.raises(ValueError, match="dormant must be one of spatial_mean, official"):
        Measure(model, dormant="mean")
    with pytest.raises(ValueError, match="tau must be a number >= 0"):
        Measure(model, tau=-1)
    with pytest.raises(ValueError, match="grama_tau must be a number >= 0"):
        Measure(model, grama_tau="0")
    with pytest.raises(ValueError, match="no inputs to measure on"):
        Measure(model)()
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        measure(lambda x: x, torch.zeros(1))
    with pytest.raises(ValueError, match=r"initial weights lack \['2.weight'\]"):
        measure(model, torch.zeros(2, 4), initial={"0.weight": torch.zeros(4, 4)})
    with pytest.raises(UnitsNotFound, match="has no hidden layer"):
        measure(nn.Sequential(nn.Linear(3, 1)), torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="never reached layer '0'"):
        Measure(model, forward=lambda x: x)(torch.zeros(2, 4))
