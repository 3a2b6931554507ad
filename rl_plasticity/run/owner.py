"""One owner per directory: an exclusive OS lock that every command writing a run or sweep directory holds.

The lock is `fcntl.flock` on a file inside the directory (`.owner.lock` for a run). The kernel lets go
of it when the process ends, however it ends, so a `kill -9` never leaves a stale lock: the file may
stay behind, but a lock file nobody holds is free. While held, the file says who holds it (PID, host,
command, since when) so a second command can say so; the owner removes it when it lets go, and
`.gitignore` keeps one left by a killed process out of committed runs.

Acquiring checks that the locked file is still the one at the path: a process that opened the file
just before its owner removed it would otherwise hold a lock on a file nobody else can see. A lock
found taken is tried a few more times within a fraction of a second, because a read-only probe
(`holder`) takes it for an instant to see whether anyone has it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

from rl_plasticity.errors import UserError

LOCK_FILE = ".owner.lock"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)
_BUSY_RETRIES = (0.02, 0.05, 0.1, 0.2)  # seconds; a probe holds a lock for microseconds, an owner for hours


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its lock file says (fields are None where it says nothing, e.g. while it starts)."""

    pid: int | None = None
    host: str | None = None
    since: str | None = None
    command: str | None = None

    def describe(self) -> str:
        """`PID 1234 (rl-plasticity train ...) since 2026-05-01T12:00:03+02:00`, host added when it is not this one."""
        if self.pid is None:
            return "another process (it records no PID)"
        where = f" on {self.host}" if self.host and self.host != socket.gethostname() else ""
        what = f" ({_shorten(self.command)})" if self.command else ""
        since = f" since {self.since}" if self.since else ""
        return f"PID {self.pid}{where}{what}{since}"


class Owner:
    """This process's hold on a directory; `release()` (or the end of a `with` block) lets go."""

    def __init__(self, lock_path: Path, fd: int):
        self.lock_path, self._fd = lock_path, fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file (while still holding it, so no one can be locking it meanwhile) and let go."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if _same_file(fd, self.lock_path):  # gone already if the directory was removed under the lock
                self.lock_path.unlink()
        except OSError:  # a read-only or vanished directory: the lock still goes with the descriptor
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> Owner:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def try_hold(lock_path: str | Path, command: str | None = None) -> Owner | Holder:
    """Take the lock at `lock_path` (creating the file; its folder must exist): an `Owner`, or the `Holder`
    who has it. `command` is what the lock file records (default: this process's command line)."""
    lock_path = Path(lock_path)
    retries = list(_BUSY_RETRIES)
    for _ in range(1000):  # another turn only when a previous owner removed the file as we opened it
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot lock {lock_path.parent}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            found = _read_holder(fd)
            os.close(fd)
            if not retries:
                return found
            time.sleep(retries.pop(0))
            continue
        except OSError as e:
            os.close(fd)
            why = "this file system does not support locks" if e.errno in _NO_LOCKS else (e.strerror or str(e))
            raise UserError(f"cannot lock {lock_path.parent}: {why}") from None
        if _same_file(fd, lock_path):
            _write_holder(fd, command)
            return Owner(lock_path, fd)
        os.close(fd)
    raise UserError(f"cannot lock {lock_path.parent}: its lock file keeps changing")


def holder(lock_path: str | Path) -> Holder | None:
    """Who holds the lock at `lock_path`, None if no one: a read-only probe that creates nothing."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:  # no lock file: never locked, or its owner let go
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a shared lock is enough to see an exclusive one
    except BlockingIOError:
        return _read_holder(fd)
    except OSError:
        return None
    finally:
        os.close(fd)  # also lets go of the probe's shared lock
    return None


def hold(directory: str | Path, kind: str = "run directory", lock_path: str | Path | None = None,
         command: str | None = None, stop_hint: str = "it saves a checkpoint and exits") -> Owner:
    """Own `directory` (an existing folder) or raise the UserError that says who does and what to do."""
    directory = Path(directory)
    got = try_hold(lock_path or directory / LOCK_FILE, command)
    if isinstance(got, Owner):
        return got
    raise UserError(busy_message(directory, got, kind, stop_hint))


def busy_message(directory: Path, who: Holder, kind: str = "run directory",
                 stop_hint: str = "it saves a checkpoint and exits") -> str:
    stop = f"stop it with `kill {who.pid}` ({stop_hint})" if who.pid is not None else "stop it"
    return f"{kind} {directory} is in use by {who.describe()}; wait for it to finish or {stop}, then try again"


def run_dir_holder(run_dir: str | Path) -> Holder | None:
    """Who owns run directory `run_dir`, None if no one (read-only)."""
    return holder(Path(run_dir) / LOCK_FILE)


@contextlib.contextmanager
def owned_if_free(directory: str | Path):
    """The block runs holding `directory`'s lock if no one else has it; yields whether it does."""
    got = try_hold(Path(directory) / LOCK_FILE)
    if not isinstance(got, Owner):
        yield False
        return
    with got:
        yield True


def _write_holder(fd: int, command: str | None) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "since": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": command if command is not None else shlex.join(["rl-plasticity", *sys.argv[1:]])}
    data = (json.dumps(info) + "\n").encode()
    with contextlib.suppress(OSError):  # the lock is what counts; the note only helps messages
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)


def _read_holder(fd: int) -> Holder:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        pid = info.get("pid")
        return Holder(int(pid) if pid is not None else None, info.get("host"), info.get("since"), info.get("command"))
    except (OSError, ValueError, TypeError, AttributeError):  # empty (an owner that just started) or not ours
        return Holder()


def _same_file(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)


def _shorten(command: str, limit: int = 100) -> str:
    return command if len(command) <= limit else command[: limit - 3] + "..."
