"""Non-stationary MuJoCo envs: API checks, real physics changes, schedule timing, save/restore, bad input."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from rl_plasticity.envs import ChangingFriction, ChangingMass, get_schedule_state, set_schedule_state

from rl_plasticity import envs

BASE_IDS = ("Ant-v5", "Hopper-v5", "Walker2d-v5", "HalfCheetah-v5")
WRAPPERS = {"friction": ChangingFriction, "mass_scale": ChangingMass}
INFO_KEY = {envs.FRICTION_ANT_ID: "friction", envs.MASS_ANT_ID: "mass_scale"}
STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION

# gymnasium's check_env notes MuJoCo's unbounded observation boxes and our wrapper; both are expected.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*A Box observation space m..imum value is"),
    pytest.mark.filterwarnings("ignore:.*is different from the unwrapped version"),
]


@pytest.fixture(autouse=True)
def _mujoco_log_in_tmp(tmp_path, monkeypatch):
    """MuJoCo logs warnings (HalfCheetah's deprecated settotalmass) to ./MUJOCO_LOG.TXT: not in the repo."""
    monkeypatch.chdir(tmp_path)


def rollout(env: gym.Env, steps: int, *, seed: int, action_seed: int = 0) -> list[dict]:
    """Random actions for `steps` steps from reset(seed), resetting at episode ends.

    One record per step, plus one per reset: the step count so far, the phase, the value and obs.
    """
    key = env.get_wrapper_attr("kind")
    rng = np.random.default_rng(action_seed)
    space = env.action_space
    records = []
    obs, info = env.reset(seed=seed)
    records.append(dict(event="reset", steps=0, phase=info["phase"], value=info[key], obs=obs))
    for t in range(1, steps + 1):
        obs, _, terminated, truncated, info = env.step(rng.uniform(space.low, space.high).astype(space.dtype))
        records.append(dict(event="step", steps=t, phase=info["phase"], value=info[key], obs=obs))
        if terminated or truncated:
            obs, info = env.reset()
            records.append(dict(event="reset", steps=t, phase=info["phase"], value=info[key], obs=obs))
    return records


def phase_values(records: list[dict]) -> dict[int, float]:
    return {r["phase"]: r["value"] for r in records}


def fixed_length_ant(env_id: str, episode: int, **schedule_kwargs) -> gym.Env:
    """Ant whose episodes all last exactly `episode` steps (no early termination)."""
    return gym.make(env_id, max_episode_steps=episode, terminate_when_unhealthy=False, **schedule_kwargs)


def copy_sim_state(src_model, src_data, dst_model, dst_data) -> None:
    state = np.empty(mujoco.mj_stateSize(src_model, STATE_SPEC))
    mujoco.mj_getState(src_model, src_data, state, STATE_SPEC)
    mujoco.mj_setState(dst_model, dst_data, state, STATE_SPEC)
    mujoco.mj_forward(dst_model, dst_data)


def compile_with_scaled_masses(xml_path: str, scale: float, *, explicit: bool = True) -> mujoco.MjModel:
    """A model compiled from the XML with every body's mass and inertia scaled by `scale`.

    explicit=True: each body gets an explicit inertial (mass, diagonal inertia, frame) equal to what
    the compiler inferred from its geoms, times `scale`. explicit=False: every geom's density is
    scaled instead (the plain XML edit), which rounds differently in the last bits.
    """
    base = mujoco.MjModel.from_xml_path(xml_path)
    spec = mujoco.MjSpec.from_file(xml_path)
    assert len(spec.bodies) == base.nbody
    if explicit:
        spec.compiler.settotalmass = -1  # HalfCheetah's XML would rescale the total back to 14 kg
        spec.compiler.inertiafromgeom = mujoco.mjtInertiaFromGeom.mjINERTIAFROMGEOM_FALSE
        for i, body in enumerate(spec.bodies):
            assert body.name == base.body(i).name
            if i == 0:
                continue
            body.explicitinertial = True
            body.mass = base.body_mass[i] * scale
            body.inertia = base.body_inertia[i] * scale
            body.ipos = base.body_ipos[i]
            body.iquat = base.body_iquat[i]
    else:
        if spec.compiler.settotalmass > 0:
            spec.compiler.settotalmass *= scale
        for geom in spec.geoms:
            geom.density = geom.density * scale
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*settotalmass.*")
        return spec.compile()


# -- registration and API checks -------------------------------------------------------------------


def test_import_registers_ids_once():
    for env_id in envs.REGISTERED_IDS:
        assert gym.spec(env_id).max_episode_steps == gym.spec("Ant-v5").max_episode_steps
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        envs._register()  # a second registration must be a quiet no-op


@pytest.mark.parametrize("env_id", envs.REGISTERED_IDS)
def test_gymnasium_check_env(env_id):
    from gymnasium.utils.env_checker import check_env

    env = gym.make(env_id)
    check_env(env, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", envs.REGISTERED_IDS)
def test_sb3_check_env(env_id):
    from stable_baselines3.common.env_checker import check_env

    env = gym.make(env_id)
    check_env(env, warn=False, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", envs.REGISTERED_IDS)
def test_info_carries_value_and_phase_on_every_step_and_reset(env_id):
    key = INFO_KEY[env_id]
    env = gym.make(env_id, value_range=(0.7, 1.4))
    records = rollout(env, 50, seed=1)
    assert all(r["phase"] == 0 and 0.7 <= r["value"] <= 1.4 for r in records)
    assert len({r["value"] for r in records}) == 1
    assert env.get_wrapper_attr("physics_value") == records[0]["value"]
    _, info = env.reset()
    assert key in info and "phase" in info


def test_registered_kwargs_reach_ant_and_schedule():
    env = gym.make(envs.FRICTION_ANT_ID, values=[0.5], change_every=7, terminate_when_unhealthy=False)
    assert env.unwrapped._terminate_when_unhealthy is False
    assert env.get_wrapper_attr("_schedule").change_every == 7
    env.reset(seed=0)
    assert np.all(env.unwrapped.model.geom_friction[:, 0] == 0.5)


@pytest.mark.parametrize("env_id", envs.REGISTERED_IDS)
def test_env_can_be_recreated_from_its_spec(env_id):
    env = gym.make(env_id, values=[0.8, 1.2], change_every=5)
    again = gym.make(env.spec)
    assert str(again) == str(env)
    schedule = again.get_wrapper_attr("_schedule")
    assert schedule.values == (0.8, 1.2) and schedule.change_every == 5


@pytest.mark.parametrize("base_id", BASE_IDS[1:])
@pytest.mark.parametrize("kind", WRAPPERS)
def test_wraps_other_mujoco_envs(base_id, kind):
    from gymnasium.utils.env_checker import check_env

    wrapper = WRAPPERS[kind]
    check_env(wrapper(gym.make(base_id)), skip_render_check=True)

    env = wrapper(gym.make(base_id, max_episode_steps=10), change_every=15, values=[0.6, 1.7], after_last="hold")
    model = env.unwrapped.model
    base_mass = model.body_mass.copy()
    records = rollout(env, 45, seed=0)
    # resets at 0, 10, 20, 30, 40; marks at 15, 30 (reached exactly at an episode end), 45
    assert [r["phase"] for r in records if r["event"] == "reset"] == [0, 0, 1, 2, 2]
    assert [r["value"] for r in records if r["event"] == "reset"] == [0.6, 0.6, 1.7, 1.7, 1.7]
    if kind == "friction":
        assert np.all(model.geom_friction[:, 0] == 1.7)
    else:
        np.testing.assert_array_equal(model.body_mass, base_mass * 1.7)
    env.get_wrapper_attr("restore_base_physics")()
    if kind == "mass_scale":
        np.testing.assert_array_equal(model.body_mass, base_mass)


# -- the physics really changes --------------------------------------------------------------------


def test_new_friction_reaches_every_contact():
    env = fixed_length_ant(envs.FRICTION_ANT_ID, 40, change_every=30, values=[0.3, 1.7])
    env.reset(seed=0)
    data, model = env.unwrapped.data, env.unwrapped.model
    base = env.get_wrapper_attr("_base_friction")
    contacts_seen = {0.3: 0, 1.7: 0}
    for _ in range(2):
        for _ in range(40):
            *_, info = env.step(env.action_space.sample())
            f = info["friction"]
            if data.ncon:
                np.testing.assert_array_equal(data.contact.friction[: data.ncon, 0], f)
                contacts_seen[f] += data.ncon
        np.testing.assert_array_equal(model.geom_friction[:, 1:], base[:, 1:])  # torsional, rolling untouched
        env.reset()
    assert contacts_seen[0.3] > 0 and contacts_seen[1.7] > 0


def test_friction_changes_how_far_random_actions_move_the_ant():
    def mean_abs_x_velocity(friction: float) -> float:
        env = gym.make(envs.FRICTION_ANT_ID, values=[friction])
        rng = np.random.default_rng(0)
        env.reset(seed=0)
        speeds = []
        for _ in range(2000):
            _, _, terminated, truncated, info = env.step(rng.uniform(-1, 1, 8).astype(np.float32))
            speeds.append(abs(info["x_velocity"]))
            if terminated or truncated:
                env.reset()
        return float(np.mean(speeds))

    slippery, grippy = mean_abs_x_velocity(0.02), mean_abs_x_velocity(2.0)
    # DESIGN.md measured 0.20 vs 0.65 over long runs.
    assert 0.1 < slippery < 0.3
    assert grippy > 0.4 and grippy > 2 * slippery


@pytest.mark.parametrize("base_id", BASE_IDS)
def test_runtime_mass_scale_equals_model_compiled_with_scaled_masses(base_id):
    scale = 1.7
    env = ChangingMass(gym.make(base_id), values=[scale])
    env.reset(seed=3)
    model, data = env.unwrapped.model, env.unwrapped.data
    compiled = compile_with_scaled_masses(env.unwrapped.fullpath, scale)

    # Field for field, the same model (stat.meaninertia included: the solver's tolerance uses it).
    for name in dir(compiled):
        ref = getattr(compiled, name)
        if not name.startswith("_") and isinstance(ref, np.ndarray) and ref.dtype.kind in "fiu":
            np.testing.assert_array_equal(getattr(model, name), ref, err_msg=name)
    assert model.stat.meaninertia == compiled.stat.meaninertia
    assert model.stat.meanmass == compiled.stat.meanmass

    # The plain XML edit (density x scale) compiles to the same masses, up to rounding.
    by_density = compile_with_scaled_masses(env.unwrapped.fullpath, scale, explicit=False)
    np.testing.assert_allclose(model.body_mass, by_density.body_mass, rtol=1e-12)
    np.testing.assert_allclose(model.body_inertia, by_density.body_inertia, rtol=1e-12, atol=1e-15)

    # The same rollout under the same actions: runtime scaling vs compiled, bit for bit.
    unscaled = mujoco.MjModel.from_xml_path(env.unwrapped.fullpath)
    no_set_const = mujoco.MjModel.from_xml_path(env.unwrapped.fullpath)
    no_set_const.body_mass[:] *= scale
    no_set_const.body_inertia[:] *= scale
    others = {"compiled": compiled, "unscaled": unscaled, "no_set_const": no_set_const}
    other_data = {k: mujoco.MjData(m) for k, m in others.items()}
    for k in others:
        copy_sim_state(model, data, others[k], other_data[k])
    rng = np.random.default_rng(0)
    space = env.action_space
    gaps = {k: 0.0 for k in others}
    for _ in range(200):
        action = rng.uniform(space.low, space.high).astype(space.dtype)
        env.step(action)
        for k, m in others.items():
            d = other_data[k]
            d.ctrl[:] = action
            mujoco.mj_step(m, d, nstep=env.unwrapped.frame_skip)
            gaps[k] = max(gaps[k], float(np.abs(d.qpos - data.qpos).max()))
    assert gaps["compiled"] == 0.0
    assert gaps["unscaled"] > 1e-6  # the comparison can tell masses apart
    assert gaps["no_set_const"] > 1e-6  # and mj_setConst is needed


# -- schedule timing and seeding -------------------------------------------------------------------


def test_switch_happens_at_first_episode_end_after_each_mark():
    env = fixed_length_ant(envs.FRICTION_ANT_ID, 30, change_every=50)
    records = rollout(env, 240, seed=0)
    resets = [r for r in records if r["event"] == "reset"]
    switches = [r["steps"] for prev, r in zip(resets, resets[1:]) if r["phase"] != prev["phase"]]
    # marks at 50, 100, 150, 200; episodes end every 30 steps; 150 is both a mark and an end
    assert switches == [60, 120, 150, 210]
    for r in resets:
        assert r["phase"] == r["steps"] // 50
    # never within an episode
    for prev, r in zip(records, records[1:]):
        if r["event"] == "step":
            assert (r["phase"], r["value"]) == (prev["phase"], prev["value"])
    values = phase_values(records)
    assert len(set(values.values())) == 5 and all(0.02 <= v <= 2.0 for v in values.values())


def test_value_of_each_phase_does_not_depend_on_episode_lengths():
    # Episodes of 35 steps span several 10-step marks: phases are skipped, not delayed.
    long_episodes = phase_values(rollout(fixed_length_ant(envs.FRICTION_ANT_ID, 35, change_every=10), 140, seed=4))
    short_episodes = phase_values(rollout(fixed_length_ant(envs.FRICTION_ANT_ID, 5, change_every=10), 140, seed=4))
    assert sorted(long_episodes) == [0, 3, 7, 10, 14]
    assert sorted(short_episodes) == list(range(15))
    for phase, value in long_episodes.items():
        assert short_episodes[phase] == value


def test_same_seed_same_sequence_and_seed_sources():
    def sequence(seed, **kwargs):
        env = fixed_length_ant(envs.FRICTION_ANT_ID, 20, change_every=20, **kwargs)
        return phase_values(rollout(env, 200, seed=seed))

    first = sequence(7)
    assert sequence(7) == first
    assert len(first) == 11  # resets at 0, 20, ..., 200
    assert sequence(8) != first
    # an explicit schedule_seed wins over the reset seed
    assert sequence(1, schedule_seed=99) == sequence(2, schedule_seed=99)
    # a later reset(seed=...) does not restart the schedule
    env = fixed_length_ant(envs.FRICTION_ANT_ID, 20, change_every=20)
    rollout(env, 45, seed=7)
    _, info = env.reset(seed=7)
    assert info["phase"] == 2 and info["friction"] == first[2]


def test_explicit_values_cycle_or_hold():
    def resets(after_last):
        env = fixed_length_ant(
            envs.MASS_ANT_ID, 10, change_every=10, values=[0.5, 1.0, 2.0], after_last=after_last
        )
        return [r["value"] for r in rollout(env, 50, seed=0) if r["event"] == "reset"]

    assert resets("cycle") == [0.5, 1.0, 2.0, 0.5, 1.0, 2.0]
    assert resets("hold") == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0]


def test_log_uniform_draws_cover_the_range():
    schedule = envs.ValueSchedule("friction", change_every=1, value_range=(0.02, 2.0), seed=0)
    schedule.start(None)
    logs = []
    for _ in range(2000):
        schedule.count_step()
        schedule.advance()
        logs.append(np.log10(schedule.value))
    logs = np.array(logs)
    assert logs.min() >= np.log10(0.02) and logs.max() <= np.log10(2.0)
    assert abs(np.median(logs) - np.log10(0.2)) < 0.1  # median of log-uniform [0.02, 2] is 0.2
    assert abs(np.mean(logs < np.log10(0.2)) - 0.5) < 0.05


# -- save and restore ------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", envs.REGISTERED_IDS)
def test_restored_schedule_continues_like_an_uninterrupted_run(env_id):
    def make():
        return fixed_length_ant(env_id, 30, change_every=50)

    uninterrupted = make()
    rollout(uninterrupted, 59, seed=0)
    *_, truncated, _ = uninterrupted.step(uninterrupted.action_space.sample())
    assert truncated  # an episode ended at step 60, after the mark at 50; its reset is still to come
    state = get_schedule_state(uninterrupted)
    assert state["pending"] is True and state["steps"] == 60 and state["phase"] == 0
    saved = json.loads(json.dumps(state))
    assert saved == state

    resumed = make()
    set_schedule_state(resumed, saved)
    after_uninterrupted = rollout(uninterrupted, 150, seed=11)
    after_resumed = rollout(resumed, 150, seed=11)
    assert len(after_uninterrupted) == len(after_resumed)
    for a, b in zip(after_uninterrupted, after_resumed):
        assert (a["event"], a["steps"], a["phase"], a["value"]) == (b["event"], b["steps"], b["phase"], b["value"])
        np.testing.assert_array_equal(a["obs"], b["obs"])
    assert after_resumed[0]["phase"] == 1  # the pending switch happened at the first reset
    assert get_schedule_state(resumed) == get_schedule_state(uninterrupted)


def test_schedule_state_survives_torch_weights_only_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    env = fixed_length_ant(envs.FRICTION_ANT_ID, 30, change_every=50)
    rollout(env, 70, seed=0)
    state = get_schedule_state(env)
    torch.save({"schedule": state}, tmp_path / "ckpt.pt")
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["schedule"] == state


def test_state_restored_before_first_reset_is_not_reseeded():
    source = fixed_length_ant(envs.FRICTION_ANT_ID, 20, change_every=20)
    rollout(source, 40, seed=5)
    state = get_schedule_state(source)
    target = fixed_length_ant(envs.FRICTION_ANT_ID, 20, change_every=20)
    set_schedule_state(target, state)
    assert np.all(target.unwrapped.model.geom_friction[:, 0] == state["value"])  # applied at once
    _, info = target.reset(seed=123)
    _, expected = source.reset()
    assert (info["phase"], info["friction"]) == (expected["phase"], expected["friction"]) == (2, info["friction"])


def test_mid_episode_mass_restore_keeps_the_simulation_state():
    env = gym.make(envs.MASS_ANT_ID, values=[1.0])
    env.reset(seed=0)
    for _ in range(5):
        env.step(env.action_space.sample())
    data = env.unwrapped.data
    qpos, qvel = data.qpos.copy(), data.qvel.copy()
    state = get_schedule_state(env) | {"value": 1.5}
    set_schedule_state(env, state)
    np.testing.assert_array_equal(data.qpos, qpos)
    np.testing.assert_array_equal(data.qvel, qvel)
    assert env.get_wrapper_attr("physics_value") == 1.5


# -- vector envs -----------------------------------------------------------------------------------


def test_gymnasium_sync_vector_env():
    def make():
        return fixed_length_ant(envs.FRICTION_ANT_ID, 15, change_every=20)

    vec = gym.vector.SyncVectorEnv([make, make])
    _, infos = vec.reset(seed=[0, 1])
    assert infos["friction"].shape == (2,) and infos["friction"][0] != infos["friction"][1]
    phases = set()
    for _ in range(40):
        _, _, _, _, infos = vec.step(vec.action_space.sample())
        assert infos["_friction"].all() and infos["_phase"].all()
        phases.update(infos["phase"].tolist())
    assert phases == {0, 1}

    states = vec.call("get_schedule_state")
    assert [s["steps"] for s in states] == [38, 38]  # 40 calls, 2 of them autoresets
    fresh = gym.vector.SyncVectorEnv([make, make])
    for sub, state in zip(fresh.envs, states):
        set_schedule_state(sub, state)
    assert list(fresh.call("get_schedule_state")) == list(states)
    vec.close()
    fresh.close()


def test_sb3_dummy_vec_env():
    from stable_baselines3.common.vec_env import DummyVecEnv

    def make():
        return fixed_length_ant(envs.MASS_ANT_ID, 15, change_every=20)

    vec = DummyVecEnv([make, make])
    vec.seed(3)
    vec.reset()
    assert all("mass_scale" in info and info["phase"] == 0 for info in vec.reset_infos)
    seen_phases = set()
    for _ in range(40):
        _, _, dones, infos = vec.step(np.stack([vec.action_space.sample() for _ in range(2)]))
        seen_phases.update(info["phase"] for info in infos)
    assert seen_phases == {0, 1}

    states = vec.env_method("get_schedule_state")
    fresh = DummyVecEnv([make, make])
    for i, state in enumerate(states):
        fresh.env_method("set_schedule_state", state, indices=i)
    assert fresh.env_method("get_schedule_state") == states
    assert states[0]["value"] != states[1]["value"]  # seeds 3 and 4: own sequences
    vec.close()
    fresh.close()


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(values=[0.5, -1.0]), ValueError, "friction value #1 must be a positive"),
        (dict(values=[0.0]), ValueError, "friction value #0 must be a positive"),
        (dict(values=[float("nan")]), ValueError, "positive finite"),
        (dict(values=[]), ValueError, "values must not be empty"),
        (dict(values="1.0"), TypeError, "values must be a list of numbers"),
        (dict(value_range=(2.0, 0.5)), ValueError, "low <= high"),
        (dict(value_range=(0.0, 1.0)), ValueError, "value_range low must be a positive"),
        (dict(value_range=(0.1,)), TypeError, "must be a pair"),
        (dict(change_every=0), ValueError, "change_every must be >= 1"),
        (dict(change_every=1.5), TypeError, "change_every must be an integer"),
        (dict(after_last="bounce"), ValueError, "after_last must be one of"),
    ],
)
def test_bad_friction_schedule(kwargs, error, message):
    with pytest.raises(error, match=message):
        gym.make(envs.FRICTION_ANT_ID, **kwargs)
    with pytest.raises(error, match=message):
        ChangingFriction(gym.make("Hopper-v5"), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(values=[1.0, -2.0]), "mass_scale value #1 must be a positive"),
        (dict(value_range=(-0.5, 2.0)), "mass_scale value_range low must be a positive"),
        (dict(value_range=(2.0, 1.0)), "low <= high"),
    ],
)
def test_bad_mass_schedule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gym.make(envs.MASS_ANT_ID, **kwargs)


