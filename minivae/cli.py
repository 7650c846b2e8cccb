"""The command line: ``minivae train | eval | sample | sweep``.

Bad input ends with one line on stderr (``minivae: error: ...``) and exit status 2, never a
traceback.  An existing run directory is never overwritten: a new run needs a new ``--out``, and
``--resume RUN_DIR`` continues an old one.
"""
import argparse
import contextlib
import json
import os
import sys
import time

from . import rundir
from .errors import MinivaeError

PRESETS = {
    # name: (dataset, hidden, latent, activation, batch, lr, binarize)
    "mnist-400-20": dict(dataset="mnist", hidden="400", latent_dim=20, activation="relu",
                         batch_size=128, lr=1e-3, binarize="dynamic"),
    "mnist-iwae-200-200-50": dict(dataset="mnist", hidden="200,200", latent_dim=50,
                                  activation="tanh", batch_size=20, lr=1e-3, binarize="dynamic",
                                  lr_schedule="iwae", epochs=3280),
    # the conv VAE of the beta-VAE papers (Higgins et al. 2017, Burgess et al. 2018): 4 conv
    # layers of 32 channels, 4x4 kernels, stride 2, dense 256-256, 10 latents (there on 64x64)
    "conv-burgess": dict(dataset="shapes", arch="conv", channels="32,32,32,32", kernel=4,
                         stride=2, hidden="256,256", latent_dim=10, activation="relu"),
    # its two-layer form for 28x28 (two stride-2 layers: 28 -> 14 -> 7)
    "mnist-conv": dict(dataset="mnist", arch="conv", channels="32,64", kernel=4, stride=2,
                       hidden="256", latent_dim=20, activation="relu", batch_size=128, lr=1e-3,
                       binarize="dynamic"),
}
CONV_DEFAULTS = dict(channels="32,64", kernel=4, stride=2, hidden="256")


def _int_list(option, example):
    def parse(text):
        try:
            sizes = tuple(int(t) for t in str(text).split(",") if t.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be comma-separated integers like "
                                             f"{example}, got {text!r}") from None
        if not sizes or min(sizes) < 1:
            raise argparse.ArgumentTypeError(f"{option} sizes must be positive, got {text!r}")
        return sizes
    return parse


_hidden = _int_list("--hidden", "400 or 200,200")
_channels = _int_list("--channels", "32,64 or 32,32,32,32")


