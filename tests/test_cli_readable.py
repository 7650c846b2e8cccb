"""The command line as a person reads it: help on every option with one consistent default,
--version, plain per-epoch lines in a log file, grammar, evaluations recorded in the run
directory, units (nats per example, and the 8-bit scale for continuous decoders)."""
import argparse
import glob
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minivae import __version__, cli
from minivae.evaluation import eight_bit

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--hidden", "8", "--latent-dim", "2", "--batch-size", "20", "--no-progress"]


def _subparsers():
    p = cli.build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return p, sub.choices


def test_every_option_has_help_and_one_default():
    parser, subs = _subparsers()
    for name, sp in [("minivae", parser), *subs.items()]:
        formatter = sp._get_formatter()
        for action in sp._actions:
            if not action.option_strings or isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help and action.help.strip(), (name, action.option_strings)
            text = formatter._expand_help(action) if action.help else ""
            if hasattr(formatter, "_get_help_string"):
                action_help = formatter._get_help_string(action)
                text = action_help % {**vars(action), "default": action.default}
            assert "default: None" not in text, (name, action.option_strings, text)
            assert len(re.findall(r"default", text)) <= 1, (name, action.option_strings, text)
    # and the rendered pages read as they should
    for name, sp in subs.items():
        page = sp.format_help()
        assert "(default: None)" not in page and "] (default:" not in page, name


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"minivae {__version__}"


def test_the_installed_version_is_the_packages():
    """setup.cfg reads the version from minivae.__version__: the metadata pip installed agrees."""
    from importlib.metadata import version
    assert version("minivae") == __version__


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory):
    """A 2-epoch Gaussian run on a small grey .npy, trained by `python -m minivae` with stderr
    going to a file (not a terminal)."""
    d = tmp_path_factory.mktemp("readable")
    rng = np.random.default_rng(0)
    np.save(d / "x.npy", rng.integers(0, 256, (60, 4, 3), dtype=np.uint8))
    np.save(d / "t.npy", rng.integers(0, 256, (10, 4, 3), dtype=np.uint8))
    with open(d / "err.log", "w") as err:
        out = subprocess.run(
            [sys.executable, "-m", "minivae", "train", "--dataset", str(d / "x.npy"),
             "--test", str(d / "t.npy"), "--likelihood", "gaussian", "--learn-sigma",
             "per-example", "--hidden", "8", "--latent-dim", "2", "--batch-size", "20",
             "--epochs", "2", "--out", str(d / "run")],
            stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, check=True).stdout
    return d, out, (d / "err.log").read_text()


def test_log_file_gets_plain_lines(grey_run):
    _, out, err = grey_run
    assert "\r" not in err and "\x1b" not in err                 # no progress bar redraws
    lines = err.splitlines()
    assert [ln.split(",")[0] for ln in lines if ln.startswith("epoch ")] == \
        ["epoch 0", "epoch 1", "epoch 2"]
    assert all(ln.endswith("(nats per example)") for ln in lines if ln.startswith("epoch "))
    assert "trained 2 epochs in" in out
    summary = json.loads(next(ln for ln in lines if ln.startswith("{")))
    assert summary["units"] == "nats per example"
    nats, bpd = eight_bit(summary["test_elbo_after"], 12)
    assert summary["test_elbo_bits_per_dim_after"] == pytest.approx(bpd, abs=2e-3)


def test_one_epoch_grammar(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((30, 4)))
    rc = cli.main(["train", "--dataset", str(tmp_path / "x.npy"), *SMALL, "--epochs", "1",
                   "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0 and "trained 1 epoch in" in out and "1 epochs" not in out


def test_eval_is_recorded_in_the_run_directory(grey_run, capsys):
    d, _, _ = grey_run
    run = d / "run"
    assert cli.main(["eval", str(run), "--iwae", "7", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert cli.main(["eval", str(run), "--iwae", "7"]) == 0
    text = capsys.readouterr().out
    files = sorted(glob.glob(str(run / "evals" / "*-test-iwae7*.json")))
    assert len(files) == 2
    rec = json.loads(Path(files[0]).read_text())
    for key in ("iwae_k", "split", "logpx", "logpx_stderr", "time", "n", "elbo", "units"):
        assert key in rec, key
    assert rec["iwae_k"] == 7 and rec["split"] == "test" and rec["n"] == 10
    assert rec["logpx"] == printed["logpx"] and rec["logpx_stderr"] > 0
    # units: nats per example, and the 8-bit scale for a Gaussian decoder on [0, 1] data
    assert rec["units"] == "nats per example" and "nats per example" in text
    D = 12
    assert rec["elbo_8bit"] == pytest.approx(rec["elbo"] - D * math.log(256), abs=1e-3)
    assert rec["logpx_bits_per_dim"] == pytest.approx(
        -(rec["logpx"] - D * math.log(256)) / (D * math.log(2)), abs=1e-4)
    assert "bits/dim" in text


def test_an_eval_that_cannot_be_recorded_still_prints_with_a_warning(grey_run, tmp_path, capsys):
    """A run directory whose evals/ cannot be made (a file is in its place): the result is
    printed, exit 0, and one warning line says it was not recorded; nothing else is touched."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(grey_run[0] / "run", run)
    shutil.rmtree(run / "evals", ignore_errors=True)
    (run / "evals").write_text("not a folder")
    assert cli.main(["eval", str(run), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "elbo" in json.loads(out.splitlines()[-1])
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "was not recorded in" in warning[0] and str(run) in warning[0]
    assert (run / "evals").read_text() == "not a folder"


def test_bernoulli_runs_have_no_8bit_terms(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((30, 4)))
    assert cli.main(["train", "--dataset", str(tmp_path / "x.npy"), *SMALL, "--epochs", "1",
                     "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "run"), "--split", "valid", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert res["units"] == "nats per example" and "elbo_bits_per_dim" not in res


def test_eight_bit_conversion():
    nats, bpd = eight_bit(0.0, 1)
    assert nats == pytest.approx(-math.log(256)) and bpd == pytest.approx(8.0)
    # a uniform density on [0, 1]^D is 8 bits per dimension, whatever D
    assert eight_bit(0.0, 784)[1] == pytest.approx(8.0)
    assert eight_bit(784 * math.log(2), 784)[1] == pytest.approx(7.0)


def test_readme_python_example_binarises_as_the_cli_does():
    """The README loads shapes as `minivae train` does by default (grey levels, no binarisation)."""
    text = (ROOT / "README.md").read_text()
    calls = re.findall(r'load_dataset\("shapes"(?:, binarize="(\w+)")?\)', text)
    assert calls, "the README no longer loads shapes"
    args = cli.build_parser().parse_args(["train"])
    cli._resolve(args)
    for mode in calls:
        assert mode == args.binarize, (mode, args.binarize)
