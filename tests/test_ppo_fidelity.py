"""PPO/Ant against the paper's official code (shibhansh/loss-of-plasticity): every switch of
docs/fidelity.md, and one PPO update against an independent implementation of the official formulas
(lop/algos/rl/ppo.py: PPO.get_rets_advs and PPO.learn), written here from that code's definitions."""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from rl_plasticity.agents.env_runner import EnvRunner
from rl_plasticity.agents.ppo import PPOAgent, PPOSettings
from rl_plasticity.agents.rollout import RolloutBuffer
from rl_plasticity.envs.schedule import ValueSchedule

from rl_plasticity import envs
from rl_plasticity.config import load_config, validate
from rl_plasticity.core.methods import ContinualBackprop, ReDo
from rl_plasticity.core.metrics import probe_metrics
from rl_plasticity.core.networks import MLP
from rl_plasticity.core.optim import Adam
from rl_plasticity.errors import UserError
from rl_plasticity.problems.mujoco_ppo import DEFAULTS, RULES, PPORun, config_differences, make_env

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs/friction_ant/cbp.yaml"
TINY = ["ppo.rollout_steps=128", "ppo.minibatch_size=64", "ppo.epochs=1", "log.probe_size=100",
        "net.hidden=[16,16]", "env.change_every=100"]


def paper_cfg(*overrides: str, path: Path = PAPER) -> dict:
    return load_config(path, list(overrides), DEFAULTS, RULES)


# --------------------------------------------------------------------------- actions


class RecordActions(gym.Wrapper):
    def __init__(self, env):
        super().__init__(env)
        self.sent = []

    def step(self, action):
        self.sent.append(np.array(action, copy=True))
        return self.env.step(action)


@pytest.mark.parametrize("clip", [False, True])
def test_the_env_gets_the_sampled_action_unless_clipping_is_asked_for(clip):
    env = RecordActions(gym.make("Ant-v5").unwrapped)
    runner = EnvRunner(env, 1000, seed=0, noise_seed=1, clip_actions=clip)
    buf = RolloutBuffer(16, runner.obs_dim, runner.act_dim)
    runner.collect(buf, lambda obs: np.full(runner.act_dim, 0.8, np.float32), np.full(runner.act_dim, 2.0, np.float32))
    sent = np.stack(env.sent)  # the buffer keeps the sample either way
    if clip:
        assert np.array_equal(sent, np.clip(buf.actions, -1, 1)) and np.abs(sent).max() <= 1
    else:
        assert np.array_equal(sent, buf.actions) and np.abs(sent).max() > 1


def test_the_control_cost_is_charged_on_the_sampled_action():
    env = gym.make("Ant-v5").unwrapped
    env.reset(seed=0)
    action = np.full(8, 2.0)
    _, _, _, _, info = env.step(action)
    assert info["reward_ctrl"] == pytest.approx(-0.5 * np.sum(action**2))  # 16x what the clipped action costs


# --------------------------------------------------------------------------- observation and reward


def test_paper_observation_is_v3s_111_entries_with_zero_contact_forces():
    env, _ = make_env(paper_cfg())
    obs, _ = env.reset(seed=0)
    assert obs.shape == (111,) and env.observation_space.shape == (111,)
    for _ in range(50):
        obs, *_ = env.step(env.action_space.sample())
    assert np.all(obs[27:] == 0) and np.any(obs[:27] != 0)
    env.close()


def test_paper_env_wrappers_pass_gymnasiums_checker():
    base = gym.make("Ant-v5", include_cfrc_ext_in_observation=False, contact_cost_weight=0.0).unwrapped
    check_env(envs.ZeroPadObservation(envs.SurviveRewardOnTermination(base), 111), skip_render_check=True)


