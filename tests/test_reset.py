"""The reset family (core/methods/reset.py): which layers, when, the optimizer state, and injection."""

import copy
from pathlib import Path

import pytest
import torch

from rl_plasticity.core.builders import METHOD_DEFAULTS, build_learner
from rl_plasticity.core.convnet import ConvNet
from rl_plasticity.core.layers import replica_linear
from rl_plasticity.core.methods import ContinualBackprop, Reset
from rl_plasticity.core.networks import MLP
from rl_plasticity.core.optim import Adam
from rl_plasticity.core.resnet import ResNet18
from rl_plasticity.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def mlp(replicas=1, seed=0, sizes=(3, 4, 4, 2)):
    net = MLP(list(sizes), activation="relu", init="kaiming", replicas=replicas)
    net.reset_parameters([torch.Generator().manual_seed(seed + r) for r in range(replicas)])
    return net


def gens(n=1, seed=7):
    return [torch.Generator().manual_seed(seed + r) for r in range(n)]


def train(net, opt, steps=3, seed=1, methods=(), learner=None):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(net.replicas, 5, net.layers[0].in_features, generator=g)
        loss = net(x).square().sum()
        opt.step(list(torch.autograd.grad(loss, list(net.parameters()))))
        for m in methods:
            m.after_step(learner)


def snapshot(net):
    return [p.detach().clone() for p in net.parameters()]


def test_head_reset_redraws_only_the_head_and_gives_it_a_fresh_adam_state():
    net = mlp()
    opt = Adam(net.parameters(), lr=0.01)
    train(net, opt)
    before = snapshot(net)
    reset = Reset([net], net.groups, opt, gens(), what="head")
    reset.on_task_switch()
    head = net.layers[-1]
    expected = torch.empty(2, 4).uniform_(-head.bound, head.bound, generator=gens()[0])
    assert torch.equal(head.weight[0], expected) and torch.all(head.bias == 0)
    for p, old in list(zip(net.parameters(), before))[:-2]:
        assert torch.equal(p, old)  # the hidden layers are untouched
    i = len(before) - 2  # the head's weight: Adam state of a fresh parameter
    assert torch.all(opt.state["exp_avg"][i] == 0) and torch.all(opt.state["beta1_power"][i] == 1)
    assert torch.any(opt.state["exp_avg"][0] != 0)  # the first layer's state is kept
    # The head's next update equals a fresh Adam's on the same gradient.
    grad = torch.randn_like(head.weight)
    fresh = Adam([head.weight.detach().clone().requires_grad_()], lr=0.01)
    fresh.step([grad])
    grads = [torch.zeros_like(p) for p in net.parameters()]
    grads[i] = grad
    opt.step(grads)
    assert torch.allclose(head.weight, fresh.params[0], atol=0, rtol=0)
    assert reset.stats() == {"resets": 1.0}


def test_zero_init_zeroes_the_head_and_steps_schedule_counts_optimizer_steps():
    net = mlp()
    opt = Adam(net.parameters(), lr=0.01)
    reset = Reset([net], net.groups, opt, gens(), what="head", init="zero", when="steps", every=3)
    train(net, opt, steps=2, methods=[reset])
    assert reset.resets == 0 and torch.any(net.layers[-1].weight != 0)
    train(net, opt, steps=1, methods=[reset])
    assert reset.resets == 1 and torch.all(net.layers[-1].weight == 0) and torch.all(net.layers[-1].bias == 0)
    reset.on_task_switch()  # when=steps: task switches do nothing
    train(net, opt, steps=3, methods=[reset])
    assert reset.resets == 2


def test_last_layers_resets_the_last_k_and_cbp_forgets_their_units():
    net = mlp()
    opt = Adam(net.parameters(), lr=0.01)
    cbp = ContinualBackprop(net.groups, opt, gens(), replacement_rate=0.0, maturity_threshold=1)
    reset = Reset([net], net.groups, opt, gens(), what="last_layers", last_layers=2)
    learner = type("L", (), {"methods": [cbp, reset]})()
    train(net, opt, steps=4, methods=[cbp], learner=learner)
    assert all(torch.all(a == 4) for a in cbp.age)
    first = [p.detach().clone() for p in net.layers[0].parameters()]
    second = [p.detach().clone() for p in net.layers[1].parameters()]
    reset.apply(learner)
    assert all(torch.equal(p, q) for p, q in zip(net.layers[0].parameters(), first))
    assert not torch.equal(net.layers[1].weight, second[0])
    # Group 1's units are computed by layer 1 (reset): CBP starts them afresh; group 0's are untouched.
    assert torch.all(cbp.age[0] == 4) and torch.all(cbp.age[1] == 0) and torch.all(cbp.utility[1] == 0)


