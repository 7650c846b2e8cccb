"""The run directory: its files and their format, each checked before it is used, and the lock
that keeps two runs out of one directory.

The files
    config.json        the resolved model and training configuration, for people (written once,
                       atomically: write_config; resuming reads the checkpoint's meta instead)
    metrics.jsonl      one JSON object per epoch (epoch 0: before training): train and held-out
                       loss, distortion -E_q log p(x|z) and KL (nats per example), wall time;
                       read_metrics, append_metrics, trim_metrics
    checkpoint.npz     the latest checkpoint (atomic, pickle-free: checkpoint.py), with a meta
                       record; check_meta validates it field by field, expected_arrays gives
                       every array's name, shape and dtype from it, load_run builds the model
    evals/             one JSON file per ``minivae eval`` (record_eval)
    *.png              figures (plots.py)

A Trainer writes these (train.py); everything that reads them goes through this module.  Runs
written by older versions load: optional model keys take their old defaults (OPTIONAL_MODEL_KEYS)
and metric names their new ones (RENAMED).

The lock (the design requirements of issue 10)
  * Two runs never write into one directory.  A new run creates its directory with one
    ``os.mkdir`` (an existing, empty folder is accepted) and then takes the lock; a second run,
    fresh or ``--resume``, finds the lock held and stops with a one-line MinivaeError before it
    reads or writes anything there.
  * The lock is ``flock`` on the file ``.minivae.lock`` inside the directory, which records the
    holder (pid, host, start time).  On a file system without locks the run goes on, unlocked,
    after a warning.  The kernel drops a flock when its process dies, however it
    dies, so a lock file whose flock is free was left by a dead process: it is taken over and
    reported (a stale lock), never obeyed.  Releasing removes the file, on every exit path that
    runs Python code; after a SIGKILL the file stays and the next run reports it.
  * A lock taken by the process that holds it already (the CLI, then Trainer.fit) is counted,
    not taken twice: locks are per process and per directory.
  * When the lock is first taken, temporary files that an interrupted atomic write left behind
    (``.tmp-XXXXXXXX<name>`` for checkpoint.npz, metrics.jsonl and config.json, the names
    checkpoint.atomic_write gives them) are removed: while we hold the lock no other writer can
    be using them.  Nothing else in the directory is touched.
"""
import errno
import fcntl
import json
import math
import os
import re
import socket
import stat
import time
from dataclasses import fields

import numpy as np

from . import checkpoint
from .backend import resolve_dtype, to_device
from .config import TrainConfig, is_count, is_int, is_real
from .conv import CONV_KEYS, ConvArch
from .decoders import make_likelihood
from .errors import MinivaeError
from .layers import mlp_shapes
from .model import VAE
from .optim import make_optimizer
from .params import ParamBuffer
from .philox import Philox

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
EVALS = "evals"

LOCK = ".minivae.lock"
TEMPORARY = re.compile(r"\.tmp-[A-Za-z0-9_]{8}(checkpoint\.npz|metrics\.jsonl|config\.json)\Z")
_MAX_LOCK_BYTES = 4096            # what a lock file's record may take to be read

_held = {}                        # realpath -> [fd, count, path] of the locks this process holds


class RunDirBusy(MinivaeError):
    """Another live process holds the run directory's lock."""


