"""The added plasticity metrics: feature norm, ReDo's tau-dormant fraction, GraMa's inactive fraction, the
weight-gradient norm and the distance from init. Hand-checked on tiny nets, per replica, through a
checkpoint and a resume, and as TensorBoard scalars of real runs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rl_plasticity.cli import main
from rl_plasticity.config import read_yaml
from rl_plasticity.core.learner import Learner
from rl_plasticity.core.metrics import (
    DistanceFromInit,
    dormant_fraction,
    feature_norm,
    gradient_metrics,
    grama_dormant_fraction,
    grama_scores,
    net_metrics,
    tau_dormant_fraction,
)
from rl_plasticity.core.networks import MLP
from rl_plasticity.core.optim import SGD
from rl_plasticity.problems import regression, resolve_config
from rl_plasticity.run.checkpoint import load_checkpoint, save_checkpoint
from rl_plasticity.run.seeding import generators
from rl_plasticity.run.tblog import TBLogger, read_scalars

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["stream.change_every=500", "bin_size=500", "examples=1500", "log.metrics_every=500",
         "log.probe_size=100", "log.checkpoint_every=500"]
NEW = ("feature_norm", "tau_dormant_fraction", "grama_dormant_fraction")  # per unit group
NEW_PER_LAYER = ("grad_norm", "distance_from_init")


def regression_cfg(*overrides: str, config: str = "bp") -> dict:
    cfg, _ = resolve_config(read_yaml(ROOT / "configs/regression" / f"{config}.yaml"), [*SMALL, *overrides])
    return cfg


# --------------------------------------------------------------------------- on the probe


def test_feature_norm_by_hand():
    f = torch.tensor([[[3.0, 4.0], [0.0, 0.0]],     # replica 0: norms 5 and 0
                      [[1.0, 0.0], [0.0, -1.0]]])   # replica 1: norms 1 and 1
    assert feature_norm(f).tolist() == [2.5, 1.0]
    conv = torch.zeros(1, 2, 2, 2, 2)  # [R, B, C, H, W]: a sample's vector is its whole map
    conv[0, 0] = 1.0  # 8 ones: norm sqrt(8); the other sample is all zero
    assert feature_norm(conv).tolist() == pytest.approx([math.sqrt(8) / 2])


def test_tau_dormant_fraction_by_hand_and_beside_the_papers_dormant_fraction():
    f = torch.zeros(1, 200, 4)
    f[0, 0, 1] = 1.0  # unit 1: active on 1 of 200 inputs, mean |h| 0.005
    f[0, :, 2] = 1.0  # unit 2: mean 1
    f[0, :, 3] = -3.0  # unit 3: mean |h| 3 (ReDo scores |activation|, so a negative unit is alive)
    # unit 0 never activates. Layer mean of mean |h|: 4.005 / 4; scores 0, 0.005, 1 and 3 over 1.00125.
    assert tau_dormant_fraction(f).tolist() == [0.25]  # tau 0: only the unit that never activates
    assert tau_dormant_fraction(f, tau=0.1).tolist() == [0.5]
    assert tau_dormant_fraction(f, tau=1.0).tolist() == [0.75]  # 1 / 1.00125 <= 1
    assert tau_dormant_fraction(f, tau=0.998).tolist() == [0.5]
    assert dormant_fraction(f).tolist() == [0.75]  # active (> 0) on <= 1% of inputs: units 0, 1 and 3
    # a conv unit's score averages its positions: channel 0 is 1 at one of 2 x 4 (sample, position) pairs,
    # mean 1/8; channel 1 is 1 everywhere. Scores: 1/8 and 1 over their mean 9/16, i.e. 2/9 and 16/9.
    conv = torch.zeros(1, 2, 2, 2, 2)
    conv[0, 0, 0, 0, 0] = 1.0
    conv[0, :, 1] = 1.0
    assert tau_dormant_fraction(conv).tolist() == [0.0]
    assert tau_dormant_fraction(conv, tau=0.22).tolist() == [0.0] and tau_dormant_fraction(conv, 0.23).tolist() == [0.5]
    with pytest.raises(ValueError, match="tau"):
        tau_dormant_fraction(f, tau=-0.1)


def test_a_diverged_replica_reports_nan_and_leaves_the_others_alone():
    f = torch.ones(2, 5, 3)
    f[1, 0, 0] = float("nan")
    assert tau_dormant_fraction(f)[0] == 0 and math.isnan(tau_dormant_fraction(f)[1])
    g = torch.ones(2, 3, 4)
    g[0, 1, 1] = float("inf")
    assert math.isnan(grama_dormant_fraction(g)[0]) and grama_dormant_fraction(g)[1] == 0


# --------------------------------------------------------------------------- from the latest update


def _hand_net() -> MLP:
    """2-3-1 ReLU net: on x = (1, 2), pre-activations (1, 2, -3), hidden (1, 2, 0), output 3."""
    net = MLP([2, 3, 1], activation="relu")
    with torch.no_grad():
        net.layers[0].weight[0] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
        net.layers[1].weight[0] = torch.tensor([[1.0, 1.0, 1.0]])
        for layer in net.layers:
            layer.bias.zero_()
    return net


def test_grama_and_grad_norm_on_a_hand_checked_net():
    net = _hand_net()
    learner = Learner(net.parameters(), SGD(net.parameters(), lr=0.1))
    assert gradient_metrics(net, learner.latest_gradients()) == {}  # no update yet: nothing to report
    before = net.layers[0].weight.detach().clone()
    learner.update(net(torch.tensor([[1.0, 2.0]])).square().sum())  # L = y^2, dL/dy = 6
    # dL/dz = 6 x (1, 1, 0) (unit 2 is off); dL/dW0 = outer(dL/dz, x); dL/dW1 = 6 x h = (6, 12, 0)
    grads = learner.latest_gradients()
    w0_grad = torch.tensor([[6.0, 12.0], [6.0, 12.0], [0.0, 0.0]])
    assert torch.equal(grads[net.layers[0].weight][0], w0_grad)
    assert torch.allclose(net.layers[0].weight[0], before[0] - 0.1 * w0_grad)  # the step used these very grads
    m = gradient_metrics(net, grads)
    assert m["layer0/grad_norm"].tolist() == pytest.approx([math.sqrt(360)])  # 2 x (36 + 144)
    assert m["layer1/grad_norm"].tolist() == pytest.approx([math.sqrt(180)])  # 36 + 144
    # per unit: mean |incoming gradient| (9, 9, 0), layer mean 6: scores (1.5, 1.5, 0)
    assert grama_scores(grads[net.layers[0].weight]).tolist() == [[1.5, 1.5, 0.0]]
    assert m["layer0/grama_dormant_fraction"].tolist() == pytest.approx([1 / 3])
    assert gradient_metrics(net, grads, grama_tau=1.49)["layer0/grama_dormant_fraction"].tolist() == \
        pytest.approx([1 / 3])
    assert gradient_metrics(net, grads, grama_tau=1.5)["layer0/grama_dormant_fraction"].tolist() == [1.0]
    assert set(m) == {"layer0/grama_dormant_fraction", "layer0/grad_norm", "layer1/grad_norm"}


def test_with_one_example_grama_is_the_per_neuron_gradient_score():
    """Batch of one: the incoming-weight score equals |dL/dz_i| / mean_k |dL/dz_k| (z: pre-activations)."""
    torch.manual_seed(0)
    net = MLP([6, 8, 5, 1], activation="relu")
    net.reset_parameters([torch.Generator().manual_seed(1)])
    with torch.no_grad():
        net.layers[0].bias[0, :3] = -50.0  # three units of layer 0 are off
    learner = Learner(net.parameters(), SGD(net.parameters(), lr=0.0))
    x, y = torch.randn(1, 6), torch.tensor([[0.7]])
    # the reference: gradients with respect to the pre-activations, by an independent forward pass
    w = [(layer.weight[0].detach(), layer.bias[0].detach()) for layer in net.layers]
    z0 = (x @ w[0][0].T + w[0][1]).requires_grad_(True)
    z1 = torch.relu(z0) @ w[1][0].T + w[1][1]
    z1.retain_grad()
    ((torch.relu(z1) @ w[2][0].T + w[2][1]) - y).square().sum().backward()
    learner.update((net(x) - y).square().sum())
    grads = learner.latest_gradients()
    for layer, z in zip(net.layers, (z0, z1)):
        delta = z.grad.abs()[0]
        assert (delta == 0).any() and (delta > 0).any(), "the case must have both kinds of units"
        reference = delta / delta.mean()
        assert torch.allclose(grama_scores(grads[layer.weight])[0], reference, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- replicas


def _trained(seeds: list[int], steps: int = 5) -> tuple[MLP, Learner, DistanceFromInit, torch.Tensor]:
    """An MLP with one replica per seed, trained on each seed's own data; returns it and a probe [R, 16, 4]."""
    net = MLP([4, 6, 5, 1], activation="relu", replicas=len(seeds))
    net.reset_parameters(generators(seeds, "init"))
    distance = DistanceFromInit(net)
    learner = Learner(net.parameters(), SGD(net.parameters(), lr=0.05))
    data = [torch.randn(steps + 1, 8, 4, generator=g) for g in generators(seeds, "data")]
    for t in range(steps):
        x = torch.stack([d[t] for d in data])  # [R, 8, 4]
        learner.update((net(x) - x[..., :1]).square().sum())
    return net, learner, distance, torch.stack([d[steps] for d in data])


