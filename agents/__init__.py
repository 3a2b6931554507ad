"""RL agents built on the learner core: PPO with plasticity methods on actor and critic."""

from rl_plasticity.agents.env_runner import EnvRunner, Episode
from rl_plasticity.agents.ppo import NonFiniteLoss, PPOAgent, PPOSettings
from rl_plasticity.agents.rollout import RolloutBuffer, compute_gae, next_state_values

__all__ = ["EnvRunner", "Episode", "NonFiniteLoss", "PPOAgent", "PPOSettings", "RolloutBuffer", "compute_gae",
           "next_state_values"]
