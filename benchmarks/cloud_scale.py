"""Driver memory and speed of a worker-scan run at scale on a simulated cluster.

    python benchmarks/cloud_scale.py N [--dir DIR] [--scan-only | --cluster-only]
        [--batch-size B] [--node-cpus C]

Makes ``DIR/images-N``: N distinct 8x8 RGB PNGs (random pixels, seeded; 1000 per
sub-folder; written by two processes), unless it is there. Then starts a simulated cluster
(``ray.cluster_utils.Cluster``: a head with 0 CPUs, as a real head that runs no work, and 3
worker nodes of 2 logical CPUs each, ``--node-cpus``) and runs the real pipeline in this process, the driver:
``pipeline.run`` with ``views=[pixels16] extraction.engine=stream extraction.scan=workers
clustering.engine=ray`` (``--scan-only``: ``pipeline.scan_on_workers`` alone). The files
are read by the workers only: content ids come from the bytes they decode.

A thread samples the driver's resident memory (VmRSS; RssAnon = its private heap, RssShmem =
object-store pages it mapped) every 50 ms; the stages are told apart by wrapping the
pipeline's calls: ``scan+extract`` (the workers' scan and extraction, the driver listing and
writing shards and manifest parts), ``other`` (the rest, mainly the manifest parts read back into an ImageSet),
``cluster`` (``clustering.engine=ray``: the shards load, reduce and cluster; the driver gets
labels and a sample), ``record`` (run folder). Prints, per stage,
seconds, images/s and the driver's peak RSS / RssAnon, and the unique-set size (ids in the
view's store).

A local folder, not moto S3 on loopback: a million PUTs and GETs through moto's
single-threaded server would measure moto, and the machine has 2 shared cores; the listing
code for buckets is the same generator (``iter_source`` -> ``bucket_candidates``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import shutil
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

PER_FOLDER = 1000


def _write_folder(args: tuple[str, int, int]) -> None:
    import numpy as np
    from PIL import Image

    folder, start, stop = args
    Path(folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    pixels = rng.integers(0, 256, size=(stop - start, 8, 8, 3), dtype=np.uint8)
    for i, array in enumerate(pixels):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
        (Path(folder) / f"{start + i:08d}.png").write_bytes(buffer.getvalue())


def make_images(root: Path, n: int) -> Path:
    folder = root / f"images-{n}"
    if (folder / "done").exists():
        return folder
    jobs = [
        (str(folder / f"{start // PER_FOLDER:05d}"), start, min(start + PER_FOLDER, n))
        for start in range(0, n, PER_FOLDER)
    ]
    started = time.perf_counter()
    with Pool(2) as pool:
        pool.map(_write_folder, jobs, chunksize=8)
    (folder / "done").write_text(str(n))
    print(f"made {n:,} PNGs in {time.perf_counter() - started:.0f} s")
    return folder


def _memory() -> tuple[float, float, float]:
    """VmRSS, RssAnon, RssShmem of this process, MiB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssShmem"):
            values[key] = int(value.split()[0]) / 1024
    return values["VmRSS"], values["RssAnon"], values["RssShmem"]


def _machine_used() -> float:
    """MemTotal - MemAvailable, MiB: the whole simulated cluster (every node is here)."""
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        values[key] = int(value.split()[0]) / 1024
    return values["MemTotal"] - values["MemAvailable"]