def _positive(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return v
    return parse


def _nonneg(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not v >= 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
        return v
    return parse


class _Help(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already states its default
    (as "[default: ...]", for the defaults resolved later from the preset or the dataset) or
    there is none to state (None, False: a flag's absence)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" not in text and action.option_strings
                and not any(action.default is v for v in (None, False, argparse.SUPPRESS))):
            text += " (default: %(default)s)"
        return text


def build_parser():
    from . import __version__
    from .layers import ACTIVATIONS
    p = argparse.ArgumentParser(prog="minivae", description="Variational autoencoders from "
                                "scratch: train, evaluate and sample.")
    p.add_argument("--version", action="version", version=f"minivae {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a VAE and write a run directory",
                       formatter_class=_Help)
    t.add_argument("--preset", choices=sorted(PRESETS), help="a standard architecture and "
                   "protocol (its values are defaults the other options override)")
    t.add_argument("--dataset", default=None, help="shapes (built in), mnist, fashion-mnist, "
                   "binarized-mnist, or a path: a .npy/.npz array (N, ...) of floats or 0..255 "
                   "integers, or a folder of PNG/JPEG images [default: shapes]")
    t.add_argument("--test", metavar="PATH", default=None, help="with --dataset PATH: a .npy/.npz "
                   "array or image folder holding the test set [default: a .npz's 'test' array, "
                   "else none]")
    t.add_argument("--data-dir", default=None, help="folder holding the dataset's files "
                   "(else $MINIVAE_DATA_DIR, the cache, then a download)")
    t.add_argument("--binarize", default=None, help="dynamic, static, threshold or none "
                   "[default: dynamic for MNIST-like data, none for shapes and your own data]")
    t.add_argument("--valid-size", type=_nonneg(int), default=None,
                   help="held-out validation images taken from the training split by the seed "
                   "[default: 10000 for MNIST-like data, 0 for shapes; your own data: 10%% "
                   "without a test set, else 0]")
    t.add_argument("--epochs", type=_nonneg(int), default=None,
                   help="passes over the training set [default: 30]")
    t.add_argument("--batch-size", type=_positive(int), default=None,
                   help="examples per step [default: 128]")
    t.add_argument("--lr", type=_positive(float), default=None,
                   help="learning rate [default: 1e-3]")
    t.add_argument("--lr-schedule", choices=("constant", "iwae"), default=None,
                   help="iwae: lr * 10^(-i/7) for 3^i epochs, i = 0..7 (Burda et al. 2016) "
                   "[default: constant]")
    t.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                   help="Adam, or SGD (plain; momentum from Python)")
    t.add_argument("--clip", type=_nonneg(float), default=0.0, help="max gradient norm (0: off)")
    t.add_argument("--hidden", type=_hidden, default=None, help="hidden widths, e.g. 400 or "
                   "200,200 [default: 400]")
    t.add_argument("--latent-dim", type=_positive(int), default=None,
                   help="Z, the number of latent dimensions [default: 10]")
    t.add_argument("--arch", choices=("mlp", "conv"), default=None,
                   help="mlp: dense encoder/decoder; conv: convolutions (stride-2 halvings), "
                   "dense --hidden widths, a mirrored transposed-convolution decoder "
                   "[default: mlp]")
    t.add_argument("--channels", type=_channels, default=None, help="--arch conv: channels of "
                   "each convolution, e.g. 32,64 (28x28) or 32,32,32,32 (32x32 or 64x64) "
                   "[default: 32,64]")
    t.add_argument("--kernel", type=_positive(int), default=None,
                   help="--arch conv: kernel size [default: 4]")
    t.add_argument("--stride", type=_positive(int), default=None,
                   help="--arch conv: stride [default: 2]")
    t.add_argument("--padding", type=_nonneg(int), default=None,
                   help="--arch conv: zero padding [default: (kernel - stride) // 2]")
    t.add_argument("--activation", choices=sorted(ACTIVATIONS), default=None,
                   help="hidden layers' activation [default: relu]")
    t.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default="bernoulli",
                   help="the decoder's p(x|z): Bernoulli from logits (data in [0, 1]), or "
                   "Gaussian (continuous data; see --learn-sigma, --gaussian-mean)")
    t.add_argument("--sigma", type=_positive(float), default=1.0,
                   help="Gaussian likelihood: the (initial) standard deviation")
    t.add_argument("--learn-sigma", choices=("fixed", "shared", "per-dim", "per-example"),
                   default="fixed", help="Gaussian likelihood: sigma fixed at --sigma, learned "
                   "as one value or one per pixel for the whole dataset, or per-example: the "
                   "decoder predicts a mean and a log-variance for every pixel of every image "
                   "(Kingma & Welling 2013)")
    t.add_argument("--gaussian-mean", choices=("identity", "sigmoid"), default="identity",
                   help="Gaussian likelihood: the decoder's mean as it is, or squashed into "
                   "(0, 1) by a sigmoid (for data in [0, 1])")
    t.add_argument("--sigma-min", type=_nonneg(float), default=1.0 / 256,
                   help="--learn-sigma per-example: the floor on sigma, so that the variance "
                   "cannot collapse onto a pixel (0: no floor)")
    t.add_argument("--beta", type=_nonneg(float), default=1.0, help="KL weight (beta-VAE)")
    t.add_argument("--warmup-steps", type=_nonneg(int), default=0, metavar="N",
                   help="KL warm-up: beta raised linearly from 0 to --beta over N steps (0: off)")
    t.add_argument("--capacity", type=_nonneg(float), default=None, metavar="C_MAX",
                   help="capacity control (Burgess et al. 2018): minimise -E log p(x|z) + "
                   "gamma * |KL - C|, C raised linearly from 0 to C_MAX nats (default: off)")
    t.add_argument("--capacity-steps", type=_nonneg(int), default=0, metavar="N",
                   help="steps over which C rises to C_MAX (0: C_MAX from the start)")
    t.add_argument("--gamma", type=_positive(float), default=1000.0,
                   help="weight of |KL - C| with --capacity")
    t.add_argument("--objective", choices=("elbo", "iwae"), default="elbo",
                   help="the training objective: the (beta-)ELBO, or the K-sample IWAE bound "
                   "(K from --k)")
    t.add_argument("--k", "--samples", dest="samples", type=_positive(int), default=1,
                   help="Monte Carlo samples per example (the K of --objective iwae)")
    t.add_argument("--latent", choices=("gaussian", "bernoulli"), default="gaussian",
                   help="q(z|x): diagonal Gaussian, or K = --latent-dim independent Bernoulli "
                   "latents (evaluated exactly by enumeration when K <= 16)")
    t.add_argument("--estimator", choices=("reparam", "score", "relaxed"), default=None,
                   help="the encoder's gradient: reparam (Gaussian), score (the score function, "
                   "REINFORCE; high variance: use --k 8 --baseline mean), relaxed (Bernoulli "
                   "latents: the Concrete relaxation at --temperature) [default: reparam for "
                   "Gaussian latents, score for Bernoulli]")
    t.add_argument("--temperature", type=_positive(float), default=None,
                   help="--estimator relaxed: the Concrete temperature tau [default: 0.5]")
    t.add_argument("--baseline", choices=("none", "mean"), default="none",
                   help="--estimator score's control variate: none, or the leave-one-out mean "
                   "of the other --k samples of each example (--k >= 2)")
    t.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="floating-point type of parameters and data (float64: for checks)")
    t.add_argument("--seed", type=_nonneg(int), default=0,
                   help="seeds the initialisation, the data order, the noise and the held-out "
                   "split")
    t.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="[default: $MINIVAE_DEVICE or cpu]")
    t.add_argument("--out", default=None, help="run directory to create "
                   "[default: runs/<dataset>-<time>]")
    t.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue an interrupted run (its config is used; --epochs may extend it)")
    t.add_argument("--sync-every", type=_positive(int), default=20, metavar="N",
                   help="GPU: read the loss sums and the finiteness check back every N steps "
                        "(a NaN is then caught up to N-1 steps late, never saved); default 20")
    t.add_argument("--on-nonfinite", choices=("stop", "skip"), default="stop",
                   help="on a NaN/inf loss or gradient: stop (keeping the last checkpoint) or "
                   "skip the batch")
    t.add_argument("--iwae", type=_nonneg(int), default=0, metavar="K",
                   help="after training, estimate log p(x) with K importance samples (0: off)")
    t.add_argument("--iwae-n", type=_positive(int), default=None,
                   help="held-out images for --iwae [default: all]")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (there is none "
                   "anyway when stderr is not a terminal: one plain line per epoch)")
    t.add_argument("--no-memory-check", action="store_true", help="train even when the "
                   "memory estimate exceeds what the machine has free")
    t.add_argument("--mpi-timeout", type=_positive(float), default=None, metavar="S",
                   help="under mpiexec: seconds a rank waits for the others in a collective "
                   "before it stops the job with an error (a rank died or hangs) "
                   "[default: $MINIVAE_MPI_TIMEOUT or 300]")

    e = sub.add_parser("eval", help="held-out ELBO (and importance-sampled log p(x)) of a run",
                       formatter_class=_Help)
    e.add_argument("run", help="run directory or checkpoint .npz")
    e.add_argument("--data-dir", default=None, help="folder holding a built-in dataset's files "
                   "[default: the run's, else $MINIVAE_DATA_DIR, the cache, then a download]")
    e.add_argument("--dataset", metavar="PATH", default=None, help="a run on your own data: "
                   "where its file or folder is now, if moved (its sha256 must be the recorded "
                   "one) [default: the path recorded in the run]")
    e.add_argument("--test", metavar="PATH", default=None, help="the same for its --test data")
    e.add_argument("--split", choices=("test", "valid", "train"), default="test",
                   help="the part of the run's data to evaluate on")
    e.add_argument("--iwae", type=_nonneg(int), default=0, metavar="K",
                   help="importance samples per image for log p(x) (0: ELBO only)")
    e.add_argument("--n", type=_positive(int), default=None, help="first N images only")
    e.add_argument("--rows", type=_positive(int), default=10000,
                   help="most samples decoded at once (memory bound)")
    e.add_argument("--seed", type=_nonneg(int), default=0,
                   help="seeds the evaluation's noise (the ELBO's and the importance samples)")
    e.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="[default: the device the run was trained on]")
    e.add_argument("--json", action="store_true", help="print one JSON line")
    e.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is none anyway when stderr is not a terminal)")

    w = sub.add_parser("sweep", help="independent runs over beta x seed (spread over the ranks "
                       "under mpiexec), with a summary table and figure",
                       description="Train one run per (beta, seed), each its own run directory "
                       "OUT/beta<b>-seed<s>, spread over the ranks of an MPI job (mpiexec -n R "
                       "minivae sweep ...) or one after another; rerunning the command continues "
                       "the sweep.  Then OUT/summary.md, summary.json and summary.png.  Example: "
                       "minivae sweep --beta 1,2,4,8 --seeds 0,1,2 --out runs/sweep -- --epochs 10")
    w.add_argument("--beta", required=True, help="comma-separated KL weights, e.g. 1,2,4,8")
    w.add_argument("--seeds", required=True, help="comma-separated seeds, e.g. 0,1,2")
    w.add_argument("--out", required=True, help="the sweep's folder (created; reused to continue)")
    w.add_argument("train_options", nargs=argparse.REMAINDER,
                   help="after --: the options of minivae train for every run (not --beta, "
                   "--seed, --out)")
    s = sub.add_parser("sample", help="a PNG grid of samples from the prior",
                       formatter_class=_Help)
    s.add_argument("run", help="run directory or checkpoint .npz")
    s.add_argument("--n", type=_positive(int), default=64, help="number of samples")
    s.add_argument("--seed", type=_nonneg(int), default=0, help="seeds the draws from the prior")
    s.add_argument("--out", default=None, help="PNG path [default: RUN/samples-seed<S>.png]")
    s.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="[default: the device the run was trained on]")

    v = sub.add_parser("traverse", help="latent traversals (sorted by KL), the 2-D manifold and "
                       "the latents x factors MI heat map of a run",
                       formatter_class=_Help)
    v.add_argument("run", help="run directory or checkpoint .npz")
    v.add_argument("--out", default=None, help="folder for traversals.png, manifold.png (2-D "
                   "latents) and mi.png (shapes) [default: the run directory]")
    v.add_argument("--data-dir", default=None, help="folder holding the dataset's files")
    v.add_argument("--image", type=_nonneg(int), default=0,
                   help="which held-out image to traverse around")
    v.add_argument("--seed", type=_nonneg(int), default=0, help="draws of the MI images")
    v.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="[default: the device the run was trained on]")
    return p


