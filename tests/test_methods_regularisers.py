"""L2 Init, weight clipping and Parseval regularisation: hand-checked rules, replicas, CBP, checkpoints, options."""

import copy
import io
import math

import pytest
import torch
from rl_plasticity.agents.ppo import PPOAgent, PPOSettings
from torch import nn

from rl_plasticity.core.builders import METHOD_DEFAULTS
from rl_plasticity.core.convnet import ConvNet
from rl_plasticity.core.learner import Learner
from rl_plasticity.core.methods import ContinualBackprop, ShrinkPerturb, Target
from rl_plasticity.core.methods.l2_init import L2Init
from rl_plasticity.core.methods.parseval import Parseval
from rl_plasticity.core.methods.weight_clipping import WeightClipping
from rl_plasticity.core.networks import MLP
from rl_plasticity.core.optim import SGD, Adam
from rl_plasticity.core.resnet import ResNet18

pytestmark = pytest.mark.usefixtures("one_thread")

# Options that make each method act visibly within a few dozen steps.
ACTIVE = {L2Init: {"strength": 0.1}, WeightClipping: {"kappa": 1.0}, Parseval: {"strength": 0.01, "scale": 1.0}}


def _mlp(sizes, replicas=1, seed=0):
    net = MLP(sizes, activation="relu", init="lecun", replicas=replicas)
    net.reset_parameters([torch.Generator().manual_seed(seed + r) for r in range(replicas)])
    return net


def _build(cls, net, optimizer, **options):
    """The method as build_learner builds it: from its resolved section and the learner's Target."""
    section = {**cls.defaults, "enabled": True, **options}
    gens = [torch.Generator().manual_seed(9) for _ in range(net.replicas)]
    return cls.from_config(section, Target(list(net.parameters()), net.groups, optimizer, gens, [net]))


def _close(t, expected) -> bool:
    return torch.allclose(t.detach(), torch.tensor(expected), atol=1e-6)


def _mse(net, x, y):
    return (net(x) - y).square().mean((1, 2)).sum()  # replicas' losses summed, as every problem does


# --------------------------------------------------------------------------- L2 Init


def test_l2_init_step_by_hand():
    net = _mlp([2, 1])  # a linear learner: weight [1, 1, 2], bias [1, 1]
    with torch.no_grad():
        net.layers[0].weight[0] = torch.tensor([[1.0, 2.0]])
        net.layers[0].bias.zero_()
    opt = SGD(net.parameters(), lr=0.1)
    l2 = _build(L2Init, net, opt, strength=0.5)
    with torch.no_grad():  # theta - theta_0 = ([1, 0], 1)
        net.layers[0].weight[0] = torch.tensor([[2.0, 2.0]])
        net.layers[0].bias.fill_(1.0)
    assert l2.penalty().item() == pytest.approx(0.5 * (1 + 0 + 1))
    learner = Learner(net.parameters(), opt, [l2])
    learner.update(net(torch.ones(1, 2)).sum() * 0)  # no data gradient: only the pull, 2 * 0.5 * (theta - theta_0)
    assert _close(net.layers[0].weight[0], [[1.9, 2.0]])
    assert _close(net.layers[0].bias[0], [0.9])
    assert l2.initial[0][0].tolist() == [[1.0, 2.0]]


def test_l2_init_gradient_equals_the_penalty_gradient():
    net = _mlp([3, 4, 2], replicas=2)
    log_std = nn.Parameter(torch.zeros(1, 2))
    params = [*net.parameters(), log_std]
    l2 = L2Init(params, strength=0.03)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    explicit = 0.03 * sum((p - p0).square().sum() for p, p0 in zip(params, l2.initial))
    assert l2.penalty().item() == pytest.approx(explicit.item(), rel=1e-6)
    ours = torch.autograd.grad(l2.after_loss(None, torch.zeros(())), params)
    reference = torch.autograd.grad(explicit, params)
    for a, b in zip(ours, reference):
        assert torch.allclose(a, b, atol=1e-7)
    assert torch.allclose(ours[-1], 0.06 * log_std.detach())  # log_std is pulled toward its init, 0


def test_l2_init_keeps_the_original_init_when_cbp_replaces_units():
    net = _mlp([3, 6, 1], replicas=2)
    opt = Adam(net.parameters(), lr=0.01)
    cbp = ContinualBackprop(net.groups, opt, [torch.Generator().manual_seed(r) for r in range(2)],
                            replacement_rate=0.2, maturity_threshold=2)
    l2 = _build(L2Init, net, opt)
    initial = [t.clone() for t in l2.initial]
    learner = Learner(net.parameters(), opt, [cbp, l2])
    data = torch.Generator().manual_seed(1)
    for _ in range(30):
        learner.update(_mse(net, torch.randn(2, 8, 3, generator=data), torch.randn(2, 8, 1, generator=data)))
    assert int(cbp.replacements[0].sum()) > 0
    assert all(torch.equal(a, b) for a, b in zip(l2.initial, initial))


