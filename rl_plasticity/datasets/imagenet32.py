"""32x32 down-sampled ImageNet, per class, from one of two local layouts under `root`:

- per-class arrays: `<root>/<class_index>.npy`, each uint8 [N, 32, 32, 3] (the layout the paper's
  Continual ImageNet code prepares; class indices are the file stems);
- the official down-sampled ImageNet batches: `<root>/train_data_batch_<k>.npz` (k = 1..10) and
  optionally `<root>/val_data.npz`, each with `data` uint8 [N, 3072] (channel-major: 1024 red, 1024
  green, 1024 blue values) and `labels` [N] in 1..1000. Images of all batches are pooled per class.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from rl_plasticity.datasets import reading
from rl_plasticity.errors import UserError

EXPECTED = ("per-class files <class_index>.npy (uint8 [N, 32, 32, 3]) or the down-sampled ImageNet batches "
            "train_data_batch_<k>.npz / val_data.npz (keys data [N, 3072] uint8, labels [N] in 1..1000)")


def _load_npy(path: Path) -> np.ndarray:
    with reading(path, "down-sampled ImageNet file"):
        x = np.load(path, allow_pickle=False)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise UserError(f"{path} holds {x.dtype} {x.shape}; expected uint8 [N, 32, 32, 3]")
    return x


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with reading(path, "down-sampled ImageNet batch"), np.load(path, allow_pickle=False) as f:
        if "data" not in f or "labels" not in f:
            raise UserError(f"{path} has arrays {sorted(f.files)}; expected data and labels")
        data, labels = f["data"], np.asarray(f["labels"]).astype(np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise UserError(f"{path} holds data {data.dtype} {data.shape}, labels {labels.shape}; "
                        "expected uint8 [N, 3072] and [N]")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels - 1  # -> [N, 32, 32, 3], 0-based


def load_imagenet32(root: str | Path, per_class: int | None = None) -> dict[int, np.ndarray]:
    """{class index: uint8 [N, 32, 32, 3]}, keeping at most `per_class` images of each class."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"down-sampled ImageNet folder {root} does not exist: expected a folder with {EXPECTED}")
    npy = sorted((int(p.stem), p) for p in root.glob("*.npy") if re.fullmatch(r"\d+", p.stem))
    if npy:
        return {c: _load_npy(p)[:per_class] for c, p in npy}
    batches = sorted(root.glob("train_data_batch_*.npz")) + sorted(root.glob("val_data.npz"))
    if not batches:
        raise UserError(f"no down-sampled ImageNet data in {root}: expected {EXPECTED}")
    pooled: dict[int, list[np.ndarray]] = {}
    counts: dict[int, int] = {}
    for path in batches:
        images, labels = _load_batch(path)
        for c in np.unique(labels).tolist():
            room = None if per_class is None else per_class - counts.get(c, 0)
            if room is not None and room <= 0:
                continue
            chosen = images[labels == c][:room]
            pooled.setdefault(c, []).append(np.ascontiguousarray(chosen))
            counts[c] = counts.get(c, 0) + len(chosen)
    return {c: np.concatenate(parts) for c, parts in sorted(pooled.items())}