# ------------------------------------------------------------------------------------ train
TRAIN_DEFAULTS = dict(dataset="shapes", epochs=30, batch_size=128, lr=1e-3, lr_schedule="constant",
                      hidden="400",
                      latent_dim=10, activation="relu")


def _resolve(args):
    preset = PRESETS.get(args.preset, {})
    if args.arch is None:
        args.arch = preset.get("arch", "mlp")
    conv = CONV_DEFAULTS if args.arch == "conv" else {}
    for key, value in {**TRAIN_DEFAULTS, **conv, **preset}.items():
        if getattr(args, key, None) is None:
            parse = {"hidden": _hidden, "channels": _channels}.get(key)
            setattr(args, key, parse(value) if parse else value)
    if args.arch == "mlp":
        given = [f"--{k}" for k in ("channels", "kernel", "stride", "padding")
                 if getattr(args, k) is not None]
        if given:
            raise MinivaeError(f"{', '.join(given)} apply only to --arch conv")
    from .data.datasets import DATASETS
    user = args.dataset not in DATASETS
    if args.test is not None and not user:
        raise MinivaeError(f"--test goes with --dataset PATH (your own data); {args.dataset} has "
                           "its own test set")
    if args.binarize is None:
        args.binarize = preset.get("binarize", "none" if args.dataset == "shapes" or user
                                   else "dynamic")
    if args.valid_size is None and not user:      # user data: 10% unless it has a test set
        args.valid_size = 0 if args.dataset == "shapes" else 10000


