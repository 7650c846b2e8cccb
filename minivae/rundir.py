"""The run directory: created atomically, locked for the run's life, cleaned of stale temporaries.

Design requirements (issue 10):
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
import os
import re
import socket
import stat
import time

from .errors import MinivaeError

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
