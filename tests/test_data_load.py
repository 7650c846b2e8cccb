"""load_dataset on the built-in shapes, the binarisation modes, binarize_batch, bad arguments."""
import numpy as np
import pytest

from minivae.data import DATASETS, Dataset, binarize_batch, load_dataset, make_shapes
from minivae.data.datasets import BINARIZE
from minivae.errors import MinivaeError


@pytest.fixture(scope="module")
def grey():
    return load_dataset("shapes", binarize="none", seed=4)


def test_shapes_dataset(grey):
    assert isinstance(grey, Dataset) and grey.name == "shapes"
    assert grey.train.shape == (20000, 1024) and grey.test.shape == (2000, 1024)
    assert grey.valid is None and grey.image_shape == (32, 32) and grey.dim == 1024
    assert grey.train.dtype == grey.test.dtype == np.float32
    images, factors = make_shapes(20000, seed=4)
    np.testing.assert_array_equal(grey.train, images.reshape(20000, 1024))
    assert all(np.array_equal(grey.labels["train"][k], factors[k]) for k in factors)
    test, test_factors = make_shapes(2000, seed=(4, 1))
    np.testing.assert_array_equal(grey.test, test.reshape(2000, 1024))
    assert all(v.shape == (2000,) for v in grey.labels["test"].values())
    assert "20000, 1024" in repr(grey) and "array" not in repr(grey)


def test_shapes_validation_images_are_generated_separately():
    ds = load_dataset("shapes", binarize="none", valid_size=300, seed=4)
    np.testing.assert_array_equal(ds.valid, make_shapes(300, seed=(4, 2))[0].reshape(300, 1024))
    assert ds.labels["valid"]["x"].shape == (300,)


def test_dynamic_binarises_evaluation_splits_once_with_fixed_generators(grey):
    ds = load_dataset("shapes", binarize="dynamic", valid_size=100, seed=4)
    np.testing.assert_array_equal(ds.train, grey.train)                 # train stays grey
    expected = np.random.default_rng(1001).random(grey.test.shape, np.float32) < grey.test
    np.testing.assert_array_equal(ds.test, expected.astype(np.float32))
    valid_grey = make_shapes(100, seed=(4, 2))[0].reshape(100, 1024)
    expected = np.random.default_rng(1002).random(valid_grey.shape, np.float32) < valid_grey
    np.testing.assert_array_equal(ds.valid, expected.astype(np.float32))
    # the evaluation bits do not depend on the seed of the split
    other = load_dataset("shapes", binarize="dynamic", seed=5)
    assert not np.array_equal(other.train, ds.train)


def test_static_is_one_sample_per_seed(grey):
    a = load_dataset("shapes", binarize="static", seed=4)
    b = load_dataset("shapes", binarize="static", seed=4)
    assert a.binarize == "static"
    for x, y, g in ((a.train, b.train, grey.train), (a.test, b.test, grey.test)):
        np.testing.assert_array_equal(x, y)
        assert x.dtype == np.float32 and set(np.unique(x)) == {0.0, 1.0}
        assert np.all(x[g == 0] == 0) and np.all(x[g == 1] == 1)
        # only the anti-aliased edge pixels are random: their mean matches the grey levels
        edge = (g > 0) & (g < 1)
        n = edge.sum()
        p = g[edge].astype(np.float64)
        assert abs(x[edge].sum() - p.sum()) < 5 * np.sqrt((p * (1 - p)).sum()), n
    # the test split's sample is not the dynamic protocol's fixed one
    fixed = np.random.default_rng(1001).random(grey.test.shape, np.float32) < grey.test
    assert not np.array_equal(a.test, fixed)


def test_threshold(grey):
    ds = load_dataset("shapes", binarize="threshold", seed=4)
    np.testing.assert_array_equal(ds.train, (grey.train > 0.5).astype(np.float32))


# ------------------------------------------------------------------------- binarize_batch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binarize_batch_matches_its_definition(dtype):
    x = np.random.default_rng(0).random((17, 9)).astype(dtype)
    expected = (np.random.default_rng(42).random(x.shape, dtype=dtype) < x).astype(dtype)
    got = binarize_batch(x, np.random.default_rng(42))
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, expected)
    out = np.full_like(x, 7)
    assert binarize_batch(x, np.random.default_rng(42), out=out) is out
    np.testing.assert_array_equal(out, expected)
    big = np.zeros((17, 20), dtype)                 # a non-contiguous view as out
    view = big[:, ::2][:, :9]
    binarize_batch(x, np.random.default_rng(42), out=view)
    np.testing.assert_array_equal(view, expected)


def test_binarize_batch_is_bernoulli():
    rng = np.random.default_rng(1)
    x = np.full((200_000,), 0.3, np.float32)
    m = binarize_batch(x, rng).mean(dtype=np.float64)
    assert abs(m - 0.3) < 5 * np.sqrt(0.3 * 0.7 / x.size)
    edges = np.array([0.0, 1.0], np.float32)
    for _ in range(100):
        np.testing.assert_array_equal(binarize_batch(edges, rng), edges)


def test_binarize_batch_bad_arguments():
    x = np.zeros((3, 4), np.float32)
    rng = np.random.default_rng(0)
    for bad in (dict(x=x.astype(np.int64)), dict(x=[[0.5]]), dict(x=x, out=x),
                dict(x=x, out=np.zeros((4, 3), np.float32)), dict(x=x, out=np.zeros((3, 4)))):
        with pytest.raises(MinivaeError):
            binarize_batch(rng=rng, **bad)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, words", [
    (dict(name="cifar10"), ["cifar10", *DATASETS]),
    (dict(name="shapes", binarize="otsu"), ["otsu", *BINARIZE]),
    (dict(name="shapes", binarize=None), ["None", *BINARIZE]),
    (dict(name="shapes", valid_size=-1), ["valid_size", "-1"]),
    (dict(name="shapes", valid_size=2.5), ["valid_size", "2.5"]),
    (dict(name="shapes", valid_size=True), ["valid_size", "True"]),
    (dict(name="shapes", seed=-2), ["seed", "-2"]),
    (dict(name="shapes", seed="0"), ["seed", "'0'"]),
    (dict(name="mnist", data_dir="/nonexistent/folder"), ["data_dir", "/nonexistent/folder"]),
])
def test_bad_arguments(kwargs, words):
    with pytest.raises(MinivaeError) as e:
        load_dataset(**kwargs)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg
