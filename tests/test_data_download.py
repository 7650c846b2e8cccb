"""Where dataset files come from: user folder, verified cache, download from a local HTTP server.

The server runs on 127.0.0.1 in a thread and serves files generated here, well or badly; the
cache is MINIVAE_CACHE_DIR pointed into tmp_path.  Nothing here touches the real network.
"""
import gzip
import hashlib
import http.server
import os
import socket
import threading

import numpy as np
import pytest

from minivae.data import datasets, load_dataset
from minivae.data.datasets import FileSpec, Source, fetch
from minivae.errors import MinivaeError


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        entry = self.server.files.get(self.path)
        if entry is None:
            self.send_error(404, "not here")
            return
        data, mode = entry
        self.send_response(200)
        if mode != "nolength":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if mode in ("drop", "nolength"):        # close the connection after half the bytes
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests = {}, []
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MINIVAE_DATA_DIR", raising=False)
    return tmp_path / "cache"


def sha(data):
    return hashlib.sha256(data).hexdigest()


def serve(server, name, data, mode="ok", expected=None):
    """Serve data at /name; returns a FileSpec expecting `expected` (default: data itself)."""
    server.files[f"/{name}"] = (data, mode)
    expected = data if expected is None else expected
    return FileSpec(name, (Source(name, len(expected), sha(expected)),), f"{server.url}/{name}")


