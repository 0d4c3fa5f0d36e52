import gzip

import numpy as np
import pytest

from odnas.data import DataError, load_data
from tests.conftest import MNIST_DIR, run_cli


def test_digits_split_is_deterministic_and_stratified():
    a, b = load_data("digits", seed=3), load_data("digits", seed=3)
    assert np.array_equal(a.x_val, b.x_val) and np.array_equal(a.y_train, b.y_train)
    c = load_data("digits", seed=4)
    assert not np.array_equal(a.y_val, c.y_val)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.y_val) == 360 and len(a.y_train) == 1437
    tr = np.bincount(a.y_train) / len(a.y_train)
    va = np.bincount(a.y_val) / len(a.y_val)
    assert np.abs(tr - va).max() < 0.01  # stratified
    assert abs(a.x_train.mean()) < 1e-4 and abs(a.x_train.std() - 1) < 1e-3
    assert a.normalize["scale"] == 16.0


def test_the_split_as_the_card_describes_it_rebuilds_the_validation_set():
    """A user scoring an exported model had to read odnas's code to find which examples
    its card's val_acc was measured on; the card says how, and this is the recipe run."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_data("digits")
    d = data.describe()
    assert d["how"].startswith("sklearn.model_selection.train_test_split(numpy.arange(n), test_size=val_fraction")
    x, y = load_digits(return_X_y=True)
    va = np.sort(train_test_split(np.arange(len(y)), test_size=d["val_fraction"], random_state=d["seed"],
                                  stratify=y)[1])
    n = data.normalize
    assert (y[va] == data.y_val).all() and d["n_val"] == len(va)
    assert np.allclose((x[va].reshape(-1, 1, 8, 8) / n["scale"] - n["mean"]) / n["std"], data.x_val, atol=1e-5)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="MNIST t10k folder not present")
def test_mnist_idx_folder():
    d = load_data("mnist", MNIST_DIR)
    assert d.input_shape == (1, 28, 28) and len(d.y_train) == 8000 and len(d.y_val) == 2000
    assert d.normalize["scale"] == 255.0


def test_missing_and_malformed_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data("mnist", tmp_path / "nope")
    with pytest.raises(DataError, match="no MNIST IDX files"):
        load_data("mnist", tmp_path)
    (tmp_path / "README.md").write_text("the folder's readme")
    with pytest.raises(DataError, match="README.md is a file; give the folder that holds it"):  # not "does not exist"
        load_data("mnist", tmp_path / "README.md")
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"garbage")
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"garbage")
    with pytest.raises(DataError, match="not a readable IDX file"):
        load_data("mnist", tmp_path)


def test_cli_missing_data_folder_is_one_line(tmp_path):
    proc = run_cli("measure", "--data", "mnist", "--data-dir", str(tmp_path / "nope"), "--random", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "does not exist" in proc.stderr
