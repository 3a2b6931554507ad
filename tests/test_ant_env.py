"""envs/ant.py's Ant: every output of its step bit-identical to gymnasium's Ant-v5, on both of its paths."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.utils.env_checker import check_env
from rl_plasticity.envs.ant import Ant

from rl_plasticity import envs

# The official runs' Ant-v3 settings (the lean path) and Ant-v5's defaults (contact forces in use).
LEAN = {"include_cfrc_ext_in_observation": False, "contact_cost_weight": 0.0}
SETTINGS = {"lean": LEAN, "contact forces in use": {}}


def _same(a, b) -> bool:
    """Equal bit for bit, and of the same type (numpy scalars and arrays alike)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(map(_same, a, b))
    return np.asarray(a).dtype == np.asarray(b).dtype and np.asarray(a).tobytes() == np.asarray(b).tobytes()


@pytest.mark.parametrize("kwargs", SETTINGS.values(), ids=SETTINGS)
def test_every_step_output_is_gymnasiums_bit_for_bit(kwargs):
    ours, theirs = Ant(**kwargs), AntEnv(**kwargs)
    rng = np.random.default_rng(0)
    assert _same(ours.reset(seed=3), theirs.reset(seed=3))
    terminations, contact_forces = 0, {"ours": False, "theirs": False}
    for _ in range(1500):
        # Beyond the bounds (MuJoCo clamps, the costs do not); the ant flips now and then, so terminal steps count too.
        action = rng.uniform(-1.5, 1.5, 8).astype(np.float32)
        out, ref = ours.step(action), theirs.step(action)
        assert _same(out, ref), (out, ref)
        contact_forces["ours"] |= bool(ours.data.cfrc_ext.any())
        contact_forces["theirs"] |= bool(theirs.data.cfrc_ext.any())
        if out[2]:
            terminations += 1
            assert _same(ours.reset(), theirs.reset())
    assert terminations >= 3  # terminal steps were compared
    # gymnasium computed the contact forces; the lean path never did
    assert contact_forces == {"ours": kwargs is not LEAN, "theirs": True}


def test_passes_gymnasiums_env_checker():
    check_env(Ant(**LEAN), skip_render_check=True)


def test_action_of_the_wrong_shape_is_refused_as_gymnasium_does():
    env = Ant(**LEAN)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="Action dimension mismatch"):
        env.step(np.zeros(7))


def test_the_registered_ants_are_built_on_it():
    for env_id in envs.REGISTERED_IDS:
        env = gym.make(env_id)
        assert type(env.unwrapped) is Ant
        env.close()