def test_first_layers_have_the_official_fan_in_111_for_init_and_cbp():
    run = PPORun(paper_cfg(*TINY[:4]), seed=0)
    bound = math.sqrt(3 / 111)
    for net in (run.agent.actor, run.agent.critic):
        layer = net.layers[0]
        assert layer.in_features == 111 and layer.bound == pytest.approx(bound)
        w = layer.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
        assert w.abs().mean() == pytest.approx(bound / 2, rel=0.02)  # U(+-b) has mean |w| = b / 2
        assert torch.all(layer.bias == 0)
    fresh = run.agent.actor.layers[0].sample_weights(500, torch.Generator().manual_seed(0))
    assert fresh.abs().max() <= bound and fresh.abs().max() > 0.99 * bound  # CBP's re-init draws the same


def test_survive_reward_is_paid_on_the_terminating_step_as_in_v3():
    def rollout(wrap: bool):
        env = gym.make("Ant-v5", include_cfrc_ext_in_observation=False, contact_cost_weight=0.0).unwrapped
        env = envs.SurviveRewardOnTermination(env) if wrap else env
        env.reset(seed=3)
        rng, rewards = np.random.default_rng(0), []
        while True:
            _, r, terminated, truncated, info = env.step(rng.standard_normal(8) * 3)
            rewards.append(r)
            if terminated or truncated:
                return np.array(rewards), terminated, info

    plain, terminated, info_plain = rollout(False)
    v3, _, info_v3 = rollout(True)
    assert terminated, "the test needs an episode that ends by termination"
    assert info_plain["reward_survive"] == 0 and info_v3["reward_survive"] == 1
    assert np.array_equal(v3[:-1], plain[:-1]) and v3[-1] == pytest.approx(plain[-1] + 1.0)


def test_paper_configs_set_every_official_switch():
    for path in sorted(REPO.glob("configs/*ant/*.yaml")):
        cfg = paper_cfg(path=path)
        assert cfg["env"]["pad_observation_to"] == 111 and cfg["env"]["survive_reward_on_termination"], path
        assert cfg["env"]["kwargs"] == {"include_cfrc_ext_in_observation": False, "contact_cost_weight": 0.0}, path
        assert not cfg["ppo"]["clip_actions"] and cfg["ppo"]["advantage_normalization"] == "batch", path
        assert cfg["log"]["probe"] == "rollout" and cfg["log"]["probe_size"] == 1000, path
        if cfg["env"]["id"].startswith("rl_plasticity/"):
            assert cfg["env"]["change_spacing"] == "since_last_change", path
        if cfg["cbp"]["enabled"]:
            assert cfg["cbp"]["replacement_count"] == "bernoulli" and not cfg["cbp"]["transfer_mean_to_bias"], path


# --------------------------------------------------------------------------- schedule


def test_since_last_change_spacing_switches_as_the_official_loop():
    """Official run_ppo.py: at an episode end on step index i, switch if i - previous_change_time >
    change_time, then previous_change_time = i (starting at 0). Episodes of 4 steps end on indices
    3, 7, 11, ...: with change_time 10 the switches are at indices 11 (11 - 0 > 10) and 23 (23 - 11 > 10)."""
    schedule = ValueSchedule("friction", change_every=10, values=[1.0, 2.0, 3.0], spacing="since_last_change")
    schedule.start(0)
    switched_at = []
    for steps in range(1, 40):
        schedule.count_step()
        if steps % 4 == 0 and schedule.advance():  # episode end, then reset
            switched_at.append(steps - 1)
    assert switched_at == [11, 23, 35]
    assert schedule.phase == 3 and schedule.value == 1.0

    restored = ValueSchedule("friction", change_every=10, values=[1.0, 2.0, 3.0], spacing="since_last_change")
    restored.set_state(schedule.get_state())
    assert restored.last_change == 35


def test_fixed_spacing_is_unchanged():
    schedule = ValueSchedule("friction", change_every=10, values=[1.0, 2.0, 3.0])
    schedule.start(0)
    switched_at = []
    for steps in range(1, 40):
        schedule.count_step()
        if steps % 4 == 0 and schedule.advance():
            switched_at.append(steps)
    assert switched_at == [12, 20, 32]


# --------------------------------------------------------------------------- advantages and one update