def _all_metrics(net, learner, distance, probe) -> dict[str, torch.Tensor]:
    return net_metrics(net, probe, learner.latest_gradients(), distance, tau=0.1, grama_tau=0.1)


def test_each_replica_measures_what_its_seed_alone_measures():
    batched = _all_metrics(*_trained([0, 1, 2]))
    assert {f"layer0/{k}" for k in NEW} | {f"layer2/{k}" for k in NEW_PER_LAYER} <= set(batched)
    for r, seed in enumerate([0, 1, 2]):
        alone = _all_metrics(*_trained([seed]))
        for key, values in alone.items():
            assert batched[key][r].item() == pytest.approx(values[0].item(), rel=1e-5, abs=1e-6), (seed, key)
    assert batched["layer0/distance_from_init"].unique().numel() == 3  # the seeds really differ


def test_changing_one_replica_changes_only_its_metrics():
    net, learner, distance, probe = _trained([0, 1, 2])
    before = _all_metrics(net, learner, distance, probe)
    with torch.no_grad():
        net.layers[0].weight[1] *= 3.0
        net.layers[0].bias[1] -= 1.0
        for g in learner.latest_grads:
            g[1] *= 0.5
            g[1][..., 0] = 0.0
    after = _all_metrics(net, learner, distance, probe)
    changed = {k for k in before if not torch.equal(before[k][1], after[k][1])}
    assert {"layer0/feature_norm", "layer0/distance_from_init", "layer0/grad_norm"} <= changed
    for key in before:
        for r in (0, 2):
            assert torch.equal(before[key][r], after[key][r]) or (before[key][r].isnan() and after[key][r].isnan())


