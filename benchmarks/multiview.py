"""Four views cold against the slowest view alone: what one decode for every view buys.

    python benchmarks/multiview.py --list /tmp/images.txt

Each measurement is a fresh process with a fresh cache running ``extract_views`` with this
checkout's defaults (engine auto -> local on one machine, precision auto), models built
inside the timing:

1. the slowest view alone (``--slowest``, default efficientnet_lite2);
2. the four views ``efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, pixels``
   together (each image read and decoded once, each view's forward in turn).

Printed: seconds of each and the ratio four / slowest (the goal: <= 1.6). The forward passes
of four networks cannot cost less than their sum on a CPU whose cores the forward already
uses, so the ratio's floor is (decode + sum of forwards) / (decode + slowest forward).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FOUR = "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2,pixels"

RUN = r"""
import json, sys, time
from rayclust.config import ExtractionConfig
from rayclust.images import ImageSet
from rayclust.views import extract_views
source, cache, views = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
records = ImageSet.from_source(source, progress=False).records
start = time.perf_counter()
results = extract_views(records, views, cache, ExtractionConfig(), progress=False)
print(json.dumps({"n": len(records), "seconds": time.perf_counter() - start,
                  "forward": {v: r.forward_seconds for v, r in results.items()},
                  "decode": max(r.decode_seconds for r in results.values())}))
"""


def _run(source: str, views: str) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        done = subprocess.run(
            [sys.executable, "-c", RUN, source, cache, views],
            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
            capture_output=True, text=True, cwd=REPO_ROOT,
        )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"extraction of {views} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", required=True, help="a folder or a .txt list of images")
    parser.add_argument("--slowest", default="efficientnet_lite2")
    args = parser.parse_args()
    print(f"{args.list}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    alone = _run(args.list, args.slowest)
    four = _run(args.list, FOUR)
    for name, out in ((args.slowest, alone), ("four views", four)):
        forwards = ", ".join(f"{v} {s:.1f}" for v, s in out["forward"].items())
        print(
            f"{name}: {out['seconds']:.1f} s for {out['n']} images "
            f"(forward s: {forwards}; decode {out['decode']:.1f} s)"
        )
    print(f"ratio four / {args.slowest} alone: {four['seconds'] / alone['seconds']:.2f}x")


if __name__ == "__main__":
    main()