def create(path):
    """Make a new run directory (atomically: one os.mkdir) and return its path.

    An existing empty folder is accepted (the lock taken next decides between two runs that
    both found it empty); a non-empty one, or a file, is refused without touching it."""
    path = os.fspath(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        os.mkdir(path)
        return path
    except FileExistsError:
        pass
    except OSError as e:
        raise MinivaeError(f"cannot create run directory {path}: {e.strerror or e}") from None
    if not os.path.isdir(path) or os.listdir(path):
        raise MinivaeError(_exists_message(path))
    return path


def _exists_message(path):
    who = holder(path)
    if who is not None:
        return (f"run directory {path} is in use by {_describe(who)}; wait for it to finish or "
                "choose another --out")
    return (f"run directory {path} already exists; choose another --out, or continue it with "
            f"--resume {path}")


def check_new(path):
    """Refuse a run directory that holds anything but our lock (called with the lock held:
    another run may have filled it between create() and the lock)."""
    if set(os.listdir(path)) - {LOCK}:
        raise MinivaeError(f"run directory {path} already exists; choose another --out, or "
                           f"continue it with --resume {path}")


def _describe(info):
    if not isinstance(info, dict):
        return "another process"
    pid, host, started = info.get("pid"), info.get("host"), info.get("started")
    text = f"process {pid}" if isinstance(pid, int) else "another process"
    if isinstance(host, str) and host != socket.gethostname():
        text += f" on {host[:64]}"
    if isinstance(started, str):
        text += f" (started {started[:40]})"
    return text


def _read_record(fd):
    try:
        raw = os.pread(fd, _MAX_LOCK_BYTES, 0)
    except OSError:
        return None
    if not raw.strip():
        return None
    try:
        info = json.loads(raw)
    except (ValueError, UnicodeError, RecursionError):
        return {}
    return info if isinstance(info, dict) else {}


def holder(path):
    """The record of the live process holding path's lock, or None when it is free.  Reads
    only; creates nothing."""
    try:
        fd = os.open(os.path.join(path, LOCK), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_record(fd) or {}
        except OSError:
            return None
        return None
    finally:
        os.close(fd)


class lock:
    """``with lock(run_dir, log):`` holds the run directory's lock for the block.

    Raises RunDirBusy (a MinivaeError) when a live process holds it.  A lock left by a dead
    process is taken over and reported through log; so are the stale temporary files removed
    when this process first takes the lock."""

    def __init__(self, run_dir, log=None):
        self.run_dir, self.log = os.fspath(run_dir), log or (lambda msg: None)
        self.key = None

    def __enter__(self):
        key = os.path.realpath(self.run_dir)
        if key in _held:
            _held[key][1] += 1
        else:
            fd = _acquire(self.run_dir, self.log)
            _held[key] = [fd, 1, os.path.join(self.run_dir, LOCK)]
            clean_temporaries(self.run_dir, self.log)
        self.key = key
        return self

    def __exit__(self, *exc):
        entry = _held[self.key]
        entry[1] -= 1
        if entry[1] == 0:
            del _held[self.key]
            fd, _, path = entry
            try:
                os.unlink(path)          # while still holding it: see _acquire's inode check
            except OSError:
                pass
            os.close(fd)
        return False


def _acquire(run_dir, log):
    path = os.path.join(run_dir, LOCK)
    for _ in range(100):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
        except FileNotFoundError:
            raise MinivaeError(f"run directory {run_dir} does not exist; pass the folder of a "
                               "run (minivae train --out)") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise MinivaeError(f"{path} is a symbolic link, not minivae's lock file; remove "
                                   "it") from None
            raise MinivaeError(f"cannot lock run directory {run_dir}: {e.strerror or e}; it "
                               "must be a folder you can write to") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise MinivaeError(f"{path} is not a regular file; remove it (it is minivae's "
                                   "lock file)")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunDirBusy(f"run directory {run_dir} is in use by "
                                 f"{_describe(_read_record(fd))}; wait for it to finish (or stop "
                                 "it) before starting another run there") from None
            except OSError as e:          # ENOLCK, EOPNOTSUPP: a file system without locks
                log(f"{run_dir}: warning: cannot lock it ({e.strerror or e}: the file system "
                    "does not support locks), so a second run into it is not prevented")
            try:                  # the holder we waited for may have removed the file
                same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            old = _read_record(fd)
            if old is not None:
                log(f"{run_dir}: the lock of {_describe(old)} was stale (that process is no "
                    "longer running); taken over")
            record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, record + b"\n", 0)
            return fd
        except BaseException:
            os.close(fd)
            raise
    raise MinivaeError(f"cannot lock run directory {run_dir}: its lock file keeps changing")


def clean_temporaries(run_dir, log=None):
    """Remove the temporary files an interrupted atomic write left in run_dir; returns their
    names.  Call it with the lock held.  Only regular files with atomic_write's names go."""
    removed, size = [], 0
    try:
        names = os.listdir(run_dir)
    except OSError:
        return removed
    for name in names:
        if not TEMPORARY.match(name):
            continue
        p = os.path.join(run_dir, name)
        try:
            st = os.lstat(p)
            if not stat.S_ISREG(st.st_mode):
                continue
            os.unlink(p)
        except OSError:
            continue
        removed.append(name)
        size += st.st_size
    if removed and log is not None:
        log(f"{run_dir}: removed {len(removed)} temporary file{'s' * (len(removed) > 1)} "
            f"({size / 1e6:.1f} MB) left by an interrupted write")
    return sorted(removed)


# ================================================================================ the files
# config.json, metrics.jsonl, checkpoint.npz: what each holds, and the checks a file must pass
# before anything in it is used (nothing in a run directory is trusted).
MODEL_KEYS = ("data_dim", "hidden", "latent_dim", "activation", "likelihood", "beta", "dtype",
              "seed", "device", "sigma", "learn_sigma", "objective", "samples", "estimator",
              "baseline", "gaussian_mean", "sigma_min")
OPTIONAL_MODEL_KEYS = {"estimator": "reparam", "baseline": "none",   # absent from older runs
                       "gaussian_mean": "identity", "sigma_min": 1.0 / 256}
DISCRETE_MODEL_KEYS = ("latent", "data_dim", "hidden", "latent_dim", "activation", "dtype", "seed",
                       "device", "samples", "estimator", "baseline", "temperature")


def model_from_config(cfg):
    """The model a saved config describes: a VAE, or a DiscreteVAE (latent 'bernoulli')."""
    if cfg.get("latent") == "bernoulli":
        from .discrete import DiscreteVAE
        return DiscreteVAE(**{k: v for k, v in cfg.items() if k != "latent"})
    return VAE(**cfg)


def param_shapes(where, cfg):
    """name -> shape of the parameters the model config describes, computed without building
    the model (so a hostile config cannot make us allocate): the layout of VAE.__init__,
    encoder D -> H1.. -> 2Z, decoder Z -> ..H1 -> D, then the likelihood's own parameters."""
    discrete = isinstance(cfg, dict) and cfg.get("latent") == "bernoulli"
    conv = isinstance(cfg, dict) and cfg.get("arch") == "conv" and not discrete
    keys, optional = (DISCRETE_MODEL_KEYS, ()) if discrete else (MODEL_KEYS, OPTIONAL_MODEL_KEYS)
    keys = set(keys) | (set(CONV_KEYS) if conv else set())
    if not isinstance(cfg, dict) or not (keys - set(optional) <= set(cfg) <= keys):
        got = sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__
        raise MinivaeError(f"{where}: its model config has keys {got}, needs "
                           f"{sorted(keys)}; the file is damaged or from another program")
    D, Z, H = cfg["data_dim"], cfg["latent_dim"], cfg["hidden"]
    if not (is_int(D, 1) and is_int(Z, 1) and isinstance(H, list) and len(H) <= 64
            and all(is_int(h, 1) for h in H)):
        raise MinivaeError(f"{where}: its model config has data_dim {D!r}, latent_dim {Z!r}, "
                           f"hidden {H!r}; each must be positive integers (hidden: a list of at "
                           "most 64, empty for the linear model)")
    if discrete:
        try:
            resolve_dtype(cfg["dtype"])
        except MinivaeError as e:
            raise MinivaeError(f"{where}: its model config is invalid: {e}") from None
        from .discrete import discrete_param_shapes
        return discrete_param_shapes(cfg)
    try:
        resolve_dtype(cfg["dtype"])
        later = [cfg.get(k, OPTIONAL_MODEL_KEYS[k]) for k in ("gaussian_mean", "sigma_min")]
        make_likelihood("gaussian", cfg["sigma"], cfg["learn_sigma"], *later)  # checked for any
        lik = make_likelihood(cfg["likelihood"], cfg["sigma"], cfg["learn_sigma"], *later)
    except (MinivaeError, TypeError) as e:
        raise MinivaeError(f"{where}: its model config is invalid: {e}") from None
    if conv:
        try:
            arch = ConvArch(cfg["image_shape"], cfg["channels"], cfg["kernel"], cfg["stride"],
                            cfg["padding"], H, Z, outputs=lik.out_features(D) // D)
        except MinivaeError as e:
            raise MinivaeError(f"{where}: its model config is invalid: {e}") from None
        if arch.data_dim != D:
            raise MinivaeError(f"{where}: its image_shape {cfg['image_shape']!r} does not hold "
                               f"data_dim {D} values")
        return {**arch.param_shapes(), **lik.param_shapes(D)}
    return {**mlp_shapes("enc", (D, *H, 2 * Z)),
            **mlp_shapes("dec", (Z, *H[::-1], lik.out_features(D))), **lik.param_shapes(D)}


def _short(v, n=40):
    text = str(v)
    return text if len(text) <= n else text[:n] + "..."


def _check_state(where, name, s):
    ok = (isinstance(s, dict) and set(s) == {"bit_generator", "state", "has_uint32", "uinteger"}
          and s["bit_generator"] == "PCG64" and isinstance(s["state"], dict)
          and set(s["state"]) == {"state", "inc"}
          and all(is_int(v) and v < 2 ** 128 for v in s["state"].values())
          and s["has_uint32"] in (0, 1) and is_int(s["uinteger"]) and s["uinteger"] < 2 ** 32)
    if not ok:
        raise MinivaeError(f"{where}: its {name} generator state is malformed; the file is damaged")


def check_meta(where, meta):
    """Check every field of a checkpoint's meta that resuming, eval and sample use."""
    need = ("model", "train", "dataset", "binarize", "dataset_args", "image_shape", "epoch",
            "step", "opt", "data_rng")
    missing = [k for k in need if k not in meta]
    if missing:
        raise MinivaeError(f"{where}: its meta record lacks {', '.join(missing)}; the file is "
                           "damaged or not written by minivae train")
    shapes = param_shapes(where, meta["model"])
    t = meta["train"]
    names = {f.name for f in fields(TrainConfig)}
    if not isinstance(t, dict) or not set(t) <= names:
        raise MinivaeError(f"{where}: its training config is not a mapping of "
                           f"{', '.join(sorted(names))}; the file is damaged")
    try:
        TrainConfig(**t).check()
    except MinivaeError as e:
        raise MinivaeError(f"{where}: its training config is invalid ({e})") from None
    d = meta["dataset_args"]          # {} for a Trainer made in Python without them
    if not (isinstance(meta["dataset"], str) and isinstance(meta["binarize"], str)
            and isinstance(d, dict) and (d == {} or (
                isinstance(d.get("binarize"), str) and is_int(d.get("valid_size"))
                and is_int(d.get("seed"))
                and (d.get("data_dir") is None or isinstance(d.get("data_dir"), str))))):
        raise MinivaeError(f"{where}: its dataset record is malformed (dataset, binarize, "
                           "dataset_args with binarize, valid_size, seed, data_dir)")
    for key in ("path", "test"):          # a run on the user's own data (minivae.data.user)
        sha = d.get(f"{key}_sha256" if key == "test" else "sha256")
        if key in d and not (isinstance(d[key], str) and isinstance(sha, str) and len(sha) == 64
                             and all(c in "0123456789abcdef" for c in sha)):
            raise MinivaeError(f"{where}: its dataset record's {key} and sha256 are malformed; "
                               "the file is damaged")
    shape = meta["image_shape"]
    if not (isinstance(shape, list) and shape and all(is_int(s, 1) for s in shape)
            and math.prod(shape) == meta["model"]["data_dim"]):
        raise MinivaeError(f"{where}: image_shape {str(shape)[:80]} does not match data_dim "
                           f"{meta['model']['data_dim']}; the file is damaged")
    if not (len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3))):
        raise MinivaeError(f"{where}: image_shape {str(shape)[:80]} is not [height, width] or "
                           "[height, width, 1 or 3 channels]; the file is damaged")
    for k in ("epoch", "step", "global_step"):
        if not is_count(meta.get(k, 0)):
            raise MinivaeError(f"{where}: {k} must be an integer in [0, 2^63), got "
                               f"{str(meta.get(k))[:40]}; the file is damaged")
    o = meta["opt"]
    if isinstance(o, dict) and is_int(o.get("t")) and not is_count(o["t"]):
        raise MinivaeError(f"{where}: opt.t (the optimiser's step count) must be an integer in "
                           f"[0, 2^63), got {_short(o['t'])}; the file is damaged")
    if not (isinstance(o, dict) and is_count(o.get("t"))
            and ("lr" not in o or (is_real(o["lr"]) and math.isfinite(o["lr"]) and o["lr"] > 0))):
        raise MinivaeError(f"{where}: its optimiser record {str(o)[:80]} is malformed")
    n = meta.get("blas_threads")
    if n is not None and not (is_int(n, 1) and n <= 4096):
        raise MinivaeError(f"{where}: blas_threads must be a thread count in [1, 4096] or null, "
                           f"got {_short(n)}; the file is damaged")
    _check_state(where, "data", meta["data_rng"])
    for name in ("noise", "bin"):
        st = meta.get(f"{name}_rng")
        if isinstance(st, dict) and st.get("kind") == Philox.kind:
            try:
                Philox.from_state(st)
            except MinivaeError:
                raise MinivaeError(f"{where}: its {name} generator state is malformed; the file "
                                   "is damaged") from None
        elif st is not None:
            _check_state(where, name, st)
    tot = meta.get("epoch_totals")
    if tot is not None and not (
            isinstance(tot, dict) and isinstance(tot.get("sums"), list) and len(tot["sums"]) == 3
            and all(is_real(s) and math.isfinite(s) for s in tot["sums"])
            and is_count(tot.get("n")) and is_count(tot.get("skipped"))
            and is_real(tot.get("seconds")) and math.isfinite(tot["seconds"])):
        raise MinivaeError(f"{where}: its epoch totals are malformed; the file is damaged")
    return shapes


