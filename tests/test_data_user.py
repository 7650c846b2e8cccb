"""Your own data: Dataset.from_arrays, .npy / .npz files and image folders, through Python and
the command line (train, eval, sample), and every bad input as a one-line error that writes
nothing and leaves the user's file as it was."""
import hashlib
import os

import numpy as np
import pytest

from minivae.data import Dataset, load_path
from minivae.data.user import fingerprint, read_npy, read_npz, read_path
from minivae.errors import MinivaeError
from test_cli import run          # (exit status, stdout, stderr) of cli.main

PIL = pytest.importorskip("PIL.Image")
SMALL = ["--hidden", "8", "--latent-dim", "2", "--batch-size", "20", "--epochs", "1",
         "--no-progress"]


def _faces(n, seed=0, shape=(6, 5)):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest(), os.stat(path).st_mtime_ns


# ----------------------------------------------------------------------------- arrays
def test_from_arrays_scales_and_keeps_the_image_shape():
    u8 = _faces(10)
    d = Dataset.from_arrays(u8[:8], test=u8[8:])
    assert d.train.dtype == np.float32 and d.train.shape == (8, 30)
    np.testing.assert_array_equal(d.train, u8[:8].reshape(8, -1).astype(np.float32) / np.float32(255))
    assert d.image_shape == (6, 5) and d.test.shape == (2, 30) and d.valid is None
    rgb = Dataset.from_arrays(np.random.default_rng(0).random((4, 3, 2, 3)))
    assert rgb.image_shape == (3, 2, 3) and rgb.dim == 18
    flags = Dataset.from_arrays(np.array([[True, False]]))
    np.testing.assert_array_equal(flags.train, [[1.0, 0.0]])
    assert Dataset.from_arrays(np.ones((2, 6)), image_shape=(2, 3)).image_shape == (2, 3)
    # shapes a figure cannot draw as they are are recorded as 2-D grey images of the same layout
    assert Dataset.from_arrays(np.ones((2, 16))).image_shape == (4, 4)
    assert Dataset.from_arrays(np.ones((2, 10))).image_shape == (1, 10)
    assert Dataset.from_arrays(np.ones((2, 3, 4, 5))).image_shape == (12, 5)
    with pytest.raises(MinivaeError, match="image_shape must be"):
        Dataset.from_arrays(np.ones((2, 8)), image_shape=(2, 2, 2))


@pytest.mark.parametrize("make, needle", [
    (lambda: np.array([[object()]], dtype=object), "dtype object"),
    (lambda: np.ones((2, 3), np.complex64), "complex64"),
    (lambda: np.array([["a", "b"]]), "dtype <U1"),
    (lambda: np.array([[0.5, np.nan]]), "NaN"),
    (lambda: np.array([[0.5, np.inf]]), "NaN or infinite"),
    (lambda: np.array([[0, 256]]), "0 to 256"),
    (lambda: np.array([[-1, 3]]), "-1 to 3"),
    (lambda: np.zeros((0, 4)), "N >= 1"),
    (lambda: np.zeros((3, 0)), "at least one value"),
    (lambda: np.zeros(5), "(N, ...)"),
    (lambda: [[0.1, 0.2]], "must be an array"),
])
def test_from_arrays_refuses_bad_input(make, needle):
    with pytest.raises(MinivaeError, match=None) as e:
        Dataset.from_arrays(make())
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_from_arrays_refuses_mismatched_splits_and_shape():
    with pytest.raises(MinivaeError, match="must match"):
        Dataset.from_arrays(np.ones((3, 4)), test=np.ones((3, 5)))
    with pytest.raises(MinivaeError, match="image_shape"):
        Dataset.from_arrays(np.ones((3, 4)), image_shape=(3, 3))


# ----------------------------------------------------------------------------- files
def test_npy_and_npz_round_trip(tmp_path):
    u8 = _faces(12)
    np.save(tmp_path / "a.npy", u8)
    np.testing.assert_array_equal(read_npy(tmp_path / "a.npy"), u8)
    f = np.asfortranarray(np.random.default_rng(1).random((4, 3, 2)))
    np.save(tmp_path / "f.npy", f)
    np.testing.assert_array_equal(read_npy(tmp_path / "f.npy"), f)
    np.savez_compressed(tmp_path / "s.npz", train=u8[:10], test=u8[10:])
    arrays = read_npz(tmp_path / "s.npz")
    np.testing.assert_array_equal(arrays["train"], u8[:10])
    np.savez(tmp_path / "one.npz", u8)
    assert set(read_path(tmp_path / "one.npz")) == {"train"}
    data, record = load_path(tmp_path / "s.npz")
    assert data.test.shape == (2, 30) and data.valid is None and record["valid_size"] == 0
    assert record["sha256"] == hashlib.sha256((tmp_path / "s.npz").read_bytes()).hexdigest()


