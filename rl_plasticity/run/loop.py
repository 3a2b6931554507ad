"""The one training loop every problem runs in: resume, logs, progress bar, graceful stop, periodic
checkpoints, callbacks.

A problem's run object (its "state") speaks one small protocol:

    step                progress so far, in the unit of the bar (examples, epochs, env steps)
    total               the step at which the run is done
    tb_step             the TensorBoard step of the latest logged value (defaults to `step`)
    done()              whether the run is finished
    advance(logs, bar)  train one unit (a chunk of examples, an epoch, a rollout and its update) and log it
    should_checkpoint() whether a checkpoint is due after this unit
    state_dict() / load_state_dict(sd)   everything needed to continue exactly

Callbacks (`Callback` subclasses) see the state at named points: `at_start` (after a resume),
`after_advance` (after every unit, before its checkpoint) and `at_end` (once the run is done).
"""

from __future__ import annotations

import errno
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from rl_plasticity.errors import UserError
from rl_plasticity.run.checkpoint import CHECKPOINT_DIR, CheckpointWriteFailed, restore_latest, save_checkpoint_in
from rl_plasticity.run.progress import GracefulStop, progress_bar


class Callback:
    """Hook points of `train_loop`; override the ones you need."""

    def at_start(self, state, logs) -> None:
        pass

    def after_advance(self, state, logs) -> None:
        pass

    def at_end(self, state, logs) -> None:
        pass


def train_loop(state, run_dir: Path, resume: bool, open_logs: Callable, desc: str, unit: str,
               ckpt_dir: Path | None = None, callbacks: Sequence[Callback] = ()) -> bool:
    """Advance `state` unit by unit until it is done or a stop (Ctrl-C, SIGTERM) is requested;
    checkpoint where `state.should_checkpoint()` says so, at the end and on a stop. True when done.

    `open_logs(purge_step)` opens the run's logs (TensorBoard drops values logged after `purge_step`
    by the interrupted run). Checkpoints go to `ckpt_dir` (default `run_dir`).
    """
    ckpt_dir = ckpt_dir or run_dir
    if resume:
        restore_latest(ckpt_dir, state.load_state_dict)
    logs = open_logs(getattr(state, "tb_step", state.step) + 1 if resume else None)
    bar = progress_bar(total=state.total, desc=desc, unit=unit, initial=state.step)
    with GracefulStop() as stop:
        failed = True
        try:
            for callback in callbacks:
                callback.at_start(state, logs)
            while not state.done() and not stop.requested:
                before = state.step
                state.advance(logs, bar)
                bar.update(state.step - before)
                for callback in callbacks:
                    callback.after_advance(state, logs)
                if state.should_checkpoint() or state.done() or stop.requested:
                    if hasattr(logs, "flush"):  # what readers of a live run see reaches its newest checkpoint
                        logs.flush()
                    save_checkpoint_in(ckpt_dir, state.step, state.state_dict())
            if state.done():
                for callback in callbacks:
                    callback.at_end(state, logs)
            failed = False
        except CheckpointWriteFailed as e:
            raise UserError(f"{e}; {_after_failed_write(run_dir)}") from None
        except OSError as e:
            if e.errno not in DISK_ERRORS:
                raise
            raise UserError(f"could not write to {run_dir}: {e.strerror or e}; {_after_failed_write(run_dir)}") from None
        finally:
            bar.close()
            _close(logs, run_dir, quiet=failed)
    if not state.done():
        print(f"stopped at {unit} {state.step:,}; continue with --resume {run_dir}")
    return state.done()


# What a full or failing disk raises: the run stops with a message, its checkpoints as they were.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


def _after_failed_write(run_dir: Path) -> str:
    saved = any(run_dir.glob(f"{CHECKPOINT_DIR}/ckpt-*.pt")) or any(run_dir.glob(f"*/{CHECKPOINT_DIR}/ckpt-*.pt"))
    if saved:
        return f"free some space, then continue with: rl-plasticity train --resume {run_dir}"
    return "free some space, then start the run again"


def _close(logs, run_dir: Path, quiet: bool) -> None:
    """Close the logs; a disk error while closing is the run's error unless another one is on its way out."""
    try:
        logs.close()
    except OSError as e:
        if quiet:
            return
        if e.errno not in DISK_ERRORS:
            raise
        raise UserError(f"could not write the logs in {run_dir}: {e.strerror or e}; "
                        f"{_after_failed_write(run_dir)}") from None


def check_finite(loss_sum: float, where: str) -> None:
    """A diverged learner makes every later number meaningless: stop with a clear message, before the
    diverged state could be checkpointed (the last good checkpoint stays the newest)."""
    if not math.isfinite(loss_sum):
        raise UserError(f"training diverged at {where}: the loss became NaN or inf; no checkpoint was written "
                        "for it - try a smaller optimizer.lr")
