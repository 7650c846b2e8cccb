"""A user's own data: arrays in memory, .npy / .npz files, and folders of PNG or JPEG images.

    data = Dataset.from_arrays(train, test=test)          # (N, ...) arrays, floats or 0..255
    data = load_path("faces.npy", valid_size=200)        # a file or a folder; see load_path

What is accepted, for every route:
    floats (float16/32/64), finite, any range (a Bernoulli likelihood then needs [0, 1], which
        the model checks); integers 0..255 (any integer dtype), scaled by 1/255; booleans as 0/1;
    shape (N, ...) with N >= 1 and at least one value per example; the image shape is the
        array's shape[1:] when it is (H, W) grey or (H, W, 3) RGB (channels last); any other
        shape is recorded as the 2-D grey image of the same layout (plots.drawable_shape)
Everything else (object, complex, string or structured dtypes, NaN or infinite values, integers
outside 0..255, an empty array) is a one-line MinivaeError naming the file and the fix.

Files are read, never written.  A .npy header is checked against the file's size before anything
is allocated (a header claiming 10^12 elements in a small file is refused), and nothing is
unpickled.  A .npz holds one array (the training set) or arrays named train and optionally valid
and test.  A folder's images (decoded with Pillow: see setup.cfg) are taken from it and its
sub-folders in sorted order of their paths; every image must have the size and colour kind (grey
or RGB) of the first, else the first odd one is named.  fingerprint() is the sha256 the run
records, so that a later eval can refuse data that changed.
"""
import hashlib
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import MinivaeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_MAX_DEFLATE_RATIO = 1032          # deflate cannot expand data by more than this
_CHUNK = 1 << 20


# ----------------------------------------------------------------------------------------------
# Arrays

def as_examples(a, what):
    """A user's array (N, ...) as float32 (N, D) and its image shape, after every check."""
    if not hasattr(a, "dtype") or not hasattr(a, "shape"):
        raise MinivaeError(f"{what} must be an array of shape (N, ...), got {type(a).__name__}")
    a = np.asarray(a)
    kind = a.dtype.kind
    if kind not in "fiub":
        raise MinivaeError(f"{what} has dtype {a.dtype}; it must hold real numbers (floats, or "
                           f"integers 0..255 for 8-bit images): convert it first")
    if a.ndim < 2 or a.shape[0] < 1 or math.prod(a.shape[1:]) < 1:
        raise MinivaeError(f"{what} has shape {a.shape}; it must be (N, ...) with N >= 1 "
                           f"examples of at least one value each, e.g. (N, H, W) images")
    n = a.shape[0]
    flat = a.reshape(n, -1)
    if kind == "f":
        x = flat.astype(np.float32)
        if not np.isfinite(x).all():
            bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
            raise MinivaeError(f"{what} holds NaN or infinite values (the first in example "
                               f"{bad}); clean the data first")
    elif kind == "b":
        x = flat.astype(np.float32)
    else:
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi > 255:
            raise MinivaeError(f"{what} holds integers from {lo} to {hi}; integers must be "
                               f"8-bit grey levels 0..255 (or give floats)")
        x = flat.astype(np.float32)
        x /= np.float32(255)
    return x, _image_shape(a.shape[1:])


def _image_shape(shape):
    """The image shape a run records for examples of array shape `shape`: (H, W) and
    (H, W, 1 or 3) as they are; any other shape as the 2-D grey image of the same row-major
    layout (minivae.plots.drawable_shape: (D,) as a square when D is one, else one row)."""
    from ..plots import drawable_shape
    return drawable_shape(tuple(int(s) for s in shape))


def from_arrays(train, test=None, valid=None, image_shape=None, name="arrays", binarize="none",
                labels=None):
    """A Dataset from arrays in memory: train (N, ...), optional test and valid of the same
    shape[1:].  image_shape defaults to train.shape[1:] ((H, W) grey, (H, W, 3) RGB).
    binarize: "none" (default) or "threshold", "static", "dynamic" as for load_dataset."""
    from .datasets import BINARIZE, Dataset, _binarize_splits, _check_choice
    _check_choice("binarize mode", binarize, BINARIZE)
    x, shape = as_examples(train, f"{name} train data")
    splits = {}
    for split, a in (("valid", valid), ("test", test)):
        if a is None:
            splits[split] = None
            continue
        splits[split], s = as_examples(a, f"{name} {split} data")
        if s != shape:
            raise MinivaeError(f"{name} {split} data has examples of shape {s}, the training "
                               f"data {shape}; they must match")
    if image_shape is not None:
        image_shape = tuple(int(s) for s in image_shape)
        if not (len(image_shape) == 2 or (len(image_shape) == 3 and image_shape[2] in (1, 3))):
            raise MinivaeError(f"image_shape must be (H, W) or (H, W, 1 or 3 channels), got "
                               f"{image_shape}")
        if math.prod(image_shape) != x.shape[1]:
            raise MinivaeError(f"image_shape {image_shape} does not hold the {x.shape[1]} values "
                               f"of each example")
        shape = image_shape
    train_x, valid_x, test_x = _binarize_splits(binarize, 0, x, splits["valid"], splits["test"])
    return Dataset(name, train_x, valid_x, test_x, image_shape=shape, binarize=binarize,
                   labels=labels)