def test_network_reset_equals_a_fresh_network_with_fresh_optimizer_state():
    net = ResNet18(num_classes=5, width=2)
    net.reset_parameters(gens(seed=0))
    opt = Adam(net.parameters(), lr=0.01)
    x = torch.randn(4, 3, 32, 32)
    net.train()
    loss = net(x).square().sum()
    opt.step(list(torch.autograd.grad(loss, list(net.parameters()))))
    Reset([net], net.groups, opt, gens(seed=3), what="network").apply()
    fresh = ResNet18(num_classes=5, width=2)
    fresh.reset_parameters(gens(seed=3))
    for (name, a), b in zip(net.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name  # weights and batch-norm statistics alike
    assert all(torch.all(t == 0) for t in opt.state["exp_avg"])
    assert all(torch.all(t == 1) for t in opt.state["beta2_power"])


def test_injection_keeps_the_output_then_learns_with_a_fresh_head():
    net = mlp(replicas=2)
    opt = Adam(net.parameters(), lr=0.01)
    train(net, opt)
    x = torch.randn(2, 6, 3)
    before = net(x).detach()
    head = net.layers[-1]
    old_weight = head.weight.detach().clone()
    reset = Reset([net], net.groups, opt, gens(2), what="injection", last_layers=1)
    reset.apply()
    assert torch.allclose(net(x), before, atol=1e-6)  # h_old + h_new - h_new0 = h_old at injection
    assert not torch.equal(head.weight, old_weight) and head.frozen is not None
    assert all(not t.requires_grad for t in head.frozen)
    train(net, opt, steps=2)
    after_training = net(x).detach()
    reset.apply()  # a second injection adds to the frozen map and keeps the output again
    assert torch.allclose(net(x), after_training, atol=1e-6)

    # Checkpoint round trip: the frozen map travels in the method's state.
    saved_params, saved_reset = snapshot(net), copy.deepcopy(reset.state_dict())
    other = mlp(replicas=2, seed=5)
    with torch.no_grad():
        for p, q in zip(other.parameters(), saved_params):
            p.copy_(q)
    restored = Reset([other], other.groups, Adam(other.parameters(), lr=0.01), gens(2), what="injection",
                     last_layers=1)
    restored.load_state_dict(saved_reset)
    assert torch.equal(other(x), net(x)) and restored.resets == 2


@pytest.mark.parametrize("k", [1, 2])
def test_injection_replicas_are_independent(k):
    both = mlp(replicas=2)
    alone = [mlp(replicas=1, seed=r) for r in range(2)]
    Reset([both], both.groups, Adam(both.parameters(), lr=0.01), gens(2), what="injection", last_layers=k).apply()
    for r, net in enumerate(alone):
        Reset([net], net.groups, Adam(net.parameters(), lr=0.01), gens(1, seed=7 + r), what="injection",
              last_layers=k).apply()
        assert torch.equal(both.layers[-1].weight[r], net.layers[-1].weight[0])
        assert torch.equal(both.layers[-2].weight[r], net.layers[-2].weight[0])
        if k == 1:
            assert torch.equal(both.layers[-1].frozen[0][r], net.layers[-1].frozen[0][0])
        else:
            for (_, _, a), (_, _, b) in zip(both.frozen_heads, net.frozen_heads):
                assert all(torch.equal(t[r], u[0]) for t, u in zip(a, b))


def test_reset_from_config_through_build_learner_and_the_task_switch_hook():
    net = mlp()
    cfg = copy.deepcopy(METHOD_DEFAULTS)
    cfg["reset"].update(enabled=True, what="head", init="zero")
    learner = build_learner(net.parameters(), net.groups, cfg, gens(), nets=[net])
    assert [m.name for m in learner.methods] == ["reset"]
    learner.task_switch()
    assert torch.all(net.layers[-1].weight == 0) and learner.stats() == {"reset/resets": 1.0}


@pytest.mark.parametrize("net, options, message", [
    (lambda: ResNet18(num_classes=5, width=2), {"what": "last_layers"}, "whose layers form a chain"),
    (lambda: mlp(), {"what": "last_layers", "last_layers": 4}, "exceeds the 3 layers"),
    (lambda: mlp(), {"what": "injection", "last_layers": 4}, "exceeds the 3 layers"),
    (lambda: ResNet18(num_classes=5, width=2), {"what": "injection"},
     (r"what=injection with last_layers=2 needs a net whose last layers form a chain.*ResNet18 is not one \(its "
      r"layers branch\): use last_layers=1")),
    (lambda: ConvNet(2, channels=(2, 2, 2), hidden=(4, 4)), {"what": "injection", "last_layers": 4},
     (r"reset last_layers \(4\) exceeds the 3 layers of ConvNet that what=injection can copy into frozen heads "
      r"\(the fully connected layers; the convs are the encoder\); use last_layers <= 3")),
    (lambda: mlp(), {"what": "network", "init": "zero"}, "init=fresh"),
    (lambda: mlp(), {"what": "sideways"}, "reset what must be one of"),
    (lambda: mlp(), {"every": 0}, "reset every must be >= 1"),
])
def test_bad_options_are_refused_with_a_clear_message(net, options, message):
    net = net()
    with pytest.raises(ValueError, match=message):
        Reset([net], net.groups, Adam(net.parameters(), lr=0.01), gens(), **options)


def test_reset_needs_the_networks():
    net = mlp()
    with pytest.raises(ValueError, match="nets="):
        Reset([], net.groups, Adam(net.parameters(), lr=0.01), gens())


def test_convnet_last_layers_resets_its_fc_layers():
    net = ConvNet(2, channels=(2, 2, 2), hidden=(4, 4))
    net.reset_parameters(gens(seed=0))
    convs = [p.detach().clone() for p in net.convs.parameters()]
    Reset([net], net.groups, Adam(net.parameters(), lr=0.01), gens(), what="last_layers", last_layers=2).apply()
    assert all(torch.equal(p, q) for p, q in zip(net.convs.parameters(), convs))


def test_regression_signals_each_bit_flip_to_the_methods_only_when_asked():
    from rl_plasticity.config import read_yaml
    from rl_plasticity.problems import resolve_config
    from rl_plasticity.problems.regression import RegressionRun

    small = ["stream.change_every=500", "bin_size=500", "examples=1500", "log.metrics_every=500",
             "log.probe_size=100", "log.checkpoint_every=500", "reset.enabled=true"]
    cfg, _ = resolve_config(read_yaml(ROOT / "configs/regression/bp.yaml"), [*small, "stream.signal_task_switch=true"])
    run = RegressionRun(cfg, [0, 1])
    while not run.done():
        run.advance(_NoLogs())
    assert run.learner.methods[-1].resets == 3
    # Unsignalled, a reset at task switches would never act: the config is refused, naming the key to set.
    with pytest.raises(UserError, match=r"'reset' acts at each task switch, which regression never signals; "
                                        r"set stream.signal_task_switch: true"):
        resolve_config(read_yaml(ROOT / "configs/regression/bp.yaml"), small)
    # A reset every N steps needs no signal.
    resolve_config(read_yaml(ROOT / "configs/regression/bp.yaml"), [*small, "reset.when=steps"])


class _NoLogs:
    def per_seed(self, *a):
        pass

    def scalars(self, *a):
        pass


def test_ppo_acts_through_the_injected_head():
    from rl_plasticity.agents.ppo import PPOAgent, PPOSettings

    cfg = copy.deepcopy(METHOD_DEFAULTS)
    cfg["optimizer"].update(name="adam", lr=1e-3)
    cfg["reset"].update(enabled=True, what="injection", last_layers=1)  # the numpy path's frozen linear map
    agent = PPOAgent(5, 3, [8, 8], "relu", "lecun", 0.0, PPOSettings(), cfg, torch.Generator().manual_seed(0),
                     gens(), torch.Generator().manual_seed(1))
    obs = torch.randn(5, generator=torch.Generator().manual_seed(2)).numpy()
    before = agent.policy_mean(obs)
    agent.learner.task_switch()
    assert agent.actor.layers[-1].frozen is not None and agent.critic.layers[-1].frozen is not None
    with torch.no_grad():
        agent.actor.layers[-1].weight.add_(0.1)  # as if the fresh head had learned
        torch_mean = agent.actor(torch.from_numpy(obs).unsqueeze(0))[0].numpy()
    assert abs(torch_mean - before).max() > 1e-3
    assert abs(agent.policy_mean(obs) - torch_mean).max() < 1e-5


@pytest.mark.parametrize("signal, resets", [(False, 0), (True, 2)])
def test_ppo_tells_the_methods_of_a_physics_change_only_when_asked(signal, resets):
    # (Unsignalled, `reset.when: task_switch` is refused by check(); validate alone lets it through here.)
    from rl_plasticity.config import validate
    from rl_plasticity.problems.mujoco_ppo import DEFAULTS, PPORun

    cfg = validate({"env": {"change_every": 20, "max_episode_steps": 10, "signal_task_switch": signal},
                    "net": {"hidden": [8, 8]}, "ppo": {"rollout_steps": 16, "minibatch_size": 8, "epochs": 1},
                    "reset": {"enabled": True, "what": "injection"}}, DEFAULTS)
    run = PPORun(cfg, seed=0)
    phases = []
    for _ in range(3):  # 48 steps: physics changes at 20 and 40, inside the 2nd and 3rd rollouts
        run.train_update()
        phases.append(run.phase())
    assert phases == [0, 1, 2]
    assert run.agent.learner.methods[-1].resets == resets


def test_last_layers_reset_includes_the_reset_units_layer_norm():
    net = MLP([3, 4, 4, 2], activation="relu", init="kaiming", norm="layer")
    net.reset_parameters(gens(seed=0))
    opt = Adam(net.parameters(), lr=0.01)
    train(net, opt, steps=3)
    norms = [g.norm for g in net.groups]
    assert all(torch.any(n.weight != 1) for n in norms)
    Reset([net], net.groups, opt, gens(), what="last_layers", last_layers=2).apply()
    assert torch.any(norms[0].weight != 1)  # layer 0 (and its norm) untouched
    assert torch.all(norms[1].weight == 1) and torch.all(norms[1].bias == 0)
    i = [id(p) for p in net.parameters()].index(id(norms[1].weight))
    assert torch.all(opt.state["exp_avg"][i] == 0)


def test_a_hare_reset_keeps_what_another_method_just_reinitialised():
    net = mlp()
    cfg = copy.deepcopy(METHOD_DEFAULTS)
    cfg["reset"].update(enabled=True, what="head")
    cfg["hare_tortoise"].update(enabled=True, reset_on="task_switch", ema=0.5)
    learner = build_learner(net.parameters(), net.groups, cfg, gens(), nets=[net])
    assert [m.name for m in learner.methods] == ["reset", "hare_tortoise"]
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        learner.update(net(torch.randn(5, 3, generator=g)).square().sum())
    old_head = net.layers[-1].weight.detach().clone()
    learner.task_switch()  # the head is redrawn, then the hare returns to the tortoise
    head = net.layers[-1].weight
    expected = torch.empty(2, 4).uniform_(-net.layers[-1].bound, net.layers[-1].bound, generator=gens()[0])
    assert torch.equal(head[0], expected) and not torch.equal(head, old_head)


def test_redo_tells_cbp_which_units_it_reinitialised():
    from rl_plasticity.core.methods import ReDo
    from rl_plasticity.core.learner import Learner

    net = mlp()
    opt = Adam(net.parameters(), lr=0.01)
    cbp = ContinualBackprop(net.groups, opt, gens(), replacement_rate=0.0, maturity_threshold=1000)
    redo = ReDo(net.groups, opt, gens(), threshold=10.0, every=5)  # every unit scores below 10: all reset
    learner = Learner(net.parameters(), opt, [cbp, redo])
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        learner.update(net(torch.randn(5, 3, generator=g)).square().sum())
    assert all(torch.all(a == 4) for a in cbp.age)
    learner.update(net(torch.randn(5, 3, generator=g)).square().sum())  # step 5: ReDo resets every unit
    assert all(torch.all(a == 0) for a in cbp.age) and all(torch.all(u == 0) for u in cbp.utility)


def test_units_replaced_after_an_injection_reach_the_output_through_no_frozen_weight():
    net = mlp(replicas=2)
    opt = Adam(net.parameters(), lr=0.01)
    train(net, opt)
    Reset([net], net.groups, opt, gens(2), what="injection", last_layers=1).apply()
    group, head = net.groups[-1], net.layers[-1]
    x = torch.randn(2, 6, 3)
    net(x)
    # The utility sees the weight the output really reads the units with: trained head + frozen map.
    assert torch.allclose(group.mean_abs_outgoing(), (head.weight + head.frozen[0]).abs().transpose(1, 2).mean(2))
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 1] = mask[1, 3] = True
    before = net(x).detach()
    mean = group.batch_mean(group.activation)
    group.add_to_outgoing_bias(mean * mask)
    group.reinit(mask, gens(2))
    assert torch.all(head.frozen[0].transpose(1, 2)[mask] == 0) and torch.all(head.weight.transpose(1, 2)[mask] == 0)
    with torch.no_grad():  # whatever the new units now compute, the output does not see it yet
        net.layers[-2].weight[mask] *= 3
    after = net(x).detach()
    # The replaced units' mean contribution moved into the bias: the output is unchanged on average.
    assert torch.allclose(after.mean(1), before.mean(1), atol=1e-5)


