"""``extraction.scan: workers``: the driver lists names and reads no image byte; the
stream engine's workers scan as they extract, with the records, skipped files and features
of the driver's scan.

The driver's reads are counted by wrapping ``open`` (builtins and io, which ``Path``
uses) and ``rayclust.remote.read_bytes`` in the test process only: Ray's workers are other
processes, so whatever they read is not counted. The counter is shown to catch the
driver-side scan first, so a zero means something.
"""

from __future__ import annotations

import builtins
import io
import os
from pathlib import Path

import numpy as np
import pytest

from rayclust import remote
from rayclust.config import ConfigError, load_config
from rayclust.images import ImageSet
from rayclust.pipeline import scan_on_workers
from rayclust.views import FeatureStore, extract_views

VIEW = "pixels16"


class DriverReads:
    """Files under ``root`` that this process opens, and their bytes (the file's size)."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = os.path.realpath(root)
        self.files: list[str] = []
        self.bytes = 0
        real_open, real_remote = builtins.open, remote.read_bytes

        def counting_open(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)):
                path = os.path.realpath(os.fspath(file))
                if path.startswith(self.root + os.sep) and os.path.isfile(path):
                    self.files.append(path)
                    self.bytes += os.path.getsize(path)
            return real_open(file, *args, **kwargs)

        def counting_remote(uri, *args, **kwargs):
            data = real_remote(uri, *args, **kwargs)
            self.files.append(uri)
            self.bytes += len(data)
            return data

        monkeypatch.setattr(builtins, "open", counting_open)
        monkeypatch.setattr(io, "open", counting_open)
        monkeypatch.setattr(remote, "read_bytes", counting_remote)


def _config(sample_dir: Path, cache: Path, scan: str = "workers"):
    return load_config(
        overrides=[
            f"input.source={sample_dir}",
            "input.labels_from_folders=true",
            f"views=[{VIEW}]",
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

    (result,) = extraction.results.values()
    assert result.n_extracted == len(driver_scan) and result.n_cached == 0
    (reference,) = extract_views(
        driver_scan.records, VIEW, tmp_path / "driver-cache", config.extraction, progress=False
    ).values()
    assert reference.spec_key == result.spec_key
    ids = driver_scan.image_ids
    ours = FeatureStore(tmp_path / "cache", result.spec_key).get(ids)
    theirs = FeatureStore(tmp_path / "driver-cache", reference.spec_key).get(ids)
    np.testing.assert_array_equal(ours, theirs)

    # Resumed: every id is stored, so no forward pass runs (each file is still read once).
    again = scan_on_workers(config, tmp_path / "run")
    (resumed,) = again.results.values()
    assert resumed.n_extracted == 0
    assert resumed.n_cached == len(set(ids))
    assert again.images.records == images.records


def test_scan_is_checked_at_load():
    with pytest.raises(ConfigError, match="extraction.scan=workers needs extraction.engine"):
        load_config(overrides=["extraction.scan=workers", "extraction.engine=actors"])
    with pytest.raises(ConfigError, match="extraction.scan='bucket'"):
        load_config(overrides=["extraction.scan=bucket"])
    assert load_config().extraction.scan == "driver"
