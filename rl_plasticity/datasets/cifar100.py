"""CIFAR-100 from the standard `cifar-100-python` folder: pickled files `train`, `test` and `meta`.

The pickle format is the data set's own. Unpickling can run code, so the files are read with an
unpickler that only builds plain containers and numpy arrays and refuses every other object.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from rl_plasticity.datasets import reading
from rl_plasticity.errors import UserError

EXPECTED = ("the cifar-100-python folder with the pickled files train, test and meta "
            "(dicts with b'data' uint8 [N, 3072] and b'fine_labels' [N])")
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with reading(path, "CIFAR-100 file"), open(path, "rb") as f:
        obj = _DataUnpickler(io.BufferedReader(f), encoding="bytes").load()
    if not isinstance(obj, dict):
        raise UserError(f"CIFAR-100 file {path} holds a {type(obj).__name__}; expected a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _split(root: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(root / name)
    if "data" not in d or "fine_labels" not in d:
        raise UserError(f"CIFAR-100 file {root / name} has keys {sorted(d)}; expected data and fine_labels")
    data, labels = np.asarray(d["data"]), np.asarray(d["fine_labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise UserError(f"CIFAR-100 file {root / name} holds data {data.dtype} {data.shape} and "
                        f"{len(labels)} labels; expected uint8 [N, 3072] and N labels")
    if len(labels) and (labels.min() < 0 or labels.max() > 99):
        raise UserError(f"CIFAR-100 labels in {root / name} must be in 0..99")
    return data.reshape(-1, 3, 32, 32), labels  # channel-major rows -> [N, 3, 32, 32]


def load_cifar100(root: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (images uint8 [N, 3, 32, 32], labels [N]), 'test': (...)}."""
    root = Path(root)
    missing = [n for n in ("train", "test", "meta") if not (root / n).is_file()]
    if missing:
        where = "does not exist" if not root.is_dir() else f"lacks {', '.join(missing)}"
        raise UserError(f"CIFAR-100 folder {root} {where}: expected {EXPECTED}")
    return {"train": _split(root, "train"), "test": _split(root, "test")}
