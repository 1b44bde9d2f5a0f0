"""A worker scan at scale, in small: the driver lists while the workers extract, and what the
driver keeps does not grow with the number of images.

Growth is measured as objects, not RSS: tracemalloc in the driver, counting only memory
allocated by rayclust's own code (Ray's bookkeeping is Ray's) that is still alive each time
a batch's manifest part is written, after 100 and after 600 images of one run (the
listing, one block, is over by then; its buffer is one block by construction). The same
measure is shown to catch per-image state first (a FeatureStore that indexes what it
writes), so a flat line means something.
"""

from __future__ import annotations

import io
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rayclust.config import load_config
from rayclust.images import ScanParts, iter_source
from rayclust.views import FeatureStore, extraction_specs, scan_and_extract_stream, stream_scan

RAYCLUST_CODE = tracemalloc.Filter(True, "*/rayclust/*")
PER_IMAGE_BYTES = 16  # far below any record, id or dict entry kept per image
# Allowed per batch: its forward span (the timeline) and its shard files' digests (~950 B
# measured); at production batch sizes (1,024) that is about 1 B per image.
PER_BATCH_BYTES = 1536
# 500 images (10 batches of 50) from the second batch to the last
ALLOWED = PER_IMAGE_BYTES * 500 + PER_BATCH_BYTES * 10


def _tiny_pngs(folder: Path, n: int, offset: int = 0) -> Path:
    """n distinct 8x8 PNGs (random pixels), 500 per sub-folder."""
    pixels = np.random.default_rng(offset).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    for i, array in enumerate(pixels):
        sub = folder / f"{i // 500:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
        (sub / f"{offset + i:06d}.png").write_bytes(buffer.getvalue())
    return folder


def _extraction(tmp_path: Path, batch_size: int = 50):
    config = load_config(
        overrides=[
            "views=[pixels16]",
            f"extraction.cache_dir={tmp_path / 'cache'}",
            "extraction.engine=stream",
            "extraction.scan=workers",
            f"extraction.batch_size={batch_size}",
        ]
    )
    return extraction_specs(["pixels16"], config.extraction, "stream"), config.extraction


def _retained(snapshot: tracemalloc.Snapshot) -> int:
    return sum(stat.size for stat in snapshot.filter_traces([RAYCLUST_CODE]).statistics("filename"))


def _retained_per_batch(tmp_path: Path, n: int, monkeypatch) -> list[int]:
    """The rayclust-allocated memory alive in the driver as each batch of a worker scan of
    n tiny images is written (the listing, one block, is over by then)."""
    source = _tiny_pngs(tmp_path / "images", n)
    specs, config = _extraction(tmp_path)
    sizes: list[int] = []
    write = ScanParts.write

    def measured(self, kind, rows):
        write(self, kind, rows)
        if kind == "manifest":
            sizes.append(_retained(tracemalloc.take_snapshot()))

    monkeypatch.setattr(ScanParts, "write", measured)
    tracemalloc.start()
    try:
        results = scan_and_extract_stream(
            iter_source(source), specs, tmp_path / "cache", config, tmp_path / "parts",
            max_pixels=10**6,
        )  # fmt: skip
    finally:
        tracemalloc.stop()
        monkeypatch.undo()
    assert results["pixels16"].n_extracted == n
    assert len(ScanParts(tmp_path / "parts").image_set().records) == n
    return sizes


def test_the_measure_catches_per_image_state(tmp_path):
    """A store that indexes its writes keeps an entry per image: the measure sees it."""
    sizes = {}
    for n in (100, 600):
        store = FeatureStore(tmp_path / str(n), "view")
        tracemalloc.start()
        base = _retained(tracemalloc.take_snapshot())
        for start in range(0, n, 50):
            ids = [f"{i:032x}" for i in range(start, start + 50)]
            store.write(ids, np.zeros((50, 4), dtype=np.float32))
        sizes[n] = _retained(tracemalloc.take_snapshot()) - base
        tracemalloc.stop()
    assert sizes[600] - sizes[100] > ALLOWED  # ~70 B per id measured


def test_the_driver_holds_nothing_per_image(ray_session, tmp_path, monkeypatch):
    sizes = _retained_per_batch(tmp_path, 600, monkeypatch)  # batches of 50
    assert len(sizes) == 12
    # From 100 images written to 600: no more than a few bytes per image.
    assert sizes[-1] - sizes[1] < ALLOWED, sizes


def test_listing_overlaps_extraction(ray_session, tmp_path, monkeypatch):
    """The listing stops after its first block until that block's images are written:
    a driver that lists everything before extracting would wait here for ever."""
    monkeypatch.setattr(stream_scan, "_LIST_BLOCK_ROWS", 10)
    source = _tiny_pngs(tmp_path / "images", 30)
    parts_dir = tmp_path / "parts"
    extracted_while_listing = threading.Event()

    def names():
        for i, item in enumerate(iter_source(source)):
            if i == 10:  # the first block is out; wait for its manifest part (<= 60 s)
                for _ in range(600):
                    if list(parts_dir.glob("manifest-*.csv")):
                        extracted_while_listing.set()
                        break
                    extracted_while_listing.wait(0.1)
            yield item

    specs, config = _extraction(tmp_path, batch_size=10)
    results = scan_and_extract_stream(
        names(), specs, tmp_path / "cache", config, parts_dir, max_pixels=10**6
    )
    assert extracted_while_listing.is_set()
    assert results["pixels16"].n_extracted == 30
    records = ScanParts(parts_dir).image_set().records
    assert [Path(r.path).name for r in records] == [f"{i:06d}.png" for i in range(30)]


def test_a_listing_error_reaches_the_caller(ray_session, tmp_path):
    specs, config = _extraction(tmp_path)

    def names():
        yield from iter_source(_tiny_pngs(tmp_path / "images", 3))
        raise OSError("bucket listing failed on page 2")

    with pytest.raises(OSError, match="page 2"):
        scan_and_extract_stream(
            names(), specs, tmp_path / "cache", config, tmp_path / "parts", max_pixels=10**6
        )
