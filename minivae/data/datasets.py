"""The standard datasets: where their files come from, how they are verified, how they are split
and binarised.

    ds = load_dataset("mnist")                        # cache, else download (sha256-verified)
    ds = load_dataset("mnist", data_dir="../shared/data/mnist", binarize="static", seed=3)
    ds.train, ds.valid, ds.test                       # float32 (N, 784) in [0, 1]
    xb = binarize_batch(ds.train[idx], rng)           # dynamic binarisation, one batch

Where a dataset's files come from, in this order:

1. a folder the user names: ``data_dir=`` (the CLI's ``--data-dir``) or, when that is None, the
   environment variable ``MINIVAE_DATA_DIR``.  If the folder has a sub-folder named after the
   dataset (``<dir>/mnist``) that one is used, so one folder can hold every dataset.  Every file
   must be there (a missing one is an error naming it, nothing is downloaded) and each is
   checked against its sha256 on every load (about 0.1 s for the largest).
2. the cache: ``$MINIVAE_CACHE_DIR/<dataset>``, else ``$XDG_CACHE_HOME/minivae/<dataset>``, else
   ``~/.cache/minivae/<dataset>``.  A cached file is hashed once; a stamp ``<file>.sha256-ok``
   beside it (hash, size, mtime) saves the hashing on later loads while the file is unchanged.
3. a download from the dataset's public mirror into the cache (``download=True``), with a
   progress bar on stderr.  The bytes go to a temporary file in the cache folder, are checked
   against the size and sha256 built into this module, fsync'd, and only then renamed to their
   final name: an interrupted or corrupt download never leaves a file a later run would trust.

A file may be present in one of several accepted forms (``Source``): for MNIST and Fashion-MNIST
the .gz files of the original distribution or their decompressed IDX content; for binarised MNIST
the .amat.gz copies of ../shared/data or the plain .amat text the original mirror serves (that is
what a download fetches).  Every form has its own size and sha256.
"""
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MinivaeError
from .formats import read_amat, read_idx
from .shapes import make_shapes

DATASETS = ("mnist", "fashion-mnist", "binarized-mnist", "shapes")
BINARIZE = ("dynamic", "static", "threshold", "none")

# Fixed generators of the evaluation splits under dynamic binarisation.  1001 for the test set is
# the protocol of the PyTorch peer (../shared/bench/vaecommon.py): the same test bits, bit for bit.
TEST_BINARIZE_SEED = 1001
VALID_BINARIZE_SEED = 1002

SHAPES_TRAIN, SHAPES_TEST = 20000, 2000
_DEFAULT_VALID = {"mnist": 10000, "fashion-mnist": 10000, "binarized-mnist": 10000, "shapes": 0}

_TIMEOUT_S = 30
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """One accepted form of a file: its name in a folder, its size in bytes and its sha256."""
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class FileSpec:
    """One file a dataset needs.

    key: its role ("train-images", ...); sources: the accepted forms, in order of preference when
    a folder holds several; url: where to download it; download: index into sources of the form
    the url serves (the download is saved under that name and checked against that hash).
    """
    key: str
    sources: tuple
    url: str
    download: int = 0

    @property
    def fetched(self):
        return self.sources[self.download]


def _idx_files(base_url, table):
    return tuple(FileSpec(key, (Source(gz, gz_size, gz_sha), Source(gz[:-3], raw_size, raw_sha)),
                          base_url + gz)
                 for key, gz, gz_size, gz_sha, raw_size, raw_sha in table)


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_BINARIZED_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"

