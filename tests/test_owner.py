"""One owner per run and sweep directory: a second process that would write one stops with one line naming
who holds it; a killed owner leaves nothing that blocks a resume; read-only commands work beside a live run.

The live owners are real processes paused after their first checkpoint (tests/hooks), so no test
depends on how fast the machine is; the commands that meet them run in this process where the exit code
and message are all that matter, and in a process of their own where their stderr is the point.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sweeps import CONFIGS, TINY, sets, sweep_argv

from rl_plasticity.cli import main as cli_main
from rl_plasticity.errors import UserError
from rl_plasticity.run.owner import LOCK_FILE, Holder, Owner, hold, holder, try_hold
from rl_plasticity.run.rundir import new_run_dir, write_run_info
from rl_plasticity.sweep.runs import RunSpec, try_lock
from rl_plasticity.sweep.status import StatusBoard

HOOKS = Path(__file__).resolve().parent / "hooks"
ROOT = HOOKS.parents[1]
BP = str(CONFIGS / "bp.yaml")
LONG = [*TINY, "examples=3000"]  # goes on after its first checkpoint at 500, where the hook pauses it
HANG = 1800  # seconds; only stops a test that hangs (every wait is for an event, never for a time)


def hooked_env(run_dir: Path, marker: Path) -> dict:
    # The checkout's own package first: the hooks import it at start-up, before `-m` puts the current
    # directory on the path, and an installed copy elsewhere would otherwise be the one that runs.
    return {**os.environ, "RL_PLASTICITY_NO_PROGRESS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(HOOKS)]),
            "RLP_TEST_PAUSE_AFTER_CHECKPOINT": str(run_dir), "RLP_TEST_PAUSE_MARKER": str(marker)}


def start_paused(argv: list[str], run_dir: Path, marker: Path) -> subprocess.Popen:
    """A real `rl-plasticity` process, returned once it has checkpointed `run_dir` and paused there."""
    proc = subprocess.Popen([sys.executable, "-m", "rl_plasticity.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=hooked_env(run_dir, marker))
    deadline = time.monotonic() + HANG
    while not marker.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the run never paused (exit {proc.returncode}): {err[-2000:]}")
        time.sleep(0.1)
    return proc


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rl-plasticity: error: "), err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


# --------------------------------------------------------------------------- the lock itself


def test_a_lock_names_its_owner_and_goes_when_released(tmp_path):
    owner = hold(tmp_path)
    lock = tmp_path / LOCK_FILE
    note = json.loads(lock.read_text())
    assert note["pid"] == os.getpid() and note["since"] and note["command"]
    # Another open file description conflicts even in this process: a stand-in for a second process.
    found = try_hold(lock)
    assert isinstance(found, Holder) and found.pid == os.getpid()
    assert holder(lock).pid == os.getpid()
    with pytest.raises(UserError) as e:
        hold(tmp_path)
    message = str(e.value)
    assert "\n" not in message and str(tmp_path) in message and f"PID {os.getpid()}" in message
    assert f"since {note['since']}" in message and f"kill {os.getpid()}" in message
    owner.release()
    assert not lock.exists() and holder(lock) is None
    assert not list(tmp_path.iterdir())  # a probe creates nothing


def test_a_lock_file_left_by_a_killed_owner_is_free(tmp_path):
    lock = tmp_path / LOCK_FILE
    lock.write_text(json.dumps({"pid": 999999, "since": "long ago"}) + "\n")  # what kill -9 leaves
    assert holder(lock) is None
    with hold(tmp_path) as owner:
        assert owner.held and json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_a_lock_opened_as_its_owner_removes_it_is_not_taken(tmp_path, monkeypatch):
    """Opened before its owner let go, locked after: that file is gone, so the lock is taken on a new one."""
    import rl_plasticity.run.owner as owner_module

    lock = tmp_path / LOCK_FILE
    first = hold(tmp_path)
    late = os.open(lock, os.O_RDWR)  # what a second process's open() got just before the owner let go
    first.release()
    real_open, opened = os.open, []

    def open_late_first(*args, **kwargs):
        opened.append(args[0])
        return late if len(opened) == 1 else real_open(*args, **kwargs)

    monkeypatch.setattr(owner_module.os, "open", open_late_first)
    second = try_hold(lock)
    monkeypatch.undo()
    assert isinstance(second, Owner) and len(opened) == 2  # the orphaned file was let go, the path's taken
    assert lock.exists() and holder(lock).pid == os.getpid()
    second.release()
    assert not lock.exists()


def test_a_new_run_never_takes_a_directory_someone_owns(tmp_path):
    run = tmp_path / "run"
    with new_run_dir(run, force=False, keep=lambda _: True) as made:
        write_run_info(made, {"problem": "regression"}, [0])
        for force in (False, True):
            with pytest.raises(UserError, match=r"is in use by PID \d+"):
                with new_run_dir(run, force=force, keep=lambda _: True):
                    pass
        assert (run / "config.yaml").is_file()
    assert not (run / LOCK_FILE).exists()


# --------------------------------------------------------------------------- a live train process


def test_a_live_run_has_one_owner_and_a_killed_one_leaves_it_resumable(tmp_path, capsys):
    run, paused = tmp_path / "cc", tmp_path / "paused"
    argv = ["train", BP, "--out", str(run), *sets(LONG)]
    owner = start_paused(argv, run, paused)
    try:
        before = snapshot(run)
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == owner.pid
        # A second terminal: its own process, whose stderr is one line saying who, since when, what to do.
        r = subprocess.run([sys.executable, "-m", "rl_plasticity.cli", "train", "--resume", str(run)],
                           capture_output=True, text=True, env={**os.environ, "RL_PLASTICITY_NO_PROGRESS": "1"})
        assert r.returncode == 2, r.stderr
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("rl-plasticity: error: run directory "), r.stderr
        for words in (str(run), f"PID {owner.pid}", "since ", f"kill {owner.pid}", "try again"):
            assert words in lines[0]
        # --force, a new run into it and evaluate --tensorboard are refused the same way and touch nothing.
        for other in (argv + ["--force"], argv, ["evaluate", str(run), "--tensorboard"]):
            assert cli_main(other) == 2
            assert f"in use by PID {owner.pid}" in one_error_line(capsys)
        assert snapshot(run) == before
        # Reading is fine: compare sees what the run logged up to its checkpoint.
        assert cli_main(["compare", str(run), "--out", str(tmp_path / "fig.png")]) == 0
        assert (tmp_path / "fig.csv").is_file()
    finally:
        owner.kill()  # kill -9: no chance to let go of anything
        owner.communicate()
    assert owner.returncode == -signal.SIGKILL
    assert (run / LOCK_FILE).exists()  # left behind, but no one holds it
    capsys.readouterr()
    assert cli_main(["train", "--resume", str(run)]) == 0
    assert (run / "results.json").is_file() and not (run / LOCK_FILE).exists()


# --------------------------------------------------------------------------- sweeps


def test_a_live_sweep_has_one_owner_and_its_status_reads_beside_it(tmp_path, capsys):
    out, paused = (tmp_path / "sweep").resolve(), tmp_path / "paused"
    run = out / "bp" / "seed_0"
    sweep = start_paused(sweep_argv(out, "--workers", "1", learners=["bp"], seeds="0-0", overrides=LONG),
                         run, paused)
    try:
        child = json.loads((run / LOCK_FILE).read_text())["pid"]
        assert child != sweep.pid  # the run's own train process owns the run
        for argv in (["sweep", "--resume", str(out)],
                     sweep_argv(out, "--workers", "1", learners=["bp"], seeds="0-0", overrides=LONG)):
            assert cli_main(argv) == 2
            line = one_error_line(capsys)
            assert f"sweep directory {out} is in use by PID {sweep.pid}" in line and f"kill {sweep.pid}" in line
        assert cli_main(["train", "--resume", str(run)]) == 2
        assert f"in use by PID {child}" in one_error_line(capsys)
        assert cli_main(["sweep", "--status", str(out)]) == 0
        status = capsys.readouterr().out
        assert f"sweep process: PID {sweep.pid}" in status and "1 running of 1 runs" in status
        assert "bp/seed_0" in status and "running" in status and f"PID {child}" in status
        sweep.send_signal(signal.SIGTERM)  # the run saves a checkpoint and stops
        _, err = sweep.communicate(timeout=HANG)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.communicate()
    assert sweep.returncode == 143 and "stopped  bp/seed_0" in err, err
    assert cli_main(["sweep", "--status", str(out)]) == 0
    status = capsys.readouterr().out
    assert "sweep process: none" in status and "stopped" in status
    assert cli_main(["sweep", "--resume", str(out)]) == 0
    assert (run / "results.json").is_file() and not (out / ".sweep" / "sweep.lock").exists()
    log = (out / ".sweep" / "logs" / "bp" / "seed_0.log").read_text()
    assert log.count("=== ") == 2 and f"train --resume {run}" in log


def test_a_sweep_waits_for_a_run_another_process_owns(tmp_path):
    spec = RunSpec(str(tmp_path), "bp", BP, 0)
    spec.run_dir.mkdir(parents=True)
    with hold(spec.run_dir):
        assert try_lock(spec) is None  # not started while someone works on it
        lines = []

        class Stream:
            write = lines.append

            def flush(self):
                pass

            def isatty(self):
                return False

        StatusBoard([spec], stream=Stream()).run_waiting(spec)
        assert f"waiting  bp/seed_0: in use by PID {os.getpid()}" in "".join(lines)
    lock = try_lock(spec)
    assert lock is not None
    lock.close()


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state, past the command's parentheses


def test_a_ray_worker_that_dies_releases_its_run_and_the_retry_resumes_it_once(tmp_path):
    pytest.importorskip("ray")
    out, paused = (tmp_path / "ray").resolve(), tmp_path / "paused"
    run = out / "bp" / "seed_0"
    argv = sweep_argv(out, "--backend", "ray", "--workers", "1", "--retries", "1", learners=["bp"], seeds="0-0",
                      overrides=LONG)
    sweep = start_paused(argv, run, paused)
    try:
        child = json.loads((run / LOCK_FILE).read_text())["pid"]
        os.kill(_parent_of(child), signal.SIGKILL)  # the Ray worker whose task runs the run
        _, err = sweep.communicate(timeout=HANG)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.communicate()
    assert sweep.returncode == 0, err
    assert (run / "results.json").is_file() and not (run / LOCK_FILE).exists()
    # The orphaned run saved a checkpoint and stopped; only then did the retry resume it, once.
    log = (out / ".sweep" / "logs" / "bp" / "seed_0.log").read_text()
    assert log.count("=== ") == 2 and f"train --resume {run}" in log and "in use" not in log


# --------------------------------------------------------------------------- what readers see


def test_readers_see_only_complete_event_records(tmp_path):
    from rl_plasticity.run.tblog import TBLogger, read_scalars

    with TBLogger(tmp_path) as log:
        for step in range(3):
            log.scalar("charts/x", step, step)
    event = next(tmp_path.glob("*tfevents*"))
    data = event.read_bytes()
    event.write_bytes(data + data[:12])  # a live writer's next record, its header on disk but not its body
    assert read_scalars(tmp_path)["charts/x"] == [(0, 0.0), (1, 1.0), (2, 2.0)]


def test_a_reader_whose_checkpoint_a_live_run_prunes_reads_the_newer_one(tmp_path, monkeypatch):
    import rl_plasticity.evaluate.saved_policy as saved_policy
    from rl_plasticity.run.checkpoint import checkpoint_path, save_checkpoint

    write_run_info(tmp_path, {"problem": "ppo"}, [0])
    for step in (1, 2):
        save_checkpoint(checkpoint_path(tmp_path, step), {"step": step})
    load, calls = saved_policy.load_checkpoint, []

    def live_run_saves_and_prunes_first(path):
        if not calls:  # between the reader's choice and its read, the run saves step 3 and prunes step 2
            save_checkpoint(checkpoint_path(tmp_path, 3), {"step": 3})
            Path(path).unlink()
        calls.append(Path(path).name)
        return load(path)

    monkeypatch.setattr(saved_policy, "load_checkpoint", live_run_saves_and_prunes_first)
    ckpt, run_dir, state = saved_policy._newest(tmp_path)
    assert calls == ["ckpt-2.pt", "ckpt-3.pt"] and ckpt.name == "ckpt-3.pt" and state == {"step": 3}
