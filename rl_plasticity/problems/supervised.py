"""What the supervised continual benchmarks share: the device key, per-seed TensorBoard logs, the
resumable train loop (checkpoint, graceful stop, progress) and summaries over seeds."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rl_plasticity.checkpoint import restore_latest, save_checkpoint_in
from rl_plasticity.config import OneOf
from rl_plasticity.errors import UserError
from rl_plasticity.progress import GracefulStop, progress_bar
from rl_plasticity.tblog import TBLogger

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


def check_finite(loss_sum: float, where: str) -> None:
    """A diverged learner makes every later number meaningless: stop with a clear message, before the
    diverged state could be checkpointed (the last good checkpoint stays the newest)."""
    if not math.isfinite(loss_sum):
        raise UserError(f"training diverged at {where}: the loss became NaN or inf; no checkpoint was written "
                        "for it - try a smaller optimizer.lr")


def mean_se(values: list[float]) -> dict:
    """Mean and standard error over seeds; `se` is None for one seed (there is no spread to measure)."""
    t = torch.tensor(values, dtype=torch.float64)
    se = float(t.std(unbiased=True) / math.sqrt(len(t))) if len(t) > 1 else None
    return {"mean": float(t.mean()), "se": se, "n": len(t)}


def format_mean_se(stat: dict, digits: int = 3) -> str:
    """`0.512 +- 0.013`, or `0.512 (n=1)` when one seed gives no standard error."""
    if stat["se"] is None or not math.isfinite(stat["se"]):
        return f"{stat['mean']:.{digits}f} (n={stat.get('n', 1)})"
    return f"{stat['mean']:.{digits}f} +- {stat['se']:.{digits}f}"


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


class SeedLogs:
    """One TensorBoard run per seed (seed_<k>) plus their mean (mean), all with the same tags."""

    def __init__(self, run_dir: Path, seeds: list[int], purge_step: int | None):
        self.seed_logs = [TBLogger(run_dir / "tb" / f"seed_{s}", purge_step=purge_step) for s in seeds]
        self.mean_log = TBLogger(run_dir / "tb" / "mean", purge_step=purge_step) if len(seeds) > 1 else None

    def per_seed(self, tag: str, values: list[float], step: int) -> None:
        for log, v in zip(self.seed_logs, values):
            log.scalar(tag, v, step)
        if self.mean_log is not None:
            self.mean_log.scalar(tag, sum(values) / len(values), step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Values already averaged over seeds: into the mean run (the seed's own run with one seed)."""
        log = self.mean_log or self.seed_logs[0]
        for tag, v in values.items():
            log.scalar(tag, v, step)

    def close(self) -> None:
        for log in [*self.seed_logs, *([self.mean_log] if self.mean_log else [])]:
            log.close()


def train_loop(state, run_dir: Path, seeds: list[int], resume: bool, desc: str, unit: str,
               ckpt_dir: Path | None = None) -> bool:
    """Advance `state` unit by unit (a chunk of examples, an epoch or a task) until it is done or a stop
    is requested; checkpoint where `state.should_checkpoint()` says so, at the end and on a stop.

    `state` provides: step (examples or units so far, the TensorBoard step), total, done(),
    advance(logs, bar), should_checkpoint(), state_dict(), load_state_dict(sd). Checkpoints go to
    `ckpt_dir` (default run_dir; a seed's own folder when seeds run one after another). True when done.
    """
    ckpt_dir = ckpt_dir or run_dir
    if resume:
        restore_latest(ckpt_dir, state.load_state_dict)
    # TensorBoard steps may count something else than the progress unit (tasks vs epochs).
    logs = SeedLogs(run_dir, seeds, purge_step=getattr(state, "tb_step", state.step) + 1 if resume else None)
    bar = progress_bar(total=state.total, desc=desc, unit=unit, initial=state.step)
    with GracefulStop() as stop:
        try:
            while not state.done() and not stop.requested:
                before = state.step
                state.advance(logs, bar)
                bar.update(state.step - before)
                if state.should_checkpoint() or state.done() or stop.requested:
                    save_checkpoint_in(ckpt_dir, state.step, state.state_dict())
        finally:
            bar.close()
            logs.close()
    if not state.done():
        print(f"stopped at {unit} {state.step:,}; continue with --resume {run_dir}")
    return state.done()