def test_held_out_split_is_seeded(tmp_path):
    np.save(tmp_path / "a.npy", _faces(50))
    d1, r1 = load_path(tmp_path / "a.npy", seed=3)
    d2, _ = load_path(tmp_path / "a.npy", seed=3)
    d3, _ = load_path(tmp_path / "a.npy", seed=4)
    assert r1["valid_size"] == 5 and d1.valid.shape == (5, 30) and d1.train.shape == (45, 30)
    assert np.array_equal(d1.valid, d2.valid) and not np.array_equal(d1.valid, d3.valid)
    d4, r4 = load_path(tmp_path / "a.npy", valid_size=0)
    assert d4.valid is None and d4.train.shape == (50, 30)


def _header_only(path, shape, dtype="<f4", payload=b"\0" * 16):
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": dtype, "fortran_order": False, "shape": shape})
        f.write(payload)


@pytest.mark.parametrize("write, needle", [
    (lambda p: _header_only(p, (10 ** 6, 10 ** 6)), "claims an array of shape (1000000, 1000000)"),
    (lambda p: _header_only(p, (10, 10)), "truncated"),
    (lambda p: p.write_text("hello, I am text"), "neither a NumPy"),
    (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00garbage"), "not a NumPy .npy"),
    (lambda p: np.save(p, np.array([[{"a": 1}]], dtype=object), allow_pickle=True),
     "dtype object"),
    (lambda p: np.save(p, np.ones((2, 2), np.complex128)), "complex128"),
    (lambda p: np.save(p, np.full((2, 2), np.nan)), "NaN"),
    (lambda p: np.save(p, np.zeros((0, 3))), "N >= 1"),
    (lambda p: np.savez(p, a=np.ones((2, 2)), b=np.ones((2, 2))), "arrays ['a', 'b']"),
    (lambda p: p.write_bytes(b"PK\x03\x04 not really a zip"), "not a NumPy .npz"),
])
def test_bad_files_are_one_line_errors(tmp_path, write, needle):
    path = tmp_path / "bad.npy"
    write(path)
    if not path.exists():                         # np.savez appended .npz
        path = tmp_path / "bad.npy.npz"
    before = _digest(path)
    with pytest.raises(MinivaeError) as e:
        load_path(path)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert _digest(path) == before                # never modified


def test_lying_npz_member_is_refused_before_allocating(tmp_path):
    import zipfile
    path = tmp_path / "lie.npz"
    with zipfile.ZipFile(path, "w") as z:
        with z.open("train.npy", "w") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 6, 10 ** 6)})
            f.write(b"\0" * 64)
    with pytest.raises(MinivaeError, match="claims an array"):
        load_path(path)