def expected_arrays(where):
    """checkpoint.load's expect: the arrays a checkpoint of this meta must hold."""
    def expect(meta):
        shapes = check_meta(where, meta)
        P = sum(math.prod(s) for s in shapes.values())
        dt = np.dtype(resolve_dtype(meta["model"]["dtype"]))
        probe = make_optimizer(meta["train"].get("optimizer", "adam"),
                               ParamBuffer({"p": (1,)}, dtype=dt), 1e-3)
        spec = {"params": checkpoint.Expect((P,), dt)}
        spec.update({f"opt.{k}": checkpoint.Expect((P,), dt) for k in probe.state()[0]})
        spec["extra.perm"] = checkpoint.Expect((None,), "i", required=False)
        return spec
    return expect


def check_loadable(where, meta, params, opt_arrays, extra_arrays):
    """What load_run checks, applied to a checkpoint about to be written: its meta, and every
    array's name, shape and dtype against what that meta implies (values: see Trainer.save)."""
    specs = expected_arrays(where)(meta)
    arrays = {"params": params, **{f"opt.{k}": a for k, a in opt_arrays.items()},
              **{f"extra.{k}": a for k, a in extra_arrays.items()}}
    for key, a in arrays.items():
        if key not in specs:
            raise MinivaeError(f"{where}: unexpected array {key!r}")
        checkpoint.check_expected(where, key, a.shape, np.dtype(a.dtype), specs[key])
    missing = [k for k, spec in specs.items() if spec.required and k not in arrays]
    if missing:
        raise MinivaeError(f"{where}: array {missing[0]!r} is missing")


