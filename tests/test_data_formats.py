"""read_idx and read_amat on small files written here: good, truncated, lying, absurd, fuzzed."""
import gzip
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from minivae.data import read_amat, read_idx
from minivae.errors import MinivaeError

FIX = "delete it and download again"
fuzz = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def idx_bytes(array, magic=None):
    array = np.asarray(array, np.uint8)
    if magic is None:
        magic = 0x803 if array.ndim == 3 else 0x801
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return head + array.tobytes()


def write(path, data, gz):
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def expect_error(fn, path, *words):
    with pytest.raises(MinivaeError) as e:
        fn(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, images, gz):
    labels = np.arange(7, dtype=np.uint8)
    got = read_idx(write(tmp_path / "im", idx_bytes(images), gz))
    assert got.dtype == np.uint8 and got.shape == (7, 5, 3)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "lab", idx_bytes(labels), gz)), labels)


def test_idx_gzip_detected_by_magic_not_name(tmp_path, images):
    raw_named_gz = write(tmp_path / "x.gz", idx_bytes(images), gz=False)
    gz_named_raw = write(tmp_path / "x-idx3-ubyte", idx_bytes(images), gz=True)
    np.testing.assert_array_equal(read_idx(raw_named_gz), images)
    np.testing.assert_array_equal(read_idx(gz_named_raw), images)


def test_idx_empty_count(tmp_path):
    got = read_idx(write(tmp_path / "e", idx_bytes(np.zeros((0, 2, 2))), gz=False))
    assert got.shape == (0, 2, 2)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("cut", [1, 15, 40])
def test_idx_truncated(tmp_path, images, gz, cut):
    data = idx_bytes(images)[:-cut]            # 16-byte header + 105 bytes of pixels
    msg = expect_error(read_idx, write(tmp_path / "t", data, gz), "truncated", FIX)
    assert "needs 105" in msg


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_cut_short(tmp_path, images, gz):
    expect_error(read_idx, write(tmp_path / "h", idx_bytes(images)[:10], gz), "header", FIX)
    expect_error(read_idx, write(tmp_path / "m", b"\0\0\x08", gz), "header", FIX)
    expect_error(read_idx, write(tmp_path / "z", b"", gz=False), "header", FIX)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_over_long(tmp_path, images, gz):
    msg = expect_error(read_idx, write(tmp_path / "o", idx_bytes(images) + b"\0", gz),
                       "over-long", FIX)
    assert "105" in msg                         # what the header needs


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("claim", [6, 8])
def test_idx_header_lies_about_count(tmp_path, images, gz, claim):
    data = bytearray(idx_bytes(images))
    data[4:8] = claim.to_bytes(4, "big")        # 7 images present
    msg = expect_error(read_idx, write(tmp_path / "lie", bytes(data), gz), FIX)
    assert ("over-long" if claim < 7 else "truncated") in msg
    assert f"needs {claim * 15}" in msg


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("magic", [0x802, 0x803 | 0x0C00, 0x0803_0000, 0])
def test_idx_wrong_magic(tmp_path, images, gz, magic):
    msg = expect_error(read_idx, write(tmp_path / "mg", idx_bytes(images, magic), gz),
                       "magic", FIX)
    assert f"0x{magic:08x}" in msg


@pytest.mark.parametrize("gz", [False, True])
def test_idx_zero_sized_images(tmp_path, gz):
    data = (0x803).to_bytes(4, "big") + (5).to_bytes(4, "big") + bytes(8)
    expect_error(read_idx, write(tmp_path / "zero", data, gz), "1x1", FIX)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dims", [(10**9, 1000, 1000), (2**32 - 1, 2**32 - 1, 2**32 - 1)])
def test_idx_absurd_header_refused_before_allocating(tmp_path, gz, dims):
    head = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    path = write(tmp_path / "absurd", head + bytes(1000), gz)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        msg = expect_error(read_idx, path, FIX)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 20      # a guard against a hang, not a speed test
    assert peak < 1 << 20                       # nothing near the claimed size was allocated
    assert str(dims[0] * dims[1] * dims[2]) in msg


def test_idx_raw_file_starting_like_gzip(tmp_path, images):
    # a raw file whose first bytes are 1f 8b is taken for gzip, and fails as a corrupt one
    expect_error(read_idx, write(tmp_path / "r", idx_bytes(images, 0x1F8B0803), gz=False),
                 "corrupt gzip", FIX)


def test_idx_corrupt_gzip_stream(tmp_path, images):
    data = bytearray(gzip.compress(idx_bytes(images), mtime=0))
    data[-8:-4] = bytes(4)                      # wrong CRC in the trailer
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(data))
    expect_error(read_idx, path, "corrupt", FIX)


def test_idx_missing_file(tmp_path):
    expect_error(read_idx, tmp_path / "nope", "cannot read")


# -------------------------------------------------------------------------------- .amat
def amat_bytes(bits):
    return b"".join(b" ".join(b"%d" % v for v in row) + b"\n" for row in bits)


@pytest.fixture
def bits():
    return np.random.default_rng(1).integers(0, 2, (6, 784), dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True])
def test_amat_roundtrip(tmp_path, bits, gz):
    got = read_amat(write(tmp_path / "a.amat", amat_bytes(bits), gz))
    assert got.dtype == np.uint8 and got.shape == (6, 784)
    np.testing.assert_array_equal(got, bits)


def test_amat_missing_final_newline(tmp_path, bits):
    got = read_amat(write(tmp_path / "a.amat", amat_bytes(bits)[:-1], gz=False))
    np.testing.assert_array_equal(got, bits)


