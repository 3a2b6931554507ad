"""Non-stationary MuJoCo tasks; importing this package registers them with gymnasium.

    import gymnasium as gym
    from rl_plasticity import envs
    env = gym.make("rl_plasticity/FrictionAnt-v0")                   # friction log-uniform in [0.02, 2.0]
    env = gym.make("rl_plasticity/MassAnt-v0", change_every=500_000,  # mass scale log-uniform in [0.5, 2.0]
                   value_range=(0.7, 1.5))

Keyword arguments: `change_every`, `value_range`, `values`, `after_last`, `schedule_seed` (see
envs.nonstationary); any other keyword goes to Ant-v5 (e.g. `terminate_when_unhealthy=False`).
Without importing first: `gym.make("rl_plasticity.envs:rl_plasticity/FrictionAnt-v0")`.
"""

import gymnasium as gym

from rl_plasticity.envs.legacy import SurviveRewardOnTermination, ZeroPadObservation
from rl_plasticity.envs.nonstationary import (
    ChangingFriction,
    ChangingMass,
    NonstationaryPhysics,
    get_schedule_state,
    set_schedule_state,
)
from rl_plasticity.envs.schedule import DEFAULT_CHANGE_EVERY, ValueSchedule

FRICTION_ANT_ID = "rl_plasticity/FrictionAnt-v0"
MASS_ANT_ID = "rl_plasticity/MassAnt-v0"
REGISTERED_IDS = (FRICTION_ANT_ID, MASS_ANT_ID)


def _register() -> None:
    ant = gym.spec("Ant-v5")
    entry_points = {FRICTION_ANT_ID: "rl_plasticity.envs.factories:friction_ant", MASS_ANT_ID: "rl_plasticity.envs.factories:mass_ant"}
    for env_id, entry_point in entry_points.items():
        if env_id not in gym.registry:  # a second import must not re-register (gymnasium warns)
            gym.register(id=env_id, entry_point=entry_point, max_episode_steps=ant.max_episode_steps)


_register()

__all__ = [
    "ChangingFriction",
    "ChangingMass",
    "NonstationaryPhysics",
    "ValueSchedule",
    "DEFAULT_CHANGE_EVERY",
    "FRICTION_ANT_ID",
    "MASS_ANT_ID",
    "REGISTERED_IDS",
    "get_schedule_state",
    "set_schedule_state",
    "SurviveRewardOnTermination",
    "ZeroPadObservation",
]
