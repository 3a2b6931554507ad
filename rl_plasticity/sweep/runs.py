"""One run of a sweep: decide fresh / resume / skip, launch `train` in a child process, record the outcome.

Both sweep backends go through `launch` and `RunProcess.finish`, so a run behaves the same on one
machine and on a Ray cluster.

Each run has a lock file (`SWEEP_DIR/.sweep/locks/...`) that the `train` child inherits and holds
until it exits. A restarted sweep therefore never starts a second process on a run that an earlier,
killed sweep left running; it waits until that process has checkpointed and gone. It waits the same
way for a run directory that some other process owns (a `train --resume` typed by hand, run/owner.py),
and the `train` child takes its run directory's own lock before it writes anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from rl_plasticity.run.checkpoint import latest_checkpoint
from rl_plasticity.run.owner import owned_if_free, run_dir_holder
from rl_plasticity.run.rundir import CONFIG_FILE, ERROR_FILE, atomic_write

RESULTS_FILE = "results.json"
STATE_DIR = ".sweep"  # inside the sweep directory: locks and full per-run logs
USER_ERROR_EXIT = 2  # the CLI's exit code for bad input: retrying will not help
STOPPED_EXITS = (0, 130, 143)  # a run that ends without results: stopped by Ctrl-C / SIGTERM, resumable
ERROR_TAIL_LINES = 40


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything needed to start or continue one (learner, seed) run; plain data, so Ray can ship it."""

    sweep_dir: str
    learner: str
    config: str  # the sweep's own copy of the config file
    seed: int
    overrides: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.learner}/seed_{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.sweep_dir) / self.learner / f"seed_{self.seed}"

    @property
    def lock_path(self) -> Path:
        return Path(self.sweep_dir) / STATE_DIR / "locks" / f"{self.learner}.seed_{self.seed}.lock"

    @property
    def log_path(self) -> Path:
        return Path(self.sweep_dir) / STATE_DIR / "logs" / self.learner / f"seed_{self.seed}.log"


@dataclasses.dataclass
class Outcome:
    """How one attempt ended: `done` (results.json written), `stopped` (interrupted, resumable) or `failed`."""

    spec: RunSpec
    status: str
    seconds: float = 0.0
    returncode: int | None = None
    error: str = ""  # last lines of the child's output when it failed
    skipped: bool = False  # finished before this sweep started

    @property
    def retryable(self) -> bool:
        return self.status == "failed" and self.returncode != USER_ERROR_EXIT


def run_state(run_dir: Path) -> str:
    """`done` (results.json), `partial` (a run directory with a checkpoint) or `fresh`."""
    if (run_dir / RESULTS_FILE).is_file():
        return "done"
    if (run_dir / CONFIG_FILE).is_file() and latest_checkpoint(run_dir) is not None:
        return "partial"
    return "fresh"


def train_argv(spec: RunSpec, state: str) -> list[str]:
    """The `rl-plasticity` arguments that start (`fresh`) or continue (`partial`) the run."""
    if state == "partial":
        return ["train", "--resume", str(spec.run_dir)]
    sets = [x for item in spec.overrides for x in ("--set", item)]
    # --force: a fresh run may find a directory left by an attempt that died before its first checkpoint.
    return ["train", spec.config, "--seed", str(spec.seed), "--out", str(spec.run_dir), "--force", *sets]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # One thread per run: runs are the parallelism, and oversubscribed BLAS threads only fight.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    env["RL_PLASTICITY_NO_PROGRESS"] = "1"  # progress bars in a log file are noise
    return env


def try_lock(spec: RunSpec):
    """An open file holding the run's exclusive lock, or None if another process holds it or owns the
    run directory."""
    f = _lock_run(spec)
    if f is not None and run_dir_holder(spec.run_dir) is not None:
        f.close()
        return None
    return f


def _lock_run(spec: RunSpec):
    spec.lock_path.parent.mkdir(parents=True, exist_ok=True)
    f = open(spec.lock_path, "a+b")  # noqa: SIM115 - handed to the child, closed by the caller
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def is_locked(spec: RunSpec) -> bool:
    """True while some process (a running child) holds the run's lock."""
    f = _lock_run(spec)
    if f is None:
        return True
    f.close()
    return False


class RunProcess:
    """A `train` child process working on one run."""

    def __init__(self, spec: RunSpec, proc: subprocess.Popen, argv: list[str]):
        self.spec, self.proc, self.argv = spec, proc, argv
        self.started = time.monotonic()
        self.terminated = False

    def poll(self) -> int | None:
        return self.proc.poll()

    def terminate(self) -> None:
        """Ask the child to checkpoint and stop (it handles SIGTERM); only once, a second would abort it."""
        if not self.terminated and self.proc.poll() is None:
            self.terminated = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def finish(self) -> Outcome:
        """Classify the ended child; a failure's last output lines go to `run_dir/error.log`."""
        rc = self.proc.wait()
        seconds = time.monotonic() - self.started
        run_dir = self.spec.run_dir
        if (run_dir / RESULTS_FILE).is_file():
            with owned_if_free(run_dir) as owned:  # a run another process owns now is left alone
                if owned:
                    (run_dir / ERROR_FILE).unlink(missing_ok=True)  # an earlier attempt's error no longer applies
            return Outcome(self.spec, "done", seconds, rc)
        if rc in STOPPED_EXITS or self.terminated:
            return Outcome(self.spec, "stopped", seconds, rc)
        tail = _tail(self.spec.log_path, ERROR_TAIL_LINES)
        run_dir.mkdir(parents=True, exist_ok=True)
        with owned_if_free(run_dir) as owned:  # the full output stays in the sweep's log either way
            if owned:
                atomic_write(run_dir / ERROR_FILE, f"$ rl-plasticity {' '.join(self.argv)}\n# exit code {rc}\n{tail}\n")
        return Outcome(self.spec, "failed", seconds, rc, error=_last_line(tail))


def launch(spec: RunSpec, lock) -> RunProcess | Outcome:
    """Start the run's child process (it inherits `lock`), or return `done` if it already finished.

    The caller closes its own handle on `lock` afterwards; the child keeps the lock until it exits.
    """
    state = run_state(spec.run_dir)
    if state == "done":
        return Outcome(spec, "done", skipped=True)
    argv = train_argv(spec, state)
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(spec.log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} rl-plasticity {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "rl_plasticity.sweep.child", str(os.getpid()), *argv],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=_child_env(),
            pass_fds=(lock.fileno(),),
            # Own session: a Ctrl-C in the terminal reaches only the sweep, which then stops each run once.
            start_new_session=True,
        )
    return RunProcess(spec, proc, argv)


def run_blocking(spec: RunSpec, poll_seconds: float = 0.5) -> Outcome:
    """Wait for the run's lock, run it to its end, return the outcome (used by Ray tasks).

    An interrupt (Ray's cancel raises KeyboardInterrupt here) stops the child cleanly first.
    """
    lock = try_lock(spec)
    while lock is None:
        time.sleep(poll_seconds)
        lock = try_lock(spec)
    try:
        started = launch(spec, lock)
    finally:
        lock.close()
    if isinstance(started, Outcome):
        return started
    try:
        while started.poll() is None:
            time.sleep(poll_seconds)
    except BaseException:
        started.terminate()
        try:
            started.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            started.kill()
        raise
    return started.finish()


def _tail(path: Path, n: int) -> str:
    try:
        with open(path, "rb") as f:
            lines = deque(f, maxlen=n)
    except OSError:
        return ""
    return b"".join(lines).decode("utf-8", errors="replace").rstrip()


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