def _official_update(actor, critic, log_std, buf: RolloutBuffer, perms, s: PPOSettings, adam_kw: dict,
                     norm: str = "batch"):
    """lop/algos/rl/ppo.py, PPO.get_rets_advs + PPO.learn, on plain torch modules (float32 as there).

    norm "batch" is the official normalisation of the whole rollout (unbiased std, no epsilon, skipped
    when the std is 0). norm "minibatch" skips it and normalises each minibatch's advantages instead,
    as SB3 does: stable_baselines3/ppo/ppo.py, PPO.train, `advantages = (advantages -
    advantages.mean()) / (advantages.std() + 1e-8)` (a torch tensor's std, so unbiased, epsilon 1e-8
    added to the std). The returned advantages are then the un-normalised ones."""
    os_, acts = torch.from_numpy(buf.obs), torch.from_numpy(buf.actions)
    rs = torch.from_numpy(buf.rewards).float()
    dones = torch.from_numpy(buf.ended.astype(np.float32))
    op = torch.from_numpy(buf.last_obs)[None]
    with torch.no_grad():
        vals = critic(torch.cat((os_, op))).t()[0]
        logpbs = torch.distributions.Normal(actor(os_), log_std.exp()).log_prob(acts).sum(1, keepdim=True)
    advs = torch.zeros(len(rs) + 1)
    for t in reversed(range(len(rs))):
        delta = rs[t] + (1 - dones[t]) * s.gamma * vals[t + 1] - vals[t]
        advs[t] = delta + (1 - dones[t]) * s.gamma * s.gae_lambda * advs[t + 1]
    v_rets = (advs[:-1] + vals[:-1]).view(-1, 1)
    advs = advs[:-1].view(-1, 1)
    if norm == "batch":
        advs = advs - advs.mean()
        if advs.std() != 0 and not torch.isnan(advs.std()):
            advs /= advs.std()
    opt = torch.optim.Adam(list(actor.parameters()) + list(critic.parameters()) + [log_std], **adam_kw)
    for perm in perms:
        for start in range(0, len(os_), s.minibatch_size):
            ind = perm[start:start + s.minibatch_size]
            logpts = torch.distributions.Normal(actor(os_[ind]), log_std.exp()).log_prob(acts[ind]).sum(1, keepdim=True)
            grad_sub = (logpts - logpbs[ind]).exp()
            a = advs[ind]
            if norm == "minibatch":
                a = (a - a.mean()) / (a.std(unbiased=True) + 1e-8)
            p_loss = torch.max(-(grad_sub * a), -(torch.clamp(grad_sub, 1 - s.clip, 1 + s.clip) * a)).mean()
            v_loss = (v_rets[ind] - critic(os_[ind])).pow(2).mean()
            opt.zero_grad()
            (p_loss + v_loss).backward()
            opt.step()
    return v_rets.squeeze(1), advs.squeeze(1)


def _plain_copy(net: MLP) -> torch.nn.Sequential:
    mods = []
    for i, layer in enumerate(net.layers):
        lin = torch.nn.Linear(layer.in_features, layer.out_features)
        with torch.no_grad():
            lin.weight.copy_(layer.weight[0])
            lin.bias.copy_(layer.bias[0])
        mods += [lin] if i == len(net.layers) - 1 else [lin, torch.nn.ReLU()]
    return torch.nn.Sequential(*mods)