# --------------------------------------------------------------------------- weight clipping


def test_weight_clipping_by_hand():
    net = _mlp([2, 2, 2])
    net.layers[0].bound, net.layers[1].bound = 0.5, 0.25
    with torch.no_grad():
        net.layers[0].weight[0] = torch.tensor([[1.5, -0.3], [-2.0, 0.9]])
        net.layers[0].bias[0] = torch.tensor([1.2, -0.4])
        net.layers[1].weight[0] = torch.tensor([[0.7, -0.1], [-0.6, 0.2]])
        net.layers[1].bias[0] = torch.tensor([-0.9, 0.3])
    before = net.layers[1].weight.detach().clone()
    WeightClipping([net], kappa=2.0, clip_output_layer=False).after_step()  # +-1.0 on the hidden layer only
    assert _close(net.layers[0].weight[0], [[1.0, -0.3], [-1.0, 0.9]])
    assert net.layers[0].bias[0].tolist() == pytest.approx([1.0, -0.4])  # biases: the weights' bound
    assert torch.equal(net.layers[1].weight, before)
    clip = WeightClipping([net], kappa=2.0)  # the output layer too, by default: +-0.5
    clip.after_step()
    assert _close(net.layers[1].weight[0], [[0.5, -0.1], [-0.5, 0.2]])
    assert _close(net.layers[1].bias[0], [-0.5, 0.3])
    assert clip.stats()["at_bound_fraction"] == pytest.approx(6 / 12)


def test_weight_clipping_leaves_batch_norm_alone_on_a_resnet():
    net = ResNet18(num_classes=3, width=4)
    net.reset_parameters([torch.Generator().manual_seed(0)])
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(10)  # batch-norm scales become 10, every weight leaves its layer's range
    norms = [m.weight.detach().clone() for m in net.modules() if m.__class__.__name__ == "BatchNorm"]
    WeightClipping([net], kappa=2.0).after_step()
    assert len(net.layers) == 21  # stem, 16 block convs, 3 shortcut convs, head
    for layer in net.layers:
        assert float(layer.weight.detach().abs().max()) == pytest.approx(2.0 * layer.bound)
    after = [m.weight.detach() for m in net.modules() if m.__class__.__name__ == "BatchNorm"]
    assert all(torch.equal(a, b) for a, b in zip(after, norms)) and float(after[0][0, 0]) == 10.0


def test_weight_clipping_refuses_layers_without_an_init_bound():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="Linear and Conv2d"):
        WeightClipping([Plain()])
    with pytest.raises(ValueError, match="nets"):
        WeightClipping.from_config({**WeightClipping.defaults, "enabled": True}, Target([], [], None, [None]))


# --------------------------------------------------------------------------- Parseval


def test_parseval_penalty_and_step_by_hand():
    net = _mlp([2, 2, 1])
    with torch.no_grad():
        net.layers[0].weight[0] = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # W W^T - I = diag(0, 3)
    opt = SGD(net.parameters(), lr=0.1)
    parseval = _build(Parseval, net, opt, strength=0.1, scale=1.0, reference_width=2)
    assert parseval.weights == [net.layers[0].weight]  # not the output layer
    assert parseval.penalty().item() == pytest.approx(0.1 * 9)
    wide = Parseval([net], strength=0.1, scale=1.0, reference_width=4)  # tuned for 4 units: x (4 / 2)^2
    assert wide.penalty().item() == pytest.approx(0.1 * 4 * 9)
    out_before = net.layers[1].weight.detach().clone()
    Learner(net.parameters(), opt, [parseval]).update(net(torch.zeros(1, 2)).sum() * 0)
    # gradient 4 * 0.1 * (W W^T - I) W = [[0, 0], [0, 2.4]]
    assert _close(net.layers[0].weight[0], [[1.0, 0.0], [0.0, 2.0 - 0.24]])
    assert torch.equal(net.layers[1].weight, out_before)


def test_parseval_penalty_matches_singular_values_on_a_convnet():
    net = ConvNet(num_classes=2, channels=(3, 4, 5), hidden=(6, 3))
    net.reset_parameters([torch.Generator().manual_seed(0)])
    parseval = Parseval([net], strength=0.5, scale=1.5, reference_width=4)
    expected = 0.0
    for layer in net.layers[:-1]:  # 3 convs (flattened to [out, in*k*k]) and 2 fc layers; not the head
        w = layer.weight.detach()[0].flatten(1).double()
        units = w.shape[0]
        s2 = torch.linalg.svdvals(w).square()  # eigenvalues of W W^T; the rest are 0
        deviation = (s2 - 1.5).square().sum() + (units - len(s2)) * 1.5 ** 2
        expected += 0.5 * (4 / units) ** 2 * float(deviation)
    assert len(parseval.weights) == 5
    assert parseval.penalty().item() == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- all three