def test_problems_refuse_methods_configured_to_act_at_points_they_never_signal(tmp_path):
    from rl_plasticity.cli import main

    bp = str(ROOT / "configs/regression/bp.yaml")
    for sets, message in ((["hare_tortoise.enabled=true"], "'hare_tortoise' acts at the end of each epoch"),
                          (["hare_tortoise.enabled=true", "hare_tortoise.reset_on=task_switch"],
                           "set stream.signal_task_switch: true")):
        args = ["train", bp, "--out", str(tmp_path / "r")] + [x for s in sets for x in ("--set", s)]
        with pytest.raises(UserError, match=message):
            resolve(bp, sets)
        assert main(args) == 2 and not (tmp_path / "r").exists()
    # A combination a method refuses while it is built is a one-line config error too, not a traceback.
    ppo = str(ROOT / "configs/friction_ant/std.yaml")
    args = ["train", ppo, "--out", str(tmp_path / "p"), "--set", "reset.enabled=true", "--set", "reset.when=steps",
            "--set", "reset.what=network", "--set", "reset.init=zero", "--set", "total_steps=64"]
    assert main(args) == 2 and not (tmp_path / "p").exists()


def resolve(path, sets):
    from rl_plasticity.config import read_yaml
    from rl_plasticity.problems import resolve_config

    return resolve_config(read_yaml(path), sets)


# --------------------------------------------------------------------------- injection into the last k >= 2 layers


def taps(net):
    return [g.activation.clone() for g in net.groups]


@pytest.mark.parametrize("activation, norm", [("relu", "none"), ("relu", "layer"), ("crelu", "none"),
                                              ("crelu", "layer")])
@pytest.mark.parametrize("replicas", [2, 1])
def test_injection_into_two_layers_keeps_the_output_at_each_injection(activation, norm, replicas):
    net = MLP([3, 4, 5, 2], activation=activation, init="kaiming", replicas=replicas, norm=norm)
    net.reset_parameters(gens(replicas, seed=0))
    opt = Adam(net.parameters(), lr=0.01)
    train(net, opt)
    # R = 1 takes the single-replica [B, in] path.
    x = torch.randn(replicas, 6, 3) if replicas > 1 else torch.randn(6, 3)
    trunk = [p.detach().clone() for p in net.layers[0].parameters()]
    head = [p.detach().clone() for p in net.head_parameters(1)]
    reset = Reset([net], net.groups, opt, gens(replicas), what="injection")  # last_layers: 2, the default
    for injection in (1, 2):
        before = net(x).detach()
        reset.apply()
        assert torch.allclose(net(x), before, atol=1e-6)  # h_old + h_new - h_new0 = h_old at every injection
        assert len(net.frozen_heads) == 2 * injection
        if injection == 1:
            assert all(torch.equal(p, q) for p, q in zip(net.layers[0].parameters(), trunk))
            assert not any(torch.equal(p, q) for p, q in zip(net.head_parameters(1), head))  # norms: gain 1, bias 0
        assert [(sign, start) for sign, start, _ in net.frozen_heads] == [(1.0, 1), (-1.0, 1)] * injection
        train(net, opt, steps=2)
    assert all(not t.requires_grad for _, _, tensors in net.frozen_heads for t in tensors)
    # The frozen heads write no activation tap: the taps are the live network's.
    net(x)
    with_heads = taps(net)
    heads = net.frozen_heads
    net.set_frozen_heads([])
    net(x)
    assert all(torch.equal(a, b) for a, b in zip(with_heads, taps(net)))
    net.set_frozen_heads(heads)


