"""Peak memory of streaming extraction (``extraction.engine: stream``) at 10k and 100k images.

    python benchmarks/stream.py                      # 10,000 and 100,000 images
    python benchmarks/stream.py --sizes 2000 20000   # a quicker look

The collection: the 120 real images of ``data/sample`` repeated, each copy a file of its own
with a few unique bytes after the image data (decoders ignore them), so every copy has its
own content id and the FeatureStore extracts and stores every copy. Extraction hashes the
bytes it decodes, so the copies must really differ: ids that do not match the file's bytes
are refused as "changed since scan". The files are small and sit in the page cache, so this
measures the pipeline, not the disk (100k copies take ~1.1 GB of /tmp while it runs). View ``pixels16``: a
16x16 raw-pixel grid, no network, so 100k images finish on a shared 2-core machine; every
stage (read, decode, transform, forward actor, object store, shard writes) still runs.

Each size runs in a fresh process with its own local Ray (2 CPUs, 256 MB object store).
Memory is the proportional set size (PSS: shared pages split among the processes sharing
them, so the object store's shared memory is counted once) summed over the whole process
tree: the driver, GCS, raylet, the Ray Data tasks and actors. It is sampled every 0.25 s
from ``/proc/<pid>/smaps_rollup``. Growth = peak - the tree's PSS right after ``ray.init``
(before the records are built, so the driver's list of records and the store's id index,
both O(n), are part of the growth).

Printed per size: images/s, peak PSS, growth, the collection's bytes (what holding it would
cost) and the ratio growth / collection bytes; then the ratio of growth 100k / 10k against
the collection's ratio (10x). Goal: memory grows far less than the collection.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VIEW = "pixels16"
BATCH_SIZE = 256
OBJECT_STORE_MB = 256
SAMPLE_EVERY_S = 0.25


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass  # the process ended between listing and reading
    return 0


def _tree_pss(root: int) -> tuple[int, int]:
    import psutil

    try:
        processes = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    return sum(_pss_bytes(p.pid) for p in processes), len(processes)


class _Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.peak_processes = 0
        self.samples = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            total, n = _tree_pss(os.getpid())
            if total > self.peak:
                self.peak, self.peak_processes = total, n
            self.samples += 1
            self._done.wait(SAMPLE_EVERY_S)

    def stop(self) -> None:
        self._done.set()
        self.join()


def measure(n_images: int, cache: Path) -> dict:
    """One size, in this process (run it in a fresh one)."""
    import ray

    from rayclust.config import ExtractionConfig
    from rayclust.images import ImageSet
    from rayclust.views import FeatureStore, extract_views

    ray.init(
        address="local", num_cpus=2, object_store_memory=OBJECT_STORE_MB * 1024**2,
        include_dashboard=False, log_to_driver=False, configure_logging=False,
    )  # fmt: skip
    time.sleep(2.0)  # let the raylet's start-up workers settle before the baseline
    baseline, _ = _tree_pss(os.getpid())
    sampler = _Sampler()
    sampler.start()
    sample = ImageSet.from_source(REPO_ROOT / "data" / "sample", progress=False).records
    folder = cache.parent / "images"
    for i in range(n_images):
        base = Path(sample[i % len(sample)].path)
        copy = folder / f"{i // 1000:04d}" / f"{i:07d}{base.suffix}"
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(base.read_bytes() + f"rayclust-copy-{i}".encode())
    records = ImageSet.from_source(folder, progress=False).records
    collection_bytes = sum(Path(r.path).stat().st_size for r in records)
    config = ExtractionConfig(batch_size=BATCH_SIZE, engine="stream")
    start = time.perf_counter()
    (result,) = extract_views(records, VIEW, cache, config, progress=False).values()
    seconds = time.perf_counter() - start
    sampler.stop()
    stored = len(FeatureStore(cache, result.spec_key))
    ray.shutdown()
    return {
        "n": n_images,
        "stored": stored,
        "failed": len(result.failed),
        "seconds": seconds,
        "images_per_s": n_images / seconds,
        "baseline_bytes": baseline,
        "peak_bytes": sampler.peak,
        "peak_processes": sampler.peak_processes,
        "growth_bytes": sampler.peak - baseline,
        "collection_bytes": collection_bytes,
        "samples": sampler.samples,
    }


def _run_in_subprocess(n_images: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="rayclust-stream-bench-") as tmp:
        out = Path(tmp) / "result.json"
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.setdefault("OMP_NUM_THREADS", "1")
        subprocess.run(
            [sys.executable, __file__, "--one", str(n_images), "--cache", f"{tmp}/cache",
             "--out", str(out)],
            check=True, env=env, cwd=REPO_ROOT,
        )  # fmt: skip
        return json.loads(out.read_text())


def _mb(value: float) -> str:
    return f"{value / 1024**2:,.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        Path(args.out).write_text(json.dumps(measure(args.one, Path(args.cache))))
        return

    rows = []
    for n in sorted(args.sizes):
        row = _run_in_subprocess(n)
        rows.append(row)
        print(
            f"n={row['n']:>7,}: {row['images_per_s']:6.0f} img/s ({row['seconds']:.0f} s), "
            f"stored {row['stored']:,}, peak PSS {_mb(row['peak_bytes'])} over "
            f"{row['peak_processes']} processes, growth {_mb(row['growth_bytes'])}, "
            f"collection {_mb(row['collection_bytes'])}, "
            f"growth / collection = {row['growth_bytes'] / row['collection_bytes']:.3f}",
            flush=True,
        )
    if len(rows) >= 2:
        small, large = rows[0], rows[-1]
        print(
            f"{large['n']:,} vs {small['n']:,} images: collection x"
            f"{large['collection_bytes'] / small['collection_bytes']:.1f}, peak PSS x"
            f"{large['peak_bytes'] / small['peak_bytes']:.2f}, growth x"
            f"{large['growth_bytes'] / max(small['growth_bytes'], 1):.2f}; extra memory per"
            f" extra image {(large['growth_bytes'] - small['growth_bytes']) / (large['n'] - small['n']):,.0f}"
            f" bytes against {(large['collection_bytes'] - small['collection_bytes']) / (large['n'] - small['n']):,.0f}"
            " bytes of image data"
        )


if __name__ == "__main__":
    main()
