"""Checkpoints: one ``.npz`` written atomically and read without pickle.

Contents (each an ``.npy`` member of an uncompressed zip, as ``np.savez`` writes it)
    params            the flat parameter buffer (model dtype)
    opt.<name>        the optimiser's state arrays (Adam: m, v)
    extra.<name>      other arrays the trainer needs to resume (the epoch's data order)
    meta              a JSON string: format version, model and training config, epoch, step,
                      optimiser scalars, generator states, and anything else small

Writing: a temporary file in the same folder, flushed and fsync'd, then ``os.replace`` onto the
target and the folder fsync'd.  A crash at any moment leaves either the old checkpoint or the new
one, never a torn file; a failed write removes its temporary file (one left by a SIGKILL is
removed by the next run in that folder: see rundir.py).  The file gets the permissions the
user's umask gives a new file (0644 under umask 022), or keeps those of the file it replaces.

Reading trusts nothing in the file.  ``np.load`` is not used: it allocates whatever an ``.npy``
header claims before reading a byte of data, and it returns a bare array for a file that is an
``.npy`` rather than an ``.npz``.  Instead the zip directory is read first, and every member must
be stored uncompressed, be no larger than the file itself, hold a plain numeric (or, for meta,
unicode) dtype and exactly the bytes its header declares.  ``meta`` is read first (bounded by
MAX_META_BYTES) and its format version checked; then, when the caller passes ``expect``, every
other member's name, shape and dtype are checked against what the config implies *before* its
data is read.  Anything else ends in a one-line MinivaeError naming the file.
"""
import io
import json
import os
import stat
import struct
import tempfile
import zipfile
from typing import NamedTuple

import numpy as np

from .backend import to_host
from .errors import MinivaeError

FORMAT_VERSION = 1
MAX_META_BYTES = 16 << 20          # the JSON meta record, as stored (4 bytes per character)
MAX_MEMBERS = 64                   # arrays in one checkpoint
MAX_NPY_HEADER = 10000             # numpy's own bound on an .npy header, in characters
_NPY_PREAMBLE = 12                 # magic (6) + version (2) + header length (2 or 4)

# what a damaged or hostile zip / .npy can raise from the standard library and numpy's header
# parser; each is turned into a MinivaeError naming the file
_PARSE_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
                 KeyError, IndexError, TypeError, struct.error, NotImplementedError,
                 RuntimeError, OverflowError, UnicodeError, RecursionError)


class Expect(NamedTuple):
    """What one array must be: shape (ints; None for a length the file decides), dtype (a
    numpy dtype, or a kind letter such as 'i' for any integer type), and whether it must be
    present."""
    shape: tuple
    dtype: object
    required: bool = True


# ------------------------------------------------------------------------------------- writing
def atomic_write(path, write):
    """Call write(f) on a temporary file beside path, fsync it, and rename it onto path.

    Any failure (a full disk, a read-only folder, an interrupt) removes the temporary file and
    leaves whatever was at path before untouched; an OSError becomes a one-line MinivaeError.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    except OSError as e:
        raise MinivaeError(f"cannot write {path}: {e.strerror or e}; check the folder exists and "
                           "is writable (earlier files were left as they were)") from None
    try:
        os.fchmod(fd, _new_file_mode(path))
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


def _umask():
    """The process's umask, read without changing it where Linux says it (/proc), else set and
    restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path):
    """The permission bits for a file written to path: those of the file it replaces, else what
    open() would give a new file (0o666 less the umask; mkstemp's own 0o600 is not kept)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return 0o666 & ~_umask()


def save(path, params, meta, opt_arrays=None, extra_arrays=None):
    """Write a checkpoint atomically.  meta must be JSON-serialisable."""
    arrays = {"params": to_host(params)}
    for k, a in (opt_arrays or {}).items():
        arrays[f"opt.{k}"] = to_host(a)
    for k, a in (extra_arrays or {}).items():
        arrays[f"extra.{k}"] = to_host(a)
    if len(arrays) + 1 > MAX_MEMBERS:
        raise MinivaeError(f"a checkpoint holds at most {MAX_MEMBERS} arrays, got {len(arrays) + 1}")
    for k, a in arrays.items():
        if a.dtype.hasobject or a.dtype.kind not in "biuf":
            raise MinivaeError(f"checkpoint array {k} has dtype {a.dtype}; only numeric arrays "
                               "are saved (no pickle)")
    text = json.dumps(dict(meta, format_version=FORMAT_VERSION), allow_nan=False)
    if 4 * len(text) > MAX_META_BYTES:
        raise MinivaeError(f"checkpoint meta record of {len(text)} characters exceeds "
                           f"{MAX_META_BYTES // 4}; keep large data in arrays")
    arrays["meta"] = np.array(text)
    atomic_write(path, lambda f: np.savez(f, **arrays))


# ------------------------------------------------------------------------------------- reading
def open_regular(path):
    """path opened for binary reading, if it is a regular file (a symlink to one is followed).

    A FIFO, a device, a socket or a folder is refused with a one-line MinivaeError, checked on
    the opened descriptor (so nothing can swap the file in between) and opened without
    blocking (so a FIFO with no writer cannot hang us)."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise MinivaeError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "a device")
            raise MinivaeError(f"{path} is {kind}, not a regular file; minivae reads only the "
                               "files it wrote: remove it, or put that file back")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _damaged(path, what):
    return MinivaeError(f"{path}: {what}; the file is damaged or not a minivae checkpoint")


