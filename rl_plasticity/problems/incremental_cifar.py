"""Class-incremental CIFAR-100: a ResNet-18 learns 5 new classes every `epochs_per_increment` epochs
and keeps training on all the classes seen so far.

Each seed draws its own class order. Labels are positions in that order, and the 100-way head is
read only through the outputs of the classes seen so far. Training images are augmented (random
crop with 4 pixels of zero padding, horizontal flip); test images are not. The learning rate
follows a step schedule that restarts at every increment (lr x gamma at each milestone epoch).

Learners: base (and with the cbp / snp / redo / ... sections enabled, those methods); the `reset`
method at every increment with `what: head` (the head is re-drawn: configs/incremental_cifar/head_reset.yaml)
or `what: network` (the whole network and its optimizer state start afresh: the network "retrained from
scratch" that the others are compared with, retrained.yaml; point `reference` at such a run to get accuracy
relative to it).

After each increment the run logs test accuracy on the seen classes, and on a probe of images of the
seen classes (`log.probe_split`: un-augmented training images as the official analysis uses, or test
images) the dormant fraction and stable rank of every unit group and of the penultimate features, and
`dormant_fraction`: the share of dormant units over the 17 layers the official analysis counts
(ResNet18.feature_taps). Needs the `cifar-100-python` folder (data.path); there is no embedded fallback.

Fidelity to the official code (lop/incremental_cifar/; docs/fidelity.md lists every difference):
- `net.cbp_groups: all`: CBP acts on the 17 conv outputs the official ResGnT acts on (stem, and both
  convs of each block); `inner` keeps it to the 8 inner block convs, whose replacement is exact
  (core/resnet.py explains both);
- `log.dormant: official`: a conv unit is dormant when it is active on under 1% of the probe's (sample,
  position) pairs (post_run_analysis.py); `spatial_mean` averages over positions first.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from rl_plasticity.config import OneOf, Range
from rl_plasticity.core.builders import METHOD_DEFAULTS, METHOD_RULES, build_learner, check_method_hooks
from rl_plasticity.core.metrics import (LOG_DEFAULTS, LOG_RULES, DistanceFromInit, dormant_fraction,
                                        dormant_fraction_per_position, net_metrics, stable_rank)
from rl_plasticity.core.resnet import RESNET_GROUPS, ResNet18
from rl_plasticity.datasets.cifar100 import EXPECTED, load_cifar100
from rl_plasticity.datasets.transforms import random_crop_flip
from rl_plasticity.errors import UserError
from rl_plasticity.problems.headline import Headline
from rl_plasticity.problems.supervised import (DEVICE_RULE, check_data_path, load_net_buffers, minibatches,
                                               net_buffers, resolve_device, summarize_tasks)
from rl_plasticity.run.loop import check_finite, train_loop
from rl_plasticity.run.rundir import atomic_write
from rl_plasticity.run.seeding import generators
from rl_plasticity.run.tblog import SeedLogs, method_stat_tag

MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)  # CIFAR-100's channel statistics

HEADLINE = Headline(metrics=["charts/test_accuracy"], x_label="epochs",
                    charts=[("test accuracy", [r"^charts/test_accuracy$"]), ("classes", [r"^charts/classes$"])])

DEFAULTS = {
    "problem": "incremental_cifar",
    "device": "cpu",
    "cpu_threads": 1,
    "data": {"path": None, "train_per_class": None, "test_per_class": None},  # None: all images
    "classes_per_increment": 5,
    "increments": 20,
    "epochs_per_increment": 200,
    "batch_size": 90,
    "lr_milestones": [60, 120, 160],  # epochs within an increment
    "lr_gamma": 0.2,
    "reference": None,  # run directory of a retrained (`reset.what: network`) run, for relative accuracy
    "net": {"width": 64, "cbp_groups": "all"},
    **METHOD_DEFAULTS,
    "log": {"probe_size": 1000, "probe_split": "train", "dormant": "official", "checkpoint_every_epochs": 1,
            **LOG_DEFAULTS},
}
DEFAULTS["optimizer"] = {**METHOD_DEFAULTS["optimizer"], "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}

RULES = {
    **METHOD_RULES, **DEVICE_RULE, **LOG_RULES,
    "cpu_threads": Range(low=1),
    "data.train_per_class": Range(low=1),
    "data.test_per_class": Range(low=1),
    "classes_per_increment": Range(low=1, high=100),
    "increments": Range(low=1),
    "epochs_per_increment": Range(low=1),
    "batch_size": Range(low=1),
    "lr_gamma": Range(low=0, low_open=True),
    "net.width": Range(low=1),
    "net.cbp_groups": OneOf(*RESNET_GROUPS),
    "log.probe_size": Range(low=1),
    "log.probe_split": OneOf("train", "test"),
    "log.dormant": OneOf("official", "spatial_mean"),
    "log.checkpoint_every_epochs": Range(low=1),
}


def check(cfg: dict) -> None:
    check_method_hooks(cfg, {"epoch", "task_switch"})
    if cfg["classes_per_increment"] * cfg["increments"] > 100:
        raise UserError("config keys 'classes_per_increment' x 'increments' must be <= 100 (CIFAR-100 has 100 classes)")
    if cfg["data"]["path"] is None:
        raise UserError(f"incremental CIFAR-100 needs data.path (--set data.path=DIR): expected {EXPECTED}")
    check_data_path(cfg, EXPECTED)
    if any(not isinstance(m, int) for m in cfg["lr_milestones"]):
        raise UserError(f"config key 'lr_milestones' must be a list of epochs, got {cfg['lr_milestones']}")


def whole_net_dormant(taps: list[torch.Tensor], definition: str) -> float:
    """Dormant units over all the given [1, B, U, ...] taps / all their units: the one number per network of
    post_run_analysis.py's compute_dormant_units_proportion (with definition "official")."""
    dead = total = 0.0
    for t in taps:
        if definition == "official":
            share = dormant_fraction_per_position(t)
        else:
            share = dormant_fraction(t.flatten(3).mean(3) if t.dim() > 3 else t)
        dead += float(share[0]) * t.shape[2]
        total += t.shape[2]
    return dead / total