def bad_line(bits, i, line):
    lines = amat_bytes(bits).split(b"\n")
    lines[i] = line
    return b"\n".join(lines)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("line, words", [
    (b" ".join([b"0"] * 783 + [b"2"]), ["line 3", "value 784", "'2'"]),
    (b" ".join([b"1"] * 783), ["line 3", "783 space-separated values"]),          # too narrow
    (b" ".join([b"1"] * 785), ["line 3", "785 space-separated values"]),          # too wide
    (b" ".join([b"0"] * 782) + b"  0", ["line 3", "value 783 is ''"]),            # double space
    (b" ".join([b"0"] * 783) + b" 10", ["line 3", "value 784", "'10'"]),
    (b" ".join([b"0"] * 784) + b"\r", ["line 3", "value 784"]),                   # CRLF
    (b"", ["line 3", "1 space-separated values"]),                                # blank line
    (b"\t".join([b"0"] * 784), ["line 3", "1 space-separated values"]),
    (b" ".join([b"0"] * 783 + [b"x"]), ["line 3", "value 784", "'x'"]),           # same length
])
def test_amat_malformed_line(tmp_path, bits, gz, line, words):
    expect_error(read_amat, write(tmp_path / "bad.amat", bad_line(bits, 2, line), gz),
                 FIX, *words)


def test_amat_tab_separators_of_right_length(tmp_path, bits):
    row = b"\t".join([b"0"] * 784)              # 1568 bytes with its newline, like a good line
    expect_error(read_amat, write(tmp_path / "tab.amat", bad_line(bits, 4, row), gz=False),
                 "line 5", "separators", FIX)


def test_amat_empty_and_missing(tmp_path):
    expect_error(read_amat, write(tmp_path / "empty.amat", b"", gz=False), "empty", FIX)
    expect_error(read_amat, tmp_path / "nope.amat", "cannot read")


def test_amat_corrupt_gzip(tmp_path, bits):
    data = gzip.compress(amat_bytes(bits), mtime=0)
    path = tmp_path / "cut.amat.gz"
    path.write_bytes(data[: len(data) // 2])
    expect_error(read_amat, path, "corrupt", FIX)


# --------------------------------------------------------------------------------- fuzz
def check_idx_result(result, raw):
    """A result read_idx returned must be exactly what the (decompressed) bytes encode."""
    assert result.dtype == np.uint8 and result.ndim in (1, 3)
    assert idx_bytes(result) == raw


def gunzip_or_none(data):
    try:
        return gzip.decompress(data)
    except Exception:
        return None


@fuzz
@given(data=st.binary(max_size=300), gz=st.booleans())
def test_fuzz_idx_random_bytes(tmp_path, data, gz):
    path = write(tmp_path / "fuzz", data, gz)
    try:
        result = read_idx(path)
    except MinivaeError:
        return
    check_idx_result(result, data)


mutation = st.tuples(st.sampled_from(["set", "insert", "delete", "truncate"]),
                     st.integers(0, 10**6), st.integers(0, 255))


def mutate(data, edits):
    data = bytearray(data)
    for op, pos, value in edits:
        i = pos % (len(data) + 1)
        if op == "set" and i < len(data):
            data[i] = value
        elif op == "insert":
            data.insert(i, value)
        elif op == "delete" and i < len(data):
            del data[i]
        elif op == "truncate":
            del data[i:]
    return bytes(data)


@fuzz
@given(edits=st.lists(mutation, min_size=1, max_size=4), gz=st.booleans(),
       after_gzip=st.booleans(), labels=st.booleans())
def test_fuzz_idx_mutated(tmp_path, edits, gz, after_gzip, labels):
    arr = np.arange(24, dtype=np.uint8)
    arr = arr if labels else arr.reshape(2, 3, 4)
    raw = idx_bytes(arr)
    if gz and after_gzip:                       # corrupt the compressed stream itself
        data = mutate(gzip.compress(raw, mtime=0), edits)
        (tmp_path / "m").write_bytes(data)
        raw = gunzip_or_none(data) if data[:2] == b"\x1f\x8b" else data
    else:
        raw = mutate(raw, edits)
        write(tmp_path / "m", raw, gz)
    try:
        result = read_idx(tmp_path / "m")
    except MinivaeError:
        return
    assert raw is not None                      # an undecodable stream must not give a result
    check_idx_result(result, raw)


def check_amat_result(result, text):
    assert result.dtype == np.uint8 and result.ndim == 2 and result.shape[1] == 784
    assert set(np.unique(result)) <= {0, 1}
    assert amat_bytes(result) == (text if text.endswith(b"\n") else text + b"\n")


@fuzz
@given(data=st.binary(max_size=3200), gz=st.booleans())
def test_fuzz_amat_random_bytes(tmp_path, data, gz):
    path = write(tmp_path / "f.amat", data, gz)
    try:
        result = read_amat(path)
    except MinivaeError:
        return
    check_amat_result(result, data)


@fuzz
@given(edits=st.lists(mutation, max_size=3), gz=st.booleans(),
       flips=st.lists(st.integers(0, 3 * 784 - 1), max_size=3))
def test_fuzz_amat_mutated(tmp_path, bits, edits, gz, flips):
    text = bytearray(amat_bytes(bits[:3]))
    for f in flips:                              # value flips keep the file valid
        text[2 * f] ^= 1                         # '0' <-> '1'
    text = mutate(bytes(text), edits)
    path = write(tmp_path / "m.amat", text, gz)
    try:
        result = read_amat(path)
    except MinivaeError:
        return
    check_amat_result(result, text)