RESUME_OPTIONS = ("resume", "epochs", "data_dir", "no_progress", "iwae", "iwae_n", "command",
                  "mpi_timeout")
RESUME_OPTIONS_HELP = ("--epochs", "--data-dir", "--no-progress", "--iwae", "--iwae-n",
                       "--mpi-timeout")


def _options_given(args, exclude):
    """The --options of `train` set to something other than their defaults."""
    defaults = vars(build_parser().parse_args(["train"]))
    return [f"--{k.replace('_', '-')}" for k, v in vars(args).items()
            if k not in exclude and v != defaults.get(k)]


def _make_run_dir(out, dataset):
    if out is None:
        out = os.path.join("runs", f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    return rundir.create(out)


def _check_memory(args):
    """Refuse, before the data and the model are allocated, a run the memory estimate says
    cannot fit (memory.py), unless --no-memory-check."""
    import numpy as np
    from . import memory
    from .backend import array_module, resolve_device
    from .data import datasets
    from .params import MAX_ELEMENTS
    D = 1024 if args.dataset == "shapes" else 784
    if args.no_memory_check or memory.parameter_count(D, args.hidden,
                                                      args.latent_dim) > MAX_ELEMENTS:
        return                          # the model refuses that many parameters itself
    n = memory.dataset_images(args.dataset, args.valid_size,
                              (datasets.SHAPES_TRAIN, datasets.SHAPES_TEST))
    parts = memory.estimate(D, args.hidden, args.latent_dim, np.dtype(args.dtype).itemsize,
                            args.optimizer, args.batch_size, args.samples,
                            rows=10000 if args.iwae else 0, n_images=n or 0)
    if resolve_device(args.device) == "cuda":      # the model lives on the device, data here
        on_device = {k: parts.pop(k) for k in ("parameters", "optimiser", "workspace")}
        memory.check(on_device, memory.device_available(array_module("cuda")), "GPU memory")
    memory.check(parts, memory.available())


def _load_data(name, data_dir, binarize, valid_size, seed, test=None):
    """(Dataset, dataset_args): a built-in dataset by name, or the user's file or folder (whose
    dataset_args also hold its path, sha256 and the resolved valid_size)."""
    from .data import load_dataset
    from .data.datasets import DATASETS
    from .data.user import is_path, load_path
    args = dict(data_dir=data_dir, binarize=binarize, valid_size=valid_size, seed=seed)
    if name in DATASETS:
        return load_dataset(name, data_dir=data_dir, binarize=binarize, valid_size=valid_size,
                            seed=seed), args
    if not is_path(name):
        raise MinivaeError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}, or "
                           "give a path to a .npy/.npz array or a folder of images")
    data, record = load_path(name, test=test, valid_size=valid_size, seed=seed,
                             binarize=binarize)
    return data, {**args, "data_dir": None, **record}


def _reload_data(meta, data_dir=None, path=None, test=None):
    """The data a run was trained on, from its dataset record; user data is refused when its
    sha256 differs from the one recorded (path, test: where the files are now, if moved)."""
    from .data.datasets import DATASETS
    d = meta.get("dataset_args") or {}
    if "path" not in d and meta["dataset"] not in DATASETS:
        if path is None:
            raise MinivaeError(f"the run was trained on data given in Python ({meta['dataset']!r}), "
                               "so it does not record where they are: give them with --dataset "
                               "PATH (unchecked: no sha256 was recorded), or evaluate in Python")
        return _load_data(path, None, d.get("binarize", meta.get("binarize", "none")), 0,
                          d.get("seed", 0), test=test)[0]
    if "path" not in d:
        return _load_data(meta["dataset"], data_dir or d.get("data_dir"),
                          d.get("binarize", meta.get("binarize", "none")), d.get("valid_size", 0),
                          d.get("seed", 0))[0]
    path, test = path or d["path"], test or d.get("test")
    data, now = _load_data(path, None, d["binarize"], d["valid_size"], d["seed"], test=test)
    for key, where in (("sha256", path), ("test_sha256", test)):
        if d.get(key) is not None and now.get(key) != d[key]:
            raise MinivaeError(f"{where} changed since the run was trained (sha256 "
                               f"{now.get(key)}, recorded {d[key]}): restore the data the run "
                               "was trained on (give its new place with --dataset / --test), "
                               "or train a new run")
    return data


