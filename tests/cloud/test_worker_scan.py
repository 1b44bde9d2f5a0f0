"""``extraction.scan: workers``: the driver lists names and reads no image byte; the
stream engine's workers scan as they extract, with the records, skipped files and features
of the driver's scan.

The driver's reads are counted by wrapping ``open`` (builtins and io, which ``Path``
uses) and ``rayclust.remote.read_bytes`` in the test process only: Ray's workers are other
processes, so whatever they read is not counted. The counter is shown to catch the
driver-side scan first, so a zero means something.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rayclust.config import ConfigError, load_config
from rayclust.images import ImageSet
from rayclust.pipeline import scan_on_workers
from rayclust.views import FeatureStore, extract_views
from tests.driver_reads import DriverReads

VIEWS = ["pixels16", "test_tiny"]  # one read per file for both


def _config(sample_dir: Path, cache: Path, scan: str = "workers"):
    return load_config(
        overrides=[
            f"input.source={sample_dir}",
            "input.labels_from_folders=true",
            f"views=[{','.join(VIEWS)}]",
            f"extraction.cache_dir={cache}",
            "extraction.engine=stream",
            f"extraction.scan={scan}",
            "extraction.batch_size=32",
        ]
    )


@pytest.fixture(scope="module")
def driver_scan(sample_dir) -> ImageSet:
    return ImageSet.from_source(sample_dir, labels_from_folders=True, progress=False)


def test_the_counter_catches_a_driver_scan(sample_dir, driver_scan, monkeypatch):
    reads = DriverReads(sample_dir, monkeypatch)
    again = ImageSet.from_source(sample_dir, labels_from_folders=True, progress=False)
    assert len(reads.files) >= len(again) == len(driver_scan) > 100
    assert reads.bytes > 100_000


def test_workers_scan_reads_nothing_in_the_driver_and_matches_the_driver_scan(
    ray_session, sample_dir, driver_scan, tmp_path, monkeypatch
):
    config = _config(sample_dir, tmp_path / "cache")
    reads = DriverReads(sample_dir, monkeypatch)
    extraction = scan_on_workers(config, tmp_path / "run")
    monkeypatch.undo()
    assert reads.files == [] and reads.bytes == 0

    images = extraction.images
    assert images.records == driver_scan.records  # paths, content ids, labels, in order
    assert images.skipped == driver_scan.skipped  # the README of the sample, by extension
    assert list((tmp_path / "run" / "scan").glob("manifest-*.csv"))  # written in parts

    reference = extract_views(
        driver_scan.records, VIEWS, tmp_path / "driver-cache", config.extraction, progress=False
    )
    ids = driver_scan.image_ids
    for view in VIEWS:
        result = extraction.results[view]
        assert result.n_extracted == len(driver_scan) and result.n_cached == 0
        assert reference[view].spec_key == result.spec_key
        ours = FeatureStore(tmp_path / "cache", result.spec_key).get(ids)
        theirs = FeatureStore(tmp_path / "driver-cache", result.spec_key).get(ids)
        np.testing.assert_array_equal(ours, theirs)

    # Resumed: every id is stored, so no forward pass runs (each file is still read once).
    again = scan_on_workers(config, tmp_path / "run")
    for resumed in again.results.values():
        assert resumed.n_extracted == 0
        assert resumed.n_cached == len(set(ids))
    assert again.images.records == images.records


def test_scan_is_checked_at_load():
    with pytest.raises(ConfigError, match="extraction.scan=workers needs extraction.engine"):
        load_config(overrides=["extraction.scan=workers", "extraction.engine=actors"])
    with pytest.raises(ConfigError, match="extraction.scan='bucket'"):
        load_config(overrides=["extraction.scan=bucket"])
    assert load_config().extraction.scan == "driver"
