"""Driver memory of a worker scan's listing phase (extraction.scan: workers).

    python benchmarks/worker_scan_memory.py FOLDER N

Makes FOLDER with N one-byte ``.png`` names (1000 per sub-folder) if it is not there, then,
in a fresh process with a 1-CPU local Ray, lists it as the driver does
(``rayclust.images.iter_source`` into object-store blocks, ``iter_name_blocks``) and prints the
driver's peak RSS before and after. Files are never read here: the listing phase is what
the driver does alone; the workers read.
"""

from __future__ import annotations

import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path


def make(folder: Path, n: int) -> None:
    if (folder / "done").exists():
        return
    for i in range(n):
        sub = folder / f"{i // 1000:05d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        fd = os.open(sub / f"{i:08d}.png", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"x")
        os.close(fd)
    (folder / "done").write_text(str(n))


def _status() -> dict[str, float]:
    """This process's resident memory by kind, MiB (private heap vs mapped shared memory:
    the object store's pages that ray.put wrote count in RSS but are not the driver's)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssShmem", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def main() -> None:
    folder, n = Path(sys.argv[1]), int(sys.argv[2])
    make(folder, n)
    import ray

    from rayclust.images import iter_source
    from rayclust.views import stream_scan

    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=400 * 1024**2,
             log_to_driver=False, configure_logging=False)  # fmt: skip
    list(stream_scan.iter_name_blocks(iter([("warm-up.png", None)])))  # imports not counted
    base, before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, _status()
    tracemalloc.start()
    start = time.perf_counter()
    skipped: list = []
    refs = []
    for ref, refused in stream_scan.iter_name_blocks(iter_source(folder)):
        refs += [ref] if ref is not None else []
        skipped.extend(refused)
    seconds = time.perf_counter() - start
    heap_peak = tracemalloc.get_traced_memory()[1] / 1024**2
    tracemalloc.stop()
    peak, after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, _status()
    rows = sum(ray.get(ref).num_rows for ref in refs[:1]) * len(refs)
    print(
        f"n={n} blocks={len(refs)} (~{rows} names) listing {seconds:.1f} s "
        f"({n / seconds:,.0f} names/s); driver peak RSS {base:.0f} MiB after ray.init -> "
        f"{peak:.0f} MiB after listing (+{peak - base:.0f} MiB); Python heap peak while "
        f"listing {heap_peak:.1f} MiB; RssAnon {before['RssAnon']:.0f} -> {after['RssAnon']:.0f}"
        f" MiB, RssShmem {before['RssShmem']:.0f} -> {after['RssShmem']:.0f} MiB"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
