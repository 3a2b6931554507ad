"""Metrics of learned per-weight step sizes: quantiles, collapsed fraction and log10 histograms per net and layer,
in real regression, permuted MNIST and PPO runs read back with TensorBoard's EventAccumulator; PPO's optimizers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rl_plasticity.cli import main
from rl_plasticity.config import read_yaml, validate
from rl_plasticity.core.meta_adam import MetaAdam
from rl_plasticity.core.networks import MLP
from rl_plasticity.core.optim import SGD
from rl_plasticity.core.step_size import IDBD, collapse_threshold, step_size_metrics
from rl_plasticity.errors import UserError
from rl_plasticity.problems import resolve_config
from rl_plasticity.problems.regression import RegressionRun
from rl_plasticity.run.tblog import TBLogger

ROOT = Path(__file__).resolve().parents[1]
STATS = ("step_size_q05", "step_size_q50", "step_size_q95", "step_size_collapsed_fraction")
SMALL = ["examples=400", "bin_size=200", "stream.change_every=200", "log.metrics_every=200",
         "log.probe_size=50", "log.checkpoint_every=200"]


def _events(run_dir: Path):
    """(scalars {tag: [(step, value)]}, histograms {tag: [(step, HistogramValue)]}) of one TensorBoard run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    histograms = {t: [(e.step, e.histogram_value) for e in acc.Histograms(t)] for t in acc.Tags()["histograms"]}
    return scalars, histograms


# --------------------------------------------------------------------------- the metrics by hand


def test_quantiles_collapsed_fraction_and_histogram_values_by_hand():
    net = MLP([3, 4, 2], activation="relu", init="lecun", replicas=2)
    opt = IDBD(list(net.parameters()), 0.01)
    sizes = torch.stack([torch.arange(1, 13, dtype=torch.float32) * 1e-4, torch.full((12,), 1e-2)])
    opt.state["beta"][0].copy_(sizes.log().view(2, 4, 3))  # layer0's weights: 1e-4 ... 12e-4, and all 1e-2
    scalars, histograms = step_size_metrics(opt, net, collapsed=3.5e-4)
    assert set(scalars) == {f"layer{i}/{s}" for i in (0, 1) for s in STATS}
    # torch.quantile interpolates linearly between order statistics: position q * 11 among the 12 sorted values.
    expected = {"step_size_q05": [1.55e-4, 1e-2], "step_size_q50": [6.5e-4, 1e-2], "step_size_q95": [11.45e-4, 1e-2],
                "step_size_collapsed_fraction": [0.25, 0.0]}  # 1e-4, 2e-4 and 3e-4 are below 3.5e-4
    for stat, values in expected.items():
        assert scalars[f"layer0/{stat}"].tolist() == pytest.approx(values, rel=1e-5), stat
    assert scalars["layer1/step_size_q50"].tolist() == pytest.approx([0.01, 0.01], rel=1e-6)  # untouched: lr
    assert scalars["layer1/step_size_collapsed_fraction"].tolist() == [0.0, 0.0]
    assert set(histograms) == {"layer0/step_size_log10", "layer1/step_size_log10"}
    assert [histograms[f"layer{i}/step_size_log10"].shape for i in (0, 1)] == [(2, 12), (2, 8)]
    assert torch.allclose(histograms["layer0/step_size_log10"], sizes.double().log10(), atol=1e-6)


def test_optimizers_without_step_sizes_have_no_step_size_metrics():
    net = MLP([3, 4, 2], activation="relu", init="lecun")
    assert step_size_metrics(SGD(net.parameters(), 0.1), net, 1e-3) == ({}, {})
    assert len(step_size_metrics(MetaAdam(list(net.parameters()), 0.1), net, 1e-3)[0]) == 8


def test_collapsed_step_size_defaults_to_a_hundredth_of_the_initial_step_size():
    cfg, _ = resolve_config({"problem": "regression"}, ["optimizer.lr=0.02"])
    assert cfg["log"]["collapsed_step_size"] is None and collapse_threshold(cfg) == pytest.approx(2e-4)
    cfg, _ = resolve_config({"problem": "regression"}, ["optimizer.lr=0.02", "log.collapsed_step_size=1e-5"])
    assert collapse_threshold(cfg) == 1e-5
    for problem in ("regression", "permuted_mnist", "ppo"):
        with pytest.raises(UserError, match=r"^config key 'log\.collapsed_step_size' must be > 0, got -1\.0$"):
            resolve_config({"problem": problem}, ["log.collapsed_step_size=-1.0"])