class StageMemory:
    """Peak memory and seconds per stage, sampled in a thread."""

    def __init__(self) -> None:
        self.stage = "start"
        self.peaks: dict[str, list[float]] = {}
        self.seconds: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.note()

    def note(self) -> None:
        rss, anon, _ = _memory()
        peak = self.peaks.setdefault(self.stage, [0.0, 0.0, 0.0])
        peak[0], peak[1] = max(peak[0], rss), max(peak[1], anon)
        peak[2] = max(peak[2], _machine_used())

    @contextlib.contextmanager
    def during(self, stage: str):
        before, self.stage = self.stage, stage
        self.note()
        started = time.perf_counter()
        try:
            yield
        finally:
            self.note()
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started
            self.stage = before

    def wrap(self, module, name: str, stage: str) -> None:
        original = getattr(module, name)

        def wrapped(*args, **kwargs):
            with self.during(stage):
                return original(*args, **kwargs)

        setattr(module, name, wrapped)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run(source: Path, work: Path, n: int, mode: str, batch_size: int, node_cpus: int) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from rayclust import pipeline
    from rayclust.config import load_config
    from rayclust.views import FeatureStore, stream_scan

    node_args = {"num_cpus": node_cpus, "object_store_memory": 150 * 1024**2}
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 200 * 1024**2}
    )
    try:
        for _ in range(3):
            cluster.add_node(**node_args)
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        cluster.wait_for_nodes()
        cache, out = work / "cache", work / "run"
        if mode != "cluster":  # --cluster-only reuses the last run's cache and scan parts
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
        config = load_config(
            overrides=[
                f"input.source={source}",
                "views=[pixels16]",
                f"extraction.cache_dir={cache}",
                "extraction.engine=stream",
                "extraction.scan=workers",
                f"extraction.batch_size={batch_size}",
                "extraction.actors_per_view=2",
                "clustering.engine=ray",
                "clustering.n_clusters=10",
                "clustering.seeds=1",
                "clustering.pca_dim=32",
                "tracking.enabled=false",
                "report.enabled=false",
                f"output={out}",
                f"ray.address={cluster.address}",
            ]
        )
        stages = StageMemory()
        stages.wrap(stream_scan, "scan_and_extract_stream", "scan+extract")
        stages.wrap(pipeline, "cluster_sharded", "cluster")
        stages.wrap(pipeline, "_record", "record")
        base = _memory()
        started = time.perf_counter()
        extraction = None
        if mode == "scan":
            with stages.during("other"):
                extraction = pipeline.scan_on_workers(config, out)
        elif mode == "cluster":
            from rayclust.images import ScanParts

            with stages.during("other"):
                held = ScanParts(out / "scan").image_set()
                (key,) = [p.name for p in cache.iterdir() if p.is_dir()]
                pipeline.cluster_sharded(config, held.image_ids, {"pixels16": key}, held.labels, 10)
        else:
            with stages.during("other"):  # what is not in an inner stage
                result = pipeline.run(config, progress=False)
            held = result.images
            print(
                f"clusters found: {result.n_clusters}, images: {result.n_images:,}; the driver's "
                f"image table: {held.nbytes / 2**20:.1f} MiB ({held.nbytes / len(held):.0f} B/image)"
            )
        total = time.perf_counter() - started
        stages.stop()
        if extraction is not None:
            (view,) = extraction.results
            key = extraction.results[view].spec_key
        else:
            key = next(p.name for p in cache.iterdir() if p.is_dir())
        unique = len(FeatureStore(cache, key))
        inner = sum(s for stage, s in stages.seconds.items() if stage != "other")
        stages.seconds["other"] -= inner
        print(
            f"N={n:,} unique-set={unique:,} total {total:.0f} s ({n / total:,.0f} img/s); driver "
            f"RSS after ray.init {base[0]:.0f} MiB (RssAnon {base[1]:.0f}); peak "
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
        )
        for stage, (rss, anon, machine) in stages.peaks.items():
            if stage == "start":
                continue
            seconds = stages.seconds.get(stage, 0.0)
            print(
                f"  {stage:13s} {seconds:7.1f} s {n / max(seconds, 1e-9):9,.0f} img/s  "
                f"driver peak RSS {rss:6.0f} MiB  RssAnon {anon:6.0f} MiB  machine used "
                f"{machine / 1024:5.1f} GiB"
            )
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "cloud_scale")
    parser.add_argument("--scan-only", action="store_true")
    parser.add_argument(
        "--cluster-only", action="store_true", help="cluster the last run's features again"
    )
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--node-cpus", type=int, default=2, help="logical CPUs per worker node")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    source = make_images(args.dir, args.n)
    run(
        source, args.dir / f"work-{args.n}", args.n,
        "scan" if args.scan_only else "cluster" if args.cluster_only else "run", args.batch_size,
        args.node_cpus,
    )  # fmt: skip


if __name__ == "__main__":
    main()
