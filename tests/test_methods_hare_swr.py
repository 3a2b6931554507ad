"""Hare & Tortoise and selective weight reinitialisation (SWR), and the optimizer's per-element reset."""

import math

import pytest
import torch

from rl_plasticity.core.conv import BatchNorm
from rl_plasticity.core.convnet import ConvNet
from rl_plasticity.core.layers import Linear
from rl_plasticity.core.learner import Learner
from rl_plasticity.core.methods.base import Target
from rl_plasticity.core.methods.cbp import ContinualBackprop
from rl_plasticity.core.methods.hare_tortoise import HareTortoise
from rl_plasticity.core.methods.swr import SelectiveWeightReinit
from rl_plasticity.core.networks import MLP
from rl_plasticity.core.optim import SGD, Adam
from rl_plasticity.core.resnet import ResNet18


def build(cls, net_or_nets, optimizer, generators, params=None, **options):
    """The method as build_learner makes it: from its enabled section and the learner's Target."""
    nets = net_or_nets if isinstance(net_or_nets, list) else [net_or_nets]
    params = params if params is not None else [p for net in nets for p in net.parameters()]
    groups = [g for net in nets for g in getattr(net, "groups", [])]
    section = {**cls.defaults, "enabled": True, **options}
    return cls.from_config(section, Target(params, groups, optimizer, generators, nets))


def mlp(replicas=1, seeds=(0,)):
    net = MLP([3, 4, 2], activation="relu", init="lecun", replicas=replicas)
    net.reset_parameters([torch.Generator().manual_seed(s) for s in seeds])
    return net


def hand_linear():
    """One layer (it is its own net): weight [1, 2, 3], bias [1, 2], init U(+-0.5) and bias 0."""
    layer = Linear(3, 2, bound=0.5)
    with torch.no_grad():
        layer.weight[0] = torch.tensor([[0.1, -2.0, 3.0], [-0.05, 1.0, 0.2]])
        layer.bias[0] = torch.tensor([0.5, -0.1])
    return layer


def adam_first_update(value, grad, lr, betas):
    """A fresh parameter's value after torch's Adam takes its first step."""
    fresh = torch.nn.Parameter(value.clone())
    ref = torch.optim.Adam([fresh], lr=lr, betas=betas)
    fresh.grad = grad.clone()
    ref.step()
    return fresh.detach()


# --------------------------------------------------------------------------- the optimizer's per-element reset

@pytest.mark.parametrize("opt_cls", [Adam, SGD])
def test_reset_elements_makes_masked_state_fresh_and_leaves_the_rest(opt_cls):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(2, 3, 4))
    opt = opt_cls([p], lr=0.1, **({"betas": (0.9, 0.999)} if opt_cls is Adam else {"momentum": 0.9}))
    for _ in range(30):
        opt.step([torch.randn(2, 3, 4)])
    before = {k: [t.clone() for t in v] for k, v in opt.state.items()}
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[0, 1, 2] = mask[1, 0, 0] = mask[1, 2, 3] = True
    opt.reset_elements(p, mask)
    for name, fresh in opt.fresh_state.items():
        assert torch.all(opt.state[name][0][mask] == fresh)
        assert torch.equal(opt.state[name][0][~mask], before[name][0][~mask])
    if opt_cls is Adam:
        assert opt.max_power[0] == 1.0  # the tensor takes the bias-corrected path again
        value, grad = p.detach()[0, 1, 2].clone(), torch.randn(2, 3, 4)
        opt.step([grad])
        assert torch.allclose(p[0, 1, 2], adam_first_update(value, grad[0, 1, 2], 0.1, (0.9, 0.999)), atol=1e-7)


# --------------------------------------------------------------------------- Hare & Tortoise

def test_hare_tortoise_rule_by_hand():
    p = torch.nn.Parameter(torch.zeros(1, 1))
    ht = HareTortoise([p], SGD([p], lr=0.1), ema=0.75, reset_every=2, reset_on="steps")
    with torch.no_grad():
        p.fill_(4.0)  # as if the optimizer had stepped
    ht.after_step()
    assert ht.tortoise[0].item() == 1.0 and p.item() == 4.0  # 0.75 * 0 + 0.25 * 4; the hare is untouched
    with torch.no_grad():
        p.fill_(8.0)
    ht.after_step()  # tortoise 0.75 * 1 + 0.25 * 8 = 2.75; second step: the hare is reset to it
    assert ht.tortoise[0].item() == 2.75 and p.item() == 2.75 and ht.resets == 1


