"""TensorBoard: a small writer for training loops and a reader for tests and comparisons.

Tags follow DESIGN §5: `charts/...`, `losses/...`, `plasticity/<net>/<layer>/<metric>`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from rl_plasticity.errors import UserError

_EVENT_FILE_MARK = "tfevents"


class TBLogger:
    """Writes scalars and histograms to TensorBoard event files in `log_dir`.

    Nothing touches the disk until the first value is logged, so a logger can be built before a
    run's inputs are validated. None values are skipped, so optional metrics need no guards.
    When resuming from a checkpoint taken at step T, pass `purge_step=T`: events at steps >= T
    written after that checkpoint by the interrupted run are then hidden (by TensorBoard and by
    `read_scalars`) instead of appearing twice.
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None, flush_secs: int = 30):
        self.log_dir = Path(log_dir)
        self._purge_step = purge_step
        self._flush_secs = flush_secs
        self._writer = None

    @property
    def writer(self):
        """The underlying `SummaryWriter` (created on first use)."""
        if self._writer is None:
            from torch.utils.tensorboard import (
                SummaryWriter,  # imported late: it pulls in tensorboard
            )

            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self._purge_step,
                                         flush_secs=self._flush_secs)
        return self._writer

    def scalar(self, tag: str, value: Any, step: int) -> None:
        """Log one number (python/numpy number or one-element tensor); None is skipped."""
        if value is None:
            return
        self.writer.add_scalar(tag, _to_float(value), global_step=int(step))

    def scalars(self, mapping: Mapping[str, Any], step: int, prefix: str = "") -> None:
        """Log every entry of `mapping` as `prefix/key` (prefix may be empty)."""
        head = prefix.rstrip("/") + "/" if prefix else ""
        for key, value in mapping.items():
            self.scalar(head + str(key), value, step)

    def histogram(self, tag: str, values: Any, step: int) -> None:
        """Log the distribution of `values` (tensor, array or list); NaN/inf are dropped, empty skips."""
        if values is None:
            return
        data = values.detach().cpu().double().flatten() if isinstance(values, torch.Tensor) \
            else torch.as_tensor(np.asarray(values, dtype=np.float64)).flatten()
        # A histogram of non-finite values raises inside the writer; a metric must not kill a run.
        data = data[torch.isfinite(data)]
        if data.numel():
            self.writer.add_histogram(tag, data, global_step=int(step))

    # Media (videos of a policy, images) belong here, next to the other value kinds.

    def video(self, tag: str, frames: Any, step: int, fps: float = 20.0) -> None:
        """Log RGB frames (T x H x W x 3 uint8) as an animated GIF in the Images dashboard.

        This is what `SummaryWriter.add_video` writes, encoded with Pillow instead of moviepy
        (which add_video needs and this toolkit does not install). Nothing is logged for no frames.
        """
        if frames is None or len(frames) == 0:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary  # only runs that log videos load these

        from rl_plasticity.run.video import encode_gif

        height, width = np.asarray(frames[0]).shape[:2]
        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=encode_gif(frames, fps))
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), int(step))

    def flush(self) -> None:
        """Push pending events to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (logging again afterwards starts a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TBLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _to_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().cpu().item())
    return float(value)


def read_scalars(log_dir: str | Path, by_run: bool = False) -> dict[str, list[tuple[int, float]]]:
    """Every scalar under `log_dir` (searched recursively) as {tag: [(step, value), ...]} sorted by step.

    With `by_run`, each tag is prefixed by the subdirectory that holds its event files
    (`seed0/charts/return`); without it, the same tag from several subdirectories is merged.
    Events hidden by a resumed logger's `purge_step` are left out, as TensorBoard does.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = Path(log_dir)
    if not root.is_dir():
        raise UserError(f"log directory not found: {root}")
    run_dirs = sorted({Path(d) for d, _, files in os.walk(root) if any(_EVENT_FILE_MARK in f for f in files)})
    out: dict[str, list[tuple[int, float]]] = {}
    for run_dir in run_dirs:
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0 = keep every event
        with _quiet_tensorboard():  # a purge after a resume is expected, not worth a warning
            acc.Reload()
        rel = run_dir.relative_to(root).as_posix()
        for tag in acc.Tags()["scalars"]:
            key = f"{rel}/{tag}" if by_run and rel != "." else tag
            out.setdefault(key, []).extend((int(e.step), float(e.value)) for e in acc.Scalars(tag))
    return {tag: sorted(points, key=lambda p: p[0]) for tag, points in sorted(out.items()) if points}


@contextlib.contextmanager
def _quiet_tensorboard() -> Iterator[None]:
    log = logging.getLogger("tensorboard")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def method_stat_tag(key: str, net: str | None = None) -> str:
    """The one tag scheme for a plasticity method's statistics, `plasticity/<net>/<layer>/<method>_<stat>`:
    'cbp/layer0/replacements' of net 'net' -> 'plasticity/net/layer0/cbp_replacements'. Keys whose groups
    name their net (PPO's 'cbp/actor/layer0/replacements') need no `net`; a method's overall counter
    ('m/count') -> 'plasticity/<net>/m_count'."""
    method, *where, stat = key.split("/")
    return "/".join(["plasticity", *([net] if net else []), *where, f"{method}_{stat}"])


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

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        """values [seeds, ...]: each seed's distribution into its run; all seeds' values together into the mean."""
        for log, row in zip(self.seed_logs, values):
            log.histogram(tag, row, step)
        if self.mean_log is not None:
            self.mean_log.histogram(tag, values, step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Values already averaged over seeds: into the mean run (the seed's own run with one seed)."""
        log = self.mean_log or self.seed_logs[0]
        for tag, v in values.items():
            log.scalar(tag, v, step)

    def flush(self) -> None:
        for log in [*self.seed_logs, *([self.mean_log] if self.mean_log else [])]:
            log.flush()

    def close(self) -> None:
        for log in [*self.seed_logs, *([self.mean_log] if self.mean_log else [])]:
            log.close()