def load_run(path, device=None):
    """(model, meta, opt_arrays, extra) from a run directory or a checkpoint file.

    The model is built on ``device`` ('cpu' or 'cuda'; None: the device it was saved from), so a
    run trained on a GPU loads on a machine without one.  meta keeps the saved config.

    Nothing in the file is trusted: the meta record is checked field by field, every array's
    name, shape and dtype against the config before it is read, and the values for NaN/inf.
    Raises MinivaeError naming the file otherwise.
    """
    path = os.fspath(path)
    ck = os.path.join(path, CHECKPOINT) if os.path.isdir(path) else path
    params, meta, opt, extra = checkpoint.load(ck, expect=expected_arrays(ck))
    cfg = dict(meta["model"])
    if device is not None:
        cfg["device"] = device
    try:
        model = model_from_config(cfg)
    except TypeError as e:
        raise MinivaeError(f"{ck}: its model config does not build a VAE ({e}); the file is "
                           "damaged or from another program") from None
    except MinivaeError as e:
        raise MinivaeError(f"{ck}: its model config is invalid: {e}") from None
    checkpoint.check_against(ck, params, opt, model)
    model.buffer.data[...] = to_device(params, model.xp)
    return model, meta, opt, extra



def write_config(run_dir, config):
    """config.json: the run's resolved configuration, for people (nothing reads it back: the
    checkpoint's meta record is what resuming uses), written atomically."""
    text = json.dumps(config, indent=2).encode()
    checkpoint.atomic_write(os.path.join(run_dir, CONFIG), lambda f: f.write(text))