def _lin(x, w, b):
    return torch.einsum("rbi,roi->rbo", x, w) + b.unsqueeze(1)


def _head(z, w1, b1, w2, b2):
    return _lin(torch.relu(_lin(z, w1, b1)), w2, b2)


def _three_heads(x, live, old, new0):
    """h_old(z) + h_new(z) - h_new0(z), z = relu(W0 x + b0): Eq. (1) with the encoder the first layer."""
    w0, b0 = live[:2]
    z = torch.relu(_lin(x, w0, b0))
    return _head(z, *old) + _head(z, *live[2:]) - _head(z, *new0)


def _assert_sgd_step_follows_the_hand_formula(net, opt, x, live, by_hand, old, new0, loss):
    """net(x) equals `by_hand` (the formula on `live`, copies of the net's parameters), and one SGD step (lr 0.05)
    of `loss` moves every parameter where autograd on the formula says; the frozen snapshots stay."""
    assert torch.allclose(net(x), by_hand, atol=1e-6)
    grads = torch.autograd.grad(loss(by_hand), live)
    before = [p.detach().clone() for p in net.parameters()]
    opt.step(list(torch.autograd.grad(loss(net(x)), list(net.parameters()))))
    for p, q, grad in zip(net.parameters(), live, grads):
        assert torch.allclose(p, q - 0.05 * grad, atol=1e-6)
    assert all(not torch.equal(p, q) for p, q in zip(net.parameters(), before))  # encoder and live head both learn
    (_, _, old_now), (_, _, new0_now) = net.frozen_heads
    assert all(torch.equal(a, b) for a, b in zip(old + new0, old_now + new0_now))  # the snapshots do not


def test_injected_forward_and_an_sgd_step_equal_the_hand_written_three_head_formula():
    from rl_plasticity.core.optim import SGD

    net = mlp(replicas=2, sizes=(3, 4, 5, 2))
    opt = SGD(net.parameters(), lr=0.05)
    train(net, opt)
    Reset([net], net.groups, opt, gens(2), what="injection", last_layers=2).apply()
    (_, _, old), (_, _, new0) = net.frozen_heads
    old = [t.clone() for t in old]
    new0 = [t.clone() for t in new0]
    train(net, opt, steps=3, seed=4)  # the new head moves away from its init
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(2, 6, 3, generator=g), torch.randn(2, 6, 2, generator=g)
    live = [p.detach().clone().requires_grad_() for p in net.parameters()]  # w0, b0, w1, b1, w2, b2
    _assert_sgd_step_follows_the_hand_formula(net, opt, x, live, _three_heads(x, live, old, new0), old, new0,
                                              lambda out: (out - y).square().sum())


def _sgd_stream(k, steps=300, every=50):
    """A net trained by plain SGD on a fixed target, injected into its last k layers every `every` steps (k=0:
    never); returns its outputs on a probe."""
    from rl_plasticity.core.optim import SGD

    net = mlp(replicas=2, sizes=(4, 8, 8, 1))
    opt = SGD(net.parameters(), lr=0.02)
    methods = [Reset([net], net.groups, opt, gens(2), what="injection", last_layers=k, when="steps",
                     every=every)] if k else []
    g = torch.Generator().manual_seed(3)
    target = torch.randn(4, 1, generator=g)
    for _ in range(steps):
        x = torch.randn(2, 8, 4, generator=g)
        loss = (net(x) - torch.sin(x @ target)).square().sum()
        opt.step(list(torch.autograd.grad(loss, list(net.parameters()))))
        for m in methods:
            m.after_step()
    assert not methods or methods[0].resets == steps // every
    return net(torch.randn(2, 32, 4, generator=torch.Generator().manual_seed(5))).detach()


def test_injection_into_the_output_layer_alone_changes_nothing_under_plain_sgd_but_two_layers_do():
    plain = _sgd_stream(0)
    # k = 1: W_new + (W_old - W_new0) is the only thing the output sees, and its gradient is W_new's.
    assert torch.allclose(_sgd_stream(1), plain, atol=2e-6)
    assert (_sgd_stream(2) - plain).abs().max() > 1e-2


def test_injection_into_two_layers_gives_the_head_a_fresh_adam_state_and_keeps_the_trunks():
    net = MLP([3, 4, 4, 2], activation="relu", init="kaiming", norm="layer")
    net.reset_parameters(gens(seed=0))
    opt = Adam(net.parameters(), lr=0.01)
    train(net, opt, steps=3)
    before = {k: [t.clone() for t in v] for k, v in opt.state.items()}
    Reset([net], net.groups, opt, gens(), what="injection", last_layers=2).apply()
    index = {id(p): i for i, p in enumerate(net.parameters())}
    head = {index[id(p)] for p in net.head_parameters(1)}  # layers 1 and 2, and layer 1's norm
    assert len(head) == 6 and index[id(net.norms[1].weight)] in head and index[id(net.norms[0].weight)] not in head
    fresh = Adam(net.parameters(), lr=0.01)
    for name, tensors in opt.state.items():
        for i, t in enumerate(tensors):
            assert torch.equal(t, fresh.state[name][i] if i in head else before[name][i]), (name, i)
    assert [opt.max_power[i] == 1.0 for i in range(len(opt.params))] == [i in head for i in range(len(opt.params))]


