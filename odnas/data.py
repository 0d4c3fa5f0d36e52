"""Data sets and the train/validation split.

``digits`` (scikit-learn's bundled 8x8 digits) is the default and needs no network.
``mnist`` reads an IDX folder (the published ``t10k-*`` / ``train-*`` files, gzipped
or not) from ``--data-dir`` or ``$ODNAS_MNIST_DIR``. ``mnist-tv`` and ``fashion-mnist``
use torchvision when it is installed. A user's own data:

- ``npz:PATH``: arrays ``x`` (N, H, W) or (N, C, H, W) and ``y``, optionally ``x_val``
  and ``y_val`` (then no split is made) and ``labels`` (class names, in class order);
- ``folder:PATH`` (or ``folder:PATH@HxW``): one sub-folder per class of images, read
  with Pillow, resized to H x W (default 32x32), grey unless any image has colour;
- ``package.module:make`` or ``file.py:make``: a function returning a
  LightningDataModule (or the class itself); its train and val loaders are read once
  into arrays, its own transforms already applied.

Class labels come from the data, and so does their count. The split is stratified
and fixed by its seed. Inputs are normalised as ``x = (raw / scale - mean) / std``
(a DataModule's inputs are taken as they come: scale 1, mean 0, std 1); the model
card records those numbers.
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
MNIST_DIR_ENV = "ODNAS_MNIST_DIR"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
DEFAULT_IMAGE_SIZE = (32, 32)




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
        return {"name": self.name, "n_train": len(self.y_train), "n_val": len(self.y_val), **self.settings,
                "val_acc_note": "val_acc is measured on the validation split, which also chose this model among "
                                "the search's: expect a little less on data the search never saw"}


def data_reference(name: str) -> str:
    """``name`` as a job started elsewhere resolves it: file paths made absolute."""
    from odnas import plugins

    for prefix in ("npz:", "folder:"):
        if name.startswith(prefix):
            path, at, size = name[len(prefix):].partition("@")
            return f"{prefix}{Path(path).expanduser().resolve()}{at}{size}"
    return plugins.absolute(name) if plugins.is_reference(name) else name


def check_data_dir(name: str, data_dir: str | Path | None) -> None:
    """Refuse ``--data-dir`` beside a data set that reads no folder given that way (it
    would be ignored: most likely ``--data mnist`` was meant)."""
    if data_dir is not None and name not in FOLDER_DATASETS:
        raise DataError(f"--data-dir {data_dir}: only --data {', '.join(FOLDER_DATASETS)} read a folder given "
                        f"this way; --data {name} does not (did you mean --data mnist?)")


#: The data sets ``--data-dir`` is for.
FOLDER_DATASETS = ("mnist", "mnist-tv", "fashion-mnist")


def load_data(name: str = "digits", data_dir: str | Path | None = None, seed: int = 0,
              val_fraction: float = 0.2) -> DataSplit:
    """Load data set ``name`` and split it (stratified, fixed by ``seed``)."""
    from odnas import plugins

    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    labels: tuple[str, ...] | None = None
    given_val = None
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        raw, y, scale, source = d.images.astype(np.float32), d.target.astype(np.int64), 16.0, "sklearn"
    elif name == "mnist":
        folder = find_mnist_dir(data_dir)
        raw, y = read_idx_folder(folder)
        scale, source = 255.0, folder.name
    elif name in ("mnist-tv", "fashion-mnist"):
        raw, y, source = _torchvision(name, data_dir)
        scale = 255.0
    elif name.startswith("npz:"):
        raw, y, given_val, labels, scale = read_npz(Path(name[4:]))
        source = f"npz:{Path(name[4:]).name}"
    elif name.startswith("folder:"):
        path, _, size = name[len("folder:"):].partition("@")
        raw, y, labels = read_image_folder(Path(path), parse_size(size) if size else DEFAULT_IMAGE_SIZE)
        scale, source = 255.0, f"folder:{Path(path).name}"
    elif plugins.is_reference(name):
        raw, y, given_val, labels = read_datamodule(plugins.load_reference(name, "data", DataError), name)
        scale, source = 1.0, _reference_name(name)
    else:
        raise DataError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}, npz:PATH, folder:PATH, "
                        "or a DataModule as package.module:make or path/to/file.py:make")
    raw = raw.astype(np.float32)
    x = raw[:, None, :, :] if raw.ndim == 3 else raw
    if given_val is not None:
        xv_raw, yv = given_val
        xv = xv_raw.astype(np.float32)
        xv = xv[:, None, :, :] if xv.ndim == 3 else xv
        if xv.shape[1:] != x.shape[1:]:
            raise DataError(f"{name}: validation inputs {xv.shape[1:]} do not match training inputs {x.shape[1:]}")
        if len(np.unique(y)) < 2:
            raise DataError(f"{name}: the training split has only one class; a classifier needs at least two")
        unseen = np.setdiff1d(np.unique(yv), np.unique(y))
        if len(unseen):
            shown = ", ".join(str(v) for v in unseen[:5].tolist()) + (", ..." if len(unseen) > 5 else "")
            raise DataError(f"{name}: validation labels {shown} never occur in the training split; a model cannot "
                            "learn a class it never sees")
        x_all, y_all = np.concatenate([x, xv]), np.concatenate([y, yv])
        tr, va = np.arange(len(y)), np.arange(len(y), len(y) + len(yv))
        split = {"validation": "given"}
    else:
        x_all, y_all = x, y
        tr, va = _split(y, val_fraction, seed, name)
        split = {"val_fraction": val_fraction, "stratified": True,
                 # enough to rebuild the split the card's val_acc was measured on
                 "how": "sklearn.model_selection.train_test_split(numpy.arange(n), test_size=val_fraction, "
                        "random_state=seed, stratify=labels), each side sorted"}
    y_all, labels = _class_ids(y_all, labels, name)
    x_all = x_all / scale
    if plugins.is_reference(name):
        mean, std = 0.0, 1.0  # a DataModule's own transforms already normalised its inputs
    else:
        mean, std = float(x_all[tr].mean()), float(x_all[tr].std()) or 1.0
    x_all = (x_all - mean) / std
    return DataSplit(
        name=_reference_name(name) if plugins.is_reference(name) else name.split(":")[0],
        x_train=x_all[tr], y_train=y_all[tr], x_val=x_all[va], y_val=y_all[va], labels=labels,
        normalize={"scale": scale, "mean": round(mean, 6), "std": round(std, 6)},
        settings={"source": source, "seed": seed, **split},
    )


def _reference_name(ref: str) -> str:
    """A DataModule reference as a card shows it: ``file.py:make`` (the file's name, not
    the folder it sat in on this machine) or ``package.module:make``."""
    where, _, func = ref.rpartition(":")
    return f"{Path(where).name}:{func}" if where.endswith(".py") else ref


def _split(y: np.ndarray, val_fraction: float, seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    counts = np.unique(y, return_counts=True)[1]
    if len(counts) < 2:
        raise DataError(f"{name}: only one class ({len(y)} examples); a classifier needs at least two")
    if counts.min() < 2:
        raise DataError(f"{name}: a class has a single example; a stratified split needs at least two per class")
    idx = np.arange(len(y))
    try:
        tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=y)
    except ValueError as e:
        raise DataError(f"{name}: cannot split {len(y)} examples of {len(counts)} classes ({e})") from None
    return np.sort(tr), np.sort(va)


def _class_ids(y: np.ndarray, labels: tuple[str, ...] | None, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels as 0..K-1 and their names: given names index the ids; otherwise the
    sorted distinct values (0..9 for the digit sets) name themselves."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{name}: labels must be one per example, got shape {y.shape}")
    if labels is not None:
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(labels):
            raise DataError(f"{name}: labels must be integers 0..{len(labels) - 1} to index the {len(labels)} "
                            "class names")
        return y.astype(np.int64), tuple(labels)
    values = np.unique(y)
    if len(values) < 2:
        raise DataError(f"{name}: only one class; a classifier needs at least two")
    ids = np.searchsorted(values, y).astype(np.int64)
    return ids, tuple(str(v) for v in values.tolist())


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise DataError(f"image size {text!r}: expected HxW, e.g. folder:images@32x32") from None
    if h < 1 or w < 1:
        raise DataError(f"image size {text!r}: both sides must be positive")
    return h, w


def read_npz(path: Path):
    """``x``, ``y`` and optional ``x_val``/``y_val``/``labels`` from an .npz file."""
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"{path}: no array {' or '.join(missing)} (it has {', '.join(sorted(arrays)) or 'none'})")
    x, y = arrays["x"], arrays["y"]
    _check_xy(x, y, str(path))
    val = None
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise DataError(f"{path}: give both x_val and y_val, or neither")
    if "x_val" in arrays:
        _check_xy(arrays["x_val"], arrays["y_val"], f"{path} (x_val, y_val)")
        val = (arrays["x_val"], arrays["y_val"])
    labels = tuple(str(v) for v in arrays["labels"].tolist()) if "labels" in arrays else None
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    return x, y, val, labels, scale


def _check_xy(x: np.ndarray, y: np.ndarray, where: str) -> None:
    if x.ndim not in (3, 4):
        raise DataError(f"{where}: x must be (N, H, W) or (N, C, H, W), got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{where}: x has {len(x)} examples but y has shape {y.shape}")
    if len(x) == 0:
        raise DataError(f"{where}: no examples")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{where}: x must be numbers, got {x.dtype}")
    if np.issubdtype(y.dtype, np.inexact) and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        odd = "NaN or infinite values" if not np.isfinite(y).all() else f"{float(y[y != np.round(y)][0]):g}"
        raise DataError(f"{where}: y must be whole class numbers; it holds {odd}")
    if np.issubdtype(x.dtype, np.inexact) and not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1)))
        raise DataError(f"{where}: x holds NaN or infinite values in {bad} of {len(x)} examples; "
                        "drop or fill them first")
    # square images with 1 or 3 channels last: (N, 28, 28, 1), (N, 32, 32, 3); a (N, 40, 101, 1)
    # feature map or (N, 6, 128, 1) sensor window is taken as it is, (C, H, W)
    if x.ndim == 4 and x.shape[3] in (1, 3) and x.shape[1] == x.shape[2] > 4:
        raise DataError(f"{where}: x of shape {x.shape} looks channels-last (N, H, W, C); odnas reads "
                        "(N, C, H, W): x.transpose(0, 3, 1, 2)")


def read_image_folder(folder: Path, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images in ``folder/CLASS/*``, resized to ``size`` (H, W): (N, C, H, W) uint8 values."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError("folder data needs Pillow: pip install pillow") from None
    if not folder.is_dir():
        raise DataError(f"image folder {folder} "
                        + ("is a file, not a folder" if folder.is_file() else "does not exist"))
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"image folder {folder} has no class sub-folders (expected {folder}/CLASS/image.png)")
    files = [(c, f) for c in classes for f in sorted((folder / c).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"image folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    empty = [c for c in classes if not any(fc == c for fc, _ in files)]
    if empty:
        raise DataError(f"image folder {folder}: class folder {empty[0]!r} has no images")
    images = []
    for _, f in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except Exception as e:
            raise DataError(f"{f}: not a readable image ({type(e).__name__}: {e})") from None
    mode = "RGB" if any(not _deep(im) and im.mode not in ("L", "1", "F", "LA") for im in images) else "L"
    h, w = size
    full = _full_scale(images)
    arr = np.stack([np.asarray(_eight_bit(im, full).convert(mode).resize((w, h), Image.BILINEAR), dtype=np.uint8)
                    for im in images])
    x = arr[:, None] if mode == "L" else arr.transpose(0, 3, 1, 2)
    y = np.array([classes.index(c) for c, _ in files], dtype=np.int64)
    return x, y, tuple(classes)


def _deep(im) -> bool:
    return im.mode.startswith("I;16") or im.mode == "I"


def _full_scale(images) -> float:
    """The full scale of a folder's integer greyscale images: the smallest of 8, 10, 12,
    14 or 16 bits that holds their largest value (a 12-bit sensor's 0..4095 in a 16-bit
    PNG is 12-bit), else that value."""
    top = max((float(np.asarray(im).max(initial=0)) for im in images if _deep(im)), default=255.0)
    return next((2.0 ** k - 1 for k in (8, 10, 12, 14, 16) if top <= 2 ** k - 1), top)


def _eight_bit(im, full: float):
    """An integer greyscale image (PNG ``I;16``, TIFF ``I``) scaled from ``full`` to 8
    bits; Pillow's own conversion clips it, so a 16-bit image came out nearly white."""
    from PIL import Image

    if _deep(im):
        a = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(a * (255.0 / full)), 0, 255).astype(np.uint8), "L")
    return im