def record_eval(run, res):
    """Write the evaluation res (a dict with 'split', maybe 'iwae_k') as
    RUN/evals/<UTC time>-<split>[-iwaeK].json, atomically; a second evaluation in the same
    second gets -2, -3, ...  run: a run directory or its checkpoint file.  Returns the path."""
    run_dir = run if os.path.isdir(run) else os.path.dirname(os.path.abspath(run))
    folder = os.path.join(run_dir, EVALS)
    stem = (time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{res['split']}"
            + (f"-iwae{res['iwae_k']}" if res.get("iwae_k") else ""))
    os.makedirs(folder, exist_ok=True)
    path, i = os.path.join(folder, stem + ".json"), 1
    while os.path.exists(path):
        i += 1
        path = os.path.join(folder, f"{stem}-{i}.json")
    text = (json.dumps(res, indent=1) + "\n").encode()
    checkpoint.atomic_write(path, lambda f: f.write(text))
    return path


MAX_METRICS_BYTES = 64 << 20        # a metrics.jsonl larger than this is no minivae run's


def read_metrics(run_dir):
    """The metric rows of a run directory (a list of dicts; [] when there are none yet).

    A last line cut short by a crash is ignored; any other unreadable line, a row whose epoch
    is not an integer >= 0 or whose other values are not numbers, and a file that is not a
    regular one (a FIFO, a folder) are one-line MinivaeErrors naming the file, line and field.
    """
    return _read_metrics(os.path.join(run_dir, METRICS))[0]


