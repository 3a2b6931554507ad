"""Checkpoints: atomic, NaN-free saves; loads that never unpickle arbitrary objects; RNG state capture.

A checkpoint is a dict of plain data that `torch.load(..., weights_only=True)` accepts: tensors,
numbers, str/bytes, None, lists/tuples/sets, dicts, torch.Size/dtype/device. numpy arrays and
numpy scalars are not accepted there; `generator_state` and `rng_state` convert what they hold.
"""

from __future__ import annotations

import collections
import io
import random
import re
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rl_plasticity.errors import UserError
from rl_plasticity.run.rundir import atomic_open

CHECKPOINT_DIR = "checkpoints"
_CKPT_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


# --------------------------------------------------------------------------- save / load


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write `state` to `path` atomically: the previous file survives any failure mid-write.

    Raises ValueError if a floating tensor anywhere in `state` holds NaN or inf, and TypeError
    for a value that a weights-only load would refuse (checked before anything is written).
    """
    if not isinstance(state, dict):
        raise TypeError(f"a checkpoint state must be a dict, got {type(state).__name__}")
    check_state(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        torch.save(state, f)


class NonFiniteState(ValueError):
    """A state to checkpoint holds NaN or inf: the training it comes from has diverged."""


class CheckpointWriteFailed(UserError):
    """The disk refused a checkpoint; nothing of it was left behind and the older checkpoints are intact."""

    def __init__(self, path: Path, error: OSError, kept: Path | None):
        self.path, self.error, self.kept = path, error, kept
        left = f"the newest checkpoint before it, {kept.name}, is intact" if kept else "there is no earlier checkpoint"
        super().__init__(f"could not write checkpoint {path}: {error.strerror or error}; nothing of it was kept "
                         f"and {left}")


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint onto the CPU without unpickling arbitrary objects.

    The archive's checksums are verified first, so a truncated or bit-flipped file is refused rather
    than loaded with a silently changed value. The file is read once, and checked and loaded from that
    copy, so a live run that replaces or prunes it meanwhile cannot mix two files.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # pruned by a live run since the check above
        raise UserError(f"checkpoint not found: {path}") from None
    except OSError as e:
        raise UserError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    damage = _archive_damage(data)
    if damage:
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint: {damage}")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols before it refuses them
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:  # any failure to read it means the file cannot be used
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint: {_load_error_reason(e)}") from None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint: it holds a {type(state).__name__}, not a dict")
    return state


_PLAIN = (str, bytes, bytearray, int, float, complex, bool, type(None))


def check_state(obj: Any, where: str = "state") -> None:
    """Raise if `obj` holds a non-finite floating tensor (ValueError) or a type weights-only loading refuses (TypeError)."""
    if isinstance(obj, torch.Tensor):
        if (obj.is_floating_point() or obj.is_complex()) and obj.device.type != "meta" \
                and not bool(torch.isfinite(obj).all()):
            raise NonFiniteState(f"refusing to save a checkpoint: {where} holds NaN or inf values")
    elif isinstance(obj, (torch.Size, torch.dtype, torch.device)) or type(obj) in _PLAIN:
        pass
    elif type(obj) in (dict, collections.OrderedDict):
        for key, value in obj.items():
            check_state(key, f"a key of {where}")
            check_state(value, f"{where}[{key!r}]")
    elif type(obj) in (list, tuple, set):
        for i, value in enumerate(obj):
            check_state(value, f"{where}[{i}]")
    else:
        hint = " (use a tensor, or .item() / .tolist())" if isinstance(obj, (np.ndarray, np.generic)) else ""
        raise TypeError(f"cannot checkpoint {where}: a {type(obj).__module__}.{type(obj).__qualname__} "
                        f"would not load with weights_only=True{hint}")


def _archive_damage(data: bytes) -> str | None:
    """Why `data` is not an intact torch checkpoint archive (torch.save writes a zip with CRC-32s), or None."""
    if not data:
        return "the file is empty"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        return f"not a complete torch archive, truncated or not written by torch.save ({e})"
    return f"its data is damaged (checksum mismatch in {bad})" if bad else None


def _load_error_reason(e: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    m = re.search(r"WeightsUnpickler error: (.*)", text)
    if m:  # the useful line of torch's long weights-only message
        return "it holds objects that are not plain data: " + m.group(1).split(" Please use")[0].rstrip(".")
    m = re.search(r"GLOBAL (\S+)", text)
    if m:
        return f"it holds objects that are not plain data ({m.group(1)}); checkpoints are never loaded by running code"
    first = text.strip().splitlines()[0] if text.strip() else ""
    first = first.split(". ")[0].rstrip(".")
    if isinstance(e, EOFError):
        first = first or "file is empty or truncated"
    return f"{type(e).__name__}: {first}"[:300] if first else type(e).__name__


# --------------------------------------------------------------------------- run_dir/checkpoints/


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """`run_dir/checkpoints/ckpt-<step>.pt`."""
    return Path(run_dir) / CHECKPOINT_DIR / f"ckpt-{int(step)}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in `run_dir/checkpoints/`, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT_NAME.match(p.name)) and p.is_file()]
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step in `run_dir/checkpoints/`, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


# A checkpoint that loads but does not fit the state (another problem's, another config's shapes).
_MISFIT = (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError)


def restore_latest(run_dir: str | Path, restore: Callable[[dict], None]) -> int | None:
    """Load the newest usable checkpoint of `run_dir/checkpoints/` into a run with `restore(state)`.

    A newer checkpoint that is damaged or does not fit is passed over for the one before it, with a
    note on stderr naming the step the run restarts from. Returns that step, None when there is no
    checkpoint; a UserError when none is usable. `restore` must set every part of the run's state,
    so a failed attempt leaves nothing behind once an older checkpoint has been restored.
    """
    problems = []
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path)
        except UserError as e:  # damaged or unreadable: the message names the file
            problems.append(str(e))
            continue
        try:
            restore(state)
        except UserError as e:  # the run refuses it (another configuration)
            problems.append(f"checkpoint {path} does not fit this run: {e}")
            continue
        except _MISFIT as e:
            problems.append(f"checkpoint {path} does not fit this run ({type(e).__name__}: {e})")
            continue
        if problems:
            print(f"rl-plasticity: note: {'; '.join(problems)}; resuming from step {step:,} ({path.name})",
                  file=sys.stderr)
        return step
    if problems:
        more = f" (and {len(problems) - 1} older)" if len(problems) > 1 else ""
        raise UserError(f"no usable checkpoint to resume from: {problems[0]}{more}")
    return None


def save_checkpoint_in(run_dir: str | Path, step: int, state: dict, keep: int = 2) -> Path:
    """Save `state` as the checkpoint of `step`, then delete all but the newest `keep` checkpoints.

    A state holding NaN or inf means training diverged: that is a UserError, and the last good
    checkpoint stays the newest one.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    path = checkpoint_path(run_dir, step)
    try:
        save_checkpoint(path, state)
    except NonFiniteState as e:
        where = str(e).split(": ", 1)[-1]
        raise UserError(f"training diverged before step {step:,}: {where}; no checkpoint was written for it "
                        "- try a smaller optimizer.lr") from None
    except OSError as e:  # disk full, quota, I/O error: atomic_open left the previous checkpoints as they were
        raise CheckpointWriteFailed(path, e, latest_checkpoint(run_dir)) from None
    # Pruned only after the new one is safely in place.
    for _, old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------- random number generators


