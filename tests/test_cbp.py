"""Continual backprop on a tiny net where every number can be checked by hand."""

import math

import pytest
import torch

from rl_plasticity.core.methods import ContinualBackprop
from rl_plasticity.core.networks import MLP
from rl_plasticity.core.optim import SGD, Adam

# Net 2-3-1. With inputs x1=[1,2], x2=[3,0] the hidden activations are h1=[1,2,3], h2=[3,0,3]:
# mean |h| = [2, 1, 3]; outgoing |w| = [2, 1, 0.5]; contribution = [4, 1, 1.5].
W1 = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
W2 = [[2.0, -1.0, 0.5]]
X = torch.tensor([[[1.0, 2.0], [3.0, 0.0]]])  # [R=1, B=2, in=2]
CONTRIBUTION = torch.tensor([4.0, 1.0, 1.5])


def tiny_net():
    net = MLP([2, 3, 1], activation="relu", init="lecun")
    with torch.no_grad():
        net.layers[0].weight[0] = torch.tensor(W1)
        net.layers[1].weight[0] = torch.tensor(W2)
    return net


def make_cbp(net, optimizer=None, **kw):
    optimizer = optimizer or SGD(net.parameters(), lr=0.0)
    g = torch.Generator().manual_seed(0)
    return ContinualBackprop(net.groups, optimizer, [g], **kw)


def cbp_steps(net, cbp, n):
    for _ in range(n):
        net(X)
        cbp.after_step()


def test_contribution_utility_and_ageing_by_hand():
    net = tiny_net()
    cbp = make_cbp(net, replacement_rate=0.0, maturity_threshold=100, decay_rate=0.99, utility="contribution")
    cbp_steps(net, cbp, 1)
    assert cbp.age[0].tolist() == [[1, 1, 1]]
    assert torch.allclose(cbp.utility[0][0], 0.01 * CONTRIBUTION)
    # Bias correction divides by 1 - 0.99^1 = 0.01: the corrected utility is the contribution itself.
    assert torch.allclose(cbp.bias_corrected_utility(0)[0], CONTRIBUTION)
    cbp_steps(net, cbp, 1)
    assert cbp.age[0].tolist() == [[2, 2, 2]]
    assert torch.allclose(cbp.utility[0][0], (0.99 * 0.01 + 0.01) * CONTRIBUTION)
    assert torch.allclose(cbp.bias_corrected_utility(0)[0], CONTRIBUTION)


def test_adaptable_contribution_by_hand():
    net = tiny_net()
    cbp = make_cbp(net, replacement_rate=0.0, utility="adaptable_contribution")
    cbp_steps(net, cbp, 1)
    # mean h = [2, 1, 3]; |h - mean| averaged: [1, 1, 0]; mean |incoming w| = [0.5, 0.5, 1].
    expected = torch.tensor([2.0, 1.0, 0.5]) * torch.tensor([1.0, 1.0, 0.0]) / torch.tensor([0.5, 0.5, 1.0])
    assert torch.allclose(cbp.bias_corrected_utility(0)[0], expected)


def test_nothing_replaced_before_maturity():
    net = tiny_net()
    cbp = make_cbp(net, replacement_rate=1.0, maturity_threshold=5)
    before = [p.detach().clone() for p in net.parameters()]
    cbp_steps(net, cbp, 5)  # ages reach 5, which is not > 5
    assert cbp.replacements[0].item() == 0
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    cbp_steps(net, cbp, 1)
    assert cbp.replacements[0].item() == 3  # rate 1 x 3 eligible units


