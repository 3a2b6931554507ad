"""Every method of the core's registry in SB3's PPO and SAC, actor and critic; loss terms in SB3's loss; the hooks."""

import gymnasium as gym
import pytest
import torch
from stable_baselines3 import PPO, SAC
from test_sb3 import _assert_same_tensors
from torch import nn

from rl_plasticity import (
    CBPPolicy,
    Plasticity,
    PlasticityHooksCallback,
    PlasticityPolicy,
    PlasticitySACPolicy,
    envs,  # noqa: F401  (registers rl_plasticity/FrictionAnt-v0)
)
from rl_plasticity.core.methods import METHODS
from rl_plasticity.integrations.sb3 import add_penalties_at_zero_grad

pytestmark = pytest.mark.usefixtures("one_thread")

# Settings under which each method acts within a few updates.
QUICK = {
    "cbp": {"replacement_rate": 0.05, "maturity_threshold": 5},
    "redo": {"every": 2, "threshold": 0.9},
    "snp": {"shrink": 1e-3, "noise_std": 1e-3},
    "reset": {"what": "head", "when": "steps", "every": 2},
    "l2_init": {"strength": 1.0},
    "parseval": {"strength": 0.1},
    "swr": {"rate": 0.5, "every": 2},
    "weight_clipping": {"kappa": 0.5},
    "hare_tortoise": {"reset_on": "steps", "reset_every": 2},
}


def _env(**kwargs):
    return gym.make("rl_plasticity/FrictionAnt-v0", change_every=500, **kwargs)


def _ppo(**methods):
    return PPO(PlasticityPolicy, _env(), n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu",
               policy_kwargs={"net_arch": [8, 8], "plasticity_seed": 0, **methods})


def _sac(**methods):
    return SAC(PlasticitySACPolicy, _env(), learning_starts=16, batch_size=16, seed=0, device="cpu",
               policy_kwargs={"net_arch": [8, 8], "plasticity_seed": 0, **methods})


BUILD = {"ppo": (_ppo, 128), "sac": (_sac, 40)}
NETS = {"ppo": {"actor": ["mlp_extractor.policy_net.0", "action_net"],
                "critic": ["mlp_extractor.value_net.0", "value_net"]},
        "sac": {"actor": ["actor.latent_pi.0", "actor.mu"], "critic": ["critic.qf0.0", "critic.qf1.2"]}}
_baselines = {}


def _weights(model, algo):
    return {name: model.policy.get_submodule(name).weight.detach().clone()
            for names in NETS[algo].values() for name in names}


def test_every_registry_method_has_a_quick_setting():
    assert set(QUICK) == set(METHODS)


@pytest.mark.parametrize("algo", ["ppo", "sac"])
@pytest.mark.parametrize("method", sorted(QUICK))
def test_every_method_acts_in_actor_and_critic_and_save_load_keeps_its_state(algo, method, tmp_path):
    build, steps = BUILD[algo]
    if algo not in _baselines:  # the same run without methods
        baseline = build()
        baseline.learn(steps)
        _baselines[algo] = _weights(baseline, algo)
    model = build(**{method: QUICK[method]})
    model.learn(steps)
    policy = model.policy
    for net in ("actor", "critic"):
        assert list(getattr(policy, f"{net}_plasticity").methods) == [method]
    after = _weights(model, algo)
    for net, names in NETS[algo].items():  # the method changed what each net learned
        assert any(not torch.equal(after[n], _baselines[algo][n]) for n in names), (net, names)
    model.save(tmp_path / "model")
    loaded = type(model).load(tmp_path / "model", device="cpu")
    saved, restored = policy.state_dict(), loaded.policy.state_dict()
    assert saved.keys() == restored.keys()
    assert any(k.endswith("_plasticity._extra_state") for k in saved)
    _assert_same_tensors(saved, restored)  # parameters and every method's state


