"""What a sweep shows while it works (one line per finished run, a status line refreshed in place, a summary),
and `sweep --status`: each run's state and owner, read from the sweep directory alone."""

from __future__ import annotations

import sys
import time
from collections import Counter

from rl_plasticity.run.checkpoint import CHECKPOINT_DIR, list_checkpoints
from rl_plasticity.run.owner import Holder, run_dir_holder
from rl_plasticity.run.progress import progress_enabled
from rl_plasticity.run.rundir import ERROR_FILE
from rl_plasticity.sweep.runs import Outcome, RunSpec, run_state


class StatusBoard:
    """Counts runs as pending / running / done / failed / stopped and prints changes to stderr.

    On a terminal the counts sit on one line rewritten in place; in a log (no TTY) only the event
    lines appear, so a CI log stays readable.
    """

    def __init__(self, specs: list[RunSpec], stream=None):
        self.stream = stream or sys.stderr
        self.total = len(specs)
        self.names = [s.name for s in specs]
        self.running: set[str] = set()
        self.outcomes: dict[str, Outcome] = {}
        self.attempts: Counter[str] = Counter()
        self.started = time.monotonic()
        self._live = progress_enabled() and self.stream.isatty()
        self._last_draw = 0.0

    # ----------------------------------------------------------------- events

    def run_started(self, spec: RunSpec) -> None:
        self.running.add(spec.name)
        self.attempts[spec.name] += 1
        self.draw(force=True)

    def run_waiting(self, spec: RunSpec) -> None:
        who = run_dir_holder(spec.run_dir)
        self.event(f"waiting  {spec.name}: " + (f"in use by {who.describe()}" if who is not None
                                                else "still held by a process of an earlier sweep"))

    def run_ended(self, outcome: Outcome, retrying: bool = False) -> None:
        name = outcome.spec.name
        self.running.discard(name)
        if outcome.skipped:
            self.outcomes[name] = outcome
            return  # counted in the summary; a line per finished run would drown the new ones
        if retrying:
            self.event(f"retry    {name}: {outcome.error or f'exit code {outcome.returncode}'}")
            return
        self.outcomes[name] = outcome
        if outcome.status == "done":
            self.event(f"done     {name} ({_duration(outcome.seconds)})")
        elif outcome.status == "stopped":
            self.event(f"stopped  {name}: resumable")
        else:
            self.event(f"FAILED   {name}: {outcome.error or f'exit code {outcome.returncode}'} "
                       f"(see {outcome.spec.run_dir / 'error.log'})")

    def event(self, line: str) -> None:
        self._clear()
        print(line, file=self.stream, flush=True)
        self.draw(force=True)

    # ----------------------------------------------------------------- the live line

    def counts(self) -> dict[str, int]:
        by_status = Counter(o.status for o in self.outcomes.values())
        finished = len(self.outcomes)
        return {"done": by_status["done"], "running": len(self.running), "failed": by_status["failed"],
                "stopped": by_status["stopped"], "pending": self.total - finished - len(self.running)}

    def status_line(self) -> str:
        c = self.counts()
        parts = [f"{c['done']}/{self.total} done", f"{c['running']} running", f"{c['failed']} failed"]
        if c["stopped"]:
            parts.append(f"{c['stopped']} stopped")
        parts.append(f"{c['pending']} pending")
        return f"sweep: {', '.join(parts)} [{_duration(time.monotonic() - self.started)}]"

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._live or (not force and now - self._last_draw < 0.5):
            return
        self._last_draw = now
        self.stream.write("\r\x1b[2K" + self.status_line())
        self.stream.flush()

    def _clear(self) -> None:
        if self._live:
            self.stream.write("\r\x1b[2K")

    def close(self) -> None:
        if self._live:
            self._clear()
            self.stream.flush()

    # ----------------------------------------------------------------- the end

    def summary(self, learners: list[str]) -> str:
        """A table per learner (done / failed / stopped / not run, mean run time) and the failed runs."""
        header = ("learner", "done", "new", "failed", "stopped", "not run", "mean time")
        rows = []
        for learner in learners:
            mine = [o for name, o in self.outcomes.items() if name.startswith(learner + "/")]
            planned = sum(1 for n in self.names if n.startswith(learner + "/"))
            status = Counter(o.status for o in mine)
            new = [o for o in mine if o.status == "done" and not o.skipped]
            mean = _duration(sum(o.seconds for o in new) / len(new)) if new else "-"
            rows.append((learner, status["done"], len(new), status["failed"], status["stopped"],
                         planned - len(mine), mean))
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
                 for r in [header, *rows]]
        failed = [o for o in self.outcomes.values() if o.status == "failed"]
        if failed:
            lines.append("failed runs (last line of output; full tail in error.log):")
            lines += [f"  {o.spec.name}: {o.error or f'exit code {o.returncode}'}" for o in failed]
        return "\n".join(lines)


def status_report(sweep_dir, specs: list[RunSpec], sweep_owner: Holder | None) -> str:
    """One line per run: done / running (and by whom) / failed / stopped / not started, and its newest
    checkpoint. Takes no lock, so it works beside a live sweep."""
    rows, states = [], Counter()
    for spec in specs:
        who = run_dir_holder(spec.run_dir)
        state = run_state(spec.run_dir)
        if state != "done" and who is not None:
            state = "running"
        elif state != "done" and (spec.run_dir / ERROR_FILE).is_file():
            state = "failed"
        else:
            state = {"done": "done", "partial": "stopped", "fresh": "not started"}[state]
        states[state] += 1
        step = _newest_step(spec.run_dir)
        rows.append((spec.name, state, "-" if step is None else f"{step:,}", who.describe() if who else "-"))
    header = ("run", "state", "checkpoint", "owner")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = [f"sweep directory: {sweep_dir}",
             f"sweep process: {sweep_owner.describe() if sweep_owner else 'none'}",
             ", ".join(f"{states[k]} {k}" for k in ("done", "running", "failed", "stopped", "not started") if states[k])
             + f" of {len(specs)} runs"]
    lines += ["  ".join([*(v.ljust(w) for v, w in zip(r[:3], widths)), r[3]]).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def _newest_step(run_dir) -> int | None:
    """The step of the newest checkpoint (runs of one seed after another keep theirs under seed_<k>/)."""
    folders = [run_dir, *(p.parent for p in run_dir.glob(f"*/{CHECKPOINT_DIR}"))]
    steps = [step for folder in folders for step, _ in list_checkpoints(folder)]
    return max(steps) if steps else None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
