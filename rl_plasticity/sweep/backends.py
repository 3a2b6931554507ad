"""Where a sweep's runs execute: child processes on this machine, or Ray tasks on a cluster.

A backend takes the planned runs, a `StatusBoard` to report to and a stop flag (set by SIGINT /
SIGTERM), and returns each run's final `Outcome`. On a stop, running runs are asked to checkpoint
and exit; runs not yet started stay unstarted. Either way, restarting the sweep picks up from there.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque

from rl_plasticity.errors import UserError
from rl_plasticity.sweep.runs import (Outcome, RunProcess, RunSpec, is_locked, launch, run_blocking, run_state,
                                      try_lock)
from rl_plasticity.sweep.status import StatusBoard

POLL_SECONDS = 0.2


class LocalBackend:
    """At most `workers` `train` child processes at a time; a failed run is retried up to `retries` times."""

    def __init__(self, workers: int | None = None, retries: int = 0):
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.retries = retries

    def run(self, specs: list[RunSpec], board: StatusBoard, stop) -> dict[str, Outcome]:
        pending, running = deque(specs), []
        outcomes: dict[str, Outcome] = {}
        failures: Counter[str] = Counter()
        told_waiting: set[str] = set()
        try:
            while pending or running:
                if stop.requested:
                    pending.clear()
                    for r in running:
                        r.terminate()
                held = self._start_some(pending, running, outcomes, board, stop)
                for spec in held:
                    if spec.name not in told_waiting:
                        told_waiting.add(spec.name)
                        board.run_waiting(spec)
                pending.extend(held)  # tried again on the next round
                for r in [r for r in running if r.poll() is not None]:
                    running.remove(r)
                    outcome = r.finish()
                    failures[r.spec.name] += outcome.status == "failed"
                    retry = outcome.retryable and failures[r.spec.name] <= self.retries and not stop.requested
                    board.run_ended(outcome, retrying=retry)
                    if retry:
                        pending.append(r.spec)
                    else:
                        outcomes[r.spec.name] = outcome
                board.draw()
                time.sleep(POLL_SECONDS)
        except BaseException:  # a second Ctrl-C: do not leave children behind
            for r in running:
                r.kill()
            raise
        return outcomes

    def _start_some(self, pending: deque, running: list[RunProcess], outcomes: dict, board: StatusBoard,
                    stop) -> list[RunSpec]:
        """Start runs until every worker is busy; returns the runs whose lock another process holds."""
        held = []
        while pending and len(running) < self.workers and not stop.requested:
            spec = pending.popleft()
            lock = try_lock(spec)
            if lock is None:
                held.append(spec)
                continue
            try:
                started = launch(spec, lock)
            finally:
                lock.close()  # the child holds it now
            if isinstance(started, Outcome):  # finished before this sweep
                outcomes[spec.name] = started
                board.run_ended(started)
            else:
                running.append(started)
                board.run_started(spec)
        return held


class RunCrashed(Exception):
    """A run's process failed in a way a retry may fix (not bad input); Ray retries these."""

    def __init__(self, outcome: Outcome):
        super().__init__(f"{outcome.spec.name}: {outcome.error or f'exit code {outcome.returncode}'}")
        self.outcome = outcome

    def __reduce__(self):  # Ray pickles exceptions; keep the outcome with it
        return (RunCrashed, (self.outcome,))


def _ray_task(spec: RunSpec) -> Outcome:
    outcome = run_blocking(spec)
    if outcome.retryable:
        raise RunCrashed(outcome)
    return outcome


class RayBackend:
    """One Ray task (1 CPU) per run. Without `address` a local cluster of `workers` CPUs is started.

    On a multi-machine cluster the sweep directory must be on a file system every node sees, at the
    same path, and the toolkit must be installed on every node.
    """

    def __init__(self, address: str | None = None, workers: int | None = None, retries: int = 2):
        self.address, self.workers, self.retries = address, workers, retries

    def run(self, specs: list[RunSpec], board: StatusBoard, stop) -> dict[str, Outcome]:
        ray = _import_ray()
        outcomes: dict[str, Outcome] = {}
        todo = []
        for spec in specs:  # finished runs need no task
            if run_state(spec.run_dir) == "done":
                outcomes[spec.name] = Outcome(spec, "done", skipped=True)
                board.run_ended(outcomes[spec.name])
            else:
                todo.append(spec)
        if not todo:
            return outcomes
        self._init(ray)
        try:
            task = ray.remote(num_cpus=1, max_retries=self.retries, retry_exceptions=[RunCrashed])(_ray_task)
            in_flight = {task.remote(spec): spec for spec in todo}
            cancelled = False
            while in_flight:
                if stop.requested and not cancelled:
                    cancelled = True
                    for ref in in_flight:
                        ray.cancel(ref)  # a running task gets KeyboardInterrupt and stops its run cleanly
                ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0.5)
                for ref in ready:
                    spec = in_flight.pop(ref)
                    outcome = self._result(ray, ref, spec)
                    outcomes[spec.name] = outcome
                    board.run_ended(outcome)
                self._show_running(board, in_flight.values())
                board.draw()
        finally:
            ray.shutdown()
        return outcomes

    def _init(self, ray) -> None:
        quiet = {"logging_level": logging.WARNING, "log_to_driver": False}  # runs log to their own files
        try:
            if self.address:
                ray.init(address=self.address, **quiet)
            else:
                ray.init(num_cpus=self.workers or os.cpu_count(), include_dashboard=False, **quiet)
        except ConnectionError as e:
            raise UserError(f"cannot join the Ray cluster at {self.address}: {e}") from None

    @staticmethod
    def _result(ray, ref, spec: RunSpec) -> Outcome:
        try:
            return ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return Outcome(spec, "stopped")
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, RunCrashed):
                return cause.outcome
            return Outcome(spec, "failed", error=str(cause or e).strip().splitlines()[-1][:300])
        except ray.exceptions.RayError as e:  # the worker or node died, retries used up
            return Outcome(spec, "failed", error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}")

    @staticmethod
    def _show_running(board: StatusBoard, specs) -> None:
        # A task holds its run's lock exactly while its run's process works; queued tasks hold none.
        now = {s.name for s in specs if is_locked(s)}
        for name in now - board.running:
            board.attempts[name] += 1
        board.running = now


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("the ray backend needs Ray: pip install ray") from None
    return ray


BACKENDS = {"local": LocalBackend, "ray": RayBackend}