def _one_update_both_ways(norm: str):
    """(our agent after one update, our prepare() output, the reference nets after one update, the
    reference's returns and advantages), from the same weights, batch and minibatch order."""
    torch.manual_seed(0)
    obs_dim, act_dim, T = 6, 2, 64
    s = PPOSettings(epochs=2, minibatch_size=16, truncation_as_termination=True,  # the official treatment
                    advantage_normalization=norm)
    cfg = validate({"optimizer": {"name": "adam", "lr": 3e-3, "betas": [0.99, 0.99], "weight_decay": 1e-3}},
                   DEFAULTS)
    agent = PPOAgent(obs_dim, act_dim, [8, 8], "relu", "lecun", 0.0, s, cfg,
                     init_generator=torch.Generator().manual_seed(1),
                     method_generators=[torch.Generator().manual_seed(2)],
                     minibatch_generator=torch.Generator().manual_seed(3))
    rng = np.random.default_rng(0)
    buf = RolloutBuffer(T, obs_dim, act_dim)
    buf.obs[:] = rng.standard_normal((T, obs_dim))
    buf.actions[:] = rng.standard_normal((T, act_dim))
    buf.rewards[:] = rng.standard_normal(T)
    buf.ended[:] = rng.random(T) < 0.1
    buf.terminated[:] = buf.ended  # official: every done, time limits included, cuts the return
    buf.last_obs[:] = rng.standard_normal(obs_dim)

    actor, critic = _plain_copy(agent.actor), _plain_copy(agent.critic)
    log_std = torch.nn.Parameter(agent.log_std.detach()[0].clone())
    perm_gen = torch.Generator().set_state(agent.minibatch_generator.get_state())
    perms = [torch.randperm(T, generator=perm_gen) for _ in range(s.epochs)]

    ours = agent.prepare(buf)
    agent.update(buf)
    v_rets, advs = _official_update(actor, critic, log_std, buf, perms, s,
                                    {"lr": 3e-3, "betas": (0.99, 0.99), "eps": 1e-8, "weight_decay": 1e-3}, norm)
    return agent, ours, (actor, critic, log_std), v_rets, advs


def _assert_same_nets(agent: PPOAgent, actor, critic, log_std) -> None:
    for mine, theirs in ((agent.actor, actor), (agent.critic, critic)):
        ref = [m for m in theirs if isinstance(m, torch.nn.Linear)]
        for layer, lin in zip(mine.layers, ref):
            assert torch.allclose(layer.weight[0], lin.weight, atol=1e-5)
            assert torch.allclose(layer.bias[0], lin.bias, atol=1e-5)
    assert torch.allclose(agent.log_std[0], log_std, atol=1e-5)


def test_one_update_equals_the_official_formulas():
    agent, ours, (actor, critic, log_std), v_rets, advs = _one_update_both_ways("batch")
    assert torch.allclose(ours["returns"], v_rets, atol=1e-5)
    centred = ours["advantages"] - ours["advantages"].mean()
    assert torch.allclose(centred / centred.std(), advs, atol=1e-5)
    _assert_same_nets(agent, actor, critic, log_std)


def test_minibatch_normalisation_update_equals_sb3s_formula():
    """ppo.advantage_normalization: minibatch, against the reference with SB3's per-minibatch
    (a - mean) / (std + 1e-8); everything else as the official update."""
    agent, ours, (actor, critic, log_std), v_rets, advs = _one_update_both_ways("minibatch")
    assert torch.allclose(ours["returns"], v_rets, atol=1e-5)
    assert torch.allclose(ours["advantages"], advs, atol=1e-5)  # not normalised over the batch
    _assert_same_nets(agent, actor, critic, log_std)


def test_batch_normalisation_by_hand_and_minibatch_as_an_option():
    from rl_plasticity.agents.ppo import normalize_batch_advantages

    adv = torch.tensor([1.0, 2.0, 3.0, 6.0])  # mean 3, unbiased std sqrt(14/3)
    assert torch.allclose(normalize_batch_advantages(adv), (adv - 3) / math.sqrt(14 / 3))
    assert torch.equal(normalize_batch_advantages(torch.full((4,), 2.0)), torch.zeros(4))  # std 0: centred only
    assert paper_cfg("ppo.advantage_normalization=minibatch")["ppo"]["advantage_normalization"] == "minibatch"
    with pytest.raises(UserError, match="ppo.advantage_normalization"):
        paper_cfg("ppo.advantage_normalization=whole")


# --------------------------------------------------------------------------- metrics on on-policy data


