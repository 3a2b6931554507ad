"""The MLP's `net.norm: layer` (LayerNorm) and `net.activation: crelu`, and how CBP and ReDo act on them."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rl_plasticity.config import validate
from rl_plasticity.core.layers import uniform_bound
from rl_plasticity.core.methods import ContinualBackprop, ReDo
from rl_plasticity.core.networks import MLP, LayerNorm
from rl_plasticity.core.optim import Adam
from rl_plasticity.core.units import ParamUnits, paired_columns
from rl_plasticity.errors import UserError
from rl_plasticity.problems import resolve_config
from rl_plasticity.problems.mujoco_ppo import DEFAULTS as PPO_DEFAULTS
from rl_plasticity.problems.mujoco_ppo import PPORun
from rl_plasticity.problems.regression import RegressionRun

ADAM_FRESH = {"exp_avg": 0.0, "exp_avg_sq": 0.0, "beta1_power": 1.0, "beta2_power": 1.0}


def set_weights(net, *weights):
    with torch.no_grad():
        for layer, w in zip(net.layers, weights):
            layer.weight[0] = torch.tensor(w)


def cbp_replacing_one_of_three(net, optimizer, **kw):
    """CBP that replaces exactly one unit (the lowest contribution) of a 3-unit layer at its first step."""
    return ContinualBackprop(net.groups, optimizer, [torch.Generator().manual_seed(0)], replacement_rate=1 / 3,
                             maturity_threshold=0, utility="contribution", **kw)


def adam_with_state(net, steps=5):
    """An Adam over net with some state built up; the net's parameters are left as they were."""
    adam = Adam(net.parameters(), lr=0.1, betas=(0.9, 0.999))
    saved = [p.detach().clone() for p in net.parameters()]
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        adam.step([torch.randn(p.shape, generator=g) for p in net.parameters()])
    with torch.no_grad():
        for p, q in zip(net.parameters(), saved):
            p.copy_(q)
    return adam


# --------------------------------------------------------------------------- LayerNorm


def test_layer_norm_matches_torch_per_replica():
    torch.manual_seed(0)
    norm = LayerNorm(5, replicas=3)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(3, 5))
        norm.bias.copy_(torch.randn(3, 5))
    x = torch.randn(3, 4, 5) * 3 + 1
    y = norm(x)
    for r in range(3):
        assert torch.allclose(y[r], F.layer_norm(x[r], (5,), norm.weight[r], norm.bias[r]), atol=1e-6)
    one = LayerNorm(5)
    assert torch.allclose(one(x[0]), F.layer_norm(x[0], (5,)), atol=1e-6)  # [B, U] with one replica
    assert one.weight.tolist() == [[1.0] * 5] and one.bias.tolist() == [[0.0] * 5]


def test_layer_norm_mlp_is_linear_norm_relu_and_a_replica_matches_a_net_alone():
    torch.manual_seed(0)
    both, alone = MLP([3, 4, 2], norm="layer", replicas=2), MLP([3, 4, 2], norm="layer")
    both.reset_parameters([torch.Generator().manual_seed(s) for s in (7, 8)])
    alone.reset_parameters([torch.Generator().manual_seed(8)])
    with torch.no_grad():
        both.norms[0].weight.copy_(torch.tensor([[1.0, 2, 3, 4], [0.5, -1, 2, 1]]))
        both.norms[0].bias.copy_(torch.tensor([[0.0, 0.1, 0.2, 0.3], [-0.2, 0.4, 0, 1]]))
        alone.norms[0].weight[0], alone.norms[0].bias[0] = both.norms[0].weight[1], both.norms[0].bias[1]
    x = torch.randn(2, 6, 3)
    l0, l1, n0 = both.layers[0], both.layers[1], both.norms[0]
    h = torch.relu(F.layer_norm(x[1] @ l0.weight[1].T + l0.bias[1], (4,), n0.weight[1], n0.bias[1]))
    assert torch.allclose(both(x)[1], h @ l1.weight[1].T + l1.bias[1], atol=1e-6)
    assert torch.allclose(both.groups[0].activation[1], h, atol=1e-6)
    assert torch.equal(both(x)[1], alone(x[1:])[0])


def test_default_mlp_has_no_norm_parameters():
    net = MLP([3, 4, 2])
    assert list(net.state_dict()) == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    assert net.groups[0].norm is None and len(net.groups[0].incoming_params()) == 2


