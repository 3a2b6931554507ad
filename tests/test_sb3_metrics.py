"""PlasticityMetricsCallback: real SB3 PPO and SAC write the plasticity metrics to TensorBoard event files."""

import gymnasium as gym
import pytest
import torch
from stable_baselines3 import PPO, SAC

from rl_plasticity import (
    Measure,
    PlasticityMetricsCallback,
    PlasticityPolicy,
    envs,  # noqa: F401  (registers rl_plasticity/FrictionAnt-v0)
)
from rl_plasticity.run.tblog import read_scalars

pytestmark = pytest.mark.usefixtures("one_thread")

HIDDEN = {"dormant_fraction", "tau_dormant_fraction", "stable_rank", "effective_rank", "feature_norm",
          "grama_dormant_fraction"}
WEIGHTS = {"mean_abs_weight", "grad_norm", "distance_from_init"}


def _env():
    return gym.make("rl_plasticity/FrictionAnt-v0", change_every=500)


def _tags(scalars, net, layer):
    return {t.split("/")[-1] for t in scalars if t.startswith(f"plasticity/{net}/{layer}/")}


def test_ppo_logs_every_metric_of_actor_and_critic_to_tensorboard(tmp_path, capsys):
    model = PPO(PlasticityPolicy, _env(), n_steps=128, batch_size=64, n_epochs=2, seed=0, device="cpu", verbose=1,
                tensorboard_log=str(tmp_path), policy_kwargs={"net_arch": [16, 16], "plasticity_seed": 0,
                                                              "cbp": {"maturity_threshold": 5,
                                                                      "replacement_rate": 0.05}})
    callback = PlasticityMetricsCallback(every=256, probe_size=100)
    model.learn(512, callback=callback)
    scalars = read_scalars(tmp_path)
    for net, hidden, out in (("actor", "mlp_extractor.policy_net", "action_net"),
                             ("critic", "mlp_extractor.value_net", "value_net")):
        for layer in (f"{hidden}.0", f"{hidden}.2"):
            assert _tags(scalars, net, layer) == HIDDEN | WEIGHTS | {"cbp_replacements"}
            assert [s for s, _ in scalars[f"plasticity/{net}/{layer}/dormant_fraction"]] == [256, 512]
        assert _tags(scalars, net, out) == WEIGHTS
    assert scalars["plasticity/actor/mlp_extractor.policy_net.0/distance_from_init"][-1][1] > 0
    assert scalars["plasticity/actor/mlp_extractor.policy_net.2/cbp_replacements"][-1][1] > 0
    assert "train/value_loss" in scalars  # SB3's own logs are still there
    assert "plasticity/" not in capsys.readouterr().out  # and its console table is not buried

    # What the callback measures is Measure on the rollout's latest observations, with the latest step's grads
    # (after a PPO update they are what .grad holds).
    policy = model.policy
    obs = torch.as_tensor(model.rollout_buffer.observations.reshape(-1, policy.observation_space.shape[0])[-100:])
    actor = Measure(policy, groups=[("mlp_extractor.policy_net.0", "mlp_extractor.policy_net.2"),
                                    ("mlp_extractor.policy_net.2", "action_net")],
                    layers=["mlp_extractor.policy_net.0", "mlp_extractor.policy_net.2", "action_net"],
                    forward=policy.get_distribution)
    actor.load_state_dict(callback.measures["actor"].state_dict())
    expected = {f"plasticity/actor/{k}": v for k, v in actor(obs).items()}
    got = callback.metrics()
    assert {k: got[k] for k in expected} == expected


def test_sac_measures_its_q_networks_on_replay_observations_and_actions(tmp_path):
    model = SAC("MlpPolicy", _env(), learning_starts=25, batch_size=16, seed=0, device="cpu",
                tensorboard_log=str(tmp_path), policy_kwargs={"net_arch": [16]})
    callback = PlasticityMetricsCallback(every=20, probe_size=32)
    model.learn(60, callback=callback)
    scalars = read_scalars(tmp_path)
    assert _tags(scalars, "actor", "actor.latent_pi.0") == HIDDEN | WEIGHTS
    assert _tags(scalars, "actor", "actor.mu") == _tags(scalars, "actor", "actor.log_std") == WEIGHTS
    for q in ("critic.qf0", "critic.qf1"):
        assert _tags(scalars, "critic", f"{q}.0") == HIDDEN | WEIGHTS
        assert [s for s, _ in scalars[f"plasticity/critic/{q}.0/feature_norm"]] == [20, 40, 60]
    # Before learning starts (step 25) there is no gradient: the first measurement has none.
    assert [s for s, _ in scalars["plasticity/critic/critic.qf0.0/grad_norm"]] == [40, 60]
    # The critic's gradient is the one its optimizer stepped with, not .grad after the actor's backward (which
    # reaches the Q-network with the lower value).
    weights = [model.policy.critic.qf0[0].weight, model.policy.critic.qf1[0].weight]
    assert any(not torch.equal(callback._grads["critic"].grads[w], w.grad) for w in weights)


def test_bad_callback_options_fail_at_construction():
    with pytest.raises(ValueError, match="every must be a positive integer, got 0"):
        PlasticityMetricsCallback(every=0)
    with pytest.raises(ValueError, match="probe_size must be a positive integer"):
        PlasticityMetricsCallback(probe_size=1.5)
    with pytest.raises(ValueError, match="dormant must be one of spatial_mean, official"):
        PlasticityMetricsCallback(dormant="all")
