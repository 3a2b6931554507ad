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

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from rl_plasticity.errors import UserError
from rl_plasticity.run.checkpoint import restore_latest, save_checkpoint_in
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
                    save_checkpoint_in(ckpt_dir, state.step, state.state_dict())
            if state.done():
                for callback in callbacks:
                    callback.at_end(state, logs)
        finally:
            bar.close()
            logs.close()
    if not state.done():
        print(f"stopped at {unit} {state.step:,}; continue with --resume {run_dir}")
    return state.done()


def check_finite(loss_sum: float, where: str) -> None:
    """A diverged learner makes every later number meaningless: stop with a clear message, before the
    diverged state could be checkpointed (the last good checkpoint stays the newest)."""
    if not math.isfinite(loss_sum):
        raise UserError(f"training diverged at {where}: the loss became NaN or inf; no checkpoint was written "
                        "for it - try a smaller optimizer.lr")