def test_loss_term_enters_the_gradient_sb3_clips_and_steps():
    """zero_grad() starts the gradient from the penalty's, so backward() of SB3's loss gives their sum's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plasticity = Plasticity(model, opt, l2_init={"strength": 0.5}, parseval={"strength": 0.1}, seed=0)
    plasticity.methods  # noqa: B018 (theta_0: the weights now)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3)
    x = torch.randn(5, 3)
    expected = torch.autograd.grad(model(x).square().mean() + plasticity.loss_term(), list(model.parameters()))
    add_penalties_at_zero_grad(opt, [plasticity])
    opt.zero_grad()
    model(x).square().mean().backward()
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g)
        assert g.abs().sum() > 0


def test_task_switch_and_epoch_hooks_from_the_env_phase():
    """PlasticityHooksCallback: end_epoch() after every PPO update, task_switch() when info['phase'] changes."""
    env = gym.make("rl_plasticity/FrictionAnt-v0", change_every=40, max_episode_steps=20)
    model = PPO(PlasticityPolicy, env, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"net_arch": [8], "plasticity_seed": 0, "reset": {"what": "head"},
                               "hare_tortoise": {"reset_on": "epoch", "reset_every": 1}})
    hooks = PlasticityHooksCallback()
    head = model.policy.action_net.weight.detach().clone()
    model.learn(192, callback=hooks)
    assert hooks.switches >= 2
    stats = model.policy.plasticity_stats()
    assert stats["actor"]["hare_tortoise/resets"] == stats["critic"]["hare_tortoise/resets"] == 3  # 3 updates
    assert not torch.equal(model.policy.action_net.weight, head)
    # A callable decides instead; a policy without the methods is refused.
    every_50 = PlasticityHooksCallback(task_switch=lambda cb: cb.num_timesteps % 50 == 0)
    model.learn(128, callback=every_50, reset_num_timesteps=False)
    assert every_50.switches == 3  # steps 193-320: at 200, 250 and 300
    with pytest.raises(TypeError, match="has no end_epoch"):
        PPO("MlpPolicy", env, n_steps=64, device="cpu").learn(64, callback=PlasticityHooksCallback())


def test_policy_keywords_pass_through_and_bad_ones_are_refused():
    with pytest.raises(ValueError, match="unknown CBP option 'rate'"):
        _ppo(cbp={"rate": 1.0})
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'net_arh' \(did you mean 'net_arch'\?\): "
                                        r"PlasticityPolicy takes the plasticity methods cbp, redo, .*ActorCriticPolicy"):
        PPO(PlasticityPolicy, _env(), device="cpu", policy_kwargs={"net_arh": [8], "cbp": True})
    with pytest.raises(TypeError, match=r"'l2init' \(did you mean 'l2_init'\?\)"):
        _sac(l2init=True)
    plain = _ppo()  # no method: SB3's policy with rl_plasticity.Adam
    assert plain.policy.actor_plasticity is None and plain.policy.plasticity_stats() == {"actor": {}, "critic": {}}
    model = PPO(CBPPolicy, _env(), device="cpu", policy_kwargs={"net_arch": [8]})
    assert model.policy.actor_plasticity.options["cbp"]["maturity_threshold"] == 10_000  # the paper's PPO setting


def test_bad_method_values_and_nets_a_method_cannot_act_on_are_refused_naming_the_net():
    with pytest.raises(TypeError, match="cbp must be True, False/None or a dict of its options, got 3"):
        _ppo(cbp=3)
    with pytest.raises(ValueError, match=r"Parseval regularisation acts on hidden layers .* \(the policy network "
                                         r"\(mlp_extractor.policy_net\): layers action_net; net_arch=\[\]\)"):
        PPO(PlasticityPolicy, _env(), device="cpu", policy_kwargs={"net_arch": [], "parseval": True})
    with pytest.raises(ValueError, match=r"injection.*use last_layers=1 .*\(the actor \(actor.latent_pi\): layers "
                                         r"actor.log_std, actor.latent_pi.0, actor.latent_pi.2, actor.mu"):
        _sac(reset={"what": "injection"})
    injected = _ppo(reset={"what": "injection", "last_layers": 1})
    assert list(injected.policy.critic_plasticity.methods) == ["reset"]


def test_a_ppo_policy_saved_with_one_attachment_for_both_nets_is_refused_clearly(tmp_path):
    """Saves from before per-net attachments hold `plasticity._extra_state`: a clear error, and a way to keep
    the weights."""
    import io
    import zipfile

    model = _ppo(cbp=QUICK["cbp"])
    model.learn(64)
    model.save(tmp_path / "new")
    with zipfile.ZipFile(tmp_path / "new.zip") as new, zipfile.ZipFile(tmp_path / "old.zip", "w") as old:
        for item in new.infolist():
            data = new.read(item)
            if item.filename == "policy.pth":
                state = torch.load(io.BytesIO(data), weights_only=False)
                state["plasticity._extra_state"] = state.pop("actor_plasticity._extra_state")
                del state["critic_plasticity._extra_state"]
                buffer = io.BytesIO()
                torch.save(state, buffer)
                data = buffer.getvalue()
            old.writestr(item, data)
    with pytest.raises(ValueError, match=r"saved before the methods were attached to actor and critic separately: "
                                         r".*'plasticity._extra_state'.*set_parameters\(path, exact_match=False\)"):
        PPO.load(tmp_path / "old", env=_env(), device="cpu")
    fresh = _ppo(cbp=QUICK["cbp"])
    fresh.set_parameters(str(tmp_path / "old"), exact_match=False, device="cpu")
    _assert_same_tensors({k: v for k, v in model.policy.state_dict().items() if "plasticity" not in k},
                         {k: v for k, v in fresh.policy.state_dict().items() if "plasticity" not in k})


def test_a_step_size_optimizer_is_the_policys_optimizer_with_a_method_and_comes_back_on_load(tmp_path):
    from rl_plasticity import MetaAdam

    model = _ppo(cbp=QUICK["cbp"], optimizer_class=MetaAdam, optimizer_kwargs={"meta_step_size": 0.1})
    model.learn(128)
    opt = model.policy.optimizer
    assert isinstance(opt, MetaAdam) and model.policy.plasticity_stats()["actor"]["cbp/mlp_extractor.policy_net.0/"
                                                                               "replacements"] > 0
    alpha = torch.cat([a.flatten() for a in opt.step_sizes()])
    assert alpha.min() < model.learning_rate < alpha.max()  # learned from SB3's learning_rate
    model.save(tmp_path / "meta")
    loaded = PPO.load(tmp_path / "meta", env=_env(), device="cpu")
    assert isinstance(loaded.policy.optimizer, MetaAdam)
    _assert_same_tensors(opt.state_dict()["state"], loaded.policy.optimizer.state_dict()["state"])