# --------------------------------------------------------------------------- distance from init


def test_distance_from_init_is_zero_at_start_and_measured_by_hand():
    run = regression.RegressionRun(regression_cfg(), [0, 1])
    initial = [layer.weight.detach().clone() for layer in run.net.layers]
    assert all(v.tolist() == [0.0, 0.0] for v in run.distance().values())
    run.train_chunk()
    d = run.distance()
    for i, (layer, w0) in enumerate(zip(run.net.layers, initial)):
        expected = [float(torch.linalg.vector_norm(layer.weight[r].detach() - w0[r])) for r in range(2)]
        assert d[f"layer{i}/distance_from_init"].tolist() == pytest.approx(expected)
        assert min(expected) > 0


def test_distance_from_init_survives_a_checkpoint(tmp_path):
    a = regression.RegressionRun(regression_cfg(), [0, 1])
    a.train_chunk()
    save_checkpoint(tmp_path / "ckpt.pt", a.state_dict())
    saved = load_checkpoint(tmp_path / "ckpt.pt")  # the real (weights-only) load
    # Loaded into runs whose own init differs (LeCun instead of Kaiming): the distance is measured from
    # the init the checkpointed run started from, because the checkpoint carries it.
    b = regression.RegressionRun(regression_cfg("net.init=lecun"), [0, 1])
    b.load_state_dict(saved)
    for key, value in a.distance().items():
        assert torch.equal(b.distance()[key], value), key
    c = regression.RegressionRun(regression_cfg("net.init=lecun"), [0, 1])
    c.load_state_dict({k: v for k, v in saved.items() if k != "init_weights"})  # an older checkpoint
    assert not torch.equal(c.distance()["layer0/distance_from_init"], a.distance()["layer0/distance_from_init"])
    wrong = DistanceFromInit(MLP([20, 7, 1], replicas=2))
    with pytest.raises(ValueError, match="initial weights"):
        wrong.load_state_dict(saved["init_weights"])


def test_a_resumed_run_logs_the_metrics_of_an_uninterrupted_one(tmp_path, one_thread):
    cfg = regression_cfg(config="cbp")
    regression.run(cfg, [0, 1], tmp_path / "straight")
    regression.run({**cfg, "examples": 1000}, [0, 1], tmp_path / "stopped")  # ends at 1000 with a checkpoint
    regression.run(cfg, [0, 1], tmp_path / "stopped", resume=True)
    for seed in (0, 1):
        straight = read_scalars(tmp_path / "straight" / "tb" / f"seed_{seed}")
        resumed = read_scalars(tmp_path / "stopped" / "tb" / f"seed_{seed}")
        tags = [f"plasticity/net/layer0/{k}" for k in NEW] + \
            [f"plasticity/net/layer{i}/{k}" for i in (0, 1) for k in NEW_PER_LAYER]
        for tag in tags:
            assert [s for s, _ in resumed[tag]] == [500, 1000, 1500], tag
            assert resumed[tag] == straight[tag], tag


