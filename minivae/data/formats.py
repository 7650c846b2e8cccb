"""Pure-NumPy readers for the two dataset file formats: IDX (MNIST, Fashion-MNIST) and .amat.

Both accept the file gzip-compressed or plain; gzip is recognised by its magic bytes 1f 8b,
never by the file name.  Both trust nothing in the file: every size is checked against the
bytes actually present *before* anything of that size is allocated, and every failure is a
one-line ``MinivaeError`` naming the file, what it holds, what was expected, and the fix.

IDX (LeCun's format, big-endian):

    bytes 0-3   magic 0x00000803 (uint8, 3 dims: images) or 0x00000801 (uint8, 1 dim: labels)
    then        one uint32 per dimension: (n, rows, cols) or (n,)
    then        n * rows * cols (or n) bytes, row-major

.amat (Larochelle & Murray's binarised MNIST): one image per line, 784 values '0' or '1'
separated by single spaces, each line ending in '\\n' (1568 bytes per line).
"""
import gzip
import os
import zlib

import numpy as np

from ..errors import MinivaeError

IDX_IMAGES = 0x00000803
IDX_LABELS = 0x00000801
AMAT_WIDTH = 784
_AMAT_LINE = 2 * AMAT_WIDTH          # 784 digits, 783 spaces, one newline
# Deflate cannot expand data by more than 1032:1, so a gzip file of c bytes holds at most about
# 1032 * c bytes; a header claiming more is lying and is refused before anything is allocated.
_MAX_GZIP_RATIO = 1032
_FIX = "delete it and download again"
_GZIP_ERRORS = (OSError, EOFError, zlib.error)      # gzip.BadGzipFile is an OSError


def _is_gzip(path):
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _open(path):
    """(binary file object, is_gzip, size of the file on disk)."""
    size = os.path.getsize(path)
    gz = _is_gzip(path)
    return (gzip.open(path, "rb") if gz else open(path, "rb")), gz, size


def _read_exact(f, n):
    """Up to n bytes from f, reading until EOF (a gzip stream may return short reads)."""
    chunks, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            break
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _readinto_exact(f, out):
    """Fill the uint8 array ``out`` from f; returns the number of bytes read (< out.size at EOF)."""
    view = memoryview(out).cast("B")
    got = 0
    while got < len(view):
        k = f.readinto(view[got:])
        if not k:
            break
        got += k
    return got


