"""The optimizer registry and the optimizers it adds: UPGD, IDBD, Autostep and MetaAdam."""

import copy
import inspect
import io
import math

import pytest
import torch

from rl_plasticity.core.builders import (
    METHOD_DEFAULTS,
    OPTIMIZER_DEFAULTS,
    OPTIMIZER_RULES,
    OPTIMIZERS,
    build_learner,
)
from rl_plasticity.core.meta_adam import MetaAdam
from rl_plasticity.core.networks import MLP
from rl_plasticity.core.optim import SGD, Adam
from rl_plasticity.core.step_size import IDBD, Autostep
from rl_plasticity.core.upgd import UPGD
from rl_plasticity.errors import UserError
from rl_plasticity.problems import resolve_config
from rl_plasticity.problems.regression import RegressionRun

pytestmark = pytest.mark.usefixtures("one_thread")

# Options that make each optimizer's state matter within a few steps.
OPTIONS = {
    "sgd": {"momentum": 0.9},
    "adam": {"betas": (0.9, 0.99)},
    "upgd": {"beta_utility": 0.9, "sigma": 0.1},
    "idbd": {"meta_step_size": 0.1},
    "autostep": {"meta_step_size": 0.1, "tau": 100.0},
    "meta_adam": {"betas": (0.9, 0.99), "meta_step_size": 0.1, "trace_decay": 0.9},
}


def _make(name, params, generators, lr=0.05, weight_decay=0.01, **changes):
    options = {**OPTIONS[name], **changes}
    if name == "upgd":
        options["generators"] = generators
    return OPTIMIZERS[name](params, lr, weight_decay=weight_decay, **options)


def _net(replicas=2, seed=0):
    net = MLP([3, 6, 2], activation="relu", init="lecun", replicas=replicas)
    net.reset_parameters([torch.Generator().manual_seed(seed + r) for r in range(replicas)])
    return net


def _grads(net, data: torch.Generator):
    x = torch.randn(net.layers[0].weight.shape[0], 8, 3, generator=data)
    loss = (net(x) - x[..., :2].sin()).square().mean((1, 2)).sum()
    return list(torch.autograd.grad(loss, list(net.parameters())))


def _train(net, opt, data, steps):
    for _ in range(steps):
        opt.step(_grads(net, data))


# --------------------------------------------------------------------------- the registry


def test_optimizer_section_is_derived_from_the_registry():
    assert list(OPTIMIZERS) == ["sgd", "adam", "upgd", "idbd", "autostep", "meta_adam"]
    # Today's keys first, in today's order and with today's values; then one subsection per new optimizer.
    assert list(OPTIMIZER_DEFAULTS) == ["name", "lr", "momentum", "betas", "eps", "weight_decay",
                                        "upgd", "idbd", "autostep", "meta_adam"]
    assert {k: OPTIMIZER_DEFAULTS[k] for k in list(OPTIMIZER_DEFAULTS)[:6]} == {
        "name": "sgd", "lr": 0.01, "momentum": 0.0, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}
    assert OPTIMIZER_DEFAULTS["upgd"] == {"beta_utility": 0.999, "sigma": 0.001}
    assert METHOD_DEFAULTS["optimizer"] == OPTIMIZER_DEFAULTS
    assert OPTIMIZER_RULES["name"].choices == tuple(OPTIMIZERS)
    for name, optimizer in OPTIMIZERS.items():
        assert optimizer.name == name
        assert optimizer.flat == (name in ("sgd", "adam"))
        if not optimizer.flat:
            assert OPTIMIZER_DEFAULTS[name] == optimizer.defaults
            assert OPTIMIZER_DEFAULTS[name] is not optimizer.defaults  # problems get a copy
        prefix = "" if optimizer.flat else name + "."
        assert all(OPTIMIZER_RULES[prefix + key] is rule for key, rule in optimizer.rules.items())
        signature = inspect.signature(optimizer.__init__)
        for key, value in optimizer.defaults.items():
            default = signature.parameters[key].default
            assert (list(default) if isinstance(default, tuple) else default) == value, (name, key)


def _resolve(*overrides):
    base = ["examples=200", "bin_size=100", "stream.change_every=100", "log.metrics_every=100",
            "log.probe_size=50", "log.checkpoint_every=100"]
    return resolve_config({"problem": "regression"}, [*base, *overrides])[0]