def test_hare_tortoise_resets_on_epochs_or_task_switches_only_when_asked():
    p = torch.nn.Parameter(torch.zeros(1, 1))
    by_epoch = HareTortoise([p], SGD([p], lr=0.1), ema=0.5, reset_every=2)  # the default: every 2nd epoch here
    with torch.no_grad():
        p.fill_(2.0)
    by_epoch.after_step()
    by_epoch.on_task_switch()
    by_epoch.after_epoch()
    assert p.item() == 2.0
    by_epoch.after_epoch()
    assert p.item() == 1.0
    q = torch.nn.Parameter(torch.full((1, 1), 2.0))
    by_switch = HareTortoise([q], SGD([q], lr=0.1), ema=0.5, reset_on="task_switch")
    with torch.no_grad():
        q.fill_(6.0)
    by_switch.after_step()  # tortoise 4
    by_switch.after_epoch()
    assert q.item() == 6.0
    by_switch.on_task_switch()
    assert q.item() == 4.0


def test_hare_tortoise_tracks_batch_norm_statistics():
    net = torch.nn.Sequential(BatchNorm(2))
    ht = build(HareTortoise, net, SGD(list(net.parameters()), lr=0.1), [None], ema=0.5, reset_on="steps",
               reset_every=1)
    net(torch.tensor([[1.0, 3.0], [3.0, 5.0]]))  # running mean 0 -> 0.1 * (2, 4)
    mean_after_forward = net[0].running_mean.clone()
    ht.after_step()  # tortoise mean 0.5 * 0 + 0.5 * (0.2, 0.4); the hare's statistics are reset to it
    assert torch.allclose(net[0].running_mean, mean_after_forward / 2)


@pytest.mark.parametrize("reset_optimizer_state", [False, True])
def test_hare_reset_leaves_or_renews_the_optimizer_state(reset_optimizer_state):
    torch.manual_seed(0)
    net = mlp()
    params = list(net.parameters())
    adam = Adam(params, lr=0.01, betas=(0.9, 0.999))
    ht = build(HareTortoise, net, adam, [None], reset_on="steps", reset_every=5,
               reset_optimizer_state=reset_optimizer_state)
    learner = Learner(params, adam, [ht])
    for _ in range(4):
        learner.update(net(torch.randn(8, 3)).square().mean())
    before = {k: [t.clone() for t in v] for k, v in adam.state.items()}
    learner.update(net(torch.randn(8, 3)).square().mean())  # 5th step: the hare is reset
    assert ht.resets == 1 and all(torch.equal(p, t) for p, t in zip(params, ht.tortoise))
    if not reset_optimizer_state:
        assert not torch.equal(adam.state["exp_avg"][0], before["exp_avg"][0])  # the 5th step updated it
        assert torch.all(adam.state["beta1_power"][0] < 1)
        return
    for name, fresh in adam.fresh_state.items():
        assert all(torch.all(t == fresh) for t in adam.state[name])
    # Every weight's next update is a fresh parameter's first update.
    value, grads = params[0].detach().clone(), [torch.randn_like(p) for p in params]
    adam.step(grads)
    assert torch.allclose(params[0], adam_first_update(value, grads[0], 0.01, (0.9, 0.999)), atol=1e-7)


def test_tortoise_in_place_swaps_and_restores():
    net = mlp()
    ht = build(HareTortoise, net, SGD(list(net.parameters()), lr=0.1), [None])
    hare = [p.detach().clone() for p in net.parameters()]
    for t in ht.tortoise:
        t.add_(1.0)
    with ht.tortoise_in_place():
        assert all(torch.equal(p, h + 1) for p, h in zip(net.parameters(), hare))
    assert all(torch.equal(p, h) for p, h in zip(net.parameters(), hare))


def test_hare_tortoise_on_actor_critic_and_resnet():
    actor, critic = mlp(), mlp(seeds=(1,))
    log_std = torch.nn.Parameter(torch.zeros(1, 2))
    params = [*actor.parameters(), *critic.parameters(), log_std]
    ht = build(HareTortoise, [actor, critic], SGD(params, lr=0.1), [None], params=params)
    assert len(ht.tortoise) == len(params)  # log-std too: it is a trained parameter
    net = ResNet18(num_classes=3, width=2)
    net.reset_parameters([torch.Generator().manual_seed(0)])
    ht = build(HareTortoise, net, SGD(list(net.parameters()), lr=0.1), [None])
    assert len(ht.tortoise) == len(list(net.parameters())) + len(list(net.buffers()))


# --------------------------------------------------------------------------- SWR