@pytest.mark.parametrize("cls", [L2Init, WeightClipping, Parseval])
def test_on_ppo_actor_and_critic_log_std_is_left_to_l2_init(cls):
    cfg = copy.deepcopy(METHOD_DEFAULTS)
    cfg["optimizer"].update(name="adam", lr=1e-2)
    agent = PPOAgent(5, 2, [8, 8], "relu", "lecun", 0.0, PPOSettings(), cfg, torch.Generator().manual_seed(0),
                     [torch.Generator().manual_seed(1)], torch.Generator().manual_seed(2))
    learner = agent.learner
    target = Target(learner.params, agent.actor.groups + agent.critic.groups, learner.optimizer,
                    agent.method_generators, [agent.actor, agent.critic])
    method = cls.from_config({**cls.defaults, "enabled": True, **ACTIVE[cls]}, target)
    learner.methods.append(method)
    with torch.no_grad():
        agent.log_std.fill_(-3.0)
    obs = torch.randn(16, 5, generator=torch.Generator().manual_seed(3))
    for _ in range(20):
        # log_std enters with a zero weight: it is in the graph (the learner differentiates every parameter),
        # so only a method can move it
        loss = ((agent.actor(obs) - 1).square().mean() + (agent.critic(obs) - 2).square().mean()
                + 0 * agent.log_std.sum())
        learner.update(loss)
    for p in learner.params:
        assert torch.isfinite(p).all()
    if cls is L2Init:  # pulled toward its init 0; Adam on a one-signed gradient moves it lr = 0.01 per step
        assert torch.allclose(agent.log_std.detach(), torch.full((1, 2), -3.0 + 20 * 0.01), atol=2e-3)
    else:
        assert torch.equal(agent.log_std.detach(), torch.full((1, 2), -3.0))
    if cls is Parseval:  # both nets' hidden layers, no output layer
        assert method.weights == [agent.actor.layers[0].weight, agent.actor.layers[1].weight,
                                  agent.critic.layers[0].weight, agent.critic.layers[1].weight]


def _train(net, method_cls, options, steps, data_seed=0):
    opt = Adam(net.parameters(), lr=0.05)
    method = _build(method_cls, net, opt, **options)
    learner = Learner(net.parameters(), opt, [method])
    data = torch.Generator().manual_seed(data_seed)
    r, n_in, n_out = net.replicas, net.layers[0].in_features, net.layers[-1].out_features
    for _ in range(steps):
        learner.update(_mse(net, torch.randn(r, 8, n_in, generator=data), torch.randn(r, 8, n_out, generator=data)))
    return learner, method


@pytest.mark.parametrize("cls", [L2Init, WeightClipping, Parseval])
def test_replicas_are_independent(cls):
    sizes = [4, 6, 5, 2]
    batched = _mlp(sizes, replicas=3, seed=10)
    singles = [_mlp(sizes, replicas=1, seed=10 + r) for r in range(3)]
    for r, single in enumerate(singles):
        assert torch.equal(single.layers[0].weight[0], batched.layers[0].weight[r])
    # Each replica's data stream is its own: the batched run draws [3, ...] data; replay replica r's slice alone.
    opt = Adam(batched.parameters(), lr=0.05)
    method = _build(cls, batched, opt, **ACTIVE[cls])
    learner = Learner(batched.parameters(), opt, [method])
    single_learners = []
    for single in singles:
        o = Adam(single.parameters(), lr=0.05)
        single_learners.append(Learner(single.parameters(), o, [_build(cls, single, o, **ACTIVE[cls])]))
    data = torch.Generator().manual_seed(4)
    for _ in range(40):
        x, y = torch.randn(3, 8, 4, generator=data), torch.randn(3, 8, 2, generator=data)
        learner.update(_mse(batched, x, y))
        for r, (single, sl) in enumerate(zip(singles, single_learners)):
            sl.update(_mse(single, x[r:r + 1], y[r:r + 1]))
    for r, single in enumerate(singles):
        for a, b in zip(batched.parameters(), single.parameters()):
            assert torch.allclose(a[r], b[0], atol=1e-6, rtol=1e-5)
    if cls is WeightClipping:
        assert method.stats()["at_bound_fraction"] > 0  # the clip was active


