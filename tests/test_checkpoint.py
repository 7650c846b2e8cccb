"""Checkpoints: a round trip is exact, and nothing in a file is trusted.

A checkpoint is an uncompressed zip of .npy members (params, opt.*, extra.*, meta).  Every bad
file here must end in a one-line MinivaeError naming the file: never another exception, never a
pickle being run, never an allocation the file's own size does not pay for.  The fuzz tests feed
random bytes and single mutations of a valid checkpoint to the loader; a mutation either is
refused or loads exactly the original content (the zip CRC guards the data bytes).
"""
import io
import json
import os
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minivae import checkpoint
from minivae.data import Dataset
from minivae.errors import MinivaeError
from minivae.model import VAE
from minivae.rundir import CHECKPOINT, load_run
from minivae.train import TrainConfig, Trainer

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------------ helpers
def tiny_data(n=40, seed=0, binarize="dynamic"):
    rng = np.random.default_rng(seed)
    return Dataset("tiny", rng.random((n, 4), dtype=np.float32), None,
                   rng.random((8, 4), dtype=np.float32), (2, 2), binarize)


def tiny_run(run_dir, epochs=1, optimizer="adam", stop_after=None, **model_kw):
    """A finished (or, with stop_after, interrupted) run of a 4-3-1 VAE; returns the Trainer."""
    model = VAE(4, (3,), 1, seed=0, **model_kw)
    tr = Trainer(model, tiny_data(), TrainConfig(epochs=epochs, batch_size=16,
                                                 optimizer=optimizer), str(run_dir),
                 log=lambda m: None)
    tr.fit()
    return tr


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """(path, bytes, content) of a valid checkpoint, interrupted mid-epoch (so it has perm)."""
    d = tmp_path_factory.mktemp("good")
    model = VAE(4, (3,), 1, seed=0)
    tr = Trainer(model, tiny_data(), TrainConfig(epochs=2, batch_size=16), str(d),
                 log=lambda m: None)
    tr.fit()
    tr.step, tr.perm = 1, np.arange(40)[::-1].copy()      # a mid-epoch state
    tr.save()
    path = os.path.join(d, CHECKPOINT)
    with open(path, "rb") as f:
        raw = f.read()
    return path, raw, checkpoint.load(path)


def npy(a, allow_pickle=False):
    f = io.BytesIO()
    np.lib.format.write_array(f, a, allow_pickle=allow_pickle)
    return f.getvalue()


def npy_header(shape, descr, pad_to=None, data=b""):
    """An .npy member whose header claims shape/descr, followed by `data`."""
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"shape": shape, "fortran_order": False,
                                             "descr": descr})
    return f.getvalue() + data


def write_zip(path, members, compression=zipfile.ZIP_STORED):
    """members: name (without .npy) -> raw member bytes."""
    with zipfile.ZipFile(path, "w", compression) as z:
        for k, b in members.items():
            z.writestr(k + ".npy", b)
    return path


def members_of(content, meta=None):
    params, m, opt, extra = content
    out = {"params": npy(params), "meta": npy(np.array(json.dumps(meta or m)))}
    out.update({f"opt.{k}": npy(v) for k, v in opt.items()})
    out.update({f"extra.{k}": npy(v) for k, v in extra.items()})
    return out


def assert_refused(path, *needles):
    with pytest.raises(MinivaeError) as e:
        load_run(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


# ------------------------------------------------------------------------------------ round trip
def test_round_trip_is_exact_and_atomic(tmp_path):
    tr = tiny_run(tmp_path, epochs=2)
    model, meta, opt, extra = load_run(tmp_path)
    assert np.array_equal(model.buffer.data, tr.model.buffer.data)
    assert model.buffer.data.dtype == np.float32
    for k, v in tr.opt.state()[0].items():
        assert np.array_equal(opt[k], v)
    assert meta["epoch"] == 2 and meta["step"] == 0 and meta["format_version"] == 1
    assert meta["data_rng"] == tr.data_rng.bit_generator.state
    assert extra == {}                                   # an epoch boundary: no data order
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "metrics.jsonl"]   # no temp files


