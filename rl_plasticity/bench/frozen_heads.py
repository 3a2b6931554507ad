"""What the frozen heads of plasticity injection into the last 2 layers cost per step, against the same net with none.

Two cases, both nets as their configs build them (core/methods/reset.py injects; core/frozen_heads.py computes the
heads):
- PPO's batch-1 action (`PPOAgent.policy_mean`) on the 111-256-256-8 ReLU actor, after `--injections` (default 9,
  configs/friction_ant/injection.yaml's 20M steps) injections: 2 frozen heads each; and, for scale, one update
  minibatch of 128 through the actor and the critic (forward, backward, Adam step);
- one training step of slowly-changing regression's 20-5-1 net with `--replicas` (default 30) seeds batched
  (forward, backward, SGD step on one example per seed), after `--injections` + 1 (default 10) injections.
Each figure is the best, over `--repeats` runs, of the mean time of one call over `--calls` calls, on one torch
thread: the steady figure on a shared, noisy machine. Printed in microseconds.
"""

from __future__ import annotations

import copy
import time

from rl_plasticity.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--injections", type=int, default=9,
                        help="PPO injections (regression gets one more; default 9)")
    parser.add_argument("--replicas", type=int, default=30, help="regression seeds batched (default 30)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per timed run (default 2000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure, best kept (default 5)")


def _best_us(fn, calls: int, repeats: int) -> float:
    fn()  # warm-up: first-call allocations
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def _ppo(injections: int, calls: int, repeats: int) -> dict:
    import torch

    from rl_plasticity.agents.ppo import PPOAgent, PPOSettings
    from rl_plasticity.core.builders import METHOD_DEFAULTS

    cfg = copy.deepcopy(METHOD_DEFAULTS)
    cfg["optimizer"].update(name="adam", lr=1e-4)
    cfg["reset"].update(enabled=True, what="injection", when="task_switch")  # last_layers: 2
    agent = PPOAgent(111, 8, [256, 256], "relu", "lecun", 0.0, PPOSettings(), cfg, torch.Generator().manual_seed(0),
                     [torch.Generator().manual_seed(1)], torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    obs = torch.randn(111, generator=g).numpy()
    batch, actions, returns = torch.randn(128, 111, generator=g), torch.randn(128, 8, generator=g), torch.randn(128)

    def minibatch():
        policy_loss = -agent._log_prob(agent.actor(batch), actions).mean()
        agent.learner.update(policy_loss + (agent.critic(batch)[:, 0] - returns).square().mean())

    figures = {}
    for label in ("none", "injected"):
        if label == "injected":
            for _ in range(injections):
                agent.learner.task_switch()
        heads = len(agent.actor.frozen_heads)
        act = _best_us(lambda: agent.policy_mean(obs), calls, repeats)
        torch_act = _best_us(lambda: agent._torch_policy_mean(obs), calls // 4, repeats)
        update = _best_us(minibatch, max(1, calls // 40), repeats)
        figures[f"ppo_act_{label}_us"], figures[f"ppo_torch_act_{label}_us"] = act, torch_act
        figures[f"ppo_minibatch_{label}_us"] = update
        print(f"PPO actor 111-256-256-8, {heads:>2} frozen heads: policy_mean {act:8.1f} us, torch forward "
              f"{torch_act:8.1f} us, minibatch of 128 (actor + critic, Adam) {update:9.1f} us")
    return figures


def _regression(replicas: int, injections: int, calls: int, repeats: int) -> dict:
    import torch

    from rl_plasticity.core.builders import METHOD_DEFAULTS, build_learner
    from rl_plasticity.core.networks import MLP

    generators = [torch.Generator().manual_seed(r) for r in range(replicas)]
    net = MLP([20, 5, 1], activation="relu", init="kaiming", replicas=replicas)
    net.reset_parameters(generators)
    cfg = copy.deepcopy(METHOD_DEFAULTS)
    cfg["optimizer"].update(name="sgd", lr=0.01)
    cfg["reset"].update(enabled=True, what="injection", when="task_switch")  # last_layers: 2, the whole net
    learner = build_learner(net.parameters(), net.groups, cfg, generators, nets=[net])
    g = torch.Generator().manual_seed(4)
    x, y = torch.randint(0, 2, (replicas, 1, 20), generator=g).float(), torch.randn(replicas, 1, generator=g)

    def step():
        learner.update((net(x).squeeze(2) - y).square().sum())

    figures = {}
    for label in ("none", "injected"):
        if label == "injected":
            for _ in range(injections):
                learner.task_switch()
        figures[f"regression_step_{label}_us"] = us = _best_us(step, calls, repeats)
        print(f"regression 20-5-1 x {replicas} replicas, {len(net.frozen_heads):>2} frozen heads: step {us:8.1f} us")
    return figures


def run(args) -> dict:
    import torch

    for option, value in (("--injections", args.injections), ("--replicas", args.replicas), ("--calls", args.calls),
                          ("--repeats", args.repeats)):
        if value < 1:
            raise UserError(f"{option} must be >= 1, got {value}")
    torch.set_num_threads(1)
    figures = _ppo(args.injections, args.calls, args.repeats)
    figures.update(_regression(args.replicas, args.injections + 1, args.calls, args.repeats))
    return {k: round(v, 1) for k, v in figures.items()}