def _conv_options(args, data):
    if args.arch != "conv":
        return {}
    if len(data.image_shape) == 3 and data.image_shape[2] in (1, 3):
        raise MinivaeError(f"--arch conv takes (H, W) grey images or channels-first (C, H, W) "
                           f"arrays; {data.name} holds channels-last {data.image_shape} images "
                           "(an image folder or an (N, H, W, 3) array): use --arch mlp")
    return dict(arch="conv", image_shape=data.image_shape, channels=args.channels,
                kernel=args.kernel, stride=args.stride, padding=args.padding)


def cmd_train(args, comm=None):
    """`minivae train`; the run directory's lock is held from before anything in it is read or
    written until the command ends (see rundir.py).  comm: a parallel.Comm under mpiexec (rank 0
    alone locks, writes and logs)."""
    with contextlib.ExitStack() as held:
        return _cmd_train(args, held, comm)


def _cmd_train(args, held, comm=None):
    from .train import TrainConfig, Trainer, check_dataset
    from .rundir import load_run, read_metrics

    root = comm is None or comm.root
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if root else (lambda msg: None)
    if args.resume is not None and not args.resume.strip():
        raise MinivaeError(f"--resume needs a run directory, got {args.resume!r} (an unset shell "
                           "variable?); pass the folder of the run to continue")
    if args.resume is not None:
        fixed = _options_given(args, exclude=RESUME_OPTIONS)
        if fixed:
            raise MinivaeError(f"--resume continues a run with its saved configuration; drop "
                               f"{', '.join(fixed)} (only {', '.join(RESUME_OPTIONS_HELP)} may "
                               "change)")
        if not os.path.exists(args.resume):
            raise MinivaeError(f"no run directory or checkpoint at {args.resume}; pass the "
                               "folder of a run written by minivae train")
        run_dir = args.resume if os.path.isdir(args.resume) else os.path.dirname(args.resume)

        def lock():
            held.enter_context(rundir.lock(run_dir or ".", log))
        if comm is None:
            lock()
        else:                                   # rank 0 locks; the others read once it has
            comm.on_root(lock, "locking the run directory")
        model, meta, opt_arrays, extra = load_run(args.resume)
        tcfg = TrainConfig(**meta["train"])
        if args.epochs is not None:
            tcfg.epochs = args.epochs
        d = meta["dataset_args"]
        if not d:
            raise MinivaeError(f"{args.resume} was not started by minivae train (its checkpoint "
                               "does not say how to load its data); resume it from Python with "
                               "Trainer.restore")
        data = _reload_data(meta, args.data_dir)
        trainer = Trainer(model, data, tcfg, run_dir, log=log, progress=_progress(args),
                          dataset_args=d, comm=comm)
        trainer.restore(meta, opt_arrays, extra)
        log(f"resuming {run_dir} at epoch {trainer.epoch + 1} step {trainer.step + 1}")
    else:
        _resolve(args)
        _check_memory(args)
        data, dataset_args = _load_data(args.dataset, args.data_dir, args.binarize,
                                        args.valid_size, args.seed, test=args.test)
        model = _make_model(args, data.dim, _conv_options(args, data))
        tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                           optimizer=args.optimizer, seed=args.seed, clip=args.clip,
                           on_nonfinite=args.on_nonfinite, lr_schedule=args.lr_schedule,
                           warmup_steps=args.warmup_steps, capacity=args.capacity,
                           capacity_steps=args.capacity_steps, gamma=args.gamma,
                           sync_every=args.sync_every)
        tcfg.check()
        from .schedules import check_model
        check_model(tcfg, model)
        check_dataset(model, data)             # before anything is written

        def new_run_dir():
            run_dir = _make_run_dir(args.out, data.name)
            held.enter_context(rundir.lock(run_dir, log))
            rundir.check_new(run_dir)       # another run may have filled it before our lock
            return run_dir
        # under mpiexec: rank 0 makes and locks it, every rank gets its name (the default has
        # the time in it)
        run_dir = new_run_dir() if comm is None else comm.on_root(new_run_dir,
                                                                  "creating the run directory")
        trainer = Trainer(model, data, tcfg, run_dir, log=log, progress=_progress(args),
                          dataset_args=dataset_args, comm=comm)
        config = dict(model=model.config, train=vars(tcfg), dataset=data.name,
                      dataset_args=trainer.dataset_args, image_shape=list(data.image_shape),
                      argv=sys.argv[1:])
        if comm is not None:
            config["mpi_ranks"] = comm.size
        if root:
            rundir.write_config(run_dir, config)
        ranks = (f" on {comm.size} MPI rank{'s' if comm.size > 1 else ''}"
                 if comm is not None else "")
        log(f"{model} on {data.name} ({len(data.train)} training images){ranks} -> {run_dir}")
    t0 = time.perf_counter()
    from .train import Interrupted
    try:
        trainer.fit()
    except Interrupted as e:
        if root:
            print(f"minivae: {e}; resume with: minivae train --resume {run_dir}",
                  file=sys.stderr)
        return 130
    wall = time.perf_counter() - t0
    if not root:
        return 0
    rows = read_metrics(run_dir)
    _figures(model, data, rows, run_dir)
    summary = {"run_dir": run_dir, "wall_s": round(wall, 2), "epochs": trainer.epoch}
    held = "valid" if data.valid is not None else "test"
    if rows and f"{held}_elbo" in rows[0]:
        summary[f"{held}_elbo_before"] = round(rows[0][f"{held}_elbo"], 3)
        summary[f"{held}_elbo_after"] = round(rows[-1][f"{held}_elbo"], 3)
        summary["units"] = "nats per example"
        x_held = data.valid if held == "valid" else data.test
        if x_held is not None:
            summary.update({f"{held}_{k}_after": v for k, v in _eight_bit_terms(
                model, x_held, {"elbo": rows[-1][f"{held}_elbo"]}).items()})
    if data.test is not None or data.valid is not None:
        if _discrete(model):
            summary.update(_discrete_summary(model, data, args.iwae, args.iwae_n, args.seed))
        else:
            from .evaluation import active_units
            summary["active_units"] = active_units(
                model, data.test if data.test is not None else data.valid)[0]
    if args.iwae and not _discrete(model):
        summary.update(_iwae_summary(model, data, args.iwae, args.iwae_n, args.seed,
                                     _progress(args)))
    log(json.dumps(summary))
    print(f"trained {_plural(trainer.epoch, 'epoch')} in {wall:.1f} s; run directory: "
          f"{run_dir}")
    return 0