# ----------------------------------------------------------------------------------------------
# .npy and .npz, read without trusting the header

def _npy_header(f, where):
    """(shape, fortran_order, dtype) of the .npy stream f, positioned after its header."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
        raise MinivaeError(f"{where} is not a NumPy .npy array ({e}); save it with "
                           f"numpy.save") from None
    if dtype.hasobject or dtype.kind not in "fiub":
        raise MinivaeError(f"{where} has dtype {dtype}; it must hold real numbers (floats, or "
                           f"integers 0..255 for 8-bit images): convert it first")
    return shape, fortran, dtype


def _read_npy(f, where, available, header_end):
    shape, fortran, dtype = _npy_header(f, where)
    start = header_end(f)
    need = math.prod(shape) * dtype.itemsize
    if need > available - start:
        raise MinivaeError(f"{where}: its header claims an array of shape {shape} "
                           f"({need} bytes of {dtype}) but the file holds "
                           f"{max(available - start, 0)} bytes after the header; the file is "
                           f"truncated or not what it says")
    buf = bytearray(need)
    view, got = memoryview(buf), 0
    while got < need:
        k = f.readinto(view[got:])
        if not k:
            break
        got += k
    if got < need:
        raise MinivaeError(f"{where}: truncated array ({got} of {need} bytes)")
    a = np.frombuffer(buf, dtype=dtype)
    return a.reshape(shape, order="F" if fortran else "C")


def read_npy(path):
    path = str(path)
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            return _read_npy(f, path, size, lambda f: f.tell())
    except OSError as e:
        raise MinivaeError(f"cannot read {path}: {e.strerror or e}") from None


def read_npz(path):
    """{name: array} of a .npz file (stored or deflated members), nothing unpickled."""
    path = str(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise MinivaeError(f"{path} is not a NumPy .npz file ({e}); save it with "
                           f"numpy.savez") from None
    out = {}
    with zf:
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            where = f"{path} (array {name!r})"
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise MinivaeError(f"{where}: unsupported compression; save with numpy.savez")
            available = info.file_size
            if info.compress_type == zipfile.ZIP_DEFLATED:
                available = min(available, _MAX_DEFLATE_RATIO * info.compress_size)
            try:
                with zf.open(info) as f:
                    out[name] = _read_npy(f, where, available, lambda f: f.tell())
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise MinivaeError(f"{where}: damaged ({e})") from None
    if not out:
        raise MinivaeError(f"{path} holds no arrays")
    return out


# ----------------------------------------------------------------------------------------------
# Image folders

def _image_files(folder):
    files = sorted(p for p in Path(folder).rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise MinivaeError(f"folder {folder} holds no PNG or JPEG images (*.png, *.jpg, *.jpeg, "
                           f"also in sub-folders)")
    return files


_SIXTEEN_BIT = ("I", "I;16", "I;16B", "I;16L")       # 16-bit grey PNGs: scaled by 1/65535


def _kind(mode):
    """'grey' or 'rgb': what an image of this Pillow mode becomes (alpha is dropped, a palette
    expanded)."""
    return "grey" if mode in ("1", "L", "LA", *_SIXTEEN_BIT) else "rgb"


def _pixels(im, kind, wide):
    """An opened image as uint8 (H, W[, 3]), or float32 in [0, 1] when wide (16-bit data)."""
    if im.mode in _SIXTEEN_BIT:
        return np.asarray(im, dtype=np.float32) / np.float32(65535)
    a = np.asarray(im.convert("L" if kind == "grey" else "RGB"))
    return a.astype(np.float32) / np.float32(255) if wide else a


def read_image_folder(folder):
    """uint8 or float32 (N, H, W) or (N, H, W, 3) from a folder of images, and the file list.

    Pass 1 reads every header (size, mode) without decoding, so a folder of mixed sizes is
    refused before any pixels are allocated; pass 2 decodes into one preallocated array."""
    try:
        from PIL import Image
    except ImportError:                                     # pragma: no cover (a dependency)
        raise MinivaeError("reading image folders needs Pillow: pip install pillow") from None
    files = _image_files(folder)
    heads = []
    for p in files:
        try:
            with Image.open(p) as im:
                heads.append((im.size, _kind(im.mode), im.mode))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise MinivaeError(f"{p} is not a readable image ({e}); remove or replace it") from None
    (w, h), kind, _ = heads[0]
    for p, (size, k, mode) in zip(files, heads):
        if size != (w, h) or k != kind:
            raise MinivaeError(
                f"{p} is {size[0]}x{size[1]} {k} but {files[0].name} (the first image) is "
                f"{w}x{h} {kind}; every image of a folder must have the same size and colour "
                "kind: resize or convert the odd ones")
    wide = any(mode in _SIXTEEN_BIT for _, _, mode in heads)
    shape = (len(files), h, w) if kind == "grey" else (len(files), h, w, 3)
    out = np.empty(shape, np.float32 if wide else np.uint8)
    for i, p in enumerate(files):
        try:
            with Image.open(p) as im:
                out[i] = _pixels(im, kind, wide)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise MinivaeError(f"{p} cannot be decoded ({e}); remove or replace it") from None
    return out, files


# ----------------------------------------------------------------------------------------------
# Paths

def is_path(text):
    """Does a --dataset value name a file or folder (rather than a built-in dataset)?"""
    return (os.sep in text or text.lower().endswith((".npy", ".npz")) or os.path.exists(text))


def read_path(path):
    """{split: array} from a .npy, a .npz or a folder of images (split 'train' at least)."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_dir():
        return {"train": read_image_folder(p)[0]}
    if not p.is_file():
        raise MinivaeError(f"{p} does not exist; give a .npy or .npz array, a folder of PNG or "
                           f"JPEG images, or a built-in dataset name")
    with open(p, "rb") as f:
        head = f.read(6)
    if head == b"\x93NUMPY":
        return {"train": read_npy(p)}
    if head[:4] == b"PK\x03\x04":
        arrays = read_npz(p)
        if len(arrays) == 1:
            return {"train": next(iter(arrays.values()))}
        if "train" not in arrays or not set(arrays) <= {"train", "valid", "test"}:
            raise MinivaeError(f"{p} holds arrays {sorted(arrays)}: a .npz needs one array, or "
                               f"arrays named train and optionally valid and test")
        return arrays
    raise MinivaeError(f"{p} is neither a NumPy .npy/.npz array nor a folder of images; "
                       f"save arrays with numpy.save or numpy.savez")