def test_injection_checkpoint_round_trip_gives_identical_outputs_and_next_steps():
    import io

    def build(seed):
        net = MLP([3, 4, 4, 2], activation="relu", init="kaiming", replicas=2, norm="layer")
        net.reset_parameters(gens(2, seed=seed))
        cfg = copy.deepcopy(METHOD_DEFAULTS)
        cfg["optimizer"].update(name="adam", lr=0.01)
        cfg["reset"].update(enabled=True, what="injection", when="steps", every=3)
        generators = gens(2)
        return net, build_learner(net.parameters(), net.groups, cfg, generators, nets=[net]), generators

    def steps(net, learner, n, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(n):
            learner.update(net(torch.randn(2, 5, 3, generator=g)).square().sum())

    net, learner, generators = build(0)
    steps(net, learner, 7, seed=1)  # injections after steps 3 and 6
    assert len(net.frozen_heads) == 4
    buffer = io.BytesIO()
    torch.save(learner.state_dict(), buffer)
    buffer.seek(0)
    other, restored, other_generators = build(5)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for g, h in zip(generators, other_generators):  # the problems save the methods' generators themselves
        h.set_state(g.get_state())
    x = torch.randn(2, 6, 3)
    assert torch.equal(other(x), net(x)) and restored.methods[0].resets == 2
    assert [(stack.start, stack.heads) for stack in other.head_stacks] == [(1, 4)]  # the stack rebuilt on load
    assert [w.data_ptr() for w, _ in other.layers[1].frozen_readers] == [
        other.head_stacks[0].tensors[0][h].data_ptr() for h in range(4)]
    steps(net, learner, 4, seed=2)  # a third injection after step 9
    steps(other, restored, 4, seed=2)
    assert len(other.frozen_heads) == 6 and torch.equal(other(x), net(x))
    assert all(torch.equal(p, q) for p, q in zip(other.parameters(), net.parameters()))

    # A checkpoint of the output-layer injection written before frozen heads existed (no "heads") still loads.
    k1 = mlp(replicas=2)
    reset = Reset([k1], k1.groups, Adam(k1.parameters(), lr=0.01), gens(2), what="injection", last_layers=1)
    reset.apply()
    saved = reset.state_dict()
    del saved["heads"]
    copy_of_k1 = copy.deepcopy(k1)
    copy_of_k1.layers[-1].frozen = None
    Reset([copy_of_k1], copy_of_k1.groups, Adam(copy_of_k1.parameters(), lr=0.01), gens(2), what="injection",
          last_layers=1).load_state_dict(saved)
    assert torch.equal(copy_of_k1(x), k1(x))


def test_encoder_units_replaced_after_an_injection_reach_the_output_through_no_frozen_head():
    net = mlp(replicas=2)  # 3-4-4-2: the head is layers 1 and 2, group 0 the encoder's last units
    opt = Adam(net.parameters(), lr=0.01)
    train(net, opt)
    Reset([net], net.groups, opt, gens(2), what="injection", last_layers=2).apply()
    group = net.groups[0]
    readers = net.layers[1].frozen_readers
    assert [w.data_ptr() for w, _ in readers] == [t[0].data_ptr() for _, _, t in net.frozen_heads]
    x = torch.randn(2, 6, 3)
    net(x)
    z = group.activation

    def first_layers(z):  # each frozen head's first pre-activation, and the live one's
        return [replica_linear(z, w, b) for w, b in [*readers, (net.layers[1].weight, net.layers[1].bias)]]

    before = [h.mean(1) for h in first_layers(z)]
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 1] = mask[1, 3] = True
    stack = net.head_stacks[0]  # the readers are views of the stack: what the forward computes
    assert [w.data_ptr() for w, _ in readers] == [stack.tensors[0][h].data_ptr() for h in range(stack.heads)]
    biases = stack.tensors[1].clone()
    group.add_to_outgoing_bias(group.batch_mean(z) * mask)
    group.reinit(mask, gens(2))
    assert all(torch.all(w.transpose(1, 2)[mask] == 0) for w, _ in readers)
    assert all(torch.all(stack.tensors[0][h].transpose(1, 2)[mask] == 0) for h in range(stack.heads))
    assert not torch.equal(stack.tensors[1], biases)  # the bias transfer reached the stack too
    assert torch.allclose(net(x), loop_reference(net, x), atol=1e-6)
    out = net(x).detach()
    # The units' mean input to every first layer moved into its bias ...
    assert all(torch.allclose(a, b.mean(1), atol=1e-5) for a, b in zip(before, first_layers(z * ~mask.unsqueeze(1))))
    with torch.no_grad():  # ... and whatever the new units now compute, no head sees it yet
        net.layers[0].weight[mask] *= 3
    assert torch.equal(net(x), out)


def loop_reference(net, x):
    """The frozen heads as they were computed before they were stacked, kept here as the reference: the live
    net's output plus (or minus) each head alone, layer by layer (`net.frozen_layer`), on the input of the layer
    it starts at."""
    inputs, live = {}, {}
    hooks = [net.layers[s].register_forward_pre_hook(lambda m, args, s=s: inputs.setdefault(s, args[0]))
             for s in net.frozen_starts()]
    hooks.append(net.layers[-1].register_forward_hook(lambda m, args, out: live.setdefault("out", out)))
    net(x)
    for hook in hooks:
        hook.remove()
    out = live["out"]
    for sign, start, tensors in net.frozen_heads:
        z, at = inputs[start], 0
        for i in range(start, len(net.layers)):
            n = len(net.layer_parameters(i))
            z = net.frozen_layer(i, z, tensors[at:at + n])
            at += n
        out = out + z if sign > 0 else out - z
    return out


def _batched_equals_loop(net, x, y):
    """The stacked heads' output and every parameter's gradient equal the loop's."""
    def grads(out):
        return torch.autograd.grad((out - y).square().sum(), list(net.parameters()))

    batched, reference = net(x), loop_reference(net, x)
    assert torch.allclose(batched, reference, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads(batched), grads(reference)))


@pytest.mark.parametrize("activation, norm", [("relu", "none"), ("relu", "layer"), ("crelu", "none"),
                                              ("crelu", "layer")])
