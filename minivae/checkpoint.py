"""Checkpoints: one ``.npz`` written atomically and read without pickle.

Contents
    params            the flat parameter buffer (model dtype)
    opt.<name>        the optimiser's state arrays (Adam: m, v)
    extra.<name>      other arrays the trainer needs to resume (the epoch's data order)
    meta              a JSON string: format version, model and training config, epoch, step,
                      optimiser scalars, generator states, and anything else small

Writing: a temporary file in the same folder, flushed and fsync'd, then ``os.replace`` onto the
target and the folder fsync'd.  A crash at any moment leaves either the old checkpoint or the new
one, never a torn file.  Reading: ``np.load(allow_pickle=False)``, the format version checked, and
every array's name, shape and dtype checked against the config before anything is used.
"""
import json
import os
import tempfile
import zipfile

import numpy as np

from .backend import to_host
from .errors import MinivaeError

FORMAT_VERSION = 1
MAX_META_BYTES = 16 << 20


def atomic_write(path, write):
    """Call write(f) on a temporary file beside path, fsync it, and rename it onto path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    except OSError as e:
        raise MinivaeError(f"cannot write {path}: {e.strerror}; check the folder exists and is "
                           "writable (earlier files were left as they were)") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise MinivaeError(f"cannot write {path}: {e.strerror or e}; free some space or "
                               "choose another folder (earlier files were left as they "
                               "were)") from None
        raise
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save(path, params, meta, opt_arrays=None, extra_arrays=None):
    """Write a checkpoint atomically.  meta must be JSON-serialisable."""
    arrays = {"params": to_host(params)}
    for k, a in (opt_arrays or {}).items():
        arrays[f"opt.{k}"] = to_host(a)
    for k, a in (extra_arrays or {}).items():
        arrays[f"extra.{k}"] = to_host(a)
    meta = dict(meta, format_version=FORMAT_VERSION)
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load(path):
    """(params, meta, opt_arrays, extra_arrays) from a checkpoint, after structural checks.

    Raises MinivaeError naming the file for anything unreadable or inconsistent.  The caller
    checks the arrays against the model the config describes (``check_against``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MinivaeError(f"no checkpoint at {path}; pass a run directory or a .npz written by "
                           "minivae train")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            if "meta" not in names or "params" not in names:
                raise MinivaeError(f"{path} is not a minivae checkpoint (no meta/params arrays)")
            meta_arr = z["meta"]
            if meta_arr.dtype.kind != "U" or meta_arr.ndim != 0 or meta_arr.nbytes > MAX_META_BYTES:
                raise MinivaeError(f"{path}: malformed meta record; the file is damaged")
            arrays = {}
            for k in names:
                if k != "meta":
                    arrays[k] = z[k]
    except MinivaeError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise MinivaeError(f"{path} cannot be read as a checkpoint ({type(e).__name__}: "
                           f"{str(e)[:120]}); it is damaged or not a minivae checkpoint") from None
    try:
        meta = json.loads(str(meta_arr))
    except ValueError:
        raise MinivaeError(f"{path}: meta record is not valid JSON; the file is damaged") from None
    if not isinstance(meta, dict):
        raise MinivaeError(f"{path}: meta record is not a JSON object; the file is damaged")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise MinivaeError(f"{path} has checkpoint format {version!r}, this minivae reads "
                           f"format {FORMAT_VERSION}; use the minivae version that wrote it")
    opt = {k[4:]: a for k, a in arrays.items() if k.startswith("opt.")}
    extra = {k[6:]: a for k, a in arrays.items() if k.startswith("extra.")}
    return arrays["params"], meta, opt, extra


def check_against(path, params, opt_arrays, model):
    """Check a loaded checkpoint's arrays against the model its config builds."""
    want = (model.buffer.size,)
    dt = np.dtype(model.dtype)
    for name, a in [("params", params)] + [(f"opt.{k}", v) for k, v in opt_arrays.items()]:
        if a.shape != want or a.dtype != dt:
            raise MinivaeError(f"{path}: array {name} has shape {a.shape} dtype {a.dtype}, the "
                               f"config needs {want} {dt}; the file does not match its config")
    if not np.isfinite(params).all():
        raise MinivaeError(f"{path}: parameters hold NaN or infinite values; use an earlier "
                           "checkpoint")
