"""What the supervised continual benchmarks share: the device key, data-path checks, minibatches,
batch-norm buffers in checkpoints and per-task summaries over seeds."""

from __future__ import annotations

from pathlib import Path

import torch

from rl_plasticity.config import OneOf
from rl_plasticity.core.metrics import net_metrics
from rl_plasticity.core.step_size import collapse_threshold, step_size_metrics
from rl_plasticity.errors import UserError
from rl_plasticity.run.stats import mean_se
from rl_plasticity.run.tblog import method_stat_tag

DEVICE_RULE = {"device": OneOf("cpu", "cuda")}


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("config key 'device' is 'cuda' but torch sees no CUDA device; use device=cpu")
    return torch.device(name)


def check_data_path(cfg: dict, expected: str) -> None:
    """Before a run directory is made: data.path, when given, must be a string naming something that exists."""
    path = cfg["data"]["path"]
    if path is None:
        return
    if not isinstance(path, str):
        raise UserError(f"config key 'data.path' must be a path (string) or null, got {path!r}")
    if not Path(path).exists():
        raise UserError(f"data path {path} does not exist: expected {expected}")


def summarize_tasks(accuracies: list[list[float]], window: int = 10) -> dict:
    """accuracies [tasks][seeds] -> per task the mean +- SE over seeds; first and last `window` tasks
    averaged per seed, then over seeds."""
    t = torch.tensor(accuracies, dtype=torch.float64)
    w = min(window, len(t))
    return {"seeds": t.shape[1], "tasks": t.shape[0], "window": w,
            "first": mean_se(t[:w].mean(0).tolist()), "last": mean_se(t[-w:].mean(0).tolist()),
            "per_task": [mean_se(row.tolist()) for row in t], "accuracies": accuracies}


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A fresh random order of range(n), cut into minibatches (the last one may be smaller)."""
    return list(torch.randperm(n, generator=generator).split(batch_size))


def net_buffers(net: torch.nn.Module) -> list[torch.Tensor]:
    """Buffers (batch-norm running statistics) that the learner's parameter state does not hold."""
    return [b.detach().cpu().clone() for b in net.buffers()]


@torch.no_grad()
def load_net_buffers(net: torch.nn.Module, saved: list[torch.Tensor]) -> None:
    for b, s in zip(net.buffers(), saved):
        b.copy_(s)


def log_net_metrics(logs, net, learner, probe: torch.Tensor, distance, cfg: dict, step: int) -> None:
    """Every plasticity metric of a replica-batched net (probe, gradients, distance from init, learned step
    sizes) and its methods' statistics, per seed under plasticity/net/."""
    L = cfg["log"]
    for name, values in net_metrics(net, probe, learner.latest_gradients(), distance,
                                    tau=L["dormant_tau"], grama_tau=L["grama_tau"]).items():
        logs.per_seed(f"plasticity/net/{name}", values.tolist(), step)
    scalars, histograms = step_size_metrics(learner.optimizer, net, collapse_threshold(cfg))
    for name, values in scalars.items():
        logs.per_seed(f"plasticity/net/{name}", values.tolist(), step)
    for name, values in histograms.items():
        logs.histogram(f"plasticity/net/{name}", values, step)
    logs.scalars({method_stat_tag(k, "net"): v for k, v in learner.stats().items()}, step)