def _make_model(args, data_dim, conv=None):
    """The model the options describe; conv: VAE's arch='conv' options (_conv_options)."""
    from .model import VAE
    if args.latent == "bernoulli":
        from .discrete import DiscreteVAE
        given = [opt for opt, bad in (("--likelihood gaussian", args.likelihood != "bernoulli"),
                                      ("--beta", args.beta != 1.0),
                                      ("--objective iwae", args.objective != "elbo"),
                                      ("--warmup-steps", bool(args.warmup_steps)),
                                      ("--capacity", args.capacity is not None),
                                      ("--arch conv", bool(conv)))
                 if bad]
        if given:
            raise MinivaeError(f"{', '.join(given)} applies to Gaussian latents only; drop it "
                               "with --latent bernoulli")
        estimator = args.estimator or "score"
        if args.temperature is not None and estimator != "relaxed":
            raise MinivaeError("--temperature applies to --estimator relaxed only")
        return DiscreteVAE(data_dim, args.hidden, args.latent_dim, args.activation, args.dtype,
                           args.seed, args.device, samples=args.samples, estimator=estimator,
                           baseline=args.baseline,
                           temperature=0.5 if args.temperature is None else args.temperature)
    if args.estimator == "relaxed" or args.temperature is not None:
        raise MinivaeError("--estimator relaxed and --temperature need --latent bernoulli (a "
                           "Gaussian latent is reparameterised exactly)")
    return VAE(data_dim, args.hidden, args.latent_dim, args.activation, args.likelihood,
               args.beta, args.dtype, args.seed, args.device, args.sigma, args.learn_sigma,
               args.objective, args.samples, estimator=args.estimator or "reparam",
               baseline=args.baseline, gaussian_mean=args.gaussian_mean, sigma_min=args.sigma_min,
               **(conv or {}))


def _discrete(model):
    return getattr(model, "config", {}).get("latent") == "bernoulli"


def _discrete_summary(model, data, k, n, seed):
    """The Bernoulli-latent model's held-out ELBO and log p(x): exact by enumeration for
    K <= 16, else importance-sampled with k (default 1000) samples."""
    from .backend import make_rng
    x = data.test if data.test is not None else data.valid
    x = x[:n] if n else x
    t0 = time.perf_counter()
    res = model.evaluate(x, make_rng([seed, 4], model.xp), samples=k or 1000)
    kind = "exact" if res["exact"] else f"is{res['samples']}"
    return {f"{kind}_elbo": round(res["elbo"], 3), f"{kind}_logpx": round(res["logpx"], 3),
            "eval_n": res["n"], "eval_s": round(time.perf_counter() - t0, 2)}


def _iwae_summary(model, data, k, n, seed, progress):
    from .backend import make_rng
    from .evaluation import importance_log_likelihood
    x = data.test if data.test is not None else data.valid
    x = x[:n] if n else x
    t0 = time.perf_counter()
    ll = importance_log_likelihood(model, x, k, make_rng([seed, 4], model.xp), progress=progress)
    return {f"iwae{k}_logpx": round(float(ll.mean()), 3), "iwae_n": len(x),
            "iwae_s": round(time.perf_counter() - t0, 2)}


