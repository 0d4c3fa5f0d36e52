"""Data sets and the train/validation split.

``digits`` (scikit-learn's bundled 8x8 digits) is the default and needs no network.
``mnist`` reads an IDX folder (the published ``t10k-*`` / ``train-*`` files, gzipped
or not). ``mnist-tv`` and ``fashion-mnist`` use torchvision when it is installed.
The split is stratified and fixed by its seed. Inputs are normalised as
``x = (raw / scale - mean) / std``; the model card records those numbers.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from odnas.errors import DataError

DATASETS = ("digits", "mnist", "mnist-tv", "fashion-mnist")
#: Where odnas looks for an MNIST IDX folder when ``--data-dir`` is not given.
MNIST_DIR_CANDIDATES = ("data/mnist", "../shared/data/mnist-t10k")




@dataclass(frozen=True)
class DataSplit:
    """A seeded, stratified split. Arrays are normalised float32 ``(N, C, H, W)``."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    labels: tuple[str, ...]
    normalize: dict[str, float]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "n_train": len(self.y_train), "n_val": len(self.y_val), **self.settings}


def load_data(name: str = "digits", data_dir: str | Path | None = None, seed: int = 0,
              val_fraction: float = 0.2) -> DataSplit:
    """Load data set ``name`` and split it (stratified, fixed by ``seed``)."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        raw, y, scale, source = d.images.astype(np.float32), d.target.astype(np.int64), 16.0, "sklearn"
    elif name == "mnist":
        folder = find_mnist_dir(data_dir)
        raw, y = read_idx_folder(folder)
        scale, source = 255.0, str(folder)
    else:
        raw, y, source = _torchvision(name, data_dir)
        scale = 255.0
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=y)
    tr, va = np.sort(tr), np.sort(va)
    x = raw.astype(np.float32)[:, None, :, :] / scale
    mean, std = float(x[tr].mean()), float(x[tr].std())
    x = (x - mean) / std
    return DataSplit(
        name=name, x_train=x[tr], y_train=y[tr], x_val=x[va], y_val=y[va],
        labels=tuple(str(i) for i in range(10)),
        normalize={"scale": scale, "mean": round(mean, 6), "std": round(std, 6)},
        settings={"source": source, "seed": seed, "val_fraction": val_fraction, "stratified": True},
    )


def find_mnist_dir(data_dir: str | Path | None) -> Path:
    if data_dir is not None:
        folder = Path(data_dir)
        if not folder.is_dir():
            raise DataError(f"data folder {folder} does not exist")
        return folder
    here = Path(__file__).resolve().parent.parent
    for cand in MNIST_DIR_CANDIDATES:
        for base in (Path.cwd(), here):
            if (base / cand).is_dir():
                return (base / cand).resolve()
    raise DataError("no MNIST folder found; pass --data-dir DIR holding the IDX files "
                    "(t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz])")


def read_idx_folder(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the full-MNIST train files when present, else the t10k files."""
    for prefix in ("train", "t10k"):
        imgs, labs = _find(folder, f"{prefix}-images-idx3-ubyte"), _find(folder, f"{prefix}-labels-idx1-ubyte")
        if imgs and labs:
            x, y = read_idx(imgs), read_idx(labs)
            if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                raise DataError(f"{folder}: images {x.shape} and labels {y.shape} do not match")
            return x, y.astype(np.int64)
    raise DataError(f"{folder}: no MNIST IDX files (expected t10k-images-idx3-ubyte[.gz] and "
                    "t10k-labels-idx1-ubyte[.gz], or the train-* pair)")


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzip or plain) of unsigned bytes."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("bad magic number")
        dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(dims)
    except (OSError, ValueError, struct.error, EOFError) as e:
        raise DataError(f"{path}: not a readable IDX file ({e})") from None


def _torchvision(name: str, data_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        import torchvision  # noqa: F401
        from torchvision import datasets
    except Exception as e:  # torchvision may be absent or broken beside this torch
        raise DataError(f"data set {name!r} needs torchvision (pip install 'odnas[vision]'): {e}") from None
    cls = datasets.MNIST if name == "mnist-tv" else datasets.FashionMNIST
    root = str(data_dir or "data")
    try:
        ds = cls(root=root, train=True, download=True)
    except Exception as e:
        raise DataError(f"could not download {name} into {root}: {e}") from None
    return ds.data.numpy(), ds.targets.numpy().astype(np.int64), f"torchvision:{root}"