def test_env_without_mujoco_model_is_refused():
    with pytest.raises(TypeError, match="no MuJoCo model"):
        ChangingFriction(gym.make("CartPole-v1"))
    with pytest.raises(TypeError, match="no non-stationary physics wrapper"):
        get_schedule_state(gym.make("Ant-v5"))


def test_one_schedule_per_env():
    with pytest.raises(ValueError, match="already has a non-stationary physics wrapper"):
        ChangingMass(gym.make(envs.FRICTION_ANT_ID))


def test_step_before_reset_is_refused():
    env = ChangingMass(gym.make("Hopper-v5").unwrapped)
    with pytest.raises(gym.error.ResetNeeded, match="reset"):
        env.step(env.action_space.sample())


def test_bad_schedule_state_is_refused():
    friction = gym.make(envs.FRICTION_ANT_ID)
    friction.reset(seed=0)
    state = get_schedule_state(friction)
    mass = gym.make(envs.MASS_ANT_ID)
    with pytest.raises(ValueError, match="is for 'friction'"):
        set_schedule_state(mass, state)
    with pytest.raises(ValueError, match="missing"):
        set_schedule_state(friction, {k: v for k, v in state.items() if k != "rng"})
    with pytest.raises(ValueError, match="positive"):
        set_schedule_state(friction, state | {"value": -1.0})
    with pytest.raises(ValueError, match="generator state"):
        set_schedule_state(friction, state | {"rng": {"bit_generator": "PCG64"}})
    with pytest.raises(TypeError, match="must be a dict"):
        set_schedule_state(friction, [state])