def test_set_reaches_an_optimizers_own_subsection():
    cfg = _resolve("optimizer.name=upgd", "optimizer.upgd.sigma=0.01")
    assert cfg["optimizer"]["name"] == "upgd"
    assert cfg["optimizer"]["upgd"] == {"beta_utility": 0.999, "sigma": 0.01}
    assert cfg["optimizer"]["momentum"] == 0.0  # the flat keys keep working beside the subsections


@pytest.mark.parametrize("override, message", [
    ("optimizer.upgd.sigmaa=0.01", (r"^unknown config key 'optimizer\.upgd\.sigmaa' "
                                    r"\(did you mean 'optimizer\.upgd\.sigma'\?\)$")),
    ("optimizer.upgdd.sigma=0.01", r"^unknown config key 'optimizer\.upgdd' \(did you mean 'optimizer\.upgd'\?\)$"),
    ("optimizer.name=updg", (r"^config key 'optimizer\.name' must be one of 'sgd', 'adam', 'upgd', 'idbd', "
                             r"'autostep', 'meta_adam', got 'updg'$")),
    ("optimizer.meta_adam.trace_decay=1", (r"^config key 'optimizer\.meta_adam\.trace_decay' must be in \[0, 1\), "
                                           r"got 1\.0$")),
    ("optimizer.upgd.beta_utility=1", r"^config key 'optimizer\.upgd\.beta_utility' must be in \[0, 1\), got 1\.0$"),
    ("optimizer.idbd.meta_step_size=-1", r"^config key 'optimizer\.idbd\.meta_step_size' must be >= 0, got -1\.0$"),
    ("optimizer.autostep.tau=0.5", r"^config key 'optimizer\.autostep\.tau' must be >= 1, got 0\.5$"),
    ("optimizer.upgd=3", r"^config key 'optimizer\.upgd' must be mapping, got int 3$"),
])
def test_config_mistakes_give_one_line_errors(override, message):
    with pytest.raises(UserError, match=message):
        _resolve(override)


@pytest.mark.parametrize("name, own", [
    ("sgd", {"momentum": 0.5}), ("adam", {"betas": [0.8, 0.9], "eps": 1e-6}),
    ("upgd", {"upgd": {"beta_utility": 0.9, "sigma": 0.02}}), ("idbd", {"idbd": {"meta_step_size": 0.05}}),
    ("autostep", {"autostep": {"meta_step_size": 0.02, "tau": 50.0}}),
    ("meta_adam", {"meta_adam": {"meta_step_size": 0.02, "trace_decay": 0.9}}),
])
def test_build_learner_builds_each_optimizer_from_its_section(name, own):
    cfg = copy.deepcopy(METHOD_DEFAULTS)
    cfg["optimizer"].update(name=name, lr=0.02, weight_decay=1e-3, **own)
    net = _net()
    learner = build_learner(net.parameters(), net.groups, cfg, [torch.Generator().manual_seed(r) for r in range(2)])
    opt = learner.optimizer
    assert type(opt) is OPTIMIZERS[name]
    assert (opt.lr, opt.weight_decay) == (0.02, 1e-3)
    options = own.get(name, own)
    expected = {"momentum": "momentum", "eps": "eps", "beta_utility": "beta_utility", "sigma": "sigma",
                "meta_step_size": "meta_step_size", "tau": "tau", "trace_decay": "trace_decay"}
    for key, value in options.items():
        if key == "betas":
            assert [opt.beta1, opt.beta2] == value
        else:
            assert getattr(opt, expected[key]) == value
    before = [p.detach().clone() for p in net.parameters()]
    x = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1))
    learner.update(net(x).square().sum())
    assert all(not torch.equal(a, p) for a, p in zip(before, net.parameters()))


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_sgd_and_adam_built_through_the_registry_give_the_direct_constructors_numbers(name):
    cfg = copy.deepcopy(METHOD_DEFAULTS)
    cfg["optimizer"].update(name=name, lr=0.03, momentum=0.9, betas=[0.99, 0.99], weight_decay=1e-3)
    nets = [_net(), _net()]
    built = build_learner(nets[0].parameters(), nets[0].groups, cfg, [None, None]).optimizer
    direct = (SGD(nets[1].parameters(), 0.03, momentum=0.9, weight_decay=1e-3) if name == "sgd" else
              Adam(nets[1].parameters(), 0.03, betas=(0.99, 0.99), weight_decay=1e-3))
    for net, opt in zip(nets, (built, direct)):
        _train(net, opt, torch.Generator().manual_seed(2), 5)
    assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters()))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_optimizer_trains_the_regression_problem(name):
    cfg = _resolve(f"optimizer.name={name}", "optimizer.upgd.sigma=0.01")
    run = RegressionRun(cfg, [0, 1])
    run.train_chunk()
    assert run.examples == 100 and math.isfinite(float(run.error_sum.sum()))