def _per_class(images: torch.Tensor, labels: torch.Tensor, cap: int | None):
    if cap is None:
        return images, labels
    keep = torch.cat([(labels == c).nonzero().flatten()[:cap] for c in labels.unique()]).sort().values
    return images[keep], labels[keep]


class IncrementalCifarRun:
    """One seed's run; the unit of work is one epoch."""

    def __init__(self, cfg: dict, seed: int, data: dict):
        self.cfg, self.device = cfg, resolve_device(cfg["device"])
        d = cfg["data"]
        self.train = _per_class(*(torch.from_numpy(a) for a in data["train"]), d["train_per_class"])
        self.test = _per_class(*(torch.from_numpy(a) for a in data["test"]), d["test_per_class"])
        self.data_generator = generators([seed], "data")[0]
        self.order = torch.randperm(100, generator=self.data_generator)  # class order of this seed
        self.position = torch.empty(100, dtype=torch.long)
        self.position[self.order] = torch.arange(100)  # label -> its place in the order
        self.net = ResNet18(num_classes=100, width=cfg["net"]["width"], groups=cfg["net"]["cbp_groups"])
        self.init_generators = generators([seed], "init")
        self.net.reset_parameters(self.init_generators)
        self.net.to(self.device)
        self.method_generators = generators([seed], "method")
        self.learner = build_learner(self.net.parameters(), self.net.groups, cfg, self.method_generators,
                                     nets=[self.net])
        self.distance = DistanceFromInit(self.net)
        self.epochs_done = 0
        self.accuracies: list[float] = []
        self.history: list[dict] = []  # per increment: accuracy and plasticity metrics
        self._select()

    # --- train_loop protocol
    @property
    def step(self) -> int:
        return self.epochs_done

    @property
    def total(self) -> int:
        return self.cfg["increments"] * self.cfg["epochs_per_increment"]

    def done(self) -> bool:
        return self.epochs_done >= self.total

    def should_checkpoint(self) -> bool:
        return self.epochs_done % self.cfg["log"]["checkpoint_every_epochs"] == 0

    def _select(self) -> None:
        """Train and test tensors of the classes seen in the current increment; labels are positions."""
        increment = min(self.epochs_done // self.cfg["epochs_per_increment"], self.cfg["increments"] - 1)
        self.seen = self.cfg["classes_per_increment"] * (increment + 1)
        def pick(images, labels):
            pos = self.position[labels]
            keep = pos < self.seen
            return images[keep].to(self.device), pos[keep].to(self.device)  # uint8: 4x less memory
        self.train_x, self.train_y = pick(*self.train)
        self.test_x, self.test_y = pick(*self.test)

    def _floats(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, 32, 32] -> standardised floats."""
        mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
        return (images.float() / 255 - mean) / std

    def _lr(self) -> float:
        epoch_in_increment = self.epochs_done % self.cfg["epochs_per_increment"]
        passed = sum(epoch_in_increment >= m for m in self.cfg["lr_milestones"])
        return self.cfg["optimizer"]["lr"] * self.cfg["lr_gamma"] ** passed

    def advance(self, logs, bar=None) -> None:
        self.learner.optimizer.lr = self._lr()
        self.net.train()
        total_loss, n = 0.0, 0
        for idx in minibatches(len(self.train_y), self.cfg["batch_size"], self.data_generator):
            x = random_crop_flip(self._floats(self.train_x[idx.to(self.device)]), self.data_generator)
            y = self.train_y[idx.to(self.device)]
            loss = F.cross_entropy(self.net(x)[:, :self.seen], y)
            self.learner.update(loss)
            total_loss += float(loss.detach()) * len(y)
            n += len(y)
        check_finite(total_loss, f"epoch {self.epochs_done + 1}")
        self.learner.end_epoch()
        self.epochs_done += 1
        logs.per_seed("losses/train", [total_loss / n], self.epochs_done)
        if self.epochs_done % self.cfg["epochs_per_increment"] == 0:
            self._end_increment(logs, bar)

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.net.eval()
        correct = sum(int((self.net(x)[:, :self.seen].argmax(1) == y).sum())
                      for x, y in zip(map(self._floats, self.test_x.split(500)), self.test_y.split(500)))
        metrics = {"test_accuracy": correct / len(self.test_y)}
        log = self.cfg["log"]
        images = self.train_x if log["probe_split"] == "train" else self.test_x
        probe = self._floats(images[: log["probe_size"]])
        for name, values in net_metrics(self.net, probe, self.learner.latest_gradients(), self.distance,
                                        dormant=log["dormant"], tau=log["dormant_tau"],
                                        grama_tau=log["grama_tau"]).items():
            metrics[name] = float(values[0])
        features = self.net.features.unsqueeze(0)  # set by the probe's forward
        metrics["features/dormant_fraction"] = float(dormant_fraction(features)[0])
        metrics["features/stable_rank"] = float(stable_rank(features)[0])
        metrics["dormant_fraction"] = whole_net_dormant(self.net.feature_taps(), log["dormant"])
        return metrics

    def _end_increment(self, logs, bar) -> None:
        metrics = self.evaluate()
        self.accuracies.append(metrics["test_accuracy"])
        self.history.append({"classes": self.seen, **metrics})
        step = self.epochs_done
        logs.per_seed("charts/test_accuracy", [metrics["test_accuracy"]], step)
        logs.per_seed("charts/classes", [self.seen], step)
        for name, value in metrics.items():
            if name != "test_accuracy":
                logs.per_seed(f"plasticity/net/{name}", [value], step)
        logs.scalars({method_stat_tag(k, "net"): v for k, v in self.learner.stats().items()}, step)
        if bar is not None:
            bar.set_postfix(classes=self.seen, acc=f"{metrics['test_accuracy']:.3f}")
        if self.done():
            return
        self.learner.task_switch()
        self._select()

    def state_dict(self) -> dict:
        return {"learner": self.learner.state_dict(), "buffers": net_buffers(self.net),
                "init_weights": self.distance.state_dict(),
                "epochs_done": self.epochs_done, "accuracies": self.accuracies, "history": self.history,
                "data_generator": self.data_generator.get_state(),
                "init_generators": [g.get_state() for g in self.init_generators],
                "method_generators": [g.get_state() for g in self.method_generators]}

    def load_state_dict(self, sd: dict) -> None:
        self.learner.load_state_dict(sd["learner"])
        load_net_buffers(self.net, sd["buffers"])
        if "init_weights" in sd:  # checkpoints of older versions have none: the init rebuilt from the seed
            self.distance.load_state_dict(sd["init_weights"])
        self.epochs_done = int(sd["epochs_done"])
        self.accuracies, self.history = list(sd["accuracies"]), [dict(h) for h in sd["history"]]
        self.data_generator.set_state(sd["data_generator"])
        for g, s in zip(self.init_generators, sd["init_generators"]):
            g.set_state(s)
        for g, s in zip(self.method_generators, sd["method_generators"]):
            g.set_state(s)
        self._select()


def _relative(summary: dict, reference: str) -> list[float]:
    path = Path(reference) / "results.json"
    try:
        ref = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"config key 'reference': cannot read {path}: {e}") from None
    ref_acc = [t["mean"] for t in ref.get("per_task", [])]
    if len(ref_acc) < summary["tasks"]:
        raise UserError(f"reference run {reference} has {len(ref_acc)} increments; this run has {summary['tasks']}")
    return [t["mean"] / r if r > 0 else float("nan") for t, r in zip(summary["per_task"], ref_acc)]


def run(cfg: dict, seeds: list[int], run_dir: Path, resume: bool = False) -> dict:
    if cfg["device"] == "cpu":
        torch.set_num_threads(cfg["cpu_threads"])
    data = load_cifar100(cfg["data"]["path"])
    histories, per_seed = [], []
    for seed in seeds:
        state = IncrementalCifarRun(cfg, seed, data)
        if not train_loop(state, run_dir, resume, partial(SeedLogs, run_dir, [seed]),
                          f"incremental CIFAR-100 seed {seed}", "epoch", ckpt_dir=run_dir / f"seed_{seed}"):
            return {}
        per_seed.append(state.accuracies)
        histories.append(state.history)
    summary = summarize_tasks([list(inc) for inc in zip(*per_seed)], window=1)
    summary["history"] = histories
    if cfg["reference"]:
        summary["relative_to_retrained"] = _relative(summary, cfg["reference"])
    atomic_write(run_dir / "results.json", json.dumps(summary, indent=1))
    print("test accuracy per increment: " + ", ".join(f"{t['mean']:.3f}" for t in summary["per_task"]))
    return summary
