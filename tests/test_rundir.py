"""A run that goes wrong, or a run directory that is damaged, loses nothing (issue 10).

Each case uses the real mechanism: two real `minivae train` processes for the lock, a real SIGKILL
during a checkpoint write for the stale temporaries, a real FIFO for "only regular files are
read".  Subprocesses run the CLI on 300 built-in shapes images (``SMALL_CLI`` below shrinks the
dataset before ``cli.main``), so that each costs about a second of CPU.
"""
import json
import os
import stat
import subprocess
import sys

import pytest

import minivae.data.datasets as datasets
from minivae import cli
from minivae.train import CHECKPOINT, load_run

SMALL = ["--hidden", "16", "--latent-dim", "2", "--batch-size", "100", "--no-progress"]

# `python -c SMALL_CLI args...`: the real entry point on a small shapes dataset, no figures
SMALL_CLI = ("import sys; import minivae.data.datasets as d; "
             "d.SHAPES_TRAIN, d.SHAPES_TEST = 300, 50; from minivae import cli; "
             "cli._figures = lambda *a: None; sys.exit(cli.main(sys.argv[1:]))")


@pytest.fixture(autouse=True)
def small_shapes(monkeypatch):
    monkeypatch.setattr(datasets, "SHAPES_TRAIN", 300)
    monkeypatch.setattr(datasets, "SHAPES_TEST", 50)
    monkeypatch.setattr(cli, "_figures", lambda *a: None)


def run(argv, capsys):
    """(exit status, stdout, stderr) of cli.main(argv) in this process."""
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, *needles):
    """The last stderr line of a clean exit-2 error, after checking it names each needle."""
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("minivae: error: "), err
    for n in needles:
        assert n in last, (n, last)
    return last


def cli_process(*argv, **kw):
    return subprocess.Popen([sys.executable, "-c", SMALL_CLI, *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc, timeout=120):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"still running after {timeout} s (a hang): {err[-2000:]}")
    assert "Traceback" not in err, err
    return proc.returncode, out, err


def snapshot(folder):
    """{name: (mode, bytes)} of every file in folder (to show that nothing was touched)."""
    out = {}
    for name in sorted(os.listdir(folder)):
        p = os.path.join(folder, name)
        st = os.lstat(p)
        out[name] = (st.st_mode, open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None)
    return out


# ---------------------------------------------------------------------------- 6: --resume ""
def test_resume_with_an_empty_string_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for value in ("", "  "):
        rc, out, err = run(["train", "--resume", value, *SMALL[-1:]], capsys)
        one_line_error(rc, err, "--resume needs a run directory", "unset shell variable")
    assert os.listdir(tmp_path) == []                       # no run was started here


# ---------------------------------------------------------------------------- 7: the umask
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_users_umask(tmp_path, capsys, umask, mode):
    old = os.umask(umask)
    try:
        rc, _, err = run(["train", *SMALL, "--epochs", "1", "--out", str(tmp_path / "r")], capsys)
    finally:
        os.umask(old)
    assert rc == 0, err
    for name in ("checkpoint.npz", "config.json", "metrics.jsonl"):
        assert stat.S_IMODE(os.stat(tmp_path / "r" / name).st_mode) == mode, name


def test_a_replaced_checkpoint_keeps_its_permissions(tmp_path, capsys):
    d = tmp_path / "r"
    assert run(["train", *SMALL, "--epochs", "1", "--out", str(d)], capsys)[0] == 0
    os.chmod(d / CHECKPOINT, 0o640)
    rc, _, err = run(["train", "--resume", str(d), "--epochs", "2", "--no-progress"], capsys)
    assert rc == 0, err
    assert load_run(d)[1]["epoch"] == 2
    assert stat.S_IMODE(os.stat(d / CHECKPOINT).st_mode) == 0o640