def _figures(model, data, rows, run_dir):
    from .backend import to_device
    from .plots import save_grid, save_loss_curves, save_reconstructions
    from .backend import make_rng
    x = data.test if data.test is not None else (data.valid if data.valid is not None
                                                  else data.train)
    xb = to_device(x[:16], model.xp, model.dtype)
    save_reconstructions(os.path.join(run_dir, "reconstructions.png"), xb,
                         model.reconstruct(xb), data.image_shape)
    save_grid(os.path.join(run_dir, "samples.png"), model.sample(64, make_rng(0, model.xp)),
              data.image_shape, ncols=8, title="samples from the prior (means of p(x|z))")
    save_loss_curves(os.path.join(run_dir, "loss.png"), rows, title=f"{data.name}: {model!r}")
    if model.config.get("latent", "gaussian") == "gaussian":
        from .latent_plots import write_latent_figures
        write_latent_figures(model, run_dir, x, data.image_shape,
                             shapes_factors=data.name == "shapes")


# ------------------------------------------------------------------------------------ eval
def cmd_eval(args):
    from .backend import make_rng
    from .evaluation import evaluate
    model, meta, _, _ = _load_for_device(args.run, args.device)
    data = _reload_data(meta, args.data_dir, args.dataset, args.test)
    x = getattr(data, args.split)
    if x is None:
        raise MinivaeError(f"dataset {data.name} has no {args.split} split here; use --split "
                           "test or train")
    if args.split == "train" and data.binarize == "dynamic":
        from .data import binarize_batch
        import numpy as np
        x = binarize_batch(x, np.random.default_rng(1003))
    x = x[:args.n] if args.n else x
    res = {"run": args.run, "split": args.split, "n": len(x)}
    res.update({f"{k}": round(v, 4) for k, v in
                evaluate(model, x, make_rng([args.seed, 3], model.xp)).items()})
    if _discrete(model):
        t0 = time.perf_counter()
        ev = model.evaluate(x, make_rng([args.seed, 4], model.xp), samples=args.iwae or 1000)
        res.update({"exact": ev["exact"], "elbo_exact" if ev["exact"] else "elbo_is": ev["elbo"],
                    "logpx": round(ev["logpx"], 4), "eval_s": round(time.perf_counter() - t0, 2)})
    elif args.iwae:
        from .evaluation import importance_log_likelihood
        t0 = time.perf_counter()
        ll = importance_log_likelihood(model, x, args.iwae, make_rng([args.seed, 4], model.xp),
                                       rows=args.rows, progress=_progress(args))
        res.update({"iwae_k": args.iwae, "logpx": round(float(ll.mean()), 4),
                    "logpx_stderr": round(float(ll.std(ddof=1) / len(ll) ** 0.5), 4)
                    if len(ll) > 1 else None,
                    "iwae_s": round(time.perf_counter() - t0, 2)})
    res["units"] = "nats per example"
    res.update(_eight_bit_terms(model, x, res))
    res.update(seed=args.seed, time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    record = _record_eval(args.run, res)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{args.split} ({_plural(len(x), 'image')}): ELBO {res['elbo']:.3f} nats per "
              f"example (distortion {res['distortion']:.3f}, KL {res['kl']:.3f})")
        if "elbo_bits_per_dim" in res:
            print(f"  on the 8-bit scale (- D log 256, D = {model.data_dim}): ELBO "
                  f"{res['elbo_8bit']:.3f} nats, {res['elbo_bits_per_dim']:.4f} bits/dim")
        if _discrete(model):
            how = ("exact, all 2^K states" if res["exact"] else
                   f"importance sampling, {args.iwae or 1000} samples")
            print(f"ELBO {res.get('elbo_exact', res.get('elbo_is')):.3f}, log p(x) "
                  f"{res['logpx']:.3f} nats ({how}, {res['eval_s']:.1f} s)")
        elif args.iwae:
            se = "" if res["logpx_stderr"] is None else f" +- {res['logpx_stderr']:.3f}"
            print(f"log p(x) ~ {res['logpx']:.3f}{se} nats per example (IWAE, K={args.iwae}, "
                  f"{res['iwae_s']:.1f} s); gap to the ELBO {res['logpx'] - res['elbo']:.3f}")
            if "logpx_bits_per_dim" in res:
                print(f"  on the 8-bit scale: log p(x) {res['logpx_8bit']:.3f} nats, "
                      f"{res['logpx_bits_per_dim']:.4f} bits/dim")
    if record:
        print(f"recorded in {record}", file=sys.stderr)
    return 0


def _progress(args):
    """A progress bar only on a terminal: in a log file its redrawn lines would pile up (the
    trainer's plain per-epoch line is printed either way)."""
    return not args.no_progress and sys.stderr.isatty()