# --------------------------------------------------------------------------- UPGD


def test_upgd_two_weights_by_hand():
    """Two one-weight parameters: eta is the larger trace of the two (the whole network's maximum)."""
    lr, wd, b, sigma = 0.1, 0.1, 0.5, 0.3
    w = [torch.tensor([[0.5]], dtype=torch.float64), torch.tensor([[-1.0]], dtype=torch.float64)]
    opt = UPGD(w, lr, weight_decay=wd, beta_utility=b, sigma=sigma, generators=[torch.Generator().manual_seed(4)])
    same_draws = torch.Generator().manual_seed(4)
    weights, traces = [0.5, -1.0], [0.0, 0.0]
    for t, grads in enumerate(([0.2, 0.3], [0.1, 0.4]), start=1):
        noise = torch.randn(2, generator=same_draws, dtype=torch.float64).tolist()
        traces = [b * u + (1 - b) * (-g * x) for u, g, x in zip(traces, grads, weights)]
        eta = max(traces)
        scaled = [1 / (1 + math.exp(-(u / (1 - b ** t)) / eta)) for u in traces]
        weights = [(1 - lr * wd) * x - lr * (g + sigma * n) * (1 - s)
                   for x, g, n, s in zip(weights, grads, noise, scaled)]
        opt.step([torch.tensor([[g]], dtype=torch.float64) for g in grads])
        assert [float(p) for p in w] == pytest.approx(weights, rel=1e-12, abs=0)
        assert [float(u) for u in opt.state["utility"]] == pytest.approx(traces, rel=1e-12, abs=0)
    assert eta > 0 and traces[0] < 0  # the case covered: one useful weight, one harmful one


def test_upgd_leaves_every_weight_unprotected_when_no_utility_is_positive():
    w = [torch.tensor([[0.0, 0.0]])]
    opt = UPGD(w, 0.1, beta_utility=0.5, sigma=0.0, generators=[None])
    opt.step([torch.tensor([[1.0, -2.0]])])  # u = -g * w = 0 everywhere: eta = 0 in the reference (NaN there)
    assert torch.equal(w[0], torch.tensor([[-0.05, 0.1]]))  # s = 1/2: half the step, no NaN


# --------------------------------------------------------------------------- IDBD and Autostep on LMS