def test_float64_and_sgd_round_trip(tmp_path):
    tr = tiny_run(tmp_path, optimizer="sgd", dtype="float64", likelihood="gaussian",
                  learn_sigma="per-dim")
    model, meta, opt, _ = load_run(tmp_path)
    assert model.buffer.data.dtype == np.float64 and set(opt) == {"v"}
    assert np.array_equal(model.buffer.data, tr.model.buffer.data)


def test_the_loader_never_calls_np_load(good, monkeypatch):
    """np.load allocates what an .npy header claims; the loader must parse the zip itself."""
    def boom(*a, **k):
        raise AssertionError("np.load called")
    monkeypatch.setattr(np, "load", boom)
    load_run(good[0])


# ------------------------------------------------------------------------------------ bad files
def test_missing_file_and_directory(tmp_path):
    assert_refused(tmp_path / "nope.npz", "no checkpoint")
    assert_refused(tmp_path, "no checkpoint")                      # a run dir without one


@pytest.mark.parametrize("raw", [b"", b"garbage" * 10, b"PK\x03\x04" + b"\0" * 40,
                                 b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': "
                                 b"False, 'shape': (1000000000000,), }" + b" " * 40 + b"\n"],
                         ids=["empty", "text", "zip-magic", "bare-npy-claiming-1e12"])
def test_garbage(tmp_path, raw):
    p = tmp_path / "bad.npz"
    p.write_bytes(raw)
    assert_refused(p)


def test_a_bare_npy_file_is_refused(tmp_path):
    p = tmp_path / "x.npz"
    p.write_bytes(npy(np.zeros(10, np.float32)))
    assert_refused(p)


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, 0.999])
def test_truncated(tmp_path, good, cut):
    p = tmp_path / "t.npz"
    p.write_bytes(good[1][:int(len(good[1]) * cut)])
    assert_refused(p)


@pytest.mark.parametrize("version", [2, 0, None, "1", 1.5])
def test_wrong_format_version(tmp_path, good, version):
    meta = dict(good[2][1], format_version=version)
    p = write_zip(tmp_path / "v.npz", members_of(good[2], meta))
    assert_refused(p, "format")


def test_no_format_version(tmp_path, good):
    meta = {k: v for k, v in good[2][1].items() if k != "format_version"}
    assert_refused(write_zip(tmp_path / "v.npz", members_of(good[2], meta)), "format")


REQUIRED_META = ["model", "train", "dataset", "binarize", "dataset_args", "image_shape",
                 "epoch", "step", "opt", "data_rng"]


@pytest.mark.parametrize("key", REQUIRED_META)
def test_meta_missing_a_key(tmp_path, good, key):
    meta = {k: v for k, v in good[2][1].items() if k != key}
    assert_refused(write_zip(tmp_path / "m.npz", members_of(good[2], meta)), key)


def _set(meta, dotted, value):
    meta = json.loads(json.dumps(meta))
    *path, last = dotted.split(".")
    d = meta
    for p in path:
        d = d[p]
    if value is KeyError:
        del d[last]
    else:
        d[last] = value
    return meta


BAD_META = [
    ("model.hidden", [10 ** 9]),           # would allocate 4e12 bytes if trusted
    ("model.hidden", "abc"), ("model.hidden", []), ("model.hidden", [3, -1]),
    ("model.latent_dim", 0), ("model.latent_dim", True), ("model.data_dim", 5.0),
    ("model.activation", "swish"), ("model.likelihood", "poisson"), ("model.dtype", "int8"),
    ("model.dtype", "float64"),            # params are float32: shape/dtype check
    ("model.beta", -1.0), ("model.beta", "x"), ("model.learn_sigma", "sometimes"),
    ("model.samples", 0), ("model.objective", "wake-sleep"), ("model.extra_key", 1),
    ("model.seed", KeyError), ("model", [1, 2]),
    ("train.lr", "fast"), ("train.lr", -1), ("train.epochs", -3), ("train.optimizer", "lbfgs"),
    ("train.optimizer", "sgd"),            # opt arrays are Adam's m and v
    ("train.batch_size", 0), ("train.unknown", 1), ("train", "x"),
    ("dataset", 5), ("dataset_args.seed", -1), ("dataset_args", None),
    ("image_shape", [3, 3]), ("image_shape", "2x2"),
    ("epoch", -1), ("step", 1.5), ("opt.t", "many"), ("opt", None), ("opt.lr", float("inf")),
    ("data_rng.state.state", -5), ("data_rng.bit_generator", "MT19937"), ("data_rng", {}),
    ("noise_rng.state.inc", 2 ** 130), ("epoch_totals.sums", [1, 2]), ("epoch_totals.n", -1),
]