def read_idx(path):
    """An IDX file (gzip or raw) as uint8: images (n, rows, cols) or labels (n,).

    Checks the magic number, the dimensions, and that the payload holds exactly the number of
    bytes the header claims; a header claiming more than the file could hold is refused before
    allocating (for gzip: more than deflate's maximum expansion of the file's size).
    """
    path = os.fspath(path)
    try:
        f, gz, disk_size = _open(path)
    except OSError as e:
        raise MinivaeError(f"cannot read IDX file {path}: {e.strerror or e}") from None
    kind = "gzip-compressed IDX file" if gz else "IDX file"
    try:
        with f:
            head = _read_exact(f, 4)
            if len(head) < 4:
                raise MinivaeError(f"{path}: {kind} too short for an IDX header "
                                   f"({len(head)} bytes, needs at least 8); {_FIX}")
            magic = int.from_bytes(head, "big")
            if magic not in (IDX_IMAGES, IDX_LABELS):
                raise MinivaeError(
                    f"{path}: not an IDX image or label file (magic 0x{magic:08x}, expected "
                    f"0x{IDX_IMAGES:08x} for images or 0x{IDX_LABELS:08x} for labels); {_FIX}")
            ndim = 3 if magic == IDX_IMAGES else 1
            dims_raw = _read_exact(f, 4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise MinivaeError(f"{path}: {kind} header cut short ({4 + len(dims_raw)} "
                                   f"bytes, needs {4 + 4 * ndim}); {_FIX}")
            dims = tuple(int.from_bytes(dims_raw[4 * i:4 * i + 4], "big") for i in range(ndim))
            if ndim == 3 and (dims[1] == 0 or dims[2] == 0):
                raise MinivaeError(f"{path}: IDX image header claims {dims[1]}x{dims[2]} "
                                   f"pixels per image, needs at least 1x1; {_FIX}")
            header = 4 + 4 * ndim
            need = 1
            for d in dims:
                need *= d
            what = "x".join(map(str, dims))
            if gz:
                bound = _MAX_GZIP_RATIO * disk_size
                if need > bound:
                    raise MinivaeError(
                        f"{path}: IDX header claims {what} = {need} bytes of data, but a "
                        f"{disk_size}-byte gzip file holds at most {bound}; {_FIX}")
            else:
                got = disk_size - header
                if got != need:
                    raise MinivaeError(
                        f"{path}: {'truncated' if got < need else 'over-long'} IDX file: "
                        f"{got} bytes of data after the header, needs {need} ({what}); {_FIX}")
            out = np.empty(need, dtype=np.uint8)
            got = _readinto_exact(f, out)
            if got < need:
                raise MinivaeError(f"{path}: truncated {kind}: {got} bytes of data after the "
                                   f"header, needs {need} ({what}); {_FIX}")
            if gz:
                extra = 0
                while chunk := f.read(1 << 20):    # count what is left, in constant memory
                    extra += len(chunk)
                if extra:
                    raise MinivaeError(f"{path}: over-long {kind}: {need + extra} bytes of data "
                                       f"after the header, needs {need} ({what}); {_FIX}")
    except _GZIP_ERRORS as e:
        if not gz:
            raise MinivaeError(f"cannot read IDX file {path}: {e}") from None
        raise MinivaeError(f"{path}: corrupt {kind} ({type(e).__name__}: {e}); {_FIX}") from None
    return out.reshape(dims)


def _amat_line_error(path, buf, ends, i):
    """The one-line error for malformed line i (0-based) of an .amat buffer."""
    start = 0 if i == 0 else int(ends[i - 1]) + 1
    stop = int(ends[i]) if i < len(ends) else len(buf)
    line = bytes(buf[start:stop])
    values = line.split(b" ")
    if len(values) != AMAT_WIDTH:
        what = f"{len(values)} space-separated values"
    else:
        bad = next((j for j, v in enumerate(values) if v not in (b"0", b"1")), None)
        if bad is not None:
            what = f"value {bad + 1} is {values[bad][:20].decode('latin-1')!r}"
        else:
            what = "separators other than single spaces"
    return MinivaeError(f"{path}: line {i + 1}: {what}; every line must hold exactly "
                        f"{AMAT_WIDTH} values '0' or '1' separated by single spaces; {_FIX}")


def read_amat(path):
    """A binarised-MNIST .amat file (gzip or plain) as uint8 (n, 784) of 0s and 1s.

    Every line must be exactly 784 values '0'/'1' separated by single spaces (a missing final
    newline is tolerated).  Parsed vectorised: the bytes are viewed as an (n, 1568) array.
    """
    path = os.fspath(path)
    try:
        f, gz, _ = _open(path)
    except OSError as e:
        raise MinivaeError(f"cannot read .amat file {path}: {e.strerror or e}") from None
    try:
        with f:
            data = f.read()
    except _GZIP_ERRORS as e:
        if not gz:
            raise MinivaeError(f"cannot read .amat file {path}: {e}") from None
        raise MinivaeError(f"{path}: corrupt gzip-compressed .amat file "
                           f"({type(e).__name__}: {e}); {_FIX}") from None
    if not data:
        raise MinivaeError(f"{path}: empty .amat file, needs lines of {AMAT_WIDTH} values; {_FIX}")
    if not data.endswith(b"\n"):
        data += b"\n"
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size % _AMAT_LINE == 0 and (buf[_AMAT_LINE - 1::_AMAT_LINE] == 10).all():
        rows = buf.reshape(-1, _AMAT_LINE)
        values = rows[:, 0:_AMAT_LINE - 1:2]
        seps = rows[:, 1:_AMAT_LINE - 1:2]
        ok = ((values | 1) == ord("1")).all(axis=1) & (seps == ord(" ")).all(axis=1)
        if ok.all():
            return values - np.uint8(ord("0"))
        ends = np.arange(_AMAT_LINE - 1, buf.size, _AMAT_LINE)
        raise _amat_line_error(path, buf, ends, int(np.argmin(ok)))
    # Some line has the wrong length: find the first one.
    ends = np.flatnonzero(buf == 10)
    lengths = np.diff(ends, prepend=-1)          # bytes per line including its newline
    bad = np.flatnonzero(lengths != _AMAT_LINE)
    raise _amat_line_error(path, buf, ends, int(bad[0]))