def rng_state() -> dict:
    """The state of torch's, numpy's global and Python's `random` generators, weights-only safe."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_to_plain(np.random.get_state(legacy=False)),
        "python": random.getstate(),  # (int, tuple of ints, float | None): already plain
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore generators from `rng_state()` output (also after a checkpoint round trip)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_from_plain(state["numpy"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


def generator_state(gen: np.random.Generator) -> dict:
    """State of a numpy Generator as plain data (any bit generator; PCG64's 128-bit ints kept as ints)."""
    return _numpy_to_plain(gen.bit_generator.state)


def set_generator_state(gen: np.random.Generator, state: dict) -> None:
    """Restore a numpy Generator from `generator_state` output."""
    gen.bit_generator.state = _numpy_from_plain(state)


_ARRAY_TAG = "__ndarray__"


def _numpy_to_plain(obj: Any) -> Any:
    # Bit-generator states hold arrays (MT19937's key, Philox's counter) that weights-only loading refuses.
    if isinstance(obj, np.ndarray):
        return {_ARRAY_TAG: obj.ravel().tolist(), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _numpy_to_plain(v) for k, v in obj.items()}
    return obj


def _numpy_from_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        if _ARRAY_TAG in obj:
            return np.array(obj[_ARRAY_TAG], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
        return {k: _numpy_from_plain(v) for k, v in obj.items()}
    return obj