@pytest.mark.parametrize("cls", [L2Init, WeightClipping, Parseval])
def test_composes_with_cbp(cls):
    net = _mlp([4, 16, 16, 1], replicas=2, seed=3)
    opt = Adam(net.parameters(), lr=0.01)
    cbp = ContinualBackprop(net.groups, opt, [torch.Generator().manual_seed(r) for r in range(2)],
                            replacement_rate=0.02, maturity_threshold=20)
    method = _build(cls, net, opt, **ACTIVE[cls])
    learner = Learner(net.parameters(), opt, [cbp, method])
    data = torch.Generator().manual_seed(0)
    for _ in range(300):
        x = torch.randn(2, 8, 4, generator=data)
        learner.update(_mse(net, x, x.sum(2, keepdim=True).sin()))
    assert sum(int(t.sum()) for t in cbp.replacements) > 0
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert all(math.isfinite(v) for v in method.stats().values())
    if cls is WeightClipping:
        for layer in net.layers:
            assert float(layer.weight.detach().abs().max()) <= layer.bound * 1.0 + 1e-7


def test_all_three_compose_with_cbp_and_shrink_perturb():
    net = _mlp([4, 16, 16, 1], replicas=2, seed=5)
    opt = Adam(net.parameters(), lr=0.01)
    gens = [torch.Generator().manual_seed(r) for r in range(2)]
    methods = [ContinualBackprop(net.groups, opt, gens, replacement_rate=0.02, maturity_threshold=20),
               *(_build(cls, net, opt, **ACTIVE[cls]) for cls in (L2Init, WeightClipping, Parseval)),
               ShrinkPerturb(list(net.parameters()), gens, shrink=1e-4, noise_std=1e-3)]
    learner = Learner(net.parameters(), opt, methods)
    data = torch.Generator().manual_seed(0)
    for _ in range(200):
        x = torch.randn(2, 8, 4, generator=data)
        learner.update(_mse(net, x, x.sum(2, keepdim=True).cos()))
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.parametrize("cls", [L2Init, WeightClipping, Parseval])
def test_checkpoint_round_trip(cls):
    sizes = [3, 5, 4, 1]
    net = _mlp(sizes, replicas=2, seed=0)
    learner, method = _train(net, cls, ACTIVE[cls], steps=25, data_seed=1)
    buffer = io.BytesIO()
    torch.save(learner.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    other = _mlp(sizes, replicas=2, seed=50)  # a different init: L2 Init's theta_0 must come from the checkpoint
    other_opt = Adam(other.parameters(), lr=0.05)
    other_method = _build(cls, other, other_opt, **ACTIVE[cls])
    resumed = Learner(other.parameters(), other_opt, [other_method])
    resumed.load_state_dict(saved)
    if cls is L2Init:
        assert all(torch.equal(a, b) for a, b in zip(other_method.initial, method.initial))

    data_a, data_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(25):
        x, y = torch.randn(2, 8, 3, generator=data_a), torch.randn(2, 8, 1, generator=data_a)
        learner.update(_mse(net, x, y))
        x, y = torch.randn(2, 8, 3, generator=data_b), torch.randn(2, 8, 1, generator=data_b)
        resumed.update(_mse(other, x, y))
    for a, b in zip(net.parameters(), other.parameters()):
        assert torch.equal(a, b)


def test_l2_init_refuses_a_checkpoint_of_another_shape():
    method = L2Init(list(_mlp([3, 4, 1]).parameters()))
    with pytest.raises(ValueError, match="shapes"):
        method.load_state_dict(L2Init(list(_mlp([3, 5, 1]).parameters())).state_dict())


@pytest.mark.parametrize("cls, options, key", [
    (L2Init, {"strength": -0.1}, "strength"),
    (L2Init, {"strength": float("nan")}, "strength"),
    (L2Init, {"strength": "0.01"}, "strength"),
    (WeightClipping, {"kappa": 0.0}, "kappa"),
    (WeightClipping, {"kappa": -1.0}, "kappa"),
    (WeightClipping, {"clip_output_layer": "yes"}, "clip_output_layer"),
    (WeightClipping, {"clip_output_layer": 1}, "clip_output_layer"),
    (Parseval, {"strength": -1e-3}, "strength"),
    (Parseval, {"scale": -2.0}, "scale"),
    (Parseval, {"reference_width": 0}, "reference_width"),
])
def test_bad_options_are_refused_naming_the_option(cls, options, key):
    net = _mlp([3, 4, 1])
    with pytest.raises(ValueError, match=rf"^{cls.label} {key} "):
        _build(cls, net, SGD(net.parameters(), lr=0.1), **options)


def test_parseval_has_nothing_to_do_on_a_linear_learner():
    net = _mlp([3, 1])
    assert _build(Parseval, net, SGD(net.parameters(), lr=0.1)) is None