@pytest.mark.parametrize("key,value", BAD_META, ids=[f"{k}={str(v)[:12]}" for k, v in BAD_META])
def test_bad_meta_values(tmp_path, good, key, value):
    meta = _set(good[2][1], key, value)
    p = write_zip(tmp_path / "m.npz", members_of(good[2], meta))
    tracemalloc.start()
    try:
        assert_refused(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak


@pytest.mark.parametrize("text", ["not json", "[1, 2]", "1" * 5000, "[" * 100000 + "]" * 100000,
                                  '{"format_version": 1, "a": NaN'],
                         ids=["text", "list", "huge-int", "deep", "torn"])
def test_meta_not_a_json_object(tmp_path, good, text):
    m = members_of(good[2])
    m["meta"] = npy(np.array(text))
    assert_refused(write_zip(tmp_path / "j.npz", m))


def test_meta_not_a_string(tmp_path, good):
    m = members_of(good[2])
    m["meta"] = npy(np.zeros(3))
    assert_refused(write_zip(tmp_path / "s.npz", m), "meta")


def test_object_array_is_never_unpickled(tmp_path, good):
    flag = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (open, (str(flag), "w"))

    for name in ("params", "opt.m", "extra.perm", "meta"):
        m = members_of(good[2])
        m[name] = npy(np.array([Evil(), 1], dtype=object), allow_pickle=True)
        p = write_zip(tmp_path / f"o-{name}.npz", m)
        assert_refused(p, "pickle")
        assert not flag.exists()


@pytest.mark.parametrize("name,array", [
    ("params", np.zeros(5, np.float32)),                    # wrong length
    ("params", None),                                       # float64 instead of float32
    ("params", "2d"),                                       # right size, wrong rank
    ("opt.m", np.zeros(3, np.float32)),
    ("extra.perm", np.zeros((2, 2), np.int64)),
    ("extra.perm", np.zeros(40, np.float32)),
    ("extra.evil", np.zeros(3)),                            # an array the config does not name
])
def test_arrays_checked_against_the_config(tmp_path, good, name, array):
    m = members_of(good[2])
    params = good[2][0]
    if array is None:
        array = params.astype(np.float64)
    elif isinstance(array, str):
        array = params[:params.size // 2 * 2].reshape(2, -1)
    m[name] = npy(array)
    assert_refused(write_zip(tmp_path / "a.npz", m))


@pytest.mark.parametrize("name", ["params", "opt.m", "opt.v"])
def test_missing_array(tmp_path, good, name):
    m = members_of(good[2])
    del m[name]
    assert_refused(write_zip(tmp_path / "a.npz", m), name)


@pytest.mark.parametrize("name", ["params", "opt.v"])
def test_nonfinite_values(tmp_path, good, name):
    params, meta, opt, extra = good[2]
    bad = (params if name == "params" else opt["v"]).copy()
    bad[3] = np.nan
    m = members_of(good[2])
    m[name] = npy(bad)
    assert_refused(write_zip(tmp_path / "n.npz", m), "NaN")


def test_header_claiming_1e12_elements_is_refused_before_allocating(tmp_path, good):
    m = members_of(good[2])
    m["params"] = npy_header((10 ** 12,), "<f4", data=b"\0" * 64)
    m["extra.perm"] = npy_header((10 ** 12,), "<i8", data=b"\0" * 64)   # shape the file decides
    p = write_zip(tmp_path / "h.npz", m)
    for victim in ("params", "extra.perm"):
        mm = dict(members_of(good[2]))
        mm[victim] = m[victim]
        write_zip(p, mm)
        tracemalloc.start()
        try:
            assert_refused(p)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 32 << 20, peak


def test_zip_entry_claiming_a_huge_size_is_refused_before_reading(tmp_path, good):
    raw = bytearray(good[1])
    # every central-directory record: set compressed and uncompressed sizes to 2 GiB - 1
    i = raw.find(b"PK\x01\x02")
    assert i > 0
    while i >= 0:
        raw[i + 20:i + 28] = struct.pack("<II", 0x7FFFFFFF, 0x7FFFFFFF)
        i = raw.find(b"PK\x01\x02", i + 4)
    p = tmp_path / "z.npz"
    p.write_bytes(bytes(raw))
    tracemalloc.start()
    try:
        assert_refused(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak


def test_compressed_and_duplicated_members(tmp_path, good):
    m = members_of(good[2])
    assert_refused(write_zip(tmp_path / "c.npz", m, zipfile.ZIP_DEFLATED), "compressed")
    p = tmp_path / "d.npz"
    with zipfile.ZipFile(p, "w") as z:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")            # zipfile warns about the duplicate
            for k, b in list(m.items()) + [("params", m["params"])]:
                z.writestr(k + ".npy", b)
    assert_refused(p, "twice")


def test_too_many_members(tmp_path, good):
    m = members_of(good[2])
    m.update({f"extra.x{i}": npy(np.zeros(1)) for i in range(80)})
    assert_refused(write_zip(tmp_path / "many.npz", m), "members")


def test_save_refuses_what_it_could_not_read_back(tmp_path):
    with pytest.raises(MinivaeError, match="numeric"):
        checkpoint.save(tmp_path / "x.npz", np.zeros(3, np.float32), {},
                        extra_arrays={"bad": np.array(["a"], dtype=object)})
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------ fuzzing
@FUZZ
@given(raw=st.binary(max_size=2048))
def test_fuzz_random_bytes(tmp_path_factory, raw):
    p = tmp_path_factory.mktemp("fz") / "r.npz"
    p.write_bytes(raw)
    with pytest.raises(MinivaeError):
        load_run(p)
    with pytest.raises(MinivaeError):
        checkpoint.load(p)


def _interesting_offsets(raw):
    """Offsets of the structure: zip local headers + .npy headers, and the central directory."""
    offs = set(range(0, 200))
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        for info in z.infolist():
            offs.update(range(info.header_offset, min(info.header_offset + 200, len(raw))))
    cd = raw.rfind(b"PK\x05\x06")
    first = raw.find(b"PK\x01\x02")
    offs.update(range(first, len(raw)))
    offs.update(range(cd, len(raw)))
    return sorted(o for o in offs if 0 <= o < len(raw))


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_checkpoint(tmp_path_factory, good, data):
    path, raw, (params, meta, opt, extra) = good
    offs = _interesting_offsets(raw)
    kind = data.draw(st.sampled_from(["flip", "overwrite", "truncate", "insert", "delete"]))
    b = bytearray(raw)
    i = data.draw(st.sampled_from(offs))
    if kind == "flip":
        b[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "overwrite":
        chunk = data.draw(st.binary(min_size=1, max_size=8))
        b[i:i + len(chunk)] = chunk
    elif kind == "truncate":
        del b[i:]
    elif kind == "insert":
        b[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    else:
        del b[i:i + data.draw(st.integers(1, 16))]
    p = tmp_path_factory.mktemp("fm") / "m.npz"
    p.write_bytes(bytes(b))
    try:
        model, m2, opt2, extra2 = load_run(p)
    except MinivaeError as e:
        assert "\n" not in str(e) and str(p) in str(e)
        return
    # accepted: then it must be exactly the original content
    assert np.array_equal(model.buffer.data, params)
    assert m2 == meta
    assert opt2.keys() == opt.keys() and all(np.array_equal(opt2[k], opt[k]) for k in opt)
    assert extra2.keys() == extra.keys() and all(np.array_equal(extra2[k], extra[k]) for k in extra)


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_meta(tmp_path_factory, good, data):
    """Valid zip, mutated JSON meta: refused or accepted, never another exception."""
    content = good[2]
    text = json.dumps(content[1])
    i = data.draw(st.integers(0, len(text) - 1))
    j = data.draw(st.integers(i, min(len(text), i + 12)))
    repl = data.draw(st.text(alphabet='{}[]":,0123456789-.eEnulltrfasxyz ', max_size=8))
    m = members_of(content)
    m["meta"] = npy(np.array(text[:i] + repl + text[j:]))
    p = write_zip(tmp_path_factory.mktemp("mm") / "m.npz", m)
    try:
        model, meta, opt, extra = load_run(p)
    except MinivaeError:
        return
    assert np.array_equal(model.buffer.data, content[0])
