"""Console progress for long runs, and a clean stop on Ctrl-C / SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

from tqdm import tqdm

NO_PROGRESS_ENV = "RL_PLASTICITY_NO_PROGRESS"


def progress_enabled() -> bool:
    """False when RL_PLASTICITY_NO_PROGRESS is set to 1 (or true/yes/on)."""
    return os.environ.get(NO_PROGRESS_ENV, "").strip().lower() not in {"1", "true", "yes", "on"}


def progress_bar(total: int | None, desc: str = "", unit: str = "step", initial: int = 0) -> tqdm:
    """A stderr progress bar with rate (unit/s) and ETA; `initial` starts a resumed run part-way.

    Use `.update(n)`, `.set_postfix(return_=...)`, `.close()` (or `with`).
    """
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        unit_scale=True,  # 12.3k step/s reads better than 12345.67 step/s
        mininterval=0.5,  # refreshing more often costs time in a tight loop
        smoothing=0.1,  # rate over recent updates, but not jittery
        dynamic_ncols=True,
        file=sys.stderr,
        disable=not progress_enabled(),
    )


class GracefulStop:
    """Turns the first SIGINT/SIGTERM into `stop.requested = True` so a loop can checkpoint and exit.

    A second signal raises KeyboardInterrupt (the user insists). Previous handlers come back on
    exit. Signal handlers can only be set in the main thread; elsewhere this does nothing.
    `exit_code` is the shell's code for the signal that stopped the loop: 130 (SIGINT), 143 (SIGTERM).

        with GracefulStop() as stop:
            while not done and not stop.requested:
                ...
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    last_signum: int | None = None  # the signal that last stopped a loop in this process

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    def __init__(self, notice: str | None = "stopping after this step and saving a checkpoint "
                                            "(press Ctrl-C again to abort)"):
        self.notice = notice
        self.requested = False
        self.signal_name: str | None = None
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            # None means the old handler was not set from Python; the default is the best match.
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        GracefulStop.last_signum = signum
        if self.notice:
            # os.write, not print: a handler can run in the middle of another write to sys.stderr.
            try:
                os.write(2, f"\nrl-plasticity: {self.signal_name} received, {self.notice}\n".encode())
            except OSError:  # no stderr to tell; the flag is what matters
                pass