def read_datamodule(obj: Any, ref: str):
    """Arrays from a LightningDataModule's train and val loaders (read once)."""
    import inspect

    def call(what: str, fn, *args):
        """The user's code run; what it raises is one line naming the call."""
        try:
            return fn(*args)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 -- the user's code, any error: told in one line
            why = (str(e).strip().splitlines() or [""])[0][:200]
            raise DataError(f"data {ref!r}: {what} raised {type(e).__name__}: {why}") from None

    # a class (a LightningDataModule's has the loaders as methods) or a factory: made here
    made = inspect.isclass(obj) or (callable(obj) and not hasattr(obj, "train_dataloader"))
    dm = call(f"{getattr(obj, '__name__', ref)}()", obj) if made else obj
    if not all(hasattr(dm, m) for m in ("train_dataloader", "val_dataloader")):
        raise DataError(f"data {ref!r} gave a {type(dm).__name__}, not a LightningDataModule "
                        "(it needs train_dataloader and val_dataloader)")
    name = type(dm).__name__
    for step in ("prepare_data", "setup"):
        fn = getattr(dm, step, None)
        if fn is not None:
            call(f"{name}.{step}()", fn, *(("fit",) if step == "setup" else ()))

    def arrays(loader_fn, which):
        xs, ys = [], []
        loader = call(f"{name}.{which}_dataloader()", loader_fn)
        for batch in call(f"iterating {name}.{which}_dataloader()", lambda: list(loader)):
            if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                raise DataError(f"data {ref!r}: {which} batches must be (inputs, labels)")
            xs.append(np.asarray(batch[0]))
            ys.append(np.asarray(batch[1]))
        if not xs:
            raise DataError(f"data {ref!r}: the {which} loader gave no batches")
        try:
            x, y = np.concatenate(xs), np.concatenate(ys)
        except ValueError as e:  # scalars, or batches of different sample shapes
            raise DataError(f"data {ref!r}: the {which} batches' inputs and labels do not stack into arrays "
                            f"with a batch axis first ({e})") from None
        _check_xy(x, y, f"data {ref!r} ({which})")
        return x, y

    x, y = arrays(dm.train_dataloader, "train")
    val = arrays(dm.val_dataloader, "val")
    labels = getattr(dm, "labels", None) or getattr(dm, "classes", None)
    return x, y, val, tuple(str(v) for v in labels) if labels is not None else None


def find_mnist_dir(data_dir: str | Path | None) -> Path:
    import os

    given = data_dir or os.environ.get(MNIST_DIR_ENV)
    folder = Path(given) if given else Path("data") / "mnist"
    if not folder.is_dir():
        if given:
            raise DataError(f"data folder {folder} " + ("is a file; give the folder that holds it" if folder.is_file()
                                                        else "does not exist"))
        raise DataError(f"no MNIST folder found; pass --data-dir DIR (or set {MNIST_DIR_ENV}) holding the IDX "
                        "files (t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz])")
    return folder.resolve()


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