def test_metrics_use_the_latest_rollout_through_the_nets_that_acted():
    cfg = paper_cfg(*TINY)
    a, b = PPORun(cfg, seed=0), PPORun(cfg, seed=0)
    for _ in range(2):
        _, _, metrics = a.train_update(measure=True)
        b.runner.collect(b.buffer, b.agent.policy_mean, b.agent.action_std())
        probe = torch.from_numpy(b.buffer.obs[-100:])  # the latest rollout, as the policy saw it
        expected_tags = {"plasticity/actor/weight_change", "plasticity/critic/weight_change"}
        for net in ("actor", "critic"):
            expected = probe_metrics(getattr(b.agent, net), probe)  # before b's update
            assert any(k.endswith("dormant_fraction") for k in expected) and len(expected) >= 9, net
            for key, value in expected.items():
                tag = f"plasticity/{net}/{key.removeprefix(net + '/')}"
                expected_tags.add(tag)
                assert metrics[tag] == pytest.approx(float(value[0]), abs=1e-6), tag
        assert set(metrics) == expected_tags
        b.agent.update(b.buffer)
    # weight change: the sum of |change| of each layer's weights (not biases), in this update only
    before = {net: [layer.weight.detach().clone() for layer in getattr(a.agent, net).layers]
              for net in ("actor", "critic")}
    biases = {net: [layer.bias.detach().clone() for layer in getattr(a.agent, net).layers]
              for net in ("actor", "critic")}
    _, _, metrics = a.train_update(measure=False)
    expected = {}
    for net in ("actor", "critic"):
        layers = getattr(a.agent, net).layers
        assert len(layers) == 3 and not all(torch.equal(l.bias, b) for l, b in zip(layers, biases[net]))
        change = sum(float((layer.weight.detach() - w).abs().sum()) for layer, w in zip(layers, before[net]))
        assert change > 0, net
        expected[f"plasticity/{net}/weight_change"] = pytest.approx(change, rel=1e-6)
    assert metrics == expected


# --------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("clip", [True, False])
def test_evaluation_sends_actions_as_training_did(clip):
    from rl_plasticity.problems.mujoco_eval import Policy

    run = PPORun(paper_cfg(*TINY[:5], f"ppo.clip_actions={str(clip).lower()}", "ppo.log_std_init=1.0"), seed=0)
    assert run.runner.clip_actions == clip
    policy = Policy.of(run)
    env, _ = make_env(run.cfg)
    obs, _ = env.reset(seed=0)
    env.close()
    rng = np.random.default_rng(0)
    actions = np.stack([policy.act(obs, rng) for _ in range(200)])  # std e^1: most draws leave [-1, 1]
    if clip:
        assert np.abs(actions).max() <= 1.0
    else:
        assert np.abs(actions).max() > 1.0


def test_fixed_probe_is_still_available():
    run = PPORun(paper_cfg(*TINY, "log.probe=first_rollout"), seed=0)
    run.train_update()
    first = run.probe.clone()
    run.train_update(measure=True)
    assert torch.equal(run.probe, first) and first.shape == (100, 111)


def test_probe_larger_than_a_rollout_is_refused():
    from rl_plasticity.problems.mujoco_ppo import check

    with pytest.raises(UserError, match="log.probe_size"):
        check(paper_cfg(*TINY[:4], "log.probe_size=129"))


# --------------------------------------------------------------------------- CBP and ReDo switches


def _trained_net_and_adam():
    torch.manual_seed(0)
    net = MLP([3, 4, 2], init="lecun")
    net.reset_parameters([torch.Generator().manual_seed(0)])
    adam = Adam(list(net.parameters()), lr=1e-2)
    for _ in range(3):
        loss = net(torch.randn(5, 3)).square().sum()
        adam.step(list(torch.autograd.grad(loss, list(net.parameters()))))
    return net, adam


@pytest.mark.parametrize("reset", [True, False])
def test_cbp_leaves_optimizer_state_alone_when_asked(reset):
    net, adam = _trained_net_and_adam()
    cbp = ContinualBackprop(net.groups, adam, [torch.Generator().manual_seed(0)], replacement_rate=1.0,
                            maturity_threshold=0, reset_optimizer_state=reset)
    before = {k: [t.clone() for t in v] for k, v in adam.state.items()}
    net(torch.randn(5, 3))
    cbp.after_step()
    assert int(cbp.replacements[0].sum()) == 4  # rate 1: every mature unit
    w_in = adam.state["exp_avg"][0]  # layer0 weight [1, 4, 3]: all four units replaced
    if reset:
        assert torch.all(w_in == 0) and torch.all(adam.state["beta1_power"][0] == 1)
    else:
        for k, tensors in adam.state.items():
            for t, b in zip(tensors, before[k]):
                assert torch.equal(t, b), k