# --------------------------------------------------------------------------- TensorBoard in real runs


def _scalars(run_dir: Path) -> dict[str, list]:
    """{tag: [(step, value)]} of one TensorBoard run, read with tensorboard's own EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_a_real_regression_run_writes_every_metric_to_tensorboard(tmp_path):
    sets = [x for s in SMALL for x in ("--set", s)]
    out = tmp_path / "run"
    assert main(["train", str(ROOT / "configs/regression/bp.yaml"), "--seeds", "2", "--out", str(out), *sets,
                 "--set", "log.dormant_tau=0.1"]) == 0
    runs = {name: _scalars(out / "tb" / name) for name in ("seed_0", "seed_1", "mean")}
    group_tags = [f"plasticity/net/layer0/{k}" for k in NEW]
    layer_tags = [f"plasticity/net/layer{i}/{k}" for i in (0, 1) for k in NEW_PER_LAYER]
    for tag in group_tags + layer_tags:
        values = {name: [v for _, v in scalars[tag]] for name, scalars in runs.items()}
        assert [s for s, _ in runs["seed_0"][tag]] == [500, 1000, 1500], tag
        assert all(math.isfinite(v) for vs in values.values() for v in vs), tag
        assert values["mean"] == pytest.approx([(a + b) / 2 for a, b in zip(values["seed_0"], values["seed_1"])])
    for seed in ("seed_0", "seed_1"):
        distance = [v for _, v in runs[seed]["plasticity/net/layer0/distance_from_init"]]
        assert 0 < distance[0] and all(v > 0 for _, v in runs[seed]["plasticity/net/layer1/grad_norm"])
        assert all(0 <= v <= 1 for k in ("tau_dormant_fraction", "grama_dormant_fraction")
                   for _, v in runs[seed][f"plasticity/net/layer0/{k}"])
    bad = main(["train", str(ROOT / "configs/regression/bp.yaml"), "--out", str(tmp_path / "bad"), *sets,
                "--set", "log.grama_tau=-1"])
    assert bad == 2 and not (tmp_path / "bad").exists()


def test_a_real_permuted_mnist_run_writes_every_metric_to_tensorboard(tmp_path, one_thread):
    from rl_plasticity.problems import permuted_mnist

    cfg, _ = resolve_config({"problem": "permuted_mnist"}, ["tasks=2", "examples_per_task=40", "net.hidden=[8,6]",
                                                             "log.chunk=20", "log.probe_size=30"])
    permuted_mnist.run(cfg, [0], tmp_path)
    scalars = _scalars(tmp_path / "tb" / "seed_0")
    for tag in [f"plasticity/net/layer{i}/{k}" for i in (0, 1) for k in NEW] + \
            [f"plasticity/net/layer{i}/{k}" for i in (0, 1, 2) for k in NEW_PER_LAYER]:
        assert [s for s, _ in scalars[tag]] == [40, 80] and all(math.isfinite(v) for _, v in scalars[tag]), tag


def test_ppo_logs_every_metric_for_actor_and_critic_and_checkpoints_the_init(tmp_path):
    from rl_plasticity.config import load_config
    from rl_plasticity.problems.mujoco_ppo import DEFAULTS, RULES, PPORun

    tiny = ["ppo.rollout_steps=128", "ppo.minibatch_size=64", "ppo.epochs=1", "log.probe_size=100",
            "net.hidden=[16,16]", "env.change_every=100", "log.metrics_every=128"]
    cfg = load_config(ROOT / "configs/friction_ant/cbp.yaml", tiny, DEFAULTS, RULES)
    run = PPORun(cfg, seed=0)
    with TBLogger(tmp_path / "tb") as log:
        run.advance(log)
        run.advance(log)
    scalars = _scalars(tmp_path / "tb")
    for net in ("actor", "critic"):
        tags = [f"plasticity/{net}/layer{i}/{k}" for i in (0, 1) for k in NEW] + \
            [f"plasticity/{net}/layer{i}/{k}" for i in (0, 1, 2) for k in NEW_PER_LAYER]
        for tag in tags:
            assert [s for s, _ in scalars[tag]] == [128, 256] and all(math.isfinite(v) for _, v in scalars[tag]), tag
        assert all(v > 0 for _, v in scalars[f"plasticity/{net}/layer2/distance_from_init"])
    resumed = PPORun(cfg, seed=0)
    save_checkpoint(tmp_path / "ppo.pt", run.state_dict())
    resumed.load_state_dict(load_checkpoint(tmp_path / "ppo.pt"))
    for net in ("actor", "critic"):
        for key, value in run.distance[net]().items():
            assert torch.equal(resumed.distance[net]()[key], value)

