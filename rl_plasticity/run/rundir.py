"""Run directories: create one safely, record what produced it, read it back for --resume."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import yaml

from rl_plasticity.config import read_yaml
from rl_plasticity.errors import UserError
from rl_plasticity.run.owner import LOCK_FILE, Owner, busy_message, hold, run_dir_holder

CONFIG_FILE = "config.yaml"
INFO_FILE = "run.json"
# What runs and the commands working on them write at a run directory's top level; `--force` replaces
# only a folder holding config.yaml, run.json or error.log and nothing else than these.
ERROR_FILE = "error.log"
RUN_ENTRIES = {CONFIG_FILE, INFO_FILE, ERROR_FILE, LOCK_FILE, "checkpoints", "tb", "results.json", "eval"}
_RUN_ENTRY = re.compile(r"^seed_\d+$")  # per-seed checkpoint folders of runs that train seeds one by one
_TEMPORARY = re.compile(r"^\..+\.tmp$")  # atomic_open's temporaries (and their leftovers after a kill)
# Distributions whose versions decide the numbers a run produces.
VERSIONED = ("rl-plasticity", "torch", "numpy", "gymnasium", "mujoco", "stable-baselines3", "tensorboard")


# --------------------------------------------------------------------------- atomic files

_UMASK = os.umask(0o022)  # the only portable way to read the umask is to set it...
os.umask(_UMASK)  # ...and put it straight back


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[bytes]]:
    """Open a temporary file beside `path` for binary writing; on success it replaces `path`.

    On any error the temporary file is removed and `path` is left exactly as it was, so a crash
    never leaves a half-written file where a good one stood.
    """
    path = Path(path)
    # A dot prefix keeps the temporary out of globs such as `ckpt-*.pt`.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write `data` (str is UTF-8 encoded) to `path` atomically."""
    with atomic_open(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as strict JSON (NaN and inf become null, so every JSON reader accepts the file)."""
    atomic_write(path, json.dumps(_finite(obj), indent=1, allow_nan=False) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries that writes killed mid-way left anywhere under `folder`; returns them."""
    stale = [p for p in Path(folder).rglob(".*.tmp") if _TEMPORARY.match(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- run directories


def foreign_entries(path: Path) -> list[str]:
    """Top-level entries of folder `path` that no run writes (all of them if it has no config.yaml, run.json
    or error.log)."""
    names = _contents(path)
    if not {CONFIG_FILE, INFO_FILE, ERROR_FILE} & set(names):  # error.log: a sweep's note on a failed start
        return names
    return [n for n in names if n not in RUN_ENTRIES and not _RUN_ENTRY.match(n) and not _TEMPORARY.match(n)]


def _contents(path: Path) -> list[str]:
    """The folder's entries but its lock file (which a process killed as it started may leave alone)."""
    return sorted(p.name for p in path.iterdir() if p.name != LOCK_FILE)


def check_new_run_dir(path: str | Path, *, force: bool) -> None:
    """Raise a UserError unless `path` can take a new run: absent, an empty folder, or (with `force`) a
    run directory this toolkit made. Touches nothing."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise UserError(f"--out {path} is {'a symbolic link' if path.is_symlink() else 'a file'}, "
                        "not a run directory; choose another --out")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UserError(f"--out {path}: {blocking} is a file, not a folder")
    if not path.exists() or not _contents(path):
        return
    foreign = foreign_entries(path)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(f"{path} exists and is not a run directory (it holds {shown}); "
                        f"refusing to {'replace' if force else 'use'} it - choose another --out")
    if not force:
        raise UserError(f"run directory {path} exists; use --resume {path} to continue it or --force to overwrite")
    resolved, cwd = path.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UserError(f"refusing to delete {path}: it contains the current directory")


@contextlib.contextmanager
def new_run_dir(path: str | Path, *, force: bool, keep: Callable[[Path], bool],
                command: str | None = None) -> Iterator[Path]:
    """The directory of a new run, owned by this process (run/owner.py) for the duration of the block.

    It is checked first (check_new_run_dir), and again once owned, so a run that another process owns
    is never replaced. With `force`, the old run's entries are moved aside and deleted when the block
    ends; the folder and its lock stay in place throughout, so no other process can take it meanwhile.
    If the block fails and `keep(path)` is false (the new run saved nothing worth resuming), everything
    it made is removed and the old run put back, so a run that fails at start-up leaves no trace.
    `command` is what the lock file records as the owner.
    """
    path = Path(path)
    who = run_dir_holder(path) if path.is_dir() else None
    if who is not None:  # said first: neither --resume nor --force would help while it is live
        raise UserError(busy_message(path, who))
    check_new_run_dir(path, force=force)
    made = [p for p in [path, *path.parents] if not p.exists()]  # deepest first
    path.mkdir(parents=True, exist_ok=True)
    owner: Owner | None = None
    aside = None
    try:
        owner = hold(path, command=command)
        check_new_run_dir(path, force=force)  # as it is now that no one else can change it
        if _contents(path):
            aside = _move_aside(path)
    except BaseException:
        if owner is not None:
            owner.release()
        _remove_empty(made)
        raise
    try:
        yield path
    except BaseException:
        if not keep(path):
            _clear(path)
            if aside is not None:
                _move_entries(aside, path)
                aside.rmdir()
                aside = None
            owner.release()
            _remove_empty(made)
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        owner.release()


def _move_aside(path: Path) -> Path:
    """Move the entries of the run at `path` (but its lock) into a fresh sibling `.<name>.replaced`."""
    aside = path.with_name(f".{path.name}.replaced")
    if aside.exists():  # a killed earlier replacement left it; it was already given up
        shutil.rmtree(aside)
    aside.mkdir()
    _move_entries(path, aside)
    return aside


def _move_entries(source: Path, target: Path) -> None:
    for name in _contents(source):
        os.rename(source / name, target / name)


def _clear(path: Path) -> None:
    """Delete everything in `path` but its lock file."""
    for name in _contents(path):
        entry = path / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders this process made (deepest first) that are still empty: one another process has
    started to use in the meantime stays."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def default_run_dir(config_path: str | Path, root: str | Path = "runs", now: dt.datetime | None = None) -> Path:
    """`root/<config folder>-<config name>-<YYYYmmdd-HHMMSS>`, with `-2`, `-3`... if that is taken."""
    config_path = Path(config_path)
    parent = config_path.parent.name
    name = f"{parent}-{config_path.stem}" if parent else config_path.stem
    stamp = (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    candidate = Path(root) / f"{name}-{stamp}"
    n = 2
    while candidate.exists():
        candidate = Path(root) / f"{name}-{stamp}-{n}"
        n += 1
    return candidate


# --------------------------------------------------------------------------- run info


def relocatable_command(args: list[str], run_dir: str | Path) -> list[str]:
    """`rl-plasticity ARGS` with every argument that names a path (absolute, or existing relative to the
    current directory; `--set key=path` too) written relative to the run directory, so that a run committed
    to a repository names no folder of the machine that made it and still says where its inputs were."""
    run_dir = Path(run_dir).absolute()

    def relative(text: str) -> str:
        path = Path(text)
        if not text or not (path.is_absolute() or path.exists()):
            return text
        return os.path.relpath(path.absolute(), run_dir)

    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        out.append(f"{key}={relative(value)}" if eq and not arg.startswith("-") else relative(arg))
    return ["rl-plasticity", *out]


def write_run_info(run_dir: str | Path, config: dict, seeds: list[int], extra: dict | None = None,
                   command: list[str] | None = None) -> None:
    """Write the resolved config (`config.yaml`) and how the run was made (`run.json`).

    `command` is the command line's arguments after `rl-plasticity` (default: this process's); it is
    recorded relative to the run directory (relocatable_command). `extra` entries are added to run.json's
    top level. config.yaml is written last, so its presence marks a complete run directory.
    """
    run_dir = Path(run_dir)
    info: dict[str, Any] = {
        "seeds": [int(s) for s in seeds],
        "command": relocatable_command(sys.argv[1:] if command is None else command, run_dir),
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "versions": package_versions(),
        "git": git_state(Path(__file__).resolve().parent),
    }
    info.update(extra or {})
    atomic_write(run_dir / INFO_FILE, json.dumps(info, indent=2, default=str) + "\n")
    atomic_write(run_dir / CONFIG_FILE, yaml.dump(config, Dumper=_ConfigDumper, sort_keys=False))


def read_run_info(run_dir: str | Path) -> tuple[dict, dict]:
    """Return (resolved config, run.json contents) of an existing run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"not a run directory: {run_dir}")
    config = read_yaml(run_dir / CONFIG_FILE)
    info_path = run_dir / INFO_FILE
    if not info_path.is_file():
        return config, {}
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {info_path}: {e}") from None
    if not isinstance(info, dict):
        raise UserError(f"cannot read {info_path}: expected a JSON object")
    return config, info


def package_versions(names: tuple[str, ...] = VERSIONED) -> dict[str, str | None]:
    """Installed version of each distribution, None where it is not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(code_dir: Path) -> dict | None:
    """{"commit", "dirty"} of the git repository holding `code_dir`, or None if there is none.

    `dirty` counts changes to tracked files only: untracked run outputs would otherwise mark
    every run dirty.
    """
    # The package must be tracked there; an installed copy inside some unrelated repo must not count.
    if _git(code_dir, "ls-files", "--error-unmatch", "__init__.py") is None:
        return None
    commit = _git(code_dir, "rev-parse", "HEAD")
    status = _git(code_dir, "status", "--porcelain", "--untracked-files=no")
    if commit is None or status is None:
        return None
    return {"commit": commit.strip(), "dirty": bool(status.strip())}


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None
    return done.stdout if done.returncode == 0 else None


class _ConfigDumper(yaml.SafeDumper):
    """Writes tuples as lists and paths as strings so any resolved config can be dumped."""


_ConfigDumper.add_representer(tuple, _ConfigDumper.represent_list)
_ConfigDumper.add_multi_representer(Path, lambda d, p: d.represent_str(str(p)))