def test_cbp_resets_a_replaced_units_norm_gain_bias_and_their_adam_state_exactly():
    net = MLP([2, 3, 1], norm="layer")
    set_weights(net, [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[2.0, -0.1, 0.5]])  # unit 1 has the least use
    adam = adam_with_state(net)
    with torch.no_grad():
        net.norms[0].weight.copy_(torch.tensor([[1.5, 0.7, 2.0]]))
        net.norms[0].bias.copy_(torch.tensor([[0.25, -0.5, 0.125]]))
    gain, bias = net.norms[0].weight, net.norms[0].bias
    assert [pu.param for pu in net.groups[0].incoming_params()][2:] == [gain, bias]
    before = {k: [t.clone() for t in v] for k, v in adam.state.items()}
    cbp = cbp_replacing_one_of_three(net, adam)
    net(torch.tensor([[[1.0, 2.0], [3.0, 0.0]]]))
    cbp.after_step()
    assert cbp.age[0].tolist() == [[1, 0, 1]]  # unit 1 was replaced
    assert gain.tolist() == [[1.5, 1.0, 2.0]] and bias.tolist() == [[0.25, 0.0, 0.125]]
    gi, bi = (adam._index[id(p)] for p in (gain, bias))
    for name, fresh in ADAM_FRESH.items():
        for i in (gi, bi):
            assert adam.state[name][i][0, 1] == fresh
            assert torch.equal(adam.state[name][i][0, [0, 2]], before[name][i][0, [0, 2]])
    # The gain's next update is exactly a fresh parameter's first Adam update (and torch's, to float32 rounding).
    grads = [torch.full_like(p, 0.3) for p in net.parameters()]
    fresh = torch.nn.Parameter(gain[:, 1:2].detach().clone())
    Adam([fresh], lr=0.1, betas=(0.9, 0.999)).step([grads[gi][:, 1:2]])
    reference = torch.nn.Parameter(gain[0, 1].detach().clone())
    reference.grad = grads[gi][0, 1].clone()
    torch.optim.Adam([reference], lr=0.1, betas=(0.9, 0.999)).step()
    adam.step(grads)
    assert gain[0, 1].item() == fresh.item() == pytest.approx(reference.item(), abs=1e-6)


def test_redo_resets_the_norm_of_dormant_units():
    net = MLP([2, 3, 1], norm="layer")
    # After the norm, unit 1 (the lowest pre-activation of all inputs below) is negative: dead under ReLU.
    set_weights(net, [[1.0, 1.0], [-2.0, -2.0], [0.5, 0.5]], [[1.0, 1.0, 1.0]])
    adam = adam_with_state(net)
    with torch.no_grad():
        net.norms[0].weight.fill_(2.0)
    redo = ReDo(net.groups, adam, [torch.Generator().manual_seed(1)], threshold=0.0, every=1)
    net(torch.rand(1, 8, 2) + 0.1)
    redo.after_step()
    assert redo.resets[0].item() == 1
    assert net.norms[0].weight.tolist() == [[2.0, 1.0, 2.0]]
    powers = adam.state["beta1_power"][adam._index[id(net.norms[0].weight)]]
    assert powers[0].tolist() == pytest.approx([0.9**5, 1, 0.9**5])


# --------------------------------------------------------------------------- CReLU

W0 = [[1.0, -1.0], [0.5, 0.5], [-1.0, 0.0]]  # 3 units, 2 inputs
W1 = [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [-1.0, 0.5, 0.0, 2.0, -2.0, 1.0]]  # 2 outputs read 6 = 2 x 3 inputs
X = torch.tensor([[[1.0, 2.0], [3.0, 0.0], [-1.0, 1.0], [0.5, -2.0]]])  # [R=1, B=4, 2]


def crelu_net():
    net = MLP([2, 3, 2], activation="crelu")
    set_weights(net, W0, W1)
    with torch.no_grad():
        net.layers[0].bias[0] = torch.tensor([0.25, -0.5, 0.0])
        net.layers[1].bias[0] = torch.tensor([0.1, -0.1])
    return net


def test_crelu_forward_equals_a_hand_built_concat_and_the_tap_pairs_the_halves():
    net = crelu_net()
    h = X[0] @ torch.tensor(W0).T + torch.tensor([0.25, -0.5, 0.0])
    hand = torch.cat([h.clamp_min(0), (-h).clamp_min(0)], 1) @ torch.tensor(W1).T + torch.tensor([0.1, -0.1])
    assert torch.allclose(net(X)[0], hand)
    tap = net.groups[0].activation
    assert tap.shape == (1, 4, 3, 2)
    assert torch.equal(tap[0, :, :, 0], h.clamp_min(0)) and torch.equal(tap[0, :, :, 1], (-h).clamp_min(0))
    assert torch.equal(net(X[0]), net(X)[0])  # the plain [B, in] path


def test_crelu_sizes_count_units_and_the_next_layer_has_fan_in_2u():
    net = MLP([2, 3, 4, 1], activation="crelu", init="kaiming")
    assert [tuple(layer.weight.shape[1:]) for layer in net.layers] == [(3, 2), (4, 6), (1, 8)]
    assert net.layers[1].bound == uniform_bound(6, "kaiming", "relu")
    assert net.layers[2].bound == uniform_bound(8, "kaiming", "linear")
    assert [g.num_units for g in net.groups] == [3, 4]


