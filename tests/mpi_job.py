"""The MPI side of tests/test_parallel.py: run as ``mpiexec -n 2 python tests/mpi_job.py SCENARIO OUT``.

Every scenario trains on the small shapes set of tests/test_train.py (300 training images, 60
held out, dynamic binarisation) through ``minivae.cli`` (its data loader patched to return it), and
writes what the test compares into OUT:

  train    R = 2 run OUT/r2 (2 epochs, batch 32: 10 steps an epoch, the last one of 12 rows);
           rank 0 then trains the same run on R = 1 through the MPI path (COMM_SELF) into OUT/r1m;
           each rank writes OUT/rank<r>.json (digest of its parameters and optimiser state, the
           files it opened for writing); and the reduced gradient of one global batch, with its
           inputs, into OUT/grad.npz
  resume   R = 2 run OUT/run, a SIGTERM sent to rank 1 alone during global step 13; the
           interrupted run is copied to OUT/at-stop, then resumed on R = 2 to the end
  error    rank 1 raises an error in global step 5; hang: rank 1 sleeps in step 5 (timeout 3 s);
  die      rank 1 exits at once in step 5
  sweep    minivae sweep over beta 1,4 x seeds 0,1 into OUT/sweep; OUT/sweep<r>.json: the files
           rank r wrote
"""
import json
import os
import shutil
import signal
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from minivae import cli, train  # noqa: E402
from minivae.data import Dataset, make_shapes  # noqa: E402

ARGV = ["train", "--epochs", "2", "--hidden", "16", "--latent-dim", "2", "--batch-size", "32",
        "--no-progress", "--binarize", "dynamic", "--valid-size", "0"]


SWEEP = ["sweep", "--beta", "1,4", "--seeds", "0,1"]
SWEEP_TRAIN = ["--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--batch-size", "64",
               "--binarize", "dynamic", "--valid-size", "0"]


def small_data():
    images, _ = make_shapes(360, seed=0)
    images = images.reshape(360, -1)
    test = (np.random.default_rng(5).random(images[300:].shape, np.float32)
            < images[300:]).astype(np.float32)
    return Dataset("shapes", images[:300], None, test, (32, 32), "dynamic")


def load_data(name, data_dir, binarize, valid_size, seed, test=None):
    """cli._load_data's replacement: (the small data set, its dataset_args)."""
    return small_data(), dict(data_dir=data_dir, binarize=binarize, valid_size=valid_size,
                              seed=seed)


TRAINERS = []
RANK = None


def install():
    """Under mpiexec only (importing this module changes nothing): the small data set, and
    every Trainer that fits recorded in TRAINERS."""
    global RANK
    from mpi4py import MPI
    RANK = MPI.COMM_WORLD.Get_rank()
    cli._load_data = load_data
    fit = train.Trainer.fit

    def recording_fit(self):
        TRAINERS.append(self)
        return fit(self)
    train.Trainer.fit = recording_fit
    return MPI


def at_step(k, action):
    """Run action() on rank 1 inside global step k (1-based), before its all-reduce."""
    fb = train.VAE.forward_backward

    def patched(self, *a, **kw):
        if RANK == 1 and TRAINERS and TRAINERS[-1].global_step + 1 == k:
            action()
        return fb(self, *a, **kw)
    train.VAE.forward_backward = patched


def _record(writes, ev, args):
    """Files opened for writing (open, os.open as mkstemp does) and renamed into place."""
    if ev == "open" and isinstance(args[0], str):
        mode, flags = args[1], args[2]
        if (mode and any(c in mode for c in "wax+")) or (
                mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
            writes.append(os.path.abspath(args[0]))
    elif ev == "os.rename" and isinstance(args[1], str):
        writes.append(os.path.abspath(args[1]))


def main():
    MPI = install()
    scenario, out = sys.argv[1], sys.argv[2]
    writes = []
    sys.addaudithook(lambda ev, args: _record(writes, ev, args))
    if scenario == "train":
        rc = cli.main(ARGV + ["--out", os.path.join(out, "r2")])
        t = TRAINERS[-1]
        mine = [w for w in writes if w.startswith(os.path.abspath(out))]
        from minivae.parallel import digest
        state = digest([t.model.buffer.data, *t.opt.state()[0].values()])
        with open(os.path.join(out, f"rank{RANK}.json"), "w") as f:
            json.dump({"rc": rc, "digest": state, "writes": mine}, f)
        grad_check(out)
        if RANK == 0:                             # R = 1 through the MPI path
            from minivae.parallel import Comm
            args = cli.build_parser().parse_args(ARGV + ["--out", os.path.join(out, "r1m")])
            cli.cmd_train(args, Comm(MPI.COMM_SELF))
        return rc
    if scenario == "resume":
        run = os.path.join(out, "run")
        at_step(13, lambda: os.kill(os.getpid(), signal.SIGTERM))
        rc = cli.main(ARGV + ["--out", run])
        t = TRAINERS[-1]
        with open(os.path.join(out, f"stop{RANK}.json"), "w") as f:
            json.dump({"rc": rc, "global_step": t.global_step}, f)
        MPI.COMM_WORLD.Barrier()
        if RANK == 0:
            shutil.copytree(run, os.path.join(out, "at-stop"))
        MPI.COMM_WORLD.Barrier()
        return cli.main(["train", "--resume", run, "--no-progress"])
    if scenario == "sweep":
        rc = cli.main(SWEEP + ["--out", os.path.join(out, "sweep"), "--"] + SWEEP_TRAIN)
        mine = [w for w in writes if w.startswith(os.path.abspath(out))]
        with open(os.path.join(out, f"sweep{RANK}.json"), "w") as f:
            json.dump({"rc": rc, "writes": mine}, f)
        return rc
    timeout = []
    if scenario == "error":
        def fail():
            raise RuntimeError("injected failure on rank 1")
        at_step(5, fail)
    elif scenario == "hang":
        at_step(5, lambda: time.sleep(120))
        timeout = ["--mpi-timeout", "3"]
    elif scenario == "die":
        at_step(5, lambda: os._exit(7))
    return cli.main(ARGV + ["--out", os.path.join(out, "run")] + timeout)


def grad_check(out):
    """The all-reduced gradient of one global batch of 32 (rows 0..31, fixed noise)."""
    from mpi4py import MPI
    from minivae.model import VAE
    from minivae.parallel import Comm, DataParallel
    data = small_data()
    x = data.train[:32]
    eps = np.random.default_rng(1).standard_normal((1, 32, 2), dtype=np.float32)
    model = VAE(1024, (16,), 2, seed=0)
    par = DataParallel(Comm(MPI.COMM_WORLD), model, train.TrainConfig())
    terms, _ = par.step(x, eps, {}, lambda: False)
    if RANK == 0:
        np.savez(os.path.join(out, "grad.npz"), grad=model.buffer.grad, x=x, eps=eps,
                 loss=terms.loss)


if __name__ == "__main__":
    sys.exit(main())