def test_swr_magnitude_proportional_rule_by_hand():
    layer, gen = hand_linear(), torch.Generator().manual_seed(3)
    swr = build(SelectiveWeightReinit, layer, SGD(list(layer.parameters()), lr=0.1), [gen], utility="magnitude",
                rate=0.5, every=2)
    expected_draws = torch.empty(3).uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(3))
    swr.after_step()
    assert layer.weight[0, 0, 0].item() == pytest.approx(0.1)  # not yet: every=2
    swr.after_step()
    # rate 0.5: the 3 of 6 weights of lowest |w| (0.1, -0.05, 0.2), redrawn in row-major order; 1 of 2 biases.
    w = layer.weight[0].detach()
    assert [w[0, 0].item(), w[1, 0].item(), w[1, 2].item()] == expected_draws.tolist()
    assert [w[0, 1].item(), w[0, 2].item(), w[1, 1].item()] == [-2.0, 3.0, 1.0]
    assert layer.bias[0].tolist() == pytest.approx([0.5, 0.0])  # a bias goes back to its init, 0
    assert swr.stats() == {"reinitialised": 4.0}


def test_swr_gradient_utility_by_hand():
    layer = hand_linear()
    params = list(layer.parameters())
    sgd = SGD(params, lr=0.0)  # the weights stay put: the utility is |w * g| of the hand weights
    swr = build(SelectiveWeightReinit, layer, sgd, [torch.Generator().manual_seed(0)], rate=0.5, every=1)
    x = torch.tensor([[1.0, 0.0, 2.0]])
    Learner(params, sgd, [swr]).update(layer(x).sum())  # dL/dW[o, i] = x_i, dL/db = 1
    # |w * g| = [[0.1, 0, 6], [0.05, 0, 0.4]]: the lowest three are (0, 1), (1, 1) and (1, 0).
    w = layer.weight[0].detach()
    assert [w[0, 0].item(), w[0, 2].item(), w[1, 2].item()] == pytest.approx([0.1, 3.0, 0.2])
    assert w[0, 1].item() != -2.0 and w[1, 1].item() != 1.0 and w[1, 0].item() != -0.05
    assert layer.bias[0].tolist() == pytest.approx([0.5, 0.0])  # |b * 1|: -0.1 is the lower


def test_swr_utility_average_by_hand():
    layer = hand_linear()
    swr = build(SelectiveWeightReinit, layer, SGD(list(layer.parameters()), lr=0.1), [None], utility="magnitude",
                rate=0.5, every=2, utility_decay=0.5)
    swr.after_step()  # average 0.5 * |w|
    assert torch.allclose(swr.trace[0], 0.5 * layer.weight.detach().abs())
    old = layer.weight.detach().abs().clone()
    swr.after_step()  # average 0.75 * |w|; the three lowest are re-initialised and their averages restart
    chosen = torch.zeros(1, 2, 3, dtype=torch.bool)
    chosen[0, 0, 0] = chosen[0, 1, 0] = chosen[0, 1, 2] = True
    assert torch.all(swr.trace[0][chosen] == 0)
    assert torch.allclose(swr.trace[0][~chosen], 0.75 * old[~chosen])


def test_swr_threshold_selection_and_mean_reinit_by_hand():
    layer = hand_linear()
    swr = build(SelectiveWeightReinit, layer, SGD(list(layer.parameters()), lr=0.1), [None], utility="magnitude",
                selection="threshold", rate=1.0, every=1, reinit="mean")
    swr.after_step()
    # Mean |w| = 6.35 / 6 = 1.058: 0.1, -0.05, 1.0 and 0.2 are at most that; mean |b| = 0.3: only -0.1.
    assert layer.weight[0].tolist() == [[0.0, -2.0, 3.0], [0.0, 0.0, 0.0]]
    assert layer.bias[0].tolist() == pytest.approx([0.5, 0.0])


def test_swr_fractional_count_is_a_draw_from_the_replica_generator():
    layer = Linear(10, 1, bound=0.5)  # rate 0.15: weight 1.5 -> 1, plus 1 with probability 0.5; bias 0.15 -> 0 or 1
    layer.reset_parameters([torch.Generator().manual_seed(0)])
    swr = build(SelectiveWeightReinit, layer, SGD(list(layer.parameters()), lr=0.1),
                [torch.Generator().manual_seed(7)], utility="magnitude", rate=0.15, every=1)
    twin = torch.Generator().manual_seed(7)  # makes the method's draws in its order
    counts = []
    for _ in range(30):
        weights = 1 + int(torch.rand(1, generator=twin).item() < 0.5)
        torch.empty(weights).uniform_(-0.5, 0.5, generator=twin)  # their new values
        biases = int(torch.rand(1, generator=twin).item() < 0.15)  # set to 0: nothing drawn
        before = swr.reinitialised.item()
        swr.after_step()
        assert swr.reinitialised.item() - before == weights + biases
        counts.append(weights)
    assert set(counts) == {1, 2}


