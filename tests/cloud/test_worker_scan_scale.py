"""A worker scan at scale, in small: the driver lists while the workers extract, and what the
driver keeps does not grow with the number of images.

Growth is measured as objects, not RSS: the deep size of what the driver keeps for the run
(the per-view tally: stores, counts, cached ids, failures, forward spans) each time a batch
is written, after 200 and after 600 images of one run. The same measure is shown to catch
per-image state first (a FeatureStore that indexes what it writes), so a flat line means
something.
"""

from __future__ import annotations

import io
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rayclust.config import load_config
from rayclust.images import ScanParts, iter_source
from rayclust.views import FeatureStore, extraction_specs, scan_and_extract_stream, stream_scan

PER_IMAGE_BYTES = 16  # far below any record, id or dict entry kept per image
PER_BATCH_BYTES = 512  # a batch's forward span (the timeline): about 0.5 B per image at 1,024
# 400 images (4 batches of 100) from the second batch to the last
ALLOWED = PER_IMAGE_BYTES * 400 + PER_BATCH_BYTES * 4


def deep_size(obj, seen: set[int] | None = None) -> int:
    """Bytes of ``obj`` and everything it holds (containers, instance attributes, arrays)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (type, types.ModuleType, types.FunctionType)):
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return sys.getsizeof(obj) + (obj.nbytes if obj.base is None else 0)
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        size += sum(deep_size(item, seen) for item in obj)
    elif hasattr(obj, "__dict__"):
        size += deep_size(vars(obj), seen)
    return size


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


def _extraction(tmp_path: Path, batch_size: int = 100):
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


def _held_per_batch(tmp_path: Path, n: int, monkeypatch) -> list[int]:
    """The deep size of the driver's per-run state as each batch of a worker scan of n tiny
    images is written."""
    source = _tiny_pngs(tmp_path / "images", n)
    specs, config = _extraction(tmp_path)
    sizes: list[int] = []
    add = stream_scan._Tally.add

    def measured(self, batch, parts):
        add(self, batch, parts)
        sizes.append(deep_size(self) + deep_size(parts))

    monkeypatch.setattr(stream_scan._Tally, "add", measured)
    results = scan_and_extract_stream(
        iter_source(source), specs, tmp_path / "cache", config, tmp_path / "parts",
        max_pixels=10**6,
    )  # fmt: skip
    monkeypatch.undo()
    assert results["pixels16"].n_extracted == n
    assert len(ScanParts(tmp_path / "parts").image_set().records) == n
    return sizes


def test_the_measure_catches_per_image_state(tmp_path):
    """A store that indexes its writes keeps an entry per image: the measure sees it; one
    that does not remember them stays flat."""
    for remember in (True, False):
        store = FeatureStore(tmp_path / str(remember), "view")
        sizes = {}
        for start in range(0, 600, 100):
            ids = [f"{i:032x}" for i in range(start, start + 100)]
            store.write(ids, np.zeros((100, 4), dtype=np.float32), remember=remember)
            sizes[start + 100] = deep_size(store)
        growth = sizes[600] - sizes[200]
        assert growth > 5 * ALLOWED if remember else growth < ALLOWED, (remember, growth)


def test_the_driver_holds_nothing_per_image(ray_session, tmp_path, monkeypatch):
    sizes = _held_per_batch(tmp_path, 600, monkeypatch)  # batches of 100
    assert len(sizes) == 6
    # From 200 images written to 600: no more than a few bytes per image.
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


def test_the_workers_write_the_features_and_the_driver_gets_none(
    ray_session, tmp_path, monkeypatch
):
    """The forward actors write the shards: a driver whose FeatureStore cannot write, and
    whose batches must carry no feature column, still gets every image stored once."""
    source = _tiny_pngs(tmp_path / "images", 60)
    specs, config = _extraction(tmp_path, batch_size=20)
    add, columns = stream_scan._Tally.add, set()

    def no_features_here(self, batch, parts):
        columns.update(batch)
        add(self, batch, parts)

    def refuse(*args, **kwargs):
        raise AssertionError("the driver wrote features")

    monkeypatch.setattr(stream_scan._Tally, "add", no_features_here)
    monkeypatch.setattr(FeatureStore, "write", refuse)  # this process only: not the actors'
    results = scan_and_extract_stream(
        iter_source(source), specs, tmp_path / "cache", config, tmp_path / "parts",
        max_pixels=10**6,
    )  # fmt: skip
    monkeypatch.undo()
    assert results["pixels16"].n_extracted == 60 and results["pixels16"].dim == 16 * 16 * 3
    assert columns and not any(name.startswith("feature_") for name in columns), columns
    images = ScanParts(tmp_path / "parts").image_set()
    store = FeatureStore(tmp_path / "cache", results["pixels16"].spec_key)
    assert len(store) == 60
    features = store.get(list(images.image_ids))
    assert features.shape == (60, 768) and np.isfinite(features).all() and features.any()