@pytest.mark.parametrize("replicas", [2, 1])
def test_stacked_frozen_heads_equal_the_loop_over_heads_with_one_stack_per_start(activation, norm, replicas):
    net = MLP([3, 4, 5, 6, 2], activation=activation, init="kaiming", replicas=replicas, norm=norm)
    net.reset_parameters(gens(replicas, seed=0))
    opt = Adam(net.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(replicas, 6, 3, generator=g) if replicas > 1 else torch.randn(6, 3, generator=g)
    y = torch.randn(*x.shape[:-1], 2, generator=g)
    # Two injections into the last 3 layers, then one into the last 2 (a run resumed with fewer last layers):
    # heads from layers 1 and 2, two stacks.
    for k in (3, 3, 2):
        train(net, opt, steps=2, seed=k)
        Reset([net], net.groups, opt, gens(replicas), what="injection", last_layers=k).apply()
        train(net, opt, steps=2, seed=k + 10)  # the live head moves away from the fresh one
        _batched_equals_loop(net, x, y)
    assert [(stack.start, stack.heads) for stack in net.head_stacks] == [(1, 4), (2, 2)]
    assert [s for s, _, _ in net.frozen_heads] == [1.0, -1.0] * 3  # the order they were added in, kept
    # Every head's tensors are slices of its stack, as are the first layers' readers.
    for sign, start, tensors in net.frozen_heads:
        stack = next(st for st in net.head_stacks if st.start == start)
        assert all(t._base is u or t._base is u._base for t, u in zip(tensors, stack.tensors))
    assert len(net.layers[1].frozen_readers) == 4 and len(net.layers[2].frozen_readers) == 2
    # The checkpoint keeps one dict per head, in that order, and rebuilds the same stacks.
    state = net.frozen_heads_state()
    other = MLP([3, 4, 5, 6, 2], activation=activation, init="kaiming", replicas=replicas, norm=norm)
    with torch.no_grad():
        for p, q in zip(other.parameters(), net.parameters()):
            p.copy_(q)
    other.load_frozen_heads_state(state)
    assert [(h["sign"], h["start"]) for h in state] == [(s, st) for s, st, _ in net.frozen_heads]
    assert torch.equal(other(x), net(x))


def test_stacked_frozen_heads_are_one_batched_pass_per_layer_whatever_their_number():
    from torch.profiler import ProfilerActivity, profile

    def matmuls(injections):
        net = mlp(replicas=3, sizes=(4, 6, 6, 2))
        reset = Reset([net], net.groups, Adam(net.parameters(), lr=0.01), gens(3), what="injection")
        for _ in range(injections):
            reset.apply()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            net(torch.randn(3, 5, 4))
        return sum(e.count for e in prof.key_averages() if e.key in ("aten::baddbmm", "aten::bmm", "aten::mm"))

    assert matmuls(1) == matmuls(6) == 3 + 2 + 1  # the live net's 3 layers, the stack's 2, the signed sum


def test_ppo_acts_through_the_frozen_heads_of_an_injection_into_two_layers():
    from rl_plasticity.agents.ppo import PPOAgent, PPOSettings

    cfg = copy.deepcopy(METHOD_DEFAULTS)
    cfg["optimizer"].update(name="adam", lr=1e-3)
    cfg["reset"].update(enabled=True, what="injection")  # last_layers: 2
    agent = PPOAgent(5, 3, [8, 8], "relu", "lecun", 0.0, PPOSettings(), cfg, torch.Generator().manual_seed(0),
                     gens(), torch.Generator().manual_seed(1))
    obs = torch.randn(5, generator=torch.Generator().manual_seed(2)).numpy()
    before = agent.policy_mean(obs)
    agent.learner.task_switch()
    assert len(agent.actor.frozen_heads) == 2 and len(agent.critic.frozen_heads) == 2
    assert abs(agent.policy_mean(obs) - before).max() < 1e-5
    with torch.no_grad():
        for layer in agent.actor.layers[-2:]:
            layer.weight.add_(0.1)  # as if the fresh head had learned
        torch_mean = agent.actor(torch.from_numpy(obs).unsqueeze(0))[0].numpy()
    assert abs(torch_mean - before).max() > 1e-3
    assert abs(agent.policy_mean(obs) - torch_mean).max() < 1e-6


def test_a_saved_policy_of_an_injected_actor_acts_through_its_frozen_heads(tmp_path):
    from rl_plasticity.cli import main
    from rl_plasticity.evaluate.saved_policy import load_policy
    from rl_plasticity.run.checkpoint import load_checkpoint

    tiny = ["total_steps=256", "env.change_every=100", "env.max_episode_steps=40", "net.hidden=[16,16]",
            "ppo.rollout_steps=128", "ppo.minibatch_size=64", "ppo.epochs=1", "log.checkpoint_every=128",
            "log.metrics_every=256", "log.probe_size=32"]
    out = tmp_path / "run"
    args = ["train", str(ROOT / "configs/friction_ant/injection.yaml"), "--out", str(out), "--seed", "0"]
    assert main(args + [x for s in tiny for x in ("--set", s)]) == 0
    saved = load_policy(out)
    actor = saved.policy.mean.__self__.actor
    reset = load_checkpoint(saved.checkpoint)["agent"]["learner"]["methods"]["reset"]
    heads = reset["heads"][0]  # the actor's
    assert reset["resets"] >= 1 and len(heads) == len(actor.frozen_heads) == 2 * reset["resets"]
    assert all(torch.equal(t, u) for h, (_, _, tensors) in zip(heads, actor.frozen_heads)
               for t, u in zip(h["tensors"], tensors))
    obs = torch.randn(actor.layers[0].in_features, generator=torch.Generator().manual_seed(0))
    obs[actor.layers[0].zero_inputs_from:] = 0  # the official observation's padding, zero in every real one
    with torch.no_grad():
        with_heads = actor(obs.unsqueeze(0))[0].numpy()
        kept = actor.frozen_heads
        actor.set_frozen_heads([])
        live_only = actor(obs.unsqueeze(0))[0].numpy()
        actor.set_frozen_heads(kept)
    assert abs(with_heads - live_only).max() > 1e-4
    assert abs(saved.policy.mean(obs.numpy()) - with_heads).max() < 1e-6


def test_an_output_layer_injection_becomes_part_of_the_old_head_at_a_two_layer_injection():
    # E.g. a run whose checkpoint holds an output-layer injection, resumed with last_layers: 2.
    net = mlp(replicas=2)
    opt = Adam(net.parameters(), lr=0.01)
    train(net, opt)
    Reset([net], net.groups, opt, gens(2), what="injection", last_layers=1).apply()
    train(net, opt, steps=2)
    x = torch.randn(2, 6, 3)
    before = net(x).detach()
    Reset([net], net.groups, opt, gens(2, seed=11), what="injection", last_layers=2).apply()
    assert net.layers[-1].frozen is None and len(net.frozen_heads) == 2
    assert torch.allclose(net(x), before, atol=1e-6)


# --------------------------------------------------------------------------- injection into the ConvNet's fc head
# conv 2-3-4 on 32x32x3 images (4 channels x 2 x 2 = 16 flattened features) -> fc 5 -> fc 6 -> 2: layers 0-2 are
# the convs (the encoder), layers 3-5 the fc layers a frozen head may copy (k <= 3).

one_thread = pytest.mark.usefixtures("one_thread")  # tiny convs: extra threads only add overhead


def convnet(seed=0):
    net = ConvNet(2, channels=(2, 3, 4), hidden=(5, 6), init="pytorch_default")
    net.reset_parameters(gens(seed=seed))
    return net


def images(n=6, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 2, (n,), generator=g)


def train_conv(net, opt, steps=3, seed=1, methods=()):
    import torch.nn.functional as F

    for step in range(steps):
        x, y = images(4, seed=100 * seed + step)
        opt.step(list(torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))))
        for m in methods:
            m.after_step()