def _plural(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _eight_bit_terms(model, x, res):
    """For a continuous (Gaussian) decoder on data in [0, 1]: the ELBO and log p(x) converted to
    the 8-bit scale and to bits per dimension (minivae.evaluation.eight_bit)."""
    import numpy as np
    from .evaluation import eight_bit
    if getattr(model.likelihood, "name", None) != "gaussian":
        return {}
    x = np.asarray(x)
    if not (x.min() >= 0 and x.max() <= 1):
        return {}
    out = {}
    for key in ("elbo", "logpx"):
        if res.get(key) is not None:
            nats, bpd = eight_bit(res[key], model.data_dim)
            out.update({f"{key}_8bit": round(nats, 4), f"{key}_bits_per_dim": round(bpd, 5)})
    return out


def _record_eval(run, res):
    """rundir.record_eval, or None with a warning when the run directory cannot be written."""
    try:
        return rundir.record_eval(run, res)
    except (OSError, MinivaeError) as e:
        print(f"minivae: warning: the evaluation was not recorded in {run} ({e})",
              file=sys.stderr)
        return None


def _load_for_device(run, device):
    from .rundir import load_run
    return load_run(run, device)


# ------------------------------------------------------------------------------------ sample
MAX_SAMPLES = 1024


def cmd_sample(args):
    from .backend import make_rng
    from .plots import save_grid
    if args.n > MAX_SAMPLES:
        raise MinivaeError(f"--n must be at most {MAX_SAMPLES} (one PNG grid), got {args.n}")
    if args.out and not args.out.lower().endswith(".png"):
        raise MinivaeError(f"--out must name a .png file (the grid is written as PNG), "
                           f"got {args.out}")
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise MinivaeError(f"--out {args.out}: the folder "
                           f"{os.path.dirname(os.path.abspath(args.out))} does not exist")
    model, meta, _, _ = _load_for_device(args.run, args.device)
    shape = tuple(meta.get("image_shape") or _square(model.data_dim))
    run_dir = args.run if os.path.isdir(args.run) else os.path.dirname(args.run)
    out = args.out or os.path.join(run_dir, f"samples-seed{args.seed}.png")
    save_grid(out, model.sample(args.n, make_rng(args.seed, model.xp)), shape,
              ncols=min(args.n, 8), title=f"{args.n} samples, seed {args.seed}")
    print(out)
    return 0


def cmd_traverse(args):
    import numpy as np
    from .latent_plots import write_latent_figures
    out = args.out
    if out is not None and not os.path.isdir(out):
        raise MinivaeError(f"--out {out}: no such folder; create it first")
    model, meta, _, _ = _load_for_device(args.run, args.device)
    run_dir = args.run if os.path.isdir(args.run) else os.path.dirname(args.run) or "."
    data = _reload_data(meta, args.data_dir)
    x = data.test if data.test is not None else (data.valid if data.valid is not None
                                                  else data.train)
    if args.image >= len(x):
        raise MinivaeError(f"--image {args.image}: the held-out split has {len(x)} images")
    x = np.concatenate([x[args.image:args.image + 1], x])
    for path in write_latent_figures(model, out or run_dir, x, tuple(meta["image_shape"]),
                                     shapes_factors=meta["dataset"] == "shapes", seed=args.seed):
        print(path)
    return 0


def _square(d):
    r = int(round(d ** 0.5))
    if r * r != d:
        raise MinivaeError(f"cannot lay out {d}-dimensional samples as square images")
    return (r, r)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    comm = None
    try:
        if args.command in ("train", "sweep"):
            from .parallel import launched_by_mpi, world
            comm = world(getattr(args, "mpi_timeout", None)) if launched_by_mpi() else None
            if args.command == "sweep":
                from .sweep import cmd_sweep
                return cmd_sweep(args, comm)
            return cmd_train(args, comm)
        return {"eval": cmd_eval, "sample": cmd_sample,
                "traverse": cmd_traverse}[args.command](args)
    except MinivaeError as e:
        return _fail(comm, str(e), 2, everywhere=getattr(e, "collective", False))
    except KeyboardInterrupt:
        return _fail(comm, "interrupted", 130, prefix="minivae: ")
    except MemoryError:
        return _fail(comm, "not enough memory for these sizes; choose smaller ones (--hidden, "
                     "--latent-dim, --k, --batch-size, --valid-size)", 2)
    except OSError as e:           # a disk or folder problem outside the checkpoint writer
        return _fail(comm, f"{e.filename or ''}: {e.strerror or e}", 2)
    except Exception as e:         # a bug: under mpiexec the other ranks must not wait for us
        if comm is None or comm.size == 1:
            raise
        import traceback
        traceback.print_exc()
        return _fail(comm, f"{type(e).__name__}: {e}", 1)


def _fail(comm, message, code, everywhere=False, prefix="minivae: error: "):
    """Print the one-line error; under mpiexec end the whole job (the other ranks would wait in
    their next collective), unless every rank raised the same error (printed by rank 0)."""
    if comm is None or comm.size == 1:
        print(f"{prefix}{message}", file=sys.stderr)
        return code
    if everywhere:
        if comm.root:
            print(f"{prefix}{message}", file=sys.stderr)
        return code
    rank = "" if message.startswith("rank ") else f"rank {comm.rank}: "
    print(f"{prefix}{rank}{message}; ending all {comm.size} ranks", file=sys.stderr, flush=True)
    # MPI_Abort makes mpiexec kill every process at once; its forwarder can drop what a rank
    # printed just before (seen in CI under load: the job ended without this line).  Give it a
    # moment to pass the line on: the job is ending anyway.
    import time
    time.sleep(0.5)
    comm.abort(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