def _members(path, zf, file_size):
    """{array name: ZipInfo} after structural checks that read no array data."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise _damaged(path, f"{len(infos)} members, more than the {MAX_MEMBERS} allowed")
    out = {}
    for info in infos:
        name = info.filename
        if not name.endswith(".npy") or len(name) > 200 or not name[:-4].isprintable():
            raise _damaged(path, f"unexpected member {name[:60]!r}")
        key = name[:-4]
        if key in out:
            raise _damaged(path, f"member {key!r} appears twice")
        if info.flag_bits & 0x1:
            raise _damaged(path, f"member {key!r} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise _damaged(path, f"member {key!r} is compressed (minivae writes them stored)")
        if info.file_size > file_size or info.header_offset + info.file_size > file_size:
            raise _damaged(path, f"member {key!r} claims {info.file_size} bytes, more than the "
                                 f"file's {file_size}")
        out[key] = info
    return out


def _read_npy(path, zf, info, key, expect=None, max_bytes=None):
    """The array in one .npy member, checked against expect before its data is read.

    max_bytes bounds the member's size (declared in the zip directory) before anything is read.
    """
    size = info.file_size
    if max_bytes is not None and size > max_bytes + _NPY_PREAMBLE + MAX_NPY_HEADER + 64:
        raise _damaged(path, f"array {key} takes {size} bytes, more than its "
                             f"{max_bytes} allowed")
    buf = zf.read(info)                       # exactly `size` bytes; the zip CRC is checked here
    if len(buf) != size:
        raise _damaged(path, f"array {key} is truncated")
    f = io.BytesIO(buf)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, MAX_NPY_HEADER)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, MAX_NPY_HEADER)
    else:
        raise _damaged(path, f"array {key} has .npy format {version}")
    if dtype.hasobject:
        raise MinivaeError(f"{path}: array {key} holds Python objects (pickle), which minivae "
                           "never loads; the file is not a minivae checkpoint")
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biufU" \
            or dtype.itemsize == 0:
        raise _damaged(path, f"array {key} has unsupported dtype {dtype}")
    if any(d < 0 for d in shape):
        raise _damaged(path, f"array {key} has a negative length in its shape {shape}")
    if expect is not None:
        check_expected(path, key, shape, dtype, expect)
    count = 1
    for d in shape:
        count *= d
    offset = f.tell()
    if count * dtype.itemsize != size - offset:
        raise _damaged(path, f"array {key} declares {count * dtype.itemsize} bytes of data but "
                             f"holds {size - offset}")
    a = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
    a = a.reshape(shape, order="F" if fortran else "C").copy()
    if a.dtype.byteorder not in "=|":
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def check_expected(path, key, shape, dtype, expect):
    """Raise MinivaeError unless an array of this shape and dtype is what expect asks for."""
    want_shape, want_dtype = expect.shape, expect.dtype
    ok_shape = (len(shape) == len(want_shape)
                and all(w is None or w == d for w, d in zip(want_shape, shape)))
    ok_dtype = (dtype.kind == want_dtype if isinstance(want_dtype, str)
                else dtype == np.dtype(want_dtype))
    if not (ok_shape and ok_dtype):
        want = tuple("N" if w is None else w for w in want_shape)
        wdt = {"i": "an integer type"}.get(want_dtype, want_dtype) \
            if isinstance(want_dtype, str) else np.dtype(want_dtype)
        raise MinivaeError(f"{path}: array {key} has shape {tuple(shape)} dtype {dtype}, the "
                           f"config needs {want} {wdt}; the file does not match its config")


def load(path, expect=None):
    """(params, meta, opt_arrays, extra_arrays) from a checkpoint, after structural checks.

    expect: None, or a function meta -> {array name: Expect} (names as stored: "params",
        "opt.m", "extra.perm", ...).  With it, an array missing from the file or not named
        there, or with another shape or dtype, is refused before its data is read, so a config
        cannot make the reader allocate more than the file holds.  It may raise MinivaeError
        for a meta it cannot accept.
    Raises MinivaeError naming the file for anything unreadable or inconsistent.  Without
    expect the caller checks the arrays against the model its config builds (``check_against``).
    """
    path = os.fspath(path)
    try:
        fileobj = open_regular(path)
    except FileNotFoundError:
        raise MinivaeError(f"no checkpoint at {path}; pass a run directory or a .npz written by "
                           "minivae train") from None
    try:
        file_size = os.fstat(fileobj.fileno()).st_size
        with fileobj, zipfile.ZipFile(fileobj) as zf:
            members = _members(path, zf, file_size)
            if "meta" not in members or "params" not in members:
                raise MinivaeError(f"{path} is not a minivae checkpoint (no meta/params arrays)")
            meta_arr = _read_npy(path, zf, members["meta"], "meta", max_bytes=MAX_META_BYTES)
            if meta_arr.dtype.kind != "U" or meta_arr.ndim != 0:
                raise _damaged(path, "malformed meta record")
            meta = _parse_meta(path, str(meta_arr))
            specs = expect(meta) if expect is not None else None
            arrays = {}
            for key, info in members.items():
                if key == "meta":
                    continue
                spec = None
                if specs is not None:
                    if key not in specs:
                        raise _damaged(path, f"unexpected array {key!r}")
                    spec = specs[key]
                bound = None
                if spec is not None and None not in spec.shape and not isinstance(spec.dtype, str):
                    bound = int(np.prod(spec.shape, dtype=object)) * np.dtype(spec.dtype).itemsize
                arrays[key] = _read_npy(path, zf, info, key, spec, bound)
            for key, spec in (specs or {}).items():
                if spec.required and key not in arrays:
                    raise _damaged(path, f"array {key!r} is missing")
    except MinivaeError:
        raise
    except _PARSE_ERRORS as e:
        raise MinivaeError(f"{path} cannot be read as a checkpoint ({type(e).__name__}: "
                           f"{_one_line(e)}); it is damaged or not a minivae checkpoint") from None
    params = arrays["params"]
    if params.ndim != 1 or params.dtype.kind != "f":
        raise _damaged(path, f"params has shape {params.shape} dtype {params.dtype}, not a flat "
                             "float buffer")
    opt = {k[4:]: a for k, a in arrays.items() if k.startswith("opt.")}
    extra = {k[6:]: a for k, a in arrays.items() if k.startswith("extra.")}
    return params, meta, opt, extra


def _one_line(e):
    return " ".join(str(e).split())[:120]


def _parse_meta(path, text):
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError):
        raise _damaged(path, "meta record is not valid JSON") from None
    if not isinstance(meta, dict):
        raise _damaged(path, "meta record is not a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise MinivaeError(f"{path} has checkpoint format {version!r}, this minivae reads "
                           f"format {FORMAT_VERSION}; use the minivae version that wrote it")
    return meta


def check_against(path, params, opt_arrays, model):
    """Check a loaded checkpoint's arrays against the model its config builds."""
    want = (model.buffer.size,)
    dt = np.dtype(model.dtype)
    for name, a in [("params", params)] + [(f"opt.{k}", v) for k, v in opt_arrays.items()]:
        if a.shape != want or a.dtype != dt:
            raise MinivaeError(f"{path}: array {name} has shape {a.shape} dtype {a.dtype}, the "
                               f"config needs {want} {dt}; the file does not match its config")
        if not np.isfinite(a).all():
            raise MinivaeError(f"{path}: array {name} holds NaN or infinite values; use an "
                               "earlier checkpoint")