def test_a_crelu_unit_owns_columns_i_and_u_plus_i():
    w = torch.arange(12.0).reshape(1, 2, 6)  # [R, out, 2U], U = 3
    view = paired_columns(3)(w)
    assert view.shape == (1, 3, 2, 2)
    assert view[0, 1].tolist() == [[1.0, 4.0], [7.0, 10.0]]  # unit 1: columns 1 and 4 of both outputs
    view[0, 2] = -1.0  # writes through to columns 2 and 5
    assert w[0, :, 2].tolist() == [-1.0, -1.0] and w[0, :, 5].tolist() == [-1.0, -1.0]
    group = crelu_net().groups[0]
    expected = [np.mean(np.abs([W1[0][i], W1[0][i + 3], W1[1][i], W1[1][i + 3]])) for i in range(3)]
    assert group.mean_abs_outgoing()[0].tolist() == pytest.approx(expected)


def test_crelu_bias_transfer_keeps_the_mean_output_and_needs_one_mean_per_half():
    net = crelu_net()
    group = net.groups[0]
    before = net(X).mean(1)
    means = group.batch_mean(group.activation)  # [R, U, 2]: the mean of relu(h) and of relu(-h) per unit
    assert means.shape == (1, 3, 2)
    mask = torch.tensor([[False, True, True]])
    group.add_to_outgoing_bias(means * mask.unsqueeze(2))
    group.reinit(mask, [torch.Generator().manual_seed(0)])
    assert torch.allclose(net(X).mean(1), before, atol=1e-6)  # unchanged on average over the batch
    with pytest.raises(ValueError, match="one per half"):
        group.add_to_outgoing_bias(means.mean(2))  # one mean for both halves cannot be folded in exactly


def test_cbp_reinit_zeroes_both_outgoing_columns_and_resets_their_adam_state():
    net = crelu_net()
    adam = adam_with_state(net)
    before = {k: [t.clone() for t in v] for k, v in adam.state.items()}
    cbp = cbp_replacing_one_of_three(net, adam, transfer_mean_to_bias=False)
    net(X)
    # h = [[-.75, 3.25, -1.75, 2.75], [1, 1, -.5, -1.25], [-1, -3, 1, -.5]] per unit; the tap's mean |.| over
    # the batch and both halves is mean |h| / 2; mean |outgoing| over columns (i, i + 3): [2, 2.375, 2.5].
    contribution = torch.tensor([2.0 * 2.125 / 2, 2.375 * 0.9375 / 2, 2.5 * 1.375 / 2])
    cbp.after_step()
    assert cbp.age[0].tolist() == [[1, 0, 1]]  # unit 1, the lowest contribution, was replaced
    assert torch.allclose(cbp.bias_corrected_utility(0)[0, [0, 2]], contribution[[0, 2]])
    w1 = net.layers[1].weight[0]
    assert w1[:, [1, 4]].abs().sum() == 0
    assert torch.equal(w1[:, [0, 2, 3, 5]], torch.tensor(W1)[:, [0, 2, 3, 5]])
    out = adam._index[id(net.layers[1].weight)]
    for name, fresh in ADAM_FRESH.items():
        assert torch.all(adam.state[name][out][0][:, [1, 4]] == fresh)
        assert torch.equal(adam.state[name][out][0][:, [0, 2, 3, 5]], before[name][out][0][:, [0, 2, 3, 5]])


def test_redo_on_crelu_resets_a_silent_unit_and_both_its_columns():
    net = crelu_net()
    with torch.no_grad():
        net.layers[0].weight[0, 0] = 0.0  # unit 0: h = 0 on every input, so both halves are silent
        net.layers[0].bias[0, 0] = 0.0
    adam = adam_with_state(net, steps=1)
    redo = ReDo(net.groups, adam, [torch.Generator().manual_seed(1)], threshold=0.0, every=1)
    net(X)
    redo.after_step()
    assert redo.resets[0].item() == 1
    assert net.layers[1].weight[0][:, [0, 3]].abs().sum() == 0
    assert torch.equal(net.layers[1].weight[0][:, [1, 2, 4, 5]], torch.tensor(W1)[:, [1, 2, 4, 5]])
    powers = ParamUnits(net.layers[1].weight, paired_columns(3)).units(
        adam.state["beta1_power"][adam._index[id(net.layers[1].weight)]])
    assert torch.all(powers[0, 0] == 1) and torch.allclose(powers[0, 1:], torch.tensor(0.9))


