"""PPO: advantage estimation, truncation bootstrapping, configs, exact resume, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rl_plasticity.agents.rollout import compute_gae, next_state_values

from rl_plasticity.cli import main as cli_main
from rl_plasticity.config import validate
from rl_plasticity.problems.mujoco_ppo import DEFAULTS, PPORun
from rl_plasticity.run.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from rl_plasticity.run.tblog import read_scalars

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*ant/*.yaml")) + [REPO / "configs/quickstart/friction_ant_cbp.yaml"]
TINY = ["total_steps=256", "ppo.rollout_steps=128", "ppo.minibatch_size=64", "ppo.epochs=2",
        "log.metrics_every=128", "log.checkpoint_every=128", "log.probe_size=64"]


def train(*args: str) -> int:
    return cli_main(["train", *args])


def overrides(items: list[str]) -> list[str]:
    return [x for item in items for x in ("--set", item)]


# --------------------------------------------------------------------------- GAE and truncation


def test_gae_bootstraps_truncation_and_cuts_the_chain_by_hand():
    rewards = np.ones(4)
    values = np.array([1.0, 2.0, 3.0, 4.0])
    ended = np.array([False, True, False, False])  # step 1 hits the time limit
    nv = next_state_values(values, last_value=5.0, ended=ended, truncated_values={1: 10.0})
    assert nv.tolist() == [2.0, 10.0, 4.0, 5.0]
    adv, ret = compute_gae(rewards, values, nv, np.zeros(4, bool), ended, gamma=0.5, lam=0.5)
    # t3: 1 + .5*5 - 4 = -.5;  t2: 1 + .5*4 - 3 + .25*(-.5) = -.125
    # t1: 1 + .5*10 - 2 = 4 (chain cut);  t0: 1 + .5*2 - 1 + .25*4 = 2
    assert adv.tolist() == [2.0, 4.0, -0.125, -0.5]
    assert ret.tolist() == [3.0, 6.0, 2.875, 3.5]
    # Treated as termination (the paper's behaviour): no bootstrap at step 1.
    adv, _ = compute_gae(rewards, values, nv, ended.copy(), ended, gamma=0.5, lam=0.5)
    assert adv.tolist() == [0.75, -1.0, -0.125, -0.5]


def _tiny_run(**ppo) -> PPORun:
    cfg = validate({"env": {"id": "Ant-v5", "max_episode_steps": 5}, "net": {"hidden": [8, 8]},
                    "ppo": {"rollout_steps": 12, "minibatch_size": 4, "epochs": 1, **ppo}}, DEFAULTS)
    return PPORun(cfg, seed=0)


def test_runner_keeps_final_observation_of_truncated_episodes():
    run = _tiny_run()
    buf = run.buffer
    episodes, _ = run.runner.collect(buf, run.agent.policy_mean, run.agent.action_std())
    assert [e.length for e in episodes] == [5, 5] and buf.ended.nonzero()[0].tolist() == [4, 9]
    assert not buf.terminated.any() and sorted(buf.truncated_obs) == [4, 9]
    # The final observation is not the next stored one: that one starts the new episode.
    assert not np.array_equal(buf.truncated_obs[4], buf.obs[5])
    data = run.agent.prepare(buf)

    def v(obs):
        with torch.no_grad():
            return float(run.agent.critic(torch.from_numpy(np.asarray(obs))[None]).double())

    values = data["values"].double().numpy()
    nv = next_state_values(values, v(buf.last_obs), buf.ended, {t: v(o) for t, o in buf.truncated_obs.items()})
    adv, _ = compute_gae(buf.rewards, values, nv, buf.terminated, buf.ended, 0.99, 0.95)
    np.testing.assert_allclose(data["advantages"].numpy(), adv, rtol=1e-4, atol=1e-4)


def test_truncation_as_termination_drops_the_bootstrap():
    a, b = _tiny_run(), _tiny_run(truncation_as_termination=True)
    for run in (a, b):
        run.runner.collect(run.buffer, run.agent.policy_mean, run.agent.action_std())
    adv_a, adv_b = a.agent.prepare(a.buffer)["advantages"], b.agent.prepare(b.buffer)["advantages"]
    assert torch.equal(adv_a[10:], adv_b[10:])  # after the last episode end: identical
    assert not torch.allclose(adv_a[:10], adv_b[:10])


# --------------------------------------------------------------------------- every config runs


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_smoke(config, tmp_path):
    extra = ["env.change_every=100"] if "id: rl_plasticity/" in config.read_text() else []
    assert train(str(config), "--seed", "0", "--out", str(tmp_path / "run"), *overrides(TINY + extra)) == 0
    assert json.loads((tmp_path / "run/results.json").read_text())["steps"] == 256
    assert latest_checkpoint(tmp_path / "run").name == "ckpt-256.pt"


def test_tensorboard_tags(tmp_path):
    cfg = REPO / "configs/friction_ant/cbp.yaml"
    assert train(str(cfg), "--out", str(tmp_path / "run"),
                 *overrides(TINY + ["env.change_every=100", "env.max_episode_steps=50"])) == 0
    tags = set(read_scalars(tmp_path / "run/tb"))
    for tag in ("charts/episodic_return", "charts/episodic_length", "charts/friction", "charts/sps",
                "losses/value_loss", "losses/policy_loss", "losses/approx_kl", "losses/clip_fraction",
                "losses/entropy", "losses/explained_variance", "plasticity/actor/layer0/cbp_replacements",
                "plasticity/critic/layer1/dormant_fraction", "plasticity/actor/layer1/stable_rank",
                "plasticity/critic/layer0/effective_rank", "plasticity/actor/layer2/mean_abs_weight",
                "plasticity/critic/weight_change"):
        assert tag in tags, tag


# --------------------------------------------------------------------------- exact resume

# Episodes of 50 steps and rollouts of 64 put checkpoints mid-episode; the physics switches every
# 150 steps; CBP, ReDo and perturbation all act (and use their generators); both normalisers are on.
RESUME = ["total_steps=3840", "env.change_every=150", "env.max_episode_steps=50", "net.hidden=[32,32]",
          "ppo.rollout_steps=64", "ppo.minibatch_size=16", "ppo.epochs=2", "ppo.normalize_obs=true",
          "ppo.normalize_reward=true", "cbp.maturity_threshold=5", "cbp.replacement_rate=0.05",
          "redo.enabled=true", "redo.every=7", "snp.enabled=true", "snp.noise_std=1e-6",
          "log.checkpoint_every=128", "log.metrics_every=256", "log.probe_size=32"]


def _assert_same_state(a: dict, b: dict, where: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_sigterm_then_resume_matches_an_uninterrupted_run(tmp_path):
    config = str(REPO / "configs/friction_ant/cbp.yaml")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert train(config, "--seed", "3", "--out", str(straight), *overrides(RESUME)) == 0

    cmd = [sys.executable, "-m", "rl_plasticity.cli", "train", config, "--seed", "3", "--out", str(stopped),
           *overrides(RESUME)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "RL_PLASTICITY_NO_PROGRESS": "1"})
    deadline = time.monotonic() + 120
    while not list_checkpoints(stopped) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out  # the conventional code of a SIGTERM stop
    assert "stopped at" in out, f"the run finished before the signal arrived:\n{out}"
    assert list_checkpoints(stopped)[-1][0] < 3840

    assert train("--resume", str(stopped)) == 0
    a, b = load_checkpoint(latest_checkpoint(straight)), load_checkpoint(latest_checkpoint(stopped))
    assert a["updates"] == b["updates"] == 60
    _assert_same_state(a["agent"], b["agent"])  # parameters, Adam moments/steps, CBP/ReDo/SnP state, RNGs
    _assert_same_state(a["env"], b["env"])
    assert a["returns"] == b["returns"]
    logged_a, logged_b = read_scalars(straight / "tb"), read_scalars(stopped / "tb")
    for tag in ("charts/episodic_return", "losses/value_loss", "plasticity/actor/weight_change",
                "plasticity/critic/layer1/stable_rank", "plasticity/actor/layer0/cbp_replacements"):
        assert logged_a[tag] == logged_b[tag], tag


def test_resume_passes_over_a_damaged_newest_checkpoint_and_ends_as_an_uninterrupted_run(tmp_path, capsys):
    config = str(REPO / "configs/friction_ant/cbp.yaml")
    straight, damaged = tmp_path / "straight", tmp_path / "damaged"
    for out in (straight, damaged):
        assert train(config, "--seed", "1", "--out", str(out), *overrides(TINY)) == 0
    (damaged / "results.json").unlink()
    newest = latest_checkpoint(damaged)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the checksum no longer matches
    newest.write_bytes(bytes(data))
    capsys.readouterr()
    assert train("--resume", str(damaged)) == 0
    assert "resuming from step 128" in capsys.readouterr().err
    a, b = load_checkpoint(latest_checkpoint(straight)), load_checkpoint(latest_checkpoint(damaged))
    _assert_same_state(a["agent"], b["agent"])
    _assert_same_state(a["env"], b["env"])


# --------------------------------------------------------------------------- bad input


def test_unknown_env_id_is_a_user_error(tmp_path, capsys):
    assert train(str(REPO / "configs/ant/std.yaml"), "--out", str(tmp_path / "r"), "--set", "env.id=Nope-v9") == 2
    assert "unknown gymnasium env 'Nope-v9'" in capsys.readouterr().err


@pytest.mark.parametrize("bad, message", [
    ("optimizer.name=rmsprop", "config key 'optimizer.name' must be one of"),
    ("optimizer.name=sgd", "must be 'adam' for PPO"),
    ("cbpp.enabled=true", "unknown config key 'cbpp'"),
    ("ppo.minibatch_size=100", "must be a multiple of 'ppo.minibatch_size'"),
    ("env.change_every=5", "applies only to the non-stationary envs"),
])
def test_bad_learner_settings_are_user_errors(tmp_path, capsys, bad, message):
    assert train(str(REPO / "configs/ant/std.yaml"), "--out", str(tmp_path / "r"), "--set", bad) == 2
    assert message in capsys.readouterr().err


def test_checkpoint_from_another_config_is_refused(tmp_path, capsys):
    config = str(REPO / "configs/ant/std.yaml")
    assert train(config, "--out", str(tmp_path / "a"), *overrides(TINY)) == 0
    assert train(config, "--out", str(tmp_path / "b"), *overrides(TINY + ["total_steps=512"])) == 0
    for ckpt in (tmp_path / "b/checkpoints").iterdir():
        ckpt.unlink()
    shutil.copy(latest_checkpoint(tmp_path / "a"), tmp_path / "b/checkpoints/ckpt-256.pt")
    capsys.readouterr()
    assert train("--resume", str(tmp_path / "b")) == 2
    assert "belongs to another run configuration (keys total_steps differ)" in capsys.readouterr().err


def test_nan_loss_is_a_user_error_and_writes_no_checkpoint(tmp_path, capsys):
    assert train(str(REPO / "configs/ant/std.yaml"), "--out", str(tmp_path / "r"),
                 *overrides(TINY + ["optimizer.lr=1e30"])) == 2
    assert "training diverged" in capsys.readouterr().err
    assert list_checkpoints(tmp_path / "r") == []


@pytest.mark.parametrize("env_id", ["rl_plasticity/MassAnt-v0", "rl_plasticity/FrictionAnt-v0", "Ant-v5"])
def test_env_state_restores_mid_episode_exactly(env_id):
    schedule = {"change_every": 40} if env_id.startswith("rl_plasticity/") else {}
    cfg = validate({"env": {"id": env_id, "max_episode_steps": 70, **schedule}, "net": {"hidden": [8, 8]},
                    "ppo": {"rollout_steps": 50, "minibatch_size": 10, "epochs": 1}}, DEFAULTS)
    a, b = PPORun(cfg, seed=1), PPORun(cfg, seed=2)
    a.runner.collect(a.buffer, a.agent.policy_mean, a.agent.action_std())  # stops mid-episode
    b.load_state_dict({**a.state_dict(), "seed": 2})
    for run in (a, b):
        run.runner.collect(run.buffer, run.agent.policy_mean, run.agent.action_std())
    assert np.array_equal(a.buffer.obs, b.buffer.obs) and np.array_equal(a.buffer.rewards, b.buffer.rewards)
    assert a.runner.physics_value == b.runner.physics_value


# --------------------------------------------------------------------------- acting through frozen heads


@pytest.mark.parametrize("activation, norm", [("relu", "none"), ("relu", "layer"), ("crelu", "none"),
                                              ("crelu", "layer")])
def test_policy_mean_acts_in_numpy_through_the_frozen_heads_of_injections_into_two_layers(activation, norm,
                                                                                         monkeypatch):
    import copy

    from rl_plasticity.agents.ppo import PPOAgent, PPOSettings
    from rl_plasticity.core.builders import METHOD_DEFAULTS

    cfg = copy.deepcopy(METHOD_DEFAULTS)
    cfg["optimizer"].update(name="adam", lr=1e-2)
    cfg["reset"].update(enabled=True, what="injection", when="task_switch")  # last_layers: 2
    generators = [torch.Generator().manual_seed(3)]
    agent = PPOAgent(5, 3, [8, 8], activation, "lecun", 0.0, PPOSettings(), cfg, torch.Generator().manual_seed(0),
                     generators, torch.Generator().manual_seed(1), norm=norm)

    def no_torch(obs):
        raise AssertionError("policy_mean left the numpy path")

    monkeypatch.setattr(agent, "_torch_policy_mean", no_torch)
    observations = np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32)
    g = torch.Generator().manual_seed(4)

    def check():
        with torch.no_grad():
            expected = agent.actor(torch.from_numpy(observations))
        np.testing.assert_allclose(np.stack([agent.policy_mean(o) for o in observations]), expected.numpy(),
                                   rtol=1e-5, atol=1e-5)

    for injection in (1, 2, 3):
        agent.learner.task_switch()  # new stacks: policy_mean rebinds its numpy views
        batch = torch.randn(16, 5, generator=g)  # the live head moves away from the fresh one
        agent.learner.update(agent.actor(batch).square().sum() + agent.critic(batch).square().sum() +
                             agent.log_std.sum())
        assert len(agent.actor.frozen_heads) == 2 * injection
        if injection in (1, 3):
            check()
    # An in-place edit of the stack (CBP replacing units the heads read, core/units.py) reaches the numpy views.
    group = agent.actor.groups[0]
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, [2, 5]] = True
    first = agent.actor.head_stacks[0].tensors[0]
    before = first.clone()
    group.reinit(mask, generators)
    assert not torch.equal(first, before)
    assert all(torch.all(group.outgoing_view(first[h])[mask] == 0) for h in range(first.shape[0]))
    check()


@pytest.mark.parametrize("learner", ["std", "cbp"])
def test_first_layers_skip_the_padding_zeros_with_bit_identical_training(learner):
    """The paper configs pad the observation with 84 zeros; the first layers read only the 27 live entries,
    and the weights, CBP's state and Adam's state after two updates equal those of the full-width matmul."""
    from rl_plasticity.config import read_yaml
    from rl_plasticity.problems import resolve_config

    sets = ["ppo.rollout_steps=256", "ppo.minibatch_size=64", "ppo.epochs=2", "log.probe_size=64"]
    if learner == "cbp":
        sets += ["cbp.maturity_threshold=4", "cbp.replacement_rate=0.05"]  # units replaced within the test
    cfg, _ = resolve_config(read_yaml(REPO / "configs" / "friction_ant" / f"{learner}.yaml"), sets)
    skipping, full = PPORun(cfg, seed=0), PPORun(cfg, seed=0)
    for net in (skipping.agent.actor, skipping.agent.critic):
        assert net.layers[0].zero_inputs_from == 27 and net.layers[0].in_features == 111
    for net in (full.agent.actor, full.agent.critic):
        net.layers[0].zero_inputs_from = None
    for _ in range(2):
        skipping.train_update()
        full.train_update()
    a, b = skipping.agent.learner.state_dict(), full.agent.learner.state_dict()
    flat = lambda sd: [t for t in torch.utils._pytree.tree_leaves(sd) if isinstance(t, torch.Tensor)]  # noqa: E731
    assert len(flat(a)) == len(flat(b)) > 0
    assert all(torch.equal(x, y) for x, y in zip(flat(a), flat(b)))
    params = lambda run: [*run.agent.actor.parameters(), *run.agent.critic.parameters()]  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(params(skipping), params(full)))
    assert not torch.equal(params(skipping)[0], PPORun(cfg, seed=0).agent.actor.layers[0].weight)  # it trained
    if learner == "cbp":
        assert sum(skipping.agent.learner.stats().values()) > 0