def fingerprint(path):
    """sha256 of a file's bytes; for a folder, of its image files' relative paths and bytes."""
    p = Path(os.path.expanduser(str(path)))
    h = hashlib.sha256()
    files = _image_files(p) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\0")
        try:
            with open(f, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
        except OSError as e:
            raise MinivaeError(f"cannot read {f}: {e.strerror or e}") from None
    return h.hexdigest()


def load_path(path, test=None, valid_size=None, seed=0, binarize="none"):
    """A Dataset from a user's file or folder (see the module docstring).

    test: another file or folder holding the test set (else a .npz's 'test' array, else none).
    valid_size: examples held out from the training set by a permutation drawn from ``seed``
        (default: 10% when there is no test set, else 0); a .npz's 'valid' array is used as it is.
    Returns (dataset, record): record holds the resolved paths, their sha256 and valid_size,
    what a run stores so that eval can load the same data and notice a change."""
    from .datasets import _check_int
    seed = _check_int("seed", seed, 0)
    path = os.path.abspath(os.path.expanduser(str(path)))
    arrays = read_path(path)
    name = os.path.basename(path.rstrip(os.sep)) or path
    record = {"path": path, "sha256": fingerprint(path)}
    test_a = arrays.get("test")
    if test is not None:
        tpath = os.path.abspath(os.path.expanduser(str(test)))
        test_arrays = read_path(tpath)
        if set(test_arrays) != {"train"}:
            raise MinivaeError(f"--test {tpath} must hold one array (or be a folder of images), "
                               f"got arrays {sorted(test_arrays)}")
        test_a = test_arrays["train"]
        record.update(test=tpath, test_sha256=fingerprint(tpath))
    train_a, valid_a = arrays["train"], arrays.get("valid")
    n = len(train_a)
    if valid_size is None:                  # a held-out set to watch: 10% when there is none
        valid_size = 0 if (test_a is not None or valid_a is not None or n < 2) else max(1, n // 10)
    valid_size = _check_int("valid_size", valid_size, 0)
    if valid_size and valid_a is not None:
        raise MinivaeError(f"{path} has its own valid array; drop --valid-size")
    if valid_size >= n and valid_size:
        raise MinivaeError(f"valid_size must be smaller than the {n} training examples of "
                           f"{name}, got {valid_size}")
    if valid_size:
        perm = np.random.default_rng(seed).permutation(n)
        valid_a, train_a = train_a[np.sort(perm[:valid_size])], train_a[np.sort(perm[valid_size:])]
    record["valid_size"] = valid_size
    data = from_arrays(train_a, test=test_a, valid=valid_a, name=name, binarize=binarize)
    return data, record