def test_accumulator_and_lowest_utility_choice_by_hand():
    net = tiny_net()
    cbp = make_cbp(net, replacement_rate=0.5, maturity_threshold=2, utility="contribution",
                   transfer_mean_to_bias=False)
    cbp_steps(net, cbp, 2)  # ages 1, 2: nobody eligible yet
    assert cbp.accumulator[0].item() == 0 and cbp.replacements[0].item() == 0
    cbp_steps(net, cbp, 1)  # age 3 > 2: 3 eligible, accumulator 1.5 -> replace 1, keep 0.5
    assert cbp.accumulator[0].item() == pytest.approx(0.5)
    assert cbp.age[0].tolist() == [[3, 0, 3]]  # unit 1 had the lowest utility (1)
    assert net.layers[1].weight[0, 0, 1].item() == 0.0
    # Unit 1 is young again; 2 eligible add 1.0 -> 1.5 -> replace 1: unit 2 (1.5 < 4), keep 0.5.
    net.layers[1].weight.data[0, 0, 1] = -1.0  # irrelevant to the choice; makes the zeroing visible again
    cbp_steps(net, cbp, 1)
    assert cbp.accumulator[0].item() == pytest.approx(0.5)
    assert cbp.age[0].tolist() == [[4, 1, 0]]
    assert cbp.replacements[0].item() == 2


def test_a_unit_another_method_made_new_waits_for_maturity_again_also_after_a_checkpoint():
    net = tiny_net()
    cbp = make_cbp(net, replacement_rate=0.1, maturity_threshold=2, transfer_mean_to_bias=False)
    cbp_steps(net, cbp, 3)  # all 3 units eligible from age 3: accumulator 0.3
    cbp.forget_units(net.groups[0], torch.tensor([[True, False, False]]))  # e.g. ReDo re-initialised unit 0
    cbp_steps(net, cbp, 1)  # unit 0 is 1 step old: 2 eligible
    assert cbp.accumulator[0].item() == pytest.approx(0.5)
    restored = make_cbp(net, replacement_rate=0.1, maturity_threshold=2, transfer_mean_to_bias=False)
    restored.load_state_dict(cbp.state_dict())
    for method in (cbp, restored):
        cbp_steps(net, method, 1)  # unit 0 age 2: still 2 eligible
        assert method.accumulator[0].item() == pytest.approx(0.7) and method.replacements[0].item() == 0
        cbp_steps(net, method, 1)  # unit 0 age 3: 3 eligible, 0.7 + 0.3 = 1 -> one replacement
        assert method.accumulator[0].item() == pytest.approx(0.0, abs=1e-6) and method.replacements[0].item() == 1


def test_replacement_steps_follow_the_accumulators_float32_rate_times_count_exactly():
    # 100 units at rate 1e-4: a float64 product would reach 1 at another step than the float32 one the
    # accumulator has always used (rate * count tensor in float32, summed in float64).
    net = MLP([2, 100, 1], activation="relu", init="lecun")
    cbp = ContinualBackprop(net.groups, SGD(net.parameters(), lr=0.0), [torch.Generator().manual_seed(0)],
                            replacement_rate=1e-4, maturity_threshold=0, transfer_mean_to_bias=False)
    acc, expected, got = torch.zeros(1, dtype=torch.float64), [], []
    x = torch.ones(1, 1, 2)
    for step in range(1, 400):
        eligible = (cbp.age[0] + 1 > 0).sum(1)  # every unit older than the maturity of 0 after this step's ageing
        acc += 1e-4 * eligible
        if acc.floor().item() > 0:
            expected.append(step)
            acc -= acc.floor()
        before = cbp.replacements[0].item()
        net(x)
        cbp.after_step()
        if cbp.replacements[0].item() > before:
            got.append(step)
    assert got == expected and len(got) == 3


