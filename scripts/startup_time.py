"""Wall seconds from launching `minivae train` (built-in shapes, defaults) to the end of its first
training step, over several launches: the first may fill the Numba cache, the rest show the warm
start.  Prints one JSON line.

    python scripts/startup_time.py [--runs 4]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# `minivae train` whose first forward_backward ends the process once it has run
CHILD = """
import os, sys
import minivae.model as M
step = M.VAE.forward_backward
def first_step(self, x, eps):
    step(self, x, eps)
    os._exit(0)
M.VAE.forward_backward = first_step
from minivae.cli import main
main(sys.argv[1:])
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=4)
    args = p.parse_args()
    out = tempfile.mkdtemp()
    seconds = []
    for i in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", CHILD, "train", "--out", os.path.join(out, f"r{i}"),
                        "--no-progress"], check=True, capture_output=True)
        seconds.append(round(time.perf_counter() - t0, 3))
    print(json.dumps({"seconds_to_first_step": seconds, "warm_median": sorted(seconds[1:])[
        len(seconds[1:]) // 2] if len(seconds) > 1 else seconds[0]}))


if __name__ == "__main__":
    main()