@one_thread
@pytest.mark.parametrize("init, per_injection", [("fresh", 2), ("zero", 1)])
@pytest.mark.parametrize("k", [2, 3])
def test_convnet_injection_into_its_fc_head_keeps_the_output_at_each_injection(k, init, per_injection):
    net = convnet()
    opt = Adam(net.parameters(), lr=0.01)
    train_conv(net, opt)
    x, _ = images()
    start = 6 - k
    encoder = [p.detach().clone() for layer in net.layers[:start] for p in layer.parameters()]
    head = [p.detach().clone() for p in net.head_parameters(start)]
    reset = Reset([net], net.groups, opt, gens(), what="injection", last_layers=k, init=init)
    for injection in (1, 2):
        before = net(x).detach()
        reset.apply()
        assert torch.allclose(net(x), before, atol=1e-6)  # h_old + h_new - h_new0 = h_old at every injection
        assert len(net.frozen_heads) == per_injection * injection
        assert {s for _, s, _ in net.frozen_heads} == {start}
        assert len(net.layers[start].frozen_readers) == per_injection * injection
        if injection == 1:
            now = [p for layer in net.layers[:start] for p in layer.parameters()]
            assert all(torch.equal(p, q) for p, q in zip(now, encoder))  # the encoder, convs included, is kept
            assert not any(torch.equal(p, q) for p, q in zip(net.head_parameters(start), head))
            if init == "zero":  # the official zero head as output layer; the hidden layers are drawn fresh
                assert torch.all(net.head.weight == 0) and torch.all(net.head.bias == 0)
                assert all(torch.all(fc.weight != 0) for fc in net.fcs[start - 3:-1])
        train_conv(net, opt, steps=2, seed=injection + 1)
    assert all(not t.requires_grad for _, _, tensors in net.frozen_heads for t in tensors)
    net(x)
    with_heads = taps(net)  # the frozen heads write no activation tap
    heads = net.frozen_heads
    net.set_frozen_heads([])
    net(x)
    assert all(torch.equal(a, b) for a, b in zip(with_heads, taps(net)))
    net.set_frozen_heads(heads)


def _chain(z, tensors):
    """Linear + ReLU layers and a linear last one on z [B, in], from (w [1, out, in], b [1, out]) pairs."""
    pairs = list(zip(tensors[::2], tensors[1::2]))
    for w, b in pairs[:-1]:
        z = torch.relu(z @ w[0].T + b[0])
    w, b = pairs[-1]
    return z @ w[0].T + b[0]


@one_thread
@pytest.mark.parametrize("k", [2, 3])
def test_convnet_injected_forward_and_an_sgd_step_equal_the_hand_written_three_head_formula(k):
    import torch.nn.functional as F

    from rl_plasticity.core.optim import SGD

    net = convnet()
    opt = SGD(net.parameters(), lr=0.05)
    train_conv(net, opt)
    Reset([net], net.groups, opt, gens(), what="injection", last_layers=k).apply()
    (_, _, old), (_, _, new0) = net.frozen_heads
    old, new0 = [t.clone() for t in old], [t.clone() for t in new0]
    train_conv(net, opt, steps=3, seed=4)  # the new head moves away from its init
    x, y = images(5, seed=9)
    live = [p.detach().clone().requires_grad_() for p in net.parameters()]  # 3 convs, then 3 fcs: w, b each
    z = x
    for w, b in zip(live[0:6:2], live[1:6:2]):  # phi(x): conv, ReLU, 2x2 max-pool; flatten ...
        z = F.max_pool2d(torch.relu(F.conv2d(z, w[0], b[0])), 2)
    z = z.flatten(1)
    fc_encoder, fc_head = live[6:6 + 2 * (3 - k)], live[6 + 2 * (3 - k):]
    for w, b in zip(fc_encoder[::2], fc_encoder[1::2]):  # ... and the fc layers before the head
        z = torch.relu(z @ w[0].T + b[0])
    by_hand = _chain(z, old) + _chain(z, fc_head) - _chain(z, new0)  # Eq. (1)
    _assert_sgd_step_follows_the_hand_formula(net, opt, x, live, by_hand, old, new0,
                                              lambda out: F.cross_entropy(out, y))


def _conv_sgd_stream(k, steps=40, every=10):
    """A ConvNet trained by plain SGD, injected into its last k layers every `every` steps (k=0: never); returns
    its outputs on a probe."""
    from rl_plasticity.core.optim import SGD

    net = convnet()
    opt = SGD(net.parameters(), lr=0.05)
    methods = [Reset([net], net.groups, opt, gens(), what="injection", last_layers=k, when="steps",
                     every=every)] if k else []
    train_conv(net, opt, steps=steps, methods=methods)
    assert not methods or methods[0].resets == steps // every
    return net(images(16, seed=5)[0]).detach()


@one_thread
def test_convnet_injection_into_the_output_layer_alone_changes_nothing_under_plain_sgd_but_two_layers_do():
    plain = _conv_sgd_stream(0)
    assert torch.allclose(_conv_sgd_stream(1), plain, atol=1e-5)
    assert (_conv_sgd_stream(2) - plain).abs().max() > 1e-2


@one_thread
@pytest.mark.parametrize("k", [2, 3])
def test_convnet_injection_gives_the_head_a_fresh_optimizer_state_and_keeps_the_encoders(k):
    from rl_plasticity.core.optim import SGD

    for opt_class, options in ((Adam, {}), (SGD, {"momentum": 0.9})):  # Continual ImageNet: SGD with momentum
        net = convnet()
        opt = opt_class(net.parameters(), lr=0.01, **options)
        train_conv(net, opt)
        before = {name: [t.clone() for t in v] for name, v in opt.state.items()}
        params = [p.detach().clone() for p in net.parameters()]
        Reset([net], net.groups, opt, gens(), what="injection", last_layers=k).apply()
        index = {id(p): i for i, p in enumerate(net.parameters())}
        head = {index[id(p)] for p in net.head_parameters(6 - k)}
        assert head == set(range(12 - 2 * k, 12))
        fresh = opt_class(net.parameters(), lr=0.01, **options)
        for name, tensors in opt.state.items():
            for i, t in enumerate(tensors):
                assert torch.equal(t, fresh.state[name][i] if i in head else before[name][i]), (name, i)
        kept = before["exp_avg" if opt_class is Adam else "momentum"]
        assert all(torch.any(kept[i] != 0) for i in range(12) if i not in head)  # a state worth keeping
        assert [torch.equal(p, q) for p, q in zip(net.parameters(), params)] == [i not in head for i in range(12)]


@one_thread
def test_convnet_injection_checkpoint_round_trip_gives_identical_outputs_and_next_steps():
    import io

    import torch.nn.functional as F

    def build(seed):
        net = convnet(seed)
        cfg = copy.deepcopy(METHOD_DEFAULTS)
        cfg["optimizer"].update(name="sgd", lr=0.01, momentum=0.9)
        cfg["reset"].update(enabled=True, what="injection", last_layers=3, when="steps", every=3)
        # CBP rewrites the frozen heads' first layers (zeroed columns, bias transfer): saved as they are now.
        cfg["cbp"].update(enabled=True, replacement_rate=0.2, maturity_threshold=1)
        generators = gens()
        return net, build_learner(net.parameters(), net.groups, cfg, generators, nets=[net]), generators

    def steps(net, learner, n, seed):
        for step in range(n):
            x, y = images(4, seed=100 * seed + step)
            learner.update(F.cross_entropy(net(x), y))

    net, learner, generators = build(0)
    steps(net, learner, 7, seed=1)  # injections after steps 3 and 6
    assert len(net.frozen_heads) == 4 and learner.stats()["cbp/conv2/replacements"] > 0
    buffer = io.BytesIO()
    torch.save(learner.state_dict(), buffer)
    buffer.seek(0)
    other, restored, other_generators = build(5)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for g, h in zip(generators, other_generators):  # the problems save the methods' generators themselves
        h.set_state(g.get_state())
    x, _ = images()
    assert torch.equal(other(x), net(x)) and restored.methods[-1].resets == 2
    assert [w.data_ptr() for w, _ in other.fcs[0].frozen_readers] == [t[0].data_ptr() for _, _, t in
                                                                      other.frozen_heads]
    steps(net, learner, 4, seed=2)  # a third injection after step 9
    steps(other, restored, 4, seed=2)
    assert len(other.frozen_heads) == 6 and torch.equal(other(x), net(x))
    assert all(torch.equal(p, q) for p, q in zip(other.parameters(), net.parameters()))