# Sizes and sha256 from ../shared/data/README.md (each checked there against the published sums).
FILES = {
    "mnist": _idx_files(_MNIST_URL, [
        ("train-images", "train-images-idx3-ubyte.gz", 9912422,
         "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 47040016,
         "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        ("train-labels", "train-labels-idx1-ubyte.gz", 28881,
         "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 60008,
         "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        ("test-images", "t10k-images-idx3-ubyte.gz", 1648877,
         "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 7840016,
         "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        ("test-labels", "t10k-labels-idx1-ubyte.gz", 4542,
         "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 10008,
         "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    ]),
    "fashion-mnist": _idx_files(_FASHION_URL, [
        ("train-images", "train-images-idx3-ubyte.gz", 26421880,
         "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 47040016,
         "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        ("train-labels", "train-labels-idx1-ubyte.gz", 29515,
         "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 60008,
         "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        ("test-images", "t10k-images-idx3-ubyte.gz", 4422102,
         "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 7840016,
         "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        ("test-labels", "t10k-labels-idx1-ubyte.gz", 5148,
         "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 10008,
         "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    ]),
    "binarized-mnist": tuple(
        FileSpec(split, (Source(f"binarized_mnist_{split}.amat.gz", gz_size, gz_sha),
                         Source(f"binarized_mnist_{split}.amat", size, sha)),
                 f"{_BINARIZED_URL}binarized_mnist_{split}.amat", download=1)
        for split, gz_size, gz_sha, size, sha in [
            ("train", 2196952, "af247bd6075cf9adc4715459dcd5f13eaa99a2c92d8d81379a05da94770b6c0e",
             78400000, "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"),
            ("valid", 439620, "533b71bc0198f4d73c54ae5fe6c96fc08dc3cf1b3fae24c5521dbc0452507e38",
             15680000, "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2"),
            ("test", 416802, "32a3c54d03504632bf9f131b4a148c7567aa6fc87da017049b044bdc14c2a0f2",
             15680000, "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"),
        ]),
}


# ----------------------------------------------------------------------------------------------
# Finding and verifying files

def cache_dir(dataset):
    """The cache folder of a dataset (not created here)."""
    root = os.environ.get("MINIVAE_CACHE_DIR")
    if root:
        return Path(root).expanduser() / dataset
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "minivae" / dataset


def _user_folder(dataset, data_dir):
    """The folder the user named for this dataset, or None (then the cache is used)."""
    origin = "data_dir"
    if data_dir is None:
        data_dir, origin = os.environ.get("MINIVAE_DATA_DIR") or None, "MINIVAE_DATA_DIR"
        if data_dir is None:
            return None
    try:
        folder = Path(os.fspath(data_dir)).expanduser()
    except TypeError:
        raise MinivaeError(f"{origin} must be a folder path, got {data_dir!r}") from None
    if not folder.is_dir():
        raise MinivaeError(f"{origin} {str(folder)!r} is not a folder: give the folder that "
                           f"holds the {dataset} files")
    sub = folder / dataset
    return sub if sub.is_dir() else folder


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stamp_path(path):
    return path.with_name(path.name + ".sha256-ok")


def _stamp_text(sha, st):
    return f"{sha} {st.st_size} {st.st_mtime_ns}\n"


def _write_stamp(path, sha):
    """Best effort: a read-only cache just means hashing again next time."""
    stamp = _stamp_path(path)
    try:
        text = _stamp_text(sha, path.stat())
        tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, stamp)
    except OSError:
        pass


def _verify(path, src, dataset, where, use_stamp):
    """Raise unless the file at path has src's size and sha256."""
    st = path.stat()
    got_sha = None
    if st.st_size == src.size:
        if use_stamp:
            try:
                if _stamp_path(path).read_text() == _stamp_text(src.sha256, st):
                    return
            except OSError:
                pass
        got_sha = sha256_file(path)
        if got_sha == src.sha256:
            if use_stamp:
                _write_stamp(path, got_sha)
            return
    got = (f"sha256 {got_sha}, expected {src.sha256}" if got_sha else
           f"{st.st_size} bytes, expected {src.size}")
    fix = ("delete it and run again to download it afresh" if where == "cache" else
           f"is this the folder of another dataset? Replace it with the original {src.name}")
    raise MinivaeError(f"{path} is not {dataset}'s {src.name} ({got}): {fix}")


def _manual_instructions(specs, cache):
    files = ", ".join(f"{s.fetched.name} from {s.url}" for s in specs)
    return (f"fetch {files}; put them in {cache} (or in a folder given as data_dir, "
            f"--data-dir or MINIVAE_DATA_DIR)")


def fetch(dataset, specs=None, data_dir=None, download=True, progress=None):
    """Verified local paths of a dataset's files: {spec.key: Path}.

    specs: the FileSpecs to find (default FILES[dataset]; tests pass their own, served locally).
    Looks in the user's folder (data_dir or MINIVAE_DATA_DIR), else the cache, downloading what
    the cache lacks when download is true.  progress: True/False, or None for a bar only when
    stderr is a terminal.
    """
    specs = FILES[dataset] if specs is None else tuple(specs)
    folder = _user_folder(dataset, data_dir)
    if folder is not None:
        return {s.key: _find_in_folder(dataset, s, folder) for s in specs}
    cache = cache_dir(dataset)
    found, missing = {}, []
    for s in specs:
        path = next((cache / src.name for src in s.sources if (cache / src.name).is_file()), None)
        if path is None:
            missing.append(s)
            continue
        _verify(path, next(src for src in s.sources if src.name == path.name), dataset,
                "cache", use_stamp=True)
        found[s.key] = path
    if missing and not download:
        raise MinivaeError(f"{dataset} is not in the cache and download=False: "
                           + _manual_instructions(missing, cache))
    for i, s in enumerate(missing):
        found[s.key] = _download(dataset, s, cache, missing[i:], progress)
    return found


def _find_in_folder(dataset, spec, folder):
    for src in spec.sources:
        path = folder / src.name
        if path.is_file():
            _verify(path, src, dataset, "folder", use_stamp=False)
            return path
    others = [src.name for src in spec.sources[1:]]
    also = f" (or {' or '.join(others)})" if others else ""
    raise MinivaeError(f"folder {folder} has no {spec.sources[0].name}{also}, needed for "
                       f"{dataset}: download it from {spec.url} into that folder, or unset "
                       f"data_dir and MINIVAE_DATA_DIR to download it into the cache")


# ----------------------------------------------------------------------------------------------
# Downloading

def _download(dataset, spec, cache, still_missing, progress):
    """Download spec.url into cache/<name>, verified, atomically; returns the final path."""
    from tqdm import tqdm

    src = spec.fetched
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MinivaeError(f"cannot create the cache folder {cache} ({e.strerror or e}): set "
                           f"MINIVAE_CACHE_DIR to a writable folder, or pass data_dir") from None
    request = urllib.request.Request(spec.url, headers={"User-Agent": "minivae"})
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        raise MinivaeError(f"cannot download {spec.url}: the server answered {e.code} "
                           f"{e.reason}; " + _manual_instructions(still_missing, cache)) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise MinivaeError(f"cannot download {dataset}: no network ({reason}); "
                           + _manual_instructions(still_missing, cache)) from None
    dest = cache / src.name
    tmp = None
    with response:
        try:
            length = response.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            try:
                fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{src.name}.", suffix=".part")
            except OSError as e:
                raise MinivaeError(f"cannot write into the cache folder {cache} "
                                   f"({e.strerror or e}): set MINIVAE_CACHE_DIR to a writable "
                                   f"folder, or pass data_dir") from None
            h, got = hashlib.sha256(), 0
            bar = tqdm(total=length or src.size, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=src.name, file=sys.stderr, leave=False,
                       disable=None if progress is None else not progress)
            with os.fdopen(fd, "wb") as f, bar:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (OSError, http.client.HTTPException) as e:
                        raise MinivaeError(
                            f"download of {spec.url} broke off after {got} of "
                            f"{length or src.size} bytes ({type(e).__name__}: {e}); the partial "
                            f"file was removed; run again to retry") from None
                    if not chunk:
                        break
                    got += len(chunk)
                    if got > src.size:
                        raise MinivaeError(
                            f"download of {spec.url} sent more than the {src.size} bytes of "
                            f"{src.name}; the partial file was removed; "
                            + _manual_instructions([spec], cache))
                    try:
                        f.write(chunk)
                    except OSError as e:
                        raise MinivaeError(
                            f"cannot write {src.name} into the cache folder {cache} "
                            f"({e.strerror or e}); the partial file was removed: free some space "
                            f"or set MINIVAE_CACHE_DIR to another folder") from None
                    h.update(chunk)
                    bar.update(len(chunk))
                try:
                    f.flush()
                    os.fsync(f.fileno())
                except OSError as e:
                    raise MinivaeError(
                        f"cannot write {src.name} into the cache folder {cache} "
                        f"({e.strerror or e}); the partial file was removed: free some space "
                        f"or set MINIVAE_CACHE_DIR to another folder") from None
            if length is not None and got < length:
                raise MinivaeError(
                    f"download of {spec.url} broke off after {got} of {length} bytes (the "
                    f"connection closed early); the partial file was removed; run again to retry")
            sha = h.hexdigest()
            if got != src.size or sha != src.sha256:
                raise MinivaeError(
                    f"checksum mismatch for {spec.url}: expected sha256 {src.sha256} "
                    f"({src.size} bytes), got {sha} ({got} bytes); the downloaded file was "
                    f"removed; run again, or " + _manual_instructions([spec], cache))
            os.replace(tmp, dest)
            tmp = None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
    _fsync_dir(cache)
    _write_stamp(dest, sha)
    return dest


def _fsync_dir(folder):
    """Make the rename durable (POSIX); harmless where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# Datasets

@dataclass
class Dataset:
    """A dataset ready for training: float32 (N, D) splits in [0, 1], row-major images.

    binarize says what the splits hold: "dynamic" -> train grey (binarise each batch with
    binarize_batch), valid/test binarised once with fixed generators; "static" -> every split
    binarised once; "threshold" -> every split x > 0.5; "none" -> grey values everywhere.
    labels: {"train": ..., "valid": ..., "test": ...} aligned with the splits (class labels, or
    for "shapes" a dict of factor arrays per split), None where the dataset has none.
    """
    name: str
    train: np.ndarray
    valid: np.ndarray | None
    test: np.ndarray | None
    image_shape: tuple
    binarize: str
    labels: dict | None = None

    @staticmethod
    def from_arrays(train, test=None, valid=None, image_shape=None, name="arrays",
                    binarize="none", labels=None):
        """A Dataset from your own arrays (N, ...): floats, or integers 0..255 (scaled by
        1/255); image_shape defaults to train.shape[1:], (H, W) grey or (H, W, 3) RGB.  Every
        input is checked (see minivae.data.user)."""
        from .user import from_arrays
        return from_arrays(train, test=test, valid=valid, image_shape=image_shape, name=name,
                           binarize=binarize, labels=labels)

    @property
    def dim(self):
        """D, the number of pixels per image."""
        return int(np.prod(self.image_shape))

    def __repr__(self):
        sizes = ", ".join(f"{k}={None if a is None else a.shape}"
                          for k, a in (("train", self.train), ("valid", self.valid),
                                       ("test", self.test)))
        return (f"Dataset({self.name!r}, {sizes}, image_shape={self.image_shape}, "
                f"binarize={self.binarize!r})")


def binarize_batch(x, rng, out=None):
    """A fresh Bernoulli sample of grey levels: (u < x) as x.dtype, u ~ U[0, 1) from rng.

    x: float32/float64 (B, D) in [0, 1] (NumPy, or CuPy with a CuPy generator); out: optional
    array of x's shape and dtype to write into (not x itself).  Consumes exactly the draws of
    ``rng.random(x.shape, dtype=x.dtype)``.
    """
    dtype = getattr(x, "dtype", None)
    if not isinstance(dtype, np.dtype) or dtype not in (np.float32, np.float64):
        raise MinivaeError(f"binarize_batch: x must be a float32 or float64 array of grey levels "
                           f"in [0, 1], got {type(x).__name__} of dtype {dtype}")
    if out is None:
        return (rng.random(x.shape, dtype=dtype) < x).astype(dtype)
    if out is x or getattr(out, "shape", None) != x.shape or getattr(out, "dtype", None) != dtype:
        got = "x itself" if out is x else (f"{type(out).__name__} of shape "
                                           f"{getattr(out, 'shape', None)} and dtype "
                                           f"{getattr(out, 'dtype', None)}")
        raise MinivaeError(f"binarize_batch: out must be another array of x's shape {x.shape} "
                           f"and dtype {dtype}, got {got}")
    if isinstance(out, np.ndarray) and out.flags.c_contiguous:
        rng.random(dtype=dtype, out=out)          # the same draws as rng.random(x.shape, dtype)
    else:
        out[...] = rng.random(x.shape, dtype=dtype)
    out[...] = out < x
    return out


def _binarize_fixed(x, seed):
    return (np.random.default_rng(seed).random(x.shape, np.float32) < x).astype(np.float32)


def _binarize_splits(mode, seed, train, valid, test):
    if mode == "none":
        return train, valid, test
    if mode == "threshold":
        return tuple(None if a is None else (a > np.float32(0.5)).astype(np.float32)
                     for a in (train, valid, test))
    if mode == "dynamic":
        return (train,
                None if valid is None else _binarize_fixed(valid, VALID_BINARIZE_SEED),
                None if test is None else _binarize_fixed(test, TEST_BINARIZE_SEED))
    # static: one sample of each split from seed-derived generators (independent of the
    # generator that draws the validation split)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]
    return tuple(None if a is None else binarize_batch(a, r)
                 for a, r in zip((train, valid, test), rngs))


def _check_choice(what, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise MinivaeError(f"unknown {what} {value!r}: choose one of {', '.join(choices)}")
    return value


def _check_int(what, value, lo):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise MinivaeError(f"{what} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _grey(u8):
    """uint8 (N, ...) -> float32 (N, D) = u8 / 255 (the same rounding as float32 / 255)."""
    x = u8.reshape(u8.shape[0], -1).astype(np.float32)
    x /= np.float32(255)
    return x


def load_dataset(name, data_dir=None, binarize="dynamic", valid_size=None, seed=0,
                 download=True, progress=None):
    """Load a dataset as a Dataset of float32 (N, D) splits in [0, 1].

    name: one of DATASETS.
    data_dir: a folder holding the files (or one with a sub-folder per dataset); None: the
        MINIVAE_DATA_DIR folder if set, else the cache, else a download (see the module doc);
        ignored for shapes.
    binarize: "dynamic" (default; train stays grey and the trainer samples each batch with
        binarize_batch; valid and test are binarised once, with np.random.default_rng(1002)
        and default_rng(1001) respectively, so every evaluation sees the same bits; the test
        bits equal the PyTorch peer's), "static" (every split sampled once, from ``seed``),
        "threshold" (x > 0.5) or "none" (grey levels, for a Gaussian decoder).
    valid_size: images held out for validation.  mnist, fashion-mnist: taken from the 60,000
        training images by a permutation drawn from ``seed`` (default 10,000; 0 keeps all
        60,000 for training and valid is None, the peer's protocol); both splits keep the
        file's order.  binarized-mnist: ignored, it has its own 50,000/10,000/10,000 splits.
        shapes: the number of extra images generated for validation (default 0: valid None).
    seed: the validation split, and the samples of "static".
    download: fetch missing files into the cache; False raises instead, saying what to fetch.

    binarized-mnist is binary already, so every binarize mode leaves it unchanged (0 and 1 map
    to themselves under each); its Dataset says binarize="static", which is what it is.
    shapes: make_shapes with 20,000 training images from ``seed`` and 2,000 test images from
    the seed (seed, 1) (validation images from (seed, 2)), 32x32, flattened to (N, 1024);
    labels holds each split's factors (see minivae.data.shapes).
    """
    _check_choice("dataset", name, DATASETS)
    _check_choice("binarize mode", binarize, BINARIZE)
    seed = _check_int("seed", seed, 0)
    valid_size = _DEFAULT_VALID[name] if valid_size is None else _check_int("valid_size",
                                                                            valid_size, 0)
    if name == "shapes":
        return _load_shapes(binarize, valid_size, seed)
    paths = fetch(name, data_dir=data_dir, download=download, progress=progress)
    if name == "binarized-mnist":
        splits = [read_amat(paths[k]).astype(np.float32) for k in ("train", "valid", "test")]
        return Dataset(name, *splits, image_shape=(28, 28), binarize="static")
    return _load_idx_dataset(name, paths, binarize, valid_size, seed)


def _read_pair(dataset, paths, split):
    images, labels = read_idx(paths[f"{split}-images"]), read_idx(paths[f"{split}-labels"])
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise MinivaeError(f"{dataset}: {paths[f'{split}-images']} holds {images.shape} and "
                           f"{paths[f'{split}-labels']} holds {labels.shape}: expected images "
                           f"(n, rows, cols) and n labels")
    return images, labels


def _load_idx_dataset(name, paths, binarize, valid_size, seed):
    images, labels = _read_pair(name, paths, "train")
    test_images, test_labels = _read_pair(name, paths, "test")
    n = images.shape[0]
    if valid_size >= n:
        raise MinivaeError(f"valid_size must be smaller than the {n} training images of {name}, "
                           f"got {valid_size}")
    if valid_size:
        perm = np.random.default_rng(seed).permutation(n)
        valid_idx, train_idx = np.sort(perm[:valid_size]), np.sort(perm[valid_size:])
        train, valid = _grey(images[train_idx]), _grey(images[valid_idx])
        y_train, y_valid = labels[train_idx], labels[valid_idx]
    else:
        train, valid, y_train, y_valid = _grey(images), None, labels, None
    train, valid, test = _binarize_splits(binarize, seed, train, valid, _grey(test_images))
    return Dataset(name, train, valid, test, image_shape=tuple(images.shape[1:]),
                   binarize=binarize,
                   labels={"train": y_train, "valid": y_valid, "test": test_labels})


def _load_shapes(binarize, valid_size, seed):
    def gen(n, s):
        images, factors = make_shapes(n, seed=s)
        return images.reshape(n, -1), factors

    train, f_train = gen(SHAPES_TRAIN, seed)
    test, f_test = gen(SHAPES_TEST, (seed, 1))
    valid, f_valid = gen(valid_size, (seed, 2)) if valid_size else (None, None)
    train, valid, test = _binarize_splits(binarize, seed, train, valid, test)
    return Dataset("shapes", train, valid, test, image_shape=(32, 32), binarize=binarize,
                   labels={"train": f_train, "valid": f_valid, "test": f_test})