def test_swr_resets_the_optimizer_state_of_reinitialised_weights_exactly():
    layer = hand_linear()
    params = list(layer.parameters())
    adam = Adam(params, lr=0.1, betas=(0.9, 0.999))
    for _ in range(7):
        adam.step([torch.randn_like(p) for p in params])
    with torch.no_grad():  # the steps moved the weights; put the hand-checked ones back
        for p, q in zip(params, hand_linear().parameters()):
            p.copy_(q)
    before = {k: [t.clone() for t in v] for k, v in adam.state.items()}
    swr = build(SelectiveWeightReinit, layer, adam, [torch.Generator().manual_seed(0)], utility="magnitude",
                rate=0.5, every=1)
    swr.after_step()  # weights (0, 0), (1, 0), (1, 2) and bias 1
    chosen = torch.zeros(1, 2, 3, dtype=torch.bool)
    chosen[0, 0, 0] = chosen[0, 1, 0] = chosen[0, 1, 2] = True
    for name, fresh in adam.fresh_state.items():
        assert torch.all(adam.state[name][0][chosen] == fresh)
        assert torch.equal(adam.state[name][0][~chosen], before[name][0][~chosen])
        assert adam.state[name][1][0, 1] == fresh and adam.state[name][1][0, 0] == before[name][1][0, 0]
    value, grads = layer.weight.detach()[0, 1, 2].clone(), [torch.randn_like(p) for p in params]
    adam.step(grads)
    assert torch.allclose(layer.weight[0, 1, 2], adam_first_update(value, grads[0][0, 1, 2], 0.1, (0.9, 0.999)),
                          atol=1e-7)


def test_swr_can_leave_the_optimizer_state_as_the_papers_code_does():
    layer = hand_linear()
    adam = Adam(list(layer.parameters()), lr=0.1)
    adam.step([torch.ones_like(p) for p in layer.parameters()])
    before = [t.clone() for t in adam.state["exp_avg"]]
    build(SelectiveWeightReinit, layer, adam, [None], utility="magnitude", rate=0.5, every=1,
          reset_optimizer_state=False).after_step()
    assert all(torch.equal(a, b) for a, b in zip(adam.state["exp_avg"], before))


def test_swr_on_convnet_resnet_and_actor_critic():
    for net in (ConvNet(num_classes=2, channels=(2, 2, 2), hidden=(4, 4), init="pytorch_default"),
                ResNet18(num_classes=3, width=2)):
        net.reset_parameters([torch.Generator().manual_seed(0)])
        params = list(net.parameters())
        sgd = SGD(params, lr=0.01)
        swr = build(SelectiveWeightReinit, net, sgd, [torch.Generator().manual_seed(1)], rate=0.2, every=1)
        Learner(params, sgd, [swr]).update(net(torch.randn(4, 3, 32, 32)).square().mean())
        assert swr.reinitialised.item() > 0 and all(torch.isfinite(p).all() for p in params)
    actor, critic = mlp(), mlp(seeds=(1,))
    log_std = torch.nn.Parameter(torch.full((1, 2), 0.3))
    params = [*actor.parameters(), *critic.parameters(), log_std]
    sgd = SGD(params, lr=0.01)
    swr = build(SelectiveWeightReinit, [actor, critic], sgd, [None], params=params, rate=0.5, every=1)
    assert len(swr.params) == len(params) - 1  # log-std is not a layer's: left alone
    Learner(params, sgd, [swr]).update(actor(torch.randn(4, 3)).square().mean() + critic(torch.randn(4, 3)).sum()
                                       + log_std.sum())
    assert swr.reinitialised.item() > 0 and log_std.detach().tolist() == [[pytest.approx(0.29)] * 2]


def test_swr_refuses_what_it_cannot_handle():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="swr cannot re-initialise the parameters of Linear"):
        build(SelectiveWeightReinit, net, SGD(list(net.parameters()), lr=0.1), [None])
    with pytest.raises(ValueError, match="swr needs the networks"):
        SelectiveWeightReinit([], SGD([], lr=0.1), [None])


# --------------------------------------------------------------------------- both: replicas, CBP, checkpoints

def make_methods(net, optimizer, generators, which):
    methods = []
    if "cbp" in which:
        methods.append(build(ContinualBackprop, net, optimizer, generators, replacement_rate=0.05,
                             maturity_threshold=5))
    if "swr" in which:
        methods.append(build(SelectiveWeightReinit, net, optimizer, generators, rate=0.3, every=3,
                             utility_decay=0.5))
    if "hare_tortoise" in which:
        methods.append(build(HareTortoise, net, optimizer, generators, ema=0.9, reset_on="steps", reset_every=7))
    return methods