def _read_metrics(path):
    """(rows, torn): the rows of the metrics file at path, and whether its last line was cut."""
    try:
        f = checkpoint.open_regular(path)
    except FileNotFoundError:
        return [], False
    with f:
        raw = f.read(MAX_METRICS_BYTES + 1)
    if len(raw) > MAX_METRICS_BYTES:
        raise MinivaeError(f"{path} holds more than {MAX_METRICS_BYTES >> 20} MB, more than any "
                           "run writes; the file is damaged or not minivae's")
    lines = raw.split(b"\n")
    rows, torn = [], bool(raw) and not raw.endswith(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError):
            if i == len(lines) - 1:            # no newline after it: a torn final write
                break
            raise MinivaeError(f"{path}: line {i + 1} is not a JSON object; the file is "
                               "damaged") from None
        where = f"{path}: line {i + 1}"
        if not is_count(row.get("epoch")):
            raise MinivaeError(f"{where}: epoch must be an integer >= 0, got "
                               f"{str(row.get('epoch'))[:40]}; the file is damaged (repair or "
                               "remove the line)")
        for k, v in row.items():
            if not is_real(v):
                raise MinivaeError(f"{where}: {k[:40]} must be a number, got {str(v)[:40]}; "
                                   "the file is damaged (repair or remove the line)")
        rows.append(_current_names(row))
    return rows, torn


# metric names of runs written before version 0.2, read under today's names (same values, same
# sign: the old {split}_rec was already the distortion -E_q log p(x|z))
RENAMED = {"rec": "distortion"}


def _current_names(row):
    out = {}
    for k, v in row.items():
        split, _, term = k.partition("_")
        out[f"{split}_{RENAMED[term]}" if term in RENAMED else k] = v
    return out


def append_metrics(run_dir, row):
    """Append one metric row to the run's metrics.jsonl and fsync it."""
    path = os.path.join(run_dir, METRICS)
    try:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise MinivaeError(f"cannot write {path}: {e.strerror or e}; free some space or "
                           "fix the folder's permissions (the checkpoint was left as it "
                           "was)") from None


def trim_metrics(run_dir, epoch):
    """Drop the metric rows after ``epoch`` (written after the checkpoint by a run that crashed
    between the two writes) and a torn last line; rewrites the file atomically, and only then."""
    path = os.path.join(run_dir, METRICS)
    rows, torn = _read_metrics(path)
    keep = [r for r in rows if r["epoch"] <= epoch]
    if len(keep) != len(rows) or torn:
        text = "".join(json.dumps(r) + "\n" for r in keep).encode()
        checkpoint.atomic_write(path, lambda f: f.write(text))