def listing(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def error_of(fn, *args, **kwargs):
    with pytest.raises(MinivaeError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


# ------------------------------------------------------------------------------ download
def test_good_download_is_verified_cached_and_stamped(server, cache):
    spec = serve(server, "good.bin", PAYLOAD)
    paths = fetch("toy", [spec], progress=False)
    assert paths == {"good.bin": cache / "toy" / "good.bin"}
    assert paths["good.bin"].read_bytes() == PAYLOAD
    assert listing(cache / "toy") == ["good.bin", "good.bin.sha256-ok"]   # no temporary left
    # a second call is served from the cache, without a request and without hashing
    n = len(server.requests)
    calls = []
    real = datasets.sha256_file
    datasets.sha256_file = lambda p: calls.append(p) or real(p)
    try:
        assert fetch("toy", [spec], progress=False) == paths
        assert calls == [] and len(server.requests) == n
        os.utime(paths["good.bin"], ns=(1, 1))  # a changed file (mtime) is hashed again
        assert fetch("toy", [spec], progress=False) == paths
        assert calls == [paths["good.bin"]]
    finally:
        datasets.sha256_file = real


def test_progress_bar_goes_to_stderr(server, cache, capsys):
    fetch("toy", [serve(server, "good.bin", PAYLOAD)], progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "good.bin" in err


def test_checksum_mismatch_removes_the_file(server, cache):
    bad = bytearray(PAYLOAD)
    bad[1234] ^= 1
    spec = serve(server, "corrupt.bin", bytes(bad), expected=PAYLOAD)
    msg = error_of(fetch, "toy", [spec], progress=False)
    assert "checksum mismatch" in msg and spec.url in msg
    assert sha(PAYLOAD) in msg and sha(bytes(bad)) in msg and "removed" in msg
    assert listing(cache / "toy") == []


@pytest.mark.parametrize("mode", ["drop", "nolength"])
def test_dropped_connection_leaves_nothing(server, cache, mode):
    spec = serve(server, "half.bin", PAYLOAD, mode=mode)
    msg = error_of(fetch, "toy", [spec], progress=False)
    assert spec.url in msg and str(len(PAYLOAD) // 2) in msg
    assert ("broke off" if mode == "drop" else "checksum mismatch") in msg
    assert listing(cache / "toy") == []


def test_server_sending_too_much_is_cut_off(server, cache):
    spec = serve(server, "big.bin", PAYLOAD + PAYLOAD, expected=PAYLOAD)
    msg = error_of(fetch, "toy", [spec], progress=False)
    assert "more than" in msg and listing(cache / "toy") == []


def test_http_error_names_the_url(server, cache):
    spec = FileSpec("gone.bin", (Source("gone.bin", 10, "0" * 64),), f"{server.url}/gone.bin")
    msg = error_of(fetch, "toy", [spec], progress=False)
    assert "404" in msg and spec.url in msg and listing(cache / "toy") == []


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_says_what_to_fetch_and_where(cache):
    port = closed_port()
    specs = [FileSpec(n, (Source(n, 10, "0" * 64),), f"http://127.0.0.1:{port}/{n}")
             for n in ("a.gz", "b.gz")]
    msg = error_of(fetch, "toy", specs, progress=False)
    assert "no network" in msg
    for s in specs:
        assert s.url in msg and s.key in msg
    assert str(cache / "toy") in msg and "data_dir" in msg
    assert listing(cache / "toy") == []


def test_download_false_says_what_to_fetch(server, cache):
    spec = serve(server, "good.bin", PAYLOAD)
    msg = error_of(fetch, "toy", [spec], download=False, progress=False)
    assert "download=False" in msg and spec.url in msg and str(cache / "toy") in msg
    assert server.requests == []


def test_only_missing_files_are_downloaded(server, cache):
    a, b = serve(server, "a.bin", PAYLOAD[:1000]), serve(server, "b.bin", PAYLOAD[1000:3000])
    fetch("toy", [a], progress=False)
    server.requests.clear()
    paths = fetch("toy", [a, b], progress=False)
    assert server.requests == ["/b.bin"] and set(paths) == {"a.bin", "b.bin"}


def test_corrupted_cache_file_is_reported(server, cache):
    spec = serve(server, "good.bin", PAYLOAD)
    path = fetch("toy", [spec], progress=False)["good.bin"]
    data = bytearray(PAYLOAD)
    data[7] ^= 0xFF
    path.write_bytes(bytes(data))               # same size, new content, new mtime
    msg = error_of(fetch, "toy", [spec], progress=False)
    assert str(path) in msg and "delete it" in msg and sha(bytes(data)) in msg


def test_unwritable_cache_folder(server, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("MINIVAE_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.delenv("MINIVAE_DATA_DIR", raising=False)
    msg = error_of(fetch, "toy", [serve(server, "good.bin", PAYLOAD)], progress=False)
    assert "cache folder" in msg and "MINIVAE_CACHE_DIR" in msg


def test_disk_full_during_write(server, cache, monkeypatch):
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(datasets.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    msg = error_of(fetch, "toy", [serve(server, "good.bin", PAYLOAD)], progress=False)
    assert "No space left" in msg and "removed" in msg
    assert listing(cache / "toy") == []


def test_interrupt_during_download_leaves_nothing(server, cache, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt
    monkeypatch.setattr(datasets.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch("toy", [serve(server, "good.bin", PAYLOAD)], progress=False)
    assert listing(cache / "toy") == []


# ----------------------------------------------------------------------------- user folder
def test_user_folder_is_used_verified_and_never_downloads(server, cache, tmp_path):
    spec = serve(server, "good.bin", PAYLOAD)
    folder = tmp_path / "mine"
    folder.mkdir()
    msg = error_of(fetch, "toy", [spec], data_dir=folder, progress=False)
    assert "good.bin" in msg and str(folder) in msg and spec.url in msg
    (folder / "good.bin").write_bytes(PAYLOAD[:-1] + b"?")
    msg = error_of(fetch, "toy", [spec], data_dir=folder, progress=False)
    assert str(folder / "good.bin") in msg and sha(PAYLOAD) in msg
    (folder / "good.bin").write_bytes(PAYLOAD)
    paths = fetch("toy", [spec], data_dir=folder, progress=False)
    assert paths == {"good.bin": folder / "good.bin"}
    assert server.requests == [] and listing(cache) == []
    assert listing(folder) == ["good.bin"]      # no stamp written into the user's folder


def test_wrong_size_in_user_folder_is_refused_without_hashing(server, cache, tmp_path):
    spec = serve(server, "good.bin", PAYLOAD)
    (tmp_path / "good.bin").write_bytes(PAYLOAD[:10])
    msg = error_of(fetch, "toy", [spec], data_dir=tmp_path, progress=False)
    assert f"10 bytes, expected {len(PAYLOAD)}" in msg


def test_env_var_folder_and_dataset_subfolder(server, cache, tmp_path, monkeypatch):
    spec = serve(server, "good.bin", PAYLOAD)
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "good.bin").write_bytes(PAYLOAD)
    monkeypatch.setenv("MINIVAE_DATA_DIR", str(tmp_path))
    assert fetch("toy", [spec], progress=False) == {"good.bin": tmp_path / "toy" / "good.bin"}
    assert server.requests == []
    monkeypatch.setenv("MINIVAE_DATA_DIR", str(tmp_path / "nowhere"))
    assert "MINIVAE_DATA_DIR" in error_of(fetch, "toy", [spec], progress=False)


def test_any_accepted_form_in_a_folder(server, cache, tmp_path):
    packed = gzip.compress(PAYLOAD, mtime=0)
    spec = FileSpec("x", (Source("x.gz", len(packed), sha(packed)),
                          Source("x", len(PAYLOAD), sha(PAYLOAD))), f"{server.url}/x", download=1)
    (tmp_path / "x").write_bytes(PAYLOAD)
    assert fetch("toy", [spec], data_dir=tmp_path, progress=False) == {"x": tmp_path / "x"}
    (tmp_path / "x.gz").write_bytes(packed)     # preferred when both are there
    assert fetch("toy", [spec], data_dir=tmp_path, progress=False) == {"x": tmp_path / "x.gz"}
    # the download fetches the form the URL serves, under that name
    server.files["/x"] = (PAYLOAD, "ok")
    assert fetch("toy", [spec], progress=False) == {"x": cache / "toy" / "x"}


# ---------------------------------------------------------------- load_dataset end to end
def idx(array):
    array = np.asarray(array, np.uint8)
    magic = 0x803 if array.ndim == 3 else 0x801
    return gzip.compress(magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big")
                                                             for d in array.shape)
                         + array.tobytes(), mtime=0)


@pytest.fixture
def tiny_mnist(server, monkeypatch):
    """A 40/12-image 'mnist' served locally, registered in place of the real files."""
    rng = np.random.default_rng(5)
    arrays = {"train-images": rng.integers(0, 256, (40, 28, 28)),
              "train-labels": np.arange(40) % 10,
              "test-images": rng.integers(0, 256, (12, 28, 28)),
              "test-labels": np.arange(12) % 10}
    specs = []
    for key, a in arrays.items():
        spec = serve(server, f"{key}.gz", idx(a))
        specs.append(FileSpec(key, spec.sources, spec.url))
    monkeypatch.setitem(datasets.FILES, "mnist", tuple(specs))
    return {k: np.asarray(a, np.uint8) for k, a in arrays.items()}


def test_load_dataset_downloads_splits_and_binarises(tiny_mnist, cache):
    ds = load_dataset("mnist", valid_size=10, seed=3, progress=False)
    assert (ds.train.shape, ds.valid.shape, ds.test.shape) == ((30, 784), (10, 784), (12, 784))
    assert all(a.dtype == np.float32 for a in (ds.train, ds.valid, ds.test))
    grey = tiny_mnist["train-images"].reshape(40, 784).astype(np.float32) / np.float32(255)
    # the split is a partition of the training images, each part in file order
    perm = np.random.default_rng(3).permutation(40)
    np.testing.assert_array_equal(ds.train, grey[np.sort(perm[10:])])
    np.testing.assert_array_equal(ds.labels["train"],
                                  tiny_mnist["train-labels"][np.sort(perm[10:])])
    test_grey = tiny_mnist["test-images"].reshape(12, 784).astype(np.float32) / np.float32(255)
    expected = np.random.default_rng(1001).random(test_grey.shape, np.float32) < test_grey
    np.testing.assert_array_equal(ds.test, expected.astype(np.float32))
    assert set(np.unique(ds.valid)) <= {0.0, 1.0}
    assert listing(cache / "mnist") == sorted(
        [f"{k}.gz" for k in tiny_mnist] + [f"{k}.gz.sha256-ok" for k in tiny_mnist])
    # from the cache the second time, identical
    again = load_dataset("mnist", valid_size=10, seed=3, progress=False, download=False)
    np.testing.assert_array_equal(again.valid, ds.valid)


def test_valid_size_too_large(tiny_mnist, cache):
    msg = error_of(load_dataset, "mnist", valid_size=40, progress=False)
    assert "valid_size" in msg and "40" in msg


def test_load_dataset_without_network(cache, monkeypatch):
    port = closed_port()
    specs = tuple(FileSpec(s.key, s.sources, f"http://127.0.0.1:{port}/{s.fetched.name}")
                  for s in datasets.FILES["binarized-mnist"])
    monkeypatch.setitem(datasets.FILES, "binarized-mnist", specs)
    msg = error_of(load_dataset, "binarized-mnist", progress=False)
    assert "no network" in msg and str(cache / "binarized-mnist") in msg
    for name in ("binarized_mnist_train.amat", "binarized_mnist_valid.amat",
                 "binarized_mnist_test.amat"):
        assert f"/{name}" in msg


def test_real_registry_matches_the_documented_files():
    files = datasets.FILES
    assert [s.sources[0].name for s in files["mnist"]] == [
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert [s.sources[0].name for s in files["mnist"]] == [s.sources[0].name
                                                          for s in files["fashion-mnist"]]
    assert all(s.url.startswith("https://ossci-datasets.s3.amazonaws.com/mnist/")
               for s in files["mnist"])
    assert all(s.url.startswith("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
               for s in files["fashion-mnist"])
    for s in files["binarized-mnist"]:
        assert s.url.endswith(".amat") and s.fetched.name == s.url.rsplit("/", 1)[1]
        assert s.sources[0].name == s.fetched.name + ".gz"
    for specs in files.values():
        for s in specs:
            assert s.url.rsplit("/", 1)[1] == s.fetched.name
            assert all(len(src.sha256) == 64 and int(src.sha256, 16) >= 0 for src in s.sources)
