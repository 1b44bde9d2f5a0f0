"""Report page size and time for large synthetic runs over repeated real images.

    .venv/bin/python benchmarks/report_size.py                 # 100k rows
    .venv/bin/python benchmarks/report_size.py --rows 100000 1000000 --clusters 1000

Each row points at one of the shipped sample images (data/sample, repeated), with blob
features (one blob per cluster). Prints the page size against rayclust.report's bound
(PAGE_BOUND_BYTES) and the time to write it.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from rayclust import report
from rayclust.images import content_id

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def fake_run(run_dir: Path, n_rows: int, n_clusters: int, dim: int, seed: int = 0) -> np.ndarray:
    images = sorted(SAMPLE.rglob("*.png"))
    if not images:
        raise SystemExit(f"no sample images under {SAMPLE}; run scripts/build_sample.py")
    ids = [content_id(p.read_bytes()) for p in images]
    rng = np.random.default_rng(seed)
    clusters = rng.integers(0, n_clusters, n_rows)
    features = (rng.normal(size=(n_clusters, dim)) * 3)[clusters] + rng.normal(size=(n_rows, dim))
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "assignments.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "image_id", "cluster", "label"])
        for row in range(n_rows):
            j = row % len(images)
            writer.writerow([images[j], ids[j], int(clusters[row]), images[j].parent.name])
    (run_dir / "metrics.json").write_text(json.dumps({"n_images": n_rows}))
    return features.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()
    bound = report.PAGE_BOUND_BYTES
    print(
        f"{'rows':>10} {'clusters':>8} {'page MB':>8} {'bound MB':>8} {'ratio':>6} {'seconds':>8}"
    )
    for n_rows in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            features = fake_run(run_dir, n_rows, args.clusters, args.dim)
            start = time.perf_counter()
            page = report.write_report(run_dir, features=features, log_to_mlflow=False)
            seconds = time.perf_counter() - start
            size = page.stat().st_size
        print(
            f"{n_rows:>10,} {args.clusters:>8} {size / 2**20:>8.2f} {bound / 2**20:>8.2f} "
            f"{size / bound:>6.2f} {seconds:>8.1f}"
        )


if __name__ == "__main__":
    main()