# ----------------------------------------------------------------------------- image folders
def _write_images(folder, arrays, suffix=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        PIL.fromarray(a).save(folder / f"img{i:03d}{suffix}")


def test_image_folder_grey_rgb_and_sub_folders(tmp_path):
    grey = _faces(6)
    _write_images(tmp_path / "g" / "a", grey[:3])
    _write_images(tmp_path / "g" / "b", grey[3:])
    (tmp_path / "g" / "notes.txt").write_text("ignored")
    d, rec = load_path(tmp_path / "g", valid_size=0)
    assert d.image_shape == (6, 5)
    np.testing.assert_array_equal(d.train * 255, grey.reshape(6, -1).astype(np.float32))
    rgb = _faces(4, shape=(6, 5, 3))
    _write_images(tmp_path / "c", rgb)
    d, _ = load_path(tmp_path / "c", valid_size=0)
    assert d.image_shape == (6, 5, 3)
    np.testing.assert_allclose(d.train * 255, rgb.reshape(4, -1), atol=1e-3)
    _write_images(tmp_path / "j", rgb, suffix=".jpg")          # lossy, but the right shape
    assert load_path(tmp_path / "j", valid_size=0)[0].image_shape == (6, 5, 3)
    # the fingerprint follows every file's bytes
    before = fingerprint(tmp_path / "g")
    _write_images(tmp_path / "g" / "b", grey[3:4] ^ 1)
    assert fingerprint(tmp_path / "g") != before


@pytest.mark.parametrize("case, needle", [
    ("sizes", "img001.png is 4x6 grey but img000.png (the first image) is 5x6 grey"),
    ("kinds", "img001.png is 5x6 rgb"),
    ("corrupt", "img001.png is not a readable image"),
    ("empty", "holds no PNG or JPEG images"),
])
def test_bad_image_folders(tmp_path, case, needle):
    folder = tmp_path / "imgs"
    folder.mkdir()
    if case == "sizes":
        _write_images(folder, [_faces(1)[0], _faces(1, shape=(6, 4))[0]])
    elif case == "kinds":
        _write_images(folder, [_faces(1)[0], _faces(1, shape=(6, 5, 3))[0]])
    elif case == "corrupt":
        _write_images(folder, [_faces(1)[0]])
        (folder / "img001.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(MinivaeError) as e:
        load_path(folder)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


# ----------------------------------------------------------------------------- the command line
@pytest.fixture
def faces(tmp_path):
    np.save(tmp_path / "faces.npy", _faces(60))
    np.save(tmp_path / "test.npy", _faces(20, seed=1))
    return tmp_path


def test_train_eval_sample_on_a_npy(faces, capsys):
    run_dir = faces / "run"
    argv = ["train", "--dataset", str(faces / "faces.npy"), "--test", str(faces / "test.npy"),
            "--likelihood", "gaussian", "--learn-sigma", "per-example", "--gaussian-mean",
            "sigmoid", *SMALL, "--out", str(run_dir)]
    rc, out, err = run(argv, capsys)
    assert rc == 0, err
    import json
    config = json.loads((run_dir / "config.json").read_text())
    assert config["image_shape"] == [6, 5] and config["dataset"] == "faces.npy"
    d = config["dataset_args"]
    assert d["path"] == str(faces / "faces.npy") and d["test"] == str(faces / "test.npy")
    assert d["sha256"] == fingerprint(faces / "faces.npy")
    for png in ("loss.png", "reconstructions.png", "samples.png"):
        assert (run_dir / png).stat().st_size > 0
    rc, out, err = run(["eval", str(run_dir), "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out.splitlines()[-1])["n"] == 20
    rc, out, err = run(["sample", str(run_dir), "--n", "4"], capsys)
    assert rc == 0 and (run_dir / "samples-seed0.png").exists()
    # the data moved: eval finds it where it is told, if its bytes are the same
    os.rename(faces / "faces.npy", faces / "moved.npy")
    rc, _, err = run(["eval", str(run_dir)], capsys)
    assert rc == 2 and "does not exist" in err
    rc, _, err = run(["eval", str(run_dir), "--dataset", str(faces / "moved.npy")], capsys)
    assert rc == 0, err
    # ... and refuses it when they changed
    np.save(faces / "test.npy", _faces(20, seed=2))
    rc, _, err = run(["eval", str(run_dir), "--dataset", str(faces / "moved.npy")], capsys)
    assert rc == 2 and "changed since the run was trained" in err and "Traceback" not in err


def test_train_on_an_rgb_image_folder(tmp_path, capsys):
    _write_images(tmp_path / "imgs", _faces(40, shape=(6, 5, 3)))
    run_dir = tmp_path / "run"
    rc, _, err = run(["train", "--dataset", str(tmp_path / "imgs"), "--likelihood", "gaussian",
                      *SMALL, "--out", str(run_dir)], capsys)
    assert rc == 0, err
    import json
    config = json.loads((run_dir / "config.json").read_text())
    assert config["image_shape"] == [6, 5, 3] and config["dataset_args"]["valid_size"] == 4
    rc, _, err = run(["eval", str(run_dir), "--split", "valid"], capsys)
    assert rc == 0, err


@pytest.mark.parametrize("case", ["nan", "range-bernoulli", "object", "header", "mixed", "text",
                                  "missing", "test-with-builtin"])
def test_bad_data_from_the_cli_writes_nothing(tmp_path, capsys, case):
    data = tmp_path / "data.npy"
    extra = []
    if case == "nan":
        np.save(data, np.full((10, 4), np.nan))
    elif case == "range-bernoulli":
        np.save(data, np.linspace(-1, 2, 40).reshape(10, 4))
    elif case == "object":
        np.save(data, np.array([[None]] * 3, dtype=object), allow_pickle=True)
    elif case == "header":
        _header_only(data, (10 ** 6, 10 ** 6))
    elif case == "mixed":
        data = tmp_path / "imgs"
        _write_images(data, [_faces(1)[0], _faces(1, shape=(7, 5))[0]])
    elif case == "text":
        data.write_text("1 2 3\n")
    elif case == "test-with-builtin":
        np.save(data, _faces(10))
        extra = ["--test", str(data)]
    before = None if case in ("missing", "mixed") else _digest(data)
    run_dir = tmp_path / "run"
    dataset = "shapes" if case == "test-with-builtin" else str(data)
    rc, out, err = run(["train", "--dataset", dataset, *extra, *SMALL, "--out", str(run_dir)],
                       capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("minivae: error: "), err
    assert not run_dir.exists()
    if before is not None:
        assert _digest(data) == before


def test_make_faces_script(tmp_path):
    """scripts/make_faces.py: deterministic uint8 faces, grey or RGB, as .npy or PNG folder,
    readable by --dataset."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "scripts", "make_faces.py")
    for extra, out in (([], tmp_path / "f.npy"), (["--rgb", "--png"], tmp_path / "rgb")):
        subprocess.run([sys.executable, script, "--out", str(out), "--n", "6", *extra],
                       check=True, capture_output=True)
    grey = read_npy(tmp_path / "f.npy")
    assert grey.shape == (6, 28, 20) and grey.dtype == np.uint8 and grey.std() > 10
    subprocess.run([sys.executable, script, "--out", str(tmp_path / "g.npy"), "--n", "6"],
                   check=True, capture_output=True)
    assert np.array_equal(read_npy(tmp_path / "g.npy"), grey)          # seeded
    d, _ = load_path(tmp_path / "rgb", valid_size=0)
    assert d.image_shape == (28, 20, 3) and len(d.train) == 6


def test_conv_refuses_channels_last_rgb(tmp_path, capsys):
    """(N, H, W, 3) images are laid out channels-last; the convolutions read (C, H, W): a clear
    error, not a silent misreading of 28x20x3 as 28 channels of 20x3."""
    _write_images(tmp_path / "imgs", _faces(10, shape=(8, 8, 3)))
    rc, _, err = run(["train", "--dataset", str(tmp_path / "imgs"), "--arch", "conv", *SMALL,
                      "--out", str(tmp_path / "run")], capsys)
    assert rc == 2 and "channels-last" in err and not (tmp_path / "run").exists()


def test_faces_study_script_runs_and_gives_verdicts(tmp_path):
    """scripts/faces_study.py end to end at a toy size: three runs, evaluations, two claims."""
    import json
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, os.path.join(root, "scripts", "faces_study.py"), "--out",
                    str(tmp_path), "--epochs", "1", "--iwae", "2", "--n-train", "60",
                    "--n-test", "12"], check=True, capture_output=True, cwd=root)
    r = json.loads((tmp_path / "results.json").read_text())
    assert set(r["runs"]) == {"per-example", "shared", "fixed"}
    assert all(c["verdict"] in ("verified", "NOT verified") for c in r["claims"])
    assert all(run["n"] == 12 and run["iwae_k"] == 2 for run in r["runs"].values())


def test_eval_of_a_run_made_in_python_on_arrays(tmp_path, capsys):
    from minivae.model import VAE
    from minivae.train import TrainConfig, Trainer
    x = _faces(30)
    data = Dataset.from_arrays(x[:20], test=x[20:])
    Trainer(VAE(data.dim, (8,), 2), data, TrainConfig(epochs=1, batch_size=10), str(tmp_path),
            log=lambda m: None).fit()
    rc, _, err = run(["eval", str(tmp_path)], capsys)
    assert rc == 2 and "given in Python" in err and "--dataset PATH" in err
    np.save(tmp_path / "x.npy", x[20:])
    rc, out, err = run(["eval", str(tmp_path), "--dataset", str(tmp_path / "x.npy"),
                        "--split", "train"], capsys)
    assert rc == 0 and "train (10 images)" in out, err