def test_cbp_bias_transfer_with_crelu_keeps_the_mean_output():
    net = crelu_net()
    cbp = cbp_replacing_one_of_three(net, Adam(net.parameters(), lr=0.0), transfer_mean_to_bias=True)
    before = net(X).mean(1)
    cbp.after_step()  # the running mean after one step is this batch's mean (bias-corrected)
    assert cbp.replacements[0].item() == 1
    assert torch.allclose(net(X).mean(1), before, atol=1e-6)


# --------------------------------------------------------------------------- configs and short runs

REGRESSION = {"problem": "regression", "examples": 300, "bin_size": 100,
              "stream": {"change_every": 100}, "log": {"metrics_every": 100, "probe_size": 50,
                                                       "checkpoint_every": 100}}


def regression_config(*overrides):
    return resolve_config(REGRESSION, list(overrides))[0]


def test_configs_take_the_options_and_refuse_what_cannot_work():
    assert regression_config("net.norm=layer", "net.activation=crelu")["net"]["norm"] == "layer"
    with pytest.raises(UserError, match="'net.norm'"):
        regression_config("net.norm=batch")
    with pytest.raises(UserError, match="'net.norm': a net with no hidden layers"):
        regression_config("net.norm=layer", "net.hidden=[]")
    regression_config("net.activation=crelu", "cbp.enabled=true")
    for problem in ("continual_imagenet", "incremental_cifar"):  # conv nets: no LayerNorm, no CReLU
        for key in ("net.norm=layer", "net.activation=crelu"):
            with pytest.raises(UserError, match=f"unknown config key '{key.split('=')[0]}'"):
                resolve_config({"problem": problem}, [key])
    assert validate({"net": {"norm": "layer", "activation": "crelu"}}, PPO_DEFAULTS)["net"]["norm"] == "layer"


@pytest.mark.parametrize("options", [["net.norm=layer"], ["net.activation=crelu"],
                                     ["net.norm=layer", "net.activation=crelu"]], ids=" ".join)
def test_short_regression_runs_with_cbp(options, one_thread):
    cfg = regression_config(*options, "cbp.enabled=true", "cbp.replacement_rate=0.01", "cbp.maturity_threshold=20",
                            "optimizer.weight_decay=1e-3")
    run = RegressionRun(cfg, [0, 1])
    for _ in range(3):
        run.train_chunk()
    assert len(run.bins) == 3 and all(math.isfinite(e) for b in run.bins for e in b)
    assert (run.learner.methods[0].replacements[0] > 0).all()


def tiny_ppo(activation, norm, **methods):
    cfg = validate({"env": {"id": "Ant-v5", "max_episode_steps": 5},
                    "net": {"hidden": [8, 8], "activation": activation, "norm": norm},
                    "ppo": {"rollout_steps": 12, "minibatch_size": 4, "epochs": 1}, **methods}, PPO_DEFAULTS)
    return PPORun(cfg, seed=0)


@pytest.mark.parametrize("activation,norm", [("relu", "layer"), ("crelu", "none"), ("crelu", "layer"),
                                             ("tanh", "none")])
def test_ppo_acts_as_its_torch_actor_and_trains(activation, norm):
    run = tiny_ppo(activation, norm, cbp={"enabled": True, "replacement_rate": 0.1, "maturity_threshold": 1})
    agent = run.agent
    assert agent._numpy_acting == (activation != "tanh")
    obs = np.random.default_rng(0).standard_normal((5, agent.actor.layers[0].weight.shape[2])).astype(np.float32)

    def check_acting():
        with torch.no_grad():
            expected = agent.actor(torch.from_numpy(obs)).numpy()
        np.testing.assert_allclose(np.stack([agent.policy_mean(o) for o in obs]), expected, rtol=1e-5, atol=1e-5)

    check_acting()
    episodes, losses, _ = run.train_update()
    assert episodes and math.isfinite(losses["policy_loss"]) and math.isfinite(losses["value_loss"])
    assert sum(r.sum().item() for r in agent.learner.methods[0].replacements) > 0
    check_acting()  # the numpy views follow the optimizer's and CBP's in-place writes


def test_ranks_of_a_crelu_layer_count_both_outputs_of_each_unit():
    from rl_plasticity.core.metrics import probe_metrics, stable_rank

    net = MLP([6, 4, 1], activation="crelu", init="kaiming")
    net.reset_parameters([torch.Generator().manual_seed(0)])
    probe = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    rank = probe_metrics(net, probe)["layer0/stable_rank"]
    h = net.layers[0](probe)
    features = torch.cat([torch.relu(h), torch.relu(-h)], 1).unsqueeze(0)  # [1, 64, 8]: what layer 1 reads
    assert torch.equal(rank, stable_rank(features)) and rank.item() > 4  # more than the 4 units alone could give