def test_replaced_unit_is_reinitialised_and_outgoing_zeroed():
    net = tiny_net()
    net.layers[0].bias.data[0, 1] = 0.25
    cbp = make_cbp(net, replacement_rate=1 / 3, maturity_threshold=0, utility="contribution",
                   transfer_mean_to_bias=True)
    cbp_steps(net, cbp, 1)  # 3 eligible x 1/3 = 1 replacement: unit 1 (contribution 1)
    w1, b1 = net.layers[0].weight[0], net.layers[0].bias[0]
    assert torch.equal(w1[[0, 2]], torch.tensor(W1)[[0, 2]])  # others untouched
    assert not torch.equal(w1[1], torch.tensor(W1[1]))
    assert w1[1].abs().max() <= math.sqrt(3 / 2)  # LeCun bound of the layer, fan_in 2
    assert b1[1].item() == 0.0
    assert net.layers[1].weight[0, 0].tolist() == [2.0, 0.0, 0.5]
    # The unit's mean activation (0.25 bias -> h = [2.25, 0.25], mean 1.25) times its old outgoing
    # weight (-1) moved into the output bias.
    assert net.layers[1].bias[0, 0].item() == pytest.approx(-1.25)
    assert cbp.utility[0][0, 1].item() == 0.0 and cbp.age[0][0, 1].item() == 0


def test_optimizer_state_of_replaced_units_is_fresh_and_others_untouched():
    net = tiny_net()
    adam = Adam(net.parameters(), lr=0.1, betas=(0.9, 0.999))
    for _ in range(7):  # build up some state
        adam.step([torch.randn_like(p) for p in net.parameters()])
    net_with_hand_weights = tiny_net()  # the steps moved the weights; restore the hand-checked ones
    with torch.no_grad():
        for p, q in zip(net.parameters(), net_with_hand_weights.parameters()):
            p.copy_(q)
    before = {k: [t.clone() for t in v] for k, v in adam.state.items()}
    cbp = make_cbp(net, optimizer=adam, replacement_rate=1 / 3, maturity_threshold=0, utility="contribution")
    cbp_steps(net, cbp, 1)  # replaces unit 1
    W1_i, b1_i, W2_i, b2_i = 0, 1, 2, 3
    for name, fresh in (("exp_avg", 0), ("exp_avg_sq", 0), ("beta1_power", 1), ("beta2_power", 1)):
        s, old = adam.state[name], before[name]
        assert torch.all(s[W1_i][0, 1] == fresh) and s[b1_i][0, 1] == fresh and s[W2_i][0, 0, 1] == fresh
        assert torch.equal(s[W1_i][0, [0, 2]], old[W1_i][0, [0, 2]])
        assert torch.equal(s[b1_i][0, [0, 2]], old[b1_i][0, [0, 2]])
        assert torch.equal(s[W2_i][0, 0, [0, 2]], old[W2_i][0, 0, [0, 2]])
        assert torch.equal(s[b2_i], old[b2_i])
    # The next update of the replaced unit's incoming weights equals a fresh parameter's first update.
    grads = [torch.randn_like(p) for p in net.parameters()]
    row_before = net.layers[0].weight[0, 1].detach().clone()
    adam.step(grads)
    fresh = torch.nn.Parameter(row_before.clone())
    reference = torch.optim.Adam([fresh], lr=0.1, betas=(0.9, 0.999))
    fresh.grad = grads[W1_i][0, 1].clone()
    reference.step()
    assert torch.allclose(net.layers[0].weight[0, 1], fresh, atol=1e-7)


def test_sgd_momentum_reset_matches_fresh_parameter():
    net = tiny_net()
    sgd = SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        sgd.step([torch.ones_like(p) for p in net.parameters()])
    cbp = make_cbp(net, optimizer=sgd, replacement_rate=1 / 3, maturity_threshold=0, utility="contribution")
    cbp_steps(net, cbp, 1)
    buf = sgd.state["momentum"]
    assert torch.all(buf[0][0, 1] == 0) and torch.all(buf[0][0, 0] != 0)


def test_random_utility_replaces_eligible_units_only():
    net = tiny_net()
    cbp = make_cbp(net, replacement_rate=0.5, maturity_threshold=2, utility="random")
    cbp_steps(net, cbp, 3)
    assert cbp.replacements[0].item() == 1
    cbp_steps(net, cbp, 1)
    assert cbp.replacements[0].item() == 2
    assert (cbp.age[0] <= 1).sum().item() == 2