@pytest.mark.parametrize("reset", [True, False])
def test_redo_leaves_optimizer_state_alone_when_asked(reset):
    net, adam = _trained_net_and_adam()
    redo = ReDo(net.groups, adam, [torch.Generator().manual_seed(0)], threshold=10.0, every=1,
                reset_optimizer_state=reset)  # threshold 10: every unit is "dormant"
    before = [t.clone() for t in adam.state["exp_avg"]]
    net(torch.randn(5, 3))
    redo.after_step()
    assert int(redo.resets[0].sum()) == 4
    assert torch.all(adam.state["exp_avg"][0] == 0) == reset
    if not reset:
        assert all(torch.equal(t, b) for t, b in zip(adam.state["exp_avg"], before))


def test_bernoulli_count_replaces_one_unit_with_probability_rate_times_eligible():
    net, adam = _trained_net_and_adam()
    g = torch.Generator().manual_seed(5)
    cbp = ContinualBackprop(net.groups, adam, [g], replacement_rate=0.1, maturity_threshold=0,
                            replacement_count="bernoulli")
    x = 0.1 * 4  # four eligible units
    replay = torch.Generator().set_state(g.get_state())
    counts = []
    for _ in range(200):
        net(torch.randn(5, 3))
        before = int(cbp.replacements[0].sum())
        expected = int(torch.rand(1, dtype=torch.float64, generator=replay) <= x)
        if expected:  # a replacement's re-init draws 3 weights from the same generator
            torch.empty(1, 3).uniform_(generator=replay)
        cbp.after_step()
        counts.append(int(cbp.replacements[0].sum()) - before)
        assert counts[-1] == expected
    assert set(counts) == {0, 1} and 0.3 < np.mean(counts) < 0.5
    assert not cbp.accumulator[0].any()  # the accumulator is not used


def test_bernoulli_count_above_one_is_the_floor():
    net, adam = _trained_net_and_adam()
    cbp = ContinualBackprop(net.groups, adam, [torch.Generator().manual_seed(0)], replacement_rate=0.6,
                            maturity_threshold=0, replacement_count="bernoulli")  # x = 2.4
    net(torch.randn(5, 3))
    cbp.after_step()
    assert int(cbp.replacements[0].sum()) == 2


@pytest.mark.parametrize("transfer", [True, False])
def test_mean_to_bias_transfer_switch(transfer):
    net, adam = _trained_net_and_adam()
    cbp = ContinualBackprop(net.groups, adam, [torch.Generator().manual_seed(0)], replacement_rate=1.0,
                            maturity_threshold=0, transfer_mean_to_bias=transfer)
    bias = net.layers[1].bias.detach().clone()
    net(torch.randn(5, 3) + 3)  # positive inputs: some units active, a non-zero mean activation
    cbp.after_step()
    assert torch.equal(net.layers[1].bias, bias) != transfer


# --------------------------------------------------------------------------- resume across upgrades


def test_checkpoint_config_without_newer_keys_still_matches():
    cfg = paper_cfg()
    old = {**cfg, "ppo": {k: v for k, v in cfg["ppo"].items() if k != "clip_actions"}}
    assert config_differences(old, cfg) == []  # a key added later, at its default: same run
    changed = {**cfg, "ppo": {**cfg["ppo"], "clip_actions": True}}
    assert config_differences(old, changed) == ["ppo.clip_actions"]
    assert config_differences(cfg, {**cfg, "eval": {"episodes": 99}}) == []


def test_unknown_env_id_suggests_only_ids_that_can_be_made():
    from rl_plasticity.problems.mujoco_ppo import check

    with pytest.raises(UserError) as e:
        check(paper_cfg("env.id=Ant-v9"))
    assert "Ant-v5" in str(e.value) and "Ant-v2" not in str(e.value) and "Ant-v3" not in str(e.value)
