"""ReDo, shrink-and-perturb and the optimizers, on small cases checked by hand."""

import pytest
import torch

from rl_plasticity.core.methods import ReDo, ShrinkPerturb
from rl_plasticity.core.methods.redo import redo_scores
from rl_plasticity.core.metrics import dormant_fraction, effective_rank, stable_rank
from rl_plasticity.core.networks import MLP
from rl_plasticity.core.optim import SGD, Adam


def test_redo_resets_only_dormant_units():
    net = MLP([2, 3, 1], activation="relu", init="lecun")
    opt = Adam(net.parameters(), lr=0.01)
    opt.step([torch.ones_like(p) for p in net.parameters()])  # some optimizer state to reset
    with torch.no_grad():
        net.layers[0].weight[0] = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [0.5, 0.5]])  # unit 1 is dead
        net.layers[1].weight[0] = torch.tensor([[1.0, 1.0, 1.0]])
    redo = ReDo(net.groups, opt, [torch.Generator().manual_seed(1)], threshold=0.1, every=2)
    x = torch.rand(1, 16, 2) + 0.1
    net(x)
    scores = redo_scores(net.groups[0].activation)
    assert scores[0, 1] == 0 and (scores[0, [0, 2]] > 0.1).all()
    redo.after_step()  # step 1: not yet (every=2)
    assert net.layers[0].weight[0, 1].tolist() == [-1.0, -1.0]
    net(x)
    redo.after_step()
    assert net.layers[0].weight[0, 1].tolist() != [-1.0, -1.0]
    assert net.layers[0].weight[0, [0, 2]].tolist() == [[1.0, 1.0], [0.5, 0.5]]
    assert net.layers[1].weight[0, 0].tolist() == [1.0, 0.0, 1.0]
    powers = opt.state["beta1_power"][0]
    assert powers[0, 1].tolist() == [1.0, 1.0] and powers[0, 0].tolist() == pytest.approx([0.9, 0.9])
    assert redo.resets[0].item() == 1


def test_shrink_and_perturb_noise_scale_and_shrink():
    p = torch.nn.Parameter(torch.zeros(1, 200, 100))
    snp = ShrinkPerturb([p], [torch.Generator().manual_seed(0)], shrink=0.0, noise_std=0.05)
    snp.after_step()
    assert p.detach().std().item() == pytest.approx(0.05, rel=0.03)
    assert abs(p.detach().mean().item()) < 0.002
    q = torch.nn.Parameter(torch.ones(1, 10))
    ShrinkPerturb([q], [None], shrink=0.1, noise_std=0.0).after_step()
    assert torch.allclose(q.detach(), torch.full((1, 10), 0.9))


def test_shrink_and_perturb_noise_does_not_depend_on_other_replicas():
    def run(seeds):
        p = torch.nn.Parameter(torch.zeros(len(seeds), 3, 4))
        snp = ShrinkPerturb([p], [torch.Generator().manual_seed(s) for s in seeds], noise_std=1.0)
        for _ in range(300):  # crosses a chunk boundary
            snp.after_step()
        return p.detach()
    assert torch.equal(run([5, 7])[1], run([7])[0])


def test_adam_matches_torch_adam_with_coupled_weight_decay():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(3, 4))
    q = torch.nn.Parameter(p.detach().clone())
    ours = Adam([p], lr=1e-2, betas=(0.99, 0.99), eps=1e-8, weight_decay=1e-3)
    ref = torch.optim.Adam([q], lr=1e-2, betas=(0.99, 0.99), eps=1e-8, weight_decay=1e-3)
    for _ in range(20):
        g = torch.randn(3, 4)
        ours.step([g])
        q.grad = g.clone()
        ref.step()
    assert torch.allclose(p, q, atol=1e-6)


