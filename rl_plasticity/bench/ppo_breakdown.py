"""Where one PPO env step's time goes: the simulator, acting, the update's parts, metrics and logging.

A run of a resolved PPO config goes through `PPORun.advance`, as `train` runs it (a real TensorBoard
logger into a temporary folder), with the pieces it is made of timed in place: the run's own objects'
methods are wrapped by a clock for the measurement only (a few hundred ns per call). Nested pieces are
reported exclusive of what they contain, so the parts add up to the whole:

    env           the env's step and reset (gymnasium's Ant: MuJoCo's mj_step and the Python around it)
    acting        the policy's batch-1 forward pass (numpy)
    rollout       the rest of collecting: noise, buffer writes, episode bookkeeping, observation scaling
    prepare       old log-probs, values and GAE of the rollout, in batch
    forward       each minibatch's actor and critic forward pass and the PPO loss
    backward      autograd's gradient of the loss
    optimizer     the optimizer step
    methods       the plasticity methods' hooks (after the loss, after each step, after the epoch)
    metrics       the plasticity metrics (every log.metrics_every steps) and the weight-change statistic
    logging       TensorBoard writes and the rest of `advance`
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict

PARTS = ("env", "acting", "rollout", "prepare", "forward", "backward", "optimizer", "methods", "metrics",
         "logging")


class _Clock:
    """Accumulated wall-clock seconds per bucket of the wrapped callables."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, obj, name: str, bucket: str) -> None:
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[bucket] += time.perf_counter() - start

        setattr(obj, name, timed)


def breakdown(cfg: dict, seed: int, steps: int) -> dict[str, float]:
    """Microseconds per env step of each of PARTS (and `total`) over `steps` env steps of `cfg`, as trained."""
    from rl_plasticity.problems.mujoco_ppo import PPORun
    from rl_plasticity.run.tblog import TBLogger

    run = PPORun(cfg, seed)
    clock = _Clock()
    env, agent, learner = run.runner.env, run.agent, run.agent.learner
    clock.wrap(env, "step", "env")
    clock.wrap(env, "reset", "env")
    clock.wrap(agent, "policy_mean", "acting")
    clock.wrap(run.runner, "collect", "collect")
    clock.wrap(agent, "prepare", "prepare")
    clock.wrap(agent, "update", "update")
    clock.wrap(learner, "update", "learner")
    clock.wrap(learner.optimizer, "step", "optimizer")
    for method in learner.methods:
        clock.wrap(method, "after_loss", "methods")
        clock.wrap(method, "after_step", "methods")
        clock.wrap(method, "after_epoch", "epoch_methods")  # runs in agent.update, outside learner.update
    for name in ("update_metrics", "step_size_metrics"):  # in advance, after train_update
        clock.wrap(run, name, "late_metrics")
    clock.wrap(run, "train_update", "train_update")
    with tempfile.TemporaryDirectory() as tmp, TBLogger(tmp) as log:
        start = time.perf_counter()
        while run.steps < steps:
            run.advance(log)
        log.flush()
        total = time.perf_counter() - start
    s = clock.seconds
    # learner.update holds autograd, the optimizer and the methods' after_loss and after_step; train_update
    # holds, besides collecting and the update, the metrics taken before the update and the weight change.
    parts = {"env": s["env"], "acting": s["acting"], "rollout": s["collect"] - s["env"] - s["acting"],
             "prepare": s["prepare"], "forward": s["update"] - s["prepare"] - s["learner"] - s["epoch_methods"],
             "backward": s["learner"] - s["optimizer"] - s["methods"], "optimizer": s["optimizer"],
             "methods": s["methods"] + s["epoch_methods"],
             "metrics": s["train_update"] - s["collect"] - s["update"] + s["late_metrics"],
             "logging": total - s["train_update"] - s["late_metrics"]}
    per_step = {name: 1e6 * parts[name] / run.steps for name in PARTS}
    per_step["total"] = 1e6 * total / run.steps
    return per_step


def print_breakdown(label: str, per_step: dict[str, float]) -> None:
    total = per_step["total"]
    print(f"{label}: {total:.0f} us per env step ({1e6 / total:.0f} env-steps/s)")
    for name in PARTS:
        print(f"  {name:10s} {per_step[name]:7.1f} us  {100 * per_step[name] / total:5.1f}%")
