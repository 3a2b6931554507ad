"""Run directories: create one safely, record what produced it, read it back for --resume."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import yaml

from rl_plasticity.config import read_yaml
from rl_plasticity.errors import UserError

CONFIG_FILE = "config.yaml"
INFO_FILE = "run.json"
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


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- run directories


def prepare_run_dir(path: str | Path, *, force: bool) -> Path:
    """Create the run directory; an existing non-empty one is refused unless `force` deletes it."""
    path = Path(path)
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        if not force:
            raise UserError(f"run directory {path} exists; use --resume {path} to continue it or --force to overwrite")
        resolved, cwd = path.resolve(), Path.cwd().resolve()
        if resolved == cwd or resolved in cwd.parents:
            raise UserError(f"refusing to delete {path}: it contains the current directory")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def write_run_info(run_dir: str | Path, config: dict, seeds: list[int], extra: dict | None = None) -> None:
    """Write the resolved config (`config.yaml`) and how the run was made (`run.json`).

    `extra` entries are added to run.json's top level. config.yaml is written last, so its presence
    marks a complete run directory.
    """
    run_dir = Path(run_dir)
    info: dict[str, Any] = {
        "seeds": [int(s) for s in seeds],
        "command": list(sys.argv),
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
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