@one_thread
@pytest.mark.parametrize("k, group_name", [(3, "conv2"), (2, "fc0")])
def test_convnet_units_replaced_by_cbp_after_an_injection_reach_the_output_through_no_frozen_head(k, group_name):
    from rl_plasticity.core.optim import SGD

    net = convnet()
    opt = SGD(net.parameters(), lr=0.01, momentum=0.9)
    train_conv(net, opt)
    Reset([net], net.groups, opt, gens(), what="injection", last_layers=k).apply()
    group = next(g for g in net.groups if g.name == group_name)
    readers = group.outgoing.frozen_readers  # fc0 reads conv2's channels; fc1 reads fc0's units
    assert group.outgoing is net.layers[6 - k] and len(readers) == 2
    assert [w.data_ptr() for w, _ in readers] == [t[0].data_ptr() for _, _, t in net.frozen_heads]
    units = group.num_units

    def blocks(w):  # [1, out, in] -> [1, units, out, in // units]: each unit's columns, without the group's view
        return w.reshape(1, w.shape[1], units, -1).transpose(1, 2)

    # The mean-to-bias transfer into every reader, by hand: a conv channel's mean times its whole spatial block.
    x, _ = images()
    net(x)
    mask = torch.zeros(1, units, dtype=torch.bool)
    mask[0, 1] = True
    means = group.batch_mean(group.activation) * mask
    expected = [b + torch.einsum("ruoh,ru->ro", blocks(w), means) for w, b in readers]
    group.add_to_outgoing_bias(means)
    assert all(torch.allclose(b, e, atol=1e-6) for (_, b), e in zip(readers, expected))

    # CBP replacing units after the injection: their columns are zero in the live layer and in every frozen head.
    cbp = ContinualBackprop([group], opt, gens(), replacement_rate=0.3, maturity_threshold=1)
    train_conv(net, opt, steps=3, seed=6, methods=[cbp])
    replaced = cbp.age[0] == 0  # replaced at the last step
    assert replaced.any() and int(cbp.replacements[0].sum()) >= int(replaced.sum())
    stack = net.head_stacks[0]
    for w in [group.outgoing.weight, *(w for w, _ in readers), *stack.tensors[0]]:  # the stack sees the edit
        assert torch.all(blocks(w.detach())[replaced] == 0)
    out = net(x).detach()
    with torch.no_grad():  # whatever the new units now compute, no head sees it yet
        group.incoming.weight[replaced] *= 3
        group.incoming.bias[replaced] += 1
    assert torch.equal(net(x), out)
    # The other units still reach the output through the frozen heads.
    with torch.no_grad():
        group.incoming.bias[~replaced] += 1
    assert not torch.equal(net(x), out)


@one_thread
def test_stacked_frozen_heads_of_the_convnet_equal_the_loop_over_heads():
    net = convnet()
    opt = Adam(net.parameters(), lr=0.01)
    x, labels = images(5, seed=9)
    y = torch.nn.functional.one_hot(labels, 2).float()
    for k, init in ((3, "fresh"), (2, "zero"), (2, "fresh")):
        train_conv(net, opt, steps=2, seed=k)
        Reset([net], net.groups, opt, gens(), what="injection", last_layers=k, init=init).apply()
        train_conv(net, opt, steps=2, seed=k + 10)
        _batched_equals_loop(net, x, y)
    assert [(stack.start, stack.heads) for stack in net.head_stacks] == [(3, 2), (4, 3)]


@one_thread
def test_an_injection_into_more_layers_refuses_frozen_heads_that_start_inside_its_head():
    net = convnet()
    opt = Adam(net.parameters(), lr=0.01)
    Reset([net], net.groups, opt, gens(), what="injection", last_layers=2).apply()
    wider = Reset([net], net.groups, opt, gens(), what="injection", last_layers=3)
    # E.g. a run resumed with a larger last_layers: re-initialising fc0 would change what the old heads read.
    message = "keeps frozen heads of an injection into its last 2 layers.*keep last_layers <= 2"
    with pytest.raises(ValueError, match=message):
        wider.apply()
    saved = Reset([net], net.groups, opt, gens(), what="injection", last_layers=2).state_dict()
    with pytest.raises(ValueError, match=message):
        wider.load_state_dict(saved)
    # Fewer layers are fine: their heads start after the old ones, whose input they do not touch.
    x, _ = images()
    before = net(x).detach()
    Reset([net], net.groups, opt, gens(), what="injection", last_layers=2).apply()
    assert torch.allclose(net(x), before, atol=1e-6)


@one_thread
def test_continual_imagenet_refuses_injection_whose_old_head_would_answer_the_new_labels(tmp_path, capsys):
    # Every task has new labels and must start from a reset head; injection keeps the old head's function.
    from rl_plasticity.cli import main

    config = str(ROOT / "configs/continual_imagenet/cpu_bp.yaml")
    args = ["train", config, "--seed", "0", "--out", str(tmp_path / "bad"), "--set", "reset.what=injection"]
    assert main(args) == 2 and not (tmp_path / "bad").exists()
    assert "reset.what" in capsys.readouterr().err


def test_mlp_injection_with_zero_init_zeroes_only_the_output_layer_and_keeps_one_head_per_injection():
    net = MLP([3, 4, 5, 2], activation="relu", init="kaiming", norm="layer")
    net.reset_parameters(gens(seed=0))
    opt = Adam(net.parameters(), lr=0.01)
    train(net, opt)
    x = torch.randn(6, 3)
    before = net(x).detach()
    Reset([net], net.groups, opt, gens(), what="injection", last_layers=2, init="zero").apply()
    assert torch.allclose(net(x), before, atol=1e-6) and [s for s, _, _ in net.frozen_heads] == [1.0]
    assert torch.all(net.head.weight == 0) and torch.all(net.head.bias == 0)
    # The new head's hidden layer is drawn fresh (zeroed, its units would be identical and dead), its norm reset.
    assert torch.all(net.layers[1].weight != 0) and torch.all(net.norms[1].weight == 1)
    train(net, opt, steps=3, seed=2)
    assert torch.any(net.head.weight != 0)
