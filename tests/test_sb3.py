"""Stable-Baselines3 integration: CBP in actor and critic of SB3's PPO and SAC, checked against our PPO."""

import copy
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from rl_plasticity.agents.ppo import PPOAgent, PPOSettings
from stable_baselines3 import A2C, PPO, SAC
from torch import nn

from rl_plasticity import (
    CBPPolicy,
    CBPSACPolicy,
    envs,  # noqa: F401  (registers rl_plasticity/FrictionAnt-v0)
)
from rl_plasticity.core.builders import METHOD_DEFAULTS
from rl_plasticity.core.methods import ContinualBackprop

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = "rl_plasticity/FrictionAnt-v0"
FAST_CBP = {"replacement_rate": 0.05, "maturity_threshold": 5}


def _env():
    return gym.make(ENV, change_every=500)


def _cbp_state(plasticity) -> dict:
    return plasticity.state_dict()["_extra_state"]["methods"]["cbp"]


def _assert_same_tensors(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same_tensors(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_tensors(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


def test_sb3_policy_bookkeeping_matches_our_ppo_agent():
    """Our PPO agent (core MLPs + learner) and SB3's PPO with CBPPolicy, given the same weights, seeds and
    minibatches, step bit-identically: same units found in actor and critic (the last hidden layers read
    by action_net and value_net), CBP run once per optimizer step, same replacements, weights and Adam state.
    The loss is a regression on the networks' outputs: SB3's and our Gaussian log-probabilities are
    computed differently (equal to float rounding only), while the unit bookkeeping is what is compared."""
    env = _env()
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    cfg = copy.deepcopy(METHOD_DEFAULTS)
    cfg["optimizer"].update(name="adam", lr=1e-3, betas=[0.99, 0.99], weight_decay=1e-4)
    cfg["cbp"].update(enabled=True, **FAST_CBP)
    ours = PPOAgent(obs_dim, act_dim, [16, 16], "relu", "lecun", 0.0, PPOSettings(), cfg,
                    init_generator=torch.Generator().manual_seed(0),
                    method_generators=[torch.Generator().manual_seed(9)],
                    minibatch_generator=torch.Generator().manual_seed(1))
    # The policy's actor and critic each have their methods (seeded 9 and 10): so has the core learner here.
    options = ContinualBackprop.options(cfg["cbp"])
    ours.learner.methods = [ContinualBackprop(net.groups, ours.learner.optimizer, [torch.Generator().manual_seed(s)],
                                              **options) for net, s in ((ours.actor, 9), (ours.critic, 10))]
    sb3 = PPO(CBPPolicy, env, learning_rate=1e-3, seed=0, device="cpu",
              policy_kwargs={"net_arch": {"pi": [16, 16], "vf": [16, 16]}, "activation_fn": nn.ReLU,
                             "ortho_init": False,
                             "optimizer_kwargs": {"betas": (0.99, 0.99), "weight_decay": 1e-4}, "cbp": FAST_CBP,
                             "plasticity_init": "lecun", "plasticity_seed": 9})
    policy = sb3.policy
    sb3_layers = {"actor": [policy.mlp_extractor.policy_net[0], policy.mlp_extractor.policy_net[2], policy.action_net],
                  "critic": [policy.mlp_extractor.value_net[0], policy.mlp_extractor.value_net[2], policy.value_net]}
    core_layers = {"actor": ours.actor.layers, "critic": ours.critic.layers}
    with torch.no_grad():
        for net in ("actor", "critic"):
            for mine, core in zip(sb3_layers[net], core_layers[net]):
                mine.weight.copy_(core.weight[0]), mine.bias.copy_(core.bias[0])
        policy.log_std.copy_(ours.log_std[0])

    data = torch.Generator().manual_seed(2)
    for _ in range(60):
        obs = torch.randn(32, obs_dim, generator=data)
        actions, returns = torch.randn(32, act_dim, generator=data), torch.randn(32, generator=data)

        def loss(mean, value, log_std):
            return (mean - actions).square().mean() + (value - returns).square().mean() + 0.1 * log_std.square().sum()

        ours.learner.update(loss(ours.actor(obs), ours.critic(obs).squeeze(-1), ours.log_std[0]))
        latent_pi, latent_vf = policy.mlp_extractor(obs)
        sb3_loss = loss(policy.action_net(latent_pi), policy.value_net(latent_vf).squeeze(-1), policy.log_std)
        policy.optimizer.zero_grad()
        sb3_loss.backward()
        policy.optimizer.step()  # CBP runs from the optimizer's step hook

    assert [g.name for g in policy.actor_plasticity.groups] == ["mlp_extractor.policy_net.0",
                                                                "mlp_extractor.policy_net.2"]
    assert [g.name for g in policy.critic_plasticity.groups] == ["mlp_extractor.value_net.0",
                                                                 "mlp_extractor.value_net.2"]
    for core_cbp, sb3 in zip(ours.learner.methods, (policy.actor_plasticity, policy.critic_plasticity)):
        assert all(int(r) > 0 for r in core_cbp.replacements)
        _assert_same_tensors(core_cbp.state_dict(), sb3.methods["cbp"].state_dict())
    for net in ("actor", "critic"):
        for mine, core in zip(sb3_layers[net], core_layers[net]):
            assert torch.equal(mine.weight, core.weight[0]) and torch.equal(mine.bias, core.bias[0])
    sb3_params = [*[p for m in sb3_layers["actor"] + sb3_layers["critic"] for p in (m.weight, m.bias)], policy.log_std]
    for name, tensors in ours.learner.optimizer.state.items():
        assert all(torch.equal(policy.optimizer.state[p][name].reshape(t.shape), t)
                   for p, t in zip(sb3_params, tensors)), name


def _small_ppo(**cbp):
    return PPO(CBPPolicy, _env(), n_steps=256, batch_size=64, n_epochs=2, seed=0, device="cpu",
               policy_kwargs={"net_arch": {"pi": [16, 16], "vf": [16, 16]}, "cbp": {**FAST_CBP, **cbp}})


def test_ppo_cbp_counts_minibatch_steps_and_save_load_resumes_exactly(tmp_path):
    model = _small_ppo()
    model.learn(total_timesteps=512)
    steps = 2 * 2 * (256 // 64)  # rollouts x epochs x minibatches
    state = _cbp_state(model.policy.actor_plasticity)
    for age, replaced in zip(state["age"], state["replacements"]):
        assert age.max().item() == steps  # every unit aged once per optimizer step
        assert replaced.item() > 0
    model.save(tmp_path / "ppo")
    loaded = PPO.load(tmp_path / "ppo", env=_env(), device="cpu")
    _assert_same_tensors(model.policy.state_dict(), loaded.policy.state_dict())
    _assert_same_tensors(model.policy.optimizer.state_dict(), loaded.policy.optimizer.state_dict())
    model.policy.save(tmp_path / "policy.pt")  # the policy alone (SB3 rebuilds it with lr 0)
    _assert_same_tensors(model.policy.state_dict(), CBPPolicy.load(tmp_path / "policy.pt", device="cpu").state_dict())
    # One more update from the same rollout: the loaded model continues exactly as the original.
    loaded.rollout_buffer = copy.deepcopy(model.rollout_buffer)
    loaded.set_logger(model.logger)
    for m in (model, loaded):
        np.random.seed(0)  # SB3's minibatch order
        m.train()
    assert _cbp_state(model.policy.actor_plasticity)["age"][0].max().item() == steps + 8
    _assert_same_tensors(model.policy.state_dict(), loaded.policy.state_dict())


def test_ppo_with_torch_adam_warns_once_and_redo_snp_compose():
    model = PPO(CBPPolicy, _env(), n_steps=128, batch_size=64, n_epochs=2, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16], "optimizer_class": torch.optim.Adam, "cbp": FAST_CBP,
                               "redo": {"every": 2}, "snp": {"shrink": 1e-4, "noise_std": 1e-4}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.learn(total_timesteps=512)
    assert len([w for w in caught if "step count" in str(w.message)]) == 2  # once for the actor's, the critic's methods
    stats = model.policy.plasticity_stats()
    assert stats["actor"]["cbp/mlp_extractor.policy_net.0/replacements"] > 0
    assert "redo/mlp_extractor.value_net.0/resets" in stats["critic"]


def test_a2c_with_rmsprop_resets_without_a_warning():
    """A2C's default RMSprop has no bias correction: zeroing a unit's square average is a fresh state."""
    model = A2C(CBPPolicy, _env(), n_steps=8, seed=0, device="cpu", policy_kwargs={"net_arch": [16], "cbp": FAST_CBP})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.learn(total_timesteps=200)
    assert isinstance(model.policy.optimizer, torch.optim.RMSprop)
    plasticity = model.policy.actor_plasticity
    assert all(v > 0 for v in plasticity.stats().values())
    replaced = (plasticity.methods["cbp"].age[0][0] == 0).nonzero().flatten()
    square_avg = model.policy.optimizer.state[model.policy.mlp_extractor.policy_net[0].weight]["square_avg"]
    assert len(replaced) and torch.all(square_avg[replaced] == 0)


def test_sac_cbp_in_actor_and_critic_and_save_load(tmp_path):
    model = SAC(CBPSACPolicy, _env(), learning_starts=40, batch_size=32, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16, 16], "cbp": FAST_CBP})
    model.learn(total_timesteps=100)
    policy = model.policy
    assert [g.name for g in policy.actor_plasticity.groups] == ["actor.latent_pi.0", "actor.latent_pi.2"]
    assert policy.actor_plasticity.groups[-1].outgoing_layers == [policy.actor.mu, policy.actor.log_std]
    assert [g.name for g in policy.critic_plasticity.groups] == ["critic.qf0.0", "critic.qf0.2",
                                                                 "critic.qf1.0", "critic.qf1.2"]
    gradient_steps = 100 - 40
    for plasticity in (policy.actor_plasticity, policy.critic_plasticity):
        state = _cbp_state(plasticity)
        assert all(a.max().item() == gradient_steps for a in state["age"])
        assert all(r.item() > 0 for r in state["replacements"])
    model.save(tmp_path / "sac")
    loaded = SAC.load(tmp_path / "sac", device="cpu")
    _assert_same_tensors(policy.state_dict(), loaded.policy.state_dict())
    _assert_same_tensors(model.critic.optimizer.state_dict(), loaded.critic.optimizer.state_dict())


def test_policy_option_typos_and_networks_without_hidden_layers_fail_at_construction():
    """Not after a whole rollout: the options are checked, and the units found, when the policy is built."""
    with pytest.raises(ValueError, match="unknown CBP option 'replacment_rate' .*did you mean 'replacement_rate'"):
        PPO(CBPPolicy, _env(), device="cpu", policy_kwargs={"net_arch": [16], "cbp": {"replacment_rate": 1e-3}})
    with pytest.raises(ValueError, match="ReDo every must be"):
        SAC(CBPSACPolicy, _env(), device="cpu", policy_kwargs={"net_arch": [16], "redo": {"every": 0}})
    with pytest.raises(ValueError, match=r"cbp act\(s\) on hidden units, and the policy network "
                                         r"\(mlp_extractor.policy_net\) has no hidden layer \(net_arch=\[\]\)"):
        PPO(CBPPolicy, _env(), device="cpu", policy_kwargs={"net_arch": []})
    with pytest.raises(ValueError, match=r"redo act\(s\) on hidden units, and the value network"):
        PPO(CBPPolicy, _env(), device="cpu", policy_kwargs={"net_arch": {"pi": [16], "vf": []}, "cbp": None,
                                                           "redo": True})
    with pytest.raises(ValueError, match=r"on hidden units, and the actor \(actor.latent_pi\)"):
        SAC(CBPSACPolicy, _env(), device="cpu", policy_kwargs={"net_arch": {"pi": [], "qf": [16]}})
    # Shrink-and-perturb alone needs no hidden units.
    model = PPO(CBPPolicy, _env(), n_steps=64, batch_size=32, n_epochs=1, device="cpu",
                policy_kwargs={"net_arch": [], "cbp": None, "snp": {"shrink": 1e-3}})
    model.learn(total_timesteps=64)
    assert list(model.policy.actor_plasticity.methods) == list(model.policy.critic_plasticity.methods) == ["snp"]


def test_sb3_bench_is_registered_with_its_options():
    from rl_plasticity.cli import build_parser

    args = build_parser().parse_args(["bench", "sb3", "--json", "--steps", "4096", "--maturity", "50",
                                      "--repeats", "2"])
    assert (args.steps, args.maturity, args.repeats, args.json) == (4096, 50, 2, True)