# --------------------------------------------------------------------------- real runs, read back


def test_a_regression_run_logs_step_size_metrics_and_histograms_per_seed_and_mean(tmp_path):
    config = ROOT / "configs/regression/meta_adam.yaml"
    sets = [x for s in SMALL for x in ("--set", s)]
    assert main(["train", str(config), "--seeds", "2", "--out", str(tmp_path / "run"), *sets]) == 0
    runs = {name: _events(tmp_path / "run" / "tb" / name) for name in ("seed_0", "seed_1", "mean")}

    # The same run again, by hand, to know the step sizes it ended with (same config and seeds: same numbers).
    cfg, _ = resolve_config(read_yaml(config), SMALL)
    twin = RegressionRun(cfg, [0, 1])
    while not twin.done():
        twin.train_chunk()
    final = dict(zip(twin.learner.optimizer.params, twin.learner.optimizer.step_sizes()))
    expected, _ = step_size_metrics(twin.learner.optimizer, twin.net, collapse_threshold(cfg))

    for layer, weights in ((0, 100), (1, 5)):  # the 20-5-1 net: 5 x 20 and 1 x 5 weights per seed
        for stat in STATS:
            tag = f"plasticity/net/layer{layer}/{stat}"
            per_seed = [runs[f"seed_{r}"][0][tag] for r in (0, 1)]
            assert [s for s, _ in per_seed[0]] == [200, 400], tag
            assert [v[-1][1] for v in per_seed] == pytest.approx(expected[f"layer{layer}/{stat}"].tolist(), rel=1e-6)
            assert runs["mean"][0][tag][-1][1] == pytest.approx(sum(v[-1][1] for v in per_seed) / 2, rel=1e-6)
        tag = f"plasticity/net/layer{layer}/step_size_log10"
        alpha = final[twin.net.layers[layer].weight].double()
        for r in (0, 1):
            steps, last = zip(*runs[f"seed_{r}"][1][tag])
            assert steps == (200, 400) and last[-1].num == weights
            assert last[-1].min == pytest.approx(float(alpha[r].min().log10()), abs=1e-6)
            assert last[-1].max == pytest.approx(float(alpha[r].max().log10()), abs=1e-6)
        pooled = runs["mean"][1][tag][-1][1]
        assert pooled.num == 2 * weights and pooled.min == pytest.approx(float(alpha.min().log10()), abs=1e-6)
    # The meta-gradient moved the step sizes apart within 400 examples.
    assert runs["seed_0"][0]["plasticity/net/layer0/step_size_q05"][-1][1] < 1e-3 < \
        runs["seed_0"][0]["plasticity/net/layer0/step_size_q95"][-1][1]


def test_backprop_runs_log_no_step_size_metrics(tmp_path):
    sets = [x for s in SMALL for x in ("--set", s)]
    assert main(["train", str(ROOT / "configs/regression/bp.yaml"), "--out", str(tmp_path / "run"), *sets]) == 0
    scalars, histograms = _events(tmp_path / "run" / "tb" / "seed_0")
    assert "plasticity/net/layer0/dormant_fraction" in scalars
    assert not [t for t in [*scalars, *histograms] if "step_size" in t]


def test_a_permuted_mnist_run_logs_step_size_metrics(tmp_path, one_thread):
    from rl_plasticity.problems import permuted_mnist

    cfg, _ = resolve_config(read_yaml(ROOT / "configs/permuted_mnist/cpu_idbd.yaml"),
                            ["tasks=2", "examples_per_task=40", "net.hidden=[8,6]", "log.chunk=20",
                             "log.probe_size=30"])
    permuted_mnist.run(cfg, [0], tmp_path)
    scalars, histograms = _events(tmp_path / "tb" / "seed_0")
    for layer in (0, 1, 2):
        for stat in STATS:
            values = scalars[f"plasticity/net/layer{layer}/{stat}"]
            assert [s for s, _ in values] == [40, 80] and all(math.isfinite(v) for _, v in values), (layer, stat)
        assert [s for s, _ in histograms[f"plasticity/net/layer{layer}/step_size_log10"]] == [40, 80]
    assert histograms["plasticity/net/layer0/step_size_log10"][-1][1].num == 8 * 784


# --------------------------------------------------------------------------- PPO


