"""The shared copies in ../shared/data load with the shapes, checksums and statistics its README
documents.  Skipped cleanly where that folder is absent."""
from pathlib import Path

import numpy as np
import pytest

from minivae.data import load_dataset
from minivae.data.datasets import FILES, sha256_file

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED.is_dir():
    pytest.skip(f"no shared data folder at {SHARED}", allow_module_level=True)


def needs(dataset):
    folder = SHARED / dataset
    names = [s.sources[0].name for s in FILES[dataset]]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        pytest.skip(f"{folder} lacks {', '.join(missing)}")
    return folder


@pytest.fixture(scope="module", autouse=True)
def no_env(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.delenv("MINIVAE_DATA_DIR", raising=False)
    mp.setenv("MINIVAE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))   # never downloads
    yield
    mp.undo()


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist", "binarized-mnist"])
def test_checksums_match_the_registry(dataset):
    folder = needs(dataset)
    for spec in FILES[dataset]:
        src = spec.sources[0]
        assert (folder / src.name).stat().st_size == src.size
        assert sha256_file(folder / src.name) == src.sha256


@pytest.fixture(scope="module")
def mnist_all():
    return load_dataset("mnist", data_dir=needs("mnist"), binarize="none", valid_size=0,
                        download=False)


def test_mnist_shapes_and_means(mnist_all):
    ds = mnist_all
    assert ds.train.shape == (60000, 784) and ds.test.shape == (10000, 784) and ds.valid is None
    assert ds.image_shape == (28, 28) and ds.dim == 784 and ds.train.dtype == np.float32
    # README: mean pixel 33.32 (train) and 33.79 (test) on 0-255, quoted to 2 decimals
    assert abs(ds.train.mean(dtype=np.float64) * 255 - 33.32) <= 0.005
    assert abs(ds.test.mean(dtype=np.float64) * 255 - 33.79) <= 0.005
    assert np.bincount(ds.labels["train"]).tolist() == [5923, 6742, 5958, 6131, 5842, 5421,
                                                        5918, 6265, 5851, 5949]
    assert np.bincount(ds.labels["test"]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958,
                                                       1028, 974, 1009]


def test_mnist_default_split_and_dynamic_binarisation(mnist_all):
    ds = load_dataset("mnist", data_dir=SHARED, download=False)     # parent folder works too
    assert ds.binarize == "dynamic"
    assert ds.train.shape == (50000, 784) and ds.valid.shape == (10000, 784)
    # train stays grey: the same rows as the full training set, minus the held-out ones
    perm = np.random.default_rng(0).permutation(60000)
    np.testing.assert_array_equal(ds.train, mnist_all.train[np.sort(perm[10000:])])
    # valid and test: one fixed binarisation (the test one is the PyTorch peer's)
    test = np.random.default_rng(1001).random((10000, 784), np.float32) < mnist_all.test
    np.testing.assert_array_equal(ds.test, test.astype(np.float32))
    valid = np.random.default_rng(1002).random((10000, 784), np.float32) < \
        mnist_all.train[np.sort(perm[:10000])]
    np.testing.assert_array_equal(ds.valid, valid.astype(np.float32))


def test_fashion_mnist():
    ds = load_dataset("fashion-mnist", data_dir=needs("fashion-mnist"), binarize="threshold",
                      valid_size=0, download=False)
    assert ds.train.shape == (60000, 784) and ds.test.shape == (10000, 784)
    assert set(np.unique(ds.train)) == {0.0, 1.0}
    assert np.bincount(ds.labels["train"]).tolist() == [6000] * 10
    assert np.bincount(ds.labels["test"]).tolist() == [1000] * 10


def test_binarized_mnist():
    ds = load_dataset("binarized-mnist", data_dir=needs("binarized-mnist"), download=False)
    assert (ds.train.shape, ds.valid.shape, ds.test.shape) == ((50000, 784), (10000, 784),
                                                               (10000, 784))
    assert ds.binarize == "static" and ds.labels is None
    # README: fraction of ones, quoted to 5 decimals
    for x, frac in ((ds.train, 0.13056), (ds.valid, 0.13113), (ds.test, 0.13251)):
        assert x.dtype == np.float32 and set(np.unique(x)) == {0.0, 1.0}
        assert abs(x.mean(dtype=np.float64) - frac) <= 5e-6