def train(net, learner, seeds, steps, start=0):
    """Each replica r learns from its own data stream, seeded by seeds[r] and the step."""
    for step in range(start, start + steps):
        data = [torch.Generator().manual_seed(1000 * s + step) for s in seeds]
        x = torch.stack([torch.randn(8, 3, generator=g) for g in data])
        y = torch.stack([torch.randn(8, 2, generator=g) for g in data])
        learner.update((net(x) - y).square().mean((1, 2)).sum())


@pytest.mark.parametrize("which", [("hare_tortoise",), ("swr",)])
def test_three_replicas_equal_three_nets_trained_alone(which):
    seeds = (0, 1, 2)
    net = mlp(replicas=3, seeds=seeds)
    opt = Adam(list(net.parameters()), lr=0.01)
    learner = Learner(list(net.parameters()), opt, make_methods(net, opt, [torch.Generator().manual_seed(10 + s)
                                                                           for s in seeds], which))
    train(net, learner, seeds, 30)
    for r, s in enumerate(seeds):
        alone = mlp(seeds=(s,))
        opt1 = Adam(list(alone.parameters()), lr=0.01)
        methods = make_methods(alone, opt1, [torch.Generator().manual_seed(10 + s)], which)
        train(alone, Learner(list(alone.parameters()), opt1, methods), (s,), 30)
        for p, q in zip(net.parameters(), alone.parameters()):
            assert torch.equal(p[r], q[0])
    if "swr" in which:
        assert learner.methods[0].reinitialised.min().item() > 0


def test_both_compose_with_cbp_for_a_few_hundred_steps():
    net = mlp(replicas=2, seeds=(0, 1))
    opt = Adam(list(net.parameters()), lr=0.01)
    methods = make_methods(net, opt, [torch.Generator().manual_seed(s) for s in (5, 6)],
                           ("cbp", "swr", "hare_tortoise"))
    learner = Learner(list(net.parameters()), opt, methods)
    train(net, learner, (0, 1), 300)
    cbp, swr, ht = methods
    assert cbp.replacements[0].min().item() > 0 and swr.reinitialised.min().item() > 0 and ht.resets > 0
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert all(math.isfinite(v) for v in learner.stats().values())


def test_checkpoint_round_trip_continues_as_without():
    def fresh():
        net = mlp(replicas=2, seeds=(0, 1))
        opt = Adam(list(net.parameters()), lr=0.01)
        gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
        methods = make_methods(net, opt, gens, ("cbp", "swr", "hare_tortoise"))
        return net, Learner(list(net.parameters()), opt, methods), gens

    net, learner, gens = fresh()
    train(net, learner, (0, 1), 20)
    saved = {"learner": learner.state_dict(), "gens": [g.get_state() for g in gens]}
    train(net, learner, (0, 1), 25, start=20)
    net2, learner2, gens2 = fresh()
    learner2.load_state_dict(saved["learner"])
    for g, state in zip(gens2, saved["gens"]):
        g.set_state(state)
    train(net2, learner2, (0, 1), 25, start=20)
    for p, q in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p, q)
    assert learner.stats() == learner2.stats()


@pytest.mark.parametrize("cls, option, value, message", [
    (HareTortoise, "ema", 1.0, r"hare_tortoise ema must be in \[0, 1\), got 1.0"),
    (HareTortoise, "reset_every", 0, "hare_tortoise reset_every must be >= 1, got 0"),
    (HareTortoise, "reset_on", "never", "hare_tortoise reset_on must be one of 'epoch'"),
    (SelectiveWeightReinit, "rate", 1.5, r"SWR rate must be in \[0, 1\], got 1.5"),
    (SelectiveWeightReinit, "every", 0, "SWR every must be >= 1, got 0"),
    (SelectiveWeightReinit, "utility", "random", "SWR utility must be one of 'gradient'"),
    (SelectiveWeightReinit, "selection", "all", "SWR selection must be one of 'proportional'"),
    (SelectiveWeightReinit, "reinit", "zero", "SWR reinit must be one of 'resample'"),
    (SelectiveWeightReinit, "utility_decay", 1.0, r"SWR utility_decay must be in \[0, 1\), got 1.0"),
])
def test_bad_options_are_refused_naming_the_option(cls, option, value, message):
    net = mlp()
    with pytest.raises(ValueError, match=f"^{message}"):
        build(cls, net, SGD(list(net.parameters()), lr=0.1), [None], **{option: value})