def test_sgd_matches_torch_sgd():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    q = torch.nn.Parameter(p.detach().clone())
    ours = SGD([p], lr=0.1, momentum=0.9, weight_decay=5e-4)
    ref = torch.optim.SGD([q], lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(10):
        g = torch.randn(5)
        ours.step([g])
        q.grad = g.clone()
        ref.step()
    assert torch.allclose(p, q, atol=1e-6)


def test_metrics_by_hand():
    # Units: 0 always active, 1 never active, 2 active on 1 of 200 inputs (0.5% <= 1%: dormant).
    f = torch.zeros(1, 200, 3)
    f[0, :, 0] = 1.0
    f[0, 0, 2] = 1.0
    assert dormant_fraction(f).item() == pytest.approx(2 / 3)
    # Singular values 3, 1, 0 (diagonal matrix): 99% of 4 needs both -> stable rank 2.
    d = torch.diag(torch.tensor([3.0, 1.0, 0.0])).unsqueeze(0)
    assert stable_rank(d).item() == 2
    p = torch.tensor([0.75, 0.25])
    assert effective_rank(d).item() == pytest.approx(torch.exp(-(p * p.log()).sum()).item(), rel=1e-5)
    assert stable_rank(torch.eye(4).unsqueeze(0)).item() == 4


def test_adam_cheap_path_for_old_tensors_is_bit_identical_and_resets_go_back():
    torch.manual_seed(1)
    p = torch.nn.Parameter(torch.randn(1, 4, 3))
    q = torch.nn.Parameter(p.detach().clone())
    fast, exact = Adam([p], lr=1e-2, betas=(0.5, 0.5)), Adam([q], lr=1e-2, betas=(0.5, 0.5))
    exact.negligible = [0.0]  # never takes the cheap path
    for _ in range(40):  # 0.5^40 is far below float32's rounding of 1 - x
        g = torch.randn(1, 4, 3)
        fast.step([g])
        exact.step([g])
    assert fast.max_power[0] < fast.negligible[0]
    assert torch.equal(p, q)
    from rl_plasticity.core.units import ParamUnits, rows
    mask = torch.tensor([[False, True, False, False]])
    for opt, param in ((fast, p), (exact, q)):
        opt.reset_units(ParamUnits(param, rows), mask)
    assert fast.max_power[0] == 1.0
    g = torch.randn(1, 4, 3)
    fast.step([g])
    exact.step([g])
    assert torch.equal(p, q)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_flat_buffers_step_bit_identically_to_per_tensor_state_through_resets(weight_decay):
    """PPO-like shapes (a [1, 1] bias included), young and old tensors side by side, unit resets sending a
    tensor back to the corrected path: the flat step equals the per-tensor one, weights and state, bit for bit."""
    from rl_plasticity.core.units import ParamUnits, rows

    data = torch.Generator().manual_seed(4)
    shapes = [(1, 16, 11), (1, 16), (1, 16, 16), (1, 16), (1, 1, 16), (1, 1), (1, 3)]
    flat_params = [torch.nn.Parameter(torch.randn(s, generator=data)) for s in shapes]
    tensor_params = [torch.nn.Parameter(p.detach().clone()) for p in flat_params]
    flat = Adam(flat_params, lr=1e-2, betas=(0.5, 0.6), weight_decay=weight_decay)
    per_tensor = Adam(tensor_params, lr=1e-2, betas=(0.5, 0.6), weight_decay=weight_decay, per_tensor=True)
    assert flat._buffers is not None and per_tensor._buffers is None
    young_and_old = False
    for step in range(140):  # 0.6^40 is below float32's rounding of 1 - x: tensors age within the run
        if step in (50, 51, 90):  # a unit of the first layer (its rows) is re-initialised, state and all
            mask = torch.zeros(1, 16, dtype=torch.bool)
            mask[0, step % 16] = True
            for opt, params in ((flat, flat_params), (per_tensor, tensor_params)):
                opt.reset_units(ParamUnits(params[0], rows), mask)
                opt.reset_units(ParamUnits(params[1], rows), mask)
        grads = [torch.randn(s, generator=data) for s in shapes]
        flat.step(grads)
        per_tensor.step([g.clone() for g in grads])
        old = [p < tiny for p, tiny in zip(flat.max_power, flat.negligible)]
        young_and_old |= any(old) and not all(old)
        assert all(torch.equal(a, b) for a, b in zip(flat_params, tensor_params)), step
    assert young_and_old and all(p < tiny for p, tiny in zip(flat.max_power, flat.negligible))
    for name in Adam.fresh_state:
        if "power" not in name:  # the powers of old elements may differ: below negligible, they are never read
            assert all(torch.equal(a, b) for a, b in zip(flat.state[name], per_tensor.state[name])), name
    assert flat.state["exp_avg"][2].untyped_storage().data_ptr() == flat._buffers["exp_avg"].untyped_storage().data_ptr()


def test_snp_leaves_ppo_log_std_alone_unless_its_scope_is_all():
    import copy

    from rl_plasticity.agents.ppo import PPOAgent, PPOSettings
    from rl_plasticity.core.builders import METHOD_DEFAULTS

    for scope, moved in (("networks", False), ("all", True)):
        cfg = copy.deepcopy(METHOD_DEFAULTS)
        cfg["optimizer"].update(name="adam", lr=1e-3)
        cfg["snp"].update(enabled=True, noise_std=0.1, scope=scope)
        agent = PPOAgent(4, 2, [8, 8], "relu", "lecun", 0.0, PPOSettings(), cfg, torch.Generator().manual_seed(0),
                         [torch.Generator().manual_seed(1)], torch.Generator().manual_seed(2))
        snp = agent.learner.methods[0]
        weight = agent.actor.layers[0].weight.detach().clone()
        snp.after_step()
        assert bool(torch.any(agent.log_std != 0)) == moved  # the official PPO perturbs the nets only
        assert not torch.equal(agent.actor.layers[0].weight, weight)


def test_redo_interval_scores_average_every_step_since_the_last_check():
    from rl_plasticity.core.methods import ReDo
    from rl_plasticity.core.networks import MLP
    from rl_plasticity.core.optim import SGD

    net = MLP([1, 2, 1], activation="relu", init="kaiming")
    with torch.no_grad():  # unit 0 computes relu(x), unit 1 relu(-x): each is off for half of the inputs
        net.layers[0].weight[0] = torch.tensor([[1.0], [-1.0]])
        net.layers[0].bias.zero_()
    opt = SGD(net.parameters(), lr=0.0)
    batch = ReDo(net.groups, opt, [torch.Generator().manual_seed(0)], threshold=0.1, every=2)
    interval = ReDo(net.groups, opt, [torch.Generator().manual_seed(0)], threshold=0.1, every=2,
                    score_over="interval")
    for x in (1.0, -1.0):  # one example per step, as the online streams feed
        net(torch.tensor([[x]]))
        interval.after_step()
    # Over the interval each unit was active once: scores (1/2) / (1/2) = 1, nobody dormant.
    assert int(interval.resets[0].sum()) == 0 and torch.all(interval.sums[0] == 0)
    for x in (1.0, -1.0):
        net(torch.tensor([[x]]))
        batch.after_step()
    assert int(batch.resets[0].sum()) == 1  # the latest single example: unit 0 looked dead, and was reset
