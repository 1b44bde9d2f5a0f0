"""12 MP JPEGs: extraction now against extraction as it was (another commit), same run.

    python benchmarks/jpeg_extract.py --source /tmp/photos --n 48 --make-from /tmp/real-images
    python benchmarks/jpeg_extract.py --views efficientnet_lite0,efficientnet_lite1,efficientnet_lite2,pixels

``--make-from``: writes ``--n`` 4000x3000 JPEGs (quality 90) into ``--source`` by upscaling
real images found there (Pillow, bicubic), unless ``--source`` holds them already.

Each side runs ``extract_views`` with the local engine in a fresh process and a fresh cache
on the same files and times it (model build included on both sides):

- before: the package as of ``--baseline`` (default: the commit this branch started from),
  exported with ``git archive`` to a temporary folder: full decode of every pixel, fp32
  eager forward, one decode per view;
- now: this checkout with its defaults (reduced-scale decode, precision auto, one decode
  per image for every view).

Printed: seconds and images/s of each, and the speed-up before / now (the goal for 12 MP
JPEGs and the default view: >= 4x). Ratios within one run only: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BASELINE = "3a1ffab"  # main when issue 15 was started

RUN = r"""
import json, sys, time
from rayclust.config import ExtractionConfig
from rayclust.images import ImageSet
from rayclust.views import extract_views
source, cache, views = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
records = ImageSet.from_source(source, progress=False).records
start = time.perf_counter()
results = extract_views(records, views, cache, ExtractionConfig(engine="local"), progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"n": len(records), "seconds": seconds,
                  "extracted": {v: r.n_extracted for v, r in results.items()}}))
"""


def make_jpegs(source: Path, real: Path, n: int) -> None:
    from PIL import Image

    source.mkdir(parents=True, exist_ok=True)
    if len(list(source.glob("*.jpg"))) >= n:
        return
    candidates = sorted(p for p in real.rglob("*") if p.suffix.lower() in {".png", ".jpg"})
    made = 0
    for path in candidates:
        if made >= n:
            break
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except OSError:
            continue
        if min(rgb.size) < 64:
            continue
        rgb.resize((4000, 3000), Image.Resampling.BICUBIC).save(
            source / f"photo{made:03d}.jpg", quality=90
        )
        made += 1


def _run(pythonpath: str, source: str, views: str) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, PYTHONPATH=pythonpath)
        done = subprocess.run(
            [sys.executable, "-c", RUN, source, cache, views],
            env=env, capture_output=True, text=True, cwd=pythonpath,
        )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"extraction under {pythonpath} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="/tmp/rayclust-12mp")
    parser.add_argument("--make-from", help="folder of real images to upscale into --source")
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--views", default="efficientnet_lite0")
    parser.add_argument("--baseline", default=BASELINE, help="git commit to compare with")
    args = parser.parse_args()
    if args.make_from:
        make_jpegs(Path(args.source), Path(args.make_from), args.n)
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(
            ["git", "archive", args.baseline], cwd=REPO_ROOT, capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
        print(
            f"{args.views} on {args.source}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
        )
        start = time.perf_counter()
        before = _run(old, args.source, args.views)
        now = _run(str(REPO_ROOT), args.source, args.views)
        wall = time.perf_counter() - start
    n = now["n"]
    print(f"before ({args.baseline}): {before['seconds']:.1f} s, {n / before['seconds']:.2f} img/s")
    print(f"now: {now['seconds']:.1f} s, {n / now['seconds']:.2f} img/s")
    print(f"speed-up {before['seconds'] / now['seconds']:.2f}x on {n} images ({wall:.0f} s wall)")


if __name__ == "__main__":
    main()