def _tracking_task(steps: int, seed: int = 0):
    """Sutton (1992) experiment 1: 20 N(0, 1) inputs, target = s . x with s_i = +-1 for the first 5 inputs and 0
    for the other 15; every 20 examples one of the five relevant signs flips."""
    data = torch.Generator().manual_seed(seed)
    X = torch.randn(steps, 20, generator=data, dtype=torch.float64)
    flips = torch.randint(0, 5, (steps // 20 + 1,), generator=data).tolist()
    signs, Y = [1.0] * 5 + [0.0] * 15, []
    for t, x in enumerate(X.tolist()):
        if t and t % 20 == 0:
            signs[flips[t // 20]] *= -1
        Y.append(sum(s * xi for s, xi in zip(signs, x)))
    return X, torch.tensor(Y, dtype=torch.float64)


def _scalar_idbd(X, Y, alpha0, theta):
    """Sutton (1992), Figure 2, one weight at a time in plain Python."""
    n = len(X[0])
    w, beta, h = [0.0] * n, [math.log(alpha0)] * n, [0.0] * n
    for x, y in zip(X, Y):
        delta = y - sum(wi * xi for wi, xi in zip(w, x))
        for i in range(n):
            beta[i] += theta * delta * x[i] * h[i]
            alpha = math.exp(beta[i])
            w[i] += alpha * delta * x[i]
            h[i] = h[i] * max(0.0, 1 - alpha * x[i] ** 2) + alpha * delta * x[i]
    return w, [math.exp(b) for b in beta]


def _scalar_autostep(X, Y, alpha0, mu, tau):
    """Mahmood et al. (2012), Algorithm 1, in plain Python."""
    n = len(X[0])
    w, alpha, h, v = [0.0] * n, [alpha0] * n, [0.0] * n, [0.0] * n
    for x, y in zip(X, Y):
        delta = y - sum(wi * xi for wi, xi in zip(w, x))
        for i in range(n):
            z = delta * x[i] * h[i]
            v[i] = max(abs(z), v[i] + alpha[i] * x[i] ** 2 * (abs(z) - v[i]) / tau)
            if v[i] != 0:
                alpha[i] *= math.exp(mu * z / v[i])
        m = max(sum(a * xi ** 2 for a, xi in zip(alpha, x)), 1.0)
        for i in range(n):
            alpha[i] /= m
            w[i] += alpha[i] * delta * x[i]
            h[i] = h[i] * (1 - alpha[i] * x[i] ** 2) + alpha[i] * delta * x[i]
    return w, alpha


def _lms(opt, w, X, Y, exact_curvature=True, on_step=None):
    """Train the linear learner w [1, 20] on squared error / 2 through autograd: the optimizers see gradients."""
    for x, y in zip(X, Y):
        loss = 0.5 * (y - (w * x).sum()).square()
        (g,) = torch.autograd.grad(loss, [w])
        opt.step([g], curvature=[(x * x).unsqueeze(0)] if exact_curvature else None)
        if on_step:
            on_step(x, g)


@pytest.mark.parametrize("name", ["idbd", "autostep"])
def test_textbook_lms_algorithm_is_reproduced_given_the_exact_curvature(name):
    X, Y = _tracking_task(300)
    w = torch.zeros(1, 20, dtype=torch.float64, requires_grad=True)
    if name == "idbd":
        opt = IDBD([w], 0.05, meta_step_size=0.01)
        expected_w, expected_alpha = _scalar_idbd(X.tolist(), Y.tolist(), 0.05, 0.01)
    else:
        opt = Autostep([w], 0.05, meta_step_size=0.01, tau=1e4)
        expected_w, expected_alpha = _scalar_autostep(X.tolist(), Y.tolist(), 0.05, 0.01, 1e4)
    _lms(opt, w, X, Y)
    assert w.detach()[0].tolist() == pytest.approx(expected_w, abs=1e-6, rel=0)
    assert opt.step_sizes()[0][0].tolist() == pytest.approx(expected_alpha, abs=1e-6, rel=0)


@pytest.mark.parametrize("exact_curvature", [True, False])
def test_idbd_learns_which_inputs_are_relevant_on_suttons_tracking_task(exact_curvature):
    # Sutton (1992): the step sizes of the 5 relevant inputs grow (towards ~0.13, the best fixed step size for
    # this task), those of the 15 irrelevant ones shrink. theta is 0.01 so this shows within 5,000 examples.
    X, Y = _tracking_task(5000, seed=1)
    w = torch.zeros(1, 20, dtype=torch.float64, requires_grad=True)
    opt = IDBD([w], 0.05, meta_step_size=0.01)
    _lms(opt, w, X, Y, exact_curvature)
    alpha = opt.step_sizes()[0][0]
    assert bool((alpha[:5] > 0.07).all()), alpha[:5]
    assert bool((alpha[5:] < 0.04).all()), alpha[5:]


@pytest.mark.parametrize("exact_curvature", [True, False])
def test_autostep_effective_step_never_exceeds_one(exact_curvature):
    # A large initial step size (2.0: ~40 times the bound) makes the normaliser act from the first example.
    X, Y = _tracking_task(400, seed=2)
    w = torch.zeros(1, 20, dtype=torch.float64, requires_grad=True)
    opt = Autostep([w], 2.0, meta_step_size=0.01)
    effective = []

    def record(x, g):
        curvature = x * x if exact_curvature else g[0] * g[0]
        effective.append(float((opt.state["alpha"][0][0] * curvature).sum()))

    _lms(opt, w, X, Y, exact_curvature, on_step=record)
    assert max(effective) <= 1 + 1e-12
    assert max(effective) > 0.999  # the bound was reached, so the check above checked something


# --------------------------------------------------------------------------- MetaAdam


def test_meta_adam_reads_adams_betas_and_eps_beside_its_own_subsection():
    cfg = copy.deepcopy(METHOD_DEFAULTS)
    cfg["optimizer"].update(name="meta_adam", lr=0.02, betas=[0.8, 0.9], eps=1e-6)
    net = _net()
    opt = build_learner(net.parameters(), net.groups, cfg, [None, None]).optimizer
    assert (opt.beta1, opt.beta2, opt.eps, opt.meta_step_size, opt.trace_decay) == (0.8, 0.9, 1e-6, 0.01, 0.99)


def test_meta_adam_two_weights_by_hand():
    """Plain-Python rule of the module docstring over 80 steps of L = (w - y)^2 / 2: betas (0.5, 0.6) make
    1 - beta^t round to 1 within those steps, so both the bias-corrected and the plain Adam step are covered."""
    lr, b1, b2, eps, wd, theta, gamma = 0.05, 0.5, 0.6, 1e-8, 0.01, 0.1, 0.8
    w = [torch.tensor([[0.5]], dtype=torch.float64), torch.tensor([[-1.0]], dtype=torch.float64)]
    opt = MetaAdam(w, lr, betas=(b1, b2), eps=eps, weight_decay=wd, meta_step_size=theta, trace_decay=gamma)
    data = torch.Generator().manual_seed(0)
    ref = [{"w": 0.5, "m": 0.0, "v": 0.0, "log_alpha": math.log(lr), "e": 0.0},
           {"w": -1.0, "m": 0.0, "v": 0.0, "log_alpha": math.log(lr), "e": 0.0}]
    for t in range(1, 81):
        targets = (torch.randn(2, generator=data, dtype=torch.float64) + 2.0).tolist()
        for r, y in zip(ref, targets):
            g = (r["w"] - y) + wd * r["w"]
            r["m"] = b1 * r["m"] + (1 - b1) * g
            r["v"] = b2 * r["v"] + (1 - b2) * g * g
            d = math.sqrt(r["v"]) / math.sqrt(1 - b2 ** t) + eps
            u = r["m"] / (1 - b1 ** t) / d
            r["log_alpha"] -= theta * (1 - gamma) * (g / d) * r["e"]
            r["w"] -= math.exp(r["log_alpha"]) * u
            r["e"] = gamma * r["e"] - u
        opt.step([p - y for p, y in zip(w, targets)])
        assert [float(p) for p in w] == pytest.approx([r["w"] for r in ref], rel=1e-12, abs=1e-14)
        assert [float(a) for a in opt.step_sizes()] == pytest.approx([math.exp(r["log_alpha"]) for r in ref],
                                                                     rel=1e-12)
        assert [float(e) for e in opt.state["trace"]] == pytest.approx([r["e"] for r in ref], rel=1e-12, abs=1e-14)
    assert opt.max_power < opt.negligible  # the plain path was reached
    assert all(abs(r["log_alpha"] - math.log(lr)) > 0.1 for r in ref)  # the step sizes did move


def test_meta_adam_without_meta_steps_is_adam():
    nets = [_net(), _net()]
    opts = [MetaAdam(list(nets[0].parameters()), 0.05, betas=(0.9, 0.99), weight_decay=0.01, meta_step_size=0.0),
            Adam(nets[1].parameters(), 0.05, betas=(0.9, 0.99), weight_decay=0.01)]
    for net, opt in zip(nets, opts):
        _train(net, opt, torch.Generator().manual_seed(2), 20)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert all(torch.allclose(a, torch.full_like(a, 0.05), rtol=1e-6, atol=0) for a in opts[0].step_sizes())


@pytest.mark.parametrize("target, grows", [("far", True), ("noise", False)])
def test_meta_adam_grows_steps_that_keep_going_and_shrinks_steps_that_only_follow_noise(target, grows):
    # A target 10 away: Adam's steps of ~lr all point the same way, so each step's gradient agrees with the
    # recent steps and the step size grows. A target that is pure noise around 0: each step is undone by the next
    # gradient, so the step size shrinks.
    lr = 1e-3 if grows else 0.1
    w = torch.zeros(1, 1, dtype=torch.float64)
    opt = MetaAdam([w], lr, meta_step_size=0.1, trace_decay=0.9)
    data = torch.Generator().manual_seed(0)
    for _ in range(2000):
        y = 10.0 if grows else torch.randn(1, 1, generator=data, dtype=torch.float64)
        opt.step([w - y])
    alpha = float(opt.step_sizes()[0])
    assert alpha > 100 * lr if grows else alpha < 0.7 * lr


def test_meta_adam_reset_after_the_bias_corrections_ran_out_restarts_them():
    # betas (0.5, 0.6): after 60 steps 1 - beta^t is exactly 1 for every float32 weight (the plain Adam path);
    # a replaced unit must still get a fresh parameter's bias-corrected first update.
    def make(net):
        return MetaAdam(list(net.parameters()), 0.05, betas=(0.5, 0.6), meta_step_size=0.1)

    net = _net()
    opt = make(net)
    _train(net, opt, torch.Generator().manual_seed(3), 60)
    assert opt.max_power < opt.negligible
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 3] = True
    for pu in net.groups[0].all_params():
        opt.reset_units(pu, mask)
    twin = _net()
    with torch.no_grad():
        for a, b in zip(twin.parameters(), net.parameters()):
            a.copy_(b)
    fresh = make(twin)
    grads = _grads(net, torch.Generator().manual_seed(5))
    for n, o in ((net, opt), (twin, fresh)):
        o.step([g.clone() for g in grads])
    for pu, twin_pu in zip(net.groups[0].all_params(), twin.groups[0].all_params()):
        assert torch.equal(pu.units()[mask], twin_pu.units()[mask])
    assert opt.max_power < 1.0  # corrected again, until the reset unit is old


def test_state_lives_in_flat_buffers_that_each_parameters_state_views():
    net = _net()
    opt = MetaAdam(list(net.parameters()), 0.05)
    sizes = [p[0].numel() for p in net.parameters()]
    assert opt.flat["trace"].shape == (2, sum(sizes))
    for i, p in enumerate(net.parameters()):
        assert opt.state["trace"][i].shape == p.shape
        assert opt.state["trace"][i].untyped_storage().data_ptr() == opt.flat["trace"].untyped_storage().data_ptr()
    with pytest.raises(ValueError, match=r"^MetaAdam needs every parameter with the same replica count"):
        MetaAdam([torch.zeros(2, 3), torch.zeros(3, 3)], 0.05)


# --------------------------------------------------------------------------- shared guarantees


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_replaced_unit_gets_exactly_a_fresh_state_and_update(name):
    changes = {"autostep": {"lr": 1e-3},  # keeps Autostep's per-replica normaliser at 1
               "upgd": {"sigma": 0.0}}.get(name, {})
    net, data = _net(), torch.Generator().manual_seed(3)
    gens = [torch.Generator().manual_seed(10 + r) for r in range(2)]
    opt = _make(name, list(net.parameters()), gens, **changes)
    _train(net, opt, data, 6)
    group = net.groups[0]
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 1] = mask[1, 2] = mask[1, 4] = True
    group.reinit(mask, gens)
    before = {k: [t.clone() for t in v] for k, v in opt.state.items()}
    for pu in group.all_params():
        opt.reset_units(pu, mask)

    twin = _net()
    with torch.no_grad():
        for a, b in zip(twin.parameters(), net.parameters()):
            a.copy_(b)
    fresh = _make(name, list(twin.parameters()), gens, **changes)
    for state_name, tensors in opt.state.items():
        for pu in group.all_params():
            i = opt._index[id(pu.param)]
            assert torch.equal(pu.units(tensors[i])[mask], pu.units(fresh.state[state_name][i])[mask])
            assert torch.equal(pu.units(tensors[i])[~mask], pu.units(before[state_name][i])[~mask])

    grads = _grads(net, torch.Generator().manual_seed(5))
    old = [p.detach().clone() for p in net.parameters()]
    opt.step(grads)
    fresh.step([g.clone() for g in grads])
    for pu, twin_pu in zip(group.all_params(), twin.groups[0].all_params()):
        i = opt._index[id(pu.param)]
        change = pu.units(pu.param.detach() - old[i])[mask]
        if name == "upgd":  # eta is the network's: compare with the rule, given this step's eta
            u = pu.units(opt.state["utility"][i])[mask] / (1 - pu.units(opt.state["utility_power"][i])[mask])
            eta = torch.stack([t.flatten(1).amax(1) for t in opt.state["utility"]]).amax(0)
            eta = eta[:, None].expand(2, 6)[mask].view(-1, *[1] * (u.dim() - 1))
            g, w = pu.units(grads[i])[mask], pu.units(old[i])[mask]
            expected = -opt.lr * opt.weight_decay * w - opt.lr * g * (1 - torch.sigmoid(u / eta))
            assert torch.allclose(change, expected, rtol=1e-5, atol=1e-7)  # float32 weights ~0.5
            assert torch.allclose(u, -g * w, rtol=1e-5, atol=1e-9)  # the trace restarted from zero
        else:
            assert torch.equal(change, twin_pu.units(twin_pu.param.detach() - old[i])[mask])


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_checkpoint_round_trip_continues_identically(name):
    nets = [_net(), _net()]
    gens = [[torch.Generator().manual_seed(10 + r) for r in range(2)] for _ in nets]
    opts = [_make(name, list(net.parameters()), g) for net, g in zip(nets, gens)]
    data = torch.Generator().manual_seed(6)
    _train(nets[0], opts[0], data, 5)
    buffer = io.BytesIO()
    torch.save(opts[0].state_dict(), buffer)
    buffer.seek(0)
    opts[1].load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        for a, b in zip(nets[1].parameters(), nets[0].parameters()):
            a.copy_(b)
    for mine, theirs in zip(gens[1], gens[0]):  # problems checkpoint their generators beside the learner
        mine.set_state(theirs.get_state())
    for net, opt in zip(nets, opts):
        _train(net, opt, torch.Generator().manual_seed(7), 5)
    assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters()))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_three_replicas_compute_what_three_single_runs_compute(name):
    seeds = [3, 4, 5]

    def run(replica_seeds):
        net = MLP([3, 6, 2], activation="relu", init="lecun", replicas=len(replica_seeds))
        net.reset_parameters([torch.Generator().manual_seed(s) for s in replica_seeds])
        opt = _make(name, list(net.parameters()), [torch.Generator().manual_seed(100 + s) for s in replica_seeds])
        data = [torch.Generator().manual_seed(200 + s) for s in replica_seeds]
        for _ in range(8):
            x = torch.stack([torch.randn(8, 3, generator=d) for d in data])
            loss = (net(x) - x[..., :2].sin()).square().mean((1, 2)).sum()
            opt.step(list(torch.autograd.grad(loss, list(net.parameters()))))
        return [p.detach() for p in net.parameters()]

    together = run(seeds)
    for r, s in enumerate(seeds):
        alone = run([s])
        assert all(torch.equal(a[r], b[0]) for a, b in zip(together, alone)), (name, r)