def _tiny_ppo(optimizer: dict, **sections):
    from rl_plasticity.problems.mujoco_ppo import DEFAULTS, PPORun

    cfg = validate({"env": {"id": "Ant-v5", "max_episode_steps": 5}, "net": {"hidden": [8, 8]},
                    "ppo": {"rollout_steps": 12, "minibatch_size": 4, "epochs": 2},
                    "log": {"metrics_every": 12, "probe_size": 12}, "optimizer": optimizer, **sections}, DEFAULTS)
    return PPORun(cfg, seed=0)


def test_ppo_trains_with_meta_adam_and_logs_its_step_sizes_for_actor_and_critic(tmp_path):
    run = _tiny_ppo({"name": "meta_adam", "meta_adam": {"meta_step_size": 0.1}})
    opt = run.agent.learner.optimizer
    assert isinstance(opt, MetaAdam) and (opt.beta1, opt.beta2, opt.lr) == (0.9, 0.999, 1e-4)
    before = [p.detach().clone() for p in opt.params]
    with TBLogger(tmp_path / "tb") as log:
        for _ in range(2):
            run.advance(log)
    assert all(not torch.equal(a, p) for a, p in zip(before, opt.params))
    moved = torch.cat([a.flatten() for a in opt.step_sizes()])
    assert bool((moved != moved[0]).any())  # the meta-gradient acted

    scalars, histograms = _events(tmp_path / "tb")
    widths = {"actor": [run.runner.obs_dim * 8, 64, 8 * run.runner.act_dim], "critic": [run.runner.obs_dim * 8, 64, 8]}
    for net, sizes in widths.items():
        for layer, weights in enumerate(sizes):
            for stat in STATS:
                assert [s for s, _ in scalars[f"plasticity/{net}/layer{layer}/{stat}"]] == [12, 24], (net, stat)
            hist = histograms[f"plasticity/{net}/layer{layer}/step_size_log10"]
            assert [s for s, _ in hist] == [12, 24] and hist[-1][1].num == weights
    alpha = run.agent.actor.layers[0].weight
    final = dict(zip(opt.params, opt.step_sizes()))[alpha][0].double()
    assert histograms["plasticity/actor/layer0/step_size_log10"][-1][1].max == \
        pytest.approx(float(final.max().log10()), abs=1e-6)
    assert scalars["plasticity/critic/layer1/step_size_collapsed_fraction"][-1][1] == 0.0


def test_ppo_meta_adam_combines_with_cbp():
    run = _tiny_ppo({"name": "meta_adam"}, cbp={"enabled": True, "replacement_rate": 0.2, "maturity_threshold": 2})
    for _ in range(2):
        _, losses, _ = run.train_update()
    replaced = {k: v for k, v in run.agent.learner.stats().items() if k.endswith("replacements")}  # running totals
    assert len(replaced) == 4 and sum(replaced.values()) > 0
    assert all(math.isfinite(v) for v in losses.values())
    assert all(bool(torch.isfinite(t).all()) for t in run.agent.learner.optimizer.flat.values())


@pytest.mark.parametrize("name", ["sgd", "upgd", "idbd", "autostep"])
def test_ppo_refuses_raw_gradient_optimizers_and_says_what_to_use(name):
    message = (r"^config key 'optimizer\.name' must be 'adam' for PPO, or 'meta_adam' for learned per-weight step "
               rf"sizes on Adam's step; got '{name}': .*normalisation$")
    with pytest.raises(UserError, match=message):
        resolve_config({"problem": "ppo"}, [f"optimizer.name={name}"])
    resolve_config({"problem": "ppo"}, ["optimizer.name=meta_adam"])  # accepted


# --------------------------------------------------------------------------- the new configs run


@pytest.mark.parametrize("config", ["regression/meta_adam", "regression/meta_adam_cbp",
                                    *[f"permuted_mnist/cpu_{o}{c}" for o in ("idbd", "autostep", "meta_adam")
                                      for c in ("", "_cbp")]])
def test_each_step_size_config_runs_a_few_hundred_examples(config, tmp_path):
    small = SMALL if config.startswith("regression") else \
        ["tasks=2", "examples_per_task=200", "log.chunk=100", "log.probe_size=50", "log.checkpoint_every_tasks=1"]
    sets = [x for s in small for x in ("--set", s)]
    assert main(["train", str(ROOT / "configs" / f"{config}.yaml"), "--out", str(tmp_path / "run"), *sets]) == 0
    scalars, histograms = _events(tmp_path / "run" / "tb" / "seed_0")
    assert all(math.isfinite(v) for _, v in scalars["plasticity/net/layer0/step_size_q50"])
    assert "plasticity/net/layer1/step_size_log10" in histograms