@pytest.mark.parametrize("make, message", [
    (lambda p: UPGD(p, 0.1, sigma=-1.0, generators=[None]), r"^UPGD sigma must be >= 0, got -1\.0$"),
    (lambda p: UPGD(p, 0.1, beta_utility=1.0, generators=[None]), r"^UPGD beta_utility must be in \[0, 1\), got 1\.0$"),
    (lambda p: UPGD(p, 0.1, generators=[None, None]), r"^UPGD needs one generator per replica \(1\), got 2$"),
    (lambda p: UPGD(p, 0.0, generators=[None]), r"^UPGD lr must be > 0, got 0\.0$"),
    (lambda p: IDBD(p, 0.0), r"^IDBD lr must be > 0, got 0\.0$"),
    (lambda p: IDBD(p, 0.1, meta_step_size=-0.1), r"^IDBD meta_step_size must be >= 0, got -0\.1$"),
    (lambda p: Autostep(p, 0.1, tau=0.5), r"^Autostep tau must be >= 1, got 0\.5$"),
    (lambda p: Autostep(p, 0.1, weight_decay=-1.0), r"^Autostep weight_decay must be >= 0, got -1\.0$"),
    (lambda p: MetaAdam(p, 0.1, meta_step_size=-1.0), r"^MetaAdam meta_step_size must be >= 0, got -1\.0$"),
    (lambda p: MetaAdam(p, 0.1, trace_decay=1.0), r"^MetaAdam trace_decay must be in \[0, 1\), got 1\.0$"),
    (lambda p: MetaAdam(p, 0.1, betas=(0.9, 1.0)), r"^MetaAdam betas must be a list of 2 numbers, each in \[0, 1\)"),
    (lambda p: MetaAdam(p, 0.1, eps=0.0), r"^MetaAdam eps must be > 0, got 0\.0$"),
])
def test_bad_options_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make([torch.zeros(1, 3, requires_grad=True)])
